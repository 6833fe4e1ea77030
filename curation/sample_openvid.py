"""A generated OpenVid-1M-format caption CSV with planted duplicates, for demos and tests.

Columns as OpenVid-1M.csv (names with spaces): ``video, caption, aesthetic score, motion
score, temporal consistency score, camera motion, frame, fps, seconds``; some numeric cells
are left empty, as in the real file. Captions are composed from subjects, actions, places,
lights and camera moves; ``exact`` rows repeat an earlier caption (some with other case or
a trailing period), ``paraphrase`` rows restate an earlier caption with synonyms, and a few
rows have no caption. ``write_sample_openvid`` returns which row plants what.
"""

from __future__ import annotations

import csv
import random
from pathlib import Path

COLUMNS = (
    "video", "caption", "aesthetic score", "motion score", "temporal consistency score",
    "camera motion", "frame", "fps", "seconds",
)  # fmt: skip

SUBJECTS = (
    "a red fox", "an old fisherman", "a group of children", "a white sailboat", "a black cat",
    "a vintage car", "a hot air balloon", "a young woman in a yellow coat", "a herd of elephants",
    "a street musician", "a golden retriever", "a steam locomotive", "two cyclists",
    "a flock of seagulls", "a chef", "a lone hiker", "a paper lantern", "a koi fish",
)  # fmt: skip
ACTIONS = (
    "walks slowly", "runs", "drifts", "turns around", "waits quietly", "moves forward",
    "jumps", "rests", "dances", "glides",
)  # fmt: skip
PLACES = (
    "through a snowy forest", "along a rocky coastline", "across a busy city square",
    "beside a calm mountain lake", "in a neon-lit alley", "over rolling green hills",
    "inside a dusty library", "on a desert road", "under a stone bridge", "in a bamboo grove",
)  # fmt: skip
LIGHTS = ("at sunset", "at dawn", "under heavy rain", "at night", "in soft morning fog",
          "at noon")  # fmt: skip
CAMERAS = ("the camera pans left", "the camera slowly zooms in", "a static shot",
           "the camera tracks the subject", "an aerial view")  # fmt: skip
SYNONYMS = {
    "walks slowly": "strolls leisurely",
    "runs": "sprints",
    "drifts": "floats",
    "turns around": "spins around",
    "waits quietly": "stays still",
    "moves forward": "advances",
    "jumps": "leaps",
    "rests": "relaxes",
    "dances": "sways",
    "glides": "soars",
    "snowy forest": "snow-covered woods",
    "rocky coastline": "rugged shoreline",
    "busy city square": "crowded town plaza",
    "calm mountain lake": "still alpine lake",
    "at sunset": "as the sun goes down",
    "at dawn": "at daybreak",
    "at night": "after dark",
    "the camera pans left": "the camera moves to the left",
    "the camera slowly zooms in": "the camera gradually zooms in",
    "an aerial view": "a drone shot from above",
}


def compose(rng: random.Random) -> str:
    subj, act, place, light, cam = (rng.choice(x) for x in (SUBJECTS, ACTIONS, PLACES, LIGHTS,
                                                           CAMERAS))  # fmt: skip
    return f"{subj.capitalize()} {act} {place} {light}, {cam}."


def paraphrase(caption: str, rng: random.Random) -> str:
    """The caption with one phrase swapped for a synonym (or a detail added): a near copy."""
    found = [a for a in SYNONYMS if a in caption]
    if not found:
        return caption.replace(".", ", in high detail.")
    a = rng.choice(found)
    return caption.replace(a, SYNONYMS[a])


def write_sample_openvid(out: str | Path, rows: int = 200, seed: int = 0) -> dict:
    """Write ``out`` (a CSV) with ``rows`` rows; returns the planted duplicates by row.

    About 10% of rows are exact copies of an earlier caption, 10% paraphrases of one and
    2% have an empty caption; the rest are distinct compositions (with 18x10x10x6x5 =
    54,000 combinations, a few may repeat by chance: ``chance_repeats`` counts them).
    """
    rng = random.Random(seed)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    captions: list[str] = []
    planted = {"exact": {}, "paraphrase": {}, "missing": []}
    originals: list[int] = []
    for r in range(rows):
        roll = rng.random()
        if originals and roll < 0.10:
            src = rng.choice(originals)
            text = captions[src]
            if rng.random() < 0.5:
                text = text.lower() if rng.random() < 0.5 else text.rstrip(".")
            planted["exact"][r] = src
        elif originals and roll < 0.20:
            src = rng.choice(originals)
            text = paraphrase(captions[src], rng)
            planted["paraphrase"][r] = src
        elif roll < 0.22:
            text = ""
            planted["missing"].append(r)
        else:
            text = compose(rng)
            originals.append(r)
        captions.append(text)
    seen: dict[str, int] = {}
    chance = 0
    for r in originals:
        chance += captions[r] in seen
        seen.setdefault(captions[r], r)
    with out.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(COLUMNS)
        for r, text in enumerate(captions):
            aes = "" if r % 17 == 5 else f"{rng.uniform(3.5, 6.5):.3f}"
            motion = "" if r % 23 == 7 else f"{rng.uniform(0, 1):.3f}"
            frames = rng.choice((96, 120, 150, 240))
            fps = rng.choice((24.0, 25.0, 30.0))
            w.writerow([f"sample_openvid_{r:06d}.mp4", text, aes, motion,
                        f"{rng.uniform(0.9, 1):.3f}", rng.choice(("pan", "static", "zoom", "")),
                        frames, fps, f"{frames / fps:.2f}"])  # fmt: skip
    return {"path": str(out), "rows": rows, "chance_repeats": chance, **planted}


if __name__ == "__main__":  # python -m curation.sample_openvid [OUT] [ROWS] [SEED]
    import sys

    args = sys.argv[1:]
    out = args[0] if args else "data/sample-openvid/OpenVid-sample.csv"
    info = write_sample_openvid(out, int(args[1]) if len(args) > 1 else 400,
                                int(args[2]) if len(args) > 2 else 0)  # fmt: skip
    print(
        f"wrote {info['rows']} rows to {out}: {len(info['exact'])} exact copies, "
        f"{len(info['paraphrase'])} paraphrases, {len(info['missing'])} without caption"
    )
