"""LLP (Look, Listen and Parse) annotations: weak labels per split and dense per-modality GT, built exactly as the
official evaluation (YapengTian/AVVP-ECCV20 `main_avvp.py::eval`) builds them.

Files (tab-separated, one header row; shipped in valor_core/data/llp, see its SOURCE.md):
  weak:  AVVP_train.csv, AVVP_val_pd.csv, AVVP_test_pd.csv, AVVP_dataset_full.csv    filename, event_labels
  dense: AVVP_eval_audio.csv (or orig_2020/AVVP_eval_audio.csv), AVVP_eval_visual.csv  filename, onset, offset, event_labels

Dense GT: one (10, 25) 0/1 matrix per video and modality (segment-major here; the official code is class-major (25, 10));
each eval row sets GT[onset:offset, class] = 1. Quirks of the official eval that are KEPT (they change published numbers):
  * rows are matched to videos by exact filename; rows that match no video are ignored (8 audio / 7 visual filenames,
    e.g. `VMTJRpjbE_150_160`, and the backtick typo `KvIjsmANkxI_10_20`` in the 2020 audio file);
  * a row with onset >= offset adds nothing (6 audio rows, e.g. `8DF2PxdT5tE_390_400  9  0  Cheering`);
  * overlapping or repeated rows simply OR together; a video with no rows has an all-zero GT;
  * GT classes missing from the video's weak label are kept; a class repeated in a weak label is just set once;
  * audio-visual GT is GT_a * GT_v (`LLPSplit.av_gt`).
Blank lines are skipped (as pandas does).

Errors (`AnnotationError`, message "<file>:<line>: <problem>"), none of which occurs in the real files:
  * missing/unreadable file; missing header or a header lacking a required column (line 1);
  * a row whose number of tab-separated fields differs from the header's; an empty filename;
  * an unknown class name (anywhere in the file, even on a row that matches no video -- the official code would only
    crash on matched rows, but a misspelt class is a corrupt file, never a quirk); an empty label list in a weak file;
  * onset/offset that is not a plain integer, or outside 0..10 (the official `int()` + slicing would silently truncate
    fractions or wrap negative indices; the real files only hold 0..10);
  * a filename listed twice in one weak file (a split is a set of videos).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Iterator, Literal, Optional, Sequence, Union

import numpy as np

from valor_core.classes import CLASS_INDEX, CLASSES, NUM_CLASSES, NUM_SEGMENTS

__all__ = [
    "AnnotationError",
    "DEFAULT_ANNOTATIONS",
    "default_annotations",
    "LLPSplit",
    "SPLIT_FILES",
    "EVAL_AUDIO",
    "EVAL_AUDIO_2020",
    "EVAL_VISUAL",
    "EvalRow",
    "load_split",
    "load_weak_csv",
    "load_dense_gt",
    "read_eval_csv",
]

SPLIT_FILES = {
    "train": "AVVP_train.csv",
    "val": "AVVP_val_pd.csv",
    "test": "AVVP_test_pd.csv",
    "full": "AVVP_dataset_full.csv",
}
EVAL_AUDIO = "AVVP_eval_audio.csv"  # current file (2024 fix of 3 test rows)
EVAL_AUDIO_2020 = os.path.join("orig_2020", "AVVP_eval_audio.csv")  # the file MA / JoMoLD / LSLD ship
EVAL_VISUAL = "AVVP_eval_visual.csv"
DENSE_SPLITS = ("val", "test")
# The real LLP annotation files ship inside the package (valor_core/data/llp); every default points here.
DEFAULT_ANNOTATIONS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "llp")
ANNOTATIONS_ENV = "VALOR_ANNOTATIONS"


def default_annotations() -> str:
    """$VALOR_ANNOTATIONS, else the LLP annotations shipped with valor (valor_core/data/llp)."""
    return os.environ.get(ANNOTATIONS_ENV) or DEFAULT_ANNOTATIONS

PathLike = Union[str, "os.PathLike[str]"]


class AnnotationError(ValueError):
    """A problem in an annotation file; the message is "<file>:<line>: <problem>" (line 0 = the file as a whole)."""

    def __init__(self, path: PathLike, line: int, problem: str):
        self.path, self.line, self.problem = os.fspath(path), line, problem
        super().__init__(f"{self.path}:{line}: {problem}")


@dataclass(frozen=True)
class LLPSplit:
    """One LLP split. Arrays are segment-major: dense GT is (N, 10, 25) uint8; `audio_gt`/`visual_gt` are None for
    train/full (no dense annotation)."""

    name: str
    video_ids: np.ndarray  # (N,) str, in file order
    weak: np.ndarray  # (N, 25) uint8
    audio_gt: Optional[np.ndarray] = None  # (N, 10, 25) uint8
    visual_gt: Optional[np.ndarray] = None  # (N, 10, 25) uint8

    def __len__(self) -> int:
        return len(self.video_ids)

    @property
    def av_gt(self) -> Optional[np.ndarray]:
        """Audio-visual GT = GT_a * GT_v (official), or None without dense GT."""
        if self.audio_gt is None or self.visual_gt is None:
            return None
        return self.audio_gt * self.visual_gt

    def index(self) -> dict[str, int]:
        """video id -> row."""
        return {v: i for i, v in enumerate(self.video_ids.tolist())}


# --- reading ---------------------------------------------------------------------------------------------------------


def _rows(path: PathLike, required: Sequence[str]) -> Iterator[tuple[int, dict[str, str]]]:
    """(line number, {column: field}) for each non-blank data row of a tab-separated file with a header."""
    path = os.fspath(path)
    try:
        with open(path, "r", encoding="utf-8", newline="") as fh:
            lines = fh.read().splitlines()
    except FileNotFoundError:
        raise AnnotationError(path, 0, "file not found") from None
    except (OSError, UnicodeDecodeError) as err:
        raise AnnotationError(path, 0, f"cannot read file ({err})") from None
    if not lines or not lines[0].strip():
        raise AnnotationError(path, 1, f"missing header (expected columns {', '.join(required)})")
    header = lines[0].split("\t")
    missing = [c for c in required if c not in header]
    if missing:
        raise AnnotationError(path, 1, f"header {lines[0]!r} lacks column(s) {', '.join(missing)} "
                                       f"(expected tab-separated {', '.join(required)})")
    for lineno, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) != len(header):
            raise AnnotationError(path, lineno, f"malformed row: {len(fields)} tab-separated field(s), "
                                                f"expected {len(header)} ({', '.join(header)}): {line!r}")
        row = dict(zip(header, fields))
        if not row["filename"]:
            raise AnnotationError(path, lineno, "empty filename")
        yield lineno, row


def _class(path: PathLike, lineno: int, name: str) -> int:
    try:
        return CLASS_INDEX[name]
    except KeyError:
        raise AnnotationError(path, lineno, f"unknown class name {name!r} (expected one of: {', '.join(CLASSES)})") \
            from None


def load_weak_csv(path: PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Video ids (N,) str and weak labels (N, 25) uint8 from a `filename, event_labels` file (comma-separated names)."""
    ids: list[str] = []
    labels: list[list[int]] = []
    seen: dict[str, int] = {}
    for lineno, row in _rows(path, ("filename", "event_labels")):
        vid = row["filename"]
        if vid in seen:
            raise AnnotationError(path, lineno, f"video {vid!r} listed twice (first on line {seen[vid]})")
        seen[vid] = lineno
        names = row["event_labels"].split(",")
        if names == [""]:
            raise AnnotationError(path, lineno, f"video {vid!r} has no event labels")
        labels.append([_class(path, lineno, n) for n in names])
        ids.append(vid)
    weak = np.zeros((len(ids), NUM_CLASSES), np.uint8)
    for i, cls in enumerate(labels):
        weak[i, cls] = 1
    return np.array(ids, dtype=str), weak


