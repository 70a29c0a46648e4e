"""Our k-centre-greedy against anomalib's on the same features and seed: the same indices (near-ties
in floating point apart), the same covering radius, determinism, edge cases, and PatchCore's bank."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from anomalib.models import Patchcore as AnomalibPatchcore
from anomalib.models.components import KCenterGreedy

from viadk8s.models.components import coreset
from viadk8s.models.components.coreset import k_center_greedy, sample_coreset
from viadk8s.models.patchcore import Patchcore


def seed(value: int) -> None:
    """Both generators anomalib's projection and first centre draw from."""
    torch.manual_seed(value)
    np.random.seed(value)


def cnn_like(n: int, d: int, offset: float = 3.0) -> torch.Tensor:
    """Non-negative, clustered features far from the origin, like pooled ReLU maps."""
    generator = torch.Generator().manual_seed(n * 31 + d)
    centres = torch.randn(12, d, generator=generator)
    points = centres[torch.randint(12, (n,), generator=generator)] + 0.4 * torch.randn(n, d, generator=generator)
    return torch.relu(points) + offset


def covering_radius(embedding: torch.Tensor, indices: list[int]) -> float:
    """The largest distance from any row to its nearest selected row (in the original space)."""
    centres = embedding[indices]
    return max(torch.cdist(chunk, centres).min(dim=1).values.max().item() for chunk in embedding.split(1024))


@pytest.mark.parametrize(("n", "d", "ratio", "random_seed"), [(4000, 256, 0.1, 0), (3000, 96, 0.05, 1), (2500, 512, 0.2, 2)])
def test_same_indices_and_radius_as_anomalib(n: int, d: int, ratio: float, random_seed: int) -> None:
    embedding = cnn_like(n, d)
    seed(random_seed)
    theirs = KCenterGreedy(embedding, ratio).select_coreset_idxs()
    seed(random_seed)
    ours = k_center_greedy(embedding, ratio).tolist()
    assert len(ours) == len(theirs) == int(n * ratio)
    assert ours[0] == theirs[0]  # the same random start
    assert len(set(ours) & set(theirs)) / len(theirs) >= 0.999
    assert np.mean(np.array(ours) == np.array(theirs)) >= 0.99  # a near-tie at most swaps two neighbours in order
    assert covering_radius(embedding, ours) == pytest.approx(covering_radius(embedding, theirs), rel=1e-3)


def test_rows_in_many_blocks_select_as_one_block(monkeypatch: pytest.MonkeyPatch) -> None:
    """The O(N) updates run block by block (``BLOCK`` rows); the choice must not depend on it."""
    embedding = cnn_like(3000, 128)
    seed(6)
    whole = k_center_greedy(embedding, 0.1)
    monkeypatch.setattr(coreset, "BLOCK", 700)  # 5 blocks, the last one short
    seed(6)
    assert torch.equal(k_center_greedy(embedding, 0.1), whole)
    seed(6)
    theirs = KCenterGreedy(embedding, 0.1).select_coreset_idxs()
    assert len(set(whole.tolist()) & set(theirs)) / len(theirs) >= 0.999


def lattice(n: int, d: int) -> torch.Tensor:
    """Points on a small integer grid, many repeated: exact ties in distance everywhere."""
    generator = torch.Generator().manual_seed(n + d)
    return torch.randint(0, 4, (n, d), generator=generator).float()


SHAPES = [cnn_like(4000, 128), cnn_like(3000, 40, offset=50.0), lattice(2000, 6)]


@pytest.mark.parametrize("features", SHAPES, ids=["cnn", "far", "ties"])
def test_pruning_selects_what_measuring_every_point_selects(features: torch.Tensor, monkeypatch: pytest.MonkeyPatch) -> None:
    """Skipping the points the triangle inequality rules out changes nothing, ties and rounding included."""
    gathered = []
    select = torch.index_select
    monkeypatch.setattr(torch, "index_select", lambda *a, **k: gathered.append(len(a[2])) or select(*a, **k))
    embedding = features.reshape(len(features), 2, -1)  # unprojected, so the lattice keeps its exact ties
    seed(8)
    pruned = k_center_greedy(embedding, 0.1)
    monkeypatch.setattr(coreset, "FULL_PASS_SHARE", 0.0)  # every iteration measures every point
    seed(8)
    assert torch.equal(k_center_greedy(embedding, 0.1), pruned)
    assert sum(gathered) < 0.5 * len(features) * (len(pruned) - 1)  # it did skip: most points, most iterations


