"""Each image decoded once per run (viadk8s.data.decoded), and loader workers sized to the CPUs.

The cache must be invisible to a model: whole batches, as the model's pre-processor hands them to
it, are compared bit for bit with the cache on, off and spilled to its memory-mapped file.
"""

from __future__ import annotations

import os
import pickle
import re
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch
from anomalib.models import Padim
from PIL import Image
from torchvision.transforms.v2 import Resize
from torchvision.tv_tensors import Image as TvImage

from viadk8s.backends.k8s.render import render_job
from viadk8s.cluster_config import ClusterSettings
from viadk8s.data import decoded as decoded_module
from viadk8s.data.decoded import SPILL_FILE, DecodedImages, load_image
from viadk8s.data.drift import write_drifted_test_set
from viadk8s.data.images import read_image, to_float
from viadk8s.data.layout import Sample
from viadk8s.data.samples import SamplesDataModule
from viadk8s.errors import SpecError
from viadk8s.spec import RunSpec
from viadk8s.worker import env as worker_env

SIZE = 24  # the model's input size in these tests; every image is larger and not square


def _write(path: Path, array: np.ndarray) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, **({"quality": 90} if path.suffix == ".jpg" else {}))
    return str(path)


def category(root: Path, bits: int) -> list[Sample]:
    """A few train and test images of odd sizes (colour, grey, JPEG), bad ones with masks, one of a
    different size than its image; ``bits`` 16: 12-bit values in 16-bit PNGs."""
    rng = np.random.default_rng(bits)
    samples = []

    def image(name: str, grey: bool = False) -> str:
        shape = (40, 52) if grey or bits == 16 else (40, 52, 3)
        if bits == 16:
            return _write(root / f"{name}.png", rng.integers(0, 4096, shape).astype(np.uint16))
        suffix = ".jpg" if name.endswith("0") else ".png"
        return _write(root / f"{name}{suffix}", rng.integers(0, 256, shape).astype(np.uint8))

    for i in range(6):
        samples.append(Sample(image(f"train/good/{i}", grey=i == 1), 0, "train", "good"))
    for i in range(3):
        samples.append(Sample(image(f"test/good/{i}"), 0, "test", "good"))
    for i in range(3):
        mask = np.zeros((20, 26) if i == 2 else (40, 52), np.uint8)
        mask[4:12, 6 + i : 18 + i] = 255
        mask_path = _write(root / f"ground_truth/scratch/{i}_mask.png", mask)
        samples.append(Sample(image(f"test/scratch/{i}"), 1, "test", "scratch", mask_path))
    return samples


def module(samples: list[Sample], work: Path, bits: int = 8, workers: int = 0, gpu: bool = False) -> SamplesDataModule:
    """The worker's data module under a trainer whose model resizes to SIZE, set up as Lightning does."""
    bit_depth = 12 if bits == 16 else 8
    loading = {"num_workers": workers, "gpu": gpu}
    data = SamplesDataModule("d-c", samples, labelled_train=False, batch_size=4, seed=3, bit_depth=bit_depth, **loading)
    model = SimpleNamespace(pre_processor=Padim.configure_pre_processor(image_size=(SIZE, SIZE)))
    data.trainer = SimpleNamespace(model=model, default_root_dir=str(work))  # type: ignore[assignment]
    data.setup("fit")
    return data


def received(data: SamplesDataModule, split: str, epochs: int = 1) -> list[Any]:
    """Every batch of ``split`` as the model receives it: collated, then through its pre-processor."""
    transform = data.trainer.model.pre_processor.transform  # type: ignore[union-attr]
    batches = []
    torch.manual_seed(0)  # the same shuffled order whatever is compared
    for _ in range(epochs):
        for batch in getattr(data, f"{split}_dataloader")():
            batch.image, batch.gt_mask = transform(batch.image, batch.gt_mask)
            batches.append(batch)
    return batches


def assert_same(left: list[Any], right: list[Any]) -> None:
    assert len(left) == len(right) > 0
    for a, b in zip(left, right, strict=True):
        assert a.image_path == b.image_path
        assert a.image.dtype == b.image.dtype == torch.float32 and a.image.shape[-2:] == (SIZE, SIZE)
        assert torch.equal(a.image, b.image)
        assert torch.equal(a.gt_label, b.gt_label)
        assert (a.gt_mask is None) == (b.gt_mask is None)
        if a.gt_mask is not None:
            assert torch.equal(a.gt_mask, b.gt_mask)


