"""MMR: masked multi-scale reconstruction (Zhang et al., Computers in Industry 2023; the AeBAD paper)."""

from .lightning_model import Mmr

__all__ = ["Mmr"]
