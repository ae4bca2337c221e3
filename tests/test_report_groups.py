"""The report draws each group of runs (one config, every seed) from that group's runs only."""

import re

from mmclshift.analysis.collect import collect
from mmclshift.analysis.report import report_groups, write_report
from mmclshift.runs import RunDir

#: (ID, OOD) accuracy of MMCL at pi_core 0 and 1, per config; distinct so each shows where it is read
ACC = {0.9: {0.0: (0.11, 0.13), 1.0: (0.91, 0.83)},
       0.7: {0.0: (0.17, 0.19), 1.0: (0.97, 0.77)}}
SL = {0.9: (0.95, 0.51), 0.7: (0.93, 0.57)}


def _grid(root, p_color: float) -> None:
    for pc in (0.0, 1.0):
        for ps in (0.0, 1.0):
            run = RunDir.create(root / f"c{p_color}-grid-{pc}-{ps}", {
                "kind": "semisynthetic", "seed": 0, "methods": ["mmcl"],
                "data": {"pi_core": pc, "pi_spu": ps, "p_color": p_color}})
            for split, acc in zip(("id", "ood"), ACC[p_color][pc], strict=True):
                run.log_metrics({"event": "eval", "method": "mmcl", "split": split, "accuracy": acc,
                                 "n": 1000, "correct": round(acc * 1000)})
            run.mark_done()
    run = RunDir.create(root / f"c{p_color}-sl", {
        "kind": "semisynthetic", "seed": 0, "methods": ["sl"],
        "data": {"pi_core": 1.0, "pi_spu": 1.0, "p_color": p_color}})
    for split, acc in zip(("id", "ood"), SL[p_color], strict=True):
        run.log_metrics({"event": "eval", "method": "sl", "split": split, "accuracy": acc,
                         "n": 1000, "correct": round(acc * 1000)})
    run.mark_done()


def _sections(page: str) -> list[str]:
    starts = [m.start() for m in re.finditer(r"<section class='group'", page)]
    return [page[a:page.index("</section>", a)] for a in starts]


def test_two_configs_give_two_groups_each_drawn_from_its_own_runs(tmp_path):
    root = tmp_path / "runs"
    _grid(root, 0.9)
    _grid(root, 0.7)
    groups = report_groups(collect([root]).table)
    assert sorted(g.label["data.p_color"] for g in groups) == [0.7, 0.9]
    assert all(len(set(g.table["run"])) == 5 for g in groups)

    out = write_report([root], tmp_path / "report.html", figures_dir=tmp_path / "figs")
    page = out.read_text()
    sections = _sections(page)
    assert len(sections) == 2
    for sec in sections:
        p_color = float(re.search(r"data\.p_color=([0-9.]+)", sec).group(1))
        other = 0.7 if p_color == 0.9 else 0.9
        # the result tables hold this config's accuracies and runs, none of the other's
        mine = [a for pair in ACC[p_color].values() for a in pair] + list(SL[p_color])
        theirs = [a for pair in ACC[other].values() for a in pair] + list(SL[other])
        for acc in mine:
            assert f"<td>{acc:.4f}</td>" in sec, (p_color, acc)
        for acc in theirs:
            assert f"<td>{acc:.4f}</td>" not in sec, (p_color, acc)
        assert f"c{p_color}-grid-1.0-1.0" in sec and f"c{other}-" not in sec
        # the group's own Figure 2 / 5 (heatmap + curves), under their own anchors
        assert sec.count("data:image/png;base64,") == 4
        assert re.search(r'id="fig-g\d-figure2"', sec)
    # each group's figures were drawn from its own rows: the files differ
    figs = sorted((tmp_path / "figs").glob("group-*/figure2_ood_grid.png"))
    assert len(figs) == 2 and figs[0].read_bytes() != figs[1].read_bytes()
    # the claims tables are per group too, and each claim links into its group's section
    assert page.count("<h3>Group: data.p_color=") == 2
    for i in (1, 2):
        assert f'<a href="#fig-g{i}-figure2">mmcl_beats_sl_ood</a>' in page


def test_one_group_draws_the_page_as_before(tmp_path):
    root = tmp_path / "runs"
    _grid(root, 0.9)
    page = write_report([root], tmp_path / "report.html").read_text()
    assert "<section class='group'" not in page and 'id="fig-figure2"' in page
    assert "<h2>Figures and the claims they test</h2>" in page


def test_kinds_of_one_group_each_draw_the_page_as_before(tmp_path):
    root = tmp_path / "runs"
    _grid(root, 0.9)
    run = RunDir.create(root / "dm1", {"kind": "data_model_1", "seed": 0})
    run.log_metrics({"event": "eval", "method": "mmcl", "split": "ood", "accuracy": 0.8, "n": 100,
                     "correct": 80, "theory": 0.81})
    run.mark_done()
    assert len(report_groups(collect([root]).table)) == 2
    page = write_report([root], tmp_path / "report.html").read_text()
    assert "<section class='group'" not in page and 'id="fig-theory"' in page


