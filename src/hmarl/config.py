"""Typed configuration: ``params.yaml`` is the one source, validated here.

Loading order: base file -> profile overlay (``profiles.<name>``) -> ``--set a.b=c`` overrides.
Unknown keys and bad values raise :class:`ConfigError` naming the dotted key path and the reason.
Each section is a small model with ``extra="forbid"``; later issues add their own sections here.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, ValidationError, model_validator

from hmarl.agents.master_params import MasterConfig
from hmarl.agents.params import AgentConfig
from hmarl.encoders.params import EncoderConfig
from hmarl.env.params import EnvConfig, RewardConfig
from hmarl.evaluation.params import GateConfig, PromoteConfig, Stage5RunConfig, WalkForwardConfig
from hmarl.learners.params import PPOConfig
from hmarl.params_base import Section
from hmarl.serve.positions import DeskConfig
from hmarl.sl.params import SLConfig


class ConfigError(ValueError):
    """A configuration problem; the message names the key path."""


# --------------------------------------------------------------------------- data sources
class ExogenousSource(Section):
    name: str = Field(min_length=1)
    path: str = Field(min_length=1)
    columns: list[str] | None = None  # None: every numeric column except timestamp
    # bars in a row that may carry the last value forward (None: data.max_fill_bars); a monthly series on
    # daily bars needs ~23
    max_fill_bars: int | None = Field(None, ge=0)


class DataConfig(Section):
    source: Literal["synthetic", "path"] = "synthetic"
    path: str | None = None  # file, directory or glob (long Parquet/CSV, or wide files per symbol)
    layout: Literal["long", "wide"] = "long"
    benchmark_path: str | None = None
    benchmark_symbol: str = "SPY"
    exogenous: list[ExogenousSource] = Field(default_factory=list)
    symbols: list[str] | None = None  # explicit universe; None: top-N selection
    session_tz: str = "America/New_York"  # time zone whose local date defines a trading session
    # exchange calendar (exchange_calendars name: XNYS, XLON, ..., 24/7, 24/5): holidays and early closes
    # are not gaps, annualization = the calendar's bars per year; None: the data's own calendar (day bars on
    # Mon-Fri business days, annualized over the data's span), as the embedded synthetic market is laid out
    calendar: str | None = None
    max_fill_bars: int = Field(3, ge=0)  # benchmark / exogenous holes filled forward up to this many bars

    @model_validator(mode="after")
    def _path_needed(self) -> DataConfig:
        if self.source == "path" and not self.path:
            raise ValueError("data.path is required when data.source is 'path'")
        return self


class SyntheticConfig(Section):
    mode: Literal["random_walk", "planted_alpha", "regime"] = "planted_alpha"
    num_symbols: int = Field(160, ge=2)
    num_bars: int = Field(1500, ge=100)
    freq: str = "1D"  # pandas offset alias: 1D (NYSE business days), 1h, 5min, ...
    start: str = "2012-01-03"
    seed: int = 7
    ic: float = Field(0.10, ge=0.0, lt=1.0)  # planted_alpha: corr(signal_t, return_{t+1})
    num_factors: int = Field(3, ge=1)
    annual_vol: float = Field(0.25, gt=0.0)
    crashes: bool = False  # crash regimes in planted_alpha / random_walk too (always on in regime mode)
    crash_prob: float = Field(0.004, ge=0.0, le=1.0)  # regime: per-bar chance a crash regime starts
    crash_depth: float = Field(0.35, gt=0.0, lt=5.0)  # regime: expected market log drop over one crash
    crash_days: float = Field(15.0, gt=0.0)  # regime: mean crash length in trading days
    drift: float = 0.05  # annual log drift of every symbol (outside crash/recovery)


class UniverseConfig(Section):
    top_n: int = Field(143, ge=1)
    dollar_volume_window: int = Field(252, ge=1)  # trailing bars used for the median dollar volume
    gap_rule: Literal["drop", "mask"] = "drop"
    max_missing_fraction: float = Field(0.05, ge=0.0, le=1.0)  # with gap_rule=mask
    # start: rank on the first window of the data, so the universe uses no information from later
    # (test) periods; end: rank on the last window (look-ahead for any backtest before it)
    selection_at: Literal["start", "end"] = "start"


class AllowedPrint(Section):
    symbol: str = Field(min_length=1)
    timestamp: str = Field(min_length=1)  # the bar's timestamp or its trading date (2008-10-13)


class ValidationConfig(Section):
    max_abs_return: float = Field(0.5, gt=0.0)  # bars beyond are reported as outliers
    max_outlier_fraction: float = Field(0.001, ge=0.0, le=1.0)
    max_calendar_gap_bars: int = Field(
        5, ge=0
    )  # longest allowed gap, in expected bars (0: none, with data.calendar)
    min_bars_per_symbol: int = Field(100, ge=1)
    # bad prints: a price that leaves the symbol's recent range and comes straight back (see data/bad_prints.py)
    bad_print_sigmas: float = Field(25.0, gt=0.0)  # open/close move out and back, in robust sigmas
    bad_print_sigmas_high_low: float = Field(
        50.0, gt=0.0
    )  # the same for high/low (flash-crash lows are real)
    bad_print_window: int = Field(60, ge=5)  # bars before the print that set the symbol's robust sigma
    bad_print_reversion: float = Field(0.7, gt=0.0, le=1.0)  # the next bar gives back this much of the move
    allow_bad_prints: list[AllowedPrint] = Field(default_factory=list)  # known genuine events


class FeaturesConfig(Section):
    window: int = Field(24, ge=2)  # bars the models see
    label_horizon: int = Field(1, ge=1)  # bars ahead the labels look
    warmup_bars: int = Field(60, ge=0)  # leading bars dropped (indicators not yet defined)


class SplitsConfig(Section):
    n_folds: int = Field(3, ge=1)
    train_bars: int = Field(500, ge=10)
    val_bars: int = Field(100, ge=1)
    test_bars: int = Field(150, ge=1)
    embargo_bars: int = Field(5, ge=0)
    expanding: bool = True  # train window grows (anchored) or slides


class TrackingConfig(Section):
    enabled: bool = True  # False: steps log nothing (tests)
    mlflow_uri: str = "sqlite:///mlruns.db"
    artifact_root: str = "mlartifacts"
    experiment: str = "hmarl"
    tensorboard_dir: str = "runs"


class HmarlConfig(Section):
    profile: str = "smoke"
    seed: int = 42
    device: Literal["cpu", "cuda", "auto"] = "auto"
    data: DataConfig = DataConfig()
    synthetic: SyntheticConfig = SyntheticConfig()
    universe: UniverseConfig = UniverseConfig()
    validation: ValidationConfig = ValidationConfig()
    features: FeaturesConfig = FeaturesConfig()
    splits: SplitsConfig = SplitsConfig()
    tracking: TrackingConfig = TrackingConfig()
    env: EnvConfig = EnvConfig()
    reward: RewardConfig = RewardConfig()
    sl: SLConfig = SLConfig()
    encoder: EncoderConfig = EncoderConfig()
    agent: AgentConfig = AgentConfig()
    ppo: PPOConfig = PPOConfig()
    master: MasterConfig = MasterConfig()
    gate: GateConfig = GateConfig()
    stage5: Stage5RunConfig = Stage5RunConfig()
    walk_forward: WalkForwardConfig = WalkForwardConfig()
    promote: PromoteConfig = PromoteConfig()
    desk: DeskConfig = DeskConfig()


# --------------------------------------------------------------------------- loading
def _format_errors(err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        path = ".".join(str(p) for p in e["loc"]) or "<root>"
        reason = "unknown key" if e["type"] == "extra_forbidden" else e["msg"]
        lines.append(f"  {path}: {reason} (got {e.get('input')!r})")
    return "invalid configuration:\n" + "\n".join(lines)


def parse_override(text: str) -> tuple[list[str], Any]:
    """``a.b=c`` -> (["a", "b"], value parsed as YAML so numbers/bools/lists work)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r}: expected KEY.PATH=VALUE")
    key, raw = text.split("=", 1)
    parts = key.strip().split(".")
    if not all(parts):
        raise ConfigError(f"override {text!r}: empty key segment")
    try:
        value = yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {key}: value {raw!r} is not valid YAML ({exc})") from exc
    return parts, value


