"""`valor ave train`: HAN or VALOR on AVE, weakly supervised (VALOR appendix F), in-process (CPU or one GPU).

    valor ave train --loss {han,valor} [--sim SEED | --features DIR] [--epochs N] [--train-videos N] [--hidden D]
                    [--lr LR] [--seed S] [--json]

Data: AVE-sim (default: real AVE annotations and splits, simulated features and CLAP/CLIP logits; valor_core.ave_sim)
or the released AVE features in their h5 layout (`--features DIR`: audio_feature.h5, visual_feature.h5, labels.h5;
valor_core.ave.read_features). The released files hold no teacher logits, so `--loss valor` needs `--sim` until
CLAP/CLIP logits of the AVE videos exist. Training is valor_core.ave_fit.fit_ave with appendix F's setting
(ave_train_config: HAN 1 x 512, AdamW, warm-up 10 -> 3e-4, cosine -> 3e-6, batch 16, 120 epochs); the flags shorten
or narrow it (warm-up scaled with --epochs). Score: segment accuracy (incl. background) on val (best epoch) and test.
Last line with --json: {"loss", "source", "videos": {train, val, test}, "epochs", "best_epoch", "val_accuracy",
"test_accuracy", "background_accuracy" (all-background baseline on test), "seconds", "trainable_params"}.
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import Any

import numpy as np

from valor_core.ave import AVEError, load_splits, read_features
from valor_core.ave_metrics import segment_accuracy


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("ave", help="AVE (appendix F): train HAN / VALOR, scored by segment accuracy")
    sub = p.add_subparsers(dest="ave_command", metavar="SUBCOMMAND")
    t = sub.add_parser("train", help="train HAN or VALOR on AVE-sim or the released AVE features", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    t.add_argument("--loss", default="valor", choices=("han", "valor"), help="Eq. 11 (han) or Eq. 13 (valor)")
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
    t.set_defaults(func=run_train)
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])


def run_train(args: argparse.Namespace) -> int:
    from valor_core.ave_fit import ave_train_config, fit_ave, harvest_pair  # torch: only when training
    from valor_core.ave_sim import simulate_ave
    from valor_core.fit import configure_threads

    for name, ok, rule in (("epochs", args.epochs >= 1, ">= 1"), ("hidden", args.hidden >= 1, ">= 1"),
                           ("train-videos", args.train_videos >= 0, ">= 0"), ("lr", args.lr > 0, "> 0")):
        if not ok:
            print(f"valor ave train: error: --{name} must be {rule}", file=sys.stderr)
            return 2
    if args.features and args.loss == "valor":
        print("valor ave train: error: --loss valor needs CLAP/CLIP logits, which the released AVE features "
              "(--features) do not hold; use --sim, or --loss han", file=sys.stderr)
        return 2
    try:
        splits = load_splits(args.annotations)
        if args.features:
            data = {s: read_features(args.features, splits[s]) for s in ("train", "val", "test")}
        else:
            data = {s: simulate_ave(splits[s], seed=args.sim) for s in ("train", "val", "test")}
    except AVEError as err:
        print(f"valor ave train: error: {err}", file=sys.stderr)
        return 1
    if 0 < args.train_videos < len(data["train"]):
        rows = np.random.default_rng(args.seed).choice(len(data["train"]), args.train_videos, replace=False)
        data["train"] = data["train"].take(np.sort(rows))
    if args.loss == "valor":
        data["train"].audio_labels, data["train"].visual_labels = harvest_pair(data["train"])
    configure_threads(args.threads)
    heads = 8 if args.hidden % 8 == 0 else 1
    cfg = ave_train_config(args.loss, **{
        "model.hidden": args.hidden, "model.heads": heads, "model.ff": 2 * args.hidden, "seed": args.seed,
        "optim.epochs": args.epochs, "optim.warmup_epochs": max(1, round(10 * args.epochs / 120)),
        "optim.lr_max": args.lr, "optim.lr_min": args.lr / 100})
    result = fit_ave(data["train"], data["val"], cfg, test=data["test"],
                     on_epoch=lambda r: print(f"epoch {r['epoch']}: loss {r['loss']:.4f}, val accuracy "
                                              f"{r['val_accuracy']:.2f}", file=sys.stderr))
    test = data["test"]
    out = {"loss": args.loss, "source": args.features or f"sim:{args.sim}",
           "videos": {s: len(a) for s, a in data.items()}, "epochs": args.epochs, "best_epoch": result.best_epoch,
           "val_accuracy": round(result.val_accuracy, 2), "test_accuracy": round(result.test_accuracy, 2),
           "background_accuracy": round(segment_accuracy(np.full_like(test.segments, 28), test.segments), 2),
           "seconds": round(result.seconds, 1), "trainable_params": result.trainable_params}
    if args.json:
        print(json.dumps(out))
    else:
        print(f"AVE {args.loss} ({out['source']}): best epoch {out['best_epoch']}, segment accuracy val "
              f"{out['val_accuracy']:.2f}, test {out['test_accuracy']:.2f} (all-background {out['background_accuracy']:.2f})")
    return 0
