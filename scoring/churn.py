"""Churn risk (流失风险): a 0–100 score per customer, a label, and the reasons behind it.

Pure: a features DataFrame in, a DataFrame out; no clock (`as_of` is a parameter).

Input columns (one row per customer, index customer_id, every customer):
  first_order_date, last_order_date   datetime64 (NaT: no order up to as_of)
  purchase_days                       distinct days with orders up to as_of
  act_30d                             activities (every kind but complaints), last 30 days
  act_baseline_30d                    the customer's own mean activities per 30 days over
                                      the six whole months before the as-of month, up to
                                      where those 30 days begin (0 when none)
  complaints_90d, complaints_prev_90d complaints in the last 90 days, and the 90 before
Missing numbers count as 0.

Purchase history in the measures of lifetimes / BG/NBD, in days:
  frequency x = purchase_days − 1 (repeat purchase days), recency t_x = last − first,
  T = as_of − first.

Components, each a risk c in [0, 1]
-----------------------------------
activity_decline  c = clip(1 − act_30d / act_baseline_30d, 0, 1) when
                  act_baseline_30d >= `min_baseline_30d`; otherwise the baseline is too
                  thin to judge: the component does not apply (its weight goes to the
                  others, so a quiet account is judged on its orders) and the reasons
                  carry an `activity_baseline_thin` note when there is room for it.
overdue           own purchase cycle = t_x / x (mean days between purchase days), known
                  when x >= `min_cycle_intervals`; ratio = days since last order / cycle;
                  c = clip((ratio − overdue_grace) / (overdue_full − overdue_grace), 0, 1),
                  i.e. with the defaults 0 up to 1× the cycle, rising linearly to 1 at 3×.
                  A buyer without an own cycle (one purchase day: most B2B customers)
                  is measured against the *typical* cycle instead: the own cycle that
                  `typical_cycle_quantile` of the population's repeat buyers come back
                  within (default the upper quartile: a first repurchase takes longer
                  than the ones after it, so the median would rush a new customer),
                  when `typical_cycle` is on and at least `min_typical_cycle_customers`
                  have one. A one-time buyer silent for years is overdue, not riskless.
                  Its reason says so ("overdue_typical_cycle").
                  Days overdue (`churn_days_overdue`, the reason's value) =
                  max(0, days since last order − cycle); NaN when no cycle is known.
complaints        c = clip((complaints_90d − complaints_prev_90d) / complaints_full_rise, 0, 1):
                  only a rise counts, and a rise of `complaints_full_rise` is full risk.
not_alive         c = 1 − P(alive) from a BG/NBD model (see `p_alive`), used where
                  x >= `min_repeat_purchases` and a model is available.

Score
-----
A component is *applicable* to a customer when it can be judged at all: activity_decline
when the baseline is thick enough, complaints always, overdue when an own or typical cycle
is known, not_alive when P(alive) is used.

overdue and not_alive are two readings of one signal, purchase silence: where either
applies, silence = max(c_overdue, c_not_alive) over those that apply, with the weight
w_overdue + w_not_alive. So a one-time buyer (no P(alive)) and a repeat buyer are judged
on one scale, and a fitted P(alive) near 1 cannot talk down a silence of three cycles.
Inapplicable components hand their weight to the applicable ones:

    churn_score = 100 × Σ w_j·a_j·c_j / Σ w_j·a_j     (j: activity_decline, silence,
                                                       complaints; a_j = 1 if applicable)

except when complaints are all there is to judge (too little activity, and no order or no
cycle to judge one by): then
the denominator is the sum of all weights, so complaints alone weigh what they weigh
beside the other signals and cannot make a prospect's risk 100. Silence's points go to
the reading that counted (overdue on a tie), which is the one its reason names.

rounded to 0.1; 0 when no weighted component applies. A component's *points* are its
share of that sum (100 × w_i·a_i·c_i / Σ w·a); before rounding they add up to the score.

Labels: "high" (score >= `high`), "medium" (>= `medium`), "low" otherwise, and "none"
for a customer with no order up to as_of and no activity or complaint in any window
(act_30d, act_baseline_30d, complaints_90d, complaints_prev_90d all 0): there is nothing
to lose and nothing to judge. Such a customer scores 0.0.

Reasons (`churn_reasons`, a list of 1–3 dicts per customer, most important first):
every component with at least 0.5 points (visible in whole points; a score made only of
smaller bits, say 0.9, shows "recent_order" or "no_risk_signal", below), by points
descending (ties in the order activity_decline, overdue, complaints, not_alive):
  {"factor": "activity_decline", "value": 0.8, "points": 28.0,
   "detail": {"last_30d": 2, "baseline_30d": 10.0}}
  {"factor": "overdue", "value": 45, "points": 25.0,
   "detail": {"cycle_days": 30.0, "days_since_last_order": 75, "cycles_since_last_order": 2.5}}
  {"factor": "overdue_typical_cycle", ...}  (the same, against the typical cycle)
  {"factor": "complaints_rising", "value": 3, "points": 15.0,
   "detail": {"last_90d": 4, "previous_90d": 1}}
  {"factor": "p_alive", "value": 0.12, "points": 17.6,
   "detail": {"repeat_purchases": 5, "recency_days": 150, "age_days": 400}}
Then, only if there is room, notes with "points": 0.0 that explain what was not judged:
  {"factor": "activity_baseline_thin", "value": <baseline>, "points": 0.0,
   "detail": {"last_30d", "baseline_30d", "min_baseline_30d"}}   (activity weight > 0)
and when no component adds risk but the customer has a purchase cycle (its own or the
typical one) and overdue is weighted, first what keeps the risk low, the last order
against that cycle:
  {"factor": "recent_order", "value": <days since the last order>, "points": 0.0,
   "detail": {"cycle_days": 30.0, "days_since_last_order": 12}}
  {"factor": "recent_order_typical_cycle", ...}  (the same, against the typical cycle)
and when nothing else applies, exactly one of
  {"factor": "no_history", "value": None, "points": 0.0}        (label "none")
  {"factor": "no_risk_signal", "value": None, "points": 0.0}
Zero-weight components never appear in scores or reasons.

BG/NBD parameters: pass `bgnbd` to use a stored fit; with `bgnbd=None` the model is fitted
on this population (every customer with at least one order: the BG/NBD likelihood is
written for a cohort that includes customers with no repeat purchase, so fitting only on
repeat buyers would bias it), and only if at least `min_fit_customers` customers have
x >= `min_repeat_purchases`; otherwise the component is skipped. The parameters used (or
None) are returned in `result.attrs["bgnbd"]` and where they came from ("given",
"fitted", "skipped", "disabled") in `result.attrs["bgnbd_source"]`. Likewise the typical
cycle: pass `typical_cycle` to use a stored one (NaN: none known); with None it is taken
from this population, and returned in `result.attrs["typical_cycle"]` (NaN when unknown).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from datetime import date

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, model_validator
from scipy.special import digamma, expit, gammaln

from scoring.deferred import Deferred, paused_gc, reasons_builder
from scoring.features import day_numbers
from scoring.params import Weights

COMPONENTS = ("activity_decline", "overdue", "complaints", "not_alive")
REASON_FACTORS = {"activity_decline": "activity_decline", "overdue": "overdue",
                  "complaints": "complaints_rising", "not_alive": "p_alive"}
LABELS = ("high", "medium", "low", "none")
MAX_REASONS = 3
# A reason adds at least half a point: scores are shown in whole points, and "probability
# still active 100%" is no reason for a risk.
REASON_MIN_POINTS = 0.5
REQUIRED_COLUMNS = ("first_order_date", "last_order_date", "purchase_days", "act_30d", "act_baseline_30d",
                    "complaints_90d", "complaints_prev_90d")
OUTPUT_COLUMNS = ("churn_score", "churn_label", "churn_p_alive", "churn_days_overdue", "churn_reasons")


# --------------------------------------------------------------------------- parameters

class _Strict(BaseModel):
    # A misspelt key must be an error, not a silently ignored setting.
    model_config = ConfigDict(extra="forbid", frozen=True)


class ChurnWeights(Weights):
    """Weights of the churn components, normalised by their sum (over the components
    that apply to a customer). A weight of 0 removes the component."""

    activity_decline: float = Field(0.35, ge=0, description="activity in the last 30 days vs own baseline")
    overdue: float = Field(0.25, ge=0, description="days since last order vs own purchase cycle")
    complaints: float = Field(0.15, ge=0, description="complaints in the last 90 days vs the 90 before")
    not_alive: float = Field(0.25, ge=0, description="1 − BG/NBD probability alive")



class ChurnParams(_Strict):
    """Churn risk settings (`scoring.churn` in config). See the module docstring for the
    formulas these feed."""

    enabled: bool = Field(True, description="false: no churn scores (columns present, empty)")
    weights: ChurnWeights = Field(default_factory=ChurnWeights, description="component weights")
    min_baseline_30d: float = Field(
        3.0, ge=0, description="own baseline (activities / 30 days) below which a decline is not judged")
    overdue_grace: float = Field(
        1.0, ge=0, description="overdue risk starts at this many own purchase cycles since the last order")
    overdue_full: float = Field(3.0, gt=0, description="overdue risk is full at this many cycles")
    min_cycle_intervals: int = Field(
        1, ge=1, description="repeat purchase days (frequency) needed to know the own purchase cycle")
    typical_cycle: bool = Field(
        True, description="judge buyers without an own cycle against the repeat buyers' typical cycle")
    typical_cycle_quantile: float = Field(
        0.75, gt=0, le=1, description="the typical cycle: this quantile of the repeat buyers' own cycles")
    min_typical_cycle_customers: int = Field(
        20, ge=1, description="repeat buyers with an own cycle needed to take a typical cycle from them")
    complaints_full_rise: float = Field(
        3.0, gt=0, description="rise in complaints (last 90 days − previous 90) that is full risk")
    min_repeat_purchases: int = Field(
        2, ge=1, description="P(alive) is used only where frequency (repeat purchase days) >= this")
    min_fit_customers: int = Field(
        50, ge=1, description="fit BG/NBD only when at least this many customers have enough repeats")
    fit_sample: int = Field(50_000, ge=100, description="customers sampled (deterministically) for the BG/NBD fit")
    high: float = Field(70, ge=0, le=100, description="label 'high' from this score")
    medium: float = Field(40, ge=0, le=100, description="label 'medium' from this score")

    @model_validator(mode="after")
    def _ordered(self) -> "ChurnParams":
        if self.medium > self.high:
            raise ValueError("medium must be <= high")
        if self.overdue_full <= self.overdue_grace:
            raise ValueError("overdue_full must be > overdue_grace")
        return self


@dataclass(frozen=True)
class BgNbdParams:
    """BG/NBD parameters with time in days: purchase rate λ ~ Gamma(r, rate alpha),
    dropout probability after each repeat purchase p ~ Beta(a, b)."""

    r: float
    alpha: float
    a: float
    b: float

    def __post_init__(self) -> None:
        for name in ("r", "alpha", "a", "b"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ValueError(f"BG/NBD parameter {name} must be a finite number > 0, got {value!r}")

    def to_json(self) -> str:
        return json.dumps({"model": "bgnbd", "time_unit": "days", **asdict(self)}, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "BgNbdParams":
        data = json.loads(text)
        if data.get("time_unit", "days") != "days":
            raise ValueError(f"BG/NBD parameters must be in days, got {data['time_unit']!r}")
        return cls(**{name: float(data[name]) for name in ("r", "alpha", "a", "b")})


# --------------------------------------------------------------------------- BG/NBD

def _bgnbd_loglik(log_params: np.ndarray, x: np.ndarray, t_x: np.ndarray, T: np.ndarray,
                  with_gradient: bool = True, frequencies: tuple[np.ndarray, np.ndarray] | None = None):
    """Mean BG/NBD log-likelihood per customer and its gradient w.r.t. the log-parameters.

    Fader, Hardie & Lee (2005), "Counting Your Customers the Easy Way", eq. (6) in the log
    form of Hardie's note 004 (as lifetimes' BetaGeoFitter._negative_log_likelihood):

        ln L = A1 + A2 + ln( exp(A3) + [x > 0] · exp(A4) )
        A1 = lnΓ(r + x) − lnΓ(r) + r ln α
        A2 = lnΓ(a + b) + lnΓ(b + x) − lnΓ(b) − lnΓ(a + b + x)
        A3 = −(r + x) ln(α + T)
        A4 = ln a − ln(b + x − 1) − (r + x) ln(α + t_x)

    `frequencies`: `np.unique(x, return_inverse=True)`, when the caller evaluates many
    times. The terms of x alone (lnΓ, ψ, ln(b + x − 1)) are computed once per distinct
    frequency (a hundred or so among 50k customers) and spread: they were half the time
    of a fit.
    """
    r, alpha, a, b = np.exp(log_params)
    distinct, spread = frequencies if frequencies is not None else np.unique(x, return_inverse=True)

    def per_customer(values: np.ndarray) -> np.ndarray:
        return values[spread]

    rx = r + x
    repeat = x > 0
    log_at = np.log(alpha + T)
    log_atx = np.log(alpha + t_x)
    b_minus_distinct = b + np.maximum(distinct, 1) - 1
    b_minus = per_customer(b_minus_distinct)
    a1 = per_customer(gammaln(r + distinct)) - gammaln(r) + r * np.log(alpha)
    # In this order: with a and b large the terms nearly cancel, and the fit is flat along a/b.
    a2 = gammaln(a + b) + per_customer(gammaln(b + distinct)) - gammaln(b) - per_customer(gammaln(a + b + distinct))
    a3 = -rx * log_at
    a4 = np.where(repeat, np.log(a) - per_customer(np.log(b_minus_distinct)) - rx * log_atx, -np.inf)
    mixed = np.logaddexp(a3, a4)
    loglik = float(np.mean(a1 + a2 + mixed))
    if not with_gradient:
        return loglik
    # Posterior weights of the two terms of the mixture (w4 = 0 when x = 0).
    w4 = np.exp(a4 - mixed)
    w3 = 1.0 - w4
    digamma_abx = per_customer(digamma(a + b + distinct))
    d_r = per_customer(digamma(r + distinct)) - digamma(r) + np.log(alpha) - w3 * log_at - w4 * log_atx
    d_alpha = r / alpha - w3 * rx / (alpha + T) - w4 * rx / (alpha + t_x)
    d_a = digamma(a + b) - digamma_abx + w4 / a
    d_b = digamma(a + b) + per_customer(digamma(b + distinct)) - digamma(b) - digamma_abx - w4 / b_minus
    # Chain rule for θ = exp(log θ): ∂/∂log θ = θ · ∂/∂θ.
    gradient = np.array([r * d_r.mean(), alpha * d_alpha.mean(), a * d_a.mean(), b * d_b.mean()])
    return loglik, gradient


def _as_history(frequency, recency, T) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    x = np.asarray(frequency, dtype=float).ravel()
    t_x = np.asarray(recency, dtype=float).ravel()
    age = np.asarray(T, dtype=float).ravel()
    if not (len(x) == len(t_x) == len(age)):
        raise ValueError("frequency, recency and T must have the same length")
    return x, t_x, age


def fit_bgnbd(frequency, recency, T, sample: int = 50_000, seed: int = 0) -> BgNbdParams:
    """Maximum-likelihood BG/NBD fit (time in the unit of recency and T: days here).

    Maximises the mean log-likelihood of `_bgnbd_loglik` over the log-parameters with
    scipy.optimize.minimize (L-BFGS-B, analytic gradient). Time is rescaled so that the
    longest T is 10 while fitting (only alpha depends on the time unit; it is scaled
    back), which keeps the optimisation well conditioned whatever the unit.

    Deterministic: the histories are put in a canonical order first, so the result depends
    on the set of histories only (not their order); above `sample` customers a sample drawn
    with numpy's default_rng(seed) from that canonical order is used.
    """
    from scipy.optimize import minimize  # only a full run fits; rescoring a few customers does not
    x, t_x, age = _as_history(frequency, recency, T)
    if len(x) == 0:
        raise ValueError("cannot fit BG/NBD on no customers")
    if not (np.isfinite(x).all() and np.isfinite(t_x).all() and np.isfinite(age).all()):
        raise ValueError("frequency, recency and T must be finite")
    if (x < 0).any() or (t_x < 0).any() or (t_x > age + 1e-9).any():
        raise ValueError("need frequency >= 0 and 0 <= recency <= T")
    order = np.lexsort((age, t_x, x))
    x, t_x, age = x[order], t_x[order], age[order]
    if len(x) > sample:
        picked = np.sort(np.random.default_rng(seed).choice(len(x), size=sample, replace=False))
        x, t_x, age = x[picked], t_x[picked], age[picked]
    longest = float(age.max())
    scale = 10.0 / longest if longest > 0 else 1.0
    t_x, age = t_x * scale, age * scale
    frequencies = np.unique(x, return_inverse=True)

    def objective(log_params):
        loglik, gradient = _bgnbd_loglik(log_params, x, t_x, age, frequencies=frequencies)
        return -loglik, -gradient

    result = minimize(objective, x0=np.zeros(4), jac=True, method="L-BFGS-B",
                      bounds=[(-12.0, 12.0)] * 4, options={"maxiter": 1000, "gtol": 1e-8, "ftol": 1e-12})
    r, alpha, a, b = np.exp(result.x)
    return BgNbdParams(r=float(r), alpha=float(alpha / scale), a=float(a), b=float(b))


def p_alive(params: BgNbdParams, frequency, recency, T) -> np.ndarray:
    """P(customer still alive | x, t_x, T) under BG/NBD (Fader, Hardie & Lee 2005, eq. 11;
    Hardie's note 021, as lifetimes' conditional_probability_alive):

        P(alive) = 1 / (1 + [x > 0] · a / (b + x − 1) · ((α + T) / (α + t_x))^(r + x))

    computed as expit(−ln(...)) for stability; 1.0 where x = 0 (the model lets a customer
    drop out only after a repeat purchase). NaN inputs give NaN.
    """
    x, t_x, age = _as_history(frequency, recency, T)
    r, alpha, a, b = params.r, params.alpha, params.a, params.b
    with np.errstate(invalid="ignore", divide="ignore"):
        log_odds_dead = (r + x) * np.log((alpha + age) / (alpha + t_x)) + np.log(a / (b + np.maximum(x, 1) - 1))
        alive = np.where(x == 0, 1.0, expit(-log_odds_dead))
    alive[np.isnan(x) | np.isnan(t_x) | np.isnan(age)] = np.nan
    return alive


# --------------------------------------------------------------------------- scoring

def _numbers(features: pd.DataFrame, name: str) -> np.ndarray:
    values = pd.to_numeric(features[name], errors="coerce").to_numpy(dtype=float)
    return np.nan_to_num(values, nan=0.0)


def _empty_result(index: pd.Index, source: str, bgnbd: BgNbdParams | None) -> pd.DataFrame:
    result = pd.DataFrame({"churn_score": np.full(len(index), np.nan), "churn_label": [None] * len(index),
                           "churn_p_alive": np.full(len(index), np.nan),
                           "churn_days_overdue": np.full(len(index), np.nan),
                           "churn_reasons": [[] for _ in range(len(index))]}, index=index)
    result.attrs["bgnbd"] = bgnbd
    result.attrs["bgnbd_source"] = source
    return result


def score_churn(features: pd.DataFrame, as_of: date, params: ChurnParams,
                bgnbd: BgNbdParams | None = None, deferred: dict | None = None,
                typical_cycle: float | None = None) -> pd.DataFrame:
    """Churn risk per customer, indexed like `features`: churn_score (0–100, 0.1),
    churn_label, churn_p_alive (NaN where not used), churn_days_overdue (NaN without an
    own or typical cycle), churn_reasons. BG/NBD parameters used: `result.attrs["bgnbd"]`,
    the typical cycle `result.attrs["typical_cycle"]`.
    With `params.enabled` false every column is empty (NaN / None / [])."""
    missing = [name for name in REQUIRED_COLUMNS if name not in features.columns]
    if missing:
        raise KeyError(f"churn features lack columns: {', '.join(missing)}")
    if not params.enabled:
        return _empty_result(features.index, "disabled", None)
    weights = params.weights
    today = float(np.datetime64(pd.Timestamp(as_of).date(), "D").astype("int64"))

    first = day_numbers(features["first_order_date"])
    last = day_numbers(features["last_order_date"])
    purchase_days = _numbers(features, "purchase_days")
    has_order = ~np.isnan(first) & ~np.isnan(last) & (purchase_days >= 1)
    with np.errstate(invalid="ignore"):
        frequency = np.where(has_order, purchase_days - 1, np.nan)
        recency = np.where(has_order, np.maximum(last - first, 0.0), np.nan)
        age = np.where(has_order, np.maximum(today - first, recency), np.nan)
        since_last = np.where(has_order, np.maximum(today - last, 0.0), np.nan)
    act_30d = _numbers(features, "act_30d")
    baseline = _numbers(features, "act_baseline_30d")
    complaints = _numbers(features, "complaints_90d")
    complaints_prev = _numbers(features, "complaints_prev_90d")
    no_history = ~has_order & (act_30d == 0) & (baseline == 0) & (complaints == 0) & (complaints_prev == 0)
    n = len(features)

    # activity_decline
    judged = (baseline >= params.min_baseline_30d) & (baseline > 0)
    decline = np.zeros(n)
    decline[judged] = np.clip(1.0 - act_30d[judged] / baseline[judged], 0.0, 1.0)

    # overdue against the own purchase cycle, or the typical one
    own_cycle = has_order & (np.nan_to_num(frequency) >= params.min_cycle_intervals)
    cycle = np.full(n, np.nan)
    cycle[own_cycle] = np.maximum(recency[own_cycle] / frequency[own_cycle], 1.0)
    if typical_cycle is None:
        typical_cycle = _typical_cycle(cycle[own_cycle], params)
    if params.typical_cycle and np.isfinite(typical_cycle):
        cycle[has_order & ~own_cycle] = typical_cycle
    has_cycle = ~np.isnan(cycle)
    cycles_since = since_last / cycle
    overdue = np.zeros(n)
    span = params.overdue_full - params.overdue_grace
    overdue[has_cycle] = np.clip((cycles_since[has_cycle] - params.overdue_grace) / span, 0.0, 1.0)
    days_overdue = np.where(has_cycle, np.maximum(since_last - cycle, 0.0), np.nan)

    # complaints rising
    rise = complaints - complaints_prev
    complaint_risk = np.clip(rise / params.complaints_full_rise, 0.0, 1.0)

    # not alive (BG/NBD)
    eligible = has_order & (np.nan_to_num(frequency) >= params.min_repeat_purchases)
    source = "given" if bgnbd is not None else "skipped"
    model = bgnbd
    if weights.not_alive > 0 and model is None and int(eligible.sum()) >= params.min_fit_customers:
        model = fit_bgnbd(frequency[has_order], recency[has_order], age[has_order], sample=params.fit_sample)
        source = "fitted"
    use_alive = eligible & (model is not None) & (weights.not_alive > 0)
    alive = np.full(n, np.nan)
    if use_alive.any():
        alive[use_alive] = p_alive(model, frequency[use_alive], recency[use_alive], age[use_alive])
    not_alive = np.where(use_alive, 1.0 - np.nan_to_num(alive), 0.0)

    w = np.array([weights.activity_decline, weights.overdue, weights.complaints, weights.not_alive])
    # Purchase silence, read two ways: overdue and not_alive. The larger counts, with both
    # weights, wherever either applies — a one-time buyer (no P(alive)) and a repeat buyer
    # are judged on one scale, and a P(alive) near 1 cannot talk down a long silence.
    overdue_on = has_cycle & (w[1] > 0)
    alive_on = use_alive & (w[3] > 0)
    silence_on = overdue_on | alive_on
    overdue_risk = np.where(overdue_on, overdue, 0.0)
    alive_risk = np.where(alive_on, not_alive, 0.0)
    silence = np.maximum(overdue_risk, alive_risk)
    silence_weight = np.where(silence_on, w[1] + w[3], 0.0)
    decline_weight = np.where(judged, w[0], 0.0)
    total = decline_weight + silence_weight + w[2]
    complaints_only = (w[2] > 0) & (decline_weight == 0) & (silence_weight == 0)
    total[complaints_only] = w.sum()
    safe_total = np.where(total > 0, total, 1.0)
    silence_points = 100.0 * silence_weight * silence / safe_total
    by_overdue = overdue_risk >= alive_risk  # the reading that counted gets the points
    points = np.column_stack([100.0 * decline_weight * decline / safe_total,
                              np.where(by_overdue, silence_points, 0.0),
                              100.0 * w[2] * complaint_risk / safe_total,
                              np.where(by_overdue, 0.0, silence_points)])
    points[no_history] = 0.0
    score = np.round(points.sum(axis=1), 1)
    label = np.select([no_history, score >= params.high, score >= params.medium], ["none", "high", "medium"], "low")

    result = pd.DataFrame({"churn_score": score, "churn_label": label, "churn_p_alive": alive,
                           "churn_days_overdue": np.round(days_overdue, 1)}, index=features.index)
    thin_note = (w[0] > 0) & ~judged & ~no_history
    values = dict(decline=decline, act_30d=act_30d, baseline=baseline, days_overdue=days_overdue, cycle=cycle,
                  own_cycle=own_cycle,
                  since_last=since_last, cycles_since=cycles_since, complaints=complaints,
                  complaints_prev=complaints_prev, alive=alive, frequency=frequency, recency=recency, age=age)
    if deferred is None:
        with paused_gc():
            result["churn_reasons"] = _reasons(points, no_history, thin_note, params, **values)
    else:  # built a chunk at a time by the writer (scoring.deferred)
        deferred["churn_reasons"] = Deferred(
            "churn", {"points": points, "no_history": no_history, "thin_note": thin_note, "values": values}, n,
            params.model_dump(mode="json"))
    result.attrs["bgnbd"] = model if (model is not None and weights.not_alive > 0) else None
    result.attrs["bgnbd_source"] = source if weights.not_alive > 0 else "disabled"
    result.attrs["typical_cycle"] = float(typical_cycle)
    return result


def _typical_cycle(own_cycles: np.ndarray, params: ChurnParams) -> float:
    """The repeat buyers' own cycle at `typical_cycle_quantile`; NaN when too few have one."""
    if not params.typical_cycle or len(own_cycles) < params.min_typical_cycle_customers:
        return float("nan")
    return round(float(np.quantile(own_cycles, params.typical_cycle_quantile)), 1)


