"""The worker: executes one run spec, in a pod or as a local subprocess.

Exit codes: 0 done (or already done), 2 invalid spec or data (retrying cannot help),
3 infrastructure trouble (retry), 1 a crash inside training (its trace is in the log),
143 terminated by SIGTERM (a pod deleted or preempted) before its result was stored.
"""

from __future__ import annotations

import logging
import signal
import sys
import traceback
from types import FrameType

from viadk8s.errors import InfraError, Viadk8sError
from viadk8s.worker.env import prepare_process


class Terminated(BaseException):
    """SIGTERM as an exception: the stack unwinds, so temporary files and store keys are removed.

    Not an ``Exception``, so no ``except Exception`` (tracking retries) swallows it; Lightning,
    which otherwise turns SIGTERM during fit into an exit with status 0, calls this handler too."""


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise Terminated


def main(spec_text: str, config_path: str | None = None, store: str | None = None) -> int:
    """Run one spec; print one ``error:`` line on failure and return the exit code."""
    prepare_process()
    signal.signal(signal.SIGTERM, _terminate)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        from viadk8s.config import load_config
        from viadk8s.results import is_done, run_prefix
        from viadk8s.spec import RunSpec
        from viadk8s.worker.weights import configure_caches

        spec = RunSpec.from_json(spec_text)
        config = load_config(config_path, store=store)
        configure_caches(config.weights_dir)
        target = config.open_store()
        if is_done(target, spec):
            print(f"{spec.run_name} [{spec.run_key}]: already done, nothing to do")
            return 0
        from viadk8s import catalog
        from viadk8s.worker.weights import stage_for

        stage_for(catalog.model(spec.model), spec.weights == "imagenet", config.weights_dir, target)
        from viadk8s.worker.execute import execute  # heavy imports, after the environment is set

        result = execute(spec, config, target)
        print(
            f"{spec.run_name} [{spec.run_key}]: done in {result.timings.fit_s + result.timings.test_s:.1f} s, "
            f"stored at {target.uri}/{run_prefix(spec)}"
        )
        return 0
    except Viadk8sError as err:
        print(f"error: {err}", file=sys.stderr)
        return err.exit_code
    except Terminated:
        print("error: terminated (SIGTERM) before the result was stored; running it again redoes it", file=sys.stderr)
        return 128 + signal.SIGTERM
    except OSError as err:
        print(f"error: {InfraError(f'{type(err).__name__}: {err}')}", file=sys.stderr)
        return InfraError.exit_code
    except Exception as err:  # a crash inside training: keep the trace in the log, end with one line
        traceback.print_exc()
        print(f"error: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}", file=sys.stderr)
        return 1


__all__ = ["main"]
