"""SimpleNet's invariants (shapes, hinge loss, training, determinism, feature cache) and one CLI run."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn
from torchvision.transforms.v2 import CenterCrop, Normalize

from tests.checks import run_tiny
from viadk8s import catalog
from viadk8s.catalog import SyntheticOptions
from viadk8s.data.synthetic import generate_category
from viadk8s.models.simplenet import Simplenet
from viadk8s.models.simplenet.torch_model import init_weight
from viadk8s.worker.adapters import model_class

SIZE = 64
GRID = SIZE // 8  # WideResNet-50-2's layer 2 has stride 8
STEPS = 40


def build(seed: int, **kwargs: object) -> Simplenet:
    """A SimpleNet with a random (frozen) backbone, initialised from ``seed``."""
    torch.manual_seed(seed)
    return Simplenet(pre_trained=False, **kwargs)


def train(model: Simplenet, features: torch.Tensor, steps: int) -> list[float]:
    """``steps`` optimiser steps on fixed patch features, as ``training_step`` takes them; the losses."""
    adaptor, discriminator = model.configure_optimizers()
    model.train()
    losses = []
    for _ in range(steps):
        adaptor.zero_grad()
        discriminator.zero_grad()
        loss = model.model.loss(features)[0]
        loss.backward()
        adaptor.step()
        discriminator.step()
        losses.append(loss.item())
    model.eval()
    return losses


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> dict[str, torch.Tensor]:
    """The synthetic 'fabric' category at 64 px (defects painted in), pre-processed as the worker does."""
    root = tmp_path_factory.mktemp("fabric")
    options = SyntheticOptions(categories=["fabric"], n_train=8, n_test_good=4, n_test_bad=4, size=SIZE)
    generate_category(options, "fabric", root)
    transform = Simplenet.configure_pre_processor(image_size=(SIZE, SIZE)).transform

    def load(paths: list[Path]) -> torch.Tensor:
        arrays = [np.array(Image.open(p).convert("RGB")) for p in paths]
        return transform(torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float() / 255)

    test = sorted((root / "test").glob("*/*.png"))
    return {
        "train": load(sorted((root / "train" / "good").glob("*.png"))),
        "good": load([p for p in test if p.parent.name == "good"]),
        "bad": load([p for p in test if p.parent.name != "good"]),
    }


@pytest.fixture(scope="module")
def trained(images: dict[str, torch.Tensor]) -> tuple[Simplenet, torch.Tensor, list[float]]:
    """A model trained on the train images' fixed features, those features and the losses."""
    model = build(0)
    features = model.model.embed(model.model.extract(images["train"]))[0]
    return model, features, train(model, features, STEPS)


def test_pre_processor_resizes_to_the_size_without_crop() -> None:
    transform = Simplenet.configure_pre_processor(image_size=(SIZE, SIZE)).transform
    assert transform(torch.rand(2, 3, 100, 80)).shape == (2, 3, SIZE, SIZE)
    assert not any(isinstance(t, CenterCrop) for t in transform.transforms)
    (normalize,) = [t for t in transform.transforms if isinstance(t, Normalize)]
    assert list(normalize.mean) == pytest.approx([0.485, 0.456, 0.406])


