"""The science's configuration, typed: model, optimiser, labels, training, teachers, media.

Defaults are the paper's (VALOR appendix B, Table 6/7; METHOD-NOTES); every deviation is a named field. Each class's
`LIMITS` gives the allowed range of its numeric fields (">= 1", "> 0", "0..1" inclusive, "0..<1" without 1; every item
of a tuple; never inf or nan), checked when a config is built from YAML or overrides (valor_core.configio). The
workflow configs (storage, extract, Ray, tracking, pipeline) are in workflows/config.py; the threshold search's in
tuning/config.py.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, Optional

# --- model ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class HANConfig:
    """Hybrid Attention Network (Tian et al. 2020): defaults as trained in VALOR (Table 7); the 2020 network is
    heads=1, ff=512, update="parallel" (the `han` preset)."""

    LIMITS: ClassVar[dict] = {"audio_dim": ">= 1", "audio_steps": ">= 0", "frame_dim": ">= 0", "frame_steps": ">= 1",
                            "clip_dim": ">= 0", "hidden": ">= 1", "layers": ">= 1", "heads": ">= 1", "ff": ">= 1",
                            "dropout": "0.0..1.0", "num_classes": ">= 1"}

    audio_dim: int = 128  # VGGish (10,128); CLAP HTSAT feature maps (64,768) for VALOR++
    audio_steps: int = 0  # audio input arrives with this many steps and is resampled to T as the official network
    #                       does (VALOR main_network.py: CLAP maps, 64); 0 = already T
    frame_dim: int = 2048  # ResNet-152 frames; CLIP image embeddings (768) for VALOR++; 0 = no frame stream
    frame_steps: int = 8  # frame features per 1-s segment (8 fps), average-pooled to one step per segment
    clip_dim: int = 512  # R(2+1)D-18 clip features (fused with the frame stream); 0 = no clip stream
    hidden: int = 512
    layers: int = 1
    heads: int = 8
    ff: int = 1024
    dropout: float = 0.1
    num_classes: int = 25
    update: Literal["sequential", "parallel"] = "sequential"  # VALOR: visual attends to the updated audio; 2020 HAN:
    #                                                            both modalities from the layer's original inputs


@dataclass(frozen=True)
class OptimConfig:
    """Optimiser and per-epoch learning-rate schedule."""

    LIMITS: ClassVar[dict] = {"lr_max": "> 0", "lr_min": ">= 0.0", "betas": "0.0..<1.0", "weight_decay": ">= 0.0",
                            "warmup_epochs": ">= 0", "step_size": ">= 1", "gamma": "> 0",
                            "epochs": ">= 1", "batch_size": ">= 1", "grad_clip": ">= 0.0"}

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
    modality_agnostic: bool = False  # both modalities get a OR v (VALOR Table 2, third row)


@dataclass(frozen=True)
class LSLDConfig:
    """LSLD label refinement and loss (Fan et al. 2023, Sec. 3.2-3.4; fyyCS/LSLD main.py defaults)."""

    LIMITS: ClassVar[dict] = {"max_labels": ">= 1", "alpha": ">= 0.0", "beta": ">= 0.0", "audio_weight": ">= 0.0",
                            "visual_weight": ">= 0.0", "video_weight": ">= 0.0"}

    max_labels: int = 3  # videos with more weak labels keep them on every segment (the code builds no captions)
    alpha: float = 4.0  # Eq. 4: soft label of an unreliable positive = alpha x s_c
    beta: float = 0.4  # Eq. 4: soft label of an unreliable negative = beta x s_c
    reweight: bool = True  # False = the "DeN only" ablation (Table 2): hard denoised visual labels
    rule: Literal["code", "paper"] = "code"  # code: strict <, >, hard label kept outside (0,1); paper: <=, >=, clip
    audio_prompt: str = "This is a sound of "  # CLAP prompts; CLIP prompts are the bare phrases
    audio_weight: float = 3.0  # loss weights (main.py --audio_weight / --visual_weight / --video_weight)
    visual_weight: float = 1.0
    video_weight: float = 1.0


@dataclass(frozen=True)
class MAConfig:
    """MA (Wu & Yang 2021): contrastive loss (Eq. 8) and the track-swap label refinement (Eq. 4-7; METHOD-NOTES)."""

    LIMITS: ClassVar[dict] = {"tau": "> 0", "threshold": "0.0..1.0"}

    tau: float = 0.2  # Eq. 8 temperature (Table 4)
    contrastive: bool = True  # False = Table 2 "Baseline + R" (no L_c)
    threshold: float = 0.5  # Eq. 6, 7: drop when p / E_c < threshold
    refine: Literal["both", "audio", "visual"] = "both"  # which modality's labels stage 2 refines (Table 3)
    seed: int = 0  # the draw of the partner video sharing no label


# --- training ------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrainConfig:
    """One training run: a preset fills these; the CLI overrides any field."""

    LIMITS: ClassVar[dict] = {"label_smoothing": "0.0..1.0", "num_workers": ">= 1"}

    preset: str = "valor"
    model: HANConfig = field(default_factory=HANConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    loss: Literal["han", "valor", "kd", "lsld", "ma", "ma-refined", "valor-global", "valor-visual",
                  "valor-audio"] = "valor"  # the last three: VALOR Table 4 rows (valor_core.losses.TABLE4)
    labels: LabelConfig = field(default_factory=LabelConfig)
    label_smoothing: float = 0.1  # HAN baseline: visual target 0.9y + 0.05
    ma: MAConfig = field(default_factory=MAConfig)  # losses "ma" / "ma-refined" and `valor refine ma`
    # student inputs: VGGish/ResNet-152/R(2+1)D | CLIP + CLAP embeddings (extract) | the official VALOR++ inputs:
    # CLAP HTSAT maps (64, 768), CLIP (10, 768), R(2+1)D (10, 512)
    features: Literal["vggish_resnet_r2p1d", "clip_clap", "clip_clap_maps"] = "vggish_resnet_r2p1d"
    select_metric: str = "segment.type"  # keep the checkpoint with the best val segment-level Type@AV
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda
    # speed only (valor_core.fit; the same results for a seed, except `compile` and, on CUDA, `fused`): the arrays
    # kept on the training device (auto: CUDA when they fit in half its free memory; CPU: always), fused AdamW/Adam
    # (auto: on CUDA); compile: eager (none) | cuda-graph (the whole training step captured once and replayed,
    # valor_core.graph_step) | default / reduce-overhead / max-autotune (torch.compile of the model's training pass)
    resident: Literal["auto", "always", "never"] = "auto"
    fused: Literal["auto", "always", "never"] = "auto"
    compile: Literal["eager", "cuda-graph", "default", "reduce-overhead", "max-autotune"] = "eager"
    num_workers: int = 1  # Ray Train workers (DDP)
    use_gpu: bool = False


@dataclass(frozen=True)
class AVEConfig:
    """What VALOR appendix F adds for AVE on top of a TrainConfig (valor_core.ave_fit): C + 1 classes with background,
    the 2-layer FFN head (Eq. 10), thresholds for Eq. 12, and how audio and visual predictions are combined."""

    LIMITS: ClassVar[dict] = {"ffn_hidden": ">= 0"}

    head: Literal["ffn2", "linear"] = "ffn2"  # Eq. 10: z_t^m = FFN(f_t^m), 2 layers; linear = HAN's Linear(d, C+1)
    ffn_hidden: int = 0  # width of the FFN's hidden layer; 0 = the HAN's d (the paper does not give it)
    clap_threshold: float = 0.0  # unified phi^CLAP on the teacher's audio logits (Eq. 12)
    clip_threshold: float = 0.0  # unified phi^CLIP on the teacher's visual logits (Eq. 12)
    combine: Literal["mean", "product"] = "mean"  # inference rule, valor_core.ave_metrics.combine


# --- teachers and media --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TeacherConfig:
    """Which CLIP/CLAP teachers run and how (spec syntax: valor_core.teachers, README "Media and teachers")."""

    LIMITS: ClassVar[dict] = {"batch_size": ">= 0"}

    clip: str = "ViT-L-14:openai"  # open_clip MODEL:PRETRAINED (tag, local checkpoint path or 'random') or CFG.json[:CKPT]
    clap: str = "630k-fusion-best.pt"  # laion_clap checkpoint path, [AMODEL:[fusion|nofusion:]]PATH, or a CLAP spec JSON
    device: str = "auto"  # auto: cuda when available, else cpu
    # tower weights in this precision (no autocast; norms, pre-processing and scoring stay fp32; text tower fp32):
    # auto = bf16 on CUDA, fp32 on CPU; bf16 is honoured on CPU too (valor_core.teachers.precision)
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    batch_size: int = 0  # frames (CLIP) / segments (CLAP) per forward; 0 = auto: 64 on CPU, by free memory on CUDA
    seed: int = 0  # numpy seed for laion_clap's random crops (only used for segments longer than 10 s)
    compile: bool = False  # torch.compile the image / audio tower (no gain measured over bf16 weights on an H200)
    # CLAP input pre-processing: "device" = laion_clap's int16 round trip, repeat-pad and fusion mel re-done batched
    # in torch on the teacher's device; "library" = laion_clap's get_audio_embedding_from_data, per segment on the host
    clap_preprocess: Literal["device", "library"] = "device"


@dataclass(frozen=True)
class MediaConfig:
    """How a video becomes T frames and T audio segments (valor_core.media.decode documents the policies)."""

    LIMITS: ClassVar[dict] = {"segments": ">= 1", "segment_seconds": "> 0", "frame_size": ">= 0",
                            "sample_rate": ">= 1", "grid_fps": "> 0", "min_duration": ">= 0.0",
                            "silence_threshold": ">= 0.0", "decode_threads": ">= 0"}

    segments: int = 10
    segment_seconds: float = 1.0
    frame_size: int = 224  # S of the S x S frames (frame_geometry); 0 = source size
    sample_rate: int = 48000
    frame_sampling: Literal["linspace8fps", "per_segment"] = "linspace8fps"
    grid_fps: float = 8.0  # the frame grid the paper extracts (8 fps)
    dense_frames: bool = False  # also return the 8-fps stack (80 frames) for feature extraction
    length_policy: Literal["uniform", "pad_trim"] = "uniform"  # uniform = the paper's: split whatever length into T
    min_duration: float = 1.0  # shorter clips are a TooShort error
    silence_threshold: float = 1e-4  # audio peak below this = SilentAudio issue
    decode_threads: int = 1  # decord decoder threads (0 = auto); 1 suits one Ray worker per core
    # which source frames make the 8-fps grid: "ffmpeg" = those `ffmpeg -i V -r 8` writes (the official scripts'),
    # "pts" = the frame on screen at k/8 s (valor before issue 22)
    frame_grid: Literal["ffmpeg", "pts"] = "ffmpeg"
    # "official" = decode at source size, then each official script's resize/crop (valor_core.media.geometry);
    # "squash" = decoder resize to frame_size x frame_size without crop (valor before issue 22)
    frame_geometry: Literal["official", "squash"] = "official"
    # "decode" = the decoded frames themselves (no JPEG: the lossless side of the official path, faster);
    # "ffmpeg-jpeg" = the JPEG files `ffmpeg -i V -r 8 %06d.jpg` writes (ffmpeg's default MJPEG quality), read with PIL
    # as the official scripts read them (valor_core.media.ffmpeg_jpeg; needs the ffmpeg program)
    frame_source: Literal["decode", "ffmpeg-jpeg"] = "decode"

    def __post_init__(self) -> None:
        if self.frame_source == "ffmpeg-jpeg" and (self.frame_grid, self.frame_geometry, self.frame_sampling) != (
                "ffmpeg", "official", "linspace8fps"):
            raise ValueError("media.frame_source ffmpeg-jpeg reads the JPEGs of `ffmpeg -r 8` as the official scripts "
                             "do: it needs media.frame_grid ffmpeg, frame_geometry official and frame_sampling "
                             f"linspace8fps (got {self.frame_grid}, {self.frame_geometry}, {self.frame_sampling})")


# --- helpers -------------------------------------------------------------------------------------------------------


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
