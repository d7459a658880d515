"""Write the world evaluators the benchmarks and the demo judge by into bench/world/weights (fp16 safetensors).

Run this only when the renders or the vocabulary change: every image-alignment reading on the world is measured
against these files, so rewriting one dates every world result (`make bench-status` says which). Each evaluator is
trained on one thread, or read from `--cache` where a run on this machine already trained it.

    python bench/ship_evaluators.py                     # both, ~15 min on 2 cores without a cache
    python bench/ship_evaluators.py --only demo         # the demo's 64 px evaluator only (~2 min)
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # r2moe_core (plain PyTorch)

from provenance import git_commit, library_versions
from world.cache import trained_evaluator
from world.demo_settings import DEMO_EVALUATOR
from world.evaluators import BENCH_EVALUATOR, EvaluatorSettings
from world.shipped_evaluators import FOLDER, write_shipped

HERE = Path(__file__).resolve().parent
SHIPPED: dict[str, EvaluatorSettings] = {"bench": BENCH_EVALUATOR, "demo": DEMO_EVALUATOR}


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default="", help=f"comma-separated, some of: {', '.join(SHIPPED)}")
    parser.add_argument("--cache", type=Path, default=HERE / "results" / ".cache",
                        help="where trained evaluators are cached ('' for none)")
    parser.add_argument("--folder", type=Path, default=FOLDER, help="where the files are written")
    opts = parser.parse_args(argv)
    names = [n.strip() for n in opts.only.split(",") if n.strip()] or list(SHIPPED)
    unknown = [n for n in names if n not in SHIPPED]
    if unknown:
        parser.error(f"unknown evaluator(s) {unknown}; choose from {', '.join(SHIPPED)}")
    cache = opts.cache if str(opts.cache) not in ("", ".") else None
    versions = library_versions()
    trained_by = f"commit {git_commit()}, torch {versions['torch']}, one thread"
    for name in names:
        model, _ = trained_evaluator(cache, SHIPPED[name])
        write_shipped(model, SHIPPED[name], opts.folder, trained_by)


if __name__ == "__main__":
    main()
