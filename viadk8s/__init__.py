"""viadk8s: a Kubernetes batch benchmark for visual industrial anomaly detection.

The package mirrors the flow of one run spec through the system::

    plan (spec, catalog) -> backends (local / k8s) -> worker -> store (result) -> aggregate
"""

__version__ = "0.1.0"

#: Bumped whenever the meaning of a spec field changes, so old run keys stop matching.
PROTOCOL_VERSION = "1"
