"""Each official script's resize/crop of a source-size frame (the one owner of frame geometry).

The official pipelines read the JPEGs `ffmpeg -r 8` wrote (source size) and transform each as below; valor applies the
same library calls to the decoded source-size frames (valor_core.media.decode, `MediaConfig.frame_geometry`):

    feature   script                                          transform of the source-size frame           valor's
    res152    AVVP-ECCV20 extract_rgb_feat.py (pretrainedmodels  PIL Resize(256) (shorter side, bilinear) +   uint8
              LoadTransformImage: scale 0.875 of 224)           CenterCrop(224)
    r2plus1d  AVVP-ECCV20 extract_3D_feat.py (its utils.py)     PIL Resize((112, 112)) (bilinear)             uint8
    clip      VALOR utils/clip_preprocess.py (torchvision 0.13) ToTensor, then tensor Resize((224, 224)):     float32
                                                                bilinear, no antialias, no crop               in [0, 1]

The uint8 results are exactly what those scripts hand to ToTensor; the CLIP result is exactly the tensor VALOR
normalises (kept channels-last, (N, S, S, 3), like the frames). `OFFICIAL` names the script and version each
feature column records in the dataset provenance; `frame_preprocessing` is that record for a media config (with
`frame_source: ffmpeg-jpeg` it names the JPEG round trip, so decoded and JPEG datasets are never mixed silently).
"""
from __future__ import annotations

import numpy as np

RESNET_SCALE = 0.875  # pretrainedmodels TransformImage: Resize(floor(224 / 0.875) = 256), CenterCrop(224)

OFFICIAL = {
    "res152": "AVVP-ECCV20 scripts/extract_frames.py (ffmpeg -r 8) + extract_rgb_feat.py (pretrainedmodels "
              "LoadTransformImage: Resize(256), CenterCrop(224)); valor frames v2",
    "r2plus1d": "AVVP-ECCV20 scripts/extract_frames.py (ffmpeg -r 8) + extract_3D_feat.py (utils.TransformImage: "
                "PIL Resize((112, 112))); valor frames v2",
    "clip": "VALOR utils/extract_frames.py (ffmpeg -r 8) + utils/clip_preprocess.py (ToTensor, Resize((224, 224)) "
            "bilinear without antialias, torchvision 0.13); valor frames v2",
}

JPEG_ROUND_TRIP = "; frames read from ffmpeg's default-quality MJPEG files with PIL (media.frame_source ffmpeg-jpeg)"


def frame_preprocessing(media) -> dict:
    """{frame column: the official preprocessing it follows} under `media` (a MediaConfig); {} where the frame choice
    or geometry is not the official one (frame_grid "pts" / frame_geometry "squash": valor's before issue 22)."""
    if media.frame_grid != "ffmpeg" or media.frame_geometry != "official":
        return {}
    suffix = JPEG_ROUND_TRIP if media.frame_source == "ffmpeg-jpeg" else ""
    return {k: v + suffix for k, v in OFFICIAL.items()}


def _pil_each(frames: np.ndarray, transform) -> np.ndarray:
    from PIL import Image

    return np.stack([np.asarray(transform(Image.fromarray(np.ascontiguousarray(f)))) for f in frames])


def resnet_frames(frames: np.ndarray, size: int = 224) -> np.ndarray:
    """(N, H, W, 3) uint8 source frames -> (N, size, size, 3) uint8: torchvision Resize(floor(size / 0.875)) then
    CenterCrop(size) of each frame as a PIL image (pretrainedmodels LoadTransformImage, before its ToTensor)."""
    import math

    import torchvision.transforms as T

    tf = T.Compose([T.Resize(int(math.floor(size / RESNET_SCALE))), T.CenterCrop(size)])
    return _pil_each(frames, tf)


def r2plus1d_frames(frames: np.ndarray, size: int = 112) -> np.ndarray:
    """(N, H, W, 3) uint8 source frames -> (N, size, size, 3) uint8: torchvision Resize((size, size)) of each frame
    as a PIL image (AVVP-ECCV20 scripts/utils.py TransformImage, before its ToTensor)."""
    import torchvision.transforms as T

    return _pil_each(frames, T.Resize((size, size)))


def clip_pixels(frames, size: int = 224):
    """(N, H, W, 3) uint8 source frames (NumPy or a torch tensor, on any device; float frames are taken as already in
    [0, 1]) -> (N, size, size, 3) float32 in [0, 1], same kind and device: ToTensor then Resize((size, size)) on the tensor, bilinear without antialias (VALOR
    clip_preprocess.py under torchvision 0.13, whose tensor Resize did not antialias)."""
    import torch
    import torchvision.transforms.functional as TF

    x = frames if isinstance(frames, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(frames))
    x = x.permute(0, 3, 1, 2).float() if x.is_floating_point() else x.permute(0, 3, 1, 2).float().div(255.0)
    if tuple(x.shape[-2:]) != (size, size):
        x = TF.resize(x, [size, size], interpolation=TF.InterpolationMode.BILINEAR, antialias=False)
    x = x.permute(0, 2, 3, 1).contiguous()
    return x if isinstance(frames, torch.Tensor) else x.numpy()
