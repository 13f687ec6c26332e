"""RFM: lifetimes' measures, deterministic 1–5 scores, the segment table, incremental scoring.

The measures are checked three ways: against a hand-computed table, against a
re-statement of lifetimes' own algorithm on a few hundred generated customers (runs
everywhere), and against the real `lifetimes` library when it is importable (it is not
a project dependency; lifetimes 0.11.3 runs with pandas 3.1.1 / numpy 2.4.6, see
`test_restatement_matches_real_lifetimes`).
"""

from __future__ import annotations

from datetime import date, timedelta

import numpy as np
import pandas as pd
import pytest
from pydantic import ValidationError

from scoring.rfm import (
    DEFAULT_SEGMENTS,
    FACTORS,
    NO_PURCHASE,
    RfmParams,
    RfmReference,
    SegmentRule,
    rfm_measures,
    score_rfm,
)

AS_OF = date(2026, 3, 31)
MEASURES = ["frequency", "recency", "T", "monetary_value"]
SEGMENT_NAMES = {rule.name for rule in DEFAULT_SEGMENTS}


# --------------------------------------------------------------------------- helpers

def _tx(rows: list[tuple[str, str, float]]) -> pd.DataFrame:
    frame = pd.DataFrame(rows, columns=["customer_id", "ts", "amount"])
    frame["ts"] = pd.to_datetime(frame["ts"], format="ISO8601")
    return frame


def _features_from_transactions(tx: pd.DataFrame, as_of: date, customers: list[str]) -> pd.DataFrame:
    """The per-customer aggregates the pipeline hands over, computed from raw orders the
    way the database does it: orders up to and including the as-of day, calendar days."""
    tx = tx.assign(day=tx["ts"].dt.normalize())
    tx = tx[tx["day"] <= pd.Timestamp(as_of)]
    grouped = tx.groupby("customer_id")
    frame = pd.DataFrame({"first_order_date": grouped["day"].min(), "last_order_date": grouped["day"].max(),
                          "purchase_days": grouped["day"].nunique(), "lifetime_revenue": grouped["amount"].sum()})
    first_day = tx[tx["day"] == tx["customer_id"].map(frame["first_order_date"])]
    frame["first_day_revenue"] = first_day.groupby("customer_id")["amount"].sum()
    frame = frame.reindex(pd.Index(customers, name="customer_id"))
    frame["purchase_days"] = frame["purchase_days"].fillna(0).astype(int)
    frame[["lifetime_revenue", "first_day_revenue"]] = frame[["lifetime_revenue", "first_day_revenue"]].fillna(0.0)
    return frame


def _lifetimes_restated(tx: pd.DataFrame, as_of: date) -> pd.DataFrame:
    """lifetimes 0.11.3 `summary_data_from_transaction_data(tx, "customer_id", "ts",
    monetary_value_col="amount", observation_period_end=as_of, freq="D")`, re-stated
    step by step from lifetimes/utils.py (CamDavidsonPilon/lifetimes):
      _find_first_transactions: sort by (customer, datetime, amount); floor datetimes to
        the period (`.to_period(freq).to_timestamp()`); drop rows after
        observation_period_end; group by (period, customer) and *sum* the amounts; the
        first row per customer (groupby(customer, sort=True).head(1)) is the first purchase;
      summary_data_from_transaction_data: per customer min/max/count of the periods;
        frequency = count − 1; T = (end − min) / timedelta64(1, freq);
        recency = (max − min) / timedelta64(1, freq); the first purchase's amount set to
        NaN, monetary_value = mean of the rest, fillna(0); everything astype(float)."""
    end = pd.Timestamp(as_of).to_period("D").to_timestamp()
    t = tx[["customer_id", "ts", "amount"]].sort_values(["customer_id", "ts", "amount"]).copy()
    t["ts"] = t["ts"].dt.to_period("D").dt.to_timestamp()
    t = t.loc[t["ts"] <= end].reset_index(drop=True)
    periods = t.groupby(["ts", "customer_id"], sort=False, as_index=False).sum()
    periods["first"] = False
    periods.loc[periods.groupby("customer_id", sort=True).head(1).index, "first"] = True
    customers = periods.groupby("customer_id", sort=False)["ts"].agg(["min", "max", "count"])
    customers["frequency"] = customers["count"] - 1
    customers["T"] = (end - customers["min"]) / np.timedelta64(1, "D")
    customers["recency"] = (customers["max"] - customers["min"]) / np.timedelta64(1, "D")
    periods.loc[periods["first"], "amount"] = np.nan
    customers["monetary_value"] = periods.groupby("customer_id")["amount"].mean().fillna(0)
    return customers[MEASURES].astype(float)


