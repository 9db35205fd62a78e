"""The released LLP feature files (`valor import llp`): where they sit and the check of one file.

    <root>/<sub>/<id>.npy     root = --feats | --clip | --clap, <sub> from workflows.features.RELEASED (its folder less
                              the first part), id = the first 11 characters of the LLP `filename` (the YouTube id), as
                              the official loaders name them (AVVP-ECCV20 dataloader.py, VALOR dataloader_avvp.py:
                              `name = row[0][:11]; np.load(os.path.join(dir, name + '.npy'))`)

A file is good when it loads without pickle as one array of the column's shape, with a numeric dtype (cast to
float32), every value finite as float32, and (pseudo-labels) only 0/1; else an ImportProblem of kind missing |
truncated (also: unreadable, not .npy) | shape | dtype | nonfinite whose reason names the file. A video's file is
never read outside its folder: an id with a path in it (`../../x`) or, locally, a symlink leading out of the folder is
an ImportProblem of kind outside_root.
"""
from __future__ import annotations

import io
import os
from typing import Optional

import numpy as np

from workflows import objstore
from workflows.features import RELEASED, RELEASED_LABELS


class ImportInputError(ValueError):
    """Bad command input (a root that is not there, or holds none of its folders); exit 2 before Ray starts."""


class ImportProblem(ValueError):
    """One released file that cannot be imported: `kind` (missing | truncated | shape | dtype | nonfinite), `reason`."""

    def __init__(self, kind: str, reason: str):
        super().__init__(f"{kind}: {reason}")
        self.kind, self.reason = kind, reason


def npy_name(video_id: str) -> str:
    """The released file of an LLP video: `<YouTube id>.npy`, the id being the first 11 characters of its filename."""
    return f"{video_id[:11]}.npy"


def released_uri(folder: str, video_id: str) -> str:
    """The file of one video in a release folder (`<folder>/<npy_name>`), or ImportProblem "outside_root" when that
    file is not in the folder: an id with a path in it (`../../x`), or (local) a symlink leading out of it."""
    name = npy_name(video_id)
    uri = objstore.join(folder, name)
    if "/" in name:
        raise ImportProblem("outside_root", f"{uri}: video id {video_id!r} is a path, not a file name in {folder}")
    if not objstore.is_s3(folder):
        real, base = os.path.realpath(uri), os.path.realpath(folder)
        if not real.startswith(base.rstrip(os.sep) + os.sep):
            raise ImportProblem("outside_root", f"{uri}: a symlink to {real}, outside {folder}")
    return uri


def check_array(data: bytes, name: str, shape: tuple[int, ...], labels: bool = False) -> np.ndarray:
    """The array of one released .npy file (its bytes; `name` for the messages) as float32 (labels: uint8 0/1), or
    ImportProblem saying what is wrong with it."""
    try:
        arr = np.load(io.BytesIO(data), allow_pickle=False)
        if not isinstance(arr, np.ndarray):
            raise ValueError("not a single .npy array (an .npz archive?)")
    except Exception as err:  # noqa: BLE001 - any unreadable content is this file's failure
        first = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
        raise ImportProblem("truncated", f"{name}: not a readable .npy file ({len(data)} bytes; {first})") from None
    if arr.shape != tuple(shape):
        raise ImportProblem("shape", f"{name}: shape {arr.shape}, expected {tuple(shape)}")
    if arr.dtype.kind not in "biuf":
        raise ImportProblem("dtype", f"{name}: dtype {arr.dtype} cannot be cast to float32")
    with np.errstate(over="ignore", invalid="ignore"):  # out of float32 range -> inf: caught just below
        values = arr.astype(np.float32)
    bad = int((~np.isfinite(values)).sum())
    if bad:
        raise ImportProblem("nonfinite", f"{name}: {bad} NaN/inf value(s) (as float32)")
    if labels:
        other = np.unique(values[(values != 0) & (values != 1)])
        if other.size:
            raise ImportProblem("dtype", f"{name}: pseudo-labels must be 0/1, found {other[:5].tolist()}")
        return values.astype(np.uint8)
    return values


def read_file(uri: str, opts: Optional[dict]) -> bytes:
    """The bytes of one released file, or ImportProblem (missing, or truncated when it cannot be read)."""
    try:
        return objstore.read_bytes(uri, opts)
    except FileNotFoundError:
        raise ImportProblem("missing", f"{uri}: no such file") from None
    except OSError as err:
        if not objstore.exists(uri, opts):
            raise ImportProblem("missing", f"{uri}: no such file") from None
        raise ImportProblem("truncated", f"{uri}: cannot be read ({err})") from None


def load_released(uri: str, column: str, opts: Optional[dict]) -> np.ndarray:
    """One video's value of a RELEASED column from its file at `uri` (ImportProblem when it is not good)."""
    return check_array(read_file(uri, opts), uri, RELEASED[column][1], column in RELEASED_LABELS)


def released_folders(roots: dict, opts: Optional[dict]) -> dict[str, str]:
    """{column: folder URI} of the RELEASED folders present under the given roots ({option: DIR or None});
    ImportInputError when a given root is not a directory or holds none of its folders."""
    found: dict[str, str] = {}
    for option, root in roots.items():
        if not root:
            continue
        if not objstore.exists(root, opts) or objstore.is_file(root, opts):
            raise ImportInputError(f"--{option} {root}: no such directory")
        mine = {col: folder.split("/", 1)[1] for col, (folder, _) in RELEASED.items()
                if folder.split("/", 1)[0].lower() == option}
        here = {col: objstore.join(root, sub) for col, sub in mine.items()
                if objstore.exists(objstore.join(root, sub), opts)}
        if not here:
            raise ImportInputError(f"--{option} {root}: none of its folders {', '.join(s + '/' for s in mine.values())}"
                                   " is there")
        found.update(here)
    return {col: found[col] for col in RELEASED if col in found}
