"""The scheduler's jobs: the digest on working days only, the overdue watch, and the
lease that keeps a job to one process and one run per slot."""

from __future__ import annotations

import asyncio
from datetime import date, datetime, timedelta, timezone

import pytest
from sqlalchemy import func, select, update

from bot.config import load_config
from bot.rescore import full_rescore
from bot.scheduler import Leases, Scheduler, cancel_and_wait, last_fire, slot_of
from notifications.digest import queue_digests, queue_overdue_notices
from notifications.playbook import PlaybookSettings
from notifications.reports import queue_tier_reports
from storage.db import make_async_engine
from storage.importer import run_import
from storage.models import FollowUpTask, JobState, OutboxMessage
from tests.company import AS_OF, write_company

SHANGHAI_9AM = timedelta(hours=1)  # 09:00 in Shanghai is 01:00 UTC


def at_nine(day: date) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=timezone.utc) + SHANGHAI_9AM


@pytest.fixture
def config(engine, database_url, tmp_path):
    run_import(engine, [write_company(tmp_path / "crm")])
    config = load_config(None, environ={"TIERBOT_DATABASE_URL": database_url})
    full_rescore(engine, config, AS_OF, now=at_nine(date(2026, 11, 20)))
    return config


@pytest.fixture
async def async_db(database_url):
    engine = make_async_engine(database_url)
    yield engine
    await engine.dispose()


def digests(engine) -> list[str]:
    with engine.connect() as connection:
        return list(connection.execute(select(OutboxMessage.origin).where(OutboxMessage.kind == "digest")
                                       .order_by(OutboxMessage.origin)).scalars())


def add_task(engine, customer_id: str, owner: str, due: date, tier: str, rule: str = "manual") -> None:
    with engine.begin() as connection:
        connection.execute(FollowUpTask.__table__.insert().values(
            customer_id=customer_id, rule=rule, owner_userid=owner, title_zh="电话回访", title_en="Call back",
            created_at=datetime(2026, 11, 20, tzinfo=timezone.utc), due_date=due, status="open", tier=tier,
            churn_score=10.0, value_at_stake=1000.0, reasons=[]))


def open_task_owner(engine) -> str:
    add_task(engine, "QM1", "rep_b", date(2026, 11, 30), "question_mark")
    return "rep_b"


@pytest.mark.parametrize("day, sent", [
    (date(2026, 10, 1), False),   # National Day, a Thursday
    (date(2026, 10, 10), True),   # a make-up working Saturday (调休)
    (date(2026, 11, 21), False),  # an ordinary Saturday
    (date(2026, 11, 23), True),   # a Monday
])
async def test_digest_follows_the_working_day_calendar(engine, config, async_db, day, sent):
    owner = open_task_owner(engine)
    settings = PlaybookSettings.from_config(config)
    queued = await queue_digests(async_db, settings, at_nine(day))
    assert (f"digest:{owner}:{day.isoformat()}" in digests(engine)) is sent
    assert (queued > 0) is sent
    # A second run of the job that day (restart, another process) queues nothing more.
    assert await queue_digests(async_db, settings, at_nine(day)) == 0


async def test_digest_lists_tasks_by_priority_and_fits_one_message(engine, config, async_db):
    owner = open_task_owner(engine)
    add_task(engine, "DOG1", "rep_b", date(2026, 11, 24), "dog", rule="dog_call")
    add_task(engine, "STAR1", "rep_b", date(2026, 11, 27), "star", rule="star_visit")
    add_task(engine, "COW1", "rep_a", date(2026, 11, 27), "cash_cow", rule="cow_call")
    await queue_digests(async_db, PlaybookSettings.from_config(config), at_nine(date(2026, 11, 23)))
    with engine.connect() as connection:
        payload = connection.execute(select(OutboxMessage.payload).where(
            OutboxMessage.origin == f"digest:{owner}:2026-11-23")).scalar_one()
    content = payload["markdown"]["content"]
    assert "今日任务" in content and len(content.encode()) <= 2048
    # Not everyone at 09:00:00: each person's digest waits their own few minutes.
    nine = at_nine(date(2026, 11, 23))
    with engine.connect() as connection:
        due = [row[0] if row[0].tzinfo else row[0].replace(tzinfo=timezone.utc) for row in connection.execute(
            select(OutboxMessage.not_before).where(OutboxMessage.kind == "digest"))]
    assert len(due) >= 2 and len(set(due)) == len(due)
    assert all(nine <= moment < nine + timedelta(minutes=10) for moment in due) and min(due) > nine
    # The Star customer's task comes first although the Dog customer's is due earlier.
    assert content.index("星辰半导体") < content.index("街角建材")


