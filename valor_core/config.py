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
    """Which CLIP/CLAP teachers run and how (spec syntax: valor_core.teachers, README "Media and teachers")."""

    clip: str = "ViT-L-14:openai"  # open_clip MODEL:PRETRAINED (tag, local checkpoint path or 'random') or CFG.json[:CKPT]
    clap: str = "630k-fusion-best.pt"  # laion_clap checkpoint path, [AMODEL:[fusion|nofusion:]]PATH, or a CLAP spec JSON
    device: str = "auto"  # auto: cuda when available, else cpu
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"  # auto: bf16 autocast on CUDA, fp32 on CPU
    batch_size: int = 64  # frames (CLIP) / segments (CLAP) per forward
    seed: int = 0  # numpy seed for laion_clap's random crops (only used for segments longer than 10 s)


@dataclass(frozen=True)
class MediaConfig:
    """How a video becomes T frames and T audio segments (valor_core.media.decode documents the policies)."""

    segments: int = 10
    segment_seconds: float = 1.0
    frame_size: int = 224  # decoder-side resize to S x S without crop; 0 = source size
    sample_rate: int = 48000
    frame_sampling: Literal["linspace8fps", "per_segment"] = "linspace8fps"
    grid_fps: float = 8.0  # the frame grid the paper extracts (8 fps)
    dense_frames: bool = False  # also return the 8-fps stack (80 frames) for feature extraction
    length_policy: Literal["uniform", "pad_trim"] = "uniform"  # uniform = the paper's: split whatever length into T
    min_duration: float = 1.0  # shorter clips are a TooShort error
    silence_threshold: float = 1e-4  # audio peak below this = SilentAudio issue
    decode_threads: int = 1  # decord decoder threads (0 = auto); 1 suits one Ray worker per core


# --- storage (issue: Ray Data extraction) --------------------------------------------------------------------------


@dataclass(frozen=True)
class StorageConfig:
    """S3 endpoint and credentials; None fields fall back to the standard AWS environment variables."""

    endpoint: Optional[str] = None  # e.g. http://127.0.0.1:8333
    access_key: Optional[str] = None
    secret_key: Optional[str] = None
    region: str = "us-east-1"
    bucket: str = "valor"


@dataclass(frozen=True)
class ExtractConfig:
    """`valor extract`: Ray Data decode -> CLIP actors -> CLAP actors -> Parquet (workflows/extract.py).

    Actor pools are `ActorPoolStrategy(min_size, max_size)` ranges so the pool scales with the cluster; each actor takes
    `num_gpus` when the cluster has GPUs (0 on a CPU-only cluster, whatever is set here) and `actor_num_cpus` CPUs.
    """

    out: str = "runs/local/features"  # output dataset URI (local dir or s3://bucket/prefix); failures in <out>/_failures
    decode_batch_size: int = 2  # videos per decode task call (CPU tasks; frames are resized there)
    decode_num_cpus: float = 1.0
    clip_batch_size: int = 16  # videos per CLIP actor call (x segments frames per forward, chunked by teachers.batch_size)
    clap_batch_size: int = 16  # videos per CLAP actor call
    clip_actors: tuple[int, int] = (1, 2)  # ActorPoolStrategy(min_size, max_size)
    clap_actors: tuple[int, int] = (1, 2)
    num_gpus: float = 1.0  # per teacher actor when GPUs exist (fractions share a GPU)
    actor_num_cpus: float = 1.0  # per teacher actor on a CPU-only cluster (with GPUs: 1 CPU for host work)
    torch_threads: int = 0  # torch threads per teacher actor; 0 = auto: all cores of the node (CPU-only), 1 (GPU)
    rows_per_file: int = 256  # videos per Parquet file (the last file of a run may hold fewer)
    dense: bool = False  # also store CLIP embeddings of the 8-fps frame stack (clip_dense_emb, (80, d) per video)
    retry_failed: bool = False  # re-run videos that have a row in <out>/_failures (default: they count as skipped)


