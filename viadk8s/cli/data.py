"""Dataset and tracking housekeeping: mirror, list, verify and convert datasets, preview drift,
replay pending MLflow runs."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from viadk8s.cli.common import ConfigPath, Store, SweepId, app, console, friendly
from viadk8s.errors import SpecError

datasets_app = typer.Typer(no_args_is_help=True, help="Mirror datasets into the store, list, verify and convert them.")
drift_app = typer.Typer(no_args_is_help=True, help="The synthetic data drift of the data_drift experiment.")
mlflow_app = typer.Typer(no_args_is_help=True, help="MLflow housekeeping.")
app.add_typer(datasets_app, name="datasets")
app.add_typer(drift_app, name="drift")
app.add_typer(mlflow_app, name="mlflow")


@datasets_app.command("upload")
@friendly
def datasets_upload(
    name: Annotated[str, typer.Argument(help="dataset key, e.g. btad or your own name")],
    source: Annotated[Path, typer.Option("--from", help="MVTec-layout folder: one sub-folder per category")],
    store: Store = None,
    config: ConfigPath = None,
    compress: Annotated[bool, typer.Option(help="gzip the archives (smaller, slower to stage)")] = False,
) -> None:
    """Mirror a dataset once: one archive per category, then a manifest with sha256 and sizes."""
    from viadk8s.config import load_config
    from viadk8s.data.mirror import upload_dataset
    from viadk8s.spec import SWEEP_ID

    if not SWEEP_ID.match(name):
        raise SpecError(f"dataset name {name!r} not allowed; allowed: 1-40 lowercase letters, digits or '-'")
    target = load_config(config, store=store).open_store()
    manifest = upload_dataset(target, name, source, compress)
    console.print(
        f"{name}: {len(manifest.categories)} categories, {manifest.total_bytes / 2**20:.1f} MB, masks {manifest.masks}, "
        f"in {target.uri}/datasets/{name}",
        highlight=False,
    )


@datasets_app.command("check")
@friendly
def datasets_check(
    dataset: Annotated[str, typer.Argument(help="a dataset key (staged like a run would) or an MVTec-layout folder")],
    store: Store = None,
    config: ConfigPath = None,
) -> None:
    """Open every image and mask once: counts, formats, bit depths, sizes and every problem found."""
    from viadk8s.config import load_config
    from viadk8s.data.check import DatasetReport, check_category, check_dataset, refuse_errors
    from viadk8s.data.resolve import Datasets

    if Path(dataset).is_dir():
        report = check_dataset(Path(dataset))
    else:
        known = Datasets(load_config(config, store=store))
        categories = [check_category(known.resolve(dataset, c), dataset) for c in known.categories(dataset)]
        report = DatasetReport(dataset, categories)
    table = Table(title=f"dataset {report.root}")
    columns = ("category", "train", "test good", "test bad (by defect)", "masks", "formats", "sizes", "published counts")
    for column in (*columns, "errors", "warnings"):
        table.add_column(column)
    for c in report.categories:
        bad = {k.removeprefix("test/"): n for k, n in c.counts.items() if k.startswith("test/") and k != "test/good"}
        train = ", ".join(f"{k.removeprefix('train/')} {n}" for k, n in c.counts.items() if k.startswith("train/"))
        levels = Counter(f.level for f in c.findings)
        table.add_row(
            c.name,
            train,
            str(c.counts["test/good"]),
            f"{sum(bad.values())}: " + ", ".join(f"{k} {n}" for k, n in bad.items()),
            str(c.masks),
            ", ".join(f"{k} ×{n}" for k, n in c.formats.most_common()),
            ", ".join(f"{k} ×{n}" for k, n in c.sizes.most_common(3)) + (" …" if len(c.sizes) > 3 else ""),
            {None: "", True: "match", False: "differ"}[c.published],
            str(levels["error"]),
            str(levels["warning"]),
        )
    console.print(table)
    for finding in report.findings[:50]:
        console.print(finding.line(), highlight=False, markup=False)
    if len(report.findings) > 50:
        console.print(f"… {len(report.findings) - 50} more", highlight=False)
    refuse_errors(report)


@datasets_app.command("list")
@friendly
def datasets_list(store: Store = None, config: ConfigPath = None) -> None:
    """Every dataset viadk8s knows, where it comes from, and whether the store mirrors it."""
    from viadk8s.config import load_config
    from viadk8s.data.mirror import read_manifest

    cfg = load_config(config, store=store)
    target = cfg.open_store()
    mirrored = {k.split("/")[1] for k in target.list("datasets/") if k.endswith("/manifest.json")}
    table = Table(title=f"datasets (store {target.uri})")
    for column in ("key", "source", "categories", "mirrored", "size MB", "prepare"):
        table.add_column(column)
    for key in sorted({*cfg.dataset_keys(), *mirrored}):
        manifest = read_manifest(target, key) if key in mirrored else None
        entry = cfg.dataset(key) if key in cfg.dataset_keys() else None
        source = (
            "generated"
            if entry and entry.synthetic
            else (entry.path if entry and entry.path else "catalog" if entry else "store")
        )
        count = len(manifest.categories) if manifest else len(entry.categories) if entry else 0
        size = f"{manifest.total_bytes / 2**20:.1f}" if manifest else ""
        table.add_row(key, str(source), str(count), "yes" if manifest else "no", size, entry.prepare if entry else "")
    console.print(table)


@datasets_app.command("verify")
@friendly
def datasets_verify(name: str, store: Store = None, config: ConfigPath = None) -> None:
    """Download a mirrored dataset's archives and check them against its manifest."""
    from viadk8s.config import load_config
    from viadk8s.data.mirror import verify_dataset

    problems = verify_dataset(load_config(config, store=store).open_store(), name)
    if problems:
        raise SpecError(f"dataset {name!r} failed verification: " + "; ".join(problems))
    console.print(f"{name}: every archive matches its manifest", highlight=False)


