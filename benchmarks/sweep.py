"""Batched sweep vs one job at a time, in one process, arms interleaved over repeats.

Grid: Data Model 1, pi_core x pi_spu x rho (200 configs) x 5 seeds = 1000 jobs, both methods
(linear MMCL with full-batch Adam, SL with the regularised logistic loss), n_train 1000, d 16,
theory off in both arms, checkpoints on in both arms. Each arm does the whole job: draw the data,
train both methods, evaluate, write the run directory (config, environment, metrics,
checkpoints, done marker), each with its tier's thread policy (one torch thread).

* batched: :func:`mmclshift.sweeps.runner.run_batched` on all 1000 jobs per repeat; the benchmark
  fails if any chunk fell back to one job at a time;
* one at a time: :func:`mmclshift.experiments.synthetic.run_experiment` on a random subset of
  ``--subset`` jobs per repeat (a different subset each repeat), extrapolated to 1000 jobs (the
  arm would take over an hour on all of them; said in the output).

A warm-up of both arms is excluded; the two arms alternate which goes first. Prints per-job
times (min, median), the ratio per repeat and its min/median, and checks the claim that the two
paths give the same models: for every one-at-a-time job, the test predictions of both paths are
recomputed from their checkpoints and the differing ones counted (with the largest decision
margin among them, relative to the job's median margin: a flip at a point far closer to the
boundary than typical is float rounding). Temporary run directories are removed. Last line: ``ratio: <median>``.

  PYTHONPATH=src python benchmarks/sweep.py [--subset 3] [--repeats 3] [--steps 300]
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import tempfile
import time
from pathlib import Path

import torch

from mmclshift.evaluate.linear import classifier_rule, zero_shot_rule
from mmclshift.experiments.synthetic import prepare_job, run_experiment
from mmclshift.models.linear import LinearClassifier, LinearEncoders
from mmclshift.runs import load_checkpoint
from mmclshift.sweeps.runner import BatchStats, run_batched
from mmclshift.sweeps.spec import expand


def grid(steps: int) -> dict:
    return {
        "base": {"kind": "data_model_1", "n_train": 1000, "n_test": 1000, "splits": ["ood"],
                 "data": {"input": {"d_image": 16, "d_text": 16}},
                 "mmcl": {"optim": {"steps": steps}}},
        "grid": {"data.pi_core": [0.2, 0.4, 0.6, 0.8, 1.0], "data.pi_spu": [0.0, 0.25, 0.5, 0.75, 1.0],
                 "mmcl.rho": [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0], "seed": "range(5)"},
    }


def run_scores(job, run_dir: Path, cache: dict) -> dict[tuple[str, str], torch.Tensor]:
    """Class scores of a finished run's two models on its test sets (from its checkpoints)."""
    prep = prepare_job(job.config, train_cache=cache)
    cfg, d_i, d_t = job.config, prep.train.x_image.shape[1], prep.train.x_text.shape[1]
    enc = LinearEncoders(d_i, d_t, cfg.mmcl.embed_dim, dtype=prep.train.x_image.dtype)
    enc.load_state_dict(load_checkpoint(run_dir / "checkpoints" / "mmcl.pt")["state_dict"])
    clf = LinearClassifier(d_i, prep.model.num_classes, bias=cfg.sl.bias, dtype=prep.train.x_image.dtype)
    clf.load_state_dict(load_checkpoint(run_dir / "checkpoints" / "sl.pt")["state_dict"])
    rules = {"mmcl": zero_shot_rule(enc, prep.sampler.prompt_inputs()), "sl": classifier_rule(clf)}
    return {(m, s): rules[m].scores(prep.test_draw(s).x_image) for m in rules for s in cfg.splits}


