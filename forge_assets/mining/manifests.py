"""Kubernetes-family YAML (Flux, Kustomize, Helm, Argo, plain Kubernetes) as instruction samples.

Each YAML document of a file that is a resource (``apiVersion`` and ``kind``, or a Helm
``Chart.yaml``, a chart's ``values.yaml``, a ``kustomization.yaml`` without ``apiVersion``) becomes
one :class:`Resource`: its family, kind, name, namespace, its own text and a few salient facts read
from it (a HelmRelease's chart, version, source and values keys; a Deployment's images, replicas
and ports...). :func:`manifest_samples` turns each named resource into "Write the Flux HelmRelease
`podinfo` ...: chart `podinfo` from the HelmRepository `podinfo`, reconciled every 50m ..." ->
the resource's YAML in a ``yaml`` fence.

Every fact in a prompt is a scalar copied from the document (YAML is read with PyYAML's
``BaseLoader``, which constructs nothing but str, list and dict and resolves no types, so
``version: 1.10`` stays "1.10"), and a fact whose text does not occur in the answer is left out:
the answer is learnable from the prompt. Documents with Helm/Go templates (``{{ }}``) and
documents that do not parse give no resource; nothing here raises on bad input.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Iterable
from dataclasses import dataclass, field

import yaml

from forge_assets.mining.instruct import chat_text, code_block
from forge_assets.scrub import scrub_path

MAX_SAMPLES_PER_FILE = 8
MAX_DOC_CHARS = 16_000  # a longer document (a generated CRD bundle, a vendored chart's values) gives no sample
MAX_LISTED = 8  # items of a list fact named in a prompt; the rest are counted

FAMILY_NAMES = {"flux": "Flux", "kustomize": "Kustomize", "helm": "Helm", "argo": "Argo", "kubernetes": "Kubernetes"}
# Kinds that never become samples: credentials (a Secret's data, a kubeconfig) and containers of other resources.
_SKIPPED_KINDS = {("kubernetes", "Secret"), ("kubernetes", "Config"), ("kubernetes", "List"), ("other", "SealedSecret")}
_KUBE_GROUPS = {"apps", "batch", "autoscaling", "policy", "extensions"}
_KUSTOMIZATION_FILES = {"kustomization.yaml", "kustomization.yml", "Kustomization"}
_CHART_FILES = {"Chart.yaml", "Chart.yml"}
_VALUES_FILES = {"values.yaml", "values.yml"}
_CHART_SEGMENTS = {"chart", "charts", "helm"}
_WORKLOADS = {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job", "CronJob", "Pod", "Rollout"}

_Loader = getattr(yaml, "CBaseLoader", yaml.BaseLoader)
_DOC_MARKER = re.compile(r"^(?:---|\.\.\.)(?=[ \t]|$)(?P<rest>.*)$", re.M)


@dataclass(frozen=True)
class Resource:
    """One YAML document of a file that is a Kubernetes-family resource."""

    family: str  # flux | kustomize | helm | argo | kubernetes | other
    kind: str  # HelmRelease, Kustomization, Chart (a Chart.yaml), Values (a chart's values.yaml) ...
    api_version: str  # "" for a kustomization.yaml or values.yaml without one
    name: str  # metadata.name (or generateName; a chart's name), "" when absent
    namespace: str  # metadata.namespace, "" when absent
    text: str  # the document's own YAML text (no "---" marker line)
    start: int  # the document's span in the file's text
    end: int
    facts: tuple[tuple[str, str], ...] = ()  # (key, value): each value a scalar copied from text
    phrases: tuple[str, ...] = ()  # the facts as prompt phrases ("chart `podinfo`", "reconciled every `50m`")
    data: dict = field(default_factory=dict, compare=False, repr=False)  # the parsed document (strings only)

    @property
    def label(self) -> str:
        """``family/kind``: "flux/HelmRelease"."""
        return f"{self.family}/{self.kind}"


def chart_dirs(paths: Iterable[str]) -> set[str]:
    """The folders among a repository's file paths that hold a Helm ``Chart.yaml``."""
    return {posixpath.dirname(p) for p in paths if posixpath.basename(p) in _CHART_FILES}


