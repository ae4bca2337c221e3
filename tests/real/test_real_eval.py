"""`mmclshift eval`: a trained run directory, one of its checkpoints, OpenCLIP checkpoints."""

from __future__ import annotations

import json
import time

import open_clip
import pytest
import torch
from PIL import Image

from mmclshift.analysis.collect import collect
from mmclshift.cli import main
from mmclshift.errors import DataError
from mmclshift.evaluate.zeroshot import Scorer, evaluate, resolve_eval_set
from mmclshift.experiments.real import config_from_dict, run_experiment
from mmclshift.models.clip_models import register_model_configs
from mmclshift.runs import eval_records, is_done, read_metrics
from tests.real.test_real_zeroshot import COLORS, NAMES, WNIDS, ColorModel, preprocess, tokenizer

CB_KEYS = {"dataset", "model", "pretrained", "task", "metrics"}


@pytest.fixture(scope="module")
def trained(fx, tmp_path_factory):
    """A run of CLIP and SL (1 step each) on the fixtures, scored on the fixture test set."""
    out = tmp_path_factory.mktemp("eval") / "run"
    cfg = config_from_dict({
        "name": "e2e", "seed": 0,
        "data": {"format": "coco", "path": str(fx["coco"]), "vocab": str(fx["vocab"]),
                 "workers": 0},
        "model": {"name": "mmcl-tiny"},
        "train": {"steps": 1, "batch_size": 8, "precision": "fp32", "log_every": 1,
                  "lr": 1e-3},
        "eval": {"sets": [{"name": "id", "root": str(fx["eval"]), "protocol": "imagenet",
                           "subset": str(fx["subset"])}], "templates": "simple"},
    })
    run_experiment(cfg, str(out), progress=False)
    return out


def _cli(capsys, *argv):
    code = main(["eval", *map(str, argv), "--no-progress", "--workers", "0"])
    cap = capsys.readouterr()
    return code, cap.out, cap.err


KEYS = ("accuracy", "correct", "top5", "correct_top5", "n", "step")


def test_run_directory_gives_its_recorded_accuracies(trained, tmp_path, capsys):
    code, _, err = _cli(capsys, trained, "--out", tmp_path / "ev")
    assert code == 0, err
    want = {(r["method"], r["split"]): r for r in eval_records(trained)}
    got = {(r["method"], r["split"]): r for r in eval_records(tmp_path / "ev")}
    assert set(got) == set(want) == {("clip", "id"), ("sl", "id")}
    for key, rec in want.items():
        assert {k: got[key][k] for k in KEYS} == {k: rec[k] for k in KEYS}, key
    # collect reads the evaluation beside the run, as kind clip_real
    table = collect([trained, tmp_path / "ev"]).table
    assert len(table) == 4 and set(table["kind"]) == {"clip_real"}
    for method in ("clip", "sl"):
        cb = json.loads((tmp_path / "ev" / "clip_benchmark" / f"{method}__id.json").read_text())
        assert CB_KEYS <= set(cb) and cb["task"] == "zeroshot_classification"
        assert cb["metrics"]["acc1"] == want[(method, "id")]["accuracy"]
        assert set(cb["metrics"]) == {"acc1", "acc5", "mean_per_class_recall"}
    # the same command again finds the evaluation done and prints its records
    code, out, _ = _cli(capsys, trained, "--out", tmp_path / "ev", "--json")
    assert code == 0 and len(out.strip().splitlines()) == 2


def test_one_checkpoint_of_a_run(trained, tmp_path, capsys):
    ckpt = trained / "checkpoints" / "sl" / "last.pt"
    code, _, err = _cli(capsys, ckpt, "--out", tmp_path / "ev", "--json")
    assert code == 0, err
    (got,) = eval_records(tmp_path / "ev")
    want = next(r for r in eval_records(trained) if r["method"] == "sl")
    assert {k: got[k] for k in KEYS} == {k: want[k] for k in KEYS}


