"""The fast training loop (device-resident arrays, device-side gather, one host sync per epoch, resident evaluation)
computes what the plain loop computed: same batches, per-epoch losses, val scores and best weights for a seed.

`reference_fit` below is the loop as it was before (valor_core/fit.py at 346e904), kept verbatim apart from names;
the small problem is LLP-sim's val split at small feature widths (a few seconds on one thread).
"""
from __future__ import annotations

from typing import Any, Optional

import numpy as np
import pytest
import torch
from torch import nn

from tests.conftest import LLP_DIR

SMALL_SIM = dict(frame_dim=48, clip_dim=32)  # audio stays VGGish-like 128
TRAIN_VIDEOS = 240
EPOCHS = 3


# --- the loop before the change (verbatim) ---------------------------------------------------------------------------


def ref_build_optimizer(model, cfg):
    from valor_core.schedule import lr_at_epoch

    o = cfg.optim
    lr = lr_at_epoch(1, o)
    if o.optimizer == "adamw":
        return torch.optim.AdamW(model.parameters(), lr=lr, betas=tuple(o.betas), weight_decay=o.weight_decay)
    if o.optimizer == "adam":
        return torch.optim.Adam(model.parameters(), lr=lr, betas=tuple(o.betas), weight_decay=o.weight_decay)
    raise ValueError(f"unknown optimizer {o.optimizer!r}; expected adamw or adam")


def ref_iterate_batches(tensors, batch_size, generator=None, shuffle=True):
    n = len(next(iter(tensors.values())))
    order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
    for start in range(0, n, batch_size):
        index = order[start:start + batch_size]
        yield {name: t.index_select(0, index) if shuffle else t[start:start + batch_size] for name, t in tensors.items()}


def ref_forward(model, batch, device):
    def get(name):
        t = batch.get(name)
        return None if t is None else t.to(device, non_blocking=True).float()
    return model(get("audio"), get("frames"), get("clips"))


def ref_train_epoch(model, optimizer, batches, cfg, epoch):
    from valor_core.fit import TARGETS, set_lr
    from valor_core.losses import compute_loss
    from valor_core.schedule import lr_at_epoch

    set_lr(optimizer, lr_at_epoch(epoch, cfg.optim))
    device = next(model.parameters()).device
    model.train()
    total, count = 0.0, 0
    for batch in batches:
        out = ref_forward(model, batch, device)
        targets = {name: batch[name].to(device, non_blocking=True).float() for name in ("weak",) + TARGETS[cfg.loss]}
        loss = compute_loss(cfg.loss, out, targets, cfg.label_smoothing)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.optim.grad_clip > 0:
            nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip)
        optimizer.step()
        size = len(targets["weak"])
        total += float(loss.detach()) * size
        count += size
    return total / max(count, 1)


@torch.no_grad()
def ref_predict_probs(model, arrays, batch_size=512):
    from valor_core.config import TrainConfig
    from valor_core.fit import to_tensors

    cfg = TrainConfig(model=model.cfg)
    tensors = to_tensors(arrays, cfg, targets=False)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    seg, glob = [], []
    for batch in ref_iterate_batches(tensors, batch_size, shuffle=False):
        out = ref_forward(model, batch, device)
        seg.append(out.segment_prob.float().cpu())
        glob.append(out.global_prob.float().cpu())
    model.train(was_training)
    return torch.cat(seg).numpy(), torch.cat(glob).numpy()


def ref_evaluate_model(model, arrays, batch_size=512):
    from valor_core.fit import decide
    from valor_core.metrics import evaluate

    pred_a, pred_v = decide(*ref_predict_probs(model, arrays, batch_size))
    return evaluate(pred_a, pred_v, arrays.audio_gt, arrays.visual_gt)


