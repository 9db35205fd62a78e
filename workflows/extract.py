"""`valor extract`: videos -> per-segment CLIP/CLAP logits and embeddings (and, with --features, the paper's VGGish /
ResNet-152 / R(2+1)D-18 / CLAP-map features), as Parquet on a local dir or S3 (Ray Data).

    manifest (CSV) + video root (dir or s3://)                  workflows.manifest.read_manifest
      │  skip videos already in <out> (and, unless --retry-failed, in <failures>)       resumable, idempotent
    read + decode          CPU tasks: bytes from S3 / local path -> decord; T frames resized to 224 here, audio T segs
      │                    a fatal MediaError becomes a failure row (stage "decode"), the run goes on
    backbone actors        one pool per backbone of --features (valor_core.backbones): vggish (T,128), res152 (8T,2048),
                           r2plus1d (T,512), clap_maps (64,w) -- the `valor import llp` columns; res152/r2plus1d read
                           the 8-fps stack (decoded only then)
    CLIP actors            ActorPoolStrategy(min, max) x (num_gpus per actor | CPUs): (n,T,25) logits + (n,T,d) emb
    CLAP actors            same for the audio segments (skipped, and the row marked partial, when audio is missing)
      │
    write                  every `rows_per_file` videos: one Parquet file, staged under <out>/_staging, validated,
                           then published under <out>/part-*.parquet (rename locally; server-side copy on S3, where
                           an object appears complete or not at all). Failures go to <failures>/part-*.parquet.

Exactly once: a video is "done" iff a published part holds it; a killed run leaves at most staged files (hidden: their
path starts with `_`, which pyarrow.dataset and Ray Data skip) that the next run deletes and redoes. One writer per output.

Layout and schemas: workflows/features.py (the features contract) -- URI/part-*.parquet, the failures table beside it,
URI/_runs/<run>.json (what each run used), URI/_staging/ (in-flight files).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import posixpath
import sys
import time
import uuid
from dataclasses import dataclass
from typing import Any, Callable, Optional

import numpy as np

from valor_core import backbones as backbone_lib
from valor_core.backbones import clap_maps, vggish
from valor_core import teachers as teacher_lib
from valor_core.classes import NUM_CLASSES
from valor_core.config import MediaConfig, TeacherConfig, to_dict
from valor_core.media import decode
from valor_core import provenance
from valor_core.media import ffmpeg_jpeg, geometry
from valor_core.teachers import clap as clap_teacher
from valor_core.teachers.clap import check_clap_files
from valor_core.teachers.clip import check_clip_files
from valor_core.teachers.precision import resolve_precision
from workflows import objstore
from workflows.config import (ConfigError, ExtractConfig, StorageConfig, check_input_dir, check_output_uri,
                              redacted)
from workflows.features import (RUNS, SCHEMA_VERSION, STAGING, VALUE_BOUND, clean_staging, corrupt_rows, failure_schema,
                                failures_uri, fixed_list, read_failures, read_features, weights_changed)
from workflows.manifest import Entry, ManifestError, read_manifest
from workflows.outputs import LockedError, OwnershipError, claim, lock, record_run
from workflows.runtime import code_version, start_ray
from workflows.trainset import annotations_record

# --- stages (run inside Ray tasks/actors) ----------------------------------------------------------------------------


def _row_fail(stage: str, err: BaseException) -> tuple[str, str, str]:
    kind = getattr(err, "kind", None) or type(err).__name__
    reason = getattr(err, "reason", None) or str(err) or type(err).__name__
    return stage, kind, reason


def _refuse_corrupt(batch: dict, stage: str, done: np.ndarray, *outputs: np.ndarray) -> None:
    """A model output that is corrupt (NaN/inf or beyond workflows.features.VALUE_BOUND: e.g. an fp16 overflow) is a
    failure of that stage for its video (kind "nonfinite"), never a features value: `done` is cleared in place."""
    bad = done & np.logical_or.reduce([corrupt_rows(x) for x in outputs])
    for i in np.flatnonzero(bad):
        done[i] = False
        batch["fail_stage"][i], batch["fail_kind"][i] = stage, "nonfinite"
        batch["fail_reason"][i] = f"{stage} gave NaN/inf or |x| > {VALUE_BOUND:g} values"


class Decode:
    """CPU stage: read each video (path or S3 bytes) and decode T resized frames + T audio segments.

    Output columns (numpy batch): the manifest columns, `ok` (decoded), `frames` (n,T,S,S,3) uint8 (zeros when not ok),
    `audio` (n,) bytes of float32 (T, L_i) (b"" when missing: L differs across videos under the uniform policy),
    `audio_len` (n,) L_i, `audio_ok`, `wave` (n,) bytes of the whole clip's float32 wave at `wave_rate` (n,) Hz (the
    file's own rate: the audio backbones' input), optional `dense` (n,8T,S,S,3), `fail_stage`/`fail_kind`/`fail_reason`,
    `issues`, `notes`, `duration`."""

    def __init__(self, media: MediaConfig, opts: Optional[dict]):
        self.media, self.opts = media, opts

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        m = self.media
        n, T, S = len(batch["video_id"]), m.segments, m.frame_size
        frames = np.zeros((n, T, S, S, 3), np.float32 if m.frame_geometry == "official" else np.uint8)
        dense = np.zeros((n, 8 * T, S, S, 3), np.uint8) if m.dense_frames else None
        small = np.zeros((n, 8 * T, S // 2, S // 2, 3), np.uint8) if dense is not None and m.frame_geometry == \
            "official" else None  # R(2+1)D's own resize of the source frames (valor_core.media.geometry)
        audio = np.empty(n, dtype=object)
        audio_len = np.zeros(n, np.int64)
        wave, wave_rate = np.full(n, b"", dtype=object), np.zeros(n, np.int64)
        ok = np.zeros(n, bool)
        audio_ok = np.zeros(n, bool)
        fail = {k: np.full(n, "", dtype=object) for k in ("fail_stage", "fail_kind", "fail_reason")}
        issues = np.full(n, "", dtype=object)
        notes = np.full(n, "", dtype=object)
        duration = np.zeros(n, np.float32)
        for i in range(n):
            vid, src = str(batch["video_id"][i]), str(batch["source"][i])
            audio[i] = b""
            refused = str(batch["refused"][i]) if "refused" in batch else ""
            if refused:  # outside the video root: never read
                fail["fail_stage"][i], fail["fail_kind"][i], fail["fail_reason"][i] = "read", "outside_root", refused
                continue
            try:
                data: Any = objstore.read_bytes(src, self.opts) if objstore.is_s3(src) else src
                if not objstore.is_s3(src) and not os.path.exists(src):
                    raise FileNotFoundError(f"no such file: {src}")
            except Exception as err:  # noqa: BLE001 - any read problem is this video's failure
                fail["fail_stage"][i], fail["fail_kind"][i], fail["fail_reason"][i] = _row_fail("read", err)
                continue
            try:
                d = decode(data, vid, m)
            except Exception as err:  # noqa: BLE001 - MediaError (fatal kinds) or anything unexpected
                fail["fail_stage"][i], fail["fail_kind"][i], fail["fail_reason"][i] = _row_fail("decode", err)
                continue
            finally:
                del data
            ok[i] = True
            frames[i] = d.frames
            if dense is not None and d.dense_frames is not None:
                dense[i] = d.dense_frames
            if small is not None and d.dense_small is not None:
                small[i] = d.dense_small
            if d.audio is not None and not d.audio_missing:
                a = np.ascontiguousarray(d.audio, np.float32)
                audio[i], audio_len[i], audio_ok[i] = a.tobytes(), a.shape[1], True
                wave[i], wave_rate[i] = np.ascontiguousarray(d.wave, np.float32).tobytes(), d.wave_rate
            else:
                fail["fail_stage"][i] = "clap"  # the visual teacher still runs; the row will be "partial"
                fail["fail_kind"][i] = next((e.kind for e in d.issues if e.kind in ("no_audio", "audio_failed")),
                                            "no_audio")
                fail["fail_reason"][i] = d.audio_reason or "audio missing"
            issues[i] = "; ".join(f"{e.kind}: {e.reason}" for e in d.issues)
            notes[i] = "; ".join(d.notes)
            duration[i] = d.duration
        out = dict(batch)
        out.update(ok=ok, frames=frames, audio=audio, audio_len=audio_len, audio_ok=audio_ok, wave=wave,
                   wave_rate=wave_rate, issues=issues,
                   notes=notes, duration=duration, **fail)
        if dense is not None:
            out["dense"] = dense
        if small is not None:
            out["dense_small"] = small
        return out


def default_loader(kind: str) -> Callable:
    """valor_core.teachers.load_clip_teacher / load_clap_teacher: (spec, TeacherConfig) -> teacher."""
    return getattr(teacher_lib, f"load_{kind}_teacher")


def _set_threads(threads: float) -> None:
    import torch

    torch.set_num_threads(max(1, int(round(threads))))


def _cap_gpu_memory() -> None:
    """An actor holding a share of a GPU (num_gpus < 1: several model pools on one device) caps its CUDA allocator
    at that share; automatic batch sizes (valor_core.teachers.precision.auto_batch_size) then size from the cap, so
    actors that start together on one GPU do not each take half of it."""
    import ray
    import torch

    if not torch.cuda.is_available() or not ray.is_initialized():  # (get_runtime_context would start Ray)
        return
    try:
        share = float(ray.get_runtime_context().get_assigned_resources().get("GPU", 0.0))
    except AssertionError:  # the driver, not a Ray worker (the stage called in-process): the whole device is ours
        return
    if 0.0 < share < 1.0:
        torch.cuda.set_per_process_memory_fraction(share)


class _TeacherStage:
    kind = ""

    def __init__(self, spec: str, tcfg: TeacherConfig, num_cpus: float, dense: bool = False,
                 loader: Optional[Callable] = None):
        _set_threads(num_cpus)
        _cap_gpu_memory()
        self.teacher = (loader or default_loader(self.kind))(spec, tcfg)
        self.dense = dense

    def _run(self, x) -> tuple[np.ndarray, np.ndarray]:
        logits, emb = self.teacher.segment_logits(x)
        return np.asarray(logits, np.float32), np.asarray(emb, np.float32)

    def _apply(self, batch, inputs: Callable[[np.ndarray], Any], usable: np.ndarray, T: int):
        n, d = len(usable), int(self.teacher.dim)
        logits = np.zeros((n, T, NUM_CLASSES), np.float32)
        emb = np.zeros((n, T, d), np.float32)
        done = np.zeros(n, bool)
        idx = np.flatnonzero(usable)
        if len(idx):
            try:
                lg, em = self._run(inputs(idx))
                logits[idx], emb[idx], done[idx] = lg, em, True
            except Exception:  # noqa: BLE001 - isolate the bad video(s): one at a time
                for i in idx:
                    try:
                        lg, em = self._run(inputs(np.array([i])))
                        logits[i], emb[i], done[i] = lg[0], em[0], True
                    except Exception as err:  # noqa: BLE001
                        stage, kind, reason = _row_fail(self.kind, err)
                        batch["fail_stage"][i], batch["fail_kind"][i] = stage, kind
                        batch["fail_reason"][i] = reason
        _refuse_corrupt(batch, self.kind, done, logits, emb)
        batch[f"{self.kind}_logits"], batch[f"{self.kind}_emb"], batch[f"{self.kind}_ok"] = logits, emb, done
        batch[f"{self.kind}_teacher"] = np.full(n, str(getattr(self.teacher, "name", "")), dtype=object)
        batch[f"{self.kind}_checkpoint"] = np.full(n, str(getattr(self.teacher, "checkpoint", "")), dtype=object)
        return batch


class ClipStage(_TeacherStage):
    """Actor: CLIP image tower on the T frames of each decoded video. Drops the frames column (not needed later)."""

    kind = "clip"

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        batch = {k: (v.copy() if k.startswith("fail_") else v) for k, v in batch.items()}
        frames = batch.pop("frames")
        dense = batch.pop("dense", None)
        batch.pop("dense_small", None)
        T = frames.shape[1]
        batch = self._apply(batch, lambda idx: frames[idx], batch["ok"].astype(bool), T)
        if self.dense and dense is not None:
            n, d = len(frames), int(self.teacher.dim)
            out = np.zeros((n, dense.shape[1], d), np.float32)
            idx = np.flatnonzero(batch["clip_ok"])
            if len(idx):
                # the dense stack as 8T "segments" of one frame each: (n, 8T, d) image embeddings
                _, em = self._run(dense[idx])
                out[idx] = em
            batch["clip_dense_emb"] = out
        return batch


class ClapStage(_TeacherStage):
    """Actor: CLAP audio tower on the T audio segments of each video with audio. Drops the audio column."""

    kind = "clap"

    def __init__(self, spec: str, tcfg: TeacherConfig, num_cpus: float, segments: int,
                 loader: Optional[Callable] = None):
        super().__init__(spec, tcfg, num_cpus, loader=loader)
        self.T = segments

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        batch = {k: (v.copy() if k.startswith("fail_") else v) for k, v in batch.items()}
        audio, lens = batch.pop("audio"), batch.pop("audio_len")
        for k in ("frames", "dense", "dense_small"):  # the last model stage: nothing later needs them
            batch.pop(k, None)
        T = self.T

        def inputs(idx):
            segs = [np.frombuffer(audio[i], np.float32).reshape(T, int(lens[i])) for i in idx]
            if len({s.shape for s in segs}) == 1:
                return np.stack(segs)
            return segs  # ragged (uniform policy on clips of other lengths): the teacher takes a list

        usable = batch["ok"].astype(bool) & batch["audio_ok"].astype(bool)
        return self._apply(batch, inputs, usable, T)


class BackboneStage:
    """Actor: one of the paper's feature extractors (valor_core.backbones) on each decoded video: `<column>` (n, a, b)
    float32 (NaN rows where it had no input or failed; the video is then "partial") and `<name>_ok`. Frame backbones
    read the 8-fps stack (`dense`), audio backbones the whole clip (the T segments joined). Drops `drop` columns."""

    def __init__(self, name: str, weights: str, options: dict, num_cpus: float, device: str, sample_rate: int,
                 segments: int, drop: tuple = ()):
        _set_threads(num_cpus)
        _cap_gpu_memory()
        self.name, self.sample_rate, self.T, self.drop = name, int(sample_rate), int(segments), tuple(drop)
        self.entry = backbone_lib.BACKBONES[name]
        self.model = backbone_lib.build_backbone(name, weights, device, segments=segments, **options)

    def _inputs(self, batch, idx):
        if self.entry.input == "frames":  # R(2+1)D reads its own 112-px stack where the decoder made one
            return (batch["dense_small" if self.name == "r2plus1d" and "dense_small" in batch else "dense"][idx],)
        return [np.frombuffer(batch["wave"][i], np.float32) for i in idx], batch["wave_rate"][idx]

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        batch = {k: (v.copy() if k.startswith("fail_") else v) for k, v in batch.items()}
        n = len(batch["video_id"])
        shape = backbone_lib.column_shape(self.name, self.T, getattr(self.model, "width", None))
        out = np.full((n, *shape), np.nan, np.float32)
        done = np.zeros(n, bool)
        usable = batch["ok"].astype(bool)
        if self.entry.input == "audio":
            usable &= batch["audio_ok"].astype(bool)
        else:
            usable &= "dense" in batch
        idx = np.flatnonzero(usable)
        if len(idx):
            try:
                out[idx], done[idx] = self.model(*self._inputs(batch, idx)), True
            except Exception:  # noqa: BLE001 - isolate the bad video(s): one at a time
                for i in idx:
                    try:
                        out[i], done[i] = self.model(*self._inputs(batch, np.array([i])))[0], True
                    except Exception as err:  # noqa: BLE001
                        batch["fail_stage"][i], batch["fail_kind"][i], batch["fail_reason"][i] = _row_fail(
                            self.name, err)
        _refuse_corrupt(batch, self.name, done, out)
        batch[self.entry.column], batch[f"{self.name}_ok"] = out, done
        for col in self.drop:
            batch.pop(col, None)
        return batch


@dataclass(frozen=True)
class WriteSpec:
    out: str
    failures: str
    opts: Optional[dict]
    run_id: str
    segments: int
    dense: bool
    features: tuple = backbone_lib.TEACHERS  # what was extracted (valor_core.backbones.FEATURES)


def _serialize(table) -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq

    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="zstd")
    return sink.getvalue().to_pybytes()


def publish(fs, final_path: str, staging_dir: str, table) -> None:
    """Stage, validate, then publish one Parquet file so that it is never visible half-written."""
    import pyarrow.parquet as pq

    data = _serialize(table)
    tmp = posixpath.join(staging_dir, posixpath.basename(final_path))
    objstore.put_atomic(fs, tmp, data)
    with fs.open_input_file(tmp) as f:  # what the store holds is a whole Parquet file with every row
        meta = pq.read_metadata(f)
    if meta.num_rows != table.num_rows:
        raise OSError(f"staged {tmp} holds {meta.num_rows} rows, expected {table.num_rows}")
    fs.create_dir(posixpath.dirname(final_path), recursive=True)
    fs.move(tmp, final_path)  # local: rename(2); S3: CopyObject (atomic) + delete of the staged object


class Write:
    """Last stage: one Parquet part per batch (`rows_per_file` videos) + one failures part; returns a summary batch."""

    def __init__(self, spec: WriteSpec):
        self.spec = spec

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import pyarrow as pa

        s = self.spec
        ok = batch["ok"].astype(bool)
        oks = {k: batch[f"{k}_ok"].astype(bool) for k in s.features}
        done = ok & np.logical_or.reduce(list(oks.values()))
        status = np.where(np.logical_and.reduce(list(oks.values())), "ok", "partial").astype(object)
        part = f"part-{s.run_id}-{uuid.uuid4().hex[:12]}.parquet"
        fs, out_path = objstore.fs_for(s.out, s.opts)
        ffs, fail_path = objstore.fs_for(s.failures, s.opts)
        outcome = np.where(done, status, "failed").astype(object)
        idx = np.flatnonzero(done)
        if len(idx):
            T = s.segments
            weak = np.stack([np.asarray(w, np.uint8) for w in batch["weak"][idx]])
            cols = {
                "video_id": pa.array(batch["video_id"][idx].astype(str)),
                "split": pa.array(batch["split"][idx].astype(str)),
                "labels": pa.array(batch["labels"][idx].astype(str)),
                "weak": pa.FixedSizeListArray.from_arrays(pa.array(weak.reshape(-1)), NUM_CLASSES),
            }
            teachers = [k for k in backbone_lib.TEACHERS if k in s.features]
            for k in teachers:
                cols[f"{k}_ok"] = pa.array(oks[k][idx])
            for k in teachers:
                cols[f"{k}_logits"] = fixed_list(batch[f"{k}_logits"][idx], oks[k][idx])
            for k in teachers:
                cols[f"{k}_emb"] = fixed_list(batch[f"{k}_emb"][idx], oks[k][idx])
            if s.dense and "clip_dense_emb" in batch and "clip" in oks:
                cols["clip_dense_emb"] = fixed_list(batch["clip_dense_emb"][idx], oks["clip"][idx])
            for k in teachers:
                cols[f"{k}_teacher"] = pa.array(batch[f"{k}_teacher"][idx].astype(str))
                cols[f"{k}_checkpoint"] = pa.array(batch[f"{k}_checkpoint"][idx].astype(str))
            for name in (k for k in s.features if k in backbone_lib.BACKBONES):  # the `valor import llp` columns
                cols[backbone_lib.BACKBONES[name].column] = fixed_list(batch[backbone_lib.BACKBONES[name].column][idx],
                                                                       oks[name][idx])
            err = np.where(status[idx] == "ok", "", [f"{st}: {k}: {r}" for st, k, r in zip(
                batch["fail_stage"][idx], batch["fail_kind"][idx], batch["fail_reason"][idx])]).astype(str)
            cols.update({
                "status": pa.array(status[idx].astype(str)), "error": pa.array(err),
                "issues": pa.array(batch["issues"][idx].astype(str)), "notes": pa.array(batch["notes"][idx].astype(str)),
                "duration": pa.array(batch["duration"][idx].astype(np.float32)),
                "source": pa.array(batch["source"][idx].astype(str)),
                "run_id": pa.array([s.run_id] * len(idx)),
                "schema_version": pa.array(np.full(len(idx), SCHEMA_VERSION, np.int16)),
            })
            table = pa.table(cols).replace_schema_metadata({"valor.schema_version": str(SCHEMA_VERSION),
                                                            "valor.segments": str(T)})
            publish(fs, posixpath.join(out_path, part), posixpath.join(out_path, STAGING), table)
        fidx = np.flatnonzero(batch["fail_stage"].astype(str) != "")
        if len(fidx):
            ftable = pa.table({
                "video_id": pa.array(batch["video_id"][fidx].astype(str)),
                "stage": pa.array(batch["fail_stage"][fidx].astype(str)),
                "kind": pa.array(batch["fail_kind"][fidx].astype(str)),
                "reason": pa.array(batch["fail_reason"][fidx].astype(str)),
                "fatal": pa.array(~done[fidx]),
                "source": pa.array(batch["source"][fidx].astype(str)),
                "run_id": pa.array([s.run_id] * len(fidx)),
                "schema_version": pa.array(np.full(len(fidx), SCHEMA_VERSION, np.int16)),
            }, schema=failure_schema())
            # published after the features part: a kill in between only redoes this batch's failed videos
            publish(ffs, posixpath.join(fail_path, part), posixpath.join(out_path, STAGING), ftable)
        return {"video_id": batch["video_id"].astype(str), "outcome": outcome.astype(str),
                "stage": batch["fail_stage"].astype(str), "reason": batch["fail_reason"].astype(str)}


# --- driver ----------------------------------------------------------------------------------------------------------


@dataclass
class Plan:
    todo: list[Entry]
    skipped: int
    done_before: int
    failed_before: int


def plan(entries: list[Entry], out: str, failures: str, opts: Optional[dict], retry_failed: bool) -> Plan:
    """Which entries still need work: not in a published features part, nor (unless retry_failed) failed before."""
    feats = read_features(out, opts, columns=["video_id"])
    done = set(feats.column("video_id").to_pylist()) if feats is not None else set()
    fails = read_failures(out, opts, failures)
    failed = set(fails.filter(fails.column("fatal")).column("video_id").to_pylist()) if fails.num_rows else set()
    failed -= done
    skip = done | (set() if retry_failed else failed)
    todo = [e for e in entries if e.video_id not in skip]
    return Plan(todo=todo, skipped=len(entries) - len(todo), done_before=len(done & {e.video_id for e in entries}),
                failed_before=len(failed & {e.video_id for e in entries}))


def actor_pool(ds, stage, kwargs: dict, actors: tuple[int, int], batch_size: int, actor_res: dict):
    """One model stage of the pipeline: `stage` (a class) as a Ray Data ActorPoolStrategy(min, max) pool."""
    import ray

    return ds.map_batches(stage, fn_constructor_kwargs=kwargs,
                          compute=ray.data.ActorPoolStrategy(min_size=actors[0], max_size=actors[1]),
                          batch_size=batch_size, batch_format="numpy", **actor_res)


def backbone_options(cfg: ExtractConfig, name: str) -> tuple[str, dict]:
    """(weights spec, build options) of backbone `name` under `cfg` (clap_maps: the CLAP teacher spec, set later)."""
    weights = {"vggish": cfg.vggish_weights, "res152": cfg.res152_weights, "r2plus1d": cfg.r2plus1d_weights}
    options = {"pca": cfg.vggish_pca or None} if name == "vggish" else {}
    return weights.get(name, ""), options


def actor_precision(teachers: TeacherConfig, cfg: ExtractConfig) -> str:
    """The precision the teacher and backbone actors run in (both are built with `teachers.precision`): "auto"
    resolved as they resolve it (bf16 on CUDA, fp32 on CPU), their device being CUDA when build_dataset gives them
    GPUs (Ray is up). Recorded in the run's F/_runs/<run>.json ("precision"; workflows.features.recorded_precision)."""
    import ray

    device = teachers.device
    if device in (None, "", "auto"):
        gpus = float(ray.cluster_resources().get("GPU", 0.0)) > 0 and cfg.num_gpus > 0
        device = "cuda" if gpus else "cpu"
    return resolve_precision(teachers.precision, str(device).split(":")[0])


