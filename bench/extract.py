"""Extraction bench: Ray Data pipeline vs a plain in-process loop, memory flatness, and GPU frames/s.

    .venv/bin/python bench/extract.py [--videos 24] [--mem 100,1000] [--skip-throughput] [--skip-memory] [--gpu]
        [--backbones all [--bb-videos 2] [--bb-device cpu]]

1. Throughput (10-s 320x180 H.264+AAC clips, tiny random-init teachers through open_clip / laion_clap, CPU):
   plain   = for each video: decode -> CLIP.segment_logits -> CLAP.segment_logits, in this process (teachers loaded
             before the clock starts; torch uses every core);
   ray     = `workflows.extract.run_extract` into a fresh local dir on in-process single-node Ray: the dataset's
             execution time (actor start-up and teacher loading included; `ray.init` reported separately).
   overhead = plain videos/s / ray videos/s (target <= 1.25).
2. Memory flatness: the same pipeline over N = 100 and 1,000 short clips (2 s; the manifest lists 50 distinct files
   under many ids, so only decoding/teacher work scales, not the synth time) with a constant-cost stub teacher
   (`--mem-teacher stub`, default: memory behaviour of the pipeline, not of the models) or the tiny teachers
   (`--mem-teacher tiny`, slow on CPU: CLAP repeat-pads every segment to 10 s). Peak PSS of the driver plus every
   process it started (Ray's GCS, raylet, workers, object store mappings counted once), sampled every 0.25 s, each N
   in a fresh process. flat = peak(1000) / peak(100) (target <= 1.1).
3. With a GPU (`--gpu`, or automatically when CUDA is there): CLIP ViT-L-14 (random weights) bf16 image-tower frames/s
   on one GPU through the teacher's own encode path (goal >= 3,000 frames/s on one H100).
4. Backbones (`--backbones vggish,res152,r2plus1d,clap_maps` or `all`; in-process, no Ray, random weights, the tiny
   CLAP for clap_maps): `--bb-videos` 10-s clips decoded once with the 8-fps stack (timed), then each backbone over
   them: videos/s and network items/s (VGGish examples, ResNet frames, R(2+1)D snippets, CLAP clips) on `--bb-device`
   (cpu by default), and decode share = decode time / (decode + all backbone time).
The last line is one JSON object with every number.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


# --- stub teacher for the memory runs (module level: Ray pickles it by reference) -----------------------------------


class StubTeacher:
    """Constant-cost stand-in with the teacher interface: deterministic unit embeddings, logits = 10 x cosine."""

    def __init__(self, kind: str, dim: int):
        import numpy as np

        self.name, self.checkpoint, self.dim = f"stub-{kind}", "none", dim
        rng = np.random.default_rng(0)
        t = rng.standard_normal((25, dim)).astype(np.float32)
        self.text = t / np.linalg.norm(t, axis=1, keepdims=True)

    def segment_logits(self, batch):
        import numpy as np

        feats = np.stack([np.stack([np.resize(np.asarray(seg, np.float32).ravel()[:4096], self.dim) for seg in v])
                          for v in batch])
        feats /= np.linalg.norm(feats, axis=-1, keepdims=True) + 1e-6
        return (10 * feats @ self.text.T).astype(np.float32), feats.astype(np.float32)


def stub_clip(spec, cfg):
    return StubTeacher("clip", 768)


def stub_clap(spec, cfg):
    return StubTeacher("clap", 512)


# --- helpers ---------------------------------------------------------------------------------------------------------


def _descendants(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
        except (OSError, IndexError, ValueError):
            pass
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, []))
    return out


def _kill_session(sid: int) -> None:
    import signal

    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[3]) == sid:
                os.kill(int(stat.parent.name), signal.SIGKILL)
        except (OSError, IndexError, ValueError):
            pass


def _pss_mb(pids: list[int]) -> tuple[float, float]:
    """(total PSS, anonymous PSS) in MB over pids; total - anon is mostly Ray's shared-memory object store arena."""
    total = anon = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1])
                elif line.startswith("Pss_Anon:"):
                    anon += int(line.split()[1])
        except OSError:
            pass
    return total / 1024, anon / 1024