def _random_transactions(n_customers: int, seed: int) -> tuple[pd.DataFrame, list[str]]:
    """Orders of `n_customers`: ~35 % one-time buyers, several orders on one day, times
    of day, orders after AS_OF, customers without orders, and identical twins (ties)."""
    rng = np.random.default_rng(seed)
    rows: list[tuple[str, pd.Timestamp, float]] = []
    customers = [f"C{i:04d}" for i in range(n_customers)]
    for cid in customers[: n_customers - 10]:  # the last 10 never order
        kind = rng.random()
        start = pd.Timestamp(AS_OF) - pd.Timedelta(days=int(rng.integers(0, 900)))
        if kind < 0.35:
            days = [start]
        else:
            count = int(rng.integers(2, 12))
            offsets = np.sort(rng.integers(0, 400, count)) * int(rng.integers(0, 2) + 1)
            days = [start + pd.Timedelta(days=int(o)) for o in offsets]  # repeats, some after AS_OF
        for day in days:
            for _ in range(int(rng.choice([1, 1, 1, 2, 3]))):  # several orders on one day
                amount = float(rng.choice([rng.integers(1, 500) * 100, rng.integers(1, 10**6) / 100]))
                rows.append((cid, day + pd.Timedelta(minutes=int(rng.integers(0, 1440))), amount))
    tx = pd.DataFrame(rows, columns=["customer_id", "ts", "amount"])
    # identical twins: a copy of three customers' orders under new ids → ties
    twins = []
    for source in customers[:3]:
        copy = tx[tx["customer_id"] == source].assign(customer_id=source + "_twin")
        twins.append(copy)
        customers.append(source + "_twin")
    # a customer whose only order is after AS_OF
    late = pd.DataFrame([("LATE", pd.Timestamp(AS_OF) + pd.Timedelta(days=3), 500.0)], columns=tx.columns)
    customers.append("LATE")
    return pd.concat([tx, *twins, late], ignore_index=True), customers


def _features(n: int, seed: int, one_time_share: float = 0.38, no_orders_share: float = 0.05) -> pd.DataFrame:
    """A features frame directly (fast), consistent aggregates, ties on purpose."""
    rng = np.random.default_rng(seed)
    end = pd.Timestamp(AS_OF)
    first = end - pd.to_timedelta(rng.integers(0, 1200, n), unit="D")
    span = (end - first).days.to_numpy()
    days = np.where(rng.random(n) < one_time_share, 1, 1 + rng.geometric(0.35, n))
    days = np.minimum(days, span + 1)
    gap = np.maximum(days - 1, (rng.random(n) * span).astype(int))
    last = first + pd.to_timedelta(np.where(days == 1, 0, np.minimum(gap, span)), unit="D")
    first_revenue = rng.integers(1, 200, n) * 500.0
    revenue = first_revenue + (days - 1) * rng.integers(1, 40, n) * 250.0
    frame = pd.DataFrame({"first_order_date": first, "last_order_date": last, "purchase_days": days,
                          "lifetime_revenue": revenue, "first_day_revenue": first_revenue},
                         index=pd.Index([f"K{i:05d}" for i in range(n)], name="customer_id"))
    none = rng.random(n) < no_orders_share
    frame.loc[none, ["first_order_date", "last_order_date"]] = pd.NaT
    frame.loc[none, ["purchase_days"]] = 0
    frame.loc[none, ["lifetime_revenue", "first_day_revenue"]] = 0.0
    return frame


