"""Pieces shared by our models (anomalib's own components are reused wherever they exist)."""

from viadk8s.models.components.feature_cache import FeatureCache

__all__ = ["FeatureCache"]
