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
                             vggish_resnet_r2p1d  `valor import llp` / `valor extract --features vggish,res152,r2plus1d`
                                                  columns: audio = vggish (10, 128), frames = res152 (80, 2048) (8 steps
                                                  per segment), clips = r2plus1d (10, 512)
                             clip_clap_maps       the official VALOR++ inputs: audio = clap_maps (64, 768), frames =
                                                  clip_feat (10, 768) (an extraction's clip_emb when it has no
                                                  clip_feat: both are L2-normalised CLIP embeddings), clips = r2plus1d
    [URI, URI, ...]        several features datasets as one (`valor train --features A --features B`): each read as
                           above, concatenated by video id per split, after workflows.features.check_mix allowed them
                           (no video in two; the same column types; the same media and teachers/backbone weights
                           recorded by extraction datasets). LLP-sim does not mix.

Labels (the harvested targets of the valor loss), first match wins:
    --labels URI           a `valor harvest` output (video_id, audio_labels (10,25), visual_labels (10,25); thresholds
                           in its `_harvest.json`), joined by video id; every train video must have a row
    beside the features    the harvest output beside an extraction dataset (workflows.features.labels_uri), when complete
    imported               the dataset's audio_pseudo / visual_pseudo columns (`valor import llp --clip/--clap`)
    on the fly             valor_core.labels.harvest_labels on the source's teacher logits with the run's LabelConfig
                           (Table 6 thresholds by default)
