"""Follow-up tasks in chat: 今日任务 / my tasks, 逾期任务 / overdue, 完成 N / done N,
延后 N 3天 / snooze N 3d — and the 完成 / 延后 / 知道了 buttons on task and tier-change cards.

The reads, writes and the priority formula live in notifications.tasks (the digest and
the overdue watch share them); here are only parsing, permission (a task is the asker's
own, or it does not exist for them) and text. "Today" is the company's date
(config time zone), not the server's.
"""

from __future__ import annotations

import hashlib
import re
from datetime import date, datetime, timedelta, timezone

from sqlalchemy import select

from handlers.paging import fit_page, remember
from handlers.registry import ActionContext, CommandContext, Reply
from handlers.router import router
from handlers.text import render
from notifications import tasks
from notifications.outbox import outbox_row
from notifications.workdays import WorkCalendar
from storage.models import FollowUpTask, OutboxMessage, TierChange, User

PAGE_SIZE = 15
# 「延后 N」 without an amount: a day. A follow-up put off for longer than two months is
# one nobody means to do: it would drop out of the team's overdue list for a season.
DEFAULT_SNOOZE_DAYS = 1
MAX_SNOOZE_DAYS = 60
# WeCom's outbox origin column is 160 characters; longer response codes are hashed.
_ORIGIN_CHARS = 160

_ID = r"#?\s*(?P<task>\d{1,9})"
_DAY_UNITS = {"天": 1, "日": 1, "d": 1, "day": 1, "days": 1,
              "周": 7, "星期": 7, "礼拜": 7, "w": 7, "wk": 7, "wks": 7, "week": 7, "weeks": 7,
              "个月": 30, "月": 30, "month": 30, "months": 30}
_CHINESE_NUMBERS = {"一": 1, "两": 2, "二": 2, "三": 3, "四": 4, "五": 5, "六": 6, "七": 7, "八": 8, "九": 9, "十": 10}
_AMOUNT = re.compile(r"(?P<n>\d{1,4}|[一两二三四五六七八九十])?\s*(?P<unit>%s)?(?:\s*(?:以后|之后|后|later))?" %
                     "|".join(sorted(map(re.escape, _DAY_UNITS), key=len, reverse=True)))
_WORDS = {"明天": 1, "tomorrow": 1, "后天": 2, "下周": 7, "next week": 7}


def today_of(services) -> date:
    return services.now().date()


def _ranked(services, found: list[tasks.TaskView], today: date) -> list[tasks.TaskView]:
    return tasks.ranked(found, today, WorkCalendar(services.config.calendar), services.config.playbook.priority)


# ------------------------------------------------------------------ lists


@router.command("my_tasks", r"(?:今日|今天的?|我的|全部|所有)?(?:任务|待办)(?:列表|清单)?|待办事项",
                r"(?:show |list )?(?:my |today'?s |all )?(?:tasks|to-?dos?)(?: today)?|tasks? list|to-?do list")
async def my_tasks(ctx: CommandContext) -> Reply:
    return await _task_page(ctx, "all", 0)


@router.command("overdue_tasks", r"(?:我的)?(?:逾期|过期|超期)(?:任务|待办)?",
                r"(?:show |list )?(?:my )?(?:overdue|late)(?: tasks)?")
async def overdue_tasks(ctx: CommandContext) -> Reply:
    return await _task_page(ctx, "overdue", 0)


@router.pager("tasks")
async def next_task_page(ctx: CommandContext, arguments: dict, offset: int) -> Reply:
    return await _task_page(ctx, arguments.get("kind", "all"), offset)


