"""PyTorch model of MMR (masked multi-scale reconstruction).

Paper:
    Title: Industrial anomaly detection with domain shift: A real-world dataset and masked
        multi-scale reconstruction
    Authors: Zilong Zhang, Zhibin Zhao, Xingwu Zhang, Chuang Sun, Xuefeng Chen
    Venue: Computers in Industry 151, 2023
    URL: https://arxiv.org/abs/2304.02216

A frozen CNN *teacher* gives feature maps at three scales. The *student* is a ViT encoder (MAE
weights, trained in full) that sees the image with a random 40 % of its patch tokens removed; a light
decoder puts learned mask tokens back in place, adds the position embedding and turns the token grid
into three maps the teacher's shapes (a simple feature pyramid: transposed convolutions for the finer
scales). Training, on randomly cropped and flipped images, makes each student map point the
teacher's way (1 - channel cosine). At test time nothing is masked: where the student cannot
reconstruct the teacher, the cosine distance is high.

Written from the paper, ``shared/reference/models.md`` and a reading of the official code
(github.com/zhangzilongc/MMR, Apache-2.0; none of it is copied). Our own transformer block;
anomalib's ``TimmFeatureExtractor``, timm's ``LayerNorm2d`` and torchvision's crop sampling are reused.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import timm
import torch
from anomalib.data import InferenceBatch
from anomalib.models.components.feature_extractors import TimmFeatureExtractor
from timm.layers import LayerNorm2d
from torch import nn
from torch.nn import functional as F  # noqa: N812
from torchvision import transforms
from torchvision.transforms.v2 import functional as TF  # noqa: N812

from viadk8s.models.components.smoothing import GaussianFilter

PATCH_SIZE = 16  # ViT-B/16: one token per 16 x 16 pixels, the teacher's layer-3 stride
PRETRAIN_GRID = (14, 14)  # MAE's ViT-B/16 was pre-trained at 224 px: a 14 x 14 token grid
LAYER_NORM_EPS = 1e-6  # MAE's LayerNorm epsilon, so its weights see what they were trained with
MLP_RATIO = 4
CROP_SCALE = (0.7, 1.0)  # the official training crop's share of the image area (DA_low_limit, DA_up_limit)
CROP_RATIO = (3 / 4, 4 / 3)  # its aspect ratio range: torchvision's default, which the official code keeps

# timm's ViT parameter names -> ours. MAE's position embedding is the fixed 2-D sin-cos table of its
# 14 x 14 grid: we compute that table instead of loading it (the same numbers; see encoder_position_embedding).
TIMM_RENAMES = (("patch_embed.proj.", "patch_embed."), (".mlp.fc1.", ".mlp.0."), (".mlp.fc2.", ".mlp.2."))
TIMM_IGNORED = frozenset({"pos_embed"})


def sincos_position_embedding(dim: int, grid: tuple[int, int]) -> torch.Tensor:
    """MAE's fixed 2-D sin-cos position embedding, ``(H·W, dim)`` in row-major token order.

    The first half of the channels encodes the column, the second half the row, each as
    ``[sin(p·ω), cos(p·ω)]`` with ``ω_i = 10000^(-i / (dim/4))``; computed in float64 as MAE does.
    """
    if dim % 4:
        msg = f"a 2-D sin-cos embedding needs a multiple of 4 channels, not {dim}"
        raise ValueError(msg)
    omega = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=torch.float64) / (dim // 4))
    rows, cols = torch.meshgrid(
        torch.arange(grid[0], dtype=torch.float64), torch.arange(grid[1], dtype=torch.float64), indexing="ij"
    )
    halves = []
    for position in (cols.flatten(), rows.flatten()):
        angles = position[:, None] * omega[None, :]
        halves += [angles.sin(), angles.cos()]
    return torch.cat(halves, dim=1).float()


def encoder_position_embedding(dim: int, grid: tuple[int, int]) -> torch.Tensor:
    """The encoder's position embedding on a ``grid`` of tokens, ``(H·W, dim)``, as the official code
    makes it (``get_abs_pos``): MAE's sin-cos table of its 14 x 14 pre-training grid, resized
    bicubically (``align_corners=False``) to ``grid`` when that differs (16 x 16 at 256 px).
    The decoder's embedding, by contrast, is the sin-cos table computed on ``grid`` itself."""
    table = sincos_position_embedding(dim, PRETRAIN_GRID)
    if tuple(grid) == PRETRAIN_GRID:
        return table
    square = table.T.reshape(1, dim, *PRETRAIN_GRID)
    return F.interpolate(square, size=grid, mode="bicubic", align_corners=False)[0].flatten(1).T


