"""InReaCh: a bank of nominal patches found in unlabelled, possibly contaminated, training images.

A patch that recurs across many training images is nominal; a defect is rare and unlike the rest.
Seed images' patches are linked to every other training image's patches by mutual nearest
neighbours (one link per patch, to its nearest seed); a seed patch and its links form an
*inter-realization channel*. Channels with too few members are dropped, so are members too far
from their channel's mean; every surviving patch enters the nominal bank. A test patch scores its
squared distance to the nearest nominal patch.

Paper: `Inter-Realization Channels: Unsupervised Anomaly Detection Beyond One-Class Classification
<https://openaccess.thecvf.com/content/ICCV2023/html/McIntosh_Inter-Realization_Channels_Unsupervised_Anomaly_Detection_Beyond_One-Class_Classification_ICCV_2023_paper.html>`_
(McIntosh, Albu; ICCV 2023).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator, Sequence

import torch
import torch.nn.functional as F  # noqa: N812 - torch's convention
from anomalib.data import InferenceBatch
from anomalib.models.components import DynamicBufferMixin, TimmFeatureExtractor
from anomalib.models.components.filters import GaussianBlur2d
from anomalib.models.image.glass.components import Aggregator, Preprocessing
from torch import nn

logger = logging.getLogger(__name__)

IMAGENET_STD = (0.229, 0.224, 0.225)  # the pre-processor's normalisation, undone for the alignment test
REFERENCE_SIZE = 224  # the input size the official smoothing sigma was chosen for


def _distance_blocks(x: torch.Tensor, y: torch.Tensor, max_elements: int) -> Iterator[tuple[int, int, torch.Tensor]]:
    """Euclidean distances between the rows of ``x`` and ``y``, in blocks of at most ``max_elements``.

    Yields ``(first row, first column, block)``. Blocks are at most square (``x`` and ``y`` alike are
    cut), so ``cdist``'s padded copies of the two slices stay small next to the block.
    """
    rows = max(1, min(len(x), math.isqrt(max_elements)))
    cols = max(1, min(len(y), max_elements // rows))
    for row in range(0, len(x), rows):
        for col in range(0, len(y), cols):
            yield row, col, torch.cdist(x[row : row + rows], y[col : col + cols])


def _keep_nearer(best: torch.Tensor, index: torch.Tensor, start: int, found: torch.Tensor, where: torch.Tensor) -> None:
    """Merge one block's minima into the running ones; on a tie the earlier index stays (as ``min``)."""
    part = slice(start, start + len(found))
    nearer = found < best[part]
    best[part] = torch.where(nearer, found, best[part])
    index[part] = torch.where(nearer, where, index[part])


