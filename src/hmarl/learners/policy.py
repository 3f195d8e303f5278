"""The trained policies as actor-critics in CleanRL's ``get_action_and_value`` style: one call runs the
network and gives the action (sampled, or the one passed in), its distribution and the value, so acting
in a rollout and scoring actions in the loss read the network the same way.

The distribution is built lazily (:class:`ActionValue.pi`): the loss builds its own from the raw logits.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from functools import cached_property

import torch

from hmarl.agents.distributions import Categorical
from hmarl.agents.inputs import AgentTables, PolicyObs


@dataclass
class ActionValue:
    logits: torch.Tensor  # raw actor logits
    value: torch.Tensor
    mask: torch.Tensor | None  # allowed actions (None: every action allowed)
    action: torch.Tensor | None = None

    @cached_property
    def pi(self) -> Categorical:
        return Categorical(self.logits, self.mask)


def _with_action(
    av: ActionValue, action: torch.Tensor | None, generator: torch.Generator | None
) -> ActionValue:
    av.action = action if action is not None or generator is None else av.pi.sample(generator)
    return av


class SymbolActorCritic:
    """The symbol agents (or their DDP wrapper) over the masked 7-action distribution. ``projected``: the
    market table projected under the current weights (a rollout computes it once); ``amp``: the autocast
    the network runs under."""

    def __init__(
        self,
        model: torch.nn.Module,
        tables: AgentTables,
        amp: contextlib.AbstractContextManager | None = None,
        projected: torch.Tensor | None = None,
    ):
        self.model, self.tables, self.projected = model, tables, projected
        self.amp = amp if amp is not None else contextlib.nullcontext()

    def get_action_and_value(
        self, obs: PolicyObs, action: torch.Tensor | None = None, generator: torch.Generator | None = None
    ) -> ActionValue:
        """``action`` given: scored as is; else sampled with ``generator`` (None: no action)."""
        with self.amp:
            logits, value = self.model(obs, self.tables, self.projected)
        return _with_action(ActionValue(logits, value, obs.mask), action, generator)


class MasterActorCritic:
    """The master (or its DDP wrapper) over the directive grid; its critic reads the joint state (MAPPO)
    or only the master's observation (IPPO), as the network was built."""

    def __init__(self, model: torch.nn.Module):
        self.model = model

    def get_action_and_value(
        self,
        obs: torch.Tensor,
        joint: torch.Tensor,
        action: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> ActionValue:
        logits, value = self.model(obs, joint)
        return _with_action(ActionValue(logits, value, None), action, generator)
