"""Small random-init teachers that load offline through open_clip and laion_clap themselves (smoke tests, CI).

`write_tiny_teachers(out_dir)` writes
- clip/tiny-clip.json + clip/tiny-clip.pt: an open_clip ViT config (64-px input, 2 layers, 32-d embeddings, 3.4 M
  parameters) and its random weights; spec `OUT/clip/tiny-clip.json:OUT/clip/tiny-clip.pt`;
- hf/: a Hugging Face cache with tiny roberta-base / bart-base / bert-base-uncased stand-ins (valor_core.teachers.hf);
- clap/tiny-clap.pt + clap/tiny-clap.json: a laion_clap `CLAP_Module(enable_fusion=True, amodel=AMODEL)` with random
  weights (HTSAT-tiny by default: about 4x cheaper than HTSAT-base; 512-d) and a CLAP spec JSON naming the checkpoint,
  the audio tower and the hub cache; spec `OUT/clap/tiny-clap.json`.
Deterministic for a seed (same bytes on CPU), offline, a few seconds plus laion_clap's import.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from valor_core.teachers.clap import import_laion_clap
from valor_core.teachers.hf import offline_hub, write_tiny_hf_cache

TINY_CLIP_CONFIG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 64, "layers": 2, "width": 64, "head_width": 32, "patch_size": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}


def write_tiny_clip(out_dir: str | os.PathLike, seed: int = 0) -> str:
    """Write the tiny open_clip teacher into out_dir/clip; returns its spec."""
    import open_clip
    import torch

    d = Path(out_dir).resolve() / "clip"
    d.mkdir(parents=True, exist_ok=True)
    cfg_path = d / "tiny-clip.json"
    cfg_path.write_text(json.dumps(TINY_CLIP_CONFIG, indent=1, sort_keys=True))
    ckpt = d / "tiny-clip.pt"
    open_clip.add_model_config(str(cfg_path))
    torch.manual_seed(seed)
    model = open_clip.create_model("tiny-clip", pretrained=None, device="cpu")
    torch.save({"state_dict": model.state_dict()}, ckpt)
    return f"{cfg_path}:{ckpt}"


def write_tiny_clap(out_dir: str | os.PathLike, seed: int = 0, amodel: str = "HTSAT-tiny") -> tuple[str, dict]:
    """Write the tiny hub cache and laion_clap teacher into out_dir/{hf,clap}; returns (spec, env)."""
    import torch

    root = Path(out_dir).resolve()
    hf = write_tiny_hf_cache(root / "hf", seed=seed)
    d = root / "clap"
    d.mkdir(parents=True, exist_ok=True)
    laion_clap = import_laion_clap(str(hf))
    import warnings

    with offline_hub(str(hf)), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.manual_seed(seed)
        module = laion_clap.CLAP_Module(enable_fusion=True, amodel=amodel, device="cpu")
    state = dict(module.model.state_dict())
    # laion_clap's own load_ckpt deletes this key unconditionally: keep checkpoints loadable by the library too.
    state.setdefault("text_branch.embeddings.position_ids", torch.arange(514).unsqueeze(0))
    torch.save({"state_dict": state}, d / "tiny-clap.pt")
    spec_path = d / "tiny-clap.json"
    spec_path.write_text(json.dumps({"checkpoint": "tiny-clap.pt", "amodel": amodel, "enable_fusion": True,
                                     "hf_hub_cache": "../hf"}, indent=1))
    return str(spec_path), {"HF_HUB_CACHE": str(hf), "HF_HUB_OFFLINE": "1"}


def write_tiny_teachers(out_dir: str | os.PathLike, seed: int = 0, amodel: str = "HTSAT-tiny") -> dict:
    """Write both tiny teachers; returns {"clip": SPEC, "clap": SPEC, "env": {VAR: VALUE}} (also saved as specs.json)."""
    clip = write_tiny_clip(out_dir, seed)
    clap, env = write_tiny_clap(out_dir, seed, amodel)
    specs = {"clip": clip, "clap": clap, "env": env}
    (Path(out_dir).resolve() / "specs.json").write_text(json.dumps(specs, indent=1))
    return specs