def reference_fit(train, val, cfg) -> dict[str, Any]:
    from valor_core.fit import build_model, resolve_device, select_value, to_tensors

    device = resolve_device(cfg)
    model = build_model(cfg).to(device)
    optimizer = ref_build_optimizer(model, cfg)
    tensors = to_tensors(train, cfg)
    generator = torch.Generator().manual_seed(cfg.seed)
    torch.manual_seed(cfg.seed)  # dropout
    best_value, best_epoch, best_state, best_val = -np.inf, 0, None, None
    history = []
    for epoch in range(1, cfg.optim.epochs + 1):
        loss = ref_train_epoch(model, optimizer, ref_iterate_batches(tensors, cfg.optim.batch_size, generator), cfg,
                               epoch)
        scores = ref_evaluate_model(model, val)
        value = select_value(scores, cfg.select_metric)
        history.append({"epoch": epoch, "loss": loss, "val": scores})
        if value > best_value:
            best_value, best_epoch, best_val = value, epoch, scores
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    return {"history": history, "best_epoch": best_epoch, "best_state": best_state, "val": best_val}


# --- the small problem -----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def problem():
    from valor_core.fit import configure_threads
    from valor_core.labels import harvest_labels, thresholds_for
    from valor_core.presets import get_preset
    from valor_core.sim import simulate

    configure_threads(1)
    val = simulate(LLP_DIR, seed=0, splits=("val",), **SMALL_SIM)["val"]
    labels = get_preset("valor").labels
    val.audio_labels = harvest_labels(val.clap_logits, val.weak, thresholds_for(labels, "audio"))
    val.visual_labels = harvest_labels(val.clip_logits, val.weak, thresholds_for(labels, "visual"))
    train = val.take(np.arange(TRAIN_VIDEOS))  # training on val videos is fine for an equality test
    return train, val


def small(preset: str, epochs: int = EPOCHS, **extra):
    from valor_core.config import replace
    from valor_core.presets import get_preset, shorten

    cfg = get_preset(preset)
    over = {"model.frame_dim": SMALL_SIM["frame_dim"], "model.clip_dim": SMALL_SIM["clip_dim"],
            "model.frame_steps": 1, "model.hidden": 32, "model.heads": 4, "model.ff": 64,
            "optim.lr_max": cfg.optim.lr_max * 10, "optim.lr_min": cfg.optim.lr_min * 10, "device": "cpu", **extra}
    return shorten(replace(cfg, **over), epochs)


def _assert_same_run(new, ref):
    assert [r["epoch"] for r in new.history] == [r["epoch"] for r in ref["history"]]
    assert [r["loss"] for r in new.history] == pytest.approx([r["loss"] for r in ref["history"]], rel=1e-5)
    for a, b in zip(new.history, ref["history"]):
        assert a["val"].segment == pytest.approx(b["val"].segment, rel=1e-6, abs=1e-9)
        assert a["val"].event == pytest.approx(b["val"].event, rel=1e-6, abs=1e-9)
    assert new.best_epoch == ref["best_epoch"]
    assert new.best_state.keys() == ref["best_state"].keys()
    for k, v in ref["best_state"].items():
        torch.testing.assert_close(new.best_state[k], v, rtol=1e-5, atol=1e-6)


# --- tests -----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("preset", ["valor", "han"])  # AdamW + clipping + warm-up, batch 64 | Adam + StepLR, batch 16
def test_fast_loop_matches_the_plain_loop(problem, preset):
    from valor_core.fit import fit

    train, val = problem
    cfg = small(preset)
    new, ref = fit(train, val, cfg), reference_fit(train, val, cfg)
    _assert_same_run(new, ref)
    assert len(new.history) == EPOCHS and all(r["train_seconds"] > 0 for r in new.history)
    assert new.history[0]["loss"] != new.history[-1]["loss"]  # it trained


def test_resident_path_on_cpu_matches(problem):
    """resident=always runs the branch CUDA takes (arrays moved with .to(device), the epoch's permutation moved to their
    device, gathers there), here with device cpu; never leaves the arrays as they are. Both match the plain loop."""
    from valor_core.fit import fit

    train, val = problem
    ref = reference_fit(train, val, small("valor"))
    for resident in ("always", "never"):
        _assert_same_run(fit(train, val, small("valor", resident=resident)), ref)