@datasets_app.command("convert")
@friendly
def datasets_convert(
    kind: Annotated[str, typer.Argument(help="btad, visa, realiad, sensum_sodf, aebad, viaduct or mvtec_loco")],
    source: Annotated[Path, typer.Argument(help="the dataset as its publisher ships it")],
    target: Annotated[Path, typer.Argument(help="where the MVTec-layout categories are written")],
    split_csv: Annotated[
        Path | None, typer.Option("--split-csv", help="visa: the publisher's split_csv/1cls.csv if not in SOURCE")
    ] = None,
    split_dir: Annotated[
        Path | None, typer.Option("--split-dir", help="realiad: the folder of realiad_jsons_sv/<class>.json if not beside SOURCE")
    ] = None,
    rule_split: Annotated[
        bool, typer.Option("--rule-split", help="realiad: viadk8s's own split where the publisher's file is absent")
    ] = False,
) -> None:
    """Convert a paper dataset from its publisher's archive to the MVTec layout, with the publisher's split."""
    from viadk8s.catalog import COUNTED
    from viadk8s.data.convert import Options, convert

    for flag, value, applies in (
        ("--split-csv", split_csv, "visa"),
        ("--split-dir", split_dir, "realiad"),
        ("--rule-split", rule_split, "realiad"),
    ):
        if value and kind != applies:
            raise SpecError(f"{flag} applies to {applies} only, not to {kind!r}")
    written = convert(kind, source, target, Options(split=split_csv or split_dir, rule_split=rule_split))
    console.print(f"{kind}: wrote {len(written)} categories to {target}", highlight=False)
    for name, category in written.items():
        found = Counter(f"{i.split} {'good' if i.defect == 'good' else 'bad'}" for i in category.items)
        counts = ", ".join(f"{what} {found[what]}" for what in COUNTED)
        source_line = category.split["source"] + (
            f" (sha256 {category.split['sha256'][:12]}…)" if "sha256" in category.split else ""
        )
        console.print(f"  {name}: {counts}; split: {source_line}", highlight=False, markup=False)


@drift_app.command("preview")
@friendly
def drift_preview(
    dataset: Annotated[str, typer.Option(help="dataset key")],
    category: Annotated[str, typer.Option(help="category of the dataset")],
    out: Annotated[Path, typer.Option(help="the PNG to write")],
    n: Annotated[int, typer.Option("-n", min=1, max=64, help="test images to show")] = 8,
    seed: Annotated[int, typer.Option(help="drift seed (a run uses its own seed)")] = 3341,
    store: Store = None,
    config: ConfigPath = None,
) -> None:
    """Originals beside drifted versions (the paper's Fig. 5)."""
    from viadk8s.config import load_config
    from viadk8s.data.drift import preview_grid
    from viadk8s.data.layout import scan_category
    from viadk8s.data.resolve import Datasets

    samples = scan_category(Datasets(load_config(config, store=store)).resolve(dataset, category))
    console.print(f"wrote {preview_grid(samples, seed, n, out)}", highlight=False)


@mlflow_app.command("sync")
@friendly
def mlflow_sync(sweep: SweepId = None, store: Store = None, config: ConfigPath = None) -> None:
    """Log to MLflow the finished runs whose tracking is still pending (MLflow was down)."""
    from viadk8s.config import load_config
    from viadk8s.tracking import sync_pending

    cfg = load_config(config, store=store)
    if not cfg.tracking_uri:
        raise SpecError("no MLflow tracking URI: set MLFLOW_TRACKING_URI or mlflow.tracking_uri in viadk8s.yaml")
    synced, pending = sync_pending(cfg.open_store(), cfg.tracking_uri, sweep)
    console.print(f"{synced} runs synced to {cfg.tracking_uri}, {pending} still pending", highlight=False)
    if pending:
        raise typer.Exit(3)
