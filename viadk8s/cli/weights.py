"""Pretrained weights for air-gapped clusters: pull them where there is internet, mirror them into
the store; workers stage what their model needs from that mirror."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from viadk8s.cli.common import ConfigPath, Models, Store, app, console, friendly, split_list
from viadk8s.errors import SpecError

weights_app = typer.Typer(no_args_is_help=True, help="Pull pretrained weights into a cache, mirror them into the store.")
app.add_typer(weights_app, name="weights")
WeightsDir = Annotated[str | None, typer.Option("--weights-dir", help="the weights cache (default $VIADK8S_WEIGHTS_DIR)")]


def _weights_dir(chosen: str | None, configured: str | None) -> Path:
    where = chosen or configured
    if not where:
        raise SpecError("no weights dir: pass --weights-dir DIR or set VIADK8S_WEIGHTS_DIR (weights_dir in viadk8s.yaml)")
    return Path(where).expanduser().resolve()


@weights_app.command("pull")
@friendly
def weights_pull(models: Models = None, weights_dir: WeightsDir = None, config: ConfigPath = None) -> None:
    """Download every backbone the models need (default: all) into the cache layout workers read."""
    from viadk8s import catalog
    from viadk8s.config import load_config
    from viadk8s.worker.weights import needed, pull

    root = _weights_dir(weights_dir, load_config(config).weights_dir)
    chosen = split_list(models) or list(catalog.models())
    wanted = [weight for key in chosen for weight in needed(catalog.model(key))]
    downloaded = pull(wanted, root)
    for weight in dict.fromkeys(wanted):
        console.print(f"{'downloaded' if weight in downloaded else 'present   '} {weight.path}", highlight=False)
    console.print(f"{len(downloaded)} downloaded, {len(set(wanted)) - len(downloaded)} already in {root}", highlight=False)


@weights_app.command("upload")
@friendly
def weights_upload(store: Store = None, weights_dir: WeightsDir = None, config: ConfigPath = None) -> None:
    """Mirror the weights cache into the store: one archive per item, then a manifest with sha256."""
    from viadk8s.config import load_config
    from viadk8s.worker.weights import upload

    cfg = load_config(config, store=store)
    target = cfg.open_store()
    manifest = upload(target, _weights_dir(weights_dir, cfg.weights_dir))
    size = sum(a.bytes for a in manifest.items.values()) / 2**20
    console.print(f"{len(manifest.items)} weight items, {size:.1f} MB, in {target.uri}/weights", highlight=False)


@weights_app.command("verify")
@friendly
def weights_verify(store: Store = None, config: ConfigPath = None) -> None:
    """Download the mirrored weights' archives and check them against their manifest."""
    from viadk8s.config import load_config
    from viadk8s.data.mirror import verify_archives
    from viadk8s.worker.weights import read_manifest

    target = load_config(config, store=store).open_store()
    manifest = read_manifest(target)
    if manifest is None:
        raise SpecError(f"no weights mirrored in {target.uri}; mirror them with 'viadk8s weights upload --weights-dir DIR'")
    problems = verify_archives(target, manifest.items)
    if problems:
        raise SpecError("weights failed verification: " + "; ".join(problems))
    console.print(f"{len(manifest.items)} weight items match their manifest", highlight=False)
