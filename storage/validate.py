"""Vectorised reading and checking of one batch of data-file rows.

Input: a DataFrame of raw text cells with canonical column names (the importer and the
REST API both produce one). Output: the rows that are valid, converted to the values the
database stores, and one Problem per bad cell. Nothing here touches the database.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date

from decimal import ROUND_HALF_UP, Decimal

import numpy as np
import pandas as pd

from storage.schema_files import Column, FileKind

TRUE_WORDS = frozenset({"true", "1", "yes", "y", "t", "是", "对"})
FALSE_WORDS = frozenset({"false", "0", "no", "n", "f", "否", "不是"})
DATE_FORMAT = "%Y-%m-%d"
# Dates before this year are refused as typos (0026-03-05, 1026-03-05): no CRM holds them.
EARLIEST_YEAR = 1900
# The text form SQLAlchemy itself writes for DateTime on SQLite, so that rows imported in
# bulk compare and sort equal to rows written through the ORM.
DATETIME_FORMAT = "%Y-%m-%d %H:%M:%S.%f"
_OFFSET_SUFFIX = r"(?:Z|[+-]\d\d:?\d\d)$"
_INVISIBLE = "[\u200b\u200c\u200d\u2060\ufeff]"


@dataclass(frozen=True, order=True)
class Problem:
    source: str
    line: int
    column: str
    reason: str

    def __str__(self) -> str:
        return f"{self.source}:{self.line}: {self.column}: {self.reason}"


def _text(series: pd.Series) -> pd.Series:
    """Strip cells and turn empty ones into missing values."""
    # Zero-width characters copied in from web pages and chat would make "C001\u200b" a new id.
    cleaned = series.astype("string").str.replace(_INVISIBLE, "", regex=True).str.strip()
    return cleaned.mask(cleaned == "")


# Excel's day numbers (a date cell formatted as General): 10000 is 1927-05-18, 99999 is
# 2173-10-14; day 0 is 1899-12-30 because Excel counts 1900 as a leap year.
_EXCEL_SERIAL = r"^\d{5}(?:\.\d+)?$"
_EXCEL_EPOCH = pd.Timestamp("1899-12-30")


def _parse_datetimes(values: pd.Series, timezone: str) -> pd.Series:
    """ISO-8601 (also YYYY/MM/DD and 2025年3月5日), or an Excel day number. Stamps with an
    offset are turned into local time."""
    text = values.str.replace("/", "-", regex=False)
    if text.str.contains("年", regex=False, na=False).any():
        text = text.str.replace(r"^(\d{4})\s*年\s*(\d{1,2})\s*月\s*(\d{1,2})\s*[日号]?\s*", r"\1-\2-\3 ",
                                regex=True).str.strip()
    with_offset = text.str.contains(_OFFSET_SUFFIX, regex=True, na=False)
    parsed = pd.Series(pd.NaT, index=values.index, dtype="datetime64[us]")
    naive = ~with_offset & text.notna()
    if naive.any():
        parsed[naive] = pd.to_datetime(text[naive], format="ISO8601", errors="coerce")
    if with_offset.any():
        aware = pd.to_datetime(text[with_offset], format="ISO8601", errors="coerce", utc=True)
        parsed[with_offset] = aware.dt.tz_convert(timezone).dt.tz_localize(None)
    serial = parsed.isna() & text.str.fullmatch(_EXCEL_SERIAL).fillna(False).astype(bool)
    if serial.any():
        days = pd.to_timedelta(text[serial].astype("float64"), unit="D").dt.round("s")
        parsed[serial] = _EXCEL_EPOCH + days
    return parsed


def _numbers(values: pd.Series, money: bool = False) -> pd.Series:
    numbers = pd.to_numeric(values, errors="coerce").astype("float64")
    # Exports from finance systems write ¥1,234.50; the separators carry no meaning. Only
    # the cells that did not parse pay for the clean-up.
    retry = (values.notna() & numbers.isna()).to_numpy(dtype=bool)
    if retry.any():
        stripped = values[retry].str.replace(r"[¥￥,，\s]", "", regex=True)
        scale = np.ones(len(stripped))
        if money:  # 1000元, 12.5万, 12.5万元: Chinese sales sheets write amounts so
            scale[stripped.str.contains("万元?$", regex=True).to_numpy(dtype=bool)] = 10_000.0
            stripped = stripped.str.replace("(万元?|元)$", "", regex=True)
        cleaned = numbers.to_numpy(copy=True)
        cleaned[retry] = pd.to_numeric(stripped, errors="coerce").astype("float64").to_numpy() * scale
        numbers = pd.Series(cleaned, index=values.index)
    return numbers


def _cents(amounts: pd.Series) -> pd.Series:
    """Amounts to the cent, half up as accountants round (1234.565 → 1234.57). The binary
    float nearest 1234.565 lies just below it, so a plain round() would go down; the few
    amounts with more than two decimals are rounded from their shortest decimal form."""
    rounded = amounts.round(2)
    finer = (rounded != amounts) & amounts.notna()
    if finer.any():
        cent = Decimal("0.01")
        rounded[finer] = [float(Decimal(repr(value)).quantize(cent, rounding=ROUND_HALF_UP))
                          for value in amounts[finer]]
    return rounded


def _number(bound: float) -> str:
    return f"{bound:,.0f}" if abs(bound) >= 1e6 else f"{bound:g}"


class BatchValidator:
    """Checks batches of one file kind; `problems` collects what was wrong."""

    def __init__(self, kind: FileKind, source: str, timezone: str, as_of: date | None = None):
        self.kind = kind
        self.source = source
        self.timezone = timezone
        # The latest moment a not_future column may hold: the end of `as_of` (an import as
        # if on that day), else now with a few minutes' grace for clocks that disagree.
        self.latest = (pd.Timestamp(as_of) + pd.Timedelta(days=1) - pd.Timedelta(microseconds=1)
                       if as_of is not None else
                       pd.Timestamp.now(tz=timezone).tz_localize(None) + pd.Timedelta(minutes=10))

    def validate(self, raw: pd.DataFrame, lines: np.ndarray, absent: pd.Series | None = None
                 ) -> tuple[pd.DataFrame, list[Problem]]:
        """Return (valid rows converted for the database, problems). `lines` gives each
        row's line in the source, for the messages. `absent`: per row of REST API items, the
        fields the item left out (",name,industry,"); a required one is no missing value
        here (the importer checks that the row is a stored one)."""
        problems: list[Problem] = []
        bad = np.zeros(len(raw), dtype=bool)
        converted: dict[str, pd.Series] = {}
        for column in self.kind.columns:
            if column.name not in raw.columns:
                continue
            values, invalid, reason = self._convert(column, _text(raw[column.name]))
            missing = values.isna() & ~invalid if column.required else None
            if missing is not None and absent is not None and column.name != self.kind.key:
                left_out = absent.fillna("").str.contains(f",{column.name},", regex=False).to_numpy(dtype=bool)
                missing &= ~left_out
            for mask, why in ((invalid, reason), (missing, "missing value")):
                if mask is None or not mask.any():
                    continue
                mask_array = mask.to_numpy(dtype=bool)
                bad |= mask_array
                shown = raw[column.name].to_numpy()[mask_array]
                for line, cell in zip(lines[mask_array], shown):
                    text = why if why == "missing value" else f"{why}: {str(cell).strip()[:60]!r}"
                    problems.append(Problem(self.source, int(line), column.name, text))
            converted[column.name] = values
        for column in self.kind.columns:
            if column.name not in converted:
                continue
            # Values in one text format (DATETIME_FORMAT or DATE_FORMAT): compared as text.
            values = converted[column.name]
            checks = []  # (the rows out of bounds, why)
            if column.not_before is not None and column.not_before in converted:
                bound = converted[column.not_before]
                checks.append((values.notna() & bound.notna() & (values < bound), f"before {column.not_before}"))
            if column.kind in ("date", "datetime"):
                # Zero-padded text, so the year compares as text.
                checks.append((values.notna() & (values < f"{EARLIEST_YEAR:04d}"),
                               f"a year before {EARLIEST_YEAR} (a typo?)"))
            if column.not_future:
                checks.append((values.notna() & (values > self.latest.strftime(DATETIME_FORMAT)), "in the future"))
            for out_of_bounds, why in checks:
                wrong = out_of_bounds.to_numpy(dtype=bool) & ~bad
                bad |= wrong
                for line, cell in zip(lines[wrong], raw[column.name].to_numpy()[wrong]):
                    problems.append(Problem(self.source, int(line), column.name,
                                            f"{why}: {str(cell).strip()[:60]!r}"))
        frame = pd.DataFrame(converted, index=raw.index)
        return frame[~bad], problems

    def _convert(self, column: Column, values: pd.Series) -> tuple[pd.Series, pd.Series, str]:
        present = values.notna()
        if column.kind in ("id", "text"):
            too_long = present & (values.str.len() > (column.max_length or 10**9))
            # PostgreSQL refuses a NUL in text; SQLite would keep it, unseen.
            nul = present & values.str.contains("\x00", regex=False).fillna(False).astype(bool)
            if nul.any():
                why = "contains a NUL character (\\u0000)"
                if too_long.any():
                    why = f"longer than {column.max_length} characters, or {why}"
                return values, too_long | nul, why
            if column.pattern is not None:
                pattern, what = column.pattern
                odd = present & ~too_long & ~values.str.fullmatch(pattern).fillna(False).astype(bool)
                if odd.any():
                    return values, too_long | odd, f"not {what}"
            return values, too_long, f"longer than {column.max_length} characters"
        if column.kind == "list":
            items = values.str.split(r"\s*[|｜]\s*", regex=True).str.join("|")
            if column.lowercase:
                items = items.str.lower()
            too_long = present & (items.str.len() > (column.max_length or 10**9))
            return items, too_long, f"longer than {column.max_length} characters"
        if column.kind in ("int", "money"):
            numbers = _numbers(values, money=column.kind == "money")
            invalid = present & (numbers.isna() | ~np.isfinite(numbers.fillna(0)))
            reason = "not a number"
            if column.kind == "int":
                fractional = present & ~invalid & (numbers != numbers.round())
                invalid |= fractional
                reason = "not a whole number"
            if column.minimum is not None or column.maximum is not None:
                low = -np.inf if column.minimum is None else column.minimum
                high = np.inf if column.maximum is None else column.maximum
                out_of_range = present & ~invalid & ((numbers < low) | (numbers > high))
                if out_of_range.any():
                    invalid |= out_of_range
                    bounds = (f"from {_number(low)} to {_number(high)}" if column.maximum is not None
                              else f">= {_number(low)}")
                    reason = f"{reason} {bounds}" if column.kind == "int" else f"must be a number {bounds}"
            if column.kind == "int":
                return numbers.where(~invalid).astype("Int64"), invalid, reason
            return _cents(numbers.where(~invalid)), invalid, reason
        if column.kind in ("date", "datetime"):
            stamps = _parse_datetimes(values, self.timezone)
            # ISO-8601 reads a bare year as its 1 January and 2026-03 as 1 March: neither is a day.
            not_a_day = values.str.fullmatch(r"\d{4}(?:[-/]\d{1,2})?").fillna(False).astype(bool)
            invalid = present & (stamps.isna() | not_a_day)
            if column.kind == "date":
                return stamps.dt.strftime(DATE_FORMAT), invalid, "not a date (expected YYYY-MM-DD)"
            return (stamps.dt.strftime(DATETIME_FORMAT), invalid,
                    "not a date and time (expected YYYY-MM-DDTHH:MM:SS)")
        if column.kind == "bool":
            lowered = values.str.lower()
            truth = lowered.isin(TRUE_WORDS)
            falsehood = lowered.isin(FALSE_WORDS)
            invalid = present & ~truth & ~falsehood
            # A blank flag means "no": CRMs leave unticked boxes empty.
            return truth.astype(bool), invalid, "not a yes/no value (true/false, 1/0, yes/no, 是/否)"
        if column.kind == "enum":
            canonical = {choice.lower(): choice for choice in column.choices}
            canonical.update({alias.lower(): value for alias, value in column.value_aliases.items()})
            mapped = values.str.lower().map(canonical)
            invalid = present & mapped.isna()
            return mapped.astype("string"), invalid, f"must be one of {', '.join(column.choices)}"
        raise AssertionError(f"unknown column kind {column.kind}")
