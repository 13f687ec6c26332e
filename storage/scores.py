"""Reading what scoring needs and writing what it produces.

Reads: customer attributes and per-customer order aggregates computed in SQL from the
monthly roll-up (plus the raw orders of the as-of month only). Writes: a score run, its
snapshot rows, the inputs of its reasons (score_reason_chunks), tier changes and each
customer's current tier and hysteresis state, in one transaction. Reads reasons back
(StoredSnapshot).
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from typing import Callable, Iterator

import numpy as np
import orjson
import pandas as pd
from sqlalchemy import Connection, Date, DateTime, Engine, bindparam, func, select, text, update
from sqlalchemy.exc import OperationalError

from scoring.deferred import Deferred, column_values, decode_chunk, encode_chunk, paused_gc
from scoring.features import ACTIVITY_COLUMNS, AGGREGATE_COLUMNS, CUSTOMER_COLUMNS, window_starts
from scoring.pipeline import reasons_column
from storage.models import ACTIVITY_KINDS, RescorePending, ScoreReasonChunk, ScoreRun, ScoreSnapshot, TierChange
from storage import windows as window_totals
from storage.db import write_transaction
from storage.columnar import ColumnarReadError, ColumnarReader
from storage.sql import COLUMNAR_OPTION, bulk_insert, query_frame, refresh_statistics

_NOW = bindparam("now", type_=DateTime(timezone=True))

# The as-of month so far, from the raw orders (its roll-up row may hold later days).
_CURRENT_DAYS_SQL = """
SELECT customer_id, order_date, SUM(amount), SUM(COALESCE(cost, 0)),
       SUM(CASE WHEN kind IN ('renewal', 'upsell') THEN amount ELSE 0 END), SUM(CASE WHEN amount >= 0 THEN 1 ELSE 0 END)
FROM orders WHERE order_date >= :m0 AND order_date <= :as_of {scope}
GROUP BY customer_id, order_date
"""

# Activity windows, as two plain GROUP BYs joined in pandas: joined in SQL, SQLite may
# pick a nested scan of one materialised CTE per row of the other (minutes at 100k).
# "Active" kinds exclude complaints, which are counted on their own.
# Every kind named so that the (kind, ts, ...) covering index serves the window.
_RECENT_ACTIVITY_SQL = f"""
SELECT customer_id, SUM(CASE WHEN kind <> 'complaint' THEN 1 ELSE 0 END),
       SUM(CASE WHEN kind <> 'complaint' AND ts < :m0 THEN 1 ELSE 0 END), MAX(ts)
FROM activities WHERE kind IN ({", ".join(f"'{kind}'" for kind in ACTIVITY_KINDS)})
  AND ts >= :since_30d AND ts < :until {{scope}}
GROUP BY customer_id
"""
_COMPLAINTS_SQL = """
SELECT customer_id, SUM(CASE WHEN ts >= :since_90d THEN 1 ELSE 0 END), SUM(CASE WHEN ts < :since_90d THEN 1 ELSE 0 END)
FROM activities WHERE kind = 'complaint' AND ts >= :since_180d AND ts < :until {scope}
GROUP BY customer_id
"""


def _scoped(sql: str, customer_ids: list[str] | None) -> tuple[str, list, dict]:
    """Restrict a query to some customers (incremental rescoring) or leave it whole."""
    if customer_ids is None:
        return sql.replace("{scope}", ""), [], {}
    return (sql.replace("{scope}", "AND customer_id IN :ids"), [bindparam("ids", expanding=True)],
            {"ids": list(customer_ids)})


def load_aggregates(connection: Connection, as_of: date, customer_ids: list[str] | None = None,
                    windows: pd.DataFrame | None = None) -> pd.DataFrame:
    """Per customer: revenue windows, lifetime totals, purchase days, first-day revenue,
    first and last order dates, all up to and including `as_of`. `windows`: the as-of
    month's storage.windows frame, when the caller has read it already."""
    if windows is None:
        windows = window_totals.read_month(connection, window_starts(as_of)["m0"], customer_ids)
    return _aggregates_from(windows, _current_days(connection, as_of, customer_ids))


def _current_days(connection: Connection, as_of: date, customer_ids: list[str] | None) -> pd.DataFrame:
    """Orders of the as-of month so far, per customer and day."""
    return query_frame(connection, _scoped(_CURRENT_DAYS_SQL, customer_ids)[0],
                       {"m0": window_starts(as_of)["m0"], "as_of": as_of},
                       ["customer_id", "order_date", "revenue", "cost", "repeat_revenue", "orders"],
                       numeric=("revenue", "cost", "repeat_revenue", "orders"), type_=Date, customer_ids=customer_ids)


