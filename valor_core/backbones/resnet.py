"""ResNet-152 frame features (AVVP-ECCV20 `extract_rgb_feat.py`): torchvision `resnet152`, the fc layer dropped, the
2048-d global-average-pooled output of every frame of the 8-fps stack (80 frames for 10 x 1 s) -> (80, 2048).

Preprocessing as that script: each RGB frame resized to 224 x 224 (bilinear; valor's decoder already gives 224 x 224
frames without cropping, so this is a no-op at the default media.frame_size), scaled to [0, 1], ImageNet mean/std.
Weights: torchvision's ImageNet `resnet152-394f9c45.pth` (IMAGENET1K_V1, what `pretrained=True` gave in 2020).
"""
from __future__ import annotations

from typing import Optional

import numpy as np

from valor_core.backbones.base import Backbone
from valor_core.backbones.weights import load_into

SIZE = 224
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
FILENAME, URL = "resnet152-394f9c45.pth", "https://download.pytorch.org/models/resnet152-394f9c45.pth"


def to_input(frames: np.ndarray, size: int, mean, std):
    """(N, H, W, 3) uint8 -> (N, 3, size, size) float, normalised."""
    import torch

    x = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float().div_(255.0)
    if x.shape[-2:] != (size, size):
        x = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", align_corners=False,
                                            antialias=True)
    m = torch.tensor(mean).view(1, 3, 1, 1)
    s = torch.tensor(std).view(1, 3, 1, 1)
    return (x - m) / s


class ResNet152Backbone(Backbone):
    name = column = "res152"
    input = "frames"

    def __init__(self, device, weights: Optional[str], batch_size: int = 32, seed: int = 0):
        import torch
        import torchvision

        torch.manual_seed(seed)
        net = torchvision.models.resnet152(weights=None)
        if weights:
            load_into(net, weights, "res152")
        net.fc = torch.nn.Identity()
        super().__init__(net, device, weights, batch_size)

    def __call__(self, dense: np.ndarray) -> np.ndarray:
        """(n, F, S, S, 3) uint8 frame stacks -> (n, F, 2048) float32."""
        n, F = dense.shape[:2]
        if n == 0:
            return np.zeros((0, F, 2048), np.float32)
        out = []
        for start in range(0, n * F, self.batch_size):  # preprocess per chunk: the stack as floats would be large
            flat = dense.reshape(n * F, *dense.shape[2:])[start:start + self.batch_size]
            out.append(self.forward_chunks(to_input(flat, SIZE, MEAN, STD)))
        return np.concatenate(out).reshape(n, F, 2048)


def build(weights: Optional[str], device, **kw) -> ResNet152Backbone:
    return ResNet152Backbone(device, weights, **kw)
