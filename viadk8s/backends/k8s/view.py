"""What ``submit`` and ``status`` show a person: rich tables and a progress bar."""

from __future__ import annotations

from rich.console import Group, RenderableType
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from viadk8s.backends.k8s.jobs import SubmitReport, SweepStatus

STYLES = {"pending": "yellow", "running": "cyan", "succeeded": "green", "failed": "red"}
#: Failed runs first: they are what a person has to act on.
ORDER = {"failed": 0, "running": 1, "pending": 2, "succeeded": 3}


def submit_lines(report: SubmitReport) -> list[str]:
    """The outcome of a submission, one fact per line."""
    verb = {None: "created", "server": "accepted by the API server (server dry run)", "client": "to create (client dry run)"}
    lines = [
        f"sweep {report.sweep_id} in namespace {report.namespace}: {len(report.created)} Jobs {verb[report.dry_run]}, "
        f"{len(report.existing)} already there, {len(report.done)} runs already finished (skipped)"
    ]
    lines += [f"note: {note}" for note in report.notes]
    return lines


def _duration(seconds: float) -> str:
    """'45s', '12m05s', '3h02m': a Job's run time at a glance."""
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def status_view(status: SweepStatus) -> RenderableType:
    """Counts and a bar of finished runs first (a live view crops at the screen's height), then the runs, failed first."""
    counts = status.counts()
    table = Table(title=f"namespace {status.namespace}: {len(status.runs)} runs")
    for column in ("sweep", "run_key", "model", "dataset", "state", "duration", "reason"):
        table.add_column(column, overflow="fold")
    for run in sorted(status.runs, key=lambda r: (ORDER[r.state], r.sweep, r.job)):
        duration = "" if run.duration_s is None else _duration(run.duration_s)
        state = Text(run.state, style=STYLES[run.state])
        table.add_row(run.sweep, run.run_key, run.model, run.dataset, state, duration, Text(run.reason))
    finished = counts["succeeded"] + counts["failed"]
    summary = Text(", ".join(f"{n} {state}" for state, n in counts.items()) + f" ({finished}/{len(status.runs)} finished)")
    header = Table.grid(padding=(0, 2))
    header.add_row(ProgressBar(total=max(len(status.runs), 1), completed=finished, width=40), summary)
    return Group(header, table)
