"""A pack: several run specs that one worker process runs in turn (``--pack``).

What travels is a JSON array of specs where one run's spec is a JSON object. At its end the
process prints one line per run (:func:`outcome_line`): the local backend and ``viadk8s status``
read each run's outcome back from them (:func:`read_outcomes`), from the log or from a failed
pod's termination message, which keeps a log's last lines.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING

from viadk8s.errors import InfraError, SpecError

if TYPE_CHECKING:
    from viadk8s.spec import RunSpec

#: The exit code of a process whose runs ended differently: invalid input first (retrying cannot
#: help; Kubernetes fails the Job at once), then infrastructure (a retry may help), then a crash;
#: 0 only when every run is done. SIGTERM is not ranked: it ends a pack at once with 143.
PRECEDENCE = (SpecError.exit_code, InfraError.exit_code, 1)
_OUTCOME = re.compile(r"^(?:error: )?run (?P<key>[0-9a-f]{16})(?:: done| exit (?P<code>\d+): (?P<message>.*))$")


def worst(codes: Sequence[int]) -> int:
    """A pack's exit code from its runs' codes, by :data:`PRECEDENCE`."""
    return next((code for code in PRECEDENCE if code in codes), max(codes, default=0))


def specs_json(specs: Sequence[RunSpec]) -> str:
    """What ``viadk8s worker --spec`` reads: one spec as before, several as a JSON array."""
    return specs[0].to_json() if len(specs) == 1 else "[" + ",".join(s.to_json() for s in specs) + "]"


def parse_specs(text: str) -> list[RunSpec]:
    """The runs of ``specs_json``'s text; a bad one is invalid input."""
    from viadk8s.spec import RunSpec

    if not text.lstrip().startswith("["):
        return [RunSpec.from_json(text)]
    try:
        items = json.loads(text)
    except json.JSONDecodeError as err:
        raise SpecError(f"invalid pack of specs: not JSON ({err})") from None
    if not isinstance(items, list) or not items:
        raise SpecError("invalid pack of specs: allowed: a non-empty JSON array of run specs")
    return [RunSpec.from_json(json.dumps(item)) for item in items]


def outcome_line(run_key: str, code: int, message: str) -> str:
    """``run KEY: done`` or ``error: run KEY exit N: MESSAGE``."""
    return f"error: run {run_key} exit {code}: {message}" if code else f"run {run_key}: done"


def read_outcomes(text: str) -> dict[str, tuple[int, str]]:
    """The (exit code, error) per run key of the :func:`outcome_line` lines in ``text``."""
    found = {}
    for line in text.splitlines():
        match = _OUTCOME.match(line.strip())
        if match:
            found[match["key"]] = (int(match["code"] or 0), match["message"] or "")
    return found
