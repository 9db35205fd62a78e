"""Checkpoints of `valor train`: one owner for how they are written, found and loaded.

A checkpoint is a directory (a Ray Train checkpoint `epoch_NNN/`, or the `checkpoint/` artifact of the MLflow run):

    model.pt        the weights after that epoch (state_dict)          best_model.pt  the best-val weights so far
    optimizer.pt    the optimiser state (resuming)                     state.json     epoch, best epoch, history
    config.json     {"train": TrainConfig as a dict, "data": what it was trained on, "run_id": MLflow run}
    rng.pt          the random streams to continue (a Ray Train checkpoint of `valor ave train --ray`)

Written by `save_checkpoint_dir`, read back to resume a training by `read_resume`, loaded as a model by
`load_checkpoint_model`; nothing else opens these files.

Found by `resolve_checkpoint(REF)`: a checkpoint dir, a .pt file in one, a Ray Train run dir (its newest epoch), a
folder holding one such run (`valor run`'s `<output>/train`; several are listed), an s3:// prefix (downloaded), or an
MLflow run id or its first 8+ characters (as `valor compare` shows them) - looked up in the tracking store given, else
in the default one and the `mlflow.db` of each `valor run` output under `runs/` (`find_run`).
`official:PRESET:PATH` is an official checkpoint (PRESET one of han, valor, valor+, valor++; PATH a state dict as the
official scripts save it, local or s3://): its config is the preset's, its weights are mapped by valor_core.official,
and it records no features source.
"""
from __future__ import annotations

import glob
import json
import os
import shutil
import sqlite3
import tempfile
from dataclasses import dataclass
from typing import Optional

from valor_core.checkpoint_io import load_weights
from valor_core.config import TrainConfig, to_dict
from valor_core.configio import build
from workflows import objstore, tracking


OFFICIAL = "official:"
PIPELINE_STORES = "runs/*/mlflow.db"  # where `valor run` outputs keep their runs (paths.output under runs/)
# checkpoints written before these HANConfig fields existed used what valor then had (VALOR's sequential update)
LEGACY_MODEL = {"update": "sequential", "audio_steps": 0}


class CheckpointError(ValueError):
    """A checkpoint that cannot be found, loaded or applied; the message names it."""


def parse_official(ref: str) -> Optional[tuple[str, str]]:
    """(preset, path) of an `official:PRESET:PATH` spec; None for any other reference."""
    if not ref.startswith(OFFICIAL):
        return None
    from valor_core.official import LAYOUTS  # torch-bound

    preset, sep, path = ref[len(OFFICIAL):].partition(":")
    if not sep or not path or preset not in LAYOUTS:
        raise CheckpointError(f"{ref!r}: expected official:PRESET:PATH with PRESET one of {', '.join(LAYOUTS)}")
    return preset, path


def save_checkpoint_dir(path: str, *, model_state: dict, best_state: dict, optimizer_state: Optional[dict],
                        state: dict, config: dict, rng: Optional[dict] = None) -> str:
    import torch

    os.makedirs(path, exist_ok=True)
    torch.save(model_state, os.path.join(path, "model.pt"))
    torch.save(best_state, os.path.join(path, "best_model.pt"))
    if optimizer_state is not None:
        torch.save(optimizer_state, os.path.join(path, "optimizer.pt"))
    if rng is not None:
        torch.save(rng, os.path.join(path, "rng.pt"))
    with open(os.path.join(path, "state.json"), "w") as f:
        json.dump(state, f, indent=1, default=float)
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(config, f, indent=1)
    return path


@dataclass
class Resumed:
    """What a training checkpoint hands back to the training it continues (the weights go into the model and
    optimiser passed to `read_resume`)."""

    state: dict  # state.json: epoch, best_value, best_epoch, history, ...
    best_state: dict  # best_model.pt
    rng: Optional[dict]  # rng.pt, None when the checkpoint has none


def read_resume(path: str, model, optimizer, device) -> Resumed:
    """Load checkpoint dir `path`'s model.pt and optimizer.pt into `model` and `optimizer` (on `device`) and return
    the rest of what resuming needs."""
    model.load_state_dict(load_weights(os.path.join(path, "model.pt"), map_location=device))
    optimizer.load_state_dict(load_weights(os.path.join(path, "optimizer.pt"), map_location=device))
    rng = os.path.join(path, "rng.pt")
    with open(os.path.join(path, "state.json")) as f:
        state = json.load(f)
    return Resumed(state=state, best_state=load_weights(os.path.join(path, "best_model.pt")),
                   rng=load_weights(rng, map_location=None) if os.path.exists(rng) else None)


