"""Per-customer totals over the whole months before an as-of month, kept as data arrives.

A run needs, per customer, its revenue in the 12 / 12–24 / 24–36 months before the as-of
month, the last four months one by one, lifetime totals and the activity baseline of the
six months before. Grouping the monthly roll-ups for that costs seconds per 100k
customers (DESIGN §6); these totals only change when the month changes or the customer's
data does. So they are kept in customer_windows, for the months listed in window_months:

- the import refreshes the rows of every customer it touched, for every kept month, in
  its own transaction (`refresh_touched`), and builds the current month if it is missing;
- a full run builds its as-of month once if nobody has yet (`ensure_month`), then reads;
- `read_month` reads kept rows, or computes the same figures directly when the month is
  not kept (an incremental rescore in a month no run has built yet, a back-test).

The days of the as-of month itself come from the raw orders and activities, as before.
"""

from __future__ import annotations

from datetime import date, datetime, timezone

import pandas as pd
from sqlalchemy import Connection, Date, Engine, bindparam, text

from scoring.features import BASELINE_MONTHS, add_months, window_starts
from storage.db import as_date, write_transaction
from storage.sql import execute_named, query_frame

# Months kept: the newest two, so a run just after midnight on the 1st and a late import
# of last month's data both find theirs.
KEPT_MONTHS = 2

ORDER_SUMS = ("revenue_12m", "cost_12m", "repeat_revenue_12m", "orders_12m", "revenue_12_24m", "revenue_24_36m",
              "revenue_m1", "revenue_m2", "revenue_m3", "revenue_m4", "lifetime_revenue", "lifetime_orders",
              "purchase_days", "first_day_revenue")
WINDOW_COLUMNS = (*ORDER_SUMS, "first_order_date", "last_order_date", "baseline_events", "baseline_last_ts")
NUMERIC = (*ORDER_SUMS, "baseline_events")

# Whole months before :m0, from the roll-up (clustered by customer, month). The first
# purchase day's revenue is kept on the row of the customer's first month with a purchase
# (a month of refunds only has none).
_ORDERS_SQL = """
SELECT m.customer_id,
       SUM(CASE WHEN m.month >= :m12 THEN m.revenue ELSE 0 END),
       SUM(CASE WHEN m.month >= :m12 THEN m.cost ELSE 0 END),
       SUM(CASE WHEN m.month >= :m12 THEN m.repeat_revenue ELSE 0 END),
       SUM(CASE WHEN m.month >= :m12 THEN m.orders ELSE 0 END),
       SUM(CASE WHEN m.month >= :m24 AND m.month < :m12 THEN m.revenue ELSE 0 END),
       SUM(CASE WHEN m.month >= :m36 AND m.month < :m24 THEN m.revenue ELSE 0 END),
       SUM(CASE WHEN m.month = :m1 THEN m.revenue ELSE 0 END),
       SUM(CASE WHEN m.month = :m2 THEN m.revenue ELSE 0 END),
       SUM(CASE WHEN m.month = :m3 THEN m.revenue ELSE 0 END),
       SUM(CASE WHEN m.month = :m4 THEN m.revenue ELSE 0 END),
       SUM(m.revenue), SUM(m.orders), SUM(m.purchase_days),
       SUM(CASE WHEN m.month = f.first_month THEN m.first_day_revenue ELSE 0 END),
       MIN(m.first_order_date), MAX(m.last_order_date)
FROM customer_months m
LEFT JOIN (SELECT customer_id, MIN(month) AS first_month FROM customer_months
           WHERE month < :m0 AND purchase_days > 0 {scope} GROUP BY customer_id) f ON f.customer_id = m.customer_id
WHERE m.month < :m0 {scope_m}
GROUP BY m.customer_id
"""

# The activity baseline: non-complaint events in the six whole months before :m0.
_BASELINE_SQL = """
SELECT customer_id, SUM(CASE WHEN kind <> 'complaint' THEN events ELSE 0 END), MAX(last_ts)
FROM activity_months WHERE month >= :m6 AND month < :m0 {scope}
GROUP BY customer_id
"""

_ORDER_NAMES = ["customer_id", *ORDER_SUMS, "first_order_date", "last_order_date"]
_BASELINE_NAMES = ["customer_id", "baseline_events", "baseline_last_ts"]


def _months(month: date) -> dict[str, date]:
    starts = window_starts(month)
    return {**{k: v for k, v in starts.items() if k != "m0"}, "m0": month,
            "m6": add_months(month, -BASELINE_MONTHS)}


def _sql(sql: str, scope: str | None) -> str:
    """`scope`: what follows `customer_id IN` to restrict to some customers (":ids" or a
    parenthesised subquery), or None for everyone."""
    restriction = f"AND customer_id IN {scope}" if scope else ""
    return sql.replace("{scope_m}", restriction.replace("customer_id", "m.customer_id", 1)).replace(
        "{scope}", restriction)


def _execute(connection: Connection, sql: str, month: date, customer_ids: list[str] | None = None):
    """Run `sql` with the window boundaries of `month` (as :month too) and :ids bound."""
    return execute_named(connection, sql, _values(month), Date, customer_ids)


def _values(month: date) -> dict:
    """The window boundaries of `month`, and `month` itself."""
    return {**_months(month), "month": month}


