"""Pushes end to end against the WeCom emulator: tier-change cards and tasks from a run,
the per-member limits, batching, retries, permanent failures and quiet hours."""

from __future__ import annotations

from datetime import date, datetime, timedelta, timezone

import pytest
from sqlalchemy import func, select

from bot.config import load_config
from bot.rescore import full_rescore, incremental_rescore
from notifications.outbox import outbox_row
from storage.importer import run_import
from storage.models import Customer, FollowUpTask, OutboxMessage, ScoreSnapshot, TierChange
from tests.company import AS_OF, write_company
from bot.emulator import SharedClock
from tests.conftest import outbox_counts, state_of

@pytest.fixture
def config(engine, database_url, tmp_path, clock):
    run_import(engine, [write_company(tmp_path / "crm")])
    config = load_config(None, environ={"TIERBOT_DATABASE_URL": database_url})
    full_rescore(engine, config, AS_OF, now=clock.utc())
    return config



# Seven big upsells over the last 140 days: enough to take the Question Mark QM1 to Star.
QM1_UPSELLS = [{"order_id": f"API-{i}", "customer_id": "QM1", "amount": 3_000_000, "cost": 800_000,
                "order_date": (AS_OF - timedelta(days=20 * i)).isoformat(), "product_line": "mes", "kind": "upsell"}
               for i in range(1, 8)]


async def drained(make_dispatcher, emulator):
    """A dispatcher that has sent whatever the first run queued (tasks, churn alerts), and
    the emulator's record of messages cleared after it."""
    dispatcher = await make_dispatcher()
    await dispatcher.drain()
    state = state_of(emulator)
    state.clear()
    return dispatcher, state


async def test_new_order_into_star_gives_one_message_and_one_task(engine, config, make_dispatcher, emulator, clock):
    dispatcher, state = await drained(make_dispatcher, emulator)

    today = AS_OF
    result = run_import(engine, [], records={"orders": QM1_UPSELLS})
    outcome = incremental_rescore(engine, config, result.touched, today, now=clock.utc())
    assert outcome.tier_changes == 1

    await dispatcher.drain()
    delivered = state.messages_for("rep_b")
    assert len(delivered) == 1 and not state.dropped_by_rate_limit
    card = delivered[0].payload["template_card"]
    assert card["main_title"]["desc"] == "问题客户 → 明星客户"
    assert "新锐新能源" in card["main_title"]["title"]
    assert card["sub_title_text"].startswith("原因：") and "营收" in card["sub_title_text"]
    with engine.connect() as connection:
        tasks = connection.execute(select(FollowUpTask.id, FollowUpTask.rule, FollowUpTask.owner_userid,
                                          FollowUpTask.card_task_id)
                                   .where(FollowUpTask.customer_id == "QM1")).all()
    assert [(task.rule, task.owner_userid) for task in tasks] == [("new_star_visit", "rep_b")]
    assert card["task_id"] == tasks[0].card_task_id
    assert [button["key"] for button in card["button_list"]] == [f"done:{tasks[0].id}", f"snooze:{tasks[0].id}"]
    assert any(row["keyname"] == "建议" and "高层拜访" in row["value"] for row in card["horizontal_content_list"])

    # The same data again: no new change, no new message, no second task.
    again = incremental_rescore(engine, config, result.touched, today, now=clock.utc())
    assert again.tier_changes == 0
    await dispatcher.drain()
    assert len(state.messages_for("rep_b")) == 1
    with engine.connect() as connection:
        assert connection.execute(select(func.count()).select_from(FollowUpTask)
                                  .where(FollowUpTask.customer_id == "QM1")).scalar_one() == 1


