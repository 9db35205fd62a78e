"""`valor parse`: what happens in your own videos, when, and whether it is heard or seen.

    valor parse VIDEO... --checkpoint SPEC --out DIR [--clip SPEC] [--clap SPEC] [--weights NAME=PATH ...]
                [--precision auto|fp32|bf16|fp16] [--gt SPEC ...] [--ray | --no-ray] [--json]

VIDEO: files, directories (their video files, not recursive) or s3:// URIs (an object, or a prefix). SPEC: anything
`valor predict` takes (workflows/checkpoints.py): a checkpoint dir or file, a Ray Train run dir, an s3:// prefix, an
MLflow run id, or official:PRESET:PATH. Per video: decode (valor_core.media), compute the features the checkpoint's
preset takes (TrainConfig.features: clip_clap = the CLIP/CLAP teachers' embeddings, with the teachers and media
settings recorded by the features dataset the checkpoint was trained on unless --clip/--clap are given;
vggish_resnet_r2p1d and clip_clap_maps = the paper backbones of valor_core.backbones, built and run as
`valor extract` builds and runs them (build_backbone; the same decoded inputs), with the backbone weights that dataset
recorded unless --weights names others, else the torch hub cache, in the precision its extraction ran in unless
--precision is given, else auto), run the HAN, apply the official
rule (valor_core.fit.decide) per window and turn the segments into events (valor_core.events: windows of T segments
for videos longer than T x segment_seconds, merged across borders). Each video is decoded and checked before the models
load (once per process, on the first video that decodes), so a batch whose videos all fail never loads them. A
modality the video lacks (no/undecodable/all-zero audio; frames all one flat colour) is named in "missing" and its
lane stays empty: no events of it or audio-visual ones, its segment_prob null. Written into DIR (a new or empty dir,
or an earlier `valor parse` output, whose files are replaced; files valor did not write there are kept and reported):
    parsed/<id>.json  (per-video files in parsed/: no video id can collide with valor's own names)
                   {"video", "source", "duration", "segments", "segment_seconds", "windows", "segments_per_window",
                    "checkpoint", "features", "missing": {lane: why}, "issues" (how it was cut, as parsed),
                    "events": [{"class", "modality", "start", "end", "confidence"}],
                    "segment_prob": {"audio": n x 25 | None, "visual": n x 25 | None}, "global_prob": windows x 25}
    parsed/<id>.png   the timeline (workflows.timeline)
    index.html     every video with its timeline, event table and heat map (workflows.parse_page; --gt drawn over them)
    failures.json  [{"video", "source", "stage", "kind", "reason"}]: the videos that could not be parsed (media error
                   kinds of valor_core.media.errors); the batch goes on
More than 8 videos (or --ray) go through Ray Data (an actor pool, each actor loads the model once);
fewer run in this process without Ray. With --json the last line is {"videos": n, "failed": m, "out": DIR,
"load_s": models' load time, "model_loads": k, "video_s": {id: its time after loading}}.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import numpy as np

from valor_core.classes import CLASSES
from valor_core.config import MediaConfig, TeacherConfig
from valor_core.configio import build
from valor_core.events import find_events, plan_windows, stitch, window_frames
from valor_core.media import decode
from valor_core.media.errors import MediaError
from valor_core.teachers import TeacherError, load_clap_teacher, load_clip_teacher
from valor_core.teachers.clap import check_clap_files
from valor_core.teachers.clip import check_clip_files
from valor_core.teachers.precision import PRECISIONS
from workflows import objstore
from workflows.checkpoints import (CheckpointError, config_from_dict, load_checkpoint_model, parse_official,
                                   resolve_checkpoint)
from workflows.features import recorded_precision
from workflows.outputs import LockedError, OwnershipError, claim, clear_owned, lock, read_marker, reserve, write_file
from workflows.parse_gt import GTError, load_gt
from workflows.parse_page import render_page
from workflows.trainset import annotations_for
from workflows.timeline import timeline_png

VIDEO_EXT = (".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".mpg", ".mpeg", ".flv", ".ts", ".3gp")
RAY_THRESHOLD = 8
PARSED = "parsed"  # the per-video files' folder
FLAT_FRAME = 8  # a frame whose pixel values spread over at most this many levels shows nothing (black, one colour)
# TrainConfig.features -> (teachers, paper backbones) it is computed from, and the HAN input each column feeds
NEEDS = {"clip_clap": (("clip", "clap"), ()),
         "vggish_resnet_r2p1d": ((), ("vggish", "res152", "r2plus1d")),
         "clip_clap_maps": (("clip",), ("clap_maps", "r2plus1d"))}
ROLES = {"clip_clap": {"audio": "clap", "frames": "clip"},
         "vggish_resnet_r2p1d": {"audio": "vggish", "frames": "res152", "clips": "r2plus1d"},
         "clip_clap_maps": {"audio": "clap_maps", "frames": "clip", "clips": "r2plus1d"}}


class ParseError(ValueError):
    """Bad input to `valor parse` (exit 2); the message names it."""


# --- inputs ----------------------------------------------------------------------------------------------------------


def _id_of(path: str) -> str:
    return os.path.splitext(os.path.basename(path.rstrip("/")))[0]


def list_videos(inputs: list[str], opts: Optional[dict] = None) -> list[tuple[str, str]]:
    """[(video id, source)] of the VIDEO arguments; ParseError for a path that is not there or ids given twice."""
    out: list[tuple[str, str]] = []
    for item in inputs:
        if objstore.is_s3(item):
            if item.lower().endswith(VIDEO_EXT):
                out.append((_id_of(item), item))
                continue
            found = [f"s3://{p}" for p in objstore.list_files(item.rstrip("/") + "/", opts)
                     if p.lower().endswith(VIDEO_EXT)]
            if not found:
                raise ParseError(f"{item}: no video files under this prefix")
            out += [(_id_of(p), p) for p in found]
        elif os.path.isdir(item):
            found = sorted(os.path.join(item, n) for n in os.listdir(item) if n.lower().endswith(VIDEO_EXT)
                           and os.path.isfile(os.path.join(item, n)))
            if not found:
                raise ParseError(f"{item}: no video files ({', '.join(VIDEO_EXT)}) in this directory")
            out += [(_id_of(p), os.path.abspath(p)) for p in found]
        elif os.path.exists(item):
            out.append((_id_of(item), os.path.abspath(item)))
        else:
            raise ParseError(f"{item}: no such file or directory")
    seen: dict[str, str] = {}
    for vid, src in out:
        if vid in seen:
            raise ParseError(f"video id {vid!r} twice ({seen[vid]} and {src}): outputs are named by id")
        seen[vid] = src
    return out


# --- the model and its feature extractors ----------------------------------------------------------------------------


@dataclass(frozen=True)
class ParserSpec:
    """What a parser is built from (picklable: Ray actors build their own)."""

    checkpoint: str  # as given (recorded in every JSON)
    resolved: str  # workflows.checkpoints.resolve_checkpoint of it
    clip: Optional[str] = None
    clap: Optional[str] = None
    weights: dict = field(default_factory=dict)  # backbone name -> weights path
    device: str = "auto"
    precision: str = "auto"  # teachers' and backbones' precision (default: what the features dataset's extraction used)
    media: Optional[dict] = None  # MediaConfig fields (default: the features dataset's, else MediaConfig())
    features: str = "clip_clap"  # the checkpoint's TrainConfig.features
    annotations: Optional[str] = None  # the LLP annotations its run trained with (`--gt llp`), else the shipped ones


def _paper_backbones(kind: str, names: tuple) -> Any:
    try:
        import valor_core.backbones as backbones
    except ImportError:
        raise ParseError(f"features {kind} need the paper backbones (valor extract --features {','.join(names)}), "
                         "which this valor does not have (valor_core.backbones)") from None
    return backbones


def recorded_teachers(features) -> dict:
    """The teachers and media an extraction dataset the checkpoint was trained on recorded ({} for LLP-sim and
    imported data). `features`: the checkpoint's data.features, one source or several mixed (these agree on what
    they record: workflows.features.check_mix)."""
    for source in _dataset_sources(features):
        marker = read_marker(source) or {}
        made = marker.get("teachers") if isinstance(marker, dict) else None
        if isinstance(made, dict) and made:
            return made
    return {}


def _dataset_sources(features) -> list[str]:
    """The features datasets among a checkpoint's data.features (one source or several mixed; LLP-sim has none)."""
    sources = [features] if isinstance(features, str) else list(features or [])
    return [str(s) for s in sources if str(s) and not str(s).startswith("sim")]


