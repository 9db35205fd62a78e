"""R(2+1)D-18 clip features: torchvision `video.r2plus1d_18`, the fc layer dropped, the 512-d pooled output of each
1-s snippet -> (T, 512) (10 x 512 for a 10-s clip).

A snippet is the 8 frames of one segment of the 8-fps stack (frames 8t .. 8t+7), each a PIL Resize((112, 112)) of the
source-size frame (AVVP-ECCV20 extract_3D_feat.py; the decoder's `dense_small`, valor_core.media.geometry; frames of
another size are resized to 112 x 112 here, bilinear, no crop), scaled to [0, 1] and normalised with the
Kinetics-400 mean/std of torchvision's `R2Plus1D_18_Weights.KINETICS400_V1.transforms()`; input (B, 3, 8, 112, 112).
Weights: torchvision's Kinetics-400 `r2plus1d_18-91a641e6.pth`.
"""
from __future__ import annotations

from typing import Optional

import numpy as np

from valor_core.backbones.base import Backbone
from valor_core.backbones.resnet import to_input
from valor_core.backbones.weights import load_into
from valor_core.teachers.precision import upload

SIZE = 112
MEAN, STD = (0.43216, 0.394666, 0.37645), (0.22803, 0.22145, 0.216989)
FILENAME, URL = "r2plus1d_18-91a641e6.pth", "https://download.pytorch.org/models/r2plus1d_18-91a641e6.pth"


class R2Plus1DBackbone(Backbone):
    name = column = "r2plus1d"
    input = "frames"
    cpu_batch = 16
    per_item_mib = 64.0  # one 8 x 112 x 112 snippet through R(2+1)D-18 in bf16
    max_batch = 256
    memory_format = "3d"

    def __init__(self, device, weights: Optional[str], segments: int = 10, batch_size: int = 0, seed: int = 0,
                 precision: str = "auto", compile: bool = False):
        import torch
        import torchvision

        torch.manual_seed(seed)
        net = torchvision.models.video.r2plus1d_18(weights=None)
        if weights:
            load_into(net, weights, "r2plus1d")
        net.fc = torch.nn.Identity()
        super().__init__(net, device, weights, batch_size, precision, compile)
        self.segments = int(segments)

    def __call__(self, dense: np.ndarray) -> np.ndarray:
        """(n, F, S, S, 3) uint8 frame stacks (F = frames per segment x T) -> (n, T, 512) float32."""
        n, F = dense.shape[:2]
        T = self.segments
        if F % T:
            raise ValueError(f"r2plus1d: {F} frames do not split into {T} snippets")
        if n == 0:
            return np.zeros((0, T, 512), np.float32)
        per = F // T
        S = dense.shape[2:4]
        snippets = upload(dense, self.device).reshape(n * T, per, *S, 3)  # uint8 up once; floats per chunk

        def prepare(chunk):  # (b, per, S, S, 3) uint8 -> (b, 3, per, 112, 112)
            b = chunk.shape[0]
            x = to_input(chunk.reshape(b * per, *S, 3), SIZE, MEAN, STD)
            return x.reshape(b, per, 3, SIZE, SIZE).permute(0, 2, 1, 3, 4).contiguous()

        return self.forward_chunks(snippets, prepare).reshape(n, T, 512)


def build(weights: Optional[str], device, segments: int = 10, **kw) -> R2Plus1DBackbone:
    return R2Plus1DBackbone(device, weights, segments=segments, **kw)
