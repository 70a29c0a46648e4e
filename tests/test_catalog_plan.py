from __future__ import annotations

import json
from typing import Any

import pytest

from viadk8s import catalog
from viadk8s.config import load_config
from viadk8s.errors import SpecError
from viadk8s.plan import Selection, plan
from viadk8s.spec import COLUMNS, RunSpec, Variant, column


def test_catalog_matches_protocol() -> None:
    datasets = catalog.datasets()
    classes = {k: len({c.split("__")[0] for c in d.categories}) for k, d in datasets.items()}
    assert classes == {
        "visa": 12,
        "mpdd": 6,
        "btad": 3,
        "vad": 1,
        "mvtec_loco": 5,
        "aebad": 1,
        "realiad": 8,
        "viaduct": 12,
        "sensum_sodf": 2,
        "synthetic": 2,
    }
    assert len(datasets["mvtec_loco"].categories) == 10  # logical and structural apart, averaged per dataset
    assert not datasets["vad"].has_masks and datasets["btad"].has_masks
    paper = {"patchcore", "reverse_distillation", "csflow", "draem", "glass", "simplenet", "mmr", "msflow", "inreach"}
    assert set(catalog.experiment("evaluation").models) == paper  # the paper's nine one-class/unsupervised methods
    assert set(catalog.experiment("supervised").models) >= {"dra", "devnet"}
    ours = {k for k, m in catalog.models().items() if m.model_class.startswith("viadk8s.models.")}
    assert ours - {"patchcore"} == {"simplenet", "mmr", "msflow", "inreach", "dra", "devnet"}  # what anomalib 2.x lacks
    assert catalog.models()["patchcore"].model_class == "viadk8s.models.patchcore:Patchcore"  # anomalib's, our coreset
    assert catalog.models()["patchcore"].init_args["coreset_sampling_ratio"] == 0.1


def test_every_experiment_refers_to_known_things() -> None:
    fields = set(RunSpec.model_fields) | set(Variant.model_fields)
    for exp in catalog.experiments().values():
        assert set(exp.models) <= set(catalog.models())
        assert set(exp.datasets) <= set(catalog.datasets())
        assert set(exp.axes) <= fields
        assert set(exp.metrics) <= set(catalog.METRICS)


def test_every_model_class_resolves_to_an_anomalib_module() -> None:
    from anomalib.models.components import AnomalibModule

    from viadk8s.worker.adapters import model_class

    for entry in catalog.models().values():
        assert issubclass(model_class(entry), AnomalibModule), entry.key


@pytest.mark.parametrize(
    ("experiment", "runs"),
    [  # models x paper datasets' categories x seeds x axis values
        ("evaluation", 9 * (12 + 6 + 3 + 1 + 10 + 4 + 8 + 12 + 2)),  # LOCO: 5 classes x 2 kinds; AeBAD: + 3 drift subsets
        ("input_size", 8 * (8 + 3 + 1) * 3 * 3),
        ("validation", 7 * (3 + 1 + 8) * 3 * 4),
        ("noisy_labels", 8 * (1 + 2 + 12) * 3 * 4),
        ("data_drift", 8 * (8 + 3 + 1 + 4) * 3 * 2),
        ("supervised", 3 * (1 + 3 + 6) * 3 * 1),
    ],
)
def test_paper_plans_expand_the_protocol(experiment: str, runs: int) -> None:
    planned = plan(experiment, Selection(datasets=["paper"]), load_config())
    assert len(planned.sweep.runs) == runs
    assert len({r.run_key for r in planned.sweep.runs}) == runs


def test_input_size_axis_and_defaults() -> None:
    planned = plan("input_size", Selection(models=["patchcore"], seeds=[1]), load_config())
    assert sorted({r.image_size for r in planned.sweep.runs}) == [128, 256, 512]
    assert {r.dataset for r in planned.sweep.runs} == {"synthetic"}  # nothing configured: the embedded default
    assert planned.sweep.sweep_id == "input-size"
    assert any("synthetic" in note for note in planned.notes)


def test_patchcore_trains_on_a_quarter_at_512_on_large_sets() -> None:
    planned = plan("input_size", Selection(models=["patchcore", "padim"], datasets=["paper"], seeds=[1]), load_config())
    quarter = {(r.model, r.dataset, r.image_size) for r in planned.sweep.runs if r.variant.train_fraction == 0.25}
    assert quarter == {("patchcore", "vad", 512), ("patchcore", "btad", 512)}


def test_set_variant_fields_for_every_run() -> None:
    chosen = Selection(models=["fastflow"], seeds=[1], categories=["tiles"], variant={"patience": 3, "monitor": "pixel_AUPRO"})
    runs = plan("validation", chosen, load_config()).sweep.runs
    assert {(r.variant.patience, r.variant.monitor) for r in runs} == {(3, "pixel_AUPRO")} and len(runs) == 4


def test_noisy_labels_sets_variant_fields() -> None:
    planned = plan("noisy_labels", Selection(models=["patchcore"], seeds=[1], categories=["tiles"]), load_config())
    assert sorted(r.variant.contamination for r in planned.sweep.runs) == [0.0, 0.04, 0.08, 0.16]


