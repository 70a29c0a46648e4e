"""DevNet (Pang et al., 2021), image version: deviation networks trained on a few labelled anomalies."""

from viadk8s.models.devnet.lightning_model import DeviationTraining, Devnet
from viadk8s.models.devnet.torch_model import DeviationLoss, DevnetModel

__all__ = ["DeviationLoss", "DeviationTraining", "Devnet", "DevnetModel"]
