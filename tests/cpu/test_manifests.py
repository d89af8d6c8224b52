"""The cluster files: valid against KubeRay's CRD schema (vendored subset), Ray's launcher schema and
Kubernetes' own schemas; safe (token auth, ClusterIP, NetworkPolicy, keys from Secrets, non-root image);
and consistent with the configs they run (data and runs on the volume, GPUs the configs reserve)."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

import kubernetes_validate
import pytest
import ray
import yaml

from drivers.study import child_config, run_demand, runs_that_fit
from loopdistill.config import load_config

REPO = Path(__file__).resolve().parents[2]
CLUSTER = REPO / "cluster"
RAY_SCHEMA = Path(ray.__file__).parent / "autoscaler" / "ray-schema.json"
K8S_VERSION = kubernetes_validate.latest_version()


def _load(name: str) -> dict:
    return yaml.safe_load((CLUSTER / name).read_text())


def _docs(name: str) -> list[dict]:
    return [d for d in yaml.safe_load_all((CLUSTER / name).read_text()) if d]


def _check_jsonschema(schema: Path, document: Path) -> subprocess.CompletedProcess:
    return subprocess.run(["check-jsonschema", "--schemafile", str(schema), str(document)], capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize(
    "schema, document",
    [
        (CLUSTER / "schemas" / "rayjob.schema.json", CLUSTER / "rayjob.yaml"),
        (CLUSTER / "schemas" / "raycluster.schema.json", CLUSTER / "raycluster.yaml"),
        (RAY_SCHEMA, CLUSTER / "ray-cluster.yaml"),
    ],
)
def test_manifests_match_their_schemas(schema, document):
    proc = _check_jsonschema(schema, document)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize(
    "schema, document, path, bad",
    [
        ("schemas/rayjob.schema.json", "rayjob.yaml", ["spec", "rayClusterSpec", "workerGroupSpecs", 0, "replica"], 4),
        ("schemas/rayjob.schema.json", "rayjob.yaml", ["spec", "shutdownAfterJobFinishes"], "yes"),
        ("schemas/raycluster.schema.json", "raycluster.yaml", ["spec", "headGroupSpec", "rayStartParams", "num-gpus"], 0),
    ],
)
def test_schema_check_catches_a_typo_and_a_wrong_type(tmp_path, schema, document, path, bad):
    data = _load(document)
    node = data
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = bad
    broken = tmp_path / document
    broken.write_text(yaml.safe_dump(data))
    assert _check_jsonschema(CLUSTER / schema, broken).returncode != 0


@pytest.mark.parametrize("name", ["storage.yaml", "mlflow.yaml", "network-policy.yaml", "secrets.example.yaml"])
def test_kubernetes_objects_are_valid_strictly(name):
    for doc in _docs(name):
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def _pod_templates() -> dict[str, dict]:
    job = _load("rayjob.yaml")["spec"]
    out = {"submitter": job["submitterPodTemplate"], "head": job["rayClusterSpec"]["headGroupSpec"]["template"]}
    out.update({f"worker-{g['groupName']}": g["template"] for g in job["rayClusterSpec"]["workerGroupSpecs"]})
    return out


@pytest.mark.parametrize("role", ["submitter", "head", "worker-gpu"])
def test_pod_templates_are_valid_kubernetes_pod_templates(role):
    template = _pod_templates()[role]
    kubernetes_validate.validate({"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": role}, "template": template}, K8S_VERSION, strict=True)


def test_raycluster_is_the_rayjobs_cluster():
    assert _load("raycluster.yaml")["spec"] == _load("rayjob.yaml")["spec"]["rayClusterSpec"]


def _env(container: dict) -> dict[str, dict]:
    return {e["name"]: e for e in container.get("env", [])}


def test_ray_api_needs_a_token_and_stays_inside_the_cluster():
    cluster = _load("rayjob.yaml")["spec"]["rayClusterSpec"]
    assert cluster["headGroupSpec"]["serviceType"] == "ClusterIP"
    # The operator enables token auth on every Ray container and uses the token for its own job-API
    # polls; the Secret holds it under the key KubeRay reads (auth_token).
    assert cluster["authOptions"] == {"mode": "token", "secretName": "loopdistill-ray-token"}
    token_secret = next(d for d in _docs("secrets.example.yaml") if d["metadata"]["name"] == "loopdistill-ray-token")
    assert set(token_secret["stringData"]) == {"auth_token"}
    for role, template in _pod_templates().items():
        assert template["spec"]["securityContext"]["runAsNonRoot"] is True
        for container in template["spec"]["containers"]:
            env = _env(container)
            if role == "submitter":  # not a Ray container: `ray job submit` needs the token itself
                assert env["RAY_AUTH_MODE"]["value"] == "token"
                assert env["RAY_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"] == {"name": "loopdistill-ray-token", "key": "auth_token"}
            else:  # set by the operator from authOptions; a second definition here could disagree with it
                assert "RAY_AUTH_TOKEN" not in env and "RAY_AUTH_MODE" not in env, role
    policy = _docs("network-policy.yaml")[0]
    head_labels = cluster["headGroupSpec"]["template"]["metadata"]["labels"]
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= head_labels.items()
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    for rule in policy["spec"]["ingress"]:
        for peer in rule["from"]:
            # only pods of this project, or the KubeRay operator on the job API port
            labels = peer["podSelector"]["matchLabels"]
            assert labels == {"app.kubernetes.io/part-of": "loopdistill"} or (
                labels == {"app.kubernetes.io/name": "kuberay-operator"} and rule["ports"] == [{"protocol": "TCP", "port": 8265}]
            )


def test_teacher_key_comes_from_a_secret_and_mlflow_is_internal():
    for role in ("head", "worker-gpu"):
        env = _env(_pod_templates()[role]["spec"]["containers"][0])
        assert env["OPENAI_API_KEY"]["valueFrom"]["secretKeyRef"]["name"] == "loopdistill-teacher"
        assert "value" not in env["OPENAI_API_KEY"]
        assert env["MLFLOW_TRACKING_URI"]["value"] == "http://loopdistill-mlflow:5000"
    deployment, service, policy = _docs("mlflow.yaml")
    assert service["spec"]["type"] == "ClusterIP" and service["metadata"]["name"] == "loopdistill-mlflow"
    args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--serve-artifacts" in args and any(a.startswith("--artifacts-destination=/mlflow/") for a in args)
    assert deployment["spec"]["template"]["spec"]["volumes"][0]["persistentVolumeClaim"]["claimName"] == "loopdistill-mlflow"
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= deployment["spec"]["template"]["metadata"]["labels"].items()
    assert policy["spec"]["ingress"][0]["from"][0]["podSelector"]["matchLabels"] == {"app.kubernetes.io/part-of": "loopdistill"}


def test_the_study_config_runs_as_is_on_the_volumes_and_gpus():
    """The entrypoint's config reads its data and writes its runs on the shared volume (relative paths
    resolved from the containers' working dir), and the GPUs the concurrent children reserve fit."""
    job = _load("rayjob.yaml")["spec"]
    entry = job["entrypoint"].split()
    config_path = next(a for a in entry if a.startswith("configs/") and a.endswith(".yaml"))
    config = load_config(REPO / config_path)
    head = job["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    workdir = head["workingDir"]
    assert entry[:2] == ["cd", workdir]
    mounts = {m["mountPath"]: m for m in head["volumeMounts"]}
    pvcs = {v["name"] for v in job["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["volumes"] if "persistentVolumeClaim" in v}
    data = os.path.normpath(os.path.join(workdir, config.task.data_path))
    runs = os.path.normpath(os.path.join(workdir, config.tracking.output_dir))
    assert any(data.startswith(p + "/") and mounts[p]["name"] in pvcs for p in mounts), data
    assert runs in mounts and mounts[runs]["name"] in pvcs and not mounts[runs].get("readOnly")
    workers = job["rayClusterSpec"]["workerGroupSpecs"]
    gpus = sum(int(g["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"]) * g["replicas"] for g in workers)
    head_params = job["rayClusterSpec"]["headGroupSpec"]["rayStartParams"]
    # Ray's logical CPUs per node: rayStartParams' num-cpus, else the container's CPU limit.
    node_cpus = lambda params, container: float(params.get("num-cpus", container["resources"]["limits"]["cpu"]))
    cpus = node_cpus(head_params, head) + sum(
        node_cpus(g["rayStartParams"], g["template"]["spec"]["containers"][0]) * g["replicas"] for g in workers)
    strategies = entry[entry.index("--strategies") + 1 : entry.index("--replicates")]
    replicates = int(entry[entry.index("--replicates") + 1])
    # What the study itself computes: each child's actors as drivers.actor_group.resource_specs gives
    # them, packed onto the cluster by drivers.study.runs_that_fit; all children must run at once.
    children = [child_config(config, s, config.loop.seed + r, Path("/app/runs/study"), "http://mlflow", "parent")
                for s in strategies for r in range(replicates)]
    demands = [run_demand(c) for c in children]
    assert all(any(g > 0 for _, g in d) for d in demands)  # every child reserves GPU: the config is a GPU config
    assert runs_that_fit(demands, cpus, gpus) == len(children), (demands[0], cpus, gpus)
    assert head_params["num-gpus"] == "0" and "nvidia.com/gpu" not in head["resources"]["limits"]


def test_launcher_gives_gpus_to_workers_only():
    launcher = _load("ray-cluster.yaml")
    docker = launcher["docker"]
    assert not any("--gpus" in o for o in docker.get("run_options", []) + docker.get("head_run_options", []))
    assert "--gpus all" in docker["worker_run_options"]
    assert all("--dashboard-host=127.0.0.1" in c or "--head" not in c for c in launcher["head_start_ray_commands"])


def test_dockerfile_is_hadolint_clean_non_root_and_pinned():
    proc = subprocess.run(["hadolint", str(REPO / "Dockerfile")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    text = (REPO / "Dockerfile").read_text()
    users = [line.split()[1] for line in text.splitlines() if line.startswith("USER ")]
    assert users and users[-1].split(":")[0] not in ("0", "root")
    instructions = "\n".join(line for line in text.splitlines() if not line.startswith("#"))
    assert "HF_HUB_OFFLINE" not in instructions and "sudo" not in instructions
    pyproject = (REPO / "pyproject.toml").read_text()
    pin = next(part for part in text.split('"') if part.startswith("vllm=="))
    assert f'vllm = ["{pin}"]' in pyproject  # the image and the project's vllm extra agree


def test_dockerfile_copies_only_paths_that_exist():
    """`docker build` fails on a COPY of a missing path (e.g. after a package moved)."""
    for line in (REPO / "Dockerfile").read_text().splitlines():
        if line.startswith("COPY "):
            sources = [a for a in line.split()[1:-1] if not a.startswith("--")]
            assert sources, line
            for source in sources:
                assert (REPO / source).exists(), f"{line!r}: {source} is not in the repository"


def test_runtime_env_keeps_secrets_and_offline_switch_out():
    env = yaml.safe_load((CLUSTER / "runtime_env.yaml").read_text())
    assert ".env" in env["excludes"] and "**/.env" in env["excludes"]
    assert "HF_HUB_OFFLINE" not in env.get("env_vars", {})
