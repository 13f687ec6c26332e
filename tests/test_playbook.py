"""The playbook on its own: task rules (one open task per rule and customer, cooldown,
assignment), churn alerts (once per rise, batched per manager per hour), and the
revenue-rising feature behind "Question Mark up 20% three months running"."""

from __future__ import annotations

import sys
from datetime import datetime, timedelta, timezone

import numpy as np
import pandas as pd
import pytest
from sqlalchemy import select, update

from bot.config import load_config
from notifications.messages import message_for
from notifications.playbook import PlaybookSettings, apply_playbook, start_playbook
from scoring.features import rising_months
from storage.importer import run_import
from storage.models import ChurnAlertState, FollowUpTask, OutboxMessage
from tests.company import write_company
from tests.conftest import MORNING, state_of

CUSTOMERS = ["STAR1", "COW1", "QM1", "DOG1"]


@pytest.fixture
def settings(engine, database_url, tmp_path):
    run_import(engine, [write_company(tmp_path / "crm")])
    return PlaybookSettings.from_config(load_config(None, environ={"TIERBOT_DATABASE_URL": database_url}))


def frames(tiers: dict[str, str], churn: dict[str, float] | None = None, rising: dict[str, float] | None = None):
    index = pd.Index(CUSTOMERS, name="customer_id")
    features = pd.DataFrame({
        "name": ["星辰半导体", "老牌纺织", "新锐新能源", "街角建材"],
        "owner_userid": ["rep_a", "rep_a", "rep_b", "rep_b"],
        "revenue_12m": [12e6, 6e6, 1e5, 2e4], "lifetime_revenue": [30e6, 18e6, 1e5, 5e4],
        "act_30d": [10.0, 10.0, 1.0, 0.0], "act_baseline_30d": [10.0, 10.0, 1.0, 0.0],
        "purchase_days": [36.0, 36.0, 5.0, 3.0], "days_since_first_order": [1000.0, 1000.0, 200.0, 900.0],
        "revenue_rising_months": [0.0, 0.0, 0.0, 0.0],
    }, index=index)
    for customer, months in (rising or {}).items():
        features.loc[customer, "revenue_rising_months"] = months
    scored = pd.DataFrame({
        "tier": [tiers.get(c, "dog") for c in CUSTOMERS],
        "churn_score": [(churn or {}).get(c, 10.0) for c in CUSTOMERS],
        "reasons": [[{"factor": "revenue", "value": 1e6, "percentile": 90.0}]] * 4,
        "churn_reasons": [[{"factor": "overdue", "value": 2.5}]] * 4,
    }, index=index)
    return features, scored


# How run_playbook runs it: every test here runs both ways, and must see the same.
IN_A_THREAD = False


@pytest.fixture(autouse=True, params=[False, True], ids=["inline", "planned-in-a-thread"])
def playbook_mode(request, monkeypatch):
    monkeypatch.setattr(sys.modules[__name__], "IN_A_THREAD", request.param)


def run_playbook(engine, settings, features, scored, previous, now, run_id=None):
    """The playbook as a test's run would have it: inline (apply_playbook), or as a full
    run does (start_playbook works out tasks and alerts in a thread; written afterwards)."""
    with engine.begin() as connection:
        if run_id is None:
            run_id = connection.exec_driver_sql(
                "INSERT INTO score_runs (started_at, as_of, status, kind, config_hash) "
                "VALUES ('2026-11-23 02:00:00', '2026-11-23', 'succeeded', 'incremental', 'x') RETURNING id").scalar()
        run = {"history_run_id": run_id, "features": features, "scored": scored,
               "previous_tier": pd.Series(previous), "now": now}
        if not IN_A_THREAD:
            return apply_playbook(connection, settings, **run)
        return start_playbook(connection, settings, background=True, **run)(connection)


def tasks(engine) -> list[tuple]:
    with engine.connect() as connection:
        return [tuple(row) for row in connection.execute(
            select(FollowUpTask.rule, FollowUpTask.customer_id, FollowUpTask.owner_userid, FollowUpTask.status)
            .order_by(FollowUpTask.id))]