async def test_a_lead_showing_high_intent_gets_its_rep_a_follow_up_task_within_a_working_day(
        engine, config, make_dispatcher, emulator, clock):
    dispatcher, state = await drained(make_dispatcher, emulator)
    # The MES page four times this week and a case study downloaded (scoring.intent's smart_manufacturing).
    visits = [{"activity_id": f"W-{i}", "customer_id": "DOG1", "kind": "page_view", "detail": "/products/mes",
               "ts": f"2026-11-{15 + i}T10:00:00"} for i in range(4)]
    download = {"activity_id": "W-9", "customer_id": "DOG1", "kind": "download", "detail": "mes-case-study.pdf",
                "ts": "2026-11-19T16:00:00"}
    result = run_import(engine, [], records={"activities": [*visits, download]})
    incremental_rescore(engine, config, result.touched, AS_OF, now=clock.utc())
    with engine.connect() as connection:
        made = connection.execute(select(FollowUpTask.rule, FollowUpTask.owner_userid, FollowUpTask.due_date)
                                  .where(FollowUpTask.customer_id == "DOG1")).all()
    assert [(rule, owner, str(due)[:10]) for rule, owner, due in made] == [
        ("high_intent_follow_up", "rep_b", "2026-11-24")]  # made on Monday morning: due Tuesday
    await dispatcher.drain()
    card = state.messages_for("rep_b")[0].payload["template_card"]
    assert card["sub_title_text"].startswith("高意向跟进：一个工作日内联系，了解需求并约演示。原因：行为规则「关注智能制造」")


async def test_a_key_account_gone_quiet_past_its_purchase_cycle_gets_its_rep_a_retention_call(
        engine, config, make_dispatcher, emulator, clock):
    # STAR1 and COW1 bought on the 15th of every month up to 2026-11-15, then nothing: three
    # months on they are three cycles overdue. Some fillers went quiet too, but are no key accounts.
    dispatcher, state = await drained(make_dispatcher, emulator)
    later = date(2027, 2, 17)
    clock.advance((datetime.combine(later, clock.utc().timetz()) - clock.utc()).total_seconds())
    full_rescore(engine, config, later, now=clock.utc())
    with engine.connect() as connection:
        made = connection.execute(select(FollowUpTask.customer_id, FollowUpTask.owner_userid)
                                  .where(FollowUpTask.rule == "key_account_silence_retention")).all()
        at_risk = connection.execute(select(ScoreSnapshot.customer_id, ScoreSnapshot.tier).where(
            ScoreSnapshot.run_id == select(func.max(ScoreSnapshot.run_id)).scalar_subquery(),
            ScoreSnapshot.churn_score >= 70)).all()
    key_accounts = {customer for customer, tier in at_risk if tier in ("star", "cash_cow")}
    assert {"STAR1", "COW1"} <= key_accounts and len(at_risk) > len(key_accounts)  # Dogs and QMs silent too
    assert sorted(customer for customer, _ in made) == sorted(key_accounts)
    assert dict(made)["STAR1"] == "rep_a" and dict(made)["COW1"] == "rep_a"
    await dispatcher.drain()
    # rep_b gets a card per task; rep_a, with more new tasks than cards a run may send, the summary.
    owned = {rep: sum(owner == rep for _, owner in made) for rep in ("rep_a", "rep_b")}
    assert owned["rep_a"] > 2 and owned["rep_b"] >= 1
    cards = [message.payload["template_card"] for message in state.messages_for("rep_b")]
    assert len(cards) == owned["rep_b"]
    assert all(card["sub_title_text"].startswith("挽留回访：重点客户超出采购周期未下单，了解原因。原因：已 ")
               and "天未下单，超出自身采购周期（" in card["sub_title_text"] for card in cards)
    summary = [message.payload["markdown"]["content"] for message in state.messages_for("rep_a")]
    assert summary == [f"**客户动态汇总**\n新增跟进任务 {owned['rep_a']} 个，发送「今日任务」按优先级查看。\n"]


async def test_a_rep_who_chose_english_gets_the_tier_change_card_in_english(engine, config, make_dispatcher, emulator,
                                                                           clock):
    dispatcher, state = await drained(make_dispatcher, emulator)
    # The users file (or the API) says rep_b reads English; rep_a keeps the service's Chinese.
    run_import(engine, [], records={"users": [{"userid": "rep_b", "language": "English"}]})
    result = run_import(engine, [], records={"orders": QM1_UPSELLS})
    assert incremental_rescore(engine, config, result.touched, AS_OF, now=clock.utc()).tier_changes == 1
    await dispatcher.drain()
    card = state.messages_for("rep_b")[0].payload["template_card"]
    assert card["main_title"]["desc"] == "Question Mark → Star"
    assert card["sub_title_text"].startswith("Why:")
    assert [button["text"] for button in card["button_list"]] == ["Done", "Snooze 1d"]


