"""The paper's feature extractors (the student inputs of `vggish_resnet_r2p1d` / `clip_clap_maps`), ray-free.

    name       column     shape per video   input                     module
    vggish     vggish     (10, 128)         audio, resampled 16 kHz   vggish.py   (torch port of the TF reference)
    res152     res152     (80, 2048)        8-fps frames, 224 px      resnet.py   (torchvision, ImageNet)
    r2plus1d   r2plus1d   (10, 512)         1-s 8-frame snippets      r2plus1d.py (torchvision, Kinetics-400)
    clap_maps  clap_maps  (64, 768)         whole clip, 48 kHz        clap_maps.py (laion_clap HTSAT; 768 = HTSAT-tiny)

The columns, shapes and dtypes (float32) are those of `valor import llp` (workflows.features.RELEASED), so extracted and
imported datasets are interchangeable. Weights come from local files only (valor_core.backbones.weights); `random`
builds the same network with random init.

    models = {n: build_backbone(n, weights.get(n), device="cpu") for n in ("vggish", "res152")}
    feats = compute_features(["vggish", "res152"], dense, audio, 48000, models)   # one video, no Ray
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping, Optional, Sequence

import numpy as np

from valor_core.backbones import clap_maps, r2plus1d, resnet, vggish
from valor_core.backbones.base import resolve_device
from valor_core.backbones.weights import BackboneError, MissingWeights, resolve
from valor_core.teachers.clap import check_clap_files


@dataclass(frozen=True)
class Entry:
    column: str
    shape: tuple[int, int]  # per video at T = 10 segments (clap_maps: width of the paper's HTSAT-tiny)
    builder: Callable  # (weights path | None, device, **options) -> backbone
    input: str  # "frames" (the 8-fps stack) | "audio" (the whole clip)
    filename: str = ""  # the torch hub cache file used when no weights are named ("" = not a file: the CLAP spec)
    url: str = ""


BACKBONES: dict[str, Entry] = {
    "vggish": Entry("vggish", (10, 128), vggish.build, "audio", vggish.FILENAME, vggish.URL),
    "res152": Entry("res152", (80, 2048), resnet.build, "frames", resnet.FILENAME, resnet.URL),
    "r2plus1d": Entry("r2plus1d", (10, 512), r2plus1d.build, "frames", r2plus1d.FILENAME, r2plus1d.URL),
    "clap_maps": Entry("clap_maps", (64, 768), clap_maps.build, "audio"),
}
TEACHERS = ("clip", "clap")  # the other --features names: valor_core.teachers
FEATURES = TEACHERS + tuple(BACKBONES)


def parse_features(text) -> tuple[str, ...]:
    """"clip,clap,vggish" (or a sequence) -> ("clip", "clap", "vggish"); ValueError naming an unknown one."""
    names = [n.strip() for n in (text.split(",") if isinstance(text, str) else text) if n.strip()]
    unknown = [n for n in names if n not in FEATURES]
    if unknown or not names:
        raise ValueError(f"--features {','.join(names) or '(empty)'}: unknown {', '.join(unknown) or 'nothing'}; "
                         f"choose from {', '.join(FEATURES)}")
    return tuple(dict.fromkeys(names))


def column_shape(name: str, segments: int = 10, width: Optional[int] = None) -> tuple[int, int]:
    """The per-video shape of backbone `name` for T = segments (clap_maps: `width` when not the paper's 768)."""
    a, b = BACKBONES[name].shape
    if name == "clap_maps":
        return a, int(width or b)
    return (a * segments // 10 if name == "res152" else segments), b


def weights_path(name: str, spec: Optional[str], flag: Optional[str] = None) -> Optional[str]:
    """The local weights file for backbone `name` (None = random); MissingWeights naming the file and its source.
    For clap_maps the spec is the CLAP teacher spec (checked by valor_core.teachers)."""
    if name not in BACKBONES:
        raise BackboneError(f"unknown backbone {name!r}; known: {', '.join(BACKBONES)}")
    if name == "clap_maps":
        check_clap_files(spec or "random")
        return spec or "random"
    e = BACKBONES[name]
    return resolve(name, spec, e.filename, e.url, flag or f"--{name}-weights")


def build_backbone(name: str, weights: Optional[str] = None, device: Optional[str] = "auto", **options):
    """Backbone `name` with weights from `weights` ("" = torch hub cache, a path, or "random"; clap_maps: a CLAP
    spec). options: segments (vggish, r2plus1d), pca (vggish), batch_size, seed."""
    path = weights_path(name, weights)
    dev = resolve_device(device)
    if name == "clap_maps":
        options.pop("segments", None)
    if name == "res152":
        options.pop("segments", None)
    return BACKBONES[name].builder(path, dev, **options)


def compute_features(names: Sequence[str], frames_dense: Optional[np.ndarray], audio, sample_rate: int,
                     models: Optional[Mapping[str, object]] = None, device: Optional[str] = "auto",
                     segments: int = 10, frames_small: Optional[np.ndarray] = None) -> dict[str, np.ndarray]:
    """The backbone features of ONE video (or a batch), without Ray.

    names: backbone names (keys of BACKBONES; teacher names are not handled here).
    frames_dense: the 8-fps stack, (8T, S, S, 3) uint8 for one video or (n, 8T, S, S, 3) for n (MediaConfig
        dense_frames=True gives it as DecodedVideo.dense_frames); needed by res152 / r2plus1d.
    audio: the whole clip's mono waveform, 1-D float (one video), or a list of them (n videos); a (T, L) array of
        segments (DecodedVideo.audio) is taken as one video and flattened; needed by vggish / clap_maps.
    sample_rate: the audio's rate in Hz (each backbone resamples to its own).
    models: {name: built backbone} (build_backbone); a missing name is built with the default weights on `device`.
    frames_small: R(2+1)D's own 112-px stack of the same frames (DecodedVideo.dense_small); without it r2plus1d
        resizes frames_dense.
    Returns {column: float32 array}: (a, b) per column for one video, (n, a, b) for a batch.
    """
    names = list(names)
    unknown = [n for n in names if n not in BACKBONES]
    if unknown:
        raise BackboneError(f"compute_features: unknown backbone(s) {unknown}; known: {', '.join(BACKBONES)}")
    single = False
    if frames_dense is not None:
        frames_dense = np.asarray(frames_dense)
        if frames_dense.ndim == 4:
            frames_dense, single = frames_dense[None], True
    if frames_small is not None:
        frames_small = np.asarray(frames_small)
        frames_small = frames_small[None] if frames_small.ndim == 4 else frames_small
    waves = None
    if audio is not None:
        if isinstance(audio, np.ndarray) and audio.ndim <= 2:
            waves, single = [np.asarray(audio, np.float32).reshape(-1)], True
        else:
            waves = [np.asarray(a, np.float32).reshape(-1) for a in audio]
    models = dict(models or {})
    out: dict[str, np.ndarray] = {}
    for name in names:
        e = BACKBONES[name]
        bb = models.get(name) or build_backbone(name, None, device, segments=segments)
        if e.input == "frames":
            if frames_dense is None:
                raise ValueError(f"compute_features: {name} needs frames_dense (the 8-fps stack)")
            out[e.column] = bb(frames_small if name == "r2plus1d" and frames_small is not None else frames_dense)
        else:
            if waves is None:
                raise ValueError(f"compute_features: {name} needs audio")
            out[e.column] = bb(waves, sample_rate)
    return {k: v[0] for k, v in out.items()} if single else out


__all__ = ["BACKBONES", "FEATURES", "TEACHERS", "Entry", "BackboneError", "MissingWeights", "parse_features",
           "column_shape", "weights_path", "build_backbone", "compute_features"]
