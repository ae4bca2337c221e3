"""The theory's limits: ties at the rank cut, crossings, batched evaluation, the theory map."""

import json
import math

import numpy as np
import pytest
from scipy import stats

from mmclshift.analysis.theory_map import parse_axis, theory_map
from mmclshift.cli import main
from mmclshift.config import replace
from mmclshift.errors import UserError
from mmclshift.experiments.synthetic import (
    DataModel1Experiment,
    DataModel2Experiment,
    assumption_warnings,
    data_model,
    predict_theory,
    split_test_seed,
)
from mmclshift.theory import linear as TL
from mmclshift.theory.accuracy import ORTHANT_ABS_ERROR, margin_problems, orthant_probabilities
from mmclshift.theory.linear import cross_covariance, mmcl_bilinears, rank_cut

# the symmetric ring of the point: s4 = s5 exactly, and the tied pair enters the prompts
RING_TIE = {"data.num_details": 4, "data.class_details": [[0, 1], [1, 2], [2, 3], [3, 0]],
            "data.p_spu": 0.91, "data.sigma_spu": 0.039, "data.sigma_detail": 0.261,
            "data.detail_prob": 0.76, "data.input.sigma_xi": 1.018, "data.pi_core": 0.15}


def _recs(cfg):
    return {(r["method"], r["split"]): r for r in predict_theory(cfg)}


@pytest.mark.slow  # scans the tied subspace (minutes on 2 cores)
def test_ring_tie_gives_a_range_of_minimisers():
    cfg = replace(DataModel2Experiment(), **RING_TIE)
    C = cross_covariance(data_model(cfg))
    s = np.linalg.svd(C, compute_uv=False)
    Ms, cut = mmcl_bilinears(C, 4, 1.0)
    assert cut.tied == (3, 5) and abs(s[3] - s[4]) < 1e-12
    # every scanned matrix is a rank-4 Eckart-Young minimiser: same distance to C as SVD_4
    best = math.sqrt(np.sum(s[4:] ** 2))
    for M in Ms[::20]:
        assert np.linalg.matrix_rank(M, tol=1e-9) == 4
        assert np.linalg.norm(C - M) == pytest.approx(best, rel=1e-9)
    rec = _recs(cfg)[("mmcl", "ood")]
    assert rec["accuracy"] is None
    lo, hi = rec["range"]
    assert hi - lo > 0.005
    assert "s4=" in rec["warning"] and "s5=" in rec["warning"]
    # the SVD's own arbitrary choice lies inside the range
    svd_choice = TL.mmcl_zero_shot_accuracy(data_model(cfg), "ood", embed_dim=4)
    assert lo - 1e-9 <= svd_choice <= hi + 1e-9
    # the SL prediction does not depend on the embedding and stays a number
    assert isinstance(_recs(cfg)[("sl", "ood")]["accuracy"], float)


def test_default_dm2_has_no_tie():
    cfg = DataModel2Experiment()
    cut = rank_cut(cross_covariance(data_model(cfg)), cfg.mmcl.embed_dim)
    s = cut.singular_values
    assert cut.tied is None and s[3] - s[4] > 0.01 * s[0]
    assert all(r["accuracy"] is not None and "range" not in r for r in predict_theory(cfg))


def _dm1_crossing_pi_other() -> tuple[DataModel1Experiment, float]:
    """DM1 with embed_dim 1: C^Tr is block diagonal, the label-independent detail's block is the
    1 x 1 sigma_other^2 pi_other; the tie sits where it equals the core/spurious block's top
    singular value (computed here from the 2 x 2 block alone)."""
    cfg = replace(DataModel1Experiment(), **{"data.pi_core": 0.2})
    block = cross_covariance(data_model(cfg))[:2, :2]
    top = np.linalg.svd(block, compute_uv=False)[0]
    return cfg, top / cfg.data.sigma_other**2


def test_constructed_tie_and_the_crossing_around_it():
    cfg, pi_tie = _dm1_crossing_pi_other()
    assert 0 < pi_tie < 1
    at = _recs(replace(cfg, **{"data.pi_other": pi_tie}))[("mmcl", "ood")]
    below = _recs(replace(cfg, **{"data.pi_other": pi_tie * (1 - 1e-3)}))[("mmcl", "ood")]
    above = _recs(replace(cfg, **{"data.pi_other": pi_tie * (1 + 1e-3)}))[("mmcl", "ood")]
    # below the crossing the embedding keeps the core/spurious direction, above it the detail:
    # a prompt of the core feature then scores nothing and the tie-break is a coin (0.5)
    assert above["accuracy"] == pytest.approx(0.5, abs=1e-12)
    assert below["accuracy"] > 0.6
    assert at["accuracy"] is None
    lo, hi = at["range"]
    assert lo == pytest.approx(0.5, abs=1e-6)
    # the kept direction at the tie is the same core/spurious direction as just below it
    assert hi == pytest.approx(below["accuracy"], abs=2e-3)


def test_batched_orthant_matches_scipy():
    cfg = replace(DataModel2Experiment(), **{"data.pi_core": 0.4})
    model = data_model(cfg)
    A = TL.mmcl_score_matrix(model, 4, 1.0)
    mean, cov = margin_problems(model.mixture("ood"), A, None, TL.image_noise_var(model))
    got = orthant_probabilities(mean, cov)
    idx = np.random.default_rng(0).choice(len(mean), 12, replace=False)
    for i in idx:
        sd = np.sqrt(np.diag(cov[i]))
        ref = stats.multivariate_normal.cdf(mean[i] / sd, mean=np.zeros(3), cov=cov[i] / np.outer(sd, sd),
                                            abseps=1e-8, releps=0, maxpts=1_000_000, allow_singular=True,
                                            rng=np.random.default_rng(1))
        assert abs(got[i] - ref) <= ORTHANT_ABS_ERROR


