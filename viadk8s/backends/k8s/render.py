"""Run specs -> Kubernetes manifests, from the Jinja templates in ``templates/``.

Safety: undefined template variables are errors (StrictUndefined); every ``{{ expression }}``
must pass through the ``json`` filter, which emits a JSON scalar or flow collection (valid YAML)
with every non-printable or non-ASCII character escaped, and the environment's ``finalize`` hook
refuses any other output. Each rendered document is parsed back and its user-derived fields are
compared with what was meant, so a value cannot change a document's structure unnoticed.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import jinja2
import yaml

from viadk8s import __version__
from viadk8s.backends import pack_key
from viadk8s.cluster_config import ClusterSettings
from viadk8s.config import Config
from viadk8s.errors import SpecError, Viadk8sError
from viadk8s.plan import Plan
from viadk8s.spec import RunSpec
from viadk8s.worker.env import worker_env
from viadk8s.worker.pack import specs_json

TEMPLATES = Path(__file__).parent / "templates"
#: The image's non-root user (Dockerfile); the pod runs as it.
UID = 10001
#: The worker's exit code for invalid input: the Job fails at once instead of retrying.
EXIT_INVALID = SpecError.exit_code
SPEC_ANNOTATION = "viadk8s.io/spec"
LABEL_PREFIX = "viadk8s.io/"
RUN_KEY_LABEL = f"{LABEL_PREFIX}run-key"
PACK_LABEL = f"{LABEL_PREFIX}pack"  # a pack's Job and pod, instead of RUN_KEY_LABEL
RUN_KEYS_ANNOTATION = f"{LABEL_PREFIX}run-keys"  # a pack's runs, comma-separated
KUEUE_QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
#: Selects every worker Job this tool created, across sweeps.
WORKER_SELECTOR = "app.kubernetes.io/managed-by=viadk8s,app.kubernetes.io/component=worker"
PATHS = {
    "spec_dir": "/etc/viadk8s/spec",
    "spec_file": "spec.json",
    "config_dir": "/etc/viadk8s/config",
    "tmp": "/tmp",
    "datasets": "/var/cache/viadk8s/datasets",
    "weights": "/var/cache/viadk8s/weights",
}
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]{0,61})?[A-Za-z0-9])?$")
_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class RenderError(Viadk8sError):
    """A rendered manifest is not what was meant (a template bug): nothing is submitted."""


class Emitted(str):
    """Text that went through the ``json`` filter; the only output the templates may produce."""


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}"


def to_yaml_json(value: Any) -> Emitted:
    """A value as JSON that YAML reads back unchanged: quotes, newlines, ``: `` and ``{{`` stay data."""
    if isinstance(value, jinja2.Undefined):  # StrictUndefined must fail here too, not become a TypeError
        raise jinja2.UndefinedError(f"the template uses {value._undefined_name!r}, which it was not given")
    text = json.dumps(value, ensure_ascii=False)
    return Emitted(re.sub(r"[^\x20-\x7e]", _escape, text))


def _only_emitted(value: Any) -> Any:
    if not isinstance(value, Emitted):
        raise RenderError(f"template outputs {value!r} without the |json filter")
    return value


@cache
def environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES),
        undefined=jinja2.StrictUndefined,
        autoescape=False,  # YAML, not HTML: escaping is the json filter's job
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        finalize=_only_emitted,
    )
    env.filters["json"] = to_yaml_json
    return env


@dataclass(frozen=True)
class Manifest:
    kind: str
    name: str
    text: str
    body: dict[str, Any]


@dataclass(frozen=True)
class JobManifest(Manifest):
    runs: tuple[RunSpec, ...] = field(kw_only=True)  # one, or a pack that one pod runs in turn

    @property
    def spec(self) -> RunSpec:
        """The Job's run (a pack's first)."""
        return self.runs[0]


@dataclass
class RenderedSweep:
    namespace: str
    config_map: Manifest
    jobs: list[JobManifest]

    def write(self, out: Path) -> list[Path]:
        """One file per Job, plus the sweep's ConfigMap; ``kubectl apply -f OUT`` works too."""
        out.mkdir(parents=True, exist_ok=True)
        written = []
        for manifest in [self.config_map, *self.jobs]:
            path = out / f"{manifest.name}.yaml"
            path.write_text(manifest.text)
            written.append(path)
        return written


def label_value(text: str) -> str:
    """``text`` if it is a valid label value, else a sanitized form with a hash that keeps it unique."""
    if _LABEL_VALUE.match(text) and len(text) <= 63:
        return text
    cleaned = re.sub(r"[^A-Za-z0-9_.-]+", "-", text)[:50].strip("-_.")
    digest = hashlib.sha256(text.encode()).hexdigest()[:8]
    return f"{cleaned}-{digest}" if cleaned else f"x-{digest}"


def _runs(runs: RunSpec | Sequence[RunSpec]) -> list[RunSpec]:
    return [runs] if isinstance(runs, RunSpec) else list(runs)


def job_key(runs: RunSpec | Sequence[RunSpec]) -> str:
    """The run key of a one-run Job, the pack key (from its runs' keys) of a pack: 16 hex digits."""
    specs = _runs(runs)
    return specs[0].run_key if len(specs) == 1 else pack_key(specs)


def job_name(runs: RunSpec | Sequence[RunSpec]) -> str:
    """Sweep id (<= 40 chars, DNS-1123) + the 16-hex run or pack key: a unique DNS-1123 label <= 57
    chars, the same whenever the same runs are submitted together."""
    return f"{_runs(runs)[0].sweep}-{job_key(runs)}"


def config_map_name(sweep_id: str) -> str:
    """Apart from the chart's ``RELEASE-config``: cancelling a sweep never touches it."""
    return f"viadk8s-sweep-{sweep_id}"


def sweep_labels(sweep_id: str, experiment: str) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": "viadk8s",
        "app.kubernetes.io/instance": sweep_id,
        "app.kubernetes.io/version": __version__,
        "app.kubernetes.io/part-of": "viadk8s",
        "app.kubernetes.io/managed-by": "viadk8s",
        f"{LABEL_PREFIX}sweep": sweep_id,
        f"{LABEL_PREFIX}experiment": label_value(experiment),
    }