@dataclass(frozen=True)
class EvalRow:
    """One row of a dense annotation file: class `cls` active on segments [onset, offset)."""

    line: int
    filename: str
    onset: int
    offset: int
    cls: int


def _segment_bound(path: PathLike, lineno: int, column: str, text: str) -> int:
    if not text.isdigit() or not text.isascii():
        raise AnnotationError(path, lineno, f"{column} {text!r} is not a whole number of seconds in 0..{NUM_SEGMENTS}")
    value = int(text)
    if value > NUM_SEGMENTS:
        raise AnnotationError(path, lineno, f"{column} {value} is outside 0..{NUM_SEGMENTS}")
    return value


def read_eval_csv(path: PathLike) -> list[EvalRow]:
    """All rows of a dense annotation file, validated (see module docstring), including rows that match no video and
    empty (onset >= offset) ones -- `load_dense_gt` applies the official matching."""
    out = []
    for lineno, row in _rows(path, ("filename", "onset", "offset", "event_labels")):
        onset = _segment_bound(path, lineno, "onset", row["onset"])
        offset = _segment_bound(path, lineno, "offset", row["offset"])
        out.append(EvalRow(lineno, row["filename"], onset, offset, _class(path, lineno, row["event_labels"])))
    return out


def load_dense_gt(eval_csv: Union[PathLike, Sequence[EvalRow]], video_ids: Sequence[str]) -> np.ndarray:
    """(N, 10, 25) uint8 GT for `video_ids` from a dense annotation file (or its parsed rows), as the official eval:
    exact filename match, GT[onset:offset, class] = 1, unmatched rows ignored, onset >= offset adds nothing."""
    rows = read_eval_csv(eval_csv) if isinstance(eval_csv, (str, os.PathLike)) else eval_csv
    index = {v: i for i, v in enumerate(np.asarray(video_ids).tolist())}
    gt = np.zeros((len(index), NUM_SEGMENTS, NUM_CLASSES), np.uint8)
    for r in rows:
        i = index.get(r.filename)
        if i is not None and r.onset < r.offset:
            gt[i, r.onset:r.offset, r.cls] = 1
    return gt