def documents(text: str) -> list[tuple[int, int]]:
    """The (start, end) spans of a YAML stream's documents, split at ``---`` / ``...`` marker lines."""
    spans, start = [], 0
    for m in _DOC_MARKER.finditer(text):
        spans.append((start, m.start()))
        rest = m["rest"].strip()
        # "--- |" or "--- key: v": the document starts on the marker line itself.
        start = m.start() + 3 if m.group(0).startswith("---") and rest and not rest.startswith("#") else min(m.end() + 1, len(text))
    spans.append((start, len(text)))
    return [(s, e) for s, e in spans if _has_content(text[s:e])]


def _has_content(chunk: str) -> bool:
    return any(line.strip() and not line.lstrip().startswith(("#", "%")) for line in chunk.splitlines())


def _load(chunk: str):
    """One document parsed to str/list/dict, or None when it is templated or does not parse."""
    if "{{" in chunk:
        return None
    try:
        return yaml.load(chunk, Loader=_Loader)  # noqa: S506 - BaseLoader builds only str, list and dict
    except Exception:  # yaml.YAMLError, and anything a hostile document provokes in the parser
        return None


def _s(value) -> str:
    """A scalar as text; "" for a missing value, a list or a mapping."""
    return value.strip() if isinstance(value, str) else ""


def _get(data, *keys):
    for key in keys:
        if not isinstance(data, dict):
            return None
        data = data.get(key)
    return data


def _list(value) -> list:
    return value if isinstance(value, list) else []


def _dict(value) -> dict:
    return value if isinstance(value, dict) else {}


def family_of(api_version: str, kind: str, path: str = "") -> str:
    """The family of a resource from its apiVersion group (and the file name for kustomization.yaml)."""
    group = api_version.rpartition("/")[0] if "/" in api_version else ""
    if group.endswith(".fluxcd.io") or group == "fluxcd.controlplane.io":
        return "flux"
    if group == "kustomize.config.k8s.io" or (not api_version and posixpath.basename(path) in _KUSTOMIZATION_FILES):
        return "kustomize"
    if group == "argoproj.io":
        return "argo"
    if (api_version and not group) or group in _KUBE_GROUPS or group.endswith("k8s.io"):
        return "kubernetes"
    return "other"


def resources(text: str, path: str = "", chart_folders: Iterable[str] = ()) -> list[Resource]:
    """The resources of a YAML file's text, in file order.

    path (the file's path in its repository) recognises a Helm ``Chart.yaml``, a ``kustomization.yaml``
    without ``apiVersion`` and a chart's ``values.yaml``: one in a folder of chart_folders (see
    :func:`chart_dirs`), or under a folder named chart/charts/helm when chart_folders is empty.
    """
    base = posixpath.basename(path)
    folder = posixpath.dirname(path)
    out = []
    for start, end in documents(text):
        chunk = text[start:end]
        data = _load(chunk)
        if not isinstance(data, dict):
            continue
        api_version, kind = _s(data.get("apiVersion")), _s(data.get("kind"))
        metadata = _dict(data.get("metadata"))
        name = _s(metadata.get("name")) or _s(metadata.get("generateName"))
        namespace = _s(metadata.get("namespace"))
        if base in _CHART_FILES and api_version in ("v1", "v2") and not kind and _s(data.get("name")) and _s(data.get("version")):
            family, kind, name = "helm", "Chart", _s(data.get("name"))
        elif base in _VALUES_FILES and not api_version and not kind and _in_chart(folder, chart_folders):
            family, kind, name = "helm", "Values", posixpath.basename(folder) or "chart"
        elif not api_version and not kind and base in _KUSTOMIZATION_FILES and _is_kustomization(data):
            family, kind = "kustomize", "Kustomization"
        elif api_version and kind:
            family = family_of(api_version, kind, path)
        else:
            continue
        body = chunk.strip("\n").rstrip()
        facts = _Facts(body)
        _FACTS.get((family, kind), _FACTS.get((family, "*"), _no_facts))(data, facts)
        out.append(Resource(family, kind, api_version, name, namespace, body, start, end,
                            tuple(facts.facts), tuple(facts.phrases), data))
    return out


