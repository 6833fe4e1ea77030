"""Video helpers: the frame-rate mapping, resize + crop, transcoding and bad inputs."""

from __future__ import annotations

import decord
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from curation.render import iter_render_frames, render_clip
from curation.video import (
    H264Writer,
    SourceVideo,
    VideoError,
    crop_box,
    parse_resolution,
    resample_indices,
    resize_crop,
    transcode,
)
from tests.test_render import K, walk


def test_resample_30_to_16_takes_the_nearest_frame():
    idx = resample_indices(30, 30.0, 16.0)
    assert idx.tolist() == [0, 2, 4, 6, 8, 9, 11, 13, 15, 17, 19, 21, 23, 24, 26, 28]
    assert resample_indices(5, 30.0, 30.0).tolist() == [0, 1, 2, 3, 4]
    assert resample_indices(0, 30.0, 16.0).size == 0


@given(
    n=st.integers(1, 3000),
    src=st.sampled_from([24.0, 25.0, 29.97, 30.0, 60.0]),
    out=st.sampled_from([8.0, 12.5, 16.0, 24.0, 30.0, 48.0]),
)
def test_resample_properties(n, src, out):
    idx = resample_indices(n, src, out)
    j = np.arange(idx.size)
    assert idx[0] == 0 and idx[-1] <= n - 1
    assert np.all(np.diff(idx) >= 0)
    assert np.all(np.abs(idx - j * src / out) <= 0.5 + 1e-9)  # nearest source frame
    # Maximal: the next output frame would need a source frame past the end.
    assert np.floor(idx.size * src / out + 0.5) > n - 1


def test_crop_box_keeps_the_output_aspect_centred():
    x, y, w, h = crop_box(1920, 1080, 960, 544)
    assert (y, h) == (0, 1080) and abs(w / h - 960 / 544) < 2e-3 and x == (1920 - w) // 2
    x, y, w, h = crop_box(1280, 720, 512, 512)
    assert (x, y, w, h) == (280, 0, 720, 720)


def test_resize_crop_shape_and_centre():
    frame = np.zeros((720, 1280, 3), np.uint8)
    frame[350:370, 630:650] = 255  # a white square in the centre
    out = resize_crop(frame, 544, 960)
    assert out.shape == (544, 960, 3)
    ys, xs = np.nonzero(out[..., 0] > 128)
    assert abs(ys.mean() - 271.5) < 2 and abs(xs.mean() - 479.5) < 2


def test_parse_resolution():
    assert parse_resolution("704x1280") == (704, 1280)
    for bad in ("544", "543x960", "axb", "0x960"):
        with pytest.raises(ValueError):
            parse_resolution(bad)


def test_writer_rejects_odd_sizes(tmp_path):
    with pytest.raises(ValueError):
        H264Writer(tmp_path / "x.mp4", 16.0, 101, 64)


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    path = tmp_path_factory.mktemp("video") / "walk.mp4"
    render_clip(walk(60, yaw_per_frame=0.01), K, path, size=(320, 180), crf=12)
    return path


def test_transcode_retimes_resizes_and_keeps_content(source):
    out = transcode(source, out_fps=16.0, size=(96, 128), chunk=7)
    assert out.frames == 32 and out.source_indices.tolist() == resample_indices(60, 30, 16).tolist()
    assert (out.width, out.height, out.fps) == (128, 96, 16.0)
    path = source.with_name("out.mp4")
    path.write_bytes(out.data)
    vr = decord.VideoReader(str(path))
    assert len(vr) == 32 and vr[0].shape == (96, 128, 3) and abs(vr.get_avg_fps() - 16) < 1e-6
    # Each output frame is the resized source frame it claims to be.
    rendered = list(iter_render_frames(walk(60, yaw_per_frame=0.01), K, (320, 180)))
    got = vr.get_batch(list(range(32))).asnumpy().astype(float)
    for j in (0, 5, 31):
        want = resize_crop(rendered[out.source_indices[j]], 96, 128).astype(float)
        other = resize_crop(rendered[out.source_indices[j] + 10 - 20 * (j > 15)], 96, 128)
        assert np.abs(got[j] - want).mean() < np.abs(got[j] - other).mean() / 2


def test_transcode_limits_source_frames_and_upsamples(source):
    out = transcode(source, out_fps=60.0, size=(64, 64), max_source_frames=10)
    assert out.source_indices.tolist() == [0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7, 8, 8, 9, 9]
    assert out.frames == 19 and SourceVideo(source).num_frames == 60


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda p, src: None, "missing_video"),
        (lambda p, src: p.write_bytes(b""), "empty_video"),
        (lambda p, src: p.write_text("this is not a video\n" * 50), "not_a_video"),
        (
            lambda p, src: p.write_bytes(src.read_bytes()[: src.stat().st_size // 2]),
            "truncated_video",
        ),
    ],
    ids=["missing", "zero-byte", "text", "truncated"],
)
def test_bad_inputs_raise_video_error_with_reason(tmp_path, source, make, reason):
    path = tmp_path / "bad.mp4"
    make(path, source)
    with pytest.raises(VideoError) as e:
        transcode(path, size=(64, 64))
    assert e.value.reason == reason
