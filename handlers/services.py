"""What command handlers may use to answer: the database and the configuration."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, Awaitable, Callable

from sqlalchemy.ext.asyncio import AsyncEngine

from storage import queries

if TYPE_CHECKING:  # handlers must not import bot at run time (bot → handlers)
    from bot.config import Config

# WeCom's limit for text and app markdown messages.
MESSAGE_BYTES = 2048


# How long answers may rely on what they looked up before: users and reporting lines
# change with an import, the latest run with a rescore.
CACHE_SECONDS = 30.0


@dataclass
class Services:
    db: AsyncEngine
    config: "Config"
    # Wakes the outbox dispatcher so a queued row goes out now instead of at its next pass
    # (card updates after a button press); None where nothing dispatches (tests, CLI).
    wake: Callable[[], None] | None = None
    # Wakes the ticket router so a ticket opened in chat is routed now (bot.app sets it).
    wake_tickets: Callable[[], None] | None = None
    _cache: dict = field(default_factory=dict, repr=False)

    def now(self) -> datetime:
        return datetime.now(self.config.tz)

    def wake_dispatcher(self) -> None:
        if self.wake is not None:
            self.wake()

    async def cached(self, key: tuple, load: Callable[[], Awaitable[Any]], seconds: float = CACHE_SECONDS) -> Any:
        """`load()`'s value, reused for `seconds`: every message would otherwise look up
        the same user, reporting tree and latest run again."""
        hit = self._cache.get(key)
        now = time.monotonic()
        if hit is not None and hit[0] > now:
            return hit[1]
        value = await load()
        if len(self._cache) > 10_000:
            self._cache.clear()
        self._cache[key] = (now + seconds, value)
        return value

    async def latest_run_id(self, connection) -> int | None:
        """The newest finished full run's id, looked up at most every 5 s: a rescore
        that lands should show within seconds."""
        return await self.cached(("latest_run",), lambda: queries.latest_run_id(connection), seconds=5.0)

    async def visible_owners(self, connection, asker) -> list[str] | None:
        """Whose customers `asker` may see (storage.queries.visible_owners; None: everyone's)."""
        return await self.cached(("owners", asker.userid, asker.role),
                                 lambda: queries.visible_owners(connection, asker))

    def forget(self, key: tuple) -> None:
        """Drop a cached value the asker has just changed (their own language)."""
        self._cache.pop(key, None)
