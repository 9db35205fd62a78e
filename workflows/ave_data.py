"""`valor ave train`: HAN or VALOR on AVE, weakly supervised (VALOR appendix F), in-process (CPU or one GPU) or, with
--ray, as a Ray Train DDP job tracked in MLflow (workflows.ave_train_ray).

    valor ave train --loss {han,valor} [--sim SEED | --features DIR] [--epochs N] [--train-videos N] [--hidden D]
                    [--lr LR] [--seed S] [--json]
                    [--ray [--workers N] [--use-gpu] [--storage DIR_OR_S3]] [--tracking-uri URI] [--experiment NAME]
                    [--run-name NAME]

Data: AVE-sim (default: real AVE annotations and splits, simulated features and CLAP/CLIP logits; valor_core.ave_sim)
or the released AVE features in their h5 layout (`--features DIR`: audio_feature.h5, visual_feature.h5, labels.h5;
valor_core.ave.read_features). The released files hold no teacher logits, so `--loss valor` needs `--sim` until
CLAP/CLIP logits of the AVE videos exist. Training is valor_core.ave_fit.fit_ave with appendix F's setting
(ave_train_config: HAN 1 x 512, AdamW, warm-up 10 -> 3e-4, cosine -> 3e-6, batch 16, 120 epochs); the flags shorten
or narrow it (warm-up scaled with --epochs). Score: segment accuracy (incl. background) on val (best epoch) and test.
Last line with --json: {"loss", "source", "videos": {train, val, test}, "epochs", "best_epoch", "val_accuracy",
"test_accuracy", "background_accuracy" (all-background baseline on test), "seconds", "trainable_params"}, plus
"run_id" when the run is tracked in MLflow.

--ray: the same training (config, losses, per-epoch val segment accuracy, best epoch, test accuracy at it) on Ray Train,
DDP over --workers (CPU by default, --use-gpu one GPU each), checkpoints in --storage (default runs/ray), always
tracked in MLflow (--tracking-uri, default $MLFLOW_TRACKING_URI or sqlite:///runs/mlflow.db). With one worker it
reproduces the in-process run exactly (same batches, dropout and steps). Without --ray, --tracking-uri logs the
in-process run to the same MLflow run layout (params, per-epoch loss / val_accuracy, final metrics, checkpoint/).
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from typing import Any, Callable, Optional

import numpy as np

from valor_core.ave import AVEError, load_splits, read_features
from workflows import tracking
from workflows.outputs import OwnershipError
from workflows.runtime import start_ray

LOSSES = ("han", "valor")  # Eq. 11 (the HAN baseline) / Eq. 13 (VALOR on AVE)


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("ave", help="AVE (appendix F): train HAN / VALOR, scored by segment accuracy")
    sub = p.add_subparsers(dest="ave_command", metavar="SUBCOMMAND")
    t = sub.add_parser("train", help="train HAN or VALOR on AVE-sim or the released AVE features", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    t.add_argument("--loss", default="valor", choices=LOSSES, help="Eq. 11 (han) or Eq. 13 (valor)")
    t.add_argument("--sim", type=int, default=0, metavar="SEED", help="AVE-sim seed (default: %(default)s)")
    t.add_argument("--features", default=None, metavar="DIR", help="released AVE features folder (h5 layout)")
    t.add_argument("--annotations", default=None, metavar="DIR", help="AVE annotations (default: shipped)")
    t.add_argument("--epochs", type=int, default=120, help="default: appendix F's %(default)s")
    t.add_argument("--train-videos", type=int, default=0, metavar="N", help="seeded train subset; 0 = all 3,339")
    t.add_argument("--hidden", type=int, default=512, help="HAN width (default: %(default)s)")
    t.add_argument("--lr", type=float, default=3e-4, help="peak learning rate; minimum = lr / 100")
    t.add_argument("--seed", type=int, default=0, help="init, subset and shuffling seed")
    t.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: $VALOR_THREADS or 1)")
    t.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    g = t.add_argument_group("Ray Train and MLflow")
    g.add_argument("--ray", action="store_true", help="run as a Ray Train job (DDP), tracked in MLflow")
    g.add_argument("--workers", type=int, default=None, metavar="N", help="Ray Train DDP workers (default 1)")
    g.add_argument("--gpu", dest="use_gpu", action="store_true", help="one GPU per worker (NCCL); default CPU (gloo)")
    g.add_argument("--use-gpu", dest="use_gpu", action="store_true", help=argparse.SUPPRESS, default=argparse.SUPPRESS)  # the old name
    g.add_argument("--storage", default=None, metavar="DIR_OR_S3",
                   help="Ray Train checkpoint storage: dir or s3://bucket/prefix (default: runs/ray)")
    g.add_argument("--tracking-uri", default=None, metavar="URI",
                   help="MLflow tracking URI (with --ray default $MLFLOW_TRACKING_URI or sqlite:///runs/mlflow.db; "
                        "without --ray: track the in-process run only when given)")
    g.add_argument("--experiment", default="valor", metavar="NAME", help="MLflow experiment (default: %(default)s)")
    g.add_argument("--run-name", default=None, metavar="NAME", help="MLflow run name (default: ave-LOSS-time)")
    g.add_argument("--fresh", action="store_true",
                   help="start at epoch 1: without it, a --ray run of the same config and data that was interrupted "
                        "(killed) resumes from its last checkpoint into its MLflow run")
    t.set_defaults(func=run_train)
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])


def _error(message: str, code: int) -> int:
    print(f"valor ave train: error: {message}", file=sys.stderr)
    return code


RULES = (("epochs", lambda v: v >= 1, ">= 1"), ("hidden", lambda v: v >= 1, ">= 1"),
         ("train_videos", lambda v: v >= 0, ">= 0"), ("lr", lambda v: v > 0, "> 0"),
         ("workers", lambda v: v is None or v >= 1, ">= 1"))


def bad_setting(values: dict, name: Callable[[str], str]) -> Optional[str]:
    """The first bad training setting in `values` (epochs, hidden, train_videos, lr, workers, losses, features) as a
    message naming it with `name(key)` (a flag or a config key); None when all are fine. Shared by `valor ave train`
    and `valor run`'s ave stage."""
    for key, ok, rule in RULES:
        if not ok(values[key]):
            return f"{name(key)} must be {rule}, got {values[key]}"
    unknown = sorted(set(values["losses"]) - set(LOSSES))
    if unknown or not values["losses"]:
        return f"{name('losses')} {list(values['losses'])}: choose from {', '.join(LOSSES)}"
    if values["features"] and "valor" in values["losses"]:
        return (f"{name('losses')} valor needs CLAP/CLIP logits, which the released AVE features "
                f"({name('features')}) do not hold; use AVE-sim, or loss han")
    return None


