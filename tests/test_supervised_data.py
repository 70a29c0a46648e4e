"""The supervised datamodule (viadk8s.data.supervised): balanced, seeded batches of a fixed count, with
a model's share of normal images and its references; the worker serves them only to models that
ask, in supervised runs, at the model's own batch size; bad input is one line, exit 2; and the
supervised experiment end to end with DRA, DevNet and SuperSimpleNet."""

from __future__ import annotations

import json
import logging
from collections import Counter
from fractions import Fraction
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml
from torch.utils.data import TensorDataset

from tests.conftest import TINY
from viadk8s.data.layout import Sample
from viadk8s.data.samples import SamplesDataModule
from viadk8s.data.supervised import BalancedBatches, BalancedBatchSampler, balanced_loader
from viadk8s.errors import SpecError
from viadk8s.models.devnet import Devnet
from viadk8s.models.dra import Dra
from viadk8s.spec import RunSpec

LABELS = [0] * 30 + [1] * 3 + [0] * 7  # 37 normal images, 3 labelled anomalies among them


def epochs(sampler: BalancedBatchSampler, count: int) -> list[list[list[int]]]:
    return [list(sampler) for _ in range(count)]


def test_every_batch_is_half_anomalies_for_a_fixed_number_of_steps() -> None:
    sampler = BalancedBatchSampler(LABELS, batch_size=16, steps_per_epoch=20, seed=3)
    assert len(sampler) == 20
    for epoch in epochs(sampler, 3):
        assert len(epoch) == 20
        for batch in epoch:
            assert [LABELS[i] for i in batch] == [0] * 8 + [1] * 8
    odd = next(iter(BalancedBatchSampler(LABELS, batch_size=5, steps_per_epoch=1, seed=3)))
    assert [LABELS[i] for i in odd] == [0, 0, 1, 1, 1]  # DevNet's sampler: floor(5 / 2) normal, the odd one an anomaly


@pytest.mark.parametrize(
    ("batch_size", "share", "references", "counts"),
    [
        (48, Fraction(1, 2), 0, (0, 24, 24)),  # DevNet's official batch
        (48, Fraction(2, 3), 5, (5, 32, 16)),  # DRA's: 2 * 48 // 3 normal, 5 references ahead
        (16, Fraction(2, 3), 5, (5, 10, 6)),  # floor(32 / 3) = 10
        (2, Fraction(2, 3), 1, (1, 1, 1)),  # floor(4 / 3) = 1
        (48, 2 / 3, 0, (0, 32, 16)),  # a float share: 48 * 0.666... is 31.99999..., read as 2/3
    ],
)
def test_composition_follows_the_normal_share_and_references(
    batch_size: int, share: Fraction | float, references: int, counts: tuple[int, int, int]
) -> None:
    n_references, n_normal, n_anomalous = counts
    for batch in BalancedBatchSampler(LABELS, batch_size, 3, seed=1, normal_share=share, references=references):
        assert [LABELS[i] for i in batch] == [0] * (n_references + n_normal) + [1] * n_anomalous


def test_references_come_from_a_stream_of_their_own() -> None:
    """References cycle through the normal images from ``[seed, 1]``; the batches' own draws are those
    of a sampler without references."""
    with_references = epochs(BalancedBatchSampler(LABELS, 16, 20, seed=11, references=5), 2)
    plain = epochs(BalancedBatchSampler(LABELS, 16, 20, seed=11), 2)
    assert [[b[5:] for b in epoch] for epoch in with_references] == plain
    references = [i for epoch in with_references for batch in epoch for i in batch[:5]]
    normal = [i for i, y in enumerate(LABELS) if y == 0]
    assert sorted(references[:37]) == normal and sorted(references[37:74]) == normal  # each once a cycle
    assert references == [
        i for epoch in epochs(BalancedBatchSampler(LABELS, 16, 20, 11, references=5), 2) for b in epoch for i in b[:5]
    ]


def test_batches_are_reproducible_from_the_seed() -> None:
    first, again = (epochs(BalancedBatchSampler(LABELS, 16, 20, seed=11), 2) for _ in range(2))
    assert first == again
    assert first[0] != first[1]  # draws go on from one epoch to the next
    assert epochs(BalancedBatchSampler(LABELS, 16, 20, seed=12), 2) != first


