"""Merge multi-concept runs made with different training seeds into one result with its spread.

    python bench/multiconcept.py --seed 0 --out RUNS/0      # one training seed each (about 30 min on 2 cores)
    python bench/multiconcept.py --seed 1 --out RUNS/1
    python bench/multiconcept.py --seed 2 --out RUNS/2
    python bench/multiconcept_seeds.py RUNS/0 RUNS/1 RUNS/2 --out bench/results

A run trains every concept anew from its seed and samples its own images, so the seeds vary training, sampling
and the judge (the judge is trained per run). Runs are merged only when they were made by the same code on the same
world with the same settings but the seed; each keeps its provenance. Writes multiconcept.json in the shape of one
run (means, with `std` and `per_seed` beside each reading), multiconcept.md, and copies the first run's grid.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
from pathlib import Path
from statistics import mean, stdev
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from multiconcept import markdown

LOG = logging.getLogger("r2moe.bench.multiconcept_seeds")
READINGS = ("omission", "leakage", "image_alignment", "image_alignment_vs_alone")
ALONE_READINGS = {"alone_image_alignment": 2, "alone_omission": 4}  # each concept drawn alone: reading -> digits
HALF_OF_BANK = 0.5  # the goal: the default composition misses and leaks at most half as often as the bank alone


def spread(values: list[float], digits: int = 4) -> dict[str, Any]:
    return {"mean": round(mean(values), digits), "std": round(stdev(values), digits) if len(values) > 1 else 0.0,
            "per_seed": values}


def check_comparable(runs: list[dict], names: list[str]) -> None:
    """Refuses runs that differ in anything but the seed: code, world, settings or variants."""
    first = runs[0]
    for run, name in zip(runs[1:], names[1:], strict=True):
        settings = {k: v for k, v in run["settings"].items() if k != "seed"}
        if settings != {k: v for k, v in first["settings"].items() if k != "seed"}:
            raise SystemExit(f"{name} was made with other settings than {names[0]}: merge runs of one command")
        if run["provenance"]["code"] != first["provenance"]["code"]:
            raise SystemExit(f"{name} was made by other code than {names[0]}: re-run it at the same commit")
        if set(run["variants"]) != set(first["variants"]):
            raise SystemExit(f"{name} has other variants than {names[0]}")
    seeds = [run["settings"]["seed"] for run in runs]
    if len(set(seeds)) != len(seeds):
        raise SystemExit(f"the runs share training seeds {seeds}: give each its own --seed")


def merge(runs: list[dict]) -> dict[str, Any]:
    """The first run's shape with each reading replaced by its mean over the runs; spreads beside them."""
    merged = json.loads(json.dumps(runs[0]))
    merged["settings"]["seed"] = [run["settings"]["seed"] for run in runs]
    merged["judge_accuracy"] = round(mean(run["judge_accuracy"] for run in runs), 3)
    merged["spread"] = {"judge_accuracy": spread([run["judge_accuracy"] for run in runs], 3), "variants": {}}
    for key, digits in ALONE_READINGS.items():
        merged["spread"][key] = spread([run[key] for run in runs], digits)
        merged[key] = round(mean(run[key] for run in runs), digits)
    for name, variant in merged["variants"].items():
        per_run = [run["variants"][name] for run in runs]
        merged["spread"]["variants"][name] = {k: spread([v[k] for v in per_run]) for k in READINGS}
        for k in READINGS:
            variant[k] = merged["spread"]["variants"][name][k]["mean"]
        for part in ("pairs", "triples"):
            for k in ("omission", "leakage"):
                variant[part][k] = round(mean(v[part][k] for v in per_run), 4)
    merged["provenance"] = runs[0]["provenance"] | {"merged_by": "bench/multiconcept_seeds.py"}
    merged["runs"] = [{"seed": run["settings"]["seed"], "provenance": run["provenance"],
                       "seconds": run.get("seconds")} for run in runs]
    merged["goals"] = goals(merged)
    return merged


def goals(merged: dict) -> dict[str, Any]:
    """The composition goals on the means: omission and leakage of the default at most half of the bank alone's
    and below the regional-LoRA stack's; IA in its region at least 0.9x the concept drawn alone."""
    variants, default = merged["variants"], merged["default"]
    d, bank = variants[default], variants["bank_only"]
    stack = variants.get("lora_stack_regional")
    out: dict[str, Any] = {}
    for k in ("omission", "leakage"):
        out[f"{k}_at_most_half_of_bank_only"] = {"value": d[k], "bound": round(HALF_OF_BANK * bank[k], 4),
                                                 "met": d[k] <= HALF_OF_BANK * bank[k]}
        if stack:
            out[f"{k}_below_lora_stack_regional"] = {"value": d[k], "bound": stack[k], "met": d[k] < stack[k]}
    out["image_alignment_vs_alone"] = {"value": d["image_alignment_vs_alone"], "bound": 0.9,
                                       "met": d["image_alignment_vs_alone"] >= 0.9}
    return out


def spread_markdown(merged: dict) -> str:
    seeds = merged["settings"]["seed"]
    lines = ["", f"Training seeds {seeds}: mean ± sample std over the runs (each run also resamples and retrains "
             "the judge).", "", "| variant | omission ↓ | leakage ↓ | IA in its region | x alone |",
             "|---|---|---|---|---|"]
    for name, s in merged["spread"]["variants"].items():
        cells = [f"{s[k]['mean']:.2f} ± {s[k]['std']:.2f}" for k in ("omission", "leakage")]
        cells += [f"{s['image_alignment']['mean']:.1f} ± {s['image_alignment']['std']:.1f}",
                  f"{s['image_alignment_vs_alone']['mean']:.2f} ± {s['image_alignment_vs_alone']['std']:.2f}"]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", f"Goals for the default (`{merged['default']}`):", ""]
    lines += [f"- {name}: {g['value']} against {g['bound']}: {'met' if g['met'] else 'not met'}"
              for name, g in merged["goals"].items()]
    return "\n".join(lines)


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", type=Path, nargs="+", help="--out folders of bench/multiconcept.py, one per seed")
    parser.add_argument("--out", type=Path, required=True)
    opts = parser.parse_args()
    files = [run / "multiconcept.json" for run in opts.runs]
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        parser.error(f"no multiconcept.json in {', '.join(missing)}: run bench/multiconcept.py --out there first")
    if len(files) < 2:
        parser.error("give at least two runs (one per training seed)")
    runs = [json.loads(f.read_text()) for f in files]
    check_comparable(runs, [str(f) for f in files])
    merged = merge(runs)
    opts.out.mkdir(parents=True, exist_ok=True)
    (opts.out / "multiconcept.json").write_text(json.dumps(merged, indent=1) + "\n")
    (opts.out / "multiconcept.md").write_text(markdown(merged) + "\n" + spread_markdown(merged) + "\n")
    grid = opts.runs[0] / "multiconcept_grid.png"
    if grid.is_file():
        shutil.copyfile(grid, opts.out / "multiconcept_grid.png")
    LOG.info("merged %d runs into %s", len(runs), opts.out / "multiconcept.json")


if __name__ == "__main__":
    main()
