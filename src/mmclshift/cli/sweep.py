"""Run a sweep (a base config plus grid / random axes) or report its status.

Examples:
  mmclshift sweep run configs/sweeps/dm1_pi_grid.yaml --out runs/sweep1
  mmclshift sweep run SWEEP.yaml --out DIR --launcher processes --workers 4
  mmclshift sweep run SWEEP.yaml --out DIR --launcher ray --address auto
  mmclshift sweep run SWEEP.yaml --out DIR --launcher slurm --partition gpu --gpus 1 --time-min 120
  mmclshift sweep status runs/sweep1

Finished jobs (a `done` marker) are skipped, so rerunning a sweep trains only what is missing.
A job directory holding another config is refused unless --force (moved aside, rerun).
Killing `sweep run` also ends the workers of the processes launcher; `sweep status` then
reports their unfinished jobs as killed.
"""

from __future__ import annotations

import argparse
import collections

from mmclshift.cli.common import add_force_arg, int_at_least
from mmclshift.sweeps.runner import LAUNCHERS, STATES, failure_reasons, run_sweep, status
from mmclshift.sweeps.spec import load_sweep

HELP = "run a sweep of configs (local, processes, ray, slurm) or show its status"


def configure(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    r = sub.add_parser("run", help="run the jobs of a sweep file that are not done yet")
    r.add_argument("sweep", help="sweep YAML file")
    r.add_argument("--out", required=True, help="sweep directory (one subfolder per job)")
    r.add_argument("--launcher", choices=sorted(LAUNCHERS), default="local")
    r.add_argument("--workers", type=int_at_least(1), default=2, help="processes / Ray CPUs")
    r.add_argument("--max-jobs", type=int_at_least(1), default=None, help="run at most this many jobs now")
    r.add_argument("--no-batch", action="store_true",
                   help="local launcher: train every job on its own (no batched trainer)")
    r.add_argument("--address", default=None, help="ray: address of an existing cluster")
    r.add_argument("--executor", default="slurm", help="slurm: submitit cluster (slurm, local, debug)")
    r.add_argument("--partition", default=None, help="slurm: partition")
    r.add_argument("--time-min", type=int_at_least(1), default=60, help="slurm: time limit per job (minutes)")
    r.add_argument("--gpus", type=int_at_least(0), default=0, help="slurm: GPUs per job")
    r.add_argument("--dry-run", action="store_true", help="validate and list the jobs, run nothing")
    add_force_arg(r)
    s = sub.add_parser("status", help="done / running / killed / failed / missing jobs of a sweep "
                       "directory (running: its process is alive)")
    s.add_argument("out", help="sweep directory")


def run(args: argparse.Namespace) -> int:
    if args.action == "status":
        st = status(args.out)
        counts = collections.Counter(st.values())
        reasons = failure_reasons(args.out, [n for n, s in st.items() if s == "failed"])
        for name, state in st.items():
            print(f"{state:8s} {name}" + (f": {reasons[name]}" if name in reasons else ""))
        print(", ".join(f"{k}: {counts.get(k, 0)}" for k in STATES))
        return 0
    jobs = load_sweep(args.sweep)
    if args.dry_run:
        for j in jobs:
            print(j.name)
        print(f"{len(jobs)} jobs")
        return 0
    result = run_sweep(jobs, args.out, launcher=args.launcher, max_jobs=args.max_jobs,
                       workers=args.workers, batched=not args.no_batch, address=args.address,
                       executor=args.executor, partition=args.partition, time_min=args.time_min,
                       gpus=args.gpus, force=args.force)
    print(result.summary())
    for name in result.failed:
        print(f"failed: {name}: {result.reasons.get(name, '?')} (see {args.out}/{name}/error.txt)")
    for name in result.busy:
        print(f"skipped: {name} (another live process is running it)")
    return 1 if result.failed else 0