def _aggregates_from(windows: pd.DataFrame, days: pd.DataFrame) -> pd.DataFrame:
    """load_aggregates' frame: the whole months' totals plus the as-of month's days.

    The days are added by position (customers as integer codes, sums by bincount), not by
    joining and reindexing on the string ids: a fifth less time at 100k customers."""
    frame = windows.set_index("customer_id")[[*window_totals.ORDER_SUMS, "first_order_date", "last_order_date"]]
    # Customers with orders: a purchase, or only refunds (no first purchase day nor order, but money).
    frame = frame[frame["first_order_date"].notna() | (frame["lifetime_orders"] > 0) | (frame["lifetime_revenue"] != 0)]
    # Copies: the days are added in place.
    first = pd.to_datetime(frame["first_order_date"]).to_numpy(dtype="datetime64[ns]", copy=True)
    last = pd.to_datetime(frame["last_order_date"]).to_numpy(dtype="datetime64[ns]", copy=True)
    sums = {column: frame[column].to_numpy(dtype=float, na_value=np.nan, copy=True) for column in AGGREGATE_COLUMNS}
    ids = frame.index.to_numpy(dtype=object)
    if len(days):
        codes, day_ids = pd.factorize(days["customer_id"].to_numpy(dtype=object))
        at = pd.Index(ids).get_indexer(day_ids)
        newcomers = at < 0  # their first orders are this month's
        grown = int(newcomers.sum())
        if grown:
            at[newcomers] = len(ids) + np.arange(grown)
            ids = np.concatenate([ids, day_ids[newcomers]])
            first = np.concatenate([first, np.full(grown, np.datetime64("NaT"), dtype=first.dtype)])
            last = np.concatenate([last, np.full(grown, np.datetime64("NaT"), dtype=last.dtype)])
            sums = {column: np.concatenate([values, np.full(grown, np.nan)]) for column, values in sums.items()}
        sums = {column: np.nan_to_num(values, nan=0.0) if column != "first_day_revenue" else values
                for column, values in sums.items()}
        count = len(day_ids)
        revenue = days["revenue"].to_numpy(dtype=float)
        added = {"revenue_12m": revenue, "cost_12m": days["cost"].to_numpy(dtype=float),
                 "repeat_revenue_12m": days["repeat_revenue"].to_numpy(dtype=float),
                 "orders_12m": days["orders"].to_numpy(dtype=float)}
        added = {**added, "lifetime_revenue": added["revenue_12m"], "lifetime_orders": added["orders_12m"]}
        for target, values in added.items():
            sums[target][at] += np.bincount(codes, weights=np.nan_to_num(values, nan=0.0), minlength=count)
        # As in the roll-up (storage.importer.rebuild_rollups): a day netting to 0 or less is no purchase.
        bought = revenue > 0
        buyer = codes[bought]
        sums["purchase_days"][at] += np.bincount(buyer, minlength=count)
        dates = pd.to_datetime(days["order_date"]).to_numpy(dtype="datetime64[ns]")[bought]
        order = np.lexsort((dates.view("i8"), buyer))  # each buyer's days in date order
        buyer, dates, day_revenue = buyer[order], dates[order], revenue[bought][order]
        if len(buyer):
            starts = np.flatnonzero(np.r_[True, buyer[1:] != buyer[:-1]])
            ends = np.r_[starts[1:], len(buyer)] - 1
            rows = at[buyer[starts]]
            new_buyers = np.isnat(first[rows])
            sums["first_day_revenue"][rows[new_buyers]] = day_revenue[starts][new_buyers]
            first[rows[new_buyers]] = dates[starts][new_buyers]
            last[rows] = dates[ends]
    result = pd.DataFrame({"customer_id": ids, **{column: np.nan_to_num(values, nan=0.0)
                                                  for column, values in sums.items()},
                           "first_order_date": first, "last_order_date": last})
    return result


def load_activity(connection: Connection, as_of: date, customer_ids: list[str] | None = None,
                  windows: pd.DataFrame | None = None) -> pd.DataFrame:
    """Per customer: activities in the 30 days to as_of (and how many of them fall before
    the as-of month), the six whole months before the as-of month (the baseline, from
    storage.windows), complaints in the last 90 days and the 90 before."""
    if windows is None:
        windows = window_totals.read_month(connection, window_starts(as_of)["m0"], customer_ids)
    return _activity_from(_recent_activity(connection, as_of, customer_ids),
                          _complaints(connection, as_of, customer_ids), windows)


def _activity_windows(as_of: date) -> dict[str, datetime]:
    until = datetime.combine(as_of + timedelta(days=1), datetime.min.time())
    return {"until": until, "since_30d": until - timedelta(days=30), "since_90d": until - timedelta(days=90),
            "since_180d": until - timedelta(days=180),
            "m0": datetime.combine(window_starts(as_of)["m0"], datetime.min.time())}


def _activity_counts(connection: Connection, as_of: date, customer_ids: list[str] | None, sql: str,
                     names: list[str], numeric: tuple[str, ...]) -> pd.DataFrame:
    return query_frame(connection, _scoped(sql, customer_ids)[0], _activity_windows(as_of), ["customer_id", *names],
                       numeric=numeric, type_=DateTime, customer_ids=customer_ids).set_index("customer_id")


def _recent_activity(connection: Connection, as_of: date, customer_ids: list[str] | None) -> pd.DataFrame:
    return _activity_counts(connection, as_of, customer_ids, _RECENT_ACTIVITY_SQL,
                            ["act_30d", "act_30d_before_month", "last_recent_ts"], ("act_30d", "act_30d_before_month"))


def _complaints(connection: Connection, as_of: date, customer_ids: list[str] | None) -> pd.DataFrame:
    return _activity_counts(connection, as_of, customer_ids, _COMPLAINTS_SQL,
                            ["complaints_90d", "complaints_prev_90d"], ("complaints_90d", "complaints_prev_90d"))


def _activity_from(recent: pd.DataFrame, complaints: pd.DataFrame, windows: pd.DataFrame) -> pd.DataFrame:
    """load_activity's frame: the last 30 days and complaints, beside the months' baseline."""
    baseline = windows.loc[(windows["baseline_events"] > 0) | windows["baseline_last_ts"].notna(),
                           ["customer_id", "baseline_events", "baseline_last_ts"]]
    frame = recent.join(complaints, how="outer").join(
        baseline.set_index("customer_id").rename(columns={"baseline_events": "baseline_events_6m"}), how="outer")
    for column in ("act_30d", "baseline_events_6m", "act_30d_before_month", "complaints_90d", "complaints_prev_90d"):
        frame[column] = frame[column].fillna(0.0)
    frame["last_activity_ts"] = pd.to_datetime(frame["last_recent_ts"].fillna(frame["baseline_last_ts"]),
                                               errors="coerce")
    return frame.rename_axis("customer_id").reset_index()[["customer_id", *ACTIVITY_COLUMNS]]


