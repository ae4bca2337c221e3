"""Stacked training of many small image models (mmclshift.train.stacked) against one-at-a-time training.

The reference is :func:`mmclshift.train.images.train_loop`, the loop every run uses alone. In
float64 the stacked program must reproduce each cell's trajectory to 1e-9 (measured: about 1e-13
after 20 AdamW steps; the batched kernels only reorder float sums). In float32 AdamW turns
rounding in near-zero gradients into weight differences of the order of the learning rate, so
the grid-level test compares what a grid reports: accuracies within two test images.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mmclshift.analysis.figure2 import grid_figure2
from mmclshift.config import replace
from mmclshift.data.digits import load_embedded_digits
from mmclshift.data.semisynthetic import build_splits
from mmclshift.experiments import load_config
from mmclshift.experiments.semisynthetic import new_model, run_grid
from mmclshift.runs import DONE_FILE, read_metrics
from mmclshift.train.images import clamp_logit_scale, mmcl_loss_fn, sl_loss_fn, train_loop
from mmclshift.train.stacked import StackedCell, _groups, train_stacked, unstackable_reason

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "configs" / "fig2_smoke.yaml"
TINY = ["splits=[ood]", "train.batch_size=32", "data.n_train=96", "data.n_test=64", "model.cnn_width=4",
        "model.embed_dim=8", "model.feature_dim=16", "model.text_width=8"]


def _cfg(*overrides: str):
    return load_config(SMOKE, [*TINY, *overrides])


@pytest.fixture(scope="module")
def digits():
    return load_embedded_digits()


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny tensors: one torch thread (two are many times slower on shared cores)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _alone(cfg, method, train, dtype):
    """One cell trained by train_loop (the reference), in ``dtype``."""
    model = new_model(cfg, method, torch.device("cpu")).to(dtype)
    log: list[dict] = []
    if method == "mmcl":
        fn, targets, after = mmcl_loss_fn(model, cfg.mmcl), train.tokens, clamp_logit_scale(model, cfg.mmcl)
    else:
        fn, targets, after = sl_loss_fn(model), train.labels, None
    train_loop(model, lambda x, y: fn(x.to(dtype), y), train.images, targets, cfg.train,
               torch.Generator().manual_seed(cfg.seed + 1), method=method, device=torch.device("cpu"),
               progress=False, log=log.append, after_step=after)
    return model, log


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(method=st.sampled_from(["mmcl", "sl"]), loss=st.sampled_from(["clip", "linear"]),
       optimizer=st.sampled_from(["adamw", "sgd"]), size=st.sampled_from([14, 28]),
       seeds=st.sampled_from([(0, 1, 1), (2, 2, 0), (0, 1, 0)]), augment=st.booleans())
def test_stacked_equals_one_at_a_time_float64(digits, method, loss, optimizer, size, seeds, augment):
    """Cells of several seeds (groups of unequal size) trained together match each trained alone."""
    cells, ref, logs = [], [], []
    for i, seed in enumerate(seeds):
        cfg = _cfg(f"seed={seed}", f"mmcl.loss={loss}", f"train.optimizer={optimizer}",
                   f"model.image_size={size}", f"train.augment={str(augment).lower()}", "train.steps=6",
                   "train.log_every=2", "train.lr=0.01", f"data.pi_core={0.5 * i}")
        train = build_splits(digits, cfg.data, seed, [])["train"]
        ref.append(_alone(cfg, method, train, torch.float64))
        logs.append([])
        cells.append(StackedCell(new_model(cfg, method, torch.device("cpu")).double(), train.images,
                                 train.tokens if method == "mmcl" else train.labels, seed + 1, logs[-1].append))
    stats = train_stacked(cells, method, cfg.train, mmcl=cfg.mmcl, progress=False)
    assert [s["stacked_cells"] for s in stats] == [len(seeds)] * len(seeds)
    for cell, mine, (model, log) in zip(cells, logs, ref, strict=True):
        for (name, a), b in zip(model.named_parameters(), cell.model.parameters(), strict=True):
            assert torch.allclose(a, b, rtol=0, atol=1e-9), (name, float((a - b).abs().max()))
        assert [r["step"] for r in mine] == [r["step"] for r in log] == [0, 2, 4, 5]
        for r, s in zip(mine, log, strict=True):
            assert r["loss"] == pytest.approx(s["loss"], abs=1e-9)
            assert r["lr"] == pytest.approx(s["lr"], rel=1e-12)
    # the stack really trained: every cell moved away from its initial weights
    for cell, seed in zip(cells, seeds, strict=True):
        init = new_model(_cfg(f"seed={seed}", f"model.image_size={size}"), method, torch.device("cpu"))
        pairs = zip(init.parameters(), cell.model.parameters(), strict=True)
        assert max(float((a.double() - b).detach().abs().max()) for a, b in pairs) > 1e-4


def test_groups_share_draws_only_for_equal_seed_and_images(digits):
    cfg = _cfg()
    a = build_splits(digits, cfg.data, 0, [])["train"]
    b = build_splits(digits, replace(cfg.data, pi_core=0.0), 0, [])["train"]  # same images, other captions
    c = build_splits(digits, replace(cfg.data, spurious_strength=0.5), 0, [])["train"]  # other images
    assert torch.equal(a.images, b.images) and not torch.equal(a.images, c.images)

    def cell(split, stream):
        return StackedCell(torch.nn.Identity(), split.images, split.tokens, stream)

    assert _groups([cell(a, 1), cell(b, 1), cell(c, 1), cell(a, 2), cell(b, 1)]) == [[0, 1, 4], [2], [3]]


def test_unstackable_architectures_are_named(digits):
    for overrides, method, word in ((["model.text_encoder=transformer"], "mmcl", "text tower"),
                                    (["model.image_encoder=torchvision:resnet18"], "sl", "image tower")):
        cfg = _cfg(*overrides)
        reason = unstackable_reason(new_model(cfg, method, torch.device("cpu")), method, cfg.mmcl)
        assert reason is not None and word in reason
        with pytest.raises(ValueError, match="cannot stack"):
            train_stacked([StackedCell(new_model(cfg, method, torch.device("cpu")), torch.zeros(4, 3, 28, 28,
                                       dtype=torch.uint8), torch.zeros(4, dtype=torch.long), 1)] * 2,
                          method, cfg.train, mmcl=cfg.mmcl, progress=False)
    cfg = _cfg()
    small = [StackedCell(new_model(cfg, "sl", torch.device("cpu")), torch.zeros(n, 3, 28, 28, dtype=torch.uint8),
                         torch.zeros(n, dtype=torch.long), 1) for n in (8, 16)]  # batch 32 > 8, 16 images
    with pytest.raises(ValueError, match="minibatches differ in size"):
        train_stacked(small, "sl", cfg.train, progress=False)
    assert unstackable_reason(new_model(cfg, "mmcl", torch.device("cpu")), "mmcl", cfg.mmcl) is None
    assert unstackable_reason(new_model(cfg, "sl", torch.device("cpu")), "sl", cfg.mmcl) is None


def _evals(path: Path) -> dict[tuple[str, str], dict]:
    out = {}
    for run in sorted(p for p in path.iterdir() if p.is_dir()):
        for r in read_metrics(run):
            if r.get("event") == "eval":
                out[(run.name, r["split"])] = r
    return out


def test_grid_stacked_matches_one_at_a_time_and_resumes(tmp_path, capsys):
    grid = ["grid.pi_core=[0.0,1.0]", "grid.pi_spu=[1.0]", "grid.seeds=[0,1]", "train.steps=5",
            "splits=[id,ood]"]
    cfg = _cfg(*grid)
    stacked = run_grid(cfg, tmp_path / "stacked", progress=False)
    alone = run_grid(replace(cfg, **{"grid.stacked": False}), tmp_path / "alone", progress=False)
    assert (stacked["stacked"], stacked["one_at_a_time"]) == (6, 0)  # 4 MMCL cells + 2 SL runs
    assert (alone["stacked"], alone["one_at_a_time"]) == (0, 6)
    a, b = _evals(tmp_path / "stacked"), _evals(tmp_path / "alone")
    assert a.keys() == b.keys() and len(a) == 12
    for key in a:
        assert abs(a[key]["correct"] - b[key]["correct"]) <= 2, key  # float32 rounding (module doc)
        assert {k: v for k, v in a[key].items() if k not in ("accuracy", "correct")} == \
               {k: v for k, v in b[key].items() if k not in ("accuracy", "correct")}
    for run in (tmp_path / "stacked").iterdir():
        done = json.loads((run / DONE_FILE).read_text())
        assert done["stacked_cells"] == (2 if run.name.startswith("sl") else 4)
        events = [r["event"] for r in read_metrics(run)]
        assert events[0] == "data" and events.count("train") == 2 and events.count("eval") == 2
    # resume: one run redone, alone (a stack of one is trained by the usual loop)
    redo = tmp_path / "stacked" / "mmcl-core1-spu1-seed1"
    (redo / DONE_FILE).unlink()
    again = run_grid(cfg, tmp_path / "stacked", progress=False)
    assert (again["stacked"], again["one_at_a_time"]) == (0, 1)
    rows1, rows2 = (grid_figure2(cfg, r["runs"])[0].rows for r in (again, stacked))
    for r1, r2 in zip(rows1, rows2, strict=True):
        assert abs(r1["mmcl_ood"] - r2["mmcl_ood"]) <= 2 / 64


def test_grid_falls_back_with_a_message_when_cells_cannot_stack(tmp_path, capsys):
    cfg = _cfg("grid.pi_core=[1.0]", "grid.pi_spu=[0.0,1.0]", "grid.seeds=[0]", "train.steps=2",
               "model.text_encoder=transformer", "model.text_heads=2", "methods=[mmcl]")
    result = run_grid(cfg, tmp_path, progress=False)
    assert (result["stacked"], result["one_at_a_time"]) == (0, 3)  # 2 MMCL cells + the SL run (alone)
    assert "trained one at a time: cannot stack text tower" in capsys.readouterr().err


def test_demo_grid_trained_stacked_in_two_processes(tmp_path, capsys):
    """The demo's semi-synthetic tier: the grid's pending runs dealt over 2 processes, each
    training its share stacked; a job that stacks with nothing (an SL baseline) is left for the
    one-at-a-time pass; the results match one-at-a-time training within float32 rounding."""
    from mmclshift.demo import train_grid_stacked
    from mmclshift.experiments.semisynthetic import grid_cells
    from mmclshift.sweeps.spec import Job

    cfg = _cfg("grid.pi_core=[0.0,1.0]", "grid.pi_spu=[1.0]", "grid.seeds=[0,1]", "train.steps=5",
               "splits=[id,ood]")
    jobs = [Job(c, name) for name, c in grid_cells(cfg)]
    jobs.append(Job(replace(cfg, seed=0, methods=["sl"], **{"train.steps": 2}), "sl-baseline"))
    out = tmp_path / "demo"
    out.mkdir()
    assert train_grid_stacked(jobs, out, workers=2, progress=True) == 6
    assert "6 runs trained stacked in 2 process(es)" in capsys.readouterr().out
    assert not (out / "sl-baseline" / DONE_FILE).exists()
    for job in jobs[:-1]:
        done = json.loads((out / job.name / DONE_FILE).read_text())
        assert done["stacked_cells"] >= 2
    assert train_grid_stacked(jobs, out, workers=2, progress=False) == 0  # nothing left that stacks
    alone = run_grid(replace(cfg, **{"grid.stacked": False}), tmp_path / "alone", progress=False)
    assert alone["one_at_a_time"] == 6
    a, b = _evals(out), _evals(tmp_path / "alone")
    assert a.keys() == b.keys() and len(a) == 12
    for key in a:
        assert abs(a[key]["correct"] - b[key]["correct"]) <= 2, key


def test_share_stacks_balances_the_demo_grid_over_two_processes():
    from mmclshift.demo import SCALES, grid_config, grid_jobs, share_stacks

    cfg = grid_config("demo", [], None)
    jobs = grid_jobs(cfg, SCALES["demo"])  # 75 MMCL cells, 3 SL runs, 6 ablation runs, 4 x 3 SL baselines
    cells = [(j.name, j.config) for j in jobs]
    shares = share_stacks(cells, 2)
    assert len(shares) == 2
    names = [[n for n, _ in s] for s in shares]
    mmcl = sorted(sum(n.startswith("mmcl-core") for n in s) for s in names)
    assert mmcl == [37, 38]
    assert not any(n.startswith("mmcl-no-intra") for s in names for n in s)  # not a stacked method
    sl = [sum(n.startswith("sl-seed") for n in s) for s in names]
    assert sorted(sl) == [0, 3]  # 3 SL runs: one stack, in one share (a stack of one gains nothing)
    # each SL baseline strength stacks over its 3 seeds
    assert sum(n.startswith("sl-baseline") for s in names for n in s) == 12
    one = share_stacks(cells, 1)
    assert len(one) == 1
    assert sorted(n for n, _ in one[0]) == sorted(n for n, _ in cells if not n.startswith("mmcl-no-intra"))


def test_a_diverged_cell_stops_the_stack_naming_it_and_the_step(digits):
    """A NaN loss stops the stack with the one-line NonFiniteLoss (a UserError) naming the cell."""
    from mmclshift.errors import UserError
    from mmclshift.train.optim import NonFiniteLoss

    cfg = _cfg("train.steps=5", "train.optimizer=sgd", "train.lr=1e30", "mmcl.loss=linear")
    train = build_splits(digits, cfg.data, cfg.seed, [])["train"]
    cells = [StackedCell(new_model(cfg, "mmcl", torch.device("cpu")), train.images, train.tokens,
                         cfg.seed + 1, name=f"run-{i}") for i in range(2)]
    with pytest.raises(NonFiniteLoss, match=r"^mmcl run-\d: loss became (nan|-?inf) at step \d; lower train.lr$") as err:
        train_stacked(cells, "mmcl", cfg.train, mmcl=cfg.mmcl, progress=False)
    assert isinstance(err.value, UserError)