def test_place_tensors_decides_by_size_and_free_memory(monkeypatch):
    from valor_core import fit as F

    tensors = {"audio": torch.zeros(10, 4, dtype=torch.float16), "weak": torch.zeros(10, 25, dtype=torch.uint8)}
    assert F.tensor_bytes(tensors) == 10 * 4 * 2 + 10 * 25
    on = F.place_tensors(tensors, torch.device("cpu"), "always")
    assert all(on[k].data_ptr() == tensors[k].data_ptr() for k in tensors)  # already there: no copy on CPU
    assert F.fits_on(torch.device("cpu"), 1 << 60)
    # CUDA: at most half the free memory (mem_get_info faked: no GPU here)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (1000, 8000))
    assert F.fits_on(torch.device("cuda"), 500) and not F.fits_on(torch.device("cuda"), 501)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (100, 8000))
    left = F.place_tensors(tensors, torch.device("cuda"), "auto")  # 290 bytes > 50: stays on the host
    assert all(left[k] is tensors[k] for k in tensors)
    assert all(F.place_tensors(tensors, torch.device("cuda"), "never")[k] is tensors[k] for k in tensors)
    with pytest.raises(ValueError, match="resident"):
        F.place_tensors(tensors, torch.device("cpu"), "yes")


def test_batches_draw_the_same_permutation():
    from valor_core.fit import iterate_batches

    tensors = {"a": torch.arange(23).reshape(23, 1), "b": torch.arange(23) * 2}
    new = list(iterate_batches(tensors, 5, torch.Generator().manual_seed(3)))
    ref = list(ref_iterate_batches(tensors, 5, torch.Generator().manual_seed(3)))
    assert len(new) == len(ref) == 5
    for x, y in zip(new, ref):
        assert all(torch.equal(x[k], y[k]) for k in tensors)
    assert sorted(torch.cat([b["a"][:, 0] for b in new]).tolist()) == list(range(23))


def test_the_loss_is_read_once_per_epoch(problem, monkeypatch):
    """No host sync per step: float() of a tensor happens once per epoch (at its end), however many steps it has."""
    from valor_core.fit import build_model, build_optimizer, iterate_batches, to_tensors, train_epoch

    train, _ = problem
    cfg = small("valor", **{"optim.batch_size": 16})
    model = build_model(cfg)
    optimizer = build_optimizer(model, cfg)
    tensors = to_tensors(train, cfg)
    reads = []
    real = torch.Tensor.__float__
    monkeypatch.setattr(torch.Tensor, "__float__", lambda self: reads.append(1) or real(self))
    loss = train_epoch(model, optimizer, iterate_batches(tensors, 16, torch.Generator().manual_seed(0)), cfg, 1)
    assert len(reads) == 1 and np.isfinite(loss)  # 15 steps, one read


def test_fused_is_chosen_by_device():
    from valor_core.fit import build_model, build_optimizer, use_fused

    model = build_model(small("valor"))
    assert not use_fused(model, small("valor"))  # CPU, auto: torch's default kernels (today's numbers)
    assert use_fused(model, small("valor", fused="always")) and not use_fused(model, small("valor", fused="never"))
    assert build_optimizer(model, small("valor")).defaults.get("fused") in (None, False)
    assert build_optimizer(model, small("han", fused="always")).defaults["fused"] is True
    with pytest.raises(ValueError, match="fused"):
        use_fused(model, small("valor", fused="yes"))