def load_customers(connection: Connection, customer_ids: list[str] | None = None,
                   in_id_order: bool = False) -> pd.DataFrame:
    """Attributes, plus each customer's current tier and hysteresis state. `in_id_order`:
    sorted by customer id (a full run: its snapshot chunks are then slices of the run).

    Plain SQL: the ORM's per-value type conversion costs a second per 100k customers, and
    build_features reads booleans and dates in either form (0/1 or bool, text or date)."""
    scope = "WHERE customer_id IN :ids" if customer_ids is not None else ""
    columns = [*CUSTOMER_COLUMNS, "tier", "pending_tier", "pending_runs"]
    frame = query_frame(connection, f"SELECT {', '.join(columns)} FROM customers {scope}", {}, columns,
                        numeric=("employees", "digital_maturity", "pending_runs"), customer_ids=customer_ids)
    if in_id_order and not frame["customer_id"].is_monotonic_increasing:
        # Sorted here, not by the database: ORDER BY would read the table through its key index.
        frame = frame.sort_values("customer_id", kind="stable", ignore_index=True)
    return frame


@dataclass(frozen=True)
class RunInputs:
    customers: pd.DataFrame
    aggregates: pd.DataFrame
    activity: pd.DataFrame
    intent_counts: pd.DataFrame


def load_inputs(connection: Connection, as_of: date, intent_rules: list,
                customer_ids: list[str] | None = None) -> RunInputs:
    """What scoring reads, for these customers or (None) all of them in id order. Inside
    a consistent_read; when its reader has several helpers, every query is a task of its
    own and the helpers take them as they come free, longest first (a thread waiting on a
    helper lets the others do their pandas work)."""
    month = window_starts(as_of)["m0"]
    in_id_order = customer_ids is None
    reads: dict[str, Callable[[], pd.DataFrame]] = {
        # In this order (measured at 100k): what the combinations below wait for first,
        # then the longest, so that the last to start is short.
        "windows": lambda: window_totals.read_month(connection, month, customer_ids),
        "days": lambda: _current_days(connection, as_of, customer_ids),
        "recent": lambda: _recent_activity(connection, as_of, customer_ids),
        "customers": lambda: load_customers(connection, customer_ids, in_id_order),
        "intent": lambda: load_intent_counts(connection, as_of, intent_rules, customer_ids),
        "complaints": lambda: _complaints(connection, as_of, customer_ids),
    }
    combined: dict[str, tuple[Callable[..., pd.DataFrame], tuple[str, ...]]] = {
        "aggregates": (_aggregates_from, ("windows", "days")),
        "activity": (_activity_from, ("recent", "complaints", "windows")),
    }
    helpers = parallel_reads(connection)
    if helpers == 1:
        read = {name: load() for name, load in reads.items()}
        done = {name: combine(*(read[part] for part in parts)) for name, (combine, parts) in combined.items()}
        return RunInputs(read["customers"], done["aggregates"], done["activity"], read["intent"])
    # The threads share the connection only for its reader (every read goes through
    # query_frame). The reads start in order, one more at a time than there are helpers
    # (so a helper never waits while its last result becomes a frame); each combination
    # runs as soon as its reads are in, beside the reads still going.
    read_pool = ThreadPoolExecutor(max_workers=helpers + 1, thread_name_prefix="run-inputs")
    combine_pool = ThreadPoolExecutor(max_workers=len(combined), thread_name_prefix="run-inputs-combine")
    try:
        futures = {name: read_pool.submit(load) for name, load in reads.items()}

        def when_read(combine: Callable[..., pd.DataFrame], parts: tuple[str, ...]) -> pd.DataFrame:
            # Each its own shallow copy: two threads read the windows frame at once.
            return combine(*(futures[part].result().copy(deep=False) for part in parts))

        done = {name: combine_pool.submit(when_read, combine, parts) for name, (combine, parts) in combined.items()}
        return RunInputs(futures["customers"].result(), done["aggregates"].result(), done["activity"].result(),
                         futures["intent"].result())
    except BaseException:
        for pool in (read_pool, combine_pool):
            pool.shutdown(wait=False, cancel_futures=True)  # what has not started yet never does
        raise
    finally:
        read_pool.shutdown(wait=True)
        combine_pool.shutdown(wait=True)


# From this many customers a full run on SQLite reads through storage.columnar (below
# it, starting the helper processes costs more than it saves), with this many helpers:
# one per core of the machines we run on, the parent's pandas work fitting between.
COLUMNAR_FROM = 20_000
COLUMNAR_HELPERS = 2
# How long a run waits for the write lock its helpers start their snapshots under.
LOCK_WAIT_MS = 2_000


@contextmanager
def consistent_read(engine: Engine, columnar: bool = False) -> Iterator[Connection]:
    """A read-only transaction in which every query sees the same committed state.
    `columnar`: on a SQLite file of COLUMNAR_FROM customers or more, the bulk reads
    (storage.sql.query_frame) go through a ColumnarReader, whose helpers all read one
    snapshot (see _columnar_reader)."""
    with engine.connect() as connection:
        if connection.dialect.name == "postgresql":
            connection = connection.execution_options(isolation_level="REPEATABLE READ")
        with connection.begin():
            reader = _columnar_reader(engine, connection) if columnar else None
            if reader is None:
                yield connection
                return
            try:
                yield connection.execution_options(**{COLUMNAR_OPTION: reader})
            finally:
                reader.close()


def _columnar_reader(engine: Engine, connection: Connection) -> ColumnarReader | None:
    """A reader for a large SQLite file; None elsewhere, or when no helper can start (the
    run then reads row by row)."""
    path = engine.url.database
    if connection.dialect.name != "sqlite" or not path or path == ":memory:" or path.startswith("file:"):
        return None
    if connection.execute(text("SELECT COUNT(*) FROM customers")).scalar_one() < COLUMNAR_FROM:
        return None
    log = logging.getLogger("tierbot")
    # Several helpers first; one, which needs no lock, if the write lock stays busy past
    # busy_timeout (a long import) or they fail to begin.
    for helpers, hold_writers in ((COLUMNAR_HELPERS, True), (1, False)):
        try:
            reader = ColumnarReader(path, helpers=helpers)
        except ColumnarReadError as error:
            log.warning("reading row by row instead: %s", error)
            return None
        try:
            # No commit may land between the helpers' snapshots: writers wait the few
            # milliseconds it takes, as they would for any other write. The run waits
            # for the lock only briefly: an import can hold it for minutes.
            with write_transaction(engine, busy_timeout_ms=LOCK_WAIT_MS) if hold_writers else nullcontext():
                reader.begin_snapshot()
            return reader
        except (OperationalError, ColumnarReadError) as error:
            reader.close()
            log.warning("the columnar helpers could not begin (%s): trying %s",
                        getattr(error, "orig", None) or error, "one" if hold_writers else "row by row")
        except BaseException:
            reader.close()
            raise
    return None


