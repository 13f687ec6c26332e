"""`python -m bot import`: CSV/XLSX files → the database, all or nothing.

How one invocation runs, inside a single transaction:
1. every file is read in batches (bounded memory) and each batch checked cell by cell
   (storage.validate); valid rows go to a temporary staging table per file kind;
2. checks across rows run in SQL on the staging tables: duplicate ids within the
   invocation, references to customers/users that exist neither in the database nor in
   the files;
3. the staged rows are upserted by id (unchanged rows are left alone, so importing the
   same files twice changes nothing) and the monthly roll-ups of the customers whose
   orders or activities changed are rebuilt; tickets the files say were resolved are
   resolved here too (never reopened).
Any problem → rollback, and every problem is reported as `file:line: column: reason`.
"""

from __future__ import annotations

import codecs
import csv
import io
import itertools
import re
import signal
import sys
import threading
import warnings as warnings_module
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import date, datetime, time, timezone
from pathlib import Path
from typing import BinaryIO, Collection, Iterator
from zoneinfo import ZoneInfo

import numpy as np
import pandas as pd
from sqlalchemy import (Column as SAColumn, Connection, Date, DateTime, Engine, Integer, MetaData, Table, Text,
                        bindparam, case, func, text)
from tqdm import tqdm

from storage.schema_files import (
    ACTIVITIES,
    CUSTOMERS,
    DATA_SUFFIXES,
    FILE_KINDS,
    KINDS_BY_NAME,
    ORDERS,
    TICKETS,
    USERID_PATTERN,
    USERS,
    FileKind,
    header_names,
    in_ten_thousands,
    kind_of_file,
    normalise_header,
)
from storage import windows as window_totals
from storage.db import for_writing
from storage.models import Ticket
from storage.sql import bulk_insert, month_of, null_safe_differs, refresh_statistics
from storage.validate import DATETIME_FORMAT, BatchValidator, Problem


class ImportInterrupted(KeyboardInterrupt):
    """Ctrl-C during an import. `saved`: whether its transaction had committed (all of
    it), else nothing was written."""

    def __init__(self, saved: bool):
        super().__init__("the import was saved" if saved else "nothing was imported")
        self.saved = saved


