"""`python -m bot bench scoring`: the full rescore against its baselines (DESIGN §6 "Bars").

Per size (customers, orders per customer, activities per customer):

1. generate the company's CSV files (in this process, timed);
2. `python -m bot import DIR --as-of 2026-11-20` into a fresh database (a SQLite file under work_dir, or the
   given PostgreSQL URL after dropping its public schema), as its own process;
3. `python -m bot score --as-of 2026-11-20 --live`: the full rescore end to end (read aggregates
   → all models → snapshot and events written), as its own process. The figure held to
   the bars is the job's own time from its log line (as the service's nightly run spends
   it, with the interpreter and libraries loaded), split into read / score / write; the
   process's wall time, with start-up, and its peak RSS are shown beside it; then the
   next night's run (`--as-of` a day later) on the same data, for information;
4. the baselines on the same orders.csv, each in its own process so that peak RSS is its own:
   - DuckDB (.venv-bench): orders.csv loaded into an in-memory table, then
     `SELECT customer_id, count(DISTINCT order_date), min(order_date), max(order_date),
     sum(amount) FROM orders GROUP BY customer_id` materialised as a table. The GROUP BY
     alone is the floor; load + GROUP BY is the second figure.
   - lifetimes (.venv-lifetimes, pandas 2): `pd.read_csv` of the three columns it needs,
     then `summary_data_from_transaction_data(df, "customer_id", "order_date",
     monetary_value_col="amount", observation_period_end=as_of, freq="D")`, each timed.
     The full size is tried first. If it would take longer than `lifetimes_timeout`
     (predicted from the rate of an earlier size, or found by running into the timeout) or
     runs out of memory, it runs on a random subset of customers (`lifetimes_fraction`,
     seeded) and its time is scaled by 1/fraction; the output says so.

Wall times of processes include interpreter start-up and imports: that is what an admin
waits for. Steps inside a process are timed in that process; their "peak RSS" is the
process's peak up to the end of that step. Results go to stdout as a table and to
work_dir/scoring-bench-<timestamp>.json (rewritten after every size).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from datetime import date, datetime, timedelta
from pathlib import Path

from bench.pipeline import DATA_ENDS, Phase, _generate, fresh_database_env
from bench.venvs import venv_python
from bot.config import PROJECT_ROOT

DEFAULT_SIZES: list[tuple[int, float, float]] = [(100_000, 100, 100), (1_000_000, 20, 20)]


AS_OF = DATA_ENDS
MIB = 1024

# DESIGN §6 bars, and the size each is set for.
BAR_RATIO_SIZE = 100_000
BAR_VS_DUCKDB = 3.0       # rescore ≤ 3 × DuckDB GROUP BY
BAR_VS_LIFETIMES = 10.0   # lifetimes summary ≥ 10 × rescore
BAR_ABSOLUTE_SIZE = 1_000_000
BAR_SECONDS = 60.0
BAR_PEAK_MB = 4 * 1024    # 4 GiB, in MiB like every RSS figure here

_TIMINGS = re.compile(r"rescore ([\d.]+)\s*s in all: read ([\d.]+)\s*s, score ([\d.]+)\s*s, write ([\d.]+)\s*s")
_RESULT = "BENCH-RESULT "

# Runs in .venv-bench: argv = orders.csv. Prints one BENCH-RESULT json line.
DUCKDB_SCRIPT = r"""
import json, resource, sys, time
started = time.perf_counter()
import duckdb
def peak():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
con = duckdb.connect()  # in memory
imported = time.perf_counter()
t0 = time.perf_counter()
con.execute(
    "CREATE TABLE orders AS SELECT * FROM read_csv(?, header = true, columns = {"
    "'order_id': 'VARCHAR', 'customer_id': 'VARCHAR', 'order_date': 'DATE', 'amount': 'DOUBLE',"
    "'cost': 'DOUBLE', 'product_line': 'VARCHAR', 'kind': 'VARCHAR'})", [sys.argv[1]])
