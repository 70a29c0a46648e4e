"""Pretrained weights staged in the cache the way a user would, loaded offline by the real code."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import yaml

from tests.conftest import TINY

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
    spec = {
        "sweep": "w",
        "experiment": "evaluation",
        "model": "padim",
        "dataset": "tiny",
        "category": "tiles",
        "seed": 1,
        "image_size": 64,
        "weights": "imagenet",
    }
    done = cli("worker", "--spec", "-", "--config", str(config), stdin=json.dumps(spec), env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    (result,) = (tmp_path / "store" / "runs" / "w").glob("*/result.json")
    assert json.loads(result.read_text())["spec"]["weights"] == "imagenet"
