"""The worker: executes one run spec, in a pod or as a local subprocess.

Exit codes: 0 done (or already done), 2 invalid spec or data (retrying cannot help),
3 infrastructure trouble (retry), 1 a crash inside training (its trace is in the log),
143 terminated by SIGTERM (a pod deleted or preempted) before its result was stored.

A pack (``--pack``: a JSON array of specs) runs its specs in turn in this one process, so imports,
staging and weights are paid once; each run commits its own result, a failed run does not stop
the others, and the process ends with the worst code (:mod:`viadk8s.worker.pack`).
"""

from __future__ import annotations

import logging
import signal
import sys
import traceback
from types import FrameType
from typing import TYPE_CHECKING

from viadk8s.errors import InfraError, Viadk8sError
from viadk8s.worker.env import prepare_process
from viadk8s.worker.pack import outcome_line, parse_specs, worst

if TYPE_CHECKING:
    from viadk8s.config import Config
    from viadk8s.spec import RunSpec
    from viadk8s.store import Store


class Terminated(BaseException):
    """SIGTERM as an exception: the stack unwinds, so temporary files and store keys are removed.

    Not an ``Exception``, so no ``except Exception`` (tracking retries) swallows it; Lightning,
    which otherwise turns SIGTERM during fit into an exit with status 0, calls this handler too."""


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise Terminated


def main(spec_text: str, config_path: str | None = None, store: str | None = None) -> int:
    """Run one spec, or a pack of specs in turn; print one ``error:`` line per failed run and
    return the exit code (a pack's: the :func:`~viadk8s.worker.pack.worst` of its runs, each
    listed at the end by :func:`~viadk8s.worker.pack.outcome_line`)."""
    prepare_process()
    signal.signal(signal.SIGTERM, _terminate)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        from viadk8s.config import load_config
        from viadk8s.worker.weights import configure_caches

        specs = parse_specs(spec_text)
        config = load_config(config_path, store=store)
        configure_caches(config.weights_dir)
        target = config.open_store()
    except Exception as err:  # the same one-line report as a run's own failure
        return _failed(err)[0]
    except Terminated:
        return _terminated()
    outcomes = []
    for spec in specs:
        code, message = _run(spec, config, target)
        if code == 128 + signal.SIGTERM:
            return code  # the pod is going away: the rest of the pack is redone on resubmission
        outcomes.append((spec.run_key, code, message))
    if len(specs) > 1:  # the pack's outcome per run, last: what a failed pod's termination message keeps
        for key, code, message in outcomes:
            print(outcome_line(key, code, message), file=sys.stderr)
    return worst([code for _, code, _ in outcomes])


def _run(spec: RunSpec, config: Config, target: Store) -> tuple[int, str]:
    """One run of the process: (exit code, its one-line error or "")."""
    try:
        from viadk8s.results import is_done, run_prefix

        if is_done(target, spec):
            print(f"{spec.run_name} [{spec.run_key}]: already done, nothing to do")
            return 0, ""
        from viadk8s import catalog
        from viadk8s.worker.weights import stage_for

        stage_for(catalog.model(spec.model), spec.weights == "imagenet", config.weights_dir, target)
        from viadk8s.worker.execute import execute  # heavy imports, after the environment is set

        result = execute(spec, config, target)
        print(
            f"{spec.run_name} [{spec.run_key}]: done in {result.timings.fit_s + result.timings.test_s:.1f} s, "
            f"stored at {target.uri}/{run_prefix(spec)}"
        )
        return 0, ""
    except Exception as err:  # every failure becomes this run's exit code and line
        return _failed(err)
    except Terminated:
        return _terminated(), "terminated (SIGTERM)"


def _terminated() -> int:
    print("error: terminated (SIGTERM) before the result was stored; running it again redoes it", file=sys.stderr)
    return 128 + signal.SIGTERM


def _failed(err: Exception) -> tuple[int, str]:
    """Print the one ``error:`` line of a failure and give its exit code: the library's own
    errors carry theirs, OSError is infrastructure (3), anything else a crash (1, trace kept)."""
    if isinstance(err, Viadk8sError):
        code, message = err.exit_code, str(err)
    elif isinstance(err, OSError):
        code, message = InfraError.exit_code, str(InfraError(f"{type(err).__name__}: {err}"))
    else:  # a crash inside training: keep the trace in the log, end with one line
        traceback.print_exc()
        code, message = 1, f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
    print(f"error: {message}", file=sys.stderr)
    return code, message


__all__ = ["main"]