def test_rising_months_counts_consecutive_rises_over_20_percent():
    frame = pd.DataFrame({"revenue_m1": [150, 150, 150, 0], "revenue_m2": [130, 120, 100, 0],
                          "revenue_m3": [99, 110, 80, 0], "revenue_m4": [80, 50, 60, 0]})
    # 150 > 1.2×130? no → 0 · 150 > 144 but 120 < 132 → 1 · 150 > 120, 100 > 96, 80 > 72 → 3 · nothing sold → 0
    assert list(rising_months(frame)) == [0, 1, 3, 0]
    frame = pd.DataFrame({"revenue_m1": [200.0], "revenue_m2": [150.0], "revenue_m3": [100.0], "revenue_m4": [0.0]})
    assert list(rising_months(frame)) == [3]


def test_task_rules_make_one_open_task_per_rule_and_customer(engine, settings):
    features, scored = frames({"QM1": "question_mark"}, rising={"QM1": 3})
    previous = {"QM1": "question_mark"}
    run_playbook(engine, settings, features, scored, previous, MORNING)
    # Rising Question Mark → the rep's manager (the sales director) gets the visit.
    assert tasks(engine) == [("question_mark_rising", "QM1", "boss", "open")]
    run_playbook(engine, settings, features, scored, previous, MORNING + timedelta(hours=1))
    assert len(tasks(engine)) == 1
    # Done, but within the rule's cooldown (90 days): no new task either.
    with engine.begin() as connection:
        connection.execute(update(FollowUpTask).values(status="done"))
    run_playbook(engine, settings, features, scored, previous, MORNING + timedelta(days=30))
    assert len(tasks(engine)) == 1
    run_playbook(engine, settings, features, scored, previous, MORNING + timedelta(days=91))
    assert [task[3] for task in tasks(engine)] == ["done", "open"]


def test_a_task_card_gives_the_reasons_of_the_model_its_rule_is_about(engine, settings):
    features, scored = frames({"STAR1": "star"})
    features.loc["STAR1", "act_30d"] = 2.0  # against a baseline of 10: activity down 80%
    run_playbook(engine, settings, features, scored, {"STAR1": "star"}, MORNING)
    assert tasks(engine) == [("activity_down_retention", "STAR1", "rep_a", "open")]
    with engine.connect() as connection:
        row = connection.execute(select(OutboxMessage.kind, OutboxMessage.batch_item)).one()
    _, card = message_for(row.kind, row.batch_item, "zh")
    # The retention rule is about churn: its card says why in churn's words, not revenue's, uncut.
    assert card["sub_title_text"].startswith("挽留回访：了解活跃度下降的原因。原因：")
    assert "超出自身采购周期" in card["sub_title_text"] and "营收" not in card["sub_title_text"]
    assert "…" not in card["sub_title_text"]


def test_a_customer_turning_star_gets_a_visit_task_on_its_card(engine, settings):
    features, scored = frames({"QM1": "star"})
    with engine.begin() as connection:
        run_id = connection.exec_driver_sql(
            "INSERT INTO score_runs (started_at, as_of, status, kind, config_hash) "
            "VALUES ('2026-11-23 02:00:00', '2026-11-23', 'succeeded', 'incremental', 'x') RETURNING id").scalar()
        connection.exec_driver_sql(
            "INSERT INTO tier_history (customer_id, run_id, model, from_tier, to_tier, changed_at, reasons) "
            f"VALUES ('QM1', {run_id}, 'value_matrix', 'question_mark', 'star', '2026-11-23 02:00:00', '[]')")
    outcome = run_playbook(engine, settings, features, scored, {"QM1": "question_mark"}, MORNING, run_id)
    assert tasks(engine) == [("new_star_visit", "QM1", "rep_b", "open")]
    with engine.connect() as connection:
        rows = connection.execute(select(OutboxMessage.kind, OutboxMessage.touser, OutboxMessage.payload,
                                         OutboxMessage.batch_item)).all()
        card_id = connection.execute(select(FollowUpTask.card_task_id)).scalar_one()
    assert [(row.kind, row.touser) for row in rows] == [("tier_change", "rep_b")]
    assert outcome.messages == 1 and outcome.tasks == 1
    # The card is made when it is sent (unless it goes out in a summary), from the row's item.
    assert rows[0].payload == {}
    msgtype, card = message_for(rows[0].kind, rows[0].batch_item, "zh")
    assert msgtype == "template_card" and card["task_id"] == card_id
    assert [button["text"] for button in card["button_list"]] == ["完成", "延后1天"]


