"""`valor refine lsld`: LSLD's caption scoring over a features dataset -> refined segment labels beside it.

    valor refine lsld --features URI [--clip SPEC] [--clap SPEC] [--out URI] [--alpha 4] [--beta 0.4]
                      [--max-labels 3] [--rule code|paper] [--no-reweight] [--json]

For every usable video of a `valor extract` dataset (status ok/partial): the captions of every non-empty subset of its
weak labels plus "other" are embedded by the same teachers that made the features (CLIP text tower for clip_emb, CLAP's
for clap_emb, "This is a sound of " before the audio ones); each segment keeps the labels of its most similar caption
("other": none), per modality (valor_core.lsld.denoise). The visual labels of the train split are then re-weighted into
soft labels (Eq. 4, alpha/beta) against the cosine of each segment with the class names.

Output (default: `lsld_labels` beside the features, workflows.features.beside): the labels schema of `valor harvest`
(video_id, split, weak, audio_labels, visual_labels (10x25 uint8, the denoised hard labels), audio_ok, visual_ok) plus
visual_soft (10x25 float32, the re-weighted visual targets that `valor train --labels` then uses), with provenance
(teachers, LSLDConfig, prompts, code version) in the schema metadata `valor.harvest` and in `_harvest.json`, written
last. Train on it: `valor train --preset lsld --features URI --labels OUT`.
"""
from __future__ import annotations

import argparse
import json
import posixpath
import sys
import time
from typing import Any, Optional

import numpy as np

from valor_core.classes import NUM_CLASSES, NUM_SEGMENTS
from valor_core.config import LSLDConfig, TeacherConfig, to_dict
from valor_core.configio import ConfigError, build
from valor_core.lsld import CLASS_TEXTS, PHRASES, class_similarity, denoise, reweight
from valor_core.tuning_objective import LogitsError
from workflows import objstore
from workflows.config import StorageConfig
from workflows.features import (beside, finish_labels, column_array, features_dataset, fixed_list, teacher_ok,
                                usable_rows, write_labels_part)
from workflows.harvest import HARVEST_META_KEY, _labels_array, _same_uri
from workflows.outputs import LockedError, OwnershipError, claim, clear_owned, lock
from workflows.refine import method_parsers
from workflows.runtime import code_version

OUT_NAME = "lsld_labels"
EMB = {"audio": ("clap_emb", "clap_logits"), "visual": ("clip_emb", "clip_logits")}


def _log(msg: str) -> None:
    print(f"[refine lsld] {msg}", file=sys.stderr, flush=True)


def read_embeddings(features: str, storage_opts: Optional[dict] = None) -> dict:
    """{video_ids, splits, weak (N,25), clip_emb / clap_emb (N,10,d), clip_ok / clap_ok (N,), teachers} of the usable
    rows (each video once); LogitsError naming what the dataset lacks."""
    dataset = features_dataset(features, storage_opts)
    names = dataset.schema.names
    missing = [c for c in ("video_id", "weak", "clip_emb", "clap_emb") if c not in names]
    if missing:
        raise LogitsError(f"{features}: features dataset lacks column(s) {', '.join(missing)} (LSLD needs the "
                          "per-segment embeddings of `valor extract`)")
    extra = ["split", "status", "clip_ok", "clap_ok", "clip_teacher", "clap_teacher"]
    table = dataset.to_table(columns=["video_id", "weak", "clip_emb", "clap_emb", *[c for c in extra if c in names]])
    ids = np.asarray(table.column("video_id").to_pylist(), dtype=object)
    keep = usable_rows(table)
    _, first = np.unique(ids.astype(str), return_index=True)
    once = np.zeros(len(ids), bool)
    once[first] = True
    rows = np.flatnonzero(keep & once)
    if rows.size == 0:
        raise LogitsError(f"{features}: no usable videos (status ok or partial)")
    out = {"video_ids": ids[rows].astype(str),
           "splits": (np.asarray(table.column("split").to_pylist(), dtype=object)[rows].astype(str)
                      if "split" in table.column_names else np.full(rows.size, "", object)),
           "weak": column_array(table, "weak", (NUM_CLASSES,), np.float32, ids)[rows]}
    for col, flag in (("clip_emb", "clip_logits"), ("clap_emb", "clap_logits")):
        width = _width(table, col)
        out[col] = column_array(table, col, (NUM_SEGMENTS, width), np.float32, ids, allow_null=True)[rows]
        ok = teacher_ok(table, flag)[rows] & np.isfinite(out[col]).all(axis=(1, 2))
        out[col.replace("_emb", "_ok")] = ok
    out["teachers"] = {k: sorted({str(v) for v in table.column(k).to_pylist()}) for k in ("clip_teacher",
                                                                                          "clap_teacher")
                       if k in table.column_names}
    return out


