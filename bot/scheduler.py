"""The scheduler: a thin layer over APScheduler's AsyncIOScheduler, in the spirit of
python-telegram-bot's JobQueue, wired into `serve`.

Jobs: the nightly full rescore (cron, default 02:00), the morning digest (cron, default
09:00, working days only), the overdue watch (every few minutes) and the outbox
dispatcher (a loop woken whenever something is queued). Incremental rescoring needs no
job: the import and the REST API rescore what they touch at once.

What APScheduler alone does not give, and this layer adds through the `job_state` table:
- one process only: several service processes sharing one database each run a job only
  while holding its lease (renewed while the job runs; a dead holder's lease runs out);
- no double run: a cron job records the slot (its fire time) it completed, so a second
  process — or the same one after a restart — never runs that slot again;
- survive restarts: a slot missed while the service was down runs once at start-up, if
  it is still recent enough (coalesced: several missed slots make one run).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, Awaitable, Callable

from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.cron import CronTrigger
from sqlalchemy import select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncEngine

from notifications.settings import cron_trigger
from storage.db import as_utc
from storage.models import JobState

logger = logging.getLogger(__name__)

LEASE_SECONDS = 60
# A missed cron slot older than this is skipped at start-up rather than run late.
CATCH_UP_WITHIN = timedelta(hours=6)


def utc_now() -> datetime:
    return datetime.now(timezone.utc)


class Leases:
    """Job leases and completed slots in `job_state`, shared by every service process."""

    def __init__(self, engine: AsyncEngine, holder: str | None = None, clock: Callable[[], datetime] = utc_now):
        self.engine = engine
        self.holder = holder or f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"
        self.clock = clock

    async def _ensure(self, connection, name: str) -> None:
        insert = pg_insert if connection.dialect.name == "postgresql" else sqlite_insert
        await connection.execute(insert(JobState.__table__).values(name=name, registered_at=self.clock())
                                 .on_conflict_do_nothing())

    async def acquire(self, name: str, seconds: float = LEASE_SECONDS, slot: str | None = None) -> bool:
        """Take (or renew) the lease; with `slot`, only if that slot has not completed."""
        state = JobState.__table__
        now = self.clock()
        free = state.c.holder.is_(None) | (state.c.holder == self.holder) | (state.c.lease_until < now)
        dead = await self._dead_local_holder(name)
        if dead is not None:
            # A process on this machine that no longer exists (kill -9) holds it: no need
            # to wait for its lease to run out.
            free |= state.c.holder == dead
        condition = (state.c.name == name) & free
        if slot is not None:
            condition &= state.c.last_slot.is_(None) | (state.c.last_slot < slot)
        async with self.engine.begin() as connection:
            await self._ensure(connection, name)
            result = await connection.execute(update(state).where(condition).values(
                holder=self.holder, lease_until=now + timedelta(seconds=seconds)))
        return bool(result.rowcount)

    async def _dead_local_holder(self, name: str) -> str | None:
        async with self.engine.connect() as connection:
            holder = (await connection.execute(select(JobState.holder).where(JobState.name == name))).scalar()
        if not holder or holder == self.holder:
            return None
        host, _, rest = holder.partition(":")
        pid = rest.partition(":")[0]
        if host != socket.gethostname() or not pid.isdigit():
            return None
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            return holder
        except PermissionError:  # alive, someone else's
            return None
        return None

    async def had_before(self, name: str, moment: datetime) -> bool:
        """Record the job; whether a service process had it at `moment` already. Not merely
        "its row exists": a new install's second process, started a minute after the first,
        finds the first one's row, yet no process had the job when the slot went by."""
        async with self.engine.begin() as connection:
            await self._ensure(connection, name)
            registered = (await connection.execute(
                select(JobState.registered_at).where(JobState.name == name))).scalar()
        return registered is None or as_utc(registered) <= moment

    async def completed(self, name: str, slot: str) -> bool:
        async with self.engine.connect() as connection:
            last = (await connection.execute(select(JobState.last_slot).where(JobState.name == name))).scalar()
        return last is not None and last >= slot

    async def release(self, name: str, *, slot: str | None = None, started: datetime | None = None,
                      error: str | None = None) -> None:
        state = JobState.__table__
        values: dict = {"holder": None, "lease_until": None, "last_finished_at": self.clock(), "last_error": error}
        if started is not None:
            values["last_started_at"] = started
        if slot is not None and error is None:
            values["last_slot"] = slot
        async with self.engine.begin() as connection:
            await connection.execute(update(state).where(state.c.name == name, state.c.holder == self.holder)
                                     .values(**values))


def last_fire(trigger: CronTrigger, now: datetime, lookback: timedelta = timedelta(days=8)) -> datetime | None:
    """The trigger's most recent fire time at or before `now` (None within the lookback)."""
    fire = trigger.get_next_fire_time(None, now - lookback)
    last = None
    for _ in range(20_000):
        if fire is None or fire > now:
            break
        last = fire
        fire = trigger.get_next_fire_time(last, last + timedelta(seconds=1))
    return last


def slot_of(moment: datetime) -> str:
    """A fire time as a sortable text key (UTC, to the minute)."""
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%MZ")


@dataclass
class CronJob:
    name: str
    expression: str
    work: Callable[[], Awaitable[None]]
    trigger: CronTrigger | None = None


async def cancel_and_wait(task: asyncio.Task) -> None:
    """Cancel a helper task and wait until it has stopped. A cancellation of the task
    doing the waiting (the service stopping) still goes through: swallowing it with the
    helper's would keep a loop running for ever, and shutdown waiting on it."""
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        current = asyncio.current_task()
        if current is not None and current.cancelling():
            raise