def _counts(values: np.ndarray) -> list:
    """Counts for reasons: whole numbers as int, others as floats rounded to 2 places."""
    rounded = np.round(values, 2)
    whole = rounded == np.round(values)
    as_int = np.round(values).astype(np.int64).tolist()
    return [i if w else f for i, f, w in zip(as_int, rounded.tolist(), whole.tolist())]


def _ints(values: np.ndarray) -> list:
    return np.round(values).astype(np.int64).tolist()


def _component_entries(component: int, rows: np.ndarray, points: np.ndarray, v: dict[str, np.ndarray]) -> list[dict]:
    """The reason dicts of one component for the given rows (vectorised values)."""
    pts = np.round(points[rows, component], 1).tolist()
    if component == 0:
        return [{"factor": "activity_decline", "value": value, "points": p,
                 "detail": {"last_30d": last, "baseline_30d": base}}
                for value, p, last, base in zip(np.round(v["decline"][rows], 6).tolist(), pts,
                                                _counts(v["act_30d"][rows]), np.round(v["baseline"][rows], 6).tolist())]
    if component == 1:
        # Chunks stored before the typical cycle existed have own cycles only.
        own = v["own_cycle"][rows].tolist() if "own_cycle" in v else [True] * len(rows)
        return [{"factor": "overdue" if is_own else "overdue_typical_cycle", "value": value, "points": p,
                 "detail": {"cycle_days": cycle, "days_since_last_order": since, "cycles_since_last_order": ratio}}
                for value, p, cycle, since, ratio, is_own in zip(_ints(v["days_overdue"][rows]), pts,
                                                                 np.round(v["cycle"][rows], 1).tolist(),
                                                                 _ints(v["since_last"][rows]),
                                                                 np.round(v["cycles_since"][rows], 2).tolist(), own)]
    if component == 2:
        now, before = v["complaints"][rows], v["complaints_prev"][rows]
        return [{"factor": "complaints_rising", "value": value, "points": p,
                 "detail": {"last_90d": last, "previous_90d": previous}}
                for value, p, last, previous in zip(_counts(now - before), pts, _counts(now), _counts(before))]
    return [{"factor": "p_alive", "value": value, "points": p,
             "detail": {"repeat_purchases": x, "recency_days": recency, "age_days": age}}
            for value, p, x, recency, age in zip(np.round(v["alive"][rows], 6).tolist(), pts,
                                                 _ints(v["frequency"][rows]), _ints(v["recency"][rows]),
                                                 _ints(v["age"][rows]))]