def recorded_source_precision(features) -> Optional[str]:
    """The precision the extraction of a dataset the checkpoint was trained on ran its teachers/backbones in
    (workflows.features.recorded_precision; the first source recording one), None when none did."""
    return next((p for p in map(recorded_precision, _dataset_sources(features)) if p), None)


def make_spec(checkpoint: str, *, clip: Optional[str] = None, clap: Optional[str] = None,
              weights: Optional[dict] = None, device: str = "auto", tracking_uri: Optional[str] = None,
              precision: Optional[str] = None) -> ParserSpec:
    """Resolve the checkpoint and the teachers; ParseError (before any model is built) when something is missing.
    precision None: the one the checkpoint's features were extracted in (recorded), else "auto"."""
    if precision is not None and precision not in PRECISIONS:
        raise ParseError(f"--precision {precision!r}: choose from {', '.join(PRECISIONS)}")
    try:
        resolved = resolve_checkpoint(checkpoint, tracking_uri)
        official = parse_official(resolved)
        if official is not None:  # an official checkpoint: the preset's config, no features recorded
            from valor_core.presets import get_preset

            cfg, data = get_preset(official[0]), {}
        else:
            with open(os.path.join(resolved, "config.json")) as f:
                meta = json.load(f)
            cfg, data = config_from_dict(meta["train"]), meta.get("data", {})
    except (FileNotFoundError, CheckpointError, ValueError, KeyError, OSError) as err:
        raise ParseError(f"--checkpoint {checkpoint}: {err}") from None
    made = recorded_teachers(data.get("features"))
    # the backbone weights the training features were extracted with, unless --weights names others
    recorded = {k: v for k, v in (made.get("features") or {}).items() if k in ("vggish", "res152", "r2plus1d")}
    weights = {**{k: ("" if v == "hub cache" else v) for k, v in recorded.items()}, **(weights or {})}
    kind = cfg.features
    teachers, backbones = NEEDS[kind]
    clip, clap = clip or made.get("clip"), clap or made.get("clap")
    for name, spec in (("clip", clip), ("clap", clap)):
        if (name in teachers or (name == "clap" and "clap_maps" in backbones)) and not spec:
            raise ParseError(f"--checkpoint {checkpoint}: its features ({kind}) need the {name.upper()} teacher and "
                             f"the checkpoint's features dataset records none: pass --{name} SPEC")
    try:
        if "clip" in teachers:
            check_clip_files(clip)
        if "clap" in teachers or "clap_maps" in backbones:
            check_clap_files(clap)
    except TeacherError as err:
        raise ParseError(str(err)) from None
    if backbones:
        bb = _paper_backbones(kind, backbones)
        try:
            for name in backbones:
                bb.weights_path(name, clap if name == "clap_maps" else (weights or {}).get(name),
                                f"--weights {name}=")
        except Exception as err:  # noqa: BLE001 - BackboneError / MissingWeights: one line naming the file
            raise ParseError(str(err)) from None
    precision = precision or recorded_source_precision(data.get("features")) or "auto"
    annotations = data.get("annotations") or (annotations_for(data["features"]) if data.get("features") else None)
    return ParserSpec(checkpoint=checkpoint, resolved=resolved, clip=clip, clap=clap, weights=dict(weights or {}),
                      device=device, precision=precision, media=made.get("media"), features=kind,
                      annotations=annotations)


