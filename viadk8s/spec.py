"""The run spec: the one type that flows plan -> render -> worker -> result -> aggregate.

A run is one model trained and tested on one dataset category with one seed and one variant
of an experiment. Its ``run_key`` is a hash of the canonical spec and the protocol version, so
the same run always lands under the same key and finished runs are skipped on re-submission.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from viadk8s import PROTOCOL_VERSION, catalog
from viadk8s.errors import SpecError, validation_message

#: Sweep ids become object-store prefixes and Kubernetes label values.
SWEEP_ID = re.compile(r"^[a-z0-9]([a-z0-9-]{0,38}[a-z0-9])?$")
IMAGE_SIZES = range(64, 1025, 32)


@dataclass(frozen=True)
class Column:
    """How a value of a spec field an experiment may vary reads as a table column (``Size 256``,
    ``4%``), and whether the field names a method apart where it varies for one model within a
    sweep (``PatchCore (patience=20)``). Set beside the field it describes, so a field added
    without one fails a test instead of a table (:data:`COLUMNS`)."""

    label: Callable[[Any], str] = str
    identity: bool = True


def _percent(value: Any) -> str:
    return f"{round(100 * float(value))}%"


class Trainer(BaseModel):
    """Training settings that change results (execution details such as the device do not)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    max_epochs: int | None = Field(default=None, ge=1, description="a cap on the model's protocol epochs (smoke runs)")
    batch_size: int = Field(default=16, ge=1)


class Variant(BaseModel):
    """The fields the paper's experiments vary beyond model/dataset/size (protocol.md)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    validation: Annotated[Literal["last_epoch", "test_early_stop", "val_early_stop", "synthetic_val_early_stop"], Column()] = (
        "last_epoch"
    )
    contamination: Annotated[float, Field(ge=0.0, lt=0.5), Column(_percent)] = 0.0
    drift: Annotated[Literal["none", "synthetic"], Column({"none": "No drift", "synthetic": "Drift"}.__getitem__)] = "none"
    supervised_k: Annotated[int, Field(ge=0), Column(lambda v: f"k={v}")] = 0
    # not a method apart: the paper's PatchCore on a 25 % subset at 512 px is still PatchCore at 512 px
    train_fraction: Annotated[float, Field(gt=0.0, le=1.0), Column(lambda v: f"{_percent(v)} of train", identity=False)] = 1.0
    # early stopping (every validation strategy but last_epoch)
    monitor: Annotated[str, Column(lambda v: f"monitor {v}")] = "image_AUROC"
    patience: Annotated[
        int, Field(ge=1, description="validation checks without improvement before stopping"), Column(lambda v: f"patience {v}")
    ] = 10
    check_every: Annotated[
        int, Field(ge=1, description="epochs between validation checks"), Column(lambda v: f"checked every {v} ep.")
    ] = 1

    @field_validator("monitor")
    @classmethod
    def _monitor(cls, value: str) -> str:
        if value not in catalog.MONITORED:
            raise ValueError(f"monitor {value!r} cannot be monitored; allowed: {', '.join(catalog.MONITORED)}")
        return value

    def is_default(self) -> bool:
        return self == Variant()

    def label(self) -> str:
        """Short text of the non-default fields, e.g. ``contamination=0.04``."""
        return ",".join(f"{k}={v}" for k, v in self.model_dump(exclude_defaults=True).items())


class RunSpec(BaseModel):
    """One run. Everything but ``sweep`` enters the run key."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    sweep: str
    experiment: str
    model: str
    dataset: str
    category: str
    seed: int
    image_size: Annotated[int, Column(lambda v: f"Size {v}")] = 256
    weights: Annotated[Literal["imagenet", "random"], Column()] = "imagenet"
    trainer: Trainer = Trainer()
    variant: Variant = Variant()

    @field_validator("sweep")
    @classmethod
    def _sweep(cls, value: str) -> str:
        if not SWEEP_ID.match(value):
            raise ValueError(f"sweep id {value!r} must be 1-40 lowercase letters, digits or '-'")
        return value

    @field_validator("experiment")
    @classmethod
    def _experiment(cls, value: str) -> str:
        catalog.experiment(value)
        return value

    @field_validator("model")
    @classmethod
    def _model(cls, value: str) -> str:
        if value not in catalog.models():
            raise ValueError(f"unknown model {value!r}; allowed: {', '.join(catalog.models())}")
        return value

    @field_validator("image_size")
    @classmethod
    def _image_size(cls, value: int) -> int:
        if value not in IMAGE_SIZES:
            raise ValueError(f"image size {value} not allowed; allowed: multiples of 32 from 64 to 1024")
        return value

    @model_validator(mode="after")
    def _model_fits_run(self) -> RunSpec:
        model = catalog.models()[self.model]
        if self.image_size < model.min_image_size:
            raise ValueError(f"model {self.model} needs image size >= {model.min_image_size}, got {self.image_size}")
        if self.variant.supervised_k and model.supervised_args is None:
            allowed = ", ".join(k for k, m in catalog.models().items() if m.supervised_args is not None)
            raise ValueError(f"model {self.model!r} has no supervised mode; allowed for supervised runs: {allowed}")
        if model.group == "supervised" and not self.variant.supervised_k:
            raise ValueError(
                f"model {self.model!r} ({model.name}) trains on labelled anomalies: run it with supervised_k > 0, "
                f"e.g. viadk8s run --experiment supervised --models {self.model}"
            )
        return self

    @property
    def run_key(self) -> str:
        canonical = json.dumps(
            # defaults are left out, so a field added later (with a default) keeps existing keys;
            # changing what a default means bumps PROTOCOL_VERSION instead
            {"protocol": PROTOCOL_VERSION, "spec": self.model_dump(mode="json", exclude={"sweep"}, exclude_defaults=True)},
            sort_keys=True,
            separators=(",", ":"),
        )
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]

    @property
    def epochs(self) -> int:
        """The protocol's epochs for the model, capped by ``trainer.max_epochs``."""
        protocol = catalog.models()[self.model].epochs
        return min(protocol, self.trainer.max_epochs or protocol)

    @property
    def run_name(self) -> str:
        """The authors' MLflow run name."""
        return f"{self.model}_{self.dataset}_{self.category}_seed{self.seed}"

    def to_json(self) -> str:
        return self.model_dump_json()

    @classmethod
    def from_json(cls, text: str) -> RunSpec:
        """Parse a spec; any problem becomes one SpecError line."""
        try:
            return cls.model_validate_json(text)
        except ValidationError as err:
            raise SpecError(f"invalid run spec: {validation_message(err)}") from None


class Sweep(BaseModel):
    """An experiment expanded into run specs, filed under one sweep id."""

    model_config = ConfigDict(extra="forbid")
    sweep_id: str
    experiment: str
    created: str = Field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))
    runs: list[RunSpec]


#: Every spec field an experiment may vary, with its :class:`Column`, read from the fields themselves.
COLUMNS: dict[str, Column] = {
    name: found
    for model in (RunSpec, Variant)
    for name, info in model.model_fields.items()
    for found in info.metadata
    if isinstance(found, Column)
}


def column(field: str) -> Column:
    """The :class:`Column` of a spec field; a :class:`SpecError` naming those that have one otherwise."""
    found = COLUMNS.get(field)
    if found is None:
        raise SpecError(f"spec field {field!r} has no table column; fields an experiment may vary: {', '.join(COLUMNS)}")
    return found