def nearest_neighbours(queries: torch.Tensor, keys: torch.Tensor, max_elements: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Distance ``(Q,)`` from each query to its nearest key, and that key's index ``(Q,)``."""
    best = queries.new_full((len(queries),), math.inf)
    index = torch.zeros(len(queries), dtype=torch.long, device=queries.device)
    for row, col, block in _distance_blocks(queries, keys, max_elements):
        found, where = block.min(1)
        _keep_nearer(best, index, row, found, where + col)
    return best, index


def mutual_nearest_neighbours(seed: torch.Tensor, other: torch.Tensor, max_elements: int) -> tuple[torch.Tensor, torch.Tensor]:
    """For each row ``q`` of ``other``: the row ``p`` of ``seed`` that is its mutual nearest neighbour
    (``p``'s nearest in ``other`` is ``q`` and ``q``'s nearest in ``seed`` is ``p``), else -1; and their
    distance (inf where none). The relation is a one-to-one matching."""
    seed_best = seed.new_full((len(seed),), math.inf)
    seed_index = torch.zeros(len(seed), dtype=torch.long, device=seed.device)
    other_best = other.new_full((len(other),), math.inf)
    other_index = torch.zeros(len(other), dtype=torch.long, device=other.device)
    for row, col, block in _distance_blocks(seed, other, max_elements):
        found, where = block.min(1)
        _keep_nearer(seed_best, seed_index, row, found, where + col)
        found, where = block.min(0)
        _keep_nearer(other_best, other_index, col, found, where + row)
    mutual = seed_index[other_index] == torch.arange(len(other), device=other.device)
    return torch.where(mutual, other_index, -1), torch.where(mutual, other_best, math.inf)


def associate(features: Sequence[torch.Tensor], seeds: torch.Tensor, max_elements: int, device: torch.device) -> torch.Tensor:
    """Channel membership ``(K, N, P)``: entry ``[k, j, p]`` is the patch of image ``j`` in the channel
    of seed ``k``'s patch ``p``, or -1.

    Every image is matched to every seed image but itself by mutual nearest neighbours; a patch
    linked to several seeds keeps the nearest (the first seed on a tie). A seed's own patch heads
    its channel (``[k, seeds[k], p] = p``). ``features`` are ``N`` tensors ``(P, D)``, on any device;
    one image at a time moves to ``device``.
    """
    count, patches = len(features), len(features[0])
    seed_features = [features[s].to(device) for s in seeds.tolist()]
    partner = torch.full((len(seeds), count, patches), -1, dtype=torch.long, device=device)
    distance = torch.full((len(seeds), count, patches), math.inf, device=device)
    for image, patch_features in enumerate(features):
        patch_features = patch_features.to(device)
        for k, seed in enumerate(seeds.tolist()):
            if seed != image:
                partner[k, image], distance[k, image] = mutual_nearest_neighbours(seed_features[k], patch_features, max_elements)
    nearest, best_seed = distance.min(0)
    image_index, patch_index = nearest.isfinite().nonzero(as_tuple=True)
    seed_index = best_seed[image_index, patch_index]
    members = torch.full_like(partner, -1)
    # a matching per (seed, image): no two patches of an image claim the same seed patch
    members[seed_index, image_index, partner[seed_index, image_index, patch_index]] = patch_index
    members[torch.arange(len(seeds), device=device), seeds.to(device)] = torch.arange(patches, device=device)
    return members


def filter_channels(features: Sequence[torch.Tensor], members: torch.Tensor, min_members: int, max_spread: float) -> torch.Tensor:
    """Nominal patches ``(N, P)``: the members of channels that pass InReaCh's two rules.

    A channel needs more than ``min_members`` members. Its spread is the (population) standard
    deviation of its members' distances to the channel mean; members at ``max_spread`` spreads or
    more from the mean leave it, and it is kept if more than ``min_members`` remain. Sums run over
    the images in order, so the result does not depend on the device's reduction order.
    """
    device = members.device
    present = members >= 0  # (K, N, P)
    size = present.sum(1)  # (K, P), at least 1: the seed patch
    total = torch.zeros(*size.shape, features[0].shape[1], device=device)
    for image, patch_features in enumerate(features):
        rows = patch_features.to(device)[members[:, image].clamp(min=0)]  # (K, P, D)
        total += rows * present[:, image, :, None]
    mean = total / size[..., None]
    radius = torch.zeros(present.shape, device=device)
    for image, patch_features in enumerate(features):
        rows = patch_features.to(device)[members[:, image].clamp(min=0)]
        radius[:, image] = torch.linalg.vector_norm(rows - mean, dim=-1)
    radius = radius * present
    mean_radius = radius.sum(1) / size
    spread = (((radius - mean_radius[:, None]) * present).square().sum(1) / size).sqrt()
    close = present if math.isinf(max_spread) else radius < max_spread * spread[:, None]
    keep = present & (size > min_members)[:, None] & close
    keep &= (keep.sum(1) > min_members)[:, None]
    nominal = torch.zeros(len(features), len(features[0]), dtype=torch.bool, device=device)
    seed_index, image_index, patch_index = keep.nonzero(as_tuple=True)
    nominal[image_index, members[seed_index, image_index, patch_index]] = True
    return nominal


class InreachModel(DynamicBufferMixin, nn.Module):
    """InReaCh's network: frozen backbone, PatchCore-style patch features and the nominal bank.

    Args:
        backbone: timm backbone name.
        layers: backbone layers; the first sets the patch grid.
        pre_trained: load the backbone's ImageNet weights (False: a random, still frozen, backbone).
        embedding_dim: patch feature size, per layer and after aggregating the layers.
        num_seeds: seed images (the official association depth).
        min_channel_members: a channel needs more members than this, before and after its spread rule.
        max_channel_spread: members this many spreads (std of distances to the mean) away leave.
        position_channels: append each patch's (row, column) to its feature; ``None``: when the mean
            training image differs from its transpose by ``alignment_threshold`` (the official test).
        position_weight: position channels span ``[0, position_weight)``.
        alignment_threshold: mean squared difference (0-255 scale) above which images count as aligned.
        sigma: Gaussian smoothing of the map at a 224 px input; scaled with the input size.
        max_distance_mib: bound of one distance block (float32) of the nearest-neighbour searches.
        seed: seeds the choice of seed images.
    """

    def __init__(
        self,
        backbone: str = "wide_resnet50_2.tv_in1k",
        layers: Sequence[str] = ("layer1", "layer2", "layer3"),
        pre_trained: bool = True,
        embedding_dim: int = 1024,
        num_seeds: int = 10,
        min_channel_members: int = 3,
        max_channel_spread: float = 5.0,
        position_channels: bool | None = None,
        position_weight: float = 5.0,
        alignment_threshold: float = 1000.0,
        sigma: float = 13.0,
        max_distance_mib: int = 512,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.layers = list(layers)
        self.num_seeds = num_seeds
        self.min_channel_members = min_channel_members
        self.max_channel_spread = max_channel_spread
        self.position_channels = position_channels
        self.position_weight = position_weight
        self.alignment_threshold = alignment_threshold
        self.sigma = sigma
        self.max_elements = max_distance_mib * 2**20 // 4
        self.seed = seed
        self.feature_extractor = TimmFeatureExtractor(backbone, self.layers, pre_trained=pre_trained).eval()
        self.pool = nn.AvgPool2d(3, 1, 1)
        self.preprocessing = Preprocessing(list(self.feature_extractor.out_dims), embedding_dim, patchsize=1)
        self.aggregator = Aggregator(target_dim=embedding_dim, num_features=len(self.layers))
        self.memory_bank: torch.Tensor
        self.register_buffer("memory_bank", torch.empty(0))
        self.positional: torch.Tensor
        self.register_buffer("positional", torch.tensor(False))
        # training images' patch features by image path, in CPU memory until the bank is built
        self.store: dict[str, torch.Tensor] = {}
        self.grid = (0, 0)
        self.image_sum: torch.Tensor | None = None

    def embed(self, images: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """Patch features ``(B, h·w, embedding_dim)`` on the first layer's ``(h, w)`` grid.

        Each layer's 3×3 neighbourhoods are averaged, deeper layers resized bilinearly to the first
        grid, each layer pooled to ``embedding_dim`` and the layers together to ``embedding_dim``
        (PatchCore's aggregation, with GLASS's components).
        """
        features = self.feature_extractor(images)
        maps = [self.pool(features[layer]) for layer in self.layers]
        grid = maps[0].shape[-2:]
        rows = []
        for feature_map in maps:
            if feature_map.shape[-2:] != grid:
                feature_map = F.interpolate(feature_map, size=grid, mode="bilinear", align_corners=False)
            rows.append(feature_map.permute(0, 2, 3, 1).reshape(-1, feature_map.shape[1]))
        embedding = self.aggregator(self.preprocessing(rows))
        return embedding.reshape(len(images), grid[0] * grid[1], -1), (grid[0], grid[1])

    def positions(self, grid: tuple[int, int], device: torch.device) -> torch.Tensor:
        """Each patch's ``(row, column)`` ``(h·w, 2)``, scaled to ``[0, position_weight)``."""
        height, width = grid
        rows = torch.arange(height, device=device).repeat_interleave(width) * (self.position_weight / height)
        cols = torch.arange(width, device=device).repeat(height) * (self.position_weight / width)
        return torch.stack([rows, cols], dim=1)

    @torch.no_grad()
    def collect(self, images: torch.Tensor, keys: Sequence[str]) -> None:
        """Keep the patch features of training ``images`` not seen yet, by image path."""
        new = [i for i, key in enumerate(keys) if key not in self.store]
        if not new:
            return
        embedding, self.grid = self.embed(images[new])
        for row, i in enumerate(new):
            self.store[keys[i]] = embedding[row].to("cpu", copy=True)
        total = images[new].double().sum(0)
        self.image_sum = total if self.image_sum is None else self.image_sum + total

    def aligned(self) -> bool:
        """Whether position channels are used: as configured, else the official transpose test."""
        if self.position_channels is not None:
            return self.position_channels
        assert self.image_sum is not None
        mean = self.image_sum / len(self.store)
        if mean.shape[-1] != mean.shape[-2]:
            return False
        std = torch.tensor(IMAGENET_STD, dtype=mean.dtype, device=mean.device)[:, None, None]
        gap = ((mean - mean.transpose(-1, -2)) * std * 255).square().mean()
        return bool(gap >= self.alignment_threshold)

    def choose_seeds(self, count: int) -> torch.Tensor:
        """``num_seeds`` image indices (sorted) drawn from ``seed``, never from the loader's order."""
        generator = torch.Generator().manual_seed(self.seed)
        return torch.randperm(count, generator=generator)[: self.num_seeds].sort().values

    @torch.no_grad()
    def fit(self) -> torch.Tensor:
        """Build the nominal bank from the collected features; returns the nominal mask ``(N, P)``
        over the training images sorted by path."""
        if len(self.store) <= self.min_channel_members:
            msg = f"InReaCh needs more than {self.min_channel_members} training images, got {len(self.store)}"
            raise ValueError(msg)
        device = self.memory_bank.device
        keys = sorted(self.store)
        self.positional = torch.tensor(self.aligned(), device=device)
        if self.positional:
            where = self.positions(self.grid, torch.device("cpu"))
            for key in keys:  # one image at a time: never two copies of the store
                self.store[key] = torch.cat([self.store[key], where], dim=1)
        features = [self.store[key] for key in keys]
        members = associate(features, self.choose_seeds(len(features)), self.max_elements, device)
        nominal = filter_channels(features, members, self.min_channel_members, self.max_channel_spread)
        if not nominal.any():
            # e.g. a random backbone: its distances to a channel's mean are all alike, so their small
            # standard deviation puts every member "too far"
            logger.warning("InReaCh: no channel passed the spread rule; keeping those that pass the member rule")
            nominal = filter_channels(features, members, self.min_channel_members, math.inf)
        if not nominal.any():
            msg = f"InReaCh kept no nominal patch: no channel has more than {self.min_channel_members} members"
            raise RuntimeError(msg)
        mask = nominal.cpu()
        self.memory_bank = torch.cat([f[m] for f, m in zip(features, mask, strict=True)]).to(device)
        logger.info(
            "InReaCh bank: %d of %d patches (%.1f %%), position channels %s",
            len(self.memory_bank),
            mask.numel(),
            100 * mask.float().mean(),
            bool(self.positional),
        )
        self.store.clear()
        self.image_sum = None
        return mask

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> InferenceBatch:
        """Anomaly maps ``(B, H, W)``: squared distance of each patch to its nearest nominal patch,
        upsampled (nearest) and smoothed; the image score is the map's maximum."""
        if self.memory_bank.numel() == 0:
            msg = "Memory bank is empty: fit InReaCh before testing"
            raise ValueError(msg)
        embedding, grid = self.embed(images)
        if self.positional:
            embedding = torch.cat([embedding, self.positions(grid, images.device).expand(len(images), -1, -1)], dim=2)
        distance, _ = nearest_neighbours(embedding.reshape(-1, embedding.shape[-1]), self.memory_bank, self.max_elements)
        patch_scores = distance.square().reshape(len(images), 1, *grid)
        height, width = images.shape[-2:]
        sigma = (self.sigma * height / REFERENCE_SIZE, self.sigma * width / REFERENCE_SIZE)
        blur = GaussianBlur2d(sigma=sigma, channels=1).to(images.device)
        anomaly_map = blur(F.interpolate(patch_scores, size=(height, width), mode="nearest")).squeeze(1)
        return InferenceBatch(pred_score=anomaly_map.flatten(1).amax(1), anomaly_map=anomaly_map)