def test_few_anomalies_are_oversampled_evenly(caplog: pytest.LogCaptureFixture) -> None:
    """3 anomalies, 8 a batch: 160 draws an epoch, each anomaly 53 or 54 times; every normal
    image is drawn once before any is drawn again."""
    with caplog.at_level(logging.INFO, logger="viadk8s.data.supervised"):
        sampler = BalancedBatchSampler(LABELS, 16, 20, seed=5)
    assert "from 37 normal images and 3 labelled anomalies, 20 steps per epoch: each anomaly about 53.3 times" in caplog.text
    (epoch,) = epochs(sampler, 1)
    anomalies = Counter(i for batch in epoch for i in batch[8:])
    assert sorted(anomalies) == [30, 31, 32] and max(anomalies.values()) - min(anomalies.values()) <= 1
    normals = [i for batch in epoch for i in batch[:8]]
    assert len(set(normals[:37])) == 37 and sorted(set(normals)) == [i for i, y in enumerate(LABELS) if y == 0]


@pytest.mark.parametrize(
    ("labels", "batch_size", "message"),
    [
        ([0] * 12, 16, "found 0 among 12 train images: run the model in the supervised experiment"),
        ([1] * 4, 16, "need normal train images, found 0 among 4"),
        ([0, 0, 1], 1, "batch size 1 gives 0 normal and 1 anomalous images; allowed: a size with at least one of each"),
    ],
)
def test_impossible_batches_are_one_line_spec_errors(labels: list[int], batch_size: int, message: str) -> None:
    with pytest.raises(SpecError, match=message) as err:
        BalancedBatchSampler(labels, batch_size, 20, seed=1)
    assert err.value.exit_code == 2 and "\n" not in str(err.value)


def test_balanced_loader_uses_the_models_batch_size_when_it_sets_one() -> None:
    """The run's batch size unless the model sets its own (DRA and DevNet: the official 48); references
    come on top."""
    dataset = TensorDataset(torch.arange(len(LABELS)), torch.tensor(LABELS))
    loader = balanced_loader(dataset, LABELS, BalancedBatches(steps_per_epoch=4), batch_size=6, seed=0)
    batches = list(loader)
    assert len(batches) == 4 and all(b[1].tolist() == [0, 0, 0, 1, 1, 1] for b in batches)
    own = balanced_loader(dataset, LABELS, BalancedBatches(steps_per_epoch=2, batch_size=10), batch_size=6, seed=0)
    assert [len(b[0]) for b in own] == [10, 10]
    dra = balanced_loader(dataset, LABELS, BalancedBatches(1, 6, Fraction(2, 3), references=2), batch_size=16, seed=0)
    assert [b[1].tolist() for b in dra] == [[0, 0, 0, 0, 0, 0, 1, 1]]


def data_module(folder: Path, labelled_train: bool, balanced: BalancedBatches | None) -> SamplesDataModule:
    """12 normal train images, 2 labelled anomalies, 3 test images (empty files: only listed, never read)."""
    samples = [Sample(str(folder / f"good{i:02}.png"), 0, "train", "good") for i in range(12)]
    samples += [Sample(str(folder / f"bad{i}.png"), 1, "train", "bad") for i in range(2)]
    samples += [Sample(str(folder / f"test{i}.png"), 0, "test", "good") for i in range(3)]
    for sample in samples:
        Path(sample.image_path).touch()
    module = SamplesDataModule("d-c", samples, labelled_train, batch_size=4, seed=9, balanced=balanced)
    module.setup("fit")
    return module


def test_the_worker_serves_balanced_batches_only_to_models_that_ask_in_supervised_runs(tmp_path: Path) -> None:
    """DRA's batches (the run's batch size is 4; DRA's own, 48, wins): 5 references, 32 normal, 16
    anomalies; DevNet's: 24 + 24."""
    assert Dra.balanced_batches == BalancedBatches(steps_per_epoch=20, batch_size=48, normal_share=Fraction(2, 3), references=5)
    assert Devnet.balanced_batches == BalancedBatches(steps_per_epoch=20, batch_size=48, normal_share=Fraction(1, 2))
    for model, expected in ((Dra, [0] * 37 + [1] * 16), (Devnet, [0] * 24 + [1] * 24)):
        asked = data_module(tmp_path, labelled_train=True, balanced=model.balanced_batches).train_dataloader()
        assert isinstance(asked.batch_sampler, BalancedBatchSampler) and len(asked) == 20
        labels = asked.dataset.samples.label_index.tolist()
        assert all([labels[i] for i in batch] == expected for batch in asked.batch_sampler)
    # SuperSimpleNet's supervised mode (no request) and any one-class run keep anomalib's shuffled loader
    for module in (data_module(tmp_path, True, None), data_module(tmp_path, False, Dra.balanced_batches)):
        loader = module.train_dataloader()
        assert not isinstance(loader.batch_sampler, BalancedBatchSampler) and len(loader) == 4  # ceil(14 / 4)


