"""Customer features: one row per customer, from its attributes and its order aggregates.

Pure: DataFrames in, a DataFrame out. The database layer hands over per-customer
aggregates (storage.features), never raw orders.

Windows are calendar-aligned: "the last 12 months" at an as-of date in month M are
the 11 whole months before M plus M up to and including the as-of day; "12–24" and
"24–36" are the 12 whole months before that, and the 12 before those.
"""

from __future__ import annotations

from datetime import date, timedelta

import numpy as np
import pandas as pd

# Columns the aggregates frame carries (zeros for a customer with no orders).
AGGREGATE_COLUMNS = (
    "revenue_12m",
    "cost_12m",
    "repeat_revenue_12m",
    "orders_12m",
    "revenue_12_24m",
    "revenue_24_36m",
    "lifetime_revenue",
    "lifetime_orders",
    "purchase_days",
    "first_day_revenue",
    # Revenue of each of the last whole months before the as-of month (m1 = the one before).
    "revenue_m1",
    "revenue_m2",
    "revenue_m3",
    "revenue_m4",
)
RECENT_MONTHS = 4

# Columns of the activity frame (customers without activity may be absent).
# baseline_events_6m: activities in the six whole months before the as-of month;
# act_30d_before_month: those of the last 30 days that fall in those months. The baseline
# leaves them out (scoring.churn compares the last 30 days with what came before them).
ACTIVITY_COLUMNS = ("act_30d", "baseline_events_6m", "act_30d_before_month", "complaints_90d", "complaints_prev_90d",
                    "last_activity_ts")
BASELINE_MONTHS = 6

CUSTOMER_COLUMNS = (
    "customer_id",
    "name",
    "owner_userid",
    "industry",
    "employees",
    "customer_type",
    "is_listed",
    "is_benchmark",
    "is_partner",
    "digital_maturity",
    "expansion_plan",
    "modules_owned",
    "created_at",
)


def month_start(day: date) -> date:
    return day.replace(day=1)


