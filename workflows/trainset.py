"""Training data for `valor train` / `valor evaluate --checkpoint`: a features SOURCE (+ labels) -> {split: AVVPArrays}.

SOURCE is one of
    sim[:SEED[:k=v,...]]   LLP-sim (valor_core.sim) on the LLP annotations dir: real weak labels, real val/test GT,
                           simulated student features and teacher logits. `k=v` are SimConfig overrides, e.g.
                           `sim:0:frame_dim=256,clip_dim=128` (smaller features for quick runs). The preset's `features`
                           picks the simulated inputs (VGGish/ResNet/R(2+1)D-like, or CLIP/CLAP embeddings for valor++).
    URI                    a features dataset (local dir or s3://bucket/prefix; rows with status "ok"); weak labels and
                           the split come from the table, dense val/test GT from the annotations dir (joined by id).
                           The preset's `features` picks the student inputs (INPUTS):
                             clip_clap            `valor extract` embeddings: audio = clap_emb (10, d), frames =
                                                  clip_emb (10, d) (one step per segment), no clip stream
                             vggish_resnet_r2p1d  `valor import llp` columns: audio = vggish (10, 128), frames = res152
                                                  (80, 2048) (8 steps per segment), clips = r2plus1d (10, 512)
                             clip_clap_maps       `valor import llp` columns, the official VALOR++ inputs: audio =
                                                  clap_maps (64, 768), frames = clip_feat (10, 768), clips = r2plus1d

Labels (the harvested targets of the valor loss), first match wins:
    --labels URI           a `valor harvest` output (video_id, audio_labels (10,25), visual_labels (10,25); thresholds
                           in its `_harvest.json`), joined by video id; every train video must have a row
    beside the features    the harvest output beside an extraction dataset (workflows.features.labels_uri), when complete
    imported               the dataset's audio_pseudo / visual_pseudo columns (`valor import llp --clip/--clap`)
    on the fly             valor_core.labels.harvest_labels on the source's teacher logits with the run's LabelConfig
                           (Table 6 thresholds by default)

The model's input sizes follow the data (`adapt_model`) for LLP-sim and the extraction embeddings only: audio_dim /
audio_steps / frame_dim / frame_steps / clip_dim are set from the array shapes and the change is recorded in the run's
`data.adapted` param (LLP-sim has one frame step per segment where the paper's ResNet-152 stream has 8; the embeddings'
widths are the teachers'). The paper's feature kinds are never re-shaped: a dataset lacking one of the preset's columns,
or holding it in another shape than the preset's model dims, is a DataError naming the preset, column and shapes.
"""
from __future__ import annotations

import json
import os
from typing import Any, Optional

import numpy as np

from valor_core.arrays import AVVPArrays
from valor_core.classes import NUM_SEGMENTS
from valor_core.config import replace
from valor_core.labels import harvest_labels, modality_agnostic, thresholds_for
from valor_core.llp import default_annotations, load_split
from valor_core.sim import SimConfig, parse_sim_source, simulate
from workflows.features import RELEASED, column_array, features_dataset, labels_complete, labels_uri, read_labels

SPLITS = ("train", "val", "test")
EMBEDDINGS = "clip_clap"  # the extraction embeddings: the one feature kind whose sizes follow the data
# TrainConfig.features -> {student input: dataset column}; the RELEASED columns' sizes must be the preset's
INPUTS = {
    EMBEDDINGS: {"audio": "clap_emb", "frames": "clip_emb"},
    "vggish_resnet_r2p1d": {"audio": "vggish", "frames": "res152", "clips": "r2plus1d"},
    "clip_clap_maps": {"audio": "clap_maps", "frames": "clip_feat", "clips": "r2plus1d"},
}
PSEUDO = {"audio_labels": "audio_pseudo", "visual_labels": "visual_pseudo"}  # imported pseudo-labels
IMPORTED_LABELS = "imported pseudo-labels"


class DataError(ValueError):
    pass


def parse_source(source: str) -> tuple[str, Any, dict]:
    """("sim", seed, overrides) or ("uri", uri, {})."""
    try:
        sim = parse_sim_source(source)
    except ValueError as err:
        raise DataError(str(err)) from None
    return ("sim", sim[0], sim[1]) if sim is not None else ("uri", str(source), {})


# --- model input sizes follow the data --------------------------------------------------------------------------------