def build_dataset(todo: list[Entry], clip: str, clap: str, cfg: ExtractConfig, teachers: TeacherConfig,
                  media: MediaConfig, spec: WriteSpec, opts: Optional[dict], loaders: Optional[dict] = None):
    """The Ray Data pipeline (lazy): manifest rows -> decode tasks -> backbone actors -> CLIP actors -> CLAP actors ->
    write tasks (only the stages of `spec.features`)."""
    import ray

    features = tuple(spec.features)
    backbones = [k for k in features if k in backbone_lib.BACKBONES]
    pools = ([cfg.clip_actors] if "clip" in features else []) + ([cfg.clap_actors] if "clap" in features else []) + [
        cfg.backbone_actors] * len(backbones)
    min_actors = sum(a[0] for a in pools) or 1
    resources = ray.cluster_resources()
    gpus = float(resources.get("GPU", 0.0))
    cpus = float(resources.get("CPU", 1.0))
    node_cpus = max([n["Resources"].get("CPU", 0.0) for n in ray.nodes() if n.get("Alive")] or [cpus])
    if gpus > 0 and cfg.num_gpus > 0:
        # every pool's minimum actors fit on the GPUs at once (a share of one GPU each when there are more pools)
        actor_res = {"num_gpus": min(cfg.num_gpus, gpus / min_actors), "num_cpus": 1}
        threads = cfg.torch_threads or 1
    else:
        # the teacher stages are the bottleneck on CPU and the other stages are mostly idle: by default each teacher
        # actor's torch uses every core of its node (decode tasks and the other pool share them when they run)
        threads = cfg.torch_threads or max(1, int(node_cpus))
        # CPU-only: leave room for decode and write tasks beside the minimum actor pools (no scheduling deadlock)
        room = max(0.05, (cpus - cfg.decode_num_cpus - 0.25) / min_actors)
        actor_cpus = min(cfg.actor_num_cpus, room)
        actor_res = {"num_cpus": actor_cpus}
    items = [{"video_id": e.video_id, "source": e.source, "split": e.split, "labels": e.labels, "refused": e.error,
              "weak": np.asarray(e.weak, np.uint8)} for e in todo]
    blocks = max(1, math.ceil(len(items) / max(1, cfg.decode_batch_size)))
    ds = ray.data.from_items(items, override_num_blocks=blocks)
    ds = ds.map_batches(_decode_fn(media, opts), batch_size=cfg.decode_batch_size, num_cpus=cfg.decode_num_cpus,
                        batch_format="numpy")
    for i, name in enumerate(backbones):
        weights, options = backbone_options(cfg, name)
        drop: tuple = ()
        if i == len(backbones) - 1:  # the last backbone drops what no teacher stage after it reads
            drop = ("wave", "wave_rate") + (() if "clap" in features else ("audio", "audio_len")) + (
                () if "clip" in features or "clap" in features else ("frames", "dense", "dense_small"))
        ds = actor_pool(ds, BackboneStage, {"name": name, "weights": clap if name == "clap_maps" else weights,
                                            "options": dict(options, precision=teachers.precision),
                                            "num_cpus": threads, "device": teachers.device,
                                            "sample_rate": media.sample_rate, "segments": media.segments,
                                            "drop": drop},
                        cfg.backbone_actors, cfg.backbone_batch_size, actor_res)
    if "clip" in features:
        ds = actor_pool(ds, ClipStage, {"spec": clip, "tcfg": teachers, "num_cpus": threads, "dense": cfg.dense,
                                        "loader": (loaders or {}).get("clip")},
                        cfg.clip_actors, cfg.clip_batch_size, actor_res)
    if "clap" in features:
        ds = actor_pool(ds, ClapStage, {"spec": clap, "tcfg": teachers, "num_cpus": threads,
                                        "segments": media.segments, "loader": (loaders or {}).get("clap")},
                        cfg.clap_actors, cfg.clap_batch_size, actor_res)
    # writers are I/O: a small fixed pool (more would only add worker processes, i.e. memory, not speed)
    ds = ds.map_batches(_write_fn(spec), batch_size=cfg.rows_per_file, num_cpus=0.25, batch_format="numpy",
                        compute=ray.data.TaskPoolStrategy(size=2))
    return ds


