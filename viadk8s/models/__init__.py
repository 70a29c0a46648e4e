"""The paper's models that anomalib does not ship, laid out like anomalib's own.

Each model is one folder, ``viadk8s/models/<name>/``: ``torch_model.py`` (the network, plain torch),
``lightning_model.py`` (an :class:`anomalib.models.components.AnomalibModule`: training step,
optimizers, pre/post-processing, evaluator) and a README stating our settings and where they differ
from the paper or its official code. The catalog names the class
(``model_class: viadk8s.models.<name>:<Class>``) and the worker builds it exactly like anomalib's models:

    >>> from anomalib.engine import Engine
    >>> from viadk8s.models.msflow import Msflow
    >>> model = Msflow(pre_trained=False)
    >>> Engine(max_epochs=100).fit(model, datamodule=datamodule)  # doctest: +SKIP

What every model shares (the Lightning base, the balanced-batches interface, DevNet's and DRA's common
parts) is in ``viadk8s/models/components/``; no model imports another.
"""