async def test_managers_and_admins_get_the_weeks_tier_report_in_their_language_once(engine, config, async_db):
    settings = PlaybookSettings.from_config(config)
    run_import(engine, [], records={"users": [{"userid": "admin", "language": "en"}]})
    monday = at_nine(date(2026, 11, 23))
    assert await queue_tier_reports(async_db, settings, monday) == 2
    with engine.connect() as connection:
        sent = {row.touser: (row.payload["markdown"]["content"], row.not_before) for row in connection.execute(
            select(OutboxMessage.touser, OutboxMessage.payload, OutboxMessage.not_before)
            .where(OutboxMessage.kind == "tier_report"))}
    assert sorted(sent) == ["admin", "boss"]  # reps and agents get none
    assert sent["boss"][0].startswith("**您团队客户分层报表（近7天，2026-11-16 起）**")
    assert sent["admin"][0].startswith("**Company-wide tier report, last 7 days (since 2026-11-16)**")
    assert all(len(text.encode()) <= 2048 for text, _ in sent.values())
    # The rest of that week, the job (daily) queues nothing more; the next week's Monday again.
    for day in (23, 24, 27, 28):
        assert await queue_tier_reports(async_db, settings, at_nine(date(2026, 11, day)) + timedelta(hours=1)) == 0
    assert await queue_tier_reports(async_db, settings, at_nine(date(2026, 11, 30))) == 2


async def test_a_holiday_monday_moves_the_weekly_tier_report_to_tuesday(engine, config, async_db):
    settings = PlaybookSettings.from_config(config)
    # 2026-10-05 is a National Day holiday Monday; Tuesday the 6th too; Thursday the 8th is back at work.
    assert await queue_tier_reports(async_db, settings, at_nine(date(2026, 10, 5))) == 0
    assert await queue_tier_reports(async_db, settings, at_nine(date(2026, 10, 6))) == 0
    assert await queue_tier_reports(async_db, settings, at_nine(date(2026, 10, 8))) == 2
    assert await queue_tier_reports(async_db, settings, at_nine(date(2026, 10, 9))) == 0


async def test_overdue_tasks_are_announced_once(engine, config, async_db):
    settings = PlaybookSettings.from_config(config)
    add_task(engine, "QM1", "rep_b", date(2026, 11, 19), "question_mark")
    add_task(engine, "STAR1", "rep_a", date(2026, 11, 20), "star")
    add_task(engine, "COW1", "rep_a", date(2026, 11, 30), "cash_cow")  # not yet due
    with engine.begin() as connection:
        overdue = connection.execute(select(func.count()).select_from(FollowUpTask).where(
            FollowUpTask.status == "open", FollowUpTask.due_date < date(2026, 11, 23))).scalar_one()
    monday = at_nine(date(2026, 11, 23))
    assert overdue == 2
    assert await queue_overdue_notices(async_db, settings, monday) == 2
    assert await queue_overdue_notices(async_db, settings, monday + timedelta(minutes=10)) == 0


async def test_digest_and_overdue_notice_come_in_the_language_each_person_chose(engine, config, async_db):
    settings = PlaybookSettings.from_config(config)
    add_task(engine, "QM1", "rep_b", date(2026, 11, 19), "question_mark")
    add_task(engine, "STAR1", "rep_a", date(2026, 11, 20), "star")
    run_import(engine, [], records={"users": [{"userid": "rep_b", "language": "en"}]})
    monday = at_nine(date(2026, 11, 23))
    await queue_digests(async_db, settings, monday)
    await queue_overdue_notices(async_db, settings, monday)
    with engine.connect() as connection:
        sent = {(row.kind, row.touser): row.payload["markdown"]["content"] for row in connection.execute(
            select(OutboxMessage.kind, OutboxMessage.touser, OutboxMessage.payload)
            .where(OutboxMessage.kind.in_(("digest", "overdue"))))}
    assert "Call back" in sent[("digest", "rep_b")] and "今日任务" not in sent[("digest", "rep_b")]
    assert "今日任务" in sent[("digest", "rep_a")]
    assert "Call back" in sent[("overdue", "rep_b")] and "电话回访" in sent[("overdue", "rep_a")]


