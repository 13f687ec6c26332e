"""Per-customer reasons built on demand, a slice of customers at a time.

A full run explains every customer of every model: as lists of dicts that is about 5 KB
per customer, gigabytes at a million. The models instead hand back a `Deferred` column:
the compact row-aligned arrays behind the reasons, the name of the registered function
that turns them into dicts, and that function's JSON-ready settings.

Because a Deferred is plain data, a run stores it as it is: `encode_chunk` packs a chunk
of customers' inputs into one compressed Arrow payload (score_reason_chunks), and
`decode_chunk` gives back Deferreds that build exactly the reasons the run would have.
Reasons are then made into words only where someone looks at them (the customer
command, exports, cards), not for every customer on every night.
"""

from __future__ import annotations

import gc
from contextlib import contextmanager
from typing import Any, Callable, Iterator

import numpy as np
import orjson
import pandas as pd
import pyarrow as pa

# Positions into the scored frame: a slice (a chunk) or an integer array (a few customers).
Positions = slice | np.ndarray


def take(value: Any, positions: Positions) -> Any:
    """The rows at `positions` of a row-aligned value: frames and series by position,
    arrays along their first axis, dicts of such values value by value."""
    if isinstance(value, (pd.DataFrame, pd.Series)):
        return value.iloc[positions]
    if isinstance(value, np.ndarray):
        return value[positions]
    if isinstance(value, dict):
        return {key: take(item, positions) for key, item in value.items()}
    raise TypeError(f"cannot take rows of {type(value).__name__}")


# name → function(inputs, settings) → one reasons list per row of `inputs`.
_BUILDERS: dict[str, Callable[[Any, Any], list]] = {}


def reasons_builder(name: str):
    """Register a reasons builder under the name stored with a run's reasons chunks:
    renaming one makes the chunks that name it unreadable."""
    def register(function: Callable[[Any, Any], list]) -> Callable[[Any, Any], list]:
        _BUILDERS[name] = function
        return function
    return register


@reasons_builder("documents")
def plain_documents(frame: pd.DataFrame, _settings: Any = None) -> list[dict]:
    """One {column: value} dict per row of `frame`, values as JSON would hold them: NaN and
    NA as None, numpy scalars and arrays as Python numbers and lists. A snapshot's labels
    and scores are stored as such a column (storage.scores)."""
    columns = list(frame.columns)
    values = [_plain_values(frame[column]) for column in columns]
    return [dict(zip(columns, row)) for row in zip(*values)]


def _plain_values(column: pd.Series) -> list:
    if column.dtype.kind in "iub" and not column.hasnans:  # nullable Int64 / boolean may hold NA
        return column.tolist()
    if column.dtype.kind == "f":
        values = column.to_numpy()
        missing = np.isnan(values)
        if not missing.any():
            return values.tolist()
        plain = values.astype(object)
        plain[missing] = None
        return plain.tolist()
    return [_plain(value) for value in column.tolist()]


def _plain(value: Any) -> Any:
    """A value as JSON holds it: arrays (lists as Arrow gives them back) as lists, all the
    way down; NaN and NA as None; numpy scalars as Python's."""
    if isinstance(value, (np.ndarray, list, tuple)):
        return [_plain(item) for item in value]
    if value is None or value is pd.NA or (isinstance(value, float) and value != value):
        return None
    if isinstance(value, np.generic):
        return _plain(value.item())
    return value


class Deferred:
    """A column of per-row values (reasons lists) not built yet: `inputs` (row-aligned
    frames, series, arrays, or dicts of them) go through the builder registered as
    `builder`, with `settings` (JSON-ready). Every row's value must depend on its own row
    only, so building by chunks gives what building at once would."""

    __slots__ = ("builder", "inputs", "settings", "length")

    def __init__(self, builder: str, inputs: Any, length: int, settings: Any = None) -> None:
        if builder not in _BUILDERS:
            raise KeyError(f"no reasons builder named {builder!r}")
        self.builder = builder
        self.inputs = inputs
        self.settings = settings
        self.length = length

    def rows(self, positions: Positions) -> list:
        if isinstance(positions, np.ndarray) and not len(positions):
            return []
        return _BUILDERS[self.builder](take(self.inputs, positions), self.settings)

    def all(self) -> list:
        return self.rows(slice(None))

    def __deepcopy__(self, memo) -> "Deferred":
        # Never copied along with a frame's attrs: it holds the run's arrays.
        return self


