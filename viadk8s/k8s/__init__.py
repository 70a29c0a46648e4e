"""The Kubernetes backend: one ``batch/v1`` Job per run, rendered from Jinja templates.

``settings`` (the ``cluster:`` section of viadk8s.yaml) is imported by the config; ``render``
turns runs into manifests without a cluster; ``client`` and ``jobs`` talk to the API server.
"""
