"""Training reader: WebDataset shards -> (history, prediction) windows as uint8 tensors.

One item per sample visited: a window of ``history + pred`` frames (fewer history frames
near the clip start, none for a pure text-to-video window), decoded with decord, only the
frames the window needs. Shards are split by node and by DataLoader worker (or resampled
per worker); every random choice is seeded by (seed, epoch, rank, worker), so a run is
reproducible and workers differ. Call ``set_epoch`` each epoch, as with DistributedSampler.
Bad samples are logged, counted in ``dataset.skipped`` and skipped. A damaged shard (a
member header that does not parse, a truncated tar) is found before its samples are used,
logged, counted in ``dataset.damaged`` and skipped whole; the reader stops with a
DamagedDataError only when damaged shards pass ``max_damaged_share`` of its shards.

Example::

    ds = make_window_dataset("shards/real/real-{000000..000099}.tar", 32, 16, size=(352, 640))
    batches = ds.compose(wds.batched(4, collation_fn=collate))  # equal-shape windows only
    loader = torch.utils.data.DataLoader(batches, batch_size=None, num_workers=8)
"""

from __future__ import annotations

import io
import json
import logging
import os
import random
import tarfile
from collections.abc import Iterator, Sequence

import decord
import numpy as np
import torch
import webdataset as wds

from curation.video import centre_crop, cover_size, resize_crop
from schemas.actions import KEY_CODE, MOUSE_CODE
from schemas.sample import TASKS

log = logging.getLogger(__name__)


class SkipCounter:
    """A webdataset handler: warn about a bad shard or sample, count it, carry on."""

    def __init__(self) -> None:
        self.count = 0

    def __call__(self, exn: Exception) -> bool:
        self.count += 1
        log.warning(
            "skipping bad shard data (%d so far): %s: %s", self.count, type(exn).__name__, exn
        )
        return True


class DamagedDataError(ValueError):
    """Too many of a dataset's shards are damaged to train on (storage or copy trouble)."""


def tar_damage(path: str | os.PathLike) -> str | None:
    """Why the tar at ``path`` is damaged, or None when every member header parses.

    Python's tarfile ends the member list silently at a bad header after the first one,
    and reads a file cut at a member boundary as a shorter tar, either of which would hide
    the rest of a shard; so what follows the last member must be the end-of-archive zeros
    (two blocks at least), and every member's data must lie inside the file. Reads the
    headers only (one seek per member)."""
    size = os.path.getsize(path)
    if size == 0:
        return "empty file (0 bytes)"
    try:
        with tarfile.open(path, mode="r:") as tar:
            members = tar.getmembers()
            end = tar.offset  # where the member list stopped
    except (tarfile.TarError, OSError, EOFError) as e:
        return f"unreadable tar ({type(e).__name__}: {e})"
    for info in members:
        if info.offset_data + info.size > size:
            return f"truncated: member {info.name!r} ends past the end of the file"
    with open(path, "rb") as f:
        f.seek(end)
        pos = end
        while chunk := f.read(1 << 16):
            if chunk.strip(b"\0"):
                at = pos + len(chunk) - len(chunk.lstrip(b"\0"))
                return f"unreadable member header at byte {at} (after {len(members)} members)"
            pos += len(chunk)
    if size - end < 2 * tarfile.BLOCKSIZE:
        return f"cut off: no end-of-archive blocks after the last member (at byte {end})"
    return None


class DamageCounter:
    """A pipeline stage over ``{"url": ...}`` items: checks each local shard once
    (``tar_damage``), drops and counts the damaged ones (also in ``skipped``, the count of
    all bad data), and raises DamagedDataError when they pass ``max_share`` of the
    ``total`` shards (or are all of them)."""

    def __init__(self, total: int, max_share: float, skipped: SkipCounter) -> None:
        self.total, self.max_share, self.skipped = total, max_share, skipped
        self.shards: dict[str, str] = {}  # url -> why it is damaged
        self._checked: set[str] = set()

    @property
    def count(self) -> int:
        return len(self.shards)

    def __call__(self, src: Iterator[dict]) -> Iterator[dict]:
        for item in src:
            url = item["url"]
            if url not in self._checked:
                self._checked.add(url)
                self._check(url)
            if url not in self.shards:
                yield item

    def _check(self, url: str) -> None:
        reason = tar_damage(url) if os.path.isfile(url) else None  # remote urls: not checked
        if reason is None:
            return
        self.shards[url] = reason
        self.skipped.count += 1
        log.warning("skipping damaged shard %s (%d so far): %s", url, self.count, reason)
        share = self.count / max(self.total, 1)
        if share > self.max_share or self.count >= self.total:
            named = "; ".join(f"{u}: {r}" for u, r in list(self.shards.items())[:3])
            raise DamagedDataError(
                f"{self.count} of {self.total} shards are damaged ({share:.0%}, more than "
                f"max_damaged_share {self.max_share:.0%}): {named}"
            )


