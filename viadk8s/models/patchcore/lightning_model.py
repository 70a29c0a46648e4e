"""PatchCore as anomalib ships it, except the coreset step.

Only :meth:`Patchcore.fit` (the memory bank's subsampling) is ours: anomalib's k-centre-greedy
is replaced by :func:`~viadk8s.models.components.coreset.sample_coreset`, the same algorithm with
the same random start but one matrix-vector product per iteration instead of an N×d temporary
(see that module). Everything else, including the constructor's arguments, is anomalib's, so the
catalog's settings, checkpoints and scores mean the same thing.
"""

from __future__ import annotations

import logging

import torch
from anomalib.models import Patchcore as AnomalibPatchcore

from viadk8s.models.components.coreset import sample_coreset

log = logging.getLogger(__name__)


class Patchcore(AnomalibPatchcore):
    """anomalib's PatchCore whose memory bank is chosen by our exact k-centre-greedy."""

    def fit(self) -> None:
        """The memory bank: the coreset of every training patch embedding, on the embeddings' device."""
        model = self.model
        if not model.embedding_store:
            raise ValueError("PatchCore saw no training batch: the embedding store is empty, there is no memory bank to build")
        embedding = torch.vstack(model.embedding_store)
        model.embedding_store.clear()
        log.info("selecting a %.3g coreset of %d patch embeddings", self.coreset_sampling_ratio, len(embedding))
        model.memory_bank = sample_coreset(embedding, self.coreset_sampling_ratio)
