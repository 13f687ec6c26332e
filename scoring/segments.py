"""S/A/B/C (influence × business volume), the value pyramid, and the lifecycle stage.

Pure functions on the features frame; each returns `<model>_label`, `<model>_score` and
`<model>_reasons` (a list of dicts per customer, most important first).

S/A/B/C (Huawei MCR, seed 004-A)
  influence  = weighted mean of: strategic flags (points, capped at 100), company size
               (percentile of employees), industry outlook (table ×100)
  volume     = percentile of the multi-year weighted revenue
  S: high influence and high volume · A: high influence only · B: high volume only · C: neither
  score      = (influence + volume) / 2

Pyramid (金字塔)
  customers ranked by weighted revenue (ties by customer id); the top `platinum` share is
  platinum, down to `gold`, down to `iron` (cumulative shares of customers), the rest —
  and every customer without revenue — lead. score = the revenue percentile.

Lifecycle (生命周期), first match wins:
  potential   no order up to the as-of day
  churn_risk  churn label high, no order for `dormant_days`, or revenue down by at least
              `declining_growth` (12 months over the 12 before; e.g. −0.5: halved or worse)
  new         first order within `new_days`
  growing     revenue growth (12 months over the 12 before) >= `growing_growth`
  mature      otherwise
  score       the stage's position: potential 0, new 1, growing 2, mature 3, churn_risk 4
"""

from __future__ import annotations

from datetime import date

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, model_validator

from scoring.deferred import Deferred, reasons_builder
from scoring.params import Weights
from scoring.value_matrix import population_percentile

SABC_LABELS = ("S", "A", "B", "C")
PYRAMID_LABELS = ("platinum", "gold", "iron", "lead")
LIFECYCLE_LABELS = ("potential", "new", "growing", "mature", "churn_risk")