def parallel_reads(connection: Connection) -> int:
    """How many queries a consistent_read connection answers side by side (see load_inputs)."""
    reader = connection.get_execution_options().get(COLUMNAR_OPTION)
    return reader.helpers if reader is not None else 1


# ---------------------------------------------------------------- runs

def start_run(engine: Engine, as_of: date, config_hash: str, kind: str = "full") -> int:
    """Record a run as running, in its own transaction, so a crash leaves a trace."""
    with engine.begin() as connection:
        return connection.execute(
            ScoreRun.__table__.insert().values(started_at=_now(), as_of=as_of, status="running", kind=kind,
                                               config_hash=config_hash).returning(ScoreRun.id)).scalar_one()


def fail_run(engine: Engine, run_id: int, error: str) -> None:
    with engine.begin() as connection:
        connection.execute(update(ScoreRun).where(ScoreRun.id == run_id)
                           .values(status="failed", finished_at=_now(), error=error[:2000]))


def abandon_stale_runs(engine: Engine, older_than: timedelta) -> int:
    """Runs left 'running' by a process that died are marked failed."""
    with engine.begin() as connection:
        result = connection.execute(update(ScoreRun).where(ScoreRun.status == "running",
                                                           ScoreRun.started_at < _now() - older_than)
                                    .values(status="failed", finished_at=_now(),
                                            error="abandoned: the process running it stopped"))
        return result.rowcount or 0


@dataclass(frozen=True)
class RunOutcome:
    run_id: int
    customers: int
    tier_changes: int
    first_assignments: int
    summary: dict


# The models whose labels a snapshot row keeps as codes, CODE_BITS each, in this order
# from the lowest bits: code = 1 + the label's position in the run's coded labels
# (ScoringParams.coded_labels, kept in the run's summary); 0 = none, or not one of them.
# Its own tuple, not scoring.pipeline.MODELS: stored rows depend on these positions.
CODED_MODELS = ("rfm", "sabc", "pyramid", "lifecycle", "churn", "intent")
CODE_BITS = 5
_CODE_MASK = (1 << CODE_BITS) - 1


def label_codes(scored: pd.DataFrame, coded_labels: dict[str, list[str]]) -> np.ndarray:
    """Each row's labels of CODED_MODELS packed into one integer (see CODED_MODELS)."""
    codes = np.zeros(len(scored), dtype=np.int64)
    for position, model in enumerate(CODED_MODELS):
        column, labels = f"{model}_label", list(coded_labels.get(model, []))[:_CODE_MASK]
        if column not in scored or not labels:
            continue
        # Categorical codes: a label's position, −1 when it is none of them (→ 0).
        model_codes = pd.Categorical(scored[column], categories=labels).codes.astype(np.int64) + 1
        codes |= model_codes << (CODE_BITS * position)
    return codes


def label_condition(column, coded_labels: dict[str, list[str]], model: str, label: str):
    """A SQL condition on a label_codes column: this model gave this label."""
    labels = list(coded_labels.get(model, []))[:_CODE_MASK]
    if model not in CODED_MODELS or label not in labels:
        raise KeyError(f"no code for {model} label {label!r}")
    shifted = column.op(">>")(CODE_BITS * CODED_MODELS.index(model)).self_group()
    return shifted.op("&")(_CODE_MASK).self_group() == labels.index(label) + 1


def _snapshot_frame(snapshot_run_id: int, scored: pd.DataFrame, revenue_12m: pd.Series, reasons: pd.DataFrame,
                    reasons_chunk: int, coded_labels: dict[str, list[str]] | None = None) -> pd.DataFrame:
    """The snapshot rows of `scored`: what lists sort and filter by as columns; the labels
    and scores are in the chunk (their JSON columns hold {}), and so are the reasons but
    for those in `reasons` (stored as JSON)."""
    def text(values) -> pd.Series:
        # Kept as Python objects: pandas would turn them into Arrow strings, and back again for the insert.
        return pd.Series(values, dtype=object)

    return pd.DataFrame({
        "run_id": snapshot_run_id,
        "customer_id": text(scored.index.to_numpy(dtype=object)),
        "tier": text(scored["tier"].to_numpy(dtype=object)),
        "current_value": scored["current_value"].to_numpy(),
        "potential_value": scored["potential_value"].to_numpy(),
        "revenue_12m": revenue_12m.to_numpy(),  # aligned with `scored`, rounded
        "pending_tier": text(scored["pending_tier"].to_numpy(dtype=object)) if "pending_tier" in scored else None,
        "pending_runs": scored["pending_runs"].to_numpy() if "pending_runs" in scored else 0,
        "churn_score": scored["churn_score"].to_numpy() if "churn_score" in scored else None,
        "label_codes": label_codes(scored, coded_labels) if coded_labels else None,
        "labels": "{}",
        "scores": "{}",
        "reasons": text(_json_rows(reasons)),
        "reasons_chunk": reasons_chunk,
    })


# Snapshot rows, and the reasons inputs of one chunk, are built and written this many
# customers at a time.
SNAPSHOT_CHUNK = 10_000