# what a media record made before a MediaConfig field existed was decoded with (valor before issue 22's frames)
MEDIA_BEFORE = {"frame_grid": "pts", "frame_geometry": "squash"}


def recorded_media(record: Optional[dict]) -> MediaConfig:
    """The media settings `valor extract` decoded the checkpoint's features with: the features dataset's record
    (a field it lacks: MEDIA_BEFORE's value, what that extraction used), else `valor extract`'s default MediaConfig()
    (frames at its frame_size, 224: the CLIP teacher resizes them to its own input size, as in extraction)."""
    if not record:
        return MediaConfig()
    return build(MediaConfig, {**MEDIA_BEFORE, **dict(record)})


class Parser:
    """The model, its feature extractors and media settings; `parse(source, id)` -> result dict. The models load on
    the first video that decodes (`load`, once per Parser), so a batch whose videos all fail never loads them;
    `load_seconds` is the time that took."""

    def __init__(self, spec: ParserSpec):
        self.spec, self.kind = spec, spec.features
        self.media = recorded_media(spec.media)
        if NEEDS[self.kind][1]:
            self.media = dataclasses.replace(self.media, frame_size=self.media.frame_size or 224)
        self.loaded, self.load_seconds = False, 0.0

    def load(self) -> None:
        """Load the HAN and its feature extractors (once); ParseError when their widths do not fit."""
        if self.loaded:
            return
        t0 = time.perf_counter()
        spec = self.spec
        self.model, self.cfg, _ = load_checkpoint_model(spec.resolved)
        teachers, backbones = NEEDS[self.kind]
        tcfg = TeacherConfig(device=spec.device, precision=spec.precision)
        self.clip = load_clip_teacher(spec.clip, tcfg) if "clip" in teachers else None
        self.clap = load_clap_teacher(spec.clap, tcfg) if "clap" in teachers else None
        self.backbones: dict = {}
        if backbones:
            bb = _paper_backbones(self.kind, backbones)
            self.backbones = {n: bb.build_backbone(n, spec.clap if n == "clap_maps" else spec.weights.get(n),
                                                   spec.device, segments=self.media.segments,
                                                   precision=spec.precision) for n in backbones}
            self._compute = bb.compute_features
        self._check_widths()
        self.loaded, self.load_seconds = True, time.perf_counter() - t0

    def _check_widths(self) -> None:
        spec, m = self.spec, self.model.cfg
        maps = self.backbones.get("clap_maps")
        for role, dim, src, width in (("audio", m.audio_dim, self.clap, self.clap and self.clap.dim),
                                      ("audio", m.audio_dim, maps and f"CLAP {spec.clap} (maps)", maps and maps.width),
                                      ("frames", m.frame_dim, self.clip, self.clip and self.clip.dim)):
            if src is not None and dim and int(width) != dim:  # the paper backbones' widths are fixed
                what = src if isinstance(src, str) else f"{src.name.upper()} teacher {src.spec}"
                raise ParseError(f"--checkpoint {spec.checkpoint}: its HAN takes {role} of width {dim}; the {what} "
                                 f"gives {width}")

    # --- per video ---
    def _decode(self, data, vid: str):
        """(decoded video, WindowPlan, frames (W, T, S, S, 3), dense (W, 8T, ...) or None, audio (W, T, L) or None)."""
        m, T = self.media, self.media.segments
        dense_needed = bool(NEEDS[self.kind][1])
        d = decode(data, vid, dataclasses.replace(m, dense_frames=dense_needed))
        plan = plan_windows(d.duration, T, m.segment_seconds, m.length_policy)
        if not plan.windowed:
            return (d, plan, d.frames[None], None if d.dense_frames is None else d.dense_frames[None],
                    None if d.audio is None else d.audio[None])
        W = plan.windows
        dw = decode(data, vid, dataclasses.replace(m, segments=W * T, length_policy="pad_trim", dense_frames=True))
        per = int(round(m.grid_fps * m.segment_seconds))
        dense = dw.dense_frames
        frames = window_frames(dense, W, T, per, m.frame_sampling)
        audio = None if dw.audio is None else dw.audio.reshape(W, T, -1)
        dense = dense.reshape((W, T * per) + dense.shape[1:]) if dense_needed else None
        dw.issues, dw.notes = d.issues, d.notes + (f"{W} windows of {T} x {m.segment_seconds:g} s",)
        dw.duration = d.duration
        return dw, plan, frames, dense, audio

    def _features(self, frames, dense, audio, whole=None) -> dict[str, np.ndarray]:
        """The feature columns of W windows; `whole` (the decoded clip, when it is one window) gives the audio
        backbones the clip's own wave at its own rate and R(2+1)D its own frame stack, exactly as `valor extract`."""
        W = frames.shape[0]
        cols: dict[str, np.ndarray] = {}
        if self.clip is not None:
            cols["clip"] = self.clip.segment_logits(list(frames))[1]
        if self.clap is not None:
            cols["clap"] = self.clap.segment_logits(list(audio))[1]
        if self.backbones:
            waves, rate, small = [a.reshape(-1) for a in audio], self.media.sample_rate, None
            if whole is not None and getattr(whole, "wave", None) is not None:
                waves, rate = [whole.wave], whole.wave_rate
            if whole is not None and getattr(whole, "dense_small", None) is not None:
                small = whole.dense_small[None]
            out = self._compute(list(self.backbones), dense, waves, rate, self.backbones,
                                self.spec.device, segments=self.media.segments, frames_small=small)
            cols.update({name: np.asarray(out[name]).reshape((W,) + np.asarray(out[name]).shape[-2:])
                         for name in self.backbones})
        return cols

    def parse(self, source: str, vid: str, opts: Optional[dict] = None) -> dict:
        """The result dict (module doc) of one video; MediaError when it cannot be decoded (before any model loads)."""
        from valor_core.arrays import AVVPArrays
        from valor_core.fit import decide, predict_probs

        data = objstore.read_bytes(source, opts) if objstore.is_s3(source) else source
        d, plan, frames, dense, audio = self._decode(data, vid)
        missing = missing_lanes(d, frames)
        self.load()
        T = self.media.segments
        if audio is None:  # no (decodable) audio track: the audio streams see silence; its lane stays empty
            seg = int(round(self.media.sample_rate * (plan.edges[1] - plan.edges[0] if not plan.windowed
                                                       else self.media.segment_seconds)))
            audio = np.zeros((plan.windows, T, max(seg, 1)), np.float32)
        cols = self._features(frames, dense, audio, whole=None if plan.windowed else d)
        W = plan.windows
        roles = {role: cols[col] for role, col in ROLES[self.kind].items()
                 if role == "audio" or getattr(self.model.cfg, {"frames": "frame_dim", "clips": "clip_dim"}[role])}
        arrays = AVVPArrays(video_ids=np.array([f"{vid}#{w}" for w in range(W)]),
                            weak=np.zeros((W, len(CLASSES)), np.uint8), **roles)
        segment_prob, global_prob = predict_probs(self.model, arrays)
        on_a, on_v = decide(segment_prob, global_prob)
        n = plan.kept
        pa, pv = stitch(segment_prob[:, :, 0], n), stitch(segment_prob[:, :, 1], n)
        on_a, on_v = (np.zeros((n, len(CLASSES)), bool) if lane in missing else stitch(on, n)
                      for lane, on in (("audio", on_a), ("visual", on_v)))
        events = find_events(on_a, on_v, pa, pv, plan.edges)
        for e in events:
            e.pop("segments")
        seg_s = float(plan.edges[1] - plan.edges[0])
        prob = {lane: None if lane in missing else np.round(p, 5).tolist() for lane, p in (("audio", pa),
                                                                                             ("visual", pv))}
        return {"video": vid, "source": source, "duration": round(float(d.duration), 3), "segments": int(n),
                "segment_seconds": round(seg_s, 4), "windows": int(W), "segments_per_window": int(T),
                "checkpoint": self.spec.checkpoint, "features": self.kind, "missing": missing,
                "issues": issue_lines(d, plan, self.media), "events": events, "segment_prob": prob,
                "global_prob": np.round(global_prob, 5).tolist()}


