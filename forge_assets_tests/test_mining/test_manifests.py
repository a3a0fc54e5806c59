"""Kubernetes-family YAML as instruction samples: resources, families, facts, one sample per resource, skips."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from forge_assets.chat import EOT, parse_rendered
from forge_assets.mining.manifests import (
    MAX_SAMPLES_PER_FILE, chart_dirs, documents, family_of, manifest_samples, prompt, resources,
)

REPO = "acme/platform"

# A Flux monorepo layout (like fluxcd/flux2-kustomize-helm-example), a Helm chart, Argo and plain Kubernetes.
FILES = {
    "apps/base/podinfo/release.yaml": """\
apiVersion: helm.toolkit.fluxcd.io/v2
kind: HelmRelease
metadata:
  name: podinfo
  namespace: podinfo
spec:
  interval: 50m
  targetNamespace: web
  chart:
    spec:
      chart: podinfo
      version: "6.x"
      sourceRef:
        kind: HelmRepository
        name: podinfo
  dependsOn:
    - name: redis
  # values of the chart
  values:
    replicaCount: 2
    ingress:
      enabled: true
    redis:
      enabled: true
""",
    "apps/base/podinfo/repository.yaml": """\
apiVersion: source.toolkit.fluxcd.io/v1
kind: HelmRepository
metadata:
  name: podinfo
  namespace: podinfo
spec:
  interval: 5m
  url: https://stefanprodan.github.io/podinfo
""",
    "apps/base/podinfo/kustomization.yaml": """\
apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
namespace: podinfo
resources:
  - namespace.yaml
  - repository.yaml
  - release.yaml
""",
    "apps/production/kustomization.yaml": """\
resources:
  - ../base/podinfo
patches:
  - path: podinfo-values.yaml
    target:
      kind: HelmRelease
  - path: replicas.yaml
""",
    "clusters/production/infrastructure.yaml": """\
---
apiVersion: kustomize.toolkit.fluxcd.io/v1
kind: Kustomization
metadata:
  name: infra-controllers
  namespace: flux-system
spec:
  interval: 1h
  sourceRef:
    kind: GitRepository
    name: flux-system
  path: ./infrastructure/controllers
  prune: true
---
apiVersion: kustomize.toolkit.fluxcd.io/v1
kind: Kustomization
metadata:
  name: infra-configs
  namespace: flux-system
spec:
  dependsOn:
    - name: infra-controllers
  interval: 1h
  sourceRef:
    kind: GitRepository
    name: flux-system
  path: ./infrastructure/configs
  prune: true
""",
    "infrastructure/controllers/cert-manager.yaml": """\
---
apiVersion: v1
kind: Namespace
metadata:
  name: cert-manager
  labels:
    toolkit.fluxcd.io/tenant: sre-team
---
apiVersion: source.toolkit.fluxcd.io/v1
kind: OCIRepository
metadata:
  name: cert-manager
  namespace: cert-manager
spec:
  interval: 24h
  url: oci://quay.io/jetstack/charts/cert-manager
  ref:
    semver: "1.x"
---
apiVersion: helm.toolkit.fluxcd.io/v2
kind: HelmRelease
metadata:
  name: cert-manager
  namespace: cert-manager
spec:
  interval: 12h
  chartRef:
    kind: OCIRepository
    name: cert-manager
  values:
    crds:
      enabled: true
---
apiVersion: cert-manager.io/v1
kind: ClusterIssuer
metadata:
  name: letsencrypt
spec:
  acme:
    server: https://acme-staging-v02.api.letsencrypt.org/directory
""",
    "charts/web/Chart.yaml": """\
apiVersion: v2
name: web
description: The storefront web tier
type: application
version: 1.10
appVersion: "2.4.1"
dependencies:
  - name: redis
    version: 17.x
    repository: https://charts.bitnami.com/bitnami
""",
    "charts/web/values.yaml": """\
replicaCount: 3
image:
  repository: ghcr.io/acme/web
  tag: "2.4.1"
service:
  type: ClusterIP
  port: 8080
""",
    "charts/web/templates/deployment.yaml": """\
apiVersion: apps/v1
kind: Deployment
metadata:
  name: {{ include "web.fullname" . }}