def adapt_model(cfg, arrays: AVVPArrays):
    """(cfg with the model's input sizes set from `arrays`, {field: (old, new)} of what changed)."""
    m = cfg.model
    want = {"audio_dim": int(arrays.audio.shape[-1])}
    if hasattr(m, "audio_steps"):  # 0 = the audio has one step per segment
        want["audio_steps"] = 0 if arrays.audio.shape[1] == NUM_SEGMENTS else int(arrays.audio.shape[1])
    if arrays.frames is not None:
        steps = arrays.frames.shape[1] // NUM_SEGMENTS
        want.update(frame_dim=int(arrays.frames.shape[-1]), frame_steps=int(max(steps, 1)))
    else:
        want.update(frame_dim=0)
    want["clip_dim"] = int(arrays.clips.shape[-1]) if arrays.clips is not None else 0
    changed = {k: (getattr(m, k), v) for k, v in want.items() if getattr(m, k) != v}
    if changed:
        cfg = replace(cfg, **{f"model.{k}": v for k, (_, v) in changed.items()})
    return cfg, changed


def preset_shapes(cfg) -> dict[str, tuple[int, int]]:
    """{student input: (steps, width) per video} the preset's model takes (streams of width 0 are absent)."""
    m = cfg.model
    shapes = {"audio": (getattr(m, "audio_steps", 0) or NUM_SEGMENTS, m.audio_dim)}
    if m.frame_dim:
        shapes["frames"] = (NUM_SEGMENTS * m.frame_steps, m.frame_dim)
    if m.clip_dim:
        shapes["clips"] = (NUM_SEGMENTS, m.clip_dim)
    return shapes


# --- labels -----------------------------------------------------------------------------------------------------------


def _harvest_on_the_fly(data: dict[str, AVVPArrays], labels_cfg) -> dict:
    th_a, th_v = thresholds_for(labels_cfg, "audio"), thresholds_for(labels_cfg, "visual")
    for arrays in data.values():
        if arrays.clap_logits is None or arrays.clip_logits is None:
            continue
        arrays.audio_labels = harvest_labels(arrays.clap_logits, arrays.weak, th_a, labels_cfg.filter_by_weak)
        arrays.visual_labels = harvest_labels(arrays.clip_logits, arrays.weak, th_v, labels_cfg.filter_by_weak)
        if labels_cfg.modality_agnostic:  # Table 2: a OR v for both modalities
            arrays.audio_labels = arrays.visual_labels = modality_agnostic(arrays.audio_labels, arrays.visual_labels)
    return {"audio": [float(x) for x in th_a], "visual": [float(x) for x in th_v],
            "filter_by_weak": bool(labels_cfg.filter_by_weak),
            "modality_agnostic": bool(labels_cfg.modality_agnostic), "source": "on the fly (LabelConfig)"}


def _join_harvest(data: dict[str, AVVPArrays], uri: str) -> dict:
    try:
        meta, table = read_labels(uri)
    except FileNotFoundError as err:
        raise DataError(f"labels {uri}: no complete harvest output there ({err})") from None
    ids = np.asarray(table.column("video_id").to_pylist()).astype(str)
    audio = column_array(table, "audio_labels", (10, 25), np.uint8, ids)
    visual = column_array(table, "visual_labels", (10, 25), np.uint8, ids)
    if "visual_soft" in table.column_names:  # `valor refine lsld`: soft visual targets (LSLD Eq. 4), float32
        visual = column_array(table, "visual_soft", (10, 25), np.float32, ids)
    where = {v: i for i, v in enumerate(ids.tolist())}
    for name, arrays in data.items():
        rows = np.array([where.get(v, -1) for v in arrays.video_ids.tolist()], dtype=np.int64)
        missing = np.flatnonzero(rows < 0)
        if name == "train" and missing.size:
            shown = ", ".join(arrays.video_ids[missing[:5]].tolist())
            raise DataError(f"labels {uri}: {missing.size} train video(s) have no harvested labels ({shown}, ...)")
        if missing.size == len(rows):
            continue
        safe = np.where(rows < 0, 0, rows)
        arrays.audio_labels, arrays.visual_labels = audio[safe], visual[safe]
        arrays.audio_labels[missing] = 0
        arrays.visual_labels[missing] = 0
    return {**(meta if isinstance(meta, dict) else {}), "source": uri}


# --- sources ----------------------------------------------------------------------------------------------------------


def _load_sim(seed: int, overrides: dict, cfg, annotations: str, splits) -> tuple[dict, dict]:
    overrides = dict(overrides)
    overrides.setdefault("features", cfg.features)
    try:
        data = simulate(annotations, seed, splits=splits, config=SimConfig(), **overrides)
    except TypeError as err:
        raise DataError(f"sim overrides {overrides}: {err}") from None
    teachers = {"clip": "LLP-sim CLIP stand-in", "clap": "LLP-sim CLAP stand-in", "sim_seed": seed,
                "sim_overrides": overrides}
    return data, teachers


def _first(table, name: str) -> Optional[str]:
    if name not in table.column_names or table.num_rows == 0:
        return None
    values = sorted({str(v) for v in table.column(name).to_pylist() if v is not None})
    return values[0] if len(values) == 1 else json.dumps(values)


