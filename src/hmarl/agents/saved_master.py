"""The trained master as a file: a plain dict that loads with ``torch.load(weights_only=True)``.

{"version", "state_dict", "master" (the master: params), "dims", "interval", "symbols", "feature_names",
 "fingerprint", "fold"}
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from hmarl.agents.master import MasterAgent
from hmarl.agents.master_params import MasterConfig
from hmarl.errors import DataError
from hmarl.io import atomic_path
from hmarl.safe_load import guarded, read_weights

MASTER_VERSION = "master-agent-1"


def save_master(path: str | Path, master: MasterAgent, **meta) -> None:
    payload = {
        "version": MASTER_VERSION,
        "state_dict": {k: v.detach().cpu() for k, v in master.state_dict().items()},
        "master": master.cfg.model_dump(mode="json"),
        "dims": {
            "obs_dim": master.obs_dim,
            "joint_dim": master.joint_dim,
            "num_directives": master.num_directives,
        },
        **meta,
    }
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def load_master(path: str | Path, device: str | torch.device = "cpu") -> tuple[MasterAgent, dict[str, Any]]:
    path = Path(path)
    payload = read_weights(path)
    if payload.get("version") != MASTER_VERSION:
        raise DataError(f"{path}: not a master-agent checkpoint of version {MASTER_VERSION}")

    def build() -> MasterAgent:
        master = MasterAgent(MasterConfig(**payload["master"]), **payload["dims"])
        master.load_state_dict(payload["state_dict"])
        return master.to(device).eval()

    master = guarded(path, build, "master-agent checkpoint")
    return master, {k: v for k, v in payload.items() if k != "state_dict"}
