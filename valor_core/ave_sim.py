"""AVE-sim: AVE-shaped features and teacher logits on the *real* AVE annotations (a test bed, never a result).

The released AVE features (VGGish, VGG-19) and CLIP/CLAP outputs are not available here, so this builds a stand-in
with the released shapes after `read_features` (audio (N, 10, 128), visual pooled to (N, 10, 512)), the real event
class and [start, end) of every video, and teacher logits over the C = 28 event classes for Eq. 12.

Modalities: AVE's GT is audio-visual (an event is annotated where it is heard AND seen), so each modality's activity
is a superset of [start, end): one modality extends the event to the left and the other to the right (which one, and
by 0..`spill` segments, drawn per video), so their intersection is exactly the GT span. Videos with an empty event
(Annotations.txt line 27) are background throughout, in both modalities.

Features: segment vector = amplitude x class prototype (unit vector, fixed per class and modality) where the modality
is active + a per-video nuisance vector + Gaussian noise. Teachers: logit = gain x active + per-class offset + noise
(so a unified threshold of 0 separates on from off up to the noise); a confusable class (c + 1 mod C) is lifted by
`confusion` where c is active, which the weak-label filter of Eq. 12 removes.
"""
from __future__ import annotations

import numpy as np

from valor_core.ave import NUM_SEGMENTS, AVEArrays, AVESplit

__all__ = ["simulate_ave", "modality_activity"]


def modality_activity(split: AVESplit, rng: np.random.Generator, spill: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """(audio_on, visual_on), each (N, 10) bool: supersets of [start, end) whose intersection is [start, end)."""
    n = len(split)
    t = np.arange(NUM_SEGMENTS)[None, :]
    left, right = rng.integers(0, spill + 1, n), rng.integers(0, spill + 1, n)
    audio_left = rng.random(n) < 0.5  # the audio extends to the left (and the visual to the right), or vice versa
    empty = split.start == split.end
    a_lo = np.where(audio_left, split.start - left, split.start)
    a_hi = np.where(audio_left, split.end, split.end + right)
    v_lo = np.where(audio_left, split.start, split.start - left)
    v_hi = np.where(audio_left, split.end + right, split.end)
    audio = (t >= a_lo[:, None]) & (t < a_hi[:, None]) & ~empty[:, None]
    visual = (t >= v_lo[:, None]) & (t < v_hi[:, None]) & ~empty[:, None]
    return audio, visual


def _features(rng: np.random.Generator, on: np.ndarray, category: np.ndarray, prototypes: np.ndarray,
              amplitude: float, noise: float) -> np.ndarray:
    n, dim = len(on), prototypes.shape[1]
    amp = amplitude * rng.lognormal(0.0, 0.3, (n, 1))
    x = (on * amp)[:, :, None] * prototypes[category][:, None, :]
    x += 0.5 * rng.standard_normal((n, 1, dim)) / np.sqrt(dim)  # per-video nuisance
    x += noise * rng.standard_normal((n, NUM_SEGMENTS, dim)) / np.sqrt(dim)
    return x.astype(np.float32)


def _teacher(rng: np.random.Generator, on: np.ndarray, category: np.ndarray, classes: int, gain: float,
             confusion: float, noise: float) -> np.ndarray:
    n = len(on)
    z = -0.5 * gain + noise * rng.standard_normal((n, NUM_SEGMENTS, classes))
    rows = np.arange(n)
    z[rows, :, category] += gain * on
    z[rows, :, (category + 1) % classes] += confusion * gain * on
    return z.astype(np.float32)


def simulate_ave(split: AVESplit, seed: int = 0, audio_dim: int = 128, visual_dim: int = 512, spill: int = 2,
                 amplitude: float = 1.0, noise: float = 1.0, teacher_gain: float = 4.0, teacher_noise: float = 1.0,
                 confusion: float = 0.8) -> AVEArrays:
    """AVE-sim arrays for `split` (module doc); deterministic in `seed` and the split's name."""
    salt = {"train": 1, "val": 2, "test": 3, "full": 4}.get(split.name, 5)
    proto_rng = np.random.default_rng(seed)  # prototypes shared by all splits of one seed
    c = split.background  # C event classes
    protos_a = proto_rng.standard_normal((c, audio_dim))
    protos_v = proto_rng.standard_normal((c, visual_dim))
    protos_a /= np.linalg.norm(protos_a, axis=1, keepdims=True)
    protos_v /= np.linalg.norm(protos_v, axis=1, keepdims=True)
    rng = np.random.default_rng([seed, salt])
    audio_on, visual_on = modality_activity(split, rng, spill)
    return AVEArrays(
        video_ids=split.video_ids.copy(),
        audio=_features(rng, audio_on, split.category, protos_a, amplitude, noise),
        visual=_features(rng, visual_on, split.category, protos_v, amplitude, noise),
        video=split.video,
        segments=split.segments,
        clap_logits=_teacher(rng, audio_on, split.category, c, teacher_gain, confusion, teacher_noise),
        clip_logits=_teacher(rng, visual_on, split.category, c, teacher_gain, confusion, teacher_noise),
    )
