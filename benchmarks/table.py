"""The row every benchmark's ``measure()`` returns, and the one table they are printed in.

A row: ``name``, ``baseline`` (what was compared against, with its measured value), ``value``,
``ratio`` (value / baseline, or None for an absolute target), ``target``, ``met`` (None where there
is no target), ``note``. Rows are plain dicts so a module can be run alone or through bench.py.
"""

from __future__ import annotations

import argparse
import inspect
from collections.abc import Callable
from typing import Any

Row = dict[str, Any]


def ratio_row(name: str, baseline_label: str, baseline: float, value: float, at_most: float | None, note: str = "") -> Row:
    """A figure against a baseline measured in the same run; met when value / baseline <= at_most."""
    ratio = value / baseline
    return {
        "name": name,
        "baseline": f"{baseline_label}: {baseline:.4g}",
        "value": round(value, 4),
        "ratio": round(ratio, 4),
        "target": f"<= {at_most}" if at_most is not None else "-",
        "met": ratio <= at_most if at_most is not None else None,
        "note": note,
    }


def limit_row(name: str, value: float, limit: float, baseline: str = "-", note: str = "", at_least: bool = False) -> Row:
    """A figure with an absolute target: below ``limit``, or at least ``limit`` with ``at_least``."""
    return {
        "name": name,
        "baseline": baseline,
        "value": round(value, 4),
        "ratio": None,
        "target": f">= {limit}" if at_least else f"< {limit}",
        "met": value >= limit if at_least else value < limit,
        "note": note,
    }


def figure_row(name: str, value: float, note: str = "") -> Row:
    """A figure reported without a baseline or a target."""
    return {"name": name, "baseline": "-", "value": round(value, 4), "ratio": None, "target": "-", "met": None, "note": note}


def markdown(rows: list[Row]) -> str:
    """The rows side by side, one line each (markdown, readable as plain text)."""
    columns = ["name", "value", "baseline", "ratio", "target", "met", "note"]
    shown = {None: "-", True: "yes", False: "**NO**"}
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        cells = [shown.get(row.get(c), row.get(c)) if c == "met" else row.get(c, "") for c in columns]
        lines.append("| " + " | ".join("-" if cell is None else str(cell).replace("|", "/") for cell in cells) + " |")
    return "\n".join(lines)


def run_alone(measure: Callable[..., list[Row]], doc: str | None) -> None:
    """A module's own command line: one ``--option`` per argument of its ``measure()``, with its default."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    for name, parameter in inspect.signature(measure).parameters.items():
        default = parameter.default
        parser.add_argument(f"--{name.replace('_', '-')}", type=type(default), default=default, help=f"default {default}")
    print(markdown(measure(**vars(parser.parse_args()))))
