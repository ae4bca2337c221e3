"""Effective-robustness inputs: saturated accuracies, missing OOD sets, mixed experiment kinds,
records without or with inconsistent counts, near-equal baseline ID accuracies, full-precision
output. Expected values come from scipy's linregress on hand-written logits."""

from __future__ import annotations

import io
import json
import math
import re

import numpy as np
import pandas as pd
import pytest
import yaml
from scipy import stats

from mmclshift.analysis.robustness import (
    MIN_ID_SPREAD,
    SaturationWarning,
    effective_robustness,
    fit_line,
)
from mmclshift.cli import main
from mmclshift.errors import UserError

N = 1000


def logit(p):
    p = np.asarray(p, dtype=float)
    return np.log(p / (1 - p))


def expit(t):
    return 1 / (1 + np.exp(-np.asarray(t, dtype=float)))


def reference_er(base_id, base_ood, ids, oods):
    ref = stats.linregress(logit(base_id), logit(base_ood))
    return ref, np.asarray(oods) - expit(ref.slope * logit(ids) + ref.intercept)


def write_run(path, kind, evals):
    """A completed run: config.yaml, metrics.jsonl with eval records and the done marker."""
    path.mkdir(parents=True)
    (path / "config.yaml").write_text(yaml.safe_dump({"kind": kind, "name": path.name, "seed": 0}))
    (path / "metrics.jsonl").write_text("".join(json.dumps({"event": "eval", **e}) + "\n" for e in evals))
    (path / "done").write_text("{}")


def ev(method, split, correct, n=N, **extra):
    return {"method": method, "split": split, "accuracy": correct / n, "correct": correct, "n": n, **extra}


# (method, ID correct, OOD correct, second OOD correct or None) per run, all out of N
RUNS = [("sl", 600, 300, 250), ("sl", 700, 420, 330), ("sl", 800, 560, 480),
        ("clip", 650, 500, 400), ("clip", 750, 560, None)]


@pytest.fixture()
def runs(tmp_path):
    for i, (m, a, b, c) in enumerate(RUNS):
        evals = [ev(m, "id", a), ev(m, "ood", b)] + ([ev(m, "ood2", c)] if c is not None else [])
        write_run(tmp_path / "runs" / f"r{i}", "k1", evals)
    return tmp_path / "runs"


def run_cli(capsys, *args):
    code = main(["robustness", *map(str, args)])
    out = capsys.readouterr()
    return code, out.out, out.err


# --------------------------------------------------------------------------- saturated accuracies


def test_baseline_at_accuracy_one_is_left_out_with_a_warning():
    ids, oods = [0.6, 0.7, 0.8, 1.0], [0.3, 0.42, 0.56, 0.7]
    ref = stats.linregress(logit(ids[:3]), logit(oods[:3]))
    with pytest.warns(SaturationWarning, match=r"run-d \(ID 1, OOD 0.7\) left out of the fit"):
        fit = fit_line(ids, oods, labels=["a", "b", "c", "run-d"])
    assert fit.slope == pytest.approx(ref.slope, rel=1e-12)
    assert fit.intercept == pytest.approx(ref.intercept, rel=1e-12)
    # clipping (the old behaviour) keeps the point 9.2 logits out: a different, warned line
    clipped = stats.linregress(logit(np.clip(ids, 1e-4, 1 - 1e-4)), logit(oods))
    with pytest.warns(SaturationWarning, match="clipped"):
        old = fit_line(ids, oods, saturated="clip")
    assert old.slope == pytest.approx(clipped.slope, rel=1e-12)
    assert abs(old.slope - fit.slope) > 0.3


def test_model_at_id_one_is_warned_and_read_at_the_clipped_value():
    ids, oods = [0.6, 0.7, 0.8, 1.0], [0.3, 0.42, 0.56, 0.9]
    ref = stats.linregress(logit(ids[:3]), logit(oods[:3]))
    with pytest.warns(SaturationWarning, match="clip-run"):
        er = effective_robustness(ids, oods, [True, True, True, False], n_boot=0,
                                  labels=["a", "b", "c", "clip-run"])
    want = 0.9 - expit(ref.slope * logit(1 - 1e-4) + ref.intercept)
    assert er.er[3] == pytest.approx(want, rel=1e-12)


def test_too_few_points_after_leaving_out_saturated_ones():
    with pytest.warns(SaturationWarning), pytest.raises(UserError, match="after leaving out"):
        fit_line([0.6, 1.0], [0.3, 0.7])


# --------------------------------------------------------------------------- degenerate baselines


@pytest.mark.parametrize("gap", [0.0, 1e-12, 1e-9])
def test_near_equal_baseline_id_accuracies_are_refused(gap):
    with pytest.raises(UserError) as exc:
        fit_line([0.5, 0.5 + gap, 0.5], [0.3, 0.4, 0.35])
    msg = str(exc.value)
    assert "span" in msg and f"{MIN_ID_SPREAD:g}" in msg and "\n" not in msg


def test_spread_just_above_the_tolerance_fits():
    x = [0.5, expit(2 * MIN_ID_SPREAD)]
    assert math.isfinite(fit_line(x, [0.3, 0.4]).slope)


def test_nan_accuracy_names_the_point():
    with pytest.raises(UserError, match=r"run-b has nan"):
        fit_line([0.5, float("nan")], [0.3, 0.4], labels=["run-a", "run-b"])


# --------------------------------------------------------------------------- the CLI


