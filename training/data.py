"""Training data: window streams per (dataset, task), the weighted mixture, and batching.

A *window sample* is what the shard reader yields (uint8 ``video`` (T,H,W,3), per-frame
``keys``/``mouse`` codes, ``event_text``, ``task``, ...). A *latent sample* replaces the
video and event text with ``latents`` (48, F, h, w) and ``event_emb`` (L_event, D); latent
shards store exactly that, and ``Conditioner`` makes it on the fly from raw clip shards.

Determinism: each stream is an iterator made from a seed. A latent-shard stream's position
is (epoch, shard, index) and resume restarts there; other streams' position is the number of
samples consumed, and resume re-creates them and skips that many. The mixture's choices come
from one numpy generator whose state is checkpointed.
"""

from __future__ import annotations

import dataclasses
import io
import json
import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from model.text import ActionEmbeddingCache, TextEncoder
from model.vae import STRIDE, VideoVAE
from schemas.latents import LATENT_DONE_DIR
from training.config import TrainConfig

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


# ---- sources ------------------------------------------------------------------------------


def memory_source(samples: Sequence[dict]) -> StreamFactory:
    """Endless seeded reshuffles of in-memory samples (tests, small validation sets)."""

    def factory(seed: int) -> Iterator[dict]:
        rng = np.random.default_rng(seed)
        while True:
            for i in rng.permutation(len(samples)):
                yield samples[i]

    return factory


def window_frames(cfg: TrainConfig, task: str) -> tuple[int, int]:
    """(history, prediction) pixel frames to ask the reader for, so that latents align:
    T2V 1 + 4(Fp - 1) frames -> Fp latent frames; I2V up to 1 + 4(Fh - 1) history frames
    -> Fh latent frames (Fh = ``max_history_latent_frames``; the reader gives fewer when the
    prediction block sits early in the clip), then 4 Fp frames -> Fp latent frames."""
    ft = STRIDE[0]
    if task == "t2v":
        return 0, 1 + ft * (cfg.pred_latent_frames - 1)
    return 1 + ft * (cfg.max_history_latent_frames - 1), ft * cfg.pred_latent_frames


def min_clip_frames(cfg: TrainConfig, task: str) -> int:
    """Fewest clip frames that hold one ``task`` window (I2V: at least one history frame)."""
    _, pred = window_frames(cfg, task)
    return pred + (task == "i2v")


def clip_shard_source(urls: list[str], cfg: TrainConfig, task: str) -> StreamFactory:
    """Endless ``task`` windows from raw clip shards, via the shard reader."""
    from curation.shard_reader import make_window_dataset

    history, pred = window_frames(cfg, task)

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


def decode_latent_sample(key: str, members: dict[str, bytes], meta: dict) -> dict:
    """A latent sample from its shard members (``meta`` is its parsed json)."""
    return {
        "__key__": key,
        "latents": torch.load(io.BytesIO(members["latents.pth"])).float(),  # (48, F, h, w)
        "event_emb": torch.load(io.BytesIO(members["event_emb.pth"])).float(),  # (Le, D)
        "history_latent_frames": int(meta["history_latent_frames"]),
        "history_starts_at_first_frame": bool(meta["history_starts_at_first_frame"]),
        "keys": np.asarray(meta["keys"], dtype=np.int64),
        "mouse": np.asarray(meta["mouse"], dtype=np.int64),
        "task": meta["task"],
        "source": meta["source"],
        "tiny_random": bool(meta["tiny_random"]),
    }


def read_latent_samples(shard: str | Path, task: str, config_hash: str) -> list[dict]:
    """The ``task`` samples of one latent shard in file order (only those are decoded).

    A sample encoded with another config (json ``config_hash``) is an error."""
    from curation.shards import iter_shard

    out = []
    for key, members in iter_shard(shard):
        meta = json.loads(members["json"])
        if meta["config_hash"] != config_hash:
            raise ValueError(
                f"{shard}:{key}: encoded with another config (hash {meta['config_hash']}, "
                f"this run {config_hash})"
            )
        if meta["task"] == task:
            out.append(decode_latent_sample(key, members, meta))
    return out