def _in_chart(folder: str, chart_folders: Iterable[str]) -> bool:
    chart_folders = set(chart_folders)
    if chart_folders:
        return folder in chart_folders
    return bool(_CHART_SEGMENTS & set(folder.lower().split("/")))


def _is_kustomization(data: dict) -> bool:
    return any(k in data for k in ("resources", "bases", "components", "patches", "patchesStrategicMerge",
                                   "patchesJson6902", "configMapGenerator", "secretGenerator", "images", "helmCharts"))


class _Facts:
    """Collects prompt phrases whose values all occur in the document's text."""

    def __init__(self, text: str):
        self.text = text
        self.facts: list[tuple[str, str]] = []
        self.phrases: list[str] = []

    def _ok(self, value: str) -> bool:
        return bool(value) and "`" not in value and "\n" not in value and len(value) <= 200 and value in self.text

    def add(self, template: str, **values) -> None:
        """A phrase like "chart {chart}" with each value backticked; dropped unless every value is in the text."""
        vals = {k: _s(v) for k, v in values.items()}
        if not all(self._ok(v) for v in vals.values()):
            return
        self.facts.extend(vals.items())
        self.phrases.append(template.format(**{k: f"`{v}`" for k, v in vals.items()}))

    def add_bare(self, template: str, key: str, value) -> None:
        """A phrase naming a value without backticks (a kind: "from the HelmRepository ...")."""
        value = _s(value)
        if self._ok(value):
            self.facts.append((key, value))
            self.phrases.append(template.format(value))

    def add_list(self, template: str, key: str, values: Iterable) -> None:
        """A phrase listing values ("images `a`, `b`"), the first MAX_LISTED named and the rest counted."""
        seen: list[str] = []
        for v in values:
            v = _s(v)
            if self._ok(v) and v not in seen:
                seen.append(v)
        if not seen:
            return
        shown = seen[:MAX_LISTED]
        self.facts.extend((key, v) for v in shown)
        listed = ", ".join(f"`{v}`" for v in shown) + (f" and {len(seen) - len(shown)} more" if len(seen) > len(shown) else "")
        self.phrases.append(template.format(listed))

    def count(self, n: int, one: str, many: str) -> None:
        """A count of list items ("with 2 patches"): not a value of the text, so no fact."""
        if n:
            self.phrases.append(f"with {n} {one if n == 1 else many}")

    def source(self, ref, word: str = "from", attach: bool = False) -> None:
        """A sourceRef / chartRef: "from the HelmRepository `podinfo`" (attach: joined to the phrase before)."""
        ref = _dict(ref)
        kind, name = _s(ref.get("kind")), _s(ref.get("name"))
        before = len(self.phrases)
        if kind and name and self._ok(kind) and self._ok(name):
            self.facts.extend([("source_kind", kind), ("source_name", name)])
            self.phrases.append(f"{word} the {kind} `{name}`")
        elif name:
            self.add(word + " {source_name}", source_name=name)
        if attach and before and len(self.phrases) > before:
            self.phrases[before - 1:] = [" ".join(self.phrases[before - 1:])]

    def interval(self, spec) -> None:
        self.add("reconciled every {interval}", interval=_get(spec, "interval"))

    def depends_on(self, spec) -> None:
        self.add_list("depending on {}", "depends_on", (_get(d, "name") if isinstance(d, dict) else d
                                                        for d in _list(_get(spec, "dependsOn"))))


def _no_facts(data: dict, f: _Facts) -> None:
    pass


def _helm_release(data: dict, f: _Facts) -> None:
    spec = _dict(data.get("spec"))
    chart = _dict(_get(spec, "chart", "spec"))
    before = len(f.phrases)
    f.add("chart {chart}", chart=chart.get("chart"))
    f.add("version {version}", version=chart.get("version"))
    if len(f.phrases) - before == 2:
        f.phrases[before:] = [" ".join(f.phrases[before:])]  # "chart `podinfo` version `6.x`"
    f.source(chart.get("sourceRef"), attach=bool(chart.get("chart") or chart.get("version")))
    f.source(spec.get("chartRef"), "chart from")
    f.interval(spec)
    f.add("installed into namespace {target_namespace}", target_namespace=spec.get("targetNamespace"))
    if _s(spec.get("releaseName")) != _s(_get(data, "metadata", "name")):
        f.add("released as {release_name}", release_name=spec.get("releaseName"))
    f.depends_on(spec)
    f.add_list("with values for {}", "values_key", _dict(spec.get("values")).keys())
    f.add_list("with values from {}", "values_from", (_get(v, "name") for v in _list(spec.get("valuesFrom"))))


