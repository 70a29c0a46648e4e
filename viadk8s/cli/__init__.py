"""The ``viadk8s`` command: thin Typer commands over the library.

``runs``: plan, run locally, execute one run (worker), aggregate; ``statistics``: compare two
models, the sweep's HTML report; ``cluster``: the same runs as Kubernetes Jobs; ``data``: datasets
in the store, drift previews, MLflow sync; ``weights``: pretrained weights pulled and mirrored for
air-gapped clusters.
"""
# ruff: noqa: I001 - the imports register the commands, in the order `--help` lists them

from viadk8s.cli.common import app
from viadk8s.cli import runs, statistics, cluster, data, weights  # noqa: F401

__all__ = ["app"]
