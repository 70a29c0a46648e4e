"""Same seed, same scores: every setting that makes a run repeatable, set in one place and recorded
in ``result.json → determinism`` so a reader sees what a run promised.

* every RNG (Python, numpy, torch, CUDA) seeded from the run's seed, and Lightning told to seed each
  DataLoader worker process from it (``seed_everything(workers=True)``: its ``worker_init_fn``);
  shuffled loaders draw their order from a generator of their own, seeded the same way
  (:class:`viadk8s.data.samples.SamplesDataModule`), so the order does not depend on how many random
  numbers a model's initialisation drew;
* ``torch.use_deterministic_algorithms(True, warn_only=True)``: the deterministic kernel wherever
  torch has one, and a warning, not a failure, where an op has none (on a GPU, e.g. some
  ``scatter_add`` and interpolation backward passes: those runs may still differ in the last bits);
* ``CUBLAS_WORKSPACE_CONFIG=:4096:8``: cuBLAS's repeatable workspace, needed by the above on CUDA
  10.2+; set before the first cuBLAS call (a value already in the environment is kept);
* cuDNN deterministic, its benchmark (autotuner, which picks kernels by timing) off.

CPU results also depend on the number of torch threads (reductions are split per thread): the
count is recorded, and a repeat on another core count may differ in the last bits.
"""

from __future__ import annotations

import os
from typing import Any

import torch
from lightning.pytorch import seed_everything

CUBLAS_WORKSPACE = ":4096:8"


def make_deterministic(seed: int) -> dict[str, Any]:
    """Seed everything and choose deterministic kernels for this process; returns what was set."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE)
    seed_everything(seed, workers=True, verbose=False)
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False
    return {
        "seed": seed,
        "loader_workers_seeded": os.environ.get("PL_SEED_WORKERS") == "1",
        "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
        "warn_only": torch.is_deterministic_algorithms_warn_only_enabled(),
        "cublas_workspace_config": os.environ["CUBLAS_WORKSPACE_CONFIG"],
        "cudnn_deterministic": torch.backends.cudnn.deterministic,
        "cudnn_benchmark": torch.backends.cudnn.benchmark,
        "torch_threads": torch.get_num_threads(),
    }
