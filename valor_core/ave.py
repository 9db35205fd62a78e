"""AVE (Audio-Visual Event, Tian et al. ECCV 2018) annotations, splits and released features (VALOR appendix F).

Files (shipped in valor_core/data/ave, see its SOURCE.md; the released features are not shipped):
  Annotations.txt         4,143 lines `Category&VideoID&Quality&StartTime&EndTime`, no header: one audio-visual event
                          per 10-s video on the 1-s segments [StartTime, EndTime); every other segment is background
  {train,val,test}_order.h5   dataset `order` (int64): 0-based row indices into Annotations.txt (3339 / 402 / 402)
  {split}_from_order.txt  `rowindex&<Annotations.txt line>` in the h5 order (derived; `check_from_order` re-derives)
Classes: the 28 categories in order of first appearance in Annotations.txt (the class index of the repo's
`mil_labels.h5`), then `background` (index 28): C + 1 = 29.

Released feature layout (AVE-ECCV18 `data/`, rows in Annotations.txt order, HDF5 dataset `avadataset`):
  audio_feature.h5   (4143, 10, 128)          VGGish
  visual_feature.h5  (4143, 10, 7, 7, 512)    VGG-19 pool5; `read_features` averages the 7 x 7 grid -> (10, 512)
  labels.h5          (4143, 10, 29)           one-hot segment labels, last = background; checked against the
                                              annotations when present
Quirk kept: line 27 (`Church bell&VWi2ENBuTbw&good&0&0`) has an empty event, so all its 10 segments are background
(as the repo's labels_closs.h5 mask of that row).
Video-level label (the weak supervision, Eq. 11's y in R^(C+1)): the max over segments of the one-hot segment labels,
i.e. the event's class, plus background when the event does not cover all 10 segments. (Our reading: the repo's
mil_labels.h5, the weak labels the official weakly-supervised code trains on, is not shipped here to confirm it.)

Errors: `AVEError`, one line naming the file (and line), e.g. "Annotations.txt:12: event [3, 12) is not a range inside 0..10".
"""
from __future__ import annotations

import os
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Optional, Union

import h5py
import numpy as np

__all__ = ["AVEError", "AVEEvent", "AVESplit", "AVEArrays", "DEFAULT_AVE", "SPLITS", "NUM_SEGMENTS", "read_annotations",
           "class_names", "read_order", "load_split", "load_splits", "check_from_order", "read_features", "dense_onehot"]

DEFAULT_AVE = Path(__file__).resolve().parent / "data" / "ave"
ANNOTATIONS = "Annotations.txt"
SPLITS = ("train", "val", "test")
NUM_SEGMENTS = 10
BACKGROUND = "background"
FEATURE_FILES = {"audio": "audio_feature.h5", "visual": "visual_feature.h5", "labels": "labels.h5"}
FEATURE_KEY = "avadataset"

PathLike = Union[str, os.PathLike]


class AVEError(ValueError):
    """A bad AVE file; the message is one line naming the file."""


@dataclass(frozen=True)
class AVEEvent:
    category: str
    video_id: str
    quality: str
    start: int  # first event segment (start == end: no event segment, line 27 of the real file)
    end: int  # one past the last event segment
    line: int  # 1-based line in Annotations.txt (row index = line - 1)


def read_annotations(root: Optional[PathLike] = None) -> list[AVEEvent]:
    """Every line of `root`/Annotations.txt (default: the shipped file), in file order."""
    path = Path(root or DEFAULT_AVE) / ANNOTATIONS
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise AVEError(f"{path}: cannot read ({err.strerror or err})") from None
    events = []
    for number, raw in enumerate(text.splitlines(), start=1):
        parts = raw.rstrip("\r").split("&")
        if len(parts) != 5:
            raise AVEError(f"{path}:{number}: expected 5 '&'-separated fields, got {len(parts)}")
        category, video_id, quality, start, end = parts
        if not category or not video_id:
            raise AVEError(f"{path}:{number}: empty category or video id")
        try:
            s, e = int(start), int(end)
        except ValueError:
            raise AVEError(f"{path}:{number}: StartTime/EndTime {start!r}/{end!r} are not integers") from None
        if not (0 <= s <= e <= NUM_SEGMENTS):
            raise AVEError(f"{path}:{number}: event [{s}, {e}) is not a range inside 0..{NUM_SEGMENTS}")
        events.append(AVEEvent(category, video_id, quality, s, e, number))
    if not events:
        raise AVEError(f"{path}: no annotations")
    return events


def class_names(events: list[AVEEvent]) -> tuple[str, ...]:
    """The categories in order of first appearance, then `background` (last)."""
    return tuple(dict.fromkeys(e.category for e in events)) + (BACKGROUND,)