t1 = time.perf_counter()
peak_load = peak()
con.execute(
    "CREATE TABLE summary AS SELECT customer_id, count(DISTINCT order_date) AS order_days,"
    " min(order_date) AS first_order, max(order_date) AS last_order, sum(amount) AS revenue"
    " FROM orders GROUP BY customer_id")
t2 = time.perf_counter()
rows = con.execute("SELECT count(*) FROM orders").fetchone()[0]
groups, revenue = con.execute("SELECT count(*), sum(revenue) FROM summary").fetchone()
print("BENCH-RESULT " + json.dumps({
    "version": duckdb.__version__,
    "threads": int(con.execute("SELECT current_setting('threads')").fetchone()[0]),
    "import_seconds": imported - started, "load_seconds": t1 - t0, "group_seconds": t2 - t1,
    "peak_after_load_mb": peak_load, "peak_after_group_mb": peak(),
    "rows": rows, "customers": groups, "revenue": revenue}), flush=True)
"""

# Runs in .venv-lifetimes: argv = orders.csv, as_of, fraction, seed.
LIFETIMES_SCRIPT = r"""
import json, resource, sys, time, warnings
started = time.perf_counter()
import numpy as np
import pandas as pd
import lifetimes
from lifetimes.utils import summary_data_from_transaction_data
def peak():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
path, as_of, fraction, seed = sys.argv[1], sys.argv[2], float(sys.argv[3]), int(sys.argv[4])
imported = time.perf_counter()
t0 = time.perf_counter()
df = pd.read_csv(path, usecols=["customer_id", "order_date", "amount"],
                 dtype={"customer_id": str, "order_date": str, "amount": float})
t1 = time.perf_counter()
peak_read = peak()
rows_read = len(df)
if fraction < 1:
    ids = df["customer_id"].unique()
    chosen = np.random.default_rng(seed).choice(ids, size=max(1, round(len(ids) * fraction)), replace=False)
    df = df[df["customer_id"].isin(chosen)].reset_index(drop=True)
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    t2 = time.perf_counter()
    summary = summary_data_from_transaction_data(df, "customer_id", "order_date", monetary_value_col="amount",
                                                 observation_period_end=as_of, freq="D")
    t3 = time.perf_counter()
print("BENCH-RESULT " + json.dumps({
    "version": lifetimes.__version__, "pandas": pd.__version__,
    "import_seconds": imported - started, "read_seconds": t1 - t0, "summary_seconds": t3 - t2,
    "peak_after_read_mb": peak_read, "peak_after_summary_mb": peak(),
    "rows_read": rows_read, "rows": len(df), "customers": len(summary), "fraction": fraction, "seed": seed,
    "warnings": sorted({f"{w.category.__name__}: {str(w.message)[:160]}" for w in caught})}), flush=True)
"""


@dataclass
class Process:
    """One child process: wall time and peak RSS from wait4, plus what it printed."""

    name: str
    seconds: float
    peak_rss_mb: float
    returncode: int
    timed_out: bool = False
    output: str = field(default="", repr=False)

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and not self.timed_out

    def result(self) -> dict:
        for line in reversed(self.output.splitlines()):
            if line.startswith(_RESULT):
                return json.loads(line[len(_RESULT):])
        raise RuntimeError(f"{self.name}: no result line in its output:\n{self.tail()}")

    def tail(self, lines: int = 30) -> str:
        return "\n".join(self.output.splitlines()[-lines:])

    def phase(self) -> Phase:
        return Phase(self.name, self.seconds, self.peak_rss_mb)


# Every child is started through this launcher: a bare interpreter (-I -S, ~10 MB) that
# forks, execs the command and reports the child's own wait4 figures. Started straight from
# the runner instead, a child's ru_maxrss would start at the runner's peak (Linux carries the
# parent's high-water RSS into the child across vfork/exec): after generating a company in
# process, every child would report at least the generator's peak.
LAUNCHER = r"""
import json, os, sys, time
started = time.perf_counter()
pid = os.fork()
if pid == 0:
    os.execv(sys.argv[1], sys.argv[1:])
