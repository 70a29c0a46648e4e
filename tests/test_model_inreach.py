"""InReaCh: the official taps and descriptors, mutual nearest neighbours, the official and the paper's
association on hand-built patches, the channel rules and their fallback, the fixed smoothing,
contamination, determinism, output shapes; and runs through the real CLI and worker."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F  # noqa: N812 - torch's convention
import yaml
from scipy.ndimage import gaussian_filter
from torchvision.transforms.v2 import CenterCrop, Normalize, Resize

from tests.checks import run_tiny
from viadk8s.errors import SpecError
from viadk8s.models.inreach import Inreach, InreachModel
from viadk8s.models.inreach.torch_model import (
    OFFICIAL_TAPS,
    PatchDescriptors,
    adaptive_pool_matrix,
    associate,
    filter_channels,
    gaussian_smooth,
    mutual_nearest_neighbours,
    nearest_neighbours,
)

SMALL_BACKBONE = {"backbone": "resnet18", "taps": ("layer1.0", "layer1.1", "layer2.1"), "pre_trained": False, "embedding_dim": 64}


def small_model(**kwargs: object) -> InreachModel:
    """The network, with the Lightning module's defaults (where they are set) but for ``kwargs``."""
    torch.manual_seed(0)  # the same random backbone every time
    return Inreach(**{"seed": 0, **SMALL_BACKBONE, **kwargs}).model.eval()


def test_the_official_thirteen_taps_and_their_descriptors() -> None:
    assert OFFICIAL_TAPS == (
        *("layer1.0", "layer1.1", "layer1.2", "layer2.0", "layer2.1", "layer2.2", "layer2.3"),
        *("layer3.1", "layer3.2", "layer3.3", "layer3.4", "layer3.5", "layer4.0"),
    )  # layer3.0 is not among them
    torch.manual_seed(0)
    model = Inreach(pre_trained=False).model.eval()  # WideResNet-50-2, the official taps
    assert len(model.backbone.stages[-1]) == 1  # the network stops after layer4.0
    maps = model.backbone(torch.randn(2, 3, 64, 64))
    shapes = [tuple(m.shape[1:]) for m in maps]
    assert shapes == [(256, 16, 16)] * 3 + [(512, 8, 8)] * 4 + [(1024, 4, 4)] * 5 + [(2048, 2, 2)]
    assert all((m >= 0).all() for m in maps)  # block outputs: after the final ReLU
    embedding, grid = model.embed(torch.randn(2, 3, 64, 64))
    assert embedding.shape == (2, 16 * 16, 1024) and grid == (16, 16)
    with pytest.raises(ValueError, match="layer3.9"):
        Inreach(pre_trained=False, taps=("layer1.0", "layer3.9"))


def test_adaptive_pool_matrix_is_adaptive_average_pooling() -> None:
    for length, size in ((2304, 1024), (4608, 1024), (13 * 8, 8), (9, 4)):
        x = torch.randn(5, 1, length)
        assert torch.allclose(x[:, 0] @ adaptive_pool_matrix(length, size).T, F.adaptive_avg_pool1d(x, size)[:, 0], atol=1e-5)
    third = 1 / 3  # 5 values to 2: windows [0, 3) and [2, 5), overlapping on value 2
    assert torch.allclose(adaptive_pool_matrix(5, 2), torch.tensor([[third] * 3 + [0] * 2, [0] * 2 + [third] * 3]))


def official_order(maps: list[torch.Tensor], dim: int) -> torch.Tensor:
    """The descriptors computed in the official order (``FeatureDescriptors.py``): unfold each map,
    resize every unfolded plane to the first grid, pool each position's values, stack, pool again."""
    grid = maps[0].shape[-2:]
    per_tap = []
    for feature_map in maps:
        batch, channels = feature_map.shape[:2]
        unfolded = F.unfold(feature_map, 3, padding=1).reshape(batch, channels * 9, *feature_map.shape[-2:])
        resized = F.interpolate(unfolded, size=grid, mode="bilinear", align_corners=False)
        positions = resized.permute(0, 2, 3, 1).reshape(-1, 1, channels * 9)
        per_tap.append(F.adaptive_avg_pool1d(positions, dim)[:, 0])
    stacked = torch.stack(per_tap, dim=1).reshape(-1, 1, len(maps) * dim)
    return F.adaptive_avg_pool1d(stacked, dim)[:, 0].reshape(len(maps[0]), *grid, dim).permute(0, 3, 1, 2)