def _reference(values: dict[str, list[float]]) -> RfmReference:
    """A reference from raw factor values (one entry per buyer)."""
    distinct = {name: np.unique(np.asarray(v, dtype=float), return_counts=True) for name, v in values.items()}
    return RfmReference({name: d[0] for name, d in distinct.items()}, {name: d[1] for name, d in distinct.items()})


# --------------------------------------------------------------------------- measures

HAND_TX = [
    # A: three purchase days (two orders on 01-05 and on 03-01)
    ("A", "2026-01-05T10:00", 100.0), ("A", "2026-01-05T15:00", 50.0), ("A", "2026-02-10T09:00", 200.0),
    ("A", "2026-03-01T08:00", 100.0), ("A", "2026-03-01T17:30", 40.0),
    ("B", "2025-12-31T12:00", 500.0),                                     # one-time buyer
    ("C", "2026-03-31T23:59", 30.0), ("C", "2026-03-31T08:00", 70.0),     # one day, on the as-of day
    ("D", "2026-02-01T10:00", 10.0), ("D", "2026-04-01T00:00", 99.0),     # second order after as_of
    ("E", "2026-04-02T10:00", 80.0),                                       # only after as_of
    ("G", "2025-03-31T00:00", 1000.0), ("G", "2025-09-30T00:00", 300.0), ("G", "2026-03-31T00:00", 600.0),
]
HAND_EXPECTED = {  # frequency, recency, T, monetary_value, worked out by hand
    "A": (2, 55, 85, (200 + 140) / 2),   # 01-05 → 03-01 = 55 days, → 03-31 = 85
    "B": (0, 0, 90, 0),                  # 2025-12-31 → 2026-03-31 = 31 + 28 + 31
    "C": (0, 0, 0, 0),
    "D": (0, 0, 58, 0),                  # 02-01 → 03-31 = 27 + 31
    "E": (np.nan,) * 4,
    "F": (np.nan,) * 4,                  # never ordered
    "G": (2, 365, 365, (300 + 600) / 2),
}


def test_measures_match_a_hand_computed_table():
    features = _features_from_transactions(_tx(HAND_TX), AS_OF, list(HAND_EXPECTED))
    measures = rfm_measures(features, AS_OF)
    expected = pd.DataFrame.from_dict(HAND_EXPECTED, orient="index", columns=MEASURES, dtype=float)
    pd.testing.assert_frame_equal(measures, expected, check_names=False)
    assert list(measures.dtypes) == [np.float64] * 4


def test_measures_match_lifetimes_restated_on_random_customers():
    tx, customers = _random_transactions(300, seed=7)
    features = _features_from_transactions(tx, AS_OF, customers)
    ours = rfm_measures(features, AS_OF)
    theirs = _lifetimes_restated(tx, AS_OF)
    buyers = ours["frequency"].notna()
    assert set(ours.index[buyers]) == set(theirs.index)
    assert ours.loc[~buyers].isna().all().all() and "LATE" in ours.index[~buyers]
    theirs = theirs.reindex(ours.index[buyers])
    for name in ("frequency", "recency", "T"):
        np.testing.assert_array_equal(ours.loc[buyers, name].to_numpy(), theirs[name].to_numpy(), err_msg=name)
    np.testing.assert_allclose(ours.loc[buyers, "monetary_value"], theirs["monetary_value"], rtol=1e-9, atol=1e-6)
    # the data exercises what it should
    assert (theirs["frequency"] == 0).mean() > 0.3
    assert tx.assign(day=tx["ts"].dt.normalize()).duplicated(["customer_id", "day"]).any()


LIFETIMES_SUMMARY = """
import sys
import pandas as pd
from lifetimes.utils import summary_data_from_transaction_data
tx = pd.read_csv(sys.argv[1], parse_dates=["ts"], dtype={"customer_id": str})
summary = summary_data_from_transaction_data(tx, "customer_id", "ts", monetary_value_col="amount",
                                             observation_period_end=sys.argv[2], freq="D")
summary.to_csv(sys.argv[3])
"""