_pid, status, usage = os.wait4(pid, 0)
elapsed = time.perf_counter() - started
sys.stdout.flush()
print("BENCH-RUSAGE " + json.dumps({"seconds": elapsed, "maxrss_kb": usage.ru_maxrss,
                                    "returncode": os.waitstatus_to_exitcode(status)}), flush=True)
"""
_RUSAGE = "BENCH-RUSAGE "


def run_process(name: str, argv: list[str], env: dict[str, str] | None = None, cwd: Path | None = None,
                timeout: float | None = None) -> Process:
    """Run argv (argv[0] an absolute path) to the end, or kill it at `timeout`: wall time and peak RSS."""
    started = time.perf_counter()
    process = subprocess.Popen([sys.executable, "-I", "-S", "-c", LAUNCHER, *argv], cwd=cwd, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               start_new_session=True)
    timed_out = threading.Event()

    def kill() -> None:
        timed_out.set()
        try:
            os.killpg(process.pid, signal.SIGKILL)  # the launcher and the command: one process group
        except ProcessLookupError:
            pass

    timer = threading.Timer(timeout, kill) if timeout else None
    if timer:
        timer.daemon = True
        timer.start()
    assert process.stdout is not None
    lines = list(process.stdout)
    _pid, status, usage = os.wait4(process.pid, 0)
    elapsed = time.perf_counter() - started
    if timer:
        timer.cancel()
    process.returncode = os.waitstatus_to_exitcode(status)
    own = None
    if lines and lines[-1].startswith(_RUSAGE):
        own = json.loads(lines.pop()[len(_RUSAGE):])
    if own is None:  # the launcher itself was killed (timeout): its own, less exact figures
        return Process(name, elapsed, usage.ru_maxrss / MIB, process.returncode or -signal.SIGKILL,
                       timed_out.is_set(), "".join(lines))
    return Process(name, own["seconds"], own["maxrss_kb"] / MIB, own["returncode"], timed_out.is_set(),
                   "".join(lines))


def _checked(process: Process) -> Process:
    if not process.ok:
        why = "timed out" if process.timed_out else f"exit {process.returncode}"
        raise RuntimeError(f"{process.name} failed ({why}):\n{process.tail()}")
    return process


def _clean_env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    return env


def run_duckdb(python: Path, orders_csv: Path, cwd: Path) -> dict:
    process = _checked(run_process("duckdb", [str(python), "-c", DUCKDB_SCRIPT, str(orders_csv)],
                                   env=_clean_env(), cwd=cwd))
    return {"process": asdict(process.phase()), **process.result()}


def run_lifetimes(python: Path, orders_csv: Path, cwd: Path, *, as_of: date, rows: int, timeout: float,
                  fraction: float, seed: int, seconds_per_row: float | None) -> dict:
    """Full size first, unless an earlier size predicts it past `timeout`; a subset if it won't do."""
    argv = [str(python), "-c", LIFETIMES_SCRIPT, str(orders_csv), as_of.isoformat()]
    note = None
    predicted = seconds_per_row * rows if seconds_per_row else None
    if predicted is not None and predicted > timeout:
        note = (f"full size skipped: predicted {predicted:.0f} s from the rate at the previous size, "
                f"over the {timeout:g} s cap")
    else:
        process = run_process("lifetimes", argv + ["1", str(seed)], env=_clean_env(), cwd=cwd, timeout=timeout)
        if process.ok:
            return _lifetimes_figures(process, None)
        if process.timed_out:
            note = f"full size stopped at the {timeout:g} s cap"
        elif process.returncode == -signal.SIGKILL or "MemoryError" in process.output:
            note = f"full size ran out of memory (peak {process.peak_rss_mb:.0f} MB)"
        else:
            _checked(process)  # a real failure: the subset would fail the same way
    process = _checked(run_process("lifetimes", argv + [str(fraction), str(seed)], env=_clean_env(), cwd=cwd))
    return _lifetimes_figures(process, f"{note}; ran on a random {fraction:.0%} of customers (seed {seed}), "
                                       f"summary time scaled by 1/{fraction:g} (linear in rows: flatters lifetimes)")


