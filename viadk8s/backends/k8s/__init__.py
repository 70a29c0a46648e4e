"""The Kubernetes backend: one ``batch/v1`` Job per run (or per pack of short runs), rendered
from the Jinja templates in ``templates/``.

``render`` turns runs into manifests without a cluster; ``client`` and ``jobs`` talk to the API
server; ``view`` is what ``submit`` and ``status`` print. The ``cluster:`` settings these read are
:mod:`viadk8s.cluster_config`: part of the config schema, which every layer loads, so it stays
beside :mod:`viadk8s.config` rather than here (a config importing a backend would point upwards).
"""