def test_measures_agree_with_the_real_lifetimes_library(tmp_path):
    """lifetimes 0.11.3 itself, in its own pinned venv (.venv-lifetimes, built on first use
    by bench.venvs: its old pandas must not share the service's environment)."""
    import subprocess

    from bench.venvs import venv_python

    python = venv_python("lifetimes")
    for n, (tx, customers) in enumerate((_random_transactions(300, seed=3), (_tx(HAND_TX), list(HAND_EXPECTED)))):
        source, out = tmp_path / f"tx{n}.csv", tmp_path / f"summary{n}.csv"
        tx.to_csv(source, index=False)
        subprocess.run([str(python), "-c", LIFETIMES_SUMMARY, str(source), AS_OF.isoformat(), str(out)],
                       check=True, capture_output=True, timeout=120)
        real = pd.read_csv(out, index_col=0, dtype={0: str}).sort_index()
        real.index = real.index.astype(str)
        ours = rfm_measures(_features_from_transactions(tx, AS_OF, customers), AS_OF).dropna().sort_index()
        assert list(ours.index) == list(real.index)
        np.testing.assert_allclose(ours.to_numpy(), real[MEASURES].to_numpy(), rtol=1e-9, atol=1e-6)
        assert (real["frequency"] == 0).any() and (n == 1 or (real["frequency"] > 2).any())


def test_one_time_buyers_have_frequency_and_monetary_zero_and_lowest_f_m():
    features = _features(600, seed=11)
    result = score_rfm(features, AS_OF, RfmParams())
    once = features["purchase_days"] == 1
    assert once.sum() > 150
    assert (result.loc[once, "rfm_frequency"] == 0).all()
    assert (result.loc[once, "rfm_monetary_value"] == 0).all()
    assert (result.loc[once, "rfm_recency"] == 0).all()
    assert (result.loc[once, "rfm_f"] == 1).all() and (result.loc[once, "rfm_m"] == 1).all()
    repeat = features["purchase_days"] > 1
    assert (result.loc[repeat, "rfm_f"] >= 2).all()


def test_time_of_day_and_time_zone_do_not_change_the_day():
    features = _features_from_transactions(_tx(HAND_TX), AS_OF, list(HAND_EXPECTED))
    expected = rfm_measures(features, AS_OF)
    shifted = features.copy()
    for column in ("first_order_date", "last_order_date"):
        shifted[column] = (shifted[column] + pd.Timedelta(hours=23)).dt.tz_localize("Asia/Shanghai")
    pd.testing.assert_frame_equal(rfm_measures(shifted, AS_OF), expected)


def test_bad_features_are_refused_with_the_customer():
    features = _features_from_transactions(_tx(HAND_TX), AS_OF, list(HAND_EXPECTED))
    with pytest.raises(KeyError, match="first_day_revenue"):
        rfm_measures(features.drop(columns="first_day_revenue"), AS_OF)
    with pytest.raises(ValueError, match=r"after as_of .* A"):
        rfm_measures(features, AS_OF - timedelta(days=40))
    broken = features.copy()
    broken.loc["B", "purchase_days"] = 0
    with pytest.raises(ValueError, match="purchase_days < 1 for customer.s. B"):
        rfm_measures(broken, AS_OF)
    broken = features.copy()
    broken.loc["F", "purchase_days"] = 2
    with pytest.raises(ValueError, match="without a first_order_date for customer.s. F"):
        rfm_measures(broken, AS_OF)


# --------------------------------------------------------------------------- scores

def test_scores_are_deterministic_monotone_and_use_every_score():
    features = _features(1000, seed=5)
    result = score_rfm(features, AS_OF, RfmParams())
    buyers = result["rfm_frequency"].notna()
    scored = result[buyers]
    for column in ("rfm_r", "rfm_f", "rfm_m"):
        assert sorted(scored[column].unique()) == [1, 2, 3, 4, 5], column
    for value, score, better in (("rfm_days_since_last", "rfm_r", -1), ("rfm_frequency", "rfm_f", 1),
                                 ("rfm_monetary_value", "rfm_m", 1)):
        ordered = scored.sort_values(value)[[value, score]]
        diffs = np.diff(ordered[score].to_numpy()) * better
        assert (diffs >= 0).all(), f"{score} not monotone in {value}"
        # ties: one score per value
        assert (ordered.groupby(value)[score].nunique() == 1).all()
    assert ((result.loc[~buyers, ["rfm_r", "rfm_f", "rfm_m"]] == 0).all().all())
    assert (result.loc[~buyers, "rfm_score"] == 0).all()
    assert scored["rfm_score"].between(0, 100).all()