def test_descriptors_equal_the_official_order_of_operations() -> None:
    generator = torch.Generator().manual_seed(3)
    # 3 taps, dim 8: pooling windows of 4.5, 6.75, 11.25 values, and final windows of 3 that straddle taps
    maps = [torch.rand(2, c, s, s, generator=generator) for c, s in ((4, 8), (6, 4), (10, 2))]
    ours = PatchDescriptors([4, 6, 10], 8)(maps)
    assert ours.shape == (2, 8, 8, 8)
    assert torch.allclose(ours, official_order(maps, 8), atol=1e-6)


def test_mutual_nearest_neighbours_are_symmetric_and_complete() -> None:
    generator = torch.Generator().manual_seed(0)
    a, b = torch.randn(40, 8, generator=generator), torch.randn(55, 8, generator=generator)
    full = torch.cdist(a, b)
    brute = {(p, q) for p in range(len(a)) for q in range(len(b)) if full[p].argmin() == q and full[:, q].argmin() == p}
    for bound in (7, 2000, 10**6):  # blocks cut both ways, only the columns, not at all
        nearest_ab, distance_ab, mutual_ab = mutual_nearest_neighbours(a, b, bound)
        nearest_ba, _, mutual_ba = mutual_nearest_neighbours(b, a, bound)
        pairs_ab = {(int(p), q) for q, p in enumerate(nearest_ab) if mutual_ab[q]}
        pairs_ba = {(p, int(q)) for p, q in enumerate(nearest_ba) if mutual_ba[p]}
        assert pairs_ab == pairs_ba == brute and brute  # i is j's MNN iff j is i's
        assert torch.equal(nearest_ab, full.argmin(0))  # every row of b: its nearest row of a
        assert torch.allclose(distance_ab, full.min(0).values, atol=1e-5)


def test_chunked_nearest_distance_equals_unchunked_cdist_min() -> None:
    generator = torch.Generator().manual_seed(1)
    queries, keys = torch.randn(300, 16, generator=generator), torch.randn(1000, 16, generator=generator)
    expected, where = torch.cdist(queries, keys).min(1)
    for bound in (700, 2500, 50_000, 10**9):
        distance, index = nearest_neighbours(queries, keys, bound)
        assert torch.allclose(distance, expected, atol=1e-5)
        assert torch.equal(index, where)


# Four images of three 1-D patches; images 0 and 1 are the seeds (in that order). Worked out by hand:
# each line is a pair (seed, image): image patch q -> its nearest seed patch p, distance, mutual?
#   seed 0, image 1: q0->p1 0.3 yes   q1->p0 0.4 yes   q2->p2 10 no (p2's nearest is q0)
#   seed 0, image 2: q0->p0 1 yes     q1->p1 0.05 yes  q2->p1 0.1 no (p1's nearest is q1)
#   seed 1, image 2: q0->p1 0.6 yes   q1->p0 0.35 no   q2->p0 0.2 yes
#   seed 0, image 3: q0->p2 5.5 yes   q1->p1 0.9 yes   q2->p0 2 yes
#   seed 1, image 3: q0->p2 4.5 yes   q1->p0 0.6 yes   q2->p1 1.6 yes
#   seed 1, image 0 (paper only): q0->p1 0.4 yes   q1->p0 0.3 yes   q2->p0 9.5 no
HAND_BUILT = [[0.0, 10.8, 20.0], [10.5, 0.4, 30.0], [1.0, 10.85, 10.7], [25.5, 9.9, 2.0]]