async def test_a_slot_runs_once_across_processes_and_restarts(async_db):
    runs = []

    async def job() -> None:
        runs.append(1)
        await asyncio.sleep(0.05)

    now = datetime(2026, 11, 23, 18, 5, tzinfo=timezone.utc)  # 02:05 in Shanghai, just after the run time
    first = Scheduler(async_db, "Asia/Shanghai", leases=Leases(async_db, holder="host-a:1:x", clock=lambda: now),
                      clock=lambda: now)
    second = Scheduler(async_db, "Asia/Shanghai", leases=Leases(async_db, holder="host-b:2:y", clock=lambda: now),
                       clock=lambda: now)
    for scheduler in (first, second):
        scheduler.cron("full_rescore", "0 2 * * *", job)
    # Two processes fire at once: one runs the slot, the other sees the lease and steps back.
    results = await asyncio.gather(first.run_cron("full_rescore"), second.run_cron("full_rescore"))
    assert sorted(results) == [False, True] and len(runs) == 1
    # Later (after a restart, say) the same slot is not run again.
    assert await second.run_cron("full_rescore") is False and len(runs) == 1
    async with async_db.connect() as connection:
        slot = (await connection.execute(select(JobState.last_slot).where(JobState.name == "full_rescore"))).scalar()
    assert slot == "2026-11-23T18:00Z"


async def test_a_missed_slot_runs_once_at_start_up(async_db):
    runs = []

    async def job() -> None:
        runs.append(1)

    # The service ran the evening before, and was down over the night.
    evening = datetime(2026, 11, 23, 12, 0, tzinfo=timezone.utc)
    before = Scheduler(async_db, "Asia/Shanghai", leases=Leases(async_db, clock=lambda: evening),
                       clock=lambda: evening)
    before.cron("full_rescore", "0 2 * * *", job)
    await before.start()
    await before.stop()
    assert runs == []  # 02:00 that day was 18 hours before: too long ago to run late
    now = datetime(2026, 11, 23, 20, 0, tzinfo=timezone.utc)  # 04:00 in Shanghai: the 02:00 run was missed
    scheduler = Scheduler(async_db, "Asia/Shanghai", leases=Leases(async_db, clock=lambda: now), clock=lambda: now)
    scheduler.cron("full_rescore", "0 2 * * *", job)
    await scheduler.start()
    try:
        for _ in range(50):
            if runs:
                break
            await asyncio.sleep(0.05)
    finally:
        await scheduler.stop()
    assert runs == [1]
    restarted = Scheduler(async_db, "Asia/Shanghai", leases=Leases(async_db, clock=lambda: now), clock=lambda: now)
    restarted.cron("full_rescore", "0 2 * * *", job)
    await restarted.start()
    await asyncio.sleep(0.2)
    await restarted.stop()
    assert runs == [1]


async def test_a_new_install_started_after_a_slot_does_not_run_it_late(async_db):
    runs = []

    async def job() -> None:
        runs.append(1)

    now = datetime(2026, 11, 23, 20, 0, tzinfo=timezone.utc)  # 04:00 in Shanghai, the first start ever
    scheduler = Scheduler(async_db, "Asia/Shanghai", leases=Leases(async_db, clock=lambda: now), clock=lambda: now)
    scheduler.cron("full_rescore", "0 2 * * *", job)
    await scheduler.start()
    # A second process of the same install, a minute later: the first one's row does not
    # make 02:00 a slot anyone missed.
    later = now + timedelta(minutes=1)
    second = Scheduler(async_db, "Asia/Shanghai", leases=Leases(async_db, clock=lambda: later), clock=lambda: later)
    second.cron("full_rescore", "0 2 * * *", job)
    await second.start()
    await asyncio.sleep(0.2)
    await scheduler.stop()
    await second.stop()
    assert runs == []


def test_last_fire_is_the_slot_just_past():
    from apscheduler.triggers.cron import CronTrigger

    trigger = CronTrigger.from_crontab("0 9 * * *", timezone="Asia/Shanghai")
    fired = last_fire(trigger, datetime(2026, 11, 23, 2, 30, tzinfo=timezone.utc))
    assert slot_of(fired) == "2026-11-23T01:00Z"


