"""params.yaml is validated: profiles overlay, overrides apply, bad keys/values are named."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from hmarl.config import ConfigError, HmarlConfig, build_config, load_config, parse_override

REPO_PARAMS = Path(__file__).resolve().parents[1] / "params.yaml"


def test_repo_params_are_valid_for_every_profile():
    raw = yaml.safe_load(REPO_PARAMS.read_text())
    for profile in raw["profiles"]:
        cfg = build_config(raw, [f"profile={profile}"])
        assert cfg.profile == profile


def test_profile_overlay_then_override_order():
    raw = {"synthetic": {"num_bars": 900}, "profiles": {"smoke": {"synthetic": {"num_bars": 700}}}}
    assert build_config(raw).synthetic.num_bars == 700  # overlay beats base
    assert build_config(raw, ["synthetic.num_bars=800"]).synthetic.num_bars == 800  # --set beats overlay


def test_full_profile_has_seed_sizes():
    cfg = load_config(REPO_PARAMS, ["profile=full"])
    assert cfg.universe.top_n == 143
    assert (cfg.env.num_envs, cfg.ppo.num_steps) == (128, 2048)


@pytest.mark.parametrize(
    ("override", "key", "reason"),
    [
        ("splits.n_folds=0", "splits.n_folds", "greater than or equal to 1"),
        ("synthetic.mode=sideways", "synthetic.mode", "planted_alpha"),
        ("universe.gap_rule=ffill", "universe.gap_rule", "'drop' or 'mask'"),
        ("splits.nfolds=3", "splits.nfolds", "unknown key"),
        ("colour=blue", "colour", "unknown key"),
        ("features.window=abc", "features.window", "integer"),
    ],
)
def test_bad_values_name_key_and_reason(override, key, reason):
    with pytest.raises(ConfigError) as exc:
        load_config(REPO_PARAMS, [override])
    msg = str(exc.value)
    assert f"{key}:" in msg and reason in msg and "params.yaml" in msg


def test_unknown_profile_and_bad_override_syntax():
    with pytest.raises(ConfigError, match="unknown profile 'gpu'"):
        load_config(REPO_PARAMS, ["profile=gpu"])
    with pytest.raises(ConfigError, match="expected KEY.PATH=VALUE"):
        parse_override("splits.n_folds")
    with pytest.raises(ConfigError, match="splits.n_folds is not a section"):
        load_config(REPO_PARAMS, ["splits.n_folds.x=1"])


def test_cross_field_rule_path_source_needs_path():
    with pytest.raises(ConfigError, match="data.path is required"):
        build_config({}, ["data.source=path"])


def test_override_values_are_typed_yaml():
    parts, value = parse_override("data.symbols=[AAPL, MSFT]")
    assert parts == ["data", "symbols"] and value == ["AAPL", "MSFT"]
    cfg = build_config({}, ["splits.expanding=false", "synthetic.ic=0.2"])
    assert cfg.splits.expanding is False and cfg.synthetic.ic == pytest.approx(0.2)


def test_missing_or_broken_params_file(tmp_path):
    with pytest.raises(ConfigError, match="params file not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "p.yaml"
    bad.write_text("splits: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)


def test_config_is_frozen():
    cfg = HmarlConfig()
    with pytest.raises(Exception, match="frozen"):
        cfg.seed = 1  # type: ignore[misc]