async def _task_page(ctx: CommandContext, kind: str, offset: int) -> Reply:
    today = today_of(ctx.services)
    async with ctx.services.db.begin() as connection:
        every = await tasks.open_tasks(connection, ctx.asker.userid, today, include_snoozed=True)
        found = [task for task in every if task.snoozed_until is None or task.snoozed_until <= today]
        # Snoozed ones are out of the list until their day; counted, so that they are not forgotten.
        snoozed = sorted(task.snoozed_until for task in every if task.snoozed_until and task.snoozed_until > today)
        hidden = {"snoozed": len(snoozed), "back_on": snoozed[0] if snoozed else None}
        if kind == "overdue":
            found = [task for task in found if task.overdue(today)]
        # Ranked over all of them (the value share is relative to the largest at stake), then paged.
        ordered = _ranked(ctx.services, found, today)
        total = len(ordered)
        page = ordered[offset:offset + PAGE_SIZE]
        if not page:
            await remember(ctx, connection, "tasks", {"kind": kind}, offset, 0, 0)
            if offset:
                return Reply(render(f"chat/no_more.{ctx.lang}.j2", ended=True), msgtype="text")
            return Reply(render(f"chat/tasks_empty.{ctx.lang}.j2", kind=kind, **hidden), msgtype="text")
        text, shown = fit_page(lambda n, more: render(
            f"chat/tasks_list.{ctx.lang}.j2", kind=kind, items=page[:n], today=today, first=offset + 1,
            last=offset + n, total=total, more=more, **hidden), len(page), offset, total)
        await remember(ctx, connection, "tasks", {"kind": kind}, offset, shown, total)
    return Reply(text)


# ------------------------------------------------------------------ done / snooze by message


@router.command("task_done", rf"(?:完成|已完成|搞定|做完)(?:了)?(?:任务)?\s*{_ID}(?:\s*(?P<note>\D.*))?",
                rf"(?:done|complete|completed|finish|finished|close)(?: task)?\s*{_ID}(?:\s+(?P<note>.+))?")
async def task_done(ctx: CommandContext) -> Reply:
    task_id = int(ctx.match.group("task"))
    note = ctx.typed_after("task", "note") if ctx.match.group("note") else ""
    async with ctx.services.db.begin() as connection:
        text, state = await _complete(connection, ctx.asker.userid, task_id, ctx.services.now(), ctx.lang, note)
        greyed = await _grey_sent_cards(connection, ctx, task_id, state)
    if greyed:
        ctx.services.wake_dispatcher()
    return Reply(text, msgtype="text")


@router.command("task_snooze", rf"(?:延后|推迟|延期|顺延|稍后)(?:任务)?\s*{_ID}\s*(?P<amount>.*)",
                rf"(?:snooze|postpone|defer|delay)(?: task)?\s*{_ID}\s*(?P<amount>.*)")
async def task_snooze(ctx: CommandContext) -> Reply:
    days = snooze_days(ctx.match.group("amount"))
    if days is None:
        return Reply(render(f"chat/task_usage.{ctx.lang}.j2", which="snooze", max_days=MAX_SNOOZE_DAYS),
                     msgtype="text")
    task_id = int(ctx.match.group("task"))
    today = today_of(ctx.services)
    async with ctx.services.db.begin() as connection:
        text, state = await _snooze(connection, ctx.asker.userid, task_id, today, days, ctx.lang)
        greyed = await _grey_sent_cards(connection, ctx, task_id, state, until=today + timedelta(days=days))
    if greyed:
        ctx.services.wake_dispatcher()
    return Reply(text, msgtype="text")


# Without a task number: say how, instead of the generic "not understood".
@router.command("task_usage", r"(?:完成|延后|推迟|延期)(?:任务)?", r"done|complete|snooze|postpone")
async def task_usage(ctx: CommandContext) -> Reply:
    which = "done" if ctx.text in ("完成", "完成任务", "done", "complete") else "snooze"
    return Reply(render(f"chat/task_usage.{ctx.lang}.j2", which=which, max_days=MAX_SNOOZE_DAYS), msgtype="text")


def snooze_days(amount: str | None) -> int | None:
    """「3天」「3 天」「两周」「1w」「5 days」「明天」, or nothing (a day) → days; None when
    it is not an amount we understand, or not between 1 and MAX_SNOOZE_DAYS days."""
    amount = (amount or "").strip()
    if not amount:
        return DEFAULT_SNOOZE_DAYS
    if amount in _WORDS:
        return _WORDS[amount]
    match = _AMOUNT.fullmatch(amount)
    if match is None or not (match.group("n") or match.group("unit")):
        return None
    number = match.group("n") or "1"
    count = int(number) if number.isdigit() else _CHINESE_NUMBERS[number]
    days = count * _DAY_UNITS[match.group("unit") or "天"]
    return days if 1 <= days <= MAX_SNOOZE_DAYS else None


