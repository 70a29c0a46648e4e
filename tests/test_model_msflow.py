"""MSFlow (viadk8s.models.msflow): invariants of its flows, loss, maps and feature cache, and one CLI run."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from lightning.pytorch import seed_everything

from tests.checks import run_tiny
from viadk8s.models.msflow import Msflow
from viadk8s.models.msflow.lightning_model import learning_rate_factor
from viadk8s.models.msflow.torch_model import MultiScaleFlow, anomaly_map, nll_loss, top_k_score

SHAPES = [(4, 4, 4), (5, 2, 2), (8, 2, 2)]  # (C, H, W) of each scale: a few channels (one odd), tiny maps
Transform = Callable[[list[torch.Tensor], bool], tuple[list[torch.Tensor], torch.Tensor]]


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    """These tensors are tiny: with two threads OpenMP's spin-waiting on the shared 2-core machine costs 10x."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_flow(dtype: torch.dtype = torch.float64, perturb: float = 0.3) -> MultiScaleFlow:
    """Parallel + fusion flows on SHAPES; ``perturb`` moves the couplings away from their near-identity start."""
    torch.manual_seed(0)
    flow = MultiScaleFlow([c for c, _, _ in SHAPES], flow_blocks=[1, 2, 2], clamp=1.9, condition_channels=4).to(dtype)
    with torch.no_grad():
        for parameter in flow.parameters():
            if parameter.requires_grad:
                parameter.add_(perturb * torch.randn_like(parameter))
    return flow


def tiny_features(batch: int = 2, dtype: torch.dtype = torch.float64, seed: int = 1) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, *shape, generator=generator, dtype=dtype) for shape in SHAPES]


def parts(flow: MultiScaleFlow) -> dict[str, Transform]:
    """The parallel flows (all scales, each on its own), the fusion flow, and both in sequence."""

    def parallel(xs: list[torch.Tensor], rev: bool = False) -> tuple[list[torch.Tensor], torch.Tensor]:
        outputs = [f(x, rev=rev) for f, x in zip(flow.parallel, xs, strict=True)]
        return [y for y, _ in outputs], sum(log_det for _, log_det in outputs)

    return {"parallel": parallel, "fusion": flow.fusion, "both": flow}