spec:
  replicas: {{ .Values.replicaCount }}
""",
    "workflows/ci.yaml": """\
apiVersion: argoproj.io/v1alpha1
kind: WorkflowTemplate
metadata:
  name: ci-pipeline
  namespace: argo
spec:
  entrypoint: main
  arguments:
    parameters:
      - name: revision
  templates:
    - name: main
      steps:
        - - name: build
            template: build
    - name: build
      container:
        image: golang:1.22
        command: [go, build, ./...]
""",
    "workflows/nightly.yaml": """\
apiVersion: argoproj.io/v1alpha1
kind: CronWorkflow
metadata:
  name: nightly
spec:
  schedule: "0 2 * * *"
  workflowSpec:
    entrypoint: report
    templates:
      - name: report
        container:
          image: alpine:3.20
""",
    "argocd/apps/web.yaml": """\
apiVersion: argoproj.io/v1alpha1
kind: Application
metadata:
  name: web
  namespace: argocd
spec:
  project: default
  source:
    repoURL: https://github.com/acme/platform.git
    path: charts/web
    targetRevision: main
  destination:
    server: https://kubernetes.default.svc
    namespace: web
  syncPolicy:
    automated:
      prune: true
      selfHeal: true
""",
    "k8s/web.yaml": """\
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  namespace: shop
spec:
  replicas: 3
  template:
    spec:
      containers:
        - name: web
          image: nginx:1.27
          ports:
            - containerPort: 8080
        - name: metrics
          image: prom/statsd-exporter:v0.26.0
          ports:
            - containerPort: 9102
---
apiVersion: v1
kind: Service
metadata:
  name: web
  namespace: shop
spec:
  type: ClusterIP
  selector:
    app: web
  ports:
    - port: 80
      targetPort: 8080
---
apiVersion: v1
kind: Secret
metadata:
  name: web-credentials
stringData:
  password: hunter2hunter2
---
apiVersion: batch/v1
kind: CronJob
metadata:
  name: cleanup
  namespace: shop
spec:
  schedule: "*/15 * * * *"
  jobTemplate:
    spec:
      template:
        spec:
          containers:
            - name: cleanup
              image: busybox:1.36
---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata:
  name: web
  namespace: shop
spec:
  ingressClassName: nginx
  rules:
    - host: shop.example.com
      http:
        paths:
          - path: /
            pathType: Prefix
            backend:
              service:
                name: web
                port:
                  number: 80