# --- tune and harvest (issue: Ray Tune threshold search, label harvesting) ----------------------------------------


@dataclass(frozen=True)
class TuneConfig:
    """`valor tune thresholds` (tuning/thresholds.py): Ray Tune search of theta^CLAP (audio) / theta^CLIP (visual) on val.

    Objective: "fidelity" = micro F of the harvested labels vs val GT (VALOR Table 3); "official" = per-modality official
    segment-level F of those labels. Searchers: coord (block coordinate ascent: blocks of `classes_per_trial` classes
    as parallel trials, each running exact line searches over its block), optuna (TPE), cmaes (Optuna CMA-ES), exact
    (in-process Dinkelbach, no Tune)."""

    searcher: Literal["coord", "optuna", "cmaes", "exact"] = "coord"
    objective: Literal["fidelity", "official"] = "fidelity"
    filter_by_weak: bool = True  # tune for (z > theta) AND y; False = the no-filter ablation
    init: Literal["table6", "unified"] = "table6"  # start point of coord / first Optuna point
    classes_per_trial: Optional[int] = None  # coord: classes per trial; None = one block per concurrent slot
    passes_per_trial: int = 10  # coord: Gauss-Seidel passes over its block a trial may run (stops when one gains 0)
    max_sweeps: int = 20  # coord: stop after this many sweeps even if still improving
    tol: float = 1e-6  # coord: a sweep gaining less (F points) ends the search
    trials: int = 200  # optuna / cmaes samples
    grid_points: int = 21  # unified-threshold grid (1st..99th percentile of the candidate logits)
    seed: int = 0
    num_cpus: Optional[int] = None  # in-process Ray only (None = all)
    max_concurrent: Optional[int] = None  # concurrent trials (None = as many as Ray's CPUs allow)
    ray_address: Optional[str] = None  # None = RAY_ADDRESS or in-process
    storage_dir: Optional[str] = None  # Ray Tune experiment dir (None = <tmp>/valor-tune)
    mlflow_uri: Optional[str] = None  # None = $MLFLOW_TRACKING_URI or sqlite:///<cwd>/runs/mlflow.db
    experiment: str = "valor-tune"


@dataclass(frozen=True)
class HarvestConfig:
    """`valor harvest` (workflows/harvest.py): (z > theta) AND y for every video of the features dataset -> labels Parquet.

    Which thresholds: a LabelConfig (unified / explicit per-class / Table 6) and optionally a tune JSON that fills the
    per-class values the LabelConfig leaves unset."""

    out: Optional[str] = None  # None = `labels` beside the features dataset (<features>/../labels)
    thresholds_json: Optional[str] = None  # `valor tune thresholds --out` file (local path or URI)
    rows_per_file: int = 4096  # videos per Parquet file
    splits: tuple[str, ...] = ()  # () = every split in the features dataset


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


# --- pipeline: one YAML names everything (issue: one pipeline, two homes) -----------------------------------------
# `configs/*.yaml` deserialise into PipelineConfig through `load_config(path, overrides)`. Relative local paths are kept as
# written here; `workflows.pipeline` resolves them against the working directory when it runs.


@dataclass(frozen=True)
class PathsConfig:
    """Where the data is and where the outputs go. Every field is a local path or an `s3://bucket/prefix` URI."""

    videos: str = "runs/demo/videos"  # video root (<video_id>.mp4 files), local dir or s3://
    manifest: Optional[str] = None  # videos to process: LLP-style CSV (filename, event_labels[, split]); None = <videos>/manifest.csv
    annotations: str = "runs/demo/videos"  # dir with AVVP_eval_audio.csv / AVVP_eval_visual.csv (dense val/test GT)
    output: str = "runs/local"  # stage outputs: features/, labels/, thresholds.json, train/, eval.json, config.yaml
    work: str = "runs/cache"  # local scratch: tiny teachers, HF caches (never on S3)


