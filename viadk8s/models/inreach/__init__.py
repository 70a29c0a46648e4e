"""InReaCh (McIntosh & Albu, ICCV 2023): a nominal patch bank from inter-realization channels."""

from viadk8s.models.inreach.lightning_model import Inreach
from viadk8s.models.inreach.torch_model import InreachModel

__all__ = ["Inreach", "InreachModel"]
