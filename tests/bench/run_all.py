"""`make bench`: run every tests/bench/bench_*.py and write bench-out/<name>.json.

Each bench module has ``main() -> dict``; targets are ratios against a baseline measured in
the same process, so the numbers mean the same on any machine. Names on the command line
run only those benches.
"""

from __future__ import annotations

import importlib
import json
import sys
import time
import traceback
from pathlib import Path

OUT = Path("bench-out")


USAGE = "usage: python -m tests.bench.run_all [BENCH ...]  (default: all; BENCH like bench_tscm)"


def main(argv: list[str]) -> int:
    known = sorted(p.stem for p in Path(__file__).parent.glob("bench_*.py"))
    if any(a in ("-h", "--help") for a in argv):
        print(USAGE + "\nbenches: " + ", ".join(known))
        return 0
    unknown = [a for a in argv if a not in known]
    if unknown:
        print(f"error: unknown bench {', '.join(unknown)}; choose from {', '.join(known)}")
        return 2
    names = argv or known
    OUT.mkdir(exist_ok=True)
    failed = []
    for name in names:
        print(f"== {name}", flush=True)
        t0 = time.perf_counter()
        try:
            result = importlib.import_module(f"tests.bench.{name}").main()
        except Exception as e:  # one broken bench must not hide the others' numbers
            traceback.print_exc()
            result = {"error": f"{type(e).__name__}: {e}", "targets_met": {"ran": False}}
        result["wall_s"] = round(time.perf_counter() - t0, 2)
        (OUT / f"{name}.json").write_text(json.dumps(result, indent=2, default=str))
        print(json.dumps(result, indent=2, default=str), flush=True)
        failed += [f"{name}:{k}" for k, ok in result.get("targets_met", {}).items() if not ok]
    print("targets missed: " + (", ".join(failed) if failed else "none"))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