async def test_many_changes_for_one_rep_become_one_summary(engine, config, make_dispatcher, emulator, clock):
    dispatcher, state = await drained(make_dispatcher, emulator)
    # Every customer of rep_a "was" a dog: the next run moves all the others back.
    with engine.begin() as connection:
        connection.exec_driver_sql("UPDATE customers SET tier = 'dog' WHERE owner_userid = 'rep_a'")
        moved = connection.exec_driver_sql("SELECT COUNT(*) FROM score_snapshots s JOIN customers c "
                                           "ON c.customer_id = s.customer_id WHERE c.owner_userid = 'rep_a' "
                                           "AND s.tier <> 'dog'").scalar_one()
    assert moved >= 3
    outcome, _ = full_rescore(engine, config, AS_OF, now=clock.utc())
    assert outcome.tier_changes >= 3  # a borderline one may wait for a second run (hysteresis)
    await dispatcher.drain()
    to_rep = state.messages_for("rep_a")
    assert len(to_rep) == 1, [m.payload for m in to_rep]
    assert to_rep[0].msgtype == "markdown"
    content = to_rep[0].payload["markdown"]["content"]
    assert f"{outcome.tier_changes} 家客户分层变化" in content and "瘦狗客户 → 明星客户" in content
    assert len(content.encode()) <= 2048
    assert outbox_counts(engine).get("pending", 0) == 0


async def test_200_messages_to_one_member_stay_within_the_minute_limit(engine, config, make_dispatcher, emulator,
                                                                      clock, async_db):
    dispatcher, state = await drained(make_dispatcher, emulator)
    rows = [outbox_row(["rep_a"], "text", {"content": f"任务提醒 {n}"}, origin=f"test:{n}", kind="task",
                       now=clock.utc()) for n in range(200)]
    with engine.begin() as connection:
        connection.execute(OutboxMessage.__table__.insert(), rows)

    for _ in range(100):
        await dispatcher.drain()
        if outbox_counts(engine).get("pending", 0) == 0:
            break
        clock.advance(5)
    delivered = state.messages_for("rep_a")
    assert len(delivered) == 200 and not state.dropped_by_rate_limit
    assert sorted(m.payload["text"]["content"] for m in delivered) == sorted(f"任务提醒 {n}" for n in range(200))
    times = sorted(m.received_at for m in delivered)
    busiest_minute = max(sum(1 for t in times if start <= t < start + 60) for start in times)
    assert busiest_minute == 30
    # All 200 took about 200/30 minutes: the limit was used, not waited out needlessly.
    assert times[-1] - times[0] < 7 * 60


async def test_identical_messages_to_many_members_go_in_one_call(engine, config, make_dispatcher, emulator, clock):
    dispatcher, state = await drained(make_dispatcher, emulator)
    rows = [outbox_row([f"u{i}"], "text", {"content": "系统将于今晚 22:00 维护"}, origin=f"notice:{i}", now=clock.utc())
            for i in range(50)]
    with engine.begin() as connection:
        connection.execute(OutboxMessage.__table__.insert(), rows)
    await dispatcher.drain()
    assert len(state.requests_to("message/send")) == 1
    assert sorted(m.userid for m in state.delivered) == sorted(f"u{i}" for i in range(50))


async def test_busy_api_delays_but_loses_nothing(engine, config, make_dispatcher, emulator, clock):
    dispatcher, state = await drained(make_dispatcher, emulator)
    state.inject("message/send", 45009, times=4)
    state.inject("message/send", -1, times=3)
    rows = [outbox_row([["rep_a", "rep_b"][n % 2]], "text", {"content": f"消息 {n}"}, origin=f"busy:{n}",
                       now=clock.utc()) for n in range(5)]
    with engine.begin() as connection:
        connection.execute(OutboxMessage.__table__.insert(), rows)
    for _ in range(60):
        await dispatcher.drain()
        if outbox_counts(engine).get("pending", 0) == 0:
            break
        clock.advance(30)
    assert outbox_counts(engine).get("failed", 0) == 0
    contents = sorted(m.payload["text"]["content"] for m in state.delivered)
    assert contents == sorted(f"消息 {n}" for n in range(5))
    errors = [r.errcode for r in state.requests_to("message/send")]
    assert errors.count(45009) == 4 and errors.count(-1) == 3