def _lifetimes_figures(process: Process, note: str | None) -> dict:
    figures = {"process": asdict(process.phase()), **process.result(), "note": note}
    figures["measured_summary_seconds"] = figures["summary_seconds"]
    figures["summary_seconds"] = figures["summary_seconds"] / figures["fraction"]
    return figures


def _rescore(env: dict[str, str], as_of: date) -> dict:
    # --live: the whole job (tiers, history, cards, tasks and alerts), as the nightly run does it.
    process = _checked(run_process("score", [sys.executable, "-m", "bot", "score", "--as-of", as_of.isoformat(),
                                             "--live"], env=env, cwd=PROJECT_ROOT))
    match = None
    for match in _TIMINGS.finditer(process.output):
        pass
    if match is None:
        raise RuntimeError(f"score: no timing line in its log:\n{process.tail()}")
    total, *parts = map(float, match.groups())
    return {"process": asdict(process.phase()), "seconds": total, "split": dict(zip(("read", "score", "write"), parts))}


def _checks(customers: int, rescore: dict, duckdb: dict, lifetimes: dict) -> list[dict]:
    wall = rescore["seconds"]
    peak = rescore["process"]["peak_rss_mb"]
    vs_duckdb = wall / duckdb["group_seconds"]
    vs_lifetimes = lifetimes["summary_seconds"] / wall
    return [
        {"check": f"rescore / DuckDB GROUP BY ≤ {BAR_VS_DUCKDB:g}×", "value": vs_duckdb,
         "met": vs_duckdb <= BAR_VS_DUCKDB, "bar": customers == BAR_RATIO_SIZE},
        {"check": f"lifetimes summary / rescore ≥ {BAR_VS_LIFETIMES:g}×", "value": vs_lifetimes,
         "met": vs_lifetimes >= BAR_VS_LIFETIMES, "bar": customers == BAR_RATIO_SIZE},
        {"check": f"rescore under {BAR_SECONDS:g} s", "value": wall,
         "met": wall < BAR_SECONDS, "bar": customers == BAR_ABSOLUTE_SIZE},
        {"check": f"rescore peak RSS under {BAR_PEAK_MB / 1024:g} GiB", "value": peak,
         "met": peak < BAR_PEAK_MB, "bar": customers == BAR_ABSOLUTE_SIZE},
    ]