def test_official_and_paper_association_on_hand_built_patches() -> None:
    features = [torch.tensor(image)[:, None] for image in HAND_BUILT]
    seeds = torch.tensor([0, 1])
    official = associate(features, seeds, 10**6, torch.device("cpu"), "official")
    paper = associate(features, seeds, 10**6, torch.device("cpu"), "paper")
    # official: seed 1 is never matched with image 0 (before it); image 2's q2 is nearest to seed 0
    # (0.1 < 0.2) where it is not mutual, so it is dropped; q (matched with seed patch p) puts image
    # j's patch at position p into channel (seed, q)
    assert official.tolist() == [
        [[0, 1, 2], [1, 0, -1], [-1, 1, -1], [-1, -1, -1]],  # seed 0: q0->p1, q1->p0 of image 1; q1->p1 of image 2
        [[-1, -1, -1], [0, 1, 2], [1, -1, -1], [2, 0, 1]],  # seed 1: image 2 q0->p1; image 3 q0->p2 q1->p0 q2->p1
    ]
    # paper: every image with every other seed, the nearest mutual seed, q joins channel (seed, p)
    assert paper.tolist() == [
        [[0, 1, 2], [1, 0, -1], [-1, 1, -1], [-1, -1, -1]],
        [[1, 0, -1], [0, 1, 2], [2, 0, -1], [1, 2, 0]],  # image 0 joins; image 2's q2 joins p0
    ]
    # what a channel holds: seed 1's channel at position 0 (head 10.5)
    values = lambda members: sorted(HAND_BUILT[j][int(p)] for j, p in enumerate(members[1, :, 0]) if p >= 0)  # noqa: E731
    assert values(official) == [2.0, 10.5, 10.85]  # 2.0: image 3's patch at the matched seed patch's position
    assert values(paper) == [9.9, 10.5, 10.7, 10.8]  # the seed patch's mutual partners


def test_the_readings_agree_where_matches_keep_their_position() -> None:
    features, _ = contaminated_features()  # every image shows the same parts at the same positions
    seeds = torch.tensor([0, 3, 9, 14])
    official = associate(features, seeds, 10**6, torch.device("cpu"), "official")
    paper = associate(features, seeds, 10**6, torch.device("cpu"), "paper")
    others = torch.tensor([i not in seeds.tolist() for i in range(24)])  # matched with every seed either way
    kept = (official == torch.arange(36)) & others[None, :, None]  # official links that keep their position
    assert kept.sum() > 0.9 * others.sum() * 36
    assert torch.equal(paper[kept], official[kept])


def hand_built_channels() -> tuple[list[torch.Tensor], torch.Tensor, dict[str, list[tuple[float, float]]]]:
    """One seed (image 0), 31 images, 5 patch slots in 2-D; channel ``p`` gathers patch ``p`` of the
    images listed for it (radii worked out by hand in the comments)."""
    points = {
        "too_few": [(0.0, 0.0), (1.0, 0.0), (0.0, 1.0)],  # 3 members: not more than 3
        "kept": [(1.0, 0.0), (-1.0, 0.0), (0.0, 2.0), (0.0, -2.0)],  # radii 1 1 2 2, spread 0.5: all < 2.5
        "outlier": [(x, 0.0) for x in (0.5, -0.5, 1, -1, 2, -2, 3, -3, 4, -4)] * 3 + [(60.0, 0.0)],  # 58 > 5·9.96
        "left_three": [(0.0, 0.0)] * 3 + [(10.0, 0.0)] * 2,  # radii 4 4 4 6 6, spread 0.98: 3 remain
        "all_alike": [(1.0, 0.0), (0.0, 1.0), (-1.0, 0.0), (0.0, -1.0)],  # spread 0: the rule keeps none
    }
    images = 31
    features = [torch.zeros(len(points), 2) for _ in range(images)]
    members = torch.full((1, images, len(points)), -1)
    for slot, channel in enumerate(points.values()):
        for image, point in enumerate(channel):
            features[image][slot] = torch.tensor(point)
            members[0, image, slot] = slot
    return features, members, points


def test_channels_respect_the_member_and_spread_rules() -> None:
    features, members, points = hand_built_channels()
    nominal = filter_channels(features, members, min_members=3, max_spread=5.0)
    expected = torch.zeros_like(nominal)
    expected[:4, 1] = True  # "kept": all four
    expected[:30, 2] = True  # "outlier": all but the far member
    assert torch.equal(nominal, expected)
    # without the spread rule only the member rule remains
    loose = filter_channels(features, members, min_members=3, max_spread=math.inf)
    sizes = [len(channel) for channel in points.values()]
    assert loose.sum(0).tolist() == [0 if size <= 3 else size for size in sizes]


