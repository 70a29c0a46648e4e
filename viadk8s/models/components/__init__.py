"""Pieces shared by our models (anomalib's own components are reused wherever they exist).

``module``: the Lightning base every model of ours derives from; ``balanced``: how a model asks for
balanced supervised batches; ``deviation``, ``top_k``, ``multiscale``, ``deviation_training``: what
DevNet and DRA share; ``normalisation``: the pre-processor's statistics; ``feature_cache``,
``smoothing``, ``coreset``: caching, the maps' Gaussian filter, PatchCore's coreset.
"""

from viadk8s.models.components.feature_cache import FeatureCache

__all__ = ["FeatureCache"]
