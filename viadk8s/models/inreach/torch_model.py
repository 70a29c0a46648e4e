"""InReaCh: a bank of nominal patches found in unlabelled, possibly contaminated, training images.

A patch that recurs across many training images is nominal; a defect is rare and unlike the rest.
Seed images' patches are linked to other training images' patches by mutual nearest neighbours
(one link per patch, to its nearest seed); the links of a seed patch form an *inter-realization
channel*. Channels with too few members are dropped, so are members too far from their channel's
mean; every surviving patch enters the nominal bank. A test patch scores its squared distance to
the nearest nominal patch.

Paper: `Inter-Realization Channels: Unsupervised Anomaly Detection Beyond One-Class Classification
<https://openaccess.thecvf.com/content/ICCV2023/html/McIntosh_Inter-Realization_Channels_Unsupervised_Anomaly_Detection_Beyond_One-Class_Classification_ICCV_2023_paper.html>`_
(McIntosh, Albu; ICCV 2023).
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Iterator, Sequence
from typing import Any, Literal

import timm
import torch
import torch.nn.functional as F  # noqa: N812 - torch's convention
from anomalib.data import InferenceBatch
from anomalib.models.components import DynamicBufferMixin
from torch import nn

from viadk8s.errors import SpecError

logger = logging.getLogger(__name__)

IMAGENET_STD = (0.229, 0.224, 0.225)  # the pre-processor's normalisation, undone for the alignment test
# the official code's feature taps: the output (final ReLU, torchvision's ``relu_2``) of these blocks
OFFICIAL_TAPS = (
    *(f"layer1.{b}" for b in range(3)),
    *(f"layer2.{b}" for b in range(4)),
    *(f"layer3.{b}" for b in range(1, 6)),
    "layer4.0",
)
TAP = re.compile(r"layer([1-4])\.(\d+)")
Association = Literal["official", "paper"]


class BlockTaps(nn.Module):
    """Outputs of chosen residual blocks (``"layer<stage>.<block>"``) of a frozen timm ResNet, in the
    order asked; the network runs only up to the last tapped block."""

    def __init__(self, backbone: str, taps: Sequence[str], pre_trained: bool) -> None:
        super().__init__()
        network = timm.create_model(backbone, pretrained=pre_trained)
        self.taps: list[tuple[int, int]] = []
        for name in taps:
            match = TAP.fullmatch(name)
            if match is None or int(match[2]) >= len(getattr(network, f"layer{match[1]}")):
                msg = f"InReaCh taps are blocks 'layer<stage>.<block>' of {backbone}, got {name!r}"
                raise ValueError(msg)
            self.taps.append((int(match[1]), int(match[2])))
        last_stage = max(stage for stage, _ in self.taps)
        last_block = max(block for stage, block in self.taps if stage == last_stage)
        stages = [getattr(network, f"layer{stage}") for stage in range(1, last_stage + 1)]
        stages[-1] = stages[-1][: last_block + 1]
        self.stem = nn.Sequential(network.conv1, network.bn1, network.act1, network.maxpool)
        self.stages = nn.ModuleList(stages)
        width = {info["module"]: info["num_chs"] for info in network.feature_info}
        self.channels = [width[f"layer{stage}"] for stage, _ in self.taps]
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> BlockTaps:
        """Always in evaluation mode: batch norm keeps its ImageNet statistics while Lightning 'trains'."""
        del mode
        return super().train(False)

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        """The tapped block outputs ``(B, C, h, w)``."""
        wanted, found = set(self.taps), {}
        x = self.stem(images)
        for stage, blocks in enumerate(self.stages, start=1):
            for index, block in enumerate(blocks):
                x = block(x)
                if (stage, index) in wanted:
                    found[stage, index] = x
        return [found[tap] for tap in self.taps]


def adaptive_pool_matrix(length: int, size: int) -> torch.Tensor:
    """``(size, length)``: the linear map of ``F.adaptive_avg_pool1d(x, size)`` on ``length`` values
    (row ``i`` averages ``x[⌊i·length/size⌋ : ⌈(i+1)·length/size⌉]``)."""
    rows = torch.arange(size)
    start = rows * length // size
    end = -(-(rows + 1) * length // size)
    columns = torch.arange(length)
    inside = (columns >= start[:, None]) & (columns < end[:, None])
    return inside / (end - start)[:, None]


class PatchDescriptors(nn.Module):
    """The official patch descriptors of a list of tapped maps, ``(B, dim, h, w)`` on the first map's grid.

    Each map's 3×3 neighbourhoods are unfolded (zero padding) and each position's channel × 3 × 3
    values averaged to ``dim`` (adaptive pooling); every map is resized bilinearly to the first
    grid, and the taps' vectors, concatenated, are averaged to ``dim`` again. The official code
    resizes the unfolded maps first; the two poolings act on channels and resizing on positions,
    all linearly, so they commute: here each tap is pooled, and its share of the final pooling
    applied, at its own resolution before resizing. The same numbers, without 13 unfolded maps at
    full resolution (18,432 channels each for ``layer4.0``).
    """

    def __init__(self, channels: Sequence[int], dim: int) -> None:
        super().__init__()
        self.dim = dim
        final = adaptive_pool_matrix(len(channels) * dim, dim)
        self.rows: list[tuple[int, int]] = []  # the final values each tap contributes to
        for tap in range(len(channels)):
            share = final[:, tap * dim : (tap + 1) * dim]
            used = share.any(1).nonzero().squeeze(1)
            first, last = int(used[0]), int(used[-1]) + 1
            self.rows.append((first, last))
            self.register_buffer(f"share{tap}", share[first:last].contiguous(), persistent=False)

    def forward(self, maps: Sequence[torch.Tensor]) -> torch.Tensor:
        """``maps``: ``(B, C_t, h_t, w_t)`` each, the first on the finest grid."""
        grid = maps[0].shape[-2:]
        descriptors = maps[0].new_zeros(len(maps[0]), self.dim, *grid)
        for tap, feature_map in enumerate(maps):
            height, width = feature_map.shape[-2:]
            unfolded = F.unfold(feature_map, kernel_size=3, padding=1)  # (B, C·9, h·w), channel-major
            pooled = F.adaptive_avg_pool2d(unfolded[:, None], (self.dim, height * width))[:, 0]  # per position
            first, last = self.rows[tap]
            share = (getattr(self, f"share{tap}") @ pooled).reshape(len(feature_map), last - first, height, width)
            if (height, width) != grid:
                share = F.interpolate(share, size=grid, mode="bilinear", align_corners=False)
            descriptors[:, first:last] += share
        return descriptors


def gaussian_smooth(maps: torch.Tensor, sigma: float, truncate: float = 4.0) -> torch.Tensor:
    """``scipy.ndimage.gaussian_filter`` of each map ``(B, H, W)`` with its defaults, as the official
    code smooths: a separable Gaussian of radius ``⌊truncate·σ + 0.5⌋``, borders extended by
    half-sample reflection (scipy's ``reflect``: ``c b a | a b c``), repeated as often as needed."""
    radius = int(truncate * sigma + 0.5)
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float64, device=maps.device)
    kernel = torch.exp(-0.5 * (offsets / sigma).square())
    kernel = (kernel / kernel.sum()).to(maps.dtype).view(1, 1, -1)
    for dim in (-2, -1):
        length = maps.shape[dim]
        index = torch.arange(-radius, length + radius, device=maps.device) % (2 * length)
        index = torch.where(index < length, index, 2 * length - 1 - index)
        padded = maps.index_select(dim, index).movedim(dim, -1)
        smoothed = F.conv1d(padded.reshape(-1, 1, padded.shape[-1]), kernel)
        maps = smoothed.reshape(*padded.shape[:-1], length).movedim(-1, dim)
    return maps


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