async def test_busy_answer_is_retried_three_times_then_given_up_and_reported(engine, config, make_dispatcher,
                                                                             emulator, clock):
    dispatcher, state = await drained(make_dispatcher, emulator)
    state.inject("message/send", -1, times=4)
    with engine.begin() as connection:
        connection.execute(OutboxMessage.__table__.insert(),
                           [outbox_row(["rep_a"], "text", {"content": "请跟进星辰半导体"}, origin="busy", kind="task",
                                       now=clock.utc())])
    for _ in range(30):
        await dispatcher.drain()
        clock.advance(60)
    with engine.connect() as connection:
        status, error, busy_answers = connection.execute(select(OutboxMessage.status, OutboxMessage.last_error,
                                                        OutboxMessage.busy_answers)
                                                 .where(OutboxMessage.origin == "busy")).one()
    calls = state.requests_to("message/send")
    # The first call and three retries, each answered -1: then no fifth call, though WeCom would take it.
    busy = [r for r in calls if r.errcode != 0]
    assert [r.errcode for r in busy] == [-1, -1, -1, -1]
    # Spaced to outlast a busy spell: at least 30 s, 2 min and 10 min apart.
    gaps = [later.received_at - earlier.received_at for earlier, later in zip(busy, busy[1:])]
    assert [gap >= least for gap, least in zip(gaps, (30, 120, 600))] == [True, True, True]
    assert status == "failed" and error.startswith("-1") and busy_answers == 3
    assert state.messages_for("rep_a") == []
    notices = state.messages_for("admin")
    assert len(notices) == 1 and "rep_a" in notices[0].payload["markdown"]["content"]
    assert b'tierbot_outbox_failed_total{errcode="-1"} 1.0' in dispatcher.metrics.render()


async def test_no_answer_from_wecom_is_retried_and_counted_as_transport(engine, config, make_dispatcher, emulator,
                                                                         clock):
    dispatcher, state = await drained(make_dispatcher, emulator)
    state.inject_disconnect(path="message/send")
    with engine.begin() as connection:
        connection.execute(OutboxMessage.__table__.insert(),
                           [outbox_row(["rep_a"], "text", {"content": "请跟进"}, origin="cut", now=clock.utc())])
    await dispatcher.drain()
    with engine.connect() as connection:
        status, error = connection.execute(select(OutboxMessage.status, OutboxMessage.last_error)
                                           .where(OutboxMessage.origin == "cut")).one()
    assert status == "pending" and error.startswith("transport: ")
    assert b'tierbot_outbox_retries_total{errcode="transport"} 1.0' in dispatcher.metrics.render()
    clock.advance(60)
    await dispatcher.drain()
    assert [m.payload["text"]["content"] for m in state.messages_for("rep_a")] == ["请跟进"]


async def test_permanent_failure_is_recorded_and_reported_to_admins(engine, config, make_dispatcher, emulator,
                                                                   clock):
    dispatcher, state = await drained(make_dispatcher, emulator)
    with engine.begin() as connection:
        connection.execute(OutboxMessage.__table__.insert(),
                           [outbox_row(["left_company"], "text", {"content": "你好"}, origin="gone", kind="task",
                                       now=clock.utc())])
    await dispatcher.drain()
    with engine.connect() as connection:
        status, error = connection.execute(select(OutboxMessage.status, OutboxMessage.last_error)
                                           .where(OutboxMessage.origin == "gone")).one()
    assert status == "failed" and error.startswith("81013")
    notices = state.messages_for("admin")
    assert len(notices) == 1 and "left_company" in notices[0].payload["markdown"]["content"]
    assert b'tierbot_outbox_failed_total{errcode="81013"} 1.0' in dispatcher.metrics.render()


