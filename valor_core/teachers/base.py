"""The teacher interface shared by CLIP (frames) and CLAP (audio segments).

A teacher turns items (frames or audio segments) into L2-normalised embeddings and scores them against the 25 Table-6
captions: logits = logit_scale x cosine = logit_scale x (emb @ text_emb.T), with logit_scale already exponentiated
(`logit_scale.exp()` of the model). Caption embeddings are computed once per teacher (fp32 text tower) and cached,
on the host and on the device.

One host sync per batch: the items are copied to the device once (pinned, non_blocking on CUDA), pre-processed there,
encoded in forwards of `batch_size` items, concatenated, normalised and scored on the device; `segment_logits` then
copies embeddings and logits back in one transfer. Precision, batch size and the transfer policy are
valor_core.teachers.precision's (bf16 weights on CUDA by default, fp32 on CPU; `precision="bf16"` runs the same path on
CPU).
"""
from __future__ import annotations

from typing import Any, Optional, Sequence

import numpy as np

from valor_core.config import TeacherConfig
from valor_core.teachers import precision as prec


class TeacherError(RuntimeError):
    """A teacher cannot be built: bad spec, missing checkpoint or hub files (the message says how to obtain them)."""


class MissingCheckpoint(TeacherError, FileNotFoundError):
    """The checkpoint named by a spec is not here."""


def resolve_device(cfg: TeacherConfig):
    return prec.resolve_device(cfg.device)


def resolve_precision(cfg: TeacherConfig, device) -> str:
    return prec.resolve_precision(cfg.precision, device)


class Teacher:
    """Common machinery; subclasses implement `_embed(items) -> torch.Tensor (B, d)` on the device (any float dtype,
    not normalised; no host sync inside), `_encode_text(prompts) -> torch.Tensor (n, d)` and `_items_of(video)`."""

    name = "teacher"
    modality = ""
    per_item_mib = 16.0  # activation memory per item, for batch_size 0 (auto) on CUDA (precision.auto_batch_size)
    max_batch = 512

    def __init__(self, spec: str, checkpoint: str, cfg: TeacherConfig, captions: Sequence[str]):
        self.spec = spec
        self.checkpoint = checkpoint
        self.cfg = cfg
        self.captions = tuple(captions)
        self.device = resolve_device(cfg)
        self.precision = resolve_precision(cfg, self.device)
        self.batch_size = prec.auto_batch_size(cfg.batch_size, self.device, self.per_item_mib, self.max_batch)
        self.compiled = bool(cfg.compile)
        self._text: Optional[np.ndarray] = None
        self._text_dev = None
        self.dim = 0
        self.logit_scale = 1.0

    # --- subclass hooks ---
    def _embed(self, items: Any):  # pragma: no cover - abstract
        raise NotImplementedError

    def _encode_text(self, prompts: Sequence[str]):  # pragma: no cover - abstract
        raise NotImplementedError

    def _items_of(self, video) -> Optional[Any]:  # pragma: no cover - abstract
        raise NotImplementedError

    @property
    def dtype(self):
        """The torch dtype of the (image / audio) tower's weights."""
        return prec.torch_dtype(self.precision)

    # --- shared ---
    def _text_tensor(self):
        """(25, d) fp32 caption embeddings on the device (cached)."""
        import torch

        if self._text_dev is None:
            self._text_dev = torch.from_numpy(self.encode_text()).to(self.device)
        return self._text_dev

    def encode_text(self, prompts: Optional[Sequence[str]] = None) -> np.ndarray:
        """(n, d) L2-normalised text embeddings (fp32 text tower); prompts=None gives the cached (25, d) caption
        embeddings."""
        import torch

        if prompts is None:
            if self._text is None:
                self._text = self.encode_text(self.captions)
            return self._text
        with torch.no_grad():
            x = torch.nn.functional.normalize(self._encode_text(list(prompts)).float(), dim=-1)
        return x.cpu().numpy().astype(np.float32)

    @property
    def text_embeddings(self) -> np.ndarray:
        return self.encode_text()

    def embed(self, items):
        """(B, d) fp32 L2-normalised embeddings of B items as a tensor on the device (no host sync)."""
        import torch

        if len(items) == 0:
            return torch.zeros((0, self.dim), dtype=torch.float32, device=self.device)
        with torch.no_grad():
            x = self._embed(items)
            return torch.nn.functional.normalize(x.float(), dim=-1)

    def encode(self, items) -> np.ndarray:
        """(B, d) L2-normalised embeddings of B items (numpy float32), in forwards of `batch_size`."""
        return self.embed(items).cpu().numpy()

    def logits(self, emb: np.ndarray) -> np.ndarray:
        """logit_scale x cosine against the 25 captions: (..., d) -> (..., 25), float32 (host)."""
        return (np.float32(self.logit_scale) * (np.asarray(emb, np.float32) @ self.text_embeddings.T)).astype(
            np.float32)

    def logits_and_embeddings(self, items) -> tuple[np.ndarray, np.ndarray]:
        """(B, 25) logits and (B, d) embeddings of B items: encoded and scored on the device, one host copy."""
        import torch

        emb = self.embed(items)
        with torch.no_grad():
            logits = self.logit_scale * (emb @ self._text_tensor().T)
            both = torch.cat([logits, emb], dim=1).cpu().numpy()  # the one host sync of the batch
        return both[:, :logits.shape[1]], both[:, logits.shape[1]:]

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
            flat = prec.host_stack(present, self.device)  # one host copy, pinned on CUDA
        else:  # e.g. audio segments of different lengths (clips of different durations): a list of items
            flat = [item for x in present for item in x]
        n_classes = len(self.captions)
        logits_out = np.full((len(per_video), T, n_classes), np.nan, np.float32)
        emb_out = np.full((len(per_video), T, self.dim), np.nan, np.float32)
        if len(flat):
            logits, emb = self.logits_and_embeddings(flat)
            pos = 0
            for i, x in enumerate(per_video):
                if x is not None:
                    logits_out[i], emb_out[i] = logits[pos:pos + T], emb[pos:pos + T]
                    pos += T
        return logits_out, emb_out

    def describe(self) -> dict:
        return {"name": self.name, "spec": self.spec, "checkpoint": self.checkpoint, "dim": self.dim,
                "logit_scale": float(self.logit_scale), "device": str(self.device), "precision": self.precision,
                "batch_size": self.batch_size, "compile": self.compiled}