def alike_store() -> dict[str, torch.Tensor]:
    """Six images of one patch each, at the corners of a regular hexagon around the origin: one
    channel (seed + 5), all six members at distance 1 from its mean, spread 0: the spread rule
    keeps none (1 < 5 · 0 is false), the member rule keeps all (6 > 3)."""
    angles = torch.arange(6) * math.pi / 3
    return {f"{i}.png": torch.stack([angles[i].cos(), angles[i].sin()])[None] for i in range(6)}


def test_an_empty_bank_fails_with_exit_code_2_unless_the_fallback_is_allowed() -> None:
    strict = small_model(position_channels=False, num_seeds=1, spread_fallback=False)
    strict.store = alike_store()
    with pytest.raises(SpecError, match="spread rule .* left no channel") as failure:
        strict.fit()
    assert failure.value.exit_code == 2
    allowed = small_model(position_channels=False, num_seeds=1, spread_fallback=True)
    allowed.store = alike_store()
    allowed.fit()
    assert len(allowed.memory_bank) == 6
    assert allowed.report == {
        "association": "official",
        "bank_patches": 6,
        "training_patches": 6,
        "bank_share": 1.0,
        "spread_fallback_used": True,
        "position_channels": False,
    }
    # unset, the fallback follows the backbone: allowed with a random one (the demo's --weights random)
    assert small_model(spread_fallback=None).spread_fallback is True


def contaminated_features(images: int = 24, patches: int = 36, dim: int = 16) -> tuple[list[torch.Tensor], set]:
    """Every image shows the same ``patches`` nominal parts (with image-dependent noise); a few
    patches of a few images are replaced by defects, far from every nominal part."""
    generator = torch.Generator().manual_seed(2)
    parts = torch.randn(patches, dim, generator=generator) * 3
    features = []
    for _ in range(images):
        scale = 0.05 + 0.4 * torch.rand(1, generator=generator)  # some images noisier than others
        features.append(parts + scale * torch.randn(patches, dim, generator=generator))
    planted = {(0, 3), (0, 4), (5, 10), (9, 0), (9, 35), (17, 20)}  # image 0 and 9 are seeds below
    for image, patch in planted:
        features[image][patch] = 25 * torch.randn(dim, generator=generator)
    return features, planted


@pytest.mark.parametrize("association", ["official", "paper"])
def test_planted_defects_in_the_training_images_stay_out_of_the_bank(association: str) -> None:
    features, planted = contaminated_features()
    seeds = torch.tensor([0, 3, 9, 14])
    members = associate(features, seeds, 500, torch.device("cpu"), association)  # type: ignore[arg-type]
    nominal = filter_channels(features, members, min_members=3, max_spread=5.0)
    assert not any(nominal[image, patch] for image, patch in planted)
    assert nominal.float().mean() > 0.8  # and most nominal patches are kept
    # the model's own fit (sorted by path, seeds from its seed): no planted feature in its bank
    model = small_model(position_channels=False, num_seeds=4, seed=3, association=association, spread_fallback=False)
    model.store = {f"img{i:02d}.png": f for i, f in enumerate(features)}
    model.fit()
    defects = torch.stack([features[image][patch] for image, patch in planted])
    assert not (torch.cdist(defects, model.memory_bank) == 0).any()
    assert len(model.memory_bank) > 0.8 * 24 * 36
    assert model.report["bank_share"] == pytest.approx(len(model.memory_bank) / (24 * 36), abs=1e-6)
    assert model.report["spread_fallback_used"] is False


@pytest.mark.parametrize("association", ["official", "paper"])
def test_association_links_each_patch_to_one_seed_only(association: str) -> None:
    features, _ = contaminated_features()
    seeds = torch.tensor([2, 7, 11])
    members = associate(features, seeds, 10**6, torch.device("cpu"), association)  # type: ignore[arg-type]
    for image in range(len(features)):
        linked = members[seeds != image, image]  # a seed image's patches also head their own channels
        # paper: no patch joins two channels; official: no patch (position) picks two seeds
        taken = linked[linked >= 0] if association == "paper" else (linked >= 0).nonzero()[:, 1]
        assert len(taken) == len(set(taken.tolist()))
        assert len(taken) > 0 or (association == "official" and image == seeds[0])  # the first seed has no earlier seed
    for k, seed in enumerate(seeds.tolist()):
        assert torch.equal(members[k, seed], torch.arange(36))  # a seed patch heads its own channel


