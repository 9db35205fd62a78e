"""ResNet-152 frame features (AVVP-ECCV20 `extract_rgb_feat.py`): torchvision `resnet152`, the fc layer dropped, the
2048-d global-average-pooled output of every frame of the 8-fps stack (80 frames for 10 x 1 s) -> (80, 2048).

Preprocessing as that script: the frames `ffmpeg -r 8` writes, round(linspace(0, n - 1, 80)) of them, each a PIL
Resize(256) + CenterCrop(224) of the source-size frame (pretrainedmodels LoadTransformImage; done by the decoder,
valor_core.media.geometry, MediaConfig.frame_geometry "official"), scaled to [0, 1], ImageNet mean/std -- on the
backbone's device, the uint8 stack copied up once per call (valor_core.backbones.base). Frames of another size are
resized to 224 x 224 (bilinear, antialiased) without cropping (frame_geometry "squash").
Weights: torchvision's ImageNet `resnet152-394f9c45.pth` (IMAGENET1K_V1, what `pretrained=True` gave in 2020).
"""
from __future__ import annotations

from typing import Optional

import numpy as np

from valor_core.backbones.base import Backbone
from valor_core.backbones.weights import load_into
from valor_core.teachers.precision import upload

SIZE = 224
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
FILENAME, URL = "resnet152-394f9c45.pth", "https://download.pytorch.org/models/resnet152-394f9c45.pth"


def to_input(frames, size: int, mean, std):
    """(N, H, W, 3) uint8 (a host array, or a tensor on the device) -> (N, 3, size, size) fp32, normalised, on the
    tensor's device (a host array: on the CPU)."""
    import torch

    x = frames if isinstance(frames, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(frames))
    x = x.permute(0, 3, 1, 2).float().div_(255.0)
    if x.shape[-2:] != (size, size):
        x = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", align_corners=False,
                                            antialias=True)
    m = torch.tensor(mean, device=x.device).view(1, 3, 1, 1)
    s = torch.tensor(std, device=x.device).view(1, 3, 1, 1)
    return (x - m) / s


class ResNet152Backbone(Backbone):
    name = column = "res152"
    input = "frames"
    cpu_batch = 32
    per_item_mib = 24.0  # ResNet-152 at 224 px in bf16: the largest activations are ~6 MiB per frame
    memory_format = "2d"

    def __init__(self, device, weights: Optional[str], batch_size: int = 0, seed: int = 0, precision: str = "auto",
                 compile: bool = False):
        import torch
        import torchvision

        torch.manual_seed(seed)
        net = torchvision.models.resnet152(weights=None)
        if weights:
            load_into(net, weights, "res152")
        net.fc = torch.nn.Identity()
        super().__init__(net, device, weights, batch_size, precision, compile)

    def __call__(self, dense: np.ndarray) -> np.ndarray:
        """(n, F, S, S, 3) uint8 frame stacks -> (n, F, 2048) float32."""
        n, F = dense.shape[:2]
        if n == 0:
            return np.zeros((0, F, 2048), np.float32)
        flat = upload(dense.reshape(n * F, *dense.shape[2:]), self.device)  # uint8 up once; floats per chunk
        out = self.forward_chunks(flat, prepare=lambda chunk: to_input(chunk, SIZE, MEAN, STD))
        return out.reshape(n, F, 2048)


def build(weights: Optional[str], device, **kw) -> ResNet152Backbone:
    return ResNet152Backbone(device, weights, **kw)
