"""Pretrained weights staged in the cache the way a user would, loaded offline by the real code."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
import textwrap
from pathlib import Path

import pytest
import yaml

from tests.conftest import TINY, padim_spec
from viadk8s.data.mirror import sha256_file
from viadk8s.store import FileStore

LOADED = textwrap.dedent(
    """
    import sys
    from viadk8s.worker.env import prepare_process
    prepare_process()
    from viadk8s.worker.weights import configure_caches
    configure_caches(sys.argv[1])
    import torch
    from pathlib import Path
    from viadk8s import catalog
    from viadk8s.spec import RunSpec
    from viadk8s.worker.adapters import build_model, quirks_fixed
    from viadk8s.worker.weights import cached_weights_only
    spec = RunSpec(sweep="w", experiment="evaluation", model="padim", dataset="tiny", category="tiles", seed=1, image_size=64)
    entry = catalog.model("padim")
    with quirks_fixed(entry, True), cached_weights_only():
        model = build_model(spec, entry, Path(sys.argv[1]), monitor=None)
    loaded = model.model.feature_extractor.feature_extractor.conv1.weight
    print(bool(torch.equal(loaded, torch.load(sys.argv[2]))))
    """
)


def stage_timm_backbone(weights_dir: Path, name: str) -> Path:
    """Save a (seeded, random) backbone where the Hugging Face hub cache would keep the real one."""
    import safetensors.torch
    import timm
    import torch

    torch.manual_seed(11)
    model = timm.create_model(name, pretrained=False)
    repo = weights_dir / "huggingface" / "hub" / f"models--{model.pretrained_cfg['hf_hub_id'].replace('/', '--')}"
    revision = "1" * 40
    (repo / "snapshots" / revision).mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    safetensors.torch.save_file(state, str(repo / "snapshots" / revision / "model.safetensors"))
    reference = weights_dir / "conv1.pt"
    torch.save(state["conv1.weight"], reference)
    return reference


def test_staged_imagenet_weights_are_loaded_offline(cli, tmp_path: Path) -> None:  # noqa: ANN001
    weights = tmp_path / "weights"
    reference = stage_timm_backbone(weights, "wide_resnet50_2")
    env = {"HF_HUB_OFFLINE": "1", "VIADK8S_WEIGHTS_DIR": str(weights)}
    loaded = subprocess.run(
        [sys.executable, "-c", LOADED, str(weights), str(reference)],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        check=False,
    )
    assert loaded.returncode == 0 and loaded.stdout.split()[-1] == "True", loaded.stderr[-3000:]

    config = tmp_path / "viadk8s.yaml"
    config.write_text(yaml.safe_dump({"store": str(tmp_path / "store"), "datasets": {"tiny": {"synthetic": TINY}}}))
    spec = padim_spec(sweep="w", weights="imagenet")
    done = cli("worker", "--spec", "-", "--config", str(config), stdin=json.dumps(spec), env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    (result,) = (tmp_path / "store" / "runs" / "w").glob("*/result.json")
    assert json.loads(result.read_text())["spec"]["weights"] == "imagenet"


STAGED = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from viadk8s.worker.env import prepare_process
    prepare_process()
    from viadk8s.worker.weights import configure_caches
    configure_caches(sys.argv[1])
    import torch
    from viadk8s import catalog
    from viadk8s.spec import RunSpec
    from viadk8s.store import open_store
    from viadk8s.worker.adapters import build_model, quirks_fixed
    from viadk8s.worker.weights import cached_weights_only, stage_for
    store = open_store(sys.argv[2])
    for key, experiment, variant, reference in (("dra", "supervised", {"supervised_k": 10}, sys.argv[3]),
                                                 ("csflow", "evaluation", {}, sys.argv[4])):
        entry = catalog.model(key)
        staged = stage_for(entry, True, sys.argv[1], store)
        spec = RunSpec(sweep="w", experiment=experiment, model=key, dataset="tiny", category="tiles", seed=1,
                       image_size=128, variant=variant)
        with quirks_fixed(entry, True), cached_weights_only():
            model = build_model(spec, entry, Path(sys.argv[1]), monitor=None)
        expected = torch.load(reference)
        loaded = any(v.shape == expected.shape and torch.equal(v.float(), expected.float()) for v in model.state_dict().values())
        print(key, len(staged), stage_for(entry, True, sys.argv[1], store), loaded)
    """
)


