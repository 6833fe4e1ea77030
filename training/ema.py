"""Exponential moving average of the trainable parameters (used for validation samples)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn


class EMA:
    """``shadow = decay * shadow + (1 - decay) * param`` after every optimiser step.

    Build it from the (FSDP-)wrapped model: each shadow tensor then has its parameter's
    layout (a DTensor shard under FSDP), so every rank keeps only its shard.
    """

    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        self.shadow = {
            n: p.detach().clone().float() for n, p in model.named_parameters() if p.requires_grad
        }

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        for n, p in model.named_parameters():
            if n in self.shadow:
                self.shadow[n].lerp_(p.detach().float(), 1 - self.decay)

    @torch.no_grad()
    def copy_to(self, model: nn.Module) -> None:
        """Load the averaged weights into ``model`` (a separate copy used for sampling)."""
        for n, p in model.named_parameters():
            if n in self.shadow:
                p.copy_(self.shadow[n].to(p.dtype))

    @contextlib.contextmanager
    def swapped_in(self, model: nn.Module) -> Iterator[nn.Module]:
        """``model`` holding the averaged weights for the block, its own after it (even on
        an error). In place, so it works on an FSDP model, where no rank holds a whole copy
        to sample from: each rank swaps its own shards."""
        params = {n: p for n, p in model.named_parameters() if n in self.shadow}
        kept = {n: p.detach().clone() for n, p in params.items()}
        with torch.no_grad():
            for n, p in params.items():
                p.copy_(self.shadow[n].to(p.dtype))
        try:
            yield model
        finally:
            with torch.no_grad():
                for n, p in params.items():
                    p.copy_(kept[n])

    def state_dict(self) -> dict:
        return {"decay": self.decay, "shadow": self.shadow}

    def load_state_dict(self, state: dict) -> None:
        self.decay = state["decay"]
        for n, t in state["shadow"].items():
            self.shadow[n].copy_(t)