def read_order(root: Optional[PathLike], split: str, rows: Optional[int] = None) -> np.ndarray:
    """(N,) int64 row indices of `split` from `root`/{split}_order.h5; checked to be distinct and < `rows`."""
    if split not in SPLITS:
        raise AVEError(f"unknown AVE split {split!r}; expected one of {', '.join(SPLITS)}")
    path = Path(root or DEFAULT_AVE) / f"{split}_order.h5"
    try:
        with h5py.File(path, "r") as f:
            order = np.asarray(f["order"][:], dtype=np.int64).reshape(-1)
    except (OSError, KeyError) as err:
        raise AVEError(f"{path}: cannot read dataset 'order' ({err})") from None
    if len(np.unique(order)) != len(order):
        raise AVEError(f"{path}: row indices repeat")
    if len(order) and (order.min() < 0 or (rows is not None and order.max() >= rows)):
        raise AVEError(f"{path}: row index outside 0..{rows - 1 if rows else '?'}")
    return order


def dense_onehot(segments: np.ndarray, num_classes: int) -> np.ndarray:
    """(N, T) class indices -> (N, T, num_classes) uint8 one-hot."""
    return np.eye(num_classes, dtype=np.uint8)[segments]


@dataclass
class AVESplit:
    name: str
    classes: tuple[str, ...]  # 28 categories + background
    rows: np.ndarray  # (N,) int64 row indices into Annotations.txt
    video_ids: np.ndarray  # (N,) str
    category: np.ndarray  # (N,) int64 event class 0..27
    start: np.ndarray  # (N,) int64
    end: np.ndarray  # (N,) int64
    total: int  # rows of Annotations.txt (= rows of the released feature files)

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def background(self) -> int:
        return len(self.classes) - 1

    @property
    def segments(self) -> np.ndarray:
        """(N, 10) int64 GT class per segment: the event class on [start, end), background elsewhere."""
        t = np.arange(NUM_SEGMENTS)[None, :]
        inside = (t >= self.start[:, None]) & (t < self.end[:, None])
        return np.where(inside, self.category[:, None], self.background)

    @property
    def dense(self) -> np.ndarray:
        """(N, 10, 29) uint8 one-hot segment labels (the released labels.h5 rows)."""
        return dense_onehot(self.segments, len(self.classes))

    @property
    def video(self) -> np.ndarray:
        """(N, 29) uint8 video-level labels: max over segments (module doc)."""
        return self.dense.max(axis=1)


def _split_from(events: list[AVEEvent], classes: tuple[str, ...], name: str, rows: np.ndarray) -> AVESplit:
    index = {c: i for i, c in enumerate(classes)}
    picked = [events[i] for i in rows]
    return AVESplit(name=name, classes=classes, rows=rows, video_ids=np.array([e.video_id for e in picked], dtype=str),
                    category=np.array([index[e.category] for e in picked], dtype=np.int64),
                    start=np.array([e.start for e in picked], dtype=np.int64),
                    end=np.array([e.end for e in picked], dtype=np.int64), total=len(events))


def load_splits(root: Optional[PathLike] = None) -> dict[str, AVESplit]:
    """train/val/test (by the *_order.h5 files) and `full` (all rows in file order); the three are checked to be
    disjoint and to cover every row."""
    events = read_annotations(root)
    classes = class_names(events)
    orders = {s: read_order(root, s, len(events)) for s in SPLITS}
    covered = np.concatenate(list(orders.values()))
    if len(covered) != len(events) or len(np.unique(covered)) != len(events):
        raise AVEError(f"{Path(root or DEFAULT_AVE)}: the *_order.h5 splits ({', '.join(f'{s} {len(o)}' for s, o in orders.items())})"
                       f" are not a partition of the {len(events)} rows of {ANNOTATIONS}")
    out = {s: _split_from(events, classes, s, o) for s, o in orders.items()}
    out["full"] = _split_from(events, classes, "full", np.arange(len(events), dtype=np.int64))
    return out


def load_split(root: Optional[PathLike] = None, split: str = "train") -> AVESplit:
    if split not in SPLITS + ("full",):
        raise AVEError(f"unknown AVE split {split!r}; expected one of {', '.join(SPLITS + ('full',))}")
    return load_splits(root)[split]


def check_from_order(root: Optional[PathLike], split: str) -> int:
    """Re-derive {split}_from_order.txt from the h5 order and Annotations.txt; returns its line count, raises on the
    first line that differs."""
    root = Path(root or DEFAULT_AVE)
    lines = (root / ANNOTATIONS).read_text(encoding="utf-8").splitlines()
    order = read_order(root, split, len(lines))
    path = root / f"{split}_from_order.txt"
    got = path.read_text(encoding="utf-8").splitlines()
    if len(got) != len(order):
        raise AVEError(f"{path}: {len(got)} lines, {split}_order.h5 has {len(order)}")
    for number, (row, line) in enumerate(zip(order, got), start=1):
        if line != f"{row}&{lines[row]}":
            raise AVEError(f"{path}:{number}: is not row {row} of {ANNOTATIONS}")
    return len(got)


