"""Odd input videos of the clips stage, and a full disk while staging.

Every video here is built with PyAV: a phone video stored sideways with a display matrix, a
2:1 sample-aspect-ratio video, a 16x16 video, an audio-only m4a and a variable-frame-rate
video whose frames are told apart by their grey level. The full disk is /dev/full.
"""

from __future__ import annotations

import errno
import struct
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pyarrow as pa
import pytest
import typer
from hypothesis import given
from hypothesis import strategies as st
from typer.testing import CliRunner

import curation.clips as clips_module
from curation.config import option
from curation.dataroot import DataRoot
from curation.stages.base import FatalError, Stage
from curation.stages.clips import ClipsConfig, ClipsStage
from curation.video import SourceVideo, VideoError, resample_indices, timestamp_indices, transcode
from jobs.command import stage_command
from jobs.runner import RunOptions, process_batch, run_stage
from tests.test_clips import clip_row

RED, GREEN, BLUE = (255, 0, 0), (0, 255, 0), (0, 0, 255)


def write_video(path: Path, frames: list[np.ndarray], pts_ms: list[int] | None = None, sar=None):
    """RGB frames -> H.264 mp4 at 30 fps, or at the given millisecond timestamps."""
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=30)
        stream.height, stream.width = frames[0].shape[:2]
        stream.pix_fmt, stream.options = "yuv420p", {"crf": "10"}
        if pts_ms is not None:
            stream.codec_context.time_base = Fraction(1, 1000)
        if sar is not None:
            stream.codec_context.sample_aspect_ratio = sar
        for i, rgb in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            if pts_ms is not None:
                frame.pts, frame.time_base = pts_ms[i], Fraction(1, 1000)
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))


def set_display_rotation(path: Path, degrees: int) -> None:
    """Write the track's display matrix (tkhd), rotating ``degrees`` counter-clockwise.

    This is where phones record orientation; FFmpeg reads it as display-matrix side data
    (and shows it as the ``rotate`` tag).
    """
    data = bytearray(path.read_bytes())
    at = data.index(b"tkhd")
    assert data[at + 4] == 0  # version 0: the matrix is 40 bytes after the box type
    c, s = round(np.cos(np.radians(degrees))), round(np.sin(np.radians(degrees)))
    data[at + 44 : at + 80] = struct.pack(">9i", c << 16, -s << 16, 0, s << 16, c << 16, 0, 0, 0, 1 << 30)  # fmt: skip
    path.write_bytes(bytes(data))


def decode_rgb(data: bytes, path: Path) -> np.ndarray:
    path.write_bytes(data)
    with av.open(str(path)) as c:
        return np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)]).astype(float)