@pytest.mark.parametrize("cls,changes", [(DataModel1Experiment, {"data.p_spu": 0.8}),
                                         (DataModel2Experiment, {"data.p_spu": 0.85})])
def test_newton_sl_rule_equals_lbfgs(cls, changes):
    """The Newton solve and the L-BFGS solve of the same population objective agree."""
    model = data_model(replace(cls(), **changes))
    TL._RULE_CACHE.clear()
    newton = TL.sl_population_rule(model, 1e-4)
    lbfgs = TL._lbfgs_rule(model.mixture("train"), TL.image_noise_var(model), 1e-4)
    for split in ("id", "ood"):
        assert TL.sl_accuracy(model, split, newton) == pytest.approx(TL.sl_accuracy(model, split, lbfgs), abs=1e-6)


def test_theory_map_equals_theory_at_grid_points():
    cfg = DataModel1Experiment()
    xs, ys = [0.7, 0.85, 0.97], [0.05, 0.2]
    TL._RULE_CACHE.clear()
    rows = theory_map(cfg, "data.p_spu", xs, "data.sigma_spu", ys)
    assert len(rows) == 6
    for row in rows[::2]:
        TL._RULE_CACHE.clear()  # the single-point path solves its own SL rule
        want = predict_theory(replace(cfg, **{"data.p_spu": row["data.p_spu"], "data.sigma_spu": row["data.sigma_spu"]}))
        for got, ref in zip(row["records"], want, strict=True):
            assert (got["method"], got["split"]) == (ref["method"], ref["split"])
            assert got["accuracy"] == pytest.approx(ref["accuracy"], abs=1e-9)


@pytest.mark.slow  # scans the tied subspace (minutes on 2 cores)
def test_theory_map_dm2_and_ties_match_theory():
    cfg = replace(DataModel2Experiment(), **{k: v for k, v in RING_TIE.items() if k != "data.pi_core"})
    rows = theory_map(cfg, "data.pi_core", [0.15, 0.5], "data.pi_spu", [1.0])
    for row in rows:
        want = predict_theory(replace(cfg, **{"data.pi_core": row["data.pi_core"]}))
        for got, ref in zip(row["records"], want, strict=True):
            assert got.get("range") == ref.get("range") or np.allclose(got["range"], ref["range"], atol=1e-12)
            if ref["accuracy"] is None:
                assert got["accuracy"] is None
            else:
                assert got["accuracy"] == pytest.approx(ref["accuracy"], abs=1e-12)


def test_parse_axis():
    assert parse_axis("data.pi_core=0:1:5") == ("data.pi_core", [0.0, 0.25, 0.5, 0.75, 1.0])
    for bad in ("data.pi_core", "data.pi_core=0:1", "x=a:1:2", "x=0:1:0"):
        with pytest.raises(UserError):
            parse_axis(bad)


def test_test_seed_depends_on_the_point():
    cfg = DataModel1Experiment()
    assert split_test_seed(cfg, "ood") == split_test_seed(DataModel1Experiment(), "ood")
    assert split_test_seed(cfg, "ood") != split_test_seed(replace(cfg, **{"data.pi_core": 0.5}), "ood")
    assert split_test_seed(cfg, "ood") != split_test_seed(cfg, "id")


def test_sigma_spu_assumption_warning():
    assert assumption_warnings(DataModel1Experiment()) == []
    bound = 1 / math.sqrt(math.log(20000))
    over = assumption_warnings(replace(DataModel1Experiment(), **{"data.sigma_spu": bound * 1.01}))
    assert len(over) == 1 and "data.sigma_spu" in over[0]
    assert assumption_warnings(replace(DataModel1Experiment(), **{"data.sigma_spu": bound * 0.99})) == []


@pytest.mark.slow  # scans the tied subspace (minutes on 2 cores)
def test_cli_theory_warns_at_a_tie(capsys):
    args = ["theory", "configs/data_model_2.yaml", "--json"] + [
        f"{k}={json.dumps(v).replace(' ', '')}" for k, v in RING_TIE.items()]
    assert main(args) == 0
    out, err = capsys.readouterr()
    recs = [json.loads(line) for line in out.splitlines()]
    assert all(r["accuracy"] is None for r in recs if r["method"] == "mmcl")
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "warning" in lines[0] and "s4=" in lines[0]


def test_cli_theory_map_json(capsys, tmp_path):
    assert main(["theory-map", "configs/data_model_1.yaml", "--x", "data.pi_core=0.2:1:3",
                 "--y", "data.pi_spu=0.5:1:2", "--json", "--out", str(tmp_path)]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(rows) == 6 and {"data.pi_core", "data.pi_spu", "records"} <= set(rows[0])
    assert (tmp_path / "theory_map.png").exists() and (tmp_path / "map.jsonl").exists()
    assert main(["theory-map", "configs/data_model_1.yaml", "--x", "data.nope=0:1:2",
                 "--y", "data.pi_spu=0:1:2"]) == 2
