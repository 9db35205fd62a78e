"""cluster/: every manifest parses; KubeRay objects carry what the CRDs require; the launcher YAML passes Ray's own
cluster-config validation (the JSON schema shipped in ray.autoscaler, applied offline after Ray fills in defaults);
the runtime env is one Ray accepts; nothing secret is in the folder."""
from __future__ import annotations

import copy
import re
import subprocess
import sys

import pytest
import yaml

from tests.conftest import REPO

CLUSTER = REPO / "cluster"
KUBERAY = CLUSTER / "kuberay"
STAGES = ("extract", "tune", "harvest", "train", "evaluate")


def load(path):
    docs = list(yaml.safe_load_all(path.read_text()))
    assert len(docs) == 1 and isinstance(docs[0], dict), f"{path.name}: one YAML mapping expected"
    return docs[0]


def test_every_yaml_parses():
    files = sorted(CLUSTER.rglob("*.yaml"))
    assert len(files) >= 9
    for f in files:
        load(f)


def test_kuberay_files_are_generated_and_current():
    r = subprocess.run([sys.executable, str(KUBERAY / "generate.py"), "--check"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    names = {p.name for p in KUBERAY.glob("*.yaml")}
    assert names == {"raycluster.yaml", "rayjob-pipeline.yaml", *(f"rayjob-{s}.yaml" for s in STAGES)}


def check_cluster_spec(spec, where):
    assert re.fullmatch(r"\d+\.\d+\.\d+", spec["rayVersion"]), where
    head = spec["headGroupSpec"]
    assert isinstance(head["rayStartParams"], dict), where
    head_c = head["template"]["spec"]["containers"]
    assert head_c and all(c["name"] and c["image"] for c in head_c), where
    groups = spec["workerGroupSpecs"]
    assert groups, where
    gpu_groups = []
    for g in groups:
        for key in ("groupName", "rayStartParams", "template"):
            assert key in g, f"{where}: worker group lacks {key}"
        assert g["minReplicas"] <= g["replicas"] <= g["maxReplicas"], where
        cs = g["template"]["spec"]["containers"]
        assert cs and all(c["name"] and c["image"] for c in cs), where
        if any("nvidia.com/gpu" in c.get("resources", {}).get("limits", {}) for c in cs):
            gpu_groups.append(g)
            for c in cs:  # extended resources: request must equal limit
                lim, req = c["resources"]["limits"], c["resources"].get("requests", {})
                assert req.get("nvidia.com/gpu", lim["nvidia.com/gpu"]) == lim["nvidia.com/gpu"], where
    assert gpu_groups, f"{where}: no GPU worker group"
    return gpu_groups


def test_raycluster_has_head_and_gpu_workers():
    doc = load(KUBERAY / "raycluster.yaml")
    assert doc["apiVersion"] == "ray.io/v1" and doc["kind"] == "RayCluster" and doc["metadata"]["name"]
    check_cluster_spec(doc["spec"], "raycluster.yaml")


@pytest.mark.parametrize("stage", ("pipeline",) + STAGES)
def test_rayjobs_one_per_stage_and_one_for_the_pipeline(stage):
    doc = load(KUBERAY / f"rayjob-{stage}.yaml")
    assert doc["apiVersion"] == "ray.io/v1" and doc["kind"] == "RayJob" and doc["metadata"]["name"]
    spec = doc["spec"]
    entry = spec["entrypoint"]
    assert "workflows.cli run --config" in entry
    if stage == "pipeline":
        assert "--stage" not in entry
    else:
        assert f"--stage {stage}" in entry
    # the entrypoint's arguments are ones `valor run` accepts
    from workflows.cli import build_parser

    args = entry.split("workflows.cli ", 1)[1].split()
    ns = build_parser().parse_args(args)
    assert ns.command == "run" and ns.config.endswith("configs/llp.yaml")
    assert isinstance(yaml.safe_load(spec["runtimeEnvYAML"]), dict)
    gpu_groups = check_cluster_spec(spec["rayClusterSpec"], f"rayjob-{stage}.yaml")
    if stage in ("extract", "train", "pipeline"):
        assert sum(g["replicas"] for g in gpu_groups) >= 1


def test_launcher_yaml_passes_rays_validation():
    from ray.autoscaler._private.util import prepare_config, validate_config

    raw = load(CLUSTER / "ray-cluster-aws.yaml")
    assert raw["provider"]["type"] == "aws"
    gpu_types = [n for n, t in raw["available_node_types"].items() if t.get("resources", {}).get("GPU")]
    assert gpu_types and raw["head_node_type"] in raw["available_node_types"]
    validate_config(prepare_config(copy.deepcopy(raw)))
    bad = copy.deepcopy(raw)
    bad["available_node_types"][gpu_types[0]]["min_wrokers"] = 1  # a typo must be caught by the same validation
    with pytest.raises(Exception, match="min_wrokers"):
        validate_config(prepare_config(bad))


def test_runtime_env_is_accepted_by_ray():
    from ray.runtime_env import RuntimeEnv

    env = yaml.safe_load((CLUSTER / "runtime_env.yaml").read_text())
    for must in (".git", ".venv", "runs/"):
        assert must in env["excludes"]
    RuntimeEnv(**env)  # raises on unknown fields / bad types
    for key in env["env_vars"]:
        assert not re.search(r"SECRET|PASSWORD|_TOKEN$|ACCESS_KEY", key), f"credential {key} in runtime_env.yaml"


def test_dockerfile_on_ray_gpu_image_with_ffmpeg():
    text = (CLUSTER / "Dockerfile").read_text()
    base = re.search(r"^FROM\s+(\S+)", text, re.M).group(1)
    import ray

    assert base == f"rayproject/ray:{ray.__version__}-py311-gpu"
    assert "ffmpeg" in text and "constraints.txt" in text


def test_no_credentials_in_cluster_files():
    pattern = re.compile(r"(AKIA[0-9A-Z]{16}|aws_secret_access_key\s*[:=]\s*\S{20,}|BEGIN [A-Z ]*PRIVATE KEY)", re.I)
    for f in CLUSTER.rglob("*"):
        if f.is_file():
            assert not pattern.search(f.read_text(errors="replace")), f"looks like a credential in {f}"


def test_readme_commands_name_real_files():
    text = (CLUSTER / "README.md").read_text()
    assert re.search(r"ray up (-y )?cluster/ray-cluster-aws\.yaml", text)
    for needle in ("ray job submit", "kubectl apply", "--runtime-env cluster/runtime_env.yaml"):
        assert needle in text
    for path in re.findall(r"cluster/[\w./-]+\.(?:yaml|py)|configs/[\w.-]+\.yaml", text):
        assert (REPO / path).exists(), f"cluster/README.md names {path}, which does not exist"