def latent_shard_source(shards: list[Path], task: str, config_hash: str) -> PositionedFactory:
    """Endless epochs over latent shards: shard order and in-shard order shuffled per epoch.

    Orders come from generators seeded by (seed, epoch) and (seed, epoch, shard position),
    so a position {epoch, shard, index} restores by reading one shard, never by replay.
    An epoch without a single ``task`` sample is an error (not an endless loop)."""

    def factory(seed: int, position: dict | None) -> Iterator[tuple[dict, dict]]:
        pos = position or {"epoch": 0, "shard": 0, "index": 0, "shards": len(shards)}
        if pos["shards"] != len(shards):
            raise ValueError(f"checkpoint saw {pos['shards']} {task} shards, now {len(shards)}")
        epoch, start, skip = pos["epoch"], pos["shard"], pos["index"]
        while True:
            order = np.random.default_rng([seed, epoch]).permutation(len(shards))
            found = False
            for p in range(start, len(shards)):
                samples = read_latent_samples(shards[order[p]], task, config_hash)
                found |= bool(samples)
                perm = np.random.default_rng([seed, epoch, p]).permutation(len(samples))
                for j in range(skip, len(samples)):
                    after = {"epoch": epoch, "shard": p, "index": j + 1, "shards": len(shards)}
                    yield samples[perm[j]], after
                skip = 0
            if not found and start == 0:
                raise ValueError(f"no {task} samples in latent shards {shards[:3]}...")
            epoch, start = epoch + 1, 0

    factory.positioned = True  # Stream restores it at a position
    return factory


def clip_shards_by_task(folder: Path, cfg: TrainConfig) -> dict[str, list[str]]:
    """Indexed clip shards holding at least one sample that offers each task and is long
    enough for its window (sample json ``tasks``, index ``frames``)."""
    from curation.shards import indexed_shards, iter_shard, read_index

    frames = dict(
        zip(
            read_index(folder).column("key").to_pylist(),
            read_index(folder).column("frames").to_pylist(),
            strict=True,
        )
    )
    need = {t: min_clip_frames(cfg, t) for t in TASKS}
    out: dict[str, list[str]] = {t: [] for t in TASKS}
    for url in tqdm(indexed_shards(folder), desc=f"scan {folder.name}", leave=False):
        offered: set[str] = set()
        for key, members in iter_shard(url, exts={"json"}):
            tasks = json.loads(bytes(members["json"])).get("tasks", [])
            offered |= {t for t in tasks if frames.get(key, 0) >= need[t]}
        for t in offered:
            out[t].append(url)
    return out


def latent_shards_by_task(folder: Path, cfg: TrainConfig) -> dict[str, list[str]]:
    """Indexed latent shards per task they hold (their stats files' task counts), after
    checking the encoder's done records were made with this config's size, frames and
    encoders."""
    from curation.shards import LATENT_SAMPLE, indexed_shards, shard_summary

    want = latent_config_hash(cfg)
    for done in sorted((folder / LATENT_DONE_DIR).glob("*.json")):
        got = json.loads(done.read_text()).get("config_hash")
        if got != want:
            raise ValueError(
                f"{done}: latent shard encoded with another config (hash {got}, this run "
                f"{want}: {latent_config(cfg)}); re-encode with `jobs.encode_latents` into a "
                "fresh folder"
            )
    out: dict[str, list[str]] = {t: [] for t in TASKS}
    for url in indexed_shards(folder):
        for t, n in shard_summary(url, LATENT_SAMPLE)["task_counts"].items():
            if n:
                out[t].append(url)
    return out


def shard_streams(cfg: TrainConfig, rank: int = 0) -> dict[tuple[str, str], Stream]:
    """One stream per (dataset, task) from ``<root>/latents/<ds>`` or ``<root>/shards/<ds>``.

    Built from the shard index and metadata: a (dataset, task) without a possible window is
    skipped with a warning (never an endless search); a dataset with none at all is an error.
    """
    root = Path(cfg.data_root)
    streams = {}
    for k, dataset in enumerate(mixture_datasets(cfg.datasets)):
        tasks = [t for t in TASKS if cfg.tasks.get(t, 0) > 0]
        tasks = [t for t in tasks if mixture_weight(cfg.datasets, dataset, t) > 0]
        if not tasks:
            continue
        folder = root / ("latents" if cfg.latents else "shards") / dataset
        if not folder.is_dir():
            raise FileNotFoundError(f"no shards in {folder} (dataset {dataset!r})")
        by_task = (
            latent_shards_by_task(folder, cfg) if cfg.latents else clip_shards_by_task(folder, cfg)
        )
        usable = [t for t in tasks if by_task[t]]
        if not usable:
            raise ValueError(
                f"dataset {dataset!r} ({folder}) has no sample for {tasks} long enough for a "
                f"window ({ {t: min_clip_frames(cfg, t) for t in tasks} } frames); "
                "lower pred_latent_frames or drop the dataset"
            )
        for t in sorted(set(tasks) - set(usable)):
            log.warning("dataset %r has no %s window: its %s weight is skipped", dataset, t, t)
        for j, task in enumerate(TASKS):
            if task not in usable:
                continue
            if cfg.latents:
                factory = latent_shard_source(
                    [Path(u) for u in by_task[task]], task, latent_config_hash(cfg)
                )
            else:
                factory = clip_shard_source(by_task[task], cfg, task)
            seed = cfg.seed * 1_000_003 + rank * 1009 + k * 31 + j
            streams[(dataset, task)] = Stream(factory, seed)
    return streams


