"""Fill an exported screening CSV as a person in a spreadsheet would (demo and tests).

``python -m curation.screening.fill CSV --keep-share 0.6 --seed 0`` marks a seeded
``keep-share`` of the rows keep and the rest reject, typed the way people type (``Keep``,
`` reject ``), with a note on some, and saves the file over itself as a spreadsheet does:
the same delimiter, every other cell as it was, CRLF line ends, UTF-8 with a BOM.
"""

from __future__ import annotations

import argparse
import csv
import io
from pathlib import Path

import numpy as np

from curation.manifest import atomic_write_bytes
from curation.screening.csvio import sniff_delimiter

_KEEP = ("keep", "Keep", " KEEP", "keep ")
_REJECT = ("reject", "Reject", " reject ", "REJECT")
_NOTES = ("flickers", "text does not match", "", "", "frozen last frames")


def fill_csv(path: str | Path, keep_share: float, seed: int = 0) -> dict:
    """Write decisions into ``path``; returns how many rows were marked keep and reject."""
    path = Path(path)
    text = path.read_bytes().decode("utf-8-sig")
    delimiter = sniff_delimiter(text)
    records = list(csv.reader(io.StringIO(text, newline=""), delimiter=delimiter))
    header = [h.strip().lower() for h in records[0]]
    d_col, n_col = header.index("decision"), header.index("note")
    rows = records[1:]
    rng = np.random.default_rng(seed)
    n_keep = round(keep_share * len(rows))
    keep = set(rng.permutation(len(rows))[:n_keep].tolist())
    for i, row in enumerate(rows):
        row += [""] * (len(header) - len(row))
        if i in keep:
            row[d_col] = _KEEP[rng.integers(len(_KEEP))]
        else:
            row[d_col] = _REJECT[rng.integers(len(_REJECT))]
            row[n_col] = _NOTES[rng.integers(len(_NOTES))]
    out = io.StringIO()
    csv.writer(out, delimiter=delimiter, lineterminator="\r\n").writerows([records[0], *rows])
    atomic_write_bytes(path, out.getvalue().encode("utf-8-sig"))
    return {"csv": str(path), "keep": len(keep), "reject": len(rows) - len(keep)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("csv", type=Path, nargs="+", help="exported screening CSVs")
    parser.add_argument("--keep-share", type=float, default=0.6, help="share of rows kept")
    parser.add_argument("--seed", type=int, default=0, help="random seed")
    args = parser.parse_args(argv)
    if not 0.0 <= args.keep_share <= 1.0:
        parser.error("--keep-share must be within 0..1")
    for path in args.csv:
        r = fill_csv(path, args.keep_share, args.seed)
        print(f"{r['csv']}: keep {r['keep']}, reject {r['reject']}")


if __name__ == "__main__":
    main()