class _Seeds:
    """Seeds from (seed, epoch, rank, worker): reproducible, and distinct per worker."""

    def __init__(self, seed: int) -> None:
        self.seed, self.epoch = seed, 0

    def worker_seed(self) -> int:
        rank, _, worker, _ = wds.utils.pytorch_worker_info()
        return wds.utils.make_seed(self.seed, self.epoch, rank, worker)

    def rng(self, stream: int) -> random.Random:
        return random.Random(wds.utils.make_seed(self.worker_seed(), stream))


class _ShardList:
    """Shard urls in an order shared by every rank and worker (so splitting is disjoint)."""

    def __init__(self, urls: list[str], seeds: _Seeds, shuffle: bool) -> None:
        self.urls, self.seeds, self.shuffle = urls, seeds, shuffle

    def __call__(self) -> Iterator[dict]:
        urls = list(self.urls)
        if self.shuffle:
            random.Random(wds.utils.make_seed(self.seeds.seed, self.seeds.epoch)).shuffle(urls)
        for url in urls:
            yield {"url": url}


class _Shuffle:
    def __init__(self, bufsize: int, seeds: _Seeds) -> None:
        self.bufsize, self.seeds = bufsize, seeds

    def __call__(self, src: Iterator[dict]) -> Iterator[dict]:
        rng = self.seeds.rng(1)
        return wds.shuffle(self.bufsize, min(100, self.bufsize), rng=rng)(src)


def _decord_batch(
    mp4: bytes, indices: Sequence[int], size: tuple[int, int] | None, threads: int
) -> np.ndarray:
    h, w = size if size is not None else (-1, -1)
    vr = decord.VideoReader(
        io.BytesIO(mp4), ctx=decord.cpu(0), width=w, height=h, num_threads=threads
    )
    return vr.get_batch(list(indices)).asnumpy()


def decode_frames(
    mp4: bytes,
    indices: Sequence[int],
    size: tuple[int, int] | None = None,
    threads: int = 1,
    source_size: tuple[int, int] | None = None,
) -> torch.Tensor:
    """Decode only ``indices`` of an mp4 in memory -> uint8 (T, H, W, 3).

    ``size`` (H, W) resizes to cover it with the aspect kept and centre-crops, as the
    clips stage does (curation.video.resize_crop). With the stored ``source_size`` (H, W)
    known, decord scales to the cover size while decoding (cheap) and the centre is cut
    out; otherwise, or where decord fails on an output width (a row-alignment bug, e.g.
    48 px), frames are decoded at full size and resize_crop'ed.
    """
    if size is None:
        return torch.from_numpy(_decord_batch(mp4, indices, None, threads))
    out_h, out_w = size
    if source_size is not None:
        cover_w, cover_h = cover_size(source_size[1], source_size[0], out_w, out_h)
        try:
            frames = _decord_batch(mp4, indices, (cover_h, cover_w), threads)
            return torch.from_numpy(np.ascontiguousarray(centre_crop(frames, out_h, out_w)))
        except decord.DECORDError:
            pass
    frames = _decord_batch(mp4, indices, None, threads)
    return torch.from_numpy(np.stack([resize_crop(f, out_h, out_w) for f in frames]))


def _action_text(segments: list[dict], pred: Sequence[int]) -> str:
    """Text of the segment covering most prediction frames ("" if none covers any)."""
    best, best_text = 0, ""
    for seg in segments:
        overlap = sum(seg["start"] <= f <= seg["end"] for f in pred)
        if overlap > best:
            best, best_text = overlap, seg["text"]
    return best_text


def _event_text(captions: dict, pred: Sequence[int]) -> str:
    """The event caption of the caption window holding most prediction frames ("" if the
    sample has no per-window captions, or none covers a prediction frame)."""
    best, best_text = 0, ""
    for win in captions.get("event_windows") or []:
        overlap = sum(win["start"] <= f <= win["end"] for f in pred)
        if overlap > best:
            best, best_text = overlap, win["text"]
    return best_text


