"""Event recaptioning, the pure parts: caption windows, frame choice, prompts, validation.

Yume-1.5 keeps Sekai's scene captions for text-to-video and adds, for image-to-video,
captions about the *events* in a clip (what happens, what moves, what changes) written by
InternVL3. This module holds what decides those captions apart from the model: which
frames of which window are shown, the versioned instruction, the InternVL multi-image
prompt (``Frame1: <image>`` ... then the instruction, one 448 px tile per frame, not
dynamic tiling), and the checks an answer must pass. No torch, no Ray, no I/O.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

# The generic image placeholder of a built prompt; each backend maps it to its own (an
# image_url part for an OpenAI-compatible server, <img><IMG_CONTEXT>*n</img> in-process).
IMAGE = "<image>"

# Our event-focused instructions, versioned: a new wording is a new version, never an edit
# of an old one (the version is recorded with every caption and is part of its item key).
PROMPTS: dict[str, str] = {
    "event-v1": (
        "The frames above are taken in order from a first-person video clip. Describe the "
        "events in the clip in two or three plain English sentences: what happens, which "
        "people, vehicles or objects move and how, and what changes in the scene (light, "
        "weather, doors, signals). Do not describe the static scenery, and do not mention the "
        "camera or the viewer's own movement (walking, turning, panning, zooming). Write only "
        "the description."
    ),
}
DEFAULT_PROMPT_VERSION = "event-v1"

# Camera-movement wording: the action text (keys and mouse) carries the camera's motion, so
# an event caption must not; "camera" on its own is enough to reject.
_CAMERA = re.compile(
    r"\b(camera|cameras|pans?|panning|panned|zoom(s|ing|ed)?|tilt(s|ing|ed)?|dolly|"
    r"tracking shot|point of view|pov|first[- ]person view|the viewer (walks|moves|turns))\b",
    re.IGNORECASE,
)
# A few of the commonest English function words; an English description has some.
_ENGLISH = frozenset(
    "the a an is are and of in on to with as while at by from its their there".split()
)
_WORD = re.compile(r"[A-Za-z']+")


@dataclass(frozen=True)
class Window:
    """One caption window of a clip: output frames ``start`` .. ``end`` inclusive."""

    index: int
    start: int
    end: int

    @property
    def frames(self) -> int:
        return self.end - self.start + 1


def caption_windows(frames: int, fps: float, window_seconds: float | None) -> list[Window]:
    """The caption windows of a clip of ``frames`` frames at ``fps``.

    ``window_seconds`` None or 0: one window, the whole clip. Else windows of that many
    seconds; a remainder of at least half a window is a window of its own, a shorter one
    joins the last window (as Cosmos-Curate's windowing does).
    """
    if frames < 1:
        return []
    if not window_seconds:
        return [Window(0, 0, frames - 1)]
    size = max(1, round(window_seconds * fps))
    full, rest = divmod(frames, size)
    bounds = [(i * size, (i + 1) * size - 1) for i in range(full)]
    if rest and (rest * 2 >= size or not bounds):
        bounds.append((full * size, frames - 1))
    elif rest:
        bounds[-1] = (bounds[-1][0], frames - 1)
    return [Window(i, s, e) for i, (s, e) in enumerate(bounds)]


def choose_frames(window: Window, count: int) -> list[int]:
    """``count`` frame numbers spread uniformly over ``window``: segment midpoints.

    The window is cut into ``count`` equal segments and the middle frame of each is taken
    (InternVL's ``get_index``); a window shorter than ``count`` gives each of its frames once.
    """
    n = window.frames
    if n <= count:
        return list(range(window.start, window.end + 1))
    seg = n / count
    return [window.start + min(n - 1, int(seg / 2 + seg * i)) for i in range(count)]


def build_prompt(frames: int, version: str) -> str:
    """The InternVL multi-image prompt: ``Frame1: <image>`` per frame, then the instruction."""
    if version not in PROMPTS:
        raise ValueError(f"unknown prompt version {version!r}; known: {', '.join(PROMPTS)}")
    lines = [f"Frame{i + 1}: {IMAGE}" for i in range(frames)]
    return "\n".join(lines) + "\n" + PROMPTS[version]


def split_prompt(prompt: str) -> list[str]:
    """The text pieces around each image placeholder (len = images + 1)."""
    return prompt.split(IMAGE)


def expand_image_tokens(
    prompt: str, tokens_per_image: int, start: str = "<img>", context: str = "<IMG_CONTEXT>",
    end: str = "</img>",
) -> str:  # fmt: skip
    """The prompt as InternVL's language model sees it: each placeholder becomes
    ``<img>`` + ``<IMG_CONTEXT>`` x ``tokens_per_image`` + ``</img>`` (one tile per frame)."""
    return prompt.replace(IMAGE, start + context * tokens_per_image + end)


def image_token_count(frames: int, tokens_per_image: int) -> int:
    """Image tokens of a prompt of ``frames`` one-tile frames (256 per 448 px tile)."""
    return frames * tokens_per_image


@dataclass(frozen=True)
class Limits:
    """What a caption must be: its length bounds, and which checks apply."""

    min_chars: int = 40
    max_chars: int = 1200
    check_language: bool = True  # off for tiny-random only: random text has no language
    check_truncation: bool = True  # off for tiny-random only: it has no learned stop


def validate_caption(text: str | None, finish_reason: str | None, limits: Limits) -> tuple:
    """``(reason, detail)`` when the answer is not a usable event caption, else ``(None, "")``.

    Checks, in order: an answer at all, cut off by the token limit, within the length
    bounds, no camera-movement wording (the action text says how the camera moves), and
    English (enough Latin letters and some common English words).
    """
    text = (text or "").strip()
    if not text:
        return "empty_caption", "the model answered with no text"
    if limits.check_truncation and finish_reason == "length":
        return "truncated_caption", f"the answer hit the token limit ({len(text)} chars)"
    if len(text) < limits.min_chars:
        return "caption_too_short", f"{len(text)} chars, want at least {limits.min_chars}"
    if len(text) > limits.max_chars:
        return "caption_too_long", f"{len(text)} chars, want at most {limits.max_chars}"
    camera = _CAMERA.search(text)
    if camera:
        return "camera_wording", f"mentions camera movement ({camera.group(0)!r})"
    if limits.check_language:
        letters = sum(c.isascii() and c.isalpha() for c in text)
        alpha = sum(c.isalpha() for c in text)
        words = [w.lower() for w in _WORD.findall(text)]
        common = sum(w in _ENGLISH for w in words)
        if alpha == 0 or letters / alpha < 0.9 or common < max(1, math.ceil(len(words) * 0.05)):
            return "wrong_language", "the caption does not read as English"
    return None, ""