def mutual_nearest_neighbours(
    seed: torch.Tensor, other: torch.Tensor, max_elements: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """For each row ``q`` of ``other``: its nearest row ``p`` of ``seed``, their distance, and whether
    the match is mutual (``p``'s nearest in ``other`` is ``q``). Mutual matches are one-to-one."""
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
    return other_index, other_best, mutual


def associate(
    features: Sequence[torch.Tensor],
    seeds: torch.Tensor,
    max_elements: int,
    device: torch.device,
    association: Association = "official",
) -> torch.Tensor:
    """Channel membership ``(K, N, P)``: entry ``[k, j, p]`` is the patch of image ``j`` in channel
    ``(k, p)`` of seed ``k``, or -1. A seed's own patch ``p`` heads channel ``(k, p)``.

    ``"official"`` (the official ``InReaCh.py``, which the paper's numbers come from): seed ``k``
    is matched only with the images after it (those that are not seeds, and the seeds after ``k``:
    the official seeds are the first images); a patch takes the seed whose patch is nearest to it
    and is dropped if that match is not mutual; a patch ``q`` of image ``j`` matched mutually with
    seed patch ``p`` puts image ``j``'s patch at position ``p`` into channel ``(k, q)``.
    ``"paper"`` (the paper's text): every image is matched with every seed but itself; a patch takes
    the nearest seed among those it is a mutual nearest neighbour of; ``q`` joins channel ``(k, p)``.
    The two agree where matches keep their position (``p = q``). Ties go to the first seed.
    ``features`` are ``N`` tensors ``(P, D)`` on any device; one image at a time moves to ``device``.
    """
    official = association == "official"
    seed_list = seeds.tolist()
    rank = {image: k for k, image in enumerate(seed_list)}  # the official order: seeds first
    count, patches = len(features), len(features[0])
    seed_features = [features[s].to(device) for s in seed_list]
    partner = torch.full((len(seed_list), count, patches), -1, dtype=torch.long, device=device)
    distance = torch.full((len(seed_list), count, patches), math.inf, device=device)
    for image, patch_features in enumerate(features):
        patch_features = patch_features.to(device)
        for k, seed in enumerate(seed_list):
            if rank.get(image, len(seed_list)) > k if official else image != seed:
                nearest, found, mutual = mutual_nearest_neighbours(seed_features[k], patch_features, max_elements)
                partner[k, image] = torch.where(mutual, nearest, -1)
                distance[k, image] = found if official else torch.where(mutual, found, math.inf)
    best_seed = distance.argmin(0, keepdim=True)  # (1, N, P): the first on a tie
    chosen = partner.gather(0, best_seed)[0]  # -1: not mutual with its best seed, or never matched
    image_index, patch_index = (chosen >= 0).nonzero(as_tuple=True)
    seed_index, partner_index = best_seed[0, image_index, patch_index], chosen[image_index, patch_index]
    members = torch.full_like(partner, -1)
    if official:
        members[seed_index, image_index, patch_index] = partner_index
    else:  # one-to-one per (seed, image): no two patches of an image claim one seed patch
        members[seed_index, image_index, partner_index] = patch_index
    members[torch.arange(len(seed_list), device=device), seeds.to(device)] = torch.arange(patches, device=device)
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
    """InReaCh's network: frozen backbone, the official patch descriptors and the nominal bank.

    The settings' defaults (the official code's) are those of the Lightning module, :class:`~viadk8s.models.inreach.Inreach`.

    Args:
        backbone: timm ResNet name.
        taps: blocks whose outputs make the patch descriptors; the first sets the patch grid.
        pre_trained: load the backbone's ImageNet weights (False: a random, still frozen, backbone).
        embedding_dim: patch descriptor size, per tap and after combining the taps.
        num_seeds: seed images (the official association depth).
        association: ``"official"`` (the official code's channels, the paper's numbers) or ``"paper"``
            (the paper's text); see :func:`associate`.
        min_channel_members: a channel needs more members than this, before and after its spread rule.
        max_channel_spread: members this many spreads (std of distances to the mean) away leave.
        spread_fallback: when the spread rule leaves no channel, keep those that pass the member
            rule alone instead of failing (the official code fails); ``None``: only with a random
            backbone, whose channels' distances are all alike (smoke runs, the synthetic demo).
        position_channels: append each patch's (row, column) to its feature; ``None``: when the mean
            training image differs from its transpose by ``alignment_threshold`` (the official test).
        position_weight: position channels span ``[0, position_weight)``.
        alignment_threshold: mean squared difference (0-255 scale) above which images count as aligned.
        sigma: Gaussian smoothing of the map, in pixels, whatever the image size (the official 13).
        max_distance_mib: bound of one distance block (float32) of the nearest-neighbour searches.
        seed: seeds the choice of seed images.
    """

    def __init__(
        self,
        backbone: str,
        taps: Sequence[str],
        pre_trained: bool,
        embedding_dim: int,
        num_seeds: int,
        association: Association,
        min_channel_members: int,
        max_channel_spread: float,
        spread_fallback: bool | None,
        position_channels: bool | None,
        position_weight: float,
        alignment_threshold: float,
        sigma: float,
        max_distance_mib: int,
        seed: int,
    ) -> None:
        super().__init__()
        if association not in ("official", "paper"):
            msg = f"InReaCh association is 'official' or 'paper', got {association!r}"
            raise ValueError(msg)
        self.num_seeds = num_seeds
        self.association: Association = association
        self.min_channel_members = min_channel_members
        self.max_channel_spread = max_channel_spread
        self.spread_fallback = not pre_trained if spread_fallback is None else spread_fallback
        self.position_channels = position_channels
        self.position_weight = position_weight
        self.alignment_threshold = alignment_threshold
        self.sigma = sigma
        self.max_elements = max_distance_mib * 2**20 // 4
        self.seed = seed
        self.backbone = BlockTaps(backbone, taps, pre_trained)
        self.descriptors = PatchDescriptors(self.backbone.channels, embedding_dim)
        self.memory_bank: torch.Tensor
        self.register_buffer("memory_bank", torch.empty(0))
        self.positional: torch.Tensor
        self.register_buffer("positional", torch.tensor(False))
        # training images' patch features by image path, in CPU memory until the bank is built
        self.store: dict[str, torch.Tensor] = {}
        self.grid = (0, 0)
        self.image_sum: torch.Tensor | None = None
        self.report: dict[str, Any] = {}  # facts about the last fit, for result.json

    def embed(self, images: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """Patch descriptors ``(B, h·w, embedding_dim)`` on the first tap's ``(h, w)`` grid."""
        descriptors = self.descriptors(self.backbone(images))
        height, width = descriptors.shape[-2:]
        return descriptors.flatten(2).transpose(1, 2).contiguous(), (height, width)

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
        over the training images sorted by path. A bank the rules leave empty is a
        :class:`~viadk8s.errors.SpecError` (exit 2) unless ``spread_fallback`` allows the fallback."""
        if len(self.store) <= self.min_channel_members:
            msg = f"InReaCh needs more than {self.min_channel_members} training images, got {len(self.store)}"
            raise SpecError(msg)
        device = self.memory_bank.device
        keys = sorted(self.store)
        self.positional = torch.tensor(self.aligned(), device=device)
        if self.positional:
            where = self.positions(self.grid, torch.device("cpu"))
            for key in keys:  # one image at a time: never two copies of the store
                self.store[key] = torch.cat([self.store[key], where], dim=1)
        features = [self.store[key] for key in keys]
        seeds = self.choose_seeds(len(features))
        members = associate(features, seeds, self.max_elements, device, self.association)
        nominal = filter_channels(features, members, self.min_channel_members, self.max_channel_spread)
        fallback = not nominal.any()
        if fallback:
            rule = f"members closer to their channel's mean than {self.max_channel_spread:g} spreads"
            if not self.spread_fallback:
                msg = (
                    f"InReaCh's spread rule ({rule}) left no channel with more than {self.min_channel_members} "
                    "members: the nominal bank is empty (the official code fails here too); "
                    "init_args spread_fallback: true keeps the channels that pass the member rule alone"
                )
                raise SpecError(msg)
            # e.g. a random backbone: its distances to a channel's mean are all alike, so their small
            # standard deviation puts every member "too far"
            logger.warning("InReaCh: the spread rule (%s) left no channel; keeping those that pass the member rule", rule)
            nominal = filter_channels(features, members, self.min_channel_members, math.inf)
        if not nominal.any():
            msg = f"InReaCh kept no nominal patch: no channel has more than {self.min_channel_members} members"
            raise SpecError(msg)
        mask = nominal.cpu()
        self.memory_bank = torch.cat([f[m] for f, m in zip(features, mask, strict=True)]).to(device)
        self.report = {
            "association": self.association,
            "bank_patches": len(self.memory_bank),
            "training_patches": mask.numel(),
            "bank_share": round(float(mask.double().mean()), 6),
            "spread_fallback_used": fallback,
            "position_channels": bool(self.positional),
        }
        logger.info("InReaCh bank: %s", self.report)
        self.store.clear()
        self.image_sum = None
        return mask

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> InferenceBatch:
        """Anomaly maps ``(B, H, W)``: squared distance of each patch to its nearest nominal patch,
        upsampled (nearest, the official repeat) and smoothed; the image score is the map's maximum."""
        if self.memory_bank.numel() == 0:
            msg = "Memory bank is empty: fit InReaCh before testing"
            raise ValueError(msg)
        embedding, grid = self.embed(images)
        if self.positional:
            embedding = torch.cat([embedding, self.positions(grid, images.device).expand(len(images), -1, -1)], dim=2)
        distance, _ = nearest_neighbours(embedding.reshape(-1, embedding.shape[-1]), self.memory_bank, self.max_elements)
        patch_scores = distance.square().reshape(len(images), 1, *grid)
        upsampled = F.interpolate(patch_scores, size=images.shape[-2:], mode="nearest").squeeze(1)
        anomaly_map = gaussian_smooth(upsampled, self.sigma)
        return InferenceBatch(pred_score=anomaly_map.flatten(1).amax(1), anomaly_map=anomaly_map)