def _check(args: argparse.Namespace) -> Optional[str]:
    """The first bad flag, as a message; None when all are fine."""
    values = {**{k: getattr(args, k) for k, _, _ in RULES}, "losses": (args.loss,), "features": args.features}
    flags = {"train_videos": "--train-videos", "losses": "--loss", "features": "--features"}
    problem = bad_setting(values, lambda key: flags.get(key, f"--{key}"))
    if problem:
        return problem
    if not args.ray:
        given = [f for f, v in (("--workers", args.workers), ("--gpu", args.use_gpu or None),
                                ("--storage", args.storage), ("--fresh", args.fresh or None)) if v is not None]
        if given:
            return f"{', '.join(given)} need{'s' if len(given) == 1 else ''} --ray"
    return None


def load_data(annotations: Optional[str], features: Optional[str], sim: int, train_videos: int, seed: int,
              loss: str) -> tuple[dict, str]:
    """({"train", "val", "test"}: AVEArrays, source): the released features or AVE-sim, the seeded train subset, and
    for loss valor the harvested labels (Eq. 12). AVEError when the files are bad."""
    from valor_core.ave_fit import harvest_pair  # torch: only when training
    from valor_core.ave_sim import simulate_ave

    splits = load_splits(annotations)
    if features:
        data = {s: read_features(features, splits[s]) for s in ("train", "val", "test")}
    else:
        data = {s: simulate_ave(splits[s], seed=sim) for s in ("train", "val", "test")}
    if 0 < train_videos < len(data["train"]):
        rows = np.random.default_rng(seed).choice(len(data["train"]), train_videos, replace=False)
        data["train"] = data["train"].take(np.sort(rows))
    if loss == "valor":
        data["train"].audio_labels, data["train"].visual_labels = harvest_pair(data["train"])
    return data, features or f"sim:{sim}"


def train_config(loss: str, hidden: int, seed: int, epochs: int, lr: float):
    """Appendix F's config (ave_train_config) narrowed and shortened: warm-up scaled with the epochs, lr min = lr / 100."""
    from valor_core.ave_fit import ave_train_config  # torch: only when training

    heads = 8 if hidden % 8 == 0 else 1
    return ave_train_config(loss, **{
        "model.hidden": hidden, "model.heads": heads, "model.ff": 2 * hidden, "seed": seed,
        "optim.epochs": epochs, "optim.warmup_epochs": max(1, round(10 * epochs / 120)),
        "optim.lr_max": lr, "optim.lr_min": lr / 100})


