"""Ground truth for `valor parse --gt`: LLP-format dense labels, matched to the parsed videos by id.

A file holds tab-separated rows `filename  onset  offset  event_labels` (a header line first), as the LLP dense files
AVVP_eval_audio.csv and AVVP_eval_visual.csv: class `event_labels` is active from `onset` to `offset` seconds (any
length: a 35-s video's labels may reach 35) in the video whose id is `filename`. --gt takes `llp` (the LLP
annotations the checkpoint's run trained with -- a demo corpus's GT, say -- else those shipped with valor: an LLP id
such as `4YdbENYcIyE_23_33.mp4` finds its labels), a directory holding the two LLP dense files, or `audio=FILE` /
`visual=FILE` (repeatable).
"""
from __future__ import annotations

import csv
import os
from typing import Optional

from valor_core.classes import CLASSES
from valor_core.llp import default_annotations

LLP_FILES = {"audio": "AVVP_eval_audio.csv", "visual": "AVVP_eval_visual.csv"}
COLUMNS = ("filename", "onset", "offset", "event_labels")


class GTError(ValueError):
    """Bad --gt input (exit 2); the message names the file and line."""


def gt_files(specs: list[str], llp: Optional[str] = None) -> dict[str, str]:
    """{"audio" | "visual": file} of the --gt values; `llp` means the folder `llp` (the annotations the checkpoint's
    run trained with), else the LLP annotations shipped with valor."""
    files: dict[str, str] = {}
    for spec in specs:
        lane, sep, path = spec.partition("=")
        if sep and lane in LLP_FILES:
            files[lane] = path
            continue
        folder = (llp or default_annotations()) if spec == "llp" else spec
        if not os.path.isdir(folder):
            raise GTError(f"--gt {spec}: not `llp`, a directory of {' and '.join(LLP_FILES.values())}, "
                          "audio=FILE or visual=FILE")
        found = {k: os.path.join(folder, n) for k, n in LLP_FILES.items() if os.path.isfile(os.path.join(folder, n))}
        if not found:
            raise GTError(f"--gt {spec}: the directory holds neither {' nor '.join(LLP_FILES.values())}")
        files.update(found)
    for lane, path in files.items():
        if not os.path.isfile(path):
            raise GTError(f"--gt {lane}={path}: no such file")
    return files


def _seconds(path: str, line: int, column: str, text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value >= 0:
        raise GTError(f"--gt {path}:{line}: {column} {text!r} is not a number of seconds >= 0")
    return value


def read_gt(path: str) -> dict[str, list[list]]:
    """{video id: [[class, onset, offset], ...]} of one LLP-format file (rows with onset >= offset add nothing)."""
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f, delimiter="\t")
        lacking = [c for c in COLUMNS if c not in (reader.fieldnames or [])]
        if lacking:
            raise GTError(f"--gt {path}:1: no column {', '.join(lacking)} (a tab-separated header "
                          f"{' '.join(COLUMNS)} is expected)")
        out: dict[str, list[list]] = {}
        for line, row in enumerate(reader, start=2):
            name = (row["event_labels"] or "").strip()
            if name not in CLASSES:
                raise GTError(f"--gt {path}:{line}: {name!r} is not one of the 25 LLP classes")
            on, off = (_seconds(path, line, c, (row[c] or "").strip()) for c in ("onset", "offset"))
            if on < off:
                out.setdefault(row["filename"], []).append([name, on, off])
    return out


def load_gt(specs: list[str], video_ids: list[str], llp: Optional[str] = None) -> dict[str, dict[str, list]]:
    """{video id: {"audio": [[class, on, off]], "visual": [...]}} for the videos the --gt files label (None: no file
    for that lane); GTError when they label none of them. `llp`: see gt_files."""
    files = gt_files(specs, llp)
    rows = {lane: read_gt(path) for lane, path in files.items()}
    out = {v: {lane: rows[lane].get(v, []) if lane in rows else None for lane in LLP_FILES} for v in video_ids
           if any(v in r for r in rows.values())}
    if not out:
        raise GTError(f"--gt {' '.join(specs)}: no rows for any of the {len(video_ids)} video(s) "
                      f"({', '.join(video_ids[:3])}{', ...' if len(video_ids) > 3 else ''}); rows match by filename "
                      "= the video's name without extension")
    return out