RESULT_FILES = ("best_model.pt", "config.json", "state.json")  # what a finished training's scoring reads


def copy_result(src: str, dst: str) -> str:
    """Copy checkpoint dir `src`'s RESULT_FILES into `dst` (a local dir that outlives Ray Train's view of `src`)."""
    for name in RESULT_FILES:
        shutil.copy(os.path.join(src, name), os.path.join(dst, name))
    return dst


def read_state(path: str) -> dict:
    """Checkpoint dir `path`'s state.json (epoch, best_value, best_epoch, history)."""
    with open(os.path.join(path, "state.json")) as f:
        return json.load(f)


def read_meta(path: str) -> dict:
    """A resolved checkpoint's config.json ({"train", "data", ...}); {} for an official spec, which records none."""
    if parse_official(path) is not None:
        return {}
    with open(os.path.join(path, "config.json")) as f:
        return json.load(f)


def read_best_weights(path: str) -> dict:
    """Checkpoint dir `path`'s best-val weights (best_model.pt, on the CPU)."""
    return load_weights(os.path.join(path, "best_model.pt"), error=CheckpointError)


def config_from_dict(data: dict):
    """TrainConfig from its `to_dict` form (the `train` section of a checkpoint's config.json)."""
    if isinstance(data.get("model"), dict):
        data = {**data, "model": {**LEGACY_MODEL, **data["model"]}}
    return build(TrainConfig, data)


def load_checkpoint_model(path: str, which: str = "best_model.pt"):
    """(HAN with the checkpoint's weights in eval mode, TrainConfig, config.json dict) from a checkpoint directory
    (a Ray Train checkpoint of `valor train`, or the `checkpoint/` artifact of its MLflow run), or from a resolved
    `official:PRESET:PATH` spec (meta: the preset's config, no data, the official source)."""
    from valor_core.fit import build_model  # torch-bound: imported where used, so the CLI starts without torch

    official = parse_official(path)
    if official is not None:
        from valor_core.official import LAYOUTS, load_official

        model, cfg = load_official(official[1], official[0])
        return model, cfg, {"train": to_dict(cfg), "data": {},
                            "official": {"preset": official[0], "path": official[1],
                                         "source": LAYOUTS[official[0]].source}}
    with open(os.path.join(path, "config.json")) as f:
        meta = json.load(f)
    cfg = config_from_dict(meta["train"])
    model = build_model(cfg)
    state = load_weights(os.path.join(path, which), error=CheckpointError)
    model.load_state_dict(state)
    model.eval()
    return model, cfg, meta


def _download(uri: str, single: bool = False) -> str:
    """A local copy of an s3:// checkpoint prefix (a temporary dir), or with `single` of one file."""
    import pyarrow.fs as pafs

    fs, path = objstore.fs_for(uri)
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.NotFound or (single and info.type != pafs.FileType.File):
        raise FileNotFoundError(f"{uri}: no such checkpoint {'file' if single else 'prefix'}")
    local = tempfile.mkdtemp(prefix="valor-ckpt-")
    if single:
        local = os.path.join(local, os.path.basename(path) or "checkpoint.pt")
    pafs.copy_files(path, local, source_filesystem=fs, destination_filesystem=pafs.LocalFileSystem())
    return local


def _training_runs(d: str) -> list[str]:
    """The Ray Train run dirs (holding epoch_*/config.json) one or two levels under `d` (`<output>/train/<trial>`,
    `<output>/train/<run>/<trial>`)."""
    def has_epochs(x: str) -> bool:
        return any(e.startswith("epoch_") and os.path.exists(os.path.join(x, e, "config.json")) for e in os.listdir(x))

    found = []
    for pattern in ("*", os.path.join("*", "*")):
        found += [x for x in sorted(glob.glob(os.path.join(d, pattern))) if os.path.isdir(x) and has_epochs(x)]
    return found


def _sqlite_runs(uri: str, ref: str) -> list[str]:
    """Active run ids of the sqlite store `uri` equal to `ref` or (8+ characters) starting with it; read without
    MLflow, so looking in several stores costs milliseconds."""
    path = uri[len("sqlite:///"):]
    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
            rows = db.execute("SELECT run_uuid FROM runs WHERE lifecycle_stage = 'active' AND (run_uuid = ? OR "
                              "(length(?) >= 8 AND run_uuid LIKE ?))", (ref, ref, ref + "%")).fetchall()
    except sqlite3.Error:
        return []
    return sorted({r[0] for r in rows})