def test_grouped_page_fits_a_1400px_window_in_headless_chromium(tmp_path):
    import json
    import os
    import subprocess

    import pytest
    from test_analysis import CHECK_SCRIPT, CHROMIUM_FLAGS, _chromium

    if _chromium() is None:
        if os.environ.get("MMCLSHIFT_REQUIRE_BROWSER"):
            pytest.fail("MMCLSHIFT_REQUIRE_BROWSER is set but chromium is not installed")
        pytest.skip("Debian's chromium is not installed (.ci/run installs it)")
    root = tmp_path / "runs"
    _grid(root, 0.9)
    _grid(root, 0.7)
    out = write_report([root], tmp_path / "report.html")
    probe = tmp_path / "probe.html"
    probe.write_text(out.read_text().replace("<head>", "<head>" + CHECK_SCRIPT, 1))
    dom = subprocess.run([_chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}",
                          "--virtual-time-budget=10000", "--window-size=1400,1000", "--dump-dom",
                          probe.as_uri()], capture_output=True, text=True, timeout=120)
    m = re.search(r'<pre id="__check">(.*?)</pre>', dom.stdout, re.S)
    assert m, f"the check script did not run: {dom.stderr[-2000:]}"
    result = json.loads(m.group(1).replace("&quot;", '"'))
    assert result["images"] == 8 and result["bad"] == [] and result["errors"] == []
    assert result["clientWidth"] <= 1400 and result["scrollWidth"] <= result["clientWidth"], result


def _synthetic(root, kind: str, n_train: int, seed: int, mmcl: float, sl: float) -> None:
    run = RunDir.create(root / f"{kind}-n{n_train}-s{seed}", {"kind": kind, "seed": seed, "n_train": n_train})
    for method, acc in (("mmcl", mmcl), ("sl", sl)):
        run.log_metrics({"event": "eval", "method": method, "split": "ood", "accuracy": acc, "n": 10000,
                         "correct": round(acc * 10000), "theory": acc})
    run.mark_done()


def test_a_second_config_of_one_kind_splits_only_that_kind(tmp_path):
    """Data Model 1 at two n_train (two groups) beside Data Model 2 at one: three blocks; each
    Data Model 1 claim sits in its own group's block and reads only its runs."""
    root = tmp_path / "runs"
    for seed in (0, 1):
        _synthetic(root, "data_model_1", 100, seed, 0.8101 + seed / 100, 0.6101)
        _synthetic(root, "data_model_1", 200, seed, 0.9203 + seed / 100, 0.5203)
        _synthetic(root, "data_model_2", 100, seed, 0.7307 + seed / 100, 0.6307)
    page = write_report([root], tmp_path / "report.html").read_text()
    titles = re.findall(r"<h2>Group (\d): ([^<]*)</h2>", page)
    assert [t for _, t in titles] == ["Data Model 1 (synthetic): n_train=100",
                                      "Data Model 1 (synthetic): n_train=200", "Data Model 2 (synthetic)"]
    sections = _sections(page)
    # each block's theory table holds its runs' accuracies only
    assert "<td>0.8101</td>" in sections[0] and "<td>0.9203</td>" not in sections[0]
    assert "<td>0.9203</td>" in sections[1] and "<td>0.8101</td>" not in sections[1]
    assert "<td>0.7307</td>" in sections[2] and "<td>0.8101</td>" not in sections[2]
    # the gap claim of each Data Model 1 group: MMCL - SL over its own two seeds, beside its figure
    for i, gap in ((0, 0.8151 - 0.6101), (1, 0.9253 - 0.5203)):
        assert re.search(rf"dm1_mmcl_beats_sl_ood <span class='muted'>\[n_train=\d+\]</span>: "
                         rf"\+{gap:.3f}", sections[i]), i
        assert f'<a href="#fig-g{i + 1}-theory">dm1_mmcl_beats_sl_ood</a>' in page
    assert "<h3>Group: all runs of Data Model 2 (synthetic)</h3>" in page


def test_runs_moved_aside_are_in_no_figure_or_table(tmp_path):
    root = tmp_path / "runs"
    _grid(root, 0.9)
    old = RunDir.create(root / "c0.9-grid-1.0-1.0.replaced-20260101T000000Z", {
        "kind": "semisynthetic", "seed": 0, "methods": ["mmcl"],
        "data": {"pi_core": 1.0, "pi_spu": 1.0, "p_color": 0.9}})
    for split, acc in (("id", 0.4321), ("ood", 0.3217)):
        old.log_metrics({"event": "eval", "method": "mmcl", "split": split, "accuracy": acc,
                         "n": 1000, "correct": round(acc * 1000)})
    old.mark_done()
    page = write_report([root], tmp_path / "report.html").read_text()
    assert "<td>0.4321</td>" not in page and "<td>0.3217</td>" not in page
    assert "<td>0.8300</td>" in page  # the run that replaced it
    assert re.search(r"Not read \(moved aside by <code>--force</code>[^<]*</p>", page)
    assert "c0.9-grid-1.0-1.0.replaced-20260101T000000Z" in page.split("Not read (moved aside")[1]
