"""`valor train`: train a HAN preset (han, valor, valor+, valor++, kd) with any hyperparameter overridden.

    valor train --preset valor --dry-run --json                 the resolved config and its trainable parameter count
    valor train --preset valor+ --set optim.epochs=30 --set model.dropout=0.2 --dry-run
    valor train --preset valor --features sim --workers 2       Ray Train (DDP) run, MLflow tracking (workflows/train_ray)

Flow: register() adds the parser -> main(args) -> resolve_config(args) (preset + dotted --set overrides, type-checked by
valor_core.config.build) -> --dry-run: print config + trainable_params | otherwise: workflows.train_ray.run_cli.
"""
from __future__ import annotations

import argparse
import json
import sys

from valor_core.config import ConfigError, TrainConfig, apply_overrides, build, to_dict


def register(subparsers) -> None:
    from valor_core.presets import PRESETS

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
    try:
        from workflows import train_ray
    except ModuleNotFoundError as err:  # the Ray Train path is optional for --dry-run
        if err.name != "workflows.train_ray":
            raise
    else:
        train_ray.add_arguments(p)
    p.set_defaults(func=main)


def resolve_config(args) -> TrainConfig:
    """The preset named by args.preset with every `--set key=value` applied (ConfigError names a bad key/value)."""
    from valor_core.presets import get_preset

    try:
        base = get_preset(args.preset)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    overrides = list(getattr(args, "overrides", None) or [])
    if getattr(args, "epochs", None):  # --epochs E (workflows.train_ray.add_arguments) == --set optim.epochs=E
        overrides.append(f"optim.epochs={int(args.epochs)}")
    if not overrides:
        return base
    data = apply_overrides({}, overrides)
    try:
        return build(TrainConfig, data, base=base)
    except ConfigError as err:
        raise ConfigError(f"--set: {err}") from None


def trainable_params(cfg: TrainConfig) -> int:
    from valor_core.han import HAN, count_trainable

    return count_trainable(HAN(cfg.model))


def dry_run(cfg: TrainConfig, as_json: bool) -> int:
    n = trainable_params(cfg)
    if as_json:
        print(json.dumps({"preset": cfg.preset, "config": to_dict(cfg), "trainable_params": n}))
        return 0
    import yaml

    print(yaml.safe_dump(json.loads(json.dumps(to_dict(cfg))), sort_keys=False).rstrip())
    print(f"trainable_params: {n}  ({n / 1e6:.2f}M)")
    return 0


def main(args) -> int:
    try:
        cfg = resolve_config(args)
        if args.dry_run:
            return dry_run(cfg, args.json)
    except (ConfigError, ValueError) as err:
        print(f"valor train: error: {err}", file=sys.stderr)
        return 2
    from workflows import train_ray

    return train_ray.run_cli(args, cfg)
