"""Shared pieces of the ``viadk8s`` commands: the Typer app, error handling, common options."""

from __future__ import annotations

import json
from collections.abc import Callable
from functools import wraps
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer
from rich.console import Console

from viadk8s.errors import SpecError, Viadk8sError, one_of

if TYPE_CHECKING:
    from viadk8s.config import Config
    from viadk8s.plan import Plan

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Benchmark anomaly-detection models the way production needs.")
console = Console()
err_console = Console(stderr=True)
F = TypeVar("F", bound=Callable[..., Any])


def friendly(command: F) -> F:
    """Turn the library's errors into one line on stderr and the promised exit code."""

    @wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except Viadk8sError as err:
            err_console.print(f"error: {err}", markup=False, highlight=False, soft_wrap=True)
            raise typer.Exit(err.exit_code) from None

    return wrapper  # type: ignore[return-value]


OperatingPoints = Annotated[
    list[str] | None,
    typer.Option("--operating-point", help="fnr=R or fpr=R (repeatable); default: the paper's fnr=0.02 and fpr=0.02"),
]


def split_list(value: str | None) -> list[str] | None:
    return [v.strip() for v in value.split(",") if v.strip()] if value else None


def int_list(value: str | None, flag: str) -> list[int] | None:
    try:
        return [int(v) for v in split_list(value) or []] or None
    except ValueError:
        raise SpecError(f"bad {flag} {value!r}; allowed: comma-separated integers") from None


Experiment = Annotated[
    str, typer.Option("--experiment", "-e", help="evaluation, input_size, validation, noisy_labels, data_drift, supervised")
]
Models = Annotated[str | None, typer.Option(help="comma-separated model keys (default: the experiment's)")]
Datasets = Annotated[
    str | None, typer.Option(help="comma-separated dataset keys, or 'paper' (default: configured ones, else synthetic)")
]
Categories = Annotated[str | None, typer.Option(help="comma-separated categories")]
Seeds = Annotated[str | None, typer.Option(help="comma-separated seeds (default: the experiment's)")]
ImageSize = Annotated[str | None, typer.Option(help="input size(s) in pixels, comma-separated (overrides the experiment's)")]
Weights = Annotated[str | None, typer.Option(help="imagenet (default) or random")]
Epochs = Annotated[int | None, typer.Option("--max-epochs", help="cap every model's protocol epochs (smoke runs)")]
BatchSize = Annotated[int | None, typer.Option(help="train batch size (default 16)")]
Settings = Annotated[
    list[str] | None,
    typer.Option("--set", help="a variant field for every run, e.g. patience=20 or monitor=pixel_AUPRO (repeatable)"),
]
SweepId = Annotated[str | None, typer.Option("--sweep", help="sweep id (default: the experiment name)")]
Store = Annotated[str | None, typer.Option(help="file://DIR or DIR (default ./viadk8s-runs)")]
ConfigPath = Annotated[str | None, typer.Option("--config", help="viadk8s.yaml (default $VIADK8S_CONFIG or ./viadk8s.yaml)")]


def key_values(pairs: list[str] | None) -> dict[str, Any]:
    """``["patience=20", "monitor=pixel_AUPRO"]`` -> ``{"patience": 20, "monitor": "pixel_AUPRO"}``."""
    chosen: dict[str, Any] = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise SpecError(f"bad --set {pair!r}; allowed: FIELD=VALUE, e.g. patience=20")
        try:
            chosen[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            chosen[key.strip()] = value
    return chosen


def plan_from_flags(experiment: str, config: Config, **chosen: Any) -> Plan:
    """The sweep of the selection flags shared by plan, run, render and submit."""
    from viadk8s.plan import Selection, plan

    if chosen["weights"] not in (None, "imagenet", "random"):
        raise one_of("weights", chosen["weights"], ["imagenet", "random"])
    selection = Selection(
        models=split_list(chosen["models"]),
        datasets=split_list(chosen["datasets"]),
        categories=split_list(chosen["categories"]),
        seeds=int_list(chosen["seeds"], "--seeds"),
        image_sizes=int_list(chosen["image_size"], "--image-size"),
        weights=chosen["weights"],
        max_epochs=chosen["epochs"],
        batch_size=chosen["batch_size"],
        sweep=chosen["sweep"],
        variant=key_values(chosen["settings"]),
    )
    return plan(experiment, selection, config)