@pytest.mark.parametrize("bits", [8, 16])
def test_batches_are_bit_identical_with_and_without_the_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, bits: int) -> None:
    samples = category(tmp_path / "data", bits)
    cached = module(samples, tmp_path / "on", bits)
    assert len(cached.decoded) == len(samples) + 3  # every image and every mask, decoded at setup
    monkeypatch.setenv("VIADK8S_DECODE_CACHE", "0")
    uncached = module(samples, tmp_path / "off", bits)
    assert len(uncached.decoded) == 0
    for split in ("train", "test"):
        assert_same(received(cached, split), received(uncached, split))
    test = received(cached, "test")
    masks = torch.cat([b.gt_mask for b in test])
    labels = torch.cat([b.gt_label for b in test])
    assert masks[labels == 1].flatten(1).any(1).all() and not masks[labels == 0].any()  # masks survive resizing
    if bits == 16:  # the 12-bit range reaches the model: values near 4095 are near 1 after scaling, not clipped
        image = load_image(samples[0].image_path, 12, None)[0]
        assert image.dtype == np.uint16 and image.max() > 255


@pytest.mark.parametrize("bits", [8, 16])
def test_integer_resize_is_within_a_grey_level_of_resizing_the_float_image(tmp_path: Path, bits: int) -> None:
    """What the cache changed: the model's Resize runs on the integer image (as image pipelines that
    resize before converting do), not on the float one; the two differ by less than one level."""
    resize = Resize((SIZE, SIZE), antialias=True)
    depth = 12 if bits == 16 else 8
    for sample in category(tmp_path, bits):
        ours = to_float(load_image(sample.image_path, depth, resize)[0], depth)
        before = resize(TvImage(read_image(sample.image_path, depth)))
        assert ours.shape == before.shape == (3, SIZE, SIZE)
        assert float((ours - before).abs().max()) <= 1 / (2**depth - 1)


@pytest.mark.parametrize("budget_mb", ["0", "0.005"])
def test_a_cache_over_its_budget_spills_to_a_memory_map_with_the_same_tensors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, budget_mb: str
) -> None:
    samples = category(tmp_path / "data", 8)
    in_memory = module(samples, tmp_path / "memory")
    monkeypatch.setenv("VIADK8S_DECODE_CACHE_MB", budget_mb)
    spilled = module(samples, tmp_path / "spilled")
    cache = spilled.decoded
    assert cache is not None and cache.spilled > 0 and (tmp_path / "spilled" / "decoded" / SPILL_FILE).is_file()
    assert cache.in_memory <= float(budget_mb) * 2**20 and (cache.in_memory > 0) == (budget_mb != "0")
    for split in ("train", "test"):
        assert_same(received(in_memory, split), received(spilled, split))


