"""Event videos from first-person images: descriptions, pairing, image checks, sizes (pure logic).

Yume-1.5 paired 10,000 first-person images with event descriptions in four categories and
ran them through Wan2.2 image-to-video. This module holds what needs no model:

- ``read_descriptions``: the ``category,text`` CSV (the starter set ships beside this file
  as ``event_descriptions.csv``), every problem reported with its row number;
- ``pair_events``: which descriptions each image gets (``per_image`` of them, categories in
  a seeded rotation, descriptions in a seeded order); seeded per image, so adding images
  or raising ``per_image`` only adds pairs and never changes one already made;
- ``check_image``: an image fit to condition a video, or the reason it is not
  (``missing_image``, ``empty_image``, ``image_unreadable``, ``image_too_small``,
  ``image_not_rgb``);
- ``snap_resolution``: the output size with the image's aspect, multiples of 16, within an
  area budget (the ``WanImageToVideoPipeline`` docstring's rule).
"""

from __future__ import annotations

import csv
import hashlib
import math
import random
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np

CATEGORIES: tuple[str, ...] = ("urban_daily_life", "sci_fi", "fantasy", "weather")
IMAGE_SUFFIXES: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff")
MAX_TEXT_CHARS = 1000  # a description is a sentence or two, not a document


def default_descriptions() -> Path:
    """The starter descriptions shipped with the package (>= 50 per category)."""
    return Path(str(resources.files("curation") / "event_descriptions.csv"))


class DescriptionsError(ValueError):
    """A descriptions CSV that cannot be used; the message names every bad row."""


@dataclass(frozen=True)
class Description:
    """One event description: its category, text and the CSV row it came from (1 = header)."""

    category: str
    text: str
    row: int

    @property
    def id(self) -> str:
        """Stable across files and row order: the category and a hash of the text."""
        return f"{self.category}-{hashlib.sha1(self.text.encode()).hexdigest()[:10]}"


def read_descriptions(path: str | Path) -> list[Description]:
    """The descriptions of a ``category,text`` CSV, in file order.

    Raises DescriptionsError naming each bad row (unknown category, a missing, empty or
    overlong text, more fields than the header: an unquoted comma would cut the text, a
    text repeated within its category), a missing header, a file that is not UTF-8 text or
    not CSV; FileNotFoundError if absent. Why refuse the file rather than reject rows: the
    pairing draws from every description, so a row fixed later would re-pair most images.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"descriptions file {path} not found")
    problems: list[str] = []
    out: list[Description] = []
    with path.open(newline="", encoding="utf-8-sig") as f:  # -sig: a spreadsheet's BOM
        reader = csv.DictReader(f)
        row_no = 0  # the last record read (the header is record 1): csv may give up after it
        try:
            header = reader.fieldnames or []
            row_no = 1
            if not {"category", "text"} <= set(header):
                raise DescriptionsError(
                    f"{path}: header must have category,text columns, got {header}"
                )
            seen: dict[tuple[str, str], int] = {}
            for rec in reader:
                row_no += 1
                cat = (rec.get("category") or "").strip()
                text = " ".join((rec.get("text") or "").split())
                problem = _row_problem(rec, len(header), cat, text)
                if problem is None and (cat, text.lower()) in seen:
                    problem = f"repeats row {seen[cat, text.lower()]}"
                if problem is not None:
                    problems.append(f"row {row_no}: {problem}")
                    continue
                seen[cat, text.lower()] = row_no
                out.append(Description(cat, text, row_no))
        except UnicodeDecodeError as e:
            raise DescriptionsError(f"{path}: not UTF-8 text ({e.reason})") from None
        except csv.Error as e:  # a field over csv's size limit, a NUL byte
            problems.append(f"row {row_no + 1}: not readable as CSV ({e})")
    if problems:
        shown = "; ".join(problems[:5]) + (
            f" (+{len(problems) - 5} more)" if len(problems) > 5 else ""
        )
        raise DescriptionsError(f"{path}: {shown}")
    if not out:
        raise DescriptionsError(f"{path}: no descriptions")
    return out


def _row_problem(rec: dict, fields: int, category: str, text: str) -> str | None:
    """What is wrong with one CSV record (``category``, ``text``: its values, tidied), or None."""
    if None in rec:  # DictReader's place for the fields past the header
        return (
            f"{fields + len(rec[None])} fields, the header has {fields} (quote a text with commas)"
        )
    if category not in CATEGORIES:
        return f"unknown category {category!r} (one of {', '.join(CATEGORIES)})"
    if rec.get("text") is None:  # DictReader's value for the fields a short row lacks
        return "no text field"
    if not text:
        return "empty text"
    if len(text) > MAX_TEXT_CHARS:
        return f"text of {len(text)} characters (max {MAX_TEXT_CHARS})"
    return None


def list_images(folder: str | Path) -> list[Path]:
    """Image files under ``folder`` by suffix (any case), sorted; hidden files skipped."""
    folder = Path(folder)
    found = (p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    return sorted(
        p
        for p in found
        if p.is_file() and not any(s.startswith(".") for s in p.relative_to(folder).parts)
    )


def _rng(seed: int, *parts: str) -> random.Random:
    digest = hashlib.sha256("/".join([str(seed), *parts]).encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


def pair_events(
    images: list[str], descriptions: list[Description], per_image: int, seed: int
) -> list[tuple[str, Description]]:
    """``(image, description)`` pairs: ``per_image`` distinct descriptions for every image.

    ``images`` are stable names (paths relative to the image folder). Per image, the
    categories present take turns in a seeded order (4 per image: one of each), and each
    category's descriptions are taken in a seeded order; a category that runs out is
    skipped, so an image gets at most ``len(descriptions)``. Seeded by ``seed`` and the
    image name only: the pairs of an image do not depend on the other images, and a larger
    ``per_image`` extends them.
    """
    if per_image < 1:
        raise ValueError(f"per_image {per_image} must be >= 1")
    by_cat = {c: [d for d in descriptions if d.category == c] for c in CATEGORIES}
    by_cat = {c: ds for c, ds in by_cat.items() if ds}
    pairs = []
    for image in images:
        rng = _rng(seed, "pairing", image)
        order = list(by_cat)
        rng.shuffle(order)
        queues = {c: rng.sample(by_cat[c], len(by_cat[c])) for c in sorted(by_cat)}
        taken = 0
        turn = 0
        while taken < per_image and any(queues.values()):
            cat = order[turn % len(order)]
            turn += 1
            if queues[cat]:
                pairs.append((image, queues[cat].pop(0)))
                taken += 1
    return pairs


def pair_key(pair_id: str) -> str:
    """The sample key of a pair's video: stable, shard-safe (no dots)."""
    return "evt_" + hashlib.sha1(pair_id.encode()).hexdigest()[:16]