def _decode_fn(media: MediaConfig, opts: Optional[dict]):
    dec = Decode(media, opts)
    return dec.__call__


def _write_fn(spec: WriteSpec):
    w = Write(spec)
    return w.__call__


@dataclass
class Summary:
    done: int
    failed: int
    skipped: int
    seconds: float
    out: str
    partial: int = 0
    failures: str = ""
    run_id: str = ""
    videos_per_s: float = 0.0
    by_stage: dict = dataclasses.field(default_factory=dict)

    def contract(self) -> dict:
        """The `--json` last line (CLI contract)."""
        return {"done": self.done, "failed": self.failed, "skipped": self.skipped, "seconds": round(self.seconds, 3),
                "out": self.out}


def run_extract(manifest: str, videos: str, clip: Optional[str], clap: Optional[str], out: str, *,
                cfg: ExtractConfig = ExtractConfig(),
                teachers: TeacherConfig = TeacherConfig(), media: MediaConfig = MediaConfig(),
                storage: StorageConfig = StorageConfig(), split: Optional[str] = None, failures: Optional[str] = None,
                address: Optional[str] = None, num_cpus: Optional[int] = None,
                object_store_memory: Optional[int] = None, include_dashboard: bool = False,
                loaders: Optional[dict] = None, log: Callable[[str], None] = print) -> Summary:
    """Extract teacher outputs (and the backbones of `cfg.features`) for every manifest video not yet in `out`. Starts
    (and stops) Ray unless already up. clip / clap may be None when `cfg.features` does not use them."""
    t0 = time.time()
    if media.frame_size <= 0:
        raise ValueError("extract needs a fixed frame size (media.frame_size > 0)")
    out = out.rstrip("/")
    if not objstore.is_s3(out):
        out = objstore.fs_for(out)[1]
    if not objstore.is_s3(videos):
        videos = objstore.fs_for(videos)[1]
    failures = (failures or failures_uri(out)).rstrip("/")
    opts = objstore.s3_options(storage)
    # preflight, before Ray or any decoding: storage answers, the manifest reads, the teachers' files exist, the
    # output is valor's (same teachers) and ours alone for the run
    for uri in {u for u in (out, failures, manifest, videos) if objstore.is_s3(u)}:
        objstore.check_reachable(uri, opts)
    features, media = check_features(cfg, clip, clap, media)
    entries = read_manifest(manifest, videos, split=split, opts=opts)
    made_with = {"clip": clip, "clap": clap, "media": to_dict(media)}
    if features != backbone_lib.TEACHERS:  # recorded only when not the default (markers of older outputs match)
        made_with["features"] = {k: (clip if k == "clip" else clap if k in ("clap", "clap_maps") else
                                     backbone_options(cfg, k)[0] or "hub cache") for k in features}
        if cfg.vggish_pca and "vggish" in features:
            made_with["features"]["vggish_pca"] = cfg.vggish_pca
    made_with["weights"] = weights_record(features, clip, clap, cfg)
    made_with["preprocessing"] = {k: AUDIO_PREPROCESSING[k] for k in features if k in AUDIO_PREPROCESSING}
    made_with["preprocessing"].update({k: v for k, v in geometry.frame_preprocessing(media).items() if k in features})
    marker = claim(out, "features", opts=opts, meta={"teachers": made_with, **annotations_record(manifest)})
    if "imported" in marker:
        raise OwnershipError(f"{out} holds released features imported by `valor import llp`: extract into another "
                             "--out")
    if not cfg.mixed_teachers:
        same_teachers(out, marker.get("teachers", made_with), made_with)
    claim(failures, "failures", opts=opts)
    with lock(out, f"valor extract -> {out}", opts):
        return _extract_locked(entries, clip, clap, out, failures, cfg, teachers, media, storage, manifest, videos,
                               split, address, num_cpus, object_store_memory, include_dashboard, loaders, log, t0,
                               opts, made_with["weights"])


