"""Reminders the scheduler writes: the morning digest per person (top tasks and the tier
changes since the last working day, in one message) and the overdue-task notices.

Both are idempotent: a digest's origin is per person and day, an overdue notice marks
its task — so a job that runs twice (a restart, a second service process) sends nothing
twice.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import date, datetime, time, timedelta, timezone
from typing import Any

from sqlalchemy import DateTime, bindparam, select, text, update
from sqlalchemy.ext.asyncio import AsyncEngine

from notifications import messages
from notifications.outbox import outbox_row, personal_delay, recipient_languages
from notifications.playbook import PlaybookSettings
from notifications.tasks import open_tasks, ranked
from storage.models import Customer, FollowUpTask, OutboxMessage, User


def _previous_workday(settings: PlaybookSettings, today: date) -> date:
    day = today - timedelta(days=1)
    for _ in range(30):  # the longest Chinese holiday is 8 days
        if settings.calendar.is_workday(day):
            return day
        day -= timedelta(days=1)
    return today - timedelta(days=1)


async def queue_digests(engine: AsyncEngine, settings: PlaybookSettings, now: datetime) -> int:
    """One digest per person with open tasks or tier changes to report, on working days
    only. Returns how many were queued (0 on a holiday or when all went out already)."""
    today = now.astimezone(settings.tz).date()
    if not settings.calendar.is_workday(today):
        return 0
    # In UTC: SQLite keeps timestamps as UTC wall-clock text, and compares them as text.
    since = datetime.combine(_previous_workday(settings, today), time.min, tzinfo=settings.tz).astimezone(timezone.utc)
    until = datetime.combine(today, time.min, tzinfo=settings.tz).astimezone(timezone.utc)
    async with engine.connect() as connection:
        people = {row.userid: row for row in await connection.execute(
            select(User.userid, User.name, User.language).where(User.role.in_(("rep", "manager", "admin"))))}
        with_tasks = set((await connection.execute(
            select(FollowUpTask.owner_userid).where(FollowUpTask.status == "open").distinct())).scalars())
        changes: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for row in await connection.execute(text("""
                SELECT c.owner_userid, c.name, h.from_tier, h.to_tier FROM tier_history h
                JOIN customers c ON c.customer_id = h.customer_id
                WHERE h.changed_at >= :since AND h.changed_at < :until AND h.from_tier IS NOT NULL
                  AND h.model = 'value_matrix' AND c.owner_userid IS NOT NULL
                ORDER BY h.id""").bindparams(bindparam("since", type_=DateTime(timezone=True)),
                                             bindparam("until", type_=DateTime(timezone=True))),
                {"since": since, "until": until}):
            changes[row.owner_userid].append({"name": row.name, "from_tier": row.from_tier, "to_tier": row.to_tier})
        done = set((await connection.execute(select(OutboxMessage.origin).where(
            OutboxMessage.origin.like(f"digest:%:{today.isoformat()}")))).scalars())
        rows = []
        for userid in sorted((with_tasks | set(changes)) & set(people)):
            origin = f"digest:{userid}:{today.isoformat()}"
            if origin in done:
                continue
            tasks = ranked(await open_tasks(connection, userid, today), today, settings.calendar,
                           settings.playbook.priority)
            if not tasks and not changes[userid]:
                continue
            body = messages.digest(people[userid].name, today, tasks[:settings.pushes.digest_tasks], len(tasks),
                                   changes[userid], people[userid].language or settings.language)
            # Each person at their own moment of the next ten minutes: the job runs on the
            # hour, when WeCom is busiest (DESIGN §5).
            rows.append(outbox_row([userid], "markdown", {"content": body}, origin=origin, kind="digest", now=now,
                                   not_before=now + personal_delay(userid)))
    if rows:
        async with engine.begin() as connection:
            await connection.execute(OutboxMessage.__table__.insert(), rows)
    return len(rows)


async def queue_overdue_notices(engine: AsyncEngine, settings: PlaybookSettings, now: datetime) -> int:
    """A notice for each open task that became overdue, once; on working days only, and
    held through quiet hours. Many for one person at once become one summary."""
    today = now.astimezone(settings.tz).date()
    if not settings.calendar.is_workday(today):
        return 0
    tasks = FollowUpTask.__table__
    async with engine.begin() as connection:
        overdue = (await connection.execute(
            select(tasks.c.id, tasks.c.owner_userid, tasks.c.title_zh, tasks.c.title_en, tasks.c.due_date,
                   tasks.c.customer_id, Customer.name)
            .join(Customer, Customer.customer_id == tasks.c.customer_id)
            .where(tasks.c.status == "open", tasks.c.due_date < today, tasks.c.overdue_notified.is_(False),
                   (tasks.c.snoozed_until.is_(None)) | (tasks.c.snoozed_until <= today)))).all()
        if not overdue:
            return 0
        chosen = await connection.run_sync(recipient_languages, [task.owner_userid for task in overdue])
        rows = []
        for task in overdue:
            item = {"type": "overdue", "customer_id": task.customer_id, "name": task.name,
                    "task": {"id": task.id, "title_zh": task.title_zh, "title_en": task.title_en,
                             "due_date": str(task.due_date)}}
            language = chosen.get(task.owner_userid, settings.language)
            rows.append(outbox_row([task.owner_userid], "markdown",
                                   {"content": messages.overdue_notice(item, language)},
                                   origin=f"overdue:{task.id}:{task.due_date}", kind="overdue",
                                   not_before=settings.hold_until(now, task.owner_userid),
                                   batch_key=f"rep:{task.owner_userid}", batch_item=item, now=now))
        await connection.execute(update(tasks).where(tasks.c.id.in_([task.id for task in overdue]))
                                 .values(overdue_notified=True))
        await connection.execute(OutboxMessage.__table__.insert(), rows)
    return len(rows)