def find_run(ref: str, tracking_uri: Optional[str] = None) -> tuple[str, str]:
    """(run id, tracking URI) of an MLflow run id or prefix: in `tracking_uri` when given, else in the default store
    and the stores of `valor run` outputs (PIPELINE_STORES). CheckpointError when no store has it or several runs match
    (the message lists them); a server store is asked as it is (exact ids)."""
    if tracking_uri:
        uri = tracking.resolve_tracking_uri(tracking_uri)
        if not uri.startswith("sqlite:///"):
            return ref, uri  # an MLflow server answers for its runs
        stores = [uri]
    else:
        stores = [tracking.resolve_tracking_uri(None)]
        stores += [u for u in ("sqlite:///" + os.path.abspath(p) for p in sorted(glob.glob(PIPELINE_STORES)))
                   if u not in stores]
    found = [(run, uri) for uri in stores if tracking.store_exists(uri) for run in _sqlite_runs(uri, ref)]
    if len(found) == 1:
        return found[0]
    if found:
        raise CheckpointError(f"{ref!r} matches {len(found)} runs; pass one (with --tracking-uri): "
                              + "; ".join(f"{run} in {uri}" for run, uri in found))
    raise CheckpointError(f"{ref!r} is neither a checkpoint path nor a run id in {', '.join(stores)} (a `valor run` "
                          "output's runs are in its mlflow.db: pass --tracking-uri sqlite:///OUTPUT/mlflow.db, or "
                          "--checkpoint OUTPUT/train)")


def checkpoint_source(ref: str, resolved: str, tracking_uri: Optional[str] = None) -> str:
    """Where the checkpoint that REF names lives for good, for records (never a temporary download): the resolved
    local folder, an s3:// prefix or official spec as given, an MLflow run's `checkpoint/` artifact URI."""
    if parse_official(ref) is not None or objstore.is_s3(ref):
        return ref
    if os.path.exists(ref):
        return os.path.abspath(resolved)
    run, uri = find_run(ref, tracking_uri)
    return f"{tracking.client(uri, create=False).get_run(run).info.artifact_uri.rstrip('/')}/checkpoint"


def resolve_checkpoint(ref: str, tracking_uri: Optional[str] = None) -> str:
    """A local checkpoint directory (best_model.pt + config.json) for RUN_OR_PATH:
    a checkpoint dir; a best_model.pt / model.pt file; a Ray Train run dir (its newest epoch_* checkpoint);
    a folder with one such run one or two levels down (several: CheckpointError listing them); an s3:// checkpoint
    prefix (downloaded); or an MLflow run id or 8+ character prefix (its `checkpoint/` artifact; find_run).
    `official:PRESET:PATH` resolves to the same spec with a local absolute PATH (an s3:// PATH downloaded)."""
    def ray_run_dir(d: str) -> Optional[str]:
        epochs = sorted(x for x in os.listdir(d) if x.startswith("epoch_") and
                        os.path.exists(os.path.join(d, x, "config.json")))
        return os.path.join(d, epochs[-1]) if epochs else None

    official = parse_official(ref)
    if official is not None:
        preset, path = official
        path = _download(path, single=True) if objstore.is_s3(path) else path
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{ref}: no such checkpoint file {path}")
        return f"{OFFICIAL}{preset}:{os.path.abspath(path)}"
    if objstore.is_s3(ref):
        ref = _download(ref)
    if os.path.isfile(ref):
        return os.path.dirname(os.path.abspath(ref))
    if os.path.isdir(ref):
        if os.path.exists(os.path.join(ref, "config.json")):
            return ref
        found = ray_run_dir(ref)
        if found:
            return found
        runs = _training_runs(ref)
        if len(runs) == 1:
            return ray_run_dir(runs[0])
        if runs:
            raise CheckpointError(f"{ref}: {len(runs)} training runs there; pass one of: {', '.join(runs)}")
        raise FileNotFoundError(f"{ref}: no valor checkpoint (config.json + best_model.pt) there, nor a training run "
                                "(epoch_*/) one or two folders down")
    import mlflow

    ref, uri = find_run(ref, tracking_uri)
    try:
        return mlflow.artifacts.download_artifacts(run_id=ref, artifact_path="checkpoint", tracking_uri=uri)
    except Exception as err:
        raise FileNotFoundError(f"{ref!r} is neither a checkpoint path nor a run id with a checkpoint in {uri} "
                                f"({type(err).__name__}: {err})") from None
