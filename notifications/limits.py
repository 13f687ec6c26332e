"""Sliding-window send limits: WeCom drops messages past 30 a minute or 1000 an hour to
one member of an app silently (DESIGN §5), so the dispatcher must never get there.

Hand-written rather than a rate-limiting library because the dispatcher needs two things
those do not offer: to look at several members at once without using up anything (a
message to three members goes only when all three have room), and to start from the
sends recorded in the database, so a restart — or another process taking over the
dispatch lease — does not forget the last hour.
"""

from __future__ import annotations

import bisect
from collections import deque
from dataclasses import dataclass, field
from typing import Iterable


@dataclass(frozen=True)
class Window:
    limit: int
    seconds: float


@dataclass
class SlidingWindows:
    """Timestamps (epoch seconds) of past sends per key, checked against every window."""

    windows: tuple[Window, ...]
    _sent: dict[str, deque[float]] = field(default_factory=dict)

    def _history(self, key: str, now: float) -> deque[float]:
        history = self._sent.setdefault(key, deque())
        horizon = now - max(window.seconds for window in self.windows)
        while history and history[0] <= horizon:
            history.popleft()
        return history

    def wait_for(self, keys: Iterable[str], now: float) -> float:
        """Seconds until every key has room for one more send (0: now)."""
        wait = 0.0
        for key in keys:
            history = self._history(key, now)
            for window in self.windows:
                recent = [at for at in history if at > now - window.seconds]
                if len(recent) >= window.limit:
                    # Room opens when the oldest send that still counts leaves the window.
                    wait = max(wait, recent[-window.limit] + window.seconds - now)
        return wait

    def record(self, keys: Iterable[str], at: float) -> None:
        for key in keys:
            # No trimming here: `at` may be a slot booked in the future, and trimming
            # against it would forget sends that still count now. wait_for trims.
            history = self._sent.setdefault(key, deque())
            if history and at < history[-1]:
                # A plan books future slots before a real send lands at an earlier time:
                # keep the history in time order, as wait_for relies on.
                history.insert(bisect.bisect_right(history, at), at)
            else:
                history.append(at)

    def sent_within(self, key: str, now: float, seconds: float) -> int:
        return sum(1 for at in self._history(key, now) if at > now - seconds)

    def forget(self) -> None:
        self._sent.clear()

    def copy(self) -> "SlidingWindows":
        """An independent copy, to plan future sends on without touching the real record."""
        return SlidingWindows(self.windows, {key: deque(history) for key, history in self._sent.items()})
