"""`valor demo`: the science of VALOR end to end on LLP-sim, in-process on CPU, in a few minutes.

    LLP-sim (real LLP weak labels and val/test GT; simulated features and CLIP/CLAP logits; valor_core.sim)
      -> harvest labels (z > theta) AND y with the Table 6 thresholds; their fidelity against val GT (Table 3 micro F)
      -> train the `han` baseline and `valor` on the same train subset (valor_core.fit)
      -> best val segment Type@AV epoch of each -> side-by-side val/test table (segment and event level, 10 numbers)

Demo scale (defaults; every one is a flag, and the output says which were used): a seeded subset of the 10,000 train
videos, a narrow HAN (the presets' 512-wide layer is ~10x the CPU time), each preset's schedule compressed to a few
epochs (warm-up / StepLR step scaled with it) and both presets' learning rates multiplied by the same factor (the
compressed runs make ~1/20 of the paper's optimiser steps). Everything else is the preset's: losses, optimiser, betas,
weight decay, batch size, gradient clipping, MMIL pooling, the official prediction rule and metric.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from valor_core.config import replace, to_dict
from valor_core.labels import harvest_labels, thresholds_for
from valor_core.llp import default_annotations
from valor_core.metrics import label_fidelity
from valor_core.presets import get_preset, shorten
from valor_core.sim import simulate
from workflows.outputs import claim, reserve, write_file

KEYS = ("audio", "visual", "av", "type", "event")
LABELS = {"audio": "A", "visual": "V", "av": "AV", "type": "Type@AV", "event": "Event@AV"}
MODELS = ("han", "valor")


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "demo", help="LLP-sim -> harvested labels -> train han and valor on CPU -> side-by-side val/test table",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(p)
    p.set_defaults(func=main)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--annotations", default=None, metavar="DIR",
                   help="LLP annotation CSVs (default: $VALOR_ANNOTATIONS, else the LLP files shipped with valor)")
    p.add_argument("--epochs", type=int, default=8, help="epochs per model (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="LLP-sim, subset, init and shuffling seed (default: %(default)s)")
    p.add_argument("--train-videos", type=int, default=3000, metavar="N",
                   help="seeded subset of the 10,000 train videos; 0 = all (default: %(default)s)")
    p.add_argument("--hidden", type=int, default=128,
                   help="HAN width for both models; 0 = the presets' 512 (default: %(default)s)")
    p.add_argument("--lr-scale", type=float, default=10.0,
                   help="multiply the learning rates of presets on VALOR's AdamW (default: %(default)s; 1 = the "
                        "paper's)")
    p.add_argument("--han-lr-scale", type=float, default=3.0,
                   help="multiply the learning rate of presets on the HAN's Adam + StepLR (han, ma, lsld; default: "
                        "%(default)s: at x10, Adam 3e-3 with batch 16, the compressed HAN swings by 10-30 points from "
                        "epoch to epoch on LLP-sim)")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op CPU threads (default: $VALOR_THREADS or 1; see valor_core.fit.configure_threads)")
    p.add_argument("--out", default=None, metavar="DIR", help="also write demo.json and demo.png there")
    p.add_argument("--json", action="store_true", help="print one JSON object of the numbers as the last line")


def check_args(args) -> None:
    """ValueError naming the flag when a demo argument is out of range."""
    if args.epochs < 1:
        raise ValueError(f"--epochs must be >= 1, got {args.epochs}")
    if (args.train_videos or 0) < 0:
        raise ValueError(f"--train-videos must be >= 0, got {args.train_videos}")
    for flag, value in (("--lr-scale", args.lr_scale), ("--han-lr-scale", args.han_lr_scale)):
        if value <= 0:
            raise ValueError(f"{flag} must be > 0, got {value}")
    if args.out:
        claim(args.out, "demo", write=False)  # OwnershipError (a ValueError) before the run: --out is not valor's


def parse_demo_args(argv) -> argparse.Namespace:
    """`valor demo`'s arguments from a list of flags (its own parser and defaults), checked; ValueError saying why not
    (what the pipeline's demo stage runs: `demo.args`)."""
    parser = argparse.ArgumentParser(prog="valor demo", exit_on_error=False, add_help=False)
    add_arguments(parser)
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            args, extra = parser.parse_known_args([str(a) for a in argv])
    except (argparse.ArgumentError, SystemExit) as exc:
        lines = err.getvalue().strip().splitlines()
        raise ValueError(lines[-1] if lines else str(exc)) from None
    if extra:
        raise ValueError(f"unrecognized arguments: {' '.join(extra)}")
    check_args(args)
    return args


def lr_scale_for(cfg, args) -> float:
    """The demo-scale learning-rate factor of a preset: --han-lr-scale for the HAN's Adam + StepLR presets (han, ma,
    ma-retrain, lsld), --lr-scale for VALOR's AdamW + warm-up/cosine ones."""
    return args.han_lr_scale if cfg.optim.optimizer == "adam" else args.lr_scale


def demo_config(name: str, args, arrays):
    """The preset `name` at demo scale, its model inputs sized to the LLP-sim arrays."""
    cfg = get_preset(name)
    m = cfg.model
    scale = lr_scale_for(cfg, args)
    steps = arrays.frames.shape[1] // arrays.audio.shape[1] if arrays.frames is not None else 1
    over = {"seed": args.seed, "model.audio_dim": arrays.audio.shape[-1],
            "model.frame_dim": arrays.frames.shape[-1] if arrays.frames is not None else 0, "model.frame_steps": steps,
            "model.clip_dim": arrays.clips.shape[-1] if arrays.clips is not None else 0,
            "optim.lr_max": cfg.optim.lr_max * scale, "optim.lr_min": cfg.optim.lr_min * scale}
    if args.hidden and args.hidden != m.hidden:  # narrower, same shape: the preset's FFN ratio, its heads if they fit
        heads = max(h for h in (8, 4, 2, 1) if h <= m.heads and args.hidden % h == 0 and args.hidden // h >= 16
                    or h == 1)
        over.update({"model.hidden": args.hidden, "model.heads": heads,
                     "model.ff": max(1, round(args.hidden * m.ff / m.hidden))})
    return shorten(replace(cfg, **over), args.epochs)


def _fidelity(arrays) -> dict[str, float]:
    ya, yv, ga, gv = arrays.audio_labels, arrays.visual_labels, arrays.audio_gt, arrays.visual_gt
    return {"audio": label_fidelity(ya, ga), "visual": label_fidelity(yv, gv), "av": label_fidelity(ya & yv, ga & gv)}


def run_demo(args, log=print) -> dict:
    from valor_core.fit import configure_threads, fit  # torch-bound: imported where used

    annotations = Path(args.annotations or default_annotations())
    if not (annotations / "AVVP_train.csv").is_file():
        raise FileNotFoundError(f"no LLP annotations (AVVP_train.csv) in {annotations}; pass --annotations DIR")
    threads = configure_threads(args.threads)
    t_start = time.perf_counter()
    data = simulate(annotations, seed=args.seed)
    t_sim = time.perf_counter() - t_start
    labels_cfg = get_preset("valor").labels  # Table 6 thresholds, AND weak label
    th_a, th_v = thresholds_for(labels_cfg, "audio"), thresholds_for(labels_cfg, "visual")
    for arrays in data.values():
        arrays.audio_labels = harvest_labels(arrays.clap_logits, arrays.weak, th_a, labels_cfg.filter_by_weak)
        arrays.visual_labels = harvest_labels(arrays.clip_logits, arrays.weak, th_v, labels_cfg.filter_by_weak)
    val, test = data["val"], data["test"]
    fidelity = _fidelity(val)
    naive = val.weak[:, None, :].repeat(val.audio_gt.shape[1], axis=1)
    fidelity_naive = {"audio": label_fidelity(naive, val.audio_gt), "visual": label_fidelity(naive, val.visual_gt),
                      "av": label_fidelity(naive, val.audio_gt & val.visual_gt)}
    train = data["train"]
    n_all = len(train)
    if args.train_videos and args.train_videos < n_all:
        rows = np.sort(np.random.default_rng([args.seed, 0xDE30]).choice(n_all, args.train_videos, replace=False))
        train = train.take(rows)
    cfgs = {name: demo_config(name, args, train) for name in MODELS}
    c = cfgs["valor"].model
    log(f"valor demo: LLP-sim seed {args.seed} ({t_sim:.1f} s), train {len(train)} of {n_all} videos, "
        f"val {len(val)} / test {len(test)} with the real GT; {threads} CPU thread(s)")
    h = cfgs["han"].model
    log(f"demo scale: HAN width {c.hidden} (valor {c.heads} heads, FF {c.ff}; paper 512/8/1024 | han {h.heads} head, "
        f"FF {h.ff}, parallel update; 2020: 512/1/512), {args.epochs} epochs with each preset's schedule compressed to "
        f"them, learning rates x{args.lr_scale:g} valor, x{args.han_lr_scale:g} han (paper: 60 / 40 epochs, x1)")
    log("harvested labels, Table 6 thresholds AND weak label; fidelity vs val GT (micro F, VALOR Table 3): "
        + "  ".join(f"{LABELS[k]} {fidelity[k]:.2f}" for k in ("audio", "visual", "av"))
        + "   (weak labels on every segment: " + "  ".join(f"{LABELS[k]} {fidelity_naive[k]:.2f}"
                                                        for k in ("audio", "visual", "av")) + ")")
    results = {}
    for name in MODELS:
        cfg = cfgs[name]
        o = cfg.optim

        def on_epoch(r, name=name):
            log(f"  {name:5s} epoch {r['epoch']:2d}/{o.epochs}  lr {r['lr']:.2e}  loss {r['loss']:.4f}  "
                f"val Type@AV {r['val'].segment['type']:6.2f}  ({r['seconds']:.1f} s)")

        res = fit(train, val, cfg, test=test, on_epoch=on_epoch)
        results[name] = {"val": res.val.as_dict(decimals=2), "test": res.test.as_dict(decimals=2),
                         "best_epoch": res.best_epoch, "seconds": round(res.seconds, 1),
                         "trainable_params": res.trainable_params, "config": to_dict(cfg)}
    total = time.perf_counter() - t_start
    r2 = lambda d: {k: round(float(v), 2) for k, v in d.items()}  # noqa: E731
    return {"annotations": str(annotations), "seed": args.seed, "train_videos": len(train), "val_videos": len(val),
            "test_videos": len(test), "epochs": args.epochs, "hidden": c.hidden, "lr_scale": args.lr_scale,
            "han_lr_scale": args.han_lr_scale,
            "threads": threads, "fidelity": r2(fidelity), "fidelity_weak_labels": r2(fidelity_naive),
            **{name: results[name] for name in MODELS}, "seconds": round(total, 1)}


def format_table(out: dict) -> str:
    lines = [f"{'':18s}{'val':>16s}{'':4s}{'test':>16s}",
             f"{'':18s}{'HAN':>8s}{'VALOR':>8s}{'':4s}{'HAN':>8s}{'VALOR':>8s}"]
    for level in ("segment", "event"):
        for k in KEYS:
            row = f"{level:8s}{LABELS[k]:>10s}"
            for split in ("val", "test"):
                row += "".join(f"{out[m][split][level][k]:8.2f}" for m in MODELS) + "    "
            lines.append(row.rstrip())
    lines.append(f"{'best epoch':18s}" + "".join(f"{out[m]['best_epoch']:8d}" for m in MODELS))
    lines.append(f"{'train+eval s':18s}" + "".join(f"{out[m]['seconds']:8.1f}" for m in MODELS))
    return "\n".join(lines)


OUTPUT_FILES = ("demo.json", "demo.png", "demo.txt")


def write_outputs(out: dict, directory: str) -> None:
    """demo.json (the numbers), demo.png (the test bars) and demo.txt (the table) in `directory`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    claim(directory, "demo")  # a new or empty folder, or a demo output valor made (files valor wrote are replaced)
    write_file(os.path.join(directory, "demo.json"), json.dumps(out, indent=1).encode())
    write_file(os.path.join(directory, "demo.txt"), (format_table(out) + "\n").encode())
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.6), sharey=True)
    x = np.arange(len(KEYS))
    for ax, level in zip(axes, ("segment", "event")):
        for i, m in enumerate(MODELS):
            ax.bar(x + (i - 0.5) * 0.38, [out[m]["test"][level][k] for k in KEYS], 0.38, label=m.upper())
        ax.set_xticks(x, [LABELS[k] for k in KEYS])
        ax.set_title(f"LLP-sim test, {level} level")
        ax.set_ylim(0, 100)
    axes[0].set_ylabel("F (%)")
    axes[0].legend()
    fig.tight_layout()
    reserve(os.path.join(directory, "demo.png"))
    fig.savefig(os.path.join(directory, "demo.png"), dpi=110)
    plt.close(fig)


def main(args) -> int:
    log = (lambda *a: print(*a, file=sys.stderr, flush=True)) if args.json else (lambda *a: print(*a, flush=True))
    try:
        check_args(args)
    except ValueError as err:
        print(f"valor demo: error: {err}", file=sys.stderr)
        return 2
    try:
        out = run_demo(args, log=log)
    except (FileNotFoundError, ValueError) as err:
        print(f"valor demo: error: {err}", file=sys.stderr)
        return 1
    table = format_table(out)
    log(table)
    log(f"total {out['seconds']:.1f} s")
    if args.out:
        write_outputs(out, args.out)
        log(f"wrote {os.path.join(args.out, 'demo.json')}, demo.png and demo.txt")
    if args.json:
        print(json.dumps({k: v for k, v in out.items()}))
    return 0
