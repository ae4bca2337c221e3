"""imagenet-testbed's baseline shipped with the package, `robustness --table` and `--baseline testbed`.

The reference computation here is written independently of mmclshift: it reads the shipped CSV
files with the csv module and follows the testbed's own recipe (plotting/
paper_appendix_eff_robust.py: OLS with scipy.stats.linregress on logit(acc / 100) over STANDARD
models without aws/batch64/subsample in their names; a piecewise line where a line model scores 0).
"""

from __future__ import annotations

import csv
import json
from importlib import resources

import numpy as np
import pytest
from scipy import stats

from mmclshift.cli import main

DATA = resources.files("mmclshift").joinpath("data_files/imagenet_testbed")
#: our split name -> testbed column (written out here, not imported)
COLS = {"imagenet": "val", "imagenet-v2": "imagenetv2-matched-frequency-format-val",
        "imagenet-sketch": "imagenet-sketch", "imagenet-r": "imagenet-r",
        "imagenet-a": "imagenet-a", "objectnet": "objectnet-1.0-beta",
        "id_r200": "val-on-imagenet-r-classes", "id_a200": "val-on-imagenet-a-classes",
        "id_objectnet": "val-on-objectnet-classes"}
AXES = {"imagenet-v2": "val", "imagenet-sketch": "val", "imagenet-r": "val-on-imagenet-r-classes",
        "imagenet-a": "val-on-imagenet-a-classes", "objectnet": "val-on-objectnet-classes"}
CLIP = ["vit_b_32_clip_zeroshot", "resnet50_clip_zeroshot"]


def _rows() -> dict[str, dict[str, str]]:
    with DATA.joinpath("robustness_top1s.csv").open(encoding="utf-8") as fh:
        return {r["model"]: r for r in csv.DictReader(fh)}


def _types() -> dict[str, str]:
    with DATA.joinpath("model_types.csv").open(encoding="utf-8") as fh:
        return {r["model"]: r["model_type"] for r in csv.DictReader(fh)}


def _logit(pct):
    p = np.asarray(pct, dtype=float) / 100
    return np.log(p / (1 - p))


def reference_er(x_col: str, y_col: str, model: str) -> float:
    """The testbed's effective robustness of ``model`` (a fraction), computed from scratch."""
    rows, types = _rows(), _types()
    line = [m for m, r in rows.items()
            if types[m] == "STANDARD" and not any(s in m.lower() for s in ("aws", "batch64", "subsample"))
            and r[x_col] and r[y_col]]
    x = np.array([float(rows[m][x_col]) for m in line])
    y = np.array([float(rows[m][y_col]) for m in line])
    mx = float(rows[model][x_col])
    if (y == 0).any():  # piecewise at the zero model's x (the testbed's format_eff_robust)
        pivot = x[y == 0][0]
        keep = x < pivot if mx <= pivot else x > pivot
        x, y = x[keep], y[keep]
    fit = stats.linregress(_logit(x), _logit(y))
    pred = 100 / (1 + np.exp(-(fit.slope * _logit(mx) + fit.intercept)))
    return (float(rows[model][y_col]) - pred) / 100


def _write_table(path, models):
    rows = _rows()
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["model", *COLS])
        for m in models:
            w.writerow([m, *(repr(float(rows[m][c]) / 100) for c in COLS.values())])
    return path


def _json(capsys, argv):
    assert main(argv) == 0
    return json.loads(capsys.readouterr().out)


def test_shipped_table_shape():
    rows, types = _rows(), _types()
    assert len(rows) == 338 and set(rows) == set(types)
    line = [m for m in rows if types[m] == "STANDARD"
            and not any(s in m.lower() for s in ("aws", "batch64", "subsample"))]
    assert len(line) == 85
    assert [types[m] for m in CLIP] == ["MORE_DATA", "MORE_DATA"]
    assert float(rows["vit_b_32_clip_zeroshot"]["val"]) == pytest.approx(63.302, abs=1e-3)
    assert "MIT License" in DATA.joinpath("LICENSE").read_text(encoding="utf-8")
    assert "0170eec658d664289d9f61de8f90f967f49abca0" in DATA.joinpath("README.md").read_text(
        encoding="utf-8")