def _flux_kustomization(data: dict, f: _Facts) -> None:
    spec = _dict(data.get("spec"))
    f.add("applying the path {path}", path=spec.get("path"))
    f.source(spec.get("sourceRef"))
    f.interval(spec)
    f.depends_on(spec)
    f.add("prune {prune}", prune=spec.get("prune"))
    f.add("wait {wait}", wait=spec.get("wait"))
    f.add("into namespace {target_namespace}", target_namespace=spec.get("targetNamespace"))
    f.count(len(_list(spec.get("patches"))), "patch", "patches")


def _flux_source(data: dict, f: _Facts) -> None:
    spec = _dict(data.get("spec"))
    f.add("from the URL {url}", url=spec.get("url"))
    f.add("of type {type}", type=spec.get("type"))
    ref = _dict(spec.get("ref"))
    for key in ("branch", "tag", "semver", "commit", "digest", "name"):
        f.add(f"at the {key} " + "{ref}", ref=ref.get(key))
    f.add("for the chart {chart}", chart=spec.get("chart"))  # a HelmChart
    f.add("version {version}", version=spec.get("version"))
    f.source(spec.get("sourceRef"))
    f.add("fetched every {interval}", interval=spec.get("interval"))
    f.add("with credentials from the secret {secret}", secret=_get(spec, "secretRef", "name"))


def _flux_image(data: dict, f: _Facts) -> None:
    spec = _dict(data.get("spec"))
    f.add("for the image {image}", image=spec.get("image"))  # ImageRepository
    f.add("following the ImageRepository {repository}", repository=_get(spec, "imageRepositoryRef", "name"))  # ImagePolicy
    for key in ("semver", "numerical", "alphabetical"):
        f.add(f"with a {key} policy " + "{range}", range=_get(spec, "policy", key, "range") or _get(spec, "policy", key, "order"))
    f.source(spec.get("sourceRef"))  # ImageUpdateAutomation
    f.add("checking out the branch {branch}", branch=_get(spec, "git", "checkout", "ref", "branch"))
    f.add("pushing to the branch {push}", push=_get(spec, "git", "push", "branch"))
    f.add("updating the path {path}", path=_get(spec, "update", "path"))
    f.interval(spec)


def _flux_other(data: dict, f: _Facts) -> None:
    spec = _dict(data.get("spec"))
    f.add_list("combining the sources {}", "source", (_get(x, "name") for x in _list(spec.get("sources"))))  # ArtifactGenerator
    f.add_list("producing the artifacts {}", "artifact", (_get(x, "name") for x in _list(spec.get("artifacts"))))
    f.source(spec.get("sourceRef"))
    f.interval(spec)
    f.depends_on(spec)


def _kustomize(data: dict, f: _Facts) -> None:
    f.add("namespace {namespace}", namespace=data.get("namespace"))
    f.add("name prefix {prefix}", prefix=data.get("namePrefix"))
    f.add_list("resources {}", "resource", list(_list(data.get("resources"))) + list(_list(data.get("bases"))))
    f.add_list("components {}", "component", _list(data.get("components")))
    f.count(sum(len(_list(data.get(k))) for k in ("patches", "patchesStrategicMerge", "patchesJson6902")), "patch", "patches")
    f.add_list("setting the images {}", "image", (_get(i, "name") for i in _list(data.get("images"))))
    f.add_list("generating the ConfigMaps {}", "config_map", (_get(g, "name") for g in _list(data.get("configMapGenerator"))))
    f.add_list("inflating the Helm charts {}", "helm_chart", (_get(c, "name") for c in _list(data.get("helmCharts"))))


