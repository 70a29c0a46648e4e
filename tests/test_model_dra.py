"""DRA (viadk8s.models.dra): CutMix pseudo anomalies (area, nothing outside the box), the official
batch composition (references, normal, pseudo, seen), references re-drawn per batch from the seed,
no rotation, the four heads' losses and score, the official scheduler's steps, fixed seeded
evaluation references, deterministic evaluation and a planted defect. The CLI run is in
tests/test_supervised_data.py (the nearest-neighbour second scale, shared, in tests/test_model_devnet.py)."""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator
from types import SimpleNamespace

import pandas as pd
import pytest
import torch
from lightning.pytorch import seed_everything

from tests.test_model_devnet import auroc, planted
from viadk8s import catalog
from viadk8s.data.supervised import BalancedBatchSampler
from viadk8s.models.components.deviation import DeviationLoss
from viadk8s.models.dra import Dra
from viadk8s.models.dra.lightning_model import REFERENCES, choose_references
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


LABELS = [0] * 40 + [1] * 4  # 40 normal training images, then 4 labelled anomalies


def dra_sampler(batch_size: int, seed: int = 3, steps: int = 20) -> BalancedBatchSampler:
    asked = Dra.balanced_batches
    assert asked is not None
    return BalancedBatchSampler(LABELS, batch_size, steps, seed, asked.normal_share, asked.references)


def as_batch(indices: list[int], size: int = 16) -> SimpleNamespace:
    """Images ``(len, 3, size, size)`` whose every pixel holds the dataset index; the labels of LABELS."""
    image = torch.tensor(indices, dtype=torch.float32).view(-1, 1, 1, 1).expand(-1, 3, size, size).clone() / 50
    return SimpleNamespace(image=image, gt_label=torch.tensor([LABELS[i] == 1 for i in indices]))


@pytest.mark.parametrize(("batch_size", "normal", "seen"), [(48, 32, 16), (16, 10, 6), (3, 2, 1)])
def test_batches_are_references_then_two_thirds_normal_then_seen(batch_size: int, normal: int, seen: int) -> None:
    """The official sampler: floor(2/3 of the batch) normal images, the rest labelled anomalies, and 5
    references ahead (48: 32 + 16 + 5, the official batch; 16: 10 + 6; 3: 2 + 1). Every normal query
    (and reference) becomes a pseudo anomaly with probability 0.5: with 1 all of them, with 0 none."""
    assert Dra.balanced_batches is not None and Dra.balanced_batches.batch_size == 48 and REFERENCES == 5
    indices = next(iter(dra_sampler(batch_size)))
    assert [LABELS[i] for i in indices] == [0] * 5 + [0] * normal + [1] * seen
    batch = as_batch(indices)
    for probability, expected in ((1.0, [PSEUDO] * normal + [SEEN] * seen), (0.0, [NORMAL] * normal + [SEEN] * seen)):
        queries, labels, references = tiny_dra(pseudo_probability=probability).queries_and_references(batch)
        assert labels.tolist() == expected and len(queries) == batch_size and len(references) == 5
        assert torch.equal(references, batch.image[:5]) == (probability == 0)  # references become pseudo anomalies too


def test_half_the_normal_queries_become_pseudo_anomalies() -> None:
    """Official batches of 48, 200 of them: of the 32 normal slots a batch, about half are pseudo anomalies
    (6,400 Bernoulli(0.5) draws: 0.5 +- 0.025 is four standard deviations)."""
    model = tiny_dra(seed=5)
    counts = torch.zeros(3)
    for indices in dra_sampler(48, steps=200):
        _, labels, _ = model.queries_and_references(as_batch(indices, size=8))
        counts += torch.bincount(labels, minlength=3)
    assert counts[SEEN] == 200 * 16 and counts[NORMAL] + counts[PSEUDO] == 200 * 32
    assert abs(float(counts[PSEUDO]) / (200 * 32) - 0.5) < 0.025


def test_references_are_redrawn_for_every_batch_from_the_seed() -> None:
    """Each batch brings 5 new normal images as references, cycling through all 40 normal images
    before any comes back (as the official reference loader does), from their own seeded stream: the
    same seed gives the same references, another seed others, and the batches' other draws are those
    of a sampler that asks for no references."""
    first, again, other = ([batch[:5] for batch in dra_sampler(48, seed)] for seed in (3, 3, 4))
    assert first == again and first != other
    assert all(LABELS[i] == 0 for references in first for i in references)
    assert all(a != b for a, b in zip(first, first[1:], strict=False))  # new references for every batch
    assert sorted(i for references in first[:8] for i in references) == list(range(40))  # 8 x 5: each once
    plain = BalancedBatchSampler(LABELS, 48, 20, 3, Dra.balanced_batches.normal_share)  # type: ignore[union-attr]
    assert [batch[5:] for batch in dra_sampler(48)] == list(plain)


