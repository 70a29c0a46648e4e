"""Reach the Kubernetes API server the way kubectl does, and turn its failures into one line.

Config: ``$KUBECONFIG`` (several files joined by ':') or ``~/.kube/config``, with ``--context``;
without a kubeconfig, the in-cluster service account (a CronJob pod). Namespace: ``--namespace``
/ ``$VIADK8S_NAMESPACE`` / ``cluster.namespace``, else the context's, else the pod's, else default.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import urllib3
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException
from kubernetes.config import ConfigException

from viadk8s.cluster_config import ClusterSettings
from viadk8s.errors import InfraError, SpecError, one_of

IN_CLUSTER_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
#: (connect, read) seconds per API call: an unreachable server fails fast instead of hanging.
TIMEOUT = (5.0, 60.0)
T = TypeVar("T")


def kubeconfig_paths() -> list[Path]:
    """The kubeconfig files that exist, in kubectl's order."""
    raw = os.environ.get("KUBECONFIG")
    paths = [Path(p).expanduser() for p in raw.split(os.pathsep) if p] if raw else [Path.home() / ".kube" / "config"]
    return [p for p in paths if p.is_file()]


def _joined(paths: list[Path]) -> str:
    return os.pathsep.join(str(p) for p in paths)


def _in_cluster() -> bool:
    return bool(os.environ.get("KUBERNETES_SERVICE_HOST"))


def _contexts(paths: list[Path]) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    try:
        contexts, current = config.list_kube_config_contexts(config_file=_joined(paths))
    except (ConfigException, OSError, ValueError, TypeError) as err:
        raise InfraError(f"kubeconfig {_joined(paths)}: {str(err).splitlines()[0] if str(err) else type(err).__name__}") from None
    return contexts or [], current


def _context(settings: ClusterSettings, paths: list[Path]) -> dict[str, Any] | None:
    contexts, current = _contexts(paths)
    if settings.context is None:
        return current
    for context in contexts:
        if context.get("name") == settings.context:
            return context
    raise one_of("kube context", settings.context, [c.get("name", "?") for c in contexts])


def resolve_namespace(settings: ClusterSettings) -> str:
    """The namespace Jobs go to; reading a kubeconfig here never contacts the cluster."""
    if settings.namespace:
        return settings.namespace
    paths = kubeconfig_paths()
    if paths:
        context = _context(settings, paths) or {}
        return (context.get("context") or {}).get("namespace") or "default"
    if _in_cluster() and IN_CLUSTER_NAMESPACE.is_file():
        return IN_CLUSTER_NAMESPACE.read_text().strip()
    return "default"


def _unreachable_reason(err: BaseException) -> str:
    text = str(getattr(err, "reason", None) or err)
    found = re.search(r"\[Errno -?\d+\] ([^'\")]+)", text)
    return found.group(1).strip() if found else type(getattr(err, "reason", None) or err).__name__


def _api_message(err: ApiException) -> str:
    try:
        message = json.loads(err.body or "{}").get("message")
    except (ValueError, AttributeError):
        message = None
    return (message or err.reason or f"HTTP {err.status}").splitlines()[0]


@dataclass
class Cluster:
    """A connected API client and the namespace this command works in."""

    api: client.ApiClient
    namespace: str
    host: str

    @property
    def batch(self) -> client.BatchV1Api:
        return client.BatchV1Api(self.api)

    @property
    def core(self) -> client.CoreV1Api:
        return client.CoreV1Api(self.api)

    def call(self, what: str, method: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """One API call with timeouts; failures become a one-line error (exit 2 or 3)."""
        try:
            return self._invoke(method, *args, **kwargs)
        except ApiException as err:
            raise self._error(what, err) from None

    def attempt(self, expected: int, what: str, method: Callable[..., object], *args: Any, **kwargs: Any) -> bool:
        """Like :meth:`call`, but the ``expected`` HTTP status (409 exists, 404 gone) returns False."""
        try:
            self._invoke(method, *args, **kwargs)
        except ApiException as err:
            if err.status == expected:
                return False
            raise self._error(what, err) from None
        return True

    def _invoke(self, method: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        try:
            return method(*args, _request_timeout=TIMEOUT, **kwargs)
        except (urllib3.exceptions.HTTPError, OSError) as err:
            raise InfraError(f"cannot reach the Kubernetes API server at {self.host}: {_unreachable_reason(err)}") from None

    def _error(self, what: str, err: ApiException) -> Exception:
        message = f"{what} in namespace {self.namespace!r}: {_api_message(err)}"
        if err.status in (400, 422):
            return SpecError(message)
        if err.status in (401, 403):
            return InfraError(f"{message} (check the credentials and RBAC of the kube context)")
        return InfraError(message)


def connect(settings: ClusterSettings) -> Cluster:
    """A client for the configured cluster; no cluster configured is a one-line error."""
    configuration = client.Configuration()
    paths = kubeconfig_paths()
    try:
        if paths:
            _context(settings, paths)  # an unknown --context names the known ones
            config.load_kube_config(
                config_file=_joined(paths), context=settings.context, client_configuration=configuration, persist_config=False
            )
        elif _in_cluster():
            config.load_incluster_config(client_configuration=configuration)
        else:
            raise InfraError("no Kubernetes cluster configured: no kubeconfig ($KUBECONFIG or ~/.kube/config), not in a pod")
    except ConfigException as err:
        raise InfraError(f"kubeconfig: {str(err).splitlines()[0]}") from None
    return Cluster(client.ApiClient(configuration), resolve_namespace(settings), configuration.host)