""",
}


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    """The layout written to disk: the tests read the files back as the miner does."""
    root = tmp_path_factory.mktemp("platform")
    for rel, text in FILES.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text, encoding="utf-8")
    return root


def read(tree: Path, rel: str) -> str:
    return (tree / rel).read_text(encoding="utf-8")


def turns(chat: str) -> tuple[str, str]:
    """(user, assistant) of a rendered two-turn sample."""
    assert chat.endswith(EOT)
    messages, _ = parse_rendered(chat[: -len(EOT)])
    assert [m["role"] for m in messages] == ["user", "assistant"]
    return messages[0]["content"], messages[1]["content"]


def fenced(answer: str) -> str:
    m = re.fullmatch(r"```yaml\n(.*)\n```", answer, re.S)
    assert m, answer[:200]
    return m[1]


def assert_learnable(chat: str, resource) -> None:
    """Every fact in the prompt is text of the answer."""
    user, answer = turns(chat)
    for key, value in resource.facts:
        assert f"`{value}`" in user or value in user, (key, value, user)
        assert value in answer, (key, value)


def test_helm_release_sample_names_chart_source_interval_and_values(tree):
    rel = "apps/base/podinfo/release.yaml"
    text = read(tree, rel)
    [r] = resources(text, rel)
    assert (r.family, r.kind, r.api_version, r.name, r.namespace) == ("flux", "HelmRelease", "helm.toolkit.fluxcd.io/v2", "podinfo", "podinfo")
    assert r.label == "flux/HelmRelease"
    facts = dict(r.facts)
    assert facts["chart"] == "podinfo" and facts["version"] == "6.x" and facts["interval"] == "50m"
    assert (facts["source_kind"], facts["source_name"]) == ("HelmRepository", "podinfo")
    assert facts["target_namespace"] == "web" and facts["depends_on"] == "redis"
    assert [v for k, v in r.facts if k == "values_key"] == ["replicaCount", "ingress", "redis"]

    [(label, chat)] = manifest_samples(text, rel, REPO)
    assert label == "flux/HelmRelease"
    user, answer = turns(chat)
    assert user == (
        "Write the Flux HelmRelease `podinfo` for namespace `podinfo` in `apps/base/podinfo/release.yaml`: chart `podinfo` "
        "version `6.x` from the HelmRepository `podinfo`, reconciled every `50m`, installed into namespace `web`, "
        "depending on `redis`, with values for `replicaCount`, `ingress`, `redis`.")
    assert fenced(answer) == text.rstrip()  # a one-document file: the whole file, comments kept
    assert_learnable(chat, r)


def test_flux_sources_and_kustomizations(tree):
    rel = "apps/base/podinfo/repository.yaml"
    [(label, chat)] = manifest_samples(read(tree, rel), rel, REPO)
    assert label == "flux/HelmRepository"
    assert "from the URL `https://stefanprodan.github.io/podinfo`, fetched every `5m`" in turns(chat)[0]

    rel = "clusters/production/infrastructure.yaml"
    text = read(tree, rel)
    found = resources(text, rel)
    samples = manifest_samples(text, rel, REPO)
    assert [s[0] for s in samples] == ["flux/Kustomization", "flux/Kustomization"]
    for r, (_, chat) in zip(found, samples):
        user, answer = turns(chat)
        assert f"`{r.name}`" in user and fenced(answer) == r.text  # a multi-document file: each its own document
        assert "---" not in fenced(answer)
        assert_learnable(chat, r)
    assert "applying the path `./infrastructure/configs`, from the GitRepository `flux-system`, reconciled every `1h`, " \
           "depending on `infra-controllers`, prune `true`" in turns(samples[1][1])[0]
    assert "infra-configs" not in turns(samples[0][1])[1]


def test_multi_document_file_gives_one_sample_per_named_resource_with_spans(tree):
    rel = "infrastructure/controllers/cert-manager.yaml"
    text = read(tree, rel)
    found = resources(text, rel)
    assert [(r.label, r.name) for r in found] == [
        ("kubernetes/Namespace", "cert-manager"), ("flux/OCIRepository", "cert-manager"),
        ("flux/HelmRelease", "cert-manager"), ("other/ClusterIssuer", "letsencrypt")]
    for r in found:
        assert text[r.start:r.end].strip() == r.text
        assert r.text.startswith("apiVersion:")
    samples = manifest_samples(text, rel, REPO)
    assert [label for label, _ in samples] == ["kubernetes/Namespace", "flux/OCIRepository", "flux/HelmRelease"]  # "other": none
    oci, release = turns(samples[1][1])[0], turns(samples[2][1])[0]
    assert "from the URL `oci://quay.io/jetstack/charts/cert-manager`, at the semver `1.x`, fetched every `24h`" in oci
    assert "chart from the OCIRepository `cert-manager`, reconciled every `12h`, with values for `crds`" in release
    for r, (_, chat) in zip(found, samples):
        assert_learnable(chat, r)


def test_kustomize_with_and_without_api_version(tree):
    rel = "apps/base/podinfo/kustomization.yaml"
    [r] = resources(read(tree, rel), rel)
    assert (r.family, r.kind, r.name) == ("kustomize", "Kustomization", "")
    [(label, chat)] = manifest_samples(read(tree, rel), rel, REPO)
    assert label == "kustomize/Kustomization"
    assert turns(chat)[0] == ("Write the Kustomize Kustomization in `apps/base/podinfo/kustomization.yaml`: namespace `podinfo`, "
                              "resources `namespace.yaml`, `repository.yaml`, `release.yaml`.")

    rel = "apps/production/kustomization.yaml"
    [r] = resources(read(tree, rel), rel)
    assert (r.family, r.api_version) == ("kustomize", "")
    [(label, chat)] = manifest_samples(read(tree, rel), rel, REPO)
    assert turns(chat)[0].endswith(": resources `../base/podinfo`, with 2 patches.")
    # The same text under another name is no kustomization (no apiVersion, no kind).
    assert resources(read(tree, rel), "apps/production/other.yaml") == []


def test_helm_chart_values_and_templates(tree):
    rel = "charts/web/Chart.yaml"
    text = read(tree, rel)
    [r] = resources(text, rel)
    assert (r.label, r.name, r.api_version) == ("helm/Chart", "web", "v2")
    [(label, chat)] = manifest_samples(text, rel, REPO)
    user = turns(chat)[0]
    # The version is the file's text: YAML 1.1 would read 1.10 as the float 1.1.
    assert user == ("Write the Helm `Chart.yaml` of the chart `web` in `charts/web/Chart.yaml`: version `1.10`, app version `2.4.1`, "
                    "of type `application`, described as `The storefront web tier`, depending on the chart `redis` `17.x`.")
    assert_learnable(chat, r)

    dirs = chart_dirs(FILES)
    assert dirs == {"charts/web"}
    rel = "charts/web/values.yaml"
    [r] = resources(read(tree, rel), rel, dirs)
    assert (r.label, r.name) == ("helm/Values", "web")
    [(label, chat)] = manifest_samples(read(tree, rel), rel, REPO, dirs)
    assert turns(chat)[0] == ("Write the Helm values file of the chart `web` in `charts/web/values.yaml`: with settings for "
                              "`replicaCount`, `image`, `service`, image `ghcr.io/acme/web`, tag `2.4.1`, replicaCount `3`.")
    assert resources(read(tree, rel), rel) != []  # no chart folders given: a folder named charts counts
    assert resources(read(tree, rel), "config/values.yaml") == []
    assert resources(read(tree, rel), rel, {"other/chart"}) == []

    # Go templates are not YAML: no resource, no exception.
    rel = "charts/web/templates/deployment.yaml"
    assert resources(read(tree, rel), rel) == [] and manifest_samples(read(tree, rel), rel, REPO) == []


def test_argo_workflows_and_applications(tree):
    rel = "workflows/ci.yaml"
    [r] = resources(read(tree, rel), rel)
    assert r.family == "argo"
    [(label, chat)] = manifest_samples(read(tree, rel), rel, REPO)
    assert label == "argo/WorkflowTemplate"
    assert turns(chat)[0] == ("Write the Argo WorkflowTemplate `ci-pipeline` for namespace `argo` in `workflows/ci.yaml`: with the "
                              "entrypoint `main`, with the templates `main`, `build`, taking the parameters `revision`.")
    rel = "workflows/nightly.yaml"
    [(label, chat)] = manifest_samples(read(tree, rel), rel, REPO)
    assert label == "argo/CronWorkflow"
    assert "on the schedule `0 2 * * *`, with the entrypoint `report`, with the templates `report`" in turns(chat)[0]
    rel = "argocd/apps/web.yaml"
    [r] = resources(read(tree, rel), rel)
    [(label, chat)] = manifest_samples(read(tree, rel), rel, REPO)
    assert label == "argo/Application"
    user = turns(chat)[0]
    for fact in ("in the project `default`", "from the repository `https://github.com/acme/platform.git`", "at the path `charts/web`",
                 "at the revision `main`", "deployed to the cluster `https://kubernetes.default.svc`", "into namespace `web`",
                 "synced automatically with prune `true`", "selfHeal `true`"):
        assert fact in user
    assert_learnable(chat, r)


def test_kubernetes_workloads_services_ingress_and_skipped_secret(tree):
    rel = "k8s/web.yaml"
    text = read(tree, rel)
    found = {r.kind: r for r in resources(text, rel)}
    assert set(found) == {"Deployment", "Service", "Secret", "CronJob", "Ingress"}
    assert all(r.family == "kubernetes" for r in found.values())
    samples = manifest_samples(text, rel, REPO)
    assert [label for label, _ in samples] == ["kubernetes/Deployment", "kubernetes/Service", "kubernetes/CronJob", "kubernetes/Ingress"]
    assert not any("hunter2" in chat for _, chat in samples)  # a Secret gives no sample
    by_label = {label: turns(chat)[0] for label, chat in samples}
    assert by_label["kubernetes/Deployment"] == (
        "Write the Kubernetes Deployment `web` for namespace `shop` in `k8s/web.yaml`: with `3` replicas, running the images "
        "`nginx:1.27`, `prom/statsd-exporter:v0.26.0`, exposing the ports `8080`, `9102`.")
    assert "of type `ClusterIP`, on the ports `80`, to the target ports `8080`, selecting pods by `app`" in by_label["kubernetes/Service"]
    assert "on the schedule `*/15 * * * *`, running the images `busybox:1.36`" in by_label["kubernetes/CronJob"]
    assert "with the ingress class `nginx`, for the hosts `shop.example.com`, routing to the services `web`" in by_label["kubernetes/Ingress"]
    for label, chat in samples:
        assert_learnable(chat, found[label.split("/")[1]])


def test_family_of():
    assert family_of("helm.toolkit.fluxcd.io/v2", "HelmRelease") == "flux"
    assert family_of("image.toolkit.fluxcd.io/v1beta2", "ImageUpdateAutomation") == "flux"
    assert family_of("kustomize.config.k8s.io/v1beta1", "Kustomization") == "kustomize"
    assert family_of("", "", "base/kustomization.yaml") == "kustomize"
    assert family_of("argoproj.io/v1alpha1", "Rollout") == "argo"
    assert family_of("v1", "ConfigMap") == "kubernetes"
    assert family_of("apps/v1", "Deployment") == "kubernetes"
    assert family_of("networking.k8s.io/v1", "Ingress") == "kubernetes"
    assert family_of("gateway.networking.k8s.io/v1", "HTTPRoute") == "kubernetes"
    assert family_of("cert-manager.io/v1", "ClusterIssuer") == "other"
    assert family_of("tekton.dev/v1", "Pipeline") == "other"


def test_bad_yaml_unsafe_tags_and_non_manifests_never_raise(tmp_path):
    marker = tmp_path / "constructed"
    cases = {
        "broken.yaml": "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: [unclosed\n",
        "tabs.yaml": "apiVersion: v1\nkind: ConfigMap\n\tmetadata:\n\t\tname: x\n",
        "binary.yaml": "\x00\x01\x02apiVersion: v1\n",
        "scalar.yaml": "just a string\n",
        "list.yaml": "- apiVersion: v1\n  kind: ConfigMap\n",
        "compose.yaml": "services:\n  web:\n    image: nginx\n",
        "empty.yaml": "",
        "comments.yaml": "# generated by flux bootstrap\n",
        "bomb.yaml": "a: &a [x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\n"
                     "c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: bomb\n",
        "unsafe.yaml": f"apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: unsafe\ndata:\n"
                       f"  run: !!python/object/apply:os.system [\"touch {marker}\"]\n",
    }
    for name, text in cases.items():
        (tmp_path / name).write_text(text, encoding="utf-8")
        text = (tmp_path / name).read_text(encoding="utf-8")
        resources(text, name)
        manifest_samples(text, name, REPO)
    assert not marker.exists()  # no Python object was built from a tag
    [r] = resources((tmp_path / "unsafe.yaml").read_text(encoding="utf-8"), "unsafe.yaml")
    assert r.data["data"]["run"] == [f"touch {marker}"]  # the tag is ignored: plain strings and lists only
    [(label, _)] = manifest_samples((tmp_path / "bomb.yaml").read_text(encoding="utf-8"), "bomb.yaml", REPO)
    assert label == "kubernetes/ConfigMap"
    for name in ("broken.yaml", "tabs.yaml", "scalar.yaml", "list.yaml", "compose.yaml", "empty.yaml", "comments.yaml"):
        assert manifest_samples(cases[name], name, REPO) == [], name


def test_broken_or_templated_document_skips_only_itself():
    text = ("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: first\ndata:\n  a: '1'\n---\n"
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {{ .Release.Name }}\n---\n"
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: [broken\n---\n"
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: last\ndata:\n  b: '2'\n")
    assert [r.name for r in resources(text, "cm.yaml")] == ["first", "last"]
    samples = manifest_samples(text, "cm.yaml", REPO)
    assert [turns(c)[0] for _, c in samples] == [
        "Write the Kubernetes ConfigMap `first` in `cm.yaml`: with the keys `a`.",
        "Write the Kubernetes ConfigMap `last` in `cm.yaml`: with the keys `b`."]


def test_caps_unnamed_duplicates_and_determinism():
    many = "".join(f"---\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: cm-{i}\ndata:\n  key{i}: v\n" for i in range(12))
    samples = manifest_samples(many, "config/maps.yaml", REPO)
    assert len(samples) == MAX_SAMPLES_PER_FILE
    assert [turns(c)[0].split("`")[1] for _, c in samples] == [f"cm-{i}" for i in range(MAX_SAMPLES_PER_FILE)]
    assert manifest_samples(many, "config/maps.yaml", REPO) == samples  # deterministic

    # In a multi-document file an unnamed resource (a patch) gives nothing, and a repeated name only once.
    text = ("apiVersion: apps/v1\nkind: Deployment\nspec:\n  replicas: 2\n---\n"
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: same\n---\n"
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: same\n")
    assert [label for label, _ in manifest_samples(text, "x.yaml", REPO)] == ["kubernetes/ConfigMap"]
    # Alone in its file, an unnamed Kubernetes resource still gives nothing; a kustomization does.
    assert manifest_samples("apiVersion: apps/v1\nkind: Deployment\nspec:\n  replicas: 2\n", "patch.yaml", REPO) == []


def test_documents_split_at_markers_and_paths_are_scrubbed():
    text = "# header\n---\na: 1\n--- # second\nb: 2\n...\n%YAML 1.2\n---\nc: 3\n"
    assert [text[s:e].strip() for s, e in documents(text)] == ["a: 1", "b: 2", "c: 3"]
    token = "ghp_R8kTz2mXw9QvL4pN7cYb1HsJd6FgA3eU0oWi"
    path = f"deploy/{token}/cm.yaml"
    cm = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: app\n"
    [r] = resources(cm, path)
    [(_, chat)] = manifest_samples(cm, path, REPO)
    assert token not in chat and token not in prompt(r, path)


def test_real_flux_repository(tmp_path):
    """The vendored bundle of fluxcd/flux2-kustomize-helm-example (real history, forge_assets_tests/data/real_repos)."""
    from forge_assets_tests.real_repos import clone_real_repo

    work = clone_real_repo("flux2-kustomize-helm-example", tmp_path / "flux")

    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(work), *args], capture_output=True, text=True, check=True).stdout

    paths = [p for p in git("ls-tree", "-r", "--name-only", "HEAD").splitlines() if p.endswith((".yaml", ".yml"))]
    labels: dict[str, int] = {}
    for path in paths:
        text = git("show", f"HEAD:{path}")
        found = {(r.label, r.name): r for r in resources(text, path)}
        samples = manifest_samples(text, path, "fluxcd/flux2-kustomize-helm-example")
        assert samples == manifest_samples(text, path, "fluxcd/flux2-kustomize-helm-example")
        for label, chat in samples:
            labels[label] = labels.get(label, 0) + 1
            user, answer = turns(chat)
            m = re.match(r"Write the \S+ \S+ `([^`]+)`", user)
            r = found[(label, m[1] if m else "")]
            assert_learnable(chat, r)
            assert fenced(answer) in text
        if path.startswith(".github/") or path.endswith("gotk-sync.yaml"):
            assert samples == [], path  # workflows are not manifests; gotk-sync.yaml is only a comment here
    assert {"flux/HelmRelease", "flux/Kustomization", "flux/HelmRepository", "flux/OCIRepository",
            "kustomize/Kustomization", "kubernetes/Namespace"} <= set(labels)
    assert labels["flux/HelmRelease"] >= 3 and labels["kustomize/Kustomization"] >= 4

    release = git("show", "HEAD:apps/base/podinfo/release.yaml")
    [(label, chat)] = manifest_samples(release, "apps/base/podinfo/release.yaml", "fluxcd/flux2-kustomize-helm-example")
    user = turns(chat)[0]
    assert label == "flux/HelmRelease"
    assert user.startswith("Write the Flux HelmRelease `podinfo` for namespace `podinfo` in `apps/base/podinfo/release.yaml`: "
                           "chart `podinfo` from the HelmRepository `podinfo`, reconciled every `50m`")
    assert "with values for `redis`" in user
