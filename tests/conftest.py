"""Shared pytest setup: offline, quiet, loopback-only environment for every test."""
from __future__ import annotations

import os
from pathlib import Path

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