With several datasets, --labels applies to all of them; otherwise each dataset's labels are found as above, and a
source left without labels leaves the mixture without labels (an error when the preset's loss needs them).

The model's input sizes follow the data (`adapt_model`) for LLP-sim and the extraction embeddings only: audio_dim /
audio_steps / frame_dim / frame_steps / clip_dim are set from the array shapes and the change is recorded in the run's
`data.adapted` param (LLP-sim has one frame step per segment where the paper's ResNet-152 stream has 8; the embeddings'
widths are the teachers'). The paper's feature kinds are never re-shaped: a dataset lacking one of the preset's columns,
or holding it in another shape than the preset's model dims, is a DataError naming the preset, column and shapes.
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Optional, Sequence, Union

import numpy as np

from valor_core.arrays import AVVPArrays
from valor_core.classes import NUM_SEGMENTS
from valor_core.config import replace
from valor_core.labels import harvest_labels, modality_agnostic, thresholds_for
from valor_core.llp import (DEFAULT_ANNOTATIONS, EVAL_AUDIO, EVAL_VISUAL, SPLIT_FILES, default_annotations,
                            load_split)
from valor_core.presets import PRESETS
from valor_core.sim import SimConfig, parse_sim_source, simulate
from valor_core.tuning_objective import LogitsError
from workflows.features import (RELEASED, MixError, check_mix, check_values, column_array, features_dataset,
                                labels_complete, labels_uri, read_labels)
from workflows.outputs import read_marker

SPLITS = ("train", "val", "test")
EMBEDDINGS = "clip_clap"  # the extraction embeddings: the one feature kind whose sizes follow the data
# TrainConfig.features -> {student input: dataset column}; the RELEASED columns' sizes must be the preset's
INPUTS = {
    EMBEDDINGS: {"audio": "clap_emb", "frames": "clip_emb"},
    "vggish_resnet_r2p1d": {"audio": "vggish", "frames": "res152", "clips": "r2plus1d"},
    "clip_clap_maps": {"audio": "clap_maps", "frames": "clip_feat", "clips": "r2plus1d"},
}
# an input column an extraction dataset holds under another name (the same values: L2-normalised CLIP embeddings)
ALIASES = {"clip_feat": "clip_emb"}
PSEUDO = {"audio_labels": "audio_pseudo", "visual_labels": "visual_pseudo"}  # imported pseudo-labels
LABEL_FIELDS = ("audio_labels", "visual_labels")
IMPORTED_LABELS = "imported pseudo-labels"


class DataError(ValueError):
    pass


def source_list(features: Union[str, Sequence[str]]) -> list[str]:
    """The features sources of a run: one string, or a sequence of them (several datasets mixed); DataError for an
    empty list, a source given twice, or LLP-sim among several."""
    sources = [str(features)] if isinstance(features, str) else [str(f) for f in features]
    if not sources:
        raise DataError("no features source given")
    if len(sources) > 1:
        twice = [s for i, s in enumerate(sources) if s in sources[:i]]
        if twice:
            raise DataError(f"features {twice[0]} given twice")
        sim = [s for s in sources if parse_source(s)[0] == "sim"]
        if sim:
            raise DataError(f"features {sim[0]}: LLP-sim cannot be mixed with other sources; give it alone")
    return sources


def parse_source(source: str) -> tuple[str, Any, dict]:
    """("sim", seed, overrides) or ("uri", uri, {})."""
    try:
        sim = parse_sim_source(source)
    except ValueError as err:
        raise DataError(str(err)) from None
    return ("sim", sim[0], sim[1]) if sim is not None else ("uri", str(source), {})


# --- defaults that follow the data: its annotations and its feature kind -----------------------------------------------


def annotations_record(manifest: str, annotations: Optional[str] = None) -> dict:
    """What a features dataset's marker records of its annotations ({"annotations": DIR} or {}): `annotations` when
    given and not the LLP files shipped with valor, else the local folder of `manifest` when it holds the LLP
    annotation files of its videos (the dense val/test GT beside the manifest, as the demo corpus has it)."""
    if annotations:
        here = os.path.abspath(annotations) if "://" not in annotations else annotations
        return {} if here == DEFAULT_ANNOTATIONS else {"annotations": here}
    folder = os.path.dirname(os.path.abspath(manifest)) if "://" not in str(manifest) else None
    files = (SPLIT_FILES["val"], SPLIT_FILES["test"], EVAL_AUDIO, EVAL_VISUAL)
    if folder and all(os.path.isfile(os.path.join(folder, f)) for f in files):
        return {"annotations": folder}
    return {}


def recorded_annotations(source: str) -> Optional[str]:
    """The annotations dir a features dataset records in its marker (`valor extract` of a corpus whose manifest sits
    beside its LLP annotation files, e.g. the demo corpus; `valor import llp --annotations DIR`), else None."""
    if parse_source(source)[0] == "sim":
        return None
    marker = read_marker(str(source).rstrip("/")) or {}
    return marker.get("annotations") or None


def annotations_for(features: Union[str, Sequence[str]], given: Optional[str] = None) -> str:
    """The annotations a run uses: `given` (--annotations), else the one the features dataset(s) record (all the
    same), else $VALOR_ANNOTATIONS or the LLP files shipped with valor."""
    if given:
        return given
    recorded = {recorded_annotations(s) for s in source_list(features)}
    return recorded.pop() if len(recorded) == 1 and None not in recorded else default_annotations()


def data_kinds(names: Sequence[str]) -> list[str]:
    """The feature kinds (INPUTS) whose every column a dataset with columns `names` holds."""
    def has(col: str) -> bool:
        return col in names or ALIASES.get(col) in names

    return [kind for kind, cols in INPUTS.items() if all(has(c) for c in cols.values())]


def _kind_fix(names: Sequence[str], what: str = "") -> str:
    """"; it holds <what> features: <the fix>" -- what a user types to train on what the dataset holds: `--set
    features=clip_clap` for the embeddings (the one kind whose sizes follow the data), else a preset of the dataset's
    kind; "" when it holds no kind."""
    kinds = data_kinds(names)
    if EMBEDDINGS in kinds:
        return f"; it holds {what or 'CLIP/CLAP'} features: train on them with --set features={EMBEDDINGS}"
    for kind in kinds:
        presets = [name for name, p in PRESETS.items() if p.features == kind]
        if presets:
            return f"; it holds {what or kind} features: use --preset {' or --preset '.join(presets[:2])}"
    return ""


def follow_data(cfg, features: Union[str, Sequence[str]]) -> tuple[Any, Optional[str]]:
    """(cfg, note): a preset whose feature kind the dataset(s) lack trains on the CLIP/CLAP embeddings they hold (the
    one kind whose sizes follow the data); the note says so. Anything else is left to the checks that name the fix."""
    sources = source_list(features)
    if any(parse_source(s)[0] == "sim" for s in sources):
        return cfg, None
    kinds = [set(data_kinds(features_dataset(s).schema.names)) for s in sources]
    common = set.intersection(*kinds) if kinds else set()
    if cfg.features in common or EMBEDDINGS not in common:
        return cfg, None
    note = (f"preset {cfg.preset} reads {cfg.features}; {', '.join(sources)} holds CLIP/CLAP embeddings: training "
            f"{cfg.preset} on them (features={EMBEDDINGS}; --set features={cfg.features} insists on the preset's)")
    return replace(cfg, features=EMBEDDINGS), note


def split_sizes(annotations: str, splits) -> dict[str, int]:
    """{split: videos of the whole val/test split in the annotations}: what a score on fewer videos is a subset of."""
    return {s: int(len(load_split(annotations, s))) for s in splits if s in ("val", "test")}


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
            hint = _kind_fix(names, "imported" if any(c in names for c in RELEASED) else "")
            raise DataError(f"features {uri}: column(s) {', '.join(missing)} missing (has {', '.join(names)}){hint}")
        return cols
    shapes = preset_shapes(cfg)
    cols = {role: INPUTS[cfg.features][role] for role in shapes}
    cols = {role: ALIASES[col] if col not in names and ALIASES.get(col) in names else col for role, col in cols.items()}
    for role, col in cols.items():
        if col not in names:
            raise DataError(f"preset {cfg.preset} needs column {col} {shapes[role]}; the dataset has none ({uri}: "
                            f"{', '.join(names)}){_kind_fix(names)}")
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


def _check_usable(uri: str, arrays: dict, columns: dict, ids, usable) -> None:
    """DataError naming the dataset, column and videos when a usable row holds corrupt values (NaN/inf or absurd
    magnitudes: workflows.features.check_values): a corrupt video is never dropped in silence."""
    for name, col in columns.items():
        try:
            check_values(arrays[name][usable], f"features {uri}", col, ids[usable])
        except LogitsError as err:
            raise DataError(str(err)) from None


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
    _check_usable(uri, arrays, {**cols, **{n: n for n in ("clip_logits", "clap_logits") if n in arrays}}, ids, usable)
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
                raise DataError(f"features {uri}: none of its {len(keep)} {split} videos is in the {split} "
                                f"annotations of {annotations}: pass --annotations DIR (the dense GT of these videos)")
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


def _own_labels(data: dict, uri: str, cfg) -> tuple[str, dict]:
    """A features dataset's labels (no --labels): the harvest beside it, its imported pseudo-labels, else harvested on
    the fly from its teacher logits. Sets them on `data`; returns (what was used, thresholds)."""
    beside = labels_uri(uri)
    if labels_complete(beside):
        for arrays in data.values():  # a harvest output wins over imported pseudo-labels
            arrays.audio_labels = arrays.visual_labels = None
        return beside, _join_harvest(data, beside)
    if all(a.audio_labels is not None for a in data.values()):
        return IMPORTED_LABELS, {"source": IMPORTED_LABELS}
    return "on the fly", _harvest_on_the_fly(data, cfg.labels)


def _concat(parts: list[AVVPArrays]) -> AVVPArrays:
    """The rows of every part; a field missing from one part is missing from the result."""
    if len(parts) == 1:
        return parts[0]
    out = {}
    for f in dataclasses.fields(AVVPArrays):
        values = [getattr(p, f.name) for p in parts]
        out[f.name] = None if any(v is None for v in values) else np.concatenate(values)
    return AVVPArrays(**out)


def _load_mixed(uris: list[str], annotations: str, splits, cfg, labels: Optional[str], with_labels: bool = True):
    """Several features datasets -> ({split: AVVPArrays}, teachers, labels used, thresholds); DataError (one line,
    before the arrays are read) when check_mix refuses them, and when a source has no labels the loss needs."""
    cols = [list(_input_columns(u, cfg, features_dataset(u).schema.names).values()) for u in uris]
    try:
        check_mix(uris, cols)
    except MixError as err:
        raise DataError(str(err)) from None
    loaded = [_load_uri(u, annotations, splits, cfg) for u in uris]
    used: list = []
    if labels:
        for d, _ in loaded:
            for arrays in d.values():  # a harvest output wins over imported pseudo-labels
                arrays.audio_labels = arrays.visual_labels = None
    elif with_labels:
        used = [_own_labels(d, u, cfg) for u, (d, _) in zip(uris, loaded)]
        unlabelled = [u for u, (d, _) in zip(uris, loaded) if any(a.audio_labels is None for a in d.values())]
        if unlabelled and len(unlabelled) < len(uris):
            from valor_core.fit import TARGETS  # torch-bound: only here

            if set(LABEL_FIELDS) & set(TARGETS.get(cfg.loss, ())):
                raise DataError(f"features {unlabelled[0]}: no segment labels (no harvest beside it, no imported "
                                f"pseudo-labels, no teacher logits) and preset {cfg.preset}'s loss {cfg.loss} needs "
                                "them for every source: give --labels, or harvest it")
    data = {}
    for split in splits:
        parts = [d[split] for d, _ in loaded if split in d]
        if parts:
            data[split] = _concat(parts)
    teachers = {"sources": {u: t for u, (_, t) in zip(uris, loaded)}}
    if labels:
        return data, teachers, labels, _join_harvest(data, labels)
    if not with_labels:
        return data, teachers, None, {}
    kinds = {u: what for u, (what, _) in zip(uris, used)}
    one = len(set(kinds.values())) == 1 and next(iter(kinds.values())) in (IMPORTED_LABELS, "on the fly")
    return (data, teachers, next(iter(kinds.values())) if one else json.dumps(kinds),
            {"sources": {u: th for u, (_, th) in zip(uris, used)}})


def _check_and_subsample(data: dict, sources: list[str], splits, max_train, max_eval, seed: int) -> None:
    if "train" in splits and "train" not in data:
        raise DataError(f"features {', '.join(sources)}: no train videos")
    if "train" in data:
        data["train"] = _subsample(data["train"], max_train, seed)
    for split in ("val", "test"):
        if split in data:
            data[split] = _subsample(data[split], max_eval, seed)


def _check_targets(data: dict, sources: list[str], cfg, labels_used) -> None:
    """DataError (before Ray starts) when the train split lacks what the preset's loss trains on."""
    if "train" not in data:
        return
    from valor_core.fit import TARGETS  # torch-bound: imported where used

    missing = [name for name in TARGETS.get(cfg.loss, ()) if getattr(data["train"], name) is None]
    if missing:
        raise DataError(f"features {', '.join(sources)}: preset {cfg.preset}'s loss {cfg.loss} trains on "
                        f"{', '.join(missing)}, which the data do not give (labels: {labels_used}; no harvest beside "
                        "it, no imported pseudo-labels, no CLIP and CLAP logits to harvest from): give --labels URI "
                        "(a `valor harvest` output)")


def load_training_data(features: Union[str, Sequence[str]], cfg, *, labels: Optional[str] = None,
                       annotations: Optional[str] = None, splits=SPLITS, max_train: Optional[int] = None,
                       max_eval: Optional[int] = None):
    """({split: AVVPArrays}, cfg with input sizes adapted to the data, meta for MLflow). `features`: one source, or
    several features datasets trained on as one (module doc). Annotations: `annotations`, else the ones the
    dataset records (annotations_for)."""
    sources = source_list(features)
    annotations = annotations_for(sources, annotations)
    kind, value, overrides = parse_source(sources[0])
    if cfg.loss == "ma-refined" and not labels:  # MA stage 3: modality-aware labels only, never VALOR's
        raise DataError(f"preset {cfg.preset} (loss ma-refined) needs --labels: a `valor refine ma` output")
    if len(sources) > 1:
        data, teachers, labels_used, thresholds = _load_mixed(sources, annotations, splits, cfg, labels)
        _check_and_subsample(data, sources, splits, max_train, max_eval, cfg.seed)
    else:
        if kind == "sim":
            data, teachers = _load_sim(value, overrides, cfg, annotations, splits)
        else:
            data, teachers = _load_uri(value, annotations, splits, cfg)
        _check_and_subsample(data, sources, splits, max_train, max_eval, cfg.seed)
        if labels:
            for arrays in data.values():  # a harvest output wins over imported pseudo-labels
                arrays.audio_labels = arrays.visual_labels = None
            labels_used, thresholds = labels, _join_harvest(data, labels)
        elif kind == "uri":
            labels_used, thresholds = _own_labels(data, value, cfg)
        else:
            labels_used, thresholds = "on the fly", _harvest_on_the_fly(data, cfg.labels)
    _check_targets(data, sources, cfg, labels_used)
    first = next(iter(data.values()))
    cfg, changed = adapt_model(cfg, first)
    if changed and kind == "uri" and cfg.features != EMBEDDINGS:  # never: _input_shape checked the preset's sizes
        raise DataError(f"preset {cfg.preset}: its inputs would have to be re-shaped ({changed})")
    meta = {"features": sources[0] if len(sources) == 1 else sources, "labels": labels_used,
            "annotations": os.path.abspath(annotations) if "://" not in annotations else annotations,
            "videos": {k: int(len(v)) for k, v in data.items()}, "thresholds": thresholds, "teachers": teachers,
            "adapted": {k: list(v) for k, v in changed.items()}, "max_train": max_train,
            "videos_in_split": split_sizes(annotations, data)}
    return data, cfg, meta


def load_eval_split(features: Union[str, Sequence[str]], split: str, cfg,
                    annotations: Optional[str] = None) -> AVVPArrays:
    """One val/test split's features (with GT) for scoring a checkpoint trained with `cfg` (`features`: one source or
    several datasets, as load_training_data; annotations: as load_training_data)."""
    sources = source_list(features)
    annotations = annotations_for(sources, annotations)
    kind, value, overrides = parse_source(sources[0])
    if len(sources) > 1:
        data, _, _, _ = _load_mixed(sources, annotations, (split,), cfg, None, with_labels=False)
    elif kind == "sim":
        data, _ = _load_sim(value, overrides, cfg, annotations, (split,))
    else:
        data, _ = _load_uri(value, annotations, (split,), cfg)
    if split not in data:
        raise DataError(f"features {features}: no {split} videos")
    return data[split]