@dataclass(frozen=True)
class CorpusConfig:
    """The generated demo corpus (real mp4 files with LLP-style labels) used when no real videos are at hand."""

    generate: bool = False  # create it at paths.videos on first use (reused after: a marker records how it was made)
    videos: int = 24
    seed: int = 0


@dataclass(frozen=True)
class RayConfig:
    """How the pipeline reaches Ray. address None = `ray.init()` in-process (or the cluster of a `ray job submit`)."""

    address: Optional[str] = None  # "auto", "ray://host:10001", or None
    num_cpus: Optional[int] = None  # in-process mode only: CPUs the local Ray may use (None = all)
    num_gpus: Optional[int] = None  # in-process mode only
    namespace: Optional[str] = None


@dataclass(frozen=True)
class TrackingConfig:
    """MLflow. uri None = a sqlite store beside the local outputs (`<work>/mlflow.db` when outputs are on S3)."""

    uri: Optional[str] = None
    experiment: str = "valor"


@dataclass(frozen=True)
class DemoConfig:
    """The LLP-sim science demo run after the stages (`valor demo`); local mode only by default."""

    enabled: bool = False
    out: Optional[str] = None  # pictures dir; None = <output>/demo (local outputs) or <work>/demo
    args: tuple[str, ...] = ()  # extra `valor demo` arguments


