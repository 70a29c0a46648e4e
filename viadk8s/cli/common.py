"""Shared pieces of the ``viadk8s`` commands: the Typer app, error handling, common options."""

from __future__ import annotations

import inspect
import json
from collections.abc import Callable
from functools import wraps
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console

from viadk8s import catalog
from viadk8s.errors import SpecError, Viadk8sError, one_of
from viadk8s.plan import Selection

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


Experiment = Annotated[str, typer.Option("--experiment", "-e", help=", ".join(catalog.experiments()))]
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
PackOption = Annotated[
    str,
    typer.Option(
        "--pack",
        help="N or auto: runs the cost model estimates short (cluster.pack.short_s) share one worker process, "
        "N at most, or as many as fit in cluster.pack.auto_s; grouped by model and dataset",
    ),
]
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


def _selection(
    models: str | None,
    datasets: str | None,
    categories: str | None,
    seeds: str | None,
    image_size: str | None,
    weights: str | None,
    epochs: int | None,
    batch_size: int | None,
    sweep: str | None,
    settings: list[str] | None,
) -> Selection:
    """The selection flags as the library's :class:`~viadk8s.plan.Selection`."""
    if weights not in (None, "imagenet", "random"):
        raise one_of("weights", weights, ["imagenet", "random"])
    return Selection(
        models=split_list(models),
        datasets=split_list(datasets),
        categories=split_list(categories),
        seeds=int_list(seeds, "--seeds"),
        image_sizes=int_list(image_size, "--image-size"),
        weights=weights,
        max_epochs=epochs,
        batch_size=batch_size,
        sweep=sweep,
        variant=key_values(settings),
    )


#: The options that narrow an experiment (plan, run, render, submit), as ``_selection`` takes them.
SELECTION_OPTIONS: dict[str, Any] = {
    "models": Models,
    "datasets": Datasets,
    "categories": Categories,
    "seeds": Seeds,
    "image_size": ImageSize,
    "weights": Weights,
    "epochs": Epochs,
    "batch_size": BatchSize,
    "sweep": SweepId,
    "settings": Settings,
}


def selection_options(command: F) -> F:
    """Declare the selection options once: Typer sees them in place of the command's
    ``selection`` parameter, and the command receives them as one :class:`~viadk8s.plan.Selection`."""
    signature = inspect.signature(command, eval_str=True)
    params = list(signature.parameters.values())
    at = [p.name for p in params].index("selection")
    options = [
        inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=annotation)
        for name, annotation in SELECTION_OPTIONS.items()
    ]
    rest = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in params[at + 1 :]]
    head = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in params[:at]]

    @wraps(command)
    def wrapper(**kwargs: Any) -> Any:
        chosen = {name: kwargs.pop(name) for name in SELECTION_OPTIONS}
        return command(**kwargs, selection=_selection(**chosen))

    declared = signature.replace(parameters=[*head, *options, *rest])
    wrapper.__signature__ = declared  # type: ignore[attr-defined]
    wrapper.__annotations__ = {p.name: p.annotation for p in declared.parameters.values()}
    return wrapper  # type: ignore[return-value]