def _set_path(tree: dict, parts: list[str], value: Any, origin: str) -> None:
    node = tree
    for i, part in enumerate(parts[:-1]):
        nxt = node.setdefault(part, {})
        if not isinstance(nxt, dict):
            raise ConfigError(f"{origin}: {'.'.join(parts[: i + 1])} is not a section")
        node = nxt
    node[parts[-1]] = value


def _merge(tree: dict, overlay: dict) -> None:
    for key, value in overlay.items():
        if isinstance(value, dict) and isinstance(tree.get(key), dict):
            _merge(tree[key], value)
        else:
            tree[key] = value


def build_config(raw: dict | None, overrides: list[str] | tuple[str, ...] = ()) -> HmarlConfig:
    """Validate a raw params tree (with its ``profiles`` block) plus overrides."""
    tree = copy.deepcopy(raw or {})
    if not isinstance(tree, dict):
        raise ConfigError("params: top level must be a mapping")
    profiles = tree.pop("profiles", {}) or {}
    parsed = [parse_override(o) for o in overrides]
    # a --set profile=... must pick the overlay before the overlay is applied
    for parts, value in parsed:
        if parts == ["profile"]:
            tree["profile"] = value
    profile = tree.get("profile", HmarlConfig.model_fields["profile"].default)
    if profile not in profiles and profiles:
        raise ConfigError(f"profile: unknown profile {profile!r} (known: {sorted(profiles)})")
    overlay = profiles.get(profile) or {}
    if not isinstance(overlay, dict):
        raise ConfigError(f"profiles.{profile}: must be a mapping")
    _merge(tree, copy.deepcopy(overlay))
    for parts, value in parsed:
        _set_path(tree, parts, value, f"--set {'.'.join(parts)}")
    try:
        return HmarlConfig.model_validate(tree)
    except ValidationError as exc:
        raise ConfigError(_format_errors(exc)) from None


def load_config(path: str | Path = "params.yaml", overrides: list[str] | tuple[str, ...] = ()) -> HmarlConfig:
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{path}: params file not found")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc})") from exc
    try:
        return build_config(raw, overrides)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def config_dict(cfg: HmarlConfig) -> dict:
    return cfg.model_dump(mode="json")