class TrainingAugmentation(nn.Module):
    """The official training augmentation, per image: a random crop covering ``scale`` of the image's
    area with an aspect ratio in ``ratio`` (torchvision's ``RandomResizedCrop`` sampling), resized
    bicubically (antialiased, as PIL) back to the image's size, then a left-right flip with
    probability 1/2. Draws from torch's global generator (the run seed), as torchvision's transforms.

    The official code crops the original, full-resolution image straight to the model's input size;
    here the images arrive already resized to the protocol's size, and the crop is taken from them.
    """

    def __init__(self, scale: tuple[float, float] = CROP_SCALE, ratio: tuple[float, float] = CROP_RATIO) -> None:
        super().__init__()
        self.scale, self.ratio = list(scale), list(ratio)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W)`` -> ``(B, C, H, W)``, each image cropped and flipped on its own."""
        size = list(images.shape[-2:])
        augmented = []
        for image in images:
            top, left, height, width = transforms.RandomResizedCrop.get_params(image, self.scale, self.ratio)
            image = TF.resized_crop(
                image, top, left, height, width, size, interpolation=TF.InterpolationMode.BICUBIC, antialias=True
            )
            if torch.rand(1) < 0.5:
                image = TF.horizontal_flip(image)
            augmented.append(image)
        return torch.stack(augmented)


def random_masking(tokens: torch.Tensor, mask_ratio: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Keep a random ``int(N·(1 - mask_ratio))`` of each image's ``N`` tokens (MAE's rule).

    Returns the kept tokens ``(B, keep, D)`` in shuffled order and ``ids_restore`` ``(B, N)``, the
    inverse of the shuffle: position ``n`` of the full sequence is entry ``ids_restore[n]`` of the
    shuffled one (see :func:`restore`). Draws from torch's global generator (the run seed).
    """
    batch, length, dim = tokens.shape
    keep = int(length * (1 - mask_ratio))
    ids_shuffle = torch.rand(batch, length, device=tokens.device).argsort(dim=1)
    ids_restore = ids_shuffle.argsort(dim=1)
    kept = tokens.gather(1, ids_shuffle[:, :keep, None].expand(-1, -1, dim))
    return kept, ids_restore


def restore(kept: torch.Tensor, ids_restore: torch.Tensor, mask_token: torch.Tensor) -> torch.Tensor:
    """The full token sequence ``(B, N, D)``: kept tokens back in place, ``mask_token`` elsewhere."""
    batch, length = ids_restore.shape
    filled = torch.cat([kept, mask_token.expand(batch, length - kept.shape[1], -1)], dim=1)
    return filled.gather(1, ids_restore[..., None].expand(-1, -1, kept.shape[2]))


class Attention(nn.Module):
    """Multi-head self-attention with one fused ``qkv`` projection (ViT's)."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        if dim % num_heads:
            msg = f"{dim} channels cannot be split into {num_heads} heads"
            raise ValueError(msg)
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, dim = x.shape
        q, k, v = self.qkv(x).reshape(batch, length, 3, self.num_heads, dim // self.num_heads).permute(2, 0, 3, 1, 4)
        x = F.scaled_dot_product_attention(q, k, v)  # softmax(q·kᵀ / √head_dim)·v
        return self.proj(x.transpose(1, 2).reshape(batch, length, dim))


class Block(nn.Module):
    """Pre-norm transformer block: ``x + attn(LN(x))``, then ``x + MLP(LN(x))`` (MLP ×4, GELU)."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.attn = Attention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.mlp = nn.Sequential(nn.Linear(dim, MLP_RATIO * dim), nn.GELU(), nn.Linear(MLP_RATIO * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class MaskedEncoder(nn.Module):
    """MAE's ViT encoder: patch embedding + fixed sin-cos positions (:func:`encoder_position_embedding`),
    random masking, a class token, transformer blocks and a final LayerNorm. Any input whose sides are
    multiples of 16 fits.

    Args:
        embed_dim: token width (ViT-B: 768).
        depth: transformer blocks (ViT-B: 12).
        num_heads: attention heads (ViT-B: 12).
    """

    def __init__(self, embed_dim: int = 768, depth: int = 12, num_heads: int = 12) -> None:
        super().__init__()
        self.embed_dim, self.num_heads = embed_dim, num_heads
        self.patch_embed = nn.Conv2d(3, embed_dim, kernel_size=PATCH_SIZE, stride=PATCH_SIZE)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.blocks = nn.ModuleList(Block(embed_dim, num_heads) for _ in range(depth))
        self.norm = nn.LayerNorm(embed_dim, eps=LAYER_NORM_EPS)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """MAE's initialisation: Xavier-uniform linear and patch weights, zero biases, N(0, 0.02²) class token."""
        nn.init.xavier_uniform_(self.patch_embed.weight.view(self.embed_dim, -1))
        nn.init.zeros_(self.patch_embed.bias)
        nn.init.normal_(self.cls_token, std=0.02)
        for module in self.blocks.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)

    def forward(self, images: torch.Tensor, mask_ratio: float = 0.0) -> tuple[torch.Tensor, torch.Tensor | None, tuple[int, int]]:
        """``(tokens (B, 1 + kept, D) with the class token first, ids_restore or None, token grid)``."""
        height, width = images.shape[-2:]
        if height % PATCH_SIZE or width % PATCH_SIZE:
            msg = f"MMR needs image sides that are multiples of {PATCH_SIZE}, not {height}x{width}"
            raise ValueError(msg)
        patches = self.patch_embed(images)
        grid = (patches.shape[-2], patches.shape[-1])
        tokens = patches.flatten(2).transpose(1, 2) + encoder_position_embedding(self.embed_dim, grid).to(patches)
        ids_restore = None
        if mask_ratio > 0:
            tokens, ids_restore = random_masking(tokens, mask_ratio)
        x = torch.cat([self.cls_token.expand(len(tokens), -1, -1), tokens], dim=1)  # its position embedding is 0
        for block in self.blocks:
            x = block(x)
        return self.norm(x), ids_restore, grid