async def _complete(connection, userid: str, task_id: int, now: datetime, lang: str,
                    note: str = "") -> tuple[str, str]:
    """(answer, state) after marking the asker's task done (with `note`, what came of it);
    state names what the card's button turns into: done, or gone when there is no such
    open task of theirs."""
    found = await tasks.task_of(connection, userid, task_id)
    if found is not None and found[1] == "done":
        return render(f"chat/task_result.{lang}.j2", outcome="already_done", task=found[0]), "done"
    if found is None or found[1] != "open" or not await tasks.complete(connection, userid, task_id, now, note):
        # Someone else's task, a cancelled one and an unknown number read the same.
        return render(f"chat/task_result.{lang}.j2", outcome="not_found", task_id=task_id), "gone"
    return render(f"chat/task_result.{lang}.j2", outcome="done", task=found[0],
                  note=note[:tasks.MAX_DONE_NOTE]), "done"


async def _snooze(connection, userid: str, task_id: int, today: date, days: int, lang: str) -> tuple[str, str]:
    until = today + timedelta(days=days)
    found = await tasks.task_of(connection, userid, task_id)
    if found is not None and found[1] == "done":
        return render(f"chat/task_result.{lang}.j2", outcome="already_done", task=found[0]), "done"
    if found is None or not await tasks.snooze(connection, userid, task_id, until):
        return render(f"chat/task_result.{lang}.j2", outcome="not_found", task_id=task_id), "gone"
    due = max(found[0].due_date, until)
    return render(f"chat/task_result.{lang}.j2", outcome="snoozed", task=found[0], until=until, due=due,
                  days=days), "snoozed"


# ------------------------------------------------------------------ card buttons


@router.action(r"done:(?P<task>\d{1,9})", name="card_done")
async def done_button(ctx: ActionContext) -> Reply:
    task_id = int(ctx.match.group("task"))
    async with ctx.services.db.begin() as connection:
        text, state = await _complete(connection, ctx.asker.userid, task_id, ctx.services.now(), ctx.lang)
        await queue_card_update(connection, ctx, state)
    ctx.services.wake_dispatcher()
    return Reply(text, msgtype="text")


@router.action(r"snooze:(?P<task>\d{1,9})", name="card_snooze")
async def snooze_button(ctx: ActionContext) -> Reply:
    task_id = int(ctx.match.group("task"))
    today = today_of(ctx.services)
    async with ctx.services.db.begin() as connection:
        text, state = await _snooze(connection, ctx.asker.userid, task_id, today, DEFAULT_SNOOZE_DAYS, ctx.lang)
        await queue_card_update(connection, ctx, state, until=today + timedelta(days=DEFAULT_SNOOZE_DAYS))
    ctx.services.wake_dispatcher()
    return Reply(text, msgtype="text")


@router.action(r"ack", name="card_ack")
async def ack_button(ctx: ActionContext) -> None:
    # The greyed 「已知晓」 button is the whole answer: a chat message on top would be noise.
    async with ctx.services.db.begin() as connection:
        await queue_card_update(connection, ctx, "ack")
    ctx.services.wake_dispatcher()
    return None


def card_origin(response_code: str) -> str:
    origin = f"card:{response_code}"
    if len(origin) <= _ORIGIN_CHARS:
        return origin
    return "card:sha1:" + hashlib.sha1(response_code.encode()).hexdigest()


async def queue_card_update(connection, ctx: ActionContext, state: str, until: date | None = None) -> None:
    """Turn the pressed card's buttons into one grey label (update_template_card with the
    click's ResponseCode), through the outbox in the caller's transaction: the task change
    and the card update commit together or not at all. Also when nothing changed (someone
    else's or a closed task): the card should stop inviting clicks either way."""
    if ctx.response_code:
        await queue_grey(connection, ctx.asker.userid, ctx.response_code, state, ctx.lang, until)


