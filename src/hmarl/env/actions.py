"""The 7 symbol actions and the master's directive grid.

Symbol actions are small ints so they travel as ``uint8``/``int64`` tensors; the table below turns an
action id into order parameters with one gather. The master's directive is one index into the
``risk multiplier x per-position cap x regime mode`` grid (4 x 4 x 3 = 48 by default).
"""

from __future__ import annotations

from enum import IntEnum

import torch

from hmarl.env.params import EnvConfig


class Action(IntEnum):
    HOLD = 0
    BUY_SMALL = 1
    BUY_MEDIUM = 2
    BUY_LARGE = 3
    SELL_PARTIAL = 4
    SELL_ALL = 5
    ADD_TO_WINNER = 6


NUM_ACTIONS = len(Action)
ACTION_NAMES = tuple(a.name for a in Action)
BUY_ACTIONS = (Action.BUY_SMALL, Action.BUY_MEDIUM, Action.BUY_LARGE)
SELL_ACTIONS = (Action.SELL_PARTIAL, Action.SELL_ALL)

# rows of the order table built by :func:`order_table`
BUY_FRAC, SELL_FRAC, IS_ADD = 0, 1, 2


def order_table(cfg: EnvConfig, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """``(3, 7)``: per action, the fraction of the allocation bought, of the shares sold, and the ADD flag."""
    table = torch.zeros(3, NUM_ACTIONS, dtype=torch.float64)
    for action, frac in zip(BUY_ACTIONS, cfg.buy_fractions, strict=True):
        table[BUY_FRAC, action] = frac
    table[SELL_FRAC, Action.SELL_PARTIAL] = cfg.sell_partial_fraction
    table[SELL_FRAC, Action.SELL_ALL] = 1.0
    table[IS_ADD, Action.ADD_TO_WINNER] = 1.0
    return table.to(device=device, dtype=dtype)


def grid_size(cfg: EnvConfig) -> int:
    m = cfg.master
    return len(m.risk_multipliers) * len(m.position_caps) * len(m.modes)


def directive_index(cfg: EnvConfig, risk: int, cap: int, mode: int) -> int:
    m = cfg.master
    return (risk * len(m.position_caps) + cap) * len(m.modes) + mode


def default_directive(cfg: EnvConfig) -> int:
    return directive_index(cfg, *cfg.master.default)


def decode_directive(cfg: EnvConfig, index: int) -> tuple[int, int, int]:
    """Index -> (risk, cap, mode) positions in the grid."""
    m = cfg.master
    n_modes, n_caps = len(m.modes), len(m.position_caps)
    return index // (n_caps * n_modes), (index // n_modes) % n_caps, index % n_modes


def cap_fraction(cfg: EnvConfig, cap: int, num_symbols: int) -> float:
    """Per-position cap ``position_caps[cap]`` as a fraction of equity (``cap_unit: equal_weight`` and
    ``vol_target``: a multiple of the equal-weight slot ``1 / num_symbols``; ``vol_target`` scales it per
    bar, ``env/vol_prior.py``)."""
    m = cfg.master
    return m.position_caps[cap] / (1.0 if m.cap_unit == "equity" else num_symbols)


def directive_table(
    cfg: EnvConfig, num_symbols: int, dtype: torch.dtype, device: torch.device
) -> torch.Tensor:
    """``(G, 3)``: per directive, risk multiplier, per-position cap as a fraction of equity and open-position
    limit (count). Caps come from :func:`cap_fraction`: under ``cap_unit: equal_weight`` a cap is a
    multiple of the equal-weight slot ``1 / num_symbols``, so every reader of the table (the simulator's
    allocation ``equity x cap x risk``, the exposure funnel, the master's figures) sees the same fraction."""
    m = cfg.master
    rows = []
    for index in range(grid_size(cfg)):
        risk, cap, mode = decode_directive(cfg, index)
        limit = max(1, round(m.max_open_fraction[mode] * num_symbols))
        rows.append(
            (m.risk_multipliers[risk], cap_fraction(cfg, cap, num_symbols), float(min(limit, num_symbols)))
        )
    return torch.tensor(rows, dtype=dtype, device=device)