def _row_shape(table, name: str) -> tuple[int, int]:
    """(T, d) of a per-row (T, d) column (fixed-size or variable lists, or a fixed-shape tensor)."""
    import pyarrow as pa

    t = table.schema.field(name).type
    if isinstance(t, pa.FixedShapeTensorType):
        return int(t.shape[0]), int(t.shape[-1])
    if pa.types.is_fixed_size_list(t) and pa.types.is_fixed_size_list(t.value_type):
        return int(t.list_size), int(t.value_type.list_size)
    col = table.column(name)
    for i in range(len(col)):  # variable lists: the first non-empty row
        value = col[i].as_py()
        if value:
            return len(value), len(value[0])
    raise DataError(f"column {name!r} is empty")


def _input_columns(uri: str, cfg, names: list[str]) -> dict[str, str]:
    """{student input: column} for the preset's feature kind (INPUTS); DataError naming what the dataset lacks."""
    if cfg.features not in INPUTS:
        raise DataError(f"preset {cfg.preset}: unknown features {cfg.features!r} (expected one of {', '.join(INPUTS)})")
    if cfg.features == EMBEDDINGS:
        cols = dict(INPUTS[EMBEDDINGS])
        missing = [c for c in ("video_id", "weak", *cols.values()) if c not in names]
        if missing:
            hint = ("; it holds imported features: train it with features=vggish_resnet_r2p1d or clip_clap_maps"
                    if any(c in names for c in RELEASED) else "")
            raise DataError(f"features {uri}: column(s) {', '.join(missing)} missing (has {', '.join(names)}){hint}")
        return cols
    shapes = preset_shapes(cfg)
    cols = {role: INPUTS[cfg.features][role] for role in shapes}
    for role, col in cols.items():
        if col not in names:
            raise DataError(f"preset {cfg.preset} needs column {col} {shapes[role]}; the dataset has none ({uri}: "
                            f"{', '.join(names)})")
    if "weak" not in names or "video_id" not in names:
        raise DataError(f"features {uri}: columns video_id and weak needed (has {', '.join(names)})")
    return cols


def _input_shape(uri: str, cfg, role: str, col: str, table) -> tuple[int, int]:
    """The (T, d) to read `col` as: the embeddings' width follows the data; the paper's kinds must be the preset's."""
    got = _row_shape(table, col)
    if cfg.features == EMBEDDINGS:
        return NUM_SEGMENTS, got[1]
    want = preset_shapes(cfg)[role]
    if got != want:
        raise DataError(f"preset {cfg.preset} needs column {col} {want}; the dataset has {got} ({uri}); no preset is "
                        "re-shaped to other inputs")
    return want


def _load_uri(uri: str, annotations: str, splits, cfg) -> tuple[dict, dict]:
    """A features dataset -> {split: AVVPArrays} with the inputs of the preset's feature kind (INPUTS). Rows are
    selected in NumPy after conversion, never with Arrow filter/take (see workflows.features)."""
    dataset = features_dataset(uri)
    names = dataset.schema.names
    cols = _input_columns(uri, cfg, names)
    extra = ["split", "status", "clip_logits", "clap_logits", "clip_teacher", "clip_checkpoint", "clap_teacher",
             "clap_checkpoint", *PSEUDO.values()]
    table = dataset.to_table(columns=[c for c in ["video_id", "weak", *cols.values(), *extra] if c in names])
    if table.num_rows == 0:
        raise DataError(f"features {uri}: empty dataset")
    ids = np.asarray(table.column("video_id").to_pylist()).astype(str)
    arrays = {"weak": column_array(table, "weak", (25,), np.uint8, ids)}
    for role, col in cols.items():
        arrays[role] = column_array(table, col, _input_shape(uri, cfg, role, col, table), np.float32, ids,
                                    allow_null=True)
    for name in ("clip_logits", "clap_logits"):
        if name in table.column_names:
            arrays[name] = column_array(table, name, (10, 25), np.float32, ids, allow_null=True)
    if all(c in table.column_names for c in PSEUDO.values()):
        for name, col in PSEUDO.items():
            arrays[name] = column_array(table, col, RELEASED[col][1], np.uint8, ids)
    usable = np.ones(len(ids), bool)
    if "status" in table.column_names:  # "partial" rows lack one teacher: no student input for that modality
        usable &= np.asarray(table.column("status").to_pylist(), dtype=object) == "ok"
    for role in cols:
        usable &= np.isfinite(arrays[role]).all(axis=(1, 2))
    _, first = np.unique(ids, return_index=True)  # a video written twice is used once
    once = np.zeros(len(ids), bool)
    once[first] = True
    usable &= once
    split_col = np.asarray(table.column("split").to_pylist()).astype(str) if "split" in table.column_names else None
    data: dict[str, AVVPArrays] = {}
    for split in splits:
        if split_col is not None:
            mask = split_col == split
        else:  # no split column: place videos by the LLP split files
            mask = np.isin(ids, load_split(annotations, split).video_ids)
        rows = np.flatnonzero(mask & usable)
        if rows.size == 0:
            continue
        a = AVVPArrays(video_ids=ids[rows], **{name: values[rows] for name, values in arrays.items()})
        if split in ("val", "test"):
            gt = load_split(annotations, split)
            where = gt.index()
            keep = np.array([where.get(v, -1) for v in a.video_ids.tolist()])
            if (keep < 0).all():
                raise DataError(f"features {uri}: none of its {split} videos is in the LLP {split} annotations")
            a = a.take(np.flatnonzero(keep >= 0))
            keep = keep[keep >= 0]
            a.audio_gt, a.visual_gt = gt.audio_gt[keep], gt.visual_gt[keep]
        data[split] = a
    imported = [c for c in RELEASED if c in names]
    teachers = {"imported": imported} if imported else {
        "clip": _first(table, "clip_teacher"), "clip_checkpoint": _first(table, "clip_checkpoint"),
        "clap": _first(table, "clap_teacher"), "clap_checkpoint": _first(table, "clap_checkpoint")}
    return data, teachers