def test_shuffled_rows_give_identical_output():
    features = _features(500, seed=21)
    expected = score_rfm(features, AS_OF, RfmParams())
    shuffled = features.sample(frac=1.0, random_state=4)
    result = score_rfm(shuffled, AS_OF, RfmParams())
    assert list(result.index) == list(shuffled.index)
    pd.testing.assert_frame_equal(result.loc[expected.index], expected)
    assert result.attrs["rfm_reference"].to_json() == expected.attrs["rfm_reference"].to_json()


def test_equal_inputs_get_equal_scores_labels_and_reasons():
    features = _features(300, seed=8)
    twins = features.iloc[:40].copy()
    twins.index = twins.index + "_twin"
    both = pd.concat([features, twins])
    result = score_rfm(both, AS_OF, RfmParams())
    originals = result.loc[features.index[:40]].reset_index(drop=True)
    copies = result.loc[twins.index].reset_index(drop=True)
    pd.testing.assert_frame_equal(originals, copies)
    # float noise in an amount never splits a tie (money is ranked by the cent)
    noisy = both.copy()
    noisy.loc[twins.index, "lifetime_revenue"] += 1e-9
    noisy_result = score_rfm(noisy, AS_OF, RfmParams())
    pd.testing.assert_frame_equal(noisy_result.loc[twins.index, ["rfm_m", "rfm_label", "rfm_score"]],
                                  result.loc[twins.index, ["rfm_m", "rfm_label", "rfm_score"]])


def test_a_large_tied_group_takes_one_bin_and_the_rest_are_split_evenly():
    # F: 40 % one-time buyers (0), then 1, 2, 3, 4, 5 repeat purchases — the module docstring's example
    repeat = [0] * 40 + [1] * 25 + [2] * 15 + [3] * 10 + [4] * 5 + [5] * 5
    money = [0.0] * 40 + [float(v) for v in range(100, 160)]
    reference = _reference({"recency_days": list(range(100)), "repeat_purchases": repeat, "avg_repeat_value": money})
    f_scale, m_scale = reference.scales["repeat_purchases"], reference.scales["avg_repeat_value"]
    assert f_scale.score(np.arange(7.0)).tolist() == [1, 2, 3, 4, 5, 5, 5]
    m_scores = m_scale.score(np.asarray(money))
    assert (m_scores[:40] == 1).all()
    assert np.bincount(m_scores)[1:].tolist() == [40, 15, 15, 15, 15]
    r_scores = reference.scales["recency_days"].score(np.arange(100.0))
    assert np.bincount(r_scores)[1:].tolist() == [20, 20, 20, 20, 20]
    assert r_scores[0] == 5 and r_scores[-1] == 1  # fewer days since the last purchase is better
    assert reference.bins()["repeat_purchases"] == {1: (0, 0), 2: (1, 1), 3: (2, 2), 4: (3, 3), 5: (4, 5)}
    # percentiles: share of buyers strictly worse
    assert f_scale.percentile(np.array([0.0, 1.0, 5.0, 9.0])).tolist() == [0.0, 40.0, 95.0, 100.0]
    assert reference.scales["recency_days"].percentile(np.array([0.0, 99.0])).tolist() == [99.0, 0.0]


@pytest.mark.parametrize(("distinct", "expected"), [
    ([7], [3]), ([0, 1], [1, 5]), ([0, 1, 2], [1, 3, 5]), ([0, 1, 2, 3], [1, 2, 4, 5]),
    ([0, 1, 2, 3, 4], [1, 2, 3, 4, 5]),
])
def test_fewer_than_five_distinct_values_spread_over_one_to_five(distinct, expected):
    values = [v for v in distinct for _ in range(3)]
    reference = _reference({name: values for name in FACTORS})
    assert reference.scales["repeat_purchases"].score(np.asarray(distinct, dtype=float)).tolist() == expected
    assert reference.scales["recency_days"].score(np.asarray(distinct, dtype=float)).tolist() == expected[::-1]


