"""MSFlow (viadk8s.models.msflow): invariants of its flows, the official loss, maps, schedule and clip,
the feature cache, one run through the worker and one CLI run."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from anomalib.post_processing import PostProcessor
from lightning.pytorch import seed_everything
from sklearn.metrics import roc_auc_score

from tests.checks import run_tiny
from tests.conftest import TINY
from viadk8s import metrics
from viadk8s.catalog import SyntheticOptions
from viadk8s.data.layout import scan_category
from viadk8s.data.samples import SamplesDataModule
from viadk8s.data.synthetic import generate_category
from viadk8s.models.components.top_k import top_k_mean
from viadk8s.models.msflow import Msflow
from viadk8s.models.msflow.lightning_model import GRADIENT_CLIP_NORM, learning_rate_factor, warmup_epochs
from viadk8s.models.msflow.torch_model import (
    FusionFlow,
    MultiScaleFlow,
    addition_map,
    log_likelihoods,
    multiplication_map,
    nll_loss,
)
from viadk8s.spec import RunSpec, Trainer
from viadk8s.worker.adapters import evaluator
from viadk8s.worker.training import train_and_test

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


def tiny_model(seed: int = 3, cls: type[Msflow] = Msflow, **kwargs: object) -> Msflow:
    """A small random-weight MSFlow (ResNet-18 layers 1-3, 64 px) for fast model-level checks."""
    seed_everything(seed, verbose=False)
    return cls(
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


def test_nll_loss_sums_every_dimension_of_an_image() -> None:
    latents = [torch.ones(2, *shape) for shape in SHAPES]
    dims = sum(c * h * w for c, h, w in SHAPES)  # 64 + 20 + 32 = 116
    assert float(nll_loss(latents, torch.zeros(2))) == pytest.approx(0.5 * dims)  # 0.5 |z|^2, summed
    assert float(nll_loss(latents, torch.tensor([0.0, 2.0 * dims]))) == pytest.approx(-0.5 * dims)  # mean of 58, -174
    assert float(nll_loss([torch.zeros(1, *shape) for shape in SHAPES], torch.zeros(1))) == 0.0


def two_scales() -> list[torch.Tensor]:
    """Per-scale log-likelihood maps of two images: a 2x2 scale and a 3x3 one. Image 1 is image 0 with
    each scale shifted by a constant (+7, -3), so per-image normalisation must give it image 0's maps."""
    coarse = torch.tensor([[0.0, -2.0], [-4.0, -6.0]], dtype=torch.float64)
    fine = torch.zeros(3, 3, dtype=torch.float64)
    fine[1, 1] = -1.0
    return [torch.stack([coarse, coarse + 7]), torch.stack([fine, fine - 3])]


def test_multiplication_map_by_hand() -> None:
    """The coarse scale upsampled to 3x3 with corners aligned is [[0,-1,-2],[-2,-3,-4],[-4,-5,-6]]; adding
    the fine one gives S, whose maximum is 0, and the map is 1 - exp(S)."""
    total = [[0, -1, -2], [-2, -4, -4], [-4, -5, -6]]
    expected = torch.tensor([[1 - math.exp(v) for v in row] for row in total], dtype=torch.float64)
    maps = multiplication_map(two_scales(), (3, 3))
    torch.testing.assert_close(maps, torch.stack([expected, expected]), rtol=0, atol=1e-12)
    torch.testing.assert_close(top_k_mean(maps, 0.03), torch.full((2,), 1 - math.exp(-6), dtype=torch.float64))


def test_addition_map_by_hand() -> None:
    """Per scale exp(log p - max): the coarse [[1, e^-2], [e^-4, e^-6]] upsampled (midpoints are means),
    the fine one 1 but e^-1 at the centre; their sum A peaks at 2 in the corner, the map is 2 - A."""
    e = math.exp
    coarse = [
        [1, (1 + e(-2)) / 2, e(-2)],
        [(1 + e(-4)) / 2, (1 + e(-2) + e(-4) + e(-6)) / 4, (e(-2) + e(-6)) / 2],
        [e(-4), (e(-4) + e(-6)) / 2, e(-6)],
    ]
    fine = [[1, 1, 1], [1, e(-1), 1], [1, 1, 1]]
    expected = [[2 - c - f for c, f in zip(*rows, strict=True)] for rows in zip(coarse, fine, strict=True)]
    maps = addition_map(two_scales(), (3, 3))
    torch.testing.assert_close(maps, torch.tensor([expected, expected], dtype=torch.float64), rtol=0, atol=1e-12)


