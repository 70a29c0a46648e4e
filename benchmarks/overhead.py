"""Overhead of viadk8s over a bare anomalib loop (the authors' style), measured in one run.

Runs PatchCore and PaDiM on the same synthetic category, same settings, once through
``viadk8s worker`` and once through a bare ``Engine.fit/test`` script, each in a fresh process,
and prints wall-time and peak-RSS ratios (targets: wall <= 1.10; PatchCore RSS <= bare).

    python benchmarks/overhead.py [--size 128] [--models patchcore,padim] [--repeats 1]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

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


def run_child(cmd: list[str], stdin: str | None, env: dict[str, str]) -> tuple[float, float]:
    """Wall seconds and peak RSS (MB) of one child process, from its own rusage (wait4)."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    if stdin:
        proc.stdin.write(stdin)  # type: ignore[union-attr]
    proc.stdin.close()  # type: ignore[union-attr]
    err = proc.stderr.read()  # type: ignore[union-attr]
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status):
        sys.exit(f"benchmark command failed: {' '.join(cmd[:5])}\n{err[-3000:]}")
    return wall, usage.ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--models", default="patchcore,padim")
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="viadk8s-bench-"))
    options = SyntheticOptions(categories=["tiles"])
    root = ensure_category(options, "tiles", work / "cache")
    config = work / "viadk8s.yaml"
    config.write_text(
        f"store: {work / 'store'}\ncache_dir: {work / 'cache'}\ndatasets: {{bench: {{synthetic: {options.model_dump_json()}}}}}\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "MLFLOW_DISABLE_TELEMETRY": "true"}
    env.pop("MALLOC_MMAP_THRESHOLD_", None)
    print(f"{'model':<12} {'path':<8} {'wall s':>8} {'peak RSS MB':>12}")
    for model in args.models.split(","):
        entry = catalog.model(model)
        rows: dict[str, list[tuple[float, float]]] = {"bare": [], "viadk8s": []}
        for repeat in range(args.repeats):
            spec = {
                "sweep": f"bench-{repeat}",
                "experiment": "evaluation",
                "model": model,
                "dataset": "bench",
                "category": "tiles",
                "seed": 3341,
                "image_size": args.size,
                "weights": "random",
            }
            rows["viadk8s"].append(
                run_child(
                    [sys.executable, "-m", "viadk8s", "worker", "--spec", "-", "--config", str(config)], json.dumps(spec), env
                )
            )
            rows["bare"].append(
                run_child(
                    [
                        sys.executable,
                        "-c",
                        BARE,
                        str(root),
                        str(entry.model_class),
                        str(args.size),
                        repr(entry.init_args),
                        str(work / "bare"),
                    ],
                    None,
                    env,
                )
            )
        best = {path: (min(w for w, _ in r), max(m for _, m in r)) for path, r in rows.items()}
        for path, (wall, rss) in best.items():
            print(f"{model:<12} {path:<8} {wall:>8.1f} {rss:>12.0f}")
        print(
            f"{model:<12} ratio    wall {best['viadk8s'][0] / best['bare'][0]:.2f} (target <= 1.10), "
            f"RSS {best['viadk8s'][1] / best['bare'][1]:.2f} (PatchCore target <= 1.00)"
        )


if __name__ == "__main__":
    main()
