"""LLP-sim: a deterministic simulator of LLP features and teacher outputs on the *real* LLP label structure.

The real VGGish / ResNet-152 / R(2+1)D features and the CLIP / CLAP outputs cannot be had here, so this builds a
stand-in with the same shapes, the real weak labels of every split and the real dense GT of val/test. It is the test bed
for the science (label harvesting, losses, HAN training, threshold tuning) until real features exist -- never a
substitute in the tests of decoding or inference.

Activity (which class is on in which segment and modality)
  * val/test: the real dense GT (`AVVPArrays.audio_gt/visual_gt`).
  * train: sampled per weak label from val GT (no dense train GT exists): for each (video, weak class c) one val
    instance of class c -- the pair (audio row, visual row) of a val video whose weak label holds c -- is drawn, which
    reproduces jointly the per-class modality mix (audio only / visual only / both / neither), durations, onsets,
    multi-run structure and the A/V temporal offsets. Rare classes are shrunk towards the pooled instances of all
    classes (probability n_c / (n_c + shrink)). GT events outside the weak label are not sampled. The sampled train
    activity is *not* GT and is never stored as such: `simulate(..., return_activity=True)` returns it separately.

Student features (`features="vggish_resnet_r2p1d"`, the HAN inputs; `features="clip_clap"` for VALOR++ below)
  Per modality, a latent segment vector = sum over the classes active *in that modality* of amplitude x visibility x
  class prototype (unit vectors) + a per-video nuisance vector + Gaussian noise, so audio shows only audio events and
  frames/clips only visual ones. Event amplitudes are log-normal per (video, class) with a per-segment jitter; the same
  amplitude drives the teachers, so faint events are hard for both. On top, the student features are weaker than the
  teachers, as VGGish / ResNet are next to CLAP / CLIP: a per-(video, class) log-normal visibility seen by the student
  only (`student_visibility_sd`), prototypes of confusable classes mixed (`student_confusion`, the confusion pairs
  below) and a large per-video nuisance (`video_nuisance`) that can mimic or mask a class for a whole video. Audio: 128-d latent used as is (VGGish-like). Frames and clips:
  independent 64-d latents (same visual activity, independent noise) projected to `frame_dim` / `clip_dim` with fixed
  random orthonormal maps. Frames have ONE step per segment (`frame_steps=1`: use HANConfig(frame_steps=1)), and
  features are stored as float16 by default: all 11,849 videos take ~0.63 GB (2048-d frames are 0.49 GB of it).
  Feature columns are latent coordinates times fixed gains (+-1, 0.6, -1.4) picked by a fixed random column map -- a
  cheap stand-in for a dense random projection (the HAN's input Linear sees the same information).

Teachers (CLIP for frames, CLAP for audio): logits = logit_scale x cos(embedding, text prototype)
  Embeddings live in a 26-d "semantic" subspace (a shared domain direction u0 + one direction per class) plus an
  isotropic residual in the rest of the 768-d (CLIP) / 512-d (CLAP) space. Text prototype of class c =
  b_c u0 + sqrt(1 - b_c^2) normalize(q_c + kappa * sum of confusable q_c'). A segment embedding =
  normalize(alpha u0 + sum_c (teacher gain_c x amplitude x active_c + context_c) q_c + noise). Hence
   * negatives sit at logit_scale * alpha * b_c ~ theta_c - margin (b_c is set from Table 6, so the paper's per-class
     thresholds are sensible for these logits: CLIP negatives ~10-15, positives ~20-30; CLAP negatives a little below
     theta^CLAP, positives a few units above it);
   * confusions: an active class lifts its confusable classes (audio: car / motorcycle / lawn mower / chainsaw,
     vacuum cleaner / blender, violin / cello, banjo / acoustic guitar, baby laughter / baby cry, singing / speech,
     cheering / clapping, fire alarm / telephone; visual: the instrument and vehicle pairs, babies, speech / singing /
     cheering / clapping);
   * weak spots: visual speech (people talking is barely visible to CLIP), singing, cheering, clapping, small objects;
   * context: classes of the video's weak label are slightly raised in every segment (scene context), a realistic
     source of false positives after the weak-label AND.
  With the Table 6 thresholds the harvested labels' fidelity (VALOR Table 3 micro F vs val GT) is in the tens of
  percent and better than the naive weak-labels-everywhere baseline, like the paper's.
  Teacher errors are partly systematic: a share `teacher_video_share` of the embedding-noise variance is constant over
  a video's segments (same per-segment spread, hence the same fidelity).
  `features="clip_clap"`: the student inputs ARE the L2-normalised teacher embeddings (frames (N, 10, 768),
  audio (N, 10, 512), clips None), as VALOR++ uses them.

Calibration (bench/calibrate_sim.py; the numbers in the README's LLP-sim section): the defaults make `han` learn over
its first epochs and land `han` / `valor` near VALOR Table 1's segment-level test Type@AV (54.0 / 62.0) on the
documented CPU subset, Table 3 fidelities unchanged. Profile "v1" (`sim:0:profile=v1`, `simulate(..., profile="v1")`)
is the pre-calibration simulator, bit for bit: the same teachers without the per-video noise share and much cleaner
student features (its `han` peaks in epoch 1, every method scores ~20 points above the paper).

Determinism: every random draw comes from numpy Generators seeded by (seed, split, chunk of 1024 videos, purpose) and
the fixed prototypes from the seed alone, so a split's arrays do not depend on which other splits are simulated, and
the teacher logits are the same whichever student features are made (and whatever their dims).

Cost (2-core CPU, all 11,849 videos, default config): ~2.5 s of CPU, ~0.63 GB of arrays (peak RSS ~0.73 GB);
`python -m valor_core.sim [DIR]` prints both.
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import Literal, Optional, Sequence, Union

import numpy as np

from valor_core.arrays import AVVPArrays
from valor_core.classes import CLAP_THRESHOLDS, CLASS_INDEX, CLIP_THRESHOLDS, NUM_CLASSES, NUM_SEGMENTS
from valor_core.configio import load_yaml
from valor_core.llp import LLPSplit, default_annotations, load_split

__all__ = ["SimConfig", "PROFILES", "sim_config", "simulate", "sample_train_activity", "parse_sim_source",
           "AUDIO_CONFUSIONS", "VISUAL_CONFUSIONS"]

SPLITS = ("train", "val", "test")
CHUNK = 1024  # videos per generation chunk (part of the seeding: changing it changes the draws)

AUDIO_CONFUSIONS: tuple[tuple[str, str], ...] = (
    ("Car", "Motorcycle"), ("Car", "Lawn_mower"), ("Motorcycle", "Lawn_mower"), ("Chainsaw", "Lawn_mower"),
    ("Vacuum_cleaner", "Blender"), ("Violin_fiddle", "Cello"), ("Banjo", "Acoustic_guitar"),
    ("Baby_laughter", "Baby_cry_infant_cry"), ("Singing", "Speech"), ("Cheering", "Clapping"),
    ("Fire_alarm", "Telephone_bell_ringing"), ("Helicopter", "Motorcycle"),
)
VISUAL_CONFUSIONS: tuple[tuple[str, str], ...] = (
    ("Violin_fiddle", "Cello"), ("Banjo", "Acoustic_guitar"), ("Car", "Motorcycle"),
    ("Baby_laughter", "Baby_cry_infant_cry"), ("Speech", "Singing"), ("Cheering", "Clapping"), ("Speech", "Cheering"),
)
# How visible a class is to the teacher (multiplies the event amplitude); 1.0 for classes not listed.
CLIP_GAINS = {"Speech": 0.45, "Singing": 0.7, "Cheering": 0.6, "Clapping": 0.6, "Fire_alarm": 0.7,
              "Telephone_bell_ringing": 0.7, "Baby_laughter": 0.8, "Baby_cry_infant_cry": 0.8, "Frying_(food)": 0.9}
CLAP_GAINS = {"Speech": 1.1, "Frying_(food)": 0.8, "Blender": 0.9, "Vacuum_cleaner": 0.9, "Clapping": 0.85,
              "Cheering": 0.85}


@dataclass(frozen=True)
class SimConfig:
    """Knobs of LLP-sim (defaults: see the module docstring)."""

    features: Literal["vggish_resnet_r2p1d", "clip_clap"] = "vggish_resnet_r2p1d"
    audio_dim: int = 128  # VGGish-like audio features
    frame_dim: int = 2048  # ResNet-152-like frame features, one step per segment
    clip_dim: int = 512  # R(2+1)D-like clip features
    latent: int = 64  # latent size of the audio / frame / clip generators
    clip_emb_dim: int = 768  # CLIP ViT-L/14 image embedding size
    clap_emb_dim: int = 512  # CLAP embedding size
    dtype: str = "float16"  # storage dtype of the features ("float32" doubles the memory)
    # student features
    feature_noise: float = 2.5  # per-dimension Gaussian noise (class prototypes have norm 1); higher = harder (v1: 0.8)
    video_nuisance: float = 1.5  # norm scale of a per-video offset shared by its 10 segments (v1: 0.4)
    amplitude_sd: float = 0.35  # log-normal sd of the event amplitude per (video, class)
    segment_jitter_sd: float = 0.25  # log-normal sd of the amplitude per segment
    # teachers
    clip_scale: float = 100.0  # CLIP logit_scale.exp()
    clap_scale: float = 50.0  # CLAP logit_scale_a.exp() (stand-in value)
    teacher_alpha: float = 0.72  # weight of the shared domain direction in every embedding
    teacher_noise: float = 0.69  # norm of the isotropic embedding noise (sets the logit noise: ~2.5 CLIP, ~1.5 CLAP)
    clip_signal: float = 0.11  # cosine added per unit amplitude for an active class (x class gain): ~+11 CLIP logits
    clap_signal: float = 0.08  # ~+4 CLAP logits
    clip_margin: float = 5.0  # negatives sit this far below theta^CLIP_c (logits)
    clap_margin: float = 2.5  # ... below theta^CLAP_c
    confusion: float = 0.6  # kappa: weight of confusable classes in a text prototype
    clip_context: float = 0.04  # cosine added to the weak-label classes in every segment (scene context): ~+4 logits
    clap_context: float = 0.04  # ~+2 CLAP logits
    shrink: float = 10.0  # train activity: pseudo-count pulling rare classes to the pooled val instances
    # realism of the student features relative to the teachers (profile "v1" = all off: the pre-calibration sim)
    student_visibility_sd: float = 0.7  # log-normal sd of a per-(video, class) factor on the event amplitude seen by
    #                                     the student features only (faint in VGGish/ResNet, clear to CLIP/CLAP)
    student_confusion: float = 0.5  # weight of confusable classes in the student class prototypes
    teacher_video_share: float = 0.8  # fraction of the teachers' embedding-noise variance shared by a video's 10
    #                                   segments (systematic, per-video teacher errors the student cannot average out)


# Named profiles: SimConfig field values on top of the defaults. "llp" = the defaults (calibrated so that `han` and
# `valor` score like on real LLP, see bench/calibrate_sim.py); "v1" = the pre-calibration simulator, bit-identical to it
# (same teachers, much cleaner student features: `han` peaks in its first epoch, every method scores ~20 points high).
PROFILES: dict[str, dict] = {
    "llp": {},
    "v1": {"feature_noise": 0.8, "video_nuisance": 0.4, "student_visibility_sd": 0.0, "student_confusion": 0.0,
           "teacher_video_share": 0.0},
}


def sim_config(profile: str = "llp", config: Optional[SimConfig] = None, **overrides) -> SimConfig:
    """`config` (default SimConfig()) with the profile's values, then `overrides` (SimConfig fields).
    ValueError for an unknown profile, TypeError for an unknown field."""
    if profile not in PROFILES:
        raise ValueError(f"LLP-sim profile {profile!r}: expected one of {', '.join(PROFILES)}")
    return dataclasses.replace(dataclasses.replace(config or SimConfig(), **PROFILES[profile]), **overrides)


# --- activity ---------------------------------------------------------------------------------------------------------


def sample_train_activity(weak: np.ndarray, val: LLPSplit, rng: np.random.Generator,
                          shrink: float = 10.0) -> tuple[np.ndarray, np.ndarray]:
    """Dense (N, 10, 25) uint8 audio and visual activity for weak labels (N, 25), bootstrapped from val GT instances
    (see the module docstring)."""
    vi, vc = np.nonzero(val.weak)  # val instances: (video, weak class)
    inst_a = val.audio_gt[vi, :, vc]  # (K, 10)
    inst_v = val.visual_gt[vi, :, vc]
    by_class = [np.flatnonzero(vc == c) for c in range(NUM_CLASSES)]
    ti, tc = np.nonzero(weak)
    m = len(ti)
    pick = rng.integers(0, len(vi), m)  # pooled instance (fallback)
    u = rng.random(m)
    r = rng.random(m)
    for c in range(NUM_CLASSES):
        sel = np.flatnonzero(tc == c)
        pool = by_class[c]
        if not sel.size or not pool.size:
            continue
        own = sel[u[sel] < pool.size / (pool.size + shrink)]
        pick[own] = pool[np.minimum((r[own] * pool.size).astype(np.int64), pool.size - 1)]
    act_a = np.zeros((len(weak), NUM_SEGMENTS, NUM_CLASSES), np.uint8)
    act_v = np.zeros_like(act_a)
    act_a[ti, :, tc] = inst_a[pick]
    act_v[ti, :, tc] = inst_v[pick]
    return act_a, act_v


# --- fixed random structure ---------------------------------------------------------------------------------------------


def _orthonormal_rows(rng: np.random.Generator, rows: int, dim: int) -> np.ndarray:
    q, _ = np.linalg.qr(rng.standard_normal((dim, rows)))
    return q.T.astype(np.float32)  # (rows, dim)


def _confusion_matrix(pairs: Sequence[tuple[str, str]], kappa: float) -> np.ndarray:
    m = np.eye(NUM_CLASSES, dtype=np.float64)
    for a, b in pairs:
        m[CLASS_INDEX[a], CLASS_INDEX[b]] = m[CLASS_INDEX[b], CLASS_INDEX[a]] = kappa
    return m / np.linalg.norm(m, axis=1, keepdims=True)


def _gains(table: dict[str, float]) -> np.ndarray:
    g = np.ones(NUM_CLASSES, np.float32)
    for k, v in table.items():
        g[CLASS_INDEX[k]] = v
    return g


@dataclass
class _Teacher:
    scale: float
    dim: int
    text: np.ndarray  # (25, 26) text prototypes in semantic coordinates (col 0 = u0, col 1+c = q_c)
    gain: np.ndarray  # (25,) signal per unit amplitude (cosine units)
    context: float
    basis: Optional[np.ndarray] = None  # (26, dim) orthonormal rows, for full embeddings


def _teacher(cfg: SimConfig, thresholds: np.ndarray, margin: float, scale: float, dim: int, signal: float,
             gains: dict[str, float], confusions, context: float, rng: np.random.Generator, need_basis: bool) -> _Teacher:
    b = (thresholds.astype(np.float64) - margin) / (scale * cfg.teacher_alpha)
    if np.abs(b).max() >= 0.95:
        raise ValueError("teacher calibration out of range: raise the logit scale or alpha")
    text = np.zeros((NUM_CLASSES, 1 + NUM_CLASSES))
    text[:, 0] = b
    text[:, 1:] = np.sqrt(1 - b ** 2)[:, None] * _confusion_matrix(confusions, cfg.confusion)
    basis = _orthonormal_rows(rng, 1 + NUM_CLASSES, dim) if need_basis else None
    return _Teacher(scale, dim, text.astype(np.float32), signal * _gains(gains), context, basis)


@dataclass
class _World:
    proto_a: np.ndarray  # (25, latent)
    proto_f: np.ndarray  # (25, visual_latent)
    proto_c: np.ndarray
    cols_a: np.ndarray  # (audio_dim,) column map into the expanded latent (see _expand)
    cols_f: np.ndarray  # (frame_dim,)
    cols_c: np.ndarray  # (clip_dim,)
    clip: _Teacher
    clap: _Teacher


def _unit_rows(rng: np.random.Generator, rows: int, dim: int) -> np.ndarray:
    x = rng.standard_normal((rows, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


# Each feature column is one latent coordinate times one of these gains (the column map picks which): a cheap, fixed,
# full-rank-in-the-latent "projection" that needs no large matmul; features have `latent * len(_GAINS)` distinct columns.
_GAINS = np.array([1.0, -1.0, 0.6, -1.4], np.float32)


def _column_map(rng: np.random.Generator, dim: int, latent: int) -> np.ndarray:
    base = np.arange(latent * len(_GAINS))
    reps = -(-dim // len(base))
    return rng.permutation(np.tile(base, reps))[:dim] if dim >= len(base) else rng.choice(base, dim, replace=False)


def _confused(proto: np.ndarray, pairs: Sequence[tuple[str, str]], kappa: float) -> np.ndarray:
    """Unit class prototypes mixed with their confusable classes' (student_confusion); unchanged for kappa 0."""
    if kappa == 0:
        return proto
    m = np.eye(NUM_CLASSES, dtype=np.float64)
    for a, b in pairs:
        m[CLASS_INDEX[a], CLASS_INDEX[b]] = m[CLASS_INDEX[b], CLASS_INDEX[a]] = kappa
    x = m @ proto.astype(np.float64)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _world(cfg: SimConfig, seed: int) -> _World:
    rng = np.random.default_rng([seed, 0x5EED, 0])
    emb = cfg.features == "clip_clap"
    k = cfg.student_confusion
    return _World(
        proto_a=_confused(_unit_rows(rng, NUM_CLASSES, cfg.latent), AUDIO_CONFUSIONS, k),
        proto_f=_confused(_unit_rows(rng, NUM_CLASSES, cfg.latent), VISUAL_CONFUSIONS, k),
        proto_c=_confused(_unit_rows(rng, NUM_CLASSES, cfg.latent), VISUAL_CONFUSIONS, k),
        cols_a=_column_map(rng, cfg.audio_dim, cfg.latent),
        cols_f=_column_map(rng, cfg.frame_dim, cfg.latent),
        cols_c=_column_map(rng, cfg.clip_dim, cfg.latent),
        clip=_teacher(cfg, CLIP_THRESHOLDS, cfg.clip_margin, cfg.clip_scale, cfg.clip_emb_dim, cfg.clip_signal,
                      CLIP_GAINS, VISUAL_CONFUSIONS, cfg.clip_context, rng, emb),
        clap=_teacher(cfg, CLAP_THRESHOLDS, cfg.clap_margin, cfg.clap_scale, cfg.clap_emb_dim, cfg.clap_signal,
                      CLAP_GAINS, AUDIO_CONFUSIONS, cfg.clap_context, rng, emb),
    )


