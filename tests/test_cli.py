"""The command line: JSON-lines output and one-line errors."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from mmclshift.cli import COMMANDS, main

ROOT = Path(__file__).resolve().parents[1]
DM1 = str(ROOT / "configs" / "data_model_1.yaml")


def test_every_subcommand_has_help(capsys):
    for name in COMMANDS:
        with pytest.raises(SystemExit) as info:
            main([name, "--help"])
        assert info.value.code == 0
        assert "usage: mmclshift " + name in capsys.readouterr().out


def test_theory_json(capsys):
    assert main(["theory", DM1, "data.pi_spu=0.5", "--json"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert {(r["method"], r["split"]) for r in lines} == {
        (m, s) for m in ("mmcl", "sl") for s in ("id", "ood", "ood_reversed")
    }
    from mmclshift import experiments

    cfg = experiments.load_config(DM1, ["data.pi_spu=0.5"])
    expected = json.loads(json.dumps(experiments.predict_theory(cfg)))  # the library's records, as JSON
    assert lines == expected and all(r["n"] is None for r in lines)  # printed whole, in order


def test_train_json(tmp_path, capsys):
    out = tmp_path / "run"
    args = ["train", DM1, "n_train=2000", "n_test=1000", "splits=[id, ood]", "mmcl.optim.steps=50",
            "--out", str(out), "--json"]
    assert main(args) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(lines) == 4 and all(r["n"] == 1000 for r in lines)
    assert {r["method"] for r in lines} == {"mmcl", "sl"} and (out / "done").is_file()


@pytest.mark.parametrize(
    "args, needle",
    [
        (["theory", DM1, "data.pi_core=1.5"], "'data.pi_core'"),
        (["theory", DM1, "data.input.d_image=0"], "'data.input.d_image'"),
        (["train", DM1, "nonsense=1"], "'nonsense'"),
        (["theory", "missing.yaml"], "missing.yaml"),
    ],
)
def test_errors_are_one_line(args, needle, capsys):
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and needle in err and "Traceback" not in err


def test_console_entry_point_runs():
    out = subprocess.run([sys.executable, "-m", "mmclshift.cli", "--version"], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.startswith("mmclshift ")


def test_overview_help_lists_every_command(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert all(name in out for name in COMMANDS)
    assert "95% interval" in out  # a literal % in a command's help is shown, not %-formatted


@pytest.mark.parametrize("code", [
    "from mmclshift.cli import build_parser; build_parser(['--help'])",
    "from mmclshift.cli import build_parser; build_parser(['theory', 'x.yaml'])",
    "import mmclshift.cli.theory, mmclshift.cli.theory_map, mmclshift.experiments, mmclshift.runs",
])
def test_startup_imports_no_torch(code):
    """``--help``, ``--version`` and the theory command's own modules start without torch."""
    check = f"import sys; {code}; bad = [m for m in ('torch', 'open_clip') if m in sys.modules]; print(bad)"
    out = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def test_debug_flag_lasts_only_for_its_command(monkeypatch, capsys):
    monkeypatch.delenv("MMCLSHIFT_DEBUG", raising=False)
    from mmclshift.errors import UserError

    with pytest.raises(UserError, match="missing.yaml"):  # --debug: the error itself
        main(["--debug", "theory", "missing.yaml"])
    assert main(["theory", "missing.yaml"]) == 2  # the next command is not in debug mode
    assert "missing.yaml" in capsys.readouterr().err