def test_shapes_of_patch_features_and_outputs(
    trained: tuple[Simplenet, torch.Tensor, list[float]], images: dict[str, torch.Tensor]
) -> None:
    model = trained[0]
    batch = images["good"][:2]
    layer2, layer3 = model.model.extract(batch)
    assert layer2.shape == (2, 512, GRID, GRID) and layer3.shape == (2, 1024, GRID // 2, GRID // 2)
    features, grid = model.model.embed([layer2, layer3])
    assert features.shape == (2 * GRID * GRID, 1536) and grid == (GRID, GRID)
    out = model.model(batch)
    assert out.pred_score.shape == (2,) and out.anomaly_map.shape == (2, SIZE, SIZE)
    # the image score is the highest patch score, and a non-square input keeps its shape
    assert torch.all(out.pred_score >= out.anomaly_map.flatten(1).amax(1) - 1e-6)
    wide = model.model(torch.cat([batch, batch[..., :32]], dim=-1))
    assert wide.anomaly_map.shape == (2, SIZE, SIZE + 32)


def test_initialisation_is_the_official_one() -> None:
    """Official ``init_weight``: Xavier-normal linear weights, N(0, 2/(fan_in + fan_out)); biases kept at
    PyTorch's U(±1/√fan_in) (GLASS's init zeroes them); BatchNorm at PyTorch's weight 1, bias 0."""
    network = build(0).model
    adaptor, (body, norm, _), tail = network.adaptor.layers[0], network.discriminator.body, network.discriminator.tail
    for layer, fan_in, fan_out in ((adaptor, 1536, 1536), (body, 1536, 1024), (tail, 1024, 1)):
        assert float(layer.weight.std()) == pytest.approx(math.sqrt(2 / (fan_in + fan_out)), rel=0.1), layer
    for layer in (adaptor, body):  # fan_in 1536: U(±0.0255), standard deviation 0.0255/√3
        bound = 1 / math.sqrt(1536)
        assert 0.99 * bound < float(layer.bias.abs().max()) <= bound
        assert float(layer.bias.std()) == pytest.approx(bound / math.sqrt(3), rel=0.1)
    assert tail.bias is None
    assert torch.equal(norm.weight, torch.ones(1024)) and torch.equal(norm.bias, torch.zeros(1024))
    zeroed = nn.Linear(4, 2)
    nn.init.zeros_(zeroed.bias)  # as GLASS leaves a Projection
    torch.manual_seed(0)
    init_weight(zeroed)
    assert bool((zeroed.bias != 0).all()) and float(zeroed.bias.abs().max()) <= 1 / math.sqrt(4)
    untouched = nn.BatchNorm1d(3)
    nn.init.constant_(untouched.weight, 2.0)
    init_weight(untouched)  # the official init leaves BatchNorm alone
    assert torch.equal(untouched.weight, torch.full((3,), 2.0))


def test_loss_is_one_when_the_discriminator_outputs_zero(trained: tuple[Simplenet, torch.Tensor, list[float]]) -> None:
    model = build(1).train()
    features = trained[1]
    initial, real, fake = model.model.loss(features)
    # real and fake features differ by 0.015 noise, so each patch pays about 2·margin or more
    assert initial.item() >= 0.95 and real.item() > 0 and fake.item() > 0
    with torch.no_grad():
        model.model.discriminator.tail.weight.zero_()
    loss, real, fake = model.model.loss(features)
    assert (loss.item(), real.item(), fake.item()) == (1.0, 0.5, 0.5)


def test_training_lowers_the_loss_and_separates_noised_features(trained: tuple[Simplenet, torch.Tensor, list[float]]) -> None:
    model, features, losses = trained
    assert losses[0] >= 0.95 and losses[-1] < 0.5 * losses[0] and losses[-1] < 1  # below 1 only by separating
    with torch.no_grad():
        real = model.model.adaptor(features)
        fake = real + torch.randn_like(real) * model.model.noise_std
        real_scores, fake_scores = model.model.discriminator(real), model.model.discriminator(fake)
    assert real_scores.mean() > fake_scores.mean()
    assert (real_scores > fake_scores).float().mean() > 0.8


def test_defective_images_score_above_good_ones(
    trained: tuple[Simplenet, torch.Tensor, list[float]], images: dict[str, torch.Tensor]
) -> None:
    model = trained[0]
    assert model.model(images["bad"]).pred_score.mean() > model.model(images["good"]).pred_score.mean()


def test_anomaly_map_peaks_where_a_patch_feature_is_perturbed(
    trained: tuple[Simplenet, torch.Tensor, list[float]], images: dict[str, torch.Tensor], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Feature-space defects (patch features far off the normal ones) show up at their patch, in every image."""
    model, clean = trained[0], images["good"]
    cells = [(2, 5), (6, 1), (0, 0), (7, 3)]  # one planted patch (row, column) per image
    before = model.model(clean)
    embed = model.model.embed

    def planted(maps: list[torch.Tensor]) -> tuple[torch.Tensor, tuple[int, int]]:
        features, grid = embed(maps)
        noise = torch.randn(len(cells), features.shape[1], generator=torch.Generator().manual_seed(0)) * 0.2
        rows = [b * GRID * GRID + r * GRID + c for b, (r, c) in enumerate(cells)]
        return features.index_add(0, torch.tensor(rows), noise), grid

    monkeypatch.setattr(model.model, "embed", planted)
    after = model.model(clean)
    assert torch.all(after.pred_score > before.pred_score)
    peaks = (after.anomaly_map - before.anomaly_map).flatten(1).argmax(1)
    assert [(int(i) // SIZE // 8, int(i) % SIZE // 8) for i in peaks] == cells


def test_same_seed_same_scores(images: dict[str, torch.Tensor]) -> None:
    def scores(seed: int) -> torch.Tensor:
        model = build(seed)
        torch.manual_seed(seed)
        train(model, model.model.embed(model.model.extract(images["train"][:4]))[0], 3)
        return model.model(images["good"]).pred_score

    first = scores(3)
    assert torch.equal(first, scores(3)) and first.std() > 0


def test_cached_and_uncached_features_give_the_same_loss(images: dict[str, torch.Tensor]) -> None:
    cached, uncached = build(5), build(5, cache_features=False)
    assert uncached.feature_cache is None
    batch, keys = images["train"][:4], [f"train/{i}.png" for i in range(4)]
    first = cached.training_features(batch, keys)
    assert len(cached.feature_cache) == 4
    # a second epoch reads the cache: other pixels under the same paths give the same features
    assert torch.equal(cached.training_features(torch.zeros_like(batch), keys), first)
    assert torch.equal(uncached.training_features(batch, keys), first)
    losses = []
    for model in (cached, uncached):
        model.train()
        torch.manual_seed(11)
        losses.append(model.model.loss(model.training_features(batch, keys))[0])
    assert torch.equal(losses[0], losses[1])


def test_catalog_entry_is_one_class_and_importable() -> None:
    entry = catalog.model("simplenet")
    assert model_class(entry) is Simplenet and entry.supervised_args is None and entry.epochs == 160
    assert entry.min_image_size <= SIZE


def test_end_to_end_run_through_the_cli(cli, tiny_config: Path) -> None:  # noqa: ANN001
    result, scores = run_tiny(cli, tiny_config, "simplenet", "--categories", "fabric", "--seeds", "1", "--batch-size", "4")
    assert result["tested_epoch"] == 2  # the last epoch, never the best on test
    assert len(scores) == 12 and scores.label.sum() == 6 and scores.score.notna().all()