def test_clip_rows_match_the_testbed_method(tmp_path, capsys):
    """`robustness --table` on the testbed's CLIP rows with `--baseline testbed` gives the
    testbed method's ER for V2, Sketch, R, ObjectNet (and the piecewise ImageNet-A)."""
    table = _write_table(tmp_path / "clip.csv", CLIP)
    out = _json(capsys, ["robustness", "--table", str(table), "--baseline", "testbed",
                         "--format", "json"])
    by_model = {r["run"]: r for r in out["rows"]}
    assert set(by_model) == set(CLIP)
    for model in CLIP:
        for ood in ("imagenet-v2", "imagenet-sketch", "imagenet-r", "objectnet", "imagenet-a"):
            want = reference_er(AXES[ood], COLS[ood], model)
            assert by_model[model][f"er_{ood}"] == pytest.approx(want, abs=1e-12), (model, ood)
        assert by_model[model]["ood_sets"] == 5
    # CLIP zero-shot sits well above the standard models' line on every shift
    assert all(by_model[m][f"er_{o}"] > 0.04 for m in CLIP for o in AXES)
    pieces = [f for f in out["fits"] if f["ood"] == "imagenet-a"]
    assert [f["baseline_runs"] for f in pieces] == [33, 51]  # 85 minus ResNet-50 at 0%
    assert pieces[0]["pivot"] == pytest.approx(0.9186, abs=1e-4)
    counts = {f["ood"]: f["baseline_runs"] for f in out["fits"] if f["ood"] != "imagenet-a"}
    assert counts == {"imagenet-v2": 85, "imagenet-sketch": 85, "imagenet-r": 80, "objectnet": 85}


def test_table_with_a_method_baseline(tmp_path, capsys):
    """Any baseline: the line of the table's own 'sl' rows (checked with scipy directly)."""
    path = tmp_path / "t.csv"
    path.write_text("model,method,imagenet,imagenet-v2\n"
                    "a,sl,0.30,0.22\nb,sl,0.50,0.40\nc,sl,0.70,0.61\nd,clip,0.40,0.39\n")
    out = _json(capsys, ["robustness", "--table", str(path), "--ood", "imagenet-v2",
                         "--format", "json"])
    lx = np.log(np.array([0.3, 0.5, 0.7]) / (1 - np.array([0.3, 0.5, 0.7])))
    ly = np.log(np.array([0.22, 0.4, 0.61]) / (1 - np.array([0.22, 0.4, 0.61])))
    fit = stats.linregress(lx, ly)
    pred = 1 / (1 + np.exp(-(fit.slope * np.log(0.4 / 0.6) + fit.intercept)))
    d = next(r for r in out["rows"] if r["run"] == "d")
    assert d["er_imagenet-v2"] == pytest.approx(0.39 - pred, abs=1e-12)
    assert out["fits"][0]["baseline_runs"] == 3