def test_compile_wraps_the_training_module_only():
    """cfg.compile wraps the module trained with (torch.compile is lazy: nothing compiles here); the plain module
    keeps the state (test_compiled_training_matches_eager trains with it)."""
    from valor_core.fit import build_model, compile_model

    model = build_model(small("valor"))
    assert compile_model(model, small("valor")) is model  # eager: the model itself
    wrapped = compile_model(model, small("valor", compile="reduce-overhead"))
    assert wrapped is not model and wrapped._orig_mod is model
    assert all(a is b for a, b in zip(wrapped.parameters(), model.parameters()))
    with pytest.raises(ValueError, match="compile"):
        compile_model(model, small("valor", compile="fast"))


@pytest.mark.integration  # inductor's C++ compile: ~60 s on 2 shared cores
def test_compiled_training_matches_eager(problem, tmp_path, monkeypatch):
    """compile=default: torch.compile (inductor) of the training pass, full batches and the partial last one (a
    second, dynamic-shape graph), gives the eager loop's losses and weights (dropout 0: inductor draws its own)."""
    from valor_core.fit import fit

    import psutil

    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))  # a real compile, not a cache hit
    train, val = problem
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    eager = fit(train, val, small("valor", epochs=2, **{"model.dropout": 0.0}))
    compiled = fit(train, val, small("valor", epochs=2, compile="default", **{"model.dropout": 0.0}))
    assert any((tmp_path / "inductor").rglob("*.py")), "inductor generated no code"
    assert {p.pid for p in psutil.Process().children(recursive=True)} <= before  # no compile workers left behind
    assert [r["loss"] for r in compiled.history] == pytest.approx([r["loss"] for r in eager.history], rel=1e-5)
    for a, b in zip(compiled.history, eager.history):
        assert a["val"].segment == pytest.approx(b["val"].segment, rel=1e-6)
    for k, v in eager.best_state.items():
        if k not in ("fc_frame_att.bias", "fc_av_att.bias"):  # softmax-invariant: gradients of rounding noise only
            torch.testing.assert_close(compiled.best_state[k], v, rtol=1e-4, atol=1e-5)


