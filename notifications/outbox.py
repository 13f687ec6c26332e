"""The outbox: every outgoing message is first a row (DESIGN §2), written in the same
transaction as whatever caused it, and sent later by the dispatcher."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any, Iterable

from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from storage.models import OutboxMessage


def message_payload(msgtype: str, body: dict[str, Any]) -> dict[str, Any]:
    """The message/send body without touser/agentid, e.g. {"msgtype": "text", "text": {...}}."""
    return {"msgtype": msgtype, msgtype: body}


async def enqueue(connection: AsyncConnection, touser: Iterable[str], msgtype: str, body: dict[str, Any],
                  origin: str | None = None) -> None:
    """Add a message inside the caller's transaction. `origin` names why it exists; a
    second message with the same origin is refused by the database (IntegrityError)."""
    await connection.execute(OutboxMessage.__table__.insert().values(
        created_at=datetime.now(timezone.utc), touser="|".join(touser), msgtype=msgtype,
        payload=message_payload(msgtype, body), status="pending", attempts=0, origin=origin))


async def enqueue_once(engine: AsyncEngine, touser: Iterable[str], msgtype: str, body: dict[str, Any],
                       origin: str) -> bool:
    """Enqueue in a transaction of its own; False if that origin was queued before."""
    try:
        async with engine.begin() as connection:
            await enqueue(connection, touser, msgtype, body, origin)
    except IntegrityError:
        return False
    return True
