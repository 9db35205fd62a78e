"""HAN and VALOR on AVE, weakly supervised (VALOR appendix F), in-process (CPU or one GPU).

    cfg = ave_train_config("valor")                 # appendix F: HAN 1 x 512, AdamW (0.5, 0.999) wd 1e-3, warm-up 10
                                                    # -> 3e-4, cosine -> 3e-6, batch 16, 120 epochs, clip 1.0
    train.audio_labels, train.visual_labels = harvest_pair(train, AVEConfig())       # Eq. 12 + background
    result = fit_ave(train, val, cfg, AVEConfig(), test=test)   # best val segment accuracy; its test accuracy

Model: valor_core.han.HAN with C + 1 = 29 classes; its segment head `fc_prob` is the 2-layer FFN of Eq. 10
(Linear(d, h), ReLU, Linear(h, C+1); AVEConfig.head="linear" keeps HAN's Linear). The MMIL attention heads are unused:
appendix F pools by plain averaging (Eq. 11).
Losses: `han`: L_video^ave = BCE(sigmoid(z), y), z = 1/(2T) sum_t sum_m z_t^m (Eq. 11), y the (C+1) video label;
`valor`: L_VALOR^ave = BCE(sigmoid(z_t^a), y_t^a) + BCE(sigmoid(z_t^v), y_t^v) (Eq. 13, mean over (B, T, C+1) as the
AVVP code reduces), on harvested labels y_t^m = y AND (z_t^P > phi^P) (Eq. 12) with background = 1 where no event
survives. Inference and score: valor_core.ave_metrics (combine, segment_accuracy).
Inputs: audio (N, 10, Da) -> the HAN audio stream, visual (N, 10, Dv) -> its frame stream (frame_steps=1, no clips).
The paper's own AVE inputs (CLAP audio; CLIP + R(2+1)D visual) fit the same model with other dims.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from valor_core.ave import AVEArrays
from valor_core.ave_metrics import combine, segment_accuracy
from valor_core.config import AVEConfig, HANConfig, OptimConfig, TrainConfig, replace
from valor_core.fit import (Objective, build_optimizer, compile_model, graphed_step, iterate_batches, make_step,
                            place_tensors, resolve_device, train_epoch)
from valor_core.graph_step import Step
from valor_core.han import HAN, HANOutput, count_trainable
from valor_core.labels import harvest_labels
from valor_core.schedule import lr_at_epoch

__all__ = ["ave_train_config", "build_ave_model", "harvest_ave", "harvest_pair", "ave_video_loss", "ave_valor_loss",
           "predict_logits", "predict_segments", "accuracy", "ave_loss", "ave_tensors", "ave_objective",
           "train_ave_epoch", "fit_ave", "AVEFitResult"]

NUM_CLASSES = 29  # 28 AVE events + background


def ave_train_config(loss: str = "valor", audio_dim: int = 128, visual_dim: int = 512, **overrides: Any) -> TrainConfig:
    """The appendix F training setting for `loss` in {han, valor}; dotted `overrides` as config.replace takes them."""
    if loss not in ("han", "valor"):
        raise ValueError(f"AVE loss must be han or valor, got {loss!r}")
    cfg = TrainConfig(
        preset=f"ave-{loss}",
        model=HANConfig(audio_dim=audio_dim, frame_dim=visual_dim, frame_steps=1, clip_dim=0, num_classes=NUM_CLASSES),
        optim=OptimConfig(optimizer="adamw", lr_max=3e-4, lr_min=3e-6, betas=(0.5, 0.999), weight_decay=1e-3,
                          schedule="warmup_cosine", warmup_epochs=10, epochs=120, batch_size=16, grad_clip=1.0),
        loss=loss, select_metric="accuracy")
    return replace(cfg, **overrides) if overrides else cfg


def build_ave_model(cfg: TrainConfig, ave: AVEConfig = AVEConfig()) -> HAN:
    """A HAN with C + 1 outputs and Eq. 10's 2-layer FFN head; initial weights depend only on cfg.seed."""
    torch.manual_seed(cfg.seed)
    model = HAN(cfg.model)
    if ave.head == "ffn2":
        d = cfg.model.hidden
        h = ave.ffn_hidden or d
        model.fc_prob = nn.Sequential(nn.Linear(d, h), nn.ReLU(), nn.Linear(h, cfg.model.num_classes))  # Eq. 10
    elif ave.head != "linear":
        raise ValueError(f"unknown AVE head {ave.head!r}; expected ffn2 or linear")
    return model


