"""Write the KubeRay manifests of this folder: one RayCluster, one RayJob for the whole pipeline, one RayJob per stage.

    python cluster/kuberay/generate.py          # rewrites raycluster.yaml and rayjob-*.yaml next to this file
    python cluster/kuberay/generate.py --check  # exit 1 when a file differs from what this script writes (tests use it)

Edit the settings here, not the YAML. Every pod runs the project's image (cluster/Dockerfile) with the code at
/home/ray/valor; S3 access comes from the `valor-ray` service account (IRSA / workload identity) or, optionally, a
`valor-s3` secret holding AWS_* keys; MLflow auth from an optional `valor-mlflow` secret. Nothing secret is in the files.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
IMAGE = "ghcr.io/your-org/valor:latest"  # built from cluster/Dockerfile (rayproject/ray:2.60.0-py311-gpu + valor)
RAY_VERSION = "2.60.0"
NAMESPACE = "valor"
SERVICE_ACCOUNT = "valor-ray"
CONFIG = "/home/ray/valor/configs/llp.yaml"

ENV = [
    {"name": "RAY_USAGE_STATS_ENABLED", "value": "0"},
    {"name": "MLFLOW_DISABLE_TELEMETRY", "value": "true"},
    {"name": "HF_HUB_DISABLE_TELEMETRY", "value": "1"},
    {"name": "WANDB_MODE", "value": "disabled"},
    {"name": "TOKENIZERS_PARALLELISM", "value": "false"},
    {"name": "AWS_REGION", "value": "us-west-2"},
]
ENV_FROM = [{"secretRef": {"name": "valor-s3", "optional": True}},  # AWS_ACCESS_KEY_ID/... when no IRSA role
            {"secretRef": {"name": "valor-mlflow", "optional": True}}]  # MLFLOW_TRACKING_TOKEN / _USERNAME / _PASSWORD
RUNTIME_ENV = {"env_vars": {e["name"]: e["value"] for e in ENV}}

# What each stage needs: GPU workers (1 GPU, 8 CPU, 32 GiB each) and CPU workers (16 CPU, 64 GiB each).
STAGES = {
    "pipeline": {"gpu": 4, "cpu": 1, "args": [], "what": "the whole pipeline, skipping stages already done"},
    "extract": {"gpu": 4, "cpu": 0, "args": ["--stage", "extract"],
                "what": "Ray Data decode + CLIP ViT-L/14 and CLAP actors (1 GPU each) -> features Parquet"},
    "tune": {"gpu": 0, "cpu": 2, "args": ["--stage", "tune"], "what": "Ray Tune threshold search (CPU)"},
    "harvest": {"gpu": 0, "cpu": 1, "args": ["--stage", "harvest"], "what": "harvested labels (CPU)"},
    "train": {"gpu": 4, "cpu": 0, "args": ["--stage", "train"],
              "what": "Ray Train DDP HAN, 1 worker per GPU (NCCL; train.num_workers in configs/llp.yaml)"},
    "evaluate": {"gpu": 1, "cpu": 0, "args": ["--stage", "evaluate"], "what": "official metrics on val/test"},
}


def container(name: str, cpu: str, memory: str, gpu: int = 0, ports: list | None = None) -> dict:
    limits = {"cpu": cpu, "memory": memory}
    if gpu:
        limits["nvidia.com/gpu"] = str(gpu)
    c = {
        "name": name,
        "image": IMAGE,
        "imagePullPolicy": "IfNotPresent",
        "env": ENV,
        "envFrom": ENV_FROM,
        "resources": {"limits": dict(limits), "requests": dict(limits)},
        "volumeMounts": [{"name": "shm", "mountPath": "/dev/shm"}, {"name": "scratch", "mountPath": "/tmp"}],
    }
    if ports:
        c["ports"] = ports
    if name == "ray-head":
        c["lifecycle"] = {"preStop": {"exec": {"command": ["/bin/sh", "-c", "ray stop"]}}}
    return c


def pod(cont: dict, gpu: bool = False) -> dict:
    spec = {
        "serviceAccountName": SERVICE_ACCOUNT,
        "containers": [cont],
        "volumes": [{"name": "shm", "emptyDir": {"medium": "Memory", "sizeLimit": "16Gi"}},
                    {"name": "scratch", "emptyDir": {}}],
    }
    if gpu:
        spec["tolerations"] = [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
        spec["nodeSelector"] = {"nvidia.com/gpu.present": "true"}
    return {"spec": spec}


def cluster_spec(gpu_workers: int, cpu_workers: int) -> dict:
    head_ports = [{"containerPort": 6379, "name": "gcs-server"}, {"containerPort": 8265, "name": "dashboard"},
                  {"containerPort": 10001, "name": "client"}]
    return {
        "rayVersion": RAY_VERSION,
        "enableInTreeAutoscaling": True,
        "headGroupSpec": {
            "serviceType": "ClusterIP",
            "rayStartParams": {"dashboard-host": "0.0.0.0", "num-cpus": "0", "disable-usage-stats": "true"},
            "template": pod(container("ray-head", "4", "16Gi", ports=head_ports)),
        },
        "workerGroupSpecs": [
            {
                "groupName": "gpu",
                "replicas": gpu_workers,
                "minReplicas": 0,
                "maxReplicas": 8,
                "rayStartParams": {"disable-usage-stats": "true"},
                "template": pod(container("ray-worker", "8", "32Gi", gpu=1), gpu=True),
            },
            {
                "groupName": "cpu",
                "replicas": cpu_workers,
                "minReplicas": 0,
                "maxReplicas": 4,
                "rayStartParams": {"disable-usage-stats": "true"},
                "template": pod(container("ray-worker", "16", "64Gi")),
            },
        ],
    }


def raycluster() -> dict:
    return {
        "apiVersion": "ray.io/v1",
        "kind": "RayCluster",
        "metadata": {"name": "valor", "namespace": NAMESPACE, "labels": {"app": "valor"}},
        "spec": cluster_spec(gpu_workers=2, cpu_workers=1),
    }


def rayjob(stage: str) -> dict:
    s = STAGES[stage]
    name = "valor-pipeline" if stage == "pipeline" else f"valor-{stage}"
    entry = " ".join(["python", "-m", "workflows.cli", "run", "--config", CONFIG, *s["args"]])
    return {
        "apiVersion": "ray.io/v1",
        "kind": "RayJob",
        "metadata": {"name": name, "namespace": NAMESPACE, "labels": {"app": "valor", "valor/stage": stage}},
        "spec": {
            "entrypoint": entry,
            "runtimeEnvYAML": yaml.safe_dump(RUNTIME_ENV, sort_keys=False),
            "submissionMode": "K8sJobMode",
            "shutdownAfterJobFinishes": True,
            "ttlSecondsAfterFinished": 3600,
            "backoffLimit": 0,
            "rayClusterSpec": cluster_spec(gpu_workers=s["gpu"], cpu_workers=s["cpu"]),
        },
    }


def documents() -> dict[str, tuple[str, dict]]:
    out = {"raycluster.yaml": ("long-lived RayCluster for `ray job submit` (port-forward svc/valor-head-svc 8265)",
                               raycluster())}
    for stage, s in STAGES.items():
        out[f"rayjob-{stage}.yaml"] = (s["what"], rayjob(stage))
    return out


class _Dumper(yaml.SafeDumper):
    """No &anchors/*aliases (repeated blocks are written out) and multi-line strings as literal blocks."""

    def ignore_aliases(self, data):  # noqa: D401
        return True


_Dumper.add_representer(str, lambda d, s: d.represent_scalar("tag:yaml.org,2002:str", s,
                                                             style="|" if "\n" in s else None))


def render(what: str, doc: dict) -> str:
    head = (f"# {what}\n# Generated by cluster/kuberay/generate.py - edit that script, not this file.\n"
            f"# kubectl apply -n {NAMESPACE} -f cluster/kuberay/<this file>  (see cluster/README.md)\n")
    return head + yaml.dump(doc, Dumper=_Dumper, sort_keys=False, width=120)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--check", action="store_true")
    args = p.parse_args(argv)
    stale = []
    for fname, (what, doc) in documents().items():
        text = render(what, doc)
        path = HERE / fname
        if args.check:
            if not path.exists() or path.read_text() != text:
                stale.append(fname)
        else:
            path.write_text(text)
    if stale:
        print(f"out of date: {', '.join(stale)} (run python cluster/kuberay/generate.py)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
