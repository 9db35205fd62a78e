"""Train and evaluate a HAN from feature arrays, in-process (CPU or one GPU).

The pieces are separate so that a Ray Train worker can reuse them around its own data sharding and DDP wrapper:

    model = build_model(cfg).to(device); optimizer = build_optimizer(model, cfg)
    tensors = place_tensors(to_tensors(train_arrays, cfg), device, cfg.resident)   # once: NumPy -> torch -> device
    val_inputs = place_tensors(to_tensors(val_arrays, cfg, targets=False), device, cfg.resident)
    for epoch in 1..E:
        loss = train_epoch(model, optimizer, iterate_batches(tensors, bs, generator), cfg, epoch)
        scores = evaluate_model(model, val_arrays, inputs=val_inputs)                # official rule + metrics
`fit()` is that loop with best-checkpoint selection (val segment-level Type@AV, as the official code) and a test
evaluation of the best checkpoint. Deterministic for a given `cfg.seed` on a given machine/thread count.

Speed (the loop is bound by per-step host work, not FLOPs, at the paper's sizes): the arrays stay on the training
device when they fit (`place_tensors`; on CPU they are there already) and batches are gathered there with the same
CPU-generator permutation as ever (so a seed gives the same batches anywhere); the loss is summed on the device with
one host sync per epoch; AdamW/Adam are fused on CUDA (`build_optimizer`, cfg.fused); evaluation runs on resident
inputs with one transfer of the probabilities at the end; cfg.compile "cuda-graph" replays the whole step from one
CUDA graph (valor_core.graph_step), "default" / "reduce-overhead" torch.compile the model's training pass. On CPU
the defaults compute exactly what the plain loop did (tests/test_fit_fast.py keeps that loop).
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, Optional

import numpy as np
import torch
from torch import Tensor, nn

from valor_core.arrays import AVVPArrays
from valor_core.config import TrainConfig
from valor_core.graph_step import GraphedStep, Step
from valor_core.han import HAN, HANOutput, count_trainable, resample_audio, segment_count
from valor_core.losses import compute_loss
from valor_core.ma import MAHAN
from valor_core.metrics import evaluate
from valor_core.schedule import lr_at_epoch

# --- set-up ----------------------------------------------------------------------------------------------------------


def configure_threads(threads: Optional[int] = None) -> int:
    """Set torch's intra-op CPU threads: `threads`, else $VALOR_THREADS, else 1; returns the number set.

    One thread by default: the HAN's matrices are small (10 segments x d), so intra-op threads gain little even on idle
    cores, and on shared/oversubscribed cores they collapse (measured: 2 threads ran 25-40x *slower* than 1 on a loaded
    2-core machine). Parallelism comes from Ray Train workers instead; pass threads explicitly on a dedicated box."""
    if threads is None:
        threads = int(os.environ.get("VALOR_THREADS") or 1)
    torch.set_num_threads(max(1, threads))
    return torch.get_num_threads()


def resolve_device(cfg: TrainConfig) -> torch.device:
    if cfg.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(cfg.device)


def build_model(cfg: TrainConfig) -> HAN:
    """A freshly initialised HAN; the initial weights depend only on cfg.seed and cfg.model."""
    torch.manual_seed(cfg.seed)
    if cfg.loss in ("ma", "ma-refined"):  # the same HAN, also returning MA's contrastive loss (valor_core.ma)
        return MAHAN(cfg.model, cfg.ma)
    return HAN(cfg.model)


def use_fused(model: nn.Module, cfg: TrainConfig) -> bool:
    """cfg.fused: always | never | auto (fused when every parameter is on CUDA; on CPU torch's default, as before)."""
    if cfg.fused not in ("auto", "always", "never"):
        raise ValueError(f"train fused must be auto, always or never, got {cfg.fused!r}")
    if cfg.fused == "auto":
        params = list(model.parameters())
        return bool(params) and all(p.is_cuda for p in params)
    return cfg.fused == "always"


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """AdamW/Adam of cfg.optim at the epoch-1 learning rate; build it after moving the model to its device (the
    fused kernels are chosen from where the parameters are)."""
    o = cfg.optim
    lr: Any = lr_at_epoch(1, o)
    kw: dict[str, Any] = {"fused": True} if use_fused(model, cfg) else {}
    if cfg.compile == "cuda-graph":  # a step captured in a CUDA graph: fused, capturable, the lr a device tensor
        kw = {"fused": True, "capturable": True}
        lr = torch.tensor(lr, dtype=torch.float32, device=next(model.parameters()).device)
    if o.optimizer == "adamw":
        return torch.optim.AdamW(model.parameters(), lr=lr, betas=tuple(o.betas), weight_decay=o.weight_decay, **kw)
    if o.optimizer == "adam":
        return torch.optim.Adam(model.parameters(), lr=lr, betas=tuple(o.betas), weight_decay=o.weight_decay, **kw)
    raise ValueError(f"unknown optimizer {o.optimizer!r}; expected adamw or adam")


def compile_model(model: nn.Module, cfg: TrainConfig) -> nn.Module:
    """The module to train with: `model` itself (cfg.compile eager or cuda-graph), else torch.compile(model,
    mode=cfg.compile). Keep `model` for state_dict / evaluation: the compiled wrapper shares its parameters."""
    if cfg.compile in ("eager", "cuda-graph"):
        return model
    if cfg.compile not in ("default", "reduce-overhead", "max-autotune"):
        raise ValueError(f"train compile must be eager, cuda-graph, default, reduce-overhead or max-autotune, "
                         f"got {cfg.compile!r}")
    return torch.compile(model, mode=None if cfg.compile == "default" else cfg.compile)


# --- arrays -> tensors -> batches ------------------------------------------------------------------------------------

TARGETS = {"han": (), "valor": ("audio_labels", "visual_labels"), "kd": ("clap_logits", "clip_logits")}
TARGETS["lsld"] = ("audio_labels", "visual_labels")  # LSLD: refined segment labels (visual soft, valor refine lsld)
TARGETS.update({"ma": (), "ma-refined": ("audio_labels", "visual_labels")})  # MA stage 1 / 3 (valor refine ma)
TARGETS.update(dict.fromkeys(("valor-global", "valor-visual", "valor-audio"), ("audio_labels", "visual_labels")))


def _tensor(x: np.ndarray) -> Tensor:
    """Zero-copy where possible; float64 -> float32, bool -> uint8. Batches are cast to float32 on use."""
    x = np.asarray(x)
    if x.dtype == np.float64:
        x = x.astype(np.float32)
    elif x.dtype == np.bool_:
        x = x.astype(np.uint8)
    return torch.from_numpy(np.ascontiguousarray(x))


def model_inputs(cfg: TrainConfig) -> tuple[str, ...]:
    names = ["audio"]
    if cfg.model.frame_dim > 0:
        names.append("frames")
    if cfg.model.clip_dim > 0:
        names.append("clips")
    return tuple(names)


def _chunked(x: Tensor, fn: Callable[[Tensor], Tensor], steps: int, chunk: int) -> Tensor:
    """(N, *, D) -> (N, steps, D) float32: `fn` on float32 chunks of `chunk` rows (bounded extra memory)."""
    out = torch.empty(x.shape[0], steps, x.shape[-1], dtype=torch.float32)
    for i in range(0, x.shape[0], chunk):
        out[i:i + chunk] = fn(x[i:i + chunk].float())
    return out


def pool_frames(frames: Tensor, steps: int, chunk: int = 1024) -> Tensor:
    """(N, T*S, D) -> (N, T, D) float32 mean over each segment's S steps, in chunks (bounded extra memory)."""
    t = frames.shape[1] // steps
    return _chunked(frames, lambda x: x.reshape(len(x), t, steps, -1).mean(dim=2), t, chunk)


def to_tensors(arrays: AVVPArrays, cfg: TrainConfig, targets: bool = True) -> dict[str, Tensor]:
    """The arrays the model (and, with `targets`, the loss `cfg.loss`) needs, as CPU tensors sharing NumPy memory."""
    needed = model_inputs(cfg) + (("weak",) + TARGETS[cfg.loss] if targets else ())
    missing = [name for name in needed if getattr(arrays, name) is None]
    if missing:
        what = f"preset {cfg.preset!r} (loss {cfg.loss!r})" if targets else f"preset {cfg.preset!r}"
        raise ValueError(f"{what} needs arrays {', '.join(missing)}, which are missing")
    tensors = {name: _tensor(getattr(arrays, name)) for name in needed}
    lengths = {name: int(tensors[name].shape[1]) if name in tensors else None for name in ("frames", "clips")}
    segments = segment_count(cfg.model, int(tensors["audio"].shape[1]), lengths["frames"], lengths["clips"])
    # done once here instead of in every forward pass, with identical results (the model's Linear commutes with
    # both averages) at a fraction of the memory traffic per epoch:
    if tensors["audio"].shape[1] != segments:  # audio maps resampled to T as the official network does
        tensors["audio"] = _chunked(tensors["audio"], lambda x: resample_audio(x, segments), segments, 1024)
    steps = cfg.model.frame_steps
    if "frames" in tensors and steps > 1 and tensors["frames"].shape[1] == segments * steps:
        tensors["frames"] = pool_frames(tensors["frames"], steps)  # the S frame steps of each segment
    return tensors


def tensor_bytes(tensors: dict[str, Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in tensors.values())


def fits_on(device: torch.device, nbytes: int) -> bool:
    """Whether `nbytes` more may live on `device`: on CUDA at most half its free memory (the rest for the model,
    activations and the allocator); host memory always (the arrays are there already)."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return nbytes <= free // 2
    return True


def place_tensors(tensors: dict[str, Tensor], device: torch.device, resident: str = "auto") -> dict[str, Tensor]:
    """`tensors` moved once to `device` (resident "always", or "auto" when they fit: `fits_on`), else left where
    they are ("never", or too big: each batch is then gathered there and copied). On CPU both leave them as they are."""
    if resident not in ("auto", "always", "never"):
        raise ValueError(f"train resident must be auto, always or never, got {resident!r}")
    device = torch.device(device)
    if resident == "never" or (resident == "auto" and not fits_on(device, tensor_bytes(tensors))):
        return dict(tensors)
    return {name: t.to(device) for name, t in tensors.items()}


def iterate_batches(tensors: dict[str, Tensor], batch_size: int, generator: Optional[torch.Generator] = None,
                    shuffle: bool = True) -> Iterator[dict[str, Tensor]]:
    """Mini-batches (dicts of the same keys) gathered where the tensors are; a fresh permutation from `generator` per
    call when shuffling -- always drawn on the CPU (the same stream wherever the tensors live), moved to their device
    once per epoch. Like a DataLoader with drop_last=False."""
    first = next(iter(tensors.values()))
    n = len(first)
    order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
    order = order.to(first.device)  # one copy per epoch (none on CPU)
    for start in range(0, n, batch_size):
        index = order[start:start + batch_size]
        yield {name: t.index_select(0, index) if shuffle else t[start:start + batch_size] for name, t in tensors.items()}


def _forward(model: nn.Module, batch: dict[str, Tensor], device: torch.device) -> HANOutput:
    def get(name: str) -> Optional[Tensor]:
        t = batch.get(name)
        return None if t is None else t.to(device, non_blocking=True).float()
    return model(get("audio"), get("frames"), get("clips"))


# --- training --------------------------------------------------------------------------------------------------------


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """In place where the learning rate is a tensor (a captured step reads it from there)."""
    for group in optimizer.param_groups:
        if isinstance(group["lr"], Tensor):
            group["lr"].fill_(lr)
        else:
            group["lr"] = lr


Objective = Callable[[dict[str, Tensor]], Tensor]  # batch -> its loss (the forward pass included)


def llp_objective(model: nn.Module, cfg: TrainConfig) -> Objective:
    """cfg.loss of `model` on an LLP batch (valor_core.losses.compute_loss)."""
    device = next(model.parameters()).device

    def objective(batch: dict[str, Tensor]) -> Tensor:
        out = _forward(model, batch, device)
        targets = {name: batch[name].to(device, non_blocking=True).float() for name in ("weak",) + TARGETS[cfg.loss]}
        return compute_loss(cfg.loss, out, targets, cfg.label_smoothing)
    return objective


def make_step(model: nn.Module, optimizer: torch.optim.Optimizer, cfg: TrainConfig,
              objective: Optional[Objective] = None, grad_sync: Optional[Callable[[nn.Module], None]] = None) -> Step:
    """One training step on a batch: `objective` (default llp_objective: the LLP loss cfg.loss), backward,
    `grad_sync(model)` (e.g. graph_step.average_gradients where no DDP wrapper does it), gradient clipping, optimiser
    step -> the loss (0-d, detached, on the device). Free of host syncs, so that it can be captured in a CUDA graph."""
    objective = objective or llp_objective(model, cfg)

    def step(batch: dict[str, Tensor]) -> Tensor:
        loss = objective(batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if grad_sync is not None:
            grad_sync(model)
        if cfg.optim.grad_clip > 0:
            nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip)
        optimizer.step()
        return loss.detach()
    return step


def graphed_step(model: nn.Module, optimizer: torch.optim.Optimizer, cfg: TrainConfig,
                 batch_size: Optional[int] = None, objective: Optional[Objective] = None,
                 grad_sync: Optional[Callable[[nn.Module], None]] = None) -> Optional[GraphedStep]:
    """For cfg.compile "cuda-graph": make_step(model, ...) as a GraphedStep (captured on CUDA; eager on static
    buffers elsewhere), for batches of `batch_size` (default cfg.optim.batch_size); None otherwise."""
    if cfg.compile != "cuda-graph":
        return None
    return GraphedStep(make_step(model, optimizer, cfg, objective, grad_sync), batch_size or cfg.optim.batch_size,
                       next(model.parameters()).device, before_capture=lambda: optimizer.zero_grad(set_to_none=True))


def train_epoch(model: nn.Module, optimizer: torch.optim.Optimizer, batches: Iterable[dict[str, Tensor]],
                cfg: TrainConfig, epoch: int, step: Optional[Step] = None) -> float:
    """One epoch (epochs count from 1): set the epoch's learning rate, run `step` (default make_step: eager) on each
    of `batches`; mean loss per video. The loss is summed on the device (float64, the same sum as a host float) and
    read once, at the end of the epoch: no host sync per step."""
    set_lr(optimizer, lr_at_epoch(epoch, cfg.optim))
    device = next(model.parameters()).device
    step = step or make_step(model, optimizer, cfg)
    model.train()
    total = torch.zeros((), dtype=torch.float64 if device.type in ("cpu", "cuda") else torch.float32, device=device)
    count = 0
    for batch in batches:
        loss = step(batch)
        size = len(next(iter(batch.values())))
        total += loss.to(total.dtype) * size
        count += size
    return float(total) / max(count, 1)


# --- inference and evaluation ----------------------------------------------------------------------------------------


def eval_inputs(model: HAN, arrays: AVVPArrays, resident: str = "auto") -> dict[str, Tensor]:
    """The model inputs of `arrays`, placed on the model's device (`place_tensors`); build once, evaluate often."""
    tensors = to_tensors(arrays, TrainConfig(model=model.cfg), targets=False)
    return place_tensors(tensors, next(model.parameters()).device, resident)


@torch.no_grad()
def predict_probs(model: HAN, arrays: Optional[AVVPArrays], batch_size: int = 512,
                  inputs: Optional[dict[str, Tensor]] = None) -> tuple[np.ndarray, np.ndarray]:
    """(segment_prob (N, T, 2, C), global_prob (N, C)) as float32 NumPy arrays, in eval mode. Batches run where the
    inputs are (`inputs` from eval_inputs, else built from `arrays`); the probabilities come back in one transfer."""
    tensors = inputs if inputs is not None else eval_inputs(model, arrays)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    seg, glob = [], []
    for batch in iterate_batches(tensors, batch_size, shuffle=False):
        out = _forward(model, batch, device)
        seg.append(out.segment_prob.float())
        glob.append(out.global_prob.float())
    model.train(was_training)
    return torch.cat(seg).cpu().numpy(), torch.cat(glob).cpu().numpy()


def decide(segment_prob: np.ndarray, global_prob: np.ndarray, threshold: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """The official HAN/VALOR rule: on iff segment prob >= 0.5 AND the video's global (MMIL) prob >= 0.5."""
    on = (segment_prob >= threshold) & (global_prob >= threshold)[:, None, None, :]
    on = on.astype(np.uint8)
    return on[:, :, 0], on[:, :, 1]


def predict(model: HAN, arrays: Optional[AVVPArrays], batch_size: int = 512,
            inputs: Optional[dict[str, Tensor]] = None) -> tuple[np.ndarray, np.ndarray]:
    """(pred_audio, pred_visual), each (N, 10, 25) uint8, by the official rule."""
    return decide(*predict_probs(model, arrays, batch_size, inputs=inputs))


def evaluate_model(model: HAN, arrays: AVVPArrays, batch_size: int = 512, inputs: Optional[dict[str, Tensor]] = None):
    """Official segment- and event-level scores (valor_core.metrics.AVVPScores) on a split with dense GT;
    `inputs`: its model inputs from eval_inputs (or place_tensors(to_tensors(arrays, cfg, targets=False), ...))."""
    if arrays.audio_gt is None or arrays.visual_gt is None:
        raise ValueError("evaluate_model needs dense GT (audio_gt, visual_gt): only val/test splits have it")
    pred_a, pred_v = predict(model, arrays, batch_size, inputs=inputs)
    return evaluate(pred_a, pred_v, arrays.audio_gt, arrays.visual_gt)


def select_value(scores: Any, metric: str) -> float:
    """`segment.type` -> scores.segment["type"]."""
    level, _, key = metric.partition(".")
    table = {"segment": scores.segment, "event": scores.event}.get(level)
    if table is None or key not in table:
        raise ValueError(f"unknown selection metric {metric!r}; use LEVEL.KEY, e.g. segment.type")
    return float(table[key])


# --- the whole loop --------------------------------------------------------------------------------------------------


@dataclass
class FitResult:
    cfg: TrainConfig
    model: HAN  # holds the best state
    best_epoch: int
    best_state: dict[str, Tensor]
    val: Any  # AVVPScores of the best epoch
    test: Any = None  # AVVPScores of the best epoch on test, when given
    history: list[dict[str, Any]] = field(default_factory=list)  # per epoch: epoch, lr, loss, val, seconds
    seconds: float = 0.0
    trainable_params: int = 0


def fit(train: AVVPArrays, val: AVVPArrays, cfg: TrainConfig, test: Optional[AVVPArrays] = None,
        on_epoch: Optional[Callable[[dict[str, Any]], Any]] = None) -> FitResult:
    """Train `cfg` on `train` for cfg.optim.epochs, keep the best val `cfg.select_metric` epoch (ties: the earlier),
    score it on val (and test). `on_epoch(record)` is called after every epoch; returning False stops early.
    history[i]["train_seconds"]: the epoch's training alone (the loss read at its end waits for the device)."""
    start = time.perf_counter()
    device = resolve_device(cfg)
    model = build_model(cfg).to(device)
    optimizer = build_optimizer(model, cfg)
    tensors = place_tensors(to_tensors(train, cfg), device, cfg.resident)
    val_inputs = eval_inputs(model, val, cfg.resident)
    train_model = compile_model(model, cfg)
    step = graphed_step(model, optimizer, cfg)
    generator = torch.Generator().manual_seed(cfg.seed)
    torch.manual_seed(cfg.seed)  # dropout
    best_value, best_epoch, best_state, best_val = -np.inf, 0, None, None
    history = []
    for epoch in range(1, cfg.optim.epochs + 1):
        t0 = time.perf_counter()
        loss = train_epoch(train_model, optimizer, iterate_batches(tensors, cfg.optim.batch_size, generator), cfg,
                           epoch, step)
        train_seconds = time.perf_counter() - t0
        scores = evaluate_model(model, val, inputs=val_inputs)
        value = select_value(scores, cfg.select_metric)
        record = {"epoch": epoch, "lr": lr_at_epoch(epoch, cfg.optim), "loss": loss, "val": scores,
                  "train_seconds": train_seconds, "seconds": time.perf_counter() - t0}
        history.append(record)
        if value > best_value:
            best_value, best_epoch, best_val = value, epoch, scores
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        if on_epoch is not None and on_epoch(record) is False:
            break
    assert best_state is not None, "no epoch ran (cfg.optim.epochs < 1)"
    model.load_state_dict(best_state)
    test_scores = evaluate_model(model, test) if test is not None else None
    return FitResult(cfg=cfg, model=model, best_epoch=best_epoch, best_state=best_state, val=best_val,
                     test=test_scores, history=history, seconds=time.perf_counter() - start,
                     trainable_params=count_trainable(model))
