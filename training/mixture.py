"""The weighted dataset mixture: resumable sample streams per (dataset, task) and the draw.

A ``Stream`` is an endless iterator made from a seed. A positioned stream (latent shards)
records its position (epoch, shard, index) and resume restarts there; any other stream's
position is the number of samples consumed, and resume re-creates it and skips that many.
The ``Mixture``'s choices come from one numpy generator whose state is checkpointed.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator

import numpy as np

log = logging.getLogger(__name__)

StreamFactory = Callable[[int], Iterator[dict]]  # seed -> endless iterator of samples
# (seed, position or None) -> endless iterator of (sample, position after it); marked by a
# ``positioned = True`` attribute so Stream restores it without replay.
PositionedFactory = Callable[[int, dict | None], Iterator[tuple[dict, dict]]]
TASKS = ("t2v", "i2v")


class Stream:
    """An endless sample iterator whose position can be saved and restored.

    A plain factory is restored by replaying ``consumed`` samples (cost grows with the
    position); a positioned factory (latent shards) restarts at the saved position."""

    def __init__(self, factory: StreamFactory | PositionedFactory, seed: int):
        self.factory, self.seed = factory, seed
        self.positioned = getattr(factory, "positioned", False)
        self.consumed = 0
        self.position: dict | None = None
        self._it = self._start(None)

    def _start(self, position: dict | None) -> Iterator:
        return self.factory(self.seed, position) if self.positioned else self.factory(self.seed)

    def next(self) -> dict:
        self.consumed += 1
        if self.positioned:
            sample, self.position = next(self._it)
            return sample
        return next(self._it)

    def state_dict(self) -> dict:
        return {"consumed": self.consumed, "position": self.position}

    def load_state_dict(self, state: dict) -> None:
        position = state.get("position")
        self._it = self._start(position)
        if not self.positioned or (position is None and state["consumed"]):
            for _ in range(state["consumed"]):  # replay (a checkpoint without a position)
                next(self._it)
        self.consumed, self.position = state["consumed"], position


def mixture_weight(weights: dict[str, float], dataset: str, task: str) -> float:
    """Weight of (dataset, task): ``"<dataset>:<task>"`` when given, else ``"<dataset>"``."""
    return float(weights.get(f"{dataset}:{task}", weights.get(dataset, 0.0)))


def mixture_datasets(weights: dict[str, float]) -> list[str]:
    """Dataset names of a mixture whose keys are ``name`` or ``name:task``."""
    return sorted({k.split(":", 1)[0] for k in weights})


def task_pattern(tasks: dict[str, int]) -> list[str]:
    """One cycle of steps: {"t2v": 1, "i2v": 2} -> [t2v, i2v, i2v]."""
    pattern = [t for t in TASKS for _ in range(int(tasks.get(t, 0)))]
    if not pattern:
        raise ValueError(f"no task has a positive step count in {tasks}")
    return pattern


class Mixture:
    """Draws each step's task from the alternation pattern and each sample's dataset by weight."""

    def __init__(
        self,
        streams: dict[tuple[str, str], Stream],
        dataset_weights: dict[str, float],
        tasks: dict[str, int],
        seed: int,
    ):
        self.streams = streams
        self.weights = dataset_weights
        have = {t for d, t in streams if mixture_weight(dataset_weights, d, t) > 0}
        self.pattern = [t for t in task_pattern(tasks) if t in have]
        if not self.pattern:
            raise ValueError(f"no data for the tasks {tasks}; streams: {sorted(streams)}")
        missing = sorted({t for t in task_pattern(tasks)} - have)
        if missing:
            log.warning("no data for task(s) %s: training runs only %s steps", missing, have)
        self.rng = np.random.default_rng(seed)

    def task_for_step(self, step: int) -> str:
        return self.pattern[step % len(self.pattern)]

    def draw(self, step: int, n: int) -> tuple[str, list[dict]]:
        """The step's task and ``n`` samples of it from datasets drawn by weight."""
        task = self.task_for_step(step)
        names = [d for d, t in self.streams if t == task and mixture_weight(self.weights, d, t) > 0]
        if not names:
            raise ValueError(f"no dataset with positive weight has {task} samples")
        p = np.array([mixture_weight(self.weights, d, task) for d in names], dtype=np.float64)
        picks = self.rng.choice(len(names), size=n, p=p / p.sum())
        return task, [self.streams[(names[i], task)].next() for i in picks]

    def state_dict(self) -> dict:
        return {
            "rng": self.rng.bit_generator.state,
            "streams": {f"{d}/{t}": s.state_dict() for (d, t), s in self.streams.items()},
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore draws and stream positions (also from checkpoints with only counts)."""
        self.rng.bit_generator.state = state["rng"]
        saved = state.get("streams") or {k: {"consumed": n} for k, n in state["consumed"].items()}
        for (d, t), s in self.streams.items():
            s.load_state_dict(saved.get(f"{d}/{t}", {"consumed": 0}))
