"""Our models' cost: fit seconds per epoch with and without the frozen-feature cache, peak memory,
test images/s, at 128 and 256 px, each run a fresh ``viadk8s worker`` process on one synthetic category.

The cache's gain is measured in the same run: the mean training epoch after the first (cache on;
the first fills it) against the mean uncached epoch, both from the result's ``timings.epoch_s``.
A model without a ``cache_features`` switch (InReaCh: one epoch; MMR: its training crops differ
every epoch, so its teacher runs on every batch; DRA and DevNet fine-tune their backbone) is timed
for one epoch.

    python benchmarks/models.py [--models simplenet,msflow,inreach,mmr,dra,devnet] [--sizes 128,256] [--epochs 3]
"""

from __future__ import annotations

import inspect
import json
import os
import sys
import tempfile
import textwrap
from pathlib import Path

from overhead import run_child
from table import Row, figure_row, ratio_row, run_alone

from viadk8s import catalog
from viadk8s.catalog import SyntheticOptions

# the worker, with the catalog entry's init_args extended by cache_features (a speed switch, not a spec field)
CHILD = textwrap.dedent(
    """
    import sys
    from viadk8s.worker.env import prepare_process
    prepare_process()
    from viadk8s import catalog
    key, cache, config = sys.argv[1], sys.argv[2], sys.argv[3]
    if cache != "none":
        entry = catalog.models()[key]
        catalog.models()[key] = entry.model_copy(update={"init_args": {**entry.init_args, "cache_features": cache == "on"}})
    from viadk8s.worker import main
    sys.exit(main(sys.stdin.read(), config))
    """
)


def has_cache_switch(model: str) -> bool:
    from viadk8s.worker.adapters import model_class

    return "cache_features" in inspect.signature(model_class(catalog.model(model)).__init__).parameters


def run_model(model: str, size: int, epochs: int, cache: str, work: Path, env: dict[str, str]) -> dict[str, float]:
    """One worker run; its result's fit seconds, test images/s and the process's peak RSS (MB)."""
    sweep = f"b-{model}-{size}-{epochs}-{cache}".replace("_", "-")
    spec = {"sweep": sweep, "experiment": "evaluation", "model": model, "dataset": "bench", "category": "tiles"}
    spec |= {"seed": 3341, "image_size": size, "weights": "random", "trainer": {"max_epochs": epochs}}
    if catalog.model(model).group == "supervised":  # DRA, DevNet: 4 labelled anomalies, balanced batches
        spec |= {"experiment": "supervised", "variant": {"supervised_k": 4}}
    _, rss = run_child([sys.executable, "-c", CHILD, model, cache, str(work / "viadk8s.yaml")], json.dumps(spec), env)
    (path,) = (work / "store" / "runs" / sweep).glob("*/result.json")
    result = json.loads(path.read_text())
    timings = result["timings"]
    return {"epoch_s": timings["epoch_s"], "images_per_s": timings["test_images_per_s"], "rss_mb": rss}


def measure(models: str = "simplenet,msflow,inreach,mmr,dra,devnet", sizes: str = "128,256", epochs: int = 3) -> list[Row]:
    """Per model and size: cached vs uncached seconds per epoch (or one epoch's seconds without a
    cache switch), with peak RSS and test images/s in the note."""
    work = Path(tempfile.mkdtemp(prefix="viadk8s-bench-models-"))
    options = SyntheticOptions(categories=["tiles"], n_train=24, n_test_good=8, n_test_bad=8, size=256)
    (work / "viadk8s.yaml").write_text(
        f"store: {work / 'store'}\ndatasets: {{bench: {{synthetic: {options.model_dump_json()}}}}}\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "MLFLOW_DISABLE_TELEMETRY": "true"}
    images = f"{options.n_train} train / {options.n_test_good + options.n_test_bad} test images, random weights"
    rows: list[Row] = []
    for model in models.split(","):
        for size in map(int, sizes.split(",")):
            if not has_cache_switch(model):
                once = run_model(model, size, 1, "none", work, env)
                note = f"no cache switch: one epoch; peak RSS {once['rss_mb']:.0f} MB, {once['images_per_s']:.1f} test img/s"
                rows.append(figure_row(f"{model} at {size} px, s/epoch ({images})", once["epoch_s"][0], note))
                continue
            off = run_model(model, size, epochs, "off", work, env)
            on = run_model(model, size, epochs, "on", work, env)
            uncached = sum(off["epoch_s"]) / len(off["epoch_s"])
            cached = sum(on["epoch_s"][1:]) / len(on["epoch_s"][1:])
            note = (
                f"peak RSS MB off/on {off['rss_mb']:.0f}/{on['rss_mb']:.0f}; {on['images_per_s']:.1f} test img/s; "
                f"epochs after the first (cache on) vs all epochs uncached; {images}"
            )
            rows.append(
                ratio_row(
                    f"{model} at {size} px, s/epoch: frozen-feature cache on vs off", "cache off", uncached, cached, None, note
                )
            )
    return rows


if __name__ == "__main__":
    run_alone(measure, __doc__)
