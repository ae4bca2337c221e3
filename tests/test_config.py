"""Config validation: every bad input is a one-line error naming the key (or file and line)."""

from pathlib import Path

import pytest
import yaml

from mmclshift.config import ConfigError, apply_overrides, read_yaml, to_dict
from mmclshift.experiments import CONFIG_KINDS, load_config
from mmclshift.experiments.synthetic import DataModel1Experiment, DataModel2Experiment

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def _err(path, *overrides) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(path, list(overrides))
    msg = str(info.value)
    assert "\n" not in msg
    return msg


@pytest.mark.parametrize(
    "override, key",
    [
        ("data.pi_core=1.5", "data.pi_core"),
        ("data.pi_spu=-0.1", "data.pi_spu"),
        ("data.p_spu=2", "data.p_spu"),
        ("data.input.d_image=0", "data.input.d_image"),
        ("data.input.d_text=-3", "data.input.d_text"),
        ("mmcl.embed_dim=0", "mmcl.embed_dim"),
        ("n_train=1", "n_train"),
        ("data.sigma_core=-1", "data.sigma_core"),
        ("mmcl.rho=0", "mmcl.rho"),
    ],
)
def test_out_of_range_names_key(override, key):
    msg = _err(CONFIGS / "data_model_1.yaml", override)
    assert f"'{key}'" in msg and "data_model_1.yaml" in msg


@pytest.mark.parametrize(
    "override, key",
    [
        ("data.pi_core=high", "data.pi_core"),
        ("n_train=1.5", "n_train"),
        ("mmcl.learn_temperature=3", "mmcl.learn_temperature"),
        ("mmcl.loss=hinge", "mmcl.loss"),
        ("splits=id", "splits"),
        ("data=3", "data"),
    ],
)
def test_wrong_type_names_key(override, key):
    assert f"'{key}'" in _err(CONFIGS / "data_model_1.yaml", override)


def test_unknown_keys_named():
    assert "'data.pi_cor'" in _err(CONFIGS / "data_model_1.yaml", "data.pi_cor=0.5")
    assert "'bogus'" in _err(CONFIGS / "data_model_1.yaml", "bogus=1")
    assert "'mmcl.optim.lrate'" in _err(CONFIGS / "data_model_2.yaml", "mmcl.optim.lrate=1")


def test_cross_field_rules():
    assert "'data.class_details'" in _err(CONFIGS / "data_model_2.yaml", "data.num_classes=3")
    assert "'data.class_details[0]'" in _err(CONFIGS / "data_model_2.yaml", "data.class_details=[[9],[1],[2],[3]]")
    assert "'splits'" in _err(CONFIGS / "data_model_1.yaml", "splits=[id, test]")
    assert "'mmcl.solver'" in _err(CONFIGS / "data_model_1.yaml", "mmcl.solver=closed_form", "mmcl.loss=infonce")


def test_yaml_syntax_error_names_file_and_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("kind: data_model_1\nseed: 0\ndata:\n  pi_core: [1, 2\n")
    with pytest.raises(ConfigError) as info:
        read_yaml(bad)
    assert "bad.yaml:" in str(info.value) and "\n" not in str(info.value)


def test_missing_file_and_unknown_kind(tmp_path):
    assert "config file not found" in str(pytest.raises(ConfigError, load_config, tmp_path / "nope.yaml").value)
    f = tmp_path / "k.yaml"
    f.write_text("kind: data_model_9\n")
    assert "'kind'" in str(pytest.raises(ConfigError, load_config, f).value)


def test_overrides_nested_and_typed():
    cfg = load_config(CONFIGS / "data_model_1.yaml", ["data.pi_core=0.25", "seed=7", "mmcl.loss=infonce", "mmcl.embed_dim=4"])
    assert cfg.data.pi_core == 0.25 and cfg.seed == 7 and cfg.mmcl.loss == "infonce"
    assert apply_overrides({"a": {"b": 1}}, ["a.c=[1, 2]"]) == {"a": {"b": 1, "c": [1, 2]}}
    with pytest.raises(ConfigError):
        apply_overrides({"a": 1}, ["a.b=2"])
    with pytest.raises(ConfigError):
        apply_overrides({}, ["novalue"])


@pytest.mark.parametrize("name, cls", [("data_model_1", DataModel1Experiment), ("data_model_2", DataModel2Experiment)])
def test_shipped_configs_are_the_defaults(name, cls):
    """configs/*.yaml document the defaults: loading one equals the dataclass defaults (name aside)."""
    cfg = load_config(CONFIGS / f"{name}.yaml")
    want = to_dict(cls())
    got = to_dict(cfg)
    got.pop("name"), want.pop("name")
    assert got == want


def test_resolved_config_round_trips(tmp_path):
    cfg = load_config(CONFIGS / "data_model_2.yaml", ["data.pi_spu=0.5"])
    f = tmp_path / "c.yaml"
    f.write_text(yaml.safe_dump(to_dict(cfg)))
    assert to_dict(load_config(f)) == to_dict(cfg)
    assert set(CONFIG_KINDS) >= {"data_model_1", "data_model_2"}


@pytest.mark.parametrize("text, value", [("5e-1", 0.5), ("1E-2", 0.01), ("+2.5e-1", 0.25), (".25", 0.25)])
def test_exponent_form_numbers_are_numbers(text, value):
    """YAML 1.1 reads '5e-1' as a string; a float field takes it as the number it spells."""
    assert yaml.safe_load("5e-1") == "5e-1"
    cfg = load_config(CONFIGS / "data_model_1.yaml", [f"data.pi_core={text}"])
    assert cfg.data.pi_core == float(text) == value


def test_exponent_form_integer_field():
    assert load_config(CONFIGS / "data_model_1.yaml", ["n_train=2e3"]).n_train == 2000
    assert "'n_train'" in _err(CONFIGS / "data_model_1.yaml", "n_train=2.5e0")


@pytest.mark.parametrize("text", [".inf", "-.inf", ".nan", "1e999"])
def test_non_finite_floats_are_refused(text):
    msg = _err(CONFIGS / "data_model_1.yaml", f"data.core_mean={text}")
    assert "'data.core_mean'" in msg


@pytest.mark.parametrize("name", ["../../x", "a/b", "..", ".hidden", "-x", "", "a\x00b", "x" * 201])
def test_names_that_become_paths_are_checked(name):
    msg = _err(CONFIGS / "data_model_1.yaml", f"name={name!s}" if name else "name=''")
    assert "'name'" in msg and "file name" in msg


def test_config_layer_imports_no_experiment_layer():
    """config, errors and runs are lower layers: importing them loads no experiment module."""
    import subprocess
    import sys

    code = ("import sys, mmclshift.config, mmclshift.errors, mmclshift.runs; "
            "print(sorted(m for m in sys.modules if m.startswith('mmclshift.experiments') "
            "or m.startswith('mmclshift.cli')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_load_config_takes_the_registry_from_its_caller(tmp_path):
    from dataclasses import dataclass

    from mmclshift.config import load_config as load_with

    @dataclass
    class Tiny:
        kind: str = "tiny"
        x: float = 1.0

    f = tmp_path / "t.yaml"
    f.write_text("kind: tiny\nx: 2e0\n")
    assert load_with(f, [], {"tiny": Tiny}) == Tiny(x=2.0)
    with pytest.raises(ConfigError, match="'kind' must be one of tiny"):
        load_with(CONFIGS / "data_model_1.yaml", [], {"tiny": Tiny})
