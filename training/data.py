"""Training data: window streams per (dataset, task), the weighted mixture, and batching.

A *window sample* is what the shard reader yields (uint8 ``video`` (T,H,W,3), per-frame
``keys``/``mouse`` codes, ``event_text``, ``task``, ...). A *latent sample* replaces the
video and event text with ``latents`` (48, F, h, w) and ``event_emb`` (L_event, D); latent
shards store exactly that, and ``Conditioner`` makes it on the fly from raw clip shards.

Determinism: each stream is an iterator made from a seed; its position is the number of
samples consumed, and resume re-creates it and skips that many. The mixture's choices come
from one numpy generator whose state is checkpointed.
"""

from __future__ import annotations

import io
import json
import tarfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from model.text import ActionEmbeddingCache, TextEncoder
from model.vae import STRIDE, VideoVAE
from training.config import TrainConfig

StreamFactory = Callable[[int], Iterator[dict]]  # seed -> endless iterator of samples
TASKS = ("t2v", "i2v")


class Stream:
    """An endless sample iterator whose position can be saved and restored."""

    def __init__(self, factory: StreamFactory, seed: int):
        self.factory, self.seed = factory, seed
        self.consumed = 0
        self._it = factory(seed)

    def next(self) -> dict:
        self.consumed += 1
        return next(self._it)

    def restore(self, consumed: int) -> None:
        """Re-create the iterator and skip to ``consumed`` (cost grows with the position)."""
        self._it = self.factory(self.seed)
        for _ in range(consumed):
            next(self._it)
        self.consumed = consumed


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
        have = {t for _, t in streams}
        self.pattern = [t for t in task_pattern(tasks) if t in have]
        if not self.pattern:
            raise ValueError(f"no data for the tasks {tasks}; streams: {sorted(streams)}")
        self.rng = np.random.default_rng(seed)

    def task_for_step(self, step: int) -> str:
        return self.pattern[step % len(self.pattern)]

    def draw(self, step: int, n: int) -> tuple[str, list[dict]]:
        """The step's task and ``n`` samples of it from datasets drawn by weight."""
        task = self.task_for_step(step)
        names = [d for d, t in self.streams if t == task and self.weights.get(d, 0) > 0]
        if not names:
            raise ValueError(f"no dataset with positive weight has {task} samples")
        p = np.array([self.weights[d] for d in names], dtype=np.float64)
        picks = self.rng.choice(len(names), size=n, p=p / p.sum())
        return task, [self.streams[(names[i], task)].next() for i in picks]

    def state_dict(self) -> dict:
        return {
            "rng": self.rng.bit_generator.state,
            "consumed": {f"{d}/{t}": s.consumed for (d, t), s in self.streams.items()},
        }

    def load_state_dict(self, state: dict) -> None:
        self.rng.bit_generator.state = state["rng"]
        for (d, t), s in self.streams.items():
            s.restore(state["consumed"].get(f"{d}/{t}", 0))


# ---- sources ------------------------------------------------------------------------------


def memory_source(samples: Sequence[dict]) -> StreamFactory:
    """Endless seeded reshuffles of in-memory samples (tests, small validation sets)."""

    def factory(seed: int) -> Iterator[dict]:
        rng = np.random.default_rng(seed)
        while True:
            for i in rng.permutation(len(samples)):
                yield samples[i]

    return factory


def clip_shard_source(urls: list[str], cfg: TrainConfig, task: str) -> StreamFactory:
    """Windows of ``cfg.window_frames`` from raw clip shards, via the shard reader."""
    from curation.shard_reader import make_window_dataset

    history = 1 + STRIDE[0] * (cfg.history_latent_frames - 1)
    pred = cfg.window_frames - history

    def factory(seed: int) -> Iterator[dict]:
        ds = make_window_dataset(
            urls,
            history,
            pred,
            resampled=True,
            shuffle=cfg.shuffle_buffer,
            seed=seed,
            size=(cfg.height, cfg.width),
            tasks=[task],
        )
        return iter(ds)

    return factory