class ConfigError(ValueError):
    """A config file or override that does not fit the typed configuration; the message says where and why."""


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(tp: Any, value: Any, where: str, current: Any = None) -> Any:
    """Turn a YAML value into the declared type `tp`, or raise ConfigError naming `where`."""
    import types
    import typing

    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping for {tp.__name__}, got {value!r}")
        return build(tp, value, where=where, base=current if isinstance(current, tp) else None)
    if origin in (typing.Union, types.UnionType):
        if value is None:
            if type(None) in args:
                return None
            raise ConfigError(f"{where}: may not be null")
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(arg, value, where, current)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{where}: {value!r} fits none of {_type_name(tp)}")
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{where}: {value!r} is not one of {', '.join(map(repr, args))}")
        return value
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(args[0], v, f"{where}[{i}]") for i, v in enumerate(value))
        if args and len(args) != len(value):
            raise ConfigError(f"{where}: expected {len(args)} items, got {len(value)}")
        return tuple(_coerce(a, v, f"{where}[{i}]") for i, (a, v) in enumerate(zip(args, value))) if args else tuple(value)
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        return [_coerce(args[0], v, f"{where}[{i}]") for i, v in enumerate(value)] if args else list(value)
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        if not args:
            return dict(value)
        return {_coerce(args[0], k, f"{where}.{k}"): _coerce(args[1], v, f"{where}.{k}") for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"{where}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(f"{where}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{where}: expected a string, got {value!r} (quote it in YAML)")
    if isinstance(tp, type) and isinstance(value, tp):
        return value
    raise ConfigError(f"{where}: cannot read {value!r} as {_type_name(tp)}")


def _base_instance(cls: type, data: dict[str, Any]) -> Any:
    """The instance a YAML mapping is applied on: the class defaults, or for a training section its preset."""
    if cls is TrainConfig and "preset" in data:
        from valor_core.presets import get_preset  # presets imports this module

        try:
            return get_preset(data["preset"])
        except ValueError as err:
            raise ConfigError(str(err)) from None
    return cls()


def _join(where: str, key: Any) -> str:
    return f"{where}.{key}" if where else str(key)


def build(cls: type, data: dict[str, Any], *, where: str = "", base: Any = None) -> Any:
    """Build the dataclass `cls` from a plain mapping, applied on `base` (default: `cls()` or the named preset).

    Unknown keys, wrong types and values outside a Literal raise ConfigError with the dotted key and the known keys."""
    import typing

    if not isinstance(data, dict):
        raise ConfigError(f"{where or 'top level'}: expected a mapping for {cls.__name__}, got {data!r}")
    if base is None or (cls is TrainConfig and "preset" in data):
        base = _base_instance(cls, data)
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = [k for k in data if k not in names]
    if unknown:
        raise ConfigError(
            f"unknown key{'s' if len(unknown) > 1 else ''} {', '.join(repr(_join(where, k)) for k in unknown)} "
            f"({cls.__name__} has: {', '.join(names)})"
        )
    values = {k: _coerce(hints[k], v, _join(where, k), getattr(base, k)) for k, v in data.items()}
    return dataclasses.replace(base, **values)


def parse_override(text: str) -> tuple[str, Any]:
    """`a.b.c=value` -> ("a.b.c", YAML-typed value): `x=3` is an int, `x=[0.1, 0.2]` a list, `x=null` / `x=` None."""
    import yaml

    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {text!r}: expected key=value with a dotted key, e.g. train.optim.epochs=2")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as err:
        raise ConfigError(f"override {text!r}: value is not valid YAML ({err})") from None
    return key, value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Set each dotted `key=value` into a (copied) plain mapping, creating intermediate mappings as needed."""
    import copy

    data = copy.deepcopy(data)
    for text in overrides:
        key, value = parse_override(text)
        node = data
        parts = key.split(".")
        for i, part in enumerate(parts[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            elif not isinstance(child, dict):
                raise ConfigError(f"override {text!r}: {'.'.join(parts[: i + 1])} is {child!r}, not a section")
            node = child
        node[parts[-1]] = value
    return data


def load_config(path: Optional[str], overrides: Optional[list[str]] = None) -> "PipelineConfig":
    """Read a pipeline YAML (None = all defaults), apply `key=value` overrides, and type-check it into PipelineConfig."""
    import yaml

    data: Any = {}
    if path is not None:
        try:
            with open(path) as fh:
                data = yaml.safe_load(fh) or {}
        except FileNotFoundError:
            raise ConfigError(f"config file {path!r} not found") from None
        except yaml.YAMLError as err:
            raise ConfigError(f"{path}: not valid YAML ({err})") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: the top level must be a mapping of sections, got {type(data).__name__}")
    data = apply_overrides(data, list(overrides or []))
    try:
        return build(PipelineConfig, data)
    except ConfigError as err:
        source = path if path is not None else "built-in defaults"
        raise ConfigError(f"{source}{' + overrides' if overrides else ''}: {err}") from None


SECRET_KEYS = ("access_key", "secret_key", "token", "password")


def redacted(cfg: Any) -> dict[str, Any]:
    """to_dict with credentials replaced by '***' (what gets saved with the outputs and logged to MLflow)."""

    def walk(node: Any) -> Any:
        if isinstance(node, dict):
            return {k: ("***" if k in SECRET_KEYS and v else walk(v)) for k, v in node.items()}
        if isinstance(node, (list, tuple)):
            return [walk(v) for v in node]
        return node

    return walk(to_dict(cfg))


@dataclass(frozen=True)
class PipelineConfig:
    """Everything `valor run` needs: configs/local.yaml and configs/llp.yaml are instances of this."""

    name: str = "valor"
    paths: PathsConfig = field(default_factory=PathsConfig)
    corpus: CorpusConfig = field(default_factory=CorpusConfig)
    ray: RayConfig = field(default_factory=RayConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)
    extract: ExtractConfig = field(default_factory=ExtractConfig)
    teachers: TeacherConfig = field(default_factory=TeacherConfig)
    media: MediaConfig = field(default_factory=MediaConfig)
    extract: ExtractConfig = field(default_factory=ExtractConfig)  # `out` is set by the pipeline (<output>/features)
    tune: TuneConfig = field(default_factory=TuneConfig)  # ray/mlflow/storage fields are set by the pipeline
    thresholds: LabelConfig = field(default_factory=LabelConfig)  # harvest: explicit/unified thresholds (else tuned), filter
    harvest: HarvestConfig = field(default_factory=HarvestConfig)  # `out` is set by the pipeline (<output>/labels)
    train: TrainConfig = field(default_factory=TrainConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    demo: DemoConfig = field(default_factory=DemoConfig)