def test_maps_rank_pixels_as_the_log_likelihoods() -> None:
    """The unlikely cell of the coarsest scale is where both maps peak; log p comes from the latents."""
    latents = [torch.full((1, *shape), 2.0) for shape in SHAPES]
    log_p = log_likelihoods(latents)
    assert all(torch.equal(scale, torch.full_like(scale, -2.0)) for scale in log_p)  # -0.5 * mean(2^2)
    latents[2][0, :, 0, 1] = 4.0  # one unlikely cell, top right of the coarsest (2x2) scale
    for maps in (multiplication_map(log_likelihoods(latents), (16, 16)), addition_map(log_likelihoods(latents), (16, 16))):
        assert maps.shape == (1, 16, 16) and float(maps.min()) == 0.0  # the most likely pixel scores 0
        assert divmod(int(maps[0].argmax()), 16) == (0, 15)
    ramp = torch.arange(100.0).reshape(1, 10, 10)
    torch.testing.assert_close(top_k_mean(ramp, 0.03), torch.tensor([98.0]))  # mean of the top 3 of 100 pixels
    torch.testing.assert_close(top_k_mean(ramp, 0.001), torch.tensor([99.0]))  # never fewer than one pixel


def test_fusion_hidden_width_is_a_quarter_of_its_input() -> None:
    """With WideResNet-50's layers 1-3 each coupling fuses the half channels 128 + 256 + 512 = 896 through 224."""
    fusion = FusionFlow([256, 512, 1024], clamp=1.9)
    assert fusion.splits == [(128, 128), (256, 256), (512, 512)]
    for coupling in (fusion.first_from_second, fusion.second_from_first):
        widen, _, _, narrow, _ = coupling.fuse
        assert (widen.in_channels, widen.out_channels, narrow.in_channels, narrow.out_channels) == (896, 224, 224, 896)


def test_output_maps_are_at_input_size() -> None:
    model = tiny_model().model.eval()
    with torch.no_grad():
        (square, square_auroc), (wide, wide_auroc) = (
            model.evaluate(torch.randn(3, 3, 64, 64)),
            model.evaluate(torch.randn(2, 3, 64, 96)),
        )
    assert square.anomaly_map.shape == square_auroc.shape == (3, 64, 64) and square.pred_score.shape == (3,)
    assert wide.anomaly_map.shape == wide_auroc.shape == (2, 64, 96)
    assert torch.isfinite(wide.anomaly_map).all() and torch.isfinite(wide_auroc).all()


def test_early_stopping_on_pixel_auroc_reads_the_models_auroc_map() -> None:
    """The worker's validation metric scores pixel AUROC on the map the test does."""
    masks = torch.tensor([[[0, 1], [0, 1]]], dtype=torch.bool)
    anomaly_map = torch.tensor([[[0.9, 0.1], [0.8, 0.2]]])  # AUROC 0
    auroc_map = torch.tensor([[[0.1, 0.9], [0.3, 0.6]]])  # AUROC 1
    for batch, expected in (
        (SimpleNamespace(anomaly_map=anomaly_map, gt_mask=masks, **{metrics.PIXEL_AUROC_MAP: auroc_map}), 1.0),
        (SimpleNamespace(anomaly_map=anomaly_map, gt_mask=masks), 0.0),
    ):
        metric = evaluator("pixel_AUROC").val_metrics[0]
        metric.update(batch)
        assert float(metric.compute()) == expected


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


def test_schedule_is_the_official_one() -> None:
    """The official schedule: 3 warm-up meta-epochs of 4 passes (torch's LinearLR from 0.1x over 12 steps),
    then MultiStepLR x0.33 at passes 70 and 90, both stepped after every pass; the protocol's 100 epochs
    are those 100 passes."""
    assert warmup_epochs(100) == 12
    factors = [learning_rate_factor(epoch, max_epochs=100) for epoch in range(100)]
    assert factors[:13] == pytest.approx([0.1 + 0.9 * epoch / 12 for epoch in range(13)])  # 0.1, 0.175, ..., 1.0
    assert factors[69] == 1.0 and factors[70] == pytest.approx(0.33) and factors[90] == pytest.approx(0.33**2)
    parameter = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.Adam([parameter], lr=1.0)
    warmup = torch.optim.lr_scheduler.LinearLR(optimizer, start_factor=0.1, end_factor=1.0, total_iters=3 * 4)
    decay = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=[70, 90], gamma=0.33)
    official = []
    for _ in range(100):
        official.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        warmup.step()
        decay.step()
    assert factors == pytest.approx(official, rel=1e-9)
    # a capped run keeps the shape: 10 epochs warm up for 1, decay after 7 and 9
    assert [learning_rate_factor(epoch, 10) for epoch in range(10)] == pytest.approx([0.1] + [1.0] * 6 + [0.33] * 2 + [0.33**2])


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