def missing_lanes(d, frames: np.ndarray) -> dict[str, str]:
    """{"audio" | "visual": why} for the modality a video does not have: no audio track, an undecodable or all-zero
    one; frames that are all one flat colour (FLAT_FRAME: the spread of a frame's pixel values). Its lane stays empty:
    no audio (or visual) and no audio-visual events, no probabilities."""
    out = {}
    if d.audio_missing:
        out["audio"] = "no audio track" if d.audio_reason == "no audio stream" else "audio undecodable"
    elif "silent_audio" in d.issue_kinds():
        out["audio"] = "silent audio track"
    flat = frames.reshape(-1, int(np.prod(frames.shape[-3:]))).astype(np.float32)
    levels = 255.0 if np.issubdtype(frames.dtype, np.floating) else 1.0  # float frames are in [0, 1]
    if float((flat.max(axis=1) - flat.min(axis=1)).max()) * levels <= FLAT_FRAME:
        out["visual"] = "no usable frames"
    return out


def issue_lines(d, plan, media: MediaConfig) -> list[str]:
    """The decode issues as "kind: reason", saying how the video was actually cut: a long one as its windows."""
    lines = [f"{e.kind}: {e.reason}" for e in d.issues if not (plan.windowed and e.kind == "long_clip")]
    if plan.windowed:
        lines.append(f"long_clip: {d.duration:.2f} s vs {plan.segments * media.segment_seconds:g} s nominal; parsed as "
                     f"{plan.windows} windows of {plan.segments} x {media.segment_seconds:g} s segments, "
                     f"{plan.kept} kept")
    return lines


