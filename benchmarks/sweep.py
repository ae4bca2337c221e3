"""One-at-a-time vs batched training of a synthetic sweep, in one process.

Grid: Data Model 1, pi_core x pi_spu x rho (>= 200 configs) x 5 seeds, both methods (linear MMCL
with full-batch Adam, SL with the regularised logistic loss). Small problems (n_train 1000,
d 16) so the one-at-a-time arm finishes; it is timed on a random subset of jobs and extrapolated
(said in the output). Prints both times, the ratio, the batched program's achieved GFLOP/s against
a plain torch.matmul measured in this process, and whether the per-job results agree.

  PYTHONPATH=src python benchmarks/sweep.py [--subset 20] [--steps 300]
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time
from pathlib import Path

import torch

from mmclshift.sweeps.runner import run_batched
from mmclshift.sweeps.spec import expand


def matmul_gflops(n: int = 1024, reps: int = 20) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.matmul(a, b)
    t = time.perf_counter()
    for _ in range(reps):
        torch.matmul(a, b)
    return 2 * n**3 * reps / (time.perf_counter() - t) / 1e9


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--subset", type=int, default=20, help="one-at-a-time jobs actually timed")
    ap.add_argument("--steps", type=int, default=300)
    args = ap.parse_args()
    sweep = {
        "base": {"kind": "data_model_1", "n_train": 1000, "n_test": 1000, "splits": ["ood"],
                 "data": {"input": {"d_image": 16, "d_text": 16}},
                 "mmcl": {"optim": {"steps": args.steps}}},
        "grid": {"data.pi_core": [0.2, 0.4, 0.6, 0.8, 1.0], "data.pi_spu": [0.0, 0.25, 0.5, 0.75, 1.0],
                 "mmcl.rho": [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0], "seed": "range(5)"},
    }
    jobs = expand(sweep)
    print(f"{len(jobs)} jobs ({len(jobs) // 5} configs x 5 seeds), both methods, n_train 1000, d 16, "
          f"{args.steps} Adam steps, theory off in both arms")
    tmp = Path(tempfile.mkdtemp())

    from mmclshift.experiments.synthetic import run_experiment

    subset = random.Random(0).sample(jobs, args.subset)
    t = time.perf_counter()
    for j in subset:
        run_experiment(j.config, tmp / "single" / j.name, progress=False, theory=False)
    single = (time.perf_counter() - t) / len(subset) * len(jobs)
    print(f"one at a time: {single:.1f} s (extrapolated from {len(subset)} timed jobs)")

    # FLOPs of the batched tensor program: MMCL forward+backward ~ 3 x (2 J p d_I d_T) per step
    # plus the statistics; SL Newton ~ 2 J n q^2 per iteration (upper bound: 50 iterations run
    # only until convergence, so this is counted from the iterations actually needed below).
    t = time.perf_counter()
    status = run_batched(jobs, tmp / "batched", theory=False)
    batched = time.perf_counter() - t
    assert all(s == "done" for s in status.values())
    print(f"batched: {batched:.1f} s  ->  ratio {single / batched:.1f}x")

    # the tensor program alone (training, no per-job evaluation / run-directory writing)
    from mmclshift.experiments.synthetic import prepare_job
    from mmclshift.train import batched as B

    prepared = [prepare_job(j.config) for j in jobs]
    X = torch.stack([p.train.x_image for p in prepared])
    T = torch.stack([p.train.x_text for p in prepared])
    y = torch.stack([p.train.labels for p in prepared])
    J, n, d = X.shape
    p_dim = 1
    t = time.perf_counter()
    stats = B.mmcl_statistics(X, T)
    W0 = 0.01 * torch.randn(J, p_dim, d)
    B.train_mmcl_batched(stats, W0, W0.clone(), torch.ones(J), 0.05, args.steps)
    t_mmcl = time.perf_counter() - t
    t = time.perf_counter()
    B.train_sl_batched(X, y, 2, torch.full((J,), 1e-4))
    t_sl = time.perf_counter() - t
    flops_mmcl = 2 * J * n * d * d + args.steps * 3 * (2 * J * p_dim * d * d)
    q = d + 1
    flops_sl_iter = 2 * J * n * q * q
    print(f"tensor program: MMCL {t_mmcl:.2f} s ({flops_mmcl / t_mmcl / 1e9:.2f} GFLOP/s), "
          f"SL Newton {t_sl:.2f} s (>= {flops_sl_iter / t_sl / 1e9:.2f} GFLOP/s counting one iteration)")
    mm = matmul_gflops()
    print(f"plain torch.matmul 1024x1024: {mm:.1f} GFLOP/s; MMCL program at "
          f"{100 * flops_mmcl / t_mmcl / 1e9 / mm:.1f}% of it")

    # agreement on the timed subset
    from mmclshift.runs import read_metrics

    worst = 0
    for j in subset:
        a = [r["correct"] for r in read_metrics(tmp / "single" / j.name) if r["event"] == "eval"]
        b = [r["correct"] for r in read_metrics(tmp / "batched" / j.name) if r["event"] == "eval"]
        worst = max(worst, max(abs(x - z) for x, z in zip(a, b, strict=True)))
    print(f"agreement on the {len(subset)} timed jobs: largest difference in correct test "
          f"predictions {worst} of {jobs[0].config.n_test}")


if __name__ == "__main__":
    main()
