"""Pure scoring: customer DataFrames in, labels + scores + reasons out.

No database, no network, no clock: the as-of date is always a parameter.
"""

from scoring.pipeline import MODELS, TIERS, ScoringParams, score_customers

__all__ = ["MODELS", "TIERS", "ScoringParams", "score_customers"]
