"""A full rescore against the database: snapshot, tier history and current tiers in one
transaction; export; as-of dates; a crash leaves the previous state."""

from __future__ import annotations

import csv
from datetime import date, timedelta

import pytest
from sqlalchemy import func, select

from bot.config import load_config
from bot.rescore import NothingToScore, full_rescore
from storage import scores as store
from bot.export import NoScoreRun, export_scores
from storage.importer import run_import
from storage.models import Customer, ScoreReasonChunk, ScoreRun, ScoreSnapshot, TierChange
from tests.company import AS_OF, ORDERS_HEADER
from tests.conftest import write_csv


def _tiers(engine) -> dict[str, str]:
    with engine.connect() as connection:
        return dict(connection.execute(select(Customer.customer_id, Customer.tier)).all())


def _history(engine) -> list[tuple]:
    with engine.connect() as connection:
        return [tuple(r) for r in connection.execute(
            select(TierChange.customer_id, TierChange.from_tier, TierChange.to_tier, TierChange.run_id)
            .order_by(TierChange.id)).all()]


def test_run_writes_snapshot_tiers_and_first_assignments(company, config):
    outcome, _ = full_rescore(company, config, AS_OF)

    tiers = _tiers(company)
    assert (tiers["STAR1"], tiers["COW1"], tiers["QM1"], tiers["DOG1"]) == ("star", "cash_cow", "question_mark", "dog")
    with company.connect() as connection:
        snapshots = connection.execute(select(func.count()).select_from(ScoreSnapshot)
                                       .where(ScoreSnapshot.run_id == outcome.run_id)).scalar_one()
        run = connection.execute(select(ScoreRun.status, ScoreRun.customers, ScoreRun.config_hash)).one()
    assert snapshots == 28 == outcome.customers
    assert tuple(run) == ("succeeded", 28, config.scoring_hash())
    assert outcome.first_assignments == 28 and outcome.tier_changes == 0
    with company.connect() as connection:
        first_reasons = connection.execute(select(TierChange.reasons)).scalars().all()
    assert first_reasons == [[]] * 28  # a first assignment is explained by the run itself
    assert sum(t["customers"] for t in outcome.summary["tiers"].values()) == 28
    assert outcome.summary["tiers"]["star"]["revenue_share"] > 0.5


def test_rescoring_unchanged_data_changes_no_tier(company, config):
    full_rescore(company, config, AS_OF)
    history = _history(company)
    outcome, _ = full_rescore(company, config, AS_OF)
    assert outcome.tier_changes == 0 and _history(company) == history


def test_new_orders_move_a_customer_and_history_says_from_where(company, config, tmp_path):
    full_rescore(company, config, AS_OF)
    big = [[f"QM1-BIG{i}", "QM1", f"2026-{m:02d}-10", "2500000.00", "700000.00", "mes", "upsell"]
           for i, m in enumerate(range(1, 11))]
    run_import(company, [write_csv(tmp_path / "more" / "orders.csv", ORDERS_HEADER, big)])

    outcome, _ = full_rescore(company, config, AS_OF)

    assert _tiers(company)["QM1"] == "star"
    moves = [h for h in _history(company) if h[3] == outcome.run_id]
    assert ("QM1", "question_mark", "star", outcome.run_id) in moves
    assert outcome.tier_changes == len(moves)


def test_as_of_ignores_orders_after_that_day(company, config):
    early, _ = full_rescore(company, config, date(2024, 1, 31))
    late, _ = full_rescore(company, config, AS_OF)
    assert early.summary["revenue_12m"] < late.summary["revenue_12m"]
    # On 2024-01-31 the question mark and the dog had not ordered yet.
    with company.connect() as connection:
        qm_revenue = connection.execute(select(ScoreSnapshot.revenue_12m).where(
            ScoreSnapshot.run_id == early.run_id, ScoreSnapshot.customer_id == "QM1")).scalar_one()
    assert qm_revenue == 0.0


