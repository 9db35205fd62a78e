"""Time to score all 1,200 LLP test videos with the official metrics (segment + event level, all ten numbers).

    .venv/bin/python bench/metrics.py [--annotations DIR] [--repeat 20]

Predictions: the naive predictor (weak labels on every segment) and a random 0/1 predictor with event-like runs;
the figure is the median wall time of `valor_core.metrics.evaluate` over the repeats (target: < 50 ms).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from valor_core.llp import DEFAULT_ANNOTATIONS, load_split  # noqa: E402
from valor_core.metrics import evaluate  # noqa: E402

DEFAULT_LLP = DEFAULT_ANNOTATIONS  # the LLP files shipped with valor


def timed(fn, repeat: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--annotations", default=DEFAULT_LLP)
    ap.add_argument("--repeat", type=int, default=20)
    args = ap.parse_args()
    test = load_split(args.annotations, "test")
    n = len(test)
    naive = np.repeat(test.weak[:, None, :], 10, axis=1)
    rng = np.random.default_rng(0)
    # random predictions: per class, a smoothed random walk thresholded -> runs of 1s like a real model's output
    noise = rng.random((n, 10, 25)).cumsum(axis=1) % 1.0
    rand_a = ((noise > 0.7) & (rng.random((n, 1, 25)) < 0.3)).astype(np.uint8)
    rand_v = ((noise < 0.25) & (rng.random((n, 1, 25)) < 0.3)).astype(np.uint8)
    results = {}
    for name, (pa, pv) in {"naive": (naive, naive), "random": (rand_a, rand_v)}.items():
        sec = timed(lambda: evaluate(pa, pv, test.audio_gt, test.visual_gt), args.repeat)
        results[name] = sec
        s = evaluate(pa, pv, test.audio_gt, test.visual_gt)
        print(f"{name:7s} predictor: segment Type@AV {s.segment['type']:.2f}, event Type@AV {s.event['type']:.2f}")
    worst = max(results.values())
    print(f"scoring all {n} test videos (segment + event level, 10 numbers): "
          + ", ".join(f"{k} {1000 * v:.1f} ms" for k, v in results.items())
          + f"  (median of {args.repeat}; target < 50 ms: {'OK' if worst < 0.05 else 'MISSED'})")
    print(f"METRICS_BENCH_MS={1000 * worst:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