def test_cli_full_precision_csv_keeps_runs_missing_a_set(runs, capsys):
    code, out, err = run_cli(capsys, runs, "--ood", "ood", "--ood", "ood2", "--format", "csv")
    assert code == 0
    table = pd.read_csv(io.StringIO(out)).set_index("run")
    assert len(table) == 5  # the clip run without ood2 is kept
    base = [r for r in RUNS if r[0] == "sl"]
    ids = np.array([r[1] for r in RUNS]) / N
    _, er1 = reference_er([r[1] / N for r in base], [r[2] / N for r in base], ids,
                          np.array([r[2] for r in RUNS]) / N)
    _, er2 = reference_er([r[1] / N for r in base], [r[3] / N for r in base], ids[:4],
                          np.array([r[3] for r in RUNS[:4]]) / N)
    names = [str(runs / f"r{i}") for i in range(5)]
    np.testing.assert_allclose(table.loc[names, "er_ood"], er1, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(table.loc[names[:4], "er_ood2"], er2, rtol=1e-12, atol=1e-15)
    last = table.loc[names[4]]
    assert math.isnan(last["er_ood2"]) and last["missing"] == "ood2" and last["ood_sets"] == 1
    assert last["er_mean"] == pytest.approx(er1[4], rel=1e-12)
    assert table.loc[names[0], "er_mean"] == pytest.approx((er1[0] + er2[0]) / 2, rel=1e-12)
    lo, hi = stats.binomtest(650, N).proportion_ci(method="exact")
    assert table.loc[names[3], "id_ci_lo"] == pytest.approx(lo, abs=1e-10)
    assert table.loc[names[3], "id_ci_hi"] == pytest.approx(hi, abs=1e-10)
    assert f"{names[4]} (clip): no ER for ood2" in err


def test_cli_fits_one_line_per_kind(tmp_path, capsys):
    # kind k2's baselines lie on another line: one line through both kinds would fit neither
    for i, (a, b) in enumerate([(600, 300), (700, 420), (800, 560)]):
        write_run(tmp_path / f"a{i}", "k1", [ev("sl", "id", a), ev("sl", "ood", b)])
    for i, (a, b) in enumerate([(600, 500), (700, 640), (900, 880)]):
        write_run(tmp_path / f"b{i}", "k2", [ev("sl", "id", a), ev("sl", "ood", b)])
    code, out, _ = run_cli(capsys, tmp_path, "--format", "json")
    assert code == 0
    fits = {f["kind"]: f for f in json.loads(out)["fits"]}
    assert set(fits) == {"k1", "k2"}
    for kind, pts in (("k1", [(600, 300), (700, 420), (800, 560)]),
                      ("k2", [(600, 500), (700, 640), (900, 880)])):
        ref = stats.linregress(logit([a / N for a, _ in pts]), logit([b / N for _, b in pts]))
        assert fits[kind]["slope"] == pytest.approx(ref.slope, rel=1e-12)
    code, out, _ = run_cli(capsys, tmp_path, "--format", "json", "--kind", "k2")
    assert [f["kind"] for f in json.loads(out)["fits"]] == ["k2"]


def test_cli_records_without_counts_have_no_interval(tmp_path, capsys):
    for i, (m, a, b, _) in enumerate(RUNS):
        write_run(tmp_path / f"r{i}", "k1", [{"method": m, "split": "id", "accuracy": a / N},
                                             ev(m, "ood", b)])
    code, out, _ = run_cli(capsys, tmp_path, "--format", "json")
    assert code == 0
    data = json.loads(out)
    assert all(r["id_ci_lo"] is None and r["id_ci_hi"] is None for r in data["rows"])
    assert all(r["ood_ci_lo"] is not None for r in data["rows"])
    assert [n.split(" (")[0] for n in data["notes"] if "no correct/n" in n] == [
        f"test set 'id': {len(RUNS)} of {len(RUNS)} records have no correct/n, so no interval"]


def test_cli_accuracy_disagreeing_with_counts_names_the_run(runs, capsys):
    write_run(runs / "bad", "k1", [{**ev("sl", "id", 650), "accuracy": 0.66}, ev("sl", "ood", 400)])
    code, _, err = run_cli(capsys, runs)
    assert code == 2
    line = err.strip()
    assert "\n" not in line and str(runs / "bad") in line and "0.66 disagrees" in line
    assert "650/1000 = 0.65" in line


def test_cli_nan_accuracy_names_the_run(runs, capsys):
    write_run(runs / "nan", "k1", [{**ev("sl", "id", 650), "accuracy": None, "correct": None},
                                   ev("sl", "ood", 400)])
    code, _, err = run_cli(capsys, runs)
    assert code == 2 and str(runs / "nan") in err and "not a number in [0, 1]" in err


def test_cli_near_equal_baselines_refused_in_one_line(tmp_path, capsys):
    for i, b in enumerate([300, 320]):
        write_run(tmp_path / f"s{i}", "k1", [ev("sl", "id", 5000, n=10000), ev("sl", "ood", b)])
    code, _, err = run_cli(capsys, tmp_path)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert re.search(r"id -> ood: the baseline ID accuracies span 0 ", err)


def test_cli_saturated_baseline_is_reported(runs, capsys):
    write_run(runs / "perfect", "k1", [ev("sl", "id", N), ev("sl", "ood", 700)])
    code, out, _ = run_cli(capsys, runs, "--format", "json")
    data = json.loads(out)
    assert code == 0 and data["fits"][0]["baseline_runs"] == 4
    assert any("perfect (sl)" in n and "left out of the fit" in n for n in data["notes"])
    base = [r for r in RUNS if r[0] == "sl"]
    ref = stats.linregress(logit([r[1] / N for r in base]), logit([r[2] / N for r in base]))
    assert data["fits"][0]["slope"] == pytest.approx(ref.slope, rel=1e-12)