def read_latent_shard(path: str | Path) -> list[dict]:
    """All latent samples of one latent shard (members ``<key>.latents.pth``,
    ``<key>.event_emb.pth``, ``<key>.json``), in file order."""
    members: dict[str, dict] = {}
    with tarfile.open(path) as tar:
        for m in tar:
            if not m.isfile():
                continue
            key, ext = m.name.split(".", 1)
            data = tar.extractfile(m).read()
            members.setdefault(key, {})[ext] = data
    out = []
    for key, parts in members.items():
        meta = json.loads(parts["json"])
        out.append(
            {
                "__key__": key,
                "latents": torch.load(io.BytesIO(parts["latents.pth"])).float(),
                "event_emb": torch.load(io.BytesIO(parts["event_emb.pth"])).float(),
                "keys": np.asarray(meta["keys"], dtype=np.int64),
                "mouse": np.asarray(meta["mouse"], dtype=np.int64),
                "task": meta["task"],
                "source": meta["source"],
                "tiny_random": bool(meta["tiny_random"]),
            }
        )
    return out


def latent_shard_source(shards: list[Path], task: str) -> StreamFactory:
    """Endless epochs over latent shards: shard order and in-shard order shuffled per epoch."""

    def factory(seed: int) -> Iterator[dict]:
        rng = np.random.default_rng(seed)
        while True:
            found = False
            for i in rng.permutation(len(shards)):
                samples = [s for s in read_latent_shard(shards[i]) if s["task"] == task]
                found |= bool(samples)
                for j in rng.permutation(len(samples)):
                    yield samples[j]
            if not found:
                raise ValueError(f"no {task} samples in latent shards {shards[:3]}...")

    return factory


def shard_streams(cfg: TrainConfig, rank: int = 0) -> dict[tuple[str, str], Stream]:
    """One stream per (dataset, task) from ``<root>/latents/<ds>`` or ``<root>/shards/<ds>``."""
    root = Path(cfg.data_root)
    streams = {}
    for k, (dataset, weight) in enumerate(sorted(cfg.datasets.items())):
        if weight <= 0:
            continue
        folder = root / ("latents" if cfg.latents else "shards") / dataset
        tars = sorted(folder.glob("*.tar"))
        if not tars:
            raise FileNotFoundError(f"no shards in {folder} (dataset {dataset!r})")
        for j, task in enumerate(TASKS):
            if cfg.tasks.get(task, 0) <= 0:
                continue
            if cfg.latents:
                factory = latent_shard_source(tars, task)
            else:
                factory = clip_shard_source([str(t) for t in tars], cfg, task)
            seed = cfg.seed * 1_000_003 + rank * 1009 + k * 31 + j
            streams[(dataset, task)] = Stream(factory, seed)
    return streams


# ---- conditioning and batching -------------------------------------------------------------


def resize_video(video: np.ndarray, height: int, width: int) -> torch.Tensor:
    """uint8 (T,H,W,3) -> uint8 (T,height,width,3): centre crop to the aspect, then area resize."""
    x = torch.from_numpy(np.ascontiguousarray(video))
    t, h, w, _ = x.shape
    if (h, w) == (height, width):
        return x
    scale = max(height / h, width / w)
    ch, cw = round(height / scale), round(width / scale)
    y0, x0 = (h - ch) // 2, (w - cw) // 2
    x = x[:, y0 : y0 + ch, x0 : x0 + cw].permute(0, 3, 1, 2).float()
    x = F.interpolate(x, size=(height, width), mode="area")
    return x.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous()


