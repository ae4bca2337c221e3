"""Pathological files, numbers, sizes and paths: each is one stderr line and exit status 2.

Bounded requests (theory-map grid points, sweep jobs, YAML alias expansion and nesting) are
refused before any work, within seconds; config files are read as UTF-8 with duplicate keys
refused; numbers are checked against what their consumer accepts; paths mean what a user means.
"""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mmclshift.cli import main
from mmclshift.config import ConfigError, load_yaml_text, read_yaml
from mmclshift.experiments import load_config
from mmclshift.runs import RunDir, atomic_write_text, release_run_lock

ROOT = Path(__file__).resolve().parents[1]
DM1 = str(ROOT / "configs" / "data_model_1.yaml")
FIG2 = str(ROOT / "configs" / "fig2_smoke.yaml")
TINY = ["n_train=300", "n_test=300", "splits=[id]", "mmcl.optim.steps=5"]
ENV = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}


def one_line_error(capsys, args, *needles, within: float | None = None) -> str:
    """The CLI exits 2 with exactly one line on stderr (no traceback) holding every needle."""
    t0 = time.monotonic()
    try:
        code = main(args)
    except SystemExit as exc:  # argument errors exit from argparse
        code = exc.code
    elapsed = time.monotonic() - t0
    assert code == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    for needle in needles:
        assert str(needle) in err, (needle, err)
    if within is not None:
        assert elapsed < within, elapsed
    return err.strip()


def write(path: Path, text: str | bytes) -> str:
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return str(path)