def add_months(day: date, months: int) -> date:
    index = day.year * 12 + (day.month - 1) + months
    return date(index // 12, index % 12 + 1, 1)


def window_starts(as_of: date) -> dict[str, date]:
    """First day of each window, see the module docstring."""
    current = month_start(as_of)
    return {"m0": current, "m12": add_months(current, -11), "m24": add_months(current, -23),
            "m36": add_months(current, -35),
            **{f"m{k}": add_months(current, -k) for k in range(1, RECENT_MONTHS + 1)}}


def baseline_days(as_of: date) -> int:
    """Days of the activity baseline: from the first of the six whole months before the
    as-of month up to the last 30 days (or the as-of month, when those start in it)."""
    current = month_start(as_of)
    recent_from = as_of + timedelta(days=1) - timedelta(days=30)
    return (min(current, recent_from) - add_months(current, -BASELINE_MONTHS)).days


def build_features(customers: pd.DataFrame, aggregates: pd.DataFrame, as_of: date,
                   activity: pd.DataFrame | None = None) -> pd.DataFrame:
    """Join attributes, order aggregates and activity windows; derive what the models use.

    `customers`: CUSTOMER_COLUMNS. `aggregates`: customer_id, AGGREGATE_COLUMNS,
    first_order_date, last_order_date. `activity`: customer_id, ACTIVITY_COLUMNS.
    Customers absent from either count as having none. Returns one row per customer,
    indexed by customer_id, sorted by it.
    """
    frame = customers.set_index("customer_id").sort_index()
    agg = aggregates.set_index("customer_id")
    frame = frame.join(agg, how="left")
    if activity is None:
        activity = pd.DataFrame(columns=["customer_id", *ACTIVITY_COLUMNS])
    frame = frame.join(activity.set_index("customer_id"), how="left")
    for column in ACTIVITY_COLUMNS[:-1]:
        values = frame[column] if column in frame else pd.Series(0.0, index=frame.index)
        frame[column] = pd.to_numeric(values, errors="coerce").fillna(0.0).astype(float)
    frame["last_activity_ts"] = pd.to_datetime(frame["last_activity_ts"], errors="coerce")
    before_recent = (frame["baseline_events_6m"] - frame["act_30d_before_month"]).clip(lower=0.0)
    frame["act_baseline_30d"] = before_recent / baseline_days(as_of) * 30
    for column in AGGREGATE_COLUMNS:
        values = frame[column] if column in frame else pd.Series(0.0, index=frame.index)
        frame[column] = pd.to_numeric(values, errors="coerce").fillna(0.0).astype(float)
    for column in ("is_listed", "is_benchmark", "is_partner"):
        frame[column] = frame[column].fillna(False).astype(bool)
    frame["employees"] = pd.to_numeric(frame["employees"], errors="coerce")
    frame["digital_maturity"] = pd.to_numeric(frame["digital_maturity"], errors="coerce")
    for column in ("first_order_date", "last_order_date", "created_at"):
        frame[column] = pd.to_datetime(frame[column], errors="coerce")

    revenue = frame["revenue_12m"]
    frame["gross_margin_12m"] = revenue - frame["cost_12m"]
    has_revenue = revenue > 0
    frame["margin_rate"] = np.where(has_revenue, frame["gross_margin_12m"] / revenue.where(has_revenue, 1), np.nan)
    frame["repurchase_upsell"] = np.where(has_revenue, frame["repeat_revenue_12m"] / revenue.where(has_revenue, 1), 0.0)
    frame["repurchase_upsell"] = frame["repurchase_upsell"].clip(0, 1)
    # Contract value over three years damps a single exceptional year (seed 004).
    frame["contract_value"] = revenue + frame["revenue_12_24m"] + frame["revenue_24_36m"]
    prior = frame["revenue_12_24m"]
    frame["growth"] = np.where(prior > 0, revenue / prior.where(prior > 0, 1) - 1, np.nan)
    as_of_stamp = pd.Timestamp(as_of)
    frame["days_since_last_order"] = (as_of_stamp - frame["last_order_date"]).dt.days
    frame["days_since_first_order"] = (as_of_stamp - frame["first_order_date"]).dt.days
    frame["revenue_rising_months"] = rising_months(frame)
    frame["modules_owned"] = frame["modules_owned"].fillna("").astype(str)
    return frame


def rising_months(frame: pd.DataFrame, rise: float = 0.2) -> np.ndarray:
    """How many of the last whole months running each beat the month before by more than
    `rise` (seed 000: "revenue +20% three months running → sales director visit")."""
    months = [frame[f"revenue_m{k}"].to_numpy(dtype=float) for k in range(1, RECENT_MONTHS + 1)]
    running = np.zeros(len(frame), dtype=float)
    still_rising = np.ones(len(frame), dtype=bool)
    for later, earlier in zip(months, months[1:]):
        still_rising &= (later > 0) & (later > earlier * (1 + rise))
        running += still_rising
    return running


def modules_owned_count(modules: pd.Series, catalogue: tuple[str, ...]) -> pd.Series:
    """How many catalogue modules each customer owns ('|'-separated lists)."""
    wanted = set(catalogue)
    # A set intersection per distinct list, not per customer: few lists recur across a
    # million customers (split/explode/groupby costs seconds).
    codes, lists = pd.factorize(modules, use_na_sentinel=True)
    per_list = np.array([len(wanted.intersection(value.split("|"))) if isinstance(value, str) else 0
                         for value in lists] + [0], dtype=int)
    return pd.Series(per_list[codes], index=modules.index, dtype=int)


def day_numbers(column: pd.Series) -> np.ndarray:
    """Calendar days since the epoch as floats (NaN for NaT); time of day and zone dropped."""
    if not pd.api.types.is_datetime64_any_dtype(column):
        column = pd.to_datetime(column, errors="coerce")
    if getattr(column.dt, "tz", None) is not None:
        column = column.dt.tz_localize(None)
    days = column.to_numpy().astype("datetime64[D]")
    numbers = days.astype("int64").astype(float)
    numbers[np.isnat(days)] = np.nan
    return numbers
