"""The array bundle every stage hands to the next (design rule: segment-major `(N, T, C)`, plain NumPy).

One `AVVPArrays` per split. Features are whatever the HAN preset consumes; labels are whatever the loss needs; GT is
present for val/test only. Producers: `valor_core.sim.simulate` (LLP-sim), the extraction/harvest Parquet readers in
`workflows/`. Consumers: `valor_core.fit`, `valor_core.metrics`, the Ray Train loop.
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Optional

import numpy as np


@dataclass
class AVVPArrays:
    video_ids: np.ndarray  # (N,) str
    weak: np.ndarray  # (N, 25) uint8 video-level labels
    audio: Optional[np.ndarray] = None  # (N, 10, Da) float: VGGish (128) or CLAP embeddings
    frames: Optional[np.ndarray] = None  # (N, 10*S, Df) float: ResNet-152 at S=8 per segment, or CLIP (S=1, 768)
    clips: Optional[np.ndarray] = None  # (N, 10, Dc) float: R(2+1)D-18 (512); None for VALOR++
    audio_labels: Optional[np.ndarray] = None  # (N, 10, 25) uint8 harvested audio targets (Eq. 9)
    visual_labels: Optional[np.ndarray] = None  # (N, 10, 25) uint8 harvested visual targets
    clap_logits: Optional[np.ndarray] = None  # (N, 10, 25) float teacher logits, audio (KD, harvest, tune)
    clip_logits: Optional[np.ndarray] = None  # (N, 10, 25) float teacher logits, visual
    audio_gt: Optional[np.ndarray] = None  # (N, 10, 25) uint8 dense GT (val/test)
    visual_gt: Optional[np.ndarray] = None  # (N, 10, 25) uint8 dense GT (val/test)

    def __len__(self) -> int:
        return len(self.video_ids)

    def take(self, index: np.ndarray) -> "AVVPArrays":
        """Rows `index` of every present array (a shard, a batch, a subset)."""
        return AVVPArrays(**{f.name: (None if getattr(self, f.name) is None else getattr(self, f.name)[index])
                             for f in fields(self)})