# the official preprocessing each audio feature follows (script + valor's version of it), recorded in the dataset's
# marker so that datasets made before and after a change are not mixed (workflows.features.check_mix)
AUDIO_PREPROCESSING = {"clap": clap_teacher.OFFICIAL, "clap_maps": clap_maps.OFFICIAL, "vggish": vggish.OFFICIAL}


def check_features(cfg: ExtractConfig, clip: Optional[str], clap: Optional[str],
                   media: MediaConfig) -> tuple[tuple[str, ...], MediaConfig]:
    """Before Ray or any decoding: the features named are known, the teachers' and backbones' files exist (an error
    naming the file and how to get it). Returns (features, media with the 8-fps stack on when a frame backbone needs
    it)."""
    features = backbone_lib.parse_features(cfg.features)
    for name, spec in (("clip", clip), ("clap", clap)):
        if (name in features or (name == "clap" and "clap_maps" in features)) and not spec:
            raise ValueError(f"--{name} (a {name.upper()} teacher spec) is needed with --features "
                             f"{','.join(features)}")
    if "clip" in features:
        check_clip_files(clip)
    if "clap" in features or "clap_maps" in features:
        check_clap_files(clap)
    for name in features:
        if name in backbone_lib.BACKBONES and name != "clap_maps":
            backbone_lib.weights_path(name, backbone_options(cfg, name)[0], f"--{name}-weights")
    if cfg.vggish_pca and "vggish" in features and not os.path.isfile(cfg.vggish_pca):
        raise backbone_lib.MissingWeights(
            f"vggish PCA params {cfg.vggish_pca!r} not found: download {vggish.PCA_URL} on a machine with network "
            "access and copy it here (or leave --vggish-pca empty: no postprocessing)")
    if media.frame_source == "ffmpeg-jpeg":
        ffmpeg_jpeg.ffmpeg_binary()  # FfmpegFailed naming the program, before any video is decoded
    if any(backbone_lib.BACKBONES[k].input == "frames" for k in features if k in backbone_lib.BACKBONES):
        media = dataclasses.replace(media, dense_frames=True)
    return features, media


