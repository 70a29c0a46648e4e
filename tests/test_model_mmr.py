"""MMR (viadk8s.models.mmr): invariants of its augmentation, masking, position embedding, decoder, loss, maps,
optimiser and weights, hand-computed small cases of the formulas taken from the official code, and one CLI run."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
import timm
import torch
from lightning.pytorch import seed_everything
from torch import nn
from torchvision import transforms

from tests.checks import run_tiny
from viadk8s.models.mmr import Mmr
from viadk8s.models.mmr.lightning_model import learning_rate_factor
from viadk8s.models.mmr.torch_model import (
    PRETRAIN_GRID,
    MaskedEncoder,
    TrainingAugmentation,
    distance_map,
    encoder_position_embedding,
    random_masking,
    reconstruction_loss,
    restore,
    sincos_position_embedding,
    timm_vit_to_encoder,
)

TINY_VIT = {"embed_dim": 32, "depth": 2, "num_heads": 2}  # the student's shape in the unit tests
MAE = "vit_base_patch16_224.mae"


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    """These tensors are tiny: with two threads OpenMP's spin-waiting on the shared 2-core machine costs 10x."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_model(seed: int = 3, size: int = 64, **kwargs: object) -> Mmr:
    """A small random-weight MMR: ResNet-18 layers 1-3 as teacher, a 2-block 32-wide ViT student."""
    seed_everything(seed, verbose=False)
    return Mmr(
        backbone="resnet18",
        pre_trained=False,
        **TINY_VIT,
        pre_processor=Mmr.configure_pre_processor(image_size=(size, size)),
        evaluator=False,
        visualizer=False,
        **kwargs,
    )


