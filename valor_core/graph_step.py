"""A whole training step (forward, loss, backward, clipping, optimiser step) replayed from one CUDA graph.

At the paper's sizes the HAN's step is hundreds of small kernels, so the eager loop is bound by launching them from
Python, not by the GPU. `GraphedStep` runs a step function on static input buffers: the first `warmup` full-size
batches eagerly (on a side stream on CUDA, as torch.cuda.graph requires), then it captures the step once and every
later full-size batch is one copy into the buffers plus one `graph.replay()`. Batches of another size (the last,
partial batch of an epoch) run eagerly on the same model and optimiser. The optimiser must be capturable with its
learning rate a device tensor (valor_core.fit.build_optimizer does that for TrainConfig.compile "cuda-graph";
fit.set_lr updates it in place). Dropout draws from the CUDA generator's graph-safe Philox offsets: a different
(equally random) stream than the eager loop's.

With several workers the step cannot go through a DistributedDataParallel wrapper (its reducer does host-side
bookkeeping every iteration -- bucket readiness, rebuilt buckets -- that a replayed graph would skip);
`average_gradients` does DDP's averaging inside the step instead: one all-reduce of all gradients, flattened into one
buffer, scaled by 1/world before the sum as DDP's reducer does (bit-identical to DDP on 2 gloo ranks,
tests/test_fit_fast.py). On GPUs the NCCL all-reduce is captured with the rest of the step (NCCL supports graph
capture; the warm-up steps create the communicator first) -- not yet run on a multi-GPU machine here.

Off CUDA there is nothing to capture: the same buffers, warm-up, capture point, replays and eager fallback run, a
"replay" there being a plain call of the step on the buffers -- the path that tests/test_fit_fast.py checks on CPU.
"""
from __future__ import annotations

import warnings
from typing import Any, Callable, Optional

import torch
import torch.distributed as dist
from torch import Tensor, nn

Step = Callable[[dict[str, Tensor]], Tensor]  # batch -> the step's loss (0-d, detached)


class GraphedStep:
    def __init__(self, step: Step, batch_size: int, device: torch.device, warmup: int = 3,
                 before_capture: Optional[Callable[[], None]] = None):
        """`before_capture`: e.g. optimizer.zero_grad(set_to_none=True), so that the captured backward allocates the
        gradients in the graph's memory pool."""
        self.step, self.batch_size, self.device, self.warmup = step, int(batch_size), torch.device(device), warmup
        self.before_capture = before_capture
        self.cuda = self.device.type == "cuda"
        self.static: Optional[dict[str, Tensor]] = None
        self.graph: Any = None  # torch.cuda.CUDAGraph, or _Rerun off CUDA; False once a capture failed
        self.loss: Optional[Tensor] = None  # the captured step's loss, rewritten by every replay
        self.seen = 0  # full-size batches run so far
        self.replays = 0

    def _fill(self, batch: dict[str, Tensor]) -> None:
        if self.static is None:
            self.static = {name: torch.empty_like(t, device=self.device) for name, t in batch.items()}
        for name, t in batch.items():
            self.static[name].copy_(t, non_blocking=True)

    def _eager(self, batch: dict[str, Tensor]) -> Tensor:
        if not self.cuda:
            return self.step(batch)
        side = torch.cuda.Stream(self.device)  # warm-up before a capture: on a side stream (torch.cuda.graph docs)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            loss = self.step(batch)
        torch.cuda.current_stream(self.device).wait_stream(side)
        return loss

    def _capture(self) -> None:
        if self.before_capture is not None:
            self.before_capture()
        if not self.cuda:
            self.graph = _Rerun(self)
            return
        graph = torch.cuda.CUDAGraph()
        try:
            # thread_local: only this thread's CUDA calls must be capture-safe, not those of other threads such as
            # the NCCL watchdog's event queries with several workers (as TransformerEngine captures)
            with torch.cuda.graph(graph, capture_error_mode="thread_local"):
                self.loss = self.step(self.static)
        except RuntimeError as err:  # something in the step syncs with the host: stay eager
            warnings.warn(f"CUDA graph capture of the training step failed, training eagerly: {err}")
            self.graph, self.loss = False, None
            return
        self.graph = graph

    def __call__(self, batch: dict[str, Tensor]) -> Tensor:
        """Run one step on `batch`; returns its loss, valid until the next call."""
        if len(next(iter(batch.values()))) != self.batch_size or (self.static is not None and any(
                self.static[name].shape != t.shape or self.static[name].dtype != t.dtype for name, t in batch.items())):
            return self.step(batch)  # the partial last batch (or a batch unlike the buffers): eagerly
        self._fill(batch)
        self.seen += 1
        if self.seen <= self.warmup or self.graph is False:
            return self._eager(self.static)
        if self.graph is None:
            self._capture()  # records the step without running it ...
            if self.graph is False:
                return self._eager(self.static)
        self.graph.replay()  # ... so the capturing batch is replayed too
        self.replays += 1
        return self.loss


class _Rerun:
    """Off CUDA: a "graph" whose replay calls the step on the static buffers."""

    def __init__(self, owner: GraphedStep):
        self.owner = owner

    def replay(self) -> None:
        self.owner.loss = self.owner.step(self.owner.static)


def average_gradients(world: int) -> Callable[[nn.Module], None]:
    """grad_sync for valor_core.fit.make_step: each gradient replaced by its mean over the `world` ranks of the
    default process group, by one all-reduce of a flat buffer. Parameters without a gradient (unused by the loss:
    the same ones on every rank, e.g. the MMIL heads under the AVE losses) keep none, as DDP leaves globally unused
    ones. Free of host syncs, so it can be captured in a CUDA graph."""
    def sync(model: nn.Module) -> None:
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        flat = torch.cat([g.reshape(-1) for g in grads]).mul_(1.0 / world)  # DDP's reducer: scaled before the sum
        dist.all_reduce(flat)
        for g, mean in zip(grads, flat.split([g.numel() for g in grads])):
            g.copy_(mean.view_as(g))
    return sync