def latent_config(cfg: TrainConfig) -> dict:
    """The config fields a latent shard depends on."""
    return {
        "height": cfg.height,
        "width": cfg.width,
        "pred_latent_frames": cfg.pred_latent_frames,
        "max_history_latent_frames": cfg.max_history_latent_frames,
        "vae": Path(cfg.vae).name,  # folder names: a moved weights folder still matches
        "text_encoder": Path(cfg.text_encoder).name,
        "event_len": cfg.event_len,
    }


def latent_config_hash(cfg: TrainConfig) -> str:
    from curation.manifest import config_hash

    return config_hash(latent_config(cfg))


# ---- conditioning and batching -------------------------------------------------------------


class Conditioner:
    """Turns window samples into latent samples (VAE + text encoder) and latent samples into
    model inputs (history/prediction split, action embeddings from the cache)."""

    def __init__(
        self,
        cfg: TrainConfig,
        vae: VideoVAE | None,
        text: TextEncoder | None,
        actions: ActionEmbeddingCache | None,
    ):
        self.cfg, self.vae, self.text, self.actions = cfg, vae, text, actions

    def to_latent_samples(self, samples: list[dict]) -> list[dict]:
        """Encode raw windows (those without ``latents``) with the VAE and text encoder.

        A window of ``history_frames`` + prediction pixel frames is trimmed at its start to
        1 + 4k history frames, so history and prediction fall on whole latent frames; the
        prediction block is then the last ``pred_latent_frames`` latent frames. The reader
        already resized (cover, centre crop) to the config's size.
        """
        raw = [i for i, s in enumerate(samples) if "latents" not in s]
        if not raw:
            return samples
        if self.vae is None or self.text is None:
            raise ValueError("raw clip samples need a VAE and a text encoder")
        events = self.text.encode_events([samples[i]["event_text"] for i in raw]).cpu()
        asked, _ = window_frames(self.cfg, "i2v")
        out = list(samples)
        for j, i in enumerate(raw):
            s = samples[i]
            video = torch.as_tensor(np.asarray(s["video"]))
            if tuple(video.shape[1:3]) != (self.cfg.height, self.cfg.width):
                raise ValueError(
                    f"{s['__key__']}: frames {tuple(video.shape[1:3])}, config size "
                    f"{(self.cfg.height, self.cfg.width)}: read shards with size=(H, W)"
                )
            history_frames = int(s["history_frames"])
            video, hist = trim_window(video, history_frames, self.cfg)
            keep = len(video)
            # the reader gives fewer history frames than asked only at the clip start
            starts_at_clip_start = 0 < hist == history_frames < asked
            out[i] = {
                "__key__": s["__key__"],
                "latents": self.vae.encode(video[None]).cpu()[0],  # (48, F, h, w)
                "history_latent_frames": 0 if hist == 0 else 1 + (hist - 1) // STRIDE[0],
                "history_starts_at_first_frame": bool(
                    s.get("history_starts_at_first_frame", starts_at_clip_start)
                ),
                "event_emb": events[j],  # (Le, D)
                "keys": np.asarray(s["keys"], dtype=np.int64)[-keep:],
                "mouse": np.asarray(s["mouse"], dtype=np.int64)[-keep:],
                "task": s["task"],
                "source": s["source"],
                "tiny_random": bool(s.get("tiny_random", False))
                or self.vae.tiny_random
                or self.text.tiny_random,
            }
        return out

    def batch(self, samples: list[dict], task: str, rng: np.random.Generator) -> Batch:
        """Stack latent samples and split them into history and prediction latent frames.

        T2V: no history. I2V: the nearest ``h`` history latent frames, h drawn uniformly in
        [1, min(max_history_latent_frames, available)]; the model then samples far history
        in time and patchifies it by distance. ``history_first_frame`` says whether the
        oldest passed frame is the video's first frame (for every sample of the batch).
        """
        fp = self.cfg.pred_latent_frames
        hist = [int(s["history_latent_frames"]) for s in samples]
        for s, hl in zip(samples, hist, strict=True):
            if s["latents"].shape[1] != hl + fp:
                raise ValueError(
                    f"{s['__key__']}: {s['latents'].shape[1]} latent frames, need {hl}+{fp}"
                )
        h = 0
        if task == "i2v":
            most = min(min(hist), self.cfg.max_history_latent_frames)
            if most < 1:
                raise ValueError("an I2V sample has no history frame")
            h = int(rng.integers(1, most + 1))
        pred = torch.stack([s["latents"][:, hl:] for s, hl in zip(samples, hist, strict=True)])
        # prediction pixel frames: after 1 + 4(hl - 1) history frames; their action label
        starts = [0 if hl == 0 else 1 + STRIDE[0] * (hl - 1) for hl in hist]
        labels = [
            _mode(s["keys"][p:], s["mouse"][p:]) for s, p in zip(samples, starts, strict=True)
        ]
        keys = torch.tensor([k for k, _ in labels])
        mouse = torch.tensor([m for _, m in labels])
        event = torch.stack([s["event_emb"] for s in samples]).float()  # (B, Le, D)
        action = self.actions.lookup(keys, mouse).float()  # (B, La, D)
        history = None
        if h:
            history = torch.stack(
                [s["latents"][:, hl - h : hl] for s, hl in zip(samples, hist, strict=True)]
            ).float()  # (B, 48, h, h_lat, w_lat)
        first = bool(h) and all(
            s.get("history_starts_at_first_frame", False) and hl == h
            for s, hl in zip(samples, hist, strict=True)
        )
        return Batch(
            task=task,
            prediction=pred.float(),  # (B, 48, Fp, h_lat, w_lat)
            history=history,
            history_frame_ids=torch.arange(h, 0, -1) if h else None,  # distances, 1 = nearest
            text=torch.cat([event, action], dim=1),  # (B, Le + La, D)
            tiny_random=any(s["tiny_random"] for s in samples),
            history_first_frame=first,
        )


