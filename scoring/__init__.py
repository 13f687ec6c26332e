"""Pure scoring: customer DataFrames in, labels + scores + reasons out.

No database, no network, no clock: the as-of date is always a parameter.
"""

from __future__ import annotations

import pandas as pd

from scoring.params import ScoringParams
from scoring.value_matrix import TIERS, score_value_matrix

__all__ = ["TIERS", "score_customers"]


def score_customers(features: pd.DataFrame, params: ScoringParams) -> pd.DataFrame:
    """Every model's output for every customer, one row each, indexed like `features`."""
    return score_value_matrix(features, params.value_matrix)
