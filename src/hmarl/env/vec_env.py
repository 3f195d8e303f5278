"""The batched market simulator: ``num_envs`` accounts x ``num_symbols`` symbol agents, all tensors.

Timing of one ``step(actions)`` (no look-ahead: nothing of bar t+1 is seen before the fill at its open):

1. Decision at bar ``t`` (after its close): the policy saw the observation and masks of bar ``t``.
   Masked-out picks become HOLD; the repetition limit turns a 4th identical non-HOLD action into HOLD.
2. Fill at ``open[t + 1]`` (fills.py, transition.py): cancellations, sells, buys (position limit, pro-rata cash),
   commission and slippage; with ``master.rebalance`` on, at a due bar the master's trims / raises of held
   positions its agents HOLD (rebalance.py; ``info["rebalanced"]``).
3. Financing on negative cash (``env.financing_rate``) less interest on positive cash (``env.cash_rate``,
   the rate of bar ``t``) for the bar, then the account is marked at ``close[t + 1]``.
4. Rewards (rewards.py) for the step t -> t+1; anti-collapse window update; telemetry.
5. Termination (bankruptcy, max drawdown) or truncation (episode length, end of the bar range).
6. Next-step autoreset (Gymnasium ``AutoresetMode.NEXT_STEP``): an env that ended on the previous call
   ignores this call's actions, starts a new episode at a random bar of its range and returns the first
   observation with reward 0. (Its step is computed with the others and then discarded, so ``step``
   has no data-dependent branch and no host sync.)
7. Observation of the new bar (observe.py; its layout is the contract in spec.py): bar index, small
   per-agent and portfolio state, regime, directive, recent-action counts and the masks for the next
   decision. Market windows are not copied: gather
   them by ``obs.bar`` (data/windows.py).

The master acts every ``master.interval`` bars of an episode: before the symbol agents decide, call
:meth:`MarketEnv.set_directive` (applied where ``obs.master_due``), which refreshes allocations and masks.

Backends (``env.backend``): ``torch`` runs the step as batched tensor ops (CPU or CUDA, float32 or
float64); ``native`` runs the same step, on the same state tensors, as one fused C pass (native.py:
CPU and float64 only, prebuilt at install or built on first use); ``auto`` takes native where it applies.
Both are checked against the per-symbol reference in tests/env_reference.py, and against each other with
the neutral-hold options on (tests/test_env_neutral_hold.py). ``reset`` and ``set_directive`` always run
the torch code (a reset's initial purchase: initial.py; an autoreset's in the C step: native_step.c). On
CPU the torch backend is dispatch-bound at 64 x 143 (~450 ops per step).

Data of an env that was reset by a step (``info["reset"]``): reward, components and executed action
are 0 and the observation is the new episode's first; its other ``info`` entries mean nothing.
With ``check_actions: false`` ids must be in 0..6 (the native backend executes others as HOLD).
"""

from __future__ import annotations

import torch

from hmarl.env import masks as masks_mod
from hmarl.env import native
from hmarl.env.actions import default_directive, directive_table, grid_size, order_table
from hmarl.env.anti_collapse import ActionWindow, repetition_violations, tier_table
from hmarl.env.fills import FillParams
from hmarl.env.initial import buy_initial_positions, initial_order_table
from hmarl.env.market import MarketData
from hmarl.env.observe import observe
from hmarl.env.params import REWARD_COMPONENTS, EnvConfig, RewardConfig
from hmarl.env.spec import NUM_ACTIONS, Observation, StepResult, check_ids
from hmarl.env.telemetry import STEP_SUMS, EpisodeLog
from hmarl.env.transition import Moved, fill_and_mark, step_rewards
from hmarl.env.vol_prior import cap_scaling
from hmarl.errors import DataError


