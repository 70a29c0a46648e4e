"""Every benchmark of this project from one run, side by side in one table (``make bench``).

Each module's ``measure()`` runs with its defaults and measures its own baseline in this run
(see each module's docstring; each also runs alone). A module that is missing, or that fails,
becomes one row saying so and the others still run. The table goes to stdout and, with ``--out``,
to a file (written under a temporary name, then renamed). The machine's load average is printed
with it: on a shared machine, ratios move with the neighbours' load.

    python benchmarks/bench.py [--out bench.md] [--only coreset,aggregation]
"""

from __future__ import annotations

import argparse
import importlib
import os
import platform
import sys
import time
import traceback
from pathlib import Path

from table import Row, markdown

BENCHMARKS = ["data", "coreset", "patchcore", "aggregation", "staging", "overhead", "packing", "cost_model", "models", "cluster"]


def run(name: str) -> list[Row]:
    """One module's rows; a missing or failing module is one row that says why."""
    try:
        module = importlib.import_module(name)
    except ModuleNotFoundError as err:
        if err.name != name:
            raise
        return [{"name": f"{name}: benchmarks/{name}.py is missing", "met": False, "note": "not measured"}]
    try:
        return module.measure()
    except (Exception, SystemExit) as err:  # noqa: BLE001 - one failed benchmark must not lose the others' figures
        traceback.print_exc()
        return [{"name": f"{name}: failed", "met": False, "note": f"{type(err).__name__}: {str(err).splitlines()[0][:300]}"}]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, help="also write the table to this file")
    parser.add_argument("--only", help=f"a comma-separated subset of: {','.join(BENCHMARKS)}")
    args = parser.parse_args()
    selected = args.only.split(",") if args.only else BENCHMARKS
    unknown = sorted(set(selected) - set(BENCHMARKS))
    if unknown:
        sys.exit(f"unknown benchmark {', '.join(unknown)}; allowed: {', '.join(BENCHMARKS)}")
    started, load = time.time(), os.getloadavg()
    rows: list[Row] = []
    for name in selected:
        print(f"[bench] {name} …", file=sys.stderr, flush=True)
        rows += run(name)
    header = (
        f"viadk8s benchmarks, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime(started))}, {platform.node()}: "
        f"{os.cpu_count()} CPUs, load average {load[0]:.1f} at the start, {os.getloadavg()[0]:.1f} at the end, "
        f"{(time.time() - started) / 60:.1f} min\n\n"
    )
    table = header + markdown(rows) + "\n"
    print(table)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        temporary = args.out.with_name(f".{args.out.name}.tmp")
        temporary.write_text(table)
        temporary.replace(args.out)
    missed = [r["name"] for r in rows if r.get("met") is False]
    print(f"{len(rows) - len(missed)} of {len(rows)} rows met or without a target; missed: {'; '.join(missed) or 'none'}")


if __name__ == "__main__":
    main()