def run_train(args: argparse.Namespace) -> int:
    from valor_core.ave_fit import fit_ave  # torch: only when training
    from valor_core.fit import configure_threads
    from workflows import ave_train_ray  # torch-bound

    problem = _check(args)
    if problem:
        return _error(problem, 2)
    if args.ray:
        try:  # before any heavy work: a checkpoints dir valor owns (workflows.outputs)
            ave_train_ray.storage_preflight(args.storage)
        except (OwnershipError, OSError) as err:
            return _error(f"--storage {args.storage}: {err}", 2)
    try:
        data, source = load_data(args.annotations, args.features, args.sim, args.train_videos, args.seed, args.loss)
    except AVEError as err:
        return _error(str(err), 1)
    threads = configure_threads(args.threads)
    cfg = train_config(args.loss, args.hidden, args.seed, args.epochs, args.lr)
    meta = {"source": source, "loss": args.loss, "videos": {s: len(a) for s, a in data.items()}}
    test = data["test"]
    run_id = None
    if args.ray:
        shutdown = start_ray()
        try:
            o = ave_train_ray.train_ave_ray(cfg, data, data_meta=meta, workers=args.workers or 1,
                                            use_gpu=args.use_gpu, threads=threads, tracking_uri=args.tracking_uri,
                                            experiment=args.experiment, storage=args.storage,
                                            run_name=args.run_name, fresh=args.fresh)
        finally:
            shutdown()  # also stops the forwarding of worker logs, so the summary below stays the last stdout line
        print(f"run {o.run_id} ({o.tracking_uri}); checkpoint {o.checkpoint}", file=sys.stderr)
        run_id, best_epoch, val_acc, test_acc, seconds, params = (o.run_id, o.best_epoch, o.val_accuracy,
                                                                  o.test_accuracy, o.seconds, o.trainable_params)
    else:
        tracked = None
        if args.tracking_uri:
            tracked = ave_train_ray.start_tracking(cfg, meta, tracking_uri=args.tracking_uri,
                                                   experiment=args.experiment, run_name=args.run_name,
                                                   extra={"train.ray": False, "train.threads": threads})
            run_id = tracked[1]

        def on_epoch(r: dict) -> None:
            print(f"epoch {r['epoch']}: loss {r['loss']:.4f}, val accuracy {r['val_accuracy']:.2f}", file=sys.stderr)
            if tracked:
                tracking.log_metrics(*tracked, ave_train_ray.epoch_metrics(r), step=r["epoch"])

        result = fit_ave(data["train"], data["val"], cfg, test=test, on_epoch=on_epoch)
        best_epoch, val_acc, test_acc, seconds, params = (result.best_epoch, result.val_accuracy,
                                                          result.test_accuracy, result.seconds,
                                                          result.trainable_params)
        if tracked:
            with tempfile.TemporaryDirectory() as d:
                best = {k: v.detach().cpu() for k, v in result.model.state_dict().items()}
                ave_train_ray.write_checkpoint(
                    d, cfg, model_state=best, best_state=best, optimizer_state=None, data_meta=meta, run_id=run_id,
                    state={"epoch": len(result.history), "epochs": cfg.optim.epochs, "best_value": val_acc,
                           "best_epoch": best_epoch, "history": result.history, "world_size": 1})
                ave_train_ray.log_final(*tracked, best_epoch=best_epoch, epochs=len(result.history),
                                        val_accuracy=val_acc, test_accuracy=test_acc,
                                        background=ave_train_ray.background_accuracy(test), checkpoint_dir=d)
    out = {"loss": args.loss, "source": source, "videos": meta["videos"], "epochs": args.epochs,
           "best_epoch": best_epoch, "val_accuracy": round(val_acc, 2), "test_accuracy": round(test_acc, 2),
           "background_accuracy": round(ave_train_ray.background_accuracy(test), 2), "seconds": round(seconds, 1),
           "trainable_params": params}
    if run_id:
        out["run_id"] = run_id
    if args.json:
        print(json.dumps(out))
    else:
        print(f"AVE {args.loss} ({out['source']}): best epoch {out['best_epoch']}, segment accuracy val "
              f"{out['val_accuracy']:.2f}, test {out['test_accuracy']:.2f} "
              f"(all-background {out['background_accuracy']:.2f})"
              + (f"; MLflow run {run_id}" if run_id else ""))
    return 0
