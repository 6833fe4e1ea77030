"""Apply each kept mutation (tests/mutants/mutations.py) to a copy of the repo, run its tests.

Why a copy: other work goes on in the tree, and a mutant must never be left behind in it.
The copy excludes .venv, .git and data; pytest runs there with this interpreter, so the
copy's modules shadow the editable install. Prints one row per mutant (killed / SURVIVED /
equivalent / skipped) and the survival rate; exits 1 when a mutant survives that is not in
EQUIVALENT, or when a snippet is stale (not exactly once in its file).

    python -m tests.mutants.run                  # every mutant, all its tests
    python -m tests.mutants.run --old-tests      # without the issue-10 test files (before)
    python -m tests.mutants.run -k verify        # mutants whose name contains "verify"
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tests.mutants.mutations import EQUIVALENT, MUTATIONS, NEW_TESTS, Mutation

ROOT = Path(__file__).resolve().parents[2]
SKIP = shutil.ignore_patterns(
    ".venv", ".git", "data", "__pycache__", ".pytest_cache", ".ruff_cache", ".hypothesis",
    "*.egg-info", "bench-out", "runs",
)  # fmt: skip


def stale(mutations: list[Mutation], root: Path) -> list[str]:
    """One message per mutation whose original snippet is not exactly once in its file."""
    out = []
    for m in mutations:
        path = root / m.file
        n = path.read_text().count(m.original) if path.is_file() else -1
        if n != 1:
            where = "file missing" if n < 0 else f"found {n} times"
            out.append(f"STALE {m.name}: snippet in {m.file} {where}: {m.original[:70]!r}")
    return out


def select_tests(m: Mutation, old_only: bool) -> list[str]:
    """The mutation's test paths; with old_only, without the issue-10 files and node ids."""
    tests = [t for t in m.tests if not (old_only and t in NEW_TESTS)]
    return list(dict.fromkeys(tests))


def run_pytest(copy: Path, tests: list[str], timeout: int) -> tuple[str, float, str]:
    """pytest -x -q in the copy: 'passed', 'failed (rc N)' or 'timeout', seconds, output tail."""
    env = os.environ | {"PYTHONPATH": str(copy), "PYTHONDONTWRITEBYTECODE": "1"}
    cmd = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *tests]
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(
            cmd, cwd=copy, env=env, timeout=timeout, capture_output=True, text=True
        )
    except subprocess.TimeoutExpired:
        return "timeout", time.perf_counter() - t0, ""
    took = time.perf_counter() - t0
    status = "passed" if proc.returncode == 0 else f"failed (rc {proc.returncode})"
    return status, took, (proc.stdout + proc.stderr)[-3000:]


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--old-tests", action="store_true", help="drop the issue-10 test files")
    ap.add_argument("-k", default="", help="only mutants whose name contains this")
    ap.add_argument("--timeout", type=int, default=600, help="seconds per mutant")
    ap.add_argument("--no-baseline", action="store_true", help="skip the unmutated run")
    args = ap.parse_args(argv)

    mutations = [m for m in MUTATIONS if args.k in m.name]
    problems = stale(mutations, ROOT)
    for p in problems:
        print(p, flush=True)
    mutations = [
        m for m in mutations if not any(p.startswith(f"STALE {m.name}:") for p in problems)
    ]
    cuda = cuda_available()
    with tempfile.TemporaryDirectory(prefix="yume-mutants-") as tmp:
        copy = Path(tmp) / "repo"
        shutil.copytree(ROOT, copy, ignore=SKIP)
        if not args.no_baseline:
            tests = sorted({t for m in mutations for t in select_tests(m, args.old_tests)})
            status, took, tail = run_pytest(copy, tests, args.timeout * 2)
            print(f"baseline (unmutated) {status} in {took:.0f}s", flush=True)
            if status != "passed":
                print(tail)
                print("error: the unmutated tests do not pass; every mutant would look killed")
                return 1
        rows = []
        for m in mutations:
            tests, tail = select_tests(m, args.old_tests), ""
            if m.needs == "cuda" and not cuda:
                verdict, status, took = "skipped (needs CUDA)", "-", 0.0
            elif not tests:
                verdict, status, took = "SURVIVED", "no tests", 0.0
            else:
                path = copy / m.file
                original = path.read_text()
                path.write_text(original.replace(m.original, m.mutated, 1))
                try:
                    status, took, tail = run_pytest(copy, tests, args.timeout)
                finally:
                    path.write_text(original)
                verdict = "killed" if status != "passed" else "SURVIVED"
            if verdict == "SURVIVED" and m.name in EQUIVALENT:
                verdict = "equivalent"
            rows.append((m, verdict))
            print(f"{verdict:22} {m.name:30} {status:15} {took:5.0f}s  {m.description}", flush=True)
            if verdict == "killed":
                by = [x for x in tail.splitlines() if x.startswith(("FAILED", "ERROR"))][:1]
                print(f"{'':22} by {by[0] if by else status}", flush=True)

    counted = [v for _, v in rows if v in ("killed", "SURVIVED")]
    survived = [m.name for m, v in rows if v == "SURVIVED"]
    equivalent = [(m.name, EQUIVALENT[m.name]) for m, v in rows if v == "equivalent"]
    skipped = [m.name for m, v in rows if v.startswith("skipped")]
    rate = len(survived) / len(counted) if counted else 0.0
    print(f"\n{len(counted) - len(survived)} killed, {len(survived)} survived of {len(counted)}"
          f" (survival rate {rate:.0%}); {len(equivalent)} equivalent, {len(skipped)} skipped"
          f"{' (no CUDA)' if skipped else ''}, {len(problems)} stale")  # fmt: skip
    for name in survived:
        print(f"survived: {name}")
    for name, why in equivalent:
        print(f"equivalent: {name}: {why}")
    return 1 if survived or problems else 0


if __name__ == "__main__":
    sys.exit(main())