def test_crash_while_writing_leaves_previous_state_and_a_failed_run(company, config, monkeypatch):
    full_rescore(company, config, AS_OF)
    tiers, history = _tiers(company), _history(company)

    def explode(*_args, **_kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(store, "_prune_snapshots", explode)
    with pytest.raises(RuntimeError):
        full_rescore(company, config, date(2024, 1, 31))

    assert _tiers(company) == tiers and _history(company) == history
    with company.connect() as connection:
        runs = connection.execute(select(ScoreRun.status, ScoreRun.error).order_by(ScoreRun.id)).all()
        orphaned = connection.execute(select(func.count()).select_from(ScoreSnapshot)
                                      .where(ScoreSnapshot.run_id == 2)).scalar_one()
    assert [r.status for r in runs] == ["succeeded", "failed"]
    assert "disk full" in runs[1].error and orphaned == 0


def test_old_snapshots_are_pruned_beyond_retention(company, database_url):
    config = load_config(None, environ={"TIERBOT_DATABASE_URL": database_url})
    config = config.model_copy(update={"retention": config.retention.model_copy(update={"score_runs": 2})})
    for _ in range(3):
        full_rescore(company, config, AS_OF)
    with company.connect() as connection:
        kept = connection.execute(select(ScoreSnapshot.run_id).distinct().order_by(ScoreSnapshot.run_id)).scalars().all()
        chunks = connection.execute(select(ScoreReasonChunk.run_id).distinct()
                                    .order_by(ScoreReasonChunk.run_id)).scalars().all()
    assert kept == [2, 3]
    assert chunks == [2, 3]  # the reasons of a pruned run go with it


def test_empty_database_has_nothing_to_score(engine, config):
    with pytest.raises(NothingToScore):
        full_rescore(engine, config, AS_OF)


def test_export_has_one_row_per_customer_with_reasons(company, config, tmp_path):
    with pytest.raises(NoScoreRun):
        export_scores(company, tmp_path / "none.csv")
    full_rescore(company, config, AS_OF)
    rows = export_scores(company, tmp_path / "scores.csv", "zh", 8)
    with open(tmp_path / "scores.csv", encoding="utf-8-sig") as handle:
        table = list(csv.DictReader(handle))
    assert rows == len(table) == 28
    assert {"customer_id", "name", "owner_userid", "tier", "current_value", "potential_value",
            "reasons"} <= set(table[0])
    star = next(r for r in table if r["customer_id"] == "STAR1")
    assert (star["tier"], star["tier_name"], star["owner_userid"]) == ("star", "明星客户", "rep_a")
    assert star["reasons"].startswith("三年加权营收 ¥")
    assert float(star["current_value"]) > 90


def test_a_rescore_stopped_after_its_import_is_caught_up_later(company, config, tmp_path):
    """The import commits the orders and queues their customer; a process stopped before the
    incremental rescore leaves it queued, and the service's sweep (rescore_pending) does it."""
    from sqlalchemy import select

    from bot.rescore import rescore_pending
    from storage.models import RescorePending

    full_rescore(company, config, AS_OF)
    assert rescore_pending(company, config, AS_OF) is None  # nothing waiting
    write_csv(tmp_path / "more" / "orders.csv", ORDERS_HEADER,
              [[f"QM1-BIG{i}", "QM1", (AS_OF - timedelta(days=10 * i)).isoformat(), "3000000", "800000", "mes",
                "upsell"] for i in range(1, 8)])
    imported = run_import(company, [tmp_path / "more"])
    assert imported.touched == ["QM1"]
    with company.connect() as connection:
        assert list(connection.execute(select(RescorePending.customer_id)).scalars()) == ["QM1"]
        before = connection.execute(select(Customer.tier).where(Customer.customer_id == "QM1")).scalar_one()
    # … and here the process stops: no incremental rescore was written.
    outcome = rescore_pending(company, config, AS_OF)
    assert outcome is not None and outcome.customers == 1 and outcome.tier_changes == 1
    with company.connect() as connection:
        after = connection.execute(select(Customer.tier).where(Customer.customer_id == "QM1")).scalar_one()
        assert connection.execute(select(RescorePending.customer_id)).all() == []
    assert (before, after) == ("question_mark", "star")
    # A full run takes whatever still waits.
    run_import(company, [], records={"orders": [{"order_id": "COW1-X", "customer_id": "COW1",
                                                 "order_date": AS_OF.isoformat(), "amount": 10}]})
    full_rescore(company, config, AS_OF)
    with company.connect() as connection:
        assert connection.execute(select(RescorePending.customer_id)).all() == []