# --- released features ----------------------------------------------------------------------------------------------


@dataclass
class AVEArrays:
    """One split as arrays, segment-major like AVVPArrays (C + 1 = 29 classes)."""

    video_ids: np.ndarray  # (N,) str
    audio: np.ndarray  # (N, 10, Da) float32, VGGish 128
    visual: np.ndarray  # (N, 10, Dv) float32, VGG-19 pool5 averaged over 7 x 7 (512)
    video: np.ndarray  # (N, 29) uint8 video-level labels (the only training supervision)
    segments: np.ndarray  # (N, 10) int64 GT class per segment (scoring only)
    audio_labels: Optional[np.ndarray] = None  # (N, 10, 29) uint8 harvested audio targets with background (Eq. 13)
    visual_labels: Optional[np.ndarray] = None  # (N, 10, 29) uint8 harvested visual targets with background
    clap_logits: Optional[np.ndarray] = None  # (N, 10, 28) teacher logits, audio (harvest, Eq. 12)
    clip_logits: Optional[np.ndarray] = None  # (N, 10, 28) teacher logits, visual

    def __len__(self) -> int:
        return len(self.video_ids)

    def take(self, index: np.ndarray) -> "AVEArrays":
        return AVEArrays(**{f.name: (None if getattr(self, f.name) is None else getattr(self, f.name)[index])
                            for f in fields(self)})


def _dataset(path: Path, rows: int, shape: tuple[int, ...]) -> tuple[h5py.File, h5py.Dataset]:
    try:
        f = h5py.File(path, "r")
    except OSError as err:
        raise AVEError(f"{path}: cannot open as HDF5 ({err})") from None
    if FEATURE_KEY not in f:
        f.close()
        raise AVEError(f"{path}: no dataset {FEATURE_KEY!r}")
    ds = f[FEATURE_KEY]
    if ds.shape[0] != rows or tuple(ds.shape[1:]) != shape:
        f.close()
        raise AVEError(f"{path}: dataset {FEATURE_KEY!r} has shape {ds.shape}, expected ({rows}, "
                       f"{', '.join(map(str, shape))})")
    return f, ds


def _read_rows(ds: h5py.Dataset, rows: np.ndarray, reduce, block: int = 64) -> np.ndarray:
    """ds[rows] (any order) through `reduce`, reading sorted blocks so memory stays at `block` raw rows."""
    order = np.argsort(rows, kind="stable")
    sorted_rows = rows[order]
    parts = [reduce(np.asarray(ds[sorted_rows[i:i + block]], dtype=np.float32))
             for i in range(0, len(rows), block)]
    out = np.concatenate(parts) if parts else np.zeros((0,), np.float32)
    result = np.empty_like(out)
    result[order] = out
    return result


def read_features(features: PathLike, split: AVESplit, rows: Optional[np.ndarray] = None) -> AVEArrays:
    """The released AVE features of `split` (or of its positions `rows`) from folder `features` (module doc layout).
    labels.h5, when present, must equal the annotations' one-hot segments of those rows."""
    root = Path(features)
    pick = np.arange(len(split)) if rows is None else np.asarray(rows, dtype=np.int64)
    index = split.rows[pick]
    total = split.total
    num_classes = len(split.classes)
    fa, audio_ds = _dataset(root / FEATURE_FILES["audio"], total, (NUM_SEGMENTS, 128))
    fv, visual_ds = _dataset(root / FEATURE_FILES["visual"], total, (NUM_SEGMENTS, 7, 7, 512))
    with fa, fv:
        audio = _read_rows(audio_ds, index, lambda x: x)
        visual = _read_rows(visual_ds, index, lambda x: x.mean(axis=(2, 3)))
    segments = split.segments[pick]
    labels_path = root / FEATURE_FILES["labels"]
    if labels_path.exists():
        fl, labels_ds = _dataset(labels_path, total, (NUM_SEGMENTS, num_classes))
        with fl:
            labels = _read_rows(labels_ds, index, lambda x: x)
        bad = np.flatnonzero((labels != dense_onehot(segments, num_classes)).any(axis=(1, 2)))
        if len(bad):
            raise AVEError(f"{labels_path}: row {int(index[bad[0]])} disagrees with {ANNOTATIONS} line "
                           f"{int(index[bad[0]]) + 1} ({len(bad)} rows differ)")
    return AVEArrays(video_ids=split.video_ids[pick], audio=audio, visual=visual, video=split.video[pick],
                     segments=segments)
