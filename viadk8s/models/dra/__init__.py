"""DRA (Ding, Pang, Shen; CVPR 2022): open-set supervised anomaly detection with disentangled abnormalities."""

from viadk8s.models.dra.lightning_model import Dra
from viadk8s.models.dra.torch_model import DraModel

__all__ = ["Dra", "DraModel"]
