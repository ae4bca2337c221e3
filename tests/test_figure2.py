"""The Figure 2 table built from a collected table: hand-computed means over seeds."""

from __future__ import annotations

import math
import statistics

import pandas as pd

from mmclshift.analysis.figure2 import figure2, format_pivot


def _row(method, split, seed, acc, pc=None, ps=None, steps=100):
    return {"run": f"{method}-{pc}-{ps}-{seed}-{steps}", "kind": "semisynthetic", "name": "g", "seed": seed,
            "method": method, "split": split, "accuracy": acc, "data.pi_core": pc, "data.pi_spu": ps,
            "train.steps": steps}


def _table():
    rows = []
    acc = {(0.5, 0.0): (0.25, 0.35), (0.5, 1.0): (0.5, 0.6), (1.0, 0.0): (0.75, 0.85), (1.0, 1.0): (0.125, 0.375)}
    for (pc, ps), (a0, a1) in acc.items():
        rows += [_row("mmcl", "ood", 0, a0, pc, ps), _row("mmcl", "ood", 1, a1, pc, ps),
                 _row("mmcl", "id", 0, 1.0, pc, ps), _row("mmcl", "id", 1, 0.5, pc, ps)]
    rows += [_row("sl", "ood", 0, 0.25), _row("sl", "ood", 1, 0.75), _row("sl", "id", 0, 0.5), _row("sl", "id", 1, 1.0)]
    rows.append(_row("sl", "ood", 0, 0.0, steps=10))  # an SL baseline of another length: not the grid's
    return pd.DataFrame(rows)


def test_figure2_rows_are_means_over_seeds_in_the_given_order():
    fig = figure2(_table(), "ood", pi_core=[1.0, 0.5], pi_spu=[0.0, 1.0])
    assert [(r["pi_core"], r["pi_spu"]) for r in fig.rows] == [(1.0, 0.0), (1.0, 1.0), (0.5, 0.0), (0.5, 1.0)]
    r = fig.rows[1]
    assert math.isclose(r["mmcl_ood"], 0.25) and r["sl_ood"] == 0.5 and math.isclose(r["mmcl-sl"], -0.25)
    assert math.isclose(r["mmcl_ood_se"], statistics.stdev([0.125, 0.375]) / math.sqrt(2))
    assert r["seeds"] == 2 and r["mmcl_id"] == 0.75
    assert fig.sl == {"id": 0.75, "ood": 0.5}
    default = figure2(_table(), "ood")  # axes ascending by default
    assert [(r["pi_core"], r["pi_spu"]) for r in default.rows][0] == (0.5, 0.0)


def test_figure2_text_table_pivot_and_footer():
    fig = figure2(_table(), "ood", pi_core=[0.5, 1.0], pi_spu=[0.0, 1.0])
    text = fig.text("g", 0.9)
    assert text.splitlines()[0] == "Figure 2 (g): ood accuracy of zero-shot MMCL vs SL; spurious strength 0.9, 2 seed(s)"
    assert text.splitlines()[1].split() == ["pi_core", "pi_spu", "mmcl_ood", "sl_ood", "mmcl-sl", "mmcl_id"]
    assert text.endswith("MMCL ood accuracy (rows pi_core, columns pi_spu)\n"
                         "pi_core \\ pi_spu       0       1\n"
                         "             0.5  0.3000  0.5500\n"
                         "               1  0.8000  0.2500\n"
                         "SL ood: 0.5000   SL id: 0.7500")
    assert "mmcl_id" not in figure2(_table(), "id").text("g", 0.9).splitlines()[1].split()[3:]


def test_missing_cell_is_nan_and_pivot_formats_it():
    fig = figure2(_table(), "ood", pi_core=[0.5, 0.75], pi_spu=[0.0])
    assert math.isnan(fig.rows[1]["mmcl_ood"]) and fig.rows[1]["seeds"] == 0
    assert format_pivot(fig.rows, [0.75], [0.0], "mmcl_ood").splitlines()[1].split() == ["0.75", "nan"]
