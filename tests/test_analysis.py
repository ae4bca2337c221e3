"""Effective robustness, collection, figures and the HTML report."""

import json
import math
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from mmclshift.analysis.collect import (
    collect,
    group_over_seeds,
    to_latex,
    to_markdown,
    write_tables,
)
from mmclshift.analysis.report import theory_deviations, write_report
from mmclshift.analysis.robustness import (
    clopper_pearson,
    effective_robustness,
    fit_line,
    fit_multi_id,
    inverse_transform,
    transform,
)
from mmclshift.cli import main
from mmclshift.config import replace
from mmclshift.errors import UserError
from mmclshift.experiments.synthetic import DataModel1Experiment, run_experiment
from mmclshift.runs import RunDir

ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"


def sigmoid(t):
    return 1 / (1 + math.exp(-t))


# --------------------------------------------------------------------------- robustness


def test_hand_computed_effective_robustness():
    # baseline points exactly on logit(ood) = 0.5 logit(id) - 1
    ids = [0.6, 0.75, 0.9]
    oods = [sigmoid(0.5 * math.log(a / (1 - a)) - 1) for a in ids]
    # a model at ID 0.8 with OOD 0.5: the line predicts sigmoid(0.5 logit(0.8) - 1) = sigmoid(-0.30685)
    er = effective_robustness(ids + [0.8], oods + [0.5], [True, True, True, False], n_boot=0)
    assert er.fit.slope == pytest.approx(0.5) and er.fit.intercept == pytest.approx(-1.0)
    assert np.allclose(er.er[:3], 0.0, atol=1e-12)
    want = 0.5 - sigmoid(0.5 * math.log(4) - 1)
    assert er.er[3] == pytest.approx(want, abs=1e-12)
    assert want == pytest.approx(0.5 - 0.42388, abs=1e-4)


@settings(max_examples=30, deadline=None)
@given(st.lists(st.tuples(st.floats(0.05, 0.95), st.floats(0.05, 0.95)), min_size=3, max_size=12),
       st.sampled_from(["logit", "probit", "none"]))
def test_fit_matches_scipy_linregress(points, kind):
    x = np.array([p[0] for p in points])
    y = np.array([p[1] for p in points])
    if np.ptp(x) < 1e-3:
        return
    fwd = {"logit": lambda a: np.log(a / (1 - a)), "probit": stats.norm.ppf, "none": lambda a: a}[kind]
    ref = stats.linregress(fwd(x), fwd(y))
    fit = fit_line(x, y, kind)
    assert fit.slope == pytest.approx(ref.slope, rel=1e-9, abs=1e-9)
    assert fit.intercept == pytest.approx(ref.intercept, rel=1e-9, abs=1e-9)
    er = effective_robustness(x, y, np.ones(len(x), bool), kind=kind, n_boot=0)
    inv = {"logit": lambda t: 1 / (1 + np.exp(-t)), "probit": stats.norm.cdf, "none": lambda t: t}[kind]
    assert np.allclose(er.er, y - inv(ref.slope * fwd(x) + ref.intercept), atol=1e-9)


@pytest.mark.parametrize("k, n", [(0, 10), (3, 10), (10, 10), (517, 1000), (1, 50000)])
def test_clopper_pearson_matches_scipy(k, n):
    lo, hi = clopper_pearson(k, n)
    ref = stats.binomtest(k, n).proportion_ci(method="exact")
    assert float(lo) == pytest.approx(ref.low, abs=1e-10) and float(hi) == pytest.approx(ref.high, abs=1e-10)


def test_transform_round_trip_and_clipping():
    a = np.array([0.0, 0.2, 0.5, 1.0])
    for kind in ("logit", "probit"):
        t = transform(a, kind)
        assert np.all(np.isfinite(t))
        back = inverse_transform(t, kind)
        assert np.allclose(back[1:3], a[1:3]) and back[0] == pytest.approx(1e-4) and back[3] == pytest.approx(1 - 1e-4)


def test_bootstrap_band_contains_the_fit():
    rng = np.random.default_rng(0)
    x = rng.uniform(0.5, 0.95, 12)
    y = inverse_transform(0.8 * transform(x) - 0.5 + rng.normal(0, 0.1, 12))
    er = effective_robustness(x, y, np.ones(12, bool), n_boot=300)
    mid = er.fit.predict(er.band_x)
    assert np.all(er.band_lo <= mid + 1e-9) and np.all(mid <= er.band_hi + 1e-9)
    assert np.all(er.band_hi - er.band_lo > 0)