class _Windows:
    """Turn raw samples into windows; bad samples go to the handler, short clips are passed."""

    def __init__(
        self, history, pred, stride, size, tasks, threads, seeds, handler, max_misses
    ) -> None:
        self.history, self.pred, self.stride, self.size = history, pred, stride, size
        self.tasks, self.threads, self.seeds, self.handler = tasks, threads, seeds, handler
        self.max_misses = max_misses

    def __call__(self, src: Iterator[dict]) -> Iterator[dict]:
        rng = self.seeds.rng(2)
        misses = 0  # consecutive samples without a window: bounded, so a stream never hangs
        for sample in src:
            try:
                item = self.window(sample, rng)
            except Exception as exn:  # a bad sample must never stop training
                exn.args = (
                    f"sample {sample.get('__key__')!r} in {sample.get('__url__')}",
                    *exn.args,
                )
                self.handler(exn)
                item = None
            if item is not None:
                misses = 0
                yield item
                continue
            misses += 1
            if misses >= self.max_misses:
                raise RuntimeError(
                    f"no {'/'.join(self.tasks)} window of {self.pred} frames in the last "
                    f"{misses} samples (too short, wrong tasks, or undecodable); "
                    f"{self.handler.count} bad samples so far"
                )

    def window(self, sample: dict, rng: random.Random) -> dict | None:
        key = sample["__key__"]
        meta = json.loads(sample["json"])
        if meta["key"] != key:
            raise ValueError(f"json names key {meta['key']!r}")
        tasks = [t for t in self.tasks if t in meta["tasks"]]
        n_frames, s = meta["frames"], self.stride
        offset = rng.randrange(min(s, n_frames))  # which phase of a strided clip
        n = len(range(offset, n_frames, s))  # strided frames available
        task = rng.choice(tasks) if tasks else None
        first_pred = 0 if task == "t2v" else 1  # i2v needs at least one frame before
        if task is None or n < self.pred + first_pred:
            log.debug("sample %s: no %s window of %d frames", key, self.tasks, self.pred)
            return None
        p = rng.randint(first_pred, n - self.pred)  # first prediction frame, strided units
        h = 0 if task == "t2v" else min(self.history, p)
        idx = [offset + s * j for j in range(p - h, p + self.pred)]  # clip frame numbers
        stored = (meta["height"], meta["width"])
        video = decode_frames(sample["mp4"], idx, self.size, self.threads, stored)  # (T,H,W,3)
        if meta["keys"]:
            keys = torch.tensor([KEY_CODE[meta["keys"][i]] for i in idx], dtype=torch.int64)
            mouse = torch.tensor([MOUSE_CODE[meta["mouse"][i]] for i in idx], dtype=torch.int64)
        else:  # no actions recorded: "None" keys, "·" mouse
            keys = mouse = torch.zeros(len(idx), dtype=torch.int64)
        captions = meta["captions"]
        if task == "t2v":
            event = captions["scene"]
        else:  # the caption of the window holding the prediction block, else the clip's
            event = _event_text(captions, idx[h:]) or captions["event"] or captions["scene"]
        return {
            "__key__": key,
            "video": video,
            "history_frames": h,
            "keys": keys,
            "mouse": mouse,
            "fps": float(meta["fps"]) / s,
            "event_text": event or "",
            "action_text": _action_text(meta["segments"], idx[h:]),
            "task": task,
            "source": meta["source"],
            "tiny_random": bool(meta["provenance"]["tiny_random"]),
        }


def make_window(
    sample: dict,
    history_frames: int,
    pred_frames: int,
    *,
    task: str,
    rng: random.Random,
    size: tuple[int, int] | None = None,
) -> dict | None:
    """One ``task`` window of one raw shard sample (``__key__``, ``json``, ``mp4``), or None
    when the clip is too short or does not offer the task.

    The same window the training reader would give (see make_window_dataset for the item
    fields); for jobs that walk samples one by one, such as pre-encoding latents.
    """
    windows = _Windows(
        history_frames, pred_frames, 1, size, (task,), 1, _Seeds(0), SkipCounter(), 1
    )
    return windows.window(sample, rng)


class WindowDataset(wds.DataPipeline):
    """The reader pipeline (an IterableDataset); ``skipped`` counts bad data and ``damaged``
    damaged shards in this process."""

    def __init__(
        self, *stages, seeds: _Seeds, skipped: SkipCounter, damaged: DamageCounter
    ) -> None:
        super().__init__(*stages)
        self.seeds, self.skipped, self.damaged = seeds, skipped, damaged

    def set_epoch(self, epoch: int) -> None:
        """Reseed shard order, shuffle and windows for ``epoch`` (call before iterating)."""
        self.seeds.epoch = epoch