def _insert_snapshots(connection: Connection, snapshot_run_id: int, scored: pd.DataFrame,
                      revenue_12m: pd.Series, deferred: dict | None = None,
                      coded_labels: dict[str, list[str]] | None = None) -> None:
    """Snapshot rows for every customer of `scored`, and a score_reason_chunks row per
    SNAPSHOT_CHUNK customers holding their labels and scores and the inputs of the
    `deferred` reasons columns (scoring.deferred), in customer-id order (an export reads
    them in that order, a chunk at a time). Reasons in `scored` itself are stored in the
    rows' JSON.

    Labels and scores go into the chunk as columns rather than as JSON per row: making
    the JSON was a second per 100k customers, and it was most of the bytes a run wrote.

    With several chunks, the next chunk is built in a helper thread while the database
    inserts the current one (SQLite, the PostgreSQL COPY and Arrow's compression let go of
    the GIL while they work). Building only reads `scored`, `deferred` and the revenue."""
    # Aligned with `scored` once, then cut by position: reindexing per chunk would hash the
    # whole index every time.
    revenue_12m = revenue_12m.reindex(scored.index).fillna(0.0).round(2)
    # A full run scores customers in id order already (bot.rescore): its chunks are plain
    # slices, which cost nothing to cut.
    order = None if scored.index.is_monotonic_increasing else np.argsort(scored.index.to_numpy(dtype=str),
                                                                          kind="stable")
    frames = snapshot_frames(scored)
    stored = {**(deferred or {}), **{document: Deferred("documents", frames[document], len(scored))
                                     for document in DOCUMENTS}}
    first_chunk = _next_chunk(connection, snapshot_run_id)

    def build(start: int) -> tuple[pd.DataFrame, dict]:
        positions = slice(start, start + SNAPSHOT_CHUNK) if order is None else order[start:start + SNAPSHOT_CHUNK]
        part = scored.iloc[positions]
        chunk = first_chunk + start // SNAPSHOT_CHUNK
        rows = _snapshot_frame(snapshot_run_id, part, revenue_12m.iloc[positions],
                               frames["reasons"].iloc[positions], chunk, coded_labels)
        payload = encode_chunk(stored, positions, list(part.index))
        return rows, {"run_id": snapshot_run_id, "chunk": chunk, "customers": len(part), "payload": payload}

    def write(rows: pd.DataFrame, chunk: dict) -> None:
        connection.execute(ScoreReasonChunk.__table__.insert(), chunk)
        bulk_insert(connection, ScoreSnapshot.__tablename__, rows)

    starts = list(range(0, len(scored), SNAPSHOT_CHUNK))
    if len(starts) <= 1:
        for start in starts:
            write(*build(start))
        return
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="snapshot-rows") as pool:
        pending = pool.submit(build, starts[0])
        for following in [*starts[1:], None]:
            built = pending.result()
            if following is not None:
                pending = pool.submit(build, following)
            write(*built)
            del built


def _next_chunk(connection: Connection, run_id: int) -> int:
    chunks = ScoreReasonChunk.__table__
    last = connection.execute(select(func.max(chunks.c.chunk)).where(chunks.c.run_id == run_id)).scalar()
    return 0 if last is None else last + 1


# A full run leaves alone a customer whose tier an incremental rescore of newer data set
# after the run read its own data.
_UNCHANGED_SINCE_READ = "({table}.tier_since IS NULL OR {table}.tier_since < :read_at)"
_READ_AT = bindparam("read_at", type_=DateTime(timezone=True))


def _record_pending(connection: Connection, scored: pd.DataFrame, previous: pd.DataFrame | None,
                    read_at: datetime | None) -> None:
    """Each customer's hysteresis state onto its row, where this run changed it (mostly
    customers near a boundary). Call before the tier changes: a customer whose tier an
    incremental rescore changed after `read_at` keeps that rescore's state too."""
    if "pending_tier" not in scored:
        return
    before = (previous if previous is not None else pd.DataFrame(columns=["pending_tier", "pending_runs"])
              ).reindex(scored.index)
    tier_now = scored["pending_tier"].to_numpy(dtype=object)
    runs_now = scored["pending_runs"].fillna(0).to_numpy(dtype=np.int64)
    tier_before = before["pending_tier"].to_numpy(dtype=object)
    runs_before = before["pending_runs"].fillna(0).to_numpy(dtype=np.int64)
    changed = (pd.isna(tier_now) != pd.isna(tier_before)) | (runs_now != runs_before) | (
        ~pd.isna(tier_now) & (tier_now != tier_before))
    rows = [{"customer": customer_id, "heading": None if pd.isna(tier) else tier, "runs": int(runs)}
            for customer_id, tier, runs in zip(scored.index[changed], tier_now[changed], runs_now[changed])]
    if not rows:
        return
    statement = text("UPDATE customers SET pending_tier = :heading, pending_runs = :runs WHERE customer_id = :customer"
                     + ("" if read_at is None else f" AND {_UNCHANGED_SINCE_READ.format(table='customers')}"))
    if read_at is not None:
        statement = statement.bindparams(_READ_AT)
        rows = [{**row, "read_at": read_at} for row in rows]
    connection.execute(statement, rows)


# customer ids → {customer id: the value matrix reasons}, for the tier changes of a run.
Explain = Callable[[list[str]], dict[str, list]]


