"""Sends outbox rows through the WeCom API.

A row is claimed (pending → sending) in its own transaction before the call, and marked
sent or failed after it; retryable errors put it back with a later `not_before`.
Rate limits, quiet hours and batching come with the pushes issue.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime, timedelta, timezone

from sqlalchemy import or_, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from storage.models import OutboxMessage

logger = logging.getLogger(__name__)

MAX_ATTEMPTS = 6
BACKOFF_SECONDS = (2, 5, 15, 60, 300)


def _now() -> datetime:
    return datetime.now(timezone.utc)


class Dispatcher:
    def __init__(self, engine: AsyncEngine, client, metrics=None, batch: int = 50):
        # `client` is a bot.wecom_client.WeComClient; its errors carry errcode and retryable.
        self.engine = engine
        self.client = client
        self.metrics = metrics
        self.batch = batch
        self.wakeup = asyncio.Event()

    async def run_once(self) -> int:
        """Send what is due; returns how many rows were handled."""
        outbox = OutboxMessage.__table__
        async with self.engine.begin() as connection:
            rows = (await connection.execute(
                select(outbox.c.id, outbox.c.touser, outbox.c.payload, outbox.c.attempts)
                .where(outbox.c.status == "pending", or_(outbox.c.not_before.is_(None), outbox.c.not_before <= _now()))
                .order_by(outbox.c.id).limit(self.batch))).all()
            claimed = []
            for row in rows:
                result = await connection.execute(update(outbox).where(outbox.c.id == row.id,
                                                                       outbox.c.status == "pending")
                                                  .values(status="sending", attempts=row.attempts + 1))
                if result.rowcount:
                    claimed.append(row)
        for row in claimed:
            await self._send(row)
        return len(claimed)

    async def _send(self, row) -> None:
        outbox = OutboxMessage.__table__
        payload = {**row.payload, "touser": row.touser}
        try:
            # WeCom's own duplicate check: a resend after a crash between the call and the
            # status update is dropped by WeCom instead of reaching the user twice.
            await self.client.send_message(payload, enable_duplicate_check=True, duplicate_check_interval=1800)
        except Exception as error:
            attempts = row.attempts + 1
            errcode = getattr(error, "errcode", None)
            reason = f"{errcode}: {getattr(error, 'errmsg', str(error))}"[:1000]
            if getattr(error, "retryable", False) and attempts < MAX_ATTEMPTS:
                delay = BACKOFF_SECONDS[min(attempts - 1, len(BACKOFF_SECONDS) - 1)]
                values = {"status": "pending", "not_before": _now() + timedelta(seconds=delay), "last_error": reason}
            else:
                values = {"status": "failed", "last_error": reason}
                if self.metrics:
                    self.metrics.outbox_failed.labels(errcode=str(errcode)).inc()
                logger.warning("outbox %s given up: %s", row.id, values["last_error"])
        else:
            values = {"status": "sent", "sent_at": _now(), "last_error": None}
            if self.metrics:
                self.metrics.outbox_sent.inc()
        async with self.engine.begin() as connection:
            await connection.execute(update(outbox).where(outbox.c.id == row.id).values(**values))

    async def recover_stale(self, older_than: timedelta = timedelta(minutes=5)) -> int:
        """Rows left 'sending' by a process that died go back to pending."""
        outbox = OutboxMessage.__table__
        async with self.engine.begin() as connection:
            result = await connection.execute(
                update(outbox).where(outbox.c.status == "sending", outbox.c.created_at < _now() - older_than)
                .values(status="pending"))
        return result.rowcount or 0

    async def run_forever(self, idle_seconds: float = 1.0) -> None:
        while True:
            try:
                handled = await self.run_once()
            except Exception:
                logger.exception("outbox dispatch failed; trying again")
                handled = 0
            if not handled:
                try:
                    await asyncio.wait_for(self.wakeup.wait(), timeout=idle_seconds)
                except asyncio.TimeoutError:
                    pass
                self.wakeup.clear()
