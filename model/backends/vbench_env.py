"""Builds the venv the ``vbench:<python>`` scorer runs in (``make vbench-env``).

    python -m model.backends.vbench_env .venv-vbench

VBench 0.1.5 pins numpy<2 and transformers==4.33.2, so it lives apart from the project venv
(REFERENCE.md sections 0.2 and 9.2). The order matters: the local CPU torch goes in first and
a constraints file holds it, or torchvision's dependency pulls a CUDA torch. The only
torchvision for torch 2.13 here is a CUDA build; its ``_meta_registrations.py`` guards each
``register_meta`` with ``_has_ops()`` but registers fake kernels for ``torchvision::nms`` and
``torchvision::qnms`` unguarded, and the CPU torch has no such operators, so ``import
torchvision`` fails ("operator torchvision::nms does not exist"). Those two are guarded the
same way in the installed file (nothing else in torchvision changes; VBench's
temporal_flickering never calls them). The venv is complete when
``DIR/bin/python -c "import vbench"`` succeeds and the stamp file is written; a second run
then does nothing. Nothing in the calling venv changes.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
import venv
from pathlib import Path

TORCH = "torch==2.13.0"
VBENCH = "vbench==0.1.5"
# The releases VBench 0.1.5 runs with (REFERENCE.md 9.2), named so the resolver starts there.
PINS = ("numpy<2", "transformers==4.33.2", "tokenizers<0.14", "huggingface-hub<1.0")
STAMP = ".vbench-env-complete"
GUARD = "# yume-data: guarded like register_meta above (the CPU torch has no torchvision ops)"
# The fake-kernel registrations that, unlike ``register_meta``, are not guarded upstream.
FAKE_OPS = ("torchvision::nms", "torchvision::qnms")


class BuildError(RuntimeError):
    """One step of the build failed; the message names the step and the end of its output."""


def _run(step: str, cmd: list[str]) -> str:
    print(f"vbench-env: {step}", flush=True)
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = (proc.stdout + proc.stderr).strip()[-1500:]
        raise BuildError(f"{step} failed (exit {proc.returncode}):\n{tail}")
    return proc.stdout


def check(python: Path) -> str | None:
    """The vbench version when ``import vbench`` works in that interpreter, else None."""
    if not python.is_file():
        return None
    code = "import vbench, importlib.metadata as m; print(m.version('vbench'))"
    proc = subprocess.run([str(python), "-c", code], capture_output=True, text=True)
    return proc.stdout.strip() if proc.returncode == 0 else None


def patch_torchvision(site: Path) -> bool:
    """Guard the fake-kernel registrations of ops the CPU torch lacks; True if it changed."""
    path = site / "torchvision" / "_meta_registrations.py"
    if not path.is_file():
        raise BuildError(f"torchvision patch: {path} not found")
    text = path.read_text()
    if GUARD in text:
        return False
    for op in FAKE_OPS:
        line = f'@torch.library.register_fake("{op}")\n'
        if line not in text:
            raise BuildError(f"torchvision patch: no {line.strip()} in {path}")
        text = text.replace(line, f'@_register_fake_if_ops("{op}")\n', 1)
    helper = (
        f"{GUARD}\n"
        "def _register_fake_if_ops(qualname):\n"
        "    if torchvision.extension._has_ops():\n"
        "        return torch.library.register_fake(qualname)\n"
        "    return lambda fn: fn\n\n\n"
    )
    first = text.index(f'@_register_fake_if_ops("{FAKE_OPS[0]}")')
    path.write_text(text[:first] + helper + text[first:])
    return True


def build(target: Path) -> str:
    """Build (or find complete) the vbench venv at ``target``; returns the vbench version."""
    python = target / "bin" / "python"
    if (target / STAMP).is_file() and (ver := check(python)):
        print(f"vbench-env: {target} is complete (vbench {ver}); nothing to do")
        return ver
    t0 = time.perf_counter()
    if not python.is_file():
        print(f"vbench-env: creating {target}", flush=True)
        venv.EnvBuilder(with_pip=True).create(target)
    pip = [str(python), "-m", "pip", "install", "-q"]
    _run(f"installing {TORCH} (CPU)", [*pip, TORCH])
    constraints = target / "constraints.txt"
    constraints.write_text(f"{TORCH}\n")
    _run(f"installing {VBENCH}", [*pip, "-c", str(constraints), VBENCH, *PINS])
    site = Path(_run("locating site-packages", [str(python), "-c",
                     "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).strip())  # fmt: skip
    changed = patch_torchvision(site)
    print(f"vbench-env: torchvision fake registrations {'guarded' if changed else 'unchanged'}")
    ver = check(python)
    if ver is None:
        proc = subprocess.run([str(python), "-c", "import vbench"], capture_output=True, text=True)
        raise BuildError(f"import vbench failed in {python}:\n{proc.stderr.strip()[-1500:]}")
    (target / STAMP).write_text(f"vbench {ver}\n")
    print(f"vbench-env: {target} ready (vbench {ver}) in {time.perf_counter() - t0:.0f} s")
    return ver


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dir", type=Path, help="the venv to build, e.g. .venv-vbench")
    args = ap.parse_args(argv)
    try:
        build(args.dir.absolute())
    except (BuildError, OSError) as e:
        print(f"error: vbench environment not built: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
