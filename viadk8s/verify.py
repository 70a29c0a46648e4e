"""Re-check every stored result of a sweep against what the store holds beside it.

Why: a number in a table is only as good as the chain behind it. Each ``result.json`` states
metrics and intervals that are pure functions of its ``scores.csv`` (and, for intervals, of the
bootstrap settings it records), so anyone can recompute them; a disagreement means an edited or
corrupted file, or a changed metric implementation. Pixel metrics are recomputed from the run's
per-image pixel summary (:mod:`viadk8s.pixel_summary`, within its binning's tolerance). The
scores file's and the summary's own sha256 (recorded since results carry ``scores_sha256`` and
``pixel_summary_sha256``) catch an edit that leaves the metrics unchanged. A run made on another
dependency lock is not wrong, only not reproducible here: a warning.
"""

from __future__ import annotations

import hashlib
import io
import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import pandas as pd

from viadk8s import stats
from viadk8s.errors import SpecError
from viadk8s.lock import lock_sha256
from viadk8s.metrics import TOLERANCE, disagreements
from viadk8s.pixel_summary import PIXEL_SUMMARY, PixelSummary
from viadk8s.results import SCORES, RunResult, load_results, run_prefix
from viadk8s.store import Store


@dataclass(frozen=True)
class Problem:
    """One failed check of one run; ``error`` False: a warning (exit 0)."""

    run: str
    what: str
    error: bool = True

    def __str__(self) -> str:
        return f"{'error' if self.error else 'warning'}: {self.run}: {self.what}"


@dataclass(frozen=True)
class Verification:
    runs: int
    problems: list[Problem] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def errors(self) -> int:
        return sum(p.error for p in self.problems)


def _intervals_differ(stored: dict[str, list[float]], again: dict[str, list[float]]) -> list[str]:
    """Each stored ``[low, high]`` that its recomputation does not give (within the metrics' tolerance)."""

    def same(a: list[float], b: list[float]) -> bool:
        return all(math.isclose(x, y, abs_tol=TOLERANCE) for x, y in zip(a, b, strict=True))

    return [
        f"{metric} stored [{low:.6g}, {high:.6g}], recomputed [{again[metric][0]:.6g}, {again[metric][1]:.6g}]"
        for metric, (low, high) in stored.items()
        if metric not in again or not same([low, high], again[metric])
    ]


def _pixel_problems(store: Store, result: RunResult, name: str) -> list[Problem]:
    """The pixel metrics against the run's stored pixel summary; a run without one is a warning."""
    try:
        raw = store.read_bytes(f"{run_prefix(result.spec)}/{PIXEL_SUMMARY}")
    except FileNotFoundError:
        return [Problem(name, f"no {PIXEL_SUMMARY} (written before runs kept one): pixel metrics not re-checked", error=False)]
    problems = []
    if result.pixel_summary_sha256 is not None and hashlib.sha256(raw).hexdigest() != result.pixel_summary_sha256:
        problems.append(Problem(name, f"{PIXEL_SUMMARY} is not the file the run wrote (sha256 differs from result.json's)"))
    try:
        summary = PixelSummary.from_bytes(raw)
    except ValueError as err:
        return [*problems, Problem(name, f"{PIXEL_SUMMARY} is unreadable: {err}")]
    wrong = summary.disagreements(result.metrics)
    return [*problems, Problem(name, f"pixel metrics disagree with {PIXEL_SUMMARY}: " + "; ".join(wrong))] if wrong else problems


def check_run(store: Store, result: RunResult) -> list[Problem]:
    """Every check of one run; scores.csv missing or unreadable is itself the one problem."""
    name = f"{result.run_key} ({result.spec.run_name})"
    try:
        raw = store.read_bytes(f"{run_prefix(result.spec)}/{SCORES}")
        scores = pd.read_csv(io.BytesIO(raw))
    except FileNotFoundError:
        return [Problem(name, f"no {SCORES}: nothing to recompute its metrics from")]
    except (ValueError, UnicodeDecodeError) as err:
        return [Problem(name, f"{SCORES} is unreadable: {str(err).splitlines()[0]}")]
    problems = []
    if result.scores_sha256 is not None and hashlib.sha256(raw).hexdigest() != result.scores_sha256:
        problems.append(Problem(name, f"{SCORES} is not the file the run wrote (sha256 differs from result.json's)"))
    try:
        wrong = disagreements(result.metrics, scores)
    except (KeyError, ValueError) as err:
        return [*problems, Problem(name, f"{SCORES} has no usable label/score columns ({err})")]
    if wrong:
        problems.append(Problem(name, "image metrics disagree with scores.csv: " + "; ".join(wrong)))
    if result.data.pixel_masks:
        problems += _pixel_problems(store, result, name)
    kept = result.uncertainty
    if kept is None:
        problems.append(Problem(name, "no stored intervals to re-check", error=False))
    else:
        try:
            again = stats.intervals(scores, kept.resamples, kept.confidence, kept.seed)
        except SpecError as err:
            again = {}
            problems.append(Problem(name, f"intervals cannot be recomputed: {err}"))
        differ = _intervals_differ(kept.intervals, again) if again else []
        if differ:
            problems.append(Problem(name, "intervals disagree with a recomputation: " + "; ".join(differ)))
    here = lock_sha256()
    if result.lock_sha256 is None:
        problems.append(Problem(name, "recorded no dependency lock hash", error=False))
    elif result.lock_sha256 != here:
        problems.append(
            Problem(name, f"ran on dependency lock {result.lock_sha256[:12]}, this environment's is {here[:12]}", error=False)
        )
    return problems


def verify_sweep(store: Store, sweep_id: str) -> Verification:
    """Every committed result of ``sweep_id``, re-checked (runs read and checked concurrently)."""
    results = load_results(store, sweep_id=sweep_id)
    if not results:
        raise SpecError(f"no finished run in sweep {sweep_id!r}")
    with ThreadPoolExecutor(max_workers=8) as pool:
        found = [p for problems in pool.map(lambda r: check_run(store, r), results) for p in problems]
    notes = []
    unhashed = sum(r.scores_sha256 is None for r in results)
    if unhashed:
        notes.append(
            f"{unhashed} run(s) recorded no scores.csv sha256 (written before viadk8s kept one): checked by their metrics only"
        )
    return Verification(len(results), found, notes)
