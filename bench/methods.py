"""Every method trained on LLP-sim at one budget, side by side in VALOR's Table 1 layout (val and test).

    .venv/bin/python bench/methods.py [--train-videos 3000] [--epochs 8] [--hidden 128] [--lr-scale 10]
                                      [--methods han,valor,kd,valor-global,valor-visual,valor-audio,ma] [--paper]

In-process on CPU (valor_core.fit): each preset with its own optimiser, schedule and loss, shortened to --epochs
(presets.shorten), the HAN narrowed to --hidden and the learning rates scaled as `valor demo` scales them
(workflows.demo.lr_scale_for: --lr-scale for AdamW presets, --han-lr-scale for the HAN's Adam + StepLR ones; short
runs make few optimiser steps). `--paper` trains at the presets' own widths, learning rates and epochs (a GPU
job). Labels: Table 6 harvests of the sim teachers. MA runs its three stages: `ma` (stage 1), the track-swap refinement
of valor_core.ma over the train set (stage 2, as `valor refine ma` does), `ma-retrain` on the refined labels (stage 3).
LSLD is not on LLP-sim: it needs the teachers' text towers to score captions (`valor refine lsld` on an extracted
dataset). The figures are a simulator's: they compare methods on one test bed; they are not the paper's numbers.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from valor_core.llp import DEFAULT_ANNOTATIONS  # noqa: E402
from workflows.demo import lr_scale_for  # noqa: E402

METHODS = ("han", "valor", "kd", "valor-global", "valor-visual", "valor-audio", "ma")


def config(preset: str, args):
    from valor_core.config import replace
    from valor_core.presets import get_preset, shorten

    cfg = get_preset(preset)
    if args.paper:
        return cfg
    o = cfg.optim
    over = {"model.frame_steps": 1, "model.hidden": args.hidden, "model.ff": 2 * args.hidden,
            "model.heads": min(cfg.model.heads, 4), "optim.lr_max": o.lr_max * lr_scale_for(cfg, args),
            "optim.lr_min": o.lr_min * lr_scale_for(cfg, args)}
    return shorten(replace(cfg, **over), args.epochs)


def ma_refined(train, args):
    """MA stages 1 and 2: train `ma`, then refine the train labels by the track swap (valor_core.ma)."""
    from valor_core.fit import fit, to_tensors
    from valor_core.ma import class_error, draw_partners, refine_labels, swap_probs

    cfg = config("ma", args)
    stage1 = fit(train, args.val, cfg)
    partners = draw_partners(train.weak, cfg.ma.seed)
    probs = swap_probs(stage1.model, to_tensors(train, cfg, targets=False), np.arange(len(train)), partners)
    error = class_error(probs["global"], train.weak, cfg.ma.threshold)
    audio, visual = refine_labels(train.weak, probs["changed_audio"], probs["changed_visual"], error, partners,
                                  cfg.ma.threshold, cfg.ma.refine)
    refined = train.take(np.arange(len(train)))
    refined.audio_labels = np.repeat(audio[:, None, :], 10, axis=1)
    refined.visual_labels = np.repeat(visual[:, None, :], 10, axis=1)
    return refined, stage1.seconds


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--annotations", default=DEFAULT_ANNOTATIONS)
    ap.add_argument("--train-videos", type=int, default=3000)
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--lr-scale", type=float, default=10.0, help="AdamW presets (valor, kd, Table 4 rows)")
    ap.add_argument("--han-lr-scale", type=float, default=3.0, help="Adam + StepLR presets (han, ma, ma-retrain)")
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--paper", action="store_true", help="the presets' own widths, learning rates and epochs")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = sorted(set(methods) - set(METHODS))
    if unknown:
        ap.error(f"--methods: unknown {', '.join(unknown)}; choose from {', '.join(METHODS)}")

    from valor_core.fit import configure_threads, fit
    from valor_core.labels import harvest_labels, thresholds_for
    from valor_core.config import LabelConfig
    from valor_core.sim import simulate
    from workflows.compare import paper_table

    configure_threads()
    t0 = time.perf_counter()
    data = simulate(args.annotations, seed=args.seed)
    labels = LabelConfig()
    for arrays in data.values():
        arrays.audio_labels = harvest_labels(arrays.clap_logits, arrays.weak, thresholds_for(labels, "audio"))
        arrays.visual_labels = harvest_labels(arrays.clip_logits, arrays.weak, thresholds_for(labels, "visual"))
    rng = np.random.default_rng(args.seed)
    n = min(args.train_videos, len(data["train"]))
    train = data["train"].take(np.sort(rng.choice(len(data["train"]), n, replace=False)))
    args.val = data["val"]
    budget = "the presets'" if args.paper else (f"{args.epochs} epochs, width {args.hidden}, "
                                                f"lr x{args.lr_scale:g} AdamW / x{args.han_lr_scale:g} Adam")
    print(f"LLP-sim: {n} train videos, val {len(data['val'])}, test {len(data['test'])} "
          f"({time.perf_counter() - t0:.1f} s); budget: {budget}", flush=True)
    scores: dict[str, dict] = {}
    for method in methods:
        start = time.perf_counter()
        if method == "ma":
            refined, _ = ma_refined(train, args)
            res = fit(refined, data["val"], config("ma-retrain", args), test=data["test"])
        else:
            res = fit(train, data["val"], config(method, args), test=data["test"])
        scores[method] = {"val": {"segment": res.val.segment, "event": res.val.event},
                          "test": {"segment": res.test.segment, "event": res.test.event}}
        print(f"{method}: best epoch {res.best_epoch}, val Type@AV {res.val.segment['type']:.2f}, "
              f"{time.perf_counter() - start:.0f} s", flush=True)
    print("\n" + paper_table(scores, "val") + "\n\n" + paper_table(scores, "test"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