def failure(vid: str, source: str, err: BaseException) -> dict:
    """A failures.json row: media errors by their kind, anything else as stage `parse` with its type."""
    if isinstance(err, MediaError):
        return {"video": vid, "source": source, "stage": "decode", "kind": err.kind, "reason": err.reason}
    return {"video": vid, "source": source, "stage": "parse", "kind": type(err).__name__,
            "reason": (str(err).strip().splitlines() or [""])[0][:500]}


def parse_one(parser: Parser, vid: str, source: str, opts: Optional[dict] = None) -> dict:
    """{"video", "source", "result" | None, "png" | None, "failure" | None, "load_s", "video_s"}: never raises for a
    bad video (a ParseError, the checkpoint's, goes up). load_s: the models' loading this video caused (0 after the
    first); video_s: the rest of its time (decode, features, HAN, PNG)."""
    t0, loaded = time.perf_counter(), parser.load_seconds
    try:
        result = parser.parse(source, vid, opts)
        out = {"result": result, "png": timeline_png(result), "failure": None}
    except ParseError:
        raise
    except Exception as err:  # noqa: BLE001 - one bad video never stops the batch
        out = {"result": None, "png": None, "failure": failure(vid, source, err)}
    load = parser.load_seconds - loaded
    return {"video": vid, "source": source, **out, "load_s": round(load, 3),
            "video_s": round(time.perf_counter() - t0 - load, 3)}


