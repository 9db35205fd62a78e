"""`valor train`: train a HAN preset (han, valor, valor+, valor++, kd) with any hyperparameter overridden.

    valor train --preset valor --dry-run --json                 the resolved config and its trainable parameter count
    valor train --preset valor+ --set optim.epochs=30 --set model.dropout=0.2 --dry-run
    valor train --preset valor --features sim --workers 2       Ray Train (DDP) run, MLflow tracking (workflows/train_ray)
    valor train --preset han --features runs/llp/features --features runs/mine/features    two datasets as one
    valor presets                                               every preset: paper, inputs, loss, schedule

--features is required for training (`--features sim` for LLP-sim: 10,000 simulated videos, about an hour on a CPU).
The preset and every --set / --epochs value are type- and range-checked before anything loads; --dry-run stops there.

Resume: the same command after a kill (same config, data, workers, tracking URI, experiment and --run-name) continues
the interrupted run from its last checkpoint, in the same MLflow run; --fresh starts it over (workflows/train_ray).
"""
from __future__ import annotations

import argparse
import json
import sys

import yaml

from valor_core.config import TrainConfig, to_dict
from valor_core.configio import ConfigError, apply_overrides, build
from valor_core.presets import PRESETS, get_preset
from workflows.outputs import OwnershipError, claim
from workflows.runtime import start_ray
from workflows.evaluate import subset_note
from workflows.trainset import DataError, follow_data, load_training_data


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "train", help="train a HAN preset (Ray Train DDP; --dry-run prints the resolved config)",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="valor", choices=list(PRESETS),
                   help="paper configuration to start from (default: %(default)s)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override any TrainConfig field by dotted key with a YAML-typed value, e.g. optim.lr_max=3e-4, "
                        "model.hidden=256, optim.betas=[0.9,0.999], labels.unified_clip=18 (repeatable)")
    p.add_argument("--dry-run", action="store_true", help="print the resolved config and trainable_params; no training")
    p.add_argument("--json", action="store_true", help="machine-readable output (one JSON object, last line)")
    g = p.add_argument_group("data, Ray Train and MLflow")
    g.add_argument("--features", action="append", default=None, metavar="SOURCE",
                   help="required to train: sim[:SEED[:k=v,...]] (LLP-sim) or a features dataset URI (dir or s3://) of `valor extract` / "
                        "`valor import llp`; repeat it to train on several datasets as one (concatenated by video id; "
                        "no video in two of them, the same column shapes/dtypes and recorded teachers/media)")
    g.add_argument("--labels", default=None, metavar="SOURCE",
                   help="a `valor harvest` output URI (default: the harvest beside the features, else harvested on "
                        "the fly with the run's thresholds)")
    g.add_argument("--annotations", default=None, metavar="DIR",
                   help="LLP annotation CSVs with the dense val/test GT (default: the ones the features dataset "
                        "records, e.g. the demo corpus's; else $VALOR_ANNOTATIONS, else the LLP files shipped with "
                        "valor)")
    g.add_argument("--workers", type=int, default=2, metavar="N", help="Ray Train DDP workers (default %(default)s)")
    g.add_argument("--epochs", type=int, default=None, metavar="E", help="epochs (default: the preset's; same as "
                   "--set optim.epochs=E)")
    g.add_argument("--gpu", action="store_true", help="one GPU per worker (NCCL); default CPU (gloo)")
    g.add_argument("--tracking-uri", default=None, metavar="URI",
                   help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI or sqlite:///runs/mlflow.db)")
    g.add_argument("--experiment", default="valor", metavar="E", help="MLflow experiment (default: %(default)s)")
    g.add_argument("--run-name", default=None, metavar="NAME", help="MLflow run name (default: PRESET-time)")
    g.add_argument("--storage", default=None, metavar="URI",
                   help="Ray Train storage for checkpoints: dir or s3://bucket/prefix (default: runs/ray)")
    g.add_argument("--max-failures", type=int, default=3, metavar="K",
                   help="worker-group restarts from the last checkpoint (FailureConfig; default %(default)s)")
    g.add_argument("--fresh", action="store_true",
                   help="start at epoch 1: without it, a run of the same config and data that was interrupted "
                        "(killed) resumes from its last checkpoint into its MLflow run; --fresh removes its "
                        "incomplete Ray Train directory instead")
    g.add_argument("--max-train-videos", type=int, default=None, metavar="N",
                   help="train on a seeded random subset of N train videos (quick runs)")
    g.add_argument("--ray-address", default=None, metavar="ADDR", help="existing Ray cluster (default: in-process)")
    g.add_argument("--no-figures", action="store_true", help="skip the PNG artifacts")
    p.add_argument("--list", action="store_true", help="list the presets (as `valor presets`) and exit")
    p.set_defaults(func=main, parser=p)
    q = subparsers.add_parser("presets", help="every training preset: paper, inputs, loss, optimiser and schedule",
                              description="The presets of `valor train --preset` (valor_core/presets.py); any field "
                                          "can be changed with `valor train --set KEY=VALUE`.")
    q.add_argument("--json", action="store_true", help="one JSON object: {preset: {paper, inputs, loss, schedule}}")
    q.set_defaults(func=list_presets)


# the paper each preset reproduces (valor_core/presets.py has the details)
PAPERS = {"han": "HAN (Tian 2020)", "han-valor": "VALOR HAN (Lai 2023)", "valor": "VALOR (Lai 2023)",
          "valor+": "VALOR+ (Lai 2023)", "valor++": "VALOR++ (Lai 2023)", "kd": "VALOR Table 4: KD",
          "valor-global": "VALOR Table 4", "valor-visual": "VALOR Table 4", "valor-audio": "VALOR Table 4",
          "ma": "MA stage 1 (Wu 2021)", "ma-retrain": "MA stage 3 (Wu 2021)", "lsld": "LSLD (Fan 2023)"}
INPUT_NAMES = {"vggish_resnet_r2p1d": "VGGish+ResNet-152+R(2+1)D", "clip_clap_maps": "CLAP maps+CLIP+R(2+1)D",
               "clip_clap": "CLIP/CLAP embeddings"}


def _lr(x: float) -> str:
    return f"{x:.0e}".replace("e-0", "e-") if 0 < x < 1e-2 else f"{x:g}"


def schedule_text(cfg: TrainConfig) -> str:
    """The optimiser and schedule in a few words: `adamw 1e-4->1e-6 cosine, 10 warm-up, b64, 60 ep`."""
    o = cfg.optim
    if o.schedule == "step":
        lr = f"{_lr(o.lr_max)} StepLR({o.step_size}, {o.gamma:g})"
    elif o.schedule == "warmup_cosine":
        lr = f"{_lr(o.lr_max)}->{_lr(o.lr_min)} cosine, {o.warmup_epochs} warm-up"
    else:
        lr = f"{_lr(o.lr_max)} constant"
    return f"{o.optimizer} {lr}, b{o.batch_size}, {o.epochs} ep"


def preset_rows() -> dict[str, dict[str, str]]:
    return {name: {"paper": PAPERS.get(name, "-"), "inputs": INPUT_NAMES.get(cfg.features, cfg.features),
                   "features": cfg.features, "loss": cfg.loss, "schedule": schedule_text(cfg)}
            for name, cfg in PRESETS.items()}


def list_presets(args) -> int:
    rows = preset_rows()
    if getattr(args, "json", False):
        print(json.dumps(rows))
        return 0
    print(f"{'preset':<13}{'paper':<21}{'inputs':<26}{'loss':<13}optimiser and schedule")
    for name, r in rows.items():
        print(f"{name:<13}{r['paper']:<21}{r['inputs']:<26}{r['loss']:<13}{r['schedule']}")
    return 0


def resolve_config(args) -> TrainConfig:
    """The preset named by args.preset with every `--set key=value` (and --epochs) applied; ConfigError names a bad
    key or value."""
    try:
        base = get_preset(args.preset)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    overrides = list(getattr(args, "overrides", None) or [])
    if getattr(args, "epochs", None) is not None:  # --epochs E == --set optim.epochs=E
        overrides.append(f"optim.epochs={int(args.epochs)}")
    if not overrides:
        return base
    try:
        return build(TrainConfig, apply_overrides({}, overrides), base=base)
    except ConfigError as err:
        raise ConfigError(f"--set: {err}") from None


def trainable_params(cfg: TrainConfig) -> int:
    from valor_core.han import HAN, count_trainable  # torch-bound: imported where used, so `valor --help` stays fast

    return count_trainable(HAN(cfg.model))


def dry_run(cfg: TrainConfig, as_json: bool) -> int:
    n = trainable_params(cfg)
    if as_json:
        print(json.dumps({"preset": cfg.preset, "config": to_dict(cfg), "trainable_params": n}))
        return 0
    print(yaml.safe_dump(json.loads(json.dumps(to_dict(cfg))), sort_keys=False).rstrip())
    print(f"trainable_params: {n}  ({n / 1e6:.2f}M)")
    return 0


def main(args) -> int:
    if args.list:
        return list_presets(args)
    if not args.features and not args.dry_run:
        args.parser.print_usage(sys.stderr)
        print("valor train: error: --features is required: a features dataset (`valor extract` / `valor import llp`), "
              "or `--features sim` for LLP-sim (10,000 simulated videos, about an hour on a CPU); --dry-run only "
              "resolves the config", file=sys.stderr)
        return 2
    try:
        cfg = resolve_config(args)
        if args.workers < 1:
            raise ConfigError(f"--workers must be >= 1, got {args.workers}")
        if args.dry_run:
            return dry_run(cfg, args.json)
    except (ConfigError, ValueError) as err:
        print(f"valor train: error: {err}", file=sys.stderr)
        return 2
    return run(args, cfg)


def sets_features(args) -> bool:
    """Whether the user chose the feature kind (`--set features=...`): then the data's kind does not replace it."""
    return any(o.partition("=")[0].strip() == "features" for o in getattr(args, "overrides", None) or [])


def run(args, cfg: TrainConfig) -> int:
    """Train `cfg` as the parsed `args` say; prints the summary (or with --json one JSON line, last)."""
    try:
        if not sets_features(args):  # the preset's kind, unless the dataset holds only the CLIP/CLAP embeddings
            cfg, note = follow_data(cfg, args.features)
            if note:
                print(f"valor train: {note}", file=sys.stderr)
        data, cfg, meta = load_training_data(args.features, cfg, labels=args.labels,
                                             annotations=args.annotations, max_train=args.max_train_videos)
    except (DataError, FileNotFoundError, ValueError) as err:
        print(f"valor train: error: {err}", file=sys.stderr)
        return 1
    from workflows import train_ray  # torch-bound

    try:
        claim(args.storage or train_ray.DEFAULT_STORAGE, "checkpoints")  # preflight: a checkpoints dir valor owns
    except (OwnershipError, PermissionError) as err:
        print(f"valor train: error: {err}", file=sys.stderr)
        return 2
    shutdown = start_ray(args.ray_address)
    try:
        outcome = train_ray.train(cfg, data, workers=args.workers, use_gpu=bool(args.gpu or cfg.use_gpu),
                                  tracking_uri=args.tracking_uri, experiment=args.experiment, storage=args.storage,
                                  run_name=args.run_name, data_meta=meta, max_failures=args.max_failures,
                                  make_figures=not args.no_figures, fresh=args.fresh)
    finally:
        shutdown()  # also stops the forwarding of worker logs, so the JSON below stays the last stdout line
    if args.json:
        print(json.dumps(outcome.as_json()))
    else:
        print(f"run {outcome.run_id} ({outcome.tracking_uri}): {outcome.epochs} epochs, best epoch "
              f"{outcome.best_epoch}, {outcome.seconds:.1f} s; checkpoint {outcome.checkpoint}")
        for split in ("val", "test"):
            s = getattr(outcome, split)
            if s:
                print(f"  {split:4s} {subset_note(s) or str(s['videos']) + ' videos'}")
                print(f"  {split:4s} segment " + " ".join(f"{k}={v:.2f}" for k, v in s["segment"].items()))
                print(f"  {split:4s} event   " + " ".join(f"{k}={v:.2f}" for k, v in s["event"].items()))
    return 0
