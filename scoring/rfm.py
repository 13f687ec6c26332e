"""RFM (Recency, Frequency, Monetary; seed 003): raw measures, 1–5 scores, named segments.

Pure: a features DataFrame in, a DataFrame out; no clock (`as_of` is a parameter).

Input columns (one row per customer, index customer_id, every customer):
  first_order_date, last_order_date   datetime64 (NaT: no order up to as_of); only the
                                      calendar day counts (a time of day is dropped, a
                                      time zone is dropped keeping the wall-clock day)
  purchase_days                       distinct purchase days up to as_of: calendar days
                                      whose orders sum to more than 0 (a day of refunds
                                      or reversals is no purchase)
  lifetime_revenue                    sum of all order amounts up to as_of, refunds netted
  first_day_revenue                   sum of the amounts on the first purchase day
Missing amounts count as 0. A customer is a *buyer* when it has a first order date.
Inconsistent rows (orders after as_of, last before first, purchase_days that do not fit
the dates) raise ValueError naming the customers: features not cut at as_of are a bug.

Raw measures (`rfm_measures`), exactly those of the `lifetimes` library
(`lifetimes.utils.summary_data_from_transaction_data(..., monetary_value_col=...,
observation_period_end=as_of, freq="D")`, lifetimes 0.11.3): orders are grouped per
calendar day, the amounts of one day summed, orders after as_of dropped; then
  frequency       = purchase days − 1 (repeat purchase days)
  recency         = days from the first to the last purchase day
  T               = days from the first purchase day to as_of
  monetary_value  = mean revenue of a repeat purchase day (the first day excluded)
                  = (lifetime_revenue − first_day_revenue) / frequency; 0 when frequency is 0
all as floats; NaN for a customer without orders. (monetary_value equals lifetimes' mean of
the per-day sums up to float rounding, ~1e-12 relative.) Refunds are where we differ, on
purpose: lifetimes counts any day with a row as a purchase, so a reversal two years on would
make a lost customer a recent repeat buyer. Here a day netting to 0 or less is no purchase
day; its amount still lowers the repeat value, which does not go below 0.

Scored factors (higher score = better customer)
  R  recency_days      days since the last purchase = T − recency     (fewer is better)
  F  repeat_purchases  frequency                                       (more is better)
  M  avg_repeat_value  monetary_value rounded to the cent (2 decimals; so that float
                       noise never splits a tie)                       (more is better)
Note that one-time buyers have monetary_value 0 by this definition, so they share the
lowest M with F.

Scores 1–5 ("sequential balanced split" over distinct values)
-------------------------------------------------------------
Per factor, over the N buyers of the reference population (see below): let
v_1 < … < v_D be the distinct values ordered from worst to best, and below(v) the number
of buyers with a strictly worse value. The population is cut into B = min(5, D) bins of
consecutive distinct values (so equal values always share a bin) by B − 1 edges, chosen
one after the other: for edge k = 1 … B − 1, with L = below(previous edge) (0 for k = 1)
and B − k + 1 bins still to fill, the edge is the distinct value v whose below(v) is
nearest to L + (N − L) / (B − k + 1) — the value that leaves an equal share of the
buyers not yet placed in the current bin — among the values above the previous edge
that leave at least B − k distinct values for the bins after it; on a tie the worse
value. A value's bin is the number of edges it reaches (>= the edge, in the better
direction); values outside the population's range simply land in the first or last bin.
Bin i (0-based) scores 1 + i when B = 5. With fewer than five distinct values the
bins are spread over 1–5: score = 1 + round(4·i / (B − 1)), half up (B = 4: 1, 2, 4, 5;
B = 3: 1, 3, 5; B = 2: 1, 5), and a single bin (no spread at all) scores 3.
Properties: equal values score alike; the result depends only on the population's
multiset of values, never on row order; scores are monotone in the value; every score
1–5 is used when the population has at least five distinct values; a large tied group
(e.g. 40 % one-time buyers at F = 0) takes one bin and the remaining buyers are split
over the other four as evenly as their ties allow, instead of the bins collapsing.
Example: repeat purchases 0 (40 %), 1 (25 %), 2 (15 %), 3 (10 %), 4+ (10 %) →
F = 1, 2, 3, 4, 5.

Percentiles (shown in the reasons): the share of the reference buyers with a strictly
worse value, ×100, one decimal (for recency: strictly more days since the last purchase).
`rfm_score` (0–100, one decimal, to sort by) = the mean of the three percentiles.

Reference population (`RfmReference`): by default the buyers of `features` themselves.
A stored reference from the last full run (`result.attrs["rfm_reference"]`, stored with
`to_json()`) lets a handful of customers be scored incrementally with exactly the
scores, percentiles and segments the full run gave them: the reference holds each
factor's distinct values with their counts; the edges are derived from it.

Segments: `RfmParams.segments`, an ordered table of (r, f, m) ranges, first match wins;
see DEFAULT_SEGMENTS. The table must give every (r, f, m) combination a segment (end it
with a rule without bounds as a catch-all if you want one) and no rule may be shadowed
entirely by the rules before it.

Customers without orders: rfm_label "no_purchase", rfm_r = rfm_f = rfm_m = 0 (0 means
"not scored"), rfm_score 0.0, measures NaN, and one reason {"factor": "no_purchase"}.

Output (`score_rfm`, indexed like features):
  rfm_label             segment key (DEFAULT_SEGMENTS names) or "no_purchase"
  rfm_score             0–100, see above
  rfm_r, rfm_f, rfm_m   1–5 (0: no purchase)
  rfm_frequency, rfm_recency, rfm_T, rfm_monetary_value   the lifetimes measures
  rfm_days_since_last   T − recency
  rfm_reasons           2–3 dicts, the factors the matched rule constrains, in the order
                        R, F, M (topped up with R, then F, to at least two):
    {"factor": "recency_days", "value": 12, "score": 5, "percentile": 93.0}
    {"factor": "repeat_purchases", "value": 4, "score": 4, "percentile": 81.5}
    {"factor": "avg_repeat_value", "value": 15000.0, "score": 4, "percentile": 77.0}
  attrs["rfm_reference"] the RfmReference used, attrs["rfm_reference_source"]
                        "population" or "given" ("disabled" with params.enabled false)
With params.enabled false every column is empty (None / NaN / 0 / []).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import date
from typing import Annotated

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, model_validator

from scoring.deferred import Deferred, reasons_builder
from scoring.features import day_numbers

REQUIRED_COLUMNS = ("first_order_date", "last_order_date", "purchase_days", "lifetime_revenue", "first_day_revenue")
MEASURES = ("frequency", "recency", "T", "monetary_value")
FACTORS = ("recency_days", "repeat_purchases", "avg_repeat_value")
NO_PURCHASE = "no_purchase"
MONEY_DECIMALS = 2
REFERENCE_VERSION = 1

Score = Annotated[int, Field(ge=1, le=5)]


# --------------------------------------------------------------------------- parameters

class _Strict(BaseModel):
    # A misspelt key must be an error, not a silently ignored setting.
    model_config = ConfigDict(extra="forbid", frozen=True)


class SegmentTitle(_Strict):
    zh: str = Field(min_length=1, max_length=20)
    en: str = Field(min_length=1, max_length=40)


class SegmentRule(_Strict):
    """One row of the segment table: a customer whose R, F and M scores all lie within
    the inclusive ranges gets this segment (unless an earlier rule matched)."""

    name: str = Field(pattern=r"^[a-z][a-z0-9_]*$", description="canonical key, e.g. 'champions'")
    description: str = Field("", description="what the segment means; documentation only")
    # What people read (cards, lists, exports); else templates/tiers.yaml's name for it, else the key.
    title: SegmentTitle | None = None
    r_min: Score = 1
    r_max: Score = 5
    f_min: Score = 1
    f_max: Score = 5
    m_min: Score = 1
    m_max: Score = 5

    @model_validator(mode="after")
    def _ordered(self) -> "SegmentRule":
        for axis in "rfm":
            low, high = getattr(self, f"{axis}_min"), getattr(self, f"{axis}_max")
            if low > high:
                raise ValueError(f"segment {self.name!r}: {axis}_min {low} > {axis}_max {high}")
        if self.name == NO_PURCHASE:
            raise ValueError(f"segment name {NO_PURCHASE!r} is reserved for customers without orders")
        return self

    def constrains(self, axis: str) -> bool:
        return (getattr(self, f"{axis}_min"), getattr(self, f"{axis}_max")) != (1, 5)


def _rule(name: str, description: str, r: tuple[int, int] = (1, 5), f: tuple[int, int] = (1, 5),
          m: tuple[int, int] = (1, 5)) -> SegmentRule:
    return SegmentRule(name=name, description=description, r_min=r[0], r_max=r[1], f_min=f[0], f_max=f[1],
                       m_min=m[0], m_max=m[1])


# The common RFM segment grid (R × F, with M refining the top and the lapsed-big cells),
# first match wins. Every (r, f, m) cell is covered; no rule is shadowed.
#
#            F=1             F=2     F=3             F=4            F=5
#   R=5   new             potential_loyalist      champions (M>=4), else loyal
#   R=4   promising       potential_loyalist      champions (M>=4), else loyal
#   R=3   about_to_sleep  about_to_sleep  need_attention  loyal
#   R=2   hibernating     hibernating     at_risk   cant_lose_them (M>=4), else at_risk
#   R=1   lost            lost            at_risk   cant_lose_them (M>=4), else at_risk
DEFAULT_SEGMENTS: tuple[SegmentRule, ...] = (
    _rule("champions", "bought recently, buy often and spend the most", r=(4, 5), f=(4, 5), m=(4, 5)),
    _rule("loyal", "buy often and not long ago", r=(3, 5), f=(4, 5)),
    _rule("potential_loyalist", "recent customers with a few repeat purchases", r=(4, 5), f=(2, 3)),
    _rule("new", "bought for the first time very recently", r=(5, 5), f=(1, 1)),
    _rule("promising", "bought recently, no repeat purchase yet", r=(4, 4), f=(1, 1)),
    _rule("need_attention", "average recency and frequency", r=(3, 3), f=(3, 3)),
    _rule("about_to_sleep", "average recency, few purchases", r=(3, 3), f=(1, 2)),
    _rule("cant_lose_them", "bought often and big, but long ago", r=(1, 2), f=(4, 5), m=(4, 5)),
    _rule("at_risk", "bought often, but long ago", r=(1, 2), f=(3, 5)),
    _rule("hibernating", "few purchases, long ago", r=(2, 2), f=(1, 2)),
    _rule("lost", "few purchases, longest ago", r=(1, 1), f=(1, 2)),
)


def segment_cells(segments: tuple[SegmentRule, ...] | list[SegmentRule]) -> np.ndarray:
    """(5, 5, 5) array indexed [r − 1, f − 1, m − 1]: the index of the first matching
    rule, −1 where none matches."""
    table = np.full((5, 5, 5), -1, dtype=np.int64)
    for position, rule in enumerate(segments):
        cells = np.zeros((5, 5, 5), dtype=bool)
        cells[rule.r_min - 1:rule.r_max, rule.f_min - 1:rule.f_max, rule.m_min - 1:rule.m_max] = True
        table[cells & (table < 0)] = position
    return table


def _ranges(values: list[int]) -> str:
    """[1, 2, 3, 5] → '1–3, 5' (values ascending)."""
    runs: list[list[int]] = []
    for value in values:
        if runs and value == runs[-1][1] + 1:
            runs[-1][1] = value
        else:
            runs.append([value, value])
    return ", ".join(str(a) if a == b else f"{a}–{b}" for a, b in runs)


class RfmParams(_Strict):
    """RFM scoring (`scoring.rfm`): the scores are data-driven (see the module docstring),
    so the only settings are whether the model runs and the segment table."""

    enabled: bool = Field(True, description="run the model; when false every RFM column is empty")
    segments: tuple[SegmentRule, ...] = Field(
        DEFAULT_SEGMENTS, min_length=1,
        description="ordered segment table, first match wins; must cover every (r, f, m) combination")

    @model_validator(mode="after")
    def _valid_table(self) -> "RfmParams":
        seen: dict[str, int] = {}
        for position, rule in enumerate(self.segments, start=1):
            if rule.name in seen:
                raise ValueError(f"segment names must be unique: {rule.name!r} is rule {seen[rule.name]} "
                                 f"and rule {position}")
            seen[rule.name] = position
        table = segment_cells(self.segments)
        gaps = np.argwhere(table < 0)
        if len(gaps):
            by_cell: dict[tuple[int, int], list[int]] = {}
            for r, f, m in gaps:
                by_cell.setdefault((int(r) + 1, int(f) + 1), []).append(int(m) + 1)
            described = [f"r={r} f={f} m={_ranges(ms)}" for (r, f), ms in sorted(by_cell.items())]
            shown = "; ".join(described[:8]) + (f"; … and {len(described) - 8} more" if len(described) > 8 else "")
            raise ValueError(f"segments leave {len(gaps)} of 125 (r, f, m) score combinations without a segment: "
                             f"{shown}. Add rules for them or end the table with a catch-all rule "
                             f"(a rule without r/f/m bounds)")
        used = set(np.unique(table).tolist())
        for position, rule in enumerate(self.segments):
            if position not in used:
                raise ValueError(f"segment {rule.name!r} (rule {position + 1}) can never match: the rules before it "
                                 f"already cover every combination it allows; move it up or remove it")
        return self


# --------------------------------------------------------------------------- measures

def _inconsistent(features: pd.DataFrame, mask: np.ndarray, what: str) -> None:
    if mask.any():
        ids = ", ".join(map(str, features.index[mask][:5]))
        more = f" and {int(mask.sum()) - 5} more" if mask.sum() > 5 else ""
        raise ValueError(f"RFM features: {what} for customer(s) {ids}{more}")


def rfm_measures(features: pd.DataFrame, as_of: date) -> pd.DataFrame:
    """frequency, recency, T, monetary_value per customer (lifetimes' definitions, in
    days, floats; NaN without orders), indexed like `features`."""
    missing = [name for name in REQUIRED_COLUMNS if name not in features.columns]
    if missing:
        raise KeyError(f"RFM features lack columns: {', '.join(missing)}")
    first = day_numbers(features["first_order_date"])
    last = day_numbers(features["last_order_date"])
    end = float((np.datetime64(pd.Timestamp(as_of).date(), "D")).astype("int64"))
    days = pd.to_numeric(features["purchase_days"], errors="coerce").fillna(0).to_numpy(dtype=float)
    revenue = pd.to_numeric(features["lifetime_revenue"], errors="coerce").fillna(0).to_numpy(dtype=float)
    first_revenue = pd.to_numeric(features["first_day_revenue"], errors="coerce").fillna(0).to_numpy(dtype=float)

    buyer = ~np.isnan(first)
    _inconsistent(features, buyer & np.isnan(last), "first_order_date without last_order_date")
    _inconsistent(features, ~buyer & (~np.isnan(last) | (days > 0)), "orders without a first_order_date")
    _inconsistent(features, buyer & (days < 1), "a first_order_date but purchase_days < 1")
    with np.errstate(invalid="ignore"):
        _inconsistent(features, buyer & (last < first), "last_order_date before first_order_date")
        _inconsistent(features, buyer & (last > end), f"orders after as_of {as_of} (features not cut at as_of)")
        _inconsistent(features, buyer & (days > last - first + 1),
                      "more purchase_days than calendar days between first and last order")

    frequency = np.where(buyer, days - 1, np.nan)
    with np.errstate(invalid="ignore", divide="ignore"):
        monetary = np.where(frequency > 0, np.maximum(revenue - first_revenue, 0.0)
                            / np.where(frequency > 0, frequency, 1), 0.0)
    monetary = np.where(buyer, monetary, np.nan)
    return pd.DataFrame({"frequency": frequency, "recency": last - first, "T": end - first,
                         "monetary_value": monetary}, index=features.index)


def _factor_values(measures: pd.DataFrame) -> dict[str, np.ndarray]:
    """The three scored factors in raw units (NaN for non-buyers)."""
    return {
        "recency_days": (measures["T"] - measures["recency"]).to_numpy(dtype=float),
        "repeat_purchases": measures["frequency"].to_numpy(dtype=float),
        "avg_repeat_value": np.round(measures["monetary_value"].to_numpy(dtype=float), MONEY_DECIMALS),
    }


_HIGHER_IS_BETTER = {"recency_days": False, "repeat_purchases": True, "avg_repeat_value": True}


# --------------------------------------------------------------------------- scales

def _bin_scores(bins: int) -> np.ndarray:
    if bins <= 1:
        return np.array([3], dtype=np.int64)
    i = np.arange(bins)
    return 1 + (8 * i + (bins - 1)) // (2 * (bins - 1))  # 1 + round_half_up(4 i / (bins − 1))


@dataclass(frozen=True, eq=False)
class _Scale:
    """One factor's population: distinct raw `values` (ascending) and their `counts`."""

    values: np.ndarray
    counts: np.ndarray
    higher_is_better: bool
    goodness: np.ndarray = field(init=False, repr=False)    # ascending, worst first
    cum_below: np.ndarray = field(init=False, repr=False)   # len D + 1
    edges: np.ndarray = field(init=False, repr=False)       # in goodness terms
    scores: np.ndarray = field(init=False, repr=False)      # score of each bin

    def __post_init__(self) -> None:
        sign = 1.0 if self.higher_is_better else -1.0
        order = slice(None) if self.higher_is_better else slice(None, None, -1)
        goodness = sign * self.values[order]
        counts = self.counts[order].astype(np.int64)
        cum_below = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        total, distinct = int(cum_below[-1]), len(goodness)
        bins = min(5, distinct)
        edges: list[int] = []
        previous, below = 0, 0
        for k in range(1, bins):
            left = bins - k + 1
            low, high = previous + 1, distinct - (bins - k)
            candidates = cum_below[low:high + 1]
            # nearest to below + (total − below) / left, in integers; argmin → worse value on a tie
            j = low + int(np.argmin(np.abs(left * candidates - (left * below + total - below))))
            edges.append(j)
            previous, below = j, int(cum_below[j])
        object.__setattr__(self, "goodness", goodness)
        object.__setattr__(self, "cum_below", cum_below)
        object.__setattr__(self, "edges", goodness[np.array(edges, dtype=np.int64)])
        object.__setattr__(self, "scores", _bin_scores(bins))

    @property
    def total(self) -> int:
        return int(self.cum_below[-1])

    def _goodness_of(self, raw: np.ndarray) -> np.ndarray:
        return raw if self.higher_is_better else -raw

    def score(self, raw: np.ndarray) -> np.ndarray:
        return self.scores[np.searchsorted(self.edges, self._goodness_of(raw), side="right")]

    def percentile(self, raw: np.ndarray) -> np.ndarray:
        if self.total == 0:
            return np.full(len(raw), np.nan)
        below = self.cum_below[np.searchsorted(self.goodness, self._goodness_of(raw), side="left")]
        # Six places: reasons show it rounded down, and 89.98 kept as 90.0 would read "above 90%".
        return np.round(below / self.total * 100.0, 6)

    def bins(self) -> dict[int, tuple[float, float]]:
        """score → (lowest, highest) population value in raw units (worst → best order)."""
        result: dict[int, tuple[float, float]] = {}
        bounds = [0] + [int(np.searchsorted(self.goodness, e)) for e in self.edges] + [len(self.goodness)]
        sign = 1.0 if self.higher_is_better else -1.0
        for score, start, stop in zip(self.scores, bounds, bounds[1:]):
            if stop > start:
                result[int(score)] = (float(sign * self.goodness[start]), float(sign * self.goodness[stop - 1]))
        return result