# --- Ray Data: many videos -------------------------------------------------------------------------------------------


class ParseActor:
    """Ray Data actor: builds a Parser once, parses one batch of (video_id, source) rows."""

    def __init__(self, spec: ParserSpec, opts: Optional[dict], threads: int = 1):
        import torch

        torch.set_num_threads(max(1, threads))
        self.parser, self.opts = Parser(spec), opts

    def __call__(self, batch: dict) -> dict:
        outs = [parse_one(self.parser, str(v), str(s), self.opts) for v, s in zip(batch["video_id"], batch["source"])]
        return {"video_id": np.array([o["video"] for o in outs], dtype=object),
                "record": np.array([json.dumps({k: o[k] for k in ("result", "failure", "load_s", "video_s")})
                                    for o in outs], dtype=object),
                "png": np.array([o["png"] or b"" for o in outs], dtype=object)}


def parse_with_ray(spec: ParserSpec, videos: list[tuple[str, str]], opts: Optional[dict], *, actors: int = 1,
                   address: Optional[str] = None, num_cpus: Optional[int] = None,
                   log: Callable[[str], None] = print):
    """Yield parse_one-like dicts for `videos` through a Ray Data actor pool (results come back to the driver)."""
    import ray

    from workflows.runtime import start_ray

    shutdown = start_ray(address, num_cpus=num_cpus, log=log)
    try:
        cpus = float(ray.cluster_resources().get("CPU", 1.0))
        per_actor = max(0.5, min(cpus / max(1, actors), cpus - 0.25))
        ds = ray.data.from_items([{"video_id": v, "source": s} for v, s in videos],
                                 override_num_blocks=max(1, len(videos)))
        ds = ds.map_batches(ParseActor, fn_constructor_kwargs={"spec": spec, "opts": opts,
                                                               "threads": int(max(1, per_actor))},
                            compute=ray.data.ActorPoolStrategy(min_size=1, max_size=max(1, actors)),
                            batch_size=1, batch_format="numpy", num_cpus=per_actor)
        sources = dict(videos)
        for row in ds.iter_rows():
            rec = json.loads(row["record"])
            yield {"video": row["video_id"], "source": sources[row["video_id"]], "png": row["png"] or None, **rec}
    finally:
        shutdown()


# --- the run ---------------------------------------------------------------------------------------------------------


def _page_src(out: str, vid: str, source: str, copy: bool, opts: Optional[dict]) -> str:
    """The player's src relative to index.html: the file itself, or a copy in DIR/videos/ (s3:// or --copy-videos)."""
    if objstore.is_s3(source) or copy:
        ext = os.path.splitext(source)[1] or ".mp4"
        dest = os.path.join(out, "videos", vid + ext)
        reserve(dest)
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        if objstore.is_s3(source):
            with open(dest, "wb") as f:
                f.write(objstore.read_bytes(source, opts))
        else:
            shutil.copyfile(source, dest)
        return f"videos/{vid}{ext}"
    return os.path.relpath(source, out).replace(os.sep, "/")