async def test_quiet_hours_hold_pushes_until_morning(engine, config, make_dispatcher, emulator):
    late = SharedClock(datetime(2026, 11, 23, 14, 30, tzinfo=timezone.utc))  # 22:30 in Shanghai
    with engine.begin() as connection:
        connection.exec_driver_sql("UPDATE customers SET tier = 'dog' WHERE customer_id = 'STAR1'")
    full_rescore(engine, config, AS_OF, now=late.utc())
    with engine.connect() as connection:
        held = connection.execute(select(OutboxMessage.not_before).where(OutboxMessage.kind == "tier_change")).all()
    assert held, "the run queued the tier change"
    release = held[0].not_before
    release = release if release.tzinfo else release.replace(tzinfo=timezone.utc)
    # 08:00 in Shanghai, plus a few minutes of this rep's own (not everyone on the hour).
    morning = datetime(2026, 11, 24, 0, 0, tzinfo=timezone.utc)
    assert morning <= release < morning + timedelta(minutes=10)


async def test_crash_after_wecom_accepted_is_caught_by_the_duplicate_check(engine, config, make_dispatcher,
                                                                          emulator, clock):
    first, state = await drained(make_dispatcher, emulator)
    with engine.begin() as connection:
        connection.execute(OutboxMessage.__table__.insert(),
                           [outbox_row(["rep_a"], "text", {"content": "请跟进星辰半导体"}, origin="once", now=clock.utc())])

    async def die(*args, **kwargs):  # the process dies before it can record the send
        raise SystemExit("kill -9")

    async def no_cleanup(*args, **kwargs):  # kill -9 runs no clean-up either
        return None

    first._sent = die
    first._unclaim = no_cleanup
    with pytest.raises(SystemExit):
        await first.run_once()
    assert outbox_counts(engine).get("sending") == 1 and len(state.messages_for("rep_a")) == 1

    clock.advance(5)
    restarted = await make_dispatcher()
    assert await restarted.take_over() == 1
    await restarted.drain()
    with engine.connect() as connection:
        assert connection.execute(select(OutboxMessage.status).where(OutboxMessage.origin == "once")).scalar() == "sent"
    assert len(state.messages_for("rep_a")) == 1 and len(state.deduplicated) == 1


def test_sliding_windows_keep_time_order_when_slots_are_booked_ahead():
    from notifications.limits import SlidingWindows, Window

    windows = SlidingWindows((Window(2, 60),))
    windows.record(["a"], 100.0)
    windows.record(["a"], 150.0)  # a booked slot
    windows.record(["a"], 120.0)  # a real send that landed before it
    # Two of three within any minute: the next room is when the send at 120 leaves the
    # window (at 180), not when the one at 100 does — 150 is still booked.
    assert windows.wait_for(["a"], 121.0) == 59.0
    windows.record(["a"], 180.0)
    assert windows.wait_for(["a"], 180.0) == 30.0


def test_booking_a_future_slot_does_not_forget_sends_that_still_count():
    from notifications.limits import SlidingWindows, Window

    windows = SlidingWindows((Window(2, 60),))
    windows.record(["a"], 100.0)
    windows.record(["a"], 110.0)
    windows.record(["a"], 500.0)  # booked far ahead
    assert windows.wait_for(["a"], 120.0) > 0  # the sends at 100 and 110 still fill this minute


async def test_an_error_mid_pass_puts_the_claimed_rows_back(engine, config, make_dispatcher, emulator, clock):
    dispatcher = await make_dispatcher()
    await dispatcher.drain()
    with engine.begin() as connection:
        connection.execute(OutboxMessage.__table__.insert(), [
            outbox_row([user], "text", {"content": f"给 {user}"}, origin=f"mid:{user}", now=clock.utc())
            for user in ("rep_a", "rep_b", "boss")])
    original = dispatcher._sent

    async def database_gone(*args, **kwargs):
        raise ConnectionError("the database went away")

    dispatcher._sent = database_gone
    with pytest.raises(ConnectionError):
        await dispatcher.run_once()
    assert outbox_counts(engine) == {"pending": 3} | {k: v for k, v in outbox_counts(engine).items() if k == "sent"}
    dispatcher._sent = original
    clock.advance(1)
    await dispatcher.drain()
    assert outbox_counts(engine).get("pending", 0) == 0 and outbox_counts(engine).get("sending", 0) == 0