def test_multi_id_fit_recovers_exact_plane():
    rng = np.random.default_rng(1)
    X = rng.uniform(0.3, 0.95, size=(8, 2))
    y = inverse_transform(transform(X) @ np.array([0.6, 0.3]) - 0.2)
    fit = fit_multi_id(X, y)
    assert np.allclose(fit.coef, [0.6, 0.3]) and fit.intercept == pytest.approx(-0.2)
    assert np.allclose(fit.predict(X), y)


@pytest.mark.parametrize("call, msg", [
    (lambda: fit_line([0.5], [0.4]), "at least 2 baseline points"),
    (lambda: effective_robustness([0.5, 0.6], [0.4], [True, True]), "mismatched lengths"),
    (lambda: fit_line([0.5, 1.2], [0.4, 0.3]), "in [0, 1]"),
    (lambda: fit_multi_id([[0.5, 0.6]], [0.4]), "more baseline points"),
    (lambda: clopper_pearson(5, 3), "0 <= correct <= n"),
])
def test_clear_errors(call, msg):
    with pytest.raises(UserError, match=re.escape(msg)):
        call()


# --------------------------------------------------------------------------- collect


def _fake_run(path, *, seed, evals, done=True, crashed=False, pi=1.0):
    cfg = replace(DataModel1Experiment(), seed=seed, **{"data.pi_core": pi})
    run = RunDir.create(path, cfg, seed=seed)
    for rec in evals:
        run.log_metrics({"event": "eval", **rec})
    if crashed:
        run.mark_failed(RuntimeError("boom"))
    if done:
        run.mark_done()
    return run


def test_collect_reads_only_completed_runs(tmp_path):
    ev = [{"method": "mmcl", "split": "ood", "accuracy": 0.7, "n": 100, "correct": 70, "step": 1},
          {"method": "mmcl", "split": "ood", "accuracy": 0.8, "n": 100, "correct": 80, "step": 2},
          {"method": "sl", "split": "ood", "accuracy": 0.6, "n": 100, "correct": 60, "step": 2}]
    _fake_run(tmp_path / "ok", seed=0, evals=ev)
    _fake_run(tmp_path / "crashed", seed=1, evals=ev[:1], done=False, crashed=True)
    _fake_run(tmp_path / "half", seed=2, evals=ev[:1], done=False)
    with open(tmp_path / "half" / "metrics.jsonl", "a") as fh:
        fh.write('{"event": "eval", "meth')
    col = collect([tmp_path])
    assert [p.name for p in col.runs] == ["ok"]
    assert [p.name for p in col.failed] == ["crashed"] and [p.name for p in col.incomplete] == ["half"]
    assert "collected 1 completed run(s); skipped 2 (1 failed, 1 incomplete)" == col.summary()
    t = col.table
    assert len(t) == 2 and set(t["method"]) == {"mmcl", "sl"}
    assert t[t["method"] == "mmcl"]["accuracy"].item() == 0.8  # the record with the largest step


def test_group_over_seeds_and_writers(tmp_path):
    for seed, acc in enumerate([0.6, 0.7, 0.8]):
        _fake_run(tmp_path / f"s{seed}", seed=seed,
                  evals=[{"method": "sl", "split": "ood", "accuracy": acc, "n": 100, "correct": int(acc * 100)}])
    _fake_run(tmp_path / "p", seed=0, pi=0.5,
              evals=[{"method": "sl", "split": "ood", "accuracy": 0.5, "n": 100, "correct": 50}])
    col = collect([tmp_path])
    assert col.varying == ["data.pi_core"]
    g = group_over_seeds(col.table, col.varying)
    row = g[g["data.pi_core"] == 1.0].iloc[0]
    assert row["mean"] == pytest.approx(0.7) and row["n_seeds"] == 3
    assert row["se"] == pytest.approx(np.std([0.6, 0.7, 0.8], ddof=1) / math.sqrt(3))
    ref = stats.t.interval(0.95, 2, loc=0.7, scale=stats.sem([0.6, 0.7, 0.8]))
    assert (row["ci_low"], row["ci_high"]) == pytest.approx(ref, abs=1e-12)
    single = g[g["data.pi_core"] == 0.5].iloc[0]  # one seed: no interval, never a zero-width one
    assert single["n_seeds"] == 1 and math.isnan(single["ci_low"]) and math.isnan(single["se"])
    # per run: the Clopper-Pearson interval of its counts
    r = col.table[col.table["data.pi_core"] == 0.5].iloc[0]
    cp = stats.binomtest(50, 100).proportion_ci(method="exact")
    assert (r["ci_low"], r["ci_high"]) == pytest.approx((cp.low, cp.high), abs=1e-10)
    paths = write_tables(g, tmp_path / "out" / "t")
    assert [p.suffix for p in paths] == [".csv", ".md", ".tex"] and all(p.is_file() for p in paths)
    assert to_markdown(g).count("\n") == len(g) + 2
    assert r"data.pi\_core" in to_latex(g) and r"\end{tabular}" in to_latex(g)


