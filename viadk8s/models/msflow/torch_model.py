"""PyTorch model of MSFlow.

Paper:
    Title: MSFlow: Multi-Scale Flow-based Framework for Unsupervised Anomaly Detection
    Authors: Yixuan Zhou, Xing Xu, Jingkuan Song, Fumin Shen, Heng Tao Shen
    Venue: IEEE Transactions on Neural Networks and Learning Systems, 2024
    URL: https://arxiv.org/abs/2308.15300

A frozen CNN gives feature maps at several scales (average-pooled 3x3, stride 2). Each scale has its
own *parallel* flow (all-in-one coupling blocks conditioned on a 2-D positional encoding); a *fusion*
flow then couples the scales with one another (each scale's half channels, pooled to the smallest
scale, condition every scale's other half). Training maximises the likelihood of normal features
under a standard normal; at test time the per-scale log-likelihood maps are combined, per image, into
the official post-processing's two maps: the multiplication map (image score, AUPRO) and the addition
map (pixel AUROC).

Written from the paper and a reading of the official code (its licence forbids derivatives, so
nothing is copied); FrEIA's ``AllInOneBlock`` and CFlow's ``positional_encoding_2d`` come from anomalib.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from anomalib.data import InferenceBatch
from anomalib.models.components.feature_extractors import TimmFeatureExtractor
from anomalib.models.components.flow import AllInOneBlock
from anomalib.models.image.cflow.utils import positional_encoding_2d
from FrEIA.framework import SequenceINN
from torch import nn
from torch.nn import functional as F  # noqa: N812

from viadk8s.models.components.top_k import top_k_mean

ATAN_SCALE = 0.636  # ~2/pi: the soft clamp s -> clamp * 0.636 * atan(s / clamp) stays within (-clamp, clamp)
LATENT_LIMIT = 1e6  # the fusion flow's outputs are clamped to +-1e6, as in the official code (an overflow guard)
FUSION_WIDTH_DIVISOR = 4  # the fusion net's hidden width is a quarter of its input width, as in the official code
ScoreMap = Literal["multiplication", "addition"]


class ChannelLayerNorm(nn.LayerNorm):
    """LayerNorm over the channels of each position of an NCHW map (positions stay independent)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


def subnet_conv_ln(in_channels: int, out_channels: int) -> nn.Sequential:
    """Coupling subnet of the parallel flows: conv3x3 -> LayerNorm -> ReLU -> conv3x3."""
    return nn.Sequential(
        nn.Conv2d(in_channels, in_channels, 3, padding=1),
        ChannelLayerNorm(in_channels),
        nn.ReLU(),
        nn.Conv2d(in_channels, out_channels, 3, padding=1),
    )


def soft_clamp(log_scale: torch.Tensor, clamp: float) -> torch.Tensor:
    """Bound a log-scale smoothly to (-clamp, clamp), so that exp() of it cannot blow up."""
    return clamp * ATAN_SCALE * torch.atan(log_scale / clamp)


