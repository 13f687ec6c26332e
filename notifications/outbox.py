"""The outbox: every outgoing message is first a row (DESIGN §2), written in the same
transaction as whatever caused it, and sent later by the dispatcher.

Rows written from a scoring run use the synchronous connection of that run's
transaction (`queue_rows`); chat replies that missed the deadline use `enqueue_once`.
"""

from __future__ import annotations

import zlib
from datetime import datetime, time, timedelta, timezone
from typing import Any, Iterable
from zoneinfo import ZoneInfo

from sqlalchemy import Connection, Engine, delete, or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from storage.db import write_transaction
from storage.models import OutboxMessage, User
from storage.sql import insert_rows


def message_payload(msgtype: str, body: dict[str, Any]) -> dict[str, Any]:
    """The message/send body without touser/agentid, e.g. {"msgtype": "text", "text": {...}}."""
    return {"msgtype": msgtype, msgtype: body}


# The payload of a row whose message is made from its batch_item when it is sent on its
# own (notifications.messages.message_for).
RENDER_WHEN_SENT: dict[str, Any] = {}


def recipient_languages(connection: Connection, userids: Iterable[str] | None = None) -> dict[str, str]:
    """userid → the language chosen for what is pushed to them (users.language), for those
    of `userids` (None: of everyone) who chose one; the others get the service's `language`.
    Synchronous: async callers go through AsyncConnection.run_sync."""
    if userids is None:
        return dict(connection.execute(select(User.userid, User.language).where(User.language.is_not(None))).all())
    wanted = sorted(set(userids))
    chosen: dict[str, str] = {}
    for start in range(0, len(wanted), 500):
        chosen.update(connection.execute(select(User.userid, User.language).where(
            User.userid.in_(wanted[start:start + 500]), User.language.is_not(None))).all())
    return chosen


def outbox_row(touser: Iterable[str], msgtype: str, body: dict[str, Any] | None, *, origin: str | None = None,
               kind: str = "reply", channel: str = "app", not_before: datetime | None = None,
               batch_key: str | None = None, batch_every: int = 0, batch_item: dict | None = None,
               now: datetime | None = None) -> dict[str, Any]:
    """The values of one outbox row. `origin` names why it exists and is unique: a second
    row with the same origin is refused by the database. `body` None: the message is
    made from `batch_item` when sent, if it is not summarised with others first."""
    if isinstance(touser, str):  # one UserID, not its letters
        touser = [touser]
    if body is None and not batch_item:
        raise ValueError("a row without a body needs the item its message is made from")
    payload = RENDER_WHEN_SENT if body is None else message_payload(msgtype, body)
    return {"created_at": now or datetime.now(timezone.utc), "touser": "|".join(touser), "msgtype": msgtype,
            "payload": payload, "status": "pending", "attempts": 0, "origin": origin,
            "kind": kind, "channel": channel, "not_before": not_before, "batch_key": batch_key,
            "batch_every": batch_every, "batch_item": batch_item}


def queue_rows(connection: Connection, rows: list[dict[str, Any]], skip_existing: bool = False) -> None:
    """Add rows inside the caller's (synchronous) transaction. `skip_existing`: a row whose
    origin is queued already is left out instead of failing the transaction."""
    if not rows:
        return
    if not skip_existing:
        insert_rows(connection, OutboxMessage.__table__, rows)
        return
    from sqlalchemy.dialects.postgresql import insert as pg_insert
    from sqlalchemy.dialects.sqlite import insert as sqlite_insert

    insert = pg_insert if connection.dialect.name == "postgresql" else sqlite_insert
    connection.execute(insert(OutboxMessage.__table__).on_conflict_do_nothing(index_elements=["origin"]), rows)


async def enqueue(connection: AsyncConnection, touser: Iterable[str], msgtype: str, body: dict[str, Any],
                  origin: str | None = None, **options: Any) -> None:
    """Add a message inside the caller's transaction (see outbox_row for the options)."""
    await connection.execute(OutboxMessage.__table__.insert().values(
        **outbox_row(touser, msgtype, body, origin=origin, **options)))


async def enqueue_once(engine: AsyncEngine, touser: Iterable[str], msgtype: str, body: dict[str, Any],
                       origin: str, **options: Any) -> bool:
    """Enqueue in a transaction of its own; False if that origin was queued before."""
    try:
        async with engine.begin() as connection:
            await enqueue(connection, touser, msgtype, body, origin, **options)
    except IntegrityError:
        return False
    return True


# Held pushes come out over this many seconds after quiet hours end, each person at their
# own moment (DESIGN §5: WeCom is busiest on the hour; and not every rep's phone at 08:00:00).
RELEASE_SPREAD_SECONDS = 600


def quiet_until(now: datetime, start: time, end: time, tz: ZoneInfo, who: str | None = None) -> datetime | None:
    """When quiet hours [start, end) (local time, may span midnight) are on at `now`, the
    moment they end (UTC) — plus a few minutes fixed per `who`; else None. start == end
    means no quiet hours."""
    if start == end:
        return None
    local = now.astimezone(tz)
    clock = local.time()
    spans_midnight = start > end
    inside = (clock >= start or clock < end) if spans_midnight else (start <= clock < end)
    if not inside:
        return None
    release_day = local.date() + timedelta(days=1) if spans_midnight and clock >= start else local.date()
    release = datetime.combine(release_day, end, tzinfo=tz).astimezone(timezone.utc)
    return release + personal_delay(who)


def personal_delay(who: str | None) -> timedelta:
    """A few minutes fixed per person (one to RELEASE_SPREAD_SECONDS / 60), by which pushes
    due to everyone at one moment are spread out, past the minute they were due in."""
    if not who:
        return timedelta(0)
    return timedelta(seconds=60 + zlib.crc32(who.encode()) % (RELEASE_SPREAD_SECONDS - 60))


# The longest any code looks back at sent rows: the weekly tier report's ISO week (7 days,
# a late Tuesday slot included) and a card's response_code (72 hours), with room to spare.
MIN_OUTBOX_DAYS = 14
# Rows deleted per transaction: the service's own writes wait for each, not for all.
PRUNE_BATCH = 5_000


def prune_outbox(engine: Engine, older_than: datetime) -> int:
    """Delete sent and failed rows last touched before `older_than` (UTC), a batch per
    transaction; pending and sending rows are never touched, however old (a push held for
    quiet hours, a send in flight). Returns how many went."""
    table = OutboxMessage.__table__
    # SQLite keeps these times as naive UTC text: compare with UTC.
    cutoff = older_than.astimezone(timezone.utc)
    done = table.c.status.in_(("sent", "failed"))
    removed = 0
    # Each through its own index (sent_at; status), in no order: with ORDER BY the database
    # sorts every match again for each batch.
    for done_before in (done & (table.c.sent_at < cutoff),
                        done & table.c.sent_at.is_(None) & (table.c.created_at < cutoff)):
        batch = select(table.c.id).where(done_before).limit(PRUNE_BATCH).scalar_subquery()
        while True:
            with write_transaction(engine) as connection:
                gone = connection.execute(delete(table).where(table.c.id.in_(batch))).rowcount
            removed += gone
            if gone < PRUNE_BATCH:
                break
    return removed
