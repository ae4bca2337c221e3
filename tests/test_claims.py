"""Intervals, verdicts and the claims registry, on hand-built runs with hand-computed answers."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from mmclshift.analysis.claims import CLAIMS, evaluate_claim, evaluate_claims
from mmclshift.analysis.collect import collect, grid_rows
from mmclshift.analysis.robustness import fit_line
from mmclshift.analysis.stats import t_interval, verdict
from mmclshift.cli import main
from mmclshift.errors import UserError
from mmclshift.report_text import format_table, format_value
from mmclshift.runs import RunDir

# --------------------------------------------------------------------------- intervals


@settings(max_examples=40, deadline=None)
@given(st.lists(st.floats(-1, 1, allow_nan=False), min_size=2, max_size=12),
       st.sampled_from([0.8, 0.9, 0.95, 0.99]))
def test_t_interval_matches_scipy(values, confidence):
    iv = t_interval(values, confidence)
    x = np.array(values)
    assert iv.mean == pytest.approx(x.mean(), abs=1e-12) and iv.n == len(x)
    assert iv.se == pytest.approx(stats.sem(x), abs=1e-12)
    if stats.sem(x) > 0:
        lo, hi = stats.t.interval(confidence, len(x) - 1, loc=x.mean(), scale=stats.sem(x))
        assert (iv.low, iv.high) == pytest.approx((lo, hi), abs=1e-9)
    else:
        assert iv.low == pytest.approx(iv.high)


def test_t_interval_hand_computed_and_single_seed():
    # values 1, 2, 3: mean 2, sd 1, se 1/sqrt(3), t_{0.975, 2} = 4.302653
    iv = t_interval([1.0, 2.0, 3.0])
    assert iv.mean == 2.0 and iv.se == pytest.approx(1 / math.sqrt(3))
    assert iv.high - 2.0 == pytest.approx(4.302653 / math.sqrt(3), abs=1e-6)
    one = t_interval([0.4])
    assert one.n == 1 and math.isnan(one.low) and math.isnan(one.high) and math.isnan(one.se)
    with pytest.raises(UserError, match="no values"):
        t_interval([])


@pytest.mark.parametrize("low, high, threshold, direction, want", [
    (0.01, 0.20, 0.0, "above", "holds"),
    (-0.01, 0.20, 0.0, "above", "inconclusive"),  # straddles
    (0.0, 0.20, 0.0, "above", "inconclusive"),  # touches the threshold: not strictly above
    (-0.30, -0.01, 0.0, "above", "fails"),
    (0.02, 0.08, 0.10, "below", "holds"),
    (0.05, 0.15, 0.10, "below", "inconclusive"),
    (0.11, 0.40, 0.10, "below", "fails"),
    (math.nan, math.nan, 0.0, "above", "inconclusive"),  # one seed: no interval
])
def test_verdict_hand_computed(low, high, threshold, direction, want):
    assert verdict(low, high, threshold, direction) == want


@settings(max_examples=60, deadline=None)
@given(st.floats(-1, 1), st.floats(0, 1), st.floats(-1, 1), st.sampled_from(["above", "below"]))
def test_a_straddling_interval_is_never_holds(low, width, threshold, direction):
    high = low + width
    v = verdict(low, high, threshold, direction)
    if low <= threshold <= high:
        assert v == "inconclusive"
    else:
        assert v in ("holds", "fails")


def test_values_print_without_spurious_decimals():
    assert format_value(300.0) == "300" and format_value(0.5) == "0.5000" and format_value(float("nan")) == "-"
    assert "300.0000" not in format_table([{"step": 300.0, "accuracy": 0.25}], ["step", "accuracy"])


# --------------------------------------------------------------------------- hand-built runs

SEEDS = (0, 1, 2)
PI_CORE = (0.0, 0.5, 1.0)
PI_SPU = (0.0, 1.0)
SL_OOD = {0: 0.50, 1: 0.52, 2: 0.48}
SL_ID = {0: 0.95, 1: 0.94, 2: 0.96}


def mmcl_ood(pc, ps, seed):
    # pi_core drives accuracy; at pi_core = 0.5 pi_spu costs 0.2 (+ seed jitter), at 1 it costs 0.02
    return round(0.1 + 0.6 * pc - (0.2 if pc == 0.5 else 0.02 * pc) * ps + 0.01 * seed, 4)


def mmcl_id(pc, ps, seed):
    return round(0.1 + 0.85 * pc - 0.01 * ps + 0.005 * seed, 4)


def _run(path, cfg, evals):
    run = RunDir.create(path, {"kind": "semisynthetic", **cfg})
    for method, split, acc in evals:
        n = 1000
        run.log_metrics({"event": "eval", "method": method, "split": split, "accuracy": acc, "n": n,
                         "correct": int(round(acc * n)), "step": cfg.get("train", {}).get("steps", 300)})
    run.mark_done()


def build_grid(root, *, with_sl=True, baselines=True):
    for s in SEEDS:
        for pc in PI_CORE:
            for ps in PI_SPU:
                _run(root / f"mmcl-core{pc:g}-spu{ps:g}-seed{s}",
                     {"seed": s, "methods": ["mmcl"], "data": {"pi_core": pc, "pi_spu": ps}, "train": {"steps": 300}},
                     [("mmcl", "ood", mmcl_ood(pc, ps, s)), ("mmcl", "id", mmcl_id(pc, ps, s))])
        if with_sl:
            _run(root / f"sl-seed{s}", {"seed": s, "methods": ["sl"], "data": {"pi_core": 1.0, "pi_spu": 1.0},
                                        "train": {"steps": 300}},
                 [("sl", "ood", SL_OOD[s]), ("sl", "id", SL_ID[s])])
    if baselines:  # weaker SL models (shorter training): on the ER line, outside the grid
        for steps, (id_acc, ood_acc) in {20: (0.60, 0.25), 60: (0.80, 0.35)}.items():
            _run(root / f"sl-baseline-steps{steps}", {"seed": 0, "methods": ["sl"], "data": {"pi_core": 1.0, "pi_spu": 1.0},
                                                       "train": {"steps": steps}},
                 [("sl", "ood", ood_acc), ("sl", "id", id_acc)])
    return root


@pytest.fixture(scope="module")
def grid(tmp_path_factory):
    return build_grid(tmp_path_factory.mktemp("grid"))


def _t(values):
    x = np.array(values, dtype=float)
    return x.mean(), stats.t.interval(0.95, len(x) - 1, loc=x.mean(), scale=stats.sem(x))


def _bootstrap_line_sd(base_id, base_ood, cells_by_seed, n_boot=1000, seed=0):
    """Independent of the package: resample the baseline points, refit the logit line with
    numpy, recompute the mean over seeds of the mean ER over cells."""
    lg = lambda a: np.log(np.asarray(a) / (1 - np.asarray(a)))  # noqa: E731
    x, y = np.array(base_id), np.array(base_ood)
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n_boot):
        idx = rng.integers(0, len(x), len(x))
        if np.ptp(lg(x[idx])) < 1e-6:
            continue
        slope, intercept = np.polyfit(lg(x[idx]), lg(y[idx]), 1)
        out.append(np.mean([np.mean([o - 1 / (1 + np.exp(-(slope * lg(i) + intercept))) for i, o in cells])
                            for cells in cells_by_seed]))
    return float(np.std(out, ddof=1))


def test_grid_rows_leave_out_baselines(grid):
    g = grid_rows(collect([grid]).table)
    assert set(g[g["method"] == "sl"]["run"].map(lambda r: r.split("/")[-1])) == {"sl-seed0", "sl-seed1", "sl-seed2"}
    assert (g["method"] == "mmcl").sum() == len(SEEDS) * len(PI_CORE) * len(PI_SPU) * 2  # id and ood rows


def test_claims_on_hand_built_grid(grid, tmp_path):
    table = collect([grid]).table
    res = {r.claim: r for r in evaluate_claims(table, relative_to=grid)[0]}

    # mmcl_beats_sl_ood: per seed, mean over pi_spu of MMCL OOD at pi_core = 1, minus SL OOD
    per = [np.mean([mmcl_ood(1.0, ps, s) for ps in PI_SPU]) - SL_OOD[s] for s in SEEDS]
    mean, (lo, hi) = _t(per)
    r = res["mmcl_beats_sl_ood"]
    assert r.statistic == pytest.approx(mean) and (r.ci_low, r.ci_high) == pytest.approx((lo, hi))
    assert r.n_seeds == 3 and r.verdict == ("holds" if lo > 0 else "inconclusive")
    assert r.verdict == "holds"  # 0.69 - 0.5 = 0.19 with little spread

    # pi_spu at pi_core = 0.5: range 0.2 in every seed -> clearly above 0.1 -> fails
    mid = res["pi_spu_minor_mid_core"]
    assert mid.statistic == pytest.approx(0.2) and mid.verdict == "fails"
    # at pi_core = 1 the range is 0.02 -> holds
    top = res["pi_spu_minor"]
    assert top.statistic == pytest.approx(0.02) and top.verdict == "holds"

    # pi_core_dose_response: pi_core 1 vs the smallest pi_core above 0 (0.5), never vs 0
    want = np.mean([mmcl_ood(1.0, ps, 0) for ps in PI_SPU]) - np.mean([mmcl_ood(0.5, ps, 0) for ps in PI_SPU])
    assert res["pi_core_dose_response"].statistic == pytest.approx(want)
    # pi_core_needed: MMCL (mean over pi_spu) beats SL first at pi_core = 1 in every seed
    # (at 0.5: 0.1 + 0.3 - 0.1 + 0.01 s = 0.30 + 0.01 s < SL's 0.48..0.52)
    assert res["pi_core_needed"].per_seed == {0: 1.0, 1: 1.0, 2: 1.0}

    # effective robustness: the line is fitted to all 5 SL runs (grid SL + baselines)
    sl_id = [SL_ID[s] for s in SEEDS] + [0.60, 0.80]
    sl_ood = [SL_OOD[s] for s in SEEDS] + [0.25, 0.35]
    fit = fit_line(sl_id, sl_ood)
    per_er = [np.mean([mmcl_ood(1.0, ps, s) - float(fit.predict(mmcl_id(1.0, ps, s))) for ps in PI_SPU])
              for s in SEEDS]
    er = res["mmcl_effective_robustness"]
    assert er.statistic == pytest.approx(np.mean(per_er), abs=1e-9)
    assert len([r for r in er.runs if "sl-" in r]) == 5
    # the interval adds the line's bootstrap SD to the seed-to-seed SE in quadrature
    se = stats.sem(per_er)
    # (baseline points in the order of their run directories: sl-baseline-steps20, -60, sl-seed0..2)
    assert er.line_sd == pytest.approx(_bootstrap_line_sd(sl_id[3:] + sl_id[:3], sl_ood[3:] + sl_ood[:3], [
        [(mmcl_id(1.0, ps, s), mmcl_ood(1.0, ps, s)) for ps in PI_SPU] for s in SEEDS]), rel=1e-9)
    half = stats.t.ppf(0.975, 2) * math.hypot(se, er.line_sd)
    assert (er.ci_low, er.ci_high) == pytest.approx((er.statistic - half, er.statistic + half))

    # run paths are relative to the folder given, never absolute
    assert all(not r.startswith("/") for c in res.values() for r in c.runs)
    assert "mmcl-core1-spu0-seed0" in res["mmcl_beats_sl_ood"].runs


def test_straddling_claim_is_inconclusive(tmp_path):
    # MMCL beats SL by +0.10, +0.05 and -0.12 over the seeds: interval straddles 0
    for s, gap in zip(SEEDS, (0.10, 0.05, -0.12), strict=True):
        _run(tmp_path / f"m{s}", {"seed": s, "methods": ["mmcl"], "data": {"pi_core": 1.0, "pi_spu": 0.0}},
             [("mmcl", "ood", 0.5 + gap), ("mmcl", "id", 0.9)])
        _run(tmp_path / f"m{s}b", {"seed": s, "methods": ["mmcl"], "data": {"pi_core": 0.0, "pi_spu": 0.0}},
             [("mmcl", "ood", 0.1), ("mmcl", "id", 0.1)])
        _run(tmp_path / f"s{s}", {"seed": s, "methods": ["sl"], "data": {"pi_core": 1.0, "pi_spu": 1.0}},
             [("sl", "ood", 0.5), ("sl", "id", 0.95)])
    r = evaluate_claim(CLAIMS["mmcl_beats_sl_ood"], collect([tmp_path]).table)
    mean, (lo, hi) = _t([0.10, 0.05, -0.12])
    assert r.statistic == pytest.approx(mean) and r.ci_low == pytest.approx(lo) and r.ci_high == pytest.approx(hi)
    assert lo < 0 < hi and r.verdict == "inconclusive"


def test_claims_cli_writes_json(grid, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["claims", str(grid), "--out", str(out)]) == 0
    data = json.loads((out / "claims.json").read_text())
    assert {d["claim"] for d in data} >= {"mmcl_beats_sl_ood", "pi_spu_minor", "pi_core_dose_response",
                                          "mmcl_effective_robustness", "rich_captions_help"}
    for d in data:
        assert set(d) >= {"claim", "paper", "statistic", "ci_low", "ci_high", "n_seeds", "threshold",
                          "verdict", "verdict_unadjusted", "correction", "group", "runs"}
        assert d["correction"] == "holm" and d["group"] == {}
        assert d["verdict"] in ("holds", "fails", "inconclusive") and d["n_seeds"] == 3
    printed = capsys.readouterr()
    assert "mmcl_beats_sl_ood" in printed.out and "verdict" in printed.out
    # the theory-tier claims cannot be computed from these runs: one line each, naming the claim
    lines = [ln for ln in printed.err.splitlines() if ln.startswith("claim ")]
    assert any(ln.startswith("claim dm1_mmcl_beats_sl_ood could not be computed: no data_model_1 runs")
               for ln in lines)


def test_claims_cli_on_no_runs_and_missing_method(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["claims", str(empty)]) == 1
    err = capsys.readouterr().err
    assert err.count("could not be computed") == len(CLAIMS)
    assert json.loads((empty / "claims.json").read_text()) == []

    no_sl = build_grid(tmp_path / "nosl", with_sl=False, baselines=False)
    assert main(["claims", str(no_sl)]) == 0
    err = capsys.readouterr().err
    assert "claim mmcl_beats_sl_ood could not be computed: no semisynthetic grid runs of SL on split 'ood'" in err
    written = {d["claim"] for d in json.loads((no_sl / "claims.json").read_text())}
    assert {"pi_spu_minor", "pi_core_dose_response"} <= written and "mmcl_beats_sl_ood" not in written


def test_train_takes_a_list_of_seeds(tmp_path, capsys):
    out = tmp_path / "dm1"
    config = Path(__file__).resolve().parents[1] / "configs" / "data_model_1.yaml"
    args = ["train", str(config), "n_train=400", "n_test=400", "mmcl.optim.steps=5",
            "--seeds", "0", "1", "--out", str(out), "--no-progress"]
    assert main(args) == 0
    col = collect([out])
    assert sorted(p.name for p in col.runs) == ["seed0", "seed1"] and set(col.table["seed"]) == {0, 1}


# --------------------------------------------------------------------------- multiplicity, equivalence


def test_holm_hand_computed():
    from mmclshift.analysis.stats import holm, holm_verdicts

    # sorted: 0.005 x 4 = 0.02; 0.01 x 3 = 0.03; 0.03 x 2 = 0.06; 0.04 x 1 = 0.04 -> max(0.06, 0.04)
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    # a claim without a p-value (nan) counts as p = 1 in the family and stays nan
    adj = holm([0.01, math.nan])
    assert adj[0] == pytest.approx(0.02) and math.isnan(adj[1])
    v, _ = holm_verdicts(["holds", "holds", "fails", "holds"], [0.01, 0.04, 0.03, 0.005])
    assert v == ["holds", "inconclusive", "inconclusive", "holds"]


@pytest.mark.parametrize("values, want", [
    ([0.01, -0.01, 0.02], "holds"),  # interval well inside +-0.05
    ([0.08, 0.09, 0.10], "fails"),  # wholly above +0.05
    ([-0.09, -0.08, -0.10], "fails"),  # wholly below -0.05
    ([0.0, 0.06, -0.03], "inconclusive"),  # straddles an end of the margin
])
def test_equivalence_hand_computed(values, want):
    from mmclshift.analysis.stats import decision_p_values

    iv = t_interval(values)
    assert verdict(iv.low, iv.high, 0.05, "within") == want
    # two one-sided tests (scipy), each at 2.5%: holds <=> both reject
    p_lo = stats.ttest_1samp(values, -0.05, alternative="greater").pvalue
    p_hi = stats.ttest_1samp(values, 0.05, alternative="less").pvalue
    p_holds, p_fails = decision_p_values(iv, 0.05, "within")
    assert p_holds == pytest.approx(min(1, 2 * max(p_lo, p_hi)))
    assert (want == "holds") == (max(p_lo, p_hi) < 0.025)
    beyond = min(stats.ttest_1samp(values, 0.05, alternative="greater").pvalue,
                 stats.ttest_1samp(values, -0.05, alternative="less").pvalue)
    assert p_fails == pytest.approx(min(1, 2 * beyond))
    assert (want == "fails") == (beyond < 0.025)


def test_grid_verdicts_are_holm_corrected_by_hand(grid):
    res, _ = evaluate_claims(collect([grid]).table, relative_to=grid)
    ps = []
    for r in res:
        x = np.array([r.per_seed[s] for s in sorted(r.per_seed)])
        se = math.hypot(stats.sem(x), r.line_sd)
        if r.direction == "within":
            p_lo = stats.t.sf((x.mean() + r.threshold) / se, len(x) - 1)
            p_hi = stats.t.cdf((x.mean() - r.threshold) / se, len(x) - 1)
            p = 2 * max(p_lo, p_hi) if r.verdict_unadjusted == "holds" else 2 * min(
                stats.t.sf((x.mean() - r.threshold) / se, len(x) - 1),
                stats.t.cdf((x.mean() + r.threshold) / se, len(x) - 1))
        else:
            t = (x.mean() - r.threshold) / se if se > 0 else math.copysign(math.inf, x.mean() - r.threshold)
            upper = (r.direction == "above") == (r.verdict_unadjusted != "fails")
            p = 2 * (stats.t.sf(t, len(x) - 1) if upper else stats.t.cdf(t, len(x) - 1))
        ps.append(min(1.0, p) if r.details.get("baseline_valid", True) else 1.0)
    m = len(ps)
    order = np.argsort(ps)
    adjusted, running = [0.0] * m, 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * ps[i]))
        adjusted[i] = running
    for r, a in zip(res, adjusted, strict=True):
        want = r.verdict_unadjusted if r.verdict_unadjusted != "inconclusive" and a < 0.05 else "inconclusive"
        assert r.verdict == want, r.claim
        assert r.correction == "holm"
    # the equivalence claim on the grid: MMCL minus SL ID is -0.005, +0.01, -0.005 -> inside +-0.05
    eq = {r.claim: r for r in res}["mmcl_id_equivalent"]
    assert eq.per_seed == pytest.approx({0: -0.005, 1: 0.01, 2: -0.005}) and eq.verdict_unadjusted == "holds"


# --------------------------------------------------------------------------- groups


def _dm_run(path, kind, seed, mmcl_ood, sl_ood, **cfg):
    run = RunDir.create(path, {"kind": kind, "seed": seed, **cfg})
    for method, acc in (("mmcl", mmcl_ood), ("sl", sl_ood)):
        run.log_metrics({"event": "eval", "method": method, "split": "ood", "accuracy": acc, "n": 1000,
                         "correct": int(round(acc * 1000))})
    run.mark_done()


def test_claims_never_pool_two_configs(tmp_path, capsys):
    gaps = {10000: (0.20, 0.22, 0.21), 20000: (0.05, 0.04, 0.06)}
    for n, gs in gaps.items():
        for s, gap in enumerate(gs):
            _dm_run(tmp_path / f"n{n}-seed{s}", "data_model_1", s, 0.5 + gap, 0.5, n_train=n)
    res, errors = evaluate_claims(collect([tmp_path]).table, [CLAIMS["dm1_mmcl_beats_sl_ood"]])
    assert not errors and len(res) == 2
    by = {r.group["n_train"]: r for r in res}
    for n, gs in gaps.items():
        assert by[n].statistic == pytest.approx(np.mean(gs)) and by[n].n_seeds == 3
        assert all(f"n{n}-" in r for r in by[n].runs)
    # each group is its own table (and its own Holm family)
    assert main(["claims", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "group: n_train=10000" in out and "group: n_train=20000" in out
    assert main(["claims", str(tmp_path), "--group", "n_train=20000"]) == 0
    data = json.loads((tmp_path / "claims.json").read_text())
    assert [d["group"] for d in data if d["claim"] == "dm1_mmcl_beats_sl_ood"] == [{"n_train": 20000}]
    assert main(["claims", str(tmp_path), "--group", "n_train=5"]) == 2
    assert "no group of runs has that value" in capsys.readouterr().err


def test_another_config_beside_the_grid_leaves_its_claims_unchanged(grid, tmp_path):
    import shutil

    before = {r.claim: r for r in evaluate_claims(collect([grid]).table)[0]}
    mixed = tmp_path / "mixed"
    shutil.copytree(grid, mixed / "grid")
    _run(mixed / "other" / "mmcl-lr", {"seed": 0, "methods": ["mmcl"], "data": {"pi_core": 1.0, "pi_spu": 0.0},
                                       "train": {"steps": 300, "lr": 0.5}},
         [("mmcl", "ood", 0.99), ("mmcl", "id", 0.99)])
    res, _ = evaluate_claims(collect([mixed]).table)
    main_group = [r for r in res if "other/mmcl-lr" not in " ".join(r.runs)]
    assert {r.claim for r in main_group} == set(before)
    for r in main_group:
        assert r.statistic == pytest.approx(before[r.claim].statistic, abs=1e-12), r.claim
        assert r.group == {"train.lr": None}
    assert all(r.group == {"train.lr": 0.5} for r in res if "other/mmcl-lr" in " ".join(r.runs))


def test_runs_moved_aside_are_not_read(tmp_path):
    for s in SEEDS:
        _dm_run(tmp_path / f"seed{s}", "data_model_2", s, 0.7, 0.5)
    _dm_run(tmp_path / "seed0.replaced-20260101T000000Z", "data_model_2", 0, 0.1, 0.9)
    r = evaluate_claim(CLAIMS["dm2_mmcl_beats_sl_ood"], collect([tmp_path]).table)  # reads all
    assert r.per_seed[0] != pytest.approx(0.2)
    res, _ = evaluate_claims(collect([tmp_path]).table, [CLAIMS["dm2_mmcl_beats_sl_ood"]])
    assert res[0].per_seed == pytest.approx({0: 0.2, 1: 0.2, 2: 0.2})
    assert not any("replaced" in run for run in res[0].runs)


# --------------------------------------------------------------------------- effective robustness


def test_er_is_inconclusive_on_a_baseline_of_one_config(tmp_path):
    # only the grid's SL runs: three seeds of one config span only their own noise
    root = build_grid(tmp_path / "g", baselines=False)
    res = {r.claim: r for r in evaluate_claims(collect([root]).table)[0]}
    er = res["mmcl_effective_robustness"]
    assert er.verdict == er.verdict_unadjusted == "inconclusive"
    assert "cannot carry a line" in er.reason and "span 0.020" in er.reason
    assert er.details["baseline_valid"] is False


def test_er_flags_points_beyond_the_baseline(grid):
    er = {r.claim: r for r in evaluate_claims(collect([grid]).table)[0]}["mmcl_effective_robustness"]
    # MMCL ID at pi_core 1: 0.95 - 0.01 pi_spu + 0.005 seed -> 0.95, 0.955, 0.96 (pi_spu 0) inside
    # the SL range [0.60, 0.96]; with pi_spu 1: 0.94..0.95 inside too -> none extrapolated
    assert er.details["extrapolated_points"] == 0 and er.details["points"] == 6
    assert er.details["baseline_valid"] is True and er.details["baseline_runs"] == 5


# --------------------------------------------------------------------------- theory vs trained


def test_theory_worst_row_in_standard_errors(tmp_path):
    # one data model, SL only, 3 seeds: theory 0.8, n = 2500 -> test SE 0.008; population accuracy
    # 0.79, 0.79, 0.79 (no spread -> no estimation error; a finite-n bias of -0.01)
    accs = {0: 0.792, 1: 0.776, 2: 0.800}
    for s, acc in accs.items():
        run = RunDir.create(tmp_path / f"s{s}", {"kind": "data_model_2", "seed": s})
        run.log_metrics({"event": "eval", "method": "sl", "split": "ood", "accuracy": acc, "n": 2500,
                         "correct": int(round(acc * 2500)), "theory": 0.8, "population": 0.79})
        run.mark_done()
    r = evaluate_claim(CLAIMS["theory_worst_row_se"], collect([tmp_path]).table)
    se = math.sqrt(0.8 * 0.2 / 2500)
    assert r.per_seed == pytest.approx({s: abs(a - 0.8) / se for s, a in accs.items()})
    assert "finite-n SL bias" in r.note and "-0.010" in r.note
    assert r.details["population_minus_theory"][0]["bias"] == pytest.approx(-0.01)


def test_intra_class_ablation_theory_reads_each_runs_own_draw(tmp_path):
    from mmclshift.config import replace, to_dict
    from mmclshift.experiments.ablations import intra_class_accuracies
    from mmclshift.experiments.synthetic import DataModel1Experiment

    want = {}
    for s in SEEDS:
        cfg = replace(DataModel1Experiment(), seed=s, n_train=4000, n_test=4000)
        run = RunDir.create(tmp_path / f"dm1-{s}", to_dict(cfg))
        for method in ("mmcl", "sl"):
            run.log_metrics({"event": "eval", "method": method, "split": "ood", "accuracy": 0.7, "n": 4000,
                             "correct": 2800})
        run.mark_done()
        acc = intra_class_accuracies(cfg, "ood")
        want[s] = acc["with"] - acc["without"]
    r = evaluate_claim(CLAIMS["intra_class_ablation_theory"], collect([tmp_path]).table)
    assert r.per_seed == pytest.approx(want, abs=1e-12)
    assert len(set(want.values())) == 3  # each seed its own draw
    assert r.verdict == "holds" and r.details["theory_with"] > r.details["theory_without"]


@pytest.mark.parametrize("offset, want", [(-0.10, "holds"), (+0.10, "fails"), (0.0, "inconclusive")])
def test_intra_class_ablation_semisynthetic(tmp_path, offset, want):
    # the ablation's OOD accuracy is MMCL's plus `offset` plus seed jitter of +-0.01 around it
    root = build_grid(tmp_path / "g", baselines=False)
    jitter = {0: -0.01, 1: 0.0, 2: 0.01}
    for s in SEEDS:
        for ps in PI_SPU:
            _run(root / f"mmcl-no-intra-core1-spu{ps:g}-seed{s}",
                 {"seed": s, "methods": ["mmcl_no_intra"], "data": {"pi_core": 1.0, "pi_spu": ps}, "train": {"steps": 300}},
                 [("mmcl_no_intra", "ood", mmcl_ood(1.0, ps, s) + offset + jitter[s]),
                  ("mmcl_no_intra", "id", 0.9)])
    r = evaluate_claim(CLAIMS["intra_class_ablation_semisynthetic"], collect([root]).table)
    assert r.per_seed == pytest.approx({s: -offset - jitter[s] for s in SEEDS})
    assert r.verdict == want
    assert sum("no-intra" in run for run in r.runs) == len(SEEDS) * len(PI_SPU)


# --------------------------------------------------------------------------- seeds until decided


def test_seeds_needed_hand_computed():
    from mmclshift.analysis.claims import ClaimResult
    from mmclshift.analysis.decide import seeds_needed

    # values 1, 2, 3 against 0: mean 2, sd 1; t_{.975, n-1} / sqrt(n) < 2 first at n = 4
    # (n = 3: 4.303 / 1.732 = 2.48; n = 4: 3.182 / 2 = 1.59)
    r = ClaimResult("c", "", 2.0, -0.48, 4.48, 3, 0.0, "inconclusive", [], per_seed={0: 1.0, 1: 2.0, 2: 3.0},
                    p_value=0.1)
    assert seeds_needed(r) == 4
    # at the Bonferroni level of a table of 5 claims (a = 0.01): t_{.995, n-1} / sqrt(n) < 2 first at n = 6
    assert [n for n in range(2, 10) if stats.t.ppf(0.995, n - 1) / math.sqrt(n) < 2][0] == seeds_needed(r, 5) == 6
    # a line's own uncertainty wider than the distance: no number of seeds decides it
    r.line_sd = 1.5
    assert seeds_needed(r) is None


def test_decide_adds_seeds_and_resumes(tmp_path, capsys):
    root = tmp_path / "dm1"
    config = Path(__file__).resolve().parents[1] / "configs" / "data_model_1.yaml"
    assert main(["train", str(config), "n_train=2000", "n_test=2000", "--seeds", "0", "1", "--out", str(root),
                 "--no-progress"]) == 0
    before = {d["claim"]: d for d in json.loads(json.dumps(
        [r.to_json() for r in evaluate_claims(collect([root]).table)[0]]))}
    assert before["dm1_mmcl_beats_sl_ood"]["n_seeds"] == 2
    assert main(["claims", "--decide", str(root), "--budget", "3", "--no-progress"]) == 0
    after = {d["claim"]: d for d in json.loads((root / "claims.json").read_text())}
    assert after["dm1_mmcl_beats_sl_ood"]["n_seeds"] == 3  # the budget: one seed more
    added = sorted(p.parent.name for p in (root / "decide").rglob("done"))
    assert added == ["run-seed2"]
    # resumable: a second pass at the same budget trains nothing new
    capsys.readouterr()
    assert main(["claims", "--decide", str(root), "--budget", "3", "--no-progress"]) == 0
    assert sorted(p.parent.name for p in (root / "decide").rglob("done")) == added
    assert "adding seeds (none: budget reached)" in capsys.readouterr().err


def test_pi_core_needed_fails_when_little_annotation_suffices(tmp_path):
    # SL's OOD accuracy 0.05: MMCL (0.1 at pi_core 0) beats it at every pi_core -> 0 in every seed
    for s in SEEDS:
        for pc in PI_CORE:
            _run(tmp_path / f"m{pc:g}-{s}", {"seed": s, "methods": ["mmcl"], "data": {"pi_core": pc, "pi_spu": 0.0}},
                 [("mmcl", "ood", mmcl_ood(pc, 0.0, s)), ("mmcl", "id", 0.9)])
        _run(tmp_path / f"s{s}", {"seed": s, "methods": ["sl"], "data": {"pi_core": 1.0, "pi_spu": 1.0}},
             [("sl", "ood", 0.05), ("sl", "id", 0.95)])
    r = evaluate_claim(CLAIMS["pi_core_needed"], collect([tmp_path]).table)
    assert r.per_seed == {0: 0.0, 1: 0.0, 2: 0.0} and r.verdict == "fails"