def weights_record(features, clip: Optional[str], clap: Optional[str], cfg: ExtractConfig) -> dict:
    """{feature: [{"file", "sha256"}]}: the content of every local weights file each feature reads (the teacher's
    config / checkpoint, the backbone's state dict and vggish PCA file), recorded in the dataset's marker and compared
    by later runs (valor_core.provenance)."""
    known: dict[str, str] = {}
    record = {}
    for k in features:
        if k == "clip":
            files = teacher_lib.teacher_files("clip", clip)
        elif k in ("clap", "clap_maps"):
            files = teacher_lib.teacher_files("clap", clap)
        else:
            path = backbone_lib.weights_path(k, backbone_options(cfg, k)[0])
            files = [f for f in (path, cfg.vggish_pca if k == "vggish" else None) if f]
        record[k] = provenance.digests(files, known)
    return record


def same_teachers(out: str, recorded: dict, now: dict) -> None:
    """OwnershipError (one line) when the dataset `out` was made with other teachers / backbones than this run: another
    spec or media config, or the same spec whose weights files now hold other content (their recorded digests)."""
    if {k: v for k, v in recorded.items() if k != "weights"} != {k: v for k, v in now.items() if k != "weights"}:
        raise OwnershipError(f"{out} was made with teachers {_teachers_text(recorded)}; this run asks for "
                             f"{_teachers_text(now)}: use a new --out (or --mixed-teachers to add to it anyway)")
    changed = weights_changed(recorded.get("weights"), now["weights"])
    if changed:
        feature, path, old, new = changed
        raise OwnershipError(f"{out} was made with {feature} weights of sha256 {old}; {path} now holds sha256 {new} "
                             "(other weights under the same spec): use a new --out (or --mixed-teachers to add to it "
                             "anyway)")


