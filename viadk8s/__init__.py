"""viadk8s: a Kubernetes batch benchmark for visual industrial anomaly detection.

The package mirrors the flow of one run spec through the system::

    plan (spec, catalog) -> backends (local / k8s) -> worker -> store (result) -> aggregate
"""

__version__ = "0.1.0"

#: Bumped whenever the meaning of a spec field changes, or a fix changes what a run reports, so
#: old run keys stop matching and re-submission redoes them. "2": metrics computed on the whole
#: test set's raw scores (1 let torchmetrics squash some batches with a sigmoid); 16-bit images scaled.
#: "3": images resized once while still integer, then scaled (viadk8s/data/decoded.py; within one
#: grey level of 2's float resize).
PROTOCOL_VERSION = "3"
