"""Bulk reads from SQLite as Arrow columns, for the full run.

Through the sqlite3 module a million customers' rows become some twenty million Python
objects before pandas sees them: seconds per table. The ADBC SQLite driver hands back
Arrow arrays instead, in a fraction of that. It links its own copy of SQLite, though,
and two copies of SQLite in one process must not open the same file: closing one
copy's file handle drops the POSIX locks the other holds (sqlite.org, "How To Corrupt
Your Database Files", 2.2.1). So the driver runs in helper processes of their own. Each
holds one read transaction for all the run's reads; with several helpers (queries side by
side, one per core), they start those transactions while the parent holds the write
lock, so the whole run sees one snapshot. A helper hands each result over as an Arrow IPC
file in a private folder (in /dev/shm when it has room), which the parent maps into
memory rather than copying through a pipe.

Protocol (stdin/stdout of `python -m storage.columnar DATABASE FOLDER`): the helper
writes b"R" when its connection is open. Each request is the UTF-8 SQL and then its bound
values as an Arrow IPC stream of one row (empty when there are none), each preceded by its
4-byte big-endian length; a zero SQL length ends the session. Each reply is one status byte,
b"T" (the UTF-8 path of the result file follows) or b"E" (a UTF-8 error message
follows), then an 8-byte length and the payload.
"""

from __future__ import annotations

import itertools
import os
import queue
import shutil
import struct
import subprocess
import sys
import tempfile
from pathlib import Path

import pyarrow as pa

_PROJECT = Path(__file__).resolve().parents[1]


class ColumnarReadError(RuntimeError):
    """The helper could not start, or a query failed in it."""


class _HelperStopped(ColumnarReadError):
    """A helper's pipe broke mid-request."""


class ColumnarReader:
    """The parent's side: `execute(sql, values)` → pyarrow.Table (`?` binds, values in order).

    `helpers` processes, each with its own connection, answer queries side by side: call
    `execute` from as many threads. Their read transactions must see one snapshot, so
    `begin_snapshot` starts them all while the caller holds off every writer."""

    def __init__(self, path: str, helpers: int = 1) -> None:
        environment = {**os.environ, "PYTHONPATH": os.pathsep.join(
            [str(_PROJECT), *filter(None, [os.environ.get("PYTHONPATH")])])}
        self._folder = tempfile.mkdtemp(prefix="tierbot-columnar-", dir=results_folder())
        self._processes: list[subprocess.Popen] = []
        self._idle: queue.SimpleQueue[subprocess.Popen] = queue.SimpleQueue()
        # A helper whose pipe broke mid-request is out of step: no later query may use it.
        self._broken: ColumnarReadError | None = None
        try:
            for _ in range(helpers):
                self._processes.append(subprocess.Popen(
                    [sys.executable, "-m", "storage.columnar", path, self._folder],
                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=environment))
            for process in self._processes:
                if process.stdout.read(1) != b"R":
                    raise ColumnarReadError(f"the columnar reader could not open {path} "
                                            f"(exit code {process.poll()})")
                self._idle.put(process)
        except BaseException:
            self.close()
            raise

    @property
    def helpers(self) -> int:
        return len(self._processes)

    def begin_snapshot(self) -> None:
        """Start every helper's read transaction (a read of the schema). With more than one
        helper, the caller holds the write lock meanwhile, so no commit lands between them."""
        for process in self._processes:
            os.unlink(_ask(process, "SELECT COUNT(*) FROM sqlite_master", []))

    def execute(self, sql: str, values: list) -> pa.Table:
        if self._broken is not None:
            raise self._broken
        process = self._idle.get()
        try:
            result = _ask(process, sql, values)
        except _HelperStopped as error:
            self._broken = error
            raise
        finally:
            self._idle.put(process)
        try:
            # Mapped, not read: the table's buffers are the file's pages, which stay
            # readable after the name is gone.
            return pa.ipc.open_stream(pa.memory_map(result)).read_all()
        finally:
            os.unlink(result)

    def close(self) -> None:
        for process in self._processes:
            try:
                if process.poll() is None:
                    process.stdin.write(struct.pack(">I", 0))
                    process.stdin.flush()
            except BrokenPipeError:
                pass
            finally:
                for stream in (process.stdin, process.stdout):
                    try:
                        stream.close()
                    except OSError:  # a helper that died left the last request unflushed
                        pass
                try:
                    process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
        shutil.rmtree(self._folder, ignore_errors=True)


