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

import dataclasses
import hashlib
import io
import json
import logging
import tarfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from model.text import ActionEmbeddingCache, TextEncoder
from model.vae import STRIDE, VideoVAE
from training.config import TrainConfig

log = logging.getLogger(__name__)

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


LATENT_MEMBERS = ("latents.pth", "event_emb.pth", "json")


def _tensor_bytes(t: torch.Tensor) -> bytes:
    buf = io.BytesIO()
    torch.save(t.contiguous().clone(), buf)
    return buf.getvalue()


def write_latent_shard(path: str | Path, samples: list[dict], extra_meta: dict) -> list[dict]:
    """Write latent samples as a WebDataset tar (temporary name, then rename).

    Members per sample: ``<key>.latents.pth`` (48, F, h, w) float16, ``<key>.event_emb.pth``
    (Le, D) float16, ``<key>.json``. Returns one index row per sample.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    rows = []
    with tarfile.open(tmp, "w") as tar:
        for s in samples:
            meta = {
                "key": s["__key__"],
                "task": s["task"],
                "source": s["source"],
                "history_latent_frames": int(s["history_latent_frames"]),
                "history_starts_at_first_frame": bool(s["history_starts_at_first_frame"]),
                "keys": np.asarray(s["keys"]).tolist(),
                "mouse": np.asarray(s["mouse"]).tolist(),
                "latent_shape": list(s["latents"].shape),
                "tiny_random": bool(s["tiny_random"]),
                **extra_meta,
            }
            data = {
                "latents.pth": _tensor_bytes(s["latents"].half()),
                "event_emb.pth": _tensor_bytes(s["event_emb"].half()),
                "json": json.dumps(meta, sort_keys=True).encode(),
            }
            for ext in LATENT_MEMBERS:
                info = tarfile.TarInfo(f"{s['__key__']}.{ext}")
                info.size, info.mode = len(data[ext]), 0o644
                tar.addfile(info, io.BytesIO(data[ext]))
            rows.append(
                {
                    "key": s["__key__"],
                    "shard": path.name,
                    "task": s["task"],
                    "source": s["source"],
                    "latent_frames": int(s["latents"].shape[1]),
                    "history_latent_frames": int(s["history_latent_frames"]),
                    "tiny_random": bool(s["tiny_random"]),
                    "sha256": hashlib.sha256(data["latents.pth"]).hexdigest(),
                }
            )
    tmp.replace(path)
    return rows


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
                "history_latent_frames": int(meta["history_latent_frames"]),
                "history_starts_at_first_frame": bool(meta["history_starts_at_first_frame"]),
                "keys": np.asarray(meta["keys"], dtype=np.int64),
                "mouse": np.asarray(meta["mouse"], dtype=np.int64),
                "task": meta["task"],
                "source": meta["source"],
                "tiny_random": bool(meta["tiny_random"]),
            }
        )
    return out


def latent_shard_source(shards: list[Path], task: str) -> StreamFactory:
    """Endless epochs over latent shards: shard order and in-shard order shuffled per epoch.

    An epoch without a single ``task`` sample is an error (not an endless loop)."""

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
    """Finished latent shards (those with a sidecar) per task they hold, after checking that
    they were encoded with this config's size, frames and encoders."""
    out: dict[str, list[str]] = {t: [] for t in TASKS}
    want = latent_config_hash(cfg)
    for sidecar in sorted(folder.glob("*.json")):
        side = json.loads(sidecar.read_text())
        if side.get("config_hash") != want:
            raise ValueError(
                f"{sidecar}: latent shard encoded with another config (hash "
                f"{side.get('config_hash')}, this run {want}: {latent_config(cfg)}); "
                "re-encode with `jobs.encode_latents` into a fresh folder"
            )
        for t in {r["task"] for r in side["rows"]}:
            out[t].append(str(folder / side["shard"]))
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
                factory = latent_shard_source([Path(u) for u in by_task[task]], task)
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