def test_collect_cli_and_missing_dir(tmp_path, capsys):
    _fake_run(tmp_path / "ok", seed=0, evals=[{"method": "sl", "split": "id", "accuracy": 0.5, "n": 10, "correct": 5}])
    assert main(["collect", str(tmp_path), "-o", str(tmp_path / "res")]) == 0
    assert (tmp_path / "res.csv").is_file()
    # a dotted prefix keeps its tail: k9.3 -> k9.3.csv and k9.3_by_seed.csv, two distinct tables
    assert main(["collect", str(tmp_path / "ok"), "-o", str(tmp_path / "k9.3"), "--by-seed"]) == 0
    main_csv, by_seed_csv = tmp_path / "k9.3.csv", tmp_path / "k9.3_by_seed.csv"
    assert main_csv.is_file() and by_seed_csv.is_file() and not (tmp_path / "k9.csv").exists()
    assert "accuracy" in main_csv.read_text().splitlines()[0]
    assert "n_seeds" in by_seed_csv.read_text().splitlines()[0]
    assert main(["collect", str(tmp_path / "nope")]) == 2
    assert "no such run directory" in capsys.readouterr().err


def test_theory_deviations_flags_beyond_4_se(tmp_path):
    _fake_run(tmp_path / "r", seed=0, evals=[
        {"method": "mmcl", "split": "ood", "accuracy": 0.80, "n": 10000, "correct": 8000, "theory": 0.805},
        {"method": "sl", "split": "ood", "accuracy": 0.60, "n": 10000, "correct": 6000, "theory": 0.65}])
    dev = theory_deviations(collect([tmp_path]).table)
    flags = dict(zip(dev["method"], dev["flagged"], strict=True))
    assert flags == {"mmcl": False, "sl": True}  # 1.25 SE vs 10.5 SE


# --------------------------------------------------------------------------- report in a browser


@pytest.fixture(scope="module")
def report_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    base = {"n_train": 2000, "n_test": 2000, "mmcl.optim.steps": 100}
    for seed in range(3):
        run_experiment(replace(DataModel1Experiment(), seed=seed, **base), root / f"dm1-{seed}", progress=False)
    # a semi-synthetic-shaped grid, so Figures 2 and 5 have data
    for pc in (0.0, 1.0):
        for ps in (0.0, 1.0):
            run = RunDir.create(root / f"grid-{pc}-{ps}", {"kind": "semisynthetic", "seed": 0,
                                                          "data": {"pi_core": pc, "pi_spu": ps}})
            for split, acc in (("id", 0.9 * pc + 0.1), ("ood", 0.7 * pc + 0.1)):
                run.log_metrics({"event": "eval", "method": "mmcl", "split": split, "accuracy": acc,
                                 "n": 1000, "correct": int(acc * 1000)})
            run.mark_done()
    run = RunDir.create(root / "grid-sl", {"kind": "semisynthetic", "seed": 0, "data": {"pi_core": 1.0, "pi_spu": 1.0}})
    for split, acc in (("id", 0.95), ("ood", 0.5)):
        run.log_metrics({"event": "eval", "method": "sl", "split": split, "accuracy": acc, "n": 1000, "correct": int(acc * 1000)})
    run.mark_done()
    return root


