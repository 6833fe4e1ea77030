"""Training reader: window shapes, per-frame token alignment, texts, splitting, bad samples."""

from __future__ import annotations

import io
import itertools
import json
import tarfile
from pathlib import Path

import av
import numpy as np
import pytest
import torch

from curation.shard_reader import collate, decode_frames, make_window_dataset
from curation.shards import indexed_shards, write_shards
from curation.video import resize_crop
from schemas.actions import KEY_CODE, KEYS, MOUSE, MOUSE_CODE
from tests.test_shards import frame_level, make_mp4, make_sample

FRAMES = 24


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> tuple[list[str], dict[str, dict]]:
    """8 samples of 24 frames in 4 shards; returns (urls, {key: meta})."""
    out = tmp_path_factory.mktemp("reader") / "real"
    mp4 = make_mp4(FRAMES)
    samples = [(f"clip_{i}", make_sample(f"clip_{i}", FRAMES, mp4=mp4)) for i in range(7)]
    samples.append(("still", make_sample("still", FRAMES, mp4=mp4, actions=False)))
    write_shards(samples, out, "real", max_samples=2)
    metas = {k: json.loads(m["json"]) for k, m in samples}
    return indexed_shards(out), metas


def frame_numbers(video: torch.Tensor) -> list[int]:
    """Which generated frame each decoded frame is, from its grey level."""
    levels = video.float().mean(dim=(1, 2, 3)).tolist()
    table = {i: frame_level(i) for i in range(FRAMES)}
    return [min(table, key=lambda i: abs(table[i] - v)) for v in levels]


