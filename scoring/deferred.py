"""Per-customer reasons built on demand, a slice of customers at a time.

A full run explains every customer of every model: as lists of dicts that is about 5 KB
per customer, gigabytes at a million. The models can instead hand back a `Deferred`
column — the compact arrays behind the reasons and the function that turns them into
dicts — and the writer builds and serialises them one chunk of rows at a time.
"""

from __future__ import annotations

import gc
from contextlib import contextmanager
from typing import Any, Callable, Iterator

import numpy as np
import pandas as pd

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


class Deferred:
    """A column of per-row values (reasons lists) not built yet. `build(rows)` gets a
    function that cuts any row-aligned input down to the wanted rows and returns the
    list of values for exactly those rows, in their order; every row's value must depend
    on its own row only, so building by chunks gives what building at once would."""

    __slots__ = ("_build", "length")

    def __init__(self, build: Callable[[Callable[[Any], Any]], list], length: int) -> None:
        self._build = build
        self.length = length

    def rows(self, positions: Positions) -> list:
        if isinstance(positions, np.ndarray) and not len(positions):
            return []
        return self._build(lambda value: take(value, positions))

    def all(self) -> list:
        return self.rows(slice(None))

    def __deepcopy__(self, memo) -> "Deferred":
        # Never copied along with a frame's attrs: it holds the run's arrays.
        return self


def materialise(frame: pd.DataFrame, deferred: dict[str, Deferred] | None, positions: Positions = slice(None)
                ) -> pd.DataFrame:
    """`frame.iloc[positions]` with the deferred columns built for those rows."""
    part = frame.iloc[positions]
    if not deferred:
        return part
    return part.assign(**{column: pd.Series(column_values.rows(positions), index=part.index, dtype=object)
                          for column, column_values in deferred.items()})


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