def harvest_ave(logits: np.ndarray, video: np.ndarray, threshold: float) -> np.ndarray:
    """Eq. 12 plus background: (N, T, C) teacher logits, (N, C+1) video labels -> (N, T, C+1) uint8 targets."""
    c = logits.shape[-1]
    if video.shape[-1] != c + 1:
        raise ValueError(f"video labels need C + 1 = {c + 1} columns for {c}-class logits, got {video.shape}")
    events = harvest_labels(logits, video[:, :c], threshold)  # y AND (z > phi), Eq. 12
    background = (events.max(axis=-1, keepdims=True) == 0).astype(np.uint8)
    return np.concatenate([events, background], axis=-1)


def harvest_pair(arrays: AVEArrays, ave: AVEConfig = AVEConfig()) -> tuple[np.ndarray, np.ndarray]:
    """(audio_labels, visual_labels) from the CLAP / CLIP logits of `arrays`."""
    if arrays.clap_logits is None or arrays.clip_logits is None:
        raise ValueError("harvesting AVE labels needs clap_logits and clip_logits")
    return (harvest_ave(arrays.clap_logits, arrays.video, ave.clap_threshold),
            harvest_ave(arrays.clip_logits, arrays.video, ave.clip_threshold))


def ave_video_loss(out: HANOutput, video: Tensor) -> Tensor:
    """Eq. 11: BCE(sigmoid(z), y) with z the mean of the segment logits over time and modality."""
    return F.binary_cross_entropy_with_logits(out.segment_logits.mean(dim=(1, 2)), video)


def ave_valor_loss(out: HANOutput, audio_labels: Tensor, visual_labels: Tensor) -> Tensor:
    """Eq. 13: per-modality segment BCE on the C + 1 logits against the harvested labels."""
    return (F.binary_cross_entropy_with_logits(out.segment_logits[:, :, 0], audio_labels)
            + F.binary_cross_entropy_with_logits(out.segment_logits[:, :, 1], visual_labels))


def ave_tensors(arrays: AVEArrays, loss: Optional[str]) -> dict[str, Tensor]:
    names = ["audio", "visual"] + {"han": ["video"], "valor": ["audio_labels", "visual_labels"], None: []}[loss]
    missing = [n for n in names if getattr(arrays, n) is None]
    if missing:
        raise ValueError(f"AVE loss {loss!r} needs arrays {', '.join(missing)}, which are missing")
    return {n: torch.from_numpy(np.ascontiguousarray(getattr(arrays, n))) for n in names}


def _forward(model: nn.Module, batch: dict[str, Tensor], device: torch.device) -> HANOutput:
    return model(batch["audio"].to(device).float(), batch["visual"].to(device).float())


