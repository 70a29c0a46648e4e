"""Overhead of viadk8s over a bare anomalib loop (the authors' style), measured in one run.

Runs PatchCore and PaDiM on the same synthetic category, same settings, through ``viadk8s worker``
and through a bare ``Engine.fit/test`` script, alternating, each in a fresh process, ``--repeats``
times; prints the fastest wall time and the highest peak RSS of each as ratios (targets: wall <=
1.10; PatchCore RSS <= bare). The fastest of several is the steady state a sweep sees: a run at
128 px takes about 12 s, so the machine's noise (bare runs of one setting measured 11.9 to 17.1 s)
and one-time costs (the first run of a local store creates its MLflow database, 1.8 s) would
otherwise decide the ratio.

    python benchmarks/overhead.py [--size 128] [--models patchcore,padim] [--repeats 3]
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

from table import Row, ratio_row, run_alone

from viadk8s import catalog
from viadk8s.catalog import SyntheticOptions
from viadk8s.data.synthetic import ensure_category

BARE = textwrap.dedent(
    """
    import sys
    from anomalib.data import Folder
    from anomalib.engine import Engine
    from anomalib import models
    from lightning.pytorch import seed_everything

    root, cls_name, size, init = sys.argv[1], sys.argv[2], int(sys.argv[3]), eval(sys.argv[4])
    seed_everything(3341)
    cls = getattr(models, cls_name)
    model = cls(pre_trained=False, pre_processor=cls.configure_pre_processor(image_size=(size, size)), **init)
    data = Folder(name="bench", root=root, normal_dir="train/good", abnormal_dir=["test/scratch", "test/stain", "test/hole"],
                  normal_test_dir="test/good", mask_dir=["ground_truth/scratch", "ground_truth/stain", "ground_truth/hole"],
                  train_batch_size=16, eval_batch_size=16, num_workers=0)
    engine = Engine(accelerator="cpu", devices=1, max_epochs=1, default_root_dir=sys.argv[5], logger=False)
    engine.fit(model, datamodule=data)
    print(engine.test(model, datamodule=data, verbose=False))
    """
)


# Starts the measured command and reports its peak RSS: the kernel starts a process's ru_maxrss from
# the high-water mark of the memory it replaced at exec, which for a child of this (large) process
# would be this process's own peak; a small launcher in between leaves only its few MB as the floor.
LAUNCHER = textwrap.dedent(
    """
    import os, subprocess, sys
    report = int(sys.argv[1])
    child = subprocess.Popen(sys.argv[2:])
    _, status, usage = os.wait4(child.pid, 0)
    os.write(report, str(usage.ru_maxrss).encode())
    sys.exit(os.waitstatus_to_exitcode(status))
    """
)


def run_child(cmd: list[str], stdin: str | None, env: dict[str, str]) -> tuple[float, float]:
    """Wall seconds and peak RSS (MB) of one child process, from its own rusage (wait4, via LAUNCHER)."""
    read, write = os.pipe()
    start = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-c", LAUNCHER, str(write), *cmd],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        pass_fds=(write,),
    )
    os.close(write)
    if stdin:
        proc.stdin.write(stdin)  # type: ignore[union-attr]
    proc.stdin.close()  # type: ignore[union-attr]
    err = proc.stderr.read()  # type: ignore[union-attr]
    code = proc.wait()
    wall = time.perf_counter() - start
    with os.fdopen(read, "rb") as report:
        peak_kb = report.read()
    if code:
        sys.exit(f"benchmark command failed: {' '.join(cmd[:5])}\n{err[-3000:]}")
    return wall, int(peak_kb) / 1024


def measure(size: int = 128, models: str = "patchcore,padim", repeats: int = 3) -> list[Row]:
    """Wall and peak-RSS ratios, viadk8s worker vs bare anomalib, per model (see the module's docstring)."""
    work = Path(tempfile.mkdtemp(prefix="viadk8s-bench-"))
    options = SyntheticOptions(categories=["tiles"])
    root = ensure_category(options, "tiles", work / "cache")
    config = work / "viadk8s.yaml"
    config.write_text(
        f"store: {work / 'store'}\ncache_dir: {work / 'cache'}\ndatasets: {{bench: {{synthetic: {options.model_dump_json()}}}}}\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "MLFLOW_DISABLE_TELEMETRY": "true"}
    env.pop("MALLOC_MMAP_THRESHOLD_", None)
    rows: list[Row] = []
    for model in models.split(","):
        entry = catalog.model(model)
        bare_class = str(entry.model_class).rpartition(":")[2]  # anomalib's class of that name: ours subclass it
        runs: dict[str, list[tuple[float, float]]] = {"bare": [], "viadk8s": []}
        for repeat in range(repeats):
            spec = {
                "sweep": f"bench-{repeat}",
                "experiment": "evaluation",
                "model": model,
                "dataset": "bench",
                "category": "tiles",
                "seed": 3341,
                "image_size": size,
                "weights": "random",
            }
            runs["viadk8s"].append(
                run_child(
                    [sys.executable, "-m", "viadk8s", "worker", "--spec", "-", "--config", str(config)], json.dumps(spec), env
                )
            )
            bare = [sys.executable, "-c", BARE, str(root), bare_class, str(size), repr(entry.init_args), str(work / "bare")]
            runs["bare"].append(run_child(bare, None, env))
        best = {path: (min(w for w, _ in r), max(m for _, m in r)) for path, r in runs.items()}
        label = f"{model} at {size} px, fit + test in a fresh process"
        rows.append(
            ratio_row(
                f"overhead: {label}, wall s, viadk8s worker vs bare anomalib", "bare", best["bare"][0], best["viadk8s"][0], 1.10
            )
        )
        rss_target = 1.0 if model == "patchcore" else None
        rows.append(
            ratio_row(
                f"overhead: {label}, peak RSS MB",
                "bare",
                best["bare"][1],
                best["viadk8s"][1],
                rss_target,
                "no MALLOC_MMAP_THRESHOLD_ in the environment: the worker sets it with mallopt, bare runs without",
            )
        )
    return rows


if __name__ == "__main__":
    run_alone(measure, __doc__)
