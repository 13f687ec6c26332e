"""Follow-up tasks: the priority formula, and the reads and writes the chat commands,
the card buttons, the digest and the overdue watch share.

Priority (0–100-ish, higher first; weights in config `playbook.priority`):

    tier points (star 40, cash cow 30, question mark 20, dog 5)
  + churn_weight × churn risk (0–100; 0.3 → up to 30)
  + value_points × the customer's value at stake as a share of the largest among the
    asker's open tasks (12-month revenue; up to 20)
  + urgency_points / (working days left + 1)  (overdue or due today: all 20)

so a Star customer's task due tomorrow outranks a Dog customer's due today, and a
customer at high churn risk climbs above its tier.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, timezone
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from notifications.settings import PriorityWeights
from notifications.workdays import WorkCalendar
from storage.db import as_date
from storage.models import Customer, FollowUpTask, User


@dataclass(frozen=True)
class TaskView:
    id: int
    customer_id: str
    customer_name: str
    rule: str
    title_zh: str
    title_en: str
    due_date: date
    tier: str | None
    churn_score: float
    value_at_stake: float
    snoozed_until: date | None
    card_task_id: str | None
    priority: float = 0.0

    def title(self, lang: str) -> str:
        return self.title_zh if lang == "zh" else self.title_en

    def overdue(self, today: date) -> bool:
        return self.due_date < today


def priority(task: TaskView, today: date, calendar: WorkCalendar, weights: PriorityWeights,
             largest_value: float) -> float:
    days_left = 0 if task.due_date <= today else calendar.workdays_between(today, task.due_date)
    value_share = task.value_at_stake / largest_value if largest_value > 0 else 0.0
    return round(weights.tier_points.get(task.tier or "", 0.0) + weights.churn_weight * (task.churn_score or 0.0)
                 + weights.value_points * min(max(value_share, 0.0), 1.0)
                 + weights.urgency_points / (days_left + 1), 1)


def ranked(tasks: list[TaskView], today: date, calendar: WorkCalendar, weights: PriorityWeights) -> list[TaskView]:
    """Highest priority first; ties: the earlier due date, then the older task."""
    largest = max((task.value_at_stake for task in tasks), default=0.0)
    scored = [TaskView(**{**task.__dict__, "priority": priority(task, today, calendar, weights, largest)})
              for task in tasks]
    return sorted(scored, key=lambda task: (-task.priority, task.due_date, task.id))




def _view(row: Any) -> TaskView:
    return TaskView(row.id, row.customer_id, row.name or row.customer_id, row.rule, row.title_zh, row.title_en,
                    as_date(row.due_date), row.tier, float(row.churn_score or 0.0), float(row.value_at_stake or 0.0),
                    as_date(row.snoozed_until), row.card_task_id)


_COLUMNS = (FollowUpTask.id, FollowUpTask.customer_id, Customer.name, FollowUpTask.rule, FollowUpTask.title_zh,
            FollowUpTask.title_en, FollowUpTask.due_date, FollowUpTask.tier, FollowUpTask.churn_score,
            FollowUpTask.value_at_stake, FollowUpTask.snoozed_until, FollowUpTask.card_task_id)


async def open_tasks(connection: AsyncConnection, userid: str, today: date, *, include_snoozed: bool = False
                     ) -> list[TaskView]:
    """The user's open tasks; snoozed ones only from their snooze date on."""
    query = (select(*_COLUMNS).join(Customer, Customer.customer_id == FollowUpTask.customer_id)
             .where(FollowUpTask.owner_userid == userid, FollowUpTask.status == "open"))
    if not include_snoozed:
        query = query.where((FollowUpTask.snoozed_until.is_(None)) | (FollowUpTask.snoozed_until <= today))
    return [_view(row) for row in (await connection.execute(query)).all()]


async def task_of(connection: AsyncConnection, userid: str, task_id: int) -> tuple[TaskView, str] | None:
    """(task, status) when `userid` owns task `task_id`; None otherwise (someone else's
    task is answered exactly like one that does not exist)."""
    row = (await connection.execute(select(*_COLUMNS, FollowUpTask.status)
                                    .join(Customer, Customer.customer_id == FollowUpTask.customer_id)
                                    .where(FollowUpTask.id == task_id, FollowUpTask.owner_userid == userid))).first()
    return (_view(row), row.status) if row else None


# The longest note kept with a task done (FollowUpTask.done_note).
MAX_DONE_NOTE = 500


async def complete(connection: AsyncConnection, userid: str, task_id: int, now: datetime, note: str = "") -> bool:
    """Mark done at `now`, with what the rep said came of it; False when it was not open
    (already done, or not this user's)."""
    result = await connection.execute(update(FollowUpTask).where(
        FollowUpTask.id == task_id, FollowUpTask.owner_userid == userid, FollowUpTask.status == "open")
        .values(status="done", done_at=now.astimezone(timezone.utc), done_note=note[:MAX_DONE_NOTE] or None))
    return bool(result.rowcount)


async def snooze(connection: AsyncConnection, userid: str, task_id: int, until: date) -> bool:
    """Hide an open task until `until`; its due date moves there if it was earlier."""
    found = await task_of(connection, userid, task_id)
    if found is None or found[1] != "open":
        return False
    task = found[0]
    await connection.execute(update(FollowUpTask).where(FollowUpTask.id == task_id).values(
        snoozed_until=until, due_date=max(task.due_date, until), overdue_notified=False))
    return True


async def overdue_in_team(connection: AsyncConnection, holders: list[str] | None, today: date, offset: int,
                          limit: int) -> tuple[list[dict[str, Any]], int]:
    """A page of the open tasks past their due date held by `holders` (None: everyone),
    the longest overdue first, with who holds each; and the total count."""
    where = [FollowUpTask.status == "open", FollowUpTask.due_date < today]
    if holders is not None:
        where.append(FollowUpTask.owner_userid.in_(holders))
    total = (await connection.execute(select(func.count()).select_from(FollowUpTask).where(*where))).scalar_one()
    rows = (await connection.execute(
        select(FollowUpTask.id, FollowUpTask.title_zh, FollowUpTask.title_en, FollowUpTask.due_date,
               FollowUpTask.tier, Customer.name.label("customer_name"), FollowUpTask.owner_userid,
               User.name.label("owner_name"))
        .join(Customer, Customer.customer_id == FollowUpTask.customer_id)
        .outerjoin(User, User.userid == FollowUpTask.owner_userid)
        .where(*where).order_by(FollowUpTask.due_date, FollowUpTask.id).offset(offset).limit(limit))).all()
    items = []
    for row in rows:
        due = as_date(row.due_date)
        items.append({**row._mapping, "due_date": due, "days_overdue": (today - due).days})
    return items, int(total)