def upright_portrait(h: int = 96, w: int = 64) -> np.ndarray:
    """Red top half, blue bottom half, a green strip down the left edge."""
    img = np.zeros((h, w, 3), np.uint8)
    img[: h // 2], img[h // 2 :] = RED, BLUE
    img[:, : w // 4] = GREEN
    return img


def near(pixels: np.ndarray, colour) -> bool:
    return bool(np.abs(pixels.reshape(-1, 3).mean(0) - colour).max() < 40)


# ---- rotation -----------------------------------------------------------------------------


@pytest.mark.parametrize("rotation", [-90, 90, 180])
def test_rotated_phone_video_comes_out_upright(tmp_path, rotation):
    upright = upright_portrait()
    # Stored turned against the display matrix, as a phone held upright records it.
    stored = np.ascontiguousarray(np.rot90(upright, k=-rotation // 90))
    path = tmp_path / "phone.mp4"
    write_video(path, [stored] * 8)
    set_display_rotation(path, rotation)
    assert (SourceVideo(path).width, SourceVideo(path).height) == stored.shape[1::-1]
    out = transcode(path, size=(96, 64))
    got = decode_rgb(out.data, tmp_path / "out.mp4")[0]
    assert near(got[4:44, 24:], RED) and near(got[52:, 24:], BLUE)
    assert near(got[:, :12], GREEN) and not near(got[:, -12:], GREEN)


def test_portrait_video_into_landscape_output_is_a_centre_crop_of_the_upright_picture(tmp_path):
    upright = upright_portrait(128, 64)
    path = tmp_path / "phone.mp4"
    write_video(path, [np.ascontiguousarray(np.rot90(upright, k=1))] * 4)
    set_display_rotation(path, -90)
    got = decode_rgb(transcode(path, size=(32, 64)).data, tmp_path / "out.mp4")[0]
    # The central 32 of 128 rows: the red/blue border across the middle, green on the left.
    assert near(got[2:14, 20:], RED) and near(got[18:30, 20:], BLUE) and near(got[:, :12], GREEN)


# ---- sample aspect ratio ------------------------------------------------------------------


def sar_frames() -> np.ndarray:
    """64x64 stored pixels: red top quarter, blue left quarter below it, green next quarter."""
    img = np.zeros((64, 64, 3), np.uint8)
    img[16:, :16], img[16:, 16:32], img[:16] = BLUE, GREEN, RED
    return img


def test_non_square_pixels_are_cropped_by_their_display_size(tmp_path):
    path = tmp_path / "sar.mp4"
    write_video(path, [sar_frames()] * 4, sar=Fraction(2, 1))
    src = SourceVideo(path)
    assert (src.width, src.height, src.sar, src.display_size) == (64, 64, 2, (128, 64))
    # 2:1 output: no crop, the picture is only widened. (As square pixels, the 64x64 frame
    # would be scaled to 128x128 and its red top quarter cropped away.)
    wide = decode_rgb(transcode(path, size=(64, 128)).data, tmp_path / "wide.mp4")[0]
    assert near(wide[2:14], RED) and near(wide[20:, 2:30], BLUE) and near(wide[20:, 34:62], GREEN)
    # Square output: the display's central 64 of 128 columns = the stored central 32.
    square = decode_rgb(transcode(path, size=(64, 64)).data, tmp_path / "square.mp4")[0]
    assert near(square[20:, 2:30], GREEN) and not near(square[20:, :8], BLUE)


# ---- variable frame rate ------------------------------------------------------------------


# Irregular frame times (ms): bursts of 20 ms frames and 90 ms gaps.
VFR_MS = [0, 20, 40, 130, 150, 170, 260, 280, 370, 390, 410, 430, 520, 610, 630, 650, 740, 830]


def grey(k: int) -> np.ndarray:
    return np.full((32, 32, 3), 10 + 13 * k, np.uint8)


def test_variable_frame_rate_is_detected_and_retimed_by_timestamps(tmp_path):
    path = tmp_path / "vfr.mp4"
    write_video(path, [grey(k) for k in range(len(VFR_MS))], pts_ms=VFR_MS)
    src = SourceVideo(path)
    assert src.variable_rate and src.num_frames == len(VFR_MS)
    assert np.allclose(src.times, np.array(VFR_MS) / 1000)
    out = transcode(path, out_fps=16.0, size=(32, 32))
    # Brute force: output frame j shows the frame whose time is nearest j/16 s.
    times = np.array(VFR_MS) / 1000
    want = [int(np.argmin(np.abs(times - j / 16))) for j in range(len(out.source_indices))]
    assert out.source_indices.tolist() == want
    assert len(want) == 14  # up to 0.83 s + half a 20 ms frame
    # The frames really are those: each output frame's grey level names its source frame.
    got = decode_rgb(out.data, tmp_path / "out.mp4").mean(axis=(1, 2, 3))
    assert np.round((got - 10) / 13).astype(int).tolist() == want
    # Treated as constant rate (18 frames at the average fps), many frames would differ.
    constant = resample_indices(src.num_frames, src.fps, 16.0)
    assert len(constant) != len(want) or (constant != want).sum() > 3


def test_constant_rate_video_is_not_variable(tmp_path):
    path = tmp_path / "cfr.mp4"
    write_video(path, [grey(k % 18) for k in range(40)])
    src = SourceVideo(path)
    assert not src.variable_rate and src.fps == 30.0
    assert src.source_indices(16.0).tolist() == resample_indices(40, 30.0, 16.0).tolist()


@given(st.integers(1, 400), st.sampled_from([24.0, 25.0, 30.0, 30000 / 1001, 60.0]),
       st.sampled_from([8.0, 16.0, 24.0]))  # fmt: skip
def test_timestamp_indices_of_even_times_are_the_constant_rate_mapping(n, fps, out):
    times = np.arange(n) / fps
    assert timestamp_indices(times, out).tolist() == resample_indices(n, fps, out).tolist()


# ---- too small, no video ------------------------------------------------------------------


def audio_only(path: Path) -> None:
    with av.open(str(path), "w") as out:
        stream = out.add_stream("aac", rate=16000)
        stream.layout = "mono"
        for i in range(20):
            tone = np.sin(np.arange(1024) * 0.05 + i)[None].astype(np.float32) * 0.3
            frame = av.AudioFrame.from_ndarray(tone, format="fltp", layout="mono")
            frame.sample_rate, frame.pts = 16000, i * 1024
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))


def stage_item(stage: ClipsStage, name: str, frames: int) -> dict:
    clip = dict(clip_row(name, name, num_frames=frames), num_segments=0)  # no segment rows
    return {"key": name.replace(".", "_"), "input": name, "clip": clip, "segments": []}


def test_tiny_and_audio_only_inputs_get_their_own_reasons(tmp_path):
    videos = tmp_path / "videos"
    videos.mkdir()
    write_video(videos / "tiny.mp4", [grey(k)[:16, :16] for k in range(18)] * 2)
    audio_only(videos / "voice.m4a")
    with pytest.raises(VideoError) as e:
        SourceVideo(videos / "voice.m4a")
    assert e.value.reason == "no_video_stream" and "audio" in e.value.detail

    stage = ClipsStage(ClipsConfig(videos=videos, resolution="72x128"), DataRoot.at(tmp_path))
    stage.setup()
    items = [stage_item(stage, "tiny.mp4", 36), stage_item(stage, "voice.m4a", 36)]
    result = stage.process(items)
    assert [(o.status, o.reason) for o in result.outcomes] == [
        ("rejected", "video_too_small"),
        ("rejected", "no_video_stream"),
    ]
    assert "16x16" in result.outcomes[0].detail and "64" in result.outcomes[0].detail
    # The limit is the config's: at 16 the same video is a sample (scaled up).
    small_ok = ClipsStage(
        ClipsConfig(videos=videos, resolution="72x128", min_side=16), DataRoot.at(tmp_path)
    )
    small_ok.setup()
    (row,) = small_ok.process(items[:1]).tables["clips"]
    assert (row["frames"], row["width"], row["height"]) == (19, 128, 72)  # 36 at 30 -> 16 fps


def test_a_clip_whose_segment_rows_are_gone_is_missing_segments(tmp_path):
    """The actions table lost the clip's segment rows (edited, or a partial copy): the
    sample would train on no action text, so it is a reject, not a silent empty sample."""
    videos = tmp_path / "videos"
    videos.mkdir()
    write_video(videos / "ok.mp4", [grey(k % 18) for k in range(36)], sar=None)
    stage = ClipsStage(
        ClipsConfig(videos=videos, resolution="72x128", min_side=16), DataRoot.at(tmp_path)
    )
    stage.setup()
    item = stage_item(stage, "ok.mp4", 36)
    item["clip"]["num_segments"] = 2
    (outcome,) = stage.process([item]).outcomes
    assert (outcome.status, outcome.reason) == ("rejected", "missing_segments")
    assert "2 segments" in outcome.detail and "holds 0" in outcome.detail


# ---- a full disk ----------------------------------------------------------------------------


def write_to_full_disk(path, data: bytes) -> None:
    """What ``atomic_write_bytes`` meets on a full disk: the kernel's ENOSPC, from /dev/full."""
    with open("/dev/full", "wb") as f:
        f.write(data)
        f.flush()


def test_full_disk_while_staging_is_fatal_not_a_reject(tmp_path, monkeypatch):
    videos = tmp_path / "videos"
    videos.mkdir()
    write_video(videos / "ok.mp4", [grey(k % 18) for k in range(36)] * 1, sar=None)
    monkeypatch.setattr(clips_module, "atomic_write_bytes", write_to_full_disk)
    stage = ClipsStage(
        ClipsConfig(videos=videos, resolution="72x128", min_side=16), DataRoot.at(tmp_path)
    )
    stage.setup()
    item = stage_item(stage, "ok.mp4", 36)
    with pytest.raises(FatalError) as e:
        stage.process([item])
    assert isinstance(e.value.__cause__, OSError) and e.value.__cause__.errno == errno.ENOSPC
    assert "No space left" in str(e.value) and "ok.mp4" in str(e.value)
    # The worker's batch function lets it through too, and writes no part for the batch.
    with pytest.raises(FatalError):
        process_batch(stage, [item], run=1)
    assert not list(stage.root.parts(stage.name).glob("*"))


@dataclass(frozen=True)
class FullDiskConfig:
    items: int = option(3, "How many items to discover.")


class FullDiskStage(Stage[FullDiskConfig]):
    """A stage whose every output write meets a full disk (/dev/full), run on Ray."""

    name = "fulldisk"
    config_cls = FullDiskConfig
    tables = {"fulldisk": pa.schema([("key", pa.string())])}

    def discover(self):
        return ({"key": f"k{i}", "input": f"item {i}"} for i in range(self.config.items))

    def process_item(self, item: dict) -> dict[str, list[dict]]:
        write_to_full_disk(self.root.path / item["key"], b"x" * 100)
        return {"fulldisk": [{"key": item["key"]}]}


@pytest.mark.slow  # two Ray jobs
def test_full_disk_on_ray_ends_the_job_with_one_error_line(ray_local, tmp_path):
    with pytest.raises(Exception, match="fulldisk: No space left on device") as e:
        run_stage(FullDiskStage, FullDiskConfig(), RunOptions(root=tmp_path, progress=False))
    assert "Traceback" not in str(e.value) and "unexpected_error" not in str(e.value)
    assert not (tmp_path / "manifests" / "fulldisk.rejects.parquet").exists()
    app = typer.Typer()
    stage_command(app, "fulldisk", FullDiskStage)
    stage_command(app, "other", FullDiskStage)  # two commands: typer keeps the name
    result = CliRunner().invoke(app, ["fulldisk", "--root", str(tmp_path / "cli")])
    lines = result.output.strip().splitlines()
    assert result.exit_code == 1, result.output
    assert len(lines) == 1 and lines[0].startswith("error: fulldisk: No space left on device")