def run_scoring_bench(sizes: list[tuple[int, float, float]] | None, database_url: str | None, work_dir: Path,
                      keep: bool = False, *, seed: int = 7, lifetimes_timeout: float = 900.0,
                      lifetimes_fraction: float = 0.1) -> list[dict]:
    sizes = sizes or DEFAULT_SIZES
    work_dir = Path(work_dir).resolve()
    work_dir.mkdir(parents=True, exist_ok=True)
    # Side venvs first (built once, never timed), so a broken install fails before hours of work.
    duckdb_python = venv_python("bench")
    lifetimes_python = venv_python("lifetimes")
    report_path = work_dir / f"scoring-bench-{datetime.now():%Y%m%d-%H%M%S}.json"
    results: list[dict] = []
    seconds_per_row = None
    for customers, orders_per_customer, activities_per_customer in sizes:
        folder = work_dir / f"scoring-{customers}"
        if folder.exists():
            shutil.rmtree(folder)
        as_of = AS_OF
        generate, counts = _generate(folder, customers, orders_per_customer, activities_per_customer, seed)
        env = fresh_database_env(database_url, work_dir / f"scoring-{customers}.db")
        # As if on the data's last day, whatever the clock says: the import then builds the
        # whole-month totals (storage.windows) of the month the runs score in, as a
        # production import does for its nightly run.
        imported = _checked(run_process("import", [sys.executable, "-m", "bot", "import", str(folder), "--no-progress",
                                                   "--as-of", as_of.isoformat()], env=env, cwd=PROJECT_ROOT)).phase()
        notes = []
        rescore = _rescore(env, as_of)
        # The next night's run on the same data: what the service does every night once the
        # first run (after a bulk load: every tier new, every due task and alert queued) is done.
        nightly_day = as_of + timedelta(days=1)
        if nightly_day.month != as_of.month:
            notes.append(f"the next night is in a new month: that run built {nightly_day:%Y-%m}'s totals")
        nightly = _rescore(env, nightly_day)
        orders_csv = folder / "orders.csv"
        duckdb = run_duckdb(duckdb_python, orders_csv, work_dir)
        lifetimes = run_lifetimes(lifetimes_python, orders_csv, work_dir, as_of=as_of, rows=counts["orders"],
                                  timeout=lifetimes_timeout, fraction=lifetimes_fraction, seed=seed,
                                  seconds_per_row=seconds_per_row)
        if lifetimes["fraction"] == 1:
            seconds_per_row = (lifetimes["read_seconds"] + lifetimes["summary_seconds"]) / max(1, counts["orders"])
        result = {
            "customers": customers, "orders_per_customer": orders_per_customer,
            "activities_per_customer": activities_per_customer, "seed": seed, "as_of": as_of.isoformat(),
            "database": "PostgreSQL" if database_url else "SQLite", "counts": counts,
            "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]},
            "generate": asdict(generate), "import": asdict(imported), "rescore": rescore, "nightly": nightly,
            "duckdb": duckdb, "lifetimes": lifetimes,
            "checks": _checks(customers, rescore, duckdb, lifetimes),
            "same_data": _same_data(counts, duckdb, lifetimes), "notes": notes,
        }
        results.append(result)
        report_path.write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n")
        print_result(result)
        if not keep:
            shutil.rmtree(folder)
            if not database_url:
                for suffix in ("", "-wal", "-shm"):
                    Path(f"{work_dir / f'scoring-{customers}.db'}{suffix}").unlink(missing_ok=True)
    print(f"\nresults: {report_path}")
    return results


def _same_data(counts: dict, duckdb: dict, lifetimes: dict) -> list[str]:
    """Both baselines must have seen every order the import saw."""
    problems = []
    if duckdb["rows"] != counts["orders"]:
        problems.append(f"DuckDB read {duckdb['rows']:,} orders, the generator wrote {counts['orders']:,}")
    if lifetimes["rows_read"] != counts["orders"]:
        problems.append(f"pandas read {lifetimes['rows_read']:,} orders, the generator wrote {counts['orders']:,}")
    if lifetimes["fraction"] == 1 and lifetimes["customers"] != duckdb["customers"]:
        problems.append(f"lifetimes has {lifetimes['customers']:,} customers, DuckDB {duckdb['customers']:,}")
    return problems


def _row(label: str, seconds: float, peak: float | None, note: str = "") -> str:
    peak_text = f"{peak:8,.0f} MB" if peak is not None else " " * 11
    return f"  {label:<52} {seconds:9.2f} s  {peak_text}  {note}".rstrip()