def _ask(process: subprocess.Popen, sql: str, values: list) -> str:
    """One request to a helper; the path of its result file."""
    query, parameters = sql.encode(), _parameters(values)
    try:
        process.stdin.write(struct.pack(">I", len(query)) + query + struct.pack(">I", len(parameters)) + parameters)
        process.stdin.flush()
        status = process.stdout.read(1)
        (length,) = struct.unpack(">Q", _read_exactly(process.stdout, 8))
        payload = _read_exactly(process.stdout, length)
    except (BrokenPipeError, struct.error, EOFError) as error:
        raise _HelperStopped(f"the columnar reader stopped (exit code {process.poll()})") from error
    if status != b"T":
        raise ColumnarReadError(payload.decode("utf-8", "replace"))
    return payload.decode()


# A million customers' rows are a few hundred MB of results at a time; containers often
# give /dev/shm 64 MB. Below this much free room the results go to the temp folder.
SHARED_MEMORY_NEEDED = 2 << 30


def results_folder(shared: str = "/dev/shm") -> str | None:
    """Where the helper writes its results: shared memory when there is room, else None
    (the temp folder, whose pages the page cache keeps as well)."""
    try:
        room = os.statvfs(shared)
    except OSError:
        return None
    if not os.access(shared, os.W_OK) or room.f_bavail * room.f_frsize < SHARED_MEMORY_NEEDED:
        return None
    return shared


def _parameters(values: list) -> bytes:
    """Bound values as one row, in the Arrow IPC stream format (see the module's protocol).
    Built here rather than in the helper: its first pyarrow.array call imports pandas."""
    if not values:
        return b""
    row = pa.RecordBatch.from_arrays([pa.array([value]) for value in values],
                                     names=[str(i) for i in range(len(values))])
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, row.schema) as writer:
        writer.write_batch(row)
    return sink.getvalue().to_pybytes()


def _read_exactly(stream, size: int) -> bytes:
    data = stream.read(size)
    if len(data) != size:
        raise EOFError(f"expected {size} bytes, got {len(data)}")
    return data


def serve(path: str, folder: str) -> None:
    """The helper's side: one connection, one read transaction, until told to stop.

    The driver manager's low-level API, not its DB-API module: that one imports pandas
    and pyarrow.dataset, half a second of the helper's start-up for nothing it uses."""
    import adbc_driver_manager as adbc
    import adbc_driver_sqlite

    requests, replies = sys.stdin.buffer, sys.stdout.buffer
    database = adbc_driver_sqlite.connect(path)
    connection = adbc.AdbcConnection(database)
    connection.set_autocommit(False)  # the first read starts the snapshot every later read sees
    numbers = itertools.count()
    try:
        replies.write(b"R")
        replies.flush()
        while True:
            header = requests.read(4)
            if len(header) < 4 or header == b"\0\0\0\0":
                break
            sql = _read_exactly(requests, struct.unpack(">I", header)[0]).decode()
            parameters = _read_exactly(requests, struct.unpack(">I", _read_exactly(requests, 4))[0])
            try:
                table = _query(adbc, connection, sql, parameters)
                result = os.path.join(folder, f"{os.getpid()}-{next(numbers)}.arrow")
                with pa.OSFile(result, "wb") as sink, pa.ipc.new_stream(sink, table.schema) as writer:
                    writer.write_table(table)
                status, payload = b"T", result.encode()
            except Exception as error:  # reported to the parent, which raises it
                status, payload = b"E", f"{error.__class__.__name__}: {error}".encode()
            replies.write(status + struct.pack(">Q", len(payload)))
            replies.write(payload)
            replies.flush()
    finally:
        connection.rollback()
        connection.close()
        database.close()


def _query(adbc, connection, sql: str, parameters: bytes) -> pa.Table:
    """One statement's result, with the row of `parameters` (see _parameters) bound by position."""
    statement = adbc.AdbcStatement(connection)
    try:
        statement.set_sql_query(sql)
        if parameters:
            statement.bind(pa.ipc.open_stream(parameters).read_next_batch())
        stream, _ = statement.execute_query()
        return pa.RecordBatchReader._import_from_c(stream.address).read_all()
    finally:
        statement.close()


if __name__ == "__main__":
    serve(sys.argv[1], sys.argv[2])
    # Every reply is flushed and the database closed: skip the interpreter's teardown
    # (unloading numpy and pyarrow), which the parent would otherwise wait 60 ms for.
    sys.stdout.flush()
    os._exit(0)