def _record_tier_changes(connection: Connection, snapshot_run_id: int, history_run_id: int,
                         customer_ids: list[str] | None, read_at: datetime | None = None,
                         explain: Explain | None = None) -> tuple[int, int]:
    """Tier history for every customer whose snapshot tier differs from its current tier,
    then the current tiers. Returns (changes, first assignments). `read_at`: when a full
    run read its data; a customer whose tier changed after that (an incremental rescore of
    newer data) keeps it rather than being set back to what the older data said.
    `explain`: the value matrix reasons a change is recorded with (a first assignment is
    not a change: its reasons are the run's own)."""
    scope, binds, values = ("", [], {}) if customer_ids is None else (
        "AND s.customer_id IN :ids", [bindparam("ids", expanding=True)], {"ids": list(customer_ids)})
    if read_at is not None:
        scope += f" AND {_UNCHANGED_SINCE_READ.format(table='c')}"
        binds = [*binds, _READ_AT]
        values = {**values, "read_at": read_at}
    parameters = {"snapshot_run": snapshot_run_id, "history_run": history_run_id, "now": _now(), **values}
    history = TierChange.__table__
    # This run's rows are those past the newest id now: found by the primary key, not by
    # scanning a history that grows every night.
    before = connection.execute(select(func.coalesce(func.max(history.c.id), 0))).scalar_one()
    # First assignments and changes in one pass over the run's snapshot rows.
    connection.execute(text(f"""
        INSERT INTO tier_history (customer_id, run_id, model, from_tier, to_tier, changed_at, reasons)
        SELECT s.customer_id, :history_run, 'value_matrix', c.tier, s.tier, :now, '[]'
        FROM score_snapshots s JOIN customers c ON c.customer_id = s.customer_id
        WHERE s.run_id = :snapshot_run {scope} AND (c.tier IS NULL OR c.tier <> s.tier)""")
                       .bindparams(_NOW, *binds), parameters)
    this_run = (history.c.id > before) & (history.c.run_id == history_run_id)
    first, changes = connection.execute(select(
        func.count().filter(history.c.from_tier.is_(None)), func.count().filter(history.c.from_tier.is_not(None)))
        .where(this_run)).one()
    if explain is not None and changes:
        changed = connection.execute(select(history.c.id, history.c.customer_id).where(
            this_run, history.c.from_tier.is_not(None))).all()
        reasons = explain([customer_id for _, customer_id in changed])
        updates = [{"change": change_id, "why": reasons[customer_id]} for change_id, customer_id in changed
                   if reasons.get(customer_id)]
        if updates:
            connection.execute(history.update().where(history.c.id == bindparam("change"))
                               .values(reasons=bindparam("why")), updates)
    if first or changes:
        connection.execute(text("""
            UPDATE customers SET tier = h.to_tier, tier_since = :now
            FROM tier_history h
            WHERE h.id > :before AND h.run_id = :history_run AND h.customer_id = customers.customer_id""")
                           .bindparams(_NOW), {"before": before, "history_run": history_run_id,
                                               "now": parameters["now"]})
    return int(changes), int(first)


def _value_matrix_reasons(scored: pd.DataFrame, deferred: dict | None) -> Explain:
    return lambda customer_ids: column_values(scored, deferred, "reasons", customer_ids)


# The run's playbook, in two steps inside its transaction. Called first, it reads what it
# needs and may go on working in a thread; what it returns is called once the tier changes
# are recorded, and writes tasks and outbox rows there, so they commit with the run or not
# at all.
AfterChanges = Callable[[Connection], Callable[[Connection], object]]


def _start_early(connection: Connection, after_changes: AfterChanges | None) -> Callable[[Connection], object] | None:
    """The playbook's first step before the tier changes are recorded, on SQLite: the run has
    held the write lock since its BEGIN, so what it reads now is what it would read after
    them, and its work overlaps theirs. On PostgreSQL other runs may commit meanwhile (an
    ingest's tasks and alerts): it reads after the tier changes, as it always did."""
    if after_changes is None or connection.dialect.name != "sqlite":
        return None
    return after_changes(connection)


def _finish(connection: Connection, after_changes: AfterChanges | None,
            started: Callable[[Connection], object] | None) -> None:
    if after_changes is not None:
        (started or after_changes(connection))(connection)


def write_run(engine: Engine, run_id: int, scored: pd.DataFrame, revenue_12m: pd.Series, summary: dict,
              keep_runs: int, reference: str | None = None, after_changes: AfterChanges | None = None,
              read_at: datetime | None = None, deferred: dict | None = None,
              previous: pd.DataFrame | None = None, backtest: bool = False) -> RunOutcome:
    """A full run: snapshot rows, tier history and current tiers, then the run marked
    succeeded — all in one transaction, so a crash leaves the previous state untouched.
    `deferred`: reasons columns `scored` lacks, built a chunk at a time (scoring.deferred).
    `previous`: the hysteresis state the run started from (pending_tier, pending_runs).
    The labels are coded by `summary["coded_labels"]` (ScoringParams.coded_labels).

    The cyclic garbage collector is paused until the commit, as while scoring: the
    playbook's burst of row dicts would otherwise set off full collections that rescan
    the run's frames (0.1 s or more at 100k customers).

    `backtest`: the snapshot and the run only (see bot.rescore.full_rescore)."""
    with paused_gc(), write_transaction(engine) as connection:
        _insert_snapshots(connection, run_id, scored, revenue_12m, deferred, summary.get("coded_labels"))
        changes = first = 0
        if not backtest:
            finish = _start_early(connection, after_changes)
            if read_at is not None:
                _done_pending(connection, read_at)
            _record_pending(connection, scored, previous, read_at)
            changes, first = _record_tier_changes(connection, run_id, run_id, None, read_at,
                                                  _value_matrix_reasons(scored, deferred))
            _finish(connection, after_changes, finish)
        connection.execute(update(ScoreRun).where(ScoreRun.id == run_id).values(
            status="succeeded", finished_at=_now(), customers=len(scored), tier_changes=changes,
            summary=summary, reference=reference))
        _prune_snapshots(connection, keep_runs)
        refresh_statistics(connection, ["score_snapshots", "customers", "tier_history"])
    return RunOutcome(run_id, len(scored), changes, first, summary)


