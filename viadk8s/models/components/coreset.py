"""Exact k-centre-greedy coreset selection, without anomalib's O(N·d) temporary per iteration.

Why: anomalib's :class:`~anomalib.models.components.KCenterGreedy` computes every feature's distance
to the new centre as ``norm(features - centre)``, which writes and reads a fresh N×d tensor on every
one of its thousands of iterations; on a CPU this loop dominates PatchCore's fit at 256 px (and the
heap churn is what made glibc's heap grow without the mmap-threshold setting). The same distances are
``‖x‖² − 2·x·c + ‖c‖²``: one matrix-vector product per iteration and O(N) temporaries.

It is the same algorithm with the same random start, so a seeded run selects the same indices:
the same sparse random projection (anomalib's own :class:`SparseRandomProjection`, ``eps=0.9``, drawn
from the same global generators in the same order), then the first centre drawn exactly as anomalib
draws it (``torch.randint`` on the features' device), then the farthest point from the centres so
far, each chosen centre's distance set to zero. Squared distances pick the same argmax as distances.
Features are centred on their mean first (distances do not change) so that the expansion loses no
precision to a large common offset; near-ties in floating point are the only source of a different
choice.
"""

from __future__ import annotations

import torch
from anomalib.models.components.dimensionality_reduction import SparseRandomProjection

PROJECTION_EPS = 0.9  # anomalib's KCenterGreedy
# Rows per step of the O(N) updates: torch runs an element-wise op on fewer than its grain (32,768)
# elements in the calling thread; larger ones hand off to its thread pool on every iteration, which
# on a loaded 2-core machine cost ~16 ms per op against 0.05 ms (measured: 88 vs 26 ms an iteration).
BLOCK = 32_768


def coreset_size(n: int, sampling_ratio: float) -> int:
    """anomalib's rule, ``int(n * ratio)``; a ratio that keeps nothing is refused."""
    size = int(n * sampling_ratio)
    if size <= 0 or not 0 < sampling_ratio <= 1:
        raise ValueError(
            f"coreset_sampling_ratio {sampling_ratio} keeps {size} of {n} features; allowed: a ratio in (0, 1] keeping at least 1"
        )
    return size


def project(embedding: torch.Tensor) -> torch.Tensor:
    """The features the distances are measured on, as anomalib's KCenterGreedy makes them."""
    if embedding.ndim == 2:
        return SparseRandomProjection(eps=PROJECTION_EPS).fit(embedding).transform(embedding)
    return embedding.reshape(embedding.shape[0], -1).clone()


@torch.no_grad()
def k_center_greedy(embedding: torch.Tensor, sampling_ratio: float) -> torch.Tensor:
    """Indices (int64, on the embedding's device) of the coreset of ``embedding``'s rows, in order of choice."""
    n = embedding.shape[0]
    size = coreset_size(n, sampling_ratio)
    features = project(embedding)
    first = torch.randint(high=n, size=(1,), device=features.device).squeeze()
    features -= features.mean(dim=0)  # in place: the projection is ours alone
    squared_norms = features.pow(2).sum(dim=1)
    selected = torch.empty(size, dtype=torch.long, device=features.device)
    selected[0] = first
    nearest = torch.full((n,), float("inf"), dtype=features.dtype, device=features.device)
    distance = torch.empty_like(nearest)
    blocks = list(zip(*(t.split(BLOCK) for t in (features, squared_norms, distance, nearest)), strict=True))  # views
    centre = first
    for i in range(1, size):
        point, shift = features[centre], squared_norms[centre]
        for rows, norms, block_distance, block_nearest in blocks:
            torch.mv(rows, point, out=block_distance)  # x·c
            block_distance.mul_(-2).add_(norms).add_(shift)  # ‖x‖² − 2x·c + ‖c‖²
            torch.minimum(block_nearest, block_distance, out=block_nearest)
        nearest[centre] = 0
        centre = nearest.max(dim=0).indices  # the first of equal maxima, as anomalib
        nearest[centre] = 0
        selected[i] = centre
    return selected


def sample_coreset(embedding: torch.Tensor, sampling_ratio: float) -> torch.Tensor:
    """The coreset's rows of ``embedding`` (what anomalib's ``KCenterGreedy.sample_coreset`` returns)."""
    return embedding[k_center_greedy(embedding, sampling_ratio)]
