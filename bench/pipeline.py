"""`python -m bot bench pipeline`: generate → import → score, timed as an admin runs them.

Each phase runs as its own `python -m bot` process, so wall time and peak memory
(max RSS from wait4) are those of the real CLI, nothing in-process hides cost.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from dataclasses import dataclass
from datetime import date
from pathlib import Path

from bot.config import PROJECT_ROOT

# customers → orders per customer, as in DESIGN §6 (100k/10M, 1M/20M).
DEFAULT_SCALES = {10_000: 100, 100_000: 100, 1_000_000: 20}


@dataclass
class Phase:
    name: str
    seconds: float
    peak_rss_mb: float


def _run(args: list[str], env: dict[str, str]) -> Phase:
    # Through bench.scoring's launcher: started straight from this process, a child's peak
    # RSS would include this process's own (the generator's) peak.
    from bench.scoring import run_process

    process = run_process(args[0], [sys.executable, "-m", "bot", *args], env=env, cwd=PROJECT_ROOT)
    if process.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed ({process.returncode}):\n{process.output[-3000:]}")
    return Phase(args[0], process.seconds, process.peak_rss_mb)


# The generator's default "today": the last day of the data it writes.
DATA_ENDS = date(2026, 11, 20)


def _generate(out: Path, customers: int, orders_per_customer: float, activities_per_customer: float,
              seed: int) -> tuple[Phase, dict]:
    from scoring.generator import generate_company

    import resource

    started = time.perf_counter()
    counts = generate_company(out, customers=customers, seed=seed, orders_per_customer=orders_per_customer,
                              activities_per_customer=activities_per_customer, progress=sys.stderr.isatty())
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return Phase("generate", time.perf_counter() - started, peak), counts.__dict__


def run_pipeline(scales: dict[int, float], activities_per_customer: float, database_url: str | None,
                 work_dir: Path, seed: int = 7, keep: bool = False) -> list[dict]:
    results = []
    for customers, orders_per_customer in scales.items():
        folder = work_dir / f"company-{customers}"
        if folder.exists():
            shutil.rmtree(folder)
        generate, counts = _generate(folder, customers, orders_per_customer, activities_per_customer, seed)
        env = fresh_database_env(database_url, work_dir / f"bench-{customers}.db")
        # Everything as of the generated data's last day, whatever the clock says (see
        # bench.scoring: the import builds the month totals of the month the runs score in).
        as_of = ["--as-of", DATA_ENDS.isoformat()]
        imported = _run(["import", str(folder), "--no-progress", *as_of], env)
        scored = _run(["score", *as_of, "--live"], env)
        rescored = _run(["score", *as_of, "--live"], env)
        reimported = _run(["import", str(folder), "--no-progress", *as_of], env)
        results.append({"customers": customers, "counts": counts, "phases": [generate, imported, scored, rescored,
                                                                              reimported]})
        _print(results[-1], database_url)
        if not keep:
            shutil.rmtree(folder)
    return results


def fresh_database_env(database_url: str | None, sqlite_file: Path) -> dict[str, str]:
    """The environment for CLI phases on an empty database: the given PostgreSQL (its
    public schema dropped and recreated) or a new SQLite file."""
    env = dict(os.environ)
    if database_url:
        _reset_postgres(database_url)
        env["TIERBOT_DATABASE_URL"] = database_url
        return env
    for suffix in ("", "-wal", "-shm"):
        Path(f"{sqlite_file}{suffix}").unlink(missing_ok=True)
    env["TIERBOT_DATABASE_URL"] = f"sqlite:///{sqlite_file}"
    return env


def _reset_postgres(url: str) -> None:
    from sqlalchemy import text

    from storage.db import make_engine

    engine = make_engine(url)
    with engine.begin() as connection:
        connection.execute(text("DROP SCHEMA public CASCADE"))
        connection.execute(text("CREATE SCHEMA public"))
    engine.dispose()


def _print(result: dict, database_url: str | None) -> None:
    counts = result["counts"]
    backend = "PostgreSQL" if database_url else "SQLite"
    print(f"\n{result['customers']:,} customers · {counts['orders']:,} orders · {counts['activities']:,} activities "
          f"· {counts['users']:,} users — {backend}")
    labels = ["generate CSV", "import (first)", "score (first run)", "score (again)", "import (same files again)"]
    for label, phase in zip(labels, result["phases"]):
        print(f"  {label:<26} {phase.seconds:8.1f} s   peak RSS {phase.peak_rss_mb:8.0f} MB")
    sys.stdout.flush()