def _width(table, col: str) -> int:
    import pyarrow as pa

    t = table.schema.field(col).type
    if pa.types.is_fixed_size_list(t) and pa.types.is_fixed_size_list(t.value_type):
        return int(t.value_type.list_size)
    value = next((v for v in table.column(col).to_pylist() if v), None)
    if not value:
        raise LogitsError(f"column {col!r} is empty")
    return len(value[0])


def refine_arrays(data: dict, clip, clap, cfg: LSLDConfig = LSLDConfig()) -> dict:
    """The science on arrays: {audio, visual (N,10,25) uint8 y~, visual_soft (N,10,25) float32 y^}. `clip` / `clap`
    are teachers (valor_core.teachers) whose `encode_text` embeds prompts."""
    audio = denoise(data["weak"], data["clap_emb"], clap.encode_text, cfg.audio_prompt, cfg.max_labels,
                    ok=data["clap_ok"])
    visual = denoise(data["weak"], data["clip_emb"], clip.encode_text, "", cfg.max_labels, ok=data["clip_ok"])
    audio[~data["clap_ok"]] = 0  # no teacher output: no labels, the *_ok flag says so (as harvest does)
    visual[~data["clip_ok"]] = 0
    soft = visual.astype(np.float32)
    if cfg.reweight:
        train = np.asarray(data["splits"]) == "train"
        mask = (train if train.any() else np.ones(len(train), bool)) & data["clip_ok"]
        sim = class_similarity(np.nan_to_num(data["clip_emb"]), clip.encode_text(list(CLASS_TEXTS)))
        soft = reweight(visual, sim, cfg, mask=mask)
    return {"audio": audio, "visual": visual, "visual_soft": soft}


def labels_table(data: dict, labels: dict, meta: dict):
    """The labels schema of `valor harvest` (its column writer) plus visual_soft float32; `meta` in the metadata."""
    import pyarrow as pa

    table = pa.table({
        "video_id": pa.array([str(x) for x in data["video_ids"]], pa.string()),
        "split": pa.array([str(x) for x in data["splits"]], pa.string()),
        "weak": _labels_array((np.asarray(data["weak"]) > 0).astype(np.uint8)),
        "audio_labels": _labels_array(labels["audio"]),
        "visual_labels": _labels_array(labels["visual"]),
        "audio_ok": pa.array(np.asarray(data["clap_ok"], bool)),
        "visual_ok": pa.array(np.asarray(data["clip_ok"], bool)),
        "visual_soft": fixed_list(labels["visual_soft"], dtype=np.float32),
    })
    return table.replace_schema_metadata({HARVEST_META_KEY: json.dumps(meta)})