def flatten(xs: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat([x.flatten(1) for x in xs], dim=1)


def unflatten(vector: torch.Tensor) -> list[torch.Tensor]:
    sizes = [c * h * w for c, h, w in SHAPES]
    return [v.reshape(1, *shape) for v, shape in zip(vector.split(sizes), SHAPES, strict=True)]


def tiny_model(seed: int = 3, **kwargs: object) -> Msflow:
    """A small random-weight MSFlow (ResNet-18 layers 1-3, 64 px) for fast model-level checks."""
    seed_everything(seed, verbose=False)
    return Msflow(
        backbone="resnet18",
        pre_trained=False,
        flow_blocks=(1, 2, 2),
        condition_channels=8,
        pre_processor=Msflow.configure_pre_processor(image_size=(64, 64)),
        evaluator=False,
        visualizer=False,
        **kwargs,
    )


@pytest.mark.parametrize("part", ["parallel", "fusion", "both"])
def test_flows_invert(part: str) -> None:
    transform = parts(tiny_flow())[part]
    xs = tiny_features()
    latents, log_det = transform(xs, False)
    back, log_det_back = transform(latents, True)
    assert not torch.allclose(flatten(latents), flatten(xs), atol=1e-3)  # it does transform
    torch.testing.assert_close(flatten(back), flatten(xs), rtol=0, atol=1e-10)
    torch.testing.assert_close(log_det_back, -log_det, rtol=0, atol=1e-9)


@pytest.mark.parametrize("part", ["parallel", "fusion", "both"])
def test_log_det_is_that_of_the_autograd_jacobian(part: str) -> None:
    transform = parts(tiny_flow())[part]
    x = flatten(tiny_features(batch=1))[0]
    jacobian = torch.autograd.functional.jacobian(lambda v: flatten(transform(unflatten(v), False)[0])[0], x)
    sign, log_abs_det = torch.linalg.slogdet(jacobian)
    _, log_det = transform(unflatten(x), False)
    assert sign != 0 and abs(float(log_abs_det)) > 0.1  # a non-trivial, invertible transform
    torch.testing.assert_close(log_det[0], log_abs_det, rtol=1e-9, atol=1e-9)


def test_nll_loss_at_known_points() -> None:
    latents = [torch.ones(2, *shape) for shape in SHAPES]
    dims = sum(c * h * w for c, h, w in SHAPES)
    assert float(nll_loss(latents, torch.zeros(2))) == pytest.approx(0.5)  # 0.5 |z|^2 per dimension
    assert float(nll_loss(latents, torch.tensor([0.0, 2.0 * dims]))) == pytest.approx(-0.5)  # batch mean of 0.5, -1.5
    assert float(nll_loss([torch.zeros(1, *shape) for shape in SHAPES], torch.zeros(1))) == 0.0


def test_anomaly_map_adds_the_scales_and_scores_the_top_pixels() -> None:
    latents = [torch.full((1, *shape), 2.0) for shape in SHAPES]  # log p = -0.5 * 4 at every cell of every scale
    torch.testing.assert_close(anomaly_map(latents, (16, 16)), torch.full((1, 16, 16), 6.0))
    latents[2][0, :, 0, 1] = 10.0  # one unlikely cell, top right of the coarsest scale
    maps = anomaly_map(latents, (16, 16))
    assert maps.shape == (1, 16, 16) and maps[0, :8, 8:].mean() > maps[0, 8:, :8].mean() + 10  # higher = more anomalous
    ramp = torch.arange(100.0).reshape(1, 10, 10)
    torch.testing.assert_close(top_k_score(ramp, 0.03), torch.tensor([98.0]))  # mean of the top 3 of 100 pixels
    torch.testing.assert_close(top_k_score(ramp, 0.001), torch.tensor([99.0]))  # never fewer than one pixel


def test_output_maps_are_at_input_size() -> None:
    model = tiny_model().model.eval()
    with torch.no_grad():
        square, wide = model(torch.randn(3, 3, 64, 64)), model(torch.randn(2, 3, 64, 96))
    assert square.anomaly_map.shape == (3, 64, 64) and square.pred_score.shape == (3,)
    assert wide.anomaly_map.shape == (2, 64, 96) and torch.isfinite(wide.anomaly_map).all()


def test_nll_falls_when_trained_on_fixed_features() -> None:
    flow = tiny_flow(torch.float32, perturb=0.0)
    xs = [3.0 + 2.0 * x for x in tiny_features(batch=8, dtype=torch.float32)]  # not standard normal yet
    optimizer = torch.optim.Adam(flow.parameters(), lr=1e-3)
    losses = []
    for _ in range(25):
        loss = nll_loss(*flow(xs))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.5 and losses[-1] < min(losses[:5])


def test_learning_rate_schedule() -> None:
    factors = [learning_rate_factor(epoch, max_epochs=100, warmup_epochs=3) for epoch in range(100)]
    assert factors[:4] == pytest.approx([0.1, 0.4, 0.7, 1.0])
    assert factors[69] == 1.0 and factors[70] == pytest.approx(0.33) and factors[90] == pytest.approx(0.33**2)


def test_same_seed_same_numbers() -> None:
    images = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    outputs = []
    for _ in range(2):
        model = tiny_model(seed=11)
        optimizer = torch.optim.Adam(model.model.flows.parameters(), lr=1e-3)
        loss = nll_loss(*model.model.flows(model.model.extract(images)))
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            outputs.append((float(loss), model.model.eval()(images)))
    (loss_a, a), (loss_b, b) = outputs
    assert loss_a == loss_b
    assert torch.equal(a.anomaly_map, b.anomaly_map) and torch.equal(a.pred_score, b.pred_score)


def test_cached_features_give_the_uncached_loss() -> None:
    images = torch.randn(4, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    batch = SimpleNamespace(image=images, image_path=[f"img{i}.png" for i in range(4)])
    cached, uncached = tiny_model(), tiny_model(cache_features=False)
    assert uncached.feature_cache is None
    first = cached.training_features(batch)  # computes and stores
    reordered = cached.training_features(SimpleNamespace(image=images.flip(0), image_path=batch.image_path[::-1]))
    again = cached.training_features(batch)  # read back
    plain = uncached.training_features(batch)
    assert len(cached.feature_cache) == 4
    for a, b, c, d in zip(first, again, plain, reordered, strict=True):
        assert torch.equal(a, b) and torch.equal(a, c) and torch.equal(a, d.flip(0))
    losses = [float(nll_loss(*model.model.flows(features))) for model, features in ((cached, again), (uncached, plain))]
    assert losses[0] == losses[1]


def test_planted_defect_scores_above_normal_images() -> None:
    """Trained on flat noisy images, the flows find a bright square: higher score, map peak inside it."""
    model = tiny_model(seed=5)
    generator = torch.Generator().manual_seed(1)
    normal = lambda n: 0.3 * torch.randn(n, 3, 64, 64, generator=generator)  # noqa: E731
    features = model.model.extract(normal(8))
    optimizer = torch.optim.Adam(model.model.flows.parameters(), lr=1e-3)
    for _ in range(10):
        loss = nll_loss(*model.model.flows(features))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    test = normal(4)
    test[:2, :, 16:32, 32:48] += 3.0
    with torch.no_grad():
        out = model.model.eval()(test)
    assert out.pred_score[:2].min() > out.pred_score[2:].max()
    for i in range(2):
        row, col = divmod(int(out.anomaly_map[i].argmax()), 64)
        assert 12 <= row < 36 and 28 <= col < 52  # the square, give or take the coarse scales' blur


def test_cli_run_gives_image_and_pixel_metrics(cli, tiny_config: Path) -> None:  # noqa: ANN001
    """Random weights, 2 epochs: the scores' order means little (the planted-defect test checks it)."""
    _, scores = run_tiny(cli, tiny_config, "msflow")
    assert sorted(scores["label"].value_counts().items()) == [(0, 6), (1, 6)] and scores["score"].notna().all()