def texture_images(count: int, size: int = 64) -> torch.Tensor:
    generator = torch.Generator().manual_seed(4)
    grid = torch.arange(size).float()
    stripes = torch.sin(grid / 3)[None, None, :, None] + torch.sin(grid / 5)[None, None, None, :]
    return stripes.expand(count, 3, size, size) + 0.3 * torch.randn(count, 3, size, size, generator=generator)


def test_same_seed_same_bank_whatever_the_order_of_arrival() -> None:
    images = texture_images(12)
    paths = [f"train/{i:03d}.png" for i in range(12)]
    first, second = small_model(seed=5, num_seeds=4), small_model(seed=5, num_seeds=4)
    for start in range(0, 12, 4):
        first.collect(images[start : start + 4], paths[start : start + 4])
    order = torch.randperm(12, generator=torch.Generator().manual_seed(6)).tolist()
    for start in range(0, 12, 3):
        chosen = order[start : start + 3]
        second.collect(images[chosen], [paths[i] for i in chosen])
    first.fit(), second.fit()
    assert torch.equal(first.memory_bank, second.memory_bank)
    test = texture_images(2)
    assert torch.equal(first(test).anomaly_map, second(test).anomaly_map)
    assert not torch.equal(InreachModel.choose_seeds(first, 40), InreachModel.choose_seeds(small_model(seed=6), 40))


def test_run_seed_chooses_the_seed_images() -> None:
    torch.manual_seed(1234)  # as Lightning's seed_everything(1234) before the worker builds the model
    model = Inreach(**SMALL_BACKBONE, evaluator=False, visualizer=False)
    assert model.model.seed == 1234
    assert Inreach(**SMALL_BACKBONE, seed=7, evaluator=False, visualizer=False).model.seed == 7


def test_smoothing_is_scipy_gaussian_filter() -> None:
    generator = torch.Generator().manual_seed(5)
    for shape in ((2, 64, 64), (1, 40, 70)):  # 40 rows < the radius 52: reflected more than once
        maps = torch.rand(*shape, generator=generator)
        expected = np.stack([gaussian_filter(m.numpy().astype(np.float64), 13.0) for m in maps])
        assert np.allclose(gaussian_smooth(maps, 13.0).numpy(), expected, atol=1e-6)
    assert np.allclose(gaussian_smooth(maps, 2.5).numpy(), gaussian_filter(maps[0].numpy().astype(np.float64), 2.5), atol=1e-6)


def test_maps_are_smoothed_with_a_fixed_sigma_of_13_px_and_the_score_is_their_maximum() -> None:
    model = small_model(position_channels=True)
    model.collect(texture_images(6), [f"{i}.png" for i in range(6)])
    model.fit()
    assert model.memory_bank.shape[1] == 64 + 2  # the two position channels
    for shape in ((3, 3, 64, 64), (1, 3, 64, 96), (1, 3, 128, 128)):
        images = torch.randn(*shape)
        out = model(images)
        assert out.anomaly_map.shape == (shape[0], *shape[2:])
        assert torch.equal(out.pred_score, out.anomaly_map.flatten(1).amax(1))
        assert (out.anomaly_map >= 0).all()
        # independently: squared distances, each patch repeated over its 4 × 4 pixels, scipy's filter, σ = 13 at any size
        embedding, grid = model.embed(images)
        embedding = torch.cat([embedding, model.positions(grid, images.device).expand(len(images), -1, -1)], dim=2)
        scores = torch.cdist(embedding, model.memory_bank).min(2).values.square().reshape(len(images), *grid).numpy()
        for image, score in enumerate(scores):
            expected = gaussian_filter(score.repeat(4, 0).repeat(4, 1).astype(np.float64), 13.0)
            assert np.allclose(out.anomaly_map[image].numpy(), expected, rtol=1e-4, atol=1e-4 * expected.max())