class _Params(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class InfluenceWeights(Weights):
    strategic: float = Field(0.5, ge=0)
    company_size: float = Field(0.3, ge=0)
    industry_outlook: float = Field(0.2, ge=0)



class SabcParams(_Params):
    enabled: bool = True
    influence_weights: InfluenceWeights = InfluenceWeights()
    # "High" influence / volume at or above these scores (0–100).
    influence_boundary: float = Field(50, ge=0, le=100)
    volume_boundary: float = Field(70, ge=0, le=100)


class PyramidParams(_Params):
    enabled: bool = True
    # Cumulative shares of customers, by value: top 1% platinum, next 19% gold, next 30% iron.
    platinum: float = Field(0.01, gt=0, lt=1)
    gold: float = Field(0.20, gt=0, lt=1)
    iron: float = Field(0.50, gt=0, le=1)

    @model_validator(mode="after")
    def _ascending(self) -> "PyramidParams":
        if not self.platinum < self.gold < self.iron:
            raise ValueError("cut points must rise: platinum < gold < iron (cumulative shares of customers)")
        return self


class LifecycleParams(_Params):
    enabled: bool = True
    new_days: int = Field(180, ge=1)
    dormant_days: int = Field(365, ge=1)
    growing_growth: float = Field(0.2, ge=0)
    declining_growth: float | None = Field(-0.5, ge=-1, le=0,
                                           description="revenue growth at or below this is churn_risk; null: never")


def score_pyramid(features: pd.DataFrame, params: PyramidParams, reference=None,
                  deferred: dict | None = None) -> pd.DataFrame:
    """`deferred`: a dict to receive the reasons column (scoring.deferred) instead of the frame."""
    value = features["weighted_revenue"].fillna(0.0)
    if reference is None:
        # numpy's lexsort: last key first — value descending, then customer id ascending.
        order = np.lexsort((features.index.to_numpy(dtype=str), -value.to_numpy()))
        position = np.empty(len(value), dtype=float)
        position[order] = (np.arange(len(value)) + 1) / max(len(value), 1)
        # The reason's "in the top N%": the share at or above the value, so that equal
        # values read alike (the cut points above break ties by id, to stay exact).
        ascending = np.sort(value.to_numpy())
        at_or_above = (len(ascending) - np.searchsorted(ascending, value.to_numpy(), side="left")) / max(len(value), 1)
    else:
        # Against the last full run: the share of that population at or above this value.
        position = np.maximum(reference.share_at_or_above("weighted_revenue", value).to_numpy(),
                              1 / max(reference.population, 1))
        at_or_above = position
    labels = np.select([position <= params.platinum, position <= params.gold, position <= params.iron],
                       ["platinum", "gold", "iron"], "lead")
    labels = np.where(value.to_numpy() > 0, labels, "lead")
    percentile = population_percentile(features.assign(weighted_revenue=value), "weighted_revenue",
                                       reference).round(2)
    top_share = np.round(at_or_above * 100, 2)
    result = pd.DataFrame({"pyramid_label": labels, "pyramid_score": percentile}, index=features.index)
    return _with_reasons(result, "pyramid_reasons", _pyramid_reasons, deferred,
                         value.to_numpy(), percentile.to_numpy(), top_share)


def _with_reasons(result: pd.DataFrame, column: str, build, deferred: dict | None, *inputs) -> pd.DataFrame:
    """The reasons column from row-aligned `inputs`: into the frame, or deferred."""
    if deferred is None:
        result[column] = build(*inputs)
    else:
        deferred[column] = Deferred(column, {str(i): value for i, value in enumerate(inputs)}, len(result))
    return result


def _positional(build):
    """A builder over positional inputs, registered under its reasons column."""
    return lambda inputs, _settings: build(*(inputs[str(i)] for i in range(len(inputs))))


def _pyramid_reasons(value, percentile, top_share) -> list:
    return [[{"factor": "weighted_revenue", "value": round(float(v), 2), "percentile": float(p),
              "top_share": float(t)} if v > 0 else {"factor": "no_weighted_revenue", "value": round(float(v), 2)}]
            for v, p, t in zip(value, percentile, top_share)]


def score_sabc(features: pd.DataFrame, params: SabcParams, strategic: pd.Series, outlook: pd.Series,
               reference=None, deferred: dict | None = None) -> pd.DataFrame:
    """`strategic` and `outlook` are the value matrix's 0–100 component scores."""
    weights = params.influence_weights.model_dump()
    size = population_percentile(features, "employees", reference).fillna(0.0)
    parts = {"strategic": strategic, "company_size": size, "industry_outlook": outlook}
    influence = sum(parts[name] * weight for name, weight in weights.items()) / sum(weights.values())
    volume = population_percentile(features.assign(weighted_revenue=features["weighted_revenue"].fillna(0.0)),
                                   "weighted_revenue", reference).fillna(0.0)
    high_influence = (influence >= params.influence_boundary).to_numpy()
    high_volume = (volume >= params.volume_boundary).to_numpy()
    labels = np.select([high_influence & high_volume, high_influence, high_volume], ["S", "A", "B"], "C")
    result = pd.DataFrame({"sabc_label": labels, "sabc_score": ((influence + volume) / 2).round(2),
                           "sabc_influence": influence.round(2), "sabc_volume": volume.round(2)},
                          index=features.index)
    return _with_reasons(result, "sabc_reasons", _sabc_reasons, deferred, influence.to_numpy(), volume.to_numpy(),
                         high_influence, high_volume, features["weighted_revenue"].to_numpy())


def _sabc_reasons(influence, volume, high_influence, high_volume, revenue) -> list:
    return [[{"factor": "influence", "score": round(float(i), 1), "direction": "high" if hi else "low"},
             {"factor": "volume", "score": round(float(v), 1), "direction": "high" if hv else "low",
              "value": round(float(r), 2)}]
            for i, v, hi, hv, r in zip(influence, volume, high_influence, high_volume, revenue)]


def score_lifecycle(features: pd.DataFrame, as_of: date, params: LifecycleParams,
                    churn_label: pd.Series | None = None, deferred: dict | None = None) -> pd.DataFrame:
    as_of_stamp = pd.Timestamp(as_of)
    first, last = features["first_order_date"], features["last_order_date"]
    days_since_first = (as_of_stamp - first).dt.days
    days_since_last = (as_of_stamp - last).dt.days
    no_orders = first.isna().to_numpy()
    churn_high = (churn_label == "high").to_numpy() if churn_label is not None else np.zeros(len(features), bool)
    dormant = (days_since_last > params.dormant_days).fillna(False).to_numpy()
    new = (days_since_first <= params.new_days).fillna(False).to_numpy()
    # Revenue this year after none the year before counts as growing (back, or new): its
    # growth has no ratio, and "mature" would call a revived customer settled.
    revived = (features["growth"].isna() & (features["revenue_12m"] > 0)).to_numpy()
    growing = (features["growth"] >= params.growing_growth).fillna(False).to_numpy() | revived
    declining = np.zeros(len(features), bool) if params.declining_growth is None else \
        (features["growth"] <= params.declining_growth).fillna(False).to_numpy()
    labels = np.select([no_orders, churn_high | dormant | declining, new, growing],
                       ["potential", "churn_risk", "new", "growing"], "mature")
    score = pd.Series(labels).map({label: i for i, label in enumerate(LIFECYCLE_LABELS)}).to_numpy()
    result = pd.DataFrame({"lifecycle_label": labels, "lifecycle_score": score}, index=features.index)
    return _with_reasons(result, "lifecycle_reasons", _lifecycle_reasons, deferred, labels,
                         days_since_first.to_numpy(), days_since_last.to_numpy(), features["growth"].to_numpy(),
                         churn_high, revived, declining & ~dormant)


def _lifecycle_reasons(labels, days_since_first, days_since_last, growths, churn_high, revived=None,
                       declining=None) -> list:
    reasons = []
    # Reasons stored before these inputs existed had neither case.
    revived = np.zeros(len(labels), dtype=bool) if revived is None else revived
    declining = np.zeros(len(labels), dtype=bool) if declining is None else declining
    for label, since_first, since_last, growth, is_churn, is_revived, is_declining in zip(
            labels, days_since_first, days_since_last, growths, churn_high, revived, declining):
        if label == "potential":
            reasons.append([{"factor": "no_orders"}])
        elif label == "churn_risk":
            if is_churn:  # with the silence behind it, which the churn reasons weigh
                reasons.append([{"factor": "churn_high"}] + ([] if pd.isna(since_last) else
                                                             [{"factor": "days_since_last_order",
                                                               "value": int(since_last)}]))
            elif is_declining:  # revenue fell by at least declining_growth, orders not yet dormant
                reasons.append([{"factor": "growth", "value": round(float(growth), 6)}])
            else:
                reasons.append([{"factor": "days_since_last_order", "value": int(since_last)}])
        elif label == "new":
            reasons.append([{"factor": "days_since_first_order", "value": int(since_first)}])
        elif is_revived and label == "growing":
            reasons.append([{"factor": "revenue_back"}])
        else:
            reasons.append([{"factor": "growth", "value": None if pd.isna(growth) else round(float(growth), 6)}])
    return reasons


for _column, _build in (("pyramid_reasons", _pyramid_reasons), ("sabc_reasons", _sabc_reasons),
                        ("lifecycle_reasons", _lifecycle_reasons)):
    reasons_builder(_column)(_positional(_build))
