"""The list of videos an extraction runs over: a manifest CSV joined with a video root (local dir or `s3://bucket/prefix`).

Manifest format: the LLP CSVs as they are (tab-separated `filename<TAB>event_labels`, labels comma-separated, e.g.
AVVP_train.csv) or any CSV/TSV with a header holding
  - `filename` (or `video_id`): the video id; the file is `<root>/<filename>.mp4` unless it already has an extension
    (`.mp4 .mkv .webm .avi .mov`), then `<root>/<filename>` and the id is the name without extension;
  - optional `event_labels` (or `labels`): comma-separated LLP class names (weak labels; empty = none known);
  - optional `split` (train/val/test/...); otherwise `--split`, otherwise guessed from the manifest's file name
    (`AVVP_train.csv` -> train, `AVVP_val_pd.csv` -> val, `AVVP_test_pd.csv` -> test), otherwise "".
  - optional `path`: the video's location relative to the root.
The delimiter is a tab when the header has one, else a comma. A video listed twice is an error (a manifest is a set).
A missing, empty or non-UTF-8 manifest is a ManifestError naming it. A name or path that resolves outside the video root
(`../x`, `/etc/x`, another bucket, a symlink under a local root that leads out of it) is never read: its entry carries
`error` and becomes a failure row of the run (kind outside_root).
"""
from __future__ import annotations

import csv
import io
import os
import posixpath
import re
from dataclasses import dataclass
from typing import Optional

import numpy as np

from valor_core.classes import CLASS_INDEX, CLASSES, NUM_CLASSES
from workflows import objstore

VIDEO_EXTS = (".mp4", ".mkv", ".webm", ".avi", ".mov", ".m4v")


class ManifestError(ValueError):
    pass


@dataclass(frozen=True)
class Entry:
    video_id: str
    source: str  # local absolute path or s3:// URI of the video file
    split: str
    weak: tuple[int, ...]  # (25,) 0/1
    labels: str  # comma-separated class names, as in the manifest
    error: str = ""  # why the video may not be read (outside the video root); "" = fine


def guess_split(manifest: str) -> str:
    name = posixpath.basename(str(manifest)).lower()
    for split in ("train", "val", "test"):
        if re.search(rf"(^|[_\-.]){split}([_\-.]|$)", name):
            return split
    return ""


def _join_root(root: str, rel: str) -> tuple[str, str]:
    """(the video's URI under `root`, "" or why it is not under the root)."""
    if objstore.is_s3(rel) or rel.startswith("/") or "://" in rel:
        return rel, f"{rel!r} is not a path relative to the video root {root}"
    if objstore.is_s3(root):
        base = str(root).rstrip("/")
        joined = posixpath.normpath(posixpath.join(base.split("://", 1)[1], rel))
        inside = joined == base.split("://", 1)[1] or joined.startswith(base.split("://", 1)[1] + "/")
        uri = base.split("://", 1)[0] + "://" + joined
    else:
        base = objstore.fs_for(root)[1].rstrip("/")
        uri = posixpath.normpath(posixpath.join(base, rel))
        inside = uri.startswith(base + "/")
        real = os.path.realpath(uri)
        if inside and not real.startswith(os.path.realpath(base).rstrip(os.sep) + os.sep):
            return uri, f"{rel!r} is a symlink to {real}, outside the video root {root}"
    return uri, "" if inside else f"{rel!r} resolves outside the video root {root}"


def read_manifest(manifest: str, videos_root: str, split: Optional[str] = None, opts: Optional[dict] = None,
                  ext: str = ".mp4") -> list[Entry]:
    """Entries of a manifest (local path or s3:// URI), in file order."""
    try:
        text = objstore.read_bytes(manifest, opts).decode("utf-8-sig")
    except FileNotFoundError:
        raise ManifestError(f"{manifest}: manifest not found") from None
    except UnicodeDecodeError as err:
        raise ManifestError(f"{manifest}: not a UTF-8 text file (byte {err.start}); expected a CSV/TSV manifest") \
            from None
    except OSError as err:
        raise ManifestError(f"{manifest}: cannot read the manifest ({err})") from None
    lines = text.splitlines()
    if not lines:
        raise ManifestError(f"{manifest}: empty manifest (expected a header with `filename`)")
    delim = "\t" if "\t" in lines[0] else ","
    reader = csv.DictReader(io.StringIO(text), delimiter=delim)
    fields = [f.strip() for f in (reader.fieldnames or [])]
    reader.fieldnames = fields
    id_col = next((c for c in ("filename", "video_id", "id") if c in fields), None)
    if id_col is None:
        raise ManifestError(f"{manifest}:1: header {fields} has no `filename` (or `video_id`) column")
    label_col = next((c for c in ("event_labels", "labels") if c in fields), None)
    default_split = split if split is not None else guess_split(manifest)
    entries: list[Entry] = []
    seen: dict[str, int] = {}
    for lineno, row in enumerate(reader, start=2):
        name = (row.get(id_col) or "").strip()
        if not name:
            if not any((v or "").strip() for v in row.values()):
                continue  # blank line
            raise ManifestError(f"{manifest}:{lineno}: empty {id_col}")
        has_ext = name.lower().endswith(VIDEO_EXTS)
        vid = posixpath.splitext(posixpath.basename(name))[0] if has_ext else name
        if vid in seen:
            raise ManifestError(f"{manifest}:{lineno}: video {vid!r} listed twice (first on line {seen[vid]})")
        seen[vid] = lineno
        labels = (row.get(label_col) or "").strip() if label_col else ""
        weak = np.zeros(NUM_CLASSES, np.uint8)
        for cls in filter(None, (c.strip() for c in labels.split(","))):
            if cls not in CLASS_INDEX:
                raise ManifestError(f"{manifest}:{lineno}: unknown class {cls!r} (known: {', '.join(CLASSES)})")
            weak[CLASS_INDEX[cls]] = 1
        rel = (row.get("path") or "").strip() or (name if has_ext else name + ext)
        source, error = _join_root(videos_root, rel)
        entries.append(Entry(video_id=vid, source=source, split=(row.get("split") or "").strip() or default_split,
                             weak=tuple(int(x) for x in weak), labels=labels, error=error))
    return entries