def _resolve(annotations_dir: PathLike, name: str) -> str:
    return name if os.path.isabs(name) else os.path.join(os.fspath(annotations_dir), name)


def load_split(annotations_dir: PathLike, split: Literal["train", "val", "test", "full"],
               audio_file: str = EVAL_AUDIO, visual_file: str = EVAL_VISUAL) -> LLPSplit:
    """Weak labels of a split, plus dense audio/visual GT for val and test.

    `audio_file` is relative to `annotations_dir` (or absolute): the current `AVVP_eval_audio.csv` (default) or
    `orig_2020/AVVP_eval_audio.csv`, which differs in 3 test rows only."""
    if split not in SPLIT_FILES:
        raise ValueError(f"unknown LLP split {split!r}; expected one of {', '.join(SPLIT_FILES)}")
    ids, weak = load_weak_csv(_resolve(annotations_dir, SPLIT_FILES[split]))
    audio_gt = visual_gt = None
    if split in DENSE_SPLITS:
        audio_gt = load_dense_gt(_resolve(annotations_dir, audio_file), ids)
        visual_gt = load_dense_gt(_resolve(annotations_dir, visual_file), ids)
    return LLPSplit(name=split, video_ids=ids, weak=weak, audio_gt=audio_gt, visual_gt=visual_gt)


# --- predictions meet a split ---------------------------------------------------------------------------------------


class PredictionError(ValueError):
    """Predictions that cannot be scored against a split (wrong shape, missing videos, duplicate ids)."""


def align_predictions(split_ids: np.ndarray, pred_ids: np.ndarray, audio: np.ndarray, visual: np.ndarray,
                      source: str = "predictions") -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Rows of audio/visual reordered to `split_ids`. Missing split videos and ids listed twice raise PredictionError
    naming them; returns the extra ids (not in the split) so the caller can warn."""
    pred_ids = np.asarray(pred_ids)
    if pred_ids.ndim != 1:
        raise PredictionError(f"{source}: video_ids must be a 1-D array of ids, got shape {pred_ids.shape}")
    pred_ids = pred_ids.astype(str)
    for name, arr in (("audio", audio), ("visual", visual)):
        if arr.ndim != 3 or arr.shape[0] != len(pred_ids) or arr.shape[1:] != (NUM_SEGMENTS, NUM_CLASSES):
            raise PredictionError(f"{source}: {name} must be ({len(pred_ids)}, {NUM_SEGMENTS}, {NUM_CLASSES}), "
                                  f"got {arr.shape}")
    where: dict[str, int] = {}
    twice: list[str] = []
    for i, v in enumerate(pred_ids.tolist()):
        if v in where:
            twice.append(v)
        where.setdefault(v, i)
    if twice:
        shown = ", ".join(sorted(set(twice))[:10])
        raise PredictionError(f"{source}: {len(set(twice))} video id(s) listed more than once: {shown}")
    missing = [v for v in split_ids.tolist() if v not in where]
    if missing:
        shown = ", ".join(missing[:20]) + (f", ... ({len(missing)} in all)" if len(missing) > 20 else "")
        raise PredictionError(f"{source}: {len(missing)} video(s) of the split missing: {shown}")
    split_set = set(split_ids.tolist())
    extra = [v for v in where if v not in split_set]
    rows = np.fromiter((where[v] for v in split_ids.tolist()), dtype=np.int64, count=len(split_ids))
    return audio[rows], visual[rows], extra
