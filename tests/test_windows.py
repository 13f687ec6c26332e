"""Whole-month totals kept per customer (storage.windows): built once a month, refreshed
by every import in its own transaction, never different from computing them afresh."""

from __future__ import annotations

from datetime import date, datetime, timedelta

import pandas as pd
import pytest
from sqlalchemy import select

from bot.rescore import full_rescore
from storage import windows
from storage.importer import run_import
from storage.models import WindowMonth
from tests.company import AS_OF, ORDERS_HEADER, write_company
from tests.conftest import write_csv

MONTH = AS_OF.replace(day=1)
ACTIVITIES_HEADER = ["activity_id", "customer_id", "ts", "kind", "detail"]


def _kept_and_fresh(engine, month: date) -> tuple[pd.DataFrame, pd.DataFrame]:
    with engine.connect() as connection:
        assert windows.is_kept(connection, month)
        kept = windows.read_month(connection, month)
        fresh = windows.compute(connection, month)

    def comparable(frame: pd.DataFrame) -> pd.DataFrame:
        frame = frame.set_index("customer_id").sort_index()
        for column in ("first_order_date", "last_order_date", "baseline_last_ts"):
            frame[column] = pd.to_datetime(frame[column]).astype("datetime64[us]")
        return frame

    return comparable(kept), comparable(fresh)


def test_first_run_of_a_month_builds_its_totals_once(company, config):
    with company.connect() as connection:
        assert not windows.is_kept(connection, MONTH)
    full_rescore(company, config, AS_OF)
    with company.connect() as connection:
        built_at = connection.execute(select(WindowMonth.built_at).where(WindowMonth.month == MONTH)).scalar_one()
    full_rescore(company, config, AS_OF)
    with company.connect() as connection:
        assert connection.execute(select(WindowMonth.built_at)).scalars().all() == [built_at]
    kept, fresh = _kept_and_fresh(company, MONTH)
    pd.testing.assert_frame_equal(kept, fresh)
    assert kept.loc["STAR1", "revenue_12m"] > 0


def test_an_import_refreshes_the_totals_of_the_customers_it_touches(company, config, tmp_path):
    full_rescore(company, config, AS_OF)
    before, _ = _kept_and_fresh(company, MONTH)
    # Orders in whole months before the as-of month, for a customer with history and one
    # with none, and activity in the baseline months.
    orders = [["QM1-LATE1", "QM1", "2026-09-15", "900000.00", "100000.00", "mes", "upsell"],
              ["QM1-LATE2", "QM1", "2026-10-03", "50000.00", "", "mes", "renewal"]]
    activities = [["A-LATE1", "DOG1", "2026-08-02T10:00:00", "meeting", ""],
                  ["A-LATE2", "DOG1", "2026-10-30T10:00:00", "complaint", "slow"]]
    run_import(company, [write_csv(tmp_path / "more" / "orders.csv", ORDERS_HEADER, orders),
                         write_csv(tmp_path / "more" / "activities.csv", ACTIVITIES_HEADER, activities)])

    kept, fresh = _kept_and_fresh(company, MONTH)
    pd.testing.assert_frame_equal(kept, fresh)
    assert kept.loc["QM1", "revenue_12m"] == pytest.approx(before.loc["QM1", "revenue_12m"] + 950000.0)
    assert kept.loc["QM1", "revenue_m1"] == pytest.approx(before.loc["QM1", "revenue_m1"] + 50000.0)
    dog_before = before.loc["DOG1", "baseline_events"] if "DOG1" in before.index else 0
    assert kept.loc["DOG1", "baseline_events"] == dog_before + 1  # the complaint is not activity
    assert kept.loc["DOG1", "baseline_last_ts"] == pd.Timestamp("2026-10-30T10:00:00")
    untouched = before.index.difference(["QM1", "DOG1"])
    pd.testing.assert_frame_equal(kept.loc[untouched], before.loc[untouched])


def test_a_failed_import_leaves_the_totals_as_they_were(company, config, tmp_path):
    full_rescore(company, config, AS_OF)
    before, _ = _kept_and_fresh(company, MONTH)
    orders = [["QM1-LATE1", "QM1", "2026-09-15", "900000.00", "", "mes", "upsell"],
              ["BAD-1", "NOBODY", "2026-09-15", "1.00", "", "mes", "upsell"]]
    with pytest.raises(Exception):
        run_import(company, [write_csv(tmp_path / "bad" / "orders.csv", ORDERS_HEADER, orders)])
    after, _ = _kept_and_fresh(company, MONTH)
    pd.testing.assert_frame_equal(after, before)


def test_a_bulk_import_builds_this_months_totals(engine, tmp_path):
    run_import(engine, [write_company(tmp_path / "crm")], touched_limit=5)
    this_month = datetime.now().date().replace(day=1)
    with engine.connect() as connection:
        months = {m if isinstance(m, date) else date.fromisoformat(str(m)[:10])
                  for m in connection.execute(select(WindowMonth.month)).scalars()}
    # Built for the import's day in Asia/Shanghai, which is today or tomorrow here.
    assert months & {this_month, (datetime.now() + timedelta(days=1)).date().replace(day=1)}


def test_only_the_newest_two_months_are_kept(company, config):
    for as_of in (date(2026, 8, 20), date(2026, 9, 20), AS_OF):
        full_rescore(company, config, as_of)
    with company.connect() as connection:
        assert windows.kept_months(connection) == [MONTH, date(2026, 9, 1)]
