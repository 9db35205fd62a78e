"""Shared pytest setup: offline, quiet, loopback-only environment for every test."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

for _key, _value in {
    "RAY_USAGE_STATS_ENABLED": "0",
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "WANDB_MODE": "disabled",
    "TOKENIZERS_PARALLELISM": "false",
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
}.items():
    os.environ.setdefault(_key, _value)

from valor_core.llp import DEFAULT_ANNOTATIONS  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
LLP_DIR = Path(DEFAULT_ANNOTATIONS)  # the LLP files shipped with valor (valor_core/data/llp)

from tests.media_fixtures import *  # noqa: E402,F401,F403  (synth_clips, broken_files, synth_corpus, tiny_teachers, ...)

SPLIT_FILES = {"train": "AVVP_train.csv", "val": "AVVP_val_pd.csv", "test": "AVVP_test_pd.csv"}


def annotation_subset(ann: Path, picks: dict[str, int]) -> dict[str, list[str]]:
    """Write into `ann` the first picks[split] rows of each real LLP split file and the dense eval files; returns the
    video ids per split."""
    ann.mkdir(parents=True, exist_ok=True)
    ids: dict[str, list[str]] = {}
    for split, name in SPLIT_FILES.items():
        lines = (LLP_DIR / name).read_text().splitlines()
        (ann / name).write_text("\n".join(lines[:1 + picks[split]]) + "\n")
        ids[split] = [ln.split("\t")[0] for ln in lines[1:1 + picks[split]]]
    for name in ("AVVP_eval_audio.csv", "AVVP_eval_visual.csv"):
        shutil.copy(LLP_DIR / name, ann / name)
    return ids


@pytest.fixture(scope="module")
def ray_local():
    """Local Ray for one test module (workflows.runtime.start_ray on 2 CPUs), shut down after it."""
    from workflows.runtime import start_ray

    shutdown = start_ray(num_cpus=2)
    yield
    shutdown()