def _chart(data: dict, f: _Facts) -> None:
    f.add("version {version}", version=data.get("version"))
    f.add("app version {app_version}", app_version=data.get("appVersion"))
    f.add("of type {type}", type=data.get("type"))
    f.add("described as {description}", description=data.get("description"))
    for d in [d for d in _list(data.get("dependencies")) if isinstance(d, dict)][:MAX_LISTED]:
        if _s(d.get("version")):
            f.add("depending on the chart {dependency} {dependency_version}", dependency=d.get("name"), dependency_version=d.get("version"))
        else:
            f.add("depending on the chart {dependency}", dependency=d.get("name"))


def _values(data: dict, f: _Facts) -> None:
    f.add_list("with settings for {}", "values_key", data.keys())
    f.add("image {image}", image=_get(data, "image", "repository"))
    f.add("tag {tag}", tag=_get(data, "image", "tag"))
    f.add("replicaCount {replicas}", replicas=data.get("replicaCount"))


def _pod_spec(data: dict) -> dict:
    spec = _dict(data.get("spec"))
    if data.get("kind") == "Pod":
        return spec
    if data.get("kind") == "CronJob":
        return _dict(_get(spec, "jobTemplate", "spec", "template", "spec"))
    return _dict(_get(spec, "template", "spec"))


def _workload(data: dict, f: _Facts) -> None:
    spec = _dict(data.get("spec"))
    f.add("on the schedule {schedule}", schedule=spec.get("schedule"))
    f.add("with {replicas} replicas", replicas=spec.get("replicas"))
    pod = _pod_spec(data)
    containers = [c for c in _list(pod.get("containers")) + _list(pod.get("initContainers")) if isinstance(c, dict)]
    f.add_list("running the images {}", "image", (c.get("image") for c in containers))
    f.add_list("exposing the ports {}", "port", (p.get("containerPort") for c in containers
                                                for p in _list(c.get("ports")) if isinstance(p, dict)))
    f.add("as the service account {account}", account=pod.get("serviceAccountName"))
    f.add("governed by the Service {service}", service=spec.get("serviceName"))
    strategy = _dict(spec.get("strategy"))
    f.add_list("with a {} rollout", "strategy", [k for k in ("canary", "blueGreen") if k in strategy] or [strategy.get("type")])


def _service(data: dict, f: _Facts) -> None:
    spec = _dict(data.get("spec"))
    f.add("of type {type}", type=spec.get("type"))
    ports = [p for p in _list(spec.get("ports")) if isinstance(p, dict)]
    f.add_list("on the ports {}", "port", (p.get("port") for p in ports))
    f.add_list("to the target ports {}", "target_port", (p.get("targetPort") for p in ports))
    f.add_list("selecting pods by {}", "selector", _dict(spec.get("selector")).keys())


def _config_map(data: dict, f: _Facts) -> None:
    f.add_list("with the keys {}", "key", list(_dict(data.get("data")).keys()) + list(_dict(data.get("binaryData")).keys()))


def _namespace(data: dict, f: _Facts) -> None:
    f.add_list("labelled {}", "label", _dict(_get(data, "metadata", "labels")).keys())


def _ingress(data: dict, f: _Facts) -> None:
    spec = _dict(data.get("spec"))
    f.add("with the ingress class {cls}", cls=spec.get("ingressClassName"))
    rules = [r for r in _list(spec.get("rules")) if isinstance(r, dict)]
    f.add_list("for the hosts {}", "host", (r.get("host") for r in rules))
    paths = [p for r in rules for p in _list(_get(r, "http", "paths")) if isinstance(p, dict)]
    f.add_list("routing to the services {}", "service", (_get(p, "backend", "service", "name") or _get(p, "backend", "serviceName")
                                                         for p in paths))


def _http_route(data: dict, f: _Facts) -> None:
    spec = _dict(data.get("spec"))
    f.add_list("attached to {}", "parent", (_get(p, "name") for p in _list(spec.get("parentRefs"))))
    f.add_list("for the hostnames {}", "hostname", _list(spec.get("hostnames")))
    f.add_list("routing to {}", "backend", (_get(b, "name") for r in _list(spec.get("rules")) for b in _list(_get(r, "backendRefs"))))


