"""The config a symbol-agent stage runs with: training, Stage 5 and the walk-forward baselines share it."""

from __future__ import annotations

from pydantic import ValidationError

from hmarl.config import ConfigError, HmarlConfig
from hmarl.env.params import MasterGridConfig


def symbol_stage_config(cfg: HmarlConfig) -> HmarlConfig:
    """``cfg`` with ``ppo.directive`` (when set) as the env's fixed master directive: symbol agents are
    trained, and backtested, before a master exists, so the directive they face is a stage setting."""
    if cfg.ppo.directive is None:
        return cfg
    try:
        master = MasterGridConfig.model_validate(
            {**cfg.env.master.model_dump(), "default": cfg.ppo.directive}
        )
    except ValidationError as exc:
        raise ConfigError(f"ppo.directive: {exc.errors()[0]['msg']}") from None
    env = cfg.env.model_copy(update={"master": master})
    return cfg.model_copy(update={"env": env})
