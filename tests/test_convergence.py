"""Figure 2 statistics over training (mmclshift.analysis.convergence) on hand-made learning curves.

The grid's run directories are real (created from the grid's configs) but their records are
written by hand: MMCL OOD accuracy ``0.1 + 0.6 pi_core`` at pi_spu = 0 and that plus
``r(pi_core, step) + 0.01 seed`` at pi_spu = 1, so every statistic has a closed form: the range
over pi_spu at pi_core is ``r + 0.01 seed`` per seed, pi_core_dose_response (1 vs 0.5, the smallest
pi_core above 0) is ``0.3 + (r(1) - r(0.5)) / 2``, and
MMCL minus SL at pi_core = 1 is ``0.3 + r(1) / 2 - 0.005 seed`` (SL OOD ``0.4 + 0.01 seed``).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from scipy import stats

from mmclshift.analysis.collect import collect
from mmclshift.analysis.convergence import (
    budget_report,
    convergence,
    distance_lines,
    format_convergence,
)
from mmclshift.cli import main
from mmclshift.experiments import load_config
from mmclshift.experiments.semisynthetic import grid_cells
from mmclshift.runs import RunDir

ROOT = Path(__file__).resolve().parents[1]
STEPS = [10, 20, 30, 40]
PLATEAU = {10: 0.4, 20: 0.2, 30: 0.1, 40: 0.1}  # r(0.5, step): settled at step 30
FALLING = {10: 0.4, 20: 0.3, 30: 0.2, 40: 0.1}  # r(1, step): still moving at the end
SEEDS = [0, 1, 2]


def _acc(method: str, split: str, pc: float, ps: float, seed: int, step: int) -> float:
    if method == "sl":
        return 0.9 if split == "id" else 0.4 + 0.01 * seed
    if split == "id":
        return 0.9
    r = {0.0: 0.0, 0.5: PLATEAU[step], 1.0: FALLING[step]}[pc]
    return 0.1 + 0.6 * pc + (r + 0.01 * seed if ps == 1.0 else 0.0)


@pytest.fixture(scope="module")
def grid(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("grid")
    cfg = load_config(ROOT / "configs" / "fig2_smoke.yaml",
                      ["grid.pi_core=[0,0.5,1]", "grid.pi_spu=[0,1]", "grid.seeds=[0,1,2]",
                       "splits=[id,ood]", "train.steps=40", "train.eval_every=10", "train.eval_subset=100"])
    for name, c in grid_cells(cfg):
        run = RunDir.create(out / name, c, seed=c.seed)
        method = c.methods[0]
        for step in STEPS:
            for split in c.splits:
                a = _acc(method, split, c.data.pi_core, c.data.pi_spu, c.seed, step)
                run.log_metrics({"event": "curve", "method": method, "split": split, "step": step,
                                 "accuracy": a, "correct": round(100 * a), "n": 100, "subset": 100})
        for split in c.splits:
            a = _acc(method, split, c.data.pi_core, c.data.pi_spu, c.seed, 40)
            run.log_metrics({"event": "eval", "method": method, "split": split, "accuracy": a,
                             "n": 1000, "correct": round(1000 * a), "step": 40, "theory": None,
                             "pi_core": c.data.pi_core, "pi_spu": c.data.pi_spu, "seed": c.seed})
        run.mark_done({})
    return out


def _t_half(values: list[float]) -> float:
    n = len(values)
    mean = sum(values) / n
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    return stats.t.ppf(0.975, n - 1) * sd / math.sqrt(n)


def test_statistics_at_every_step_match_their_closed_forms(grid):
    conv = convergence([grid])
    assert conv.steps == STEPS and conv.runs == 3 * 6 + 3 and conv.subset == [100]
    by = {c.name: c for c in conv.curves}
    for i, step in enumerate(STEPS):
        assert by["pi_core_dose_response"].points[i].mean == pytest.approx(0.3 + (FALLING[step] - PLATEAU[step]) / 2)
        assert by["mmcl_beats_sl_ood"].points[i].mean == pytest.approx(0.3 + FALLING[step] / 2 - 0.005)
        assert by["mmcl_id_equivalent"].points[i].mean == pytest.approx(0.0)
        for name, r in (("pi_spu_minor", FALLING), ("pi_spu_minor_mid_core", PLATEAU),
                        ("pi_spu_range@core1", FALLING), ("pi_spu_range@core0.5", PLATEAU)):
            p = by[name].points[i]
            values = [r[step] + 0.01 * s for s in SEEDS]
            assert p.mean == pytest.approx(r[step] + 0.01)
            assert p.ci_high - p.mean == pytest.approx(_t_half(values))
        assert by["pi_spu_range@core0"].points[i].mean == pytest.approx(0.01)


def test_settled_stopped_and_drift(grid):
    by = {c.name: c for c in convergence([grid]).curves}
    mid = by["pi_spu_minor_mid_core"]  # 0.41, 0.21, 0.11, 0.11: inside the last interval from step 30
    assert mid.settled_step == 30 and mid.tail_start == 30 and mid.stopped
    assert mid.drift == pytest.approx(0.0)
    top = by["pi_spu_minor"]  # 0.41, 0.31, 0.21, 0.11: only the last point is inside
    assert top.settled_step == 40 and not top.stopped and top.drift == pytest.approx(-0.1)
    # a longer tail (the last half: from step 20) needs the plateau to have begun by step 20
    half = {c.name: c for c in convergence([grid], tail=0.5).curves}
    assert half["pi_spu_minor_mid_core"].tail_start == 20 and not half["pi_spu_minor_mid_core"].stopped
    lines = distance_lines(convergence([grid]))
    assert any(line.startswith("pi_spu_minor: +0.110") and "moved -0.100 since step 30" in line for line in lines)
    assert not any(line.startswith("pi_spu_minor_mid_core") for line in lines)
    text = format_convergence(convergence([grid]))
    assert "pi_spu_range@core0.5" in text and "settled since" in text


def test_cli_prints_and_writes(grid, tmp_path, capsys):
    out = tmp_path / "conv.json"
    assert main(["convergence", str(grid), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "pi_spu_minor_mid_core" in printed and out.is_file()


def test_runs_without_curves_are_refused_in_one_line(tmp_path, capsys):
    cfg = load_config(ROOT / "configs" / "fig2_smoke.yaml", ["grid.pi_core=[1]", "grid.pi_spu=[0]",
                                                             "grid.seeds=[0]", "splits=[ood]"])
    for name, c in grid_cells(cfg):
        run = RunDir.create(tmp_path / name, c, seed=c.seed)
        run.log_metrics({"event": "eval", "method": c.methods[0], "split": "ood", "accuracy": 0.5,
                         "n": 10, "correct": 5, "step": 300, "theory": None})
        run.mark_done({})
    assert main(["convergence", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no learning curves" in err[0]


def test_budget_report_against_a_reference(grid, tmp_path, capsys):
    ref = tmp_path / "ref.json"
    assert main(["convergence", str(grid), "--out", str(ref)]) == 0
    capsys.readouterr()
    # the same runs against themselves: every statistic equal to the reference's last value
    assert main(["convergence", str(grid), "--against", str(ref)]) == 0
    lines = capsys.readouterr().out.splitlines()
    mid = next(line for line in lines if line.strip().startswith("pi_spu_minor_mid_core:"))
    assert "+0.110 here, +0.110 [" in mid and "(+0.000; inside its interval)" in mid
    top = next(line for line in lines if line.strip().startswith("pi_spu_minor:"))
    assert "the reference itself was still moving" in top  # FALLING has not settled
    # a reference whose pi_spu values are a subset: the runs are measured on those values only
    data = json.loads(ref.read_text())
    data["pi_spu"] = [0.0]
    ref.write_text(json.dumps(data))
    text = budget_report(collect([grid]).table, ref)
    assert "pi_spu_range@core1" not in text  # one pi_spu value: no range
    assert "mmcl_beats_sl_ood: +0.290 here" in text  # 0.7 - (0.4 + 0.01 seed) at pi_spu = 0, mean
    # a reference of another setting (here: another spurious strength) is not these runs' reference
    data["setting"]["data.spurious_strength"] = 0.5
    ref.write_text(json.dumps(data))
    assert budget_report(collect([grid]).table, ref) == ""
    assert main(["convergence", str(grid), "--against", str(ref)]) == 2