def images(n: int, height: int = 64, width: int = 64, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 3, height, width, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize(("height", "width"), [(64, 64), (96, 64), (128, 160)])
def test_decoder_maps_have_the_teacher_shapes(height: int, width: int) -> None:
    model = tiny_model().model
    x = images(2, height, width)
    teacher = [t.shape for t in model.extract(x)]
    assert teacher == [(2, 64, height // 4, width // 4), (2, 128, height // 8, width // 8), (2, 256, height // 16, width // 16)]
    for training in (True, False):  # masked or not, the decoder fills the whole grid
        with torch.no_grad():
            assert [s.shape for s in model.student.train(training)(x)] == teacher


def test_full_vit_b_decoder_matches_the_wide_resnet_teacher() -> None:
    """The catalog's model: WRN50 layers 1-3 (256/512/1024 channels) at strides 4/8/16."""
    seed_everything(0, verbose=False)
    model = Mmr(pre_trained=False, evaluator=False, visualizer=False).model.eval()
    assert (len(model.student.encoder.blocks), model.student.encoder.embed_dim, model.student.encoder.num_heads) == (12, 768, 12)
    x = images(1)
    with torch.no_grad():
        assert (
            [s.shape for s in model.student(x)]
            == [t.shape for t in model.extract(x)]
            == [
                (1, 256, 16, 16),
                (1, 512, 8, 8),
                (1, 1024, 4, 4),
            ]
        )


@pytest.mark.parametrize(("length", "kept"), [(16, 9), (196, 117), (256, 153)])  # 64, 224 and 256 px
def test_masking_keeps_the_stated_share_and_restore_inverts_it(length: int, kept: int) -> None:
    torch.manual_seed(0)
    tokens = torch.arange(1.0, length + 1).repeat(3, 1)[..., None].expand(-1, -1, 2)  # token n holds n + 1
    visible, ids_restore = random_masking(tokens, 0.4)
    assert visible.shape == (3, kept, 2) and kept == int(length * 0.6)
    assert all(len(set(row.tolist())) == kept for row in visible[..., 0])  # distinct tokens, none repeated
    assert not torch.equal(visible[0], visible[1])  # each image has its own mask
    full = restore(visible, ids_restore, torch.zeros(1, 1, 2))
    shown = full[..., 0] != 0
    assert (shown.sum(dim=1) == kept).all()  # exactly `kept` in place, the other 40 % are mask tokens
    assert torch.equal(full[shown], tokens[shown])  # every kept token is back at its own position
    for row in range(3):
        assert set(full[row, :, 0][shown[row]].tolist()) == set(visible[row, :, 0].tolist())


def test_no_masking_in_eval_and_evaluation_is_deterministic() -> None:
    model = tiny_model().model
    lengths: list[int] = []
    model.student.encoder.register_forward_hook(lambda _m, _i, out: lengths.append(out[0].shape[1]))
    x = images(2)
    with torch.no_grad():
        model.train()
        first, second = model.student(x), model.student(x)
        assert not torch.equal(first[0], second[0])  # new random masks each training pass
        model.eval()
        state = torch.get_rng_state()
        a, b = model(x), model(x)
        assert torch.equal(torch.get_rng_state(), state)  # evaluation draws nothing
    assert lengths == [1 + 9, 1 + 9, 1 + 16, 1 + 16]  # class token + 60 % of 16 tokens in training, all 16 in eval
    assert torch.equal(a.anomaly_map, b.anomaly_map) and torch.equal(a.pred_score, b.pred_score)
    assert a.anomaly_map.shape == (2, 64, 64) and a.pred_score.shape == (2,)
    torch.testing.assert_close(a.pred_score, a.anomaly_map.flatten(1).amax(1), rtol=0, atol=0)


def test_loss_at_known_points() -> None:
    shapes = [(2, 4, 8, 8), (2, 6, 4, 4), (2, 8, 2, 2)]
    teacher = [torch.randn(shape, generator=torch.Generator().manual_seed(i)) for i, shape in enumerate(shapes)]
    assert float(reconstruction_loss(teacher, teacher)) == pytest.approx(0, abs=1e-6)
    assert float(reconstruction_loss([2.5 * t for t in teacher], teacher)) == pytest.approx(0, abs=1e-6)  # cosine: scale-free
    assert float(reconstruction_loss([-t for t in teacher], teacher)) == pytest.approx(6.0)  # opposite: 2 per scale
    one_hot = lambda shape, channel: torch.zeros(shape).index_fill_(1, torch.tensor([channel]), 1.0)  # noqa: E731
    orthogonal = reconstruction_loss([one_hot(s, 0) for s in shapes], [one_hot(s, 1) for s in shapes])
    assert float(orthogonal) == pytest.approx(3.0)  # cosine 0: 1 per scale, 3 scales
    half = [one_hot(s, 0) for s in shapes]
    half[0][:, :, :4] = one_hot(shapes[0], 1)[:, :, :4]  # half the first scale's positions orthogonal
    assert float(reconstruction_loss(half, [one_hot(s, 0) for s in shapes])) == pytest.approx(0.5)  # a mean over positions


def test_anomaly_map_adds_the_upsampled_scales_and_smooths() -> None:
    model = tiny_model().model
    teacher = [torch.ones(1, 4, 16, 16), torch.ones(1, 4, 8, 8), torch.ones(1, 4, 4, 4)]
    student = [t.clone() for t in teacher]
    student[2][:, 1:] = 0  # the coarsest scale orthogonal everywhere: cos = 1/2 between (1,1,1,1) and (1,0,0,0)
    maps = model.anomaly_map(student, teacher, (64, 64))
    torch.testing.assert_close(maps, torch.full((1, 64, 64), 0.5))  # 0 + 0 + 0.5, a constant map blurs to itself
    student[1][0, :, 0, 7] = -1  # one opposite cell of the middle scale, top right
    maps = model.anomaly_map(student, teacher, (64, 64))
    row, col = divmod(int(maps[0].argmax()), 64)
    assert row < 8 and col >= 56 and maps[0].max() < 0.5 + 2  # smoothed (sigma 4), where the cell is


def test_weight_decay_groups_exclude_biases_and_norms() -> None:
    model = tiny_model()
    model.trainer = SimpleNamespace(max_epochs=200)
    config = model.configure_optimizers()
    optimizer = config["optimizer"]
    assert isinstance(optimizer, torch.optim.AdamW) and optimizer.defaults["betas"] == (0.9, 0.95)
    decay = {id(p) for g in optimizer.param_groups if g["weight_decay"] == 0.05 for p in g["params"]}
    no_decay = {id(p) for g in optimizer.param_groups if g["weight_decay"] == 0.0 for p in g["params"]}
    assert {g["weight_decay"] for g in optimizer.param_groups} == {0.0, 0.05}
    student = model.model.student
    assert decay | no_decay == {id(p) for p in student.parameters()} and not decay & no_decay  # the student, all of it
    names = dict(student.named_parameters())
    for name, parameter in names.items():  # LayerNorm covers timm's channel LayerNorm2d of the decoder
        norm_or_bias = name.endswith(".bias") or isinstance(student.get_submodule(name.rpartition(".")[0]), nn.LayerNorm)
        assert (id(parameter) in no_decay) == norm_or_bias, name
    assert id(names["encoder.blocks.0.attn.qkv.weight"]) in decay and id(names["encoder.patch_embed.weight"]) in decay
    assert id(names["encoder.blocks.0.norm1.weight"]) in no_decay and id(names["decoder.branches.2.1.weight"]) in no_decay
    assert all(g["lr"] == 0 for g in optimizer.param_groups)  # the first warm-up epoch, as officially: 1e-3 · 0/50


def test_learning_rate_schedule_counts_epochs_as_the_official_code() -> None:
    """Official ``mmr_adjust_learning_rate(epoch)``, called once per epoch: ``lr·epoch/50`` while
    ``epoch < 50``, then ÷10 when ``epoch + 1`` reaches 120 and again at 160 (0-based epochs)."""
    protocol = [learning_rate_factor(epoch, max_epochs=200) for epoch in range(200)]
    assert protocol[:3] == pytest.approx([0.0, 0.02, 0.04]) and protocol[25] == pytest.approx(0.5)
    assert protocol[49] == pytest.approx(0.98) and protocol[50] == protocol[118] == 1.0  # warm-up over, full rate
    assert protocol[119] == protocol[158] == pytest.approx(0.1)  # the 120th epoch (1-based) is the first at 1e-4
    assert protocol[159] == protocol[199] == pytest.approx(0.01)
    short = [learning_rate_factor(epoch, max_epochs=20) for epoch in range(20)]  # warm-up 5, ÷10 at 12th and 16th
    assert short[:6] == pytest.approx([0.0, 0.2, 0.4, 0.6, 0.8, 1.0]) and short[10] == 1.0
    assert short[11] == short[14] == pytest.approx(0.1) and short[15] == short[19] == pytest.approx(0.01)
    assert [learning_rate_factor(e, max_epochs=2) for e in range(2)] == pytest.approx([0.1, 0.01])  # a smoke run


def test_timm_vit_maps_onto_our_encoder() -> None:
    """Every encoder parameter comes from the timm checkpoint, and our blocks compute timm's ViT."""
    torch.manual_seed(0)
    source = timm.create_model(MAE, pretrained=False, img_size=64, **TINY_VIT)
    state = timm_vit_to_encoder(source.state_dict())
    encoder = MaskedEncoder(**TINY_VIT)
    assert set(state) == set(encoder.state_dict())  # covers every parameter, nothing left over
    encoder.load_state_dict(state, strict=True)
    with torch.no_grad():
        source.pos_embed[0, 1:] = encoder_position_embedding(32, (4, 4))  # MAE's table resized, class token at 0
        source.pos_embed[0, :1] = 0
        x = images(2)
        ours, ids_restore, grid = encoder(x)
        torch.testing.assert_close(ours, source.forward_features(x), rtol=1e-5, atol=1e-5)
    assert ids_restore is None and grid == (4, 4)


def test_sincos_position_embedding_known_values() -> None:
    embedding = sincos_position_embedding(8, (3, 4))  # 2 frequencies per (sin|cos) x (column|row)
    assert embedding.shape == (12, 8)
    column_1_row_2 = embedding[2 * 4 + 1]  # row-major tokens
    expected = [0.841471, 0.009999833, 0.540302, 0.99995, 0.909297, 0.01999867, -0.416147, 0.9998]
    torch.testing.assert_close(column_1_row_2, torch.tensor(expected), rtol=0, atol=1e-6)  # sin/cos(1·ω), sin/cos(2·ω)


def keys_cubic(x: float, a: float = -0.75) -> float:
    """The cubic convolution kernel of torch's ``bicubic`` mode (Keys, a = -0.75)."""
    x = abs(x)
    if x <= 1:
        return ((a + 2) * x - (a + 3)) * x * x + 1
    return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a if x < 2 else 0.0


def test_encoder_position_embedding_is_the_14_grid_table_resized_bicubically() -> None:
    """At 256 px (16 x 16 tokens) the encoder adds MAE's 14 x 14 table resized bicubically (the official
    ``get_abs_pos``), not the sin-cos of the 16 x 16 grid (which only the decoder adds)."""
    assert PRETRAIN_GRID == (14, 14)
    assert torch.equal(encoder_position_embedding(8, (14, 14)), sincos_position_embedding(8, (14, 14)))  # 224 px: as is
    embedding = encoder_position_embedding(768, (16, 16))
    assert embedding.shape == (256, 768)
    assert not torch.allclose(embedding, sincos_position_embedding(768, (16, 16)), atol=1e-2)
    small = encoder_position_embedding(8, (16, 16))  # channel 0 = sin(column · 1), channel 4 = sin(row · 1)
    # output column 0 reads source x = (0 + 0.5)·14/16 - 0.5 = -0.0625: taps -2..1 clamped to 0, 0, 0, 1, whose
    # sin(0) = 0, so only tap 1 counts, with weight keys(1.0625) = -0.0412: -0.0412 · sin 1 = -0.0347
    assert keys_cubic(1.0625) == pytest.approx(-0.0411987, abs=1e-7)
    assert float(small[0, 0]) == pytest.approx(keys_cubic(1.0625) * math.sin(1), abs=1e-6)
    assert float(small[0, 0]) == pytest.approx(-0.034668, abs=1e-6)
    for column in range(16):  # each column: the four taps of x = (c + 0.5)·14/16 - 0.5, every row alike
        x = (column + 0.5) * 14 / 16 - 0.5
        base = math.floor(x)
        expected = sum(keys_cubic(x - base - k) * math.sin(min(max(base + k, 0), 13)) for k in (-1, 0, 1, 2))
        torch.testing.assert_close(small[column::16, 0], torch.full((16,), expected), rtol=0, atol=1e-6)
        torch.testing.assert_close(small[16 * column : 16 * column + 16, 4], torch.full((16,), expected), rtol=0, atol=1e-6)


def test_distance_maps_are_upsampled_with_aligned_corners() -> None:
    """Official ``cal_anomaly_map``: bilinear with ``align_corners=True``. A 2 x 2 map of distances
    [[0, 0.5], [1, 2]] to 4 x 4: the corners stay, the rest is linear between them."""
    teacher = torch.tensor([1.0, 0.0])[None, :, None, None].expand(1, 2, 2, 2)
    student = torch.tensor([[[1.0, 1.0], [0.0, -1.0]], [[0.0, math.sqrt(3)], [1.0, 0.0]]])[None]  # cos 1, 1/2, 0, -1
    coarse = (torch.tensor([[[0.0]], [[1.0]]])[None], torch.tensor([[[1.0]], [[0.0]]])[None])  # cos 0 everywhere
    maps = distance_map([student, coarse[0]], [teacher, coarse[1]], (4, 4))
    expected = torch.tensor(
        [[0, 1 / 6, 1 / 3, 1 / 2], [1 / 3, 5 / 9, 7 / 9, 1], [2 / 3, 17 / 18, 11 / 9, 3 / 2], [1, 4 / 3, 5 / 3, 2]]
    )
    torch.testing.assert_close(maps, 1 + expected[None], rtol=0, atol=1e-6)  # + 1 from the coarse scale


def ramp_images(n: int, size: int = 64) -> torch.Tensor:
    """Images whose channel 0 holds each pixel's column and channel 1 its row."""
    columns = torch.arange(size, dtype=torch.float32).expand(size, size)
    return torch.stack([columns, columns.T, torch.zeros(size, size)]).expand(n, -1, -1, -1).contiguous()


def test_augmentation_is_the_official_crop_and_flip() -> None:
    """Seeded, it gives exactly torchvision's ``RandomResizedCrop(size, scale=(0.7, 1), bicubic)`` +
    ``RandomHorizontalFlip()`` (the official training transform), applied image by image."""
    x = images(6)
    official = transforms.Compose(
        [
            transforms.RandomResizedCrop(64, scale=(0.7, 1.0), interpolation=transforms.InterpolationMode.BICUBIC),
            transforms.RandomHorizontalFlip(),
        ]
    )
    torch.manual_seed(4)
    expected = torch.stack([official(image) for image in x])
    torch.manual_seed(4)
    augmented = TrainingAugmentation()(x)
    assert augmented.shape == x.shape and torch.equal(augmented, expected)
    torch.manual_seed(4)
    assert torch.equal(TrainingAugmentation()(x), augmented)  # the run seed fixes it
    assert not torch.equal(augmented[0], augmented[1])  # each image its own crop


def test_augmentation_crop_boxes_follow_the_official_ranges() -> None:
    """The crop box read back from coordinate ramps (bicubic interpolation keeps a ramp linear away from
    the borders): area 0.7-1 of the image, aspect ratio 3/4-4/3, inside the image, flipped about half
    the time; and bicubic (it overshoots at a step, which bilinear cannot)."""
    size, n = 64, 40
    torch.manual_seed(1)
    out = TrainingAugmentation()(ramp_images(n, size))
    flips = 0
    areas = []
    for image in out:
        x_step = float(image[0, 32, 48] - image[0, 32, 16]) / 32  # source columns per output column: ±width/size
        y_step = float(image[1, 48, 32] - image[1, 16, 32]) / 32
        width, height = abs(x_step) * size, y_step * size
        assert width == pytest.approx(round(width), abs=1e-3) and height == pytest.approx(round(height), abs=1e-3)
        width, height = round(width), round(height)
        column = 16 if x_step > 0 else size - 1 - 16
        left = float(image[0, 32, column]) - (16.5 * width / size - 0.5)  # output pixel centre -> source position
        top = float(image[1, 16, 32]) - (16.5 * height / size - 0.5)
        assert left == pytest.approx(round(left), abs=1e-3) and top == pytest.approx(round(top), abs=1e-3)
        assert 0 <= round(left) <= size - width and 0 <= round(top) <= size - height
        # get_params rounds w = √(A·r), h = √(A/r) to integers: allow that rounding in the area and the ratio
        assert 0.7 * size * size - size <= width * height <= size * size
        assert 3 / 4 - 1 / size <= width / height <= 4 / 3 + 1 / size
        areas.append(width * height / size**2)
        flips += x_step < 0
    assert 10 <= flips <= 30 and min(areas) < 0.8 and max(areas) > 0.95
    step = torch.zeros(n, 3, size, size)
    step[..., size // 2 :] = 1.0
    torch.manual_seed(2)
    stepped = TrainingAugmentation()(step)
    assert stepped.min() < -1e-3 and stepped.max() > 1 + 1e-3


def test_training_loss_runs_teacher_and_student_on_the_augmented_batch() -> None:
    model = tiny_model().model.train()
    seen: dict[str, torch.Tensor] = {}
    model.teacher.register_forward_pre_hook(lambda _m, args: seen.update(teacher=args[0]))
    model.student.encoder.register_forward_pre_hook(lambda _m, args: seen.update(student=args[0]))
    x = images(3)
    torch.manual_seed(7)
    expected = model.augment(x)
    torch.manual_seed(7)
    loss = model.training_loss(x)
    assert torch.equal(seen["teacher"], expected) and torch.equal(seen["student"], expected)
    assert not torch.equal(expected, x) and loss.requires_grad and loss.item() > 0


STAGED_LOAD = textwrap.dedent(
    """
    import json, sys
    from viadk8s.worker.env import prepare_process
    prepare_process()
    from viadk8s.worker.weights import configure_caches
    configure_caches(sys.argv[1])
    from pathlib import Path
    import safetensors.torch
    from viadk8s.errors import SpecError
    from viadk8s.models.mmr.torch_model import MaskedEncoder, load_timm_weights, timm_vit_to_encoder
    from viadk8s.worker.weights import cached_weights_only
    staged = safetensors.torch.load_file(sys.argv[2])
    encoder = MaskedEncoder(embed_dim=32, depth=2, num_heads=2)
    with cached_weights_only():
        load_timm_weights(encoder, "vit_base_patch16_224.mae")
    expected = timm_vit_to_encoder(staged)
    filled = sorted(k for k, v in encoder.state_dict().items() if k in expected and v.equal(expected[k]))
    Path(sys.argv[2]).unlink()
    try:
        with cached_weights_only():
            load_timm_weights(MaskedEncoder(embed_dim=32, depth=2, num_heads=2), "vit_base_patch16_224.mae")
        missing = "loaded"
    except SpecError as err:
        missing = str(err)
    print(json.dumps({"filled": filled, "all": sorted(encoder.state_dict()), "missing": missing}))
    """
)


def test_staged_mae_checkpoint_fills_every_encoder_parameter(tmp_path: Path) -> None:
    """A (tiny, seeded) MAE checkpoint in the Hugging Face cache layout, loaded offline through timm;
    once it is gone, the project's one-line "missing weights" error."""
    import safetensors.torch

    torch.manual_seed(11)
    source = timm.create_model(MAE, pretrained=False, **TINY_VIT)
    repo = tmp_path / "weights" / "huggingface" / "hub" / f"models--{source.pretrained_cfg['hf_hub_id'].replace('/', '--')}"
    revision = "1" * 40
    (repo / "snapshots" / revision).mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision)
    checkpoint = repo / "snapshots" / revision / "model.safetensors"
    safetensors.torch.save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(checkpoint))
    done = subprocess.run(
        [sys.executable, "-c", STAGED_LOAD, str(tmp_path / "weights"), str(checkpoint)],
        capture_output=True,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "VIADK8S_WEIGHTS_DIR": str(tmp_path / "weights")},
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.splitlines()[-1])
    assert (
        report["filled"] == report["all"] and len(report["all"]) == 3 + 2 * 12 + 2
    )  # class token, patch embedding, blocks, norm
    assert "timm/vit_base_patch16_224.mae" in report["missing"] and "--weights random" in report["missing"]


def test_same_seed_same_numbers() -> None:
    x = images(2)
    outputs = []
    for _ in range(2):
        model = tiny_model(seed=11)
        model.trainer = SimpleNamespace(max_epochs=2)
        optimizer = model.configure_optimizers()["optimizer"]
        seed_everything(5, verbose=False)
        model.model.train()
        loss = model.model.training_loss(x)  # the same crops, flips and masks
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            outputs.append((float(loss), model.model.eval()(x)))
    (loss_a, a), (loss_b, b) = outputs
    assert loss_a == loss_b
    assert torch.equal(a.anomaly_map, b.anomaly_map) and torch.equal(a.pred_score, b.pred_score)


def test_planted_defect_scores_above_normal_images() -> None:
    """Trained on flat noisy images, the student misses a bright square: higher score, map peak inside it."""
    model = tiny_model(seed=5)
    model.trainer = SimpleNamespace(max_epochs=100)
    generator = torch.Generator().manual_seed(1)
    normal = lambda n: 0.3 * torch.randn(n, 3, 64, 64, generator=generator)  # noqa: E731
    train = normal(8)
    teacher = model.model.extract(train)
    optimizer = torch.optim.AdamW(model.model.student.parameters(), lr=1e-3, betas=(0.9, 0.95))
    model.model.train()
    for _ in range(30):
        loss = reconstruction_loss(model.model.student(train), teacher)
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
        assert 8 <= row < 40 and 24 <= col < 56  # the square, give or take the coarse scales' blur


def test_cli_run_gives_image_and_pixel_metrics(cli, tiny_config: Path) -> None:  # noqa: ANN001
    """The catalog's model (ViT-B student, WRN50 teacher, random weights) through the real CLI: ~50 s here.
    With random weights after 2 epochs the scores' order means little: the planted-defect test checks it."""
    _, scores = run_tiny(cli, tiny_config, "mmr")
    assert sorted(scores["label"].value_counts().items()) == [(0, 6), (1, 6)] and scores["score"].notna().all()
