"""Properties of the labeller on synthetic trajectories with known motion."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.spatial.transform import Rotation

from curation.actions import (
    LabelConfig,
    action_text,
    detect_resets,
    euler_xy,
    label_codes,
    label_frames,
    segment_runs,
    segment_speeds,
)
from curation.sample_sekai import synth_trajectory
from schemas.actions import KEYS, MOUSE


def constant_motion(n: int, t: tuple[float, float, float], euler: tuple[float, float, float]):
    """Integrate one camera-frame step (translation t, extrinsic xyz angles) n-1 times."""
    step = np.eye(4)
    step[:3, :3] = Rotation.from_euler("xyz", euler).as_matrix()
    step[:3, 3] = t
    out = [np.eye(4)]
    for _ in range(n - 1):
        out.append(out[-1] @ step)
    return np.stack(out)


def random_rigid(rng: np.random.Generator) -> np.ndarray:
    g = np.eye(4)
    g[:3, :3] = Rotation.random(random_state=int(rng.integers(1 << 31))).as_matrix()
    g[:3, 3] = rng.uniform(-1, 1, 3)
    return g


def spelled_label(z, x, ax, ay, t: float = 0.0, r: float = 0.0) -> tuple[str, str]:
    """DESIGN.md's label rule written out literally, from signed camera-frame motion."""
    keys = [n for n, on in (("W", z > t), ("S", z < -t), ("D", x > t), ("A", x < -t)) if on]
    mouse = [n for n, on in (("↑", ax > r), ("↓", ax < -r), ("→", ay > r), ("←", ay < -r)) if on]
    return "+".join(keys) or "None", "".join(mouse) or "·"


speed = st.floats(2e-4, 5e-3)
turn = st.floats(2e-3, 2e-2)


@given(v=speed)
def test_forward_is_w_and_backward_is_s(v):
    assert set(label_frames(constant_motion(40, (0, 0, v), (0, 0, 0)))[0]) == {"W"}
    assert set(label_frames(constant_motion(40, (0, 0, -v), (0, 0, 0)))[0]) == {"S"}


@given(v=speed)
def test_strafe_right_is_d_and_left_is_a(v):
    assert set(label_frames(constant_motion(40, (v, 0, 0), (0, 0, 0)))[0]) == {"D"}
    assert set(label_frames(constant_motion(40, (-v, 0, 0), (0, 0, 0)))[0]) == {"A"}


@given(r=turn)
def test_yaw_right_is_right_arrow_and_pitch_up_is_up_arrow(r):
    assert set(label_frames(constant_motion(40, (0, 0, 0), (0, r, 0)))[1]) == {"→"}
    assert set(label_frames(constant_motion(40, (0, 0, 0), (0, -r, 0)))[1]) == {"←"}
    assert set(label_frames(constant_motion(40, (0, 0, 0), (r, 0, 0)))[1]) == {"↑"}
    assert set(label_frames(constant_motion(40, (0, 0, 0), (-r, 0, 0)))[1]) == {"↓"}


@given(
    fwd=st.sampled_from([-1, 0, 1]),
    side=st.sampled_from([-1, 0, 1]),
    pitch=st.sampled_from([-1, 0, 1]),
    yaw=st.sampled_from([-1, 0, 1]),
    v=speed,
    r=turn,
)
def test_combinations_follow_the_vocabulary_order(fwd, side, pitch, yaw, v, r):
    keys, mouse = label_frames(constant_motion(30, (side * v, 0, fwd * v), (pitch * r, yaw * r, 0)))
    want_keys, want_mouse = spelled_label(fwd, side, pitch, yaw)
    assert set(keys) == {want_keys} and set(mouse) == {want_mouse}


@settings(max_examples=30)
@given(seed=st.integers(0, 2**31 - 1))
def test_labels_invariant_to_a_change_of_world_frame(seed):
    rng = np.random.default_rng(seed)
    clip = synth_trajectory(rng, 200)
    g = random_rigid(rng)
    moved = g @ clip.c2w.astype(np.float64)
    a, b = label_codes(clip.c2w), label_codes(moved)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])