def test_supervised_models_refuse_runs_without_labelled_anomalies(cli, tmp_path: Path) -> None:  # noqa: ANN001
    spec = {"sweep": "s", "experiment": "evaluation", "dataset": "synthetic", "category": "tiles", "seed": 1}
    for model in ("dra", "devnet"):
        with pytest.raises(ValueError, match=f"model '{model}' .* trains on labelled anomalies: run it with supervised_k > 0"):
            RunSpec(model=model, **spec)
    assert RunSpec(model="dra", variant={"supervised_k": 10}, **spec).variant.supervised_k == 10
    done = cli("run", "--experiment", "evaluation", "--models", "devnet", "--store", str(tmp_path / "store"))
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert "model 'devnet' (DevNet) trains on labelled anomalies" in lines[-1]
    assert "viadk8s run --experiment supervised --models devnet" in lines[-1]


def test_supervised_experiment_runs_dra_devnet_and_supersimplenet(cli, tmp_path: Path) -> None:  # noqa: ANN001
    """k = 10 of 14 bad images move to train; one epoch of 20 batches of 4 for SuperSimpleNet, of the
    official 48 (+ 5 references for DRA) for DRA and DevNet (random weights: the planted-defect checks
    are the models' own tests, tests/test_model_dra.py and _devnet.py)."""
    config = tmp_path / "viadk8s.yaml"
    data = {"tiny": {"synthetic": {**TINY, "categories": ["tiles"], "n_test_bad": 14}}}
    config.write_text(yaml.safe_dump({"store": str(tmp_path / "store"), "datasets": data}))
    done = cli(
        "run",
        *("--experiment", "supervised", "--models", "dra,devnet,supersimplenet", "--datasets", "tiny", "--seeds", "5"),
        *("--image-size", "64", "--weights", "random", "--max-epochs", "1", "--batch-size", "4", "--jobs", "2"),
        *("--config", str(config)),
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    rows = [line.split("|")[1].strip() for line in done.stdout.splitlines() if line.startswith("| ")]
    assert sorted(rows[1:]) == ["DRA", "DevNet", "SuperSimpleNet"], done.stdout  # under the table's header
    results = [json.loads(p.read_text()) for p in (tmp_path / "store" / "runs" / "supervised").glob("*/result.json")]
    by_model = {r["spec"]["model"]: r for r in results}
    assert sorted(by_model) == ["devnet", "dra", "supersimplenet"]
    for model in ("dra", "devnet"):
        result = by_model[model]
        metrics, data_summary = result["metrics"], result["data"]
        assert result["epochs_run"] == 1 and len(data_summary["changes"]["labelled_bad_in_train"]) == 10
        assert data_summary["n_train"] == 20 and (data_summary["n_test_good"], data_summary["n_test_bad"]) == (6, 4)
        assert all(0 <= metrics[m] <= 1 for m in ("image_AUROC", "image_F1Max", "image_PG2", "image_PB2"))
        assert all(metrics[m] is None for m in ("pixel_AUROC", "pixel_AUPRO", "pixel_F1Max"))  # absent, not zero
        scores = pd.read_csv(tmp_path / "store" / "runs" / "supervised" / result["run_key"] / "scores.csv")
        assert len(scores) == 10 and scores.score.notna().all()
    assert by_model["supersimplenet"]["metrics"]["pixel_AUROC"] is not None  # its supervised mode is unchanged
    # result.json says which batches trained them: the official ones, not the spec's 4
    assert by_model["dra"]["model_report"] == {
        "train_batch": {"references": 5, "normal": 32, "labelled_anomalies": 16},
        "steps_per_epoch": 20,
    }
    assert by_model["devnet"]["model_report"] == {
        "train_batch": {"references": 0, "normal": 24, "labelled_anomalies": 24},
        "steps_per_epoch": 20,
    }