def timm_vit_to_encoder(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A timm ViT state dict (e.g. ``vit_base_patch16_224.mae``) renamed for :class:`MaskedEncoder`."""
    renamed = {}
    for name, tensor in state.items():
        if name in TIMM_IGNORED:
            continue
        for old, new in TIMM_RENAMES:
            name = name.replace(old, new)
        renamed[name] = tensor
    return renamed


def load_timm_weights(encoder: MaskedEncoder, name: str) -> None:
    """Fill every encoder parameter from timm's pretrained ``name`` (through timm, so from the
    project's offline weights cache, or its "missing weights" error); strict: nothing left out."""
    source = timm.create_model(
        name, pretrained=True, embed_dim=encoder.embed_dim, depth=len(encoder.blocks), num_heads=encoder.num_heads
    )
    encoder.load_state_dict(timm_vit_to_encoder(source.state_dict()), strict=True)


def upsampling_branch(embed_dim: int, factor: int, out_channels: int) -> nn.Sequential:
    """One scale of the simple feature pyramid: ``log2(factor)`` stride-2 transposed convolutions
    (halving the channels, channel LayerNorm + GELU between them), then a 1x1 convolution to the
    teacher's channels and a 3x3 one, each followed by a channel LayerNorm; no biases there."""
    steps = int(math.log2(factor))
    layers: list[nn.Module] = []
    channels = embed_dim
    for step in range(steps):
        layers.append(nn.ConvTranspose2d(channels, channels // 2, kernel_size=2, stride=2))
        channels //= 2
        if step < steps - 1:
            layers += [LayerNorm2d(channels, eps=LAYER_NORM_EPS), nn.GELU()]
    layers += [
        nn.Conv2d(channels, out_channels, kernel_size=1, bias=False),
        LayerNorm2d(out_channels, eps=LAYER_NORM_EPS),
        nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1, bias=False),
        LayerNorm2d(out_channels, eps=LAYER_NORM_EPS),
    ]
    return nn.Sequential(*layers)


class PyramidDecoder(nn.Module):
    """Mask tokens back in place, sin-cos position embedding of the grid, token grid -> one map per teacher scale.

    Args:
        embed_dim: the encoder's token width.
        out_channels: the teacher's channels at each scale.
        reductions: the teacher's stride at each scale (a power of 2 that divides 16).
    """

    def __init__(self, embed_dim: int, out_channels: Sequence[int], reductions: Sequence[int]) -> None:
        super().__init__()
        factors = []
        for reduction in reductions:
            factor = PATCH_SIZE // reduction
            if reduction * factor != PATCH_SIZE or factor & (factor - 1):
                msg = f"a teacher map of stride {reduction} is not a power-of-2 refinement of the {PATCH_SIZE}-px tokens"
                raise ValueError(msg)
            factors.append(factor)
        self.embed_dim = embed_dim
        self.mask_token = nn.Parameter(torch.empty(1, 1, embed_dim))
        nn.init.normal_(self.mask_token, std=0.02)
        self.branches = nn.ModuleList(
            upsampling_branch(embed_dim, factor, channels) for factor, channels in zip(factors, out_channels, strict=True)
        )

    def forward(self, tokens: torch.Tensor, ids_restore: torch.Tensor | None, grid: tuple[int, int]) -> list[torch.Tensor]:
        """Encoder tokens (class token first) -> ``(B, C_s, H_s, W_s)`` per scale."""
        x = tokens[:, 1:]
        if ids_restore is not None:
            x = restore(x, ids_restore, self.mask_token)
        x = x + sincos_position_embedding(self.embed_dim, grid).to(x)
        x = x.transpose(1, 2).reshape(len(x), self.embed_dim, *grid)
        return [branch(x) for branch in self.branches]


class Student(nn.Module):
    """Masked encoder + pyramid decoder; masks ``mask_ratio`` of the tokens in training mode only."""

    def __init__(
        self,
        out_channels: Sequence[int],
        reductions: Sequence[int],
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mask_ratio: float = 0.4,
    ) -> None:
        super().__init__()
        self.encoder = MaskedEncoder(embed_dim, depth, num_heads)
        self.decoder = PyramidDecoder(embed_dim, out_channels, reductions)
        self.mask_ratio = mask_ratio

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        tokens, ids_restore, grid = self.encoder(images, self.mask_ratio if self.training else 0.0)
        return self.decoder(tokens, ids_restore, grid)


def cosine_distance(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """``1 - cos`` between the channel vectors of two ``(B, C, H, W)`` maps, ``(B, H, W)``."""
    return 1 - F.cosine_similarity(student, teacher, dim=1)


def reconstruction_loss(students: Sequence[torch.Tensor], teachers: Sequence[torch.Tensor]) -> torch.Tensor:
    """Sum over the scales of the mean ``1 - cos`` (0 when the student points the teacher's way)."""
    return sum(cosine_distance(s, t).mean() for s, t in zip(students, teachers, strict=True))


def distance_map(
    students: Sequence[torch.Tensor], teachers: Sequence[torch.Tensor], size: tuple[int, int] | torch.Size
) -> torch.Tensor:
    """Sum over the scales of ``1 - cos``, each upsampled bilinearly to ``size`` with
    ``align_corners=True`` (the official ``cal_anomaly_map``, adding): ``(B, H, W)``."""
    return sum(
        F.interpolate(cosine_distance(s, t)[:, None], size=size, mode="bilinear", align_corners=True)[:, 0]
        for s, t in zip(students, teachers, strict=True)
    )


class MmrModel(nn.Module):
    """MMR: frozen CNN teacher, masked ViT student with a feature-pyramid decoder.

    The settings' defaults (the paper's) are those of the Lightning module, :class:`~viadk8s.models.mmr.Mmr`.

    Args:
        backbone: timm name of the frozen teacher CNN.
        layers: teacher layers, one scale each (strides 4, 8 and 16 for WideResNet layers 1-3).
        encoder: timm name of the ViT whose weights start the student (MAE's ViT-B/16).
        pre_trained: load the teacher's ImageNet and the student's MAE weights.
        embed_dim: the student's token width.
        depth: the student's transformer blocks.
        num_heads: the student's attention heads.
        mask_ratio: share of the patch tokens removed in training.
        sigma: Gaussian smoothing of the anomaly map, in pixels.

    In training mode, :attr:`augment` crops and flips the training images as the official code.
    """

    def __init__(
        self,
        backbone: str,
        layers: Sequence[str],
        encoder: str,
        pre_trained: bool,
        embed_dim: int,
        depth: int,
        num_heads: int,
        mask_ratio: float,
        sigma: float,
    ) -> None:
        super().__init__()
        self.teacher = TimmFeatureExtractor(backbone, layers=layers, pre_trained=pre_trained).eval()
        self.student = Student(self.teacher.out_dims, self.teacher.reductions, embed_dim, depth, num_heads, mask_ratio=mask_ratio)
        if pre_trained:
            load_timm_weights(self.student.encoder, encoder)
        self.augment = TrainingAugmentation()
        self.blur = GaussianFilter(sigma)

    def extract(self, images: torch.Tensor) -> list[torch.Tensor]:
        """The frozen teacher's maps (the extractor runs in eval mode, without gradients)."""
        return list(self.teacher(images).values())

    def anomaly_map(
        self, students: Sequence[torch.Tensor], teachers: Sequence[torch.Tensor], size: tuple[int, int] | torch.Size
    ) -> torch.Tensor:
        """:func:`distance_map` smoothed as the official code (scipy's Gaussian filter): ``(B, H, W)``."""
        return self.blur(distance_map(students, teachers, size))

    def training_loss(self, images: torch.Tensor) -> torch.Tensor:
        """Reconstruction loss of a training batch: the images cropped and flipped at random, the
        teacher run on them (each epoch crops differently, so its maps cannot be cached), the student
        seeing them with ``mask_ratio`` of the tokens masked."""
        images = self.augment(images)
        return reconstruction_loss(self.student(images), self.extract(images))

    def forward(self, images: torch.Tensor) -> InferenceBatch:
        """Image scores ``(B,)`` (the map's maximum) and anomaly maps ``(B, H, W)``; in eval mode
        (testing, validation) nothing is masked."""
        maps = self.anomaly_map(self.student(images), self.extract(images), images.shape[-2:])
        return InferenceBatch(pred_score=maps.flatten(1).amax(dim=1), anomaly_map=maps)
