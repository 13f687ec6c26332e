"""Sends outbox rows through the WeCom API without ever letting WeCom drop one silently.

One pass (`run_once`):
1. claim the due rows (pending → sending), plus every due row sharing a batch key with them;
2. batches: several rows for one rep or manager due together become one summary
   message; a batch key with `batch_every` goes out at most once per that many seconds;
3. identical messages to different members become one call (touser ≤ 1000);
4. before each call, the per-member windows (30 a minute, 1000 an hour) and the app's
   call rate are checked; rows without room wait (not_before) instead of being sent;
5. retryable errors (45009, 45033, timeouts, dropped connections) back off and try again
   for up to a day, -1 (busy) at most three times; permanent ones (81013, 60020, 40008, …)
   and a fourth -1 are recorded with their reason, counted in /metrics and reported to the
   admins.

Exactly once to each member: WeCom's duplicate check is on, so a row sent just before a
crash (and so still 'sending') is dropped by WeCom when it is sent again after restart.
Only one process dispatches at a time (the scheduler's lease, bot.scheduler).
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, Callable
from zoneinfo import ZoneInfo

from sqlalchemy import bindparam, func, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncEngine

from notifications import messages
from notifications.limits import SlidingWindows, Window
from notifications.outbox import message_payload, outbox_row, quiet_until, recipient_languages
from notifications.settings import PushesConfig, parse_hh_mm
from storage.db import as_utc
from storage.models import OutboxBatch, OutboxMessage, User

logger = logging.getLogger(__name__)

# Retryable errors are retried with growing pauses for this long, then given up.
RETRY_FOR = timedelta(hours=24)
# -1 (system busy) is retried this many times, then given up (DESIGN §5): unlike a rate
# limit, it is not known to pass, and a day of retries would hide a broken call.
BUSY_RETRIES = 3
BUSY = -1
# The pauses before those retries: long enough to outlast a busy spell on the hour.
BUSY_PAUSES_SECONDS = (30, 120, 600)
MAX_BACKOFF_SECONDS = 600
MAX_RECIPIENTS = 1000
# Kinds whose batches become a rep's summary message from PushesConfig.summary_from rows on;
# other batched kinds (churn alerts, failure notices) are summarised from two rows on.
REP_KINDS = ("tier_change", "task", "overdue")
# Answers to a person's own command or click, and notices to agents on duty, never wait
# for the morning; every other kind is a push and keeps quiet hours.
NEVER_HELD = ("reply", "card_update", "ticket", "ticket_warning", "ticket_breach", "ticket_reprioritised")
APP_KEY = "@app"
WEBHOOK_KEY = "@webhook"


def utc_now() -> datetime:
    return datetime.now(timezone.utc)


def backoff_seconds(attempts: int) -> float:
    """2, 4, 8 … seconds, capped at 10 minutes, with jitter so retries do not move in step."""
    return min(2.0 ** max(attempts, 1), MAX_BACKOFF_SECONDS) * random.uniform(0.8, 1.2)


@dataclass
class _Unit:
    """One call to WeCom standing for one or more outbox rows."""

    rows: list[Any]
    channel: str
    payload: dict[str, Any]
    members: list[str] = field(default_factory=list)
    batch_key: str | None = None
    batch_every: int = 0


class Dispatcher:
    def __init__(self, engine: AsyncEngine, client, *, pushes: PushesConfig | None = None, language: str = "zh",
                 webhook=None, metrics=None, clock: Callable[[], datetime] = utc_now, batch: int = 1000,
                 timezone: ZoneInfo | None = None):
        # `client`: bot.wecom_client.WeComClient; `webhook`: its WebhookClient, or None.
        self.engine = engine
        self.client = client
        self.webhook = webhook
        self.pushes = pushes or PushesConfig()
        self.language = language
        # Quiet hours apply to rows put back to wait (None: no quiet hours at all).
        self.timezone = timezone
        self.metrics = metrics
        self.clock = clock
        self.batch = batch
        self.wakeup = asyncio.Event()
        self.members = SlidingWindows((Window(self.pushes.member_per_minute, 60),
                                       Window(self.pushes.member_per_hour, 3600)))
        self.calls = SlidingWindows((Window(self.pushes.app_calls_per_minute, 60),))
        self.robot = SlidingWindows((Window(self.pushes.webhook_per_minute, 60),))
        self._primed = False

    # ------------------------------------------------------------------ start-up

    async def take_over(self) -> int:
        """Become the dispatcher: rows a dead process left 'sending' go back to pending
        (WeCom's duplicate check catches any it did send), and the limits start from what
        went out in the last hour. Returns how many rows were recovered."""
        outbox = OutboxMessage.__table__
        now = self.clock()
        async with self.engine.begin() as connection:
            recovered = (await connection.execute(update(outbox).where(outbox.c.status == "sending")
                                                  .values(status="pending"))).rowcount or 0
            sent = (await connection.execute(
                select(outbox.c.touser, outbox.c.sent_at, outbox.c.channel, outbox.c.msgid)
                .where(outbox.c.status == "sent", outbox.c.sent_at > now - timedelta(hours=1),
                       outbox.c.channel != "card_update")
                .order_by(outbox.c.sent_at))).all()
        for limits in (self.members, self.calls, self.robot):
            limits.forget()
        calls_seen = set()
        for row in sent:
            at = as_utc(row.sent_at).timestamp()
            if row.channel == "webhook":
                self.robot.record([WEBHOOK_KEY], at)
                continue
            self.members.record([user for user in row.touser.split("|") if user], at)
            if (row.msgid, at) not in calls_seen:
                calls_seen.add((row.msgid, at))
                self.calls.record([APP_KEY], at)
        self._primed = True
        if recovered:
            logger.warning("outbox: %s rows were left 'sending' by a stopped dispatcher; sending them again", recovered)
        return recovered

    # ------------------------------------------------------------------ one pass

    async def run_once(self) -> int:
        """Send what is due; returns how many rows were handled (sent, failed or deferred)."""
        if not self._primed:
            await self.take_over()
        now = self.clock()
        rows = await self._claim(now)
        if not rows:
            return 0
        plan = _Plan(self.members.copy(), self.calls.copy(), self.robot.copy())
        try:
            for unit in await self._units(rows, now):
                await self._deliver(unit, plan)
            await self._defer_planned(plan.deferred)
        except BaseException:
            # The database went away mid-pass, or we are being stopped: what this pass claimed
            # and did not finish goes back to pending now, not at the next take-over. (One sent
            # but not recorded is caught by WeCom's duplicate check when it goes again.)
            await self._unclaim([row.id for row in rows])
            raise
        return len(rows)

    async def _unclaim(self, ids: list[int]) -> None:
        outbox = OutboxMessage.__table__
        try:
            async with self.engine.begin() as connection:
                for chunk in _chunks(ids, 500):
                    await connection.execute(update(outbox).where(outbox.c.id.in_(chunk),
                                                                  outbox.c.status == "sending")
                                             .values(status="pending"))
        except Exception:
            logger.exception("could not put claimed outbox rows back; the next take-over will")

    async def drain(self, max_passes: int = 1000) -> int:
        """Passes until nothing is due now; returns rows handled."""
        handled = 0
        for _ in range(max_passes):
            count = await self.run_once()
            if not count:
                break
            handled += count
        return handled

    async def _claim(self, now: datetime) -> list[Any]:
        outbox = OutboxMessage.__table__
        due = (outbox.c.status == "pending") & ((outbox.c.not_before.is_(None)) | (outbox.c.not_before <= now))
        async with self.engine.begin() as connection:
            first = (await connection.execute(select(outbox.c.id, outbox.c.batch_key).where(due)
                                              .order_by(outbox.c.id).limit(self.batch))).all()
            if not first:
                return []
            ids = {row.id for row in first}
            keys = sorted({row.batch_key for row in first if row.batch_key})
            if keys:
                # The whole batch, or a summary would leave some of its rows for a second message.
                ids.update((await connection.execute(select(outbox.c.id).where(due, outbox.c.batch_key.in_(keys))))
                           .scalars())
            claimed = []
            for chunk in _chunks(sorted(ids), 500):
                claimed.extend((await connection.execute(
                    update(outbox).where(outbox.c.id.in_(chunk), outbox.c.status == "pending")
                    .values(status="sending", claimed_at=now, attempts=outbox.c.attempts + 1)
                    .returning(*outbox.c))).all())
        return sorted(claimed, key=lambda row: row.id)

    async def _units(self, rows: list[Any], now: datetime) -> list[_Unit]:
        units: list[_Unit] = []
        batches: dict[str, list[Any]] = defaultdict(list)
        singles: list[Any] = []
        for row in rows:
            (batches[row.batch_key] if row.batch_key else singles).append(row)

        last_sent = await self._last_batch_times(list(batches)) if batches else {}
        chosen = await self._chosen_languages(rows)
        for key, members in batches.items():
            every = max(row.batch_every for row in members)
            last = last_sent.get(key)
            if every and last is not None and now < last + timedelta(seconds=every):
                await self._defer(members, last + timedelta(seconds=every), counted=False)
                continue
            kind = members[0].kind
            needed = self.pushes.summary_from if kind in REP_KINDS else 2
            if len(members) >= needed:
                msgtype, body = messages.summary_for(kind, [row.batch_item or {} for row in members],
                                                     self._language_of(members[0], chosen))
                units.append(_Unit(members, members[0].channel, message_payload(msgtype, body),
                                   _members(members[0].touser), key, every))
            else:
                units.extend(_Unit([row], row.channel, self._payload(row, chosen), _members(row.touser), key, every)
                             for row in members)

        # Identical messages to different members: one call, up to WeCom's 1000 recipients.
        same: dict[tuple[str, str], list[Any]] = defaultdict(list)
        for row in singles:
            payload = self._payload(row, chosen)
            if row.channel == "app":
                same[(row.msgtype, json.dumps(payload, sort_keys=True, ensure_ascii=False))].append((row, payload))
            else:
                units.append(_Unit([row], row.channel, payload, _members(row.touser)))
        for group in same.values():
            unit: _Unit | None = None
            seen: set[str] = set()
            for row, payload in group:
                wanted = [member for member in _members(row.touser) if member not in seen]
                if unit is None or len(seen) + len(wanted) > MAX_RECIPIENTS:
                    unit, seen = _Unit([], "app", payload, []), set()
                    wanted = list(dict.fromkeys(_members(row.touser)))
                    units.append(unit)
                unit.rows.append(row)
                unit.members.extend(wanted)
                seen.update(wanted)
        return units

    def _payload(self, row: Any, chosen: dict[str, str]) -> dict[str, Any]:
        """The row's message: as queued, or made now from its item (outbox.RENDER_WHEN_SENT)."""
        if row.payload:
            return row.payload
        msgtype, body = messages.message_for(row.kind, row.batch_item or {}, self._language_of(row, chosen))
        return message_payload(msgtype, body)

    async def _chosen_languages(self, rows: list[Any]) -> dict[str, str]:
        """The languages of the recipients whose messages are made now (from their items, or
        as a summary); a row queued with its message needs none, nor a database call."""
        made_now = {member for row in rows if not row.payload or row.batch_key for member in _members(row.touser)}
        if not made_now:
            return {}
        async with self.engine.connect() as connection:
            return await connection.run_sync(recipient_languages, made_now)

    def _language_of(self, row: Any, chosen: dict[str, str]) -> str:
        """The language a row's message is made in: its one recipient's own, if they chose
        one (a message to several, or to a group robot, is in the service's)."""
        members = _members(row.touser)
        return chosen.get(members[0], self.language) if len(members) == 1 else self.language

    async def _last_batch_times(self, keys: list[str]) -> dict[str, datetime]:
        batches = OutboxBatch.__table__
        async with self.engine.connect() as connection:
            rows = (await connection.execute(select(batches.c.batch_key, batches.c.last_sent_at)
                                             .where(batches.c.batch_key.in_(keys)))).all()
        return {row.batch_key: as_utc(row.last_sent_at) for row in rows}

    # ------------------------------------------------------------------ sending

    async def _deliver(self, unit: _Unit, plan: "_Plan") -> None:
        now = self.clock()
        stamp = now.timestamp()
        wait = max(windows.wait_for(keys, stamp) for windows, keys in _limits_of(plan, unit, unit.members))
        if wait > 0:
            # Book the slot this unit will take, so the next unit for the same member waits
            # for the slot after it: a backlog is spread over time once, not claimed and
            # put back every pass. The small margin keeps float rounding from waking early.
            for windows, keys in _limits_of(plan, unit, unit.members):
                windows.record(keys, stamp + wait)
            plan.deferred.append((unit.rows, now + timedelta(seconds=wait + 0.01)))
            return
        try:
            result = await self._call(unit)
        except Exception as error:  # every failure is recorded on the rows; none may stop the loop
            await self._failed(unit, error, now)
            return
        invalid = set(result.invaliduser) if result is not None else set()
        accepted = [member for member in unit.members if member not in invalid]
        for holder in (self, plan):
            for windows, keys in _limits_of(holder, unit, accepted):
                windows.record(keys, stamp)
        await self._sent(unit, result, invalid, now)

    async def _defer_planned(self, deferred: list[tuple[list[Any], datetime]]) -> None:
        """Rows waiting for room under a limit, each until its booked slot, in one statement."""
        if not deferred:
            return
        outbox = OutboxMessage.__table__
        values = [{"row_id": row.id, "due": self._not_in_quiet_hours([row], until)}
                  for rows, until in deferred for row in rows]
        async with self.engine.begin() as connection:
            await connection.execute(update(outbox).where(outbox.c.id == bindparam("row_id")).values(
                status="pending", not_before=bindparam("due"), attempts=outbox.c.attempts - 1), values)

    async def _call(self, unit: _Unit):
        duplicate_check = {"enable_duplicate_check": True,
                           "duplicate_check_interval": self.pushes.duplicate_check_seconds}
        if unit.channel == "app":
            return await self.client.send_message({**unit.payload, "touser": "|".join(unit.members)},
                                                  **duplicate_check)
        if unit.channel == "card_update":
            update_body = unit.payload
            return await self.client.update_template_card(
                unit.members, update_body["response_code"], update_body.get("template_card"),
                replace_button_name=update_body.get("replace_name"))
        if self.webhook is None:
            raise PermanentDeliveryError("no group robot configured (WECOM_WEBHOOK_KEY)")
        await self.webhook.send(unit.payload)
        return None

    async def _sent(self, unit: _Unit, result, invalid: set[str], now: datetime) -> None:
        outbox = OutboxMessage.__table__
        delivered, refused = [], []
        for row in unit.rows:
            members = _members(row.touser)
            (refused if members and set(members) <= invalid else delivered).append(row)
        async with self.engine.begin() as connection:
            if delivered:
                await connection.execute(update(outbox).where(outbox.c.id.in_([row.id for row in delivered])).values(
                    status="sent", sent_at=now, last_error=None, msgid=getattr(result, "msgid", None),
                    response_code=getattr(result, "response_code", None)))
            if refused:
                await connection.execute(update(outbox).where(outbox.c.id.in_([row.id for row in refused])).values(
                    status="failed", last_error="81013: not a valid recipient of this app (invaliduser)"))
            if unit.batch_key and unit.batch_every:
                await _upsert_batch(connection, unit.batch_key, now)
            if refused:
                await self._tell_admins(connection, refused, "81013: invaliduser", now)
        if self.metrics:
            self.metrics.outbox_sent.inc(len(delivered))
            if refused:
                self.metrics.outbox_failed.labels(errcode="81013").inc(len(refused))

    async def _failed(self, unit: _Unit, error: Exception, now: datetime) -> None:
        errcode = getattr(error, "errcode", None)
        # No errcode: WeCom gave no answer (timeout, dropped connection, not JSON).
        code = "transport" if errcode is None else str(errcode)
        reason = f"{code}: {getattr(error, 'errmsg', str(error))}"[:1000]
        retry = getattr(error, "retryable", False) and not isinstance(error, PermanentDeliveryError)
        rows = unit.rows
        if errcode == BUSY:
            # Each row its own count: one batched with a row answered -1 three times before
            # still has its retries.
            spent = [row for row in rows if row.busy_answers >= BUSY_RETRIES]
            if spent:
                await self._give_up(spent, unit.channel, code,
                                    f"{reason} (answered {BUSY_RETRIES + 1} times; given up)", now)
            rows = [row for row in rows if row.busy_answers < BUSY_RETRIES]
            if rows:
                pause = BUSY_PAUSES_SECONDS[max(row.busy_answers for row in rows)] * random.uniform(1.0, 1.2)
                await self._defer(rows, now + timedelta(seconds=pause), counted=True, last_error=reason, busy=True)
                if self.metrics:
                    self.metrics.outbox_retries.labels(errcode=code).inc(len(rows))
            return
        oldest = min(as_utc(row.created_at) for row in rows)
        if retry and now - oldest < RETRY_FOR:
            attempts = max(row.attempts for row in rows)
            pause = backoff_seconds(attempts)
            await self._defer(rows, now + timedelta(seconds=pause), counted=True, last_error=reason)
            if self.metrics:
                self.metrics.outbox_retries.labels(errcode=code).inc(len(rows))
            logger.warning("outbox %s: %s; trying again in %.0f s", ",".join(str(row.id) for row in rows), reason,
                           pause)
            return
        await self._give_up(rows, unit.channel, code, reason, now)

    async def _give_up(self, rows: list[Any], channel: str, errcode: str, reason: str, now: datetime) -> None:
        """Failed for good: recorded with its reason, counted, and told to the admins."""
        outbox = OutboxMessage.__table__
        async with self.engine.begin() as connection:
            await connection.execute(update(outbox).where(outbox.c.id.in_([row.id for row in rows]))
                                     .values(status="failed", last_error=reason))
            if channel != "card_update":
                await self._tell_admins(connection, rows, reason, now)
        if self.metrics:
            self.metrics.outbox_failed.labels(errcode=errcode).inc(len(rows))
        logger.warning("outbox %s given up: %s", ",".join(str(row.id) for row in rows), reason)

    def _not_in_quiet_hours(self, rows: list[Any], until: datetime) -> datetime:
        """A push put back to wait must not come out in the night either."""
        if self.timezone is None or all(row.kind in NEVER_HELD for row in rows):
            return until
        quiet = self.pushes.quiet_hours
        return quiet_until(until, parse_hh_mm(quiet.start), parse_hh_mm(quiet.end), self.timezone,
                           rows[0].touser) or until

    async def _defer(self, rows: list[Any], until: datetime, *, counted: bool, last_error: str | None = None,
                     busy: bool = False) -> None:
        """Back to pending until `until`; a wait for room under a limit is not an attempt.
        `busy`: WeCom answered -1, which counts towards BUSY_RETRIES."""
        outbox = OutboxMessage.__table__
        until = self._not_in_quiet_hours(rows, until)
        values: dict[str, Any] = {"status": "pending", "not_before": until}
        if not counted:
            values["attempts"] = outbox.c.attempts - 1
        if busy:
            values["busy_answers"] = outbox.c.busy_answers + 1
        if last_error is not None:
            values["last_error"] = last_error
        async with self.engine.begin() as connection:
            await connection.execute(update(outbox).where(outbox.c.id.in_([row.id for row in rows])).values(**values))

    async def _tell_admins(self, connection, rows: list[Any], reason: str, now: datetime) -> None:
        """A notice to every admin, batched to one an hour; never about notices themselves."""
        reported = [row for row in rows if row.kind != "delivery_failure"]
        if not reported:
            return
        admins = (await connection.execute(select(User.userid, User.language).where(User.role == "admin"))).all()
        notices = []
        for row in reported:
            item = {"touser": row.touser or "group robot", "kind": row.kind, "reason": reason}
            notices.extend(outbox_row([admin], "markdown",
                                      {"content": messages.delivery_failures([item], language or self.language)},
                                      origin=f"failure:{row.id}:{admin}", kind="delivery_failure",
                                      batch_key=f"failures:{admin}", batch_every=3600, batch_item=item, now=now)
                           for admin, language in admins)
        if notices:
            await connection.execute(OutboxMessage.__table__.insert(), notices)

    # ------------------------------------------------------------------ loop

    async def next_due_in(self, ceiling: float) -> float:
        """Seconds until the earliest pending row is due (at most `ceiling`)."""
        outbox = OutboxMessage.__table__
        async with self.engine.connect() as connection:
            earliest = (await connection.execute(select(func.min(outbox.c.not_before))
                                                 .where(outbox.c.status == "pending"))).scalar()
        if earliest is None:
            return ceiling
        return max(0.0, min(ceiling, (as_utc(earliest) - self.clock()).total_seconds()))


@dataclass
class _Plan:
    """One pass's view of the limits: the real windows plus the slots booked for rows
    that must wait."""

    members: SlidingWindows
    calls: SlidingWindows
    robot: SlidingWindows
    deferred: list[tuple[list[Any], datetime]] = field(default_factory=list)


def _limits_of(holder, unit: _Unit, members: list[str]) -> list[tuple[SlidingWindows, list[str]]]:
    """The windows a unit's call counts against (on a Dispatcher or a _Plan)."""
    if unit.channel == "webhook":
        return [(holder.robot, [WEBHOOK_KEY])]
    if unit.channel == "card_update":
        return [(holder.calls, [APP_KEY])]
    return [(holder.calls, [APP_KEY]), (holder.members, members)]


class PermanentDeliveryError(Exception):
    """Sending cannot work until someone changes the setup."""

    errcode = None
    retryable = False


def _members(touser: str) -> list[str]:
    return [user for user in (touser or "").split("|") if user]


def _chunks(values: list, size: int):
    for start in range(0, len(values), size):
        yield values[start:start + size]


async def _upsert_batch(connection, key: str, at: datetime) -> None:
    insert = pg_insert if connection.dialect.name == "postgresql" else sqlite_insert
    statement = insert(OutboxBatch.__table__).values(batch_key=key, last_sent_at=at)
    await connection.execute(statement.on_conflict_do_update(index_elements=["batch_key"],
                                                             set_={"last_sent_at": at}))