@dataclass(frozen=True, eq=False)
class RfmReference:
    """The buyer population scores are relative to: per factor (FACTORS) the distinct
    raw values (ascending) and how many buyers have each. Build it with
    `from_population(rfm_measures(...))`; store it with `to_json()`."""

    values: dict[str, np.ndarray]
    counts: dict[str, np.ndarray]
    scales: dict[str, _Scale] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if set(self.values) != set(FACTORS) or set(self.counts) != set(FACTORS):
            raise ValueError(f"RFM reference needs exactly the factors {', '.join(FACTORS)}")
        totals = set()
        scales = {}
        for name in FACTORS:
            values = np.asarray(self.values[name], dtype=float)
            counts = np.asarray(self.counts[name], dtype=np.int64)
            if values.ndim != 1 or values.shape != counts.shape:
                raise ValueError(f"RFM reference {name}: values and counts must be lists of equal length")
            if not np.all(np.isfinite(values)) or np.any(np.diff(values) <= 0):
                raise ValueError(f"RFM reference {name}: values must be finite and strictly increasing")
            if np.any(counts < 1):
                raise ValueError(f"RFM reference {name}: counts must be >= 1")
            totals.add(int(counts.sum()))
            scales[name] = _Scale(values, counts, _HIGHER_IS_BETTER[name])
        if len(totals) > 1:
            raise ValueError(f"RFM reference: the factors count different numbers of buyers {sorted(totals)}")
        object.__setattr__(self, "scales", scales)

    @property
    def buyers(self) -> int:
        return self.scales[FACTORS[0]].total

    @classmethod
    def from_population(cls, measures: pd.DataFrame) -> "RfmReference":
        """From `rfm_measures` output: every customer with a frequency (every buyer)."""
        buyer = measures["frequency"].notna().to_numpy()
        values, counts = {}, {}
        for name, raw in _factor_values(measures).items():
            distinct, count = np.unique(raw[buyer], return_counts=True)
            values[name], counts[name] = distinct.astype(float) + 0.0, count.astype(np.int64)  # + 0.0: no −0.0
        return cls(values, counts)

    def bins(self) -> dict[str, dict[int, tuple[float, float]]]:
        """Per factor, score → (worst, best) value of the population in that score's bin,
        e.g. {"repeat_purchases": {1: (0, 0), 2: (1, 1), …, 5: (4, 31)}} — for reports."""
        return {name: self.scales[name].bins() for name in FACTORS}

    def to_json(self) -> str:
        def plain(name: str) -> list:
            values = self.values[name]
            return [int(v) for v in values] if name != "avg_repeat_value" else [float(v) for v in values]

        return json.dumps({"model": "rfm_reference", "version": REFERENCE_VERSION, "buyers": self.buyers,
                           "factors": {name: {"values": plain(name), "counts": [int(c) for c in self.counts[name]]}
                                       for name in FACTORS}}, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> "RfmReference":
        data = json.loads(text)
        if data.get("model") != "rfm_reference" or data.get("version") != REFERENCE_VERSION:
            raise ValueError(f"not an RFM reference of version {REFERENCE_VERSION}: "
                             f"model={data.get('model')!r} version={data.get('version')!r}")
        factors = data["factors"]
        reference = cls({name: np.asarray(factors[name]["values"], dtype=float) for name in FACTORS},
                        {name: np.asarray(factors[name]["counts"], dtype=np.int64) for name in FACTORS})
        if reference.buyers != data.get("buyers"):
            raise ValueError(f"RFM reference: buyers {data.get('buyers')} != counted {reference.buyers}")
        return reference


# --------------------------------------------------------------------------- scoring

_REASON_FACTOR = {"r": "recency_days", "f": "repeat_purchases", "m": "avg_repeat_value"}


def _empty(index: pd.Index, source: str, reference: RfmReference | None) -> pd.DataFrame:
    n = len(index)
    result = pd.DataFrame({"rfm_label": pd.Series([None] * n, index=index, dtype=object),
                           "rfm_score": np.full(n, np.nan),
                           "rfm_r": np.zeros(n, dtype=np.int64), "rfm_f": np.zeros(n, dtype=np.int64),
                           "rfm_m": np.zeros(n, dtype=np.int64),
                           **{f"rfm_{name}": np.full(n, np.nan) for name in MEASURES},
                           "rfm_days_since_last": np.full(n, np.nan),
                           "rfm_reasons": [[] for _ in range(n)]}, index=index)
    result.attrs["rfm_reference"] = reference
    result.attrs["rfm_reference_source"] = source
    return result


def score_rfm(features: pd.DataFrame, as_of: date, params: RfmParams,
              reference: RfmReference | None = None, deferred: dict | None = None) -> pd.DataFrame:
    """RFM per customer, indexed like `features` (columns: see the module docstring).
    `reference`: score against a stored population (incremental scoring); None → the
    buyers in `features` (a full run). The reference used is in attrs["rfm_reference"]."""
    if not params.enabled:
        return _empty(features.index, "disabled", reference)
    measures = rfm_measures(features, as_of)
    source = "given" if reference is not None else "population"
    if reference is None:
        reference = RfmReference.from_population(measures)
    buyer = measures["frequency"].notna().to_numpy()
    n = len(features)
    raw = _factor_values(measures)
    scores, percentiles = {}, {}
    for axis, name in _REASON_FACTOR.items():
        scale = reference.scales[name]
        values = np.where(buyer, raw[name], 0.0)
        scores[axis] = np.where(buyer, scale.score(values), 0).astype(np.int64)
        percentiles[axis] = np.where(buyer, scale.percentile(values), np.nan)

    rules = params.segments
    table = segment_cells(rules)
    rule_index = np.full(n, -1, dtype=np.int64)
    rule_index[buyer] = table[scores["r"][buyer] - 1, scores["f"][buyer] - 1, scores["m"][buyer] - 1]
    names = np.array([rule.name for rule in rules] + [NO_PURCHASE], dtype=object)
    labels = names[np.where(buyer, rule_index, len(rules))]
    with np.errstate(invalid="ignore"):
        rfm_score = np.round((percentiles["r"] + percentiles["f"] + percentiles["m"]) / 3.0, 1)
    rfm_score = np.where(buyer, rfm_score, 0.0)

    result = pd.DataFrame({"rfm_label": pd.Series(labels, index=features.index, dtype=object),
                           "rfm_score": rfm_score,
                           "rfm_r": scores["r"], "rfm_f": scores["f"], "rfm_m": scores["m"],
                           **{f"rfm_{name}": measures[name].to_numpy() for name in MEASURES},
                           "rfm_days_since_last": raw["recency_days"]}, index=features.index)
    if deferred is None:
        result["rfm_reasons"] = pd.Series(_reasons(rules, rule_index, buyer, raw, scores, percentiles),
                                          index=features.index, dtype=object)
    else:  # built a chunk at a time by the writer (scoring.deferred)
        deferred["rfm_reasons"] = Deferred(
            "rfm", {"rule_index": rule_index, "buyer": buyer, "raw": raw, "scores": scores,
                    "percentiles": percentiles}, n, [rule.model_dump(mode="json") for rule in rules])
    result.attrs["rfm_reference"] = reference
    result.attrs["rfm_reference_source"] = source
    return result


def _reason_axes(rule: SegmentRule) -> list[str]:
    axes = [axis for axis in "rfm" if rule.constrains(axis)]
    for filler in "rf":
        if len(axes) >= 2:
            break
        if filler not in axes:
            axes.append(filler)
    return sorted(axes, key="rfm".index)


@reasons_builder("rfm")
def _deferred_reasons(inputs: dict, settings: list) -> list[list[dict]]:
    rules = [SegmentRule.model_validate(rule) for rule in settings]
    return _reasons(rules, inputs["rule_index"], inputs["buyer"], inputs["raw"], inputs["scores"],
                    inputs["percentiles"])


def _reasons(rules, rule_index, buyer, raw, scores, percentiles) -> list[list[dict]]:
    """Per row, the factors its rule shows. Built column by column, one pass per rule and
    factor, not row by row: a full run explains a million customers."""
    axes_of_rule = [_reason_axes(rule) for rule in rules]
    values = {"r": raw["recency_days"], "f": raw["repeat_purchases"], "m": raw["avg_repeat_value"]}
    n = len(rule_index)
    reasons: list = [None] * n
    for row in np.flatnonzero(~buyer).tolist():
        reasons[row] = [{"factor": NO_PURCHASE, "value": None, "score": 0, "percentile": None}]
    buyer_rows = np.flatnonzero(buyer)
    for rule in np.unique(rule_index[buyer_rows]).tolist():
        rows = buyer_rows[rule_index[buyer_rows] == rule]
        columns = []
        for axis in axes_of_rule[rule]:
            raw_values = values[axis][rows].tolist()
            if axis == "m":
                shown = [round(float(v), MONEY_DECIMALS) for v in raw_values]
            else:
                shown = [int(v) for v in raw_values]
            factor = _REASON_FACTOR[axis]
            columns.append([{"factor": factor, "value": value, "score": score,
                             "percentile": None if percentile != percentile else percentile}
                            for value, score, percentile in zip(shown, scores[axis][rows].tolist(),
                                                                percentiles[axis][rows].astype(float).tolist())])
        for row, items in zip(rows.tolist(), zip(*columns)):
            reasons[row] = list(items)
    return reasons
