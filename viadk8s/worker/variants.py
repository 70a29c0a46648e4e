"""The data side of the paper's experiments: which images a run trains, validates and tests on.

Applies a spec's :class:`~viadk8s.spec.Variant` to the samples of a category with the pure
functions of :mod:`viadk8s.data.splits` and :mod:`viadk8s.data.drift`, and records what it did
(moved images, drift recipes) so a result says exactly what it was measured on.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from viadk8s.data import splits
from viadk8s.data.drift import write_drifted_test_set
from viadk8s.data.layout import Sample
from viadk8s.spec import RunSpec

SYNTHETIC_VAL_FRACTION = 0.2


@dataclass
class Prepared:
    samples: list[Sample]  # split: train, val or test
    labelled_train: bool  # bad train images are fed as labelled (supervised), else as if good (noisy)
    record: dict[str, Any] = field(default_factory=dict)
    files: list[Path] = field(default_factory=list)  # extra artifacts for the store

    def split(self, name: str) -> list[Sample]:
        return [s for s in self.samples if s.split == name]


def prepare(spec: RunSpec, samples: list[Sample], work: Path, bit_depth: int = 8) -> Prepared:
    """Train/val/test samples for one run; a bad combination is a SpecError. ``bit_depth`` is the
    dataset's (drifted copies keep it)."""
    variant, seed = spec.variant, spec.seed
    record: dict[str, Any] = {}
    files: list[Path] = []
    if variant.supervised_k:  # the spec has checked that the model has a supervised mode
        samples = splits.supervised(samples, variant.supervised_k, seed)
        record["labelled_bad_in_train"] = sorted(s.image_path for s in samples if s.split == "train" and s.label == 1)
    else:  # one-class: a dataset's labelled bad train images (VAD) are not used
        samples = [s for s in samples if not (s.split == "train" and s.label == 1)]
    if variant.contamination:
        samples, moved = splits.contaminate(samples, variant.contamination, seed)
        record["contaminated_train"] = moved
    if variant.train_fraction < 1:
        samples = splits.subsample_train(samples, variant.train_fraction, seed)
        record["train_fraction"] = variant.train_fraction
    samples = _validation(variant.validation, samples, seed, work, record)
    if variant.drift == "synthetic":
        samples = write_drifted_test_set(samples, seed, work / "drift", bit_depth)
        files.append(work / "drift" / "drift.json")
        record["drift"] = "synthetic (recipes in drift.json)"
    return Prepared(samples, labelled_train=bool(variant.supervised_k), record=record, files=files)


def _validation(strategy: str, samples: list[Sample], seed: int, work: Path, record: dict[str, Any]) -> list[Sample]:
    if strategy == "last_epoch":
        return samples
    if strategy == "test_early_stop":  # the academic habit: validate on the test set itself
        record["validation"] = "the test set (optimistic bound)"
        return samples + [replace(s, split="val") for s in samples if s.split == "test"]
    if strategy == "val_early_stop":
        samples = splits.validation_split(samples, splits.VAL_FRACTION, seed=seed)
        record["validation"] = sorted(s.image_path for s in samples if s.split == "val")
        return samples
    samples = splits.synthetic_validation(samples, SYNTHETIC_VAL_FRACTION, seed)
    goods = [s for s in samples if s.split == "val"]
    anomalies = splits.make_synthetic_anomalies(goods, work / "synthetic_val", seed)
    record["validation"] = {"held_out_good": sorted(s.image_path for s in goods), "synthetic_anomalies": len(anomalies)}
    return samples + anomalies