def print_result(result: dict) -> None:
    counts = result["counts"]
    rescore, duckdb, lifetimes = result["rescore"], result["duckdb"], result["lifetimes"]
    print(f"\n{result['customers']:,} customers · {counts['orders']:,} orders · {counts['activities']:,} activities"
          f" · {result['database']} · {result['machine']['cpus']} CPUs · as of {result['as_of']}")
    print(f"  {'phase':<52} {'seconds':>11}  {'peak RSS':>11}")
    print(_row("generate CSV (in the runner)", result["generate"]["seconds"], result["generate"]["peak_rss_mb"]))
    print(_row("import (python -m bot import)", result["import"]["seconds"], result["import"]["peak_rss_mb"]))
    split = rescore["split"]
    split_text = f"read {split['read']:.2f} s · score {split['score']:.2f} s · write {split['write']:.2f} s"
    print(_row("rescore end to end (the job, as the service runs it)", rescore["seconds"],
               rescore["process"]["peak_rss_mb"], split_text))
    print(_row("  python -m bot score process (+ start-up, imports)", rescore["process"]["seconds"], None))
    nightly = result.get("nightly")
    if nightly:
        nightly_split = nightly["split"]
        print(_row("rescore the next night (for information)", nightly["seconds"], nightly["process"]["peak_rss_mb"],
                   f"read {nightly_split['read']:.2f} s · score {nightly_split['score']:.2f} s · "
                   f"write {nightly_split['write']:.2f} s"))
    print(_row(f"DuckDB {duckdb['version']}: load orders.csv → table", duckdb["load_seconds"],
               duckdb["peak_after_load_mb"], f"{duckdb['threads']} threads"))
    print(_row("DuckDB GROUP BY customer (the floor)", duckdb["group_seconds"], duckdb["peak_after_group_mb"]))
    print(_row("DuckDB load + GROUP BY", duckdb["load_seconds"] + duckdb["group_seconds"], None))
    print(_row("DuckDB process (incl. start-up)", duckdb["process"]["seconds"], duckdb["process"]["peak_rss_mb"]))
    print(_row(f"pandas {lifetimes['pandas']}: read_csv (3 columns)", lifetimes["read_seconds"],
               lifetimes["peak_after_read_mb"]))
    scaled = lifetimes["fraction"] < 1
    print(_row(f"lifetimes {lifetimes['version']}: summary_data_from_transaction_data", lifetimes["summary_seconds"],
               None if scaled else lifetimes["peak_after_summary_mb"],
               f"SCALED from {lifetimes['measured_summary_seconds']:.2f} s on {lifetimes['fraction']:.0%}"
               if scaled else ""))
    print(_row("lifetimes process (incl. start-up)", lifetimes["process"]["seconds"],
               lifetimes["process"]["peak_rss_mb"], "(on the subset)" if scaled else ""))
    if lifetimes.get("note"):
        print(f"  note: lifetimes {lifetimes['note']}")
    wall = rescore["seconds"]
    process_wall = rescore["process"]["seconds"]
    print("  ratios (the rescore job; with the process's start-up in brackets)")
    print(f"    rescore / DuckDB GROUP BY            {wall / duckdb['group_seconds']:8.2f}×"
          f"  ({process_wall / duckdb['group_seconds']:.2f}×)")
    print(f"    rescore / DuckDB load + GROUP BY     {wall / (duckdb['load_seconds'] + duckdb['group_seconds']):8.2f}×")
    print(f"    lifetimes summary / rescore          {lifetimes['summary_seconds'] / wall:8.2f}×"
          f"  ({lifetimes['summary_seconds'] / process_wall:.2f}×)")
    print(f"    lifetimes read + summary / rescore   "
          f"{(lifetimes['read_seconds'] + lifetimes['summary_seconds']) / wall:8.2f}×")
    print("  targets (DESIGN §6)")
    for check in result["checks"]:
        value = check["value"]
        shown = f"{value:,.2f}×" if "/" in check["check"] else (f"{value:,.0f} MB" if "RSS" in check["check"]
                                                                 else f"{value:,.1f} s")
        where = "bar at this size" if check["bar"] else "bar set at another size; for information"
        print(f"    {check['check']:<38} {shown:>12}  {'met' if check['met'] else 'NOT met':<8} ({where})")
    for note in result.get("notes", []):
        print(f"  note: {note}")
    for problem in result["same_data"]:
        print(f"  WARNING: {problem}")
    sys.stdout.flush()