# --- per chunk generation -------------------------------------------------------------------------------------------


def _amplitude(cfg: SimConfig, act: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """(n, 10, 25) float32 event amplitudes (0 where inactive)."""
    n = act.shape[0]
    per_event = np.exp(cfg.amplitude_sd * rng.standard_normal((n, 1, NUM_CLASSES), dtype=np.float32))
    jitter = np.exp(cfg.segment_jitter_sd * rng.standard_normal((n, NUM_SEGMENTS, NUM_CLASSES), dtype=np.float32))
    return act.astype(np.float32) * per_event * jitter


def _student_amplitude(cfg: SimConfig, amp: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The amplitude the student features see: times a per-(video, class) log-normal visibility (median 1)."""
    if cfg.student_visibility_sd == 0:
        return amp
    n = amp.shape[0]
    return amp * np.exp(cfg.student_visibility_sd * rng.standard_normal((n, 1, NUM_CLASSES), dtype=np.float32))


def _latent(cfg: SimConfig, amp: np.ndarray, proto: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    n, t, _ = amp.shape
    d = proto.shape[1]
    x = amp @ proto  # (n, 10, d)
    x += (cfg.video_nuisance / np.sqrt(d)) * rng.standard_normal((n, 1, d), dtype=np.float32)
    x += (cfg.feature_noise / np.sqrt(d)) * rng.standard_normal((n, t, d), dtype=np.float32)
    return x


def _expand(x: np.ndarray, cols: np.ndarray, out: np.ndarray) -> None:
    """out[...] = features from latent x (n, 10, L): column j = x[..., k_j] * gain_j (see _column_map), in out's dtype.
    The dtype cast happens on the small (n, 10, 4L) table; the wide part is a plain gather."""
    table = (x[..., :, None] * _GAINS).reshape(*x.shape[:-1], -1).astype(out.dtype)  # coordinate-major, gain-minor
    np.take(table, cols, axis=-1, out=out)


def _teacher_outputs(cfg: SimConfig, teacher: _Teacher, amp: np.ndarray, weak: np.ndarray,
                     rng: np.random.Generator, emb_out: Optional[np.ndarray],
                     shared_rng: Optional[np.random.Generator] = None) -> np.ndarray:
    """(n, 10, 25) float32 logits; fills emb_out (n, 10, dim) with L2-normalised embeddings when given.
    `shared_rng` draws the per-video part of the semantic noise (cfg.teacher_video_share > 0)."""
    n = amp.shape[0]
    k = 1 + NUM_CLASSES
    sem = np.empty((n, NUM_SEGMENTS, k), np.float32)
    sem[..., 0] = cfg.teacher_alpha
    ctx = teacher.context * weak[:, None, :].astype(np.float32) * \
        np.exp(0.5 * rng.standard_normal((n, 1, NUM_CLASSES), dtype=np.float32))
    sem[..., 1:] = teacher.gain * amp + ctx
    sigma = cfg.teacher_noise
    noise = rng.standard_normal(sem.shape, dtype=np.float32)
    rho = cfg.teacher_video_share
    if rho > 0:  # same per-segment marginal, a share rho of its variance constant over the video's segments
        shared = shared_rng.standard_normal((n, 1, k), dtype=np.float32)
        noise = np.sqrt(1 - rho, dtype=np.float32) * noise + np.sqrt(rho, dtype=np.float32) * shared
    sem += (sigma / np.sqrt(teacher.dim)) * noise
    # the residual (dim - 26 dims) only matters through its norm: sigma^2 / dim * chi^2_{dim-26}
    rest2 = (sigma ** 2 / teacher.dim) * rng.chisquare(teacher.dim - k, size=(n, NUM_SEGMENTS)).astype(np.float32)
    norm = np.sqrt((sem ** 2).sum(-1) + rest2)  # (n, 10)
    logits = teacher.scale * (sem @ teacher.text.T) / norm[..., None]
    if emb_out is not None:
        resid = rng.standard_normal((n * NUM_SEGMENTS, teacher.dim), dtype=np.float32)
        resid -= (resid @ teacher.basis.T) @ teacher.basis  # orthogonal to the semantic subspace
        resid *= np.sqrt(rest2.reshape(-1, 1) / np.maximum((resid ** 2).sum(1, keepdims=True), 1e-12))
        full = sem.reshape(-1, k) @ teacher.basis + resid
        full /= norm.reshape(-1, 1)
        emb_out[...] = full.reshape(n, NUM_SEGMENTS, teacher.dim)
    return logits.astype(np.float32)


def _simulate_split(cfg: SimConfig, world: _World, seed: int, split_idx: int, name: str, weak: np.ndarray,
                    act_a: np.ndarray, act_v: np.ndarray) -> AVVPArrays:
    n = len(weak)
    dt = np.dtype(cfg.dtype)
    emb = cfg.features == "clip_clap"
    if emb:
        audio = np.empty((n, NUM_SEGMENTS, cfg.clap_emb_dim), dt)
        frames = np.empty((n, NUM_SEGMENTS, cfg.clip_emb_dim), dt)
        clips = None
    else:
        audio = np.empty((n, NUM_SEGMENTS, cfg.audio_dim), dt)
        frames = np.empty((n, NUM_SEGMENTS, cfg.frame_dim), dt)
        clips = np.empty((n, NUM_SEGMENTS, cfg.clip_dim), dt)
    clap_logits = np.empty((n, NUM_SEGMENTS, NUM_CLASSES), np.float32)
    clip_logits = np.empty_like(clap_logits)
    for ci, lo in enumerate(range(0, n, CHUNK)):
        hi = min(lo + CHUNK, n)
        # one stream per purpose, so e.g. the teachers' logits do not depend on which student features are made
        amp_rng, feat_rng, clap_rng, clip_rng, vis_rng, clap_vid_rng, clip_vid_rng = (
            np.random.default_rng([seed, split_idx, ci, k]) for k in range(7))
        amp_a = _amplitude(cfg, act_a[lo:hi], amp_rng)
        amp_v = _amplitude(cfg, act_v[lo:hi], amp_rng)
        if not emb:
            stu_a, stu_v = _student_amplitude(cfg, amp_a, vis_rng), _student_amplitude(cfg, amp_v, vis_rng)
            _expand(_latent(cfg, stu_a, world.proto_a, feat_rng), world.cols_a, audio[lo:hi])
            _expand(_latent(cfg, stu_v, world.proto_f, feat_rng), world.cols_f, frames[lo:hi])
            _expand(_latent(cfg, stu_v, world.proto_c, feat_rng), world.cols_c, clips[lo:hi])
        clap_logits[lo:hi] = _teacher_outputs(cfg, world.clap, amp_a, weak[lo:hi], clap_rng,
                                              audio[lo:hi] if emb else None, clap_vid_rng)
        clip_logits[lo:hi] = _teacher_outputs(cfg, world.clip, amp_v, weak[lo:hi], clip_rng,
                                              frames[lo:hi] if emb else None, clip_vid_rng)
    return AVVPArrays(video_ids=None, weak=weak, audio=audio, frames=frames, clips=clips,  # ids set by the caller
                      clap_logits=clap_logits, clip_logits=clip_logits)


def simulate(annotations_dir: Union[str, "os.PathLike[str]"], seed: int = 0, splits: Sequence[str] = SPLITS,
             config: Optional[SimConfig] = None, return_activity: bool = False, **overrides):
    """LLP-sim for `splits` -> {split: AVVPArrays}.

    Filled: video_ids, weak (real), audio / frames / clips (student features, see SimConfig.features), clap_logits and
    clip_logits (teachers), audio_gt / visual_gt (real dense GT) for val and test. audio_labels / visual_labels are left
    to `valor_core.labels.harvest_labels`. `overrides` are SimConfig fields, e.g. simulate(d, frame_dim=256), or
    `profile=NAME` (PROFILES: "v1" is the pre-calibration simulator), applied before the fields.

    With return_activity=True, returns ({split: AVVPArrays}, {split: (audio_activity, visual_activity)}): the dense
    activity the features were generated from -- the real GT for val/test, the sampled activity for train (NOT GT)."""
    cfg = sim_config(overrides.pop("profile", "llp"), config, **overrides)
    unknown = [s for s in splits if s not in SPLITS]
    if unknown:
        raise ValueError(f"LLP-sim splits are {SPLITS}, got {unknown}")
    world = _world(cfg, seed)
    val = load_split(annotations_dir, "val")
    out: dict[str, AVVPArrays] = {}
    activity: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for name in splits:
        split_idx = SPLITS.index(name) + 1
        sp = val if name == "val" else load_split(annotations_dir, name)
        if sp.audio_gt is not None:
            act_a, act_v = sp.audio_gt, sp.visual_gt
        else:
            act_a, act_v = sample_train_activity(sp.weak, val, np.random.default_rng([seed, split_idx, 0xAC7]),
                                                 shrink=cfg.shrink)
        arr = _simulate_split(cfg, world, seed, split_idx, name, sp.weak, act_a, act_v)
        arr.video_ids = sp.video_ids
        arr.audio_gt, arr.visual_gt = sp.audio_gt, sp.visual_gt
        out[name] = arr
        activity[name] = (act_a, act_v)
    return (out, activity) if return_activity else out


def parse_sim_source(text: str) -> Optional[tuple[int, dict]]:
    """A features SOURCE naming LLP-sim -> (seed, SimConfig overrides); None for anything else (a dataset URI).

    `sim` -> (0, {}), `sim:7` -> (7, {}), `sim:0:frame_dim=256,clip_dim=128` -> (0, {"frame_dim": 256, "clip_dim": 128})
    (values YAML-typed); `sim:0:profile=v1` -> the pre-calibration simulator (PROFILES). ValueError when the seed is not an integer or an override is not key=value."""
    s = str(text)
    if s != "sim" and not s.startswith("sim:"):
        return None
    parts = s.split(":", 2)
    try:
        seed = int(parts[1]) if len(parts) > 1 and parts[1] else 0
    except ValueError:
        raise ValueError(f"features {s!r}: expected sim[:SEED[:key=value,...]] with an integer seed") from None
    overrides: dict = {}
    for item in (parts[2].split(",") if len(parts) > 2 and parts[2] else ()):
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"features {s!r}: override {item!r} is not key=value")
        overrides[key.strip()] = load_yaml(value)
    return seed, overrides


def _main() -> None:  # python -m valor_core.sim [ANNOTATIONS_DIR] [--clip-clap]
    import resource
    import sys
    import time

    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    d = args[0] if args else default_annotations()
    features = "clip_clap" if "--clip-clap" in sys.argv else "vggish_resnet_r2p1d"
    t0, c0 = time.perf_counter(), time.process_time()
    out = simulate(d, seed=0, features=features)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    n = sum(len(a) for a in out.values())
    nbytes = sum(v.nbytes for a in out.values() for v in vars(a).values() if isinstance(v, np.ndarray))
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"LLP-sim ({features}): {n} videos in {wall:.2f} s wall, {cpu:.2f} s CPU; arrays {nbytes / 2**20:.0f} MiB, "
          f"peak RSS {rss:.0f} MiB")


if __name__ == "__main__":
    _main()
