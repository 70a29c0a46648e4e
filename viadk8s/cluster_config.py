"""The ``cluster:`` section of viadk8s.yaml: what a run's Job looks like on a GPU cluster.

Every string that reaches a manifest is checked here against the Kubernetes syntax of its field
(names, label keys and values, quantities, image references), so a typo is one error line naming
the key's path instead of a rejected Job hundreds of runs later. Tolerations and affinity use the
Kubernetes field names, as users copy them from their cluster's docs.

It lives beside :mod:`viadk8s.config` (which validates it as the ``cluster:`` key), not in
:mod:`viadk8s.backends.k8s`: the config is read by every layer, and a lower layer never imports a
backend. It needs pydantic only, not the Kubernetes client.
"""

from __future__ import annotations

import os
import re
from decimal import Decimal
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, model_validator

from viadk8s import __version__
from viadk8s.errors import SpecError, validation_message

DEFAULT_IMAGE = f"ghcr.io/viadk8s/viadk8s:{__version__}"

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_DNS_SUBDOMAIN = re.compile(r"^(?=.{1,253}$)[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]{0,61})?[A-Za-z0-9])?$")
_QUALIFIED_NAME = re.compile(r"^([a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$")
_IMAGE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/:@-]{0,254}$")
_PATH = re.compile(r"^/[A-Za-z0-9._/-]*$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_SECRET_KEY = re.compile(r"^[-._A-Za-z0-9]{1,253}$")
_QUANTITY = re.compile(r"^(?P<number>[0-9]+(\.[0-9]+)?)(?P<unit>m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?$")
_UNITS = {
    "": 1,
    "m": Decimal("0.001"),
    "k": 10**3,
    "M": 10**6,
    "G": 10**9,
    "T": 10**12,
    "P": 10**15,
    "E": 10**18,
    "Ki": 2**10,
    "Mi": 2**20,
    "Gi": 2**30,
    "Ti": 2**40,
    "Pi": 2**50,
    "Ei": 2**60,
}

#: Environment variables that override the file (CLI flags override them in turn).
ENV = {"namespace": "VIADK8S_NAMESPACE", "context": "VIADK8S_CONTEXT", "image": "VIADK8S_IMAGE"}


def _matching(pattern: re.Pattern[str], allowed: str) -> AfterValidator:
    def check(value: str) -> str:
        if not pattern.match(value):
            raise ValueError(f"{value!r} is not allowed; allowed: {allowed}")
        return value

    return AfterValidator(check)


def _quantity(value: object) -> str:
    """Kubernetes quantities as strings (the client wants "4", not 4)."""
    text = str(value) if isinstance(value, int | float) and not isinstance(value, bool) else value
    if not isinstance(text, str) or not _QUANTITY.match(text):
        raise ValueError(f"{value!r} is not a Kubernetes quantity; allowed: a number with an optional unit, e.g. 4, 500m, 16Gi")
    return text


def quantity_value(text: str) -> Decimal:
    """The number a quantity stands for, to compare requests with limits."""
    found = _QUANTITY.match(text)
    if not found:
        raise ValueError(f"{text!r} is not a Kubernetes quantity")
    return Decimal(found["number"]) * _UNITS[found["unit"] or ""]


Quantity = Annotated[str, BeforeValidator(_quantity)]
DnsLabel = Annotated[str, _matching(_DNS_LABEL, "lowercase letters, digits and '-', at most 63 (DNS-1123 label)")]
DnsName = Annotated[str, _matching(_DNS_SUBDOMAIN, "lowercase letters, digits, '-' and '.' (DNS-1123 subdomain)")]
LabelKey = Annotated[str, _matching(_QUALIFIED_NAME, "a label key such as 'nvidia.com/gpu.product' or 'pool'")]
LabelValue = Annotated[str, _matching(_LABEL_VALUE, "at most 63 letters, digits, '-', '_' or '.', alphanumeric at both ends")]
EnvName = Annotated[str, _matching(_ENV_NAME, "an environment variable name such as AWS_ACCESS_KEY_ID")]
Image = Annotated[str, _matching(_IMAGE, "an image reference such as registry.example.com/viadk8s:0.1.0")]


class _Settings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Gpu(_Settings):
    """GPUs per run; ``resource`` may be a MIG profile such as ``nvidia.com/mig-1g.10gb``."""

    count: int = Field(default=1, ge=0, le=16)
    resource: Annotated[str, _matching(_QUALIFIED_NAME, "DOMAIN/NAME such as nvidia.com/mig-1g.10gb")] = "nvidia.com/gpu"

    @model_validator(mode="after")
    def _extended(self) -> Gpu:
        domain = self.resource.split("/", 1)[0] if "/" in self.resource else ""
        if not domain or domain.endswith("kubernetes.io"):
            raise ValueError(f"resource {self.resource!r} is not an extended resource; allowed: DOMAIN/NAME, e.g. nvidia.com/gpu")
        return self


class ResourceList(_Settings):
    cpu: Quantity
    memory: Quantity


class Resources(_Settings):
    """CPU and memory of the worker container; ``/dev/shm`` counts against the memory limit."""

    requests: ResourceList = ResourceList(cpu="4", memory="24Gi")
    limits: ResourceList = ResourceList(cpu="8", memory="32Gi")

    @model_validator(mode="after")
    def _requests_within_limits(self) -> Resources:
        for name in ("cpu", "memory"):
            request, limit = getattr(self.requests, name), getattr(self.limits, name)
            if quantity_value(request) > quantity_value(limit):
                raise ValueError(f"requests.{name} {request!r} is above limits.{name} {limit!r}; allowed: up to the limit")
        return self

    @property
    def threads(self) -> int:
        """Torch threads: the CPU limit, not the node's core count that torch would see."""
        return max(1, int(quantity_value(self.limits.cpu)))


class Toleration(_Settings):
    key: LabelKey | None = None
    operator: Literal["Equal", "Exists"] = "Equal"
    value: LabelValue | None = None
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None
    tolerationSeconds: int | None = Field(default=None, ge=0)  # the Kubernetes field name

    def manifest(self) -> dict[str, Any]:
        return self.model_dump(exclude_none=True)


class Scheduling(_Settings):
    node_selector: dict[LabelKey, LabelValue] = {}
    tolerations: list[Toleration] = []
    affinity: dict[Literal["nodeAffinity", "podAffinity", "podAntiAffinity"], dict[str, Any]] = {}
    runtime_class_name: DnsName | None = None
    priority_class_name: DnsName | None = None


class Volume(_Settings):
    """A cache volume: ``emptyDir`` (per pod, the default), ``pvc`` (shared) or ``hostPath`` (per node).

    ``hostPath`` is outside the Pod Security "restricted" (and "baseline") profile: a namespace
    that enforces it rejects such pods; prefer a PVC.
    """

    type: Literal["emptyDir", "pvc", "hostPath"] = "emptyDir"
    size_limit: Quantity | None = None
    claim_name: DnsName | None = None
    path: str | None = None
    read_only: bool = False

    @model_validator(mode="after")
    def _one_source(self) -> Volume:
        needs = {"pvc": "claim_name", "hostPath": "path"}
        for kind, field in needs.items():
            given = getattr(self, field) is not None
            if given != (self.type == kind):
                raise ValueError(f"{field} goes with type {kind!r} only (type is {self.type!r})")
        if self.size_limit is not None and self.type != "emptyDir":
            raise ValueError(f"size_limit goes with type 'emptyDir' only (type is {self.type!r})")
        if self.path is not None and not _PATH.match(self.path):
            raise ValueError(f"path {self.path!r} is not allowed; allowed: an absolute path of letters, digits and ._/-")
        return self


class SecretKey(_Settings):
    name: DnsName
    key: Annotated[str, _matching(_SECRET_KEY, "letters, digits, '-', '_' or '.'")]
    optional: bool = False


class Secrets(_Settings):
    """Credentials reach pods only as references to Secrets, never as values in a manifest."""

    env_from: list[DnsName] = []
    env: dict[EnvName, SecretKey] = {}


class JobSettings(_Settings):
    backoff_limit: int = Field(default=3, ge=0, le=100)
    active_deadline_seconds: int | None = Field(default=3 * 24 * 3600, ge=60)
    ttl_seconds_after_finished: int | None = Field(default=7 * 24 * 3600, ge=0)


class PackSettings(_Settings):
    """``--pack``: which runs share one worker process (one pod), by the cost model's estimate
    (:mod:`viadk8s.cost`); a run it cannot estimate, or estimates longer, keeps its own."""

    short_s: float = Field(default=600, gt=0, description="runs estimated below this many seconds are packed")
    auto_s: float = Field(default=3600, gt=0, description="--pack auto: runs join a pack while its estimate stays within this")


class ClusterSettings(_Settings):
    """Where and how runs execute on Kubernetes; every field has a working default."""

    namespace: DnsLabel | None = None
    context: str | None = None
    image: Image = DEFAULT_IMAGE
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] = "IfNotPresent"
    image_pull_secrets: list[DnsName] = []
    service_account: DnsName | None = None
    gpu: Gpu = Gpu()
    resources: Resources = Resources()
    shm_size: Quantity = "8Gi"
    dataloader_workers: int | None = Field(
        default=None, ge=0, le=256, description="DataLoader workers per run; unset: the pod's CPU limit minus one"
    )
    scheduling: Scheduling = Scheduling()
    queue: DnsName | None = Field(default=None, description="Kueue LocalQueue: Jobs are created suspended and labelled for it")
    host_network: bool = Field(
        default=False,
        description="pods share the node's network: only for single-node clusters without a pod network "
        "(scripts/kube.sh), where S3 and MLflow listen on the node's 127.0.0.1; outside the restricted profile",
    )
    cache: Volume = Volume()
    weights: Volume = Volume()
    secrets: Secrets = Secrets()
    job: JobSettings = JobSettings()
    pack: PackSettings = PackSettings()


def apply_env(data: dict[str, Any]) -> None:
    """Put ``VIADK8S_NAMESPACE`` / ``_CONTEXT`` / ``_IMAGE`` into the ``cluster`` mapping of raw config data."""
    chosen = {key: os.environ[var] for key, var in ENV.items() if os.environ.get(var)}
    if not chosen:
        return
    section = data.setdefault("cluster", {})
    if isinstance(section, dict):  # a wrong type is reported by the config's validation
        section.update(chosen)


def with_overrides(settings: ClusterSettings, **overrides: Any) -> ClusterSettings:
    """Apply CLI flags (``None`` means not given) on top of the file and environment."""
    chosen = {k: v for k, v in overrides.items() if v is not None}
    if not chosen:
        return settings
    try:
        return ClusterSettings.model_validate({**settings.model_dump(exclude_unset=True), **chosen})
    except ValidationError as err:
        raise SpecError(f"cluster.{validation_message(err)}") from None
