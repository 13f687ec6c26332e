"""Working days and working hours: the library's years, the config's overrides, and the
Monday–Friday fallback for years nobody has described yet."""

from __future__ import annotations

import logging
from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo

import chinese_calendar
import pytest

from notifications import workdays
from notifications.workdays import CalendarConfig, WorkCalendar

SHANGHAI = ZoneInfo("Asia/Shanghai")
MAKE_UP_DAYS_2026 = [date(2026, 1, 4), date(2026, 2, 14), date(2026, 2, 28),
                     date(2026, 5, 9), date(2026, 9, 20), date(2026, 10, 10)]


def at(year: int, month: int, day: int, hour: int, minute: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=SHANGHAI)


def fallback_warnings(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "notifications.workdays" and r.levelno == logging.WARNING]


@pytest.mark.parametrize("day", MAKE_UP_DAYS_2026, ids=str)
def test_2026_make_up_days_are_workdays(day: date) -> None:
    assert day.weekday() >= 5  # a weekend day, so only the holiday schedule can make it a workday
    assert WorkCalendar().is_workday(day)


def test_ordinary_2026_saturday_is_not_a_workday() -> None:
    assert not WorkCalendar().is_workday(date(2026, 3, 7))


@pytest.mark.parametrize("day", [date(2026, 10, 1), date(2026, 2, 17)], ids=["national-day", "spring-festival"])
def test_2026_public_holidays_on_weekdays_are_not_workdays(day: date) -> None:
    assert day.weekday() < 5
    assert chinese_calendar.is_holiday(day)
    assert not WorkCalendar().is_workday(day)


def test_unknown_year_falls_back_to_monday_to_friday_with_one_warning(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="notifications.workdays")
    calendar = WorkCalendar()
    for _ in range(5):
        assert calendar.is_workday(date(2027, 3, 1))  # Monday
        assert not calendar.is_workday(date(2027, 3, 6))  # Saturday
    assert calendar.workdays_between(date(2027, 1, 1), date(2027, 12, 31)) == 260  # other 2027 days: no new warning
    warnings = fallback_warnings(caplog)
    assert len(warnings) == 1
    assert "2027" in warnings[0].getMessage() and "calendar:" in warnings[0].getMessage()


def test_config_overrides_for_an_unknown_year(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="notifications.workdays")
    calendar = WorkCalendar(CalendarConfig(holidays=[date(2027, 10, 1)], workdays=[date(2027, 9, 25)]))
    assert not calendar.is_workday(date(2027, 10, 1))  # a Friday listed as a holiday
    assert calendar.is_workday(date(2027, 9, 25))  # a Saturday listed as a make-up day
    assert calendar.is_workday(date(2027, 9, 24)) and not calendar.is_workday(date(2027, 9, 26))  # unlisted: Mon–Fri
    assert fallback_warnings(caplog) == []  # the admin has described 2027


def test_config_overrides_the_library() -> None:
    calendar = WorkCalendar(CalendarConfig(holidays=[date(2026, 3, 9)], workdays=[date(2026, 10, 2)]))
    assert not calendar.is_workday(date(2026, 3, 9))  # an ordinary Monday per the library
    assert calendar.is_workday(date(2026, 10, 2))  # National Day per the library


def test_answers_are_cached_per_day(monkeypatch: pytest.MonkeyPatch) -> None:
    asked: list[date] = []
    real = chinese_calendar.is_workday
    monkeypatch.setattr(workdays.chinese_calendar, "is_workday", lambda day: asked.append(day) or real(day))
    calendar = WorkCalendar()
    for _ in range(10):
        calendar.is_workday(date(2026, 10, 1))
    assert asked == [date(2026, 10, 1)]


def test_date_in_both_lists_is_rejected_with_the_date() -> None:
    with pytest.raises(ValueError, match="2027-05-03.*both holidays and workdays"):
        CalendarConfig(holidays=[date(2027, 5, 3)], workdays=[date(2027, 5, 3)])