def test_position_channels_follow_the_alignment_test() -> None:
    symmetric, aligned = small_model(), small_model()
    images = texture_images(2)
    symmetric.collect(images + images.transpose(-1, -2), ["a", "b"])  # mean image equals its transpose
    ramp = torch.linspace(-2, 2, 64)[None, None, None, :].expand(2, 3, 64, 64)
    aligned.collect(ramp, ["a", "b"])  # left-to-right gradient: an object with a pose
    assert not symmetric.aligned() and aligned.aligned()


def test_pre_processor_resizes_to_the_size_without_crop() -> None:
    transforms = Inreach.configure_pre_processor(image_size=(64, 64)).transform.transforms
    assert any(isinstance(t, Resize) and list(t.size) == [64, 64] for t in transforms)
    assert any(isinstance(t, Normalize) and list(t.mean) == [0.485, 0.456, 0.406] for t in transforms)
    assert not any(isinstance(t, CenterCrop) for t in transforms)


def results(store: Path) -> list[Path]:
    return sorted(store.glob("runs/*/*/result.json"))


def test_end_to_end_through_the_cli(cli, tiny_config: Path) -> None:  # noqa: ANN001
    result, scores = run_tiny(cli, tiny_config, "inreach", "--categories", "fabric")
    means = scores.groupby("label")["score"].mean()
    assert means[1] > means[0]  # the planted defects score above the good images
    report = result["model_report"]  # the catalog's settings, a random backbone: the fallback is allowed
    assert report["association"] == "official" and report["training_patches"] == 10 * 16 * 16  # 10 images, 16 × 16 grid
    assert 0 < report["bank_share"] <= 1 and report["bank_share"] == pytest.approx(report["bank_patches"] / (10 * 256), abs=1e-6)
    assert isinstance(report["spread_fallback_used"], bool)


# the worker as a pod runs it, with InReaCh's catalog entry changed first: a spread rule no member
# passes (distance < 0 · spread), and the fallback forbidden
STRICT_WORKER = """
import sys
from viadk8s.worker.env import prepare_process
prepare_process()
from viadk8s import catalog
entry = catalog.models()["inreach"]
strict = {"max_channel_spread": 0.0, "spread_fallback": False}
catalog.models()["inreach"] = entry.model_copy(update={"init_args": {**entry.init_args, **strict}})
from viadk8s.worker import main
sys.exit(main(sys.stdin.read(), sys.argv[1]))
"""


def test_an_empty_bank_ends_the_run_with_exit_code_2_and_one_line(tiny_config: Path, tmp_path: Path) -> None:
    spec = {"sweep": "s1", "experiment": "evaluation", "model": "inreach", "dataset": "tiny", "category": "tiles", "seed": 1}
    spec |= {"image_size": 64, "weights": "random"}
    done = subprocess.run(
        [sys.executable, "-c", STRICT_WORKER, str(tiny_config)],
        input=json.dumps(spec),
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        timeout=900,
        check=False,
    )
    assert done.returncode == 2, done.stdout[-3000:] + done.stderr[-3000:]
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("error: InReaCh's spread rule") and "spread_fallback: true" in last
    assert not results(Path(yaml.safe_load(tiny_config.read_text())["store"]))  # no result stored


@pytest.mark.slow
def test_noisy_labels_through_the_cli(cli, tiny_config: Path, tmp_path: Path) -> None:  # noqa: ANN001
    done = cli(
        "run", "--experiment", "noisy_labels", "--models", "inreach", "--datasets", "tiny", "--categories", "fabric",
        "--image-size", "64", "--weights", "random", "--seeds", "5", "--config", str(tiny_config),
        env={"HF_HUB_OFFLINE": "1"},
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    runs = [json.loads(p.read_text()) for p in results(tmp_path / "store")]
    by_level = {r["spec"]["variant"]["contamination"]: r for r in runs}
    assert sorted(by_level) == [0.0, 0.04, 0.08, 0.16]
    assert by_level[0.16]["data"]["changes"]["contaminated_train"]  # bad images really were in training
    assert all(r["metrics"]["pixel_AUROC"] is not None for r in runs)
    assert all(0 < r["model_report"]["bank_share"] <= 1 for r in runs)