def run_parse(inputs: list[str], checkpoint: str, out: str, *, clip: Optional[str] = None,
              clap: Optional[str] = None, weights: Optional[dict] = None, device: str = "auto",
              precision: Optional[str] = None,
              use_ray: Optional[bool] = None, actors: int = 1, address: Optional[str] = None,
              num_cpus: Optional[int] = None, copy_videos: bool = False, tracking_uri: Optional[str] = None,
              gt: Optional[list[str]] = None, opts: Optional[dict] = None,
              log: Callable[[str], None] = print) -> dict:
    """Parse every video of `inputs` into `out`; returns {"videos", "failed", "out", "seconds", "ray", "load_s",
    "model_loads", "video_s": {id: s}} (load_s: loading the models, summed over the processes that loaded them;
    video_s: each video's own time after that). ParseError / GTError / OwnershipError / LockedError for bad input,
    before any model is built."""
    t0 = time.time()
    if objstore.is_s3(out):
        raise ParseError(f"--out {out}: the page and pictures are written to a local directory; give a local --out")
    out = os.path.abspath(out)
    videos = list_videos(inputs, opts)
    spec = make_spec(checkpoint, clip=clip, clap=clap, weights=weights, device=device, tracking_uri=tracking_uri,
                     precision=precision)
    truth = load_gt(gt, [v for v, _ in videos], llp=spec.annotations) if gt else {}
    claim(out, "parse")
    with lock(out, f"valor parse -> {out}"):
        clear_owned(out, log=log)
        ray_used = bool(use_ray) if use_ray is not None else len(videos) > RAY_THRESHOLD
        log(f"parse: {len(videos)} video(s), checkpoint {checkpoint}, "
            f"{'Ray Data' if ray_used else 'in-process'} -> {out}")
        if ray_used:
            stream = parse_with_ray(spec, videos, opts, actors=actors, address=address, num_cpus=num_cpus, log=log)
        else:
            parser = Parser(spec)
            stream = (parse_one(parser, v, s, opts) for v, s in videos)
        results, srcs, failures, timing = [], [], [], {"load_s": 0.0, "model_loads": 0, "video_s": {}}
        for o in stream:
            timing["load_s"] += o["load_s"]
            timing["model_loads"] += o["load_s"] > 0
            timing["video_s"][o["video"]] = o["video_s"]
            if o["failure"] is not None:
                failures.append(o["failure"])
                log(f"parse: {o['video']}: failed ({o['failure']['kind']}: {o['failure']['reason']})")
                continue
            r = o["result"]
            write_file(os.path.join(out, PARSED, f"{r['video']}.json"), json.dumps(r).encode())
            write_file(os.path.join(out, PARSED, f"{r['video']}.png"), o["png"])
            results.append(r)
            srcs.append(_page_src(out, r["video"], o["source"], copy_videos, opts))
            lacks = "".join(f"; {why}: {lane} lane empty" for lane, why in r["missing"].items())
            log(f"parse: {r['video']}: {r['duration']:.1f} s, {len(r['events'])} event(s){lacks}")
        order = {v: i for i, (v, _) in enumerate(videos)}
        keep = sorted(range(len(results)), key=lambda i: order[results[i]["video"]])
        results, srcs = [results[i] for i in keep], [srcs[i] for i in keep]
        failures.sort(key=lambda f: order[f["video"]])
        write_file(os.path.join(out, "failures.json"), json.dumps(failures, indent=1).encode())
        write_file(os.path.join(out, "index.html"), render_page(results, srcs, failures, checkpoint, truth).encode())
    timing["load_s"] = round(timing["load_s"], 3)
    return {"videos": len(results), "failed": len(failures), "out": out, "seconds": round(time.time() - t0, 2),
            "ray": ray_used, **timing}


# --- CLI -------------------------------------------------------------------------------------------------------------


def _weights(items: list[str]) -> dict:
    out = {}
    for item in items or []:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise ParseError(f"--weights {item!r}: expected NAME=PATH (e.g. vggish=/models/vggish.pth)")
        out[name] = path
    return out


