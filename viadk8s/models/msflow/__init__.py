"""MSFlow: Multi-Scale Flow-based Framework for Unsupervised Anomaly Detection (Zhou et al., TNNLS 2024)."""

from .lightning_model import Msflow

__all__ = ["Msflow"]
