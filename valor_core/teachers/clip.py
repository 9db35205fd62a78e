"""CLIP teacher through open_clip (visual modality).

Spec syntax (`--clip`, `TeacherConfig.clip`):
- `MODEL:TAG`          an open_clip model name and pretrained tag, e.g. `ViT-L-14:openai` (the paper's). The weights
                       must already be in the Hugging Face cache: valor runs with HF_HUB_OFFLINE=1.
- `MODEL:/path/ckpt`   a model name and a local checkpoint file (open_clip / OpenAI format), e.g.
                       `ViT-L-14:/models/ViT-L-14.pt`.
- `MODEL:random`       random init (benchmarks, smoke tests).
- `CFG.json[:CKPT]`    an open_clip model-config JSON (registered under its file stem) plus a checkpoint path or
                       `random`; without `:CKPT`, the sibling `CFG.pt` is used if present, else random init.
                       `valor teachers tiny` writes one.
- `local-dir:/path` or `hf-hub:org/repo`: passed to open_clip as is.

Pre-processing, on the teacher's device, as VALOR's `utils/clip_preprocess.py`: frames (B, H, W, 3) are copied up
once per batch (pinned, non_blocking on CUDA); uint8 frames are scaled to [0, 1] and resized to the model's input
size *without cropping* (bilinear, no antialias: torchvision 0.13's tensor Resize; valor_core.media.geometry); float
frames from the decoder (MediaConfig.frame_geometry "official") already are; then normalised with the model's
mean/std (CLIP's) in fp32 and cast to the tower's dtype.
Activation: OpenAI weights (any `openai` tag, an OpenAI-format checkpoint file) get QuickGELU (`create_clip_model`). Logits = logit_scale.exp() x cosine with the Table-6 "A photo of ..." captions.

Precision: the image tower (`model.visual`) holds its weights in the teacher's precision (bf16 on CUDA by default; its
LayerNorms keep fp32 parameters and statistics), the text tower stays fp32 (valor_core.teachers.precision).
Attention: open_clip's ViT blocks use `nn.MultiheadAttention(batch_first=True)` with no mask in the image tower; with
bf16 weights and no autocast, in eval mode under no_grad, torch takes MHA's fused fast path
(`torch._native_multi_head_attention`, which runs scaled-dot-product attention: flash / memory-efficient kernels on
CUDA). Autocast disqualifies that path ("autocast is enabled"), one reason the former autocast path was slow.
`attention_fast_path(teacher)` checks which path a forward takes.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from valor_core.classes import CLIP_CAPTIONS
from valor_core.config import TeacherConfig
from valor_core.media import geometry
from valor_core.teachers import precision as prec
from valor_core.teachers.base import MissingCheckpoint, Teacher, TeacherError
from valor_core.teachers.hf import offline_hub


def parse_clip_spec(spec: str) -> tuple[str, Optional[str], Optional[str]]:
    """spec -> (open_clip model name or schema string, pretrained (tag / path / None = random), config JSON or None)."""
    spec = spec.strip()
    if not spec:
        raise TeacherError("empty CLIP spec; expected e.g. ViT-L-14:openai (see valor_core.teachers.clip)")
    if spec.startswith(("local-dir:", "hf-hub:")):
        return spec, None, None
    model, sep, pretrained = spec.partition(":")
    config_json = None
    if model.endswith(".json"):
        config_json = model
        if not Path(model).is_file():
            raise MissingCheckpoint(f"CLIP model config {model!r} not found (spec {spec!r})")
        if not sep:
            sibling = Path(model).with_suffix(".pt")
            pretrained = str(sibling) if sibling.is_file() else "random"
        model = Path(model).stem
    elif not sep:
        raise TeacherError(f"CLIP spec {spec!r} needs a pretrained part: MODEL:TAG (e.g. ViT-L-14:openai), "
                           "MODEL:/path/to/checkpoint or MODEL:random")
    if pretrained in ("", "random", "none"):
        return model, None, config_json
    return model, pretrained, config_json


def check_clip_files(spec: str) -> bool:
    """MissingCheckpoint when the spec names a local checkpoint that is not there (cheap: no model is built);
    returns whether the spec's pretrained part is a path."""
    _, pretrained, _ = parse_clip_spec(spec)
    looks_like_path = pretrained is not None and (os.sep in pretrained or pretrained.endswith(
        (".pt", ".bin", ".pth", ".safetensors", ".ckpt")))
    if looks_like_path and not Path(pretrained).is_file():
        raise MissingCheckpoint(
            f"CLIP checkpoint {pretrained!r} not found (spec {spec!r}). Copy the open_clip/OpenAI checkpoint "
            f"there, or use a tag whose weights are in the Hugging Face cache (e.g. ViT-L-14:openai).")
    return looks_like_path


