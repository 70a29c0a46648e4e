"""Pretrained weights from a local cache, laid out as torch hub and Hugging Face caches.

``$VIADK8S_WEIGHTS_DIR/torch/hub/checkpoints/<file>.pth``   torchvision backbones (CS-Flow)
``$VIADK8S_WEIGHTS_DIR/huggingface/hub/models--timm--<name>/`` timm backbones (most models)
``$VIADK8S_WEIGHTS_DIR/dtd/``                                 DRAEM/GLASS anomaly-source textures

Offline (the default), a missing file is a one-line error naming it and how to stage it.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator
from pathlib import Path

from viadk8s.errors import SpecError

HF_URL = re.compile(r"huggingface\.co/(?P<repo>[\w.-]+/[\w.-]+)/resolve/[\w.-]+/(?P<file>[\w.-]+)")


def configure_caches(weights_dir: str | None) -> None:
    """Point torch hub and the Hugging Face hub at the weights cache (before they are imported)."""
    if weights_dir:
        root = Path(weights_dir).expanduser().resolve()
        os.environ["TORCH_HOME"] = str(root / "torch")
        os.environ["HF_HOME"] = str(root / "huggingface")


def offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE") == "1"


def _stage_hint() -> str:
    where = os.environ.get("VIADK8S_WEIGHTS_DIR") or "$VIADK8S_WEIGHTS_DIR"
    return f"stage it under {where} (see README 'Pretrained weights') or run with --weights random"


@contextlib.contextmanager
def cached_weights_only() -> Iterator[None]:
    """Turn weight downloads that cannot happen offline into a clear SpecError."""
    import torch.hub

    def refuse(url: str, dst: str, *args: object, **kwargs: object) -> None:
        raise SpecError(f"pretrained weight file {Path(dst).name} ({url}) is not in {Path(dst).parent}; {_stage_hint()}")

    original = torch.hub.download_url_to_file
    if offline():
        torch.hub.download_url_to_file = refuse
    try:
        yield
    except Exception as err:  # the Hugging Face hub raises its own offline error
        if type(err).__name__ in {"LocalEntryNotFoundError", "OfflineModeIsEnabled"}:
            raise SpecError(_hf_message(err)) from None
        raise
    finally:
        torch.hub.download_url_to_file = original


def _hf_message(err: BaseException) -> str:
    chain, cause = [], err
    while cause is not None:
        chain.append(str(cause))
        cause = cause.__cause__ or cause.__context__
    found = HF_URL.search(" ".join(chain))
    repo = found["repo"] if found else "a timm backbone"
    hub = Path(os.environ.get("HF_HOME", Path.home() / ".cache" / "huggingface")) / "hub"
    return f"pretrained weights {repo} are not in the cache {hub} (offline); {_stage_hint()}"