@settings(max_examples=20)
@given(seed=st.integers(0, 2**31 - 1))
def test_synthetic_ground_truth_is_recovered(seed):
    clip = synth_trajectory(np.random.default_rng(seed), 700)
    keys, mouse = label_codes(clip.c2w)
    resets = detect_resets(clip.c2w)
    assert resets.tolist() == clip.resets.tolist()
    ok = np.ones(len(keys), bool)
    ok[resets] = False
    assert np.array_equal(keys[ok], clip.keys[ok]) and np.array_equal(mouse[ok], clip.mouse[ok])


@settings(max_examples=20)
@given(seed=st.integers(0, 2**31 - 1))
def test_vectorised_labels_equal_the_literal_per_pair_algorithm(seed):
    """One 4x4 inverse and one scipy Euler conversion per pair, as DESIGN.md states it."""
    clip = synth_trajectory(np.random.default_rng(seed), 120)
    keys, mouse = label_frames(clip.c2w)
    for i in range(len(clip.c2w) - 1):
        rel = np.linalg.inv(clip.c2w[i].astype(np.float64)) @ clip.c2w[i + 1]
        ax, ay, _ = Rotation.from_matrix(rel[:3, :3]).as_euler("xyz")
        k, m = spelled_label(rel[2, 3], rel[0, 3], ax, ay, t=1e-4, r=1e-3)
        assert (keys[i], mouse[i]) == (k, m), i


@given(seed=st.integers(0, 2**31 - 1), seq=st.sampled_from(["xyz", "zyx", "XYZ"]))
def test_euler_closed_form_matches_scipy(seed, seq):
    r = Rotation.random(50, random_state=seed)
    r = Rotation.from_rotvec(r.as_rotvec() * 0.05)  # small per-frame rotations
    ax, ay = euler_xy(r.as_matrix(), seq)
    ref = r.as_euler(seq)
    assert np.allclose(ax, ref[:, seq.lower().index("x")], atol=1e-9)
    assert np.allclose(ay, ref[:, seq.lower().index("y")], atol=1e-9)


def naive_runs(keys, mouse, resets, min_frames):
    """Reference: walk the pairs one by one and close a run at a label change or reset."""
    runs, start = [], None
    for i in range(len(keys) + 1):
        boundary = (
            i == len(keys)
            or i in resets
            or (start is not None and (keys[i], mouse[i]) != (keys[start], mouse[start]))
        )
        if start is not None and boundary:
            if i - start + 1 >= min_frames:  # pairs start..i-1 span frames start..i
                runs.append((start, i, int(keys[start]), int(mouse[start])))
            start = None
        if i < len(keys) and i not in resets and start is None:
            start = i
    return runs


