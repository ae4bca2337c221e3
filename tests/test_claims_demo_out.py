"""``claims --out`` and ``demo --out`` never write into a folder of other files; ``--budget`` is
checked like every count argument."""

import pytest
from test_hostile_input import one_line_error

from mmclshift.cli import main
from mmclshift.cli.demo import DEMO_ENTRIES
from mmclshift.runs import RunDir


def _runs(root):
    for seed in (0, 1):
        run = RunDir.create(root / f"r{seed}", {"kind": "data_model_1", "seed": seed})
        run.log_metrics({"event": "eval", "method": "mmcl", "split": "ood", "accuracy": 0.8,
                         "n": 100, "correct": 80})
        run.mark_done()
    return root


@pytest.mark.parametrize("cmd", [["claims", "RUNS"], ["claims", "--decide", "RUNS"], ["demo"]])
def test_out_into_a_folder_of_other_files_is_refused(capsys, tmp_path, cmd):
    runs = _runs(tmp_path / "runs")
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me\n")
    args = [str(runs) if a == "RUNS" else a for a in cmd]
    one_line_error(capsys, [*args, "--out", str(mine)], str(mine), "notes.txt", "choose a new or empty folder")
    assert sorted(p.name for p in mine.iterdir()) == ["notes.txt"]  # nothing written there
    assert not (runs / "decide").exists()  # refused before any seed is trained


def test_claims_out_into_its_own_kind_of_folder_is_used(capsys, tmp_path):
    runs = _runs(tmp_path / "runs")
    for out in (tmp_path / "new", tmp_path / "empty", tmp_path / "claims", runs):
        if out.name == "empty":
            out.mkdir()
        if out.name == "claims":
            out.mkdir()
            (out / "claims.json").write_text("[]\n")
        main(["claims", str(runs), "--out", str(out)])
        assert (out / "claims.json").is_file(), out
    capsys.readouterr()


def test_a_demo_folder_is_not_foreign(tmp_path):
    from mmclshift.cli.common import refuse_foreign_out

    demo = tmp_path / "demo"
    for name in DEMO_ENTRIES:
        (demo / name).mkdir(parents=True)
    refuse_foreign_out(demo, DEMO_ENTRIES, "demo folder")  # no error
    (tmp_path / "other" / "x").mkdir(parents=True)
    with pytest.raises(Exception, match="is not a demo folder"):
        refuse_foreign_out(tmp_path / "other", DEMO_ENTRIES, "demo folder")


@pytest.mark.parametrize("budget", ["0", "-3"])
def test_claims_budget_below_one_is_one_line(capsys, tmp_path, budget):
    runs = _runs(tmp_path / "runs")
    one_line_error(capsys, ["claims", "--decide", str(runs), "--budget", budget],
                   "--budget: must be at least 1")
    assert not (runs / "decide").exists()
