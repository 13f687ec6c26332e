"""The aggregates scoring reads from the database equal the same figures computed from
the raw rows — at an as-of date in the middle of a month, so the partial month counts."""

from __future__ import annotations

from datetime import date, timedelta

import pandas as pd
import pytest

from scoring.features import window_starts
from scoring.generator import generate_company
from storage import scores as store
from storage.importer import run_import

AS_OF = date(2026, 6, 17)


@pytest.fixture
def company(engine, tmp_path):
    folder = tmp_path / "co"
    generate_company(folder, customers=300, seed=5, as_of=date(2026, 11, 20), orders_per_customer=15,
                     activities_per_customer=40)
    run_import(engine, [folder])
    return folder


def test_order_aggregates_match_raw_orders(engine, company):
    with engine.connect() as connection:
        found = store.load_aggregates(connection, AS_OF).set_index("customer_id").sort_index()
    orders = pd.read_csv(company / "orders.csv", parse_dates=["order_date"])
    orders = orders[orders["order_date"] <= pd.Timestamp(AS_OF)]
    months = window_starts(AS_OF)
    last_12 = orders[orders["order_date"] >= pd.Timestamp(months["m12"])]
    days = orders.groupby(["customer_id", "order_date"])["amount"].sum().reset_index()
    days = days[days["amount"] > 0]  # purchase days
    first_day = days.sort_values("order_date").groupby("customer_id").first()
    expected = pd.DataFrame({
        "revenue_12m": last_12.groupby("customer_id")["amount"].sum(),
        "lifetime_revenue": orders.groupby("customer_id")["amount"].sum(),
        "purchase_days": days.groupby("customer_id").size().astype(float),
        "first_day_revenue": first_day["amount"],
        "first_order_date": days.groupby("customer_id")["order_date"].min(),
        "last_order_date": days.groupby("customer_id")["order_date"].max(),
    }).sort_index()
    assert list(found.index) == list(expected.index)
    for column in ("revenue_12m", "lifetime_revenue", "purchase_days", "first_day_revenue"):
        pd.testing.assert_series_equal(found[column].fillna(0.0), expected[column].fillna(0.0), check_names=False,
                                       atol=0.01)
    for column in ("first_order_date", "last_order_date"):
        assert [str(d)[:10] for d in found[column]] == [str(d)[:10] for d in expected[column]]


def test_activity_windows_match_raw_activities(engine, company):
    with engine.connect() as connection:
        found = store.load_activity(connection, AS_OF).set_index("customer_id").sort_index()
    activities = pd.read_csv(company / "activities.csv", parse_dates=["ts"])
    until = pd.Timestamp(AS_OF + timedelta(days=1))
    recent = activities[(activities["ts"] >= until - pd.Timedelta(days=30)) & (activities["ts"] < until)]
    complaints = activities[(activities["kind"] == "complaint") & (activities["ts"] < until)]
    last_90 = complaints[complaints["ts"] >= until - pd.Timedelta(days=90)]
    prev_90 = complaints[(complaints["ts"] < until - pd.Timedelta(days=90))
                         & (complaints["ts"] >= until - pd.Timedelta(days=180))]
    act_30d = recent[recent["kind"] != "complaint"].groupby("customer_id").size()
    assert found["act_30d"].reindex(act_30d.index).tolist() == act_30d.astype(float).tolist()
    assert found["act_30d"].sum() == act_30d.sum()
    assert found["complaints_90d"].sum() == len(last_90) and found["complaints_prev_90d"].sum() == len(prev_90)
    baseline = activities[(activities["kind"] != "complaint") & (activities["ts"] >= pd.Timestamp(2025, 12, 1))
                          & (activities["ts"] < pd.Timestamp(2026, 6, 1))]
    assert found["baseline_events_6m"].sum() == len(baseline)


