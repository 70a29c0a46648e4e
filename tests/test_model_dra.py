"""DRA (viadk8s.models.dra): CutMix pseudo anomalies (area, nothing outside the box), the four heads'
losses and score, fixed seeded reference images, deterministic evaluation and a planted defect.
The CLI run is in tests/test_supervised_data.py."""

from __future__ import annotations

import math
from collections.abc import Iterator
from types import SimpleNamespace

import pandas as pd
import pytest
import torch
from lightning.pytorch import seed_everything

from tests.test_model_devnet import auroc, planted
from viadk8s import catalog
from viadk8s.models.devnet import DeviationLoss
from viadk8s.models.dra import Dra
from viadk8s.models.dra.lightning_model import choose_references
from viadk8s.models.dra.torch_model import NORMAL, PSEUDO, SEEN, anomaly_score, cut_paste, dra_loss, pseudo_anomalies
from viadk8s.worker.adapters import model_class

pytestmark = pytest.mark.filterwarnings("ignore:You are trying to `self.log\\(\\)`")  # training steps outside a Trainer


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    """Small tensors on a shared 2-core machine: one thread avoids OpenMP's spin-waiting."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_dra(seed: int = 3, references: torch.Tensor | None = None, **kwargs: object) -> Dra:
    seed_everything(seed, verbose=False)
    model = Dra(pre_trained=False, evaluator=False, visualizer=False, **kwargs)
    refs = torch.randn(5, 3, 64, 64, generator=torch.Generator().manual_seed(seed)) if references is None else references
    model.model.set_references(refs)
    return model


@pytest.mark.parametrize("size", [(64, 64), (256, 256), (96, 160)])
def test_cut_paste_changes_only_a_box_of_2_to_15_percent(size: tuple[int, int]) -> None:
    generator = torch.Generator().manual_seed(0)
    height, width = size
    for _ in range(100):
        image = torch.rand(3, height, width, generator=generator)
        pasted, (top, left, box_height, box_width) = cut_paste(image, generator)
        inside = torch.zeros(height, width, dtype=torch.bool)
        inside[top : top + box_height, left : left + box_width] = True
        assert 0 <= top and top + box_height <= height and 0 <= left and left + box_width <= width
        assert 0.02 <= box_height * box_width / (height * width) <= 0.15
        assert 0.3 / 1.5 < box_width / box_height < 3.3 * 1.5  # log-uniform aspect, give or take pixel rounding
        assert torch.equal(pasted[:, ~inside], image[:, ~inside])  # nothing outside the box changes
        assert not torch.equal(pasted[:, inside], image[:, inside]) and pasted.min() >= 0 and pasted.max() <= 1


def test_pseudo_anomalies_turn_normal_images_only_and_are_seeded() -> None:
    images = torch.randn(6, 3, 64, 64, generator=torch.Generator().manual_seed(1)).clamp(-2, 2)
    labels = torch.tensor([NORMAL, SEEN, NORMAL, SEEN, NORMAL, NORMAL])
    all_of_them, new_labels = pseudo_anomalies(images, labels, torch.Generator().manual_seed(2), probability=1.0)
    assert new_labels.tolist() == [PSEUDO, SEEN, PSEUDO, SEEN, PSEUDO, PSEUDO]
    assert torch.equal(all_of_them[[1, 3]], images[[1, 3]])  # labelled anomalies untouched
    for i in (0, 2, 4, 5):  # a box changed, every other pixel bit for bit the same (normalised values)
        changed = (all_of_them[i] != images[i]).any(dim=0)
        rows, cols = changed.nonzero().unbind(1)
        box = (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1)
        assert changed.sum() > 0 and box <= 0.15 * 64 * 64
    none, same_labels = pseudo_anomalies(images, labels, torch.Generator().manual_seed(2), probability=0.0)
    assert torch.equal(none, images) and torch.equal(same_labels, labels)
    half = [pseudo_anomalies(images, labels, torch.Generator().manual_seed(7))[1] for _ in range(2)]
    assert torch.equal(half[0], half[1]) and set(half[0].tolist()) == {NORMAL, SEEN, PSEUDO}


def test_each_head_learns_its_own_contrast() -> None:
    """Scores in prior standard deviations: at the targets every loss is 0; then one known value each."""
    deviation = DeviationLoss(seed=0)
    mean, std = float(deviation.prior_mean), float(deviation.prior_std)
    labels = torch.tensor([NORMAL, SEEN, PSEUDO])
    target = torch.tensor(  # holistic, seen, pseudo, composite (in deviations)
        [
            [6.0, 0.0, 0.0, 0.0],  # normal: high normality, no abnormality
            [0.0, 6.0, 123.0, 6.0],  # seen anomaly: its pseudo-head score is not trained
            [0.0, -42.0, 6.0, 6.0],  # pseudo anomaly: its seen-head score is not trained
        ]
    )
    scores = lambda deviations: mean + deviations * std  # noqa: E731
    assert float(dra_loss(scores(target), labels, deviation)) == pytest.approx(0, abs=1e-5)
    moved = target.clone()
    moved[0, 0] = 2.0  # holistic head, normal image 3 short of the margin: +3 / 3 images
    moved[2, 1] = 1.0  # seen head, normal and seen rows only: unchanged
    moved[1, 2] = 0.0  # pseudo head, normal and pseudo rows only: unchanged
    moved[0, 3] = 1.0  # composite head, normal image 1 above the mean: +1 / 3 images
    moved[2, 2] = 4.0  # pseudo head, pseudo anomaly 1 short: +1 / 2 rows
    assert float(dra_loss(scores(moved), labels, deviation)) == pytest.approx(3 / 3 + 1 / 3 + 1 / 2, abs=1e-5)
    only_seen = dra_loss(scores(target[1:2]), labels[1:2], deviation)  # a batch of seen anomalies only: no pseudo term
    assert torch.isfinite(only_seen) and float(only_seen) == pytest.approx(0, abs=1e-5)


def test_anomaly_score_counts_normality_against() -> None:
    heads = torch.tensor([[1.0, 2.0, 3.0, 4.0], [5.0, 0.0, 0.0, 1.0]])
    assert anomaly_score(heads).tolist() == [8.0, -4.0]


def test_reference_images_are_fixed_by_the_seed_whatever_the_dataset_order() -> None:
    samples = pd.DataFrame(
        {"image_path": [f"/d/{i:02}.png" for i in range(20)], "label_index": [1 if i % 4 == 0 else 0 for i in range(20)]}
    )
    dataset = SimpleNamespace(samples=samples)
    shuffled = SimpleNamespace(samples=samples.sample(frac=1, random_state=0).reset_index(drop=True))
    paths = lambda ds, seed: {ds.samples.image_path[i] for i in choose_references(ds, 5, seed)}  # noqa: E731
    chosen = paths(dataset, 3)
    assert len(chosen) == 5 and chosen == paths(shuffled, 3) and chosen != paths(dataset, 4)
    assert all(samples.label_index[samples.image_path == p].item() == 0 for p in chosen)  # normal images only
    assert len(choose_references(SimpleNamespace(samples=samples[:3]), 5, 3)) == 2  # fewer normal images than asked


def test_heads_shapes_and_deterministic_evaluation() -> None:
    model = tiny_dra().model
    images = torch.randn(6, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    model.train()
    assert model(images).shape == (6, 4)
    model.eval()
    with torch.no_grad():
        first, again = model(images), model(images)
        halves = torch.cat([model(images[:2]).pred_score, model(images[2:]).pred_score])
        cached = model._reference_features
        model.train(False)  # a mode switch forgets the cached reference features; recomputed, they are the same
        recomputed = model(images).pred_score
    assert first.pred_score.shape == (6,) and first.anomaly_map is None  # image-level only
    assert torch.equal(first.pred_score, again.pred_score) and torch.equal(first.pred_score, recomputed)
    assert cached is not None and len(cached) == 2  # one mean reference feature map per scale
    torch.testing.assert_close(halves, first.pred_score)  # an image's score does not depend on its batch
    with pytest.raises(RuntimeError, match="no reference images"):
        Dra(pre_trained=False, evaluator=False, visualizer=False).model.eval()(images)


def test_catalog_builds_it_with_resnet18_and_image_metrics_only() -> None:
    entry = catalog.models()["dra"]
    assert model_class(entry) is Dra and entry.group == "supervised" and entry.epochs == 30
    assert entry.supervised_args == {} and not entry.pixel_maps
    model = Dra(pre_trained=False, evaluator=False, visualizer=False, **entry.init_args)
    assert model.num_references == 5 and model.pseudo_probability == 0.5 and model.model.backbone.scales == (1.0, 0.5)


def test_same_seed_same_training_step() -> None:
    images = torch.randn(4, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    batch = SimpleNamespace(image=images, gt_label=torch.tensor([False, False, True, True]))
    outcomes = []
    for _ in range(2):
        model = tiny_dra(seed=11)
        optimizer = model.configure_optimizers()["optimizer"]
        loss = model.training_step(batch)["loss"]
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            outcomes.append((float(loss), model.model.eval()(images).pred_score))
    assert outcomes[0][0] == outcomes[1][0] and torch.equal(outcomes[0][1], outcomes[1][1])
    assert math.isfinite(outcomes[0][0])


def test_planted_defect_scores_above_normal_images() -> None:
    """Random weights, 20 balanced steps (half the normal images become pseudo anomalies) on 16 noise
    images and 8 with a bright square: new squares at new places score above new noise images."""
    generator = torch.Generator().manual_seed(1)
    model = tiny_dra(seed=3, references=planted(5, False, generator))
    normal, anomalous = planted(16, False, generator), planted(8, True, generator)
    optimizer = model.configure_optimizers()["optimizer"]
    for _ in range(20):
        rows_normal, rows_anomalous = torch.randperm(16, generator=generator)[:4], torch.randperm(8, generator=generator)[:4]
        batch = SimpleNamespace(image=torch.cat([normal[rows_normal], anomalous[rows_anomalous]]), gt_label=torch.arange(8) >= 4)
        loss = model.training_step(batch)["loss"]
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
    with torch.no_grad():
        model.model.eval()
        good, bad = model.model(planted(8, False, generator)), model.model(planted(8, True, generator))
    assert bad.pred_score.mean() > good.pred_score.max() and auroc(bad.pred_score, good.pred_score) >= 0.9
