"""Every GPU figure of valor in one run: teachers, paper backbones, HAN training, bf16-vs-fp32 agreement (< 8 min).

    python bench/gpu.py [--smoke] [--deadline 420] [--only clip_teacher,han_valor] [--out results.json]

Prints one JSON line per section as it finishes and, last, one JSON object with all of them. Every throughput is
also given as a fraction of the ceiling measured first: the device's dense matrix-product rate (bf16 on CUDA, fp32 on
CPU) times the FLOPs one item costs (counted with torch.utils.flop_counter on the real module, forward only for
inference, forward + backward for training). Models are random-init (no weights are downloaded; speed does not depend
on the weights). `--smoke` runs tiny sizes and small models, also on CPU, to check the script before a GPU run.

Runs on a bare CUDA image that has torch (+ torchvision, torchaudio, numpy) but not valor's other packages: only
`valor_core` is imported (no Ray, MLflow, boto3). Bring the rest as wheels (`bash bench/gpu_wheels.sh` on a machine
with the package index fills the ignored folder `.whl/`), then on the GPU machine:

    python3 -m pip install -q --no-index --no-deps --no-compile --target .site .whl/*.whl
    PYTHONPATH=$PWD:$PWD/.site python3 bench/gpu.py

Sections (each time-guarded; one that fails reports its error and the run goes on):
    env            device, torch, bf16 (CUDA) / fp32 (CPU) matmul TFLOP/s = the ceiling
    clip_tower     ViT-L/14 image tower alone: fp32 weights + bf16 autocast / weights in bf16 / torch.compile of that
    clip_teacher   CLIPTeacher.segment_logits on host uint8 frames (10 per video): default batch and 1,280, frames/s
    clip_agreement bf16 vs fp32 teacher on the same frames: max |dlogit|, top-1 agreement, harvested-label agreement
    clap_teacher   CLAPTeacher (HTSAT-tiny fusion, the paper's tower) on 1-s 48 kHz segments, segments/s, with
                   laion_clap's host pre-processing and with valor's batched device pre-processing
    backbones      vggish / res152 / r2plus1d / clap_maps, videos/s (and items/s in the network's own unit)
    han_valor      `valor` preset at its schedule (60 epochs, batch 64, d 512) on 10,000 LLP-sim videos, seconds, with
                   `--han-compile` (default cuda-graph: the whole step one CUDA graph), then 2 eager epochs
    han_baseline   `han` preset at its schedule (40 epochs, batch 16), the same way
A HAN section that would pass its time share stops after the epochs it has and extrapolates (`extrapolated: true`).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import traceback
from typing import Optional

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")

import torch  # noqa: E402

from bench.flops import FLOP_BATCH, train_flops_per_video  # noqa: E402

from valor_core.config import TeacherConfig, replace  # noqa: E402
from valor_core.fit import configure_threads  # noqa: E402
from valor_core.labels import harvest_labels  # noqa: E402
from valor_core.teachers.agreement import compare_logits  # noqa: E402
from valor_core.llp import DEFAULT_ANNOTATIONS  # noqa: E402
from valor_core.presets import get_preset, shorten  # noqa: E402

CLIP_MODEL = {False: "ViT-L-14", True: "ViT-B-32"}  # paper's / smoke
CLAP_TOWER = "HTSAT-tiny"  # the paper's 630k-fusion-best tower


def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timed(fn, iters: int, warm: int = 1) -> float:
    """Seconds per call of fn(), after `warm` calls, with the device synchronised around the timed calls."""
    for _ in range(warm):
        fn()
    sync()
    t = time.perf_counter()
    for _ in range(iters):
        fn()
    sync()
    return (time.perf_counter() - t) / iters


def forward_flops(module_fn, *args) -> float:
    """FLOPs of one call module_fn(*args) (matmuls/convs, as torch.utils.flop_counter counts them). MHA's fused
    fast path is off while counting: the counter cannot see inside it (ViT-B/32: 5.9 instead of 8.7 GFLOP)."""
    from torch.utils.flop_counter import FlopCounterMode

    fast = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            module_fn(*args)
    finally:
        torch.backends.mha.set_fastpath_enabled(fast)
    return float(counter.get_total_flops())


class Bench:
    def __init__(self, smoke: bool, deadline: float, han_compile: str = "cuda-graph"):
        self.smoke = smoke
        self.han_compile = han_compile
        self.deadline = deadline
        self.t0 = time.perf_counter()
        self.dev = device()
        self.ceiling = 0.0  # FLOP/s
        self.results: dict[str, dict] = {}

    def left(self) -> float:
        return self.deadline - (time.perf_counter() - self.t0)

    def share(self, flops_per_item: float, items_per_s: float) -> Optional[float]:
        """The fraction of the measured ceiling; None (JSON null) when env did not measure one."""
        return round(flops_per_item * items_per_s / self.ceiling, 4) if self.ceiling else None

    @property
    def precision(self) -> str:
        """Teachers and backbones: auto (bf16 on CUDA); the CPU smoke runs them in bf16 too, the same code path."""
        return "bf16" if self.smoke else "auto"

    @staticmethod
    def attempt(rec: dict, key: str, fn) -> None:
        """rec[key] = fn(), or rec[key + "_error"]: one failed measurement keeps the section's others."""
        try:
            rec[key] = fn()
        except Exception as err:  # noqa: BLE001 - a bench reports what failed and goes on
            rec[f"{key}_error"] = f"{type(err).__name__}: {err}"

    def run(self, name: str, fn) -> None:
        t = time.perf_counter()
        if self.left() <= 0:
            rec = {"skipped": "deadline"}
        else:
            try:
                rec = fn()
            except Exception as err:  # noqa: BLE001 - a bench reports a failed section and goes on
                rec = {"error": f"{type(err).__name__}: {err}", "trace": traceback.format_exc()[-2000:]}
        rec["section_s"] = round(time.perf_counter() - t, 1)
        self.results[name] = rec
        print(json.dumps({"section": name, **rec}), flush=True)
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    # --- sections ----------------------------------------------------------------------------------------------

    def env(self) -> dict:
        n = 2048 if self.smoke else 8192
        dtype = torch.bfloat16 if self.dev.type == "cuda" else torch.float32
        x = torch.randn(n, n, device=self.dev, dtype=dtype)
        dt = timed(lambda: x @ x, 3 if self.smoke else 20, warm=3)
        self.ceiling = 2 * n ** 3 / dt
        rec = {"device": torch.cuda.get_device_name(0) if self.dev.type == "cuda" else "cpu",
               "torch": torch.__version__, "threads": torch.get_num_threads(),
               "ceiling_dtype": str(dtype).replace("torch.", ""), "ceiling_tflops": round(self.ceiling / 1e12, 2)}
        return rec

    def _frames(self, videos: int, seed: int = 0) -> list[np.ndarray]:
        rng = np.random.default_rng(seed)
        return [rng.integers(0, 256, (10, 224, 224, 3), dtype=np.uint8) for _ in range(videos)]

    def clip_tower(self) -> dict:
        import open_clip

        name = CLIP_MODEL[self.smoke]
        model = open_clip.create_model(name, pretrained=None, device=self.dev).eval()
        flops = forward_flops(model.encode_image, torch.randn(1, 3, 224, 224, device=self.dev))
        rec = {"model": name, "gflop_per_frame": round(flops / 1e9, 1)}
        bs = 8 if self.smoke else 512
        iters = 2 if self.smoke else 10
        x = torch.randn(bs, 3, 224, 224, device=self.dev)
        with torch.no_grad():
            if self.dev.type == "cuda":
                with torch.autocast("cuda", dtype=torch.bfloat16):
                    rec["autocast_fps"] = round(bs / timed(lambda: model.encode_image(x), iters), 1)
            model = model.to(torch.bfloat16)
            xb = x.to(torch.bfloat16)
            rec["bf16_weights_fps"] = round(bs / timed(lambda: model.encode_image(xb), iters), 1)
            if self.left() > 300:  # a cold compile of ViT-L/14 takes a minute or two
                compiled = torch.compile(model.encode_image)
                t = time.perf_counter()
                compiled(xb)
                sync()
                rec["compile_s"] = round(time.perf_counter() - t, 1)
                rec["bf16_compiled_fps"] = round(bs / timed(lambda: compiled(xb), iters), 1)
        rec["bf16_weights_share"] = self.share(flops, rec["bf16_weights_fps"])
        rec["batch"] = bs
        return rec

    def clip_teacher(self) -> dict:
        from valor_core.teachers.clip import CLIPTeacher

        name = CLIP_MODEL[self.smoke]
        videos = 4 if self.smoke else 256
        frames = self._frames(videos)
        rec = {"model": name, "videos": videos}
        for label, bs in (("default", 0), ("b1280", 16 if self.smoke else 1280)):
            teacher = CLIPTeacher(f"{name}:random", TeacherConfig(device=str(self.dev), batch_size=bs,
                                                                  precision=self.precision))
            flops = forward_flops(teacher.model.encode_image,
                                  torch.randn(1, 3, 224, 224, device=self.dev, dtype=teacher.dtype))
            dt = timed(lambda: teacher.segment_logits(frames), 1 if self.smoke else 3)
            fps = videos * 10 / dt
            rec[f"{label}_batch"] = teacher.batch_size
            rec[f"{label}_fps"] = round(fps, 1)
            rec[f"{label}_share"] = self.share(flops, fps)
            del teacher
        return rec

    def clip_agreement(self) -> dict:
        from valor_core.teachers.clip import CLIPTeacher

        name = CLIP_MODEL[self.smoke]
        frames = self._frames(4 if self.smoke else 64, seed=1)
        logits = {}
        for precision in ("fp32", "bf16"):
            torch.manual_seed(0)  # the same random weights for both
            teacher = CLIPTeacher(f"{name}:random", TeacherConfig(device=str(self.dev), precision=precision))
            logits[precision] = teacher.segment_logits(frames)[0]
            del teacher
        # Table 6 thresholds, and per-class thresholds at the fp32 logits' 70th percentile: random-init logits fall
        # on one side of Table 6's values, so the percentile thresholds are the informative ones
        p70 = np.percentile(logits["fp32"].reshape(-1, 25), 70, axis=0)
        return {"table6": compare_logits(logits["fp32"], logits["bf16"], "clip"),
                "p70": compare_logits(logits["fp32"], logits["bf16"], "clip", thresholds=p70),
                "logit_range": round(float(np.ptp(logits["fp32"])), 3)}

    def clap_teacher(self) -> dict:
        from valor_core.teachers.clap import CLAPTeacher

        spec = tiny_clap_spec()
        videos = 2 if self.smoke else 64
        rng = np.random.default_rng(0)
        audio = [(0.1 * rng.standard_normal((10, 48000))).astype(np.float32) for _ in range(videos)]
        rec = {"amodel": CLAP_TOWER, "videos": videos}
        for pre in ("library", "device"):  # laion_clap's per-segment host pre-processing vs valor's batched one
            def measure(pre=pre):
                teacher = CLAPTeacher(spec, TeacherConfig(device=str(self.dev), clap_preprocess=pre,
                                                          precision=self.precision))
                rec[f"{pre}_batch"] = teacher.batch_size
                if pre == "device":  # one 1-s segment through valor's path, repeat-padded as the timed ones
                    rec["gflop_per_segment"] = round(forward_flops(teacher.embed, [audio[0][0]]) / 1e9, 2)
                return round(videos * 10 / timed(lambda: teacher.segment_logits(audio), 1 if self.smoke else 2), 1)
            self.attempt(rec, f"{pre}_segments_per_s", measure)
        if "device_segments_per_s" in rec and rec.get("gflop_per_segment"):
            rec["share"] = self.share(rec["gflop_per_segment"] * 1e9, rec["device_segments_per_s"])
        return rec

    def backbones(self) -> dict:
        from valor_core.backbones import BACKBONES, build_backbone, compute_features

        videos = 1 if self.smoke else 16
        rng = np.random.default_rng(0)
        dense = rng.integers(0, 256, (videos, 80, 224, 224, 3), dtype=np.uint8)
        waves = [(0.1 * rng.standard_normal(480000)).astype(np.float32) for _ in range(videos)]
        names = ("vggish", "r2plus1d", "clap_maps") if self.smoke else tuple(BACKBONES)  # smoke: not ResNet-152
        rec = {"videos": videos}
        for name in names:
            def measure(name=name):
                weights = tiny_clap_spec() if name == "clap_maps" else "random"
                model = build_backbone(name, weights, str(self.dev), precision=self.precision)
                dt = timed(lambda: compute_features([name], dense, waves, 48000, {name: model}), 1, warm=1)
                return round(videos / dt, 2)
            self.attempt(rec, f"{name}_videos_per_s", measure)
        return rec

    def _han(self, preset: str, share_s: float) -> dict:
        """The preset at its schedule with `--han-compile` (default: the whole step as one CUDA graph), then two
        epochs of the eager loop for comparison."""
        from valor_core.fit import fit
        from valor_core.labels import thresholds_for
        from valor_core.sim import simulate

        cfg = get_preset(preset)
        features = "clip_clap" if cfg.features == "clip_clap" else "vggish_resnet_r2p1d"
        t = time.perf_counter()
        data = simulate(DEFAULT_ANNOTATIONS, seed=0, features=features)
        train = data["train"]
        if self.smoke:
            train = train.take(np.arange(300))
        for arr in (train,):
            arr.audio_labels = harvest_labels(arr.clap_logits, arr.weak, thresholds_for(cfg.labels, "audio"))
            arr.visual_labels = harvest_labels(arr.clip_logits, arr.weak, thresholds_for(cfg.labels, "visual"))
        sim_s = time.perf_counter() - t
        steps = train.frames.shape[1] // train.audio.shape[1]
        cfg = replace(cfg, device=str(self.dev), compile=self.han_compile, **{
            "model.audio_dim": train.audio.shape[-1], "model.frame_dim": train.frames.shape[-1],
            "model.frame_steps": steps, "model.clip_dim": train.clips.shape[-1] if train.clips is not None else 0})
        epochs = cfg.optim.epochs
        if self.smoke:
            cfg = shorten(cfg, 2)
        started = time.perf_counter()
        stop_at = started + share_s

        def on_epoch(record):
            return time.perf_counter() < stop_at

        result = fit(train, data["val"], cfg, test=data["test"], on_epoch=on_epoch)
        done = len(result.history)
        train_s = [r["train_seconds"] for r in result.history]
        per_epoch = float(np.median(train_s))
        total = result.seconds if done == cfg.optim.epochs else result.seconds / done * cfg.optim.epochs
        flops = train_flops_per_video(cfg, train)
        videos_per_s = len(train) / per_epoch
        eager: list = []
        if self.han_compile != "eager":
            fit(train, data["val"], replace(cfg, compile="eager"),
                on_epoch=lambda r: eager.append(r["train_seconds"]) or len(eager) < 2)
        return {"preset": preset, "compile": self.han_compile, "eager_epoch_train_s": [round(x, 3) for x in eager],
                "train_videos": len(train), "batch": cfg.optim.batch_size,
                "paper_epochs": epochs, "epochs_run": done, "extrapolated": done < cfg.optim.epochs,
                "total_s": round(total, 1), "epoch_train_s_median": round(per_epoch, 3),
                "step_ms": round(1000 * per_epoch / -(-len(train) // cfg.optim.batch_size), 2),
                "videos_per_s": round(videos_per_s, 1), "mflop_per_video": round(flops / 1e6, 2),
                "share": self.share(flops, videos_per_s), "flop_batch": FLOP_BATCH,
                "best_epoch": result.best_epoch, "test_type_av": round(float(result.test.segment["type"]), 2),
                "sim_s": round(sim_s, 1)}

    def han_valor(self) -> dict:  # each HAN section also spends ~20-40 s outside its share (sim, eager, test)
        return self._han("valor", min(120.0, max(10.0, self.left() - 150)))

    def han_baseline(self) -> dict:
        return self._han("han", min(150.0, max(10.0, self.left() - 40)))


def tiny_clap_spec() -> str:
    """A random-init HTSAT-tiny CLAP spec with the small offline text tower laion_clap needs to build."""
    from valor_core.teachers.hf import write_tiny_hf_cache

    cache = tempfile.mkdtemp(prefix="valor-bench-hf-")
    write_tiny_hf_cache(cache)
    spec = os.path.join(cache, "clap.json")
    with open(spec, "w") as f:
        json.dump({"checkpoint": None, "amodel": CLAP_TOWER, "enable_fusion": True, "hf_hub_cache": cache}, f)
    return spec


SECTIONS = ("env", "clip_tower", "clip_teacher", "clip_agreement", "clap_teacher", "backbones", "han_valor",
            "han_baseline")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true", help="tiny sizes and models (also on CPU)")
    ap.add_argument("--deadline", type=float, default=420.0, help="no section starts after this many seconds")
    ap.add_argument("--only", default="", help="comma-separated sections (env always runs)")
    ap.add_argument("--out", default="", help="also write the final JSON object here")
    ap.add_argument("--han-compile", default="cuda-graph", help="TrainConfig.compile of the HAN sections")
    args = ap.parse_args()
    only = {s for s in args.only.split(",") if s}
    unknown = only - set(SECTIONS)
    if unknown:
        ap.error(f"--only: unknown sections {sorted(unknown)}; choose from {', '.join(SECTIONS)}")
    if not torch.cuda.is_available():
        configure_threads()  # CPU smoke: valor's CPU default (1 thread, $VALOR_THREADS), for the ceiling too
    bench = Bench(args.smoke, args.deadline, args.han_compile)
    for name in SECTIONS:
        if name == "env" or not only or name in only:
            bench.run(name, getattr(bench, name))
    final = {"bench": "gpu", "smoke": args.smoke, "total_s": round(time.perf_counter() - bench.t0, 1),
             **bench.results}
    if args.out:
        with open(args.out, "w") as f:
            json.dump(final, f, indent=1)
    print(json.dumps(final), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