def run_labels(runs: RunSpec | Sequence[RunSpec]) -> dict[str, str]:
    """A pack (grouped by model and dataset) is labelled with its pack key instead of a run key."""
    specs = _runs(runs)
    spec = specs[0]
    return {
        **sweep_labels(spec.sweep, spec.experiment),
        "app.kubernetes.io/component": "worker",
        f"{LABEL_PREFIX}model": label_value(spec.model),
        f"{LABEL_PREFIX}dataset": label_value(spec.dataset),
        (RUN_KEY_LABEL if len(specs) == 1 else PACK_LABEL): job_key(specs),
    }


def run_keys(metadata: Any) -> list[str]:
    """The run keys of a worker Job or pod (its ``metadata``): a pack's from its annotation."""
    labels, annotations = metadata.labels or {}, metadata.annotations or {}
    if PACK_LABEL in labels:
        return annotations.get(RUN_KEYS_ANNOTATION, "").split(",")
    return [labels[RUN_KEY_LABEL]] if RUN_KEY_LABEL in labels else []


def pod_environment(settings: ClusterSettings) -> dict[str, str]:
    """Plain (non-secret) environment of a worker container."""
    env = {
        "VIADK8S_CONFIG": f"{PATHS['config_dir']}/viadk8s.yaml",
        "VIADK8S_CACHE": PATHS["datasets"],
        "VIADK8S_WEIGHTS_DIR": PATHS["weights"],
        "HOME": PATHS["tmp"],
        "MPLCONFIGDIR": f"{PATHS['tmp']}/matplotlib",
        **worker_env(settings.resources.threads),
        "HF_HUB_OFFLINE": "1",  # pods read staged weights; never the submitter's opt-in to downloads
    }
    if settings.gpu.count == 0:
        env["NVIDIA_VISIBLE_DEVICES"] = "void"  # a CPU-only run must not see a node's GPUs
    return env


#: Config keys the pod sets itself (cache paths by env) or never needs (the cluster section).
POD_OWN_KEYS = {"store", "cluster", "weights_dir", "cache_dir"}


def pod_config(config: Config) -> dict[str, Any]:
    """The viadk8s.yaml of the pods: the submitter's store (as a URI), MLflow, S3 and dataset settings."""
    data = config.model_dump(mode="json", exclude=POD_OWN_KEYS, exclude_defaults=True)
    return {"store": config.store_uri, **data}


def _parse(text: str, what: str) -> dict[str, Any]:
    try:
        docs = [doc for doc in yaml.load_all(text, Loader=_Loader) if doc is not None]
    except yaml.YAMLError as err:
        raise RenderError(f"{what}: the rendered text is not valid YAML ({err})") from None
    if len(docs) != 1 or not isinstance(docs[0], dict):
        raise RenderError(f"{what}: rendered {len(docs)} documents, expected one mapping")
    return docs[0]