def test_i2v_windows_align_frames_tokens_and_texts(shards):
    urls, metas = shards
    ds = make_window_dataset(urls, 5, 3, frame_stride=2, shuffle=0, tasks=("i2v",))
    items = list(ds)
    assert sorted(it["__key__"] for it in items) == sorted(metas)
    for it in items:
        meta, h = metas[it["__key__"]], it["history_frames"]
        assert 1 <= h <= 5 and it["task"] == "i2v"
        assert it["video"].shape == (h + 3, 48, 64, 3) and it["video"].dtype == torch.uint8
        frames = frame_numbers(it["video"])
        assert all(b - a == 2 for a, b in itertools.pairwise(frames))
        if meta["keys"]:
            assert it["keys"].tolist() == [KEY_CODE[KEYS[f % 9]] for f in frames]
            assert it["mouse"].tolist() == [MOUSE_CODE[MOUSE[(f // 2) % 9]] for f in frames]
            pred = frames[h:]
            covering = [s for s in meta["segments"] if s["start"] <= pred[0] <= s["end"]]
            majority = max(
                meta["segments"], key=lambda s: sum(s["start"] <= f <= s["end"] for f in pred)
            )
            assert it["action_text"] == majority["text"] and covering
        else:
            assert it["keys"].tolist() == [0] * (h + 3) and it["action_text"] == ""
        assert it["keys"].dtype == torch.int64
        assert it["fps"] == 8.0 and it["event_text"] == f"event of {it['__key__']}"
        assert it["source"] == "sekai-real" and it["tiny_random"] is True


def test_t2v_windows_have_no_history_and_resize(shards):
    urls, _ = shards
    ds = make_window_dataset(urls, 8, 4, shuffle=0, tasks=("t2v",), size=(32, 48))
    items = list(ds)
    assert len(items) == 8
    for it in items:
        assert it["history_frames"] == 0 and it["video"].shape == (4, 32, 48, 3)
        assert it["event_text"] == f"scene of {it['__key__']}"
        frames = frame_numbers(it["video"])
        assert frames == list(range(frames[0], frames[0] + 4))
    # (32, 48) takes the torch fallback (decord cannot resize to 48 px wide); (24, 32) not
    direct = list(make_window_dataset(urls, 8, 4, shuffle=0, tasks=("t2v",), size=(24, 32)))
    assert {it["video"].shape for it in direct} == {(4, 24, 32, 3)}
    batch = collate(items[:3])
    assert batch["video"].shape == (3, 4, 32, 48, 3) and batch["keys"].shape == (3, 4)
    assert len(batch["event_text"]) == 3


def test_collate_refuses_mixed_shapes(shards):
    urls, _ = shards
    items = list(make_window_dataset(urls, 30, 2, shuffle=0, tasks=("i2v",)))
    assert len({it["history_frames"] for it in items}) > 1
    with pytest.raises(ValueError, match="equal-shape"):
        collate(items)


def test_short_clips_give_no_window(shards):
    urls, _ = shards
    assert list(make_window_dataset(urls, 0, FRAMES + 1, shuffle=0, tasks=("t2v",))) == []


def _keys(ds) -> list[str]:
    return [it["__key__"] for it in ds]


def test_split_by_worker_and_node_is_disjoint(shards, monkeypatch):
    urls, metas = shards
    parts = []
    for worker in range(2):
        monkeypatch.setenv("WORKER", str(worker))
        monkeypatch.setenv("NUM_WORKERS", "2")
        parts.append(_keys(make_window_dataset(urls, 2, 2, seed=3)))
    assert not set(parts[0]) & set(parts[1])
    assert sorted(parts[0] + parts[1]) == sorted(metas)
    monkeypatch.delenv("WORKER")
    monkeypatch.delenv("NUM_WORKERS")
    nodes = []
    for rank in range(2):
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", "2")
        nodes.append(_keys(make_window_dataset(urls, 2, 2, seed=3)))
    assert not set(nodes[0]) & set(nodes[1]) and sorted(nodes[0] + nodes[1]) == sorted(metas)


def test_dataloader_workers_read_each_sample_once(shards):
    urls, metas = shards
    ds = make_window_dataset(urls, 2, 2, shuffle=4, seed=1)
    loader = torch.utils.data.DataLoader(ds, batch_size=None, num_workers=2)
    assert sorted(it["__key__"] for it in loader) == sorted(metas)


def test_resampled_is_reproducible_and_epochs_differ(shards):
    urls, metas = shards
    take = lambda ds: [(it["__key__"], it["history_frames"]) for it in itertools.islice(ds, 12)]  # noqa: E731
    a = take(make_window_dataset(urls, 3, 2, resampled=True, shuffle=0, seed=5))
    b = take(make_window_dataset(urls, 3, 2, resampled=True, shuffle=0, seed=5))
    assert a == b and {k for k, _ in a} <= set(metas)
    ds = make_window_dataset(urls, 3, 2, shuffle=4, seed=5)
    first = _keys(ds)
    ds.set_epoch(1)
    assert sorted(_keys(ds)) == sorted(first) and _keys(ds) != first


def test_bad_samples_are_skipped_and_counted(tmp_path, shards):
    urls, _ = shards
    good = make_sample("good", FRAMES, mp4=make_mp4(FRAMES))
    broken_mp4 = dict(make_sample("broken_mp4", FRAMES, mp4=b"not a video"))
    bad_json = dict(good, json=b"{oops")
    path = tmp_path / "mixed.tar"
    with tarfile.open(path, "w") as tar:
        for key, members in [("broken_mp4", broken_mp4), ("bad_json", bad_json), ("good", good)]:
            for ext, data in sorted(members.items()):
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    truncated = tmp_path / "truncated.tar"
    truncated.write_bytes(Path(urls[0]).read_bytes()[:3000])
    ds = make_window_dataset([str(path), str(truncated)], 2, 2, shuffle=0, max_damaged_share=0.5)
    keys = _keys(ds)
    assert "good" in keys and "broken_mp4" not in keys and "bad_json" not in keys
    assert ds.skipped.count >= 3


def circle_mp4(width: int, height: int, radius: int, frames: int = 3) -> bytes:
    """A white disc on black in the frame centre."""
    yy, xx = np.mgrid[:height, :width]
    disc = (yy - height / 2 + 0.5) ** 2 + (xx - width / 2 + 0.5) ** 2 <= radius**2
    img = np.repeat(np.where(disc, 235, 16).astype(np.uint8)[..., None], 3, axis=2)
    buf = io.BytesIO()
    with av.open(buf, mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=16)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"preset": "ultrafast", "crf": "10"}
        for _ in range(frames):
            container.mux(stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")))
        container.mux(stream.encode())
    return buf.getvalue()


def disc_extent(frame: torch.Tensor) -> tuple[int, int]:
    """(height, width) in pixels of the bright disc in a (H, W, 3) frame."""
    mask = frame.float().mean(dim=2) > 125
    return int(mask.any(dim=1).sum()), int(mask.any(dim=0).sum())


@pytest.mark.parametrize("size", [(64, 128), (64, 64), (60, 44)])
def test_resize_keeps_aspect_like_the_clips_stage(tmp_path, size):
    """A 2:1 source read at other aspects is covered and centre-cropped, never stretched."""
    src_w, src_h, radius = 256, 128, 40
    mp4 = circle_mp4(src_w, src_h, radius)
    out = tmp_path / "real"
    write_shards(
        [("disc", make_sample("disc", 3, mp4=mp4, width=src_w, height=src_h))], out, "real"
    )
    (item,) = make_window_dataset(indexed_shards(out), 0, 3, shuffle=0, tasks=("t2v",), size=size)
    video = item["video"]
    assert video.shape == (3, *size, 3)
    scale = max(size[0] / src_h, size[1] / src_w)
    h, w = disc_extent(video[0])
    assert abs(h - w) <= 1 and abs(h - 2 * radius * scale) <= 2  # round, and scaled to cover
    # The same pixels as the clips stage's resize_crop of the full-size frame.
    full = decode_frames(mp4, [0]).numpy()[0]
    want = resize_crop(full, *size).astype(float)
    assert np.abs(video[0].numpy().astype(float) - want).mean() < 4
    fallback = decode_frames(mp4, [0], size)[0]  # no stored size: full decode + resize_crop
    assert np.array_equal(fallback.numpy(), resize_crop(full, *size))


def test_a_stream_with_no_possible_window_fails_fast_instead_of_hanging(shards):
    """Resampled shards repeat forever; a window that no sample can give must not hang."""
    urls, _ = shards
    ds = make_window_dataset(urls, 0, FRAMES + 1, resampled=True, shuffle=0, max_misses=50)
    with pytest.raises(RuntimeError, match=f"no t2v/i2v window of {FRAMES + 1} frames"):
        next(iter(ds))