def _teachers_text(t: dict) -> str:
    return f"clip={t.get('clip')!r}, clap={t.get('clap')!r}" + ("" if "media" not in t else " (and its media config)")


def _extract_locked(entries, clip, clap, out, failures, cfg, teachers, media, storage, manifest, videos, split, address,
                    num_cpus, object_store_memory, include_dashboard, loaders, log, t0, opts,
                    weights: Optional[dict] = None) -> Summary:
    cleaned = clean_staging(out, opts)
    if cleaned:
        log(f"removed {cleaned} staged file(s) left by an interrupted run")
    p = plan(entries, out, failures, opts, cfg.retry_failed)
    run_id = time.strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:6]
    for uri in (out, failures):  # the names this run's workers write are valor's (the manifest's run patterns)
        record_run(uri, run_id, opts)
    log(f"extract: {len(entries)} videos in manifest, {p.skipped} already done/failed, {len(p.todo)} to do -> {out}")
    summary = Summary(done=0, failed=0, skipped=p.skipped, seconds=0.0, out=out, failures=failures, run_id=run_id)
    precision = None  # what the teacher and backbone actors ran in (recorded only when they ran)
    if p.todo:
        shutdown = start_ray(address, num_cpus=num_cpus, object_store_memory=object_store_memory,
                             include_dashboard=include_dashboard, log=log)
        try:
            spec = WriteSpec(out=out, failures=failures, opts=opts, run_id=run_id, segments=media.segments,
                             dense=cfg.dense and media.dense_frames,
                             features=backbone_lib.parse_features(cfg.features))
            if cfg.dense and not media.dense_frames:
                media = dataclasses.replace(media, dense_frames=True)
                spec = dataclasses.replace(spec, dense=True)
            ds = build_dataset(p.todo, clip, clap, cfg, teachers, media, spec, opts, loaders)
            precision = actor_precision(teachers, cfg)
            t_pipe = time.time()
            for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
                for outcome, stage in zip(batch["outcome"], batch["stage"]):
                    if outcome == "failed":
                        summary.failed += 1
                        summary.by_stage[str(stage)] = summary.by_stage.get(str(stage), 0) + 1
                    else:
                        summary.done += 1
                        summary.partial += outcome == "partial"
            pipe_s = time.time() - t_pipe
            summary.videos_per_s = (summary.done + summary.failed) / pipe_s if pipe_s > 0 else 0.0
        finally:
            shutdown()
    summary.seconds = time.time() - t0
    record = {"run_id": run_id, "schema_version": SCHEMA_VERSION, "manifest": manifest, "videos": videos,
              "clip": clip, "clap": clap, "out": out, "failures": failures, "split": split,
              "extract": to_dict(cfg), "teachers": to_dict(teachers), "media": to_dict(media),
              "weights": weights or {},
              "storage": redacted(storage), "code_version": code_version(), "summary": dataclasses.asdict(summary),
              **({"precision": precision} if precision else {}),
              "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    objstore.write_bytes(objstore.join(out, RUNS, f"{run_id}.json"),
                         (json.dumps(record, indent=1, default=str) + "\n").encode(), opts)
    return summary