def compute(connection: Connection, month: date, customer_ids: list[str] | None = None) -> pd.DataFrame:
    """The window totals straight from the monthly roll-ups: customer_id + WINDOW_COLUMNS,
    one row per customer with orders or baseline activity before `month`."""
    scope = ":ids" if customer_ids is not None else None
    frames = []
    for sql, names in ((_ORDERS_SQL, _ORDER_NAMES), (_BASELINE_SQL, _BASELINE_NAMES)):
        frames.append(query_frame(connection, _sql(sql, scope), _values(month), names,
                                  numeric=tuple(n for n in names if n in NUMERIC), type_=Date,
                                  customer_ids=customer_ids).set_index("customer_id"))
    orders, baseline = frames
    frame = orders.join(baseline, how="outer")
    for column in NUMERIC:
        frame[column] = frame[column].fillna(0.0)
    frame = frame.rename_axis("customer_id").reset_index()[["customer_id", *WINDOW_COLUMNS]]
    return frame.astype({"customer_id": object})  # as read from the kept rows (storage.sql.KEY_COLUMNS)


def is_kept(connection: Connection, month: date) -> bool:
    return len(query_frame(connection, "SELECT month FROM window_months WHERE month = :month", {"month": month},
                           ["month"], type_=Date)) > 0


def read_month(connection: Connection, month: date, customer_ids: list[str] | None = None) -> pd.DataFrame:
    """customer_id + WINDOW_COLUMNS for `month`: the kept rows when the month is kept,
    else computed from the roll-ups."""
    if not is_kept(connection, month):
        return compute(connection, month, customer_ids)
    scope = "AND customer_id IN :ids" if customer_ids is not None else ""
    return query_frame(connection, f"SELECT customer_id, {', '.join(WINDOW_COLUMNS)} FROM customer_windows "
                                   f"WHERE month = :month {scope}", {"month": month}, ["customer_id", *WINDOW_COLUMNS],
                       numeric=NUMERIC, type_=Date, customer_ids=customer_ids)


_INSERT_COLUMNS = ", ".join(["month", "customer_id", *ORDER_SUMS, "first_order_date", "last_order_date"])


def _insert(connection: Connection, month: date, scope: str | None) -> None:
    """Rows of the customers in scope (all when None) for `month`, computed in the database."""
    _execute(connection, f"INSERT INTO customer_windows ({_INSERT_COLUMNS}) "
                         f"SELECT :month, o.* FROM ({_sql(_ORDERS_SQL, scope)}) o", month)
    # "WHERE true" keeps SQLite from reading ON CONFLICT as part of the SELECT.
    _execute(connection, "INSERT INTO customer_windows (month, customer_id, baseline_events, baseline_last_ts) "
                         f"SELECT :month, b.* FROM ({_sql(_BASELINE_SQL, scope)}) b WHERE true "
                         "ON CONFLICT (month, customer_id) DO UPDATE SET baseline_events = excluded.baseline_events,"
                         " baseline_last_ts = excluded.baseline_last_ts", month)


def build_month(connection: Connection, month: date) -> None:
    """Every customer's rows for `month`, replacing any, and the month marked kept; months
    beyond the newest KEPT_MONTHS are dropped. Inside the caller's write transaction."""
    month_bind = bindparam("month", type_=Date)
    connection.execute(text("DELETE FROM customer_windows WHERE month = :month").bindparams(month_bind),
                       {"month": month})
    connection.execute(text("DELETE FROM window_months WHERE month = :month").bindparams(month_bind),
                       {"month": month})
    _insert(connection, month, None)
    connection.execute(text("INSERT INTO window_months (month, built_at) VALUES (:month, :now)").bindparams(
        month_bind), {"month": month, "now": datetime.now(timezone.utc)})
    for old in kept_months(connection)[KEPT_MONTHS:]:
        connection.execute(text("DELETE FROM customer_windows WHERE month = :month").bindparams(month_bind),
                           {"month": old})
        connection.execute(text("DELETE FROM window_months WHERE month = :month").bindparams(month_bind),
                           {"month": old})


def refresh_touched(connection: Connection) -> None:
    """Recompute, for every kept month, the rows of the customers in the import's
    `touched_customers` table (after their monthly roll-ups were rebuilt)."""
    scope = "(SELECT customer_id FROM touched_customers)"
    for month in kept_months(connection):
        connection.execute(text(f"DELETE FROM customer_windows WHERE month = :month AND customer_id IN {scope}")
                           .bindparams(bindparam("month", type_=Date)), {"month": month})
        _insert(connection, month, scope)


def forget_all(connection: Connection) -> None:
    """Drop every kept month (after the roll-ups were rebuilt for everyone)."""
    connection.execute(text("DELETE FROM customer_windows"))
    connection.execute(text("DELETE FROM window_months"))


def kept_months(connection: Connection) -> list[date]:
    """Newest first."""
    months = connection.execute(text("SELECT month FROM window_months ORDER BY month DESC")).scalars()
    return [as_date(m) for m in months]


def ensure_month(engine: Engine, month: date) -> bool:
    """Build `month` unless it is kept already. True when it was built now."""
    with engine.connect() as connection:
        if is_kept(connection, month):
            return False
    with write_transaction(engine) as connection:
        if is_kept(connection, month):  # another process built it meanwhile
            return False
        build_month(connection, month)
    return True