class ParallelFlow(nn.Module):
    """One scale's flow: ``n_blocks`` affine all-in-one blocks conditioned on the position of each cell.

    Built for 1x1 cells (convolutions do not care about the map size), so one flow takes any input size.
    """

    def __init__(self, channels: int, n_blocks: int, clamp: float, condition_channels: int) -> None:
        super().__init__()
        self.condition_channels = condition_channels
        self.flow = SequenceINN(channels, 1, 1)
        for _ in range(n_blocks):
            self.flow.append(
                AllInOneBlock,
                cond=0,
                cond_shape=(condition_channels, 1, 1),
                subnet_constructor=subnet_conv_ln,
                affine_clamping=clamp,
                global_affine_type="SOFTPLUS",
            )

    def forward(self, x: torch.Tensor, rev: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """``(z, log|det J|)`` per image; ``rev=True`` maps ``z`` back to features."""
        batch, _, height, width = x.shape
        position = positional_encoding_2d(self.condition_channels, height, width).to(x)
        return self.flow(x, c=[position.expand(batch, -1, -1, -1)], rev=rev)


class ChannelPermutation(nn.Module):
    """A fixed random channel shuffle (volume preserving), so each coupling mixes other channels."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        order = torch.randperm(channels)
        self.register_buffer("order", order)
        self.register_buffer("inverse", torch.argsort(order))

    def forward(self, x: torch.Tensor, rev: bool = False) -> torch.Tensor:
        return x[:, self.inverse if rev else self.order]


class FusionCoupling(nn.Module):
    """Half of the fusion flow: every scale's ``active`` part is scaled and shifted by coefficients
    computed from the ``passive`` parts of ALL scales, which is how the scales exchange information.

    The passive parts are pooled to the smallest map, concatenated and fused (conv3x3 to a quarter of
    the width -> LayerNorm -> ReLU -> conv3x3 back to the full width -> ReLU), split back per scale,
    upsampled to their own map (bilinear, corners aligned) with a residual, and a per-scale conv3x3
    gives the log-scale ``s`` and shift ``t``; scale = exp(soft_clamp(s)).
    """

    def __init__(self, passive_channels: Sequence[int], active_channels: Sequence[int], clamp: float) -> None:
        super().__init__()
        self.passive_channels = list(passive_channels)
        self.clamp = clamp
        total = sum(self.passive_channels)
        hidden = total // FUSION_WIDTH_DIVISOR
        self.fuse = nn.Sequential(
            nn.Conv2d(total, hidden, 3, padding=1),
            ChannelLayerNorm(hidden),
            nn.ReLU(),
            nn.Conv2d(hidden, total, 3, padding=1),
            nn.ReLU(),
        )
        self.heads = nn.ModuleList(
            nn.Conv2d(passive, 2 * active, 3, padding=1)
            for passive, active in zip(self.passive_channels, active_channels, strict=True)
        )

    def coefficients(self, passive: Sequence[torch.Tensor]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """``(log-scale, shift)`` for each scale's active part."""
        smallest = min((p.shape[-2:] for p in passive), key=lambda size: size[0] * size[1])
        fused = self.fuse(torch.cat([F.adaptive_avg_pool2d(p, smallest) for p in passive], dim=1))
        coefficients = []
        for part, p, head in zip(fused.split(self.passive_channels, dim=1), passive, self.heads, strict=True):
            part = F.interpolate(part, size=p.shape[-2:], mode="bilinear", align_corners=True) + p
            log_scale, shift = head(part).chunk(2, dim=1)
            coefficients.append((soft_clamp(log_scale, self.clamp), shift))
        return coefficients

    def forward(
        self, active: Sequence[torch.Tensor], passive: Sequence[torch.Tensor], rev: bool = False
    ) -> tuple[list[torch.Tensor], torch.Tensor]:
        """The transformed active parts and the coupling's log|det J| per image."""
        outputs, log_det = [], torch.zeros(active[0].shape[0], dtype=active[0].dtype, device=active[0].device)
        for x, (log_scale, shift) in zip(active, self.coefficients(passive), strict=True):
            if rev:
                outputs.append((x - shift) * torch.exp(-log_scale))
                log_det = log_det - log_scale.sum(dim=(1, 2, 3))
            else:
                outputs.append(x * torch.exp(log_scale) + shift)
                log_det = log_det + log_scale.sum(dim=(1, 2, 3))
        return outputs, log_det


class FusionFlow(nn.Module):
    """Per-scale channel permutation, then one multi-scale coupling in two half steps, ordered as the
    official coupling: the second halves (``C - C//2`` channels) of all scales transform the first
    halves (``C//2``), then the new first halves transform the second. The outputs are clamped to
    +-``LATENT_LIMIT``, which only a diverged flow reaches."""

    def __init__(self, channels: Sequence[int], clamp: float) -> None:
        super().__init__()
        self.permutations = nn.ModuleList(ChannelPermutation(c) for c in channels)
        self.splits = [(c // 2, c - c // 2) for c in channels]
        first, second = zip(*self.splits, strict=True)
        self.first_from_second = FusionCoupling(second, first, clamp)
        self.second_from_first = FusionCoupling(first, second, clamp)

    def forward(self, xs: Sequence[torch.Tensor], rev: bool = False) -> tuple[list[torch.Tensor], torch.Tensor]:
        """``(outputs per scale, log|det J| per image)``; ``rev=True`` inverts."""
        if not rev:
            xs = [permutation(x) for permutation, x in zip(self.permutations, xs, strict=True)]
        halves = [x.split(split, dim=1) for x, split in zip(xs, self.splits, strict=True)]
        first, second = [h[0] for h in halves], [h[1] for h in halves]
        if rev:
            second, log_det_b = self.second_from_first(second, first, rev=True)
            first, log_det_a = self.first_from_second(first, second, rev=True)
        else:
            first, log_det_a = self.first_from_second(first, second)
            second, log_det_b = self.second_from_first(second, first)
        outputs = [torch.cat(pair, dim=1).clamp(-LATENT_LIMIT, LATENT_LIMIT) for pair in zip(first, second, strict=True)]
        if rev:
            outputs = [permutation(x, rev=True) for permutation, x in zip(self.permutations, outputs, strict=True)]
        return outputs, log_det_a + log_det_b


class MultiScaleFlow(nn.Module):
    """Parallel flows (one per scale) followed by the fusion flow: features -> latents ``z`` per scale."""

    def __init__(self, channels: Sequence[int], flow_blocks: Sequence[int], clamp: float, condition_channels: int) -> None:
        super().__init__()
        if len(channels) != len(flow_blocks):
            msg = f"{len(flow_blocks)} parallel flows for {len(channels)} feature scales"
            raise ValueError(msg)
        self.parallel = nn.ModuleList(
            ParallelFlow(c, n, clamp, condition_channels) for c, n in zip(channels, flow_blocks, strict=True)
        )
        self.fusion = FusionFlow(channels, clamp)

    def forward(self, xs: Sequence[torch.Tensor], rev: bool = False) -> tuple[list[torch.Tensor], torch.Tensor]:
        """``(z per scale, total log|det J| per image)``; ``rev=True`` maps latents back to features."""
        if rev:
            xs, log_det = self.fusion(xs, rev=True)
        outputs, log_dets = [], []
        for flow, x in zip(self.parallel, xs, strict=True):
            y, flow_log_det = flow(x, rev=rev)
            outputs.append(y)
            log_dets.append(flow_log_det)
        if rev:
            return outputs, log_det + sum(log_dets)
        outputs, log_det = self.fusion(outputs)
        return outputs, log_det + sum(log_dets)


def nll_loss(latents: Sequence[torch.Tensor], log_det: torch.Tensor) -> torch.Tensor:
    """Negative log-likelihood under N(0, I), ``sum 0.5 |z|^2 - log|det J|`` summed over every feature
    dimension of an image (without the constant 0.5 log 2 pi of each), then the batch mean.

    Summed, not averaged over the dimensions, as the official training has it: its gradients are
    large, so the gradient-norm clip at 2 acts on every step, which is part of how the model trains.
    """
    energy = sum(0.5 * z.pow(2).flatten(1).sum(dim=1) for z in latents)
    return (energy - log_det).mean()


def log_likelihoods(latents: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Per scale, the ``(B, h, w)`` map log p = -0.5 * mean over channels of z^2 (the log-determinant
    has no per-cell value)."""
    return [-0.5 * z.pow(2).mean(dim=1) for z in latents]


def _upsample(maps: torch.Tensor, size: tuple[int, int] | torch.Size) -> torch.Tensor:
    """``(B, h, w)`` -> ``(B, H, W)``, bilinear with corners aligned, as the official post-processing."""
    return F.interpolate(maps.unsqueeze(1), size=size, mode="bilinear", align_corners=True).squeeze(1)


def _image_max(maps: torch.Tensor) -> torch.Tensor:
    """Each image's maximum, ``(B, 1, 1)``: the official normalisations are per image."""
    return maps.amax(dim=(-2, -1), keepdim=True)


def multiplication_map(log_p: Sequence[torch.Tensor], size: tuple[int, int] | torch.Size) -> torch.Tensor:
    """The official multiplication map ``(B, H, W)``, higher = more anomalous: the per-scale
    log-likelihoods upsampled and added (the likelihoods multiplied), ``S``; the likelihood relative to
    the image's most likely pixel, ``p = exp(S - max S)``; the score ``max p - p`` (= 1 - p). In float32
    every pixel whose S is more than ~17 below the image's maximum scores exactly 1.0, as officially."""
    total = sum(_upsample(scale, size) for scale in log_p)
    likelihood = torch.exp(total - _image_max(total))
    return _image_max(likelihood) - likelihood


def addition_map(log_p: Sequence[torch.Tensor], size: tuple[int, int] | torch.Size) -> torch.Tensor:
    """The official addition map ``(B, H, W)``, higher = more anomalous: per scale, the likelihood
    relative to the image's most likely cell, ``exp(log p - max log p)``, upsampled; these added, ``A``;
    the score ``max A - A``."""
    total = sum(_upsample(torch.exp(scale - _image_max(scale)), size) for scale in log_p)
    return _image_max(total) - total


class MsflowModel(nn.Module):
    """MSFlow: frozen backbone, pooled multi-scale features, parallel + fusion flows, two anomaly maps.

    The settings' defaults (the official code's) are those of the Lightning module, :class:`~viadk8s.models.msflow.Msflow`.

    Args:
        backbone: timm name of the frozen CNN.
        layers: backbone layers giving the scales (one parallel flow each).
        pre_trained: load the backbone's ImageNet weights.
        flow_blocks: coupling blocks of each scale's parallel flow.
        clamp: affine clamping of every coupling.
        condition_channels: channels of the 2-D positional encoding (a multiple of 4).
        top_k: share of the map's pixels averaged into the image score.
        score_map: the map that gives the image score, AUPRO and F1Max: ``"multiplication"`` (the
            official code, pixel AUROC then comes from the addition map) or ``"addition"`` (the
            benchmark paper's single map, used for every metric).
    """

    def __init__(
        self,
        backbone: str,
        layers: Sequence[str],
        pre_trained: bool,
        flow_blocks: Sequence[int],
        clamp: float,
        condition_channels: int,
        top_k: float,
        score_map: ScoreMap,
    ) -> None:
        super().__init__()
        if score_map not in ("multiplication", "addition"):
            msg = f"score_map must be 'multiplication' or 'addition', got {score_map!r}"
            raise ValueError(msg)
        self.feature_extractor = TimmFeatureExtractor(backbone, layers=layers, pre_trained=pre_trained).eval()
        self.flows = MultiScaleFlow(self.feature_extractor.out_dims, flow_blocks, clamp, condition_channels)
        self.top_k = top_k
        self.score_map = score_map

    def extract(self, images: torch.Tensor) -> list[torch.Tensor]:
        """Frozen backbone features (the extractor runs in eval mode, without gradients), each
        average-pooled 3x3 with stride 2 to widen the receptive field."""
        return [F.avg_pool2d(f, 3, stride=2, padding=1) for f in self.feature_extractor(images).values()]

    def evaluate(self, images: torch.Tensor) -> tuple[InferenceBatch, torch.Tensor | None]:
        """Image scores with ``score_map`` as the anomaly map, and beside them the addition map, which
        gives pixel AUROC, where it is not the anomaly map already (else ``None``)."""
        size = images.shape[-2:]
        log_p = log_likelihoods(self.flows(self.extract(images))[0])
        addition = addition_map(log_p, size)
        if self.score_map == "addition":
            return InferenceBatch(pred_score=top_k_mean(addition, self.top_k), anomaly_map=addition), None
        multiplication = multiplication_map(log_p, size)
        return InferenceBatch(pred_score=top_k_mean(multiplication, self.top_k), anomaly_map=multiplication), addition

    def forward(self, images: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor] | InferenceBatch:
        """Training: ``(latents, log|det J|)``; evaluation: image scores and ``(B, H, W)`` anomaly maps
        (:meth:`evaluate` gives the pixel-AUROC map too)."""
        if self.training:
            return self.flows(self.extract(images))
        return self.evaluate(images)[0]