def test_the_activity_baseline_ends_where_the_last_30_days_begin(engine, company):
    # AS_OF is 17 June: the last 30 days begin on 19 May, inside the baseline's months.
    from scoring.features import baseline_days, build_features

    with engine.connect() as connection:
        activity = store.load_activity(connection, AS_OF)
        aggregates = store.load_aggregates(connection, AS_OF)
        customers = store.load_customers(connection)
    features = build_features(customers, aggregates, AS_OF, activity)
    activities = pd.read_csv(company / "activities.csv", parse_dates=["ts"])
    before = activities[(activities["kind"] != "complaint") & (activities["ts"] >= pd.Timestamp(2025, 12, 1))
                        & (activities["ts"] < pd.Timestamp(2026, 5, 19))]
    assert baseline_days(AS_OF) == 169
    expected = (before.groupby("customer_id").size() / 169 * 30).reindex(features.index, fill_value=0.0)
    pd.testing.assert_series_equal(features["act_baseline_30d"], expected.astype(float), check_names=False)
    # On the last day of a 30-day month the last 30 days lie within it: the six months are whole.
    assert baseline_days(date(2026, 6, 30)) == (date(2026, 6, 1) - date(2025, 12, 1)).days


def test_a_refund_is_no_purchase_but_counts_against_revenue(engine, tmp_path):
    """A red-letter reversal (红冲) two years after the sale must not make a lost customer a
    recent repeat buyer, whether it falls in a whole month before the as-of month or in it."""
    from tests.company import ORDERS_HEADER, USERS, USERS_HEADER
    from tests.conftest import write_csv

    from scoring.rfm import rfm_measures

    folder = tmp_path / "refunds"
    write_csv(folder / "users.csv", USERS_HEADER, USERS)
    write_csv(folder / "customers.csv", ["customer_id", "name", "owner_userid"],
              [[c, c, "rep_a"] for c in ("LOST", "LATE", "NETTED", "ONLYREFUND")])
    write_csv(folder / "orders.csv", ORDERS_HEADER[:4], [
        ["L1", "LOST", "2024-03-05", "100000"], ["L2", "LOST", "2024-09-01", "20000"],
        ["L3", "LOST", "2026-05-20", "-100000"],  # a whole month of refunds only
        ["T1", "LATE", "2024-03-05", "100000"], ["T2", "LATE", "2026-06-03", "-30000"],  # in the as-of month
        ["N1", "NETTED", "2025-01-10", "50000"], ["N2", "NETTED", "2025-02-10", "8000"],
        ["N3", "NETTED", "2025-02-10", "-8000"],  # the day nets to 0: no purchase
        ["R1", "ONLYREFUND", "2026-04-02", "-500"]])
    run_import(engine, [folder], as_of=date(2026, 6, 20))
    with engine.connect() as connection:
        found = store.load_aggregates(connection, AS_OF).set_index("customer_id").sort_index()

    assert found.loc["LOST", "purchase_days"] == 2 and found.loc["LOST", "lifetime_revenue"] == 20000
    assert str(found.loc["LOST", "last_order_date"])[:10] == "2024-09-01"
    assert found.loc["LATE", "purchase_days"] == 1 and found.loc["LATE", "revenue_12m"] == -30000
    assert str(found.loc["LATE", "last_order_date"])[:10] == "2024-03-05"
    assert found.loc["NETTED", "purchase_days"] == 1 and found.loc["NETTED", "first_day_revenue"] == 50000
    assert found.loc["ONLYREFUND", "purchase_days"] == 0 and pd.isna(found.loc["ONLYREFUND", "first_order_date"])
    # A refund row is no order, in a whole month or in the as-of month; money it still is.
    assert found["lifetime_orders"].to_dict() == {"LATE": 1, "LOST": 2, "NETTED": 2, "ONLYREFUND": 0}
    assert found.loc["LATE", "orders_12m"] == 0 and found.loc["ONLYREFUND", "lifetime_revenue"] == -500

    found["first_order_date"] = pd.to_datetime(found["first_order_date"])
    found["last_order_date"] = pd.to_datetime(found["last_order_date"])
    measures = rfm_measures(found, AS_OF)
    # LOST: one repeat purchase worth 20,000 before the refund, which takes it to 0, not below.
    assert measures.loc["LOST"].tolist() == [1.0, 180.0, (AS_OF - date(2024, 3, 5)).days, 0.0]
    assert measures.loc["LATE", "frequency"] == 0 and measures.loc["LATE", "recency"] == 0
    assert measures.loc["ONLYREFUND"].isna().all()