async def queue_card_replacement(connection, userid: str, code: str, card: dict) -> bool:
    """Replace the card a response_code belongs to with `card`, through the outbox in the
    caller's transaction: a card with a next step left (an accepted ticket's 解决) keeps that
    button where a grey label would end it. False when that code has an update queued already."""
    origin = card_origin(code)
    if (await connection.execute(select(OutboxMessage.id).where(OutboxMessage.origin == origin))).first():
        return False
    values = outbox_row([userid], "update", {}, origin=origin, kind="card_update", channel="card_update")
    values["payload"] = {"response_code": code, "template_card": card}
    await connection.execute(OutboxMessage.__table__.insert().values(**values))
    return True


async def queue_grey(connection, userid: str, code: str, state: str, lang: str, until: date | None) -> bool:
    """Queue the update_template_card that turns a card's buttons into a grey `state` label;
    False when one with that response_code is queued already."""
    origin = card_origin(code)
    # WeCom's retries are deduplicated before they reach a handler; this keeps a stray
    # second delivery from failing the whole transaction on the unique origin.
    if (await connection.execute(select(OutboxMessage.id).where(OutboxMessage.origin == origin))).first():
        return False
    replace_name = render(f"chat/card_button.{lang}.j2", state=state, until=until)
    values = outbox_row([userid], "update", {}, origin=origin, kind="card_update", channel="card_update")
    # The dispatcher reads the update's fields at the top of the payload (not under "update").
    values["payload"] = {"response_code": code, "replace_name": replace_name}
    await connection.execute(OutboxMessage.__table__.insert().values(**values))
    return True


# WeCom takes the response_code a card was sent with for 72 hours; an older one would
# fail as 40058 and be reported to the admins as a delivery failure.
SENT_CODE_VALID = timedelta(hours=71)


def sent_since(services) -> datetime:
    """The oldest send whose response_code still works, in UTC: SQLite keeps sent_at as naive
    UTC and compares the digits, so a local-time bound would shift the window."""
    return services.now().astimezone(timezone.utc) - SENT_CODE_VALID


async def _grey_sent_cards(connection, ctx: CommandContext, task_id: int, state: str,
                           until: date | None = None) -> bool:
    """A task done or snoozed by typing: grey the buttons of the card it was sent on as
    well, with the response_code WeCom answered that send with. The card is the task's
    own or the tier-change card that carried it; one that went out inside a summary has
    none. True when an update was queued."""
    if state not in ("done", "snoozed"):
        return False
    task = (await connection.execute(select(FollowUpTask.run_id, FollowUpTask.customer_id)
                                     .where(FollowUpTask.id == task_id))).first()
    if task is None:
        return False
    origins = [f"task:{task_id}"]
    if task.run_id is not None:
        changes = await connection.execute(select(TierChange.id).where(TierChange.run_id == task.run_id,
                                                                       TierChange.customer_id == task.customer_id))
        origins += [f"tier:{change_id}" for change_id in changes.scalars()]
    # Only the cards that went to the asker: a task handed over with its customer was carded
    # to the old owner, whose code would fail (81013) for anyone else.
    return await grey_cards_sent_to(connection, ctx.services, ctx.asker.userid,
                                    OutboxMessage.origin.in_(origins), state, until)


async def grey_cards_sent_to(connection, services, userid: str, sent_on, state: str,
                             until: date | None = None) -> bool:
    """Grey every card sent to `userid` (outbox rows matching `sent_on`) whose response_code
    WeCom still honours; True when an update was queued."""
    outbox = OutboxMessage.__table__
    codes = (await connection.execute(select(outbox.c.response_code).where(
        sent_on, outbox.c.touser == userid, outbox.c.status == "sent", outbox.c.response_code.is_not(None),
        outbox.c.sent_at >= sent_since(services)))).scalars().all()
    if not codes:
        return False
    # The card went out in its recipient's language, whatever language the command was typed in.
    language = (await connection.execute(select(User.language).where(User.userid == userid))).scalar()
    queued = False
    for code in codes:
        queued |= await queue_grey(connection, userid, code, state, language or services.config.language, until)
    return queued