@reasons_builder("churn")
def _deferred_reasons(inputs: dict, settings: dict) -> list[list[dict]]:
    return _reasons(inputs["points"], inputs["no_history"], inputs["thin_note"], ChurnParams.model_validate(settings),
                    **inputs["values"])


def _reasons(points: np.ndarray, no_history: np.ndarray, thin_note: np.ndarray, params: ChurnParams,
             **values: np.ndarray) -> list[list[dict]]:
    """Reasons per row: contributing components by points descending, then notes.

    Vectorised: each component's dicts are built only for the rows it explains, then
    rows are assembled per pattern (which components, in which order, which note)."""
    n = len(points)
    n_components = points.shape[1]
    contributes = (points >= REASON_MIN_POINTS) & ~no_history[:, None]
    # Stable sort on −points keeps the configured component order for ties.
    order = np.argsort(-np.where(contributes, points, -1.0), axis=1, kind="stable")[:, :MAX_REASONS]
    count = np.minimum(contributes.sum(axis=1), MAX_REASONS)
    note = np.where(no_history, 1, np.where(count == 0, np.where(thin_note, 2, 3),
                                            np.where((count < MAX_REASONS) & thin_note, 2, 0)))
    # Pattern code: the ordered components shown (base n_components + 1, 0 = none), then the note.
    # Nothing adds risk, and there is a cycle to read the last order against: that is why.
    cycle, since = values["cycle"], values["since_last"]
    recent = (count == 0) & ~no_history & np.isfinite(cycle) & np.isfinite(since) & (params.weights.overdue > 0)
    note = np.where(recent & (note == 3), 0, note)
    code = note.astype(np.int64) * 2 + recent
    for position in range(MAX_REASONS):
        shown = np.where(position < count, order[:, position] + 1, 0)
        code = code * (n_components + 1) + shown

    entries = np.empty((n_components, n), dtype=object)
    slot = np.arange(MAX_REASONS)[None, :] < count[:, None]  # positions of `order` that are shown
    for component in range(n_components):
        rows = np.flatnonzero(((order == component) & slot).any(axis=1))
        if len(rows):
            entries[component, rows] = _component_entries(component, rows, points, values)
    notes = np.empty(n, dtype=object)
    thin_rows = np.flatnonzero(note == 2)
    if len(thin_rows):
        baseline = np.round(values["baseline"][thin_rows], 6).tolist()
        last = _counts(values["act_30d"][thin_rows])
        minimum = params.min_baseline_30d
        notes[thin_rows] = [{"factor": "activity_baseline_thin", "value": base, "points": 0.0,
                             "detail": {"last_30d": act, "baseline_30d": base, "min_baseline_30d": minimum}}
                            for base, act in zip(baseline, last)]
    leads = np.empty(n, dtype=object)
    recent_rows = np.flatnonzero(recent)
    if len(recent_rows):
        # Chunks stored before the typical cycle existed have own cycles only.
        own = values["own_cycle"][recent_rows].tolist() if "own_cycle" in values else [True] * len(recent_rows)
        leads[recent_rows] = [{"factor": "recent_order" if is_own else "recent_order_typical_cycle", "value": days,
                               "points": 0.0, "detail": {"cycle_days": days_in_cycle, "days_since_last_order": days}}
                              for days, days_in_cycle, is_own in zip(_ints(since[recent_rows]),
                                                                     np.round(cycle[recent_rows], 1).tolist(), own)]
    for kind, factor in ((1, "no_history"), (3, "no_risk_signal")):
        rows = np.flatnonzero(note == kind)
        if len(rows):
            notes[rows] = [{"factor": factor, "value": None, "points": 0.0} for _ in range(len(rows))]

    reasons: list = [None] * n
    patterns, first_rows, inverse = np.unique(code, return_index=True, return_inverse=True)
    grouped = np.argsort(inverse, kind="stable")
    bounds = np.searchsorted(inverse[grouped], np.arange(len(patterns) + 1))
    for group, first_row in enumerate(first_rows.tolist()):
        rows = grouped[bounds[group]:bounds[group + 1]]
        columns = [entries[component, rows] for component in order[first_row, :count[first_row]].tolist()]
        if recent[first_row]:
            columns.append(leads[rows])
        if note[first_row]:
            columns.append(notes[rows])
        for row, items in zip(rows.tolist(), zip(*columns)):
            reasons[row] = list(items)
    return reasons