def test_each_file_is_decoded_once_across_epochs_and_loader_workers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    samples = category(tmp_path / "data", 8)
    decoded: list[str] = []
    masks: list[str] = []
    real_decode, real_mask = decoded_module.decode, decoded_module.read_mask
    monkeypatch.setattr(decoded_module, "decode", lambda path: decoded.append(str(path)) or real_decode(path))
    monkeypatch.setattr(decoded_module, "read_mask", lambda path, size: masks.append(str(path)) or real_mask(path, size))
    data = module(samples, tmp_path / "work")
    received(data, "train", epochs=3)
    received(data, "test")
    # the test stage sets up again, after a checkpoint restored an equal pre-processor: nothing is decoded twice
    data.trainer.model.pre_processor = Padim.configure_pre_processor(image_size=(SIZE, SIZE))  # type: ignore[union-attr]
    data.setup("test")
    received(data, "test")
    assert sorted(decoded) == sorted(s.image_path for s in samples)
    assert sorted(masks) == sorted(s.mask_path for s in samples if s.mask_path)

    in_process = received(data, "train", epochs=2)
    other = module(samples, tmp_path / "other")
    other.trainer.model.pre_processor = Padim.configure_pre_processor(image_size=(SIZE // 2, SIZE // 2))  # type: ignore[union-attr]
    other.setup("test")  # another size: decoded again, at that size
    assert other.test_data[0].image.shape[-2:] == (SIZE // 2, SIZE // 2)

    def forbidden(path: Any) -> np.ndarray:
        raise AssertionError(f"{path} decoded again")

    monkeypatch.setattr(decoded_module, "decode", forbidden)  # forked loader workers read the cache only
    data.num_workers = 2
    assert_same(received(data, "train", epochs=2), in_process)


def test_drifted_test_images_are_cached_after_drifting(tmp_path: Path) -> None:
    samples = category(tmp_path / "data", 8)
    drifted = write_drifted_test_set(samples, seed=5, out_dir=tmp_path / "work" / "drift")
    data = module(drifted, tmp_path / "work")
    cache = data.decoded
    assert cache is not None
    for before, after in zip(samples, drifted, strict=True):
        if before.split != "test":
            assert after.image_path == before.image_path
            continue
        assert after.image_path.startswith(str(tmp_path / "work" / "drift"))
        assert np.array_equal(cache.image(after.image_path), load_image(after.image_path, 8, cache.resize)[0])
        if after.mask_path:
            assert after.mask_path.startswith(str(tmp_path / "work" / "drift"))
    test = received(data, "test")
    assert {p for b in test for p in b.image_path} == {s.image_path for s in drifted if s.split == "test"}


def test_bad_cache_settings_name_the_variable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    samples = category(tmp_path / "data", 8)
    for name, value in [("VIADK8S_DECODE_CACHE_MB", "lots"), ("VIADK8S_DECODE_CACHE_MB", "-1"), ("VIADK8S_DECODE_CACHE", "yes")]:
        monkeypatch.setenv(name, value)
        with pytest.raises(SpecError, match=f"{name}='{value}' is not allowed; allowed: ") as err:
            module(samples, tmp_path / "work")
        assert "\n" not in str(err.value) and err.value.exit_code == 2
        monkeypatch.delenv(name)


def test_a_decoded_cache_survives_pickling_for_spawned_workers(tmp_path: Path) -> None:
    samples = category(tmp_path / "data", 8)
    cache = DecodedImages(8, Resize((SIZE, SIZE)), tmp_path / "decoded", budget_mb=0)
    cache.fill([s.image_path for s in samples], [])
    copy = pickle.loads(pickle.dumps(cache))
    for sample in samples:
        assert np.array_equal(copy.image(sample.image_path), cache.image(sample.image_path))


# --- loader workers -------------------------------------------------------------------------------


def cgroup(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


@pytest.mark.parametrize(
    ("files", "limit", "cpus"),
    [
        ({"cpu.max": "200000 100000\n"}, 2.0, 2),  # cgroup v2: a pod limited to 2 CPUs
        ({"cpu.max": "650000 100000\n"}, 6.5, 6),  # 6500m: whole CPUs only
        ({"cpu.max": "50000 100000\n"}, 0.5, 1),  # below one CPU: still one
        ({"cpu.max": "max 100000\n"}, None, 8),  # no limit: the affinity
        ({"cpu/cpu.cfs_quota_us": "300000\n", "cpu/cpu.cfs_period_us": "100000\n"}, 3.0, 3),  # cgroup v1
        ({"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, None, 8),
        ({"cpu.max": "32000000 100000\n"}, 320.0, 8),  # a quota above the affinity: the affinity
        ({}, None, 8),  # no cgroup files at all
    ],
)
def test_usable_cpus_follow_the_cgroup_quota_and_affinity(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, files: dict[str, str], limit: float | None, cpus: int
) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)))
    monkeypatch.delenv("VIADK8S_DATALOADER_WORKERS", raising=False)
    root = cgroup(tmp_path, files)
    assert worker_env.cgroup_cpu_limit(root) == limit
    assert worker_env.usable_cpus(root) == cpus
    assert worker_env.loader_workers(root) == cpus - 1


def test_loader_workers_override_and_bad_values(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = cgroup(tmp_path, {"cpu.max": "400000 100000\n"})
    monkeypatch.setenv("VIADK8S_DATALOADER_WORKERS", "0")
    assert worker_env.loader_workers(root) == 0
    monkeypatch.setenv("VIADK8S_DATALOADER_WORKERS", "12")
    assert worker_env.loader_workers(root) == 12
    for bad in ("two", "-1", "1.5"):
        monkeypatch.setenv("VIADK8S_DATALOADER_WORKERS", bad)
        with pytest.raises(SpecError, match=f"VIADK8S_DATALOADER_WORKERS='{re.escape(bad)}' is not allowed; allowed: a whole"):
            worker_env.loader_workers(root)


@pytest.mark.parametrize(("device", "pinned"), [("gpu", True), ("cpu", False)])
def test_loaders_pin_memory_and_keep_workers_on_a_gpu(tmp_path: Path, device: str, pinned: bool) -> None:
    data = module(category(tmp_path / "data", 8), tmp_path / "work", workers=2, gpu=device == "gpu")
    assert data.num_workers == 2
    for loader in (data.train_dataloader(), data.test_dataloader()):
        assert (loader.num_workers, loader.pin_memory, loader.persistent_workers) == (2, pinned, pinned)


def test_jobs_carry_the_loader_workers_setting() -> None:
    spec = RunSpec(sweep="s1", experiment="evaluation", model="patchcore", dataset="synthetic", category="tiles", seed=1)

    def env(settings: ClusterSettings) -> dict[str, Any]:
        body = render_job(spec, settings, "bench").body
        return {e["name"]: e.get("value") for e in body["spec"]["template"]["spec"]["containers"][0]["env"]}

    assert env(ClusterSettings.model_validate({"dataloader_workers": 3}))["VIADK8S_DATALOADER_WORKERS"] == "3"
    assert env(ClusterSettings.model_validate({"dataloader_workers": 0}))["VIADK8S_DATALOADER_WORKERS"] == "0"
    assert "VIADK8S_DATALOADER_WORKERS" not in env(ClusterSettings())  # the pod sizes it to its CPU limit
    with pytest.raises(ValueError, match="dataloader_workers"):
        ClusterSettings.model_validate({"dataloader_workers": -1})