# --- CLI -------------------------------------------------------------------------------------------------------------


def _pair(text: str) -> tuple[int, int]:
    lo, _, hi = text.partition(",")
    return int(lo), int(hi or lo)


def register(sub) -> None:
    p = sub.add_parser("extract", help="Ray Data: decode videos, CLIP/CLAP per-segment logits + embeddings "
                                       "(+ backbone features) -> Parquet",
                       description=__doc__.split("\n\n")[0])
    p.add_argument("--manifest", required=True, help="LLP-style CSV (filename, event_labels[, split][, path])")
    p.add_argument("--videos", required=True, help="video root: local dir or s3://bucket/prefix")
    p.add_argument("--clip", default=None,
                   help="CLIP teacher spec (valor_core.teachers); needed with clip in --features")
    p.add_argument("--clap", default=None, help="CLAP teacher spec; needed with clap or clap_maps in --features")
    p.add_argument("--out", required=True, help="output dataset URI: local dir or s3://bucket/prefix")
    p.add_argument("--json", action="store_true", help="last line: {done, failed, skipped, seconds, out}")
    p.add_argument("--failures", default=None, help="failures table URI (default: beside --out, see docs)")
    p.add_argument("--split", default=None, help="split name for every row (default: manifest column / file name)")
    p.add_argument("--ray-address", dest="address", default=None, metavar="ADDR",
                   help="Ray cluster address (default: RAY_ADDRESS, else local Ray)")
    p.add_argument("--address", dest="address", help=argparse.SUPPRESS, default=argparse.SUPPRESS)  # the old name
    p.add_argument("--num-cpus", type=int, default=None, help="local Ray only: CPUs to use")
    p.add_argument("--object-store-mb", type=int, default=None, help="local Ray only: object store size")
    p.add_argument("--dashboard", action="store_true", help="local Ray only: start the dashboard (on 127.0.0.1)")
    p.add_argument("--no-dashboard", action="store_false", dest="dashboard", help=argparse.SUPPRESS)  # the default
    d = ExtractConfig()
    p.add_argument("--rows-per-file", type=int, default=d.rows_per_file, help="videos per Parquet file (default "
                   "%(default)s)")
    p.add_argument("--decode-batch", type=int, default=d.decode_batch_size, help="videos per decode task (default "
                   "%(default)s)")
    p.add_argument("--clip-batch", type=int, default=d.clip_batch_size, help="videos per CLIP actor call (default "
                   "%(default)s)")
    p.add_argument("--clap-batch", type=int, default=d.clap_batch_size, help="videos per CLAP actor call (default "
                   "%(default)s)")
    p.add_argument("--clip-actors", type=_pair, default=d.clip_actors, metavar="MIN,MAX",
                   help="CLIP actor pool size (autoscaling between MIN and MAX)")
    p.add_argument("--clap-actors", type=_pair, default=d.clap_actors, metavar="MIN,MAX",
                   help="CLAP actor pool size (autoscaling between MIN and MAX)")
    p.add_argument("--num-gpus", type=float, default=d.num_gpus, help="per teacher actor, when GPUs exist")
    p.add_argument("--dense", action="store_true", help="also store CLIP embeddings of the 80-frame 8-fps stack")
    p.add_argument("--features", default=",".join(d.features),
                   help=f"what to extract, comma-separated, from {','.join(backbone_lib.FEATURES)} (default: "
                        f"{','.join(d.features)}); the backbones write the `valor import llp` columns")
    for name in ("vggish", "res152", "r2plus1d"):
        e = backbone_lib.BACKBONES[name]
        p.add_argument(f"--{name}-weights", default="", metavar="PATH",
                       help=f"{name} state dict (default: {e.filename} in the torch hub cache; `random`: random init)")
    p.add_argument("--vggish-pca", default="", metavar="PATH",
                   help="torchvggish PCA params: PCA + 8-bit quantisation as the reference (default: none)")
    p.add_argument("--backbone-batch", type=int, default=d.backbone_batch_size, help="videos per backbone actor call")
    p.add_argument("--backbone-actors", type=_pair, default=d.backbone_actors, metavar="MIN,MAX",
                   help="--features backbones: actor pool size (autoscaling between MIN and MAX)")
    p.add_argument("--retry-failed", action="store_true", help="re-run videos listed in the failures table")
    p.add_argument("--mixed-teachers", action="store_true",
                   help="add to a dataset made with other teachers/media settings (default: an error)")
    p.add_argument("--endpoint", default=None, help="S3 endpoint (default: AWS_ENDPOINT_URL)")
    p.add_argument("--access-key", default=None, help="default: AWS_ACCESS_KEY_ID")
    p.add_argument("--secret-key", default=None, help="default: AWS_SECRET_ACCESS_KEY")
    p.add_argument("--device", default=TeacherConfig.device, help="auto (CUDA when there is one), cpu or cuda "
                   "(default %(default)s)")
    p.add_argument("--teacher-batch", type=int, default=TeacherConfig.batch_size,
                   help="frames (CLIP) / segments (CLAP) per forward; 0 = auto (64 on CPU, by free memory on CUDA)")
    p.set_defaults(func=_cli)


