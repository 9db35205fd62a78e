"""The output layout of `valor run`: the only owner of where a pipeline's outputs go.

    <paths.output>/features       the features dataset (workflows/features.py owns its schema and its siblings:)
                 /failures        its failures table
                 /labels          harvested labels
                 /ma_labels       MA's refined labels (`valor refine ma`), when a run trains with loss ma-refined
                 /lsld_labels     LSLD's refined labels (`valor refine lsld`), when a run trains with loss lsld
                 /labeler/<name>  the labelers' checkpoints (ma: MA stage 1; han: harvest.labeler han)
                 /thresholds.json the tuned thresholds
                 /train           Ray Train checkpoints (with `runs:`, one folder per run: train/<preset>-seed<seed>)
                 /eval.json       val/test scores (with `runs:`, {"runs": {<run>: scores}})
                 /ave/<loss>      AVE (stage ave): each loss's Ray Train checkpoints; /ave/eval.json their accuracies
                 /config.yaml     the resolved config (credentials redacted)
                 /_pipeline/<stage>.json          completion markers (<stage>.started.json while it runs)
    <tracking.uri>                MLflow; default sqlite:///<output>/mlflow.db (<paths.work>/mlflow.db when on S3)
    <demo.out>                    the demo's pictures; default <output>/demo (<paths.work>/demo when on S3)
"""
from __future__ import annotations

import dataclasses
import os
import posixpath
from dataclasses import dataclass
from typing import Optional

from valor_core.llp import default_annotations
from valor_core.config import TrainConfig
from workflows import ave_data, refine_lsld, refine_ma
from workflows.config import ConfigError, PipelineConfig, check_output_uri
from workflows.features import beside, failures_uri, labels_uri

MARKER_DIR = "_pipeline"
OUTPUTS = ("features", "failures", "thresholds", "labels", "labeler", "ma_labels", "lsld_labels", "train", "eval",
           "config", "ave")
FILE_OUTPUTS = ("thresholds", "eval", "config")  # the outputs that are one file (the rest are folders with a marker)
REFINED_NAMES = {"ma": refine_ma.OUT_NAME, "lsld": refine_lsld.OUT_NAME}  # where `valor refine METHOD` writes


def _abs_local(uri: Optional[str]) -> Optional[str]:
    """Local paths become absolute (Ray workers and job drivers may run elsewhere); URIs are kept as written."""
    if uri is None or "://" in str(uri):
        return uri
    return os.path.abspath(os.path.expanduser(str(uri)))


def check_output(uri: str, what: str = "paths.output") -> str:
    """`uri` as an output root, or ConfigError (the one check of every place valor writes into)."""
    return check_output_uri(uri, what)


def resolve(cfg: PipelineConfig) -> PipelineConfig:
    """Absolute local paths, a manifest, an MLflow URI: the config as the stages will see it (ConfigError for an
    output root valor must not write into)."""
    p = cfg.paths
    check_output(p.output)
    train_runs(cfg)
    videos = _abs_local(p.videos)
    paths = dataclasses.replace(
        p,
        videos=videos,
        manifest=_abs_local(p.manifest) if p.manifest else posixpath.join(videos, "manifest.csv"),
        annotations=_abs_local(p.annotations or default_annotations()),
        output=_abs_local(p.output).rstrip("/"),
        work=_abs_local(p.work),
    )
    local_base = paths.output if "://" not in paths.output else paths.work
    uri = cfg.tracking.uri or f"sqlite:///{local_base}/mlflow.db"
    demo_out = cfg.demo.out or posixpath.join(local_base, "demo")
    a = cfg.ave
    if a.enabled:
        problem = ave_data.bad_setting(dataclasses.asdict(a), lambda key: f"ave.{key}")
        if problem:
            raise ConfigError(problem)
    ave = dataclasses.replace(a, features=_abs_local(a.features), annotations=_abs_local(a.annotations))
    return dataclasses.replace(cfg, paths=paths, tracking=dataclasses.replace(cfg.tracking, uri=uri),
                               demo=dataclasses.replace(cfg.demo, out=_abs_local(demo_out)), ave=ave)


@dataclass(frozen=True)
class Layout:
    """Every output URI of a run, derived from `paths.output`."""

    output: str

    @property
    def features(self) -> str:
        return posixpath.join(self.output, "features")

    @property
    def failures(self) -> str:  # extract's failures table (only written when some video failed)
        return failures_uri(self.features)

    @property
    def labels(self) -> str:
        return labels_uri(self.features)

    @property
    def labeler(self) -> str:  # the labelers' checkpoints, one folder each (labeler_run)
        return posixpath.join(self.output, "labeler")

    @property
    def ma_labels(self) -> str:
        return self.refined("ma")

    @property
    def lsld_labels(self) -> str:
        return self.refined("lsld")

    def refined(self, method: str) -> str:
        """The labels `valor refine METHOD` writes by default: beside the features."""
        return beside(self.features, REFINED_NAMES[method])

    def labeler_run(self, name: str) -> str:
        return posixpath.join(self.labeler, name)

    @property
    def thresholds(self) -> str:
        return posixpath.join(self.output, "thresholds.json")

    @property
    def train(self) -> str:
        return posixpath.join(self.output, "train")

    @property
    def eval(self) -> str:
        return posixpath.join(self.output, "eval.json")

    @property
    def config(self) -> str:
        return posixpath.join(self.output, "config.yaml")

    @property
    def ave(self) -> str:  # AVE's checkpoints (one folder per loss, ave_run) and ave_eval
        return posixpath.join(self.output, "ave")

    def ave_run(self, loss: str) -> str:
        return posixpath.join(self.ave, loss)

    @property
    def ave_eval(self) -> str:
        return posixpath.join(self.ave, "eval.json")

    def train_run(self, name: str) -> str:
        """The checkpoints of run `name` of a config with `runs:` (run_name)."""
        return posixpath.join(self.train, name)

    def uri(self, key: str) -> str:
        """The URI of output `key` (one of OUTPUTS)."""
        if key not in OUTPUTS:
            raise KeyError(f"unknown output {key!r}; outputs: {', '.join(OUTPUTS)}")
        return getattr(self, key)

    def marker(self, stage: str, kind: str = "done") -> str:
        suffix = "" if kind == "done" else f".{kind}"
        return posixpath.join(self.output, MARKER_DIR, f"{stage}{suffix}.json")


def run_name(cfg: TrainConfig) -> str:
    """The name of one run of `runs:`: its folder under train/ and its MLflow run name's suffix."""
    return f"{cfg.preset}-seed{cfg.seed}"


def train_runs(cfg: PipelineConfig) -> dict[str, TrainConfig]:
    """{run name: TrainConfig} of a config with `runs:` (ConfigError for two runs of one name); {} without."""
    out: dict[str, TrainConfig] = {}
    for run in cfg.runs:
        name = run_name(run)
        if name in out:
            raise ConfigError(f"runs: two runs are named {name} (preset and seed must differ)")
        out[name] = run
    return out