def margin(scores: torch.Tensor) -> torch.Tensor:
    """Top-1 minus top-2 score per row, relative to the job's typical margin (the median over its
    test points). Per-row normalisation would not do: with two classes the scores are often
    (s, -s), whose row-relative margin is 2 however close to the boundary the point is."""
    top = scores.topk(2, dim=1).values
    gap = top[:, 0] - top[:, 1]
    return gap / gap.median().clamp_min(1e-30)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--subset", type=int, default=3, help="one-at-a-time jobs timed per repeat")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--steps", type=int, default=300)
    args = ap.parse_args()
    jobs = expand(grid(args.steps))
    n = len(jobs)
    print(f"{n} jobs ({n // 5} configs x 5 seeds), both methods, n_train 1000, d 16, {args.steps} Adam "
          f"steps, theory off and checkpoints on in both arms, torch threads {torch.get_num_threads()} "
          f"outside the runs (the runs use their tier's policy); load {os.getloadavg()[0]:.2f}")
    single_per_job: list[float] = []
    batched_per_job: list[float] = []
    ratios: list[float] = []
    timed: list[tuple[object, Path, Path]] = []
    with tempfile.TemporaryDirectory(prefix="mmclshift-bench-sweep-") as tmp_name:
        tmp = Path(tmp_name)
        # warm-up, excluded: one job each way (imports, allocator, first-call costs)
        run_experiment(jobs[0].config, tmp / "warm-single", progress=False, theory=False)
        run_batched(jobs[:8], tmp / "warm-batched", theory=False)

        for r in range(args.repeats):
            subset = random.Random(r).sample(jobs, args.subset)

            def one_at_a_time(r: int = r, subset: list = subset) -> float:
                t = time.perf_counter()
                for j in subset:
                    run_experiment(j.config, tmp / f"single{r}" / j.name, progress=False, theory=False)
                return (time.perf_counter() - t) / len(subset)

            def batched(r: int = r) -> float:
                stats = BatchStats()
                t = time.perf_counter()
                status = run_batched(jobs, tmp / f"batched{r}", theory=False, stats=stats)
                elapsed = time.perf_counter() - t
                if stats.fallback:
                    raise SystemExit(f"FAIL: {stats.fallback} jobs fell back to one at a time: {stats.errors}")
                bad = [k for k, v in status.items() if v != "done"]
                if bad:
                    raise SystemExit(f"FAIL: {len(bad)} batched jobs failed, e.g. {bad[0]}")
                return elapsed / n

            arms = [("single", one_at_a_time), ("batched", batched)]
            if r % 2:
                arms.reverse()
            got = {name: fn() for name, fn in arms}
            single_per_job.append(got["single"])
            batched_per_job.append(got["batched"])
            ratios.append(got["single"] / got["batched"])
            timed += [(j, tmp / f"single{r}" / j.name, tmp / f"batched{r}" / j.name) for j in subset]
            print(f"repeat {r} ({' then '.join(a for a, _ in arms)}): one at a time {got['single'] * 1e3:.0f} "
                  f"ms/job, batched {got['batched'] * 1e3:.2f} ms/job, ratio {ratios[-1]:.1f}; "
                  f"load {os.getloadavg()[0]:.2f}")

        # the claim that batched and one-at-a-time give the same models, checked on the timed jobs
        differ = total = 0
        worst = 0.0
        correct_diff = 0
        cache: dict = {}
        for job, single_dir, batched_dir in timed:
            a, b = run_scores(job, single_dir, cache), run_scores(job, batched_dir, cache)
            for key, sa in a.items():
                sb = b[key]
                labels = prepare_job(job.config, train_cache=cache).test_draw(key[1]).labels
                pa, pb = sa.argmax(1), sb.argmax(1)
                flips = pa != pb
                differ += int(flips.sum())
                total += len(pa)
                correct_diff = max(correct_diff, abs(int((pa == labels).sum()) - int((pb == labels).sum())))
                if flips.any():
                    worst = max(worst, float(torch.maximum(margin(sa)[flips], margin(sb)[flips]).max()))
    print(f"one at a time: min {min(single_per_job) * 1e3:.0f} ms/job, median "
          f"{statistics.median(single_per_job) * 1e3:.0f} ms/job ({args.subset} timed jobs per repeat, "
          f"x {n} extrapolated: median {statistics.median(single_per_job) * n:.0f} s)")
    print(f"batched: min {min(batched_per_job) * 1e3:.2f} ms/job, median "
          f"{statistics.median(batched_per_job) * 1e3:.2f} ms/job (all {n} jobs per repeat: median "
          f"{statistics.median(batched_per_job) * n:.1f} s)")
    print(f"differing test predictions (batched vs one at a time, {len(timed)} jobs x methods x splits): "
          f"{differ} of {total}; largest top-2 margin among them {worst:.2e} (relative to the job's median margin); largest "
          f"difference in a job's correct count {correct_diff}")
    print(f"ratio per repeat: {' '.join(f'{x:.1f}' for x in ratios)}; min {min(ratios):.1f}, median "
          f"{statistics.median(ratios):.1f}; load {os.getloadavg()[0]:.2f}")
    print(f"ratio: {statistics.median(ratios):.2f}")


if __name__ == "__main__":
    main()