class Conditioner:
    """Turns window samples into latent samples (VAE + text encoder) and latent samples into
    model inputs (history/prediction split, action embeddings from the cache)."""

    def __init__(
        self,
        cfg: TrainConfig,
        vae: VideoVAE | None,
        text: TextEncoder | None,
        actions: ActionEmbeddingCache,
    ):
        self.cfg, self.vae, self.text, self.actions = cfg, vae, text, actions

    def to_latent_samples(self, samples: list[dict]) -> list[dict]:
        """Encode raw windows (those without ``latents``) with the VAE and text encoder."""
        raw = [i for i, s in enumerate(samples) if "latents" not in s]
        if not raw:
            return samples
        if self.vae is None or self.text is None:
            raise ValueError("raw clip samples need a VAE and a text encoder")
        n = self.cfg.window_frames
        video = torch.stack(
            [resize_video(samples[i]["video"][:n], self.cfg.height, self.cfg.width) for i in raw]
        )
        latents = self.vae.encode(video).cpu()  # (B, 48, F, h, w)
        events = self.text.encode_events([samples[i]["event_text"] for i in raw]).cpu()
        out = list(samples)
        for j, i in enumerate(raw):
            s = samples[i]
            out[i] = {
                "__key__": s["__key__"],
                "latents": latents[j],
                "event_emb": events[j],
                "keys": np.asarray(s["keys"][:n], dtype=np.int64),
                "mouse": np.asarray(s["mouse"][:n], dtype=np.int64),
                "task": s["task"],
                "source": s["source"],
                "tiny_random": bool(s.get("tiny_random", False))
                or self.vae.tiny_random
                or self.text.tiny_random,
            }
        return out

    def batch(self, samples: list[dict], task: str, rng: np.random.Generator) -> Batch:
        """Stack latent samples and split them into history and prediction latent frames.

        T2V: no history, the block is the first ``Fp`` latent frames. I2V: ``h`` in
        [1, history_latent_frames] latent frames (1 = the first frame) condition the next Fp.
        """
        fp, fh = self.cfg.pred_latent_frames, self.cfg.history_latent_frames
        h = 0 if task == "t2v" else int(rng.integers(1, fh + 1))
        lat = torch.stack([s["latents"] for s in samples]).float()  # (B, 48, F, h, w)
        if lat.shape[2] < h + fp:
            raise ValueError(f"samples have {lat.shape[2]} latent frames, need {h + fp}")
        # pixel frames of the prediction block, for its action label
        p0 = 0 if h == 0 else 1 + STRIDE[0] * (h - 1)
        p1 = 1 + STRIDE[0] * (h + fp - 1)
        keys = torch.tensor([_mode(s["keys"][p0:p1]) for s in samples])
        mouse = torch.tensor([_mode(s["mouse"][p0:p1]) for s in samples])
        event = torch.stack([s["event_emb"] for s in samples]).float()  # (B, Le, D)
        action = self.actions.lookup(keys, mouse).float()  # (B, La, D)
        return Batch(
            task=task,
            prediction=lat[:, :, h : h + fp],  # (B, 48, Fp, h, w)
            history=lat[:, :, :h] if h else None,  # (B, 48, h, h, w)
            history_frame_ids=torch.arange(h, 0, -1) if h else None,  # distances back, 1 = nearest
            text=torch.cat([event, action], dim=1),  # (B, Le + La, D)
            tiny_random=any(s["tiny_random"] for s in samples),
        )


def _mode(codes: np.ndarray) -> int:
    """Most frequent code (lowest on ties); 0 for an empty range."""
    return int(np.bincount(np.asarray(codes, dtype=np.int64)).argmax()) if len(codes) else 0


@dataclass
class Batch:
    task: str
    prediction: torch.Tensor
    history: torch.Tensor | None
    history_frame_ids: torch.Tensor | None
    text: torch.Tensor
    tiny_random: bool

    def to(self, device: torch.device | str) -> Batch:
        def mv(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t.to(device)

        return Batch(
            self.task,
            self.prediction.to(device),
            mv(self.history),
            mv(self.history_frame_ids),
            self.text.to(device),
            self.tiny_random,
        )