def test_every_customer_gets_exactly_the_first_matching_segment():
    params = RfmParams()
    features = _features(800, seed=13)
    result = score_rfm(features, AS_OF, params)
    assert result["rfm_label"].notna().all()
    buyers = result["rfm_frequency"].notna()
    assert set(result.loc[buyers, "rfm_label"]) <= SEGMENT_NAMES
    assert (result.loc[~buyers, "rfm_label"] == NO_PURCHASE).all()
    for r, f, m, label in result.loc[buyers, ["rfm_r", "rfm_f", "rfm_m", "rfm_label"]].itertuples(index=False):
        matching = [rule.name for rule in params.segments if rule.r_min <= r <= rule.r_max
                    and rule.f_min <= f <= rule.f_max and rule.m_min <= m <= rule.m_max]
        assert matching and matching[0] == label
    assert result.loc[buyers, "rfm_label"].nunique() >= 9


def test_reasons_explain_the_segment():
    result = score_rfm(_features(800, seed=13), AS_OF, RfmParams())
    for row in result.itertuples():
        reasons = row.rfm_reasons
        if row.rfm_label == NO_PURCHASE:
            assert reasons == [{"factor": NO_PURCHASE, "value": None, "score": 0, "percentile": None}]
            continue
        assert 2 <= len(reasons) <= 3
        by_factor = {entry["factor"]: entry for entry in reasons}
        if row.rfm_label in ("champions", "cant_lose_them"):
            assert list(by_factor) == list(FACTORS)
        if "recency_days" in by_factor:
            assert by_factor["recency_days"]["value"] == row.rfm_days_since_last
            assert by_factor["recency_days"]["score"] == row.rfm_r
        if "repeat_purchases" in by_factor:
            assert by_factor["repeat_purchases"]["value"] == row.rfm_frequency
            assert by_factor["repeat_purchases"]["score"] == row.rfm_f
        for entry in reasons:
            assert 0 <= entry["percentile"] <= 100 and isinstance(entry["value"], (int, float))
    champion = result[result["rfm_label"] == "champions"].iloc[0]["rfm_reasons"]
    assert [type(entry["value"]) for entry in champion] == [int, int, float]


def test_incremental_scoring_against_the_reference_equals_full_scoring():
    features = _features(1000, seed=17)
    full = score_rfm(features, AS_OF, RfmParams())
    assert full.attrs["rfm_reference_source"] == "population"
    stored = full.attrs["rfm_reference"].to_json()
    reference = RfmReference.from_json(stored)
    assert reference.to_json() == stored and reference.buyers == full["rfm_frequency"].notna().sum()
    buyers = full[full["rfm_frequency"].notna()]
    picks = [buyers["rfm_score"].idxmax(), buyers["rfm_score"].idxmin(),
             buyers.index[buyers["rfm_frequency"] == 0][0], full.index[full["rfm_frequency"].isna()][0],
             buyers.index[buyers["rfm_label"] == "loyal"][0]]
    few = features.loc[picks]
    incremental = score_rfm(few, AS_OF, RfmParams(), reference=reference)
    assert incremental.attrs["rfm_reference_source"] == "given"
    pd.testing.assert_frame_equal(incremental, full.loc[picks])
    # alone, without the reference, the same five customers would score differently
    alone = score_rfm(few, AS_OF, RfmParams())
    assert not alone[["rfm_r", "rfm_f", "rfm_m"]].equals(full.loc[picks, ["rfm_r", "rfm_f", "rfm_m"]])