class ClipRecordingMsflow(Msflow):
    """MSFlow that records, at every step, the flows' gradient norm before Lightning's clipping and after it."""

    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)
        self.norms: list[tuple[float, float]] = []
        self._before = 0.0

    def _gradient_norm(self) -> float:
        return float(torch.stack([p.grad.norm() for p in self.model.flows.parameters() if p.grad is not None]).norm())

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        self._before = self._gradient_norm()  # Lightning clips right after this hook

    def on_train_batch_end(self, outputs: object, batch: object, batch_idx: int) -> None:
        self.norms.append((self._before, self._gradient_norm()))  # the gradients the step used


def test_worker_scores_pixel_auroc_on_the_addition_map(tmp_path: Path) -> None:
    """One epoch through the worker's train_and_test on the tiny tiles: pixel AUROC is that of the
    addition maps (recomputed here with scikit-learn), AUPRO, F1Max and the image scores come from the
    multiplication maps, and every step's gradient was clipped to norm 2."""
    root = tmp_path / "tiles"
    generate_category(SyntheticOptions(**TINY), "tiles", root)
    spec = RunSpec(
        sweep="t", experiment="evaluation", model="msflow", dataset="tiny", category="tiles", seed=5,
        image_size=64, weights="random", trainer=Trainer(max_epochs=1),
    )  # fmt: skip
    model = tiny_model(seed=5, cls=ClipRecordingMsflow, post_processor=PostProcessor(enable_normalization=False))
    assert model.trainer_arguments["gradient_clip_val"] == GRADIENT_CLIP_NORM == 2.0
    assert model.trainer_arguments["gradient_clip_algorithm"] == "norm"
    data = SamplesDataModule("tiny-tiles", scan_category(root), labelled_train=False, batch_size=4, seed=5)
    data.num_workers = 0
    outcome = train_and_test(spec, model, data, tmp_path / "work", pixel=True)

    assert len(model.norms) == 3  # 10 training images in batches of 4
    for before, after in model.norms:
        assert before > 10 * GRADIENT_CLIP_NORM and after == pytest.approx(GRADIENT_CLIP_NORM, rel=1e-4)

    model.eval()
    maps: dict[str, list[torch.Tensor]] = {"multiplication": [], "addition": []}
    masks, paths = [], []
    with torch.no_grad():
        for batch in data.test_dataloader():
            images, gt_mask = model.pre_processor.transform(batch.image, batch.gt_mask)
            log_p = log_likelihoods(model.model.flows(model.model.extract(images))[0])
            maps["multiplication"].append(multiplication_map(log_p, images.shape[-2:]))
            maps["addition"].append(addition_map(log_p, images.shape[-2:]))
            masks.append(gt_mask.bool())
            paths += batch.image_path
    multiplication, addition, mask = torch.cat(maps["multiplication"]), torch.cat(maps["addition"]), torch.cat(masks)
    truth = mask.flatten().numpy()
    found = outcome.metrics
    assert found["pixel_AUROC"] == pytest.approx(roc_auc_score(truth, addition.flatten().numpy()), abs=1e-9)
    assert found["pixel_AUROC"] != pytest.approx(roc_auc_score(truth, multiplication.flatten().numpy()), abs=1e-6)
    assert found["pixel_AUPRO"] == pytest.approx(metrics.aupro(multiplication, mask), abs=1e-9)
    assert found["pixel_F1Max"] == pytest.approx(metrics.f1_max(multiplication, mask), abs=1e-9)
    scores = outcome.scores.set_index("image_path").loc[paths, "score"].to_numpy()
    torch.testing.assert_close(torch.tensor(scores, dtype=torch.float32), top_k_mean(multiplication, 0.03))


def test_addition_setting_scores_everything_on_the_addition_map() -> None:
    """``score_map="addition"`` (the benchmark paper's single map): the anomaly map and image score are the
    addition map's, and there is no second map."""
    images = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    official, single = tiny_model(seed=2).model.eval(), tiny_model(seed=2, score_map="addition").model.eval()
    with torch.no_grad():
        (multiplied, added), (alone, none) = official.evaluate(images), single.evaluate(images)
    assert none is None and torch.equal(alone.anomaly_map, added)
    assert torch.equal(alone.pred_score, top_k_mean(added, 0.03))
    assert not torch.equal(multiplied.anomaly_map, added)