def clip_files(spec: str) -> list[str]:
    """The local files a CLIP spec reads (its model-config JSON, its checkpoint), for the provenance record
    (valor_core.provenance); none for a hub tag or random init."""
    _, pretrained, config_json = parse_clip_spec(spec)
    return [f for f in (config_json, pretrained if check_clip_files(spec) else None) if f]


def is_openai_file(path: str) -> bool:
    """Whether a checkpoint file is in OpenAI's format (the TorchScript archive that `clip.load` reads: a zip holding
    `constants.pkl` / `code/`), told from its member names only (no weights are read)."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as z:
            return any(n.endswith("constants.pkl") or "/code/" in n for n in z.namelist())
    except (OSError, zipfile.BadZipFile):
        return False


def needs_quick_gelu(model_name: str, pretrained: Optional[str]) -> bool:
    """Whether the weights were trained with QuickGELU: any `openai` tag (and every tag open_clip marks so), or an
    OpenAI-format checkpoint file. Decided from the spec, never from loaded weights."""
    import open_clip

    if pretrained is None:
        return False
    if os.path.isfile(pretrained):
        return is_openai_file(pretrained)
    return "openai" in pretrained.lower() or bool(open_clip.get_pretrained_cfg(model_name, pretrained).get("quick_gelu"))


def create_clip_model(model_name: str, pretrained: Optional[str], load_weights: bool = True):
    """The open_clip model for a parsed spec (load_weights=False: random init, the same architecture), with the activation its weights were trained with: QuickGELU for
    OpenAI weights (open_clip's own `ViT-L-14` config has nn.GELU and only warns). A model config that says QuickGELU
    for weights trained without it is refused (TeacherError), not warned."""
    import open_clip

    quick = needs_quick_gelu(model_name, pretrained)
    config = open_clip.get_model_config(model_name) or {}
    if config.get("quick_gelu") and pretrained is not None and not quick:
        raise TeacherError(f"CLIP model {model_name!r} uses QuickGELU but its weights {pretrained!r} were trained "
                           f"with GELU: use the model name without -quickgelu")
    with offline_hub():
        return open_clip.create_model(model_name, pretrained=pretrained if load_weights else None, device="cpu",
                                      force_quick_gelu=quick)


class CLIPTeacher(Teacher):
    name = "clip"
    modality = "visual"
    per_item_mib = 16.0  # ViT-L/14 at 224 px in bf16, batch 512: ~4 GiB of activations; generous for workspaces
    max_batch = 512

    def __init__(self, spec: str, cfg: TeacherConfig = TeacherConfig(), captions: Sequence[str] = CLIP_CAPTIONS):
        import open_clip
        import torch

        model_name, pretrained, config_json = parse_clip_spec(spec)
        if config_json is not None:
            open_clip.add_model_config(config_json)
        looks_like_path = check_clip_files(spec)
        if pretrained is not None and not looks_like_path and not model_name.startswith(("local-dir:", "hf-hub:")):
            tags = open_clip.list_pretrained_tags_by_model(model_name)
            if pretrained not in tags:
                raise TeacherError(f"open_clip has no pretrained tag {pretrained!r} for {model_name!r} "
                                   f"(known: {', '.join(tags) or 'none'}); or give a checkpoint path")
        super().__init__(spec, pretrained or "random", cfg, captions)
        try:
            model = create_clip_model(model_name, pretrained)
        except RuntimeError as err:
            if "Unknown model" in str(err) or "Model config" in str(err):
                raise TeacherError(f"unknown open_clip model {model_name!r} (spec {spec!r}): {err}") from None
            raise self._missing(model_name, pretrained, spec, err) from None
        except (OSError, ValueError) as err:
            raise self._missing(model_name, pretrained, spec, err) from None
        self.model = model.to(self.device).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        prec.cast_tower(self.model.visual, self.precision)
        self.visual = prec.maybe_compile(self.model.visual, self.compiled)
        self.tokenizer = open_clip.get_tokenizer(model_name)
        pcfg = open_clip.get_model_preprocess_cfg(model)
        size = pcfg.get("size", 224)
        self.image_size = tuple(size) if isinstance(size, (tuple, list)) else (int(size), int(size))
        self.mean = torch.tensor(pcfg.get("mean", open_clip.OPENAI_DATASET_MEAN), device=self.device).view(1, 3, 1, 1)
        self.std = torch.tensor(pcfg.get("std", open_clip.OPENAI_DATASET_STD), device=self.device).view(1, 3, 1, 1)
        self.model_name = model_name
        self.logit_scale = float(model.logit_scale.detach().exp().item())
        self.dim = int(self.encode_text(["a"]).shape[1])

    @staticmethod
    def _missing(model_name, pretrained, spec, err) -> TeacherError:
        if pretrained and not os.path.exists(str(pretrained)):
            return MissingCheckpoint(
                f"CLIP weights {model_name}:{pretrained} are not available offline (spec {spec!r}): {err}. "
                f"Obtain them on a machine with network access: `python -c \"import open_clip; "
                f"open_clip.create_model('{model_name}', pretrained='{pretrained}')\"` fills the Hugging Face cache "
                f"(~/.cache/huggingface/hub, or $HF_HUB_CACHE); copy that cache here and set HF_HUB_CACHE, or pass "
                f"{model_name}:/path/to/checkpoint.")
        return TeacherError(f"could not build CLIP {model_name!r} with weights {pretrained!r}: {err}")

    def preprocess(self, frames) -> "torch.Tensor":  # noqa: F821
        """(B, H, W, 3) frames (host array or device tensor) -> normalised fp32 (B, 3, S, S) on the teacher's device:
        VALOR's resize (valor_core.media.geometry.clip_pixels) of uint8 frames of any size, or of float32 frames in
        [0, 1] (the decoder's frame_geometry "official", already at media.frame_size: a no-op for 224-px models)."""
        if getattr(frames, "ndim", 0) != 4 or frames.shape[-1] != 3:
            raise ValueError(f"frames must be (B, H, W, 3) uint8, got {tuple(getattr(frames, 'shape', ()))}")
        x = prec.upload(frames, self.device) if not hasattr(frames, "device") or frames.device != self.device \
            else frames
        x = geometry.clip_pixels(x, self.image_size[0]).permute(0, 3, 1, 2)  # VALOR's ToTensor + Resize
        return (x - self.mean) / self.std

    def _embed(self, frames):
        """Frames copied to the device once, then pre-processed and encoded chunk by chunk there."""
        import torch

        frames = np.asarray(frames) if not isinstance(frames, torch.Tensor) else frames
        if frames.ndim != 4 or frames.shape[-1] != 3:
            raise ValueError(f"frames must be (B, H, W, 3) uint8, got {tuple(frames.shape)}")
        on_device = prec.upload(frames, self.device)
        out = [self.visual(self.preprocess(on_device[s:s + self.batch_size]).to(self.dtype))
               for s in range(0, len(on_device), self.batch_size)]
        return torch.cat(out) if len(out) > 1 else out[0]

    def _encode_text(self, prompts):
        tokens = self.tokenizer(list(prompts)).to(self.device)
        return self.model.encode_text(tokens)

    def encode_frames(self, frames) -> np.ndarray:
        """(B, H, W, 3) uint8 -> (B, d) L2-normalised image embeddings."""
        return self.encode(np.asarray(frames))

    def _items_of(self, video):
        frames = getattr(video, "frames", video)
        return None if frames is None else np.asarray(frames)


def load_clip_teacher(spec: str, cfg: TeacherConfig = TeacherConfig()) -> CLIPTeacher:
    """Build the CLIP teacher named by `spec` (syntax in this module's docstring)."""
    return CLIPTeacher(spec, cfg)


def attention_fast_path(teacher: CLIPTeacher, frames: int = 2) -> bool:
    """Whether a forward of the image tower goes through torch's fused multi-head-attention fast path
    (`torch._native_multi_head_attention`, SDPA inside); counted on a forward of `frames` black frames."""
    import torch

    calls = []
    native = torch._native_multi_head_attention

    def counting(*args, **kwargs):
        calls.append(1)
        return native(*args, **kwargs)

    torch._native_multi_head_attention = counting
    try:
        teacher.encode(np.zeros((frames, *teacher.image_size, 3), np.uint8))
    finally:
        torch._native_multi_head_attention = native
    return bool(calls)