def test_a_run_announces_the_tier_changes_it_records_after_starting_its_playbook(engine, settings):
    """A full run starts its playbook, records its tier changes meanwhile, then writes:
    the card announces the change, with the task the rules made for it."""
    features, scored = frames({"QM1": "star"})
    with engine.begin() as connection:
        run_id = connection.exec_driver_sql(
            "INSERT INTO score_runs (started_at, as_of, status, kind, config_hash) "
            "VALUES ('2026-11-23 02:00:00', '2026-11-23', 'running', 'full', 'x') RETURNING id").scalar()
        finish = start_playbook(connection, settings, history_run_id=run_id, features=features, scored=scored,
                                previous_tier=pd.Series({"QM1": "question_mark"}), now=MORNING, background=True)
        connection.exec_driver_sql(
            "INSERT INTO tier_history (customer_id, run_id, model, from_tier, to_tier, changed_at, reasons) "
            f"VALUES ('QM1', {run_id}, 'value_matrix', 'question_mark', 'star', '2026-11-23 02:00:00', '[]')")
        outcome = finish(connection)
    assert (outcome.messages, outcome.tasks) == (1, 1)
    assert tasks(engine) == [("new_star_visit", "QM1", "rep_b", "open")]
    with engine.connect() as connection:
        item = connection.execute(select(OutboxMessage.batch_item)).scalar_one()
    assert (item["type"], item["from_tier"], item["to_tier"], item["task"]["title_zh"]) == (
        "tier_change", "question_mark", "star", "安排高层拜访")


def test_a_playbook_failing_in_its_thread_fails_the_run_and_writes_nothing(engine, settings, monkeypatch):
    import notifications.playbook as playbook

    def broken(*args, **kwargs):
        raise RuntimeError("rule evaluation broke")

    monkeypatch.setattr(playbook, "_churn_alerts", broken)
    features, scored = frames({"QM1": "question_mark"}, churn={"COW1": 95.0}, rising={"QM1": 3})
    with pytest.raises(RuntimeError, match="rule evaluation broke"):
        with engine.begin() as connection:
            finish = start_playbook(connection, settings, history_run_id=1, features=features, scored=scored,
                                    previous_tier=pd.Series({}), now=MORNING, background=True)
            finish(connection)
    assert tasks(engine) == []
    with engine.connect() as connection:
        assert connection.execute(select(OutboxMessage.id)).all() == []


@pytest.mark.parametrize("whole_state_from", [10_000, 0], ids=["ids-in-lists", "state-read-whole"])
def test_churn_alerts_fire_once_per_rise_and_rearm_after_a_fall(engine, settings, monkeypatch, whole_state_from):
    monkeypatch.setattr("notifications.playbook.WHOLE_ALERT_STATE_FROM", whole_state_from)
    features, scored = frames({}, churn={"COW1": 85.0})
    run_playbook(engine, settings, features, scored, {}, MORNING)
    run_playbook(engine, settings, features, scored, {}, MORNING + timedelta(hours=2))
    with engine.connect() as connection:
        alerts = connection.execute(select(OutboxMessage.touser, OutboxMessage.batch_key, OutboxMessage.batch_every)
                                    .where(OutboxMessage.kind == "churn_alert")).all()
    assert [tuple(alert) for alert in alerts] == [("boss", "churn:boss", 3600)]
    # Falls to 50 (below 70 − 10): re-armed; rises again: a second alert.
    run_playbook(engine, settings, *frames({}, churn={"COW1": 50.0}), {}, MORNING + timedelta(days=1))
    with engine.connect() as connection:
        assert connection.execute(select(ChurnAlertState.customer_id)).all() == []
    run_playbook(engine, settings, features, scored, {}, MORNING + timedelta(days=2))
    with engine.connect() as connection:
        assert len(connection.execute(select(OutboxMessage.id).where(OutboxMessage.kind == "churn_alert")).all()) == 2


