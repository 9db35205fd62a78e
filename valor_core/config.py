"""All of valor's configuration, typed, in one place.

Every stage reads one dataclass from here; `PipelineConfig` composes them and is what `configs/*.yaml` deserialise into.
Defaults are the paper's (VALOR appendix B, Table 6/7; METHOD-NOTES); every deviation is a named field.
Sections: model+optimiser (HAN presets) · labels · teachers/media · storage · extract · tune · train · pipeline.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal, Optional

# --- model ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class HANConfig:
    """Hybrid Attention Network (Tian et al. 2020) as trained in VALOR (Table 7)."""

    audio_dim: int = 128  # VGGish (10,128); CLAP embeddings for VALOR++
    frame_dim: int = 2048  # ResNet-152 frames; CLIP image embeddings (768) for VALOR++; 0 = no frame stream
    frame_steps: int = 8  # frame features per 1-s segment (8 fps), average-pooled to one step per segment
    clip_dim: int = 512  # R(2+1)D-18 clip features; 0 = no clip stream (VALOR++ uses CLIP frames only)
    hidden: int = 512
    layers: int = 1
    heads: int = 8
    ff: int = 1024
    dropout: float = 0.1
    num_classes: int = 25


@dataclass(frozen=True)
class OptimConfig:
    """Optimiser and per-epoch learning-rate schedule."""

    optimizer: Literal["adamw", "adam"] = "adamw"
    lr_max: float = 1e-4
    lr_min: float = 1e-6
    betas: tuple[float, float] = (0.5, 0.999)
    weight_decay: float = 1e-3
    schedule: Literal["warmup_cosine", "step", "constant"] = "warmup_cosine"  # see valor_core.schedule
    warmup_epochs: int = 10
    step_size: int = 10  # "step" schedule (2020 HAN): StepLR(step_size, gamma)
    gamma: float = 0.1
    epochs: int = 60
    batch_size: int = 64
    grad_clip: float = 1.0  # 0 = off


# --- labels --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LabelConfig:
    """How training targets are made from teacher logits (VALOR section 3.2)."""

    clip_thresholds: Optional[tuple[float, ...]] = None  # None = Table 6 theta^CLIP
    clap_thresholds: Optional[tuple[float, ...]] = None  # None = Table 6 theta^CLAP
    unified_clip: Optional[float] = None  # class-independent threshold (Table 8 ablation) overrides the per-class ones
    unified_clap: Optional[float] = None
    filter_by_weak: bool = True  # AND with the video-level label; False = the no-filter ablation


# --- training ------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrainConfig:
    """One training run: a preset fills these; the CLI overrides any field."""

    preset: str = "valor"
    model: HANConfig = field(default_factory=HANConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    loss: Literal["han", "valor", "kd"] = "valor"
    labels: LabelConfig = field(default_factory=LabelConfig)
    label_smoothing: float = 0.1  # HAN baseline: visual target 0.9y + 0.05
    features: Literal["vggish_resnet_r2p1d", "clip_clap"] = "vggish_resnet_r2p1d"
    select_metric: str = "segment.type"  # keep the checkpoint with the best val segment-level Type@AV
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda
    num_workers: int = 1  # Ray Train workers (DDP)
    use_gpu: bool = False


# --- teachers and media (issue: media and teachers) ----------------------------------------------------------------


@dataclass(frozen=True)
class TeacherConfig:
    clip: str = "ViT-L-14:openai"  # open_clip model name[:pretrained tag] or a local checkpoint path / spec
    clap: str = "630k-fusion-best.pt"  # laion_clap checkpoint path (HTSAT-base, fusion)
    device: str = "auto"
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"  # auto: bf16 autocast on CUDA, fp32 on CPU
    batch_size: int = 64  # frames (CLIP) / segments (CLAP) per forward


@dataclass(frozen=True)
class MediaConfig:
    segments: int = 10
    frame_size: int = 224
    sample_rate: int = 48000
    frame_sampling: Literal["linspace8fps", "per_segment"] = "linspace8fps"
    dense_frames: bool = False  # also return the 8-fps stack (80 frames) for feature extraction


# --- storage (issue: Ray Data extraction) --------------------------------------------------------------------------


@dataclass(frozen=True)
class StorageConfig:
    """S3 endpoint and credentials; None fields fall back to the standard AWS environment variables."""

    endpoint: Optional[str] = None  # e.g. http://127.0.0.1:8333
    access_key: Optional[str] = None
    secret_key: Optional[str] = None
    region: str = "us-east-1"
    bucket: str = "valor"


# --- pipeline ------------------------------------------------------------------------------------------------------


def replace(cfg: Any, **overrides: Any) -> Any:
    """dataclasses.replace that accepts dotted keys, e.g. replace(cfg, **{"optim.lr_max": 3e-4})."""
    nested: dict[str, dict[str, Any]] = {}
    flat: dict[str, Any] = {}
    for key, value in overrides.items():
        head, _, rest = key.partition(".")
        if rest:
            nested.setdefault(head, {})[rest] = value
        else:
            flat[key] = value
    for head, sub in nested.items():
        if not hasattr(cfg, head):
            raise KeyError(f"unknown config key {head!r} in {type(cfg).__name__}")
        flat[head] = replace(getattr(cfg, head), **sub)
    names = {f.name for f in dataclasses.fields(cfg)}
    unknown = set(flat) - names
    if unknown:
        raise KeyError(f"unknown config key(s) {sorted(unknown)} in {type(cfg).__name__}; known: {sorted(names)}")
    return dataclasses.replace(cfg, **flat)


def to_dict(cfg: Any) -> dict[str, Any]:
    """A plain, JSON/YAML-able dict of a config dataclass (tuples become lists)."""
    return dataclasses.asdict(cfg)