def write_incremental(engine: Engine, full_run_id: int, run_id: int, scored: pd.DataFrame,
                      revenue_12m: pd.Series, after_changes: AfterChanges | None = None,
                      deferred: dict | None = None, previous: pd.DataFrame | None = None,
                      read_at: datetime | None = None, coded_labels: dict[str, list[str]] | None = None
                      ) -> RunOutcome:
    """An incremental rescore: replace these customers' rows in the full run's snapshot
    (it stays the current picture; their reasons inputs go into a new chunk of that run),
    record their tier changes under the incremental run, and take them off rescore_pending
    where they were queued before `read_at` (when the rescore read its data).
    `coded_labels`: the full run's (its summary's), so that its rows share one coding."""
    ids = list(scored.index)
    with paused_gc(), write_transaction(engine) as connection:
        if read_at is not None:
            _done_pending(connection, read_at, ids)
        connection.execute(ScoreSnapshot.__table__.delete().where(ScoreSnapshot.run_id == full_run_id,
                                                                  ScoreSnapshot.customer_id.in_(ids)))
        _insert_snapshots(connection, full_run_id, scored, revenue_12m, deferred, coded_labels)
        finish = _start_early(connection, after_changes)
        _record_pending(connection, scored, previous, None)
        changes, first = _record_tier_changes(connection, full_run_id, run_id, ids,
                                              explain=_value_matrix_reasons(scored, deferred))
        _finish(connection, after_changes, finish)
        summary = {"customers": len(ids), "full_run": full_run_id}
        connection.execute(update(ScoreRun).where(ScoreRun.id == run_id).values(
            status="succeeded", finished_at=_now(), customers=len(ids), tier_changes=changes, summary=summary))
    return RunOutcome(run_id, len(ids), changes, first, summary)


def _done_pending(connection: Connection, read_at: datetime, customer_ids: list[str] | None = None) -> None:
    """Rescores queued before a run read its data are done with it (all of them for a
    full run); one queued since waits for its own."""
    table = RescorePending.__table__
    done = table.delete().where(table.c.queued_at <= read_at)
    if customer_ids is not None:
        done = done.where(table.c.customer_id.in_(customer_ids))
    connection.execute(done)


def _prune_snapshots(connection: Connection, keep_runs: int) -> None:
    kept = (select(ScoreRun.id).where(ScoreRun.status == "succeeded", ScoreRun.kind == "full")
            .order_by(ScoreRun.id.desc()).limit(keep_runs))
    oldest_kept = connection.execute(select(func.min(kept.subquery().c.id))).scalar()
    if oldest_kept is not None:
        connection.execute(ScoreSnapshot.__table__.delete().where(ScoreSnapshot.run_id < oldest_kept))
        connection.execute(ScoreReasonChunk.__table__.delete().where(ScoreReasonChunk.run_id < oldest_kept))


# The documents of a snapshot row kept in its chunk, as scoring.deferred "documents" columns.
DOCUMENTS = ("labels", "scores")