def register(sub: Any) -> None:
    p = sub.add_parser("parse", help="parse your own videos: events (class, audio/visual/audio-visual, when), "
                       "timelines and a page", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("videos", nargs="+", metavar="VIDEO", help="video files, directories of them, or s3:// URIs")
    p.add_argument("--checkpoint", required=True, metavar="SPEC",
                   help="a checkpoint dir/file, Ray Train run dir, s3:// prefix, MLflow run id, or official:PRESET:PATH")
    p.add_argument("--out", required=True, metavar="DIR", help="output directory (new, empty, or a valor parse output)")
    p.add_argument("--clip", metavar="SPEC", help="CLIP teacher (default: the one the checkpoint's features used)")
    p.add_argument("--clap", metavar="SPEC", help="CLAP teacher (default: the one the checkpoint's features used)")
    p.add_argument("--weights", action="append", metavar="NAME=PATH",
                   help="paper backbone weights (vggish, res152, r2plus1d; `random` for random init); repeatable "
                        "(default: the ones the checkpoint's features dataset recorded, else the torch hub cache)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--precision", default=None, choices=PRECISIONS,
                   help="teachers' and backbones' weights precision (default: the one the checkpoint's features "
                        "dataset was extracted in, else auto = bf16 on CUDA, fp32 on CPU)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--ray", action="store_true", default=None, help="use Ray Data whatever the number of videos")
    g.add_argument("--no-ray", action="store_false", dest="ray", help="parse in this process whatever the number")
    p.add_argument("--actors", type=int, default=1, help="with Ray: parser actors (each loads the model once)")
    p.add_argument("--ray-address", dest="address", default=None, metavar="ADDR",
                   help="Ray cluster address (default: RAY_ADDRESS, else local Ray)")
    p.add_argument("--address", dest="address", help=argparse.SUPPRESS, default=argparse.SUPPRESS)  # the old name
    p.add_argument("--num-cpus", type=int, default=None, help="local Ray only: CPUs to use")
    p.add_argument("--copy-videos", action="store_true", help="copy local videos next to index.html "
                   "(s3:// videos always are)")
    p.add_argument("--tracking-uri", metavar="URI", help="with --checkpoint RUN: the MLflow store")
    p.add_argument("--gt", action="append", metavar="SPEC",
                   help="ground truth drawn over the page's timelines and heat maps: `llp` (the LLP annotations "
                        "the checkpoint's run trained with, else the shipped ones, for videos named by their LLP id), "
                        "a directory of LLP dense files "
                        "(AVVP_eval_audio.csv, AVVP_eval_visual.csv), or audio=FILE / visual=FILE; repeatable")
    p.add_argument("--json", action="store_true", help='last line: {"videos": n, "failed": m, "out": DIR, '
                   '"load_s": model loading, "model_loads": k, "video_s": {id: seconds after loading}}')
    p.set_defaults(func=_cli)


def _cli(args) -> int:
    log = (lambda m: print(m, file=sys.stderr, flush=True)) if args.json else (lambda m: print(m, flush=True))
    try:
        if args.actors < 1:
            raise ParseError(f"--actors {args.actors}: must be >= 1")
        s = run_parse(args.videos, args.checkpoint, args.out, clip=args.clip, clap=args.clap,
                      weights=_weights(args.weights), device=args.device, precision=args.precision,
                      use_ray=args.ray, actors=args.actors,
                      address=args.address, num_cpus=args.num_cpus, copy_videos=args.copy_videos,
                      tracking_uri=args.tracking_uri, gt=args.gt, opts=objstore.s3_options(), log=log)
    except (ParseError, GTError, OwnershipError, LockedError, objstore.StorageError) as err:
        print(f"valor parse: error: {err}", file=sys.stderr)
        return 2
    per = s["video_s"].values()
    log(f"parse: {s['videos']} parsed, {s['failed']} failed in {s['seconds']:.1f} s (models loaded in "
        f"{s['load_s']:.1f} s, {sum(per) / max(1, len(per)):.1f} s a video after that) -> {s['out']}/index.html")
    if args.json:
        print(json.dumps({k: s[k] for k in ("videos", "failed", "out", "load_s", "model_loads", "video_s")}),
              flush=True)
    return 1 if s["videos"] == 0 and s["failed"] > 0 else 0
