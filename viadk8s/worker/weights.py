"""Pretrained weights from a local cache, laid out as torch hub and Hugging Face caches.

``$VIADK8S_WEIGHTS_DIR/torch/hub/checkpoints/<file>.pth``   torchvision backbones (CS-Flow)
``$VIADK8S_WEIGHTS_DIR/huggingface/hub/models--timm--<name>/`` timm backbones (most models)
``$VIADK8S_WEIGHTS_DIR/dtd/``                                 DRAEM/GLASS anomaly-source textures

Offline (the default), a missing file is a one-line error naming it and how to stage it.

Air-gapped clusters: ``viadk8s weights pull`` fills a cache where there is internet,
``viadk8s weights upload`` mirrors it into the store (``weights/``: one archive per item of the
layout above plus ``weights/manifest.json`` with sha256), and a worker stages what its model needs
and its weights dir lacks from that mirror, like a dataset: under a lock, checksum verified,
extracted beside its place and renamed into it.
"""

from __future__ import annotations

import contextlib
import fcntl
import inspect
import os
import re
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from viadk8s.catalog import ModelEntry
from viadk8s.data.mirror import Archive, upload_archive
from viadk8s.data.staging import file_lock, verified_extract
from viadk8s.errors import InfraError, SpecError
from viadk8s.store import Store

HF_URL = re.compile(r"huggingface\.co/(?P<repo>[\w.-]+/[\w.-]+)/resolve/[\w.-]+/(?P<file>[\w.-]+)")
MANIFEST = "weights/manifest.json"
TEXTURES = "dtd"
HF_FILES = ("model.safetensors", "pytorch_model.bin")  # what timm looks for, in its order
CSFLOW_WEIGHTS = "EfficientNet_B5_Weights.IMAGENET1K_V1"  # anomalib's CS-Flow hard-codes it (see adapters)


@dataclass(frozen=True)
class Weight:
    """One item of the weights cache: where it lives and where it comes from."""

    path: str  # relative to the weights dir; also its name in the store's manifest
    source: str  # a Hugging Face repo (timm) or a URL (torchvision)


class WeightsManifest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    items: dict[str, Archive]  # weights-dir path -> its archive
    updated: str


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


def timm_weight(name: str) -> Weight:
    """A timm backbone (``wide_resnet50_2`` means timm's default tag) as its Hugging Face cache folder."""
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(name)
    if cfg is None or not cfg.hf_hub_id:
        raise SpecError(f"timm backbone {name!r} has no pretrained weights on the Hugging Face hub")
    return Weight(f"huggingface/hub/models--{cfg.hf_hub_id.replace('/', '--')}", cfg.hf_hub_id)


def torchvision_weight(name: str) -> Weight:
    """torchvision weights (``EfficientNet_B5_Weights.IMAGENET1K_V1``) as their torch hub checkpoint."""
    from torchvision.models import get_weight

    url = get_weight(name).url
    return Weight(f"torch/hub/checkpoints/{url.rpartition('/')[2]}", url)


def needed(entry: ModelEntry) -> list[Weight]:
    """The pretrained backbones a catalog model loads: ``backbone`` (its init_args, else its class's
    default) and MMR's ``encoder`` through timm; CS-Flow's EfficientNet-B5 through torchvision."""
    from anomalib import models as anomalib_models

    from viadk8s.worker.adapters import model_class

    cls = model_class(entry)
    if cls is anomalib_models.Csflow:
        return [torchvision_weight(CSFLOW_WEIGHTS)]
    defaults = inspect.signature(cls.__init__).parameters
    backbone = entry.init_args.get("backbone", defaults["backbone"].default if "backbone" in defaults else None)
    return [timm_weight(name) for name in (backbone, entry.init_args.get("encoder")) if isinstance(name, str)]


def uses_textures(entry: ModelEntry) -> bool:
    """DRAEM and GLASS paste anomaly-source textures (DTD, staged beside the weights)."""
    from viadk8s.worker.adapters import model_class

    return bool({"dtd_dir", "anomaly_source_path"} & set(inspect.signature(model_class(entry).__init__).parameters))


def pull(weights: list[Weight], root: Path) -> list[Weight]:
    """Download into the cache layout under ``root`` what it lacks (needs the internet); returns those."""
    if offline():
        raise SpecError("weights pull downloads, but HF_HUB_OFFLINE=1 is set; unset it on a machine with internet")
    missing = [w for w in dict.fromkeys(weights) if not (root / w.path).exists()]
    for weight in missing:
        try:
            _download(weight, root)
        except SpecError:
            raise
        except Exception as err:  # noqa: BLE001 - network and hub errors: one line, retry later
            first = str(err).splitlines()[0] if str(err) else type(err).__name__
            raise InfraError(f"could not download {weight.source} into {root / weight.path}: {first}") from None
    return missing


