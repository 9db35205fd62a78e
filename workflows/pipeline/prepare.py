"""Inputs `valor run` creates on first use when the config asks for them (before anything is read or hashed):

    corpus.generate: true     the demo corpus at paths.videos: real H.264/AAC mp4 files (valor_core.media.synth) and
                              LLP annotation files in the exact LLP formats; made once, reused while its recipe holds
    teachers.clip/clap: tiny  small random-init CLIP/CLAP teachers built through the real libraries
                              (valor_core.teachers.tiny) under paths.work; the config gets their concrete specs

The storage section's endpoint/keys are exported to this driver's standard AWS variables (the stages read them there);
they never enter a Ray runtime_env (workflows.runtime.worker_env drops them).
"""
from __future__ import annotations

import contextlib
import csv
import dataclasses
import json
import os
import posixpath
import time
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from valor_core.classes import CLASSES
from valor_core.media.synth import synth_corpus
from valor_core.teachers.tiny import write_tiny_teachers
from workflows.config import ConfigError, PipelineConfig

CORPUS_MARKER = "corpus.json"
TINY = "tiny"


def prepare_inputs(cfg: PipelineConfig, log: Callable[[str], None] = print,
                   create: bool = True) -> tuple[PipelineConfig, dict]:
    """Create what the config asks to be created on first use: the demo corpus and the tiny teachers.

    Returns the config with the teachers resolved to concrete specs, and the environment they need. With
    create=False (`--plan`) nothing is written: what exists is used, what is missing is only announced."""
    env: dict[str, str] = {}
    # the S3 endpoint/keys of the config also serve the stages that read the standard AWS environment (driver only)
    for key, var in (("endpoint", "AWS_ENDPOINT_URL"), ("access_key", "AWS_ACCESS_KEY_ID"),
                     ("secret_key", "AWS_SECRET_ACCESS_KEY")):
        if getattr(cfg.storage, key):
            os.environ[var] = getattr(cfg.storage, key)
    if cfg.corpus.generate and create:
        ensure_corpus(cfg, log)
    if TINY in (cfg.teachers.clip, cfg.teachers.clap):
        specs = ensure_tiny_teachers(posixpath.join(cfg.paths.work, "teachers-tiny"), log, create)
        if specs is None:
            return cfg, env
        env.update(specs.get("env") or {})
        os.environ.update(env)
        cfg = dataclasses.replace(cfg, teachers=dataclasses.replace(
            cfg.teachers,
            clip=specs["clip"] if cfg.teachers.clip == TINY else cfg.teachers.clip,
            clap=specs["clap"] if cfg.teachers.clap == TINY else cfg.teachers.clap))
    return cfg, env


def ensure_corpus(cfg: PipelineConfig, log: Callable[[str], None] = print) -> None:
    """The generated demo corpus at paths.videos (mp4 + LLP CSVs); made once, reused while its recipe is unchanged."""
    root = cfg.paths.videos
    if "://" in root:
        raise ConfigError(f"corpus.generate needs a local paths.videos, got {root}")
    recipe = {"videos": cfg.corpus.videos, "seed": cfg.corpus.seed, "version": 1}
    marker = Path(root) / CORPUS_MARKER
    with contextlib.suppress(OSError, ValueError):
        if json.loads(marker.read_text()) == recipe:
            return
    log(f"[valor run] generating the demo corpus: {cfg.corpus.videos} synthetic 10-s mp4 videos with LLP-style labels "
        f"(seed {cfg.corpus.seed}) at {root}")
    t0 = time.time()
    synth_corpus(root, cfg.corpus.videos, seed=cfg.corpus.seed)
    write_llp_annotations(root, seed=cfg.corpus.seed)
    marker.write_text(json.dumps(recipe))
    log(f"[valor run] demo corpus ready in {time.time() - t0:.1f} s")


def write_llp_annotations(root: str, seed: int = 0, val: float = 0.25, test: float = 0.25) -> None:
    """LLP annotation files for a generated corpus (from its events.json): train/val/test weak-label splits and the dense
    audio/visual GT of val and test, in the exact LLP formats (tab-separated), so the LLP loaders read it unchanged;
    manifest.csv gains a `split` column."""
    r = Path(root)
    events = json.loads((r / "events.json").read_text())
    with open(r / "manifest.csv", newline="") as fh:
        rows = [row for row in csv.DictReader(fh, delimiter="\t")]
    names = [row["filename"] for row in rows if row["filename"] in events]
    order = np.random.default_rng(seed).permutation(len(names))
    n_val = max(1, int(round(val * len(names))))
    n_test = max(1, int(round(test * len(names))))
    split_of = {}
    for rank, i in enumerate(order):
        split_of[names[i]] = "val" if rank < n_val else "test" if rank < n_val + n_test else "train"
    weak = {row["filename"]: row["event_labels"] for row in rows}

    def write(name: str, header: list[str], body: list[list]) -> None:
        with open(r / name, "w", newline="") as fh:
            w = csv.writer(fh, delimiter="\t", lineterminator="\n")
            w.writerow(header)
            w.writerows(body)

    for split, fname in (("train", "AVVP_train.csv"), ("val", "AVVP_val_pd.csv"), ("test", "AVVP_test_pd.csv")):
        write(fname, ["filename", "event_labels"], [[n, weak[n]] for n in names if split_of[n] == split])
    write("AVVP_dataset_full.csv", ["filename", "event_labels"], [[n, weak[n]] for n in names])
    # the extraction manifest names each video's split, so the features carry it
    write("manifest.csv", ["filename", "event_labels", "split"],
          [[row["filename"], row["event_labels"], split_of.get(row["filename"], "")] for row in rows])
    for modality in ("audio", "visual"):
        body = [[n, int(on), int(off), CLASSES[int(c)]]
                for n in names if split_of[n] != "train" for c, on, off in events[n][modality]]
        write(f"AVVP_eval_{modality}.csv", ["filename", "onset", "offset", "event_labels"], body)


def ensure_tiny_teachers(directory: str, log: Callable[[str], None] = print, create: bool = True) -> Optional[dict]:
    """Small random-init CLIP/CLAP teachers (valor_core.teachers.tiny), made once in `directory` and reused after
    (None when they do not exist yet and create is False)."""
    log("[valor run] teachers: small RANDOM-INIT CLIP/CLAP models (real weights cannot be downloaded here) - the "
        "pipeline runs for real, but the logits carry no meaning; configs/llp.yaml names the paper's checkpoints")
    specs_path = Path(directory) / "specs.json"
    with contextlib.suppress(OSError, ValueError, KeyError):
        specs = json.loads(specs_path.read_text())
        files = [p for spec in (specs["clip"], specs["clap"]) for p in spec.split(":") if p]
        if all(Path(p).exists() for p in files):
            return specs
    if not create:
        log(f"[valor run] (the tiny teachers would be written to {directory})")
        return None
    t0 = time.time()
    specs = write_tiny_teachers(directory)
    log(f"[valor run] tiny teachers written to {directory} in {time.time() - t0:.1f} s")
    return specs