def test_openclip_training_checkpoint(fx, tmp_path, capsys):
    """OpenCLIP's training-checkpoint layout (state_dict, module. prefix) of an mmcl-tiny model:
    eval scores exactly what the same weights score in this process."""
    register_model_configs()
    torch.manual_seed(3)
    model, _, pre = open_clip.create_model_and_transforms("mmcl-tiny", pretrained=None,
                                                          output_dict=True)
    torch.save({"epoch": 2, "state_dict": {f"module.{k}": v for k, v in
                                           model.state_dict().items()}}, tmp_path / "ep2.pt")
    code, _, err = _cli(capsys, tmp_path / "ep2.pt", "--model", "mmcl-tiny", "--smoke",
                        "--out", tmp_path / "ev")
    assert code == 0, err
    (got,) = eval_records(tmp_path / "ev")
    ev = resolve_eval_set("id", fx["eval"], "imagenet", subset=str(fx["subset"]))
    ref = evaluate(Scorer("clip", model, "ref", tokenizer=open_clip.get_tokenizer("mmcl-tiny"),
                          templates="simple"), ev, pre)
    assert {k: got[k] for k in ("accuracy", "correct", "top5", "n")} == \
        {k: ref[k] for k in ("accuracy", "correct", "top5", "n")}
    cb = json.loads((tmp_path / "ev" / "clip_benchmark" / "clip__id.json").read_text())
    assert cb["model"] == "mmcl-tiny" and cb["pretrained"] == "ep2.pt"


def test_openclip_rn50_state_dict(tmp_path, capsys):
    """An OpenCLIP RN50 state dict (64 px, so the fixtures stay cheap) with --model RN50 --smoke."""
    start = time.perf_counter()
    model = open_clip.create_model("RN50", pretrained=None, force_image_size=64)
    torch.save(model.state_dict(), tmp_path / "rn50.pt")
    del model
    code, _, err = _cli(capsys, tmp_path / "rn50.pt", "--model", "RN50", "--image-size", 64,
                        "--smoke", "--out", tmp_path / "ev")
    assert code == 0, err
    (rec,) = eval_records(tmp_path / "ev")
    assert rec["n"] == 12 and rec["model"] == "RN50" and rec["source"] == "openclip"
    cb = json.loads((tmp_path / "ev" / "clip_benchmark" / "clip__id.json").read_text())
    assert CB_KEYS <= set(cb) and cb["model"] == "RN50" and cb["pretrained"] == "rn50.pt"
    assert cb["metrics"]["acc1"] == rec["accuracy"] and cb["dataset"] == "id"
    print(f"RN50 eval test: {time.perf_counter() - start:.1f} s")


def _one_line(code, err, *needles):
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    for n in needles:
        assert str(n) in err, (n, err)


def test_bad_targets_are_one_line(trained, tmp_path, capsys):
    text = tmp_path / "notes.pt"
    text.write_text("not weights\n")
    _one_line(*_cli(capsys, text, "--model", "RN50", "--smoke", "--out", tmp_path / "x")[::2], text,
              "not a checkpoint (not a file written by torch.save)")
    torch.save([1, 2, 3], tmp_path / "list.pt")
    _one_line(*_cli(capsys, tmp_path / "list.pt", "--model", "RN50", "--smoke",
                    "--out", tmp_path / "x")[::2],
              tmp_path / "list.pt", "not a checkpoint")
    register_model_configs()
    tiny = open_clip.create_model("mmcl-tiny", pretrained=None)
    torch.save(tiny.state_dict(), tmp_path / "tiny.pt")
    _one_line(*_cli(capsys, tmp_path / "tiny.pt", "--model", "RN50", "--smoke",
                    "--out", tmp_path / "x")[::2],
              tmp_path / "tiny.pt", "do not fit OpenCLIP architecture 'RN50'")
    assert not (tmp_path / "x").exists()  # nothing written, not even the fixtures
    _one_line(*_cli(capsys, tmp_path / "tiny.pt", "--smoke", "--out", tmp_path / "x")[::2],
              "give its architecture with --model ARCH")
    _one_line(*_cli(capsys, tmp_path / "tiny.pt", "--model", "no-such-arch", "--smoke",
                    "--out", tmp_path / "x")[::2], "unknown OpenCLIP architecture")
    _one_line(*_cli(capsys, tmp_path / "tiny.pt", "--model", "mmcl-tiny")[::2],
              "no test sets")
    lone = tmp_path / "lone.pt"
    lone.write_bytes((trained / "checkpoints" / "clip" / "last.pt").read_bytes())
    _one_line(*_cli(capsys, lone, "--smoke", "--out", tmp_path / "x")[::2], lone,
              "outside its run directory", "--config")
    _one_line(*_cli(capsys, tmp_path, "--smoke", "--out", tmp_path / "x")[::2], tmp_path,
              "not a run directory")
    assert not (tmp_path / "x").exists()
    _one_line(*_cli(capsys, tmp_path / "missing.pt")[::2], "no such run directory or checkpoint")
    for option, value, lo in (("--image-size", "0", 1), ("--workers", "-1", 0)):
        # main directly: _cli's own --workers 0 would come last and win; argparse exits
        with pytest.raises(SystemExit) as info:
            main(["eval", str(tmp_path / "tiny.pt"), "--model", "mmcl-tiny", "--smoke", option, value,
                  "--out", str(tmp_path / "x")])
        _one_line(info.value.code, capsys.readouterr().err, option, f"must be at least {lo}; got {value}")
    assert not (tmp_path / "x").exists()


