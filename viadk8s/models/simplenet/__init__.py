"""SimpleNet (CVPR 2023): a discriminator of adapted patch features against noised ones.

Paper: `SimpleNet: A Simple Network for Image Anomaly Detection and Localization
<https://arxiv.org/abs/2303.15140>`
"""

from viadk8s.models.simplenet.lightning_model import Simplenet
from viadk8s.models.simplenet.torch_model import SimplenetModel

__all__ = ["Simplenet", "SimplenetModel"]