def files(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


# --------------------------------------------------------------------------- bounded requests


@pytest.mark.parametrize("x, y, needle", [
    ("data.pi_core=0.05:1:100000", "data.p_spu=0.5:0.99:100000", "100,000 values"),
    ("data.pi_core=0.05:1:5000", "data.p_spu=0.5:0.99:5000", "5,000 x 5,000 = 25,000,000 grid points"),
])
def test_theory_map_grid_over_the_limit(capsys, x, y, needle):
    one_line_error(capsys, ["theory-map", DM1, "--x", x, "--y", y], needle,
                   "MMCLSHIFT_MAX_MAP_POINTS", within=5)


def test_theory_map_limit_can_be_raised_and_lowered(capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("MMCLSHIFT_MAX_MAP_POINTS", "3")
    one_line_error(capsys, ["theory-map", DM1, "--x", "data.pi_core=0.1:1:2", "--y", "data.p_spu=0.5:0.9:2"],
                   "over the limit of 3")
    monkeypatch.setenv("MMCLSHIFT_MAX_MAP_POINTS", "4")
    assert main(["theory-map", DM1, "--x", "data.pi_core=0.1:1:2", "--y", "data.p_spu=0.5:0.9:2"]) == 0
    monkeypatch.setenv("MMCLSHIFT_MAX_MAP_POINTS", "lots")
    one_line_error(capsys, ["theory-map", DM1, "--x", "data.pi_core=0.1:1:2", "--y", "data.p_spu=0.5:0.9:2"],
                   "MMCLSHIFT_MAX_MAP_POINTS")


def test_theory_map_axes_that_collapse(capsys):
    one_line_error(capsys, ["theory-map", DM1, "--x", "data.pi_core=0:1:3", "--y", "data.pi_core=0:1:3"],
                   "both axes are 'data.pi_core'")
    # an integer key: 7 values from 2 to 4 round to 3 distinct integers
    one_line_error(capsys, ["theory-map", DM1, "--x", "mmcl.embed_dim=2:4:7", "--y", "data.pi_core=0:1:2"],
                   "'mmcl.embed_dim' takes integers", "round to 3 distinct ones (2, 3, 4)")


def test_sweep_range_over_the_limit_with_dry_run(capsys, tmp_path):
    sweep = write(tmp_path / "s.yaml", f"base: {DM1}\ngrid:\n  seed: range(100000000)\n")
    one_line_error(capsys, ["sweep", "run", sweep, "--out", str(tmp_path / "o"), "--dry-run"],
                   "100,000,000 jobs", "MMCLSHIFT_MAX_SWEEP_JOBS", within=5)
    # the product of small axes is counted too, and random samples multiply it
    sweep = write(tmp_path / "p.yaml", f"base: {DM1}\ngrid:\n  seed: range(200)\n  n_test: range(1, 200)\n")
    one_line_error(capsys, ["sweep", "run", sweep, "--out", str(tmp_path / "o"), "--dry-run"],
                   "39,800 jobs (200 x 199)")
    sweep = write(tmp_path / "r.yaml", f"base: {DM1}\ngrid:\n  seed: range(200)\nrandom:\n  n_samples: 100\n"
                  "  axes: {mmcl.rho: {uniform: [0.5, 2]}}\n")
    one_line_error(capsys, ["sweep", "run", sweep, "--out", str(tmp_path / "o"), "--dry-run"],
                   "20,000 jobs (200 x 100)")
    assert not (tmp_path / "o").exists()


def laughs(depth: int) -> str:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    for i in range(1, depth + 1):
        refs = ", ".join([f"*a{i - 1}"] * 10)
        lines.append(f"a{i}: &a{i} [{refs}]")
    return "kind: data_model_1\n" + "\n".join(lines) + "\n"


def test_yaml_alias_bomb_is_refused_before_expansion(capsys, tmp_path):
    cfg = write(tmp_path / "bomb.yaml", laughs(9))  # 10^10 values once expanded
    one_line_error(capsys, ["theory", cfg], "bomb.yaml", "aliases are expanded",
                   "MMCLSHIFT_MAX_YAML_NODES", within=5)
    # ordinary anchors and merge keys still work
    data = load_yaml_text("base: &b {x: 1, y: 2}\nother:\n  <<: *b\n  y: 3\n")
    assert data["other"] == {"x": 1, "y": 3}


def test_recursive_alias_is_refused(capsys, tmp_path):
    cfg = write(tmp_path / "loop.yaml", "kind: data_model_1\nname: &a [x, *a]\n")
    one_line_error(capsys, ["theory", cfg], "loop.yaml:2", "recursive alias")


@pytest.mark.parametrize("text", ["[" * 100_000, "a:\n" + "".join(" " * i + f"k{i}:\n" for i in range(1, 80))])
def test_deeply_nested_yaml_is_refused(capsys, tmp_path, text):
    cfg = write(tmp_path / "deep.yaml", text)
    one_line_error(capsys, ["theory", cfg], "deep.yaml", "nested more than 50 deep",
                   "MMCLSHIFT_MAX_YAML_DEPTH", within=5)


# --------------------------------------------------------------------------- files and numbers


def test_config_file_not_utf8(capsys, tmp_path):
    cfg = write(tmp_path / "latin1.yaml", "kind: data_model_1\nname: caf\xe9\n".encode("latin-1"))
    one_line_error(capsys, ["theory", cfg], "latin1.yaml", "not UTF-8 text (byte 28)")
    sweep = write(tmp_path / "s.yaml", b"base: \xff\n")
    one_line_error(capsys, ["sweep", "run", sweep, "--out", str(tmp_path / "o"), "--dry-run"],
                   "s.yaml", "not UTF-8")


def test_binary_file_as_config(capsys, tmp_path):
    cfg = write(tmp_path / "x.yaml", bytes(range(256)))
    one_line_error(capsys, ["theory", cfg], "x.yaml")


def test_duplicate_keys_are_refused(capsys, tmp_path):
    cfg = write(tmp_path / "dup.yaml", "kind: data_model_1\nseed: 1\nn_train: 500\nseed: 2\n")
    one_line_error(capsys, ["theory", cfg], "dup.yaml:4", "duplicate key 'seed'")
    nested = write(tmp_path / "dup2.yaml", "kind: data_model_1\ndata:\n  pi_core: 0.5\n  pi_core: 0.7\n")
    one_line_error(capsys, ["theory", nested], "dup2.yaml:4", "duplicate key 'pi_core'")
    with pytest.raises(ConfigError, match="duplicate key"):
        read_yaml(write(tmp_path / "sweep.yaml", "base: a.yaml\ngrid: {seed: [1]}\ngrid: {seed: [2]}\n"))


@pytest.mark.parametrize("override, needle", [
    ("seed=18446744073709551616", "'seed'"),                   # beyond every RNG
    ("seed=-1", "a seed must be in [0, 2^63 - 1]"),
    ("data_seed=9223372036854775808", "'data_seed'"),
    ("n_train=1180591620717411303424", "64-bit integer"),      # 2^70
    ("splits=[id, id]", "'id' is listed twice"),
    ("splits=[]", "'splits': must list at least one value"),
    ("mmcl.optim.lr=.nan", "finite"),
])
def test_numbers_and_lists_out_of_their_consumers_range(capsys, tmp_path, override, needle):
    one_line_error(capsys, ["train", DM1, *TINY, override, "--out", str(tmp_path / "r")], needle)
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("override, needle", [
    ("grid.seeds=[0, 0]", "'grid.seeds': 0 is listed twice"),
    ("grid.pi_core=[0.5, 0.50]", "'grid.pi_core': 0.5 is listed twice"),
    ("methods=[mmcl, mmcl]", "'methods'"),
    ("grid.seeds=[-3]", "a seed must be"),
])
def test_grid_lists_and_seeds(capsys, tmp_path, override, needle):
    one_line_error(capsys, ["grid", FIG2, override, "--out", str(tmp_path / "g")], needle)
    assert not (tmp_path / "g").exists()


def test_random_sweep_seed_out_of_range(capsys, tmp_path):
    sweep = write(tmp_path / "s.yaml", f"base: {DM1}\nrandom:\n  sweep_seed: -1\n  n_samples: 2\n"
                  "  axes: {mmcl.rho: {uniform: [0.5, 2]}}\n")
    one_line_error(capsys, ["sweep", "run", sweep, "--out", str(tmp_path / "o"), "--dry-run"],
                   "'random.sweep_seed'")


@pytest.mark.parametrize("args, needle", [
    (["sweep", "run", "x.yaml", "--out", "o", "--workers", "0"], "--workers: must be at least 1"),
    (["sweep", "run", "x.yaml", "--out", "o", "--max-jobs", "0"], "--max-jobs: must be at least 1"),
    (["sweep", "run", "x.yaml", "--out", "o", "--workers", "two"], "expected an integer"),
    (["demo", "--workers", "0"], "--workers: must be at least 1"),
    (["train", DM1, "--seeds", "-1"], "a seed must be"),
    (["train", DM1, "--no-such-flag"], "unrecognized arguments"),
    (["theory"], "required"),
])
def test_bad_arguments_are_one_line(capsys, tmp_path, monkeypatch, args, needle):
    monkeypatch.chdir(tmp_path)
    one_line_error(capsys, args, needle, "--help")
    assert not any(tmp_path.iterdir())


def test_nan_loss_is_one_line(capsys, tmp_path):
    one_line_error(capsys, ["train", DM1, *TINY, "mmcl.optim.lr=1e30", "--out", str(tmp_path / "r"),
                            "--no-progress"],
                   "loss became nan", "lower optim.lr")
    assert not (tmp_path / "r" / "done").exists()  # the failure is recorded, nothing marked done
    one_line_error(capsys, ["train", FIG2, "train.steps=3", "train.lr=1e30", "splits=[id]",
                            "--out", str(tmp_path / "s"), "--no-progress"], "loss became nan",
                   "lower train.lr")
    assert not (tmp_path / "s" / "done").exists()


def test_size_beyond_memory_is_one_line(capsys, tmp_path):
    # 10^15 training pairs: more bytes than any address space holds, refused by the allocator
    one_line_error(capsys, ["train", DM1, "n_train=1000000000000000", "n_test=300", "splits=[id]",
                            "--out", str(tmp_path / "r"), "--no-progress"], "out of memory",
                   "too large", within=60)
    assert not (tmp_path / "r" / "done").exists()


def test_recursive_alias_in_an_override(capsys):
    one_line_error(capsys, ["theory", DM1, "splits=&a [*a]"], "override 'splits=&a [*a]'", "recursive alias")


# --------------------------------------------------------------------------- paths


def test_empty_out_is_refused(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    one_line_error(capsys, ["train", DM1, *TINY, "--out", ""], "--out: empty path")
    one_line_error(capsys, ["sweep", "run", DM1, "--out", " "], "--out: empty path")
    one_line_error(capsys, ["collect", ""], "run_dirs: empty path")
    assert not any(tmp_path.iterdir())


def test_tilde_is_the_home_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(["train", DM1, *TINY, "--out", "~/runs/r", "--json"]) == 0
    assert (tmp_path / "home" / "runs" / "r" / "done").is_file()
    assert not (tmp_path / "~").exists()


def test_out_into_a_users_folder_is_refused(capsys, tmp_path):
    mine = tmp_path / "photos"
    mine.mkdir()
    (mine / "holiday.jpg").write_bytes(b"\xff\xd8")
    before = files(mine)
    for args in (["train", DM1, *TINY, "--out", str(mine)],
                 ["train", DM1, *TINY, "--out", str(mine), "--force"],
                 ["train", DM1, *TINY, "--seeds", "0", "1", "--out", str(mine)],
                 ["grid", FIG2, "--out", str(mine)],
                 ["theory-map", DM1, "--x", "data.pi_core=0:1:2", "--y", "data.p_spu=0.5:0.9:2",
                  "--out", str(mine)]):
        one_line_error(capsys, args, str(mine), "is not a", "holiday.jpg")
    sweep = write(tmp_path / "s.yaml", f"base: {DM1}\ngrid: {{seed: [0]}}\n")
    one_line_error(capsys, ["sweep", "run", sweep, "--out", str(mine)], "not a sweep directory")
    assert files(mine) == before and sorted(p.name for p in tmp_path.iterdir()) == ["photos", "s.yaml"]
    empty = tmp_path / "empty"
    empty.mkdir()
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(["train", DM1, *TINY, "--out", str(empty), "--json"]) == 0  # empty: fine
    seeds = tmp_path / "seeds"
    (seeds / "seed0").mkdir(parents=True)  # a folder of other seeds' runs takes more seeds
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(["train", DM1, *TINY, "--seeds", "1", "--out", str(seeds), "--json"]) == 0
    assert (seeds / "seed1" / "done").is_file()


def test_disk_full_names_the_file(tmp_path):
    if not Path("/dev/full").exists():
        pytest.skip("no /dev/full")
    run = RunDir.create(tmp_path / "r", load_config(DM1, TINY), seed=0)
    (run.path / "metrics.jsonl").symlink_to("/dev/full")
    with pytest.raises(OSError) as info:
        run.log_metrics({"event": "train", "step": 1})
    assert info.value.filename == str(run.path / "metrics.jsonl") and "No space left" in str(info.value)
    release_run_lock(run.path)


def test_disk_full_while_writing_tables_names_the_file(capsys, tmp_path):
    if not Path("/dev/full").exists():
        pytest.skip("no /dev/full")
    (tmp_path / "runs").mkdir()
    (tmp_path / "t.csv").symlink_to("/dev/full")
    assert main(["collect", str(tmp_path / "runs"), "-o", str(tmp_path / "t")]) == 2
    err = capsys.readouterr().err  # collect's summary line comes before the error
    errors = [line for line in err.splitlines() if ": error: " in line]
    assert len(errors) == 1 and "Traceback" not in err, err
    assert f"{tmp_path / 't.csv'}: No space left on device" in errors[0]


def test_write_error_names_the_target_not_a_temp_file(tmp_path):
    target = tmp_path / "report"
    target.mkdir()  # report -o DIR: the atomic rename onto a folder fails
    with pytest.raises(OSError) as info:
        atomic_write_text(target, "<html></html>")
    assert info.value.filename == str(target)
    assert [p.name for p in tmp_path.iterdir()] == ["report"]  # no temp file left behind


def test_closed_pipe_ends_quietly():
    proc = subprocess.run(f"'{sys.executable}' -m mmclshift theory '{DM1}' --json | head -1",
                          shell=True, env=ENV, capture_output=True, text=True, timeout=120)
    assert proc.stderr == "" and len(proc.stdout.splitlines()) == 1


def test_no_library_deprecation_warnings_on_stderr(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "mmclshift", "theory", DM1], env=ENV,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    proc = subprocess.run([sys.executable, "-m", "mmclshift", "theory", DM1, "seed=-1"], env=ENV,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and len(proc.stderr.splitlines()) == 1, proc.stderr