async def test_a_push_put_back_to_wait_does_not_come_out_in_the_night(engine, config, async_db, emulator, clock,
                                                                      make_dispatcher):
    from zoneinfo import ZoneInfo

    dispatcher = await make_dispatcher()
    dispatcher.timezone = ZoneInfo("Asia/Shanghai")
    await dispatcher.drain()
    state = state_of(emulator)
    clock.moment = datetime(2026, 11, 23, 12, 59, 59, 500000, tzinfo=timezone.utc)  # 20:59:59.5 in Shanghai
    state.inject("message/send", 45009, times=1)
    with engine.begin() as connection:
        connection.execute(OutboxMessage.__table__.insert(), [
            outbox_row(["rep_a"], "markdown", {"content": "分层变化"}, origin="evening", kind="tier_change",
                       now=clock.utc())])
    await dispatcher.drain()
    with engine.connect() as connection:
        held = connection.execute(select(OutboxMessage.not_before).where(OutboxMessage.origin == "evening")).scalar()
    held = held if held.tzinfo else held.replace(tzinfo=timezone.utc)
    morning = datetime(2026, 11, 24, 0, 0, tzinfo=timezone.utc)
    assert morning <= held < morning + timedelta(minutes=10)  # the morning, not 21:00 + a few seconds


def test_a_nightly_run_does_not_undo_a_newer_incremental_change(engine, config, clock, monkeypatch):
    import storage.scores as store

    original = store.write_run
    orders = [{"order_id": f"LATE-{i}", "customer_id": "QM1", "order_date": (AS_OF - timedelta(days=20 * i)).isoformat(),
               "amount": 3_000_000, "cost": 800_000, "product_line": "mes", "kind": "upsell"} for i in range(1, 8)]

    def api_order_arrives_meanwhile(*args, **kwargs):
        # After the full run read its data and before it writes: an order through the API.
        result = run_import(engine, [], records={"orders": orders})
        assert incremental_rescore(engine, config, result.touched, AS_OF, now=clock.utc()).tier_changes == 1
        return original(*args, **kwargs)

    monkeypatch.setattr(store, "write_run", api_order_arrives_meanwhile)
    full_rescore(engine, config, AS_OF, now=clock.utc())
    with engine.connect() as connection:
        history = connection.execute(select(TierChange.from_tier, TierChange.to_tier)
                                     .where(TierChange.customer_id == "QM1", TierChange.from_tier.is_not(None))).all()
        tier = connection.execute(select(Customer.tier).where(Customer.customer_id == "QM1")).scalar()
    assert [tuple(change) for change in history] == [("question_mark", "star")] and tier == "star"


async def test_breaches_that_fall_due_together_reach_the_lead_as_one_list(engine, config, make_dispatcher, emulator,
                                                                          clock):
    from notifications.tickets import TicketSettings, process_tickets

    run_import(engine, [], records={"users": [
        {"userid": f"u{i}", "name": f"客服{i}", "role": "agent", "manager_userid": "boss", "queues": "expert|standard"}
        for i in range(2)]})
    settings = TicketSettings.from_config(config)
    opened = (clock.utc() + timedelta(hours=8)).replace(tzinfo=None).isoformat(timespec="seconds")
    run_import(engine, [], records={"tickets": [
        {"ticket_id": f"T{i}", "customer_id": "STAR1", "subject": f"问题{i}", "opened_at": opened} for i in range(6)]})
    process_tickets(engine, settings, clock.utc())
    dispatcher, state = await drained(make_dispatcher, emulator)

    breached = process_tickets(engine, settings, clock.utc() + timedelta(hours=3)).breached
    await dispatcher.drain()

    assert breached == 6
    to_lead = state.messages_for("boss")
    assert len(to_lead) == 1, [m.payload for m in to_lead]
    content = to_lead[0].payload["markdown"]["content"]
    assert content.startswith("**6 张工单已超时（升级）**")
    assert all(f"#T{i} " in content for i in range(6)) and len(content.encode()) <= 2048
    assert outbox_counts(engine).get("pending", 0) == 0