def make_window_dataset(
    urls: str | list[str],
    history_frames: int,
    pred_frames: int,
    *,
    frame_stride: int = 1,
    resampled: bool = False,
    shuffle: int = 1000,
    seed: int = 0,
    size: tuple[int, int] | None = None,
    tasks: Sequence[str] = ("t2v", "i2v"),
    decode_threads: int = 1,
    max_misses: int = 10_000,
    max_damaged_share: float = 0.05,
) -> WindowDataset:
    """A WebDataset pipeline of (history, prediction) windows for training.

    Args:
        urls: shard paths/urls, a list or brace notation (``real-{000000..000009}.tar``).
        history_frames: most history frames before the prediction (fewer at the clip start;
            0 for t2v, whose windows are pure text-to-video).
        pred_frames: frames to predict; every window has exactly these.
        frame_stride: take every n-th clip frame (fps becomes fps / n).
        resampled: draw shards with replacement forever, per worker (for multi-node runs
            with unequal shard counts); else each shard once per epoch, split by node/worker.
        shuffle: sample shuffle buffer; it holds encoded samples (mp4 bytes), size RAM to it.
        size: (H, W) to resize to (cover, aspect kept) and centre-crop, or None for the
            stored resolution.
        tasks: which tasks to draw; a sample offers the ones in its json ``tasks``.
        decode_threads: decord threads per reader (keep 1 with several loader workers).
        max_misses: raise instead of looping forever after this many consecutive samples
            give no window (all too short, none offering the tasks, or all undecodable).
        max_damaged_share: raise DamagedDataError once more than this share of the shards
            is found damaged (each damaged shard is skipped whole and counted).

    Yields dicts: __key__, video uint8 (T,H,W,3) with T = history_frames + pred_frames,
    history_frames, keys and mouse int64 (T,) codes into schemas.actions KEYS/MOUSE, fps,
    event_text, action_text, task, source, tiny_random.
    """
    if pred_frames < 1 or history_frames < 0 or frame_stride < 1:
        raise ValueError("need pred_frames >= 1, history_frames >= 0, frame_stride >= 1")
    if not tasks or any(t not in TASKS for t in tasks):
        raise ValueError(f"tasks must be a non-empty subset of {TASKS}, got {tasks}")
    url_list = wds.shardlists.expand_urls(urls) if isinstance(urls, str) else list(urls)
    if not url_list:
        raise ValueError("no shard urls given")
    seeds, skipped = _Seeds(seed), SkipCounter()
    if resampled:
        shards = [wds.ResampledShards(url_list, deterministic=True, worker_seed=seeds.worker_seed)]
    else:
        shards = [_ShardList(url_list, seeds, shuffle > 1), wds.split_by_node, wds.split_by_worker]
    damaged = DamageCounter(len(url_list), max_damaged_share, skipped)
    stages = [*shards, damaged, wds.tarfile_to_samples(handler=skipped)]
    if shuffle > 1:
        stages.append(_Shuffle(shuffle, seeds))
    windows = _Windows(
        history_frames,
        pred_frames,
        frame_stride,
        size,
        tuple(tasks),
        decode_threads,
        seeds,
        skipped,
        max_misses,
    )
    return WindowDataset(*stages, windows, seeds=seeds, skipped=skipped, damaged=damaged)


def collate(items: list[dict]) -> dict:
    """Batch windows of one shape: tensors stacked, strings in lists."""
    shapes = {tuple(it["video"].shape) for it in items}
    if len(shapes) != 1:
        raise ValueError(
            f"collate needs equal-shape windows, got {sorted(shapes)}: batch one task at a "
            "time (tasks=('i2v',)) and drop windows with short history, or use batch size 1"
        )
    return {
        "video": torch.stack([it["video"] for it in items]),  # (B, T, H, W, 3) uint8
        "keys": torch.stack([it["keys"] for it in items]),  # (B, T) int64
        "mouse": torch.stack([it["mouse"] for it in items]),  # (B, T) int64
        "history_frames": torch.tensor([it["history_frames"] for it in items]),
        "fps": torch.tensor([it["fps"] for it in items], dtype=torch.float32),
        "tiny_random": torch.tensor([it["tiny_random"] for it in items]),
        **{
            k: [it[k] for it in items]
            for k in ("__key__", "event_text", "action_text", "task", "source")
        },
    }