def _gateway(data: dict, f: _Facts) -> None:
    spec = _dict(data.get("spec"))
    f.add("of the class {cls}", cls=spec.get("gatewayClassName"))
    f.add("with the controller {controller}", controller=spec.get("controllerName"))  # a GatewayClass
    listeners = [x for x in _list(spec.get("listeners")) if isinstance(x, dict)]
    f.add_list("with the listeners {}", "listener", (x.get("name") for x in listeners))
    f.add_list("on the ports {}", "port", (x.get("port") for x in listeners))


def _hpa(data: dict, f: _Facts) -> None:
    spec = _dict(data.get("spec"))
    target = _dict(spec.get("scaleTargetRef"))
    f.source(target, "scaling")
    f.add("between {min} and {max} replicas", min=spec.get("minReplicas"), max=spec.get("maxReplicas"))


def _pvc(data: dict, f: _Facts) -> None:
    spec = _dict(data.get("spec"))
    f.add("requesting {storage}", storage=_get(spec, "resources", "requests", "storage"))
    f.add_list("with the access modes {}", "access_mode", _list(spec.get("accessModes")))
    f.add("of the storage class {cls}", cls=spec.get("storageClassName"))


def _rbac_role(data: dict, f: _Facts) -> None:
    rules = [r for r in _list(data.get("rules")) if isinstance(r, dict)]
    f.add_list("on the resources {}", "resource", (x for r in rules for x in _list(r.get("resources"))))
    f.add_list("allowing the verbs {}", "verb", (x for r in rules for x in _list(r.get("verbs"))))


def _rbac_binding(data: dict, f: _Facts) -> None:
    ref = _dict(data.get("roleRef"))
    f.source(ref, "granting")
    f.add_list("to {}", "subject", (_get(s, "name") for s in _list(data.get("subjects"))))


def _workflow(data: dict, f: _Facts) -> None:
    spec = _dict(data.get("spec"))
    if data.get("kind") == "CronWorkflow":
        f.add("on the schedule {schedule}", schedule=spec.get("schedule"))
        f.add_list("on the schedules {}", "schedule", _list(spec.get("schedules")))
        spec = _dict(spec.get("workflowSpec"))
    f.add("with the entrypoint {entrypoint}", entrypoint=spec.get("entrypoint"))
    f.add_list("with the templates {}", "template", (_get(t, "name") for t in _list(spec.get("templates"))))
    f.add_list("taking the parameters {}", "parameter", (_get(p, "name") for p in _list(_get(spec, "arguments", "parameters"))))
    f.add("as the service account {account}", account=spec.get("serviceAccountName"))


def _application(data: dict, f: _Facts) -> None:
    spec = _dict(data.get("spec"))
    f.add("in the project {project}", project=spec.get("project"))
    source = _dict(spec.get("source")) or next((s for s in _list(spec.get("sources")) if isinstance(s, dict)), {})
    f.add("from the repository {repo}", repo=source.get("repoURL"))
    f.add("at the path {path}", path=source.get("path"))
    f.add("with the chart {chart}", chart=source.get("chart"))
    f.add("at the revision {revision}", revision=source.get("targetRevision"))
    dest = _dict(spec.get("destination"))
    f.add("deployed to the cluster {server}", server=dest.get("server") or dest.get("name"))
    f.add("into namespace {namespace}", namespace=dest.get("namespace"))
    automated = _get(spec, "syncPolicy", "automated")
    if isinstance(automated, dict):
        f.add("synced automatically with prune {prune}", prune=automated.get("prune"))
        f.add("selfHeal {self_heal}", self_heal=automated.get("selfHeal"))


def _application_set(data: dict, f: _Facts) -> None:
    spec = _dict(data.get("spec"))
    f.add_list("generated by the {} generators", "generator", (k for g in _list(spec.get("generators")) if isinstance(g, dict) for k in g))
    f.add("from the repository {repo}", repo=_get(spec, "template", "spec", "source", "repoURL"))
    f.add("in the project {project}", project=_get(spec, "template", "spec", "project"))


