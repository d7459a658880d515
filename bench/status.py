"""`make bench-status`: which results in bench/results are older than the code they measure.

Each result JSON names the script that wrote it and a digest per part of the code (see `provenance.py`); a result
is current when every part still has that digest. Results written before provenance was recorded are listed as
unknown: re-run their script to date them.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from provenance import BENCH, REPO, git, staleness

LOG = logging.getLogger("r2moe.bench")
CODE_FOLDERS = ("r2moe_core", "nodes", "bench/world", ":(glob)bench/*.py")


def git_age(path: Path) -> str:
    """When git last saw the file change, and how many commits changed the measured code since."""
    last = git("log", "-1", "--format=%h %cs", "--", str(path))
    if not last:
        return "not committed"
    code = git("rev-list", "--count", f"{last.split()[0]}..HEAD", "--", *CODE_FOLDERS)
    return f"committed {last}, {code or '?'} commits to the code since"


def result_status(path: Path) -> tuple[str, str]:
    """(state, detail): state is current, stale or unknown."""
    try:
        result = json.loads(path.read_text())
        record = result.get("provenance")
    except (json.JSONDecodeError, AttributeError):
        return "unknown", "not a JSON object"
    if not isinstance(record, dict):
        return "unknown", f"no provenance (written before results recorded it; {git_age(path)}): re-run its script"
    # A result run in parts (the lifelong benchmark's tracks, one session each) is as old as its oldest part.
    tracks = result.get("tracks") if isinstance(result.get("tracks"), dict) else {}
    parts = {"": record} | {f"{name} track: ": t["provenance"] for name, t in tracks.items()
                            if isinstance(t, dict) and isinstance(t.get("provenance"), dict)}
    stale = [(label, part, changed) for label, part in parts.items() if (changed := staleness(part))]
    if stale:
        return "stale", "; ".join(f"{label}{', '.join(changed)} changed since {part['commit']} ({part['written']})"
                                  for label, part, changed in stale) + f": re-run {record['script']}"
    return "current", f"{record['script']} at {record['commit']} ({record['written']})"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=BENCH / "results")
    parser.add_argument("--strict", action="store_true", help="exit 1 when any result is stale or unknown")
    opts = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    rows = [(p, *result_status(p)) for p in sorted(opts.results.rglob("*.json")) if ".cache" not in p.parts]
    for path, state, detail in rows:
        LOG.info("%-8s %-45s %s", state, path.relative_to(REPO), detail)
    counts = {s: sum(r[1] == s for r in rows) for s in ("current", "stale", "unknown")}
    LOG.info("%d current, %d stale, %d unknown", counts["current"], counts["stale"], counts["unknown"])
    return 1 if opts.strict and (counts["stale"] or counts["unknown"]) else 0


if __name__ == "__main__":
    sys.exit(main())