def test_training_compares_the_queries_with_the_batch_references_unrotated() -> None:
    """The network sees the batch's first 5 images as references and the rest as queries, as the loader
    gave them: no random rotation (the paper's benchmark removed it for DRA)."""
    model = tiny_dra(pseudo_probability=0.0)
    assert not hasattr(model, "rotation")
    batch = SimpleNamespace(
        image=torch.randn(9, 3, 64, 64, generator=torch.Generator().manual_seed(1)), gt_label=torch.arange(9) >= 7
    )
    seen: list[tuple[torch.Tensor, ...]] = []
    model.model.register_forward_pre_hook(lambda _module, args: seen.append(args))
    model.training_step(batch)
    queries, references = seen[0]
    assert torch.equal(queries, batch.image[5:]) and torch.equal(references, batch.image[:5])
    with pytest.raises(RuntimeError, match="starts with 5 reference images, then its queries: got 5 images"):
        model.training_step(SimpleNamespace(image=batch.image[:5], gt_label=batch.gt_label[:5]))


def test_learning_rate_steps_as_in_the_official_loop() -> None:
    """The official loop calls its StepLR(10, 0.1) before each epoch, which (PyTorch >= 1.1) skips the
    first value: 9 epochs at 2e-4, then 10 at 2e-5, 10 at 2e-6, the 30th at 2e-7. Ours, stepped by
    Lightning after each epoch, gives the same rates; the official loop itself is replayed as a check."""
    model = tiny_dra()
    configured = model.configure_optimizers()
    optimizer, scheduler = configured["optimizer"], configured["lr_scheduler"]["scheduler"]
    assert configured["lr_scheduler"]["interval"] == "epoch"
    ours = []
    for _ in range(30):
        ours.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert ours == pytest.approx([2e-4] * 9 + [2e-5] * 10 + [2e-6] * 10 + [2e-7])
    official_optimizer = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=2e-4, weight_decay=1e-5)
    official_scheduler = torch.optim.lr_scheduler.StepLR(official_optimizer, step_size=10, gamma=0.1)
    official = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # PyTorch warns of exactly this order
        for _ in range(30):
            official_scheduler.step()  # before the epoch's optimizer steps
            official.append(official_optimizer.param_groups[0]["lr"])
            official_optimizer.step()
    assert ours == pytest.approx(official)


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
    assert model(images, model.references).shape == (6, 4)
    with pytest.raises(RuntimeError, match="trains with reference images"):
        model(images)
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
    assert model.pseudo_probability == 0.5 and model.model.backbone.scales == (1.0, 0.5)


def test_same_seed_same_training_step() -> None:
    images = torch.randn(9, 3, 64, 64, generator=torch.Generator().manual_seed(1))  # 5 references, 4 queries
    batch = SimpleNamespace(image=images, gt_label=torch.tensor([False] * 7 + [True] * 2))
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
    """Random weights, 20 balanced steps (5 references, 4 normal images, 4 with a bright square; half
    the normal images become pseudo anomalies) on 16 noise images and 8 with a square: new squares at
    new places score above new noise images."""
    generator = torch.Generator().manual_seed(1)
    model = tiny_dra(seed=3, references=planted(5, False, generator))
    normal, anomalous = planted(16, False, generator), planted(8, True, generator)
    optimizer = model.configure_optimizers()["optimizer"]
    for _ in range(20):
        rows_normal, rows_anomalous = torch.randperm(16, generator=generator)[:9], torch.randperm(8, generator=generator)[:4]
        batch = SimpleNamespace(image=torch.cat([normal[rows_normal], anomalous[rows_anomalous]]), gt_label=torch.arange(13) >= 9)
        loss = model.training_step(batch)["loss"]
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
    with torch.no_grad():
        model.model.eval()
        good, bad = model.model(planted(8, False, generator)), model.model(planted(8, True, generator))
    assert bad.pred_score.mean() > good.pred_score.max() and auroc(bad.pred_score, good.pred_score) >= 0.9