@pytest.mark.parametrize(
    ("selection", "message"),
    [
        (Selection(models=["nope"]), "unknown model 'nope'"),
        (Selection(datasets=["nope"]), "unknown dataset 'nope'; allowed: aebad, btad"),
        (Selection(categories=["bottle"]), "unknown category of synthetic 'bottle'; allowed: fabric, tiles"),
        (Selection(image_sizes=[100]), "image size 100 not allowed"),
        (Selection(sweep="Not OK"), "sweep id 'Not OK'"),
        (Selection(variant={"patiense": 3}), "unknown variant field 'patiense'; allowed: validation, contamination"),
        (Selection(variant={"patience": 0}), "patience: Input should be greater than or equal to 1"),
    ],
)
def test_bad_selection_is_one_clear_line(selection: Selection, message: str) -> None:
    with pytest.raises(SpecError, match=message.replace("(", r"\(")):
        plan("evaluation", selection, load_config())


def test_plan_cli_json(cli) -> None:  # noqa: ANN001 - fixture
    done = cli("plan", "--experiment", "input_size", "--models", "padim", "--seeds", "7", "--format", "json")
    assert done.returncode == 0, done.stderr
    sweep = json.loads(done.stdout)
    assert {(r["image_size"], r["category"]) for r in sweep["runs"]} == {
        (s, c) for s in (128, 256, 512) for c in ("tiles", "fabric")
    }


#: Two values of each spec field an experiment may vary, for a made-up experiment on that axis.
AXIS_VALUES: dict[str, list[Any]] = {
    "image_size": [128, 256],
    "validation": ["last_epoch", "val_early_stop"],
    "contamination": [0.0, 0.04],
    "drift": ["none", "synthetic"],
    "supervised_k": [0, 10],
    "train_fraction": [0.25, 1.0],
    "monitor": ["image_AUROC", "pixel_AUPRO"],
    "patience": [5, 10],
    "check_every": [1, 2],
}


def _tables_of_a_plan(experiment: str, models: list[str]) -> dict:
    """Plan ``experiment`` on the default synthetic data, give every run a made-up result, tabulate."""
    from tests.checks import made_up_result
    from viadk8s import aggregate

    planned = plan(experiment, Selection(models=models, seeds=[1], categories=["tiles"]), load_config())
    results = [made_up_result(spec, auroc=0.5 + i / 1000) for i, spec in enumerate(planned.sweep.runs)]
    return aggregate.summarise(results, experiment).tables


@pytest.mark.parametrize("experiment", list(catalog.experiments()))
def test_every_catalog_experiment_plans_and_tabulates(experiment: str) -> None:
    entry = catalog.experiment(experiment)
    named = _tables_of_a_plan(experiment, entry.models[:2])
    for field, values in entry.axes.items():
        label = column(field).label
        shown = [label(v) for v in values] if len(values) > 1 else ["synthetic"]  # one value: the plain table
        assert sorted(shown) == sorted(named["per_dataset"].columns), experiment


def test_every_variant_field_is_an_axis_with_labelled_columns(monkeypatch: pytest.MonkeyPatch) -> None:
    """An experiment on any field a spec may vary plans, runs (made up) and tabulates: a field
    added without a table column (spec.Column) fails here, not after a sweep."""
    assert set(AXIS_VALUES) == set(Variant.model_fields) | {"image_size"}, "add the new field here and its Column"
    assert set(COLUMNS) == set(AXIS_VALUES) | {"weights"}  # weights: names methods apart, set per sweep (--weights)
    known = catalog.experiments()
    for field, values in AXIS_VALUES.items():
        probe = catalog.ExperimentEntry(
            key="probe", title=field, datasets=["synthetic"], models=["supersimplenet"], seeds=[1],
            axes={field: values}, metrics=["image_AUROC", "pixel_AUPRO"],
        )  # fmt: skip
        monkeypatch.setattr(catalog, "experiments", lambda probe=probe: {**known, "probe": probe})
        named = _tables_of_a_plan("probe", ["supersimplenet"])
        label = column(field).label
        assert list(named["per_dataset"].columns) == [label(v) for v in values], field
        assert len({label(v) for v in values}) == 2, f"{field}: two values, one label"
        methods = set(named["per_dataset"].index.get_level_values(0))
        assert methods == {"SuperSimpleNet"}, f"{field}: the axis must not name methods apart: {methods}"


def test_a_field_without_a_column_is_named() -> None:
    with pytest.raises(SpecError, match="spec field 'seed' has no table column; fields an experiment may vary: image_size"):
        column("seed")


def test_early_stopping_monitors_what_the_worker_can_validate() -> None:
    from viadk8s.worker.adapters import _validation_metric

    assert set(catalog.MONITORED) < set(catalog.METRICS) and catalog.IMAGE_METRICS == tuple(
        m for m in catalog.METRICS if m.startswith("image_")
    )
    for metric in catalog.MONITORED:
        assert Variant(monitor=metric).monitor == metric
        assert _validation_metric(metric) is not None
    with pytest.raises(ValueError, match="cannot be monitored"):
        Variant(monitor="image_PG2")