def test_pull_upload_stage_into_both_cache_layouts(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Pull (the two downloads replaced at their boundary: no internet here), mirror with sha256, then
    a fresh worker cache stages DRA's timm backbone and CS-Flow's torchvision one and loads them offline."""
    import huggingface_hub
    import safetensors.torch
    import timm
    import torch
    import torch.hub
    import torchvision

    from viadk8s import catalog
    from viadk8s.worker import weights

    pulled = tmp_path / "pulled"
    calls: list[tuple[str, str]] = []

    def hub_download(repo_id: str, filename: str, *, cache_dir: Path) -> str:
        """What hf_hub_download leaves: a blob, a snapshot that links to it, a ref naming the snapshot."""
        calls.append((repo_id, filename))
        torch.manual_seed(5)
        state = {k: v.contiguous() for k, v in timm.create_model(repo_id.split("/")[1], pretrained=False).state_dict().items()}
        torch.save(state["conv1.weight"], tmp_path / "timm-conv1.pt")
        repo = Path(cache_dir) / f"models--{repo_id.replace('/', '--')}"
        revision = "2" * 40
        for folder in ("blobs", f"snapshots/{revision}", "refs"):
            (repo / folder).mkdir(parents=True)
        safetensors.torch.save_file(state, str(repo / "blobs" / "b10b"))
        (repo / "snapshots" / revision / filename).symlink_to(Path("..", "..", "blobs", "b10b"))
        (repo / "refs" / "main").write_text(revision)
        return str(repo / "snapshots" / revision / filename)

    def url_download(url: str, dst: str, hash_prefix: str | None, progress: bool) -> None:
        calls.append((url, hash_prefix or ""))
        torch.manual_seed(6)
        state = torchvision.models.efficientnet_b5(weights=None).state_dict()
        torch.save(state["features.0.0.weight"].half(), tmp_path / "tv-stem.pt")
        torch.save({k: v.half() for k, v in state.items()}, dst)  # half: a smaller file, loaded all the same

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", hub_download)
    monkeypatch.setattr(torch.hub, "download_url_to_file", url_download)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    wanted = [w for key in ("dra", "devnet", "csflow", "draem") for w in weights.needed(catalog.model(key))]
    assert {w.path for w in weights.pull(wanted, pulled)} == {
        "huggingface/hub/models--timm--resnet18.tv_in1k",
        "torch/hub/checkpoints/efficientnet_b5_lukemelas-1a07897c.pth",
    }
    assert calls == [
        ("timm/resnet18.tv_in1k", "model.safetensors"),
        ("https://download.pytorch.org/models/efficientnet_b5_lukemelas-1a07897c.pth", "1a07897c"),
    ]
    assert weights.pull(wanted, pulled) == [] and len(calls) == 2  # present: nothing downloaded again

    store = FileStore(tmp_path / "store")
    manifest = weights.upload(store, pulled)
    assert sorted(manifest.items) == weights.cached_items(pulled) and len(manifest.items) == 2
    for archive in manifest.items.values():
        local = store.local_path(archive.key)
        assert local is not None and sha256_file(local) == archive.sha256
        with tarfile.open(local) as tar:
            members = tar.getmembers()
        assert all(m.isfile() for m in members) and not any("/blobs/" in m.name for m in members)  # links resolved

    fresh = tmp_path / "fresh"
    loaded = subprocess.run(
        [sys.executable, "-c", STAGED, str(fresh), store.uri, str(tmp_path / "timm-conv1.pt"), str(tmp_path / "tv-stem.pt")],
        capture_output=True,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        check=False,
    )
    assert loaded.returncode == 0, loaded.stderr[-3000:]
    assert loaded.stdout.split("\n")[-3:] == ["dra 1 [] True", "csflow 1 [] True", ""], loaded.stdout
    assert not [p for p in fresh.rglob(".*") if p.name != ".locks" and p.parent.name != ".locks"]  # no temporary left


def test_corrupt_weights_archive_is_refused_before_training(cli, tmp_path: Path) -> None:  # noqa: ANN001
    source = tmp_path / "weights"
    item = source / "huggingface" / "hub" / "models--timm--wide_resnet50_2.racm_in1k"
    (item / "refs").mkdir(parents=True)
    (item / "refs" / "main").write_text("3" * 40)
    pulled = cli("weights", "pull", "--models", "padim,patchcore", "--weights-dir", str(source))
    assert pulled.returncode == 0 and "0 downloaded, 1 already in" in pulled.stdout, pulled.stdout + pulled.stderr

    store = tmp_path / "store"
    uploaded = cli("weights", "upload", "--store", str(store), "--weights-dir", str(source))
    assert uploaded.returncode == 0 and "1 weight items" in uploaded.stdout, uploaded.stderr
    assert cli("weights", "verify", "--store", str(store)).returncode == 0
    manifest = json.loads((store / "weights" / "manifest.json").read_text())
    (store / manifest["items"][str(item.relative_to(source))]["key"]).write_bytes(b"garbage")
    broken = cli("weights", "verify", "--store", str(store))
    assert broken.returncode == 2 and "sha256" in broken.stderr.splitlines()[-1]

    config = tmp_path / "viadk8s.yaml"
    config.write_text(yaml.safe_dump({"store": str(store), "datasets": {"tiny": {"synthetic": TINY}}}))
    spec = {"sweep": "w", "experiment": "evaluation", "model": "padim", "dataset": "tiny", "category": "tiles", "seed": 1}
    fresh = tmp_path / "fresh"
    done = cli(
        "worker",
        "--spec",
        "-",
        "--config",
        str(config),
        stdin=json.dumps({**spec, "image_size": 64}),
        env={"VIADK8S_WEIGHTS_DIR": str(fresh)},
    )
    assert done.returncode == 2, done.stderr[-3000:]
    assert "is corrupt" in done.stderr.splitlines()[-1] and "viadk8s weights upload" in done.stderr.splitlines()[-1]
    assert "Initializing" not in done.stderr  # refused before a model was built
    assert [p.name for p in fresh.rglob("*") if p.is_file()] == ["huggingface--hub--models--timm--wide_resnet50_2.racm_in1k.lock"]
