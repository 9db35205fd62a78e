"""`valor`: one command-line entry point, one sub-command per stage (litgpt-style: thin parsers over `setup()`-like
functions in each workflow module).

Each module listed in COMMANDS defines `register(subparsers)` which adds its parser(s) and sets `func` via
`parser.set_defaults(func=...)`; the function takes the parsed `argparse.Namespace` and returns an exit code.
Modules import heavy libraries (torch, ray, ...) inside their functions, so `valor --help` stays fast.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys

COMMANDS = (
    "workflows.evaluate",  # valor evaluate
    "workflows.data",  # valor data stats
    "workflows.demo",  # valor demo
    "workflows.train",  # valor train
    "workflows.compare",  # valor compare
    "workflows.media",  # valor media synth, valor teachers tiny, valor teach
    "workflows.storage",  # valor storage up|down|status
    "workflows.extract",  # valor extract
    "tuning.thresholds",  # valor tune thresholds
    "workflows.harvest",  # valor harvest
    "workflows.pipeline",  # valor run
)

# Quiet, offline-friendly defaults for every library valor drives (users can still override them in the environment).
QUIET_ENV = {
    "RAY_USAGE_STATS_ENABLED": "0",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "WANDB_MODE": "disabled",
    "TOKENIZERS_PARALLELISM": "false",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="valor",
        description="valor: VALOR audio-visual video parsing (CLIP/CLAP teachers -> HAN) on Ray; one sub-command per stage.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as err:
            if err.name == name:  # stage not built yet
                continue
            raise
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    for key, value in QUIET_ENV.items():
        os.environ.setdefault(key, value)
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