class PeakSampler(threading.Thread):
    def __init__(self, interval: float = 0.25):
        super().__init__(daemon=True)
        self.interval, self.peak, self.peak_anon, self._stop_evt = interval, 0.0, 0.0, threading.Event()
        self.procs_at_peak = 0

    def run(self):
        while not self._stop_evt.is_set():
            pids = _descendants(os.getpid())
            total, anon = _pss_mb(pids)
            if total > self.peak:
                self.procs_at_peak = len(pids)
            self.peak, self.peak_anon = max(self.peak, total), max(self.peak_anon, anon)
            self._stop_evt.wait(self.interval)

    def stop(self) -> tuple[float, float]:
        self._stop_evt.set()
        self.join()
        return self.peak, self.peak_anon


def tiny_specs(cache: Path) -> dict:
    specs_file = cache / "specs.json"
    if not specs_file.exists():
        from valor_core.teachers.tiny import write_tiny_teachers

        write_tiny_teachers(cache, seed=0)
    specs = json.loads(specs_file.read_text())
    os.environ.update(specs["env"])
    return specs


def corpus(cache: Path, n: int, duration: float) -> Path:
    """n distinct synth clips (cached); returns the manifest."""
    from valor_core.media.synth import synth_corpus

    d = cache / f"corpus-{n}-{duration:g}s"
    if not (d / "manifest.csv").exists():
        synth_corpus(d, n, seed=1, duration=duration)
    return d / "manifest.csv"


# --- 1. throughput -----------------------------------------------------------------------------------------------------


def throughput(cache: Path, n: int, num_cpus: int) -> dict:
    import torch

    from valor_core.config import MediaConfig, TeacherConfig
    from workflows.config import ExtractConfig
    from valor_core.media import decode
    from valor_core.teachers import load_clap_teacher, load_clip_teacher
    from workflows.extract import run_extract
    from workflows.manifest import read_manifest

    specs = tiny_specs(cache / "teachers")
    manifest = corpus(cache, n, 10.0)
    entries = read_manifest(str(manifest), str(manifest.parent))
    tcfg, media = TeacherConfig(batch_size=10), MediaConfig()

    t = time.perf_counter()
    clip, clap = load_clip_teacher(specs["clip"], tcfg), load_clap_teacher(specs["clap"], tcfg)
    load_s = time.perf_counter() - t
    t = time.perf_counter()
    for e in entries:
        d = decode(e.source, e.video_id, media)
        clip.segment_logits([d.frames])
        if d.audio is not None:
            clap.segment_logits([d.audio])
    plain_s = time.perf_counter() - t
    del clip, clap
    print(f"plain loop: {n} videos in {plain_s:.1f} s = {n / plain_s:.3f} videos/s (teacher load {load_s:.1f} s, "
          f"torch threads {torch.get_num_threads()})", flush=True)

    out = Path(tempfile.mkdtemp(prefix="bench-extract-", dir=cache)) / "features"
    cfg = ExtractConfig(rows_per_file=64, clip_actors=(1, 1), clap_actors=(1, 1), clip_batch_size=8,
                        clap_batch_size=4, decode_batch_size=2)
    t = time.perf_counter()
    s = run_extract(str(manifest), str(manifest.parent), specs["clip"], specs["clap"], str(out), cfg=cfg,
                    teachers=tcfg, media=media, num_cpus=num_cpus, include_dashboard=False,
                    log=lambda m: print(m, file=sys.stderr, flush=True))
    total_s = time.perf_counter() - t
    assert s.done == n, s
    pipe_s = n / s.videos_per_s
    print(f"ray pipeline: {n} videos in {pipe_s:.1f} s = {s.videos_per_s:.3f} videos/s (end to end with ray.init and "
          f"planning: {total_s:.1f} s)", flush=True)
    ratio = (n / plain_s) / s.videos_per_s
    print(f"overhead (plain videos/s / pipeline videos/s): {ratio:.2f}x (target <= 1.25x)", flush=True)
    return {"videos": n, "plain_videos_per_s": n / plain_s, "plain_teacher_load_s": load_s,
            "ray_videos_per_s": s.videos_per_s, "ray_end_to_end_s": total_s, "overhead": ratio}


# --- 2. memory -------------------------------------------------------------------------------------------------------