def test_mean_per_class_recall_hand_computed(tmp_path):
    """Unbalanced classes: red 3/3, green 1/4 (3 blue images in its folder), blue 2/2."""
    (tmp_path / "classes.txt").write_text("".join(f"{w}\t{n}\n" for w, n in
                                                  zip(WNIDS, NAMES, strict=True)))
    (tmp_path / "sub.txt").write_text("n00000001\nn00000002\nn00000003\n")
    files = {0: [0, 0, 0], 1: [1, 2, 2, 2], 2: [2, 2]}  # folder -> colour of each image
    for k, colours in files.items():
        (tmp_path / "val" / WNIDS[k]).mkdir(parents=True)
        for i, c in enumerate(colours):
            Image.new("RGB", (8, 8), COLORS[c]).save(tmp_path / "val" / WNIDS[k] / f"{i}.png")
    ev = resolve_eval_set("id", tmp_path / "val", "imagenet",
                          classes_file=str(tmp_path / "classes.txt"),
                          subset=str(tmp_path / "sub.txt"))
    rec = evaluate(Scorer("clip", ColorModel(), "m", tokenizer=tokenizer, templates="simple"),
                   ev, preprocess)
    assert rec["accuracy"] == pytest.approx(6 / 9)
    assert rec["mean_per_class_recall"] == pytest.approx((1 + 0.25 + 1) / 3)


def _unreadable_test_set(fx, root):
    """A 3-class test set whose 6 images are all undecodable bytes (named .jpg)."""
    for wnid in fx["subset"].read_text().split():
        (root / wnid).mkdir(parents=True)
        for i in range(2):
            (root / wnid / f"{i}.jpg").write_bytes(b"not a jpeg")
    return {"name": "broken", "root": str(root), "protocol": "imagenet",
            "subset": str(fx["subset"])}


def test_eval_with_no_readable_image_is_an_error_not_a_done_run(fx, trained, tmp_path, capsys):
    """`mmclshift eval` on a test set none of whose images decode: one line naming the test set
    and why, exit status 2, and the run directory is not marked done (no NaN accuracy record)."""
    data = tmp_path / "broken.yaml"
    data.write_text(json.dumps({"sets": [_unreadable_test_set(fx, tmp_path / "broken")],
                                "templates": "simple"}))
    out = tmp_path / "ev"
    _one_line(*_cli(capsys, trained, "--data", data, "--out", out)[::2],
              "test set 'broken'", "none of its 6 images could be read", "6 corrupt image")
    assert out.is_dir() and not is_done(out)
    assert not [r for r in read_metrics(out) if r["event"] == "eval"]


def test_training_whose_final_evaluation_reads_no_image_is_not_done(fx, tmp_path):
    cfg = config_from_dict({
        "name": "e2e", "seed": 0,
        "data": {"format": "coco", "path": str(fx["coco"]), "vocab": str(fx["vocab"]),
                 "workers": 0},
        "methods": [{"name": "clip", "kind": "mmcl", "loss": "clip"}],
        "model": {"name": "mmcl-tiny"},
        "train": {"steps": 1, "batch_size": 8, "precision": "fp32", "lr": 1e-3},
        "eval": {"sets": [_unreadable_test_set(fx, tmp_path / "broken")], "templates": "simple"},
    })
    with pytest.raises(DataError, match=r"test set 'broken' \(imagenet\): none of its 6 images"):
        run_experiment(cfg, str(tmp_path / "run"), progress=False)
    assert not is_done(tmp_path / "run")
    assert (tmp_path / "run" / "checkpoints" / "clip" / "last.pt").is_file()  # training kept