def snapshot_frames(scored: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """A snapshot's documents, a column per key: labels, scores, and the reasons of the
    models whose reasons are in `scored` (deferred ones are stored as their inputs)."""
    from scoring import MODELS

    models = [m for m in MODELS[1:] if f"{m}_label" in scored]
    component_columns = [c for c in scored.columns if c.startswith("c_")]
    extra_scores = [c for c in ("rfm_r", "rfm_f", "rfm_m", "churn_p_alive", "sabc_influence", "sabc_volume")
                    if c in scored]
    labels_frame = scored[[f"{m}_label" for m in models]].rename(columns=lambda c: c[:-len("_label")])
    labels_frame.insert(0, "value_matrix", scored["tier"])
    if "tier_raw" in scored:
        labels_frame["value_matrix_raw"] = scored["tier_raw"]
    if "intent_tags" in scored:
        labels_frame["tags"] = scored["intent_tags"]
    scores_frame = pd.concat([
        scored[component_columns].rename(columns=lambda c: c[2:]),
        scored[[f"{m}_score" for m in models if f"{m}_score" in scored]].rename(columns=lambda c: c[:-len("_score")]),
        scored[extra_scores]], axis=1)
    reasons_frame = scored[[f"{m}_reasons" for m in models if f"{m}_reasons" in scored]].rename(
        columns=lambda c: c[:-len("_reasons")])
    if "reasons" in scored:
        reasons_frame.insert(0, "value_matrix", scored["reasons"])
    if "rules_reasons" in scored:
        reasons_frame["rules"] = scored["rules_reasons"]
    return {"labels": labels_frame, "scores": scores_frame, "reasons": reasons_frame}


def _json_rows(frame: pd.DataFrame) -> list[str]:
    """One JSON object per row; NaN becomes null. orjson: a full run writes millions."""
    columns = list(frame.columns)
    if not columns:
        return ["{}"] * len(frame)
    values = [frame[c].tolist() if frame[c].dtype != object else list(frame[c]) for c in columns]
    dumps, option = orjson.dumps, orjson.OPT_SERIALIZE_NUMPY
    return [dumps(dict(zip(columns, row)), option=option).decode() for row in zip(*values)]


# The models whose reasons a snapshot holds, in the order they are shown; and the
# column of a scored frame each one's reasons are in.
REASON_MODELS = ("value_matrix", "rfm", "sabc", "pyramid", "lifecycle", "churn", "intent", "rules")
_MODEL_OF_COLUMN = {reasons_column(model): model for model in REASON_MODELS}

# (customer id, a document's JSON as stored, reasons_chunk) of a snapshot row.
SnapshotPart = tuple[str, "dict | str | None", "int | None"]


class StoredSnapshot:
    """What snapshot rows keep in their run's chunks (score_reason_chunks): every model's
    reasons, built from their stored inputs, and the labels and scores. Each is merged
    with what the row's JSON holds, which wins (runs before chunks held everything there).

    Decoded chunks are kept: reading a run in customer order decodes each chunk once. Past
    `keep` of them, those the rows asked for next do not need are dropped. One reader per run."""

    def __init__(self, keep: int = 2) -> None:
        self.keep = keep
        self._chunks: dict[int, tuple[dict[str, int], dict]] = {}

    def missing(self, rows: list[SnapshotPart]) -> list[int]:
        """The chunks these rows need that are not decoded yet."""
        needed = {chunk for _, _, chunk in rows if chunk is not None}
        for chunk in [chunk for chunk in self._chunks if chunk not in needed]:
            if len(self._chunks) <= self.keep:
                break
            del self._chunks[chunk]
        return sorted(needed - set(self._chunks))

    def add(self, chunk: int, payload: bytes) -> None:
        customer_ids, columns = decode_chunk(payload)
        self._chunks[chunk] = ({customer_id: i for i, customer_id in enumerate(customer_ids)}, columns)

    def _from_chunks(self, rows: list[SnapshotPart], wanted: Callable[[str], bool]) -> list[dict]:
        """{chunk column: value} per row, for the columns `wanted` says yes to; a chunk not
        added gives none."""
        found: list[dict] = [{} for _ in rows]
        by_chunk: dict[int, list[int]] = {}
        for i, (_, _, chunk) in enumerate(rows):
            if chunk is not None and chunk in self._chunks:
                by_chunk.setdefault(chunk, []).append(i)
        for chunk, members in by_chunk.items():
            positions_of, columns = self._chunks[chunk]
            known = [i for i in members if rows[i][0] in positions_of]
            positions = np.array([positions_of[rows[i][0]] for i in known], dtype=np.int64)
            for column, values in columns.items():
                if wanted(column):
                    for i, value in zip(known, values.rows(positions)):
                        found[i][column] = value
        return found

    def of(self, rows: list[SnapshotPart]) -> list[dict]:
        """{model: reasons} per row (the rows' reasons JSON), in REASON_MODELS order."""
        merged = [{_MODEL_OF_COLUMN.get(column, column): reasons for column, reasons in found.items()}
                  for found in self._from_chunks(rows, lambda column: column not in DOCUMENTS)]
        for reasons, (_, stored, _) in zip(merged, rows):
            reasons.update(_loaded(stored))
        return [{model: reasons[model] for model in (*REASON_MODELS, *reasons) if model in reasons}
                for reasons in merged]

    def documents(self, rows: list[SnapshotPart], document: str) -> list[dict]:
        """The `document` (one of DOCUMENTS) per row (the rows' JSON of that document)."""
        return [{**found.get(document, {}), **_loaded(stored)}
                for found, (_, stored, _) in zip(self._from_chunks(rows, lambda column: column == document), rows)]

    @staticmethod
    def query(run_id: int, chunks: list[int]):
        """The (chunk, payload) rows of these chunks of a run, for `add`."""
        table = ScoreReasonChunk.__table__
        return select(table.c.chunk, table.c.payload).where(table.c.run_id == run_id, table.c.chunk.in_(chunks))

    def fetch(self, connection: Connection, run_id: int, rows: list[SnapshotPart]) -> "StoredSnapshot":
        """Decode the chunks of the run these rows need, on a (sync) connection."""
        needed = self.missing(rows)
        if needed:
            for chunk, payload in connection.execute(self.query(run_id, needed)):
                self.add(chunk, payload)
        return self

    def read(self, connection: Connection, run_id: int, rows: list[SnapshotPart]) -> list[dict]:
        """`of`, after fetching the chunks it needs."""
        return self.fetch(connection, run_id, rows).of(rows)


def _loaded(stored) -> dict:
    return orjson.loads(stored) if isinstance(stored, (str, bytes)) else (stored or {})


def latest_run(connection: Connection):
    """The newest succeeded full run as a row (id, as_of, summary, reference, ...), or None.
    Incremental rescores update that run's snapshot rows in place."""
    runs = ScoreRun.__table__
    return connection.execute(select(runs).where(runs.c.status == "succeeded", runs.c.kind == "full")
                              .order_by(runs.c.id.desc()).limit(1)).first()


def exportable_run(connection: Connection, run_id: int):
    """Run `run_id` as a row, when it is a succeeded full run or back-test whose snapshot is
    still kept; else None."""
    runs = ScoreRun.__table__
    run = connection.execute(select(runs).where(runs.c.id == run_id, runs.c.status == "succeeded",
                                                runs.c.kind.in_(("full", "backtest")))).first()
    if run is None:
        return None
    kept = connection.execute(select(ScoreSnapshot.run_id).where(ScoreSnapshot.run_id == run_id).limit(1)).first()
    return run if kept is not None else None


def _now() -> datetime:
    return datetime.now(timezone.utc)


def load_intent_counts(connection: Connection, as_of: date, rules: list,
                       customer_ids: list[str] | None = None) -> pd.DataFrame:
    """Per customer and intent-rule condition: matching activities within the rule's window
    ending at as_of. Column `intent_<rule>_<condition>`; `rules` are scoring.intent rules."""
    if not rules:
        return pd.DataFrame(columns=["customer_id"])
    until = datetime.combine(as_of + timedelta(days=1), datetime.min.time())
    parameters: dict = {"until": until}
    sums, binds = [], [bindparam("until", type_=DateTime)]
    widest = max(rule.within_days for rule in rules)
    parameters["since"] = until - timedelta(days=widest)
    binds.append(bindparam("since", type_=DateTime))
    for r, rule in enumerate(rules):
        parameters[f"since_{r}"] = until - timedelta(days=rule.within_days)
        binds.append(bindparam(f"since_{r}", type_=DateTime))
        for c, condition in enumerate(rule.all):
            test = f"kind = :kind_{r}_{c} AND ts >= :since_{r}"
            parameters[f"kind_{r}_{c}"] = condition.kind
            if condition.detail_contains:
                escaped = condition.detail_contains.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
                parameters[f"detail_{r}_{c}"] = f"%{escaped}%"
                test += f" AND detail LIKE :detail_{r}_{c} ESCAPE '\\'"
            sums.append(f"SUM(CASE WHEN {test} THEN 1 ELSE 0 END) AS intent_{r}_{c}")
    kinds = sorted({condition.kind for rule in rules for condition in rule.all})
    for i, kind in enumerate(kinds):
        parameters[f"any_kind_{i}"] = kind
    kind_list = ", ".join(f":any_kind_{i}" for i in range(len(kinds)))
    sql = _scoped(f"""
        SELECT customer_id, {', '.join(sums)}
        FROM activities WHERE ts >= :since AND ts < :until AND kind IN ({kind_list}) {{scope}}
        GROUP BY customer_id""", customer_ids)[0]
    count_columns = [f"intent_{r}_{c}" for r, rule in enumerate(rules) for c in range(len(rule.all))]
    return query_frame(connection, sql, parameters, ["customer_id", *count_columns], numeric=tuple(count_columns),
                       customer_ids=customer_ids)
