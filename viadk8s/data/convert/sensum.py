"""SensumSODF (``src`` = the unpacked ``SensumSODF`` folder).

Source: ``<class>/negative/data/NNN.png`` (good), ``<class>/positive/data/NNN.png`` (defective)
and their masks ``<class>/positive/annotation/NNN.png``. The publisher ships no single split (its
benchmark uses 3-fold cross-validation), so protocol.md prescribes one: the good images, sorted by
name, are shuffled with ``default_rng(143)``; the first 150 go to test, the rest to train; all
defective images go to test (defect folder ``bad``) with their masks.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from viadk8s.data.convert.common import MERGED_DEFECT, Category, Item, Options, Plan, first_file, images, kept_classes
from viadk8s.errors import SpecError

SENSUM_SEED, SENSUM_TEST_GOOD = 143, 150


def sensum(src: Path, _: Options) -> Plan:
    plan: Plan = {}
    for cat in kept_classes("sensum_sodf", src, lambda c: (c / "negative" / "data").is_dir(), "<class>/negative/data"):
        goods = images(src / cat / "negative" / "data")
        if len(goods) <= SENSUM_TEST_GOOD:
            found = f"needs more than {SENSUM_TEST_GOOD} good images, found {len(goods)}"
            raise SpecError(f"sensum_sodf source {str(src / cat)!r}: {found}")
        order = np.random.default_rng(SENSUM_SEED).permutation(len(goods))
        to_test = {goods[i] for i in order[:SENSUM_TEST_GOOD]}
        items = [Item("test" if p in to_test else "train", "good", p.name, p) for p in goods]
        annotations = src / cat / "positive" / "annotation"
        for image in images(src / cat / "positive" / "data"):
            items.append(Item("test", MERGED_DEFECT, image.name, image, first_file(annotations / f"{image.stem}.png")))
        rule = f"rule (protocol.md): seed {SENSUM_SEED}, {SENSUM_TEST_GOOD} good images to test, the rest to train"
        plan[cat] = Category(items, {"source": rule})
    return plan