def test_reference_json_is_validated():
    reference = score_rfm(_features(50, seed=1), AS_OF, RfmParams()).attrs["rfm_reference"]
    text = reference.to_json()
    with pytest.raises(ValueError, match="not an RFM reference"):
        RfmReference.from_json(text.replace('"version":1', '"version":9'))
    with pytest.raises(ValueError, match="different numbers of buyers"):
        more = reference.counts["repeat_purchases"] + 1
        RfmReference({**reference.values}, {**reference.counts, "repeat_purchases": more})
    with pytest.raises(ValueError, match="strictly increasing"):
        RfmReference({**reference.values, "recency_days": reference.values["recency_days"][::-1]},
                     {**reference.counts})


def test_empty_population_and_disabled_model():
    features = _features(20, seed=2, no_orders_share=1.0)
    result = score_rfm(features, AS_OF, RfmParams())
    assert (result["rfm_label"] == NO_PURCHASE).all() and result.attrs["rfm_reference"].buyers == 0
    disabled = score_rfm(_features(20, seed=2), AS_OF, RfmParams(enabled=False))
    assert disabled["rfm_label"].isna().all() and disabled["rfm_score"].isna().all()
    assert (disabled["rfm_r"] == 0).all() and disabled["rfm_reasons"].map(len).eq(0).all()
    assert disabled.attrs["rfm_reference_source"] == "disabled"


# --------------------------------------------------------------------------- segment table

def test_default_table_is_valid_and_a_catch_all_table_is_accepted():
    params = RfmParams()
    assert [rule.name for rule in params.segments][:3] == ["champions", "loyal", "potential_loyalist"]
    assert {"champions", "loyal", "at_risk", "cant_lose_them", "hibernating", "lost", "new"} <= SEGMENT_NAMES
    custom = RfmParams.model_validate({"segments": [
        {"name": "champions", "r_min": 4, "f_min": 4, "m_min": 4},
        {"name": "everyone_else", "description": "catch-all"},
    ]})
    features = _features(200, seed=3)
    labels = set(score_rfm(features, AS_OF, custom)["rfm_label"])
    assert labels <= {"champions", "everyone_else", NO_PURCHASE} and "everyone_else" in labels


@pytest.mark.parametrize(("segments", "message"), [
    ([{"name": "champions", "r_min": 4}, {"name": "champions"}], "unique: 'champions' is rule 1 and rule 2"),
    ([{"name": "x", "r_min": 0}], "greater than or equal to 1"),
    ([{"name": "x", "f_max": 6}], "less than or equal to 5"),
    ([{"name": "x", "m_min": 4, "m_max": 2}], "m_min 4 > m_max 2"),
    ([{"name": "Champions!"}], "should match pattern"),
    ([{"name": NO_PURCHASE}], "reserved"),
    ([{"name": "x", "r_min": 1, "weight": 2}], "Extra inputs are not permitted"),
    ([], "at least 1 item"),
    ([{"name": "recent", "r_min": 3}, {"name": "old_rare", "r_max": 2, "f_max": 2}],
     r"leave 30 of 125 .* r=1 f=3 m=1–5; r=1 f=4 m=1–5; .* catch-all rule"),
    ([{"name": "top", "r_min": 5, "f_min": 5, "m_min": 5, "m_max": 5}, {"name": "rest", "r_max": 4}],
     r"r=5 f=1 m=1–5; r=5 f=2 m=1–5; r=5 f=3 m=1–5; r=5 f=4 m=1–5; r=5 f=5 m=1–4"),
    ([{"name": "loyal", "r_min": 3, "f_min": 4}, {"name": "champions", "r_min": 4, "f_min": 4},
      {"name": "rest"}], "'champions' .rule 2. can never match"),
    ([{"name": "everything"}, {"name": "spare"}], "'spare' .rule 2. can never match"),
])
def test_segment_table_errors_name_the_problem(segments, message):
    with pytest.raises(ValidationError, match=message):
        RfmParams.model_validate({"segments": segments})


def test_params_are_strict_and_frozen():
    with pytest.raises(ValidationError, match="Extra inputs"):
        RfmParams.model_validate({"enabled": True, "bins": 5})
    params = RfmParams()
    with pytest.raises(ValidationError):
        params.enabled = False  # type: ignore[misc]
    assert isinstance(params.segments[0], SegmentRule)