def trim_window(video, history_frames: int, cfg: TrainConfig):
    """Drop the oldest history frames so the window is 1 + 4k history + aligned prediction.

    Returns (video, kept history frames). Raises ValueError for a window that cannot align.
    """
    ft = STRIDE[0]
    pred = len(video) - history_frames
    if history_frames == 0:
        ok = pred == 1 + ft * (cfg.pred_latent_frames - 1)
        keep = 0
    else:
        ok = pred == ft * cfg.pred_latent_frames
        keep = 1 + ft * ((history_frames - 1) // ft)
    if not ok:
        task = "i2v" if history_frames else "t2v"
        raise ValueError(
            f"window of {history_frames}+{pred} frames does not fit {window_frames(cfg, task)}"
        )
    return video[history_frames - keep :], keep


def _mode(keys: np.ndarray, mouse: np.ndarray) -> tuple[int, int]:
    """Most frequent (keys, mouse) pair (lowest codes on ties); (0, 0) for an empty range."""
    if not len(keys):
        return 0, 0
    pairs, counts = np.unique(
        np.stack([np.asarray(keys, np.int64), np.asarray(mouse, np.int64)], 1),
        axis=0,
        return_counts=True,
    )
    k, m = pairs[int(counts.argmax())]
    return int(k), int(m)


@dataclass
class Batch:
    task: str
    prediction: torch.Tensor
    history: torch.Tensor | None
    history_frame_ids: torch.Tensor | None
    text: torch.Tensor
    tiny_random: bool
    history_first_frame: bool = False  # history[:, :, 0] is the video's first frame

    def keep_nearest(self, n: int) -> Batch:
        """The batch with only its ``n`` history frames nearest the prediction, ids kept true."""
        if self.history is None:
            return self
        return dataclasses.replace(
            self,
            history=self.history[:, :, -n:],
            history_frame_ids=self.history_frame_ids[-n:],
            history_first_frame=self.history_first_frame and n >= self.history.shape[2],
        )

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
            self.history_first_frame,
        )
