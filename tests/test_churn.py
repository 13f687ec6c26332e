"""Churn risk as pure functions: components, labels, reasons, and the BG/NBD maths."""

from __future__ import annotations

from datetime import date, timedelta

import numpy as np
import pandas as pd
import pytest
from pydantic import ValidationError
from scipy.special import betaln, gammaln

from handlers.text import model_reasons_text
from scoring.churn import (
    BgNbdParams,
    ChurnParams,
    ChurnWeights,
    _bgnbd_loglik,
    fit_bgnbd,
    p_alive,
    score_churn,
)

AS_OF = date(2026, 11, 20)
MODEL = BgNbdParams(r=0.25, alpha=30.0, a=0.8, b=2.5)  # days


def _row(customer_id: str, *, orders: list[int] | None = None, act_30d: float = 5, baseline: float = 5.0,
         complaints: int = 0, complaints_prev: int = 0) -> dict:
    """`orders`: days before AS_OF on which the customer ordered (distinct)."""
    orders = sorted(set(orders or []), reverse=True)
    first = pd.Timestamp(AS_OF - timedelta(days=orders[0])) if orders else pd.NaT
    last = pd.Timestamp(AS_OF - timedelta(days=orders[-1])) if orders else pd.NaT
    return {"customer_id": customer_id, "first_order_date": first, "last_order_date": last,
            "purchase_days": len(orders), "act_30d": act_30d, "act_baseline_30d": baseline,
            "complaints_90d": complaints, "complaints_prev_90d": complaints_prev,
            "revenue_12m": 1000.0, "revenue_12_24m": 1000.0}


def _features(rows: list[dict]) -> pd.DataFrame:
    frame = pd.DataFrame(rows).set_index("customer_id")
    for column in ("first_order_date", "last_order_date"):
        frame[column] = pd.to_datetime(frame[column])
    return frame


def _regular(last_order_days_ago: int, cycle: int = 30, count: int = 6) -> list[int]:
    return [last_order_days_ago + cycle * k for k in range(count)]


def _score(rows, params: ChurnParams | None = None, bgnbd: BgNbdParams | None = MODEL) -> pd.DataFrame:
    return score_churn(_features(rows), AS_OF, params or ChurnParams(), bgnbd=bgnbd)


def _factors(reasons: list[dict]) -> list[str]:
    return [reason["factor"] for reason in reasons]