def test_report_is_self_contained(report_runs, tmp_path):
    out = write_report([report_runs], tmp_path / "report.html", figures_dir=tmp_path / "figs")
    page = out.read_text()
    assert page.count("data:image/png;base64,") >= 4
    assert not re.search(r"""(src|href)=["'](https?:|//)""", page)
    for text in ("Figure 2", "Figure 5", "Theory vs measurement", "Effective robustness", "What was run"):
        assert text in page
    # findings first, inventory last; claims link to their figure; run paths are relative
    order = [page.index(t) for t in ("Findings: the paper", "Figures and the claims", "What was run")]
    assert order == sorted(order)
    assert '<a href="#fig-theory">theory_worst_row_se</a>' in page and 'id="fig-theory"' in page
    assert str(report_runs) not in page and "300.0000" not in page
    assert {p.name for p in (tmp_path / "figs").iterdir()} >= {
        "figure2_ood_grid.png", "figure2_ood_grid.svg", "figure5_id_grid.png", "theory_vs_measured.svg"}


CHECK_SCRIPT = """<script>
window.__errors = [];
window.addEventListener('error', e => window.__errors.push(String(e.message || e.target && e.target.src)), true);
const origError = console.error;
console.error = function(...a) { window.__errors.push(a.join(' ')); origError.apply(console, a); };
window.addEventListener('load', () => {
  const imgs = Array.from(document.images);
  const bad = imgs.filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.alt);
  const pre = document.createElement('pre');
  pre.id = '__check';
  const maps = Array.from(document.querySelectorAll('.map img')).map(i => i.getBoundingClientRect().width);
  pre.textContent = JSON.stringify({images: imgs.length, bad: bad, errors: window.__errors,
    scrollWidth: document.documentElement.scrollWidth, clientWidth: document.documentElement.clientWidth,
    maps: maps});
  document.body.appendChild(pre);
});
</script>"""

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-quic", "--no-first-run", "--disable-component-update", "--disable-sync"]


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def test_report_renders_in_headless_chromium(report_runs, tmp_path):
    if _chromium() is None:
        if os.environ.get("MMCLSHIFT_REQUIRE_BROWSER"):
            pytest.fail("MMCLSHIFT_REQUIRE_BROWSER is set but chromium is not installed")
        pytest.skip("Debian's chromium is not installed (.ci/run installs it)")
    from mmclshift.analysis.theory_map import theory_map, write_map
    from mmclshift.experiments.synthetic import CONFIG_KINDS

    rows = theory_map(CONFIG_KINDS["data_model_1"](), "data.pi_core", [0.1, 0.5, 1.0], "data.p_spu", [0.55, 0.9])
    write_map(rows, "data.pi_core", "data.p_spu", tmp_path / "dm1-map")
    out = write_report([report_runs], tmp_path / "report.html", maps=[tmp_path / "dm1-map"])
    probe = tmp_path / "probe.html"
    probe.write_text(out.read_text().replace("<head>", "<head>" + CHECK_SCRIPT, 1))
    base = [_chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}"]
    dom = subprocess.run([*base, "--virtual-time-budget=10000", "--window-size=1400,1000", "--dump-dom",
                          probe.as_uri()], capture_output=True, text=True, timeout=120)
    m = re.search(r'<pre id="__check">(.*?)</pre>', dom.stdout, re.S)
    assert m, f"the check script did not run: {dom.stderr[-2000:]}"
    result = json.loads(m.group(1).replace("&quot;", '"'))
    assert result["images"] >= 4 and result["bad"] == [] and result["errors"] == []
    # laid out in a 1,400 px window: nothing wider than the window (wide tables scroll inside
    # their own box), and each of a theory map's three panels at least 400 px wide
    assert result["clientWidth"] <= 1400 and result["scrollWidth"] <= result["clientWidth"], result
    assert result["maps"] and all(w / 3 >= 400 for w in result["maps"]), result["maps"]
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "report.png"
    subprocess.run([*base, f"--screenshot={shot}", "--window-size=1400,2400", out.as_uri()],
                   capture_output=True, text=True, timeout=120)
    assert shot.is_file() and shot.stat().st_size > 10_000


# --------------------------------------------------------------------------- theory maps in the report


