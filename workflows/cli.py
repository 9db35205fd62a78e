"""`valor`: one command-line entry point, one sub-command per stage (litgpt-style: thin parsers over typed functions
in each workflow module).

Each module in COMMANDS defines `register(subparsers)` which adds its parser(s) and sets `func` via
`parser.set_defaults(func=...)`; the function takes the parsed `argparse.Namespace` and returns an exit code.
Heavy libraries (ray, mlflow, pyarrow, matplotlib) are imported inside the functions that use them.
"""
from __future__ import annotations

import argparse
import os
import sys

from workflows import (compare, demo, evaluate, extract, harvest, importer, llp_stats, media, predict, s3server, train,
                       tune)
from workflows import refine_lsld
from workflows import refine_ma
from workflows import parse as parse_cmd
from workflows import ave_data
from workflows.pipeline import cli as pipeline_cli
from workflows.runtime import DEBUG_ENV, QUIET_ENV

COMMANDS = (
    evaluate,  # valor evaluate
    predict,  # valor predict
    llp_stats,  # valor data stats
    demo,  # valor demo
    train,  # valor train, valor presets
    compare,  # valor compare
    media,  # valor media synth, valor teachers tiny, valor teach
    s3server,  # valor storage up|down|status
    extract,  # valor extract
    importer,  # valor import llp
    tune,  # valor tune thresholds
    harvest,  # valor harvest
    refine_lsld,  # valor refine lsld
    refine_ma,  # valor refine ma
    parse_cmd,  # valor parse
    ave_data,  # valor ave train
    pipeline_cli,  # valor run
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="valor",
        description="valor: VALOR audio-visual video parsing (CLIP/CLAP teachers -> HAN) on Ray; one sub-command per stage.",
    )
    parser.add_argument("--debug", action="store_true", help="show the full trace of an unexpected error")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in COMMANDS:
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    for key, value in QUIET_ENV.items():
        os.environ.setdefault(key, value)
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:  # `valor run --config X a=b --stage s c=d`: overrides after an option are overrides too
        if getattr(args, "overrides", None) is None or any("=" not in e or e.startswith("-") for e in extra):
            parser.parse_args(argv)  # argparse's own one-line error, exit 2
        args.overrides = [*args.overrides, *extra]
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    if args.debug:
        os.environ[DEBUG_ENV] = "1"  # every line Ray's workers print reaches the terminal (workflows.runtime)
        return int(args.func(args) or 0)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print(f"valor {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # noqa: BLE001 - one line for the user; the whole trace with --debug
        print(f"valor {args.command}: error: {one_line(err)} (run with --debug for the full trace)", file=sys.stderr)
        return 1


def one_line(err: BaseException) -> str:
    """The gist of an error: a Ray task error's original exception (its last line), else `Type: first line`."""
    lines = [ln.strip() for ln in str(err).strip().splitlines() if ln.strip()]
    if len(lines) > 1:
        return lines[-1][:500]
    return f"{type(err).__name__}: {lines[0][:500] if lines else ''}".rstrip(": ")


if __name__ == "__main__":
    sys.exit(main())