def test_graphed_step_on_cpu_matches_the_eager_fused_loop(problem, monkeypatch):
    """compile=cuda-graph: the step on static buffers, warm-up, capture point and replays (off CUDA a replay is a call
    of the step on the buffers), a capturable fused optimiser whose lr tensor follows the schedule, the partial last
    batch eagerly -- the same run as the eager loop with the same optimiser, and the same losses as the fused one
    (not the same weights everywhere: the capturable optimiser's float32 bias correction moves the attention biases,
    whose gradients are rounding noise that Adam scales up to lr-sized steps, by up to ~1e-4)."""
    from valor_core import fit as F

    train, val = problem
    fused = F.fit(train, val, small("valor", fused="always"))
    real = F.graphed_step
    monkeypatch.setattr(F, "graphed_step", lambda *a, **k: None)
    ref = F.fit(train, val, small("valor", compile="cuda-graph"))  # the eager loop, the capturable optimiser
    made = []
    monkeypatch.setattr(F, "graphed_step", lambda *a, **k: made.append(real(*a, **k)) or made[-1])
    new = F.fit(train, val, small("valor", compile="cuda-graph"))
    assert [r["loss"] for r in new.history] == [r["loss"] for r in ref.history]
    assert all(torch.equal(new.best_state[k], v) for k, v in ref.best_state.items())
    assert [r["loss"] for r in new.history] == pytest.approx([r["loss"] for r in fused.history], rel=1e-5)
    assert len({r["lr"] for r in new.history}) == EPOCHS  # the warm-up moves the lr every epoch (through the tensor)
    (step,) = made
    full = EPOCHS * (TRAIN_VIDEOS // 64)  # 3 full batches of 64 per epoch, + one of 48 run eagerly
    assert step.seen == full and step.replays == full - step.warmup and step.graph is not None
    opt = F.build_optimizer(new.model, small("valor", compile="cuda-graph"))
    assert isinstance(opt.param_groups[0]["lr"], torch.Tensor) and opt.defaults["capturable"] and opt.defaults["fused"]
    F.set_lr(opt, 0.25)
    assert float(opt.param_groups[0]["lr"]) == 0.25


def test_graphed_step_runs_other_batches_eagerly():
    from valor_core.graph_step import GraphedStep

    calls = []

    def step(batch):
        calls.append(batch["x"].clone())
        return batch["x"].sum()

    g = GraphedStep(step, batch_size=2, device=torch.device("cpu"), warmup=1)
    losses = [float(g({"x": torch.tensor([float(i), 1.0])})) for i in range(4)]
    assert losses == [1.0, 2.0, 3.0, 4.0]  # warm-up, capture + replay, replays: each on its own batch
    assert g.seen == 4 and g.replays == 3
    assert float(g({"x": torch.tensor([5.0])})) == 5.0  # a partial batch: eagerly, not through the buffers
    assert g.static["x"].tolist() == [3.0, 1.0] and g.replays == 3


def _ddp_then_graphed(rank: int, tmp: str) -> None:
    """One rank of test_graphed_step_averages_gradients_as_ddp (spawned): the same two epochs of this rank's batches
    through DistributedDataParallel's eager step, then through the graphed step with average_gradients."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    from valor_core import fit as F
    from valor_core.graph_step import average_gradients

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{tmp}/store", rank=rank, world_size=2)
    cfg = small("valor", compile="cuda-graph")  # the capturable fused optimiser in both runs
    g = torch.Generator().manual_seed(rank)  # each rank its own videos
    n = 6 * 16 + 8  # six full batches of 16, then a partial one
    data = {"audio": torch.randn(n, 10, 128, generator=g),
            "frames": torch.randn(n, 10, SMALL_SIM["frame_dim"], generator=g),
            "clips": torch.randn(n, 10, SMALL_SIM["clip_dim"], generator=g),
            "weak": (torch.rand(n, 25, generator=g) < 0.1).float()}
    for name in ("audio_labels", "visual_labels"):
        data[name] = data["weak"][:, None, :] * (torch.rand(n, 10, 25, generator=g) < 0.5)
    out = {}
    for mode in ("ddp", "graphed"):
        model = F.build_model(cfg)
        optimizer = F.build_optimizer(model, cfg)
        if mode == "ddp":
            step = F.make_step(DistributedDataParallel(model), optimizer, cfg)
        else:
            step = F.graphed_step(model, optimizer, cfg, 16, grad_sync=average_gradients(2))
        torch.manual_seed(100 + rank)  # dropout: the same masks in both runs
        losses = [F.train_epoch(model, optimizer, F.iterate_batches(data, 16, shuffle=False), cfg, epoch, step)
                  for epoch in (1, 2)]
        out[mode] = {"losses": losses, "state": model.state_dict(), "replays": getattr(step, "replays", None)}
    torch.save(out, f"{tmp}/rank{rank}.pt")
    dist.destroy_process_group()


def test_graphed_step_averages_gradients_as_ddp(tmp_path):
    """compile=cuda-graph with several workers: no DDP wrapper, the step all-reduces the gradients itself
    (graph_step.average_gradients). Two gloo ranks on CPU: the same losses and bit-identical weights as DDP's eager
    step, on both ranks, with most steps replays of the captured one."""
    import torch.multiprocessing as mp

    mp.start_processes(_ddp_then_graphed, args=(str(tmp_path),), nprocs=2, start_method="spawn")
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in (0, 1)]
    for out in ranks:
        assert out["graphed"]["losses"] == out["ddp"]["losses"]
        assert all(torch.equal(out["graphed"]["state"][k], v) for k, v in out["ddp"]["state"].items())
        assert out["graphed"]["replays"] == 2 * 6 - 3  # every full batch after the 3 warm-up steps
    assert ranks[0]["graphed"]["losses"] != ranks[1]["graphed"]["losses"]  # different data per rank ...
    assert all(torch.equal(ranks[1]["graphed"]["state"][k], v) for k, v in ranks[0]["graphed"]["state"].items())