@pytest.mark.parametrize("content, ood, expect", [
    ("model,imagenet,imagenet-v2\nm,0.6,0.5\n", ["--ood", "imagenet-r:id_r200"],
     "missing column(s) imagenet-r, id_r200"),
    ("model,imagenet,imagenet-v2\nm,0.6,55.7\n", [], "row 2 (model 'm'), column 'imagenet-v2': "
     "55.7 is not a fraction in [0, 1] (a percentage?"),
    ("model,imagenet,imagenet-v2\nm,0.6,-0.1\n", [], "column 'imagenet-v2': -0.1 is not a fraction"),
    ("model,imagenet,imagenet-v2\nm,0.6,abc\n", [], "column 'imagenet-v2': 'abc' is not a number"),
    ("name,imagenet,imagenet-v2\nm,0.6,0.5\n", [], "no 'model' column"),
    ("model,imagenet,imagenet_v2\nm,0.6,0.5\n", [], "unknown column 'imagenet_v2'"),
    ("model,imagenet\nm,0.6\n", [], "missing columns: no shifted ImageNet column"),
    ("model,imagenet,imagenet-v2\nm,0.6,0.5\nm,0.5,0.4\n", [], "row 3: model 'm' already on row 2"),
])
def test_bad_tables_are_one_line(tmp_path, capsys, content, ood, expect):
    path = tmp_path / "bad.csv"
    path.write_text(content)
    assert main(["robustness", "--table", str(path), "--baseline", "testbed", *ood]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert str(path) in err and expect in err, err


def test_testbed_axes_are_enforced(tmp_path, capsys):
    table = _write_table(tmp_path / "clip.csv", CLIP[:1])
    assert main(["robustness", "--table", str(table), "--baseline", "testbed",
                 "--ood", "imagenet-r:imagenet"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "give --ood imagenet-r:id_r200" in err


def _fake_run(path, accs: dict[str, tuple[int, int]], method="clip", kind="mmcl"):
    path.mkdir(parents=True)
    (path / "config.yaml").write_text(
        f"kind: clip_real\nname: fake\nseed: 0\nmethods:\n- {{name: {method}, kind: {kind}, loss: "
        f"{'clip' if kind == 'mmcl' else 'ce'}}}\n")
    with open(path / "metrics.jsonl", "w") as fh:
        for split, (k, n) in accs.items():
            fh.write(json.dumps({"event": "eval", "method": method, "split": split,
                                 "accuracy": k / n, "correct": k, "n": n, "step": 1}) + "\n")
    (path / "done").write_text("{}\n")
    return path


def test_runs_against_the_testbed_with_plot(tmp_path, capsys):
    """A run's ER against the testbed line equals the reference computation at its accuracies;
    --plot writes a PNG; a run missing a restricted ID split gets a note, not an error."""
    _fake_run(tmp_path / "runs" / "a", {"id": (3000, 10000), "imagenet-v2": (2500, 10000),
                                        "imagenet-sketch": (900, 5000)})
    _fake_run(tmp_path / "runs" / "b", {"id": (2000, 10000), "imagenet-v2": (1500, 10000),
                                        "imagenet-r": (900, 3000)}, method="sl", kind="sl")
    png = tmp_path / "plots" / "er.png"
    out = _json(capsys, ["robustness", str(tmp_path / "runs"), "--baseline", "testbed",
                         "--format", "json", "--plot", str(png)])
    rows = {r["method"]: r for r in out["rows"]}
    rows_tb, types = _rows(), _types()
    line = [m for m, r in rows_tb.items() if types[m] == "STANDARD" and not any(
        s in m.lower() for s in ("aws", "batch64", "subsample"))]
    x = np.array([float(rows_tb[m]["val"]) for m in line])
    y = np.array([float(rows_tb[m][COLS["imagenet-v2"]]) for m in line])
    fit = stats.linregress(_logit(x), _logit(y))
    pred = 1 / (1 + np.exp(-(fit.slope * _logit(30.0) + fit.intercept)))
    assert rows["clip"]["er_imagenet-v2"] == pytest.approx(0.25 - pred, abs=1e-12)
    lo, hi = stats.beta.ppf([0.025, 0.975], [2500, 2501], [7501, 7500])
    assert rows["clip"]["imagenet-v2_ci_lo"] == pytest.approx(lo, rel=1e-9)
    assert rows["clip"]["imagenet-v2_ci_hi"] == pytest.approx(hi, rel=1e-9)
    assert "er_imagenet-r" not in rows["sl"] or rows["sl"]["er_imagenet-r"] is None
    assert any("'id_r200'" in n for n in out["notes"])
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_report_has_the_testbed_section(tmp_path):
    from mmclshift.analysis.report import write_report

    _fake_run(tmp_path / "runs" / "a", {"id": (3000, 10000), "imagenet-v2": (2500, 10000)})
    _fake_run(tmp_path / "runs" / "b", {"id": (2000, 10000), "imagenet-v2": (1500, 10000)},
              method="sl", kind="sl")
    page = write_report([tmp_path / "runs"], tmp_path / "report.html").read_text()
    section = page[page.index("id='testbed'"):]
    assert "data:image/png;base64," in section[:5000]
    assert "imagenet-v2" in section and "runs/a" in section
