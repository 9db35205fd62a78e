"""The teacher interface shared by CLIP (frames) and CLAP (audio segments).

A teacher turns items (frames or audio segments) into L2-normalised embeddings and scores them against the 25 Table-6
captions: logits = logit_scale x cosine = logit_scale x (emb @ text_emb.T), with logit_scale already exponentiated
(`logit_scale.exp()` of the model). Caption embeddings are computed once per teacher and cached. Work is chunked into
forwards of `batch_size` items; on CUDA the forward runs under bf16 (or fp16) autocast, on CPU in fp32; embeddings
are returned as float32 and re-normalised in float32.
"""
from __future__ import annotations

import contextlib
from typing import Any, Optional, Sequence

import numpy as np

from valor_core.config import TeacherConfig


class TeacherError(RuntimeError):
    """A teacher cannot be built: bad spec, missing checkpoint or hub files (the message says how to obtain them)."""


class MissingCheckpoint(TeacherError, FileNotFoundError):
    """The checkpoint named by a spec is not here."""


def resolve_device(cfg: TeacherConfig):
    import torch

    if cfg.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(cfg.device)


def resolve_precision(cfg: TeacherConfig, device) -> str:
    if cfg.precision == "auto":
        return "bf16" if device.type == "cuda" else "fp32"
    return cfg.precision


class Teacher:
    """Common machinery; subclasses implement `_encode_chunk(items) -> torch.Tensor (B, d)` and `_encode_text`."""

    name = "teacher"
    modality = ""

    def __init__(self, spec: str, checkpoint: str, cfg: TeacherConfig, captions: Sequence[str]):
        self.spec = spec
        self.checkpoint = checkpoint
        self.cfg = cfg
        self.captions = tuple(captions)
        self.batch_size = int(cfg.batch_size)
        self.device = resolve_device(cfg)
        self.precision = resolve_precision(cfg, self.device)
        self._text: Optional[np.ndarray] = None
        self.dim = 0
        self.logit_scale = 1.0

    # --- subclass hooks ---
    def _encode_chunk(self, items: Any):  # pragma: no cover - abstract
        raise NotImplementedError

    def _encode_text(self, prompts: Sequence[str]):  # pragma: no cover - abstract
        raise NotImplementedError

    # --- shared ---
    def autocast(self):
        import torch

        if self.device.type == "cuda" and self.precision in ("bf16", "fp16"):
            dtype = torch.bfloat16 if self.precision == "bf16" else torch.float16
            return torch.autocast("cuda", dtype=dtype)
        return contextlib.nullcontext()

    @staticmethod
    def _normalise(x) -> np.ndarray:
        import torch

        x = x.detach().float()
        x = torch.nn.functional.normalize(x, dim=-1)
        return x.cpu().numpy().astype(np.float32)

    def encode_text(self, prompts: Optional[Sequence[str]] = None) -> np.ndarray:
        """(n, d) L2-normalised text embeddings; prompts=None gives the cached (25, d) caption embeddings."""
        import torch

        if prompts is None:
            if self._text is None:
                self._text = self.encode_text(self.captions)
            return self._text
        with torch.no_grad(), self.autocast():
            return self._normalise(self._encode_text(list(prompts)))

    @property
    def text_embeddings(self) -> np.ndarray:
        return self.encode_text()

    def encode(self, items) -> np.ndarray:
        """(B, d) L2-normalised embeddings of B items, in forwards of `batch_size`."""
        import torch

        n = len(items)
        if n == 0:
            return np.zeros((0, self.dim), np.float32)
        out = []
        with torch.no_grad():
            for start in range(0, n, self.batch_size):
                with self.autocast():
                    out.append(self._normalise(self._encode_chunk(items[start:start + self.batch_size])))
        return np.concatenate(out, axis=0)

    def logits(self, emb: np.ndarray) -> np.ndarray:
        """logit_scale x cosine against the 25 captions: (..., d) -> (..., 25), float32."""
        return (np.float32(self.logit_scale) * (np.asarray(emb, np.float32) @ self.text_embeddings.T)).astype(
            np.float32)

    def _items_of(self, video) -> Optional[Any]:  # pragma: no cover - abstract
        raise NotImplementedError

    def segment_logits(self, batch) -> tuple[np.ndarray, np.ndarray]:
        """Per-segment logits and embeddings for many videos in one go.

        batch: a sequence of `DecodedVideo` (frames or audio used by modality) or of per-video item arrays
        ((T, H, W, 3) uint8 frames for CLIP; (T, L) float audio for CLAP). Returns (logits (n, T, 25), emb (n, T, d)),
        float32. A video without items (e.g. audio missing) gets NaN rows.
        """
        per_video = [self._items_of(v) for v in batch]
        counts = {len(x) for x in per_video if x is not None}
        if len(counts) > 1:
            raise ValueError(f"videos have different segment counts {sorted(counts)}")
        T = counts.pop() if counts else 0
        present = [x for x in per_video if x is not None]
        if present and all(isinstance(x, np.ndarray) for x in present) and len(
                {x.shape[1:] for x in present}) == 1:
            flat = np.concatenate(present, axis=0)
        else:  # e.g. audio segments of different lengths (clips of different durations): a list of items
            flat = [item for x in present for item in x]
        emb = self.encode(flat)
        emb_out = np.full((len(per_video), T, self.dim), np.nan, np.float32)
        pos = 0
        for i, x in enumerate(per_video):
            if x is not None:
                emb_out[i] = emb[pos:pos + T]
                pos += T
        logits = self.logits(emb_out)
        return logits, emb_out

    def describe(self) -> dict:
        return {"name": self.name, "spec": self.spec, "checkpoint": self.checkpoint, "dim": self.dim,
                "logit_scale": float(self.logit_scale), "device": str(self.device), "precision": self.precision,
                "batch_size": self.batch_size}
