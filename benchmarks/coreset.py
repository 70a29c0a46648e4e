"""PatchCore's coreset: our k-centre-greedy against anomalib's ``KCenterGreedy`` on the same features.

The features are PatchCore's own training embedding (wide_resnet50_2, layers 2 and 3, random
weights) of a synthetic category of ``--images`` images at ``--size`` px: 100 images at 256 px give
102,400 patch features of 1536 values. Each selection runs in a fresh process from the same seed
(hence the same projection and random start), timed without loading the features; the peak RSS is
the process's own high-water mark (both hold the same embedding). Targets: time <= 0.2 of anomalib's, index agreement
>= 99.9 %, covering radius within 0.1 % (measured in the projected space both select in), peak RSS
no higher.

    python benchmarks/coreset.py [--images 100] [--size 256] [--ratio 0.1]
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import textwrap
from pathlib import Path

import numpy as np
import torch
from overhead import run_child
from table import Row, limit_row, ratio_row, run_alone

from viadk8s.catalog import SyntheticOptions
from viadk8s.data.synthetic import ensure_category
from viadk8s.models.components.coreset import project

SEED = 3341
NORMALISE = ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])

# one selection from saved features: anomalib's or ours, seeded as a run is
SELECT = textwrap.dedent(
    """
    import json, sys, time
    import numpy as np, torch
    features, which, ratio, seed, out = sys.argv[1], sys.argv[2], float(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
    embedding = torch.load(features)
    torch.manual_seed(seed); np.random.seed(seed)
    start = time.perf_counter()
    if which == "anomalib":
        from anomalib.models.components import KCenterGreedy
        indices = KCenterGreedy(embedding, ratio).select_coreset_idxs()
    else:
        from viadk8s.models.components.coreset import k_center_greedy
        indices = k_center_greedy(embedding, ratio).tolist()
    seconds = time.perf_counter() - start
    # this process's own high-water mark: wait4's ru_maxrss starts from the parent's RSS at fork
    peak = next(int(line.split()[1]) / 1024 for line in open("/proc/self/status") if line.startswith("VmHWM:"))
    with open(out, "w") as f:
        json.dump({"seconds": seconds, "indices": indices, "rss": peak}, f)
    """
)


def patchcore_embedding(images: int, size: int, work: Path) -> torch.Tensor:
    """PatchCore's training embedding of a synthetic category, as its training epoch collects it."""
    from anomalib.models.image.patchcore.torch_model import PatchcoreModel
    from PIL import Image

    options = SyntheticOptions(categories=["tiles"], n_train=images, n_test_good=1, n_test_bad=1, size=size)
    root = ensure_category(options, "tiles", work / "cache")
    torch.manual_seed(SEED)
    model = PatchcoreModel(layers=["layer2", "layer3"], backbone="wide_resnet50_2", pre_trained=False).train()
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in NORMALISE)
    paths = sorted((root / "train" / "good").iterdir())
    with torch.no_grad():
        for start in range(0, len(paths), 16):
            batch = [np.asarray(Image.open(p).convert("RGB").resize((size, size)), np.float32) for p in paths[start : start + 16]]
            model((torch.from_numpy(np.stack(batch) / 255).permute(0, 3, 1, 2) - mean) / std)
    return torch.vstack(model.embedding_store)


def covering_radius(features: torch.Tensor, indices: list[int]) -> float:
    """The largest distance from any feature to its nearest selected one."""
    centres = features[indices]
    return max(torch.cdist(chunk, centres).min(dim=1).values.max().item() for chunk in features.split(4096))


def measure(images: int = 100, size: int = 256, ratio: float = 0.1) -> list[Row]:
    """The coreset rows (see the module's docstring)."""
    with tempfile.TemporaryDirectory(prefix="viadk8s-bench-coreset-") as tmp:
        work = Path(tmp)
        embedding = patchcore_embedding(images, size, work)
        torch.save(embedding, work / "features.pt")
        env = {k: v for k, v in os.environ.items() if k != "MALLOC_MMAP_THRESHOLD_"}  # the heap as glibc leaves it
        runs = {}
        for which in ("anomalib", "ours"):
            out = work / f"{which}.json"
            command = [sys.executable, "-c", SELECT, str(work / "features.pt"), which, str(ratio), str(SEED), str(out)]
            run_child(command, None, env)
            runs[which] = json.loads(out.read_text())
        torch.manual_seed(SEED)
        np.random.seed(SEED)
        projected = project(embedding)  # the space both selected in, drawn from the same seed
    theirs, ours = runs["anomalib"], runs["ours"]
    same_place = float(np.mean(np.array(theirs["indices"]) == np.array(ours["indices"])))
    same_set = len(set(theirs["indices"]) & set(ours["indices"])) / len(theirs["indices"])
    radius = {k: covering_radius(projected, r["indices"]) for k, r in runs.items()}
    shape = f"{len(embedding):,} x {embedding.shape[1]} features ({images} images, {size} px), {len(ours['indices']):,} centres"
    return [
        ratio_row(
            f"coreset selection s, ours vs anomalib KCenterGreedy: {shape}",
            "anomalib",
            theirs["seconds"],
            ours["seconds"],
            0.2,
            f"{torch.get_num_threads()} threads; same seed, same projection and random start",
        ),
        limit_row(
            "coreset index agreement with anomalib: share of its indices we select (the memory bank)",
            same_set,
            0.999,
            note=f"in the same position: {same_place:.4%} (near-ties picked in the other order); "
            f"first centre equal: {theirs['indices'][0] == ours['indices'][0]}",
            at_least=True,
        ),
        limit_row(
            "coreset covering radius: relative difference, ours vs anomalib (projected space)",
            abs(radius["ours"] / radius["anomalib"] - 1),
            0.001,
            baseline=f"anomalib: {radius['anomalib']:.4f}",
            note=f"ours: {radius['ours']:.4f}",
        ),
        ratio_row(
            "coreset selection peak RSS MB (process, embedding included), ours vs anomalib",
            "anomalib",
            theirs["rss"],
            ours["rss"],
            1.0,
            f"embedding alone {embedding.numel() * 4 / 2**20:.0f} MB; no MALLOC_MMAP_THRESHOLD_ in either",
        ),
    ]


if __name__ == "__main__":
    run_alone(measure, __doc__)