def test_cron_weekdays_count_from_sunday_as_in_standard_cron():
    from notifications.settings import cron_trigger

    trigger = cron_trigger("0 9 * * 1-5", "Asia/Shanghai")
    saturday = datetime(2026, 11, 21, 2, 0, tzinfo=timezone.utc)  # Saturday 10:00 in Shanghai
    nxt = trigger.get_next_fire_time(None, saturday)
    assert nxt.strftime("%a %H:%M") == "Mon 09:00"
    assert cron_trigger("0 9 * * 0", "Asia/Shanghai").get_next_fire_time(None, saturday).strftime("%a") == "Sun"


async def test_stopping_while_a_loop_waits_for_its_heartbeat_still_stops_it():
    """The service's shutdown cancels each loop. When that lands while the loop is waiting
    for its lease heartbeat to stop, the loop must stop too, not carry on (a shutdown
    that hung for ever)."""
    waiting = asyncio.Event()

    async def heartbeat():
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            await asyncio.sleep(0.05)  # a renewal in flight takes a moment to finish
            raise

    async def loop_body():
        helper = asyncio.create_task(heartbeat())
        await asyncio.sleep(0)
        waiting.set()
        await cancel_and_wait(helper)
        await asyncio.sleep(3600)  # the next pass, had the stop been swallowed

    loop = asyncio.create_task(loop_body())
    await waiting.wait()
    loop.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(loop, timeout=2)


async def test_a_helper_cancelled_on_its_own_is_waited_for_quietly():
    async def heartbeat():
        await asyncio.sleep(3600)

    helper = asyncio.create_task(heartbeat())
    await asyncio.sleep(0)
    await cancel_and_wait(helper)
    assert helper.cancelled()


def test_old_sent_and_failed_pushes_are_pruned_and_nothing_still_to_go_is(engine, config, monkeypatch):
    from notifications.outbox import outbox_row, prune_outbox, queue_rows

    monkeypatch.setattr("notifications.outbox.PRUNE_BATCH", 2)  # several batches
    now = datetime(2026, 11, 23, 2, tzinfo=timezone.utc)
    days_ago = lambda days: now - timedelta(days=days)  # noqa: E731
    rows = []
    for origin, status, created, sent in [
            ("old-sent-1", "sent", 120, 119), ("old-sent-2", "sent", 100, 95), ("old-sent-3", "sent", 95, 91),
            ("old-failed", "failed", 100, None), ("recent-sent", "sent", 100, 30),
            ("held-long", "pending", 200, None), ("in-flight", "sending", 200, None)]:
        row = outbox_row(["rep_a"], "text", {"content": origin}, origin=origin, now=days_ago(created))
        rows.append({**row, "status": status, "sent_at": None if sent is None else days_ago(sent)})
    with engine.begin() as connection:
        before = connection.execute(select(func.count()).select_from(OutboxMessage)).scalar_one()
        queue_rows(connection, rows)
    assert prune_outbox(engine, days_ago(config.retention.outbox_days)) == 4
    with engine.connect() as connection:
        left = set(connection.execute(select(OutboxMessage.origin)).scalars())
        assert connection.execute(select(func.count()).select_from(OutboxMessage)).scalar_one() == before + 3
    assert {"recent-sent", "held-long", "in-flight"} <= left
    assert not left & {"old-sent-1", "old-sent-2", "old-sent-3", "old-failed"}
    assert prune_outbox(engine, days_ago(90)) == 0


async def test_the_nightly_job_rescores_then_prunes_the_outbox(engine, config):
    from bot.app import RUNTIME, build_scheduler, create_app, sandbox_identity
    from notifications.outbox import outbox_row, queue_rows
    from storage.models import ScoreRun

    now = datetime.now(timezone.utc)
    with engine.begin() as connection:
        queue_rows(connection, [{**outbox_row(["rep_a"], "text", {"content": "hi"}, origin=origin, now=sent),
                                 "status": "sent", "sent_at": sent}
                                for origin, sent in (("long-ago", now - timedelta(days=config.retention.outbox_days + 5)),
                                                     ("last-week", now - timedelta(days=7)))])
    app = create_app(config, sandbox_identity(), dispatch=False)
    scheduler = build_scheduler(app[RUNTIME])
    await scheduler.cron_jobs["full_rescore"].work()
    with engine.connect() as connection:
        assert connection.execute(select(func.count()).select_from(ScoreRun)).scalar_one() == 2
        assert set(connection.execute(select(OutboxMessage.origin)).scalars()) & {"long-ago", "last-week"} == {
            "last-week"}