def pair_seed(seed: int, pair_id: str) -> int:
    """The generator seed of one pair: fixed by the run's seed and the pair id."""
    return int(hashlib.sha256(f"{seed}/{pair_id}".encode()).hexdigest()[:8], 16) % 2**31


@dataclass(frozen=True)
class ImageCheck:
    """An image as uint8 RGB (H, W, 3), or why it cannot condition a video."""

    rgb: np.ndarray | None
    reason: str | None = None
    detail: str | None = None


@contextmanager
def _strict_decoding() -> Iterator[None]:
    """PIL's process-wide ``LOAD_TRUNCATED_IMAGES`` off while inside: any library may have
    set it, and then a JPEG cut in half decodes without error as a half-grey image."""
    from PIL import ImageFile

    was = ImageFile.LOAD_TRUNCATED_IMAGES
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    try:
        yield
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = was


def check_image(path: str | Path, min_side: int) -> ImageCheck:
    """Decode ``path`` fully and check it; EXIF orientation is applied.

    Rejected: a file gone since it was listed (``missing_image``), a file of 0 bytes
    (``empty_image``), anything that does not decode completely (``image_unreadable``:
    truncated JPEG, a text file named .jpg, a decompression bomb; strictly, whatever
    ``LOAD_TRUNCATED_IMAGES`` says), a shorter side under ``min_side`` pixels
    (``image_too_small``), and every mode but RGB (``image_not_rgb``: grayscale, CMYK,
    RGBA and palette images too; an alpha channel or a palette would need a guess at a
    background or a colour conversion we would rather see done on purpose).
    """
    from PIL import Image, ImageOps, UnidentifiedImageError

    path = Path(path)
    try:
        if path.stat().st_size == 0:
            return ImageCheck(None, "empty_image", f"{path.name}: an empty file (0 bytes)")
        with _strict_decoding(), Image.open(path) as im:
            im.load()  # decode everything now: a truncated file fails here, not later
            mode, size = im.mode, im.size
            image = ImageOps.exif_transpose(im) if mode == "RGB" else None
    except FileNotFoundError:
        return ImageCheck(
            None, "missing_image", f"{path}: no such file (deleted or moved after it was listed)"
        )
    except (
        UnidentifiedImageError,
        OSError,
        SyntaxError,
        ValueError,
        Image.DecompressionBombError,
    ) as e:
        return ImageCheck(
            None, "image_unreadable", f"{path.name}: {type(e).__name__}: {str(e)[:200]}"
        )
    if min(size) < min_side:
        return ImageCheck(
            None, "image_too_small", f"{path.name}: {size[0]}x{size[1]}, shorter side < {min_side}"
        )
    if image is None:
        return ImageCheck(None, "image_not_rgb", f"{path.name}: mode {mode}, want RGB")
    return ImageCheck(np.asarray(image.convert("RGB"), dtype=np.uint8))


def snap_resolution(image_w: int, image_h: int, max_area: int, mod: int = 16) -> tuple[int, int]:
    """``(height, width)``: the image's aspect within ``max_area`` pixels, multiples of ``mod``.

    The pipeline docstring's rule, ``h = round(sqrt(max_area * aspect)) // mod * mod`` with
    aspect = height / width (and the same for w with 1 / aspect); each side is at least
    ``mod``, so a very thin image still gets a valid size.
    """
    if image_w < 1 or image_h < 1 or max_area < mod * mod:
        raise ValueError(f"image {image_w}x{image_h}, max_area {max_area}: need positive sizes "
                         f"and max_area >= {mod * mod}")  # fmt: skip
    aspect = image_h / image_w
    h = round(math.sqrt(max_area * aspect)) // mod * mod
    w = round(math.sqrt(max_area / aspect)) // mod * mod
    return max(h, mod), max(w, mod)
