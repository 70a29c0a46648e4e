"""PatchCore's whole fit: our class (anomalib's, with our coreset) against bare anomalib, and its
peak memory with and without glibc's mmap threshold (``MALLOC_MMAP_THRESHOLD_``, viadk8s/worker/env.py).

Both fits are the same bare ``Engine.fit`` script (the authors' style) in a fresh process on one
synthetic category (``--images`` training images at ``--size`` px, random weights, the catalog's
settings), differing only in the class: ``viadk8s.models.patchcore.Patchcore`` or
``anomalib.models.Patchcore``. Fit seconds and peak RSS (VmHWM) come from the process itself.
Target: ours <= 0.4 of anomalib's fit time. Each class is run with the worker's threshold
(as pods run) and without it; a run without it stops at ``--cap-gb`` of address space so that
anomalib's heap growth cannot take the machine down (reported as over the cap).

    python benchmarks/patchcore.py [--images 100] [--size 256] [--cap-gb 10]
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import textwrap
from pathlib import Path

from overhead import run_child
from table import Row, ratio_row, run_alone

from viadk8s import catalog
from viadk8s.catalog import SyntheticOptions
from viadk8s.data.synthetic import ensure_category
from viadk8s.worker.env import MMAP_THRESHOLD

FIT = textwrap.dedent(
    """
    import json, resource, sys, time
    root, which, size, cap_gb, init, out, work = sys.argv[1:8]
    if float(cap_gb):
        cap = int(float(cap_gb) * 2**30)
        resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
    from anomalib.data import Folder
    from anomalib.engine import Engine
    from lightning.pytorch import seed_everything
    if which == "anomalib":
        from anomalib.models import Patchcore
    else:
        from viadk8s.models.patchcore import Patchcore
    seed_everything(3341)
    size = int(size)
    model = Patchcore(pre_trained=False, pre_processor=Patchcore.configure_pre_processor(image_size=(size, size)), **eval(init))
    defects = ["scratch", "stain", "hole"]
    data = Folder(name="bench", root=root, normal_dir="train/good", abnormal_dir=[f"test/{d}" for d in defects],
                  normal_test_dir="test/good", mask_dir=[f"ground_truth/{d}" for d in defects],
                  train_batch_size=16, eval_batch_size=16, num_workers=0)
    engine = Engine(accelerator="cpu", devices=1, max_epochs=1, default_root_dir=work, logger=False,
                    enable_progress_bar=False)
    start = time.perf_counter()
    engine.fit(model, datamodule=data)
    seconds = time.perf_counter() - start
    # this process's own high-water mark: wait4's ru_maxrss starts from the parent's RSS at fork
    peak = next(int(line.split()[1]) / 1024 for line in open("/proc/self/status") if line.startswith("VmHWM:"))
    with open(out, "w") as f:
        json.dump({"fit_s": seconds, "bank": list(model.model.memory_bank.shape), "rss": peak}, f)
    """
)


def fit(root: Path, which: str, size: int, cap_gb: float, threshold: bool, work: Path) -> dict[str, float] | None:
    """One fit in a fresh process: its fit seconds and peak RSS (MB); None when it went over the cap."""
    env = {k: v for k, v in os.environ.items() if k != "MALLOC_MMAP_THRESHOLD_"}
    env |= {"HF_HUB_OFFLINE": "1", **({"MALLOC_MMAP_THRESHOLD_": str(MMAP_THRESHOLD)} if threshold else {})}
    out = work / f"{which}-{threshold}.json"
    init = repr(catalog.model("patchcore").init_args)
    command = [sys.executable, "-c", FIT, str(root), which, str(size), str(0 if threshold else cap_gb), init, str(out), str(work)]
    try:
        run_child(command, None, env)
    except SystemExit as failed:  # run_child's report of a failed child: over the cap (MemoryError) or a crash
        if "MemoryError" in str(failed) or "DefaultCPUAllocator" in str(failed):
            return None
        raise
    return json.loads(out.read_text())


def measure(images: int = 100, size: int = 256, cap_gb: float = 10) -> list[Row]:
    """The PatchCore rows (see the module's docstring)."""
    with tempfile.TemporaryDirectory(prefix="viadk8s-bench-patchcore-") as tmp:
        work = Path(tmp)
        options = SyntheticOptions(categories=["tiles"], n_train=images, n_test_good=8, n_test_bad=8, size=size)
        root = ensure_category(options, "tiles", work / "cache")
        runs = {(w, t): fit(root, w, size, cap_gb, t, work) for w in ("anomalib", "ours") for t in (True, False)}

    def rss(which: str, threshold: bool) -> str:
        run = runs[(which, threshold)]
        return f"{run['rss']:.0f}" if run else f"> {cap_gb:g} GB cap"

    bare, ours = runs[("anomalib", True)], runs[("ours", True)]
    if not (bare and ours and bare["bank"] == ours["bank"]):
        sys.exit(f"the fits with the threshold must finish with banks of one size: anomalib {bare}, ours {ours}")
    memory = (
        f"peak RSS MB with / without MALLOC_MMAP_THRESHOLD_: anomalib {rss('anomalib', True)} / {rss('anomalib', False)}, "
        f"ours {rss('ours', True)} / {rss('ours', False)}"
    )
    return [
        ratio_row(
            f"PatchCore whole fit s at {size} px, {images} images: ours vs bare anomalib",
            "bare anomalib Engine.fit",
            bare["fit_s"],
            ours["fit_s"],
            0.4,
            f"memory bank {bare['bank'][0]:,} x {bare['bank'][1]}; with the worker's mmap threshold",
        ),
        ratio_row(
            f"PatchCore whole fit peak RSS MB at {size} px: ours vs bare anomalib (both with the threshold)",
            "bare anomalib",
            bare["rss"],
            ours["rss"],
            1.0,
            memory,
        ),
    ]


if __name__ == "__main__":
    run_alone(measure, __doc__)