def test_rounding_slack_bounds_the_error_of_squared_distances() -> None:
    """The bound the pruning widens by covers the expansion's real error against float64 distances."""
    features = cnn_like(2000, 300, offset=20.0)
    features -= features.mean(dim=0)
    norms = features.pow(2).sum(dim=1)
    expanded = norms[:, None] - 2 * features @ features[:50].T + norms[:50]
    exact = torch.cdist(features.double(), features[:50].double()).pow(2)
    error = (expanded.double() - exact).abs().max().item()
    assert 0 < error <= coreset.rounding_slack(features, norms)


def test_unprojected_embeddings_agree_too() -> None:
    """anomalib flattens a 3-D embedding instead of projecting it; so do we."""
    embedding = cnn_like(1500, 24).reshape(1500, 4, 6)
    seed(5)
    theirs = KCenterGreedy(embedding, 0.1).select_coreset_idxs()
    seed(5)
    assert k_center_greedy(embedding, 0.1).tolist() == theirs


def test_selection_is_deterministic_distinct_and_ordered_by_farthest_point() -> None:
    embedding = cnn_like(2000, 64)
    seed(3)
    first = k_center_greedy(embedding, 0.05)
    seed(3)
    again = k_center_greedy(embedding, 0.05)
    seed(4)
    other = k_center_greedy(embedding, 0.05)
    assert torch.equal(first, again) and first.dtype == torch.long
    assert len(set(first.tolist())) == len(first) == 100  # distinct points are never chosen twice
    assert first[0] != other[0]  # the start follows the seed
    assert sample_coreset(embedding, 0.05).shape == (100, 64)


def test_one_sample_is_the_random_start_and_tiny_sets_are_covered() -> None:
    embedding = cnn_like(50, 16)
    seed(9)
    start = KCenterGreedy(embedding, 0.02).select_coreset_idxs()
    seed(9)
    assert k_center_greedy(embedding, 0.02).tolist() == start and len(start) == 1  # int(50 * 0.02) == 1
    three = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 1.0]])
    seed(0)
    everything = k_center_greedy(three, 1.0).tolist()
    assert sorted(everything) == [0, 1, 2]
    assert covering_radius(three, everything) == 0


@pytest.mark.parametrize("ratio", [0.0, 0.01, -0.5, 1.5])
def test_a_ratio_that_keeps_nothing_or_too_much_is_refused(ratio: float) -> None:
    with pytest.raises(ValueError, match=rf"coreset_sampling_ratio {ratio} keeps .* allowed: a ratio in \(0, 1\]"):
        k_center_greedy(torch.ones(20, 4), ratio)


def test_patchcore_memory_bank_is_anomalibs_coreset() -> None:
    """Our PatchCore takes anomalib's arguments and builds the bank anomalib would, at the right size."""
    settings = {"backbone": "resnet18", "layers": ["layer2"], "pre_trained": False, "coreset_sampling_ratio": 0.1}
    torch.manual_seed(0)
    ours = Patchcore(**settings)
    torch.manual_seed(0)
    theirs = AnomalibPatchcore(**settings)
    images = torch.rand(3, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    for model in (ours, theirs):
        model.model.train()
        model.model(images)
    embedding = torch.vstack(ours.model.embedding_store)
    assert torch.equal(embedding, torch.vstack(theirs.model.embedding_store))  # same backbone, same features
    seed(11)
    ours.fit()
    seed(11)
    theirs.fit()
    assert ours.model.embedding_store == []  # freed, as anomalib does
    assert ours.model.memory_bank.shape == (int(len(embedding) * 0.1), embedding.shape[1]) == theirs.model.memory_bank.shape
    assert torch.equal(ours.model.memory_bank, theirs.model.memory_bank)