def _subsample(arrays: AVVPArrays, n: Optional[int], seed: int) -> AVVPArrays:
    if not n or n >= len(arrays):
        return arrays
    rows = np.sort(np.random.default_rng([seed, 0x7EA1]).choice(len(arrays), size=n, replace=False))
    return arrays.take(rows)


def load_training_data(features: str, cfg, *, labels: Optional[str] = None, annotations: Optional[str] = None,
                       splits=SPLITS, max_train: Optional[int] = None, max_eval: Optional[int] = None):
    """({split: AVVPArrays}, cfg with input sizes adapted to the data, meta for MLflow)."""
    annotations = annotations or default_annotations()
    kind, value, overrides = parse_source(features)
    if kind == "sim":
        data, teachers = _load_sim(value, overrides, cfg, annotations, splits)
    else:
        data, teachers = _load_uri(value, annotations, splits, cfg)
    if "train" in splits and "train" not in data:
        raise DataError(f"features {features}: no train videos")
    if "train" in data:
        data["train"] = _subsample(data["train"], max_train, cfg.seed)
    for split in ("val", "test"):
        if split in data:
            data[split] = _subsample(data[split], max_eval, cfg.seed)
    imported = kind == "uri" and all(a.audio_labels is not None for a in data.values())
    if cfg.loss == "ma-refined" and not labels:  # MA stage 3: modality-aware labels only, never VALOR's
        raise DataError(f"preset {cfg.preset} (loss ma-refined) needs --labels: a `valor refine ma` output")
    labels_used = labels or (labels_uri(value) if kind == "uri" and labels_complete(labels_uri(value)) else None)
    if labels_used:
        for arrays in data.values():  # a harvest output wins over imported pseudo-labels
            arrays.audio_labels = arrays.visual_labels = None
        thresholds = _join_harvest(data, labels_used)
    elif imported:
        labels_used = IMPORTED_LABELS
        thresholds = {"source": IMPORTED_LABELS}
    else:
        labels_used = "on the fly"
        thresholds = _harvest_on_the_fly(data, cfg.labels)
    first = next(iter(data.values()))
    cfg, changed = adapt_model(cfg, first)
    if changed and kind == "uri" and cfg.features != EMBEDDINGS:  # never: _input_shape checked the preset's sizes
        raise DataError(f"preset {cfg.preset}: its inputs would have to be re-shaped ({changed})")
    meta = {"features": features, "labels": labels_used, "annotations": os.path.abspath(annotations)
            if "://" not in annotations else annotations,
            "videos": {k: int(len(v)) for k, v in data.items()}, "thresholds": thresholds, "teachers": teachers,
            "adapted": {k: list(v) for k, v in changed.items()}, "max_train": max_train}
    return data, cfg, meta


def load_eval_split(features: str, split: str, cfg, annotations: Optional[str] = None) -> AVVPArrays:
    """One val/test split's features (with GT) for scoring a checkpoint trained with `cfg`."""
    annotations = annotations or default_annotations()
    kind, value, overrides = parse_source(features)
    if kind == "sim":
        data, _ = _load_sim(value, overrides, cfg, annotations, (split,))
    else:
        data, _ = _load_uri(value, annotations, (split,), cfg)
    if split not in data:
        raise DataError(f"features {features}: no {split} videos")
    return data[split]
