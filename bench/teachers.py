"""Throughput of the teachers' towers with random weights: CLIP image tower (frames/s), CLAP audio tower (segments/s).

    .venv/bin/python bench/teachers.py [--clip ViT-L-14] [--clap HTSAT-base] [--batch 8] [--iters 3] [--device auto]

CPU fp32 always; on CUDA (when present) fp32 weights under bf16 autocast, the towers' old way (valor's teachers now
hold bf16 weights: bench/gpu.py times them, and this autocast figure beside them). CLAP is timed through laion_clap's own
`get_audio_embedding_from_data` on 1-s segments (int16 quantisation, repeat-pad to 10 s, fusion mel, HTSAT): every
segment costs a full 10-s forward. FLOPs per item come from torch.utils.flop_counter (2 x multiply-adds of matmuls and
convolutions, one item); TFLOP/s = FLOPs/item x items/s. The CLAP text tower comes from a tiny offline hub cache
(valor_core.teachers.hf) and is not timed.
"""
from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402


def flops_of(fn) -> float:
    """FLOPs of fn() (one item). Run with grad enabled: under no_grad, nn.MultiheadAttention takes a fused fast path
    that FlopCounterMode does not see (it under-counted ViT-L-14 by a third)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    with torch.enable_grad(), FlopCounterMode(display=False) as counter:
        fn()
    return float(counter.get_total_flops())


def timed(fn, iters: int) -> float:
    import torch

    fn()  # warm-up
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(iters):
        fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return (time.perf_counter() - t) / iters


def autocast(device):
    import torch

    return torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext()


def bench_clip(name: str, batch: int, iters: int, device) -> dict:
    import open_clip
    import torch

    t0 = time.perf_counter()
    model = open_clip.create_model(name, pretrained=None, device="cpu").to(device).eval()
    build = time.perf_counter() - t0
    size = open_clip.get_model_preprocess_cfg(model).get("size", 224)
    size = size if isinstance(size, int) else size[0]
    x = torch.randn(batch, 3, size, size, device=device)
    f1 = flops_of(lambda: model.encode_image(x[:1]))
    with torch.no_grad():
        with autocast(device):
            dt = timed(lambda: model.encode_image(x), iters)
    rate = batch / dt
    return {"tower": f"CLIP {name} image", "items": "frames", "rate": rate, "gflops": f1 / 1e9,
            "tflops": f1 * rate / 1e12, "build_s": build, "batch": batch}


def bench_clap(amodel: str, batch: int, iters: int, device) -> dict:
    import torch

    from valor_core.teachers.clap import import_laion_clap
    from valor_core.teachers.hf import offline_hub, write_tiny_hf_cache

    tmp = tempfile.mkdtemp(prefix="valor-bench-hf-")
    write_tiny_hf_cache(tmp)
    laion_clap = import_laion_clap(tmp)
    import warnings

    t0 = time.perf_counter()
    with offline_hub(tmp), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        module = laion_clap.CLAP_Module(enable_fusion=True, amodel=amodel, device="cpu")
    module = module.to(device).eval()
    build = time.perf_counter() - t0
    rng = np.random.default_rng(0)
    segs = [rng.standard_normal(48000).astype(np.float32) * 0.1 for _ in range(batch)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        f1 = flops_of(lambda: module.get_audio_embedding_from_data(segs[:1]))
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with autocast(device):
            dt = timed(lambda: module.get_audio_embedding_from_data(segs), iters)
    rate = batch / dt
    return {"tower": f"CLAP {amodel} (fusion) audio", "items": "segments", "rate": rate, "gflops": f1 / 1e9,
            "tflops": f1 * rate / 1e12, "build_s": build, "batch": batch}


def main() -> int:
    import torch

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clip", default="ViT-L-14", help="open_clip model name (default ViT-L-14, the paper's)")
    ap.add_argument("--clap", default="HTSAT-tiny",
                    help="laion_clap audio tower (default HTSAT-tiny, the tower of the paper's 630k-fusion-best.pt)")
    ap.add_argument("--batch", type=int, default=0, help="items per forward (default 8 on CPU, 256 on GPU)")
    ap.add_argument("--iters", type=int, default=0, help="timed forwards (default 2 on CPU, 10 on GPU)")
    ap.add_argument("--device", default="auto", help="auto | cpu | cuda")
    ap.add_argument("--skip", choices=["clip", "clap"], action="append", default=[])
    args = ap.parse_args()
    devices = [torch.device("cpu")]
    if args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available()):
        devices = [torch.device("cuda")] if args.device == "cuda" else [torch.device("cpu"), torch.device("cuda")]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads"
          + (f", GPU {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ", no GPU"))
    for device in devices:
        gpu = device.type == "cuda"
        batch = args.batch or (256 if gpu else 8)
        iters = args.iters or (10 if gpu else 2)
        precision = "fp32 weights, bf16 autocast" if gpu else "fp32"
        rows = []
        if "clip" not in args.skip:
            rows.append(bench_clip(args.clip, batch, iters, device))
        if "clap" not in args.skip:
            rows.append(bench_clap(args.clap, batch, iters, device))
        for r in rows:
            print(f"[{device.type} {precision}] {r['tower']}: {r['rate']:.1f} {r['items']}/s (batch {r['batch']}), "
                  f"{r['gflops']:.1f} GFLOP/{r['items'][:-1]}, {r['tflops']:.3f} TFLOP/s implied; "
                  f"build {r['build_s']:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
