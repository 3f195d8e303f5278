"""The trained symbol agent as a file: a plain dict that loads with ``torch.load(weights_only=True)``.

{"version", "state_dict", "agent" (the agent: params), "dims", "symbols", "feature_names",
 "fingerprint", "fold", "encoder": None | {"hparams", "window"} (fine-tuned encoder rebuild info)}
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from hmarl.agents.params import AgentConfig
from hmarl.agents.symbol import SymbolAgent
from hmarl.errors import DataError
from hmarl.io import atomic_path
from hmarl.safe_load import guarded, read_weights

AGENT_VERSION = "symbol-agent-1"


def agent_dims(agent: SymbolAgent) -> dict[str, Any]:
    return {
        "num_symbols": agent.num_symbols,
        "market_dim": int(agent.w_market.shape[0]),
        "env_dim": int(agent.w_env.shape[0]),
        "counts_scale": float(agent.counts_scale),
    }


def save_agent(path: str | Path, agent: SymbolAgent, state_dict: dict[str, torch.Tensor], **meta) -> None:
    payload = {
        "version": AGENT_VERSION,
        "state_dict": {k: v.detach().cpu() for k, v in state_dict.items()},
        "agent": agent.cfg.model_dump(mode="json"),
        "dims": agent_dims(agent),
        **meta,
    }
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def load_agent(path: str | Path, device: str | torch.device = "cpu") -> tuple[SymbolAgent, dict[str, Any]]:
    """Rebuild a saved agent (with its fine-tuned encoder, if any) on ``device``."""
    path = Path(path)
    payload = read_weights(path)
    if payload.get("version") != AGENT_VERSION:
        raise DataError(f"{path}: not a symbol-agent checkpoint of version {AGENT_VERSION}")
    agent = guarded(path, lambda: _rebuild(payload).to(device).eval(), "symbol-agent checkpoint")
    return agent, {k: v for k, v in payload.items() if k != "state_dict"}


def _rebuild(payload: dict[str, Any]) -> SymbolAgent:
    encoder = None
    if payload.get("encoder"):
        from hmarl.encoders.model import SharedEncoder
        from hmarl.encoders.params import EncoderConfig

        info, s = payload["encoder"], payload["dims"]["num_symbols"]
        encoder = SharedEncoder(
            EncoderConfig(**info["hparams"]), info["window"], len(payload["feature_names"]), torch.zeros(s, s)
        )
    agent = SymbolAgent(AgentConfig(**payload["agent"]), encoder=encoder, **payload["dims"])
    agent.load_state_dict(payload["state_dict"])
    return agent