def _kube_other(data: dict, f: _Facts) -> None:
    f.add_list("with the spec fields {}", "spec_key", _dict(data.get("spec")).keys())


_FACTS = {
    ("flux", "HelmRelease"): _helm_release,
    ("flux", "Kustomization"): _flux_kustomization,
    **{("flux", k): _flux_source for k in ("GitRepository", "HelmRepository", "OCIRepository", "Bucket", "HelmChart")},
    **{("flux", k): _flux_image for k in ("ImageRepository", "ImagePolicy", "ImageUpdateAutomation")},
    ("flux", "*"): _flux_other,
    ("kustomize", "Kustomization"): _kustomize,
    ("kustomize", "Component"): _kustomize,
    ("helm", "Chart"): _chart,
    ("helm", "Values"): _values,
    **{("kubernetes", k): _workload for k in _WORKLOADS},
    ("argo", "Rollout"): _workload,
    ("kubernetes", "Service"): _service,
    ("kubernetes", "ConfigMap"): _config_map,
    ("kubernetes", "Namespace"): _namespace,
    ("kubernetes", "Ingress"): _ingress,
    **{("kubernetes", k): _http_route for k in ("HTTPRoute", "GRPCRoute", "TLSRoute", "TCPRoute")},
    **{("kubernetes", k): _gateway for k in ("Gateway", "GatewayClass")},
    ("kubernetes", "HorizontalPodAutoscaler"): _hpa,
    ("kubernetes", "PersistentVolumeClaim"): _pvc,
    ("kubernetes", "Role"): _rbac_role,
    ("kubernetes", "ClusterRole"): _rbac_role,
    ("kubernetes", "RoleBinding"): _rbac_binding,
    ("kubernetes", "ClusterRoleBinding"): _rbac_binding,
    ("kubernetes", "*"): _kube_other,
    **{("argo", k): _workflow for k in ("Workflow", "WorkflowTemplate", "ClusterWorkflowTemplate", "CronWorkflow")},
    ("argo", "Application"): _application,
    ("argo", "ApplicationSet"): _application_set,
}


def prompt(r: Resource, path: str) -> str:
    """The instruction for a resource: what to write, where, and the facts its YAML holds."""
    where = f"`{scrub_path(path)}`"
    family = FAMILY_NAMES.get(r.family, "")
    if r.kind == "Chart":
        head = f"Write the Helm `Chart.yaml` of the chart `{r.name}` in {where}"
    elif r.kind == "Values":
        head = f"Write the Helm values file of the chart `{r.name}` in {where}"
    else:
        head = f"Write the {family} {r.kind}".replace("  ", " ") + (f" `{r.name}`" if r.name else "")
        head += (f" for namespace `{r.namespace}`" if r.namespace else "") + f" in {where}"
    return head + (": " + ", ".join(r.phrases) if r.phrases else "") + "."


def manifest_samples(text: str, path: str, repo: str, chart_folders: Iterable[str] = ()) -> list[tuple[str, str]]:
    """(label, chat text) instruction samples, one per named resource of a YAML file (at most MAX_SAMPLES_PER_FILE).

    The answer is the resource's YAML in a ``yaml`` fence: the whole file when it holds one
    document, else the resource's own document. Unnamed resources give a sample only as the one
    resource of their file (a kustomization.yaml, a Chart.yaml, a values.yaml); "other"-family
    resources, Secrets and kubeconfigs give none. repo is accepted for the callers' symmetry
    with the other sample makers; the prompt names the path.
    """
    found = resources(text, path, chart_folders)
    docs = len(documents(text))
    out, seen = [], set()
    for r in found:
        if r.family == "other" or (r.family, r.kind) in _SKIPPED_KINDS or len(r.text) > MAX_DOC_CHARS:
            continue
        if not r.name and (docs > 1 or r.family not in ("kustomize", "helm")):
            continue
        key = (r.family, r.kind, r.namespace, r.name)
        if key in seen:
            continue
        seen.add(key)
        answer = text.strip("\n").rstrip() if docs == 1 else r.text
        out.append((r.label, chat_text(prompt(r, path), code_block(answer, "yaml"))))
        if len(out) >= MAX_SAMPLES_PER_FILE:
            break
    return out
