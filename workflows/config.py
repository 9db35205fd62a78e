"""The workflow configuration, typed: storage, extraction, harvest, Ray, tracking, the demo, and `PipelineConfig`, which
composes them with the science configs (valor_core.config) and the search's (tuning.config) and is what `configs/*.yaml`
deserialise into (`load_config`). Credentials are redacted (`redacted`, `is_secret`) wherever a config is written down.

Every place valor writes into (paths.output, paths.work, demo.out, a file-store tracking.uri, a CLI's --out) goes
through one check, `check_output_uri`: never empty, a filesystem root or the home directory (however spelt: `//`,
`file:///`, `/./`), never the top of a bucket or an S3 prefix with an empty, `.` or `..` part. `check_input_dir` says
at once when a local input folder (the videos) is missing.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar, Literal, Optional
from urllib.parse import urlparse

from tuning.config import TuneConfig
from valor_core.config import LSLDConfig, LabelConfig, MediaConfig, TeacherConfig, TrainConfig, to_dict
from valor_core.configio import ConfigError, apply_overrides, build, read_yaml
from valor_core.presets import get_preset

__all__ = ["ConfigError", "StorageConfig", "ExtractConfig", "HarvestConfig", "ReleasedConfig", "RefineConfig", "PathsConfig", "CorpusConfig", "RayConfig",
           "TrackingConfig", "DemoConfig", "PipelineConfig", "load_config", "redacted", "is_secret", "is_secret_env",
           "SECRET_KEYS"]


# --- storage and extraction ----------------------------------------------------------------------------------------


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
    """`valor extract`: Ray Data decode -> CLIP actors -> CLAP actors -> Parquet (workflows/extract.py). Where it
    writes is the caller's (`--out`, or `<paths.output>/features` in a pipeline).

    Actor pools are `ActorPoolStrategy(min_size, max_size)` ranges so the pool scales with the cluster; each actor takes
    `num_gpus` when the cluster has GPUs (0 on a CPU-only cluster, whatever is set here) and `actor_num_cpus` CPUs.
    """

    LIMITS: ClassVar[dict] = {"decode_batch_size": ">= 1", "decode_num_cpus": "> 0", "clip_batch_size": ">= 1",
                              "clap_batch_size": ">= 1", "clip_actors": ">= 1", "clap_actors": ">= 1",
                              "num_gpus": ">= 0", "actor_num_cpus": "> 0", "torch_threads": ">= 0",
                              "rows_per_file": ">= 1", "backbone_batch_size": ">= 1", "backbone_actors": ">= 1"}

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
    retry_failed: bool = False  # re-run videos that have a row in the failures table (default: they count as skipped)
    mixed_teachers: bool = False  # add to a dataset made with other teachers/media (default: an error)
    # what to extract (valor_core.backbones.FEATURES): the teachers clip, clap and the paper's backbones vggish, res152,
    # r2plus1d, clap_maps (columns/shapes of `valor import llp`); res152/r2plus1d decode the 8-fps stack too
    features: tuple[Literal["clip", "clap", "vggish", "res152", "r2plus1d", "clap_maps"], ...] = ("clip", "clap")
    # backbone weights: "" = the torch hub cache file (never downloaded), a local path, or "random" (tests)
    vggish_weights: str = ""
    vggish_pca: str = ""  # torchvggish's PCA params file: PCA + quantisation as the reference postprocessor; "" = none
    res152_weights: str = ""
    r2plus1d_weights: str = ""
    backbone_batch_size: int = 4  # videos per backbone actor call
    backbone_actors: tuple[int, int] = (1, 1)  # ActorPoolStrategy(min_size, max_size) per backbone


# --- harvest -------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class HarvestConfig:
    """`valor harvest` (workflows/harvest.py): (z > theta) AND y for every video of the features dataset -> labels Parquet.

    Which thresholds: a LabelConfig (unified / explicit per-class / Table 6) and optionally a tune JSON that fills the
    per-class values the LabelConfig leaves unset. Labels are written beside the features (workflows/features.py)."""

    LIMITS: ClassVar[dict] = {"rows_per_file": ">= 1"}

    thresholds_json: Optional[str] = None  # `valor tune thresholds --out` file (local path or URI), or "table6" (VALOR
    #                                         Table 6, the paper's); set, `valor run` has no tune stage
    rows_per_file: int = 4096  # videos per Parquet file
    splits: tuple[str, ...] = ()  # () = every split in the features dataset
    # VALOR Table 2 "HAN as dense labeler": the segment labels are a HAN's predictions instead of the teachers'
    # thresholded logits. "han" = `valor run` trains `refine.han_labeler` (preset han, weak labels only) first;
    # "han:SPEC" = an existing checkpoint (`valor harvest --labeler han:SPEC`). Set, `valor run` has no tune stage.
    labeler: Optional[str] = None
    labeler_threshold: float = 0.5  # the official rule on the labeler: segment prob >= x AND video prob >= x


@dataclass(frozen=True)
class ReleasedConfig:
    """The released LLP feature files `valor run` imports instead of extracting from videos (`valor import llp`,
    workflows/importer.py): set any root to use them (local dirs or s3://). The run then trains on the imported VALOR
    segment pseudo-labels -- VALOR's own Table 6 harvest of its teachers -- with no tune or harvest stage: the released
    files hold no teacher logits to re-harvest."""

    LIMITS: ClassVar[dict] = {"rows_per_file": ">= 1"}

    feats: Optional[str] = None  # AVVP-ECCV20 feats/: vggish/, res152/, r2plus1d_18/
    clip: Optional[str] = None  # VALOR CLIP.zip CLIP/: features/, segment_pseudo_labels/
    clap: Optional[str] = None  # VALOR CLAP.zip CLAP/: features/, segment_pseudo_labels/
    rows_per_file: int = 256

    @property
    def enabled(self) -> bool:
        return any((self.feats, self.clip, self.clap))


@dataclass(frozen=True)
class RefineConfig:
    """The label refinement `valor run` does when a run needs it (workflows/pipeline/methods.py): a run with loss
    ma-refined (preset ma-retrain) makes the pipeline train MA stage 1 (`ma_stage1`, the `labeler` stage) and refine
    the train labels with it (`valor refine ma`, the `refine` stage); a run with loss lsld refines with the teachers'
    text towers (`valor refine lsld` with `lsld`); `harvest.labeler: han` trains `han_labeler`. `ma_stage1` and
    `han_labeler` are the `train:` section (all but its preset, loss and labels) with their preset on top, as each run
    of `runs:` is; MA's stage-2 rule (threshold, refine, seed) is `ma_stage1.ma`."""

    LIMITS: ClassVar[dict] = {"videos_per_task": ">= 1"}

    ma_stage1: TrainConfig = field(default_factory=lambda: get_preset("ma"))
    han_labeler: TrainConfig = field(default_factory=lambda: get_preset("han"))
    lsld: LSLDConfig = field(default_factory=LSLDConfig)
    videos_per_task: int = 1024  # MA stage 2: videos per Ray task (speed only: not in any fingerprint)


# --- pipeline: one YAML names everything ---------------------------------------------------------------------------
# `configs/*.yaml` deserialise into PipelineConfig through `load_config(path, overrides)`. Relative local paths are kept as
# written here; workflows/pipeline/layout.py resolves them against the working directory when it runs.


@dataclass(frozen=True)
class PathsConfig:
    """Where the data is and where the outputs go. Every field is a local path or an `s3://bucket/prefix` URI."""

    videos: str = "runs/demo/videos"  # video root (<video_id>.mp4 files), local dir or s3://
    manifest: Optional[str] = None  # videos to process: LLP-style CSV (filename, event_labels[, split]); None = <videos>/manifest.csv
    annotations: Optional[str] = "runs/demo/videos"  # dir with the LLP CSVs (weak labels, dense val/test GT); null =
    #                                                  the annotations shipped with valor (valor_core/data/llp)
    output: str = "runs/local"  # stage outputs: features/, labels/, thresholds.json, train/, eval.json, config.yaml
    work: str = "runs/cache"  # local scratch: tiny teachers, HF caches (never on S3)


@dataclass(frozen=True)
class CorpusConfig:
    """The generated demo corpus (real mp4 files with LLP-style labels) used when no real videos are at hand."""

    LIMITS: ClassVar[dict] = {"videos": ">= 1"}

    generate: bool = False  # create it at paths.videos on first use (reused after: a marker records how it was made)
    videos: int = 24
    seed: int = 0


@dataclass(frozen=True)
class RayConfig:
    """How the pipeline reaches Ray. address None = `ray.init()` in-process (or the cluster of a `ray job submit`)."""

    LIMITS: ClassVar[dict] = {"num_cpus": ">= 1", "num_gpus": ">= 0"}

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


@dataclass(frozen=True)
class AVERunConfig:
    """AVE (VALOR appendix F) in `valor run`: stage `ave` trains one Ray Train job per loss, as `valor ave train --ray`
    does with the same flags (workflows/ave_data.py), into <output>/ave/<loss>, each its own MLflow run."""

    enabled: bool = False
    losses: tuple[str, ...] = ("han", "valor")  # Eq. 11 (han) / Eq. 13 (valor)
    features: Optional[str] = None  # the released AVE features folder (h5 layout); None = AVE-sim
    sim: int = 0  # AVE-sim seed (features None)
    annotations: Optional[str] = None  # AVE annotations; None = the shipped ones (valor_core/data/ave)
    epochs: int = 120
    train_videos: int = 0  # seeded train subset; 0 = all 3,339
    hidden: int = 512
    lr: float = 3e-4  # peak; minimum lr / 100
    seed: int = 0
    workers: int = 1  # Ray Train DDP workers
    use_gpu: bool = False


# --- where valor writes, and what it reads first --------------------------------------------------------------------

OUTPUT_SCHEMES = ("s3", "s3a", "file")


def check_output_uri(uri: Optional[str], what: str, *, s3: bool = True) -> str:
    """`uri` as a place valor writes into, normalised (no trailing '/', `file://` dropped, S3 prefix as given), or a
    one-line ConfigError naming `what`. `s3=False`: a local folder only (paths.work, demo.out)."""
    text = str(uri if uri is not None else "").strip()
    if not text:
        raise ConfigError(f"{what} is empty: give a directory of its own")
    scheme, sep, rest = text.partition("://")
    if sep and (scheme not in OUTPUT_SCHEMES or (not s3 and scheme != "file")):
        where = "a local directory" if not s3 else "a local directory or s3://bucket/prefix"
        raise ConfigError(f"{what} {uri!r}: must be {where}")
    if sep and scheme != "file":
        return _check_s3_prefix(scheme, rest, uri, what)
    return _check_local_dir(rest if sep else text, uri, what)


def _check_s3_prefix(scheme: str, rest: str, uri: str, what: str) -> str:
    bucket, _, prefix = rest.strip("/").partition("/")
    parts = prefix.split("/")
    if not bucket or not prefix or any(part in ("", ".", "..") for part in parts):
        raise ConfigError(f"{what} {uri!r}: name a bucket and a prefix (s3://bucket/prefix, no empty, '.' or '..' "
                          "part); valor does not write at the top of a bucket")
    return f"{scheme}://{bucket}/{prefix}"


def _check_local_dir(path: str, uri: str, what: str) -> str:
    if not path.strip():
        raise ConfigError(f"{what} {uri!r}: names no directory")
    real = os.path.realpath(os.path.expanduser(path))
    if real in (os.path.realpath(os.sep), os.path.realpath(os.path.expanduser("~"))):
        raise ConfigError(f"{what} {uri!r}: refusing to use {real} as an output root (give a directory of its own)")
    return os.path.normpath(path)


def check_tracking_uri(uri: Optional[str], what: str = "tracking.uri") -> Optional[str]:
    """An MLflow tracking URI, or ConfigError: a file store (a path or file:) is a folder valor writes into, a sqlite
    store names its file (not a folder valor refuses); server and database URIs are MLflow's to check."""
    if uri is None:
        return None
    text = str(uri).strip()
    scheme = urlparse(text).scheme.lower()
    if scheme in ("", "file"):
        _check_local_dir(urlparse(text).path if scheme else text, uri, what)
    elif scheme == "sqlite":
        db = text.split(":///", 1)[1] if ":///" in text else ""
        if not db.strip() or os.path.isdir(db):
            raise ConfigError(f"{what} {uri!r}: name the database file (sqlite:///relative.db, sqlite:////abs/x.db)")
    return uri


def check_input_dir(uri: str, what: str) -> None:
    """ConfigError (one line naming `what`) when the local folder `uri` does not exist; S3 inputs are checked by
    workflows.objstore.check_reachable."""
    text = str(uri)
    if text.startswith(("s3://", "s3a://")):
        return
    path = os.path.expanduser(text[len("file://"):] if text.startswith("file://") else text)
    if not os.path.isdir(path):
        state = "is not a directory" if os.path.exists(path) else "does not exist"
        raise ConfigError(f"{what} {uri!r}: {state} ({os.path.abspath(path)})")


def checked_locations(cfg: "PipelineConfig") -> "PipelineConfig":
    """`cfg` with every place it writes into checked (check_output_uri) and normalised."""
    p = cfg.paths
    paths = replace(p, output=check_output_uri(p.output, "paths.output"),
                    work=check_output_uri(p.work, "paths.work", s3=False))
    demo = cfg.demo if cfg.demo.out is None else replace(cfg.demo, out=check_output_uri(cfg.demo.out, "demo.out",
                                                                                        s3=False))
    check_tracking_uri(cfg.tracking.uri)
    return replace(cfg, paths=paths, demo=demo)


def load_config(path: Optional[str], overrides: Optional[list[str]] = None) -> "PipelineConfig":
    """Read a pipeline YAML (None = all defaults), apply `key=value` overrides, and type-check it into PipelineConfig
    (with every place it writes into checked: `checked_locations`)."""
    data = apply_overrides(read_yaml(path), list(overrides or []))
    if isinstance(data.get("runs"), list):  # each run is the `train` section with its own keys on top
        data["runs"] = [merged(data.get("train") or {}, run) if isinstance(run, dict) else run for run in data["runs"]]
    train = data.get("train") if isinstance(data.get("train"), dict) else {}
    shared = {k: v for k, v in train.items() if k not in ("preset", "loss", "labels")}
    refine = data.get("refine") if isinstance(data.get("refine"), dict) else None
    if refine is not None or shared:  # the labelers are the `train:` section with their preset on top
        refine = dict(refine or {})
        for key, preset in (("ma_stage1", "ma"), ("han_labeler", "han")):
            own = refine.get(key) if refine.get(key) is not None else {}
            if isinstance(own, dict):
                refine[key] = merged(shared, {"preset": preset, **own})
        data["refine"] = refine
    try:
        return checked_locations(build(PipelineConfig, data))
    except ConfigError as err:
        source = path if path is not None else "built-in defaults"
        raise ConfigError(f"{source}{' + overrides' if overrides else ''}: {err}") from None


def merged(base: dict, top: dict) -> dict:
    """`base` with `top`'s keys on top, mappings merged key by key (a run of `runs:` over the `train:` section)."""
    out = dict(base)
    for key, value in top.items():
        out[key] = merged(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


SECRET_KEYS = ("access_key", "secret_key", "token", "password", "secret", "credentials")


SECRET_ENV = re.compile(r"SECRET|PASSWORD|_TOKEN$|ACCESS_KEY|CREDENTIAL|^AWS_", re.IGNORECASE)


def is_secret(key: Any) -> bool:
    """A config/param name that holds a credential (matched as a substring, case-insensitive)."""
    return any(s in str(key).lower() for s in SECRET_KEYS)


def is_secret_env(name: str) -> bool:
    """An environment variable that holds (or points at) a credential: never forwarded in a Ray runtime_env."""
    return bool(SECRET_ENV.search(name))


def redacted(cfg: Any) -> dict[str, Any]:
    """to_dict with credentials replaced by '***' (what gets saved with the outputs and logged to MLflow)."""

    def walk(node: Any) -> Any:
        if isinstance(node, dict):
            return {k: ("***" if is_secret(k) and v else walk(v)) for k, v in node.items()}
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
    teachers: TeacherConfig = field(default_factory=TeacherConfig)
    media: MediaConfig = field(default_factory=MediaConfig)
    extract: ExtractConfig = field(default_factory=ExtractConfig)
    tune: TuneConfig = field(default_factory=TuneConfig)
    # the label rule of the whole run: explicit/unified thresholds (else the tuned ones) and THE filter_by_weak knob,
    # read by tune (what it optimises) and harvest (what it applies); train uses the harvested labels (train.labels is
    # only for `valor train` on its own)
    thresholds: LabelConfig = field(default_factory=LabelConfig)
    harvest: HarvestConfig = field(default_factory=HarvestConfig)
    released: ReleasedConfig = field(default_factory=ReleasedConfig)
    refine: RefineConfig = field(default_factory=RefineConfig)  # labelers and refinement, when a run needs them
    train: TrainConfig = field(default_factory=TrainConfig)
    # several training runs (e.g. the paper's presets with their official seeds): each is the `train` section with its
    # own keys on top, trained to train/<preset>-seed<seed>, evaluated, and logged as its own MLflow run; () = one run
    runs: tuple[TrainConfig, ...] = ()
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    demo: DemoConfig = field(default_factory=DemoConfig)
    ave: AVERunConfig = field(default_factory=AVERunConfig)
