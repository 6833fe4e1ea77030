"""The procedural renderer: a decodable H.264 clip whose frames follow the camera."""

from __future__ import annotations

import av
import decord
import numpy as np
from scipy.spatial.transform import Rotation

from curation.render import iter_render_frames, render_clip, scale_intrinsic

K = np.array([[1000.0, 0, 960], [0, 1000.0, 540], [0, 0, 1]])


def walk(n: int, step: float = 0.002, yaw_per_frame: float = 0.0) -> np.ndarray:
    """(n, 4, 4) camera-to-world poses walking forward along the camera z axis."""
    c2w = np.tile(np.eye(4), (n, 1, 1))
    pos = np.zeros(3)
    for i in range(n):
        rot = Rotation.from_euler("y", yaw_per_frame * i).as_matrix()
        c2w[i, :3, :3] = rot
        c2w[i, :3, 3] = pos
        pos = pos + rot @ [0.0, 0.0, step]
    return c2w


def test_render_clip_is_decodable_h264(tmp_path):
    path = tmp_path / "sub" / "clip.mp4"
    render_clip(walk(45), K, path, fps=30.0, size=(320, 180))
    vr = decord.VideoReader(str(path))
    assert len(vr) == 45
    assert vr[0].shape == (180, 320, 3)
    assert abs(vr.get_avg_fps() - 30.0) < 1e-6
    with av.open(str(path)) as c:
        stream = c.streams.video[0]
        assert stream.codec_context.name == "h264"
        assert stream.codec_context.pix_fmt == "yuv420p"
    assert [p.name for p in path.parent.iterdir()] == ["clip.mp4"]  # no temporary left


def test_motion_changes_frames_and_stillness_does_not():
    moving = list(iter_render_frames(walk(40, step=0.003), K, (160, 90)))
    still = list(iter_render_frames(walk(40, step=0.0), K, (160, 90)))
    diff = lambda a, b: np.abs(a.astype(int) - b.astype(int)).mean()  # noqa: E731
    assert diff(moving[0], moving[-1]) > 3.0
    assert diff(still[0], still[-1]) == 0.0


def test_yaw_shifts_the_view_sideways():
    """Turning right moves the scene left in the image: the best horizontal shift is > 0."""
    frames = list(iter_render_frames(walk(2, step=0.0, yaw_per_frame=0.05), K, (320, 180)))
    a, b = (f.astype(np.float32).mean(axis=2) for f in frames)
    errors = {s: np.abs(a[:, s:] - b[:, : 320 - s]).mean() for s in range(0, 40)}
    best = min(errors, key=errors.get)
    expected = 0.05 * scale_intrinsic(K, (320, 180))[0, 0]  # ~ f * angle pixels
    assert abs(best - expected) <= 3
