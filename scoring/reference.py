"""The population of the last full run, kept so that a handful of customers can be
rescored later (incremental rescoring) against the same yardsticks: percentiles of the
money and size features, the RFM bins and the fitted BG/NBD parameters.

For populations up to MAX_EXACT customers the sorted values themselves are kept, so an
incremental score equals the full run's exactly; above that, an evenly spaced sample of
GRID_POINTS quantiles (percentiles then carry at most ±0.05 points of error).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

MAX_EXACT = 20_000
GRID_POINTS = 2_001


def _grid(values: pd.Series) -> np.ndarray:
    finite = np.sort(values.dropna().to_numpy(dtype=float))
    if len(finite) <= MAX_EXACT:
        return finite
    return np.quantile(finite, np.linspace(0, 1, GRID_POINTS), method="inverted_cdf")


@dataclass
class PopulationReference:
    """Sorted values (or quantiles) per feature, plus the model references."""

    # numpy arrays, not lists: pandas deep-copies DataFrame.attrs on every operation.
    grids: dict[str, np.ndarray] = field(default_factory=dict)
    exact: dict[str, bool] = field(default_factory=dict)
    population: int = 0
    rfm: str | None = None  # scoring.rfm.RfmReference.to_json()
    bgnbd: dict | None = None  # scoring.churn.BgNbdParams fields
    # scoring.churn's typical purchase cycle in days; NaN: none known (or a reference
    # stored before it existed).
    churn_typical_cycle: float = float("nan")

    def add(self, name: str, values: pd.Series) -> None:
        self.grids[name] = _grid(values)
        self.exact[name] = len(values.dropna()) <= MAX_EXACT

    def percentile(self, name: str, values: pd.Series) -> pd.Series:
        """Share (0–100) of the reference population strictly below each value."""
        grid = np.asarray(self.grids.get(name, []), dtype=float)
        if grid.size == 0:
            return pd.Series(np.nan, index=values.index)
        below = np.searchsorted(grid, values.to_numpy(dtype=float), side="left")
        result = pd.Series(below / grid.size * 100.0, index=values.index)
        result[values.isna()] = np.nan
        return result

    def share_at_or_above(self, name: str, values: pd.Series) -> pd.Series:
        grid = np.asarray(self.grids.get(name, []), dtype=float)
        if grid.size == 0:
            return pd.Series(np.nan, index=values.index)
        below_or_equal = np.searchsorted(grid, values.to_numpy(dtype=float), side="left")
        return pd.Series(1.0 - below_or_equal / grid.size, index=values.index)

    def to_json(self) -> str:
        grids = {name: grid.tolist() for name, grid in self.grids.items()}
        typical = self.churn_typical_cycle
        return json.dumps({"grids": grids, "exact": self.exact, "population": self.population,
                           "rfm": self.rfm, "bgnbd": self.bgnbd,
                           "churn_typical_cycle": typical if np.isfinite(typical) else None}, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> "PopulationReference":
        data = json.loads(text)
        grids = {name: np.asarray(grid, dtype=float) for name, grid in data["grids"].items()}
        typical = data.get("churn_typical_cycle")
        return cls(grids=grids, exact=data.get("exact", {}), population=data["population"],
                   rfm=data.get("rfm"), bgnbd=data.get("bgnbd"),
                   churn_typical_cycle=float("nan") if typical is None else float(typical))