def test_report_shows_theory_maps_with_their_numbers(report_runs, tmp_path):
    from mmclshift.analysis.theory_map import theory_map, write_map
    from mmclshift.experiments.synthetic import CONFIG_KINDS

    cfg = CONFIG_KINDS["data_model_1"]()
    rows = theory_map(cfg, "data.pi_core", [0.1, 0.5, 1.0], "data.p_spu", [0.55, 0.9])
    write_map(rows, "data.pi_core", "data.p_spu", tmp_path / "dm1-map")
    # the count of points where MMCL beats SL OOD, straight from the records
    def acc(r, method):
        return next(x["accuracy"] for x in r["records"] if x["method"] == method and x["split"] == "ood")
    wins = sum(acc(r, "mmcl") > acc(r, "sl") for r in rows)
    out = write_report([report_runs], tmp_path / "report.html", maps=[tmp_path / "dm1-map"])
    page = out.read_text()
    assert "Where the claims hold: theory maps" in page
    assert f"MMCL beats SL OOD at {wins} of 6 grid points" in page
    assert 'id="map-dm1-map"' in page
    # the map section sits after the figures and before the inventory of runs
    order = [page.index(t) for t in ("Figures and the claims", "Where the claims hold", "What was run")]
    assert order == sorted(order)


def test_report_default_maps_one_per_data_model_among_the_runs(report_runs, tmp_path):
    out = write_report([report_runs], tmp_path / "report.html", figures_dir=tmp_path / "figs",
                       default_maps=True)
    page = out.read_text()
    # the fixture holds Data Model 1 runs only: one map, for it
    assert 'id="map-data_model_1"' in page and 'id="map-data_model_2"' not in page
    assert (tmp_path / "figs" / "theory-maps" / "data_model_1" / "summary.json").is_file()


def test_report_rejects_a_folder_that_is_not_a_map(report_runs, tmp_path):
    with pytest.raises(UserError, match="not a theory map folder"):
        write_report([report_runs], tmp_path / "report.html", maps=[tmp_path])
    assert not (tmp_path / "report.html").exists()


# --------------------------------------------------------------------------- shifted ImageNets


def test_shift_pairs_pair_each_imagenet_shift_with_its_id_split():
    from mmclshift.analysis.robustness import shift_pairs

    # the Figure 3 configs name ImageNet val "id"; -R and -A have their 200-class ID splits
    assert shift_pairs({"id", "imagenet-v2", "imagenet-sketch", "id_r200", "imagenet-r", "imagenet-a"}) == [
        ("id", "imagenet-a"), ("id_r200", "imagenet-r"), ("id", "imagenet-sketch"), ("id", "imagenet-v2")]
    assert shift_pairs({"imagenet", "id", "objectnet", "id_objectnet"}) == [("id_objectnet", "objectnet")]
    assert shift_pairs({"imagenet", "imagenet-v2"}) == [("imagenet", "imagenet-v2")]
    assert shift_pairs({"id", "ood", "ood_reversed"}) == [("id", "ood"), ("id", "ood_reversed")]
    assert shift_pairs({"imagenet-v2"}) == []  # no ID axis: no pair


def test_real_runs_with_imagenet_val_named_id_get_er_rows_and_a_figure(tmp_path):
    """Runs shaped like configs/fig3a_mscoco.yaml's (ImageNet val is split "id"): the report's ER
    table pairs -v2 with "id", and the real-data ER figure is drawn."""
    from mmclshift.analysis.figures import all_figures
    from mmclshift.analysis.report import er_table

    # SL baselines on a line in logit space, and one CLIP run above it
    points = [("sl", 0.30, 0.20), ("sl", 0.45, 0.33), ("sl", 0.60, 0.47), ("clip", 0.45, 0.45)]
    for i, (method, a_id, a_ood) in enumerate(points):
        # baselines of different strengths (data sizes): seeds of one config would span only noise
        run = RunDir.create(tmp_path / f"r{i}", {"kind": "clip_real", "seed": i, "name": f"r{i}",
                                                 "data": {"n_train": 1000 * (i + 1)}})
        for split, acc in (("id", a_id), ("imagenet-v2", a_ood)):
            run.log_metrics({"event": "eval", "method": method, "split": split, "accuracy": acc,
                             "n": 10000, "correct": int(round(acc * 10000))})
        run.mark_done()
    table = collect([tmp_path]).table
    er = er_table(table)
    assert set(zip(er["id"], er["ood"], strict=True)) == {("id", "imagenet-v2")}
    clip = er[er["method"] == "clip"]["effective_robustness"].iloc[0]
    assert clip > 0.05  # 0.45 observed against about 0.33 predicted at ID 0.45
    figs = all_figures(table, tmp_path / "figs")
    assert "figure3_real:clip_real" in figs