def simulate_bgnbd(n: int, r: float, alpha: float, a: float, b: float, seed: int,
                   t_min: float = 30, t_max: float = 90) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Histories (x, t_x, T) from a BG/NBD process: λ ~ Gamma(r, rate α), p ~ Beta(a, b);
    Poisson purchases at rate λ after the first at time 0; after each repeat purchase the
    customer drops out with probability p."""
    rng = np.random.default_rng(seed)
    rate = rng.gamma(r, 1 / alpha, n)
    dropout = rng.beta(a, b, n)
    age = rng.uniform(t_min, t_max, n)
    x = np.zeros(n)
    t_x = np.zeros(n)
    clock = np.zeros(n)
    alive = np.ones(n, dtype=bool)
    while alive.any():
        clock = clock + rng.exponential(1.0, n) / rate
        bought = alive & (clock <= age)
        x[bought] += 1
        t_x[bought] = clock[bought]
        alive = bought & (rng.random(n) > dropout)
    return x, t_x, age


# --------------------------------------------------------------------------- components

def test_activity_decline_raises_risk_and_is_the_top_reason():
    orders = _regular(10)
    result = _score([_row("FELL", orders=orders, act_30d=1, baseline=10.0),
                     _row("SAME", orders=orders, act_30d=10, baseline=10.0)])
    assert result.loc["FELL", "churn_score"] > result.loc["SAME", "churn_score"]
    top = result.loc["FELL", "churn_reasons"][0]
    assert top["factor"] == "activity_decline"
    assert top["value"] == pytest.approx(0.9)
    assert top["detail"] == {"last_30d": 1, "baseline_30d": 10.0}
    assert "activity_decline" not in _factors(result.loc["SAME", "churn_reasons"])


def test_thin_baseline_is_not_judged_and_says_so():
    result = _score([_row("THIN", orders=_regular(10), act_30d=0, baseline=1.0)], bgnbd=None)
    assert result.loc["THIN", "churn_score"] == 0.0
    reasons = result.loc["THIN", "churn_reasons"]
    # Why the risk is low first (the last order against its cycle), then what was not judged.
    assert _factors(reasons) == ["recent_order", "activity_baseline_thin"]
    assert reasons[1]["points"] == 0.0 and reasons[1]["detail"]["min_baseline_30d"] == 3.0
    assert model_reasons_text("churn", reasons) == "距上次下单 10 天，自身采购周期约 30 天；活跃记录太少，无法判断下降"


def test_overdue_against_own_cycle():
    on_time = _regular(20, cycle=30)
    late = _regular(120, cycle=30)  # 4 cycles since the last order: 3 cycles overdue
    result = _score([_row("LATE", orders=late), _row("ONTIME", orders=on_time)], bgnbd=None)
    assert result.loc["LATE", "churn_score"] > result.loc["ONTIME", "churn_score"]
    assert result.loc["ONTIME", "churn_days_overdue"] == 0
    assert result.loc["LATE", "churn_days_overdue"] == 90
    reason = result.loc["LATE", "churn_reasons"][0]
    assert reason["factor"] == "overdue" and reason["value"] == 90
    assert reason["detail"] == {"cycle_days": 30.0, "days_since_last_order": 120, "cycles_since_last_order": 4.0}
    # Full overdue risk (≥ 3 cycles) with activity and complaints at 0: purchase silence's
    # share of the weight (overdue's and not_alive's together: two readings of one signal).
    weights = ChurnParams().weights
    silence = weights.overdue + weights.not_alive
    share = silence / (weights.activity_decline + silence + weights.complaints)
    assert result.loc["LATE", "churn_score"] == pytest.approx(round(100 * share, 1))
    # A single order day has no own cycle: nothing is overdue.
    single = _score([_row("ONCE", orders=[400])], bgnbd=None)
    assert np.isnan(single.loc["ONCE", "churn_days_overdue"])
    assert single.loc["ONCE", "churn_score"] == 0.0


def test_rising_complaints_raise_risk():
    orders = _regular(10)
    result = _score([_row("RISING", orders=orders, complaints=4, complaints_prev=1),
                     _row("STEADY", orders=orders, complaints=2, complaints_prev=2)])
    assert result.loc["RISING", "churn_score"] > result.loc["STEADY", "churn_score"]
    reason = next(r for r in result.loc["RISING", "churn_reasons"] if r["factor"] == "complaints_rising")
    assert reason["value"] == 3 and reason["detail"] == {"last_90d": 4, "previous_90d": 1}
    assert "complaints_rising" not in _factors(result.loc["STEADY", "churn_reasons"])


def test_reasons_are_ordered_by_points_and_sum_to_the_score():
    row = _row("ALL", orders=_regular(70, cycle=30), act_30d=2, baseline=10.0, complaints=3, complaints_prev=0)
    result = _score([row])
    reasons = result.loc["ALL", "churn_reasons"]
    assert 1 <= len(reasons) <= 3
    points = [reason["points"] for reason in reasons]
    assert points == sorted(points, reverse=True)
    assert result.loc["ALL", "churn_label"] in {"high", "medium"}
    full = ChurnParams(weights=ChurnWeights(activity_decline=1, overdue=1, complaints=1, not_alive=0))
    three = _score([row], params=full).loc["ALL"]
    assert sum(r["points"] for r in three["churn_reasons"]) == pytest.approx(three["churn_score"], abs=0.15)


def test_zero_weight_removes_a_component():
    rows = [_row("FELL", orders=_regular(10), act_30d=1, baseline=10.0, complaints=3),
            _row("LATE", orders=_regular(200))]
    no_activity = ChurnParams(weights=ChurnWeights(activity_decline=0, overdue=0.25, complaints=0.15, not_alive=0.25))
    result = _score(rows, params=no_activity)
    for customer in ("FELL", "LATE"):
        factors = _factors(result.loc[customer, "churn_reasons"])
        assert "activity_decline" not in factors and "activity_baseline_thin" not in factors
    # The same customer without the decline scores the same once the weight is 0.
    calm = _score([_row("FELL", orders=_regular(10), act_30d=10, baseline=10.0, complaints=3)], params=no_activity)
    assert result.loc["FELL", "churn_score"] == calm.loc["FELL", "churn_score"]

    no_alive = ChurnParams(weights=ChurnWeights(not_alive=0))
    result = _score(rows, params=no_alive)
    assert result["churn_p_alive"].isna().all()
    assert result.attrs["bgnbd"] is None
    assert all("p_alive" not in _factors(reasons) for reasons in result["churn_reasons"])

    with pytest.raises(ValidationError):
        ChurnWeights(activity_decline=0, overdue=0, complaints=0, not_alive=0)


def test_customers_without_orders_or_activity_are_labelled_none():
    result = _score([_row("GHOST", act_30d=0, baseline=0.0),
                     _row("PROSPECT", act_30d=0, baseline=8.0),
                     _row("BUYER", orders=_regular(10))])
    ghost = result.loc["GHOST"]
    assert ghost["churn_label"] == "none" and ghost["churn_score"] == 0.0
    assert np.isnan(ghost["churn_p_alive"]) and np.isnan(ghost["churn_days_overdue"])
    assert ghost["churn_reasons"] == [{"factor": "no_history", "value": None, "points": 0.0}]
    # A prospect whose activity stopped is at risk, judged on activity and complaints only.
    prospect = result.loc["PROSPECT"]
    assert prospect["churn_label"] == "high" and prospect["churn_reasons"][0]["factor"] == "activity_decline"
    assert result.loc["BUYER", "churn_label"] in {"low", "medium", "high"}


def test_labels_follow_the_cut_points():
    rows = [_row("A", act_30d=0, baseline=10.0), _row("B", act_30d=5, baseline=10.0), _row("C")]
    result = _score(rows, params=ChurnParams(high=90, medium=40))
    assert list(result["churn_score"]) == [70.0, 35.0, 0.0]
    assert list(result["churn_label"]) == ["medium", "low", "low"]
    with pytest.raises(ValidationError):
        ChurnParams(high=30, medium=40)
    with pytest.raises(ValidationError):
        ChurnParams(overdu_grace=1.0)  # misspelt key


def test_disabled_gives_empty_columns():
    result = _score([_row("A", act_30d=0, baseline=10.0)], params=ChurnParams(enabled=False))
    assert list(result.columns) == ["churn_score", "churn_label", "churn_p_alive", "churn_days_overdue",
                                    "churn_reasons"]
    assert np.isnan(result.loc["A", "churn_score"]) and result.loc["A", "churn_reasons"] == []


# --------------------------------------------------------------------------- BG/NBD

def test_p_alive_falls_as_the_silence_grows_and_is_one_without_repeats():
    # 5 repeat purchases over 150 days (cycle 30): the longer since the last one, the lower.
    silence = np.arange(0, 400, 10, dtype=float)
    alive = p_alive(MODEL, np.full(len(silence), 5.0), np.full(len(silence), 150.0), 150.0 + silence)
    # Right after a purchase only the dropout at that purchase counts: 1 / (1 + a / (b + x − 1)).
    assert alive[0] == pytest.approx(1 / (1 + MODEL.a / (MODEL.b + 4)))
    assert np.all(np.diff(alive) < 0)
    assert alive[-1] < 0.2
    # The same silence weighs more for a customer with a shorter cycle.
    fast = p_alive(MODEL, [10.0], [150.0], [250.0])[0]
    slow = p_alive(MODEL, [2.0], [150.0], [250.0])[0]
    assert fast < slow
    assert np.all(p_alive(MODEL, [0.0, 0.0], [0.0, 0.0], [5.0, 900.0]) == 1.0)


def test_log_likelihood_matches_the_paper():
    """ln of Fader, Hardie & Lee (2005) eq. (6), written out directly."""
    r, alpha, a, b = 0.3, 5.0, 0.9, 2.0
    x = np.array([0.0, 1.0, 4.0, 10.0])
    t_x = np.array([0.0, 3.0, 20.0, 35.0])
    T = np.array([12.0, 30.0, 40.0, 38.0])
    gamma_part = gammaln(r + x) - gammaln(r) + r * np.log(alpha)
    term3 = np.exp(betaln(a, b + x) - betaln(a, b) + gamma_part - (r + x) * np.log(alpha + T))
    term4 = np.exp(betaln(a + 1, b + np.maximum(x, 1) - 1) - betaln(a, b) + gamma_part
                   - (r + x) * np.log(alpha + t_x))
    expected = np.mean(np.log(term3 + (x > 0) * term4))
    loglik = _bgnbd_loglik(np.log([r, alpha, a, b]), x, t_x, T, with_gradient=False)
    assert loglik == pytest.approx(expected, rel=1e-10)


def test_fit_recovers_simulated_parameters():
    truth = {"r": 0.25, "alpha": 4.0, "a": 0.8, "b": 2.5}
    x, t_x, T = simulate_bgnbd(4000, **truth, seed=7)
    fitted = fit_bgnbd(x, t_x, T)
    assert fitted.r == pytest.approx(truth["r"], rel=0.25)
    assert fitted.alpha == pytest.approx(truth["alpha"], rel=0.3)
    assert fitted.a == pytest.approx(truth["a"], rel=0.5)
    assert fitted.b == pytest.approx(truth["b"], rel=0.5)
    # Deterministic whatever the order of customers, and with a sample.
    shuffled = np.random.default_rng(1).permutation(len(x))
    assert fit_bgnbd(x[shuffled], t_x[shuffled], T[shuffled]) == fitted
    assert fit_bgnbd(x, t_x, T, sample=2000) == fit_bgnbd(x[shuffled], t_x[shuffled], T[shuffled], sample=2000)
    assert BgNbdParams.from_json(fitted.to_json()) == fitted
    with pytest.raises(ValueError):
        BgNbdParams(r=0.0, alpha=1.0, a=1.0, b=1.0)


def _population(n: int = 300, seed: int = 3) -> pd.DataFrame:
    x, t_x, T = simulate_bgnbd(n, 0.5, 20.0, 0.8, 2.5, seed=seed, t_min=60, t_max=700)
    rng = np.random.default_rng(seed)
    first = pd.Timestamp(AS_OF) - pd.to_timedelta(np.round(T), unit="D")
    last = first + pd.to_timedelta(np.round(t_x), unit="D")
    return pd.DataFrame({
        "first_order_date": first, "last_order_date": last, "purchase_days": (x + 1).astype(int),
        "act_30d": rng.integers(0, 8, n), "act_baseline_30d": rng.choice([0.0, 2.0, 5.0, 8.0], n),
        "complaints_90d": rng.integers(0, 3, n), "complaints_prev_90d": rng.integers(0, 3, n),
    }, index=pd.Index([f"C{i:04d}" for i in range(n)], name="customer_id"))


def test_fits_on_the_population_and_is_deterministic():
    features = _population()
    params = ChurnParams()
    result = score_churn(features, AS_OF, params)
    assert result.attrs["bgnbd_source"] == "fitted"
    fitted = result.attrs["bgnbd"]
    used = result["churn_p_alive"].notna()
    assert used.sum() >= params.min_fit_customers
    assert (features.loc[used, "purchase_days"] - 1 >= params.min_repeat_purchases).all()
    assert result["churn_score"].between(0, 100).all()
    assert result["churn_reasons"].map(len).between(1, 3).all()
    # Same input, any row order → same output; reusing the stored fit gives the same too.
    again = score_churn(features.iloc[::-1], AS_OF, params)
    pd.testing.assert_frame_equal(again.loc[result.index], result)
    assert again.attrs["bgnbd"] == fitted
    reused = score_churn(features, AS_OF, params, bgnbd=BgNbdParams.from_json(fitted.to_json()))
    pd.testing.assert_frame_equal(reused, result)
    assert reused.attrs["bgnbd_source"] == "given"


def test_too_few_repeat_buyers_skip_p_alive():
    features = _population().iloc[:20]
    result = score_churn(features, AS_OF, ChurnParams())
    assert result.attrs["bgnbd"] is None and result.attrs["bgnbd_source"] == "skipped"
    assert result["churn_p_alive"].isna().all()


def test_one_time_buyers_are_overdue_against_the_repeat_buyers_typical_cycle():
    repeat_buyers = [_row(f"R{i:02d}", orders=_regular(10, cycle=30 + i % 3)) for i in range(25)]
    rows = repeat_buyers + [_row("GONE", orders=[400], act_30d=0, baseline=0.0),
                            _row("FRESH", orders=[20], act_30d=0, baseline=0.0)]
    result = _score(rows, bgnbd=None)
    # The upper quartile of their own cycles (30, 31 and 32 days): a first repurchase is slower.
    assert result.attrs["typical_cycle"] == 32.0
    gone = result.loc["GONE"]
    assert gone["churn_days_overdue"] == 400 - 32
    assert gone["churn_reasons"][0] == {"factor": "overdue_typical_cycle", "value": 368, "points": gone["churn_score"],
                                        "detail": {"cycle_days": 32.0, "days_since_last_order": 400,
                                                   "cycles_since_last_order": 12.5}}
    # Full silence beside complaints (too little activity to judge): silence's share of those
    # weights, as for a repeat buyer as silent; not 0 as before.
    weights = ChurnParams().weights
    silence = weights.overdue + weights.not_alive
    assert gone["churn_score"] == pytest.approx(round(100 * silence / (silence + weights.complaints), 1))
    assert gone["churn_label"] == "high"
    fresh = result.loc["FRESH"]
    assert fresh["churn_score"] == 0.0 and fresh["churn_days_overdue"] == 0
    # Repeat buyers keep their own cycle.
    assert all(r["factor"] != "overdue_typical_cycle" for r in result.loc["R00", "churn_reasons"])


def test_the_typical_cycle_needs_enough_repeat_buyers_and_can_be_switched_off_or_given():
    few = [_row(f"R{i}", orders=_regular(10)) for i in range(3)] + [_row("GONE", orders=[400])]
    result = _score(few, bgnbd=None)
    assert np.isnan(result.attrs["typical_cycle"]) and result.loc["GONE", "churn_score"] == 0.0
    many = [_row(f"R{i:02d}", orders=_regular(10)) for i in range(25)] + [_row("GONE", orders=[400])]
    off = _score(many, ChurnParams(typical_cycle=False), bgnbd=None)
    assert np.isnan(off.loc["GONE", "churn_days_overdue"]) and off.loc["GONE", "churn_score"] == 0.0
    # Given (an incremental rescore against the last full run): used whatever the rows are.
    alone = score_churn(_features([_row("GONE", orders=[400])]), AS_OF, ChurnParams(), typical_cycle=100.0)
    assert alone.loc["GONE", "churn_days_overdue"] == 300
    unknown = score_churn(_features([_row("GONE", orders=[400])]), AS_OF, ChurnParams(), typical_cycle=float("nan"))
    assert np.isnan(unknown.loc["GONE", "churn_days_overdue"])


def test_complaints_alone_weigh_only_their_share():
    # A prospect: no order and too little activity to judge, three more complaints.
    result = _score([_row("PROSPECT", act_30d=0, baseline=1.0, complaints=3, complaints_prev=0)], bgnbd=None)
    weights = ChurnParams().weights
    total = weights.activity_decline + weights.overdue + weights.complaints + weights.not_alive
    assert result.loc["PROSPECT", "churn_score"] == pytest.approx(round(100 * weights.complaints / total, 1))
    assert result.loc["PROSPECT", "churn_reasons"][0]["factor"] == "complaints_rising"
    assert result.loc["PROSPECT", "churn_label"] == "low"


def test_a_reason_worth_less_than_half_a_point_is_not_given():
    # Buying every 30 days, last 10 days ago: P(alive) just under 1 adds a sliver of risk,
    # which read as "probability still active 100%" among the reasons for churn risk.
    hardly_anyone_leaves = BgNbdParams(r=0.25, alpha=30.0, a=0.8, b=131.0)  # as fitted on the demo company
    result = _score([_row("STEADY", orders=_regular(10), act_30d=5, baseline=5.0)], bgnbd=hardly_anyone_leaves)
    steady = result.loc["STEADY"]
    assert 0 < 1 - steady["churn_p_alive"] < 0.01
    assert _factors(steady["churn_reasons"]) == ["recent_order"]
    assert model_reasons_text("churn", steady["churn_reasons"], "en") == \
        "last order 10 days ago; its own purchase cycle is about 30 days"


def test_the_last_order_is_no_reason_for_low_risk_when_overdue_is_not_weighed():
    params = ChurnParams.model_validate({"weights": {"activity_decline": 0.5, "overdue": 0, "complaints": 0.5,
                                                     "not_alive": 0}})
    result = _score([_row("LONG_AGO", orders=_regular(700), act_30d=5, baseline=5.0)], params=params)
    assert _factors(result.loc["LONG_AGO", "churn_reasons"]) == ["no_risk_signal"]


def test_a_long_silence_is_not_talked_down_by_a_p_alive_near_one():
    # The demo company's fit: hardly anyone ever leaves, so P(alive) is near 1 for all.
    hardly_anyone_leaves = BgNbdParams(r=0.25, alpha=30.0, a=0.8, b=131.0)
    rows = [_row("SLOW", orders=_regular(553, cycle=183, count=3), act_30d=0, baseline=0.0),
            _row("ONCE", orders=[553], act_30d=0, baseline=0.0)]
    result = score_churn(_features(rows), AS_OF, ChurnParams(), bgnbd=hardly_anyone_leaves, typical_cycle=52.1)
    slow, once = result.loc["SLOW"], result.loc["ONCE"]
    assert slow["churn_p_alive"] > 0.9
    # Three own cycles silent: high, like the one-time buyer as silent; not "low" at 39.
    assert slow["churn_label"] == once["churn_label"] == "high"
    assert slow["churn_score"] == once["churn_score"]
    assert _factors(slow["churn_reasons"]) == ["overdue", "activity_baseline_thin"]
    assert slow["churn_reasons"][0]["points"] == slow["churn_score"]