@given(
    labels=st.lists(
        st.tuples(st.integers(0, 8), st.integers(0, 8), st.integers(1, 90)), min_size=1, max_size=8
    ),
    min_frames=st.integers(2, 40),
    max_frames=st.one_of(st.none(), st.integers(40, 100)),
    reset_at=st.lists(st.integers(0, 400), max_size=3),
)
def test_segments_are_maximal_runs_that_respect_resets_and_limits(
    labels, min_frames, max_frames, reset_at
):
    keys = np.concatenate([np.full(n, k, np.uint8) for k, _, n in labels])
    mouse = np.concatenate([np.full(n, m, np.uint8) for _, m, n in labels])
    resets = sorted({r for r in reset_at if r < len(keys)})
    segs = segment_runs(
        keys, mouse, np.array(resets, dtype=int), min_frames=min_frames, max_frames=max_frames
    )
    expected = naive_runs(keys, mouse, set(resets), min_frames)
    if max_frames is None:
        assert [(s.start, s.end, s.keys, s.mouse) for s in segs] == expected
    for s in segs:
        assert (keys[s.start : s.end] == s.keys).all() and (mouse[s.start : s.end] == s.mouse).all()
        assert not any(s.start <= r < s.end for r in resets)
        if max_frames:
            assert min(min_frames, max_frames // 2) <= s.num_frames <= max_frames
            assert any(a <= s.start and s.end <= b for a, b, _, _ in expected)


@given(n=st.integers(8, 120), stride=st.integers(1, 4), split=st.floats(0.2, 0.8))
def test_strided_segments_stay_inside_the_trajectory(n, stride, split):
    """Pairs overlap (i, i+stride): N - stride labels, and a run of pairs a..b covers frames
    a..b+stride, so the last segment ends on frame N-1, never beyond it."""
    labels = n - stride
    cut = max(1, int(labels * split))
    keys = np.array([1] * cut + [2] * (labels - cut), np.uint8)
    segs = segment_runs(keys, np.zeros(labels, np.uint8), min_frames=2, stride=stride)
    assert segs[0].start == 0 and segs[-1].end == n - 1
    assert all(s.end - s.start == (cut - 1 if s.keys == 1 else labels - cut - 1) + stride
               for s in segs)  # fmt: skip


def test_speeds_of_a_straight_walk_and_a_turn():
    walk = constant_motion(31, (0, 0, 0.01), (0, 0, 0))
    d, turn_deg, view = segment_speeds(walk, 0, 30, fps=30.0)
    assert (
        np.isclose(d, 0.3)
        and np.isclose(turn_deg, 0.0, atol=1e-6)
        and np.isclose(view, 0.0, atol=1e-6)
    )
    circle = constant_motion(31, (0, 0, 0.01), (0, np.radians(2.0), 0))
    _, turn_deg, view = segment_speeds(circle, 0, 30, fps=30.0)
    assert np.isclose(turn_deg, 2.0, atol=1e-6) and np.isclose(view, 2.0, atol=1e-6)


def test_action_texts_cover_the_whole_vocabulary_in_both_phrase_sets():
    for style in ("yume", "yume5b"):
        texts = {action_text(k, m, style) for k in KEYS for m in MOUSE}
        assert len(texts) == 81
    assert action_text("W", "·") == "Person moves forward (W). Camera remains still (·)."
    assert action_text("W+A", "↑→", "yume5b", (4.0, 0.0, 1.234)) == (
        "The camera pushes forward and moves to the left (W+A). "
        "The camera tilts up and pans to the right (↑→). "
        "Actual distance moved:4 at 100 meters per second. "
        "Angular change rate (turn speed):0. View rotation speed:1.23."
    )


def test_stride_scales_thresholds():
    slow = constant_motion(60, (0, 0, 6e-5), (0, 0, 0))  # below 1e-4 per frame
    assert set(label_frames(slow)[0]) == {"None"}
    assert set(label_frames(slow, LabelConfig(stride=2))[0]) == {"None"}  # 1.2e-4 < 2e-4


def _motion_for(keys: str, mouse: str, v: float, r: float) -> np.ndarray:
    """Constant motion whose label is (keys, mouse), at v per frame and r rad per frame."""
    fwd = (1 if "W" in keys else 0) - (1 if "S" in keys else 0)
    side = (1 if "D" in keys else 0) - (1 if "A" in keys else 0)
    pitch = (1 if "↑" in mouse else 0) - (1 if "↓" in mouse else 0)
    yaw = (1 if "→" in mouse else 0) - (1 if "←" in mouse else 0)
    return constant_motion(60, (side * v, 0, fwd * v), (pitch * r, yaw * r, 0))


def test_stride_scales_thresholds_on_every_label():
    """Above the threshold per frame, every label is found at stride 1 and 2; at 0.75x the
    per-frame threshold nothing is, at either stride (an unscaled threshold at stride 2 would
    see 1.5x and label it)."""
    cfg = LabelConfig()
    t, r = cfg.translation_threshold, cfg.rotation_threshold
    for keys in KEYS:
        for mouse in MOUSE:
            for stride in (1, 2):
                c = LabelConfig(stride=stride)
                got = label_frames(_motion_for(keys, mouse, 1.5 * t, 1.5 * r), c)
                assert (set(got[0]), set(got[1])) == ({keys}, {mouse}), (keys, mouse, stride)
                quiet = label_frames(_motion_for(keys, mouse, 0.75 * t, 0.75 * r), c)
                assert (set(quiet[0]), set(quiet[1])) == ({"None"}, {"·"}), (keys, mouse, stride)