def _check(body: dict[str, Any], what: str, expected: Sequence[tuple[str, Any]]) -> None:
    """Each dotted path of the parsed document must hold exactly the intended value."""
    for path, want in expected:
        node: Any = body
        for part in path.split("."):
            if isinstance(node, list) and part.isdigit() and int(part) < len(node):
                node = node[int(part)]
            else:
                node = node.get(part) if isinstance(node, dict) else None
        if node != want:
            raise RenderError(f"{what}: {path} is {node!r} after rendering, expected {want!r}")


def render_job(runs: RunSpec | Sequence[RunSpec], settings: ClusterSettings, namespace: str) -> JobManifest:
    """One run's Job, or a pack's (its pod runs them in turn), parsed back and checked."""
    specs = _runs(runs)
    name = job_name(specs)
    labels = run_labels(specs)
    job_labels = {**labels, **({KUEUE_QUEUE_LABEL: settings.queue} if settings.queue else {})}
    spec_json = specs_json(specs)
    keys = {RUN_KEYS_ANNOTATION: ",".join(s.run_key for s in specs)} if len(specs) > 1 else {}
    job_annotations = {"viadk8s.io/run-name": ", ".join(s.run_name for s in specs), **keys}
    pod_annotations = {SPEC_ANNOTATION: spec_json, **keys}
    env = pod_environment(settings)
    tolerations = [t.manifest() for t in settings.scheduling.tolerations]
    command = ["viadk8s", "worker", "--spec", f"{PATHS['spec_dir']}/{PATHS['spec_file']}"]
    text = (
        environment()
        .get_template("job.yaml.j2")
        .render(
            name=name,
            namespace=namespace,
            s=settings,
            job_labels=job_labels,
            job_annotations=job_annotations,
            pod_labels=labels,
            pod_annotations=pod_annotations,
            env=env,
            tolerations=tolerations,
            command=command,
            paths=PATHS,
            config_map=config_map_name(specs[0].sweep),
            uid=UID,
            exit_invalid=EXIT_INVALID,
        )
    )
    what = f"Job {name}"
    body = _parse(text, what)
    pod = "spec.template.spec"
    container = f"{pod}.containers.0"
    _check(
        body,
        what,
        [
            ("apiVersion", "batch/v1"),
            ("kind", "Job"),
            ("metadata.name", name),
            ("metadata.namespace", namespace),
            ("metadata.labels", job_labels),
            ("metadata.annotations", job_annotations),
            ("spec.template.metadata.labels", labels),
            ("spec.template.metadata.annotations", pod_annotations),
            (f"{pod}.nodeSelector", settings.scheduling.node_selector or None),
            (f"{pod}.tolerations", tolerations or None),
            (f"{pod}.affinity", settings.scheduling.affinity or None),
            (f"{container}.image", settings.image),
            (f"{container}.command", command),
        ],
    )
    rendered_env = {e["name"]: e.get("value") for e in body["spec"]["template"]["spec"]["containers"][0]["env"]}
    if {k: v for k, v in rendered_env.items() if k in env} != env:
        raise RenderError(f"{what}: the container environment changed in rendering")
    return JobManifest(kind="Job", name=name, text=text, body=body, runs=tuple(specs))


def render_config_map(config: Config, sweep_id: str, experiment: str, namespace: str) -> Manifest:
    """The sweep's ConfigMap holding the pods' viadk8s.yaml."""
    name = config_map_name(sweep_id)
    labels = sweep_labels(sweep_id, experiment)
    config_text = yaml.safe_dump(pod_config(config), sort_keys=True)
    text = (
        environment()
        .get_template("configmap.yaml.j2")
        .render(
            name=name,
            namespace=namespace,
            labels=labels,
            config_text=config_text,
        )
    )
    what = f"ConfigMap {name}"
    body = _parse(text, what)
    _check(
        body,
        what,
        [
            ("apiVersion", "v1"),
            ("kind", "ConfigMap"),
            ("metadata.name", name),
            ("metadata.namespace", namespace),
            ("metadata.labels", labels),
            ("data", {"viadk8s.yaml": config_text}),
        ],
    )
    return Manifest(kind="ConfigMap", name=name, text=text, body=body)


def render_sweep(
    planned: Plan, config: Config, namespace: str, packs: Sequence[Sequence[RunSpec]] | None = None
) -> RenderedSweep:
    """The ConfigMap and one Job per run of the sweep, or one per pack of ``packs``
    (:func:`viadk8s.backends.pack`; an empty ``packs``, nothing left to run, renders no Job)."""
    sweep = planned.sweep
    groups = [[spec] for spec in sweep.runs] if packs is None else packs
    return RenderedSweep(
        namespace=namespace,
        config_map=render_config_map(config, sweep.sweep_id, sweep.experiment, namespace),
        jobs=[render_job(runs, config.cluster, namespace) for runs in groups],
    )
