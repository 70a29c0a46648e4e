"""DevNet (viadk8s.models.devnet): the deviation loss at known points, top-k scoring, the
nearest-neighbour second scale, the random rotation of training images, shapes, determinism, its
training recipe (the official scheduler's steps) and a planted defect. The CLI run is in
tests/test_supervised_data.py."""

from __future__ import annotations

from collections.abc import Iterator
from types import SimpleNamespace

import pytest
import torch
from lightning.pytorch import seed_everything

from viadk8s import catalog
from viadk8s.models.components.balanced import requested_batches
from viadk8s.models.components.deviation import DeviationLoss
from viadk8s.models.components.deviation_training import OFFICIAL_BATCH
from viadk8s.models.components.multiscale import rescale
from viadk8s.models.components.normalisation import IMAGENET_MEAN, IMAGENET_STD
from viadk8s.models.components.top_k import top_k_mean
from viadk8s.models.devnet import Devnet
from viadk8s.models.devnet.torch_model import random_rotation, rotate
from viadk8s.worker.adapters import model_class

pytestmark = pytest.mark.filterwarnings("ignore:You are trying to `self.log\\(\\)`")  # training steps outside a Trainer


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    """Small tensors on a shared 2-core machine: one thread avoids OpenMP's spin-waiting."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_devnet(seed: int = 3, **kwargs: object) -> Devnet:
    seed_everything(seed, verbose=False)
    return Devnet(pre_trained=False, evaluator=False, visualizer=False, **kwargs)


def planted(count: int, defects: bool, generator: torch.Generator) -> torch.Tensor:
    """Noise images (already normalised), with a bright 24x24 square at a random place if ``defects``."""
    images = 0.5 * torch.randn(count, 3, 64, 64, generator=generator)
    if defects:
        for image in images:
            top, left = torch.randint(0, 41, (2,), generator=generator).tolist()
            image[:, top : top + 24, left : left + 24] += 2.5
    return images


def auroc(bad: torch.Tensor, good: torch.Tensor) -> float:
    return float((bad[:, None] > good[None, :]).float().mean())


def test_deviation_loss_at_known_points() -> None:
    loss = DeviationLoss(seed=0)
    mean, std = float(loss.prior_mean), float(loss.prior_std)
    at = lambda *deviations: torch.tensor([mean + d * std for d in deviations])  # noqa: E731
    normal, anomaly = torch.tensor([0.0]), torch.tensor([1.0])
    assert float(loss(at(0), normal)) == pytest.approx(0, abs=1e-6)  # a normal image at the prior mean
    assert float(loss(at(5), anomaly)) == pytest.approx(0, abs=1e-6)  # an anomaly at the margin ...
    assert float(loss(at(7.5), anomaly)) == 0  # ... and beyond it
    assert float(loss(at(2), normal)) == pytest.approx(2)  # |dev|
    assert float(loss(at(-3), normal)) == pytest.approx(3)
    assert float(loss(at(0), anomaly)) == pytest.approx(5)  # margin - dev
    assert float(loss(at(2), anomaly)) == pytest.approx(3)
    assert float(loss(at(2, 2, 0, 7), torch.tensor([0, 1, 1, 1]))) == pytest.approx((2 + 3 + 5 + 0) / 4)  # batch mean
    assert float(loss(at(2), torch.tensor([True]))) == pytest.approx(3)  # anomalib's boolean labels


def test_reference_scores_are_drawn_once_from_the_seed() -> None:
    a, b, c = DeviationLoss(seed=4), DeviationLoss(seed=4), DeviationLoss(seed=5)
    assert torch.equal(a.prior_mean, b.prior_mean) and torch.equal(a.prior_std, b.prior_std)
    assert not torch.equal(a.prior_mean, c.prior_mean)
    assert abs(float(a.prior_mean)) < 0.05 and abs(float(a.prior_std) - 1) < 0.05  # 5000 draws of N(0, 1)
    scores, labels = torch.tensor([0.3, 6.0]), torch.tensor([0, 1])
    assert float(a(scores, labels)) == float(a(scores, labels))  # not redrawn per call


def test_top_k_mean_averages_the_highest_tenth() -> None:
    ramp = torch.arange(100.0).reshape(1, 10, 10)
    assert top_k_mean(ramp, 0.1).tolist() == [94.5]  # mean of 90..99
    assert top_k_mean(torch.tensor([[[3.0, 1.0], [2.0, 0.0]]]), 0.1).tolist() == [3.0]  # at least one position


def test_second_scale_is_the_nearest_neighbour_half() -> None:
    """The official ``F.interpolate(image, size=img_size // 2)``: nearest neighbour, sides rounded down;
    output pixel i reads input pixel floor(i * in / out)."""
    square = torch.arange(16.0).reshape(1, 1, 4, 4)
    assert rescale(square, 0.5).tolist() == [[[[0.0, 2.0], [8.0, 10.0]]]]  # rows/columns 0 and 2: no blending
    odd = torch.arange(25.0).reshape(1, 1, 5, 5)  # 5 // 2 = 2 pixels a side, reading 0 and floor(2.5) = 2
    assert rescale(odd, 0.5).tolist() == [[[[0.0, 2.0], [10.0, 12.0]]]]
    assert rescale(square, 1.0) is square


def test_rotation_turns_each_image_and_fills_its_corners_black() -> None:
    image = torch.arange(9.0).reshape(1, 1, 3, 3)
    assert torch.equal(rotate(image, [90.0], [-1.0]), torch.rot90(image, 1, dims=(-2, -1)))  # counter-clockwise
    assert torch.equal(rotate(image, [180.0], [-1.0]), image.flip(-1).flip(-2))
    turned = rotate(torch.arange(25.0).reshape(1, 1, 5, 5), [45.0], [-1.0])[0, 0]
    # the corners are 2.83 pixels from the centre along a diagonal: turned by 45 degrees they come from
    # outside the 5x5 image (2.83 > 2.5) and take the fill; the centre stays
    assert [turned[0, 0], turned[0, 4], turned[4, 0], turned[4, 4]] == [-1.0] * 4 and turned[2, 2] == 12.0
    black = [-m / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD, strict=True)]
    images = torch.randn(6, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    first, again = (random_rotation(images, torch.Generator().manual_seed(4), 180.0) for _ in range(2))
    assert torch.equal(first, again) and not torch.equal(first, images)  # seeded, and it turns the images
    for c in range(3):  # a 16x16 image turned by an angle not a multiple of 90 degrees uncovers black corners
        assert (first[:, c] == black[c]).any()
    assert random_rotation(images, torch.Generator().manual_seed(4), 0.0) is images


def test_training_turns_the_images_by_the_seeded_random_angles() -> None:
    """DevNet keeps the official ``RandomRotation(180)`` (the paper's benchmark removed it for DRA only):
    the network trains on the batch turned by angles drawn from the run seed."""
    model = tiny_devnet(seed=11)
    assert model.rotation == 180.0
    images = torch.randn(4, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    seen: list[torch.Tensor] = []
    model.model.register_forward_pre_hook(lambda _module, args: seen.append(args[0]))
    model.training_step(SimpleNamespace(image=images, gt_label=torch.tensor([False, False, True, True])))
    assert torch.equal(seen[0], random_rotation(images, torch.Generator().manual_seed(11), 180.0))


def test_scores_and_maps_have_the_expected_shapes() -> None:
    model = tiny_devnet().model
    images = torch.randn(3, 3, 64, 64)
    model.train()
    assert model(images).shape == (3,)
    model.eval()
    with torch.no_grad():
        square, wide = model(images), model(torch.randn(2, 3, 64, 96))
    assert square.pred_score.shape == (3,) and square.anomaly_map.shape == (3, 64, 64)
    assert wide.anomaly_map.shape == (2, 64, 96) and (square.pred_score >= 0).all()


def test_evaluation_is_deterministic() -> None:
    model = tiny_devnet().model.eval()
    images = torch.randn(6, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        first, again = model(images), model(images)
        halves = torch.cat([model(images[:2]).pred_score, model(images[2:]).pred_score])
    assert torch.equal(first.pred_score, again.pred_score) and torch.equal(first.anomaly_map, again.anomaly_map)
    torch.testing.assert_close(halves, first.pred_score)  # an image's score does not depend on its batch


def test_same_seed_same_training_step() -> None:
    images = torch.randn(4, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    batch = SimpleNamespace(image=images, gt_label=torch.tensor([False, False, True, True]))
    outcomes = []
    for _ in range(2):
        model = tiny_devnet(seed=11)
        optimizer = model.configure_optimizers()["optimizer"]
        loss = model.training_step(batch)["loss"]
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            outcomes.append((float(loss), model.model.eval()(images).pred_score))
    assert outcomes[0][0] == outcomes[1][0] and torch.equal(outcomes[0][1], outcomes[1][1])


def test_training_recipe() -> None:
    """Adam, 48-image batches (24 + 24), the learning rate x0.1 after epochs 10, 20, ...: the official
    loop steps its StepLR after each epoch."""
    model = tiny_devnet()
    configured = model.configure_optimizers()
    optimizer, scheduler = configured["optimizer"], configured["lr_scheduler"]["scheduler"]
    assert isinstance(optimizer, torch.optim.Adam) and configured["lr_scheduler"]["interval"] == "epoch"
    assert optimizer.defaults["lr"] == 2e-4 and optimizer.defaults["weight_decay"] == 1e-5
    assert sum(len(g["params"]) for g in optimizer.param_groups) == len(list(model.model.parameters()))  # fine-tuned
    rates = []
    for _ in range(50):  # per epoch: the rate it trains with, then Lightning's step at the epoch's end
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert rates == pytest.approx([2e-4] * 10 + [2e-5] * 10 + [2e-6] * 10 + [2e-7] * 10 + [2e-8] * 10)
    batches = requested_batches(Devnet)  # what the worker reads
    assert batches is Devnet.balanced_batches
    assert (batches.batch_size, batches.normal_share, batches.references) == (OFFICIAL_BATCH, 0.5, 0)
    assert OFFICIAL_BATCH == 48 and batches.steps_per_epoch == 20
    assert model.trainer_arguments["gradient_clip_val"] == 1.0 and model.trainer_arguments["gradient_clip_algorithm"] == "norm"


def test_catalog_builds_it_with_resnet18_and_image_metrics_only() -> None:
    entry = catalog.models()["devnet"]
    assert model_class(entry) is Devnet and entry.group == "supervised" and entry.epochs == 50
    assert entry.supervised_args == {} and not entry.pixel_maps
    model = Devnet(pre_trained=False, evaluator=False, visualizer=False, **entry.init_args)
    assert model.model.backbone.channels == 512 and model.model.backbone.scales == (1.0, 0.5)


def test_planted_defect_scores_above_normal_images() -> None:
    """Random weights, 30 balanced steps on 16 noise images and 8 with a bright square, every image
    turned at random (after 20 such steps the AUROC is still 0.875): new images with a square
    at new places score above new noise images."""
    generator = torch.Generator().manual_seed(1)
    model = tiny_devnet(seed=3)
    normal, anomalous = planted(16, False, generator), planted(8, True, generator)
    optimizer = model.configure_optimizers()["optimizer"]
    for _ in range(30):
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
