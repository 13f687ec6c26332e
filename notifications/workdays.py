"""Working days and working hours in mainland China, for task due dates and ticket SLAs.

Public holidays and make-up working days (调休) move every year: the State Council
publishes the next year's schedule in November/December. `chinese-calendar` encodes the
published years (2004–2026 in 1.11.0) and raises NotImplementedError for any other year,
so a library release alone cannot be relied on at the turn of a year. Hence:

- admins can list extra holidays and make-up days under `calendar:` in config.yaml,
  and those entries win over the library;
- a year that neither the library nor the config describes falls back to Monday–Friday
  with one warning per year, so due dates are still computed instead of crashing a job.

Everything here is pure: callers pass dates and timezone-aware datetimes in.
"""

from __future__ import annotations

import logging
import re
from datetime import date, datetime, time, timedelta

import chinese_calendar
from pydantic import BaseModel, ConfigDict, field_validator, model_validator

logger = logging.getLogger(__name__)

_HH_MM = re.compile(r"([01]\d|2[0-3]):[0-5]\d")


class CalendarConfig(BaseModel):
    """The `calendar:` section of config.yaml."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    holidays: list[date] = []
    workdays: list[date] = []
    working_hours: tuple[str, str] = ("09:00", "18:00")

    @field_validator("working_hours")
    @classmethod
    def _valid_working_hours(cls, hours: tuple[str, str]) -> tuple[str, str]:
        for value in hours:
            if not _HH_MM.fullmatch(value):
                raise ValueError(f'{value!r} must be "HH:MM" on a 24-hour clock, e.g. "09:00"')
        # Zero-padded HH:MM strings order the same way as the times they name.
        if hours[0] >= hours[1]:
            raise ValueError(f"the start {hours[0]} must be earlier than the end {hours[1]}")
        return hours

    @model_validator(mode="after")
    def _no_day_in_both_lists(self) -> CalendarConfig:
        both = sorted(set(self.holidays) & set(self.workdays))
        if both:
            listed = ", ".join(day.isoformat() for day in both)
            raise ValueError(f"{listed} is listed under both holidays and workdays; keep each date in one list")
        return self


class WorkCalendar:
    """Answers "is this a working day / working time?" from the config and `chinese-calendar`."""

    def __init__(self, config: CalendarConfig | None = None) -> None:
        config = config or CalendarConfig()
        self._holidays = frozenset(config.holidays)
        self._workdays = frozenset(config.workdays)
        # An admin who lists any date for a year has described that year, so the
        # "nobody described it" warning would only be noise there.
        self._years_in_config = {day.year for day in self._holidays | self._workdays}
        self._opening = time.fromisoformat(config.working_hours[0])
        self._closing = time.fromisoformat(config.working_hours[1])
        # Digest jobs ask about the same days over and over; answers never change per instance.
        self._answers: dict[date, bool] = {}
        self._warned_years: set[int] = set()

    def is_workday(self, day: date) -> bool:
        # A datetime is a date too; normalise so it shares the cache entry of its day.
        day = day.date() if isinstance(day, datetime) else day
        answer = self._answers.get(day)
        if answer is None:
            answer = self._answers[day] = self._decide(day)
        return answer

    def _decide(self, day: date) -> bool:
        if day in self._holidays:
            return False
        if day in self._workdays:
            return True
        try:
            return chinese_calendar.is_workday(day)
        except NotImplementedError:
            # Outside the library's years: asking it (rather than hard-coding its range)
            # means a newer release that knows the year is picked up automatically.
            pass
        if day.year not in self._years_in_config and day.year not in self._warned_years:
            self._warned_years.add(day.year)
            logger.warning(
                "no public-holiday schedule known for %d: treating Monday–Friday as working days; "
                "list that year's holidays and make-up days under calendar: in config.yaml",
                day.year,
            )
        return day.weekday() < 5

    def next_workday(self, day: date, include_today: bool = True) -> date:
        candidate = day if include_today else day + timedelta(days=1)
        while not self.is_workday(candidate):
            candidate += timedelta(days=1)
        return candidate

    def add_workdays(self, day: date, n: int) -> date:
        """The n-th working day after `day`; n=0 is `day` itself if it is a working day, else the next one."""
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        if n == 0:
            return self.next_workday(day)
        result = day
        for _ in range(n):
            result = self.next_workday(result, include_today=False)
        return result

    def workdays_between(self, start: date, end: date) -> int:
        """Working days in (start, end]: how many working days a task took or has left."""
        count, day = 0, start + timedelta(days=1)
        while day <= end:
            count += self.is_workday(day)
            day += timedelta(days=1)
        return count

    def is_working_time(self, moment: datetime) -> bool:
        _require_aware(moment)
        return self.is_workday(moment.date()) and self._opening <= moment.time() < self._closing

    def add_working_time(self, start: datetime, duration: timedelta) -> datetime:
        """`start` plus `duration` of working time; nights, weekends and holidays do not count.

        Works on the wall clock of `start`'s own tzinfo (datetimes sharing a tzinfo compare
        and subtract by wall clock in Python), so 09:00 means 09:00 local time on every day.
        """
        _require_aware(start)
        if duration < timedelta(0):
            raise ValueError(f"duration must not be negative, got {duration}")
        tz, remaining, cursor = start.tzinfo, duration, start
        while True:
            day = cursor.date()
            if self.is_workday(day):
                closing = datetime.combine(day, self._closing, tzinfo=tz)
                if cursor < closing:
                    cursor = max(cursor, datetime.combine(day, self._opening, tzinfo=tz))
                    if remaining <= closing - cursor:
                        return cursor + remaining
                    remaining -= closing - cursor
            cursor = datetime.combine(day + timedelta(days=1), self._opening, tzinfo=tz)


def _require_aware(moment: datetime) -> None:
    # A naive time would silently be read in the server's zone, not the company's.
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError(f"{moment.isoformat()} has no time zone; pass a timezone-aware datetime")