@contextmanager
def _ctrl_c_after() -> Iterator[None]:
    """Ctrl-C while the block runs takes effect when it is over: a commit cut short by
    KeyboardInterrupt may have landed or not, and the user must be told which."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pressed: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: pressed.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if pressed:
        raise KeyboardInterrupt


class ImportFailed(Exception):
    """Nothing was written. `problems` lists what was wrong (capped), `more` the rest;
    `details` the same as Problem objects where there are any."""

    def __init__(self, problems: list[str], more: int = 0, details: list[Problem] | None = None,
                 warnings: list[str] | None = None):
        super().__init__(f"{len(problems) + more} problem(s)")
        self.problems = problems
        self.more = more
        self.details = details or []
        # What a successful import would have warned of too (unknown columns, …).
        self.warnings = warnings or []


@dataclass
class KindResult:
    rows: int = 0
    new: int = 0
    changed: int = 0
    # Tickets: how many the files' resolved_at resolved.
    resolved: int = 0

    @property
    def unchanged(self) -> int:
        return self.rows - self.new - self.changed


@dataclass
class ImportResult:
    files: list[Path]
    kinds: dict[str, KindResult]
    warnings: list[str] = field(default_factory=list)
    dry_run: bool = False
    rollups_rebuilt_for: int = 0
    # Customers whose data changed (for incremental rescoring); None when more than the limit.
    touched: list[str] | None = None


@dataclass
class _Source:
    path: Path
    kind: FileKind
    index: int
    frame: pd.DataFrame | None = None  # records given in memory (REST API) instead of a file


class _ProblemLog:
    def __init__(self, cap: int):
        self.cap = cap
        self.problems: list[Problem] = []
        self.total = 0

    def add(self, problems: list[Problem]) -> None:
        self.total += len(problems)
        room = self.cap - len(self.problems)
        if room > 0:
            self.problems.extend(problems[:room])

    def __bool__(self) -> bool:
        return self.total > 0


def collect_sources(paths: list[Path | str]) -> list[_Source]:
    """Files named, plus the data files inside folders named, in import order."""
    found: list[tuple[Path, FileKind]] = []
    unknown: list[str] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            candidates = sorted(p for p in path.iterdir()
                                if p.suffix.lower() in DATA_SUFFIXES and not p.name.startswith(("~$", ".")))
            if not candidates:
                unknown.append(f"{path}: no .csv or .xlsx files in this folder")
        elif path.exists():
            candidates = [path]
        else:
            unknown.append(f"{path}: no such file or folder")
            continue
        for candidate in candidates:
            kind = kind_of_file(candidate)
            if candidate.suffix.lower() not in DATA_SUFFIXES:
                unknown.append(f"{candidate}: not a .csv or .xlsx file")
            elif kind is None:
                names = ", ".join(k.name for k in FILE_KINDS)
                unknown.append(f"{candidate}: cannot tell what the file holds from its name "
                               f"(name it after one of: {names}; e.g. orders.csv, orders-2025.xlsx, 订单.csv)")
            else:
                found.append((candidate, kind))
    if unknown:
        raise ImportFailed(unknown)
    unique = list({path.resolve(): (path, kind) for path, kind in found}.values())
    order = {kind.name: i for i, kind in enumerate(FILE_KINDS)}
    unique.sort(key=lambda item: (order[item[1].name], str(item[0])))
    return [_Source(path, kind, i) for i, (path, kind) in enumerate(unique)]


# ---------------------------------------------------------------- reading files

@dataclass
class _Batch:
    frame: pd.DataFrame  # raw text cells, canonical column names
    lines: np.ndarray  # the line of each row in its file
    # REST API records: per row, the columns its item left out (",name,industry,"), else None.
    absent: pd.Series | None = None


class _FileReader:
    """Yields batches of raw text cells with canonical column names."""

    def __init__(self, source: _Source, batch_rows: int, progress: bool, log: _ProblemLog,
                 warnings: list[str]):
        self.source = source
        self.batch_rows = batch_rows
        self.progress = progress
        self.log = log
        self.warnings = warnings
        self.name = str(source.path)
        # Money columns whose header puts them in 万 (金额（万元）): each amount is read so.
        self.in_wan: list[str] = []
        # Positions of header cells left blank: a value under one is warned of, once per file.
        self.unheaded: set[int] = set()
        self.unheaded_warned = False

    def _map_header(self, header: list[str], records: bool = False) -> dict[int, str] | None:
        """Column position → canonical name; None if the header is unusable. `records`:
        REST API items, which need only the key: an item may update some fields of a
        stored row, and a new row lacking a required field is refused later
        (_new_rows_lacking)."""
        known = header_names(self.source.kind)
        mapping: dict[int, str] = {}
        seen: dict[str, str] = {}
        problems = []
        for position, cell in enumerate(header):
            label = "" if cell is None else str(cell).strip()
            canonical = known.get(normalise_header(label))
            if not label:
                self.unheaded.add(position)
            if canonical is None:
                if label:
                    self.warnings.append(f"{self.name}: column {label!r} is not a known "
                                         f"{self.source.kind.name} column and is ignored")
                continue
            if canonical in seen:
                problems.append(Problem(self.name, 1, canonical,
                                        f"given twice (as {seen[canonical]!r} and {label!r})"))
                continue
            seen[canonical] = label
            mapping[position] = canonical
            if in_ten_thousands(label) and self.source.kind.column(canonical).kind == "money":
                self.in_wan.append(canonical)
        for column in self.source.kind.columns:
            if column.required and column.name not in seen and not (records and column.name != self.source.kind.key):
                spellings = ", ".join((column.name, *column.aliases[:3]))
                problems.append(Problem(self.name, 1, column.name,
                                        f"missing required column (header may be any of: {spellings})"))
        if problems:
            self.log.add(problems)
            return None
        return mapping

    def _named(self, frame: pd.DataFrame) -> pd.DataFrame:
        """A batch of file cells under their canonical names; amounts of a 万 column marked
        so (12.5 → 12.5万, which the validator reads as 125,000). Only numbers: a cell that
        is none is reported as it was typed."""
        for column in self.in_wan:
            cells = frame[column].str.strip()
            plain = cells.str.fullmatch(r"[-+]?[¥￥]?[\d,，]*\.?\d+").fillna(False).astype(bool)
            frame[column] = frame[column].where(~plain, cells + "万")
        return frame

    def _warn_unheaded(self, line: int, position: int, value) -> None:
        self.unheaded_warned = True
        self.warnings.append(f"{self.name}:{line}: column {_column_letter(position)} has a value ({str(value)[:40]!r}) "
                             "but no header: that column is ignored (give it a header to import it)")

    def _check_unheaded(self, chunk: pd.DataFrame, lines: np.ndarray) -> None:
        """Warns of the first value in a column with a blank header cell (CSV)."""
        if self.unheaded_warned or not self.unheaded:
            return
        for position in sorted(self.unheaded):
            filled = chunk[position].fillna("").str.strip().ne("").to_numpy()
            if filled.any():
                first = int(filled.argmax())
                self._warn_unheaded(int(lines[first]), position, chunk[position].iloc[first])
                return

    def batches(self) -> Iterator[_Batch]:
        if self.source.frame is not None:
            yield from self._record_batches()
        elif self.source.path.suffix.lower() == ".xlsx":
            yield from self._xlsx_batches()
        else:
            yield from self._csv_batches()

    def _record_batches(self) -> Iterator[_Batch]:
        frame = self.source.frame
        mapping = self._map_header(list(frame.columns), records=True)
        if mapping is None:
            return
        raw = frame[[frame.columns[p] for p in mapping]]
        raw.columns = list(mapping.values())
        # A required field no item sent is left out by every item (a new row must have it).
        for column in self.source.kind.columns:
            if column.required and column.name not in raw.columns:
                raw = raw.assign(**{column.name: [ABSENT] * len(raw)})
        cells = raw.map(_cell_text)
        left_out = raw.map(lambda value: value is ABSENT).to_numpy()
        absent = pd.Series([("," + ",".join(name for name, out in zip(cells.columns, row) if out) + ",")
                            if row.any() else None for row in left_out], dtype=object)
        yield _Batch(cells.reset_index(drop=True), np.arange(1, len(cells) + 1), absent)

    def _csv_batches(self) -> Iterator[_Batch]:
        path = self.source.path
        size = path.stat().st_size
        with open(path, "rb") as handle:
            head = handle.read(SNIFF_BYTES)
            encoding, delimiter, text_head = _sniff_csv(head, _past_ascii(handle) if head.isascii() else b"")
            handle.seek(0)
            if not text_head.strip():
                self.log.add([Problem(self.name, 1, "(file)", "empty file: a header row is required")])
                return
            header_line = self._csv_header_line(text_head, delimiter)
            bar = tqdm(total=size, unit="B", unit_scale=True, desc=path.name, disable=not self.progress,
                       file=sys.stderr, leave=False)
            wrapped = _CountingReader(handle, bar)
            try:
                # A row with more cells than the header is reported and left out (on_bad_lines
                # warns), and reading goes on: one attempt lists every problem of the file.
                # Blank lines are read as rows and left out below, so that rows are numbered
                # as pandas numbers the ones it skips, and as csv.reader counts records.
                reader = iter(pd.read_csv(wrapped, dtype=str, keep_default_na=False, na_filter=False,
                                          encoding=encoding, sep=delimiter, chunksize=self.batch_rows,
                                          header=None, skiprows=header_line, skip_blank_lines=False,
                                          engine="c", on_bad_lines="warn"))
                mapping = None
                record = header_line
                while True:
                    with warnings_module.catch_warnings(record=True) as caught:
                        warnings_module.simplefilter("always", pd.errors.ParserWarning)
                        chunk = next(reader, None)
                    skipped = self._skipped_rows(caught)
                    if chunk is None:
                        break
                    # Record numbers (the first line is 1), skipped rows left out; a record
                    # spanning several lines is corrected when problems are reported
                    # (see _fix_line_numbers).
                    lines = _record_numbers(record, len(chunk), skipped)
                    record = max([record, *lines[-1:].tolist(), *skipped])
                    keep = _not_blank(chunk)
                    chunk, lines = chunk[keep], lines[keep]
                    if mapping is None:
                        if chunk.empty:
                            continue
                        mapping = self._map_header(list(chunk.iloc[0]))
                        if mapping is None:
                            return
                        chunk, lines = chunk.iloc[1:], lines[1:]
                    self._check_unheaded(chunk, lines)
                    frame = self._named(chunk[list(mapping)].rename(columns=mapping))
                    yield _Batch(frame.reset_index(drop=True), lines)
            except UnicodeDecodeError:
                self.log.add([_encoding_problem(path, encoding)])
            except pd.errors.ParserError as exc:
                self.log.add([_parser_problem(self.name, exc)])
            finally:
                bar.close()

    def _header_row(self, rows: list[list]) -> int:
        """Which of a file's first non-blank rows is its header: the first naming every
        required column, else the first (whose problems are then reported)."""
        known = header_names(self.source.kind)
        required = {column.name for column in self.source.kind.columns if column.required}
        for position, row in enumerate(rows[:HEADER_SEARCH_ROWS]):
            if required <= {known.get(normalise_header("" if cell is None else str(cell).strip())) for cell in row}:
                return position
        return 0

    def _warn_rows_above_header(self, header_line: int) -> None:
        above = ("line 1 above it (a title?) is" if header_line == 2
                 else f"lines 1–{header_line - 1} above it (a title?) are")
        self.warnings.append(f"{self.name}: the header is on line {header_line}; {above} ignored")

    def _csv_header_line(self, text_head: str, delimiter: str) -> int:
        """How many lines come before the header (see _header_row), warned of when some do."""
        lines = [line.rstrip("\r") for line in text_head.split("\n")[:HEADER_SEARCH_ROWS * 3]]
        rows = list(csv.reader(lines, delimiter=delimiter))
        candidates = [(number, row) for number, row in enumerate(rows) if any(cell.strip() for cell in row)]
        if not candidates:
            return 0
        header_line = candidates[self._header_row([row for _, row in candidates])][0]
        if header_line:
            self._warn_rows_above_header(header_line + 1)
        return header_line

    def _skipped_rows(self, caught: list) -> set[int]:
        """The rows pandas left out for having too many cells, each logged as a problem;
        any other warning is passed on."""
        skipped = set()
        for warning in caught:
            found = _SKIPPED_LINE.findall(str(warning.message))
            if not found:
                warnings_module.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno)
            for line, expected, saw in found:
                skipped.add(int(line))
                self.log.add([Problem(self.name, int(line), "(row)", f"has {saw} fields, the header has {expected}")])
        return skipped

    def _xlsx_batches(self) -> Iterator[_Batch]:
        from openpyxl import load_workbook

        try:
            book = load_workbook(self.source.path, read_only=True, data_only=True)
        except Exception as exc:  # openpyxl raises many kinds for a damaged file
            self.log.add([Problem(self.name, 1, "(file)", f"not a readable .xlsx workbook ({exc.__class__.__name__})")])
            return
        try:
            # The sheet a person sees on opening the file: the active one, else the first not hidden
            # (exports keep old data on hidden sheets).
            visible = [ws for ws in book.worksheets if ws.sheet_state == "visible"] or book.worksheets
            sheet = book.active if book.active in visible else visible[0]
            # Some exporters write a <dimension> tag smaller than the sheet; read-only openpyxl would
            # stop there and lose the rest silently. Its row count still sizes the progress bar.
            hinted_rows = sheet.max_row
            sheet.reset_dimensions()
            numbered = enumerate(sheet.iter_rows(values_only=True), start=1)
            above: list[tuple[int, tuple]] = []  # the first non-blank rows, one of them the header
            for line, row in numbered:
                if row is not None and any(cell is not None and str(cell).strip() != "" for cell in row):
                    above.append((line, row))
                    if len(above) == HEADER_SEARCH_ROWS:
                        break
            if not above:
                self.log.add([Problem(self.name, 1, "(file)", "empty sheet: a header row is required")])
                return
            at = self._header_row([list(row) for _, row in above])
            header_line, header = above[at]
            if header_line > 1:
                self._warn_rows_above_header(header_line)
            mapping = self._map_header(list(header))
            if mapping is None:
                return
            rows = itertools.chain(above[at + 1:], numbered)
            positions = list(mapping)
            width = len(header)
            bar = tqdm(total=max((hinted_rows or 1) - 1, 0), unit="row", desc=self.source.path.name,
                       disable=not self.progress, file=sys.stderr, leave=False)
            buffer: list[list[str]] = []
            lines: list[int] = []
            for line, row in rows:
                if row is None or all(cell is None or str(cell).strip() == "" for cell in row):
                    continue
                if not self.unheaded_warned:
                    for position, cell in enumerate(row):
                        if ((position >= width or position in self.unheaded)
                                and cell is not None and str(cell).strip() != ""):
                            self._warn_unheaded(line, position, cell)
                            break
                buffer.append([_cell_text(row[p]) if p < len(row) else "" for p in positions])
                lines.append(line)
                if len(buffer) >= self.batch_rows:
                    bar.update(len(buffer))
                    yield _Batch(self._named(pd.DataFrame(buffer, columns=list(mapping.values()), dtype=str)),
                                 np.array(lines))
                    buffer, lines = [], []
            if buffer:
                bar.update(len(buffer))
                yield _Batch(self._named(pd.DataFrame(buffer, columns=list(mapping.values()), dtype=str)),
                             np.array(lines))
            bar.close()
        finally:
            book.close()


class _CountingReader(io.RawIOBase):
    """Feeds pandas from a file while moving a byte progress bar."""

    def __init__(self, handle, bar: tqdm):
        self.handle = handle
        self.bar = bar

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        count = self.handle.readinto(buffer)
        self.bar.update(count)
        return count


# A field an API item left out, unlike one it sent as null: its stored value stays.
ABSENT = type("Absent", (), {"__repr__": lambda self: "ABSENT"})()


def records_frame(rows: list[dict]) -> pd.DataFrame:
    """REST API items as a frame of their values as sent (ints stay ints), a column per
    field any item has; a field an item lacks is ABSENT."""
    names = list(dict.fromkeys(name for row in rows for name in row))
    return pd.DataFrame({name: [row.get(name, ABSENT) for row in rows] for name in names}, dtype=object)


def _column_letter(position: int) -> str:
    """A 0-based column position as a spreadsheet names it: 0 → A, 26 → AA."""
    from openpyxl.utils import get_column_letter

    return get_column_letter(position + 1)


def _cell_text(value) -> str:
    if value is None or value is ABSENT:
        return ""
    if isinstance(value, datetime):
        return value.date().isoformat() if value.time() == time(0) else value.isoformat(sep="T")
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


# What _sniff_csv reads of a CSV file: enough lines to find the header below a title.
SNIFF_BYTES = 64 * 1024
# How far down a file its header may be: exports put a title or a date range above it.
HEADER_SEARCH_ROWS = 10


def _past_ascii(handle: BinaryIO) -> bytes:
    """Up to SNIFF_BYTES of the file from the start of the first line holding a byte past
    ASCII, read on from where `handle` is (after an all-ASCII head); b"" when there is
    none. A GBK file whose first rows are English (ids, codes) shows its encoding only there."""
    while block := handle.read(1 << 20):
        if not block.isascii():
            first = next(position for position, byte in enumerate(block) if byte > 0x7F)
            return (block[block.rfind(b"\n", 0, first) + 1:] + handle.read(SNIFF_BYTES))[:SNIFF_BYTES]
    return b""


def _reads_as_utf8(line: bytes, chinese: bool = False) -> bool:
    """The line is UTF-8 text, not GBK bytes that happen to decode as UTF-8: those give
    Cyrillic, Greek and the like (GBK 谢伟 is UTF-8 лΰ), where real UTF-8 in these files
    is Chinese (U+0800 and up) or accented Latin letters (up to U+017F). `chinese`: only
    the former counts (a few GBK characters decode as accented letters)."""
    try:
        decoded = codecs.getincrementaldecoder("utf-8")().decode(line, final=False)
    except UnicodeDecodeError:
        return False
    wide = [ord(character) for character in decoded if ord(character) > 0x7F]
    return any(code >= 0x800 for code in wide) or (not chinese and all(code <= 0x17F for code in wide))


def _sniff_csv(head: bytes, later: bytes = b"") -> tuple[str, str, str]:
    """(encoding, delimiter, decoded text) of a CSV file from its first bytes. UTF-8, with
    or without a BOM; UTF-16 with a BOM (Excel's "Unicode text"); else GB18030 when the
    bytes are that (Excel's CSV on Chinese Windows is GBK). `later`: the file from its
    first line past ASCII on, when the head is all ASCII (ASCII reads alike in both): that
    line decides, so that a UTF-8 file with a GBK line further on reads as UTF-8 and has
    that line named, rather than as GB18030 (which decodes almost any bytes) gibberish.
    The delimiter: the one of comma, tab and semicolon the first lines hold most (comma on a tie)."""
    if head.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        encoding = "utf-16"
    else:
        encoding = "utf-8-sig"
        if later:
            utf8 = _reads_as_utf8(later.split(b"\n", 1)[0])
        else:
            try:
                codecs.getincrementaldecoder("utf-8")().decode(head, final=False)
                utf8 = True
            except UnicodeDecodeError:
                utf8 = False
        # A line of Chinese in UTF-8 further on: the file mixes the two, and reading it as
        # GB18030 would garble that line without a word. As UTF-8, the GBK line is named.
        mixed = any(_reads_as_utf8(line, chinese=True) for line in later.split(b"\n")[1:-1])
        if not utf8 and not mixed:
            try:
                codecs.getincrementaldecoder("gb18030")().decode(later or head, final=False)
                encoding = "gb18030"
            except UnicodeDecodeError:
                pass  # read as UTF-8, so that the bad line is named
    text_head = codecs.getincrementaldecoder(encoding)(errors="replace").decode(head, final=False)
    sample = "\n".join(text_head.split("\n")[:HEADER_SEARCH_ROWS * 3])
    counts = {delimiter: sample.count(delimiter) for delimiter in (",", "\t", ";")}
    return encoding, max(counts, key=lambda delimiter: (counts[delimiter], delimiter == ",")), text_head


def _encoding_problem(path: Path, encoding: str = "utf-8-sig") -> Problem:
    """The first line of the file that is not text in `encoding`, named with a hint."""
    if encoding == "utf-16":
        return Problem(str(path), 1, "(file)", "not UTF-16 text throughout: save it as UTF-8 CSV")
    codec = "utf-8" if encoding in ("utf-8-sig", "utf-8") else encoding
    with open(path, "rb") as handle:
        for line_number, line in enumerate(handle, start=1):
            try:
                line.decode(codec)
            except UnicodeDecodeError:
                if codec != "utf-8":
                    return Problem(str(path), line_number, "(file)",
                                   f"not {codec.upper()} text like the lines before it: save the file as UTF-8 CSV")
                hint = ""
                try:
                    line.decode("gb18030")
                    hint = " (it looks like GBK/GB18030, as Excel saves in Chinese Windows: save it as UTF-8 CSV)"
                except UnicodeDecodeError:
                    pass
                return Problem(str(path), line_number, "(file)", f"not UTF-8 text{hint}")
    return Problem(str(path), 1, "(file)", f"not {codec.upper()} text")


_SKIPPED_LINE = re.compile(r"Skipping line (\d+): expected (\d+) fields, saw (\d+)")


def _not_blank(chunk: pd.DataFrame) -> np.ndarray:
    """Rows with something in a cell: blank and whitespace-only lines, and rows of empty
    cells, are skipped as in a workbook. Most rows have a first cell, so only the others
    are looked at whole."""
    keep = chunk.iloc[:, 0].fillna("").str.strip().ne("").to_numpy(dtype=bool, copy=True)
    if not keep.all():
        rest = chunk[~keep].fillna("")
        keep[~keep] = rest.apply(lambda column: column.str.strip().ne("")).any(axis=1).to_numpy()
    return keep


def _record_numbers(after: int, count: int, skipped: set[int]) -> np.ndarray:
    """The numbers of the `count` records after record `after`, leaving out `skipped` ones."""
    if not skipped:
        return np.arange(after + 1, after + 1 + count)
    numbers = np.arange(after + 1, after + 1 + count + len(skipped))
    return numbers[~np.isin(numbers, list(skipped))][:count]


def _parser_problem(name: str, exc: Exception) -> Problem:
    # A row with too many cells is a warning (_skipped_rows); what still raises is the file.
    return Problem(name, 1, "(file)", f"not a readable CSV file: {str(exc).strip()[:200]}")


def _fix_line_numbers(problems: list[Problem]) -> list[Problem]:
    """Batches count records; a quoted cell with line breaks makes a record span several
    lines. Only when there is something to report do we pay for an exact count."""
    by_file: dict[str, list[Problem]] = {}
    for problem in problems:
        by_file.setdefault(problem.source, []).append(problem)
    fixed: list[Problem] = []
    for source, items in by_file.items():
        path = Path(source)
        if path.suffix.lower() != ".csv" or not path.exists():
            fixed.extend(items)
            continue
        wanted = {p.line for p in items if p.column != "(file)"}
        record_line: dict[int, int] = {}
        try:
            with open(path, encoding="utf-8-sig", newline="") as handle:
                reader = csv.reader(handle)
                record = 0
                start = 1
                for _row in reader:
                    record += 1
                    if record in wanted:
                        record_line[record] = start
                    start = reader.line_num + 1
        except (UnicodeDecodeError, csv.Error):
            pass
        fixed.extend(Problem(p.source, p.line if p.column == "(file)" else record_line.get(p.line, p.line), p.column,
                             p.reason) for p in items)
    return fixed


# ---------------------------------------------------------------- staging in SQL

def _staging_table(kind: FileKind, metadata: MetaData) -> Table:
    # A column the importer applies itself is staged as the validator's text (local time).
    specs = {column.name: column for column in kind.columns}
    columns = [SAColumn(c.name, c.type if specs[c.name].upsert else Text) for c in kind.table.columns
               if c.name in specs]
    return Table(f"stage_{kind.name}", metadata, *columns, SAColumn("_file", Integer), SAColumn("_line", Integer),
                 SAColumn("_absent", Text), prefixes=["TEMPORARY"])


def _keep_what_items_left_out(connection: Connection, kind: FileKind, columns: list[str]) -> None:
    """A field an API item left out keeps its stored value, as a field no item sent does:
    its staged cell takes the stored value. A new row keeps what the validator made of the
    blank (NULL, or false for yes/no)."""
    table, key, stage = kind.table.name, kind.key, f"stage_{kind.name}"
    for column in columns:
        if column == key:
            continue
        connection.execute(text(f"""
            UPDATE {stage} SET {column} = (SELECT t.{column} FROM {table} t WHERE t.{key} = {stage}.{key})
            WHERE _absent LIKE :marker AND EXISTS (SELECT 1 FROM {table} t WHERE t.{key} = {stage}.{key})""")
                           .bindparams(marker=f"%,{column},%"))


def _duplicate_problems(connection: Connection, kind: FileKind, names: list[str]) -> list[Problem]:
    key = kind.key
    rows = connection.execute(text(f"""
        SELECT s._file, s._line, s.{key}, f._file AS first_file, f._line AS first_line
        FROM stage_{kind.name} s
        JOIN (SELECT {key}, MIN(_file * 4294967296 + _line) AS first_pos
              FROM stage_{kind.name} GROUP BY {key} HAVING COUNT(*) > 1) d ON d.{key} = s.{key}
        JOIN stage_{kind.name} f ON f.{key} = s.{key} AND f._file * 4294967296 + f._line = d.first_pos
        WHERE s._file * 4294967296 + s._line <> d.first_pos
        ORDER BY s._file, s._line LIMIT 1000""")).all()
    problems = []
    for file_index, line, value, first_file, first_line in rows:
        # Records from the REST API (named "<kind>") count items, files count lines.
        unit = "item" if names[first_file].startswith("<") else "line"
        where = f"{unit} {first_line}" if first_file == file_index else f"{names[first_file]}:{first_line}"
        problems.append(Problem(names[file_index], line, key, f"duplicate id {value!r} (first at {where})"))
    return problems


def _reference_problems(connection: Connection, kind: FileKind, names: list[str], staged: frozenset[str] = frozenset(),
                        unknowable: frozenset[str] = frozenset()) -> list[Problem]:
    """Rows naming a customer or user that does not exist. The kinds imported before this
    one are in their tables already, but for those in `staged` (checked before anything is
    written); references into `unknowable` kinds, whose files had bad rows, are not checked."""
    problems = []
    for reference in kind.references:
        target = KINDS_BY_NAME[reference.kind]
        if target.name in unknowable:
            continue
        # A self-reference (a user's manager) may point at a row of the same import.
        also_staged = (f"AND NOT EXISTS (SELECT 1 FROM stage_{target.name} t2 "
                       f"WHERE t2.{target.key} = s.{reference.column})"
                       ) if target is kind or target.name in staged else ""
        rows = connection.execute(text(f"""
            SELECT s._file, s._line, s.{reference.column} FROM stage_{kind.name} s
            WHERE s.{reference.column} IS NOT NULL
              AND NOT EXISTS (SELECT 1 FROM {target.table.name} t WHERE t.{target.key} = s.{reference.column})
              {also_staged}
            ORDER BY s._file, s._line LIMIT 1000""")).all()
        problems.extend(
            Problem(names[f], line, reference.column,
                    f"unknown {reference.what} {value!r} (not in the database nor in the {target.name} file)")
            for f, line, value in rows)
    return problems


def _problems_across_rows(connection: Connection, kind: FileKind, names: list[str],
                          staged: frozenset[str] = frozenset(), unknowable: frozenset[str] = frozenset()
                          ) -> list[Problem]:
    """A staged kind's duplicate ids and unknown references (see _reference_problems)."""
    connection.execute(text(f"CREATE INDEX ix_stage_{kind.name}_key ON stage_{kind.name} ({kind.key})"))
    _userids_as_stored(connection, kind, staged)
    return [*_duplicate_problems(connection, kind, names), *_same_userid_problems(connection, kind, names),
            *_new_rows_lacking(connection, kind, names),
            *_reference_problems(connection, kind, names, staged, unknowable)]


def _userids_as_stored(connection: Connection, kind: FileKind, staged: frozenset[str]) -> None:
    """WeCom ignores case in UserIDs (its uniqueness check does): a file's 'ZhangSan' is the
    stored 'zhangsan'. Staged UserIDs take the spelling of the user they name, so a
    reference resolves and a users row updates that user instead of adding a second. Users
    staged in this import count only while they are not written yet (`staged`)."""
    users = USERS.table.name
    for column in kind.columns:
        if column.pattern is not USERID_PATTERN:
            continue
        if kind is USERS and column.name == USERS.key:
            known = users  # a user's own id: only a stored user can be spelt otherwise
        elif USERS.name in staged or kind is USERS:
            known = f"(SELECT userid FROM {users} UNION ALL SELECT userid FROM stage_{USERS.name})"
        else:
            known = users
        stage = f"stage_{kind.name}"
        connection.execute(text(f"""
            UPDATE {stage} SET {column.name} = (
                SELECT MIN(k.userid) FROM {known} k WHERE lower(k.userid) = lower({stage}.{column.name}))
            WHERE {column.name} IS NOT NULL
              AND NOT EXISTS (SELECT 1 FROM {known} k WHERE k.userid = {stage}.{column.name})
              AND EXISTS (SELECT 1 FROM {known} k WHERE lower(k.userid) = lower({stage}.{column.name}))"""))


def _same_userid_problems(connection: Connection, kind: FileKind, names: list[str]) -> list[Problem]:
    """New users whose UserIDs differ in case only: to WeCom they are one person."""
    if kind is not USERS:
        return []
    stage = f"stage_{USERS.name}"
    rows = connection.execute(text(f"""
        SELECT s._file, s._line, s.userid, f._file, f._line, f.userid FROM {stage} s
        JOIN (SELECT lower(userid) AS folded, MIN(_file * 4294967296 + _line) AS first_pos FROM {stage}
              GROUP BY lower(userid) HAVING COUNT(DISTINCT userid) > 1) d ON lower(s.userid) = d.folded
        JOIN {stage} f ON lower(f.userid) = d.folded AND f._file * 4294967296 + f._line = d.first_pos
        WHERE s.userid <> f.userid
        ORDER BY s._file, s._line LIMIT 1000""")).all()
    problems = []
    for file_index, line, value, first_file, first_line, first_value in rows:
        unit = "item" if names[first_file].startswith("<") else "line"
        where = f"{unit} {first_line}" if first_file == file_index else f"{names[first_file]}:{first_line}"
        problems.append(Problem(names[file_index], line, USERS.key,
                                f"{value!r} is the same WeCom UserID as {first_value!r} ({where}): "
                                "UserIDs ignore case"))
    return problems


def _new_rows_lacking(connection: Connection, kind: FileKind, names: list[str]) -> list[Problem]:
    """REST API items for new rows that leave out a required field (one for a stored row
    may: the field keeps its value)."""
    stage, table, key = f"stage_{kind.name}", kind.table.name, kind.key
    singular = kind.name[:-3] + "y" if kind.name.endswith("ies") else kind.name[:-1]
    problems = []
    for column in kind.columns:
        if not column.required or column.name == key:
            continue
        for file_index, line in connection.execute(text(f"""
                SELECT _file, _line FROM {stage} s
                WHERE s._absent LIKE :marker AND NOT EXISTS (SELECT 1 FROM {table} t WHERE t.{key} = s.{key})
                ORDER BY _file, _line LIMIT 1000""").bindparams(marker=f"%,{column.name},%")):
            problems.append(Problem(names[file_index], line, column.name,
                                    f"missing value (the item is for a new {singular}: it needs one)"))
    return problems


def _problems_before_writing(connection: Connection, kinds: list[FileKind], staging: dict[str, Table],
                             names: list[str], log: "_ProblemLog", flawed: frozenset[str]) -> None:
    """Once the import is bound to fail, the problems across rows of these kinds too,
    without writing them: the whole list in one attempt. A reference into a file with bad
    rows is not judged (its row may be one of them)."""
    for kind in kinds:
        if kind.name in staging:
            log.add(_problems_across_rows(connection, kind, names, frozenset(staging), flawed))


# A staged resolved_at resolves an open ticket after the upsert (_resolve_tickets): that
# ticket changed, even when every column the upsert writes is the same.
_TICKET_RESOLVED_HERE = "(s.resolved_at IS NOT NULL AND t.status IN ('self_service', 'open', 'accepted'))"


def _count_changes(connection: Connection, kind: FileKind, columns: list[str],
                   also_changed: str | None = None) -> tuple[int, int]:
    table, key = kind.table.name, kind.key
    differs = null_safe_differs(connection.dialect.name, "t", "s", [c for c in columns if c != key])
    if also_changed:
        differs = f"{differs} OR {also_changed}"
    new, changed = connection.execute(text(f"""
        SELECT SUM(CASE WHEN t.{key} IS NULL THEN 1 ELSE 0 END),
               SUM(CASE WHEN t.{key} IS NOT NULL AND ({differs}) THEN 1 ELSE 0 END)
        FROM stage_{kind.name} s LEFT JOIN {table} t ON t.{key} = s.{key}""")).one()
    return int(new or 0), int(changed or 0)


def _hand_over_open_tasks(connection: Connection) -> None:
    """Customers given another owner take their open tasks along: the old owner's go to the
    new owner, and a task the old owner's manager held goes to the new owner's manager (else
    to the new owner), so that 今日任务, the digest and the team view follow the account."""
    moved = connection.execute(text("""
        SELECT s.customer_id, c.owner_userid AS old_owner, s.owner_userid AS new_owner,
               old.manager_userid AS old_manager, new.manager_userid AS new_manager
        FROM stage_customers s
        JOIN customers c ON c.customer_id = s.customer_id
        LEFT JOIN users old ON old.userid = c.owner_userid
        LEFT JOIN users new ON new.userid = s.owner_userid
        WHERE s.owner_userid IS NOT NULL AND c.owner_userid IS NOT NULL
          AND s.owner_userid <> c.owner_userid""")).all()
    handovers = []
    for row in moved:
        handovers.append({"customer": row.customer_id, "from": row.old_owner, "to": row.new_owner})
        # A manager taking over their own rep's account keeps the tasks they held on it.
        if row.old_manager and row.old_manager not in (row.old_owner, row.new_owner):
            handovers.append({"customer": row.customer_id, "from": row.old_manager,
                              "to": row.new_manager or row.new_owner})
    # Which tasks move is decided on the state before any moves, so that none moves twice: a
    # customer given to the old owner's own manager takes the rep's tasks to that manager, and
    # the manager's stay (not on to the manager's manager).
    moves = []
    for handover in handovers:
        if handover["from"] == handover["to"]:
            continue
        ids = connection.execute(text("""
            SELECT id FROM tasks WHERE customer_id = :customer AND owner_userid = :from AND status = 'open'"""),
                                 handover).scalars().all()
        moves += [{"task": task_id, "to": handover["to"]} for task_id in ids]
    if moves:
        connection.execute(text("UPDATE tasks SET owner_userid = :to, overdue_notified = false WHERE id = :task"),
                           moves)


def _collect_touched_customers(connection: Connection, kind: FileKind, columns: list[str]) -> None:
    """Customers whose roll-ups must be rebuilt: those of new or changed rows, and the
    previous customer of a row that moved to another customer."""
    table, key = kind.table.name, kind.key
    differs = null_safe_differs(connection.dialect.name, "t", "s", [c for c in columns if c != key])
    moved = "" if key == "customer_id" else f"""UNION
            SELECT t.customer_id FROM stage_{kind.name} s JOIN {table} t ON t.{key} = s.{key}
            WHERE t.customer_id <> s.customer_id"""
    connection.execute(text(f"""
        INSERT INTO touched_customers (customer_id)
        SELECT customer_id FROM (
            SELECT s.customer_id FROM stage_{kind.name} s LEFT JOIN {table} t ON t.{key} = s.{key}
            WHERE t.{key} IS NULL OR ({differs})
            {moved}
        ) touched WHERE true
        ON CONFLICT (customer_id) DO NOTHING"""))


BULK_LOAD_ROWS = 100_000
IMPORT_CACHE_KIB = 512 * 1024


def _drop_secondary_indexes(connection: Connection, kind: FileKind) -> list:
    """Drop the table's non-unique indexes (inside the import transaction); returns them
    for re-creation. Only used when every staged row is new."""
    dropped = [index for index in kind.table.indexes if not index.unique]
    for index in dropped:
        index.drop(connection)
    return dropped


def _upsert(connection: Connection, kind: FileKind, columns: list[str], stamp: str | None,
            ordered: bool = False) -> None:
    table, key = kind.table.name, kind.key
    insert_columns = columns + (["updated_at"] if kind.stamped else [])
    select_columns = [f"s.{c}" for c in columns] + ([":stamp"] if kind.stamped else [])
    updates = [c for c in columns if c != key]
    assignments = ", ".join(f"{c} = excluded.{c}" for c in updates + (["updated_at"] if kind.stamped else []))
    differs = null_safe_differs(connection.dialect.name, table, "excluded", updates)
    conflict = (f"ON CONFLICT ({key}) DO UPDATE SET {assignments} WHERE {differs}" if updates
                else f"ON CONFLICT ({key}) DO NOTHING")
    # "WHERE true" keeps SQLite from reading ON CONFLICT as part of a join. A bulk load
    # goes in key order, so the primary-key B-tree is appended to, not split at random.
    order = f"ORDER BY s.{key}" if ordered else ""
    connection.execute(text(f"""
        INSERT INTO {table} ({', '.join(insert_columns)})
        SELECT {', '.join(select_columns)} FROM stage_{kind.name} s WHERE true {order} {conflict}"""),
                       {"stamp": stamp} if kind.stamped else {})


def _future_orders(connection: Connection, today: date, said: str = "today") -> list[str]:
    """A warning for orders dated after today (`said`: how the warning names that day).
    They are loaded (a CRM may hold contracts that start later) but count only from their
    date on, which a mistyped year hides."""
    count, first, last = connection.execute(text(
        "SELECT COUNT(*), MIN(order_date), MAX(order_date) FROM stage_orders WHERE order_date > :today")
        .bindparams(bindparam("today", type_=Date)), {"today": today}).one()
    if not count:
        return []
    dates = str(first)[:10] if first == last else f"{str(first)[:10]} … {str(last)[:10]}"
    return [f"orders: {count} dated after {said} ({dates}); they count from their date on"]


def _moved_tickets(connection: Connection) -> list[str]:
    """A warning for tickets sent under another customer than they have here: they move,
    and their routing follows the new customer's tier; a mistyped id would hide that."""
    moved = connection.execute(text("""
        SELECT s.ticket_id, t.customer_id, s.customer_id
        FROM stage_tickets s JOIN tickets t ON t.ticket_id = s.ticket_id
        WHERE s.customer_id <> t.customer_id ORDER BY s._file, s._line""")).all()
    if not moved:
        return []
    shown = ", ".join(f"{ticket} {before} → {after}" for ticket, before, after in moved[:3])
    return [f"tickets: {len(moved)} moved to another customer ({shown}{' …' if len(moved) > 3 else ''})"]


def _not_reopened(connection: Connection) -> list[str]:
    """A warning for tickets resolved here that the file or API sends without resolved_at:
    they stay resolved (an import never reopens one), which a blank cell might have meant to."""
    still = connection.execute(text("""
        SELECT s.ticket_id FROM stage_tickets s JOIN tickets t ON t.ticket_id = s.ticket_id
        WHERE s.resolved_at IS NULL AND t.status IN ('resolved', 'closed')
        ORDER BY s._file, s._line""")).scalars().all()
    if not still:
        return []
    shown = ", ".join(still[:3]) + (" …" if len(still) > 3 else "")
    return [f"tickets: {len(still)} resolved here came without resolved_at ({shown}); they stay resolved: "
            f"an import never reopens a ticket"]


def _resolve_tickets(connection: Connection, timezone_name: str) -> int:
    """Staged tickets with a resolved_at that are not resolved here yet become resolved at
    that moment (stored in UTC, like a resolution in chat). None is reopened: a ticket an
    agent resolved stays as the agent left it. Returns how many were resolved."""
    staged = connection.execute(text("""
        SELECT s.ticket_id, s.resolved_at FROM stage_tickets s JOIN tickets t ON t.ticket_id = s.ticket_id
        WHERE s.resolved_at IS NOT NULL AND t.status IN ('self_service', 'open', 'accepted')""")).all()
    if not staged:
        return 0
    local = pd.to_datetime(pd.Series([when for _, when in staged]), format=DATETIME_FORMAT)
    moments = local.dt.tz_localize(ZoneInfo(timezone_name), ambiguous=False, nonexistent="shift_forward")
    moments = moments.dt.tz_convert(timezone.utc).dt.to_pydatetime()
    tickets = Ticket.__table__
    # A routed ticket resolved there was answered by then too: the SLA report judges it
    # by that moment, as it does a ticket resolved in chat.
    first_response = case((tickets.c.first_response_due.is_not(None),
                           func.coalesce(tickets.c.accepted_at, bindparam("when"))), else_=tickets.c.accepted_at)
    connection.execute(tickets.update().where(tickets.c.ticket_id == bindparam("ticket"))
                       .values(status="resolved", resolved_at=bindparam("when"), accepted_at=first_response),
                       [{"ticket": ticket_id, "when": when} for (ticket_id, _), when in zip(staged, moments)])
    return len(staged)


def _queue_rescores(connection: Connection) -> None:
    """The touched customers wait in rescore_pending, committed with their data, until
    their incremental rescore is written (storage.scores.write_incremental)."""
    connection.execute(text("""
        INSERT INTO rescore_pending (customer_id, queued_at)
        SELECT customer_id, :now FROM touched_customers WHERE true
        ON CONFLICT (customer_id) DO UPDATE SET queued_at = excluded.queued_at""")
                       .bindparams(bindparam("now", type_=DateTime(timezone=True))),
                       {"now": datetime.now(timezone.utc)})


def rebuild_rollups(connection: Connection, only_touched: bool = True) -> int:
    """Recompute customer_months and activity_months for the customers in the
    `touched_customers` temp table (or for everyone). Returns how many customers."""
    dialect = connection.dialect.name
    scope = "WHERE customer_id IN (SELECT customer_id FROM touched_customers)" if only_touched else ""
    scope_and = scope.replace("WHERE", "AND") if scope else ""
    order_month = month_of(dialect, "order_date")
    activity_month = month_of(dialect, "ts")
    connection.execute(text(f"DELETE FROM customer_months {scope}"))
    # Orders are first summed per day; the month's first purchase day and its revenue come
    # from a window over those days (lifetimes counts purchase days, not orders). A day
    # whose orders net to 0 or less (refunds, 红冲 reversals) is no purchase: its amount
    # counts in the revenue, but it makes nobody a recent or repeat buyer. A refund row (a
    # negative amount) is no order either.
    connection.execute(text(f"""
        INSERT INTO customer_months (customer_id, month, revenue, cost, repeat_revenue, orders, purchase_days,
                                     first_day_revenue, first_order_date, last_order_date)
        SELECT customer_id, month, SUM(revenue), SUM(cost), SUM(repeat_revenue), SUM(orders),
               SUM(CASE WHEN revenue > 0 THEN 1 ELSE 0 END),
               SUM(CASE WHEN order_date = first_day THEN revenue ELSE 0 END),
               MIN(CASE WHEN revenue > 0 THEN order_date END), MAX(CASE WHEN revenue > 0 THEN order_date END)
        FROM (
            SELECT customer_id, {order_month} AS month, order_date, SUM(amount) AS revenue,
                   SUM(COALESCE(cost, 0)) AS cost,
                   SUM(CASE WHEN kind IN ('renewal', 'upsell') THEN amount ELSE 0 END) AS repeat_revenue,
                   SUM(CASE WHEN amount >= 0 THEN 1 ELSE 0 END) AS orders,
                   MIN(CASE WHEN SUM(amount) > 0 THEN order_date END)
                       OVER (PARTITION BY customer_id, {order_month}) AS first_day
            FROM orders WHERE true {scope_and}
            GROUP BY customer_id, order_date
        ) days
        GROUP BY customer_id, month"""))
    connection.execute(text(f"DELETE FROM activity_months {scope}"))
    connection.execute(text(f"""
        INSERT INTO activity_months (customer_id, month, kind, events, last_ts)
        SELECT customer_id, {activity_month}, kind, COUNT(*), MAX(ts)
        FROM activities WHERE true {scope_and}
        GROUP BY customer_id, {activity_month}, kind"""))
    if not only_touched:
        window_totals.forget_all(connection)
        return int(connection.execute(text("SELECT COUNT(DISTINCT customer_id) FROM customer_months")).scalar())
    window_totals.refresh_touched(connection)
    return int(connection.execute(text("SELECT COUNT(*) FROM touched_customers")).scalar())


def _unknown_list_values(connection: Connection, kind: FileKind, column: str, known: Collection[str], noun: str,
                         setting: str, consequence: str, where: str = "") -> list[str]:
    """Warnings for values of a `|`-separated column that the config does not know
    (`setting`), one per value with the first rows that have it. The import goes ahead:
    the config may follow."""
    known_lower = {value.lower() for value in known}
    unknown: dict[str, list[str]] = {}
    for key, values in connection.execute(text(
            f"SELECT {kind.key}, {column} FROM stage_{kind.name} WHERE {column} IS NOT NULL AND {column} <> '' "
            f"{where} ORDER BY _file, _line")):
        for value in str(values).split("|"):
            if value and value.lower() not in known_lower:
                unknown.setdefault(value, []).append(str(key))
    return [f"{kind.name}: {noun} {value!r} ({', '.join(keys[:3])}{' …' if len(keys) > 3 else ''}) is not one of "
            f"{setting} ({', '.join(sorted(known))}): {consequence}" for value, keys in unknown.items()]


def run_import(engine: Engine, paths: list[Path | str], **options) -> ImportResult:
    """Validate and load files (or `records`: kind → list of row dicts, as the REST API
    receives them) in one transaction; see _import for the options. Raises ImportFailed
    (nothing written), or ImportInterrupted on Ctrl-C, saying whether it was saved."""
    committed: list[bool] = []
    try:
        return _import(engine, paths, committed=committed, **options)
    except KeyboardInterrupt as interrupt:
        if isinstance(interrupt, ImportInterrupted):
            raise
        raise ImportInterrupted(saved=bool(committed)) from None


def _import(engine: Engine, paths: list[Path | str], *, committed: list[bool],
            timezone_name: str = "Asia/Shanghai", batch_rows: int = 50_000, max_errors: int = 50,
            dry_run: bool = False, progress: bool = False, records: dict[str, list[dict]] | None = None,
            touched_limit: int = 5_000, as_of: date | None = None,
            known_queues: Collection[str] | None = None, known_modules: Collection[str] | None = None
            ) -> ImportResult:
    """run_import's work; `committed` gets an entry once the transaction has committed.
    `as_of`: import as if on that day (a reproducible bench or back-test): what is dated
    after it is in the future, and a bulk load builds that day's month's totals."""
    today = as_of or datetime.now(ZoneInfo(timezone_name)).date()
    sources = collect_sources(paths) if paths else []
    for kind_name, rows in (records or {}).items():
        kind = KINDS_BY_NAME[kind_name]
        sources.append(_Source(Path(f"<{kind_name}>"), kind, len(sources), records_frame(rows)))
    order = {kind.name: i for i, kind in enumerate(FILE_KINDS)}
    sources.sort(key=lambda source: (order[source.kind.name], source.index))
    for position, source in enumerate(sources):
        source.index = position  # `_file` in the staging tables is this position
    log = _ProblemLog(max_errors)
    warnings: list[str] = []
    names = [str(source.path) for source in sources]
    results: dict[str, KindResult] = {}
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S.%f")
    rebuilt = 0
    touched: list[str] | None = None
    with engine.connect() as connection:
        if connection.dialect.name == "sqlite":
            # Index maintenance on tens of millions of rows wants a big page cache; bounded.
            connection.exec_driver_sql(f"PRAGMA cache_size=-{IMPORT_CACHE_KIB}")
            connection.commit()
        transaction = for_writing(connection).begin()
        try:
            metadata = MetaData()
            staging: dict[str, Table] = {}
            columns_seen: dict[str, list[str]] = {}
            flawed: set[str] = set()  # kinds whose files had bad rows
            for source in sources:
                kind = source.kind
                if kind.name not in staging:
                    staging[kind.name] = _staging_table(kind, metadata)
                    staging[kind.name].create(connection)
                    columns_seen[kind.name] = []
                validator = BatchValidator(kind, str(source.path), timezone_name, as_of)
                reader = _FileReader(source, batch_rows, progress, log, warnings)
                problems_before = log.total
                for batch in reader.batches():
                    valid, problems = validator.validate(batch.frame, batch.lines, batch.absent)
                    if problems:
                        log.add(problems)
                    # Staged even after a problem: the checks across rows still run, so
                    # one attempt lists them all (nothing is written).
                    for column in valid.columns:
                        if column not in columns_seen[kind.name]:
                            columns_seen[kind.name].append(column)
                    valid = valid.assign(_file=source.index, _line=batch.lines[valid.index.to_numpy()],
                                         _absent=None if batch.absent is None else batch.absent[valid.index])
                    bulk_insert(connection, staging[kind.name].name, valid)
                if log.total > problems_before:
                    flawed.add(kind.name)

            if log:
                _problems_before_writing(connection, list(FILE_KINDS), staging, names, log, frozenset(flawed))
            else:
                if ORDERS.name in staging:
                    warnings.extend(_future_orders(connection, today, "today" if as_of is None else as_of.isoformat()))
                if TICKETS.name in staging:
                    warnings.extend(_moved_tickets(connection))
                if USERS.name in staging and known_queues is not None:
                    warnings.extend(_unknown_list_values(connection, USERS, "queues", known_queues, "queue",
                                                         "tickets.queues", "no ticket reaches it",
                                                         where="AND role = 'agent'"))
                if CUSTOMERS.name in staging and known_modules is not None:
                    warnings.extend(_unknown_list_values(
                        connection, CUSTOMERS, "modules_owned", known_modules, "module",
                        "scoring.value_matrix.module_catalogue", "it counts for nothing in cross-selling"))
                connection.execute(text("CREATE TEMPORARY TABLE touched_customers (customer_id VARCHAR(64) PRIMARY KEY)"))
                for kind in FILE_KINDS:
                    if kind.name not in staging:
                        continue
                    # The kinds before this one are written already: their references resolve in their tables.
                    log.add(_problems_across_rows(connection, kind, names))
                    if log:
                        later = list(FILE_KINDS[FILE_KINDS.index(kind) + 1:])
                        _problems_before_writing(connection, later, staging, names, log, frozenset())
                        break
                    columns = [c.name for c in kind.columns
                               if c.upsert and (c.name in columns_seen[kind.name] or c.name == kind.key)]
                    if any(source.frame is not None and source.kind is kind for source in sources):
                        _keep_what_items_left_out(connection, kind, columns)
                    rows = int(connection.execute(text(f"SELECT COUNT(*) FROM stage_{kind.name}")).scalar())
                    resolves = kind is TICKETS and "resolved_at" in columns_seen[kind.name]
                    new, changed = _count_changes(connection, kind, columns,
                                                  _TICKET_RESOLVED_HERE if resolves else None)
                    results[kind.name] = KindResult(rows, new, changed)
                    if kind in (CUSTOMERS, ORDERS, ACTIVITIES):
                        _collect_touched_customers(connection, kind, columns)
                    if kind is CUSTOMERS and "owner_userid" in columns:
                        _hand_over_open_tasks(connection)
                    # Filling an empty table: build its secondary indexes once at the end
                    # (a sort) instead of row by row (a random B-tree insert per row).
                    bulk = new == rows and rows >= BULK_LOAD_ROWS
                    deferred = _drop_secondary_indexes(connection, kind) if bulk else []
                    _upsert(connection, kind, columns, stamp, ordered=bulk)
                    for index in deferred:
                        index.create(connection)
                    if resolves:
                        warnings.extend(_not_reopened(connection))
                        results[kind.name] = replace(results[kind.name],
                                                     resolved=_resolve_tickets(connection, timezone_name))
                if not log:
                    rebuilt = rebuild_rollups(connection)
                    if rebuilt > touched_limit:
                        # A bulk load: the full rescore it calls for reads this month's
                        # totals, so they are built now, with the data they come from.
                        this_month = today.replace(day=1)
                        if not window_totals.is_kept(connection, this_month):
                            window_totals.build_month(connection, this_month)
                    if rebuilt <= touched_limit:
                        touched = sorted(connection.execute(text("SELECT customer_id FROM touched_customers"))
                                         .scalars())
                        _queue_rescores(connection)
                    refresh_statistics(connection, [*(KINDS_BY_NAME[name].table.name for name in staging),
                                                    "customer_months", "activity_months", "customer_windows"])

            if log:
                transaction.rollback()
                details = _fix_line_numbers(sorted(log.problems, key=_problem_order(names)))
                raise ImportFailed([str(p) for p in details], log.total - len(details), details, warnings)
            if dry_run:
                transaction.rollback()
            else:
                # Temporary tables outlive a commit on a pooled connection.
                for table in [*(f"stage_{name}" for name in staging), "touched_customers"]:
                    connection.execute(text(f"DROP TABLE IF EXISTS {table}"))
                with _ctrl_c_after():
                    transaction.commit()
                    committed.append(True)
        except BaseException:
            if transaction.is_active:
                transaction.rollback()
            raise
        finally:
            if connection.dialect.name == "sqlite":
                connection.exec_driver_sql("PRAGMA cache_size=-65536")
                connection.commit()
    return ImportResult([s.path for s in sources if s.frame is None], results, warnings, dry_run, rebuilt, touched)


def _problem_order(names: list[str]):
    position = {name: i for i, name in enumerate(names)}
    return lambda p: (position.get(p.source, -1), p.line, p.column)


def summarise(result: ImportResult) -> list[str]:
    """Human lines for the CLI."""
    lines = []
    for kind in FILE_KINDS:
        counts = result.kinds.get(kind.name)
        if counts:
            lines.append(f"{kind.name}: {counts.rows:,} rows — {counts.new:,} new, {counts.changed:,} changed, "
                         f"{counts.unchanged:,} unchanged" + (f"; {counts.resolved:,} resolved" if counts.resolved
                                                              else ""))
    return lines