def column_values(frame: pd.DataFrame, deferred: dict[str, Deferred] | None, column: str, keys,
                  chunk: int = 50_000) -> dict:
    """{key: the column's value} for those of `keys` in the frame's index, whether the column
    is in the frame or deferred (built for just those rows, `chunk` at a time)."""
    index = frame.index
    keys = [key for key in dict.fromkeys(keys) if key in index]
    if column in frame:
        # One reindex, not a lookup per key (a first run asks for every customer's).
        return dict(zip(keys, frame[column].reindex(keys).tolist()))
    if not deferred or column not in deferred or not keys:
        return {}
    positions = index.get_indexer(keys)
    found: dict = {}
    for start in range(0, len(keys), chunk):
        found.update(zip(keys[start:start + chunk], deferred[column].rows(positions[start:start + chunk])))
    return found


@contextmanager
def paused_gc() -> Iterator[None]:
    """Pause the cyclic garbage collector while many small reason dicts are made: they
    hold no cycles, but each allocation burst would rescan every live container (see
    scoring.churn._no_cyclic_gc). The previous state is restored, whatever happens."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


# ---------------------------------------------------------------- stored chunks

_SPEC_KEY = b"tierbot.reasons"


def encode_chunk(columns: dict[str, Deferred], positions: Positions, customer_ids: list[str]) -> bytes:
    """The inputs of `columns` at `positions` as one zstd-compressed Arrow IPC stream.
    `customer_ids`: the customers at those positions, in order."""
    arrays: dict[str, pa.Array] = {"customer_id": pa.array(list(customer_ids), pa.string())}
    spec = {column: {"builder": values.builder, "settings": values.settings,
                     "inputs": _flatten(take(values.inputs, positions), column, arrays)}
            for column, values in columns.items()}
    # The models hand the same measures to several explanations (a fifth of the columns
    # at 100k): each is stored once, and every place that uses it names that one.
    same = _repeated_arrays(arrays)
    if same:
        spec = {column: {**entry, "inputs": _renamed_keys(entry["inputs"], same)} for column, entry in spec.items()}
        arrays = {key: array for key, array in arrays.items() if key not in same}
    table = pa.table(arrays).replace_schema_metadata({_SPEC_KEY: orjson.dumps(spec)})
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema, options=pa.ipc.IpcWriteOptions(compression="zstd")) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


def decode_chunk(payload: bytes) -> tuple[list[str], dict[str, Deferred]]:
    """The customers of an encode_chunk payload, in order, and their Deferred columns."""
    import scoring.pipeline  # noqa: F401  (registers every model's builder)

    table = pa.ipc.open_stream(payload).read_all()
    spec = orjson.loads(table.schema.metadata[_SPEC_KEY])
    customer_ids = table.column("customer_id").to_pylist()
    index = pd.Index(customer_ids, dtype=object, name="customer_id")
    columns = {column: Deferred(entry["builder"], _unflatten(entry["inputs"], table, index), len(customer_ids),
                                entry["settings"])
               for column, entry in spec.items()}
    return customer_ids, columns


def _flatten(value: Any, path: str, arrays: dict[str, pa.Array]) -> dict:
    """Put the arrays of a row-aligned value into `arrays`; return how to rebuild it."""
    if isinstance(value, pd.DataFrame):
        return {"frame": [[name, _store(value[name], f"{path}/{i}", arrays)]
                          for i, name in enumerate(value.columns)]}
    if isinstance(value, pd.Series):
        return {"series": _store(value, path, arrays), "name": value.name}
    if isinstance(value, np.ndarray) and value.ndim == 2:
        return {"matrix": [_store(value[:, i], f"{path}/{i}", arrays) for i in range(value.shape[1])]}
    if isinstance(value, np.ndarray):
        return {"array": _store(value, path, arrays)}
    if isinstance(value, dict):
        return {"dict": [[key, _flatten(item, f"{path}/{key}", arrays)] for key, item in value.items()]}
    raise TypeError(f"cannot store reasons inputs of type {type(value).__name__} ({path})")


def _repeated_arrays(arrays: dict[str, pa.Array]) -> dict[str, str]:
    """key → the key of an earlier array with the very same values, bit for bit (so NaN,
    -0.0 and missing values come back as they were). Arrays that cannot be compared so
    are each stored on their own: Arrow's equals takes -0.0 for 0.0, so nothing with
    floats in it unless its raw bytes can be compared."""
    seen: dict[tuple, list[tuple[str, np.ndarray | None]]] = {}
    same: dict[str, str] = {}
    for key, array in arrays.items():
        bits = _bits(array)
        if bits is None and not _exact_equals(array.type):
            continue
        # Cheap, and nearly always different for different arrays; equal type and length
        # make the comparison below the right one for both.
        fingerprint = (str(array.type), len(array), array.null_count, _sample(array, bits))
        for earlier, earlier_bits in seen.get(fingerprint, []):
            if np.array_equal(bits, earlier_bits) if bits is not None else array.equals(arrays[earlier]):
                same[key] = earlier
                break
        else:
            seen.setdefault(fingerprint, []).append((key, bits))
    return same


def _bits(array: pa.Array) -> np.ndarray | None:
    """A primitive array's values as raw bytes (no copy), None for other arrays."""
    if array.null_count or not (pa.types.is_integer(array.type) or pa.types.is_floating(array.type)):
        return None
    return array.to_numpy(zero_copy_only=True).view(np.uint8)


