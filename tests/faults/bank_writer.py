"""A separate process that saves banks with the core alone (run by the bank fault tests, never imported).

    bank_writer.py loop PATH            save PATH again and again (concept names save-0, save-1, ...) until killed
    bank_writer.py rounds TAG T0 DIR... save DIR/bank.safetensors with concept TAG at time T0 + 0.4 s * round
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(REPO), str(REPO / "tests")]

import r2moe_core as core  # noqa: E402
from r2moe_testkit.banks import add_random_concept  # noqa: E402
from r2moe_testkit.small import small_layers, weights_for  # noqa: E402

ROUND_S = 0.4


def bank_named(name: str, seed: int = 1):
    layers = small_layers(in_dim=64, widths=(256, 384, 256))  # ~1 MB files: the write takes a moment
    empty = core.ExpertBank.empty(core.BankConfig(rank=8, top_k=2), layers,
                                  core.compute_fingerprint(layers, weights_for(layers)), token_dim=64)
    return add_random_concept(core, empty, name, f"<{name}>", seed=seed)


def main() -> None:
    mode = sys.argv[1]
    if mode == "loop":
        path = Path(sys.argv[2])
        banks = [bank_named("save-a"), bank_named("save-b", seed=2)]
        count = 0
        while True:
            core.save_bank(banks[count % 2], path)
            count += 1
            if count == 1:
                print("saved", flush=True)  # the test waits for this line
    elif mode == "rounds":
        tag, start, dirs = sys.argv[2], float(sys.argv[3]), [Path(d) for d in sys.argv[4:]]
        bank = bank_named(tag)
        for index, directory in enumerate(dirs):
            while time.time() < start + ROUND_S * index:
                pass  # spin: both writers start within microseconds of each other
            core.save_bank(bank, directory / "bank.safetensors")


if __name__ == "__main__":
    main()
