"""Side virtualenvs for benchmark baselines, built on first use from pinned files.

The service's `.venv` never sees these packages:

- `.venv-bench`      ← requirements-bench.txt            (duckdb: the GROUP BY floor)
- `.venv-lifetimes`  ← bench/requirements-lifetimes.txt  (lifetimes, with the old pandas
  it needs; kept apart so pandas 2 never meets the service's pandas 3)

Like the Makefile's stamp, `.installed-stamp` records what was installed; here it holds a
hash of the requirement file, so editing a pin reinstalls and an unchanged file costs
nothing. A lock file keeps two benchmark runs from building the same venv at once, and
the stamp is written only after pip succeeded, so an interrupted build is redone.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import subprocess
import sys
from pathlib import Path

from bot.config import PROJECT_ROOT

VENVS = {
    "bench": (".venv-bench", "requirements-bench.txt"),
    "lifetimes": (".venv-lifetimes", "bench/requirements-lifetimes.txt"),
}
STAMP = ".installed-stamp"


def venv_python(name: str, root: Path = PROJECT_ROOT) -> Path:
    """Path of the venv's interpreter, building or updating the venv first if needed."""
    folder_name, requirements_name = VENVS[name]
    folder = root / folder_name
    requirements = root / requirements_name
    python = folder / "bin" / "python"
    wanted = _digest(requirements)
    stamp = folder / STAMP
    if python.exists() and _read(stamp) == wanted:
        return python
    folder.mkdir(parents=True, exist_ok=True)  # `-m venv` fills an existing folder
    with open(folder / ".build-lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if python.exists() and _read(stamp) == wanted:  # built by another run meanwhile
            return python
        print(f"building {folder_name} from {requirements_name} (first use, or its pins changed) …", file=sys.stderr, flush=True)
        stamp.unlink(missing_ok=True)
        if not python.exists():
            # The project's own interpreter (same Python version the pins were checked on);
            # run from inside .venv, `-m venv` still bases the new venv on the real Python.
            base = os.environ.get("TIERBOT_BENCH_PYTHON") or sys.executable
            _check([base, "-m", "venv", str(folder)])
        _check([str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                "-r", str(requirements)])
        stamp.write_text(wanted)
    return python


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except FileNotFoundError:
        return None


def _check(args: list[str]) -> None:
    result = subprocess.run(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed ({result.returncode}):\n{result.stdout[-3000:]}")


if __name__ == "__main__":  # python -m bench.venvs [bench|lifetimes …]
    for venv_name in sys.argv[1:] or list(VENVS):
        print(venv_python(venv_name))
