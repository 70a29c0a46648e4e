"""DevNet (Pang et al., 2021), image version: deviation networks trained on a few labelled anomalies."""

from viadk8s.models.devnet.lightning_model import Devnet
from viadk8s.models.devnet.torch_model import DevnetModel

__all__ = ["Devnet", "DevnetModel"]
