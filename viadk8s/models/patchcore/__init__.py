"""PatchCore (CVPR 2022): anomalib's model with our exact, faster k-centre-greedy coreset.

Paper: `Towards Total Recall in Industrial Anomaly Detection <https://arxiv.org/abs/2106.08265>`
"""

from viadk8s.models.patchcore.lightning_model import Patchcore

__all__ = ["Patchcore"]
