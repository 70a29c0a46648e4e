"""``viadk8s.yaml``: where results, tracking, weights and datasets live.

Precedence: CLI flags > environment > the file > defaults. With nothing configured, everything
is local under ``./viadk8s-runs``: a file store, MLflow in sqlite beside it, and the built-in
``synthetic`` dataset.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from viadk8s import catalog
from viadk8s.catalog import BitDepth, DatasetEntry, SyntheticOptions
from viadk8s.cluster_config import ClusterSettings, apply_env
from viadk8s.errors import SpecError, one_of, validation_message
from viadk8s.store import Store, open_store

DEFAULT_STORE = "viadk8s-runs"
CONFIG_FILE = "viadk8s.yaml"


class DatasetSource(BaseModel):
    """A dataset a user points at: an MVTec-layout folder, or a synthetic recipe."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    path: str | None = None
    synthetic: SyntheticOptions | None = None
    masks: str | None = None
    bit_depth: BitDepth | None = None  # of 16-bit-container images; detected from train images when unset

    @model_validator(mode="after")
    def _one_source(self) -> DatasetSource:
        if (self.path is None) == (self.synthetic is None):
            raise ValueError("give exactly one of 'path' or 'synthetic'")
        return self


class MlflowSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    tracking_uri: str | None = None


class S3Settings(BaseModel):
    """How to talk to an S3-compatible store (endpoint and credentials: the standard AWS chain)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    addressing_style: Literal["auto", "path", "virtual"] = "auto"
    max_attempts: int = Field(default=5, ge=1, le=20)


class ReportSettings(BaseModel):
    """What each run keeps for the report: bootstrap intervals of its image metrics, and overlays of
    the good images it scores highest and the bad ones it scores lowest (its worst mistakes)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    resamples: int = Field(default=1000, ge=100, le=100_000)
    confidence: float = Field(default=0.95, gt=0.5, lt=1)
    overlays: int = Field(default=4, ge=0, le=32)  # per kind (good, bad); 0 keeps none


class Config(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    store: str = DEFAULT_STORE
    s3: S3Settings = S3Settings()
    mlflow: MlflowSettings = MlflowSettings()
    weights_dir: str | None = None
    cache_dir: str | None = None
    cache_max_gb: float | None = Field(default=None, gt=0)
    datasets: dict[str, DatasetSource] = {}
    cluster: ClusterSettings = ClusterSettings()
    report: ReportSettings = ReportSettings()

    @property
    def store_uri(self) -> str:
        """The store as a URI; a bare path is a local folder, made absolute for child processes."""
        if "://" in self.store:
            return self.store
        return "file://" + str(Path(self.store).expanduser().resolve())

    def open_store(self) -> Store:
        return open_store(self.store_uri, self.s3.addressing_style, self.s3.max_attempts)

    @property
    def tracking_uri(self) -> str | None:
        """MLflow URI; by default a sqlite file inside a local store (None for a remote store)."""
        if self.mlflow.tracking_uri:
            return self.mlflow.tracking_uri
        if self.store_uri.startswith("file://"):
            return f"sqlite:///{self.store_uri.removeprefix('file://')}/mlflow.db"
        return None

    @property
    def cache_path(self) -> Path:
        """Where datasets are staged or generated."""
        if self.cache_dir:
            return Path(self.cache_dir).expanduser().resolve()
        if self.store_uri.startswith("file://"):
            return Path(self.store_uri.removeprefix("file://")) / "cache"
        return Path.home() / ".cache" / "viadk8s"

    def dataset(self, key: str) -> DatasetEntry:
        """The catalog entry of a dataset, merged with what the user declared for it."""
        known = catalog.datasets()
        source = self.datasets.get(key)
        if source is None:
            if key not in known:
                raise one_of("dataset", key, sorted({*known, *self.datasets}))
            return known[key]
        base = known.get(key) or DatasetEntry(key=key, name=key)
        update: dict[str, Any] = {"path": source.path, "synthetic": source.synthetic}
        if source.synthetic:
            update["categories"] = source.synthetic.categories
        elif key not in known:
            update["categories"] = []  # discovered from the folder when resolved
        if source.masks:
            update["masks"] = source.masks
        if source.bit_depth:
            update["bit_depth"] = source.bit_depth
        return base.model_copy(update=update)

    def dataset_keys(self) -> list[str]:
        return sorted({*catalog.datasets(), *self.datasets})


_ENV = {
    "store": "VIADK8S_STORE",
    "weights_dir": "VIADK8S_WEIGHTS_DIR",
    "cache_dir": "VIADK8S_CACHE",
    "cache_max_gb": "VIADK8S_CACHE_MAX_GB",
}


def load_config(path: str | Path | None = None, **overrides: Any) -> Config:
    """Read the config file (``--config``, ``$VIADK8S_CONFIG`` or ``./viadk8s.yaml``), then apply
    environment variables and CLI overrides (``None`` overrides are ignored)."""
    explicit = path or os.environ.get("VIADK8S_CONFIG")
    file = Path(explicit) if explicit else Path(CONFIG_FILE)
    data: dict[str, Any] = {}
    if explicit and not file.is_file():
        raise SpecError(f"config file {str(file)!r} not found")
    if file.is_file():
        try:
            data = yaml.safe_load(file.read_text()) or {}
        except yaml.YAMLError as err:
            mark = getattr(err, "problem_mark", None)
            where = f" line {mark.line + 1}" if mark else ""
            raise SpecError(f"config {file}:{where} is not valid YAML ({getattr(err, 'problem', err)})") from None
        if not isinstance(data, dict):
            raise SpecError(f"config {file}: top level must be a mapping of settings, got {type(data).__name__}")
    for key, var in _ENV.items():
        if os.environ.get(var):
            data[key] = os.environ[var]
    apply_env(data)
    if os.environ.get("MLFLOW_TRACKING_URI"):
        data.setdefault("mlflow", {})["tracking_uri"] = os.environ["MLFLOW_TRACKING_URI"]
    data.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return Config.model_validate(data)
    except ValidationError as err:
        raise SpecError(f"config {file}: {validation_message(err)}") from None