@torch.no_grad()
def predict_logits(model: HAN, arrays: AVEArrays, batch_size: int = 256) -> np.ndarray:
    """(N, T, 2, C+1) float32 segment logits, in eval mode."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    parts = [_forward(model, b, device).segment_logits.float().cpu()
             for b in iterate_batches(ave_tensors(arrays, None), batch_size, shuffle=False)]
    model.train(was_training)
    return torch.cat(parts).numpy()


def predict_segments(model: HAN, arrays: AVEArrays, ave: AVEConfig = AVEConfig()) -> np.ndarray:
    """(N, T) int64 predicted class per segment (background = C)."""
    return combine(predict_logits(model, arrays), ave.combine)


def accuracy(model: HAN, arrays: AVEArrays, ave: AVEConfig = AVEConfig()) -> float:
    return segment_accuracy(predict_segments(model, arrays, ave), arrays.segments)


def ave_loss(out: HANOutput, batch: dict[str, Tensor], loss: str, device: torch.device) -> Tensor:
    """cfg.loss `han` (Eq. 11 on the video labels) or `valor` (Eq. 13 on the harvested labels) of one batch."""
    if loss == "han":
        return ave_video_loss(out, batch["video"].to(device).float())
    return ave_valor_loss(out, batch["audio_labels"].to(device).float(), batch["visual_labels"].to(device).float())


def ave_objective(model: nn.Module, cfg: TrainConfig) -> Objective:
    """cfg.loss (han: Eq. 11, valor: Eq. 13) of `model` on an AVE batch."""
    device = next(model.parameters()).device
    return lambda batch: ave_loss(_forward(model, batch, device), batch, cfg.loss, device)


def train_ave_epoch(model: nn.Module, optimizer: torch.optim.Optimizer, batches: Iterable[dict[str, Tensor]],
                    cfg: TrainConfig, epoch: int, step: Optional[Step] = None) -> float:
    """One epoch over `batches` at the epoch's learning rate (valor_core.fit.train_epoch: forward, loss, backward,
    clip, step; the loss summed on the device, one host sync per epoch); returns the mean loss per video. `model` may
    be a DDP wrapper (the gradients are then averaged over the ranks); `step`: default the eager make_step."""
    return train_epoch(model, optimizer, batches, cfg, epoch,
                       step or make_step(model, optimizer, cfg, ave_objective(model, cfg)))


@dataclass
class AVEFitResult:
    cfg: TrainConfig
    model: HAN  # holds the best state
    best_epoch: int
    val_accuracy: float
    test_accuracy: Optional[float] = None
    history: list[dict[str, Any]] = field(default_factory=list)  # epoch, lr, loss, val_accuracy, seconds
    seconds: float = 0.0
    trainable_params: int = 0


def fit_ave(train: AVEArrays, val: AVEArrays, cfg: TrainConfig, ave: AVEConfig = AVEConfig(),
            test: Optional[AVEArrays] = None,
            on_epoch: Optional[Callable[[dict[str, Any]], Any]] = None) -> AVEFitResult:
    """Train on `train` (cfg.loss han: Eq. 11 on video labels; valor: Eq. 13 on train.audio_labels/visual_labels),
    keep the epoch with the best val segment accuracy (ties: the earlier), score it on test."""
    start = time.perf_counter()
    device = resolve_device(cfg)
    model = build_ave_model(cfg, ave).to(device)
    optimizer = build_optimizer(model, cfg)
    tensors = place_tensors(ave_tensors(train, cfg.loss), device, cfg.resident)
    objective = ave_objective(compile_model(model, cfg), cfg)  # cfg.compile: torch.compile's wrapper, or the model
    step = graphed_step(model, optimizer, cfg, objective=objective) or make_step(model, optimizer, cfg, objective)
    generator = torch.Generator().manual_seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    best, best_epoch, best_state, history = -1.0, 0, None, []
    for epoch in range(1, cfg.optim.epochs + 1):
        t0 = time.perf_counter()
        loss = train_ave_epoch(model, optimizer, iterate_batches(tensors, cfg.optim.batch_size, generator), cfg,
                               epoch, step)
        value = accuracy(model, val, ave)
        record = {"epoch": epoch, "lr": lr_at_epoch(epoch, cfg.optim), "loss": loss,
                  "val_accuracy": value, "seconds": time.perf_counter() - t0}
        history.append(record)
        if value > best:
            best, best_epoch = value, epoch
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        if on_epoch is not None and on_epoch(record) is False:
            break
    assert best_state is not None, "no epoch ran (cfg.optim.epochs < 1)"
    model.load_state_dict(best_state)
    return AVEFitResult(cfg=cfg, model=model, best_epoch=best_epoch, val_accuracy=best,
                        test_accuracy=accuracy(model, test, ave) if test is not None else None, history=history,
                        seconds=time.perf_counter() - start, trainable_params=count_trainable(model))
