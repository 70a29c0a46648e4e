"""``--pack``: short runs share one worker process. Grouping by the cost model, the pack's exit code,
real packs on the local backend (64 px PaDiM on the tiny synthetic dataset: commit, a failed run
inside a pack, resume), and how ``status`` lists a pack's runs from a Job and its pod."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import yaml
from kubernetes import client

from tests.checks import stored_result
from tests.conftest import Cli
from viadk8s.backends import pack, pack_key, pack_size
from viadk8s.backends.k8s import jobs
from viadk8s.backends.k8s.render import render_job
from viadk8s.backends.local import _outcomes
from viadk8s.cluster_config import ClusterSettings
from viadk8s.config import load_config
from viadk8s.cost import estimate
from viadk8s.errors import SpecError
from viadk8s.plan import Selection, plan
from viadk8s.results import RESULT, run_prefix
from viadk8s.spec import RunSpec
from viadk8s.worker.pack import outcome_line, read_outcomes, worst

TILES = ("--models", "padim", "--datasets", "tiny", "--categories", "tiles", "--image-size", "64")
QUICK = ("--weights", "random", "--max-epochs", "1")


def _planned(config_path: Path, **selection: Any) -> list[RunSpec]:
    chosen = Selection(datasets=["tiny"], image_sizes=[64], **selection)
    return plan("evaluation", chosen, load_config(str(config_path))).sweep.runs


def _spec(**changes: Any) -> RunSpec:
    fields = {"sweep": "s1", "experiment": "evaluation", "model": "padim", "dataset": "tiny", "category": "tiles", "seed": 1}
    return RunSpec(**{**fields, **changes})


# --- grouping --------------------------------------------------------------------------------------


def test_short_runs_are_grouped_by_model_and_dataset_up_to_n(tiny_config: Path) -> None:
    runs = _planned(tiny_config, models=["padim", "patchcore", "fastflow"], seeds=[1, 2, 3])
    config = load_config(str(tiny_config))
    groups = pack(runs, 4, config)
    # per model 2 categories x 3 seeds = 6 runs -> 4 + 2; fastflow has no cost coefficients: alone
    assert [len(g) for g in groups] == [4, 2, 4, 2, 1, 1, 1, 1, 1, 1]
    assert [s for g in groups for s in g] == runs  # the plan lists runs model by model: its order is kept
    assert all(len({(s.model, s.dataset) for s in g}) == 1 for g in groups)
    assert pack(runs, 1, config) == [[s] for s in runs]


def test_long_runs_stay_alone_and_auto_fills_up_to_its_budget(tiny_config: Path) -> None:
    runs = _planned(tiny_config, models=["padim"], seeds=[1, 2, 3])  # 6 runs of equal estimate
    each = estimate(runs, load_config(str(tiny_config))).runs[0].seconds
    data = yaml.safe_load(tiny_config.read_text())
    tiny_config.write_text(yaml.safe_dump({**data, "cluster": {"pack": {"short_s": each * 1.01, "auto_s": each * 2.5}}}))
    assert [len(g) for g in pack(runs, "auto", load_config(str(tiny_config)))] == [2, 2, 2]
    tiny_config.write_text(yaml.safe_dump({**data, "cluster": {"pack": {"short_s": each * 0.99}}}))
    assert [len(g) for g in pack(runs, 6, load_config(str(tiny_config)))] == [1] * 6


def test_pack_option_and_key() -> None:
    assert (pack_size("1"), pack_size("8"), pack_size("auto")) == (1, 8, "auto")
    for bad in ("0", "-2", "two", ""):
        with pytest.raises(SpecError, match="allowed: a number of runs"):
            pack_size(bad)
    a, b = _spec(category="x"), _spec(category="y")
    assert pack_key([a, b]) == pack_key([b, a]) != pack_key([a]) and len(pack_key([a, b])) == 16


def test_worst_exit_code_invalid_input_beats_infrastructure_beats_crash() -> None:
    assert worst([0, 1, 3, 2, 0]) == 2
    assert worst([1, 3, 0]) == 3
    assert worst([0, 1]) == 1
    assert worst([0, 0]) == worst([]) == 0


def test_outcome_lines_read_back_among_other_output() -> None:
    text = "\n".join(
        [
            "Epoch 1",
            outcome_line("0123456789abcdef", 0, ""),
            "error: something else",
            outcome_line("fedcba9876543210", 2, "bad: x"),
        ]
    )
    assert read_outcomes(text) == {"0123456789abcdef": (0, ""), "fedcba9876543210": (2, "bad: x")}


def test_a_resubmission_creates_jobs_only_for_runs_left(tiny_config: Path) -> None:
    """Finished runs get no Job, packed or not; with every run finished, nothing is rendered at all."""
    config = load_config(str(tiny_config))
    planned = plan("evaluation", Selection(models=["padim"], datasets=["tiny"], image_sizes=[64], seeds=[1, 2]), config)
    runs = planned.sweep.runs
    store = config.open_store()
    for spec in runs[1:]:
        store.write_bytes(f"{run_prefix(spec)}/{RESULT}", stored_result(spec))
    for size in (1, 4):
        report = jobs.submit(planned, config, None, dry_run="client", size=size)
        assert len(report.done) == len(runs) - 1 and len(report.created) == 1 and report.existing == []
    store.write_bytes(f"{run_prefix(runs[0])}/{RESULT}", stored_result(runs[0]))
    for size in (1, 4):
        report = jobs.submit(planned, config, None, dry_run="client", size=size)
        assert (len(report.done), report.created, report.existing) == (len(runs), [], [])


# --- real packs on the local backend --------------------------------------------------------------


def _store(config: Path) -> Path:
    return Path(yaml.safe_load(config.read_text())["store"])


def test_a_pack_of_three_runs_in_one_process_commits_three_results(cli: Cli, tiny_config: Path) -> None:
    done = cli("run", "-e", "evaluation", *TILES, *QUICK, "--seeds", "1,2,3", "--pack", "3", "--config", str(tiny_config))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "3 done, 0 skipped" in done.stdout
    runs = _planned(tiny_config, models=["padim"], categories=["tiles"], seeds=[1, 2, 3], weights="random", max_epochs=1)
    assert all((_store(tiny_config) / run_prefix(s) / RESULT).is_file() for s in runs)
    (log,) = (_store(tiny_config) / "logs" / "evaluation").iterdir()  # one process, one log
    assert log.name == f"pack-{pack_key(runs)}.log"
    assert read_outcomes(log.read_text()) == {s.run_key: (0, "") for s in runs}


def test_a_failed_run_inside_a_pack_leaves_the_others_committed(cli: Cli, tiny_config: Path, tmp_path: Path) -> None:
    good = _planned(tiny_config, models=["padim"], categories=["tiles"], seeds=[1], weights="random", max_epochs=1)[0]
    bad = good.model_copy(update={"category": "no-such-category"})  # run_key is computed: a new key
    text = "[" + bad.to_json() + "," + good.to_json() + "]"  # the failure first: the next run still runs
    done = cli("worker", "--spec", "-", "--config", str(tiny_config), stdin=text, env={"HF_HUB_OFFLINE": "1"})
    assert done.returncode == 2, done.stdout[-3000:] + done.stderr[-3000:]
    assert (_store(tiny_config) / run_prefix(good) / RESULT).is_file()
    assert not (_store(tiny_config) / run_prefix(bad) / RESULT).exists()
    log = tmp_path / "pack.log"
    log.write_text(done.stdout + done.stderr)
    (bad_outcome, failure), (good_outcome, none) = _outcomes([bad, good], done.returncode, log)
    assert (bad_outcome, good_outcome, none) == (bad, good, None)
    assert failure.exit_code == 2 and "unknown category 'no-such-category'" in failure.reason


def test_resuming_an_interrupted_pack_runs_only_the_missing_runs(cli: Cli, tiny_config: Path) -> None:
    runs = _planned(tiny_config, models=["padim"], categories=["tiles"], seeds=[1, 2, 3], weights="random", max_epochs=1)
    finished = _store(tiny_config) / run_prefix(runs[1]) / RESULT  # the pack was stopped after its first commit
    finished.parent.mkdir(parents=True)
    finished.write_bytes(stored_result(runs[1]))
    done = cli("run", "-e", "evaluation", *TILES, *QUICK, "--seeds", "1,2,3", "--pack", "3", "--config", str(tiny_config))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "2 done, 1 skipped" in done.stdout
    assert finished.read_bytes() == stored_result(runs[1])  # not redone
    missing = [runs[0], runs[2]]
    (log,) = (_store(tiny_config) / "logs" / "evaluation").iterdir()
    assert log.name == f"pack-{pack_key(missing)}.log"  # repacked: the rest only
    assert read_outcomes(log.read_text()) == {s.run_key: (0, "") for s in missing}


# --- status of a pack on Kubernetes ------------------------------------------------------------------


class _Cluster:
    """What sweep_status asks of a cluster: the Jobs and pods it lists."""

    def __init__(self, job_list: list[client.V1Job], pods: list[client.V1Pod]) -> None:
        self.namespace = "bench"
        self.batch = SimpleNamespace(list_namespaced_job=lambda *a, **k: SimpleNamespace(items=job_list))
        self.core = SimpleNamespace(list_namespaced_pod=lambda *a, **k: SimpleNamespace(items=pods))

    def call(self, what: str, method: Any, *args: Any, **kwargs: Any) -> Any:
        return method(*args, **kwargs)


def test_status_lists_the_runs_of_a_failed_pack_one_by_one() -> None:
    runs = [
        RunSpec(sweep="s1", experiment="evaluation", model="padim", dataset="tiny", category="tiles", seed=s) for s in (1, 2, 3)
    ]
    body = render_job(runs, ClusterSettings(), "bench").body
    job = client.ApiClient()._ApiClient__deserialize(body, "V1Job")
    start = datetime(2026, 1, 1, tzinfo=UTC)
    failed = client.V1JobCondition(type="Failed", status="True", reason="PodFailurePolicy", last_transition_time=start)
    job.status = client.V1JobStatus(start_time=start, conditions=[failed])
    message = "\n".join([outcome_line(runs[0].run_key, 0, ""), outcome_line(runs[1].run_key, 2, "unknown category")])
    terminated = client.V1ContainerStateTerminated(exit_code=2, message=message)
    pod = client.V1Pod(
        metadata=client.V1ObjectMeta(name="p", labels=body["spec"]["template"]["metadata"]["labels"], creation_timestamp=start),
        status=client.V1PodStatus(
            phase="Failed",
            container_statuses=[
                client.V1ContainerStatus(
                    name="worker",
                    state=client.V1ContainerState(terminated=terminated),
                    image="i",
                    image_id="",
                    ready=False,
                    restart_count=0,
                )
            ],
        ),
    )
    status = jobs.sweep_status(_Cluster([job], [pod]), "s1")  # type: ignore[arg-type]
    found = {r.run_key: (r.state, r.reason) for r in status.runs}
    assert found[runs[0].run_key] == ("succeeded", "")
    assert found[runs[1].run_key] == ("failed", "exit 2 (invalid input): unknown category")
    assert found[runs[2].run_key][0] == "failed"  # not reached: the pack's own state
    assert {r.job for r in status.runs} == {job.metadata.name} and len(status.runs) == 3