class MarketEnv:
    """Batched simulator over ``market`` bars ``[bar_range[0], bar_range[1])`` (a fold's allowed bars).

    Episodes start at a random bar in ``[max(bar_range[0], min_history), bar_range[1] - 1 - episode_length]``
    (pass ``min_history = window - 1`` so that a full feature window exists) and never observe or fill a
    bar at or beyond ``bar_range[1]``: an episode reaching the range's last bar is truncated.

    ``step``/``reset`` run under ``torch.inference_mode`` (it cuts the per-op overhead that dominates at
    64 x 143 by about a third): their outputs are inference tensors, fine to read, copy into a rollout
    buffer or feed to a policy under ``no_grad``; clone one before saving it for backward.
    """

    def __init__(
        self,
        market: MarketData,
        env_cfg: EnvConfig,
        reward_cfg: RewardConfig,
        *,
        num_envs: int | None = None,
        bar_range: tuple[int, int] | None = None,
        min_history: int = 0,
        seed: int = 0,
    ):
        self.market, self.cfg, self.rcfg = market, env_cfg, reward_cfg
        self.device = market.device
        self.dtype = market.table.dtype
        n = self.num_envs = num_envs or env_cfg.num_envs
        s = self.num_symbols = market.num_symbols
        lo, hi = bar_range or (0, market.num_bars)
        lo = max(lo, min_history)
        if not 0 <= lo < hi - 1 or hi > market.num_bars:
            raise DataError(
                f"env: bar range [{lo}, {hi}) (after min_history={min_history}) needs at least 2 bars "
                f"inside the {market.num_bars} bars of the market"
            )
        self.bar_lo, self.bar_hi = lo, hi
        # episodes start where a full episode fits when the range allows it
        self.start_hi = max(lo, hi - 1 - env_cfg.episode_length)
        dev, dt = self.device, self.dtype
        self.generator = torch.Generator(device=dev)
        self.generator.manual_seed(seed)

        self.order_table = order_table(env_cfg, dt, dev)
        self.directives = directive_table(env_cfg, s, dt, dev)
        self.cap_scale, self.cap_ceiling = cap_scaling(env_cfg, market)  # caps per bar (env/vol_prior.py)
        self.num_directives = grid_size(env_cfg)
        self.default_directive = default_directive(env_cfg)
        self.buy_fracs = torch.tensor(env_cfg.buy_fractions, dtype=dt, device=dev)
        self.mask_table = masks_mod.mask_table(dev)
        self.tiers = tier_table(env_cfg.diversity_tiers, dt, dev)
        self.weights = torch.tensor(reward_cfg.weight_vector(), dtype=dt, device=dev)
        self.master_weights = torch.tensor(reward_cfg.master_weight_vector(), dtype=dt, device=dev)
        self.fill_params = FillParams(
            fee=env_cfg.fee_rate,
            slip_base=env_cfg.slippage_bps / 1e4,
            slip_vol=env_cfg.slippage_vol_coef,
            slip_impact=env_cfg.slippage_impact_coef,
            slip_max=env_cfg.slippage_max,
            add_fraction=env_cfg.add_fraction,
            min_order_fraction=env_cfg.min_order_fraction,
        )
        self.initial_table = initial_order_table(self.order_table, env_cfg.initial_fraction)
        self.alpha = 2.0 / (reward_cfg.sharpe_window + 1.0)
        self.financing_per_bar = env_cfg.financing_rate / market.bars_per_year
        self.lev_room = (env_cfg.max_leverage - 1.0) if env_cfg.allow_leverage else 0.0

        # State lives in a few blocks so that an autoreset is one multiply per block.
        self._agent = torch.zeros(7, n, s, dtype=dt, device=dev)
        self.shares, self.entry, self.peak_px, self.hold, self.ema_m, self.ema_v, self.run = (
            self._agent.unbind(0)
        )
        self._agent_int = torch.zeros(2, n, s, dtype=torch.int64, device=dev)
        self.last, self.seen = self._agent_int.unbind(0)  # seen: one byte per action executed this episode
        self.window = ActionWindow(n, s, env_cfg.diversity_window, dev)
        self._account = torch.zeros(6, n, dtype=dt, device=dev)
        self.cash, self.equity, self.peak_eq, self.max_dd, self.port_m, self.port_v = self._account.unbind(0)
        self._clock = torch.zeros(4, n, dtype=torch.int64, device=dev)
        self.t, self.k, self.start, self.directive = self._clock.unbind(0)
        self.done = torch.zeros(n, dtype=torch.bool, device=dev)
        self.entry_cost = torch.zeros(n, s, dtype=dt, device=dev)  # of the initial purchase (initial.py)
        self.log = EpisodeLog(n, s, dt, dev)
        self._buf = torch.zeros(len(REWARD_COMPONENTS) + len(STEP_SUMS), n, s, dtype=dt, device=dev)
        self._obs: Observation | None = None
        self.backend = self._pick_backend()
        self._native = native.bind(self) if self.backend == "native" else None

    def _pick_backend(self) -> str:
        wanted = self.cfg.backend
        if wanted == "torch":
            return "torch"
        applies = self.device.type == "cpu" and self.dtype == torch.float64
        lib = native.load() if applies else None
        if lib is not None:
            return "native"
        if wanted == "native":
            why = (
                "a CPU device and dtype float64"
                if not applies
                else "its C kernel (a C compiler, or prebuilt)"
            )
            raise RuntimeError(f"env.backend=native needs {why}; use backend auto or torch")
        return "torch"

    # ------------------------------------------------------------------ reset
    @torch.inference_mode()
    def reset(
        self, seed: int | None = None, directive: int | None = None, elapsed: int = 0, in_cash: bool = False
    ) -> Observation:
        """Start every env's episode at a random bar of the range (under ``directive``; default the
        configured default directive), ``elapsed`` bars into it (the master is due when a multiple of
        ``master.interval`` bars have passed: a desk resuming under a held directive). ``in_cash``: start
        flat whatever ``env.initial_position`` says (a live desk, whose account is its own)."""
        if seed is not None:
            self.generator.manual_seed(seed)
        everyone = torch.ones(self.num_envs, dtype=torch.bool, device=self.device)
        self._reset_where(everyone, directive, elapsed, in_cash)
        self.log.acc.zero_()
        self.log.count.zero_()
        self.done.zero_()
        self._obs = self._observe()
        return self._obs

    def _reset_where(
        self, r: torch.Tensor, directive: int | None = None, elapsed: int = 0, in_cash: bool = False
    ) -> None:
        """Reset envs where ``r`` (N,) bool to a fresh episode at a newly drawn start bar, ``elapsed``
        bars into it.

        A start is drawn for every env on every call (used only where ``r``), so the generator's stream
        does not depend on which envs ended.
        """
        starts = torch.randint(
            self.bar_lo, self.start_hi + 1, (self.num_envs,), generator=self.generator, device=self.device
        )
        rl = r.long()
        keepl = 1 - rl
        keep = keepl.to(self.dtype)
        self._agent.mul_(keep.view(1, -1, 1))
        self._agent_int.mul_(keepl.view(1, -1, 1))
        self.window.reset_where(keepl)
        self._account.mul_(keep)
        self._account[:3].add_(rl.to(self.dtype), alpha=self.cfg.initial_cash)  # cash, equity, peak equity
        self._clock.mul_(keepl)
        fresh = torch.stack(
            [
                starts,
                torch.full_like(starts, elapsed),
                starts,
                torch.full_like(starts, self.default_directive if directive is None else directive),
            ]
        )
        self._clock.add_(fresh * rl)
        self.log.reset_where(keep)
        if self.cfg.initial_position == "allocation" and not in_cash:
            buy_initial_positions(self, r)

    # ------------------------------------------------------------------ master
    @torch.inference_mode()
    def set_directive(self, directive: torch.Tensor) -> Observation:
        """Apply the master's directive indices (N,) where the master is due; returns the refreshed obs."""
        if self.cfg.check_actions:
            check_ids(directive, (self.num_envs,), self.num_directives, "directive")
        self.directive.copy_(torch.where(self._obs.master_due, directive.long(), self.directive))
        self._obs = self._observe()
        return self._obs

    # ------------------------------------------------------------------ step
    @torch.inference_mode()
    def step(self, actions: torch.Tensor) -> StepResult:
        if self._obs is None:
            raise RuntimeError("call reset() before step()")
        if self.cfg.check_actions:
            check_ids(actions, (self.num_envs, self.num_symbols), NUM_ACTIONS, "actions")
        if self._native is not None:
            return self._native.step(actions)
        a = actions if actions.dtype == torch.int64 else actions.long()
        ctx = self._ctx
        reset_now = self.done.clone()  # envs that ended on the previous call: this call resets them
        valid, forced, decided = self._decide(a, ctx)
        moved = fill_and_mark(self, decided, ctx)
        reward, components, master_reward, master_components = step_rewards(self, moved, ctx, valid, forced)
        executed = moved.fills.executed
        self.run.mul_(executed == self.last).add_(1.0)
        self.last.copy_(executed)
        terminated, truncated, ended = self._end_episodes(a, moved, master_reward, reset_now)

        # 6. next-step autoreset of the envs that ended on the previous call
        self._reset_where(reset_now)
        keep = (~reset_now).to(self.dtype)
        reward = reward * keep.unsqueeze(1)
        components = components * keep.view(1, -1, 1)
        master_reward = master_reward * keep
        master_components = master_components * keep
        executed = executed * (~reset_now).unsqueeze(1)
        self.done.copy_(ended)
        obs = self._observe()
        self._obs = obs
        fills = moved.fills
        info = {
            "forced_hold": forced,
            "invalid_action": ~valid,
            "cost": fills.cost,
            "financing": moved.financing,
            "buy_scale": fills.buy_scale,
            "reset": reset_now,
            "rebalanced": moved.rebalanced * keep.unsqueeze(1),
        }
        return StepResult(
            obs,
            reward,
            components,
            master_reward,
            master_components,
            ended & terminated,
            ended & truncated,
            actions,
            executed,
            info,
        )

    def _decide(self, a: torch.Tensor, ctx: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """1. Decision at t: masked-out picks become HOLD, then the repetition limit.
        Returns ``(valid, forced, decided actions)``."""
        valid = ctx["mask"].gather(2, a.unsqueeze(2)).squeeze(2)
        a1 = a * valid
        forced = repetition_violations(a1, self.last, self.run, self.cfg.max_consecutive_actions)
        return valid, forced, a1 * ~forced

    def _end_episodes(self, a: torch.Tensor, m: Moved, master_reward: torch.Tensor, reset_now: torch.Tensor):
        """5. Termination and truncation, then telemetry: this step, then the rows of the episodes that just
        ended. Returns ``(terminated, truncated, ended)``."""
        self.t.copy_(m.t1)
        self.k.add_(1)
        terminated = (self.equity <= self.cfg.bankruptcy_fraction * self.cfg.initial_cash) | (
            m.drawdown >= self.cfg.max_drawdown
        )
        truncated = ((self.k >= self.cfg.episode_length) | (m.t1 >= self.bar_hi - 1)) & ~terminated
        ended = (terminated | truncated) & ~reset_now
        self.log.accumulate(a, m.fills.executed, self._buf.sum(2), master_reward, m.financing)
        bench = self.market.benchmark
        bench_ret = bench.index_select(0, m.t1) / bench.index_select(0, self.start) - 1.0
        finals = torch.stack(
            [
                self.equity / self.cfg.initial_cash - 1.0,
                self.max_dd,
                bench_ret,
                terminated.to(self.dtype),
            ]
        )
        self.log.finish(ended, finals)
        return terminated, truncated, ended

    # ------------------------------------------------------------------ observation
    def _observe(self) -> Observation:
        """Observation and decision context of bar ``self.t`` (state after its close)."""
        obs, self._ctx = observe(self)
        return obs

    # ------------------------------------------------------------------ telemetry
    def get_episode_stats(self) -> dict[str, float]:
        """Means over the episodes that ended since the last call (see telemetry.EpisodeLog)."""
        return self.log.collect()

    def state(self) -> dict[str, torch.Tensor]:
        """Copies of the account state (for tests, checkpoints and debugging)."""
        names = {
            "shares": self.shares,
            "entry": self.entry,
            "peak_px": self.peak_px,
            "hold": self.hold,
            "run": self.run,
            "last": self.last,
            "cash": self.cash,
            "equity": self.equity,
            "peak_equity": self.peak_eq,
            "t": self.t,
            "k": self.k,
            "directive": self.directive,
        }
        return {k: v.clone() for k, v in names.items()}
