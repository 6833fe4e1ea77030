"""The published Yume labels of real Sekai segments must come out exactly."""

from __future__ import annotations

import numpy as np
import pytest

from curation.actions import detect_resets, label_codes, label_frames, segment_runs
from curation.sekai import discover_segments
from curation.yume_layout import parse_segment_txt
from schemas.actions import KEYS, MOUSE


def _fixture_files(fixtures_dir):
    files = sorted((fixtures_dir / "sekai_segments").glob("*/*.npy"))
    assert len(files) == 25
    return files


def test_every_fixture_is_one_segment_with_its_published_label(fixtures_dir):
    for npy in _fixture_files(fixtures_dir):
        label = parse_segment_txt(npy.with_suffix(".txt").read_text(encoding="utf-8"))
        c2w = np.load(npy)
        keys, mouse = label_codes(c2w)
        segments = segment_runs(keys, mouse, detect_resets(c2w))
        assert len(segments) == 1, npy.name
        seg = segments[0]
        assert (KEYS[seg.keys], MOUSE[seg.mouse]) == (label["Keys"], label["Mouse"]), npy.name
        assert (seg.start, seg.end) == (0, len(c2w) - 1)
        assert seg.num_frames == int(label["Duration"].split()[0])


def test_label_frames_returns_one_label_per_pair(fixtures_dir):
    npy = _fixture_files(fixtures_dir)[0]
    c2w = np.load(npy)
    keys, mouse = label_frames(c2w)
    assert len(keys) == len(mouse) == len(c2w) - 1
    assert set(keys) <= set(KEYS) and set(mouse) <= set(MOUSE)


def test_discover_segments_reads_published_labels(fixtures_dir):
    items, rejects = discover_segments(fixtures_dir / "sekai_segments")
    assert len(items) == 25 and rejects == []
    assert {(it["reference_keys"], it["reference_mouse"]) for it in items} == {
        ("W+A", "←"),
        ("W+A", "→"),
        ("W+A", "·"),
        ("W+D", "←"),
    }
    assert all(it["youtube_id"] == "IfKRDeE-Fb0" for it in items)


@pytest.mark.parametrize("stride", [2, 3])
def test_stride_keeps_fixture_labels(fixtures_dir, stride):
    """Thresholds scale with the stride, so steady motion keeps its label."""
    from curation.actions import LabelConfig

    npy = _fixture_files(fixtures_dir)[0]
    label = parse_segment_txt(npy.with_suffix(".txt").read_text(encoding="utf-8"))
    keys, _ = label_frames(np.load(npy), LabelConfig(stride=stride))
    assert len(keys) == len(np.load(npy)) - stride
    assert max(set(keys), key=keys.count) == label["Keys"]