class Scheduler:
    """Registers the jobs, runs each under its lease, and catches up missed slots."""

    def __init__(self, engine: AsyncEngine, timezone_name: str, *, leases: Leases | None = None,
                 clock: Callable[[], datetime] = utc_now):
        self.engine = engine
        self.leases = leases or Leases(engine, clock=clock)
        self.clock = clock
        self.timezone = timezone_name
        self.apscheduler = AsyncIOScheduler(timezone=timezone_name,
                                            job_defaults={"coalesce": True, "max_instances": 1,
                                                          "misfire_grace_time": 3600})
        self.cron_jobs: dict[str, CronJob] = {}
        self.loops: dict[str, Callable[[], Awaitable[None]]] = {}
        self._tasks: list[asyncio.Task] = []

    # ------------------------------------------------------------------ registration

    def cron(self, name: str, expression: str, work: Callable[[], Awaitable[None]]) -> None:
        trigger = cron_trigger(expression, self.timezone)
        self.cron_jobs[name] = CronJob(name, expression, work, trigger)
        self.apscheduler.add_job(self.run_cron, trigger, args=[name], id=name, name=name, replace_existing=True)

    def every(self, name: str, seconds: float, work: Callable[[], Awaitable[None]]) -> None:
        self.apscheduler.add_job(self.run_interval, "interval", seconds=seconds, args=[name, work], id=name,
                                 name=name, replace_existing=True)

    def leased_loop(self, name: str, step: Callable[[], Awaitable[float]], wakeup: asyncio.Event, *,
                    on_acquire: Callable[[], Awaitable[Any]] | None = None) -> None:
        """A job that runs again and again (the dispatcher, the ticket router) for as long
        as this process holds its lease. `step` returns how long to pause; `wakeup.set()`
        ends a pause early; `on_acquire` runs whenever the lease is newly taken."""

        async def body() -> None:
            holding = False
            while True:
                pause = LEASE_SECONDS / 3
                try:
                    if await self.leases.acquire(name):
                        if not holding and on_acquire is not None:
                            await on_acquire()
                        holding = True
                        # A long step keeps its lease: no second process starts the same work.
                        heartbeat = asyncio.create_task(self._renew(name), name=f"{name}-lease")
                        try:
                            pause = await step()
                        finally:
                            await cancel_and_wait(heartbeat)
                    else:
                        holding = False
                except Exception:
                    logger.exception("%s failed; trying again", name)
                    holding = False  # take over afresh: rows this pass left are recovered
                # Back before the lease runs out, or another process may take it meanwhile.
                pause = min(pause, LEASE_SECONDS / 3)
                if pause > 0:
                    try:
                        await asyncio.wait_for(wakeup.wait(), timeout=pause)
                    except asyncio.TimeoutError:
                        pass
                wakeup.clear()

        self.loops[name] = body

    # ------------------------------------------------------------------ running

    async def run_cron(self, name: str, slot: str | None = None) -> bool:
        """Run a cron job's current slot if no process has; True when it ran here."""
        job = self.cron_jobs[name]
        if slot is None:
            fired = last_fire(job.trigger, self.clock())
            if fired is None:
                return False
            slot = slot_of(fired)
        if not await self.leases.acquire(name, slot=slot):
            if not await self.leases.completed(name, slot):
                # Held by a process that may have died: look again once its lease ran out.
                self.apscheduler.add_job(self.run_cron, "date",
                                         run_date=self.clock() + timedelta(seconds=LEASE_SECONDS + 5),
                                         args=[name, slot], id=f"{name}-retry", replace_existing=True)
            return False
        return await self._leased(name, job.work, slot)

    async def run_interval(self, name: str, work: Callable[[], Awaitable[None]]) -> bool:
        if not await self.leases.acquire(name):
            return False
        return await self._leased(name, work, None)

    async def _leased(self, name: str, work: Callable[[], Awaitable[None]], slot: str | None) -> bool:
        started = self.clock()
        heartbeat = asyncio.create_task(self._renew(name), name=f"{name}-lease")
        error = None
        try:
            await work()
        except Exception as exc:  # recorded in job_state; the next slot tries again
            error = f"{exc.__class__.__name__}: {exc}"[:2000]
            logger.exception("scheduled job %s failed", name)
        finally:
            await cancel_and_wait(heartbeat)
            await self.leases.release(name, slot=slot, started=started, error=error)
        return error is None

    async def _renew(self, name: str) -> None:
        while True:
            await asyncio.sleep(LEASE_SECONDS / 3)
            try:
                await self.leases.acquire(name)
            except Exception:
                logger.exception("renewing the lease of %s failed", name)

    async def start(self) -> None:
        self.apscheduler.start()
        for name, body in self.loops.items():
            self._tasks.append(asyncio.create_task(body(), name=name))
        now = self.clock()
        for job in self.cron_jobs.values():
            fired = last_fire(job.trigger, now)
            # A job no service process has had before missed nothing: a new install started
            # at 03:00 right after its first import and score must not score it all again.
            if fired is None:
                await self.leases.had_before(job.name, now)
                continue
            known = await self.leases.had_before(job.name, fired)
            if known and now - fired <= CATCH_UP_WITHIN:
                slot = slot_of(fired)
                if not await self.leases.completed(job.name, slot):
                    logger.info("job %s missed its %s run: running it now", job.name, fired.isoformat())
                    self._tasks.append(asyncio.create_task(self.run_cron(job.name, slot),
                                                           name=f"{job.name}-catch-up"))

    async def stop(self) -> None:
        if self.apscheduler.running:
            self.apscheduler.shutdown(wait=False)
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        for name in self.loops:
            # Let a restarted or another process take over at once.
            await self.leases.release(name)

    def next_runs(self) -> dict[str, datetime | None]:
        return {job.id: job.next_run_time for job in self.apscheduler.get_jobs()}