def test_no_churn_alert_for_a_customer_with_nothing_bought_in_12_months(engine, settings):
    features, scored = frames({}, churn={"COW1": 85.0, "DOG1": 95.0})
    features.loc["DOG1", "revenue_12m"] = 0.0  # silent for years: past saving, not at risk
    run_playbook(engine, settings, features, scored, {}, MORNING)
    with engine.connect() as connection:
        told = connection.execute(select(ChurnAlertState.customer_id)).scalars().all()
        items = connection.execute(select(OutboxMessage.batch_item)
                                   .where(OutboxMessage.kind == "churn_alert")).scalars().all()
    assert told == ["COW1"] and [item["customer_id"] for item in items] == ["COW1"]


async def test_churn_alerts_reach_a_manager_at_most_once_an_hour(engine, settings, make_dispatcher, emulator, clock):
    dispatcher = await make_dispatcher()
    await dispatcher.drain()
    state = state_of(emulator)
    state.clear()
    run_playbook(engine, settings, *frames({}, churn={"COW1": 90.0}), {}, clock.utc())
    await dispatcher.drain()
    assert len(state.messages_for("boss")) == 1
    clock.advance(600)
    run_playbook(engine, settings, *frames({}, churn={"COW1": 90.0, "STAR1": 80.0}), {}, clock.utc())
    clock.advance(600)
    run_playbook(engine, settings, *frames({}, churn={"COW1": 90.0, "STAR1": 80.0, "QM1": 75.0}), {}, clock.utc())
    await dispatcher.drain()
    assert len(state.messages_for("boss")) == 1  # held: the last alert went out 20 minutes ago
    clock.advance(2500)
    await dispatcher.drain()
    assert len(state.messages_for("boss")) == 2
    content = state.messages_for("boss")[1].payload["markdown"]["content"]
    assert "2 家团队客户" in content and "星辰半导体" in content and "新锐新能源" in content


async def test_churn_alerts_can_also_go_to_the_team_group_robot(engine, database_url, tmp_path, make_dispatcher,
                                                                emulator, clock):
    from bot.emulator import SANDBOX_WEBHOOK_KEY

    run_import(engine, [write_company(tmp_path / "crm")])
    path = tmp_path / "config.yaml"
    path.write_text("playbook:\n  churn_alerts: {group_robot: true}\n", encoding="utf-8")
    settings = PlaybookSettings.from_config(load_config(path, environ={
        "TIERBOT_DATABASE_URL": database_url, "WECOM_WEBHOOK_KEY": SANDBOX_WEBHOOK_KEY}))
    run_playbook(engine, settings, *frames({}, churn={"COW1": 88.0}), {}, clock.utc())
    dispatcher = await make_dispatcher(webhook_key=SANDBOX_WEBHOOK_KEY)
    await dispatcher.drain()
    state = state_of(emulator)
    robot = [m for m in state.webhook_messages if m.key == SANDBOX_WEBHOOK_KEY]
    assert len(robot) == 1 and "老牌纺织" in robot[0].payload["markdown"]["content"]
    assert len(state.messages_for("boss")) == 1  # and the manager, as always