def _bad_paths(args) -> Optional[str]:
    """The first bad location argument, in one line (before anything is read, claimed or started), else None."""
    try:
        check_input_dir(args.videos, "--videos")
        check_output_uri(args.out, "--out")
        if args.failures is not None:
            check_output_uri(args.failures, "--failures")
    except ConfigError as err:
        return str(err)
    return None


def _cli(args) -> int:
    bad = _bad_paths(args)
    if bad:
        print(f"valor extract: error: {bad}", file=sys.stderr)
        return 2
    cfg = ExtractConfig(decode_batch_size=args.decode_batch, clip_batch_size=args.clip_batch,
                        clap_batch_size=args.clap_batch, clip_actors=tuple(args.clip_actors),
                        clap_actors=tuple(args.clap_actors), num_gpus=args.num_gpus, rows_per_file=args.rows_per_file,
                        dense=args.dense, retry_failed=args.retry_failed, mixed_teachers=args.mixed_teachers,
                        features=tuple(args.features.split(",")), vggish_weights=args.vggish_weights,
                        vggish_pca=args.vggish_pca, res152_weights=args.res152_weights,
                        r2plus1d_weights=args.r2plus1d_weights, backbone_batch_size=args.backbone_batch,
                        backbone_actors=tuple(args.backbone_actors))
    teachers = TeacherConfig(clip=args.clip or TeacherConfig.clip, clap=args.clap or TeacherConfig.clap,
                             device=args.device, batch_size=args.teacher_batch)
    storage = StorageConfig(endpoint=args.endpoint, access_key=args.access_key, secret_key=args.secret_key)
    log = (lambda msg: print(msg, file=sys.stderr, flush=True)) if args.json else (lambda msg: print(msg, flush=True))
    try:
        s = run_extract(args.manifest, args.videos, args.clip, args.clap, args.out, cfg=cfg, teachers=teachers,
                        storage=storage, split=args.split, failures=args.failures, address=args.address,
                        num_cpus=args.num_cpus,
                        object_store_memory=args.object_store_mb * 2**20 if args.object_store_mb else None,
                        include_dashboard=args.dashboard, log=log)
    except (ManifestError, OwnershipError, LockedError, teacher_lib.TeacherError, backbone_lib.BackboneError,
            objstore.StorageError, PermissionError, ValueError) as err:
        print(f"valor extract: error: {err}", file=sys.stderr)
        return 2
    by_stage = ", ".join(f"{k}: {v}" for k, v in sorted(s.by_stage.items()))
    log(f"extract: done {s.done} (partial {s.partial}), failed {s.failed}{f' ({by_stage})' if by_stage else ''}, "
        f"skipped {s.skipped} in {s.seconds:.1f} s ({s.videos_per_s:.2f} videos/s in the pipeline) -> {s.out}; "
        f"failures: {s.failures}")
    if args.json:
        print(json.dumps(s.contract()), flush=True)
    return 1 if (s.done == 0 and s.failed > 0) else 0
