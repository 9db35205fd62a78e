"""What made a features dataset, down to the bytes: the content digest of each local weights file a teacher or backbone
spec reads.

A spec names a path; another checkpoint copied over that path keeps the spec and changes the features. So extraction
records, per feature, the files and their SHA-256 (`digests`), and a later run into the same dataset (or a dataset
trained together with it) compares the digests, not only the specs (workflows.features.weights_changed). Hashing reads
each file once per run (about 1 s per GB). Weights that are not a local file (an open_clip hub tag, `random`) have no
digest: their spec is the whole record.
"""
from __future__ import annotations

import hashlib
import os
from typing import Iterable


def file_digest(path: str) -> str:
    """The SHA-256 of a file's content, hex."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def digests(files: Iterable[str], known: dict[str, str]) -> list[dict]:
    """[{"file": absolute path, "sha256": hex}] of `files` in order; `known` ({path: hex}) spares hashing a file twice
    within one run (a CLAP checkpoint read by clap and clap_maps)."""
    out = []
    for path in files:
        path = os.path.abspath(path)
        if path not in known:
            known[path] = file_digest(path)
        out.append({"file": path, "sha256": known[path]})
    return out