@pytest.mark.parametrize("hours, message", [
    (("9:00", "18:00"), 'must be "HH:MM"'),
    (("09:00", "24:30"), 'must be "HH:MM"'),
    (("nine", "18:00"), 'must be "HH:MM"'),
    (("18:00", "09:00"), "must be earlier"),
    (("09:00", "09:00"), "must be earlier"),
])
def test_bad_working_hours_are_rejected(hours: tuple[str, str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        CalendarConfig(working_hours=hours)


def test_working_hours_from_yaml_list_are_accepted() -> None:
    assert CalendarConfig.model_validate({"working_hours": ["08:30", "17:30"]}).working_hours == ("08:30", "17:30")


def test_add_workdays_across_national_day() -> None:
    calendar = WorkCalendar()
    # The library's view: Oct 1–7 off, Oct 8 and 9 the first working days after Sep 30.
    assert chinese_calendar.get_workdays(date(2026, 10, 1), date(2026, 10, 9)) == [date(2026, 10, 8), date(2026, 10, 9)]
    assert calendar.add_workdays(date(2026, 9, 30), 2) == date(2026, 10, 9)
    assert calendar.add_workdays(date(2026, 9, 30), 0) == date(2026, 9, 30)
    assert calendar.add_workdays(date(2026, 10, 3), 0) == date(2026, 10, 8)
    with pytest.raises(ValueError):
        calendar.add_workdays(date(2026, 9, 30), -1)


def test_next_workday_and_workdays_between() -> None:
    calendar = WorkCalendar()
    assert calendar.next_workday(date(2026, 9, 30)) == date(2026, 9, 30)
    assert calendar.next_workday(date(2026, 9, 30), include_today=False) == date(2026, 10, 8)
    assert calendar.workdays_between(date(2026, 9, 30), date(2026, 10, 10)) == 3  # Oct 8, 9 and make-up Oct 10
    assert calendar.workdays_between(date(2026, 10, 10), date(2026, 9, 30)) == 0


def test_is_working_time() -> None:
    calendar = WorkCalendar()
    assert calendar.is_working_time(at(2026, 3, 6, 9))
    assert not calendar.is_working_time(at(2026, 3, 6, 18))  # closing time is already outside
    assert not calendar.is_working_time(at(2026, 3, 7, 10))  # ordinary Saturday
    assert calendar.is_working_time(at(2026, 10, 10, 10))  # make-up Saturday


@pytest.mark.parametrize("start, duration, expected", [
    (at(2026, 3, 6, 17), timedelta(hours=2), at(2026, 3, 9, 10)),  # Friday → Monday
    (at(2026, 10, 9, 17), timedelta(hours=2), at(2026, 10, 10, 10)),  # Friday → make-up Saturday
    (at(2026, 9, 30, 17), timedelta(hours=2), at(2026, 10, 8, 10)),  # over National Day
    (at(2026, 3, 4, 20), timedelta(hours=1), at(2026, 3, 5, 10)),  # after hours: from next opening
    (at(2026, 3, 5, 7), timedelta(hours=1), at(2026, 3, 5, 10)),  # before opening: from opening
    (at(2026, 3, 6, 17), timedelta(hours=1), at(2026, 3, 6, 18)),  # ends exactly at closing
    (at(2026, 3, 4, 10), timedelta(hours=18), at(2026, 3, 6, 10)),  # spans two full days
])
def test_add_working_time(start: datetime, duration: timedelta, expected: datetime) -> None:
    result = WorkCalendar().add_working_time(start, duration)
    assert result == expected
    assert result.tzinfo is SHANGHAI


def test_add_working_time_uses_configured_hours_on_the_wall_clock() -> None:
    calendar = WorkCalendar(CalendarConfig(working_hours=("10:00", "16:00")))
    tokyo = ZoneInfo("Asia/Tokyo")
    result = calendar.add_working_time(datetime(2026, 3, 6, 15, tzinfo=tokyo), timedelta(hours=2))
    assert result == datetime(2026, 3, 9, 11, tzinfo=tokyo) and result.tzinfo is tokyo


def test_naive_datetimes_are_rejected() -> None:
    calendar = WorkCalendar()
    with pytest.raises(ValueError, match="time zone"):
        calendar.add_working_time(datetime(2026, 3, 6, 17), timedelta(hours=2))
    with pytest.raises(ValueError, match="time zone"):
        calendar.is_working_time(datetime(2026, 3, 6, 17))
