"""`valor refine METHOD`: the label refinement commands (workflows/refine_ma.py, workflows/refine_lsld.py) share one
`valor refine` parser; each method module adds its sub-command through `method_parsers`."""
from __future__ import annotations

import argparse
from typing import Any


def method_parsers(subparsers: Any) -> Any:
    """The sub-parsers of `valor refine` (made on first use): `method_parsers(sub).add_parser("ma", ...)`."""
    refine_parser = subparsers.choices.get("refine") or subparsers.add_parser(
        "refine", help="label refinement methods -> labels beside the features")
    methods = next((a for a in refine_parser._actions if isinstance(a, argparse._SubParsersAction)), None)
    return methods or refine_parser.add_subparsers(dest="method", metavar="METHOD")