def _download(weight: Weight, root: Path) -> None:
    """The one place that reaches the internet: the libraries' own downloads, into their layouts."""
    if weight.source.startswith("https://"):
        import torch.hub

        target = root / weight.path
        target.parent.mkdir(parents=True, exist_ok=True)
        hash_prefix = torch.hub.HASH_REGEX.search(target.name)
        torch.hub.download_url_to_file(weight.source, str(target), hash_prefix[1] if hash_prefix else None, progress=False)
        return
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import RemoteEntryNotFoundError

    for filename in HF_FILES:
        try:
            hf_hub_download(weight.source, filename, cache_dir=root / "huggingface" / "hub")
            return
        except RemoteEntryNotFoundError:
            continue
    raise SpecError(f"{weight.source} on the Hugging Face hub has none of {', '.join(HF_FILES)}")


def cached_items(root: Path) -> list[str]:
    """What a weights dir holds, as manifest names: hub folders, torch hub checkpoints, DTD."""
    hub = sorted(str(p.relative_to(root)) for p in (root / "huggingface" / "hub").glob("models--*") if p.is_dir())
    torch_hub = sorted(str(p.relative_to(root)) for p in (root / "torch" / "hub" / "checkpoints").glob("*") if p.is_file())
    return hub + torch_hub + ([TEXTURES] if (root / TEXTURES).is_dir() else [])


def _item_files(root: Path, item: str) -> list[Path]:
    """An item's files; a hub folder's ``blobs`` are left out (its snapshots are archived as files)."""
    path = root / item
    if path.is_file():
        return [path]

    def kept(file: Path) -> bool:
        parts = file.relative_to(path).parts
        return file.is_file() and parts[0] != "blobs" and not any(part.startswith(".") for part in parts)

    return sorted(p for p in path.rglob("*") if kept(p))


def read_manifest(store: Store) -> WeightsManifest | None:
    return WeightsManifest.model_validate_json(store.read_bytes(MANIFEST)) if store.exists(MANIFEST) else None


def upload(store: Store, root: Path, items: list[str] | None = None) -> WeightsManifest:
    """Mirror a weights dir (or some of its items) into the store; items mirrored earlier are kept."""
    chosen = items if items is not None else cached_items(root)
    if not chosen:
        raise SpecError(f"weights dir {str(root)!r} holds no weights; fill it with 'viadk8s weights pull --weights-dir DIR'")
    existing = read_manifest(store)
    archives = dict(existing.items) if existing else {}
    with tempfile.TemporaryDirectory(prefix="viadk8s-upload-") as work:
        for item in chosen:
            files = _item_files(root, item)
            if not files:
                raise SpecError(f"weights item {item!r} has no file under {root}")
            stem = "weights/" + item.replace("/", "--")
            archives[item] = upload_archive(store, files, root, stem, Path(work))
    manifest = WeightsManifest(items=dict(sorted(archives.items())), updated=datetime.now(UTC).isoformat(timespec="seconds"))
    store.write_bytes(MANIFEST, manifest.model_dump_json(indent=2).encode())  # last: never points at a missing archive
    return manifest


def stage(store: Store, root: Path, items: list[str]) -> list[str]:
    """Stage from the store's mirror the ``items`` missing under ``root``; returns those staged.

    An item the mirror lacks is left to the offline error that names it when it is loaded."""
    missing = [i for i in items if not (root / i).exists()]
    manifest = read_manifest(store) if missing else None
    staged = []
    for item in missing:
        archive = manifest.items.get(item) if manifest else None
        if archive is None:
            continue
        fd = file_lock(root / ".locks" / f"{item.replace('/', '--')}.lock", fcntl.LOCK_EX)
        assert fd is not None  # a blocking lock
        try:
            target = root / item
            if target.exists():  # another worker staged it while this one waited
                continue
            with verified_extract(store, archive.key, archive.sha256, target, "viadk8s weights upload") as extract:
                (extract / item).rename(target)
            staged.append(item)
        finally:
            os.close(fd)
    return staged


def stage_for(entry: ModelEntry, pretrained: bool, weights_dir: str | None, store: Store) -> list[str]:
    """Before a run: stage from the store what its model loads (backbones when pretrained, DTD for
    DRAEM/GLASS) and the weights dir lacks. Without a configured weights dir, nothing is staged."""
    if not weights_dir:
        return []
    items = [w.path for w in needed(entry)] if pretrained else []
    return stage(store, Path(weights_dir).expanduser().resolve(), items + ([TEXTURES] if uses_textures(entry) else []))