def _sample(array: pa.Array, bits: np.ndarray | None) -> Any:
    """A few values from the start, middle and end."""
    if bits is not None:
        middle = len(bits) // 2
        return bits[:64].tobytes(), bits[middle:middle + 64].tobytes(), bits[-64:].tobytes()
    middle = len(array) // 2
    return repr([array.slice(0, 4).to_pylist(), array.slice(middle, 4).to_pylist(),
                 array.slice(max(0, len(array) - 4)).to_pylist()])


def _exact_equals(data_type: pa.DataType) -> bool:
    """Whether Arrow's equals is exact for arrays of this type (text, dates, integers with
    missing values): nothing with floats in it."""
    return not (pa.types.is_floating(data_type) or pa.types.is_nested(data_type)
                or pa.types.is_dictionary(data_type) or pa.types.is_decimal(data_type))


def _renamed_keys(spec: Any, renamed: dict[str, str]) -> Any:
    """`spec` with every stored array's key in `renamed` replaced by its new key."""
    if isinstance(spec, dict):
        if "key" in spec and "dtype" in spec:
            return {**spec, "key": renamed.get(spec["key"], spec["key"])}
        return {name: _renamed_keys(item, renamed) for name, item in spec.items()}
    if isinstance(spec, list):
        return [_renamed_keys(item, renamed) for item in spec]
    return spec


def _store(values: pd.Series | np.ndarray, key: str, arrays: dict[str, pa.Array]) -> dict:
    dtype = str(values.dtype)
    if isinstance(values, pd.Series) and isinstance(values.dtype, pd.StringDtype):
        # Arrow-backed text goes over as it is, not through a million Python strings.
        arrays[key] = pa.array(values)
        return {"key": key, "dtype": dtype}
    array = values.to_numpy() if isinstance(values, pd.Series) else values
    if array.dtype == object:
        # Text, None and NaN mostly; anything Arrow cannot type (mixed kinds) goes as JSON.
        try:
            arrays[key] = pa.array(array, from_pandas=True)
        except (pa.ArrowInvalid, pa.ArrowTypeError):
            arrays[key] = pa.array([orjson.dumps(item, option=orjson.OPT_SERIALIZE_NUMPY).decode()
                                    for item in array.tolist()], pa.string())
            return {"key": key, "dtype": dtype, "json": True}
    else:
        arrays[key] = pa.array(array)
    return {"key": key, "dtype": dtype}


def _load(stored: dict, table: pa.Table) -> np.ndarray:
    column = table.column(stored["key"])
    if stored.get("json"):
        return np.array([orjson.loads(item) for item in column.to_pylist()] + [None], dtype=object)[:-1]
    values = column.to_numpy(zero_copy_only=False)
    if values.dtype == object or stored["dtype"] in ("object", "str", "string"):
        # Text stays Python objects (None where missing); numpy's str would spell None out.
        return values.astype(object, copy=False)
    return values.astype(stored["dtype"], copy=False) if str(values.dtype) != stored["dtype"] else values


def _unflatten(spec: dict, table: pa.Table, index: pd.Index) -> Any:
    if "frame" in spec:
        return pd.DataFrame({name: _series(stored, table, index) for name, stored in spec["frame"]}, index=index)
    if "series" in spec:
        return _series(spec["series"], table, index).rename(spec["name"])
    if "matrix" in spec:
        return np.column_stack([_load(stored, table) for stored in spec["matrix"]]) if spec["matrix"] else \
            np.empty((len(index), 0))
    if "array" in spec:
        return _load(spec["array"], table)
    return {key: _unflatten(item, table, index) for key, item in spec["dict"]}


def _series(stored: dict, table: pa.Table, index: pd.Index) -> pd.Series:
    # Built in the stored dtype, not cast to it: a cast would turn a missing text into "None".
    return pd.Series(_load(stored, table), index=index, dtype=stored["dtype"], copy=False)