def test_a_churn_alert_nobody_received_is_not_used_up(engine, settings):
    from storage.models import User

    with engine.begin() as connection:
        connection.execute(update(User).where(User.userid == "rep_b").values(manager_userid=None))
    run_playbook(engine, settings, *frames({}, churn={"DOG1": 90.0}), {}, MORNING)
    with engine.connect() as connection:
        assert connection.execute(select(ChurnAlertState.customer_id)).all() == []
    with engine.begin() as connection:
        connection.execute(update(User).where(User.userid == "rep_b").values(manager_userid="boss"))
    run_playbook(engine, settings, *frames({}, churn={"DOG1": 90.0}), {}, MORNING + timedelta(hours=2))
    with engine.connect() as connection:
        alerts = connection.execute(select(OutboxMessage.touser).where(OutboxMessage.kind == "churn_alert")).all()
    assert [tuple(a) for a in alerts] == [("boss",)]


def test_a_row_queued_without_its_message_must_carry_what_makes_it():
    from notifications.outbox import outbox_row

    with pytest.raises(ValueError, match="needs the item its message is made from"):
        outbox_row(["rep_a"], "markdown", None, kind="churn_alert")
    with pytest.raises(ValueError, match="a reply row needs its message written when it is queued"):
        message_for("reply", {"customer_id": "C1"}, "zh")


def test_a_run_putting_many_at_risk_at_once_names_the_riskiest_and_counts_the_rest(engine, settings, monkeypatch):
    from notifications.messages import churn_alert

    monkeypatch.setattr("notifications.playbook.ALERT_NAMED", 2)
    features, scored = frames({}, churn={"STAR1": 80.0, "COW1": 95.0, "QM1": 90.0, "DOG1": 85.0})
    run_playbook(engine, settings, features, scored, {}, MORNING)
    with engine.connect() as connection:
        told = connection.execute(select(ChurnAlertState.customer_id)).scalars().all()
        items = connection.execute(select(OutboxMessage.batch_item).where(OutboxMessage.kind == "churn_alert")
                                   .order_by(OutboxMessage.id)).scalars().all()
    assert sorted(told) == ["COW1", "DOG1", "QM1", "STAR1"]  # all four were told of: none again tomorrow
    assert [item.get("customer_id", item.get("more")) for item in items] == ["COW1", "QM1", 2]
    text = churn_alert(items, "zh")
    assert text.startswith("**流失预警**：4 家团队客户流失风险高")
    assert "老牌纺织" in text and "新锐新能源" in text and "…还有 2 家" in text


def test_a_customer_given_another_owner_takes_its_open_tasks_along(engine, settings):
    features, scored = frames({"STAR1": "star", "QM1": "question_mark"}, rising={"QM1": 3})
    features.loc["STAR1", "act_30d"] = 2.0
    run_playbook(engine, settings, features, scored, {"STAR1": "star", "QM1": "question_mark"}, MORNING)
    assert tasks(engine) == [("question_mark_rising", "QM1", "boss", "open"),
                             ("activity_down_retention", "STAR1", "rep_a", "open")]
    # A second team: rep_c under boss2. STAR1 goes to rep_b, QM1 to rep_c.
    run_import(engine, [], records={"users": [
        {"userid": "boss2", "name": "赵总", "role": "manager"},
        {"userid": "rep_c", "name": "王五", "role": "rep", "manager_userid": "boss2"}]})
    run_import(engine, [], records={"customers": [{"customer_id": "STAR1", "name": "星辰半导体股份有限公司", "owner_userid": "rep_b"},
                                                  {"customer_id": "QM1", "name": "新锐新能源", "owner_userid": "rep_c"}]})
    # The rep's task follows the account; the manager's goes to the new owner's manager.
    assert tasks(engine) == [("question_mark_rising", "QM1", "boss2", "open"),
                             ("activity_down_retention", "STAR1", "rep_b", "open")]
    # A manager taking over an account of their own rep keeps their own task, and takes the rep's;
    # nothing moves on up to the manager's manager.
    run_import(engine, [], records={"users": [{"userid": "boss2", "name": "赵总", "role": "manager",
                                               "manager_userid": "boss"}]})
    run_import(engine, [], records={"customers": [{"customer_id": "QM1", "name": "新锐新能源", "owner_userid": "boss2"}]})
    assert tasks(engine)[0] == ("question_mark_rising", "QM1", "boss2", "open")
