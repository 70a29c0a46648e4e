"""InReaCh's invariants: mutual nearest neighbours, the channel rules, contamination, determinism,
chunked search, output shapes; and one end-to-end run through the real CLI."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from torchvision.transforms.v2 import CenterCrop, Normalize, Resize

from tests.checks import run_tiny
from viadk8s.models.inreach import Inreach, InreachModel
from viadk8s.models.inreach.torch_model import associate, filter_channels, mutual_nearest_neighbours, nearest_neighbours

SMALL_BACKBONE = {"backbone": "resnet18", "layers": ("layer1", "layer2"), "pre_trained": False, "embedding_dim": 64}


def small_model(**kwargs: object) -> InreachModel:
    torch.manual_seed(0)  # the same random backbone every time
    return InreachModel(**{**SMALL_BACKBONE, **kwargs}).eval()


def test_mutual_nearest_neighbours_are_symmetric_and_complete() -> None:
    generator = torch.Generator().manual_seed(0)
    a, b = torch.randn(40, 8, generator=generator), torch.randn(55, 8, generator=generator)
    for bound in (7, 2000, 10**6):  # blocks cut both ways, only the columns, not at all
        partner_ab, distance_ab = mutual_nearest_neighbours(a, b, bound)
        partner_ba, _ = mutual_nearest_neighbours(b, a, bound)
        pairs_ab = {(int(p), q) for q, p in enumerate(partner_ab) if p >= 0}
        pairs_ba = {(p, int(q)) for p, q in enumerate(partner_ba) if q >= 0}
        assert pairs_ab == pairs_ba and pairs_ab  # i is j's MNN iff j is i's
        full = torch.cdist(a, b)
        brute = {(p, q) for p in range(len(a)) for q in range(len(b)) if full[p].argmin() == q and full[:, q].argmin() == p}
        assert pairs_ab == brute
        matched = partner_ab >= 0
        assert torch.allclose(distance_ab[matched], full[partner_ab[matched], matched.nonzero().squeeze(1)], atol=1e-5)
        assert torch.isinf(distance_ab[~matched]).all()


def test_chunked_nearest_distance_equals_unchunked_cdist_min() -> None:
    generator = torch.Generator().manual_seed(1)
    queries, keys = torch.randn(300, 16, generator=generator), torch.randn(1000, 16, generator=generator)
    expected, where = torch.cdist(queries, keys).min(1)
    for bound in (700, 2500, 50_000, 10**9):
        distance, index = nearest_neighbours(queries, keys, bound)
        assert torch.allclose(distance, expected, atol=1e-5)
        assert torch.equal(index, where)


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


def test_planted_defects_in_the_training_images_stay_out_of_the_bank() -> None:
    features, planted = contaminated_features()
    seeds = torch.tensor([0, 3, 9, 14])
    members = associate(features, seeds, max_elements=500, device=torch.device("cpu"))
    nominal = filter_channels(features, members, min_members=3, max_spread=5.0)
    assert not any(nominal[image, patch] for image, patch in planted)
    assert nominal.float().mean() > 0.8  # and most nominal patches are kept
    # the model's own fit (sorted by path, seeds from its seed): no planted feature in its bank
    model = small_model(position_channels=False, num_seeds=4, seed=3)
    model.store = {f"img{i:02d}.png": f for i, f in enumerate(features)}
    model.fit()
    defects = torch.stack([features[image][patch] for image, patch in planted])
    assert not (torch.cdist(defects, model.memory_bank) == 0).any()
    assert len(model.memory_bank) > 0.8 * 24 * 36


def test_association_links_each_patch_to_one_seed_only() -> None:
    features, _ = contaminated_features()
    seeds = torch.tensor([2, 7, 11])
    members = associate(features, seeds, max_elements=10**6, device=torch.device("cpu"))
    for image in range(len(features)):
        as_member = members[seeds != image, image]  # a seed image's patches also head their own channels
        linked = as_member[as_member >= 0]
        assert len(linked) == len(set(linked.tolist())) > 0  # no patch joins two channels
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


def test_maps_have_the_input_size_and_the_score_is_their_maximum() -> None:
    model = small_model(position_channels=True)
    model.collect(texture_images(6), [f"{i}.png" for i in range(6)])
    model.fit()
    assert model.memory_bank.shape[1] == 64 + 2  # the two position channels
    for shape in ((3, 3, 64, 64), (1, 3, 64, 96)):
        out = model(torch.randn(*shape))
        assert out.anomaly_map.shape == (shape[0], *shape[2:])
        assert torch.equal(out.pred_score, out.anomaly_map.flatten(1).amax(1))
        assert (out.anomaly_map >= 0).all()


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
    _, scores = run_tiny(cli, tiny_config, "inreach", "--categories", "fabric")
    means = scores.groupby("label")["score"].mean()
    assert means[1] > means[0]  # the planted defects score above the good images


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