def memory_child(cache: Path, n: int, teacher: str, num_cpus: int) -> dict:
    """One pipeline run over n short clips, in this (fresh) process; returns peak PSS."""
    from valor_core.config import TeacherConfig
    from workflows.config import ExtractConfig
    from workflows.extract import run_extract

    base = corpus(cache, 50, 2.0)
    ids = [line.split("\t")[0] for line in base.read_text().splitlines()[1:]]
    manifest = cache / f"mem-manifest-{n}.csv"
    manifest.write_text("filename\tevent_labels\tpath\n" + "".join(
        f"v{i:05d}\tSpeech\t{ids[i % len(ids)]}.mp4\n" for i in range(n)))
    loaders, clip_spec, clap_spec = None, "stub", "stub"
    if teacher == "stub":
        import bench.extract as me  # by module path so Ray workers import the same functions

        loaders = {"clip": me.stub_clip, "clap": me.stub_clap}
    else:
        specs = tiny_specs(cache / "teachers")
        clip_spec, clap_spec = specs["clip"], specs["clap"]
    out = Path(tempfile.mkdtemp(prefix=f"bench-mem-{n}-", dir=cache)) / "features"
    cfg = ExtractConfig(rows_per_file=128, clip_actors=(1, 1), clap_actors=(1, 1), clip_batch_size=16,
                        clap_batch_size=16, decode_batch_size=4)
    sampler = PeakSampler()
    sampler.start()
    t = time.perf_counter()
    s = run_extract(str(manifest), str(base.parent), clip_spec, clap_spec, str(out), cfg=cfg,
                    teachers=TeacherConfig(batch_size=16), num_cpus=num_cpus, include_dashboard=False,
                    object_store_memory=512 * 2**20, loaders=loaders, log=lambda m: print(m, file=sys.stderr))
    seconds = time.perf_counter() - t
    peak, peak_anon = sampler.stop()
    assert s.done == n, s
    return {"videos": n, "peak_pss_mb": peak, "peak_anon_pss_mb": peak_anon, "procs_at_peak": sampler.procs_at_peak,
            "seconds": seconds,
            "videos_per_s": s.videos_per_s}


def memory(cache: Path, sizes: list[int], teacher: str, num_cpus: int) -> dict:
    res = {}
    for n in sizes:
        cmd = [sys.executable, str(Path(__file__).resolve()), "--mem-child", str(n), "--mem-teacher", teacher,
               "--cache", str(cache), "--num-cpus", str(num_cpus)]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                start_new_session=True, env=env)
        stdout, stderr = proc.communicate()
        _kill_session(proc.pid)  # whatever Ray left behind in that run's session
        p = subprocess.CompletedProcess(cmd, proc.returncode, stdout, stderr)
        if p.returncode != 0:
            raise RuntimeError(f"memory run {n} failed:\n{p.stdout[-2000:]}\n{p.stderr[-4000:]}")
        r = json.loads(p.stdout.strip().splitlines()[-1])
        print(f"memory: {n} videos: peak PSS {r['peak_pss_mb']:.0f} MB, of it private/anonymous "
              f"{r['peak_anon_pss_mb']:.0f} MB, {r['procs_at_peak']} processes ({r['seconds']:.1f} s, "
              f"{r['videos_per_s']:.2f} videos/s)", flush=True)
        res[n] = r
    lo, hi = min(sizes), max(sizes)
    flat = res[hi]["peak_pss_mb"] / res[lo]["peak_pss_mb"]
    flat_anon = res[hi]["peak_anon_pss_mb"] / res[lo]["peak_anon_pss_mb"]
    print(f"memory flatness peak({hi}) / peak({lo}) = {flat:.3f} total PSS (incl. the shared object-store arena, "
          f"bounded by object_store_memory = 512 MB), {flat_anon:.3f} private (target <= 1.1)", flush=True)
    return {"runs": res, "flat": flat, "flat_anon": flat_anon, "teacher": teacher}


# --- 3. GPU ------------------------------------------------------------------------------------------------------------


def gpu_frames_per_s(model: str = "ViT-L-14", batch: int = 256, iters: int = 20) -> dict:
    import numpy as np
    import torch

    from valor_core.config import TeacherConfig
    from valor_core.teachers import load_clip_teacher

    teacher = load_clip_teacher(f"{model}:random", TeacherConfig(device="cuda", precision="bf16", batch_size=batch))
    frames = np.random.default_rng(0).integers(0, 255, (batch, 224, 224, 3), dtype=np.uint8)
    teacher.encode(frames)  # warm-up (cudnn autotune, allocator)
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(iters):
        teacher.encode(frames)
    torch.cuda.synchronize()
    fps = batch * iters / (time.perf_counter() - t)
    print(f"GPU {torch.cuda.get_device_name(0)}: {model} bf16 image tower {fps:.0f} frames/s (goal >= 3000 on H100)",
          flush=True)
    return {"model": model, "frames_per_s": fps, "device": torch.cuda.get_device_name(0), "batch": batch}


