"""What command handlers may use to answer: the database and the configuration."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

from sqlalchemy.ext.asyncio import AsyncEngine

if TYPE_CHECKING:  # handlers must not import bot at run time (bot → handlers)
    from bot.config import Config

# WeCom's limit for text and app markdown messages.
MESSAGE_BYTES = 2048


@dataclass
class Services:
    db: AsyncEngine
    config: "Config"

    def now(self) -> datetime:
        return datetime.now(self.config.tz)
