"""The command line as a new user meets it: ``mmclshift --help``, and every command of the
README's "Using it" block run with sensible output."""

import json
import re
import shlex
from pathlib import Path

import pytest

from mmclshift.cli import COMMANDS, main


def test_top_level_help_lists_every_command(capsys):
    # a literal "%" in a command's one-line help (e.g. "95% interval") must not break argparse
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: mmclshift")
    for name in COMMANDS:
        assert name in out
    assert "95% interval" in out  # the claims command's help, printed as written


# --------------------------------------------------------------------------- README "Using it"

ROOT = Path(__file__).resolve().parents[1]


def using_it_commands() -> list[list[str]]:
    """The command lines of the README's "Using it" block, as printed (comments dropped)."""
    text = (ROOT / "README.md").read_text()
    block = text.split("## Using it", 1)[1].split("```", 2)[1]
    return [shlex.split(line.split("#", 1)[0])[1:] for line in block.splitlines()
            if line.strip().startswith("mmclshift ")]


def _smaller(argv: list[str]) -> list[str]:
    """The same command at a size the fast suite affords: fewer map points, smaller training sets,
    one sweep job (the slow test runs them as printed)."""
    out = [re.sub(r":(\d+)$", lambda m: ":4" if int(m.group(1)) > 4 else m.group(0), a) for a in argv]
    if out[0] == "train":
        out += ["n_train=2000", "n_test=2000"]
    if out[:2] == ["sweep", "run"]:
        out += ["--max-jobs", "1"]
    return out


def _on_fixtures(argv: list[str]) -> list[str]:
    """Real-data commands read the user's datasets: ``eval`` scores on the built-in fixtures
    (``--smoke``) at 64 px instead of the ``--data`` config's ImageNet."""
    if argv[0] == "eval" and "--data" in argv:
        i = argv.index("--data")
        argv = [*argv[:i], *argv[i + 2:], "--smoke", "--image-size", "64"]
    return argv


def _stand_in_real_data(cwd: Path) -> None:
    """What the real-data examples read: an OpenCLIP RN50 state dict (random weights, 64 px) and,
    for ``robustness runs/fig3a``, a finished clip_real run with recorded accuracies on ImageNet
    and two shifts (the fixtures have no shifted ImageNets)."""
    import open_clip
    import torch

    model = open_clip.create_model("RN50", pretrained=None, force_image_size=64)
    torch.save(model.state_dict(), cwd / "rn50.pt")
    run = cwd / "runs" / "fig3a" / "clip-s0"
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(
        "kind: clip_real\nname: fig3a\nseed: 0\nmethods:\n- {name: clip, kind: mmcl, loss: clip}\n")
    with open(run / "metrics.jsonl", "w") as fh:
        for split, (k, n) in {"id": (3000, 10000), "imagenet-v2": (2500, 10000),
                              "imagenet-sketch": (900, 5000)}.items():
            fh.write(json.dumps({"event": "eval", "method": "clip", "split": split,
                                 "accuracy": k / n, "correct": k, "n": n, "step": 1}) + "\n")
    (run / "done").write_text("{}\n")


def _check(argv: list[str], code: int, out: str, cwd: Path) -> None:
    assert code == 0, (argv, out[-2000:])
    cmd = argv[0]
    if cmd == "theory" and "--json" in argv:
        assert {json.loads(line)["method"] for line in out.splitlines() if line.startswith("{")} == {"mmcl", "sl"}
    elif cmd == "theory":
        assert "mmcl" in out and "sl" in out
    elif cmd == "theory-map":
        assert (cwd / argv[argv.index("--out") + 1] / "theory_map.png").is_file()
    elif cmd == "train":
        rows = {(m.group(1), m.group(2)): float(m.group(3))
                for m in re.finditer(r"^(mmcl|sl)\s+(id|ood)\s+([0-9.]+)", out, re.M)}
        # a sensible model: well above chance (0.5 on these binary tasks) in distribution
        assert rows[("mmcl", "id")] > 0.7 and rows[("sl", "id")] > 0.7, rows
    elif cmd == "collect":
        assert (cwd / "results" / "all.csv").is_file() and (cwd / "results" / "all_by_seed.csv").is_file()
    elif cmd == "claims":
        assert "verdict" in out and (cwd / argv[1] / "claims.json").is_file()
    elif cmd == "report":
        assert "<h1>mmclshift report</h1>" in (cwd / argv[argv.index("-o") + 1]).read_text()
    elif cmd == "sweep":
        assert (cwd / argv[argv.index("--out") + 1]).is_dir()
    elif cmd == "eval":
        records = list(cwd.glob("runs/eval-*/clip_benchmark/*.json"))
        assert records, out
        rec = json.loads(records[0].read_text())
        assert rec["task"] == "zeroshot_classification" and 0 <= rec["metrics"]["acc1"] <= 1
    elif cmd == "robustness":
        assert "er_imagenet-v2" in out and "er_imagenet-sketch" in out, out
        assert (cwd / argv[argv.index("--plot") + 1]).read_bytes()[:4] == b"\x89PNG"
    else:
        raise AssertionError(f"no check for README command {cmd!r}: add one")


def _run_all(tmp_path, monkeypatch, capsys, transform) -> None:
    from mmclshift.cli import main

    (tmp_path / "configs").symlink_to(ROOT / "configs")
    monkeypatch.chdir(tmp_path)
    # `claims runs/demo` reads the demo's folder: two Data Model 1 runs stand in for it
    assert main(["train", "configs/data_model_1.yaml", "n_train=2000", "n_test=2000", "--seeds", "0", "1",
                 "--out", "runs/demo", "--no-progress"]) == 0
    capsys.readouterr()
    _stand_in_real_data(tmp_path)
    commands = using_it_commands()
    assert len(commands) >= 9 and {c[0] for c in commands} >= {"theory", "train", "claims", "report", "sweep"}
    for argv in commands:
        argv = transform(_on_fixtures(argv))
        if argv[0] == "train":
            argv = [*argv, "--no-progress"]
        code = main(argv)
        _check(argv, code, capsys.readouterr().out, tmp_path)


def test_every_readme_command_runs_at_a_small_size(tmp_path, monkeypatch, capsys):
    _run_all(tmp_path, monkeypatch, capsys, _smaller)


@pytest.mark.slow
def test_every_readme_command_runs_as_printed(tmp_path, monkeypatch, capsys):
    _run_all(tmp_path, monkeypatch, capsys, lambda argv: argv)


def test_infonce_with_one_dimensional_normalised_embeddings_is_refused(tmp_path, capsys):
    from mmclshift.cli import main

    args = ["train", str(ROOT / "configs" / "data_model_1.yaml"), "mmcl.loss=infonce", "--out", str(tmp_path / "r")]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "'mmcl.embed_dim'" in err[0] and "InfoNCE" in err[0]
    assert not (tmp_path / "r").exists()  # refused before anything is written