def refine(features: str, out: Optional[str] = None, *, clip_spec: str, clap_spec: str,
           cfg: LSLDConfig = LSLDConfig(), teacher_cfg: Optional[TeacherConfig] = None, rows_per_file: int = 4096,
           storage_opts: Optional[dict] = None) -> dict:
    """Refine every usable video of `features` into labels at `out` (default beside the features); the summary."""
    from valor_core.teachers import check_teacher_files, load_teachers

    t0 = time.perf_counter()
    out = out or beside(features, OUT_NAME)
    if _same_uri(out, features):
        raise OwnershipError(f"--out {out} is the features dataset itself: choose another path")
    check_teacher_files(clip_spec, clap_spec)
    data = read_embeddings(features, storage_opts)  # bad input fails here, before anything is written
    claim(out, "labels", opts=storage_opts)
    with lock(out, f"valor refine lsld -> {out}", storage_opts):
        clip, clap = load_teachers(clip_spec, clap_spec, teacher_cfg or TeacherConfig())
        labels = refine_arrays(data, clip, clap, cfg)
        weak_segments = int((np.asarray(data["weak"]) > 0).sum() * NUM_SEGMENTS)
        soft = labels["visual_soft"]
        meta = {"method": "lsld", "rule": "best caption per segment (LSLD Sec. 3.3) + visual re-weighting (Eq. 4)",
                "config": to_dict(cfg), "teachers": {"clip": clip_spec, "clap": clap_spec},
                "dataset_teachers": data["teachers"], "phrases": list(PHRASES), "source": str(features),
                "code_version": code_version(), "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        clear_owned(out, storage_opts)
        n = len(data["video_ids"])
        files = 0
        for start in range(0, n, rows_per_file):
            sl = slice(start, start + rows_per_file)
            part = labels_table({k: v[sl] for k, v in data.items() if k != "teachers"},
                                {k: v[sl] for k, v in labels.items()}, meta)
            write_labels_part(out, files, part, storage_opts)
            files += 1
        splits: dict[str, int] = {}
        for s in data["splits"]:
            splits[str(s)] = splits.get(str(s), 0) + 1
        summary = {"videos": n, "files": files, "splits": splits, "out": str(out),
                   "weak_segment_labels": weak_segments, "audio_labels": int(labels["audio"].sum()),
                   "visual_labels": int(labels["visual"].sum()),
                   "soft_labels": int(((soft > 0) & (soft < 1)).sum()), **meta,
                   "seconds": round(time.perf_counter() - t0, 3)}
        finish_labels(out, summary, storage_opts)
    return summary


# --- CLI -------------------------------------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> int:
    opts = objstore.s3_options(StorageConfig())
    try:
        given = {"alpha": args.alpha, "beta": args.beta, "max_labels": args.max_labels, "rule": args.rule,
                 "reweight": not args.no_reweight}
        cfg = build(LSLDConfig, {k: v for k, v in given.items() if v is not None})
        summary = refine(args.features, args.out, clip_spec=args.clip, clap_spec=args.clap, cfg=cfg,
                         teacher_cfg=TeacherConfig(device=args.device), rows_per_file=args.rows_per_file,
                         storage_opts=opts)
    except (ConfigError, LogitsError, FileNotFoundError, ValueError, OwnershipError, LockedError,
            PermissionError) as err:
        print(f"valor refine lsld: {err}", file=sys.stderr)
        return 2
    _log(f"{summary['videos']} videos -> {summary['out']}: {summary['audio_labels']} audio / "
         f"{summary['visual_labels']} visual segment labels of {summary['weak_segment_labels']} weak, "
         f"{summary['soft_labels']} soft visual labels ({summary['seconds']} s)")
    if args.json:
        print(json.dumps(summary))
    return 0


def register(subparsers: Any) -> None:
    """Adds `valor refine lsld` (workflows.refine owns `valor refine`)."""
    methods = method_parsers(subparsers)
    d, t = LSLDConfig(), TeacherConfig()
    p = methods.add_parser("lsld", help="LSLD caption scoring + visual re-weighting -> refined labels",
                           description=__doc__.split("\n\n")[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--features", required=True, metavar="URI", help="a `valor extract` features dataset (dir or s3://)")
    p.add_argument("--clip", default=t.clip, metavar="SPEC", help="the CLIP teacher that made clip_emb "
                   "(default %(default)s)")
    p.add_argument("--clap", default=t.clap, metavar="SPEC", help="the CLAP teacher that made clap_emb "
                   "(default %(default)s)")
    p.add_argument("--out", default=None, metavar="URI", help=f"output (default: {OUT_NAME} beside the features)")
    p.add_argument("--alpha", type=float, default=None, help=f"Eq. 4 alpha (default {d.alpha})")
    p.add_argument("--beta", type=float, default=None, help=f"Eq. 4 beta (default {d.beta})")
    p.add_argument("--max-labels", type=int, default=None, help=f"most weak labels captioned (default {d.max_labels})")
    p.add_argument("--rule", choices=("code", "paper"), default=None, help="Eq. 4 as the code (default) or the paper")
    p.add_argument("--no-reweight", action="store_true", help="hard denoised visual labels (Table 2 'DeN' ablation)")
    p.add_argument("--device", default="auto", help="teacher device: auto | cpu | cuda")
    p.add_argument("--rows-per-file", type=int, default=4096, help="videos per Parquet file (default %(default)s)")
    p.add_argument("--json", action="store_true", help="last stdout line: the summary as JSON")
    p.set_defaults(func=run)
