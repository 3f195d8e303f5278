"""Stage 5 checklist values and the cross-seed telemetry diff, from recorded telemetry (plain dicts).

Telemetry record schema: one dict per PPO update, in order — the ``series`` list of the ``telemetry.json``
that ``train_symbols`` writes (``hmarl.learners.telemetry.update_metrics``). Keys read here:

=================================  =========  ====================================================
key                                required   meaning
=================================  =========  ====================================================
``global_step``                    yes        env steps done after this update
``policy_action_entropy_mean``     yes        entropy (nats) of the policy's action histogram
``executed_action_entropy_mean``   yes        same for the executed (sanitized) actions
``voluntary_trade_rate_mean``      yes        share of agent-steps with an executed non-HOLD action
``sanitizer_trade_delta_mean``     yes        policy trade rate - executed trade rate (0.15 = 15 pp)
``ep_unique_actions_mean``         once an    distinct executed actions per agent and episode
``ep_diversity_bonus_mean``        episode    diversity bonus per agent-step (raw, before its weight)
                                   ended
``executed_fraction_<ACTION>``     yes        share of the update's executed actions that were <ACTION>
``entropy_guard_interventions``    yes        agents whose actor the entropy guard shrank this update
``component_<name>``               yes        raw reward component per agent-step (weights applied here)
``loss_<name>``                    yes        PPO loss terms of the update
``mask_blocked_buy``               for the    BUY picks blocked by the mask (holding) this update
``mask_restored_sell``             masking    SELL picks restored by the mask this update
                                   check
=================================  =========  ====================================================

The six ``MANDATORY`` names of :mod:`hmarl.learners.telemetry` are the ones above marked mandatory.
The trainer writes every key above (``mask_blocked_buy`` / ``mask_restored_sell`` from
``hmarl.learners.collect.masking_events``); a series without the masking keys (an older run) gives a NaN
``warmup_masking_events``, which the gate fails (fails closed).

Every value here is a float; NaN means "not measurable from this series" (a run too short for the check
step, a key never recorded) and fails its gate criterion.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from hmarl.evaluation.params import Criterion, Stage5Config

MANDATORY = (  # the mandatory MLflow telemetry metrics; hmarl.learners.telemetry writes them
    "policy_action_entropy_mean",
    "executed_action_entropy_mean",
    "voluntary_trade_rate_mean",
    "sanitizer_trade_delta_mean",
    "ep_unique_actions_mean",
    "ep_diversity_bonus_mean",
)
MASKING_KEYS = ("mask_blocked_buy", "mask_restored_sell")
_NAN = float("nan")

Record = Mapping[str, float]


def _values(series: Sequence[Record], key: str) -> np.ndarray:
    """Finite values of ``key`` over the records that have it."""
    v = np.array([float(r[key]) for r in series if key in r], dtype=np.float64)
    return v[np.isfinite(v)]


def _mean(series: Sequence[Record], key: str) -> float:
    v = _values(series, key)
    return float(v.mean()) if v.size else _NAN


def _step(r: Record) -> float:
    return float(r.get("global_step", _NAN))


def entropy_checks(series: Sequence[Record], check_step: int) -> tuple[float, float]:
    """Policy entropy at the first update at/after ``check_step``, and the lowest entropy from there on
    over the updates where the entropy guard did not intervene (NaN if the run ends before the check)."""
    after = [r for r in series if _step(r) >= check_step]
    if not after:
        return _NAN, _NAN
    at_check = float(after[0].get("policy_action_entropy_mean", _NAN))
    calm = [r for r in after if not float(r.get("entropy_guard_interventions", 0.0)) > 0]
    lowest = _values(calm, "policy_action_entropy_mean")
    return at_check, float(lowest.min()) if lowest.size else _NAN


def executed_action_shares(series: Sequence[Record]) -> dict[str, float]:
    """Mean share of each executed action over the run (keys ``executed_fraction_<ACTION>``)."""
    keys = sorted({k for r in series for k in r if k.startswith("executed_fraction_")})
    return {k.removeprefix("executed_fraction_"): _mean(series, k) for k in keys}


def warmup_masking_events(series: Sequence[Record], warmup_steps: int) -> float:
    """Blocked-BUY plus restored-SELL events in the updates up to ``warmup_steps`` (the first update
    always counts); NaN when none of those updates recorded either key."""
    early = [r for i, r in enumerate(series) if i == 0 or _step(r) <= warmup_steps]
    seen = [float(r[k]) for r in early for k in MASKING_KEYS if k in r]
    return float(np.sum(seen)) if seen and all(math.isfinite(x) for x in seen) else _NAN


def reward_contributions(series: Sequence[Record], weights: Mapping[str, float]) -> dict[str, float]:
    """Mean weighted contribution ``weight x component`` per update of each weighted reward component
    (signed; the report's bar chart). Components with weight 0 or never recorded are left out."""
    out = {}
    for name, w in weights.items():
        v = _values(series, f"component_{name}")
        if w and v.size:
            out[name] = float(w * v.mean())
    return out


def reward_component_shares(series: Sequence[Record], weights: Mapping[str, float]) -> dict[str, float]:
    """Each reward component's share of the total |weighted contribution| over the run (sums to 1).
    Components with no weight are left out; an all-zero contribution gives NaN shares."""
    totals = {}
    for name, w in weights.items():
        v = _values(series, f"component_{name}")
        if w and v.size:
            totals[name] = float(np.abs(w * v).sum())
    grand = sum(totals.values())
    return {n: (t / grand if grand > 0 else _NAN) for n, t in totals.items()}


def entropy_curves(series: Sequence[Record]) -> dict[str, tuple[list[float], list[float]]]:
    """(env steps, values) of the policy and executed action entropy (the report's entropy chart)."""
    out = {}
    for label, key in (
        ("policy", "policy_action_entropy_mean"),
        ("executed", "executed_action_entropy_mean"),
    ):
        rows = [(_step(r), float(r[key])) for r in series if key in r]
        if rows:
            out[label] = ([x for x, _ in rows], [y for _, y in rows])
    return out


def nonfinite_updates(series: Sequence[Record]) -> float:
    """Updates with a non-finite loss term or mandatory telemetry value (training diverged)."""

    def bad(r: Record) -> bool:
        keys = [k for k in r if k.startswith("loss_")] + [k for k in MANDATORY if k in r]
        return any(not math.isfinite(float(r[k])) for k in keys)

    return float(sum(bad(r) for r in series))


def checklist_values(
    series: Sequence[Record], cfg: Stage5Config, weights: Mapping[str, float]
) -> dict[str, float]:
    """The Stage 5 (and training-stability) values of one seed's run, keyed by gate criterion name.
    ``weights``: the reward weight set used (``cfg.reward.weight_sets[cfg.reward.weights]``)."""
    if not series:
        return dict.fromkeys(STAGE5_VALUE_NAMES, _NAN)
    at_check, lowest = entropy_checks(series, cfg.check_step)
    shares = executed_action_shares(series)
    finite_shares = [s for s in shares.values() if math.isfinite(s)]
    rewards = reward_component_shares(series, weights)
    return {
        "diversity_bonus_mean": _mean(series, "ep_diversity_bonus_mean"),
        "policy_entropy_at_check": at_check,
        "policy_entropy_min_after_check": lowest,
        "voluntary_trade_rate_mean": _mean(series, "voluntary_trade_rate_mean"),
        "sanitizer_trade_delta_mean": _mean(series, "sanitizer_trade_delta_mean"),
        "max_executed_action_share": max(finite_shares) if finite_shares else _NAN,
        "warmup_masking_events": warmup_masking_events(series, cfg.warmup_steps),
        "reward_max_component_share": max(rewards.values()) if rewards else _NAN,
        "training_nonfinite_updates": nonfinite_updates(series),
    }


STAGE5_VALUE_NAMES = (
    "diversity_bonus_mean",
    "policy_entropy_at_check",
    "policy_entropy_min_after_check",
    "voluntary_trade_rate_mean",
    "sanitizer_trade_delta_mean",
    "max_executed_action_share",
    "warmup_masking_events",
    "reward_max_component_share",
    "training_nonfinite_updates",
)


def telemetry_summary(series: Sequence[Record]) -> dict[str, float]:
    """Run mean and final value of each mandatory telemetry metric (``<name>`` and ``<name>_final``)."""
    out = {}
    for key in MANDATORY:
        v = _values(series, key)
        out[key] = float(v.mean()) if v.size else _NAN
        last = [float(r[key]) for r in series if key in r]
        out[f"{key}_final"] = last[-1] if last else _NAN
    return out


# --------------------------------------------------------------------------- across seeds
@dataclass(frozen=True)
class SeedDiff:
    seeds: tuple[str, ...]
    per_seed: dict[str, dict[str, float]]  # seed -> metric -> value
    mean: dict[str, float]  # over the seeds with a finite value
    std: dict[str, float]  # sample std (ddof=1); NaN with fewer than 2 finite values
    count: dict[str, int]  # seeds with a finite value

    def rows(self) -> list[dict[str, object]]:
        """One row per metric: mean, std, n and each seed's value (for the report's table)."""
        return [
            {
                "metric": m,
                "mean": self.mean[m],
                "std": self.std[m],
                "n": self.count[m],
                **{f"seed {s}": self.per_seed[s].get(m, _NAN) for s in self.seeds},
            }
            for m in self.mean
        ]

    def to_dict(self) -> dict:
        return {
            "seeds": list(self.seeds),
            "per_seed": self.per_seed,
            "mean": self.mean,
            "std": self.std,
            "count": self.count,
        }


def seed_values(
    series: Sequence[Record], cfg: Stage5Config, weights: Mapping[str, float]
) -> dict[str, float]:
    """Everything compared across seeds for one run: the checklist values and the telemetry summary."""
    return {**checklist_values(series, cfg, weights), **telemetry_summary(series)}


def cross_seed_diff(per_seed: Mapping[object, Mapping[str, float]]) -> SeedDiff:
    """Mean ± std across seeds of every metric any seed reported, and the per-seed table."""
    seeds = tuple(str(s) for s in per_seed)
    table = {str(s): {k: float(v) for k, v in vals.items()} for s, vals in per_seed.items()}
    names = list(dict.fromkeys(k for vals in table.values() for k in vals))
    mean, std, count = {}, {}, {}
    for name in names:
        v = np.array([table[s].get(name, _NAN) for s in seeds], dtype=np.float64)
        v = v[np.isfinite(v)]
        count[name] = int(v.size)
        mean[name] = float(v.mean()) if v.size else _NAN
        std[name] = float(v.std(ddof=1)) if v.size >= 2 else _NAN
    return SeedDiff(seeds, table, mean, std, count)


def worst_seed_values(
    per_seed: Mapping[object, Mapping[str, float]], criteria: Mapping[str, Criterion]
) -> dict[str, float]:
    """Per criterion, the least favourable seed's value (min for > / >=, max for < / <=), so the gate
    passes only if every seed passes. A seed without a finite value makes it NaN (fails closed)."""
    out = {}
    for name, crit in criteria.items():
        vals = [float(v.get(name, _NAN)) for v in per_seed.values()]
        if not vals or any(not math.isfinite(x) for x in vals):
            if any(name in v for v in per_seed.values()):
                out[name] = _NAN
            continue
        out[name] = min(vals) if crit.op in (">", ">=") else max(vals)
    return out