# --- 4. backbones ---------------------------------------------------------------------------------------------------


def backbones(cache: Path, names: list[str], n: int, device: str) -> dict:
    import numpy as np
    import torch

    from valor_core import backbones as bb
    from valor_core.config import MediaConfig
    from valor_core.media import decode

    torch.set_num_threads(os.cpu_count() or 1)
    manifest = corpus(cache, n, 10.0)
    ids = [line.split("\t")[0] for line in manifest.read_text().splitlines()[1:]][:n]
    media = MediaConfig(dense_frames=True)
    t0 = time.perf_counter()
    decoded = [decode(str(manifest.parent / f"{v}.mp4"), v, media) for v in ids]
    decode_s = time.perf_counter() - t0
    dense = np.stack([d.dense_frames for d in decoded])
    waves = [d.audio.reshape(-1) for d in decoded]
    items = {"vggish": 10, "res152": dense.shape[1], "r2plus1d": 10, "clap_maps": 1}  # network inputs per video
    out: dict = {"videos": n, "device": device, "decode_s": round(decode_s, 3),
                 "decode_videos_per_s": round(n / decode_s, 3), "backbones": {}}
    total = decode_s
    for name in names:
        weights = tiny_specs(cache)["clap"] if name == "clap_maps" else "random"
        model = bb.build_backbone(name, weights, device)
        bb.compute_features([name], dense[:1], waves[:1], media.sample_rate, {name: model})  # warm-up
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        bb.compute_features([name], dense, waves, media.sample_rate, {name: model})
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        dt = time.perf_counter() - t0
        total += dt
        out["backbones"][name] = {"seconds": round(dt, 3), "videos_per_s": round(n / dt, 4),
                                  "items_per_s": round(n * items[name] / dt, 2)}
        print(f"backbone {name}: {n / dt:.3f} videos/s, {n * items[name] / dt:.1f} items/s", flush=True)
    out["decode_share"] = round(decode_s / total, 4)
    print(f"decode: {n / decode_s:.2f} videos/s; decode share of decode + backbones: {out['decode_share']:.1%}",
          flush=True)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--videos", type=int, default=24, help="10-s clips for the throughput comparison")
    ap.add_argument("--mem", default="100,1000", help="video counts for the memory-flatness runs")
    ap.add_argument("--mem-teacher", choices=("stub", "tiny"), default="stub")
    ap.add_argument("--num-cpus", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--cache", default=str(REPO / "runs" / "bench-extract"))
    ap.add_argument("--skip-throughput", action="store_true")
    ap.add_argument("--skip-memory", action="store_true")
    ap.add_argument("--gpu", action="store_true", help="also the GPU frames/s figure (automatic when CUDA is there)")
    ap.add_argument("--backbones", default="", help="vggish,res152,r2plus1d,clap_maps or all (default: skip)")
    ap.add_argument("--bb-videos", type=int, default=2, help="10-s clips for the backbone figures")
    ap.add_argument("--bb-device", default="cpu")
    ap.add_argument("--mem-child", type=int, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    cache = Path(args.cache).resolve()
    cache.mkdir(parents=True, exist_ok=True)
    if args.mem_child is not None:
        print(json.dumps(memory_child(cache, args.mem_child, args.mem_teacher, args.num_cpus)))
        return 0
    result: dict = {"cpus": os.cpu_count()}
    if not args.skip_throughput:
        result["throughput"] = throughput(cache, args.videos, args.num_cpus)
    if not args.skip_memory:
        result["memory"] = memory(cache, [int(x) for x in args.mem.split(",")], args.mem_teacher, args.num_cpus)
    if args.backbones:
        from valor_core.backbones import BACKBONES

        names = list(BACKBONES) if args.backbones == "all" else args.backbones.split(",")
        result["backbones"] = backbones(cache, names, args.bb_videos, args.bb_device)
    import torch

    if args.gpu or torch.cuda.is_available():
        result["gpu"] = gpu_frames_per_s() if torch.cuda.is_available() else {"error": "no CUDA device"}
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
