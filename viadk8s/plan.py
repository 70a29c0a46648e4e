"""Expand an experiment and a user's selection into a sweep of run specs."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from viadk8s import catalog
from viadk8s.config import Config
from viadk8s.data.resolve import Datasets
from viadk8s.errors import SpecError, one_of, validation_message
from viadk8s.spec import RunSpec, Sweep, Trainer, Variant

PAPER = "paper"  # --datasets paper: the experiment's datasets from the paper


@dataclass(frozen=True)
class Selection:
    """What a user narrows an experiment to; ``None`` means the experiment's default."""

    models: Sequence[str] | None = None
    datasets: Sequence[str] | None = None
    categories: Sequence[str] | None = None
    seeds: Sequence[int] | None = None
    image_sizes: Sequence[int] | None = None
    weights: str | None = None
    max_epochs: int | None = None
    batch_size: int | None = None
    sweep: str | None = None
    variant: dict[str, Any] = field(default_factory=dict)  # variant fields for every run (e.g. patience)


@dataclass
class Plan:
    sweep: Sweep
    notes: list[str] = field(default_factory=list)


def default_sweep_id(experiment: str) -> str:
    """Re-running an experiment resumes the same sweep unless the user names another."""
    return experiment.replace("_", "-")


def _models(exp: catalog.ExperimentEntry, chosen: Sequence[str] | None) -> list[str]:
    for key in chosen or ():
        catalog.model(key)  # unknown: a clear error
    return list(chosen or exp.models)


def _datasets(exp: catalog.ExperimentEntry, chosen: Sequence[str] | None, datasets: Datasets, notes: list[str]) -> list[str]:
    if chosen and list(chosen) != [PAPER]:
        for key in chosen:
            datasets.entry(key)
        return list(chosen)
    if chosen:
        return list(exp.datasets)
    here = [d for d in exp.datasets if datasets.is_available(d)]
    if here:
        return here
    notes.append(
        "no paper dataset is configured or mirrored: using the built-in 'synthetic' dataset "
        "(--datasets paper selects the paper's)"
    )
    return ["synthetic"]


def _axes(exp: catalog.ExperimentEntry, selection: Selection) -> list[dict[str, Any]]:
    axes = {"image_size": [RunSpec.model_fields["image_size"].default], **exp.axes}
    if selection.image_sizes:
        axes["image_size"] = list(selection.image_sizes)
    names = list(axes)
    return [dict(zip(names, values, strict=True)) for values in itertools.product(*axes.values())]


def plan(experiment: str, selection: Selection, config: Config) -> Plan:
    """The sweep of an experiment as the user narrowed it; every spec is validated."""
    exp = catalog.experiment(experiment)
    notes: list[str] = []
    models = _models(exp, selection.models)
    available = Datasets(config)
    datasets = _datasets(exp, selection.datasets, available, notes)
    per_dataset = {d: available.categories(d) for d in datasets}
    if selection.categories:
        known = sorted({c for cats in per_dataset.values() for c in cats})
        for category in selection.categories:
            if category not in known:
                raise one_of(f"category of {', '.join(datasets)}", category, known)
        per_dataset = {d: [c for c in cats if c in selection.categories] for d, cats in per_dataset.items()}
    for key in selection.variant:
        if key not in Variant.model_fields:
            raise one_of("variant field", key, list(Variant.model_fields))
    seeds = list(selection.seeds or exp.seeds)
    trainer = Trainer(max_epochs=selection.max_epochs, batch_size=selection.batch_size or Trainer().batch_size)
    sweep_id = selection.sweep or default_sweep_id(experiment)
    runs = []
    try:
        for point, model, dataset, seed in itertools.product(_axes(exp, selection), models, datasets, seeds):
            for category in per_dataset[dataset]:
                fields = {**point, "model": model, "dataset": dataset, "category": category, "seed": seed}
                for rule in exp.rules:  # the paper's exceptions, e.g. PatchCore on a 25 % subset at 512 px
                    if rule.matches(fields):
                        fields.update(rule.set)
                fields.update(selection.variant)
                top = {k: v for k, v in fields.items() if k in RunSpec.model_fields}
                variant = Variant(**{k: v for k, v in fields.items() if k not in RunSpec.model_fields})
                runs.append(
                    RunSpec(
                        sweep=sweep_id,
                        experiment=experiment,
                        weights=selection.weights or "imagenet",
                        trainer=trainer,
                        variant=variant,
                        **top,
                    )
                )
    except ValidationError as err:
        raise SpecError(f"invalid selection: {validation_message(err)}") from None
    if not runs:
        raise SpecError(f"the selection leaves no run of experiment {experiment!r}")
    return Plan(Sweep(sweep_id=sweep_id, experiment=experiment, runs=runs), notes)
