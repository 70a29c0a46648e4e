"""The ``viadk8s`` command: thin Typer commands over the library.

``runs``: plan, run locally, execute one run (worker), aggregate; ``cluster``: the same runs as
Kubernetes Jobs; ``data``: datasets in the store, drift previews, MLflow sync.
"""
# ruff: noqa: I001 - the imports register the commands, in the order `--help` lists them

from viadk8s.cli.common import app
from viadk8s.cli import runs, cluster, data  # noqa: F401

__all__ = ["app"]
