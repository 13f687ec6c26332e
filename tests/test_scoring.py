"""The value matrix as pure functions: the maths, the quadrants, the reasons."""

from __future__ import annotations

from datetime import date

import numpy as np
import pandas as pd
import pytest

from handlers.text import duration, model_reasons_text, reason_text, reasons_text, score_points
from scoring import score_customers
from scoring.features import build_features, window_starts
from scoring.params import Boundaries, ValueMatrixParams
from scoring.pipeline import ScoringParams
from scoring.value_matrix import percentile_below

AS_OF = date(2026, 11, 20)


def _customers(rows: list[dict]) -> pd.DataFrame:
    defaults = {"name": "x", "owner_userid": "rep", "industry": "物流", "employees": 200, "customer_type": "end_user",
                "is_listed": False, "is_benchmark": False, "is_partner": False, "digital_maturity": 3,
                "expansion_plan": None, "modules_owned": "finance|crm", "created_at": None}
    return pd.DataFrame([{**defaults, **row} for row in rows])


def _aggregates(rows: list[dict]) -> pd.DataFrame:
    defaults = {"revenue_12m": 0.0, "cost_12m": 0.0, "repeat_revenue_12m": 0.0, "orders_12m": 0,
                "revenue_12_24m": 0.0, "revenue_24_36m": 0.0, "lifetime_revenue": 0.0, "lifetime_orders": 0,
                "first_order_date": None, "last_order_date": None}
    return pd.DataFrame([{**defaults, **row} for row in rows])


def _population() -> tuple[pd.DataFrame, pd.DataFrame]:
    """Four extremes among forty ordinary customers."""
    customers = [
        {"customer_id": "STAR", "industry": "半导体", "employees": 30000, "is_listed": True, "is_benchmark": True,
         "digital_maturity": 5, "expansion_plan": "ipo", "modules_owned": "finance"},
        {"customer_id": "COW", "industry": "纺织服装", "employees": 3000, "digital_maturity": 1,
         "modules_owned": "finance|crm|mes|plm|scm|hr|bi|wms"},
        {"customer_id": "QM", "industry": "新能源", "employees": 900, "is_partner": True, "digital_maturity": 5,
         "expansion_plan": "financing", "modules_owned": ""},
        {"customer_id": "DOG", "industry": "建材", "employees": 8, "digital_maturity": 1,
         "modules_owned": "finance|crm|mes|plm|scm|hr|bi|wms"},
    ]
    aggregates = [
        {"customer_id": "STAR", "revenue_12m": 9e6, "cost_12m": 2e6, "repeat_revenue_12m": 8e6,
         "revenue_12_24m": 3e6, "revenue_24_36m": 1e6},
        {"customer_id": "COW", "revenue_12m": 6e6, "cost_12m": 2e6, "repeat_revenue_12m": 6e6,
         "revenue_12_24m": 6.5e6, "revenue_24_36m": 6.5e6},
        {"customer_id": "QM", "revenue_12m": 2e4, "cost_12m": 1.5e4},
        {"customer_id": "DOG", "revenue_12m": 0.0, "revenue_12_24m": 900.0},
    ]
    for n in range(40):
        customers.append({"customer_id": f"N{n:02d}"})
        revenue = 50_000 + 5_000 * n
        aggregates.append({"customer_id": f"N{n:02d}", "revenue_12m": revenue, "cost_12m": revenue * 0.6,
                           "repeat_revenue_12m": revenue * 0.5, "revenue_12_24m": revenue,
                           "revenue_24_36m": revenue})
    return _customers(customers), _aggregates(aggregates)


def _score(params: ScoringParams | None = None) -> pd.DataFrame:
    customers, aggregates = _population()
    return score_customers(build_features(customers, aggregates, AS_OF), params or ScoringParams())


def test_extremes_land_in_the_obvious_quadrant():
    scored = _score()
    assert scored.loc[["STAR", "COW", "QM", "DOG"], "tier"].tolist() == ["star", "cash_cow", "question_mark", "dog"]


def test_every_customer_gets_exactly_one_tier_and_reasons_on_both_axes():
    scored = _score()
    assert scored["tier"].isin(["star", "cash_cow", "question_mark", "dog"]).all()
    for reasons in scored["reasons"]:
        assert [r["axis"] for r in reasons] == ["current", "current", "potential", "potential"]


def test_reasons_say_why_in_words_with_the_values_behind_them():
    scored = _score()
    star = reasons_text(scored.loc["STAR", "reasons"], "zh", 8)
    assert star.startswith("三年加权营收 ¥640.0万（近12个月 ¥900.0万），高于97%的客户；近12个月毛利 ¥700.0万，高于97%的客户")
    assert star.endswith("营收同比 +200%；行业「半导体」前景评分 90/100")
    dog = reasons_text(scored.loc["DOG", "reasons"], "zh", 8)
    assert "三年加权营收 ¥270（近12个月 ¥0），高于0%的客户" in dog
    english = reasons_text(scored.loc["QM", "reasons"], "en", 8)
    assert "outlook 90/100" in english or "cross-sell" in english or "digital maturity 5/5" in english


def test_low_axis_reasons_name_what_holds_the_customer_back():
    scored = _score()
    cow_potential = [r for r in scored.loc["COW", "reasons"] if r["axis"] == "potential"]
    assert {r["direction"] for r in cow_potential} == {"low"}
    assert all(r["score"] <= 25 for r in cow_potential)


def test_an_axis_is_never_explained_by_a_component_on_the_other_side_of_its_boundary():
    from scoring.value_matrix import _top_components

    # Just under 70 on the whole, though revenue (the heaviest) scores 71: "low" is explained
    # by what lies below 70, not by revenue.
    scores = pd.DataFrame({"revenue": [71.0, 90.0], "margin": [60.0, 95.0], "upsell": [66.0, 40.0]})
    weights = {"revenue": 0.5, "margin": 0.3, "upsell": 0.2}
    top = _top_components(scores, weights, np.array([False, True]), boundary=70.0)
    assert top[0].tolist() == [1, 2]   # margin (10 under × 0.3), then upsell (4 under × 0.2)
    assert top[1].tolist() == [0, 1]   # high: revenue (20 over × 0.5), margin (25 over × 0.3)
    # With only one component on its side, the axis gets one reason, not a contradicting second.
    one = _top_components(pd.DataFrame({"revenue": [69.0], "margin": [90.0]}), {"revenue": 0.9, "margin": 0.1},
                          np.array([False]), boundary=70.0)
    assert one.tolist() == [[0, -1]]
    for customer, reasons in _score()["reasons"].items():
        for reason in reasons:
            side = reason["score"] >= 70 if reason["axis"] == "current" else reason["score"] >= 50
            assert side == (reason["direction"] == "high"), (customer, reason)


def test_revenue_back_after_a_year_without_is_growing_not_mature():
    from scoring.segments import LifecycleParams, score_lifecycle

    # Three years a customer: bought 30 months ago, nothing the year after, now buying again.
    features = pd.DataFrame({
        "first_order_date": pd.to_datetime(["2023-12-01", "2023-12-01"]),
        "last_order_date": pd.to_datetime(["2026-10-01", "2026-10-01"]),
        "growth": [np.nan, 0.05], "revenue_12m": [32_388.0, 50_000.0]}, index=["BACK", "STEADY"])
    result = score_lifecycle(features, AS_OF, LifecycleParams())
    assert result["lifecycle_label"].tolist() == ["growing", "mature"]
    assert model_reasons_text("lifecycle", result.loc["BACK", "lifecycle_reasons"], "zh") == "近12个月有营收，上一年度没有"


def test_a_churn_risk_stage_says_how_long_the_customer_has_been_silent():
    from scoring.segments import LifecycleParams, score_lifecycle

    features = pd.DataFrame({
        "first_order_date": pd.to_datetime(["2024-06-01"]), "last_order_date": pd.to_datetime(["2026-05-14"]),
        "growth": [0.1], "revenue_12m": [80_000.0]}, index=["QUIET"])
    result = score_lifecycle(features, AS_OF, LifecycleParams(), churn_label=pd.Series(["high"], index=["QUIET"]))
    assert result.loc["QUIET", "lifecycle_label"] == "churn_risk"
    assert model_reasons_text("lifecycle", result.loc["QUIET", "lifecycle_reasons"], "zh") == \
        "流失风险高；已 190 天没有下单"


def test_growth_reads_rounded_once_as_people_round():
    from scoring.segments import LifecycleParams, score_lifecycle

    # Revenue up 150.504%: stored to four places (1.505) and formatted, it read +150%.
    features = pd.DataFrame({
        "first_order_date": pd.to_datetime(["2023-12-01", "2023-12-01"]),
        "last_order_date": pd.to_datetime(["2026-10-01", "2026-10-01"]),
        "growth": [1.50504, 1.50496], "revenue_12m": [250_504.0, 250_496.0]}, index=["UP", "JUST_UNDER"])
    result = score_lifecycle(features, AS_OF, LifecycleParams())
    assert model_reasons_text("lifecycle", result.loc["UP", "lifecycle_reasons"], "zh") == "营收同比 +151%"
    assert model_reasons_text("lifecycle", result.loc["JUST_UNDER", "lifecycle_reasons"], "en") == \
        "revenue +150% year on year"


def test_scores_are_shown_rounded_down_so_none_reads_as_the_boundary_it_missed():
    # Value 69.97 under a boundary at 70 is a Dog or Question Mark: "70" would read as a mistake.
    assert [score_points(v) for v in (69.97, 70.0, 70.4, 0.2, 100.0)] == ["69", "70", "70", "0", "100"]
    assert score_points(None) == "—"


def test_shares_read_rounded_down_and_never_above_everyone():
    # 99.72% of buyers below: "above 99%", not "above 100%" (nobody is above all, itself included).
    rfm = model_reasons_text("rfm", [{"factor": "avg_repeat_value", "value": 182000.0, "score": 5,
                                      "percentile": 99.7}], "zh")
    assert "高于99%的购买客户" in rfm
    assert "好于19%" in model_reasons_text("rfm", [{"factor": "recency_days", "value": 12, "score": 5,
                                                   "percentile": 19.5}], "zh")
    top = reason_text({"factor": "revenue", "value": 3.2e6, "percentile": 100.0, "axis": "current",
                       "direction": "high"}, "zh")
    assert "高于99%的客户" in top


def test_behaviour_reasons_name_activities_in_words():
    fired = [{"factor": "intent_rule", "value": "smart_manufacturing", "intent": "high", "within_days": 7,
              "detail": {"page_view /products/mes": 6, "download": 1}}]
    assert "页面浏览 /products/mes×6、下载×1" in model_reasons_text("intent", fired, "zh")
    assert "page view /products/mes×6, download×1" in model_reasons_text("intent", fired, "en")
    # A rule's title, where config gives one, rather than its name.
    titled = [{**fired[0], "title": {"zh": "关注智能制造", "en": "looking into smart manufacturing"}}]
    assert model_reasons_text("intent", titled, "zh").startswith("行为规则「关注智能制造」")
    assert model_reasons_text("intent", titled, "en").startswith('behaviour rule "looking into smart manufacturing"')


def test_durations_read_in_the_units_people_use():
    assert duration(15, "zh") == "15 分钟" and duration(130, "zh") == "2 小时 10 分钟"
    assert duration(16205, "zh") == "11 天 6 小时" and duration(16205, "en") == "11 d 6 h"
    assert duration(60, "en") == "1 h" and duration(0.4, "en") == "0 min" and duration(None) == "—"


def test_boundaries_from_config_move_customers_between_tiers():
    strict = ScoringParams(value_matrix=ValueMatrixParams(boundaries=Boundaries(current_value=99, potential_value=99)))
    assert set(_score(strict)["tier"]) == {"dog"}
    lenient = ScoringParams(value_matrix=ValueMatrixParams(boundaries=Boundaries(current_value=0, potential_value=0)))
    assert set(_score(lenient)["tier"]) == {"star"}


def test_a_zero_weight_component_never_appears_in_reasons():
    params = ScoringParams.model_validate({"value_matrix": {"current_weights": {"revenue": 0}}})
    scored = _score(params)
    assert not any(r["factor"] == "revenue" for reasons in scored["reasons"] for r in reasons)


def test_percentile_is_the_share_strictly_below_and_ties_score_alike():
    values = pd.Series([0, 0, 0, 10, 10, 30], index=list("abcdef"), dtype=float)
    assert percentile_below(values).tolist() == pytest.approx([0, 0, 0, 50, 50, 500 / 6])


def test_percentile_among_a_subset_matches_customers_by_id_and_leaves_the_rest_out():
    values = pd.Series([5, 1, 3, None, 3], index=list("abcde"), dtype=float)
    among = pd.Series({"e": True, "d": True, "c": True, "b": False, "a": True})  # another order
    found = percentile_below(values, among)
    # The population is a, c, e (d has no value): 3 and 3 tie at the bottom, 5 has two below it.
    assert found[["a", "c", "e"]].tolist() == pytest.approx([200 / 3, 0, 0])
    assert found[["b", "d"]].isna().all()


def test_scores_do_not_depend_on_row_order():
    customers, aggregates = _population()
    shuffled = customers.sample(frac=1, random_state=7)
    first = score_customers(build_features(customers, aggregates, AS_OF), ScoringParams())
    second = score_customers(build_features(shuffled, aggregates.sample(frac=1, random_state=3), AS_OF),
                             ScoringParams())
    pd.testing.assert_frame_equal(first, second)


def test_current_value_is_the_weighted_mean_of_component_scores():
    scored = _score()
    weights = ScoringParams().value_matrix.current_weights.model_dump()
    row = scored.loc["N10"]
    expected = sum(row[f"c_{name}"] * w for name, w in weights.items()) / sum(weights.values())
    assert row["current_value"] == pytest.approx(expected, abs=0.02)


def test_growth_score_follows_the_documented_formula():
    scored = _score()
    assert scored.loc["STAR", "c_growth"] == 100.0  # +200% clips at 100
    assert scored.loc["COW", "c_growth"] == pytest.approx(50 + 50 * (6 / 6.5 - 1), abs=0.01)
    assert scored.loc["QM", "c_growth"] == 80.0  # revenue new this year
    assert scored.loc["DOG", "c_growth"] == 0.0  # lost all revenue


def test_windows_are_calendar_months_ending_at_the_as_of_day():
    assert window_starts(date(2026, 11, 20)) == {"m0": date(2026, 11, 1), "m12": date(2025, 12, 1),
                                                 "m24": date(2024, 12, 1), "m36": date(2023, 12, 1),
                                                 "m1": date(2026, 10, 1), "m2": date(2026, 9, 1),
                                                 "m3": date(2026, 8, 1), "m4": date(2026, 7, 1)}
    assert window_starts(date(2026, 1, 31))["m12"] == date(2025, 2, 1)


def test_customer_without_orders_is_scored_with_zero_revenue():
    customers = _customers([{"customer_id": "A"}, {"customer_id": "B"}])
    aggregates = _aggregates([{"customer_id": "A", "revenue_12m": 100.0}])
    features = build_features(customers, aggregates, AS_OF)
    assert features.loc["B", "revenue_12m"] == 0.0 and np.isnan(features.loc["B", "margin_rate"])
    scored = score_customers(features, ScoringParams())
    assert scored.loc["B", "c_revenue"] == 0.0 and scored.loc["A", "c_revenue"] == 50.0


def test_an_incremental_rescore_judges_a_one_time_buyer_by_the_last_full_runs_typical_cycle():
    from scoring.reference import PopulationReference

    customers, aggregates = _population()
    # The forty ordinary customers buy every 30 days; the Dog bought once, 400 days ago.
    ordinary = aggregates["customer_id"].str.startswith("N")
    aggregates.loc[ordinary, "first_order_date"] = pd.Timestamp(AS_OF) - pd.Timedelta(days=190)
    aggregates.loc[ordinary, "last_order_date"] = pd.Timestamp(AS_OF) - pd.Timedelta(days=10)
    aggregates.loc[ordinary, "purchase_days"] = 7
    dog = aggregates["customer_id"] == "DOG"
    aggregates.loc[dog, ["first_order_date", "last_order_date"]] = pd.Timestamp(AS_OF) - pd.Timedelta(days=400)
    aggregates.loc[dog, "purchase_days"] = 1
    features = build_features(customers, aggregates, AS_OF)
    full = score_customers(features, ScoringParams(), AS_OF)
    stored = full.attrs["reference"].to_json()
    assert full.loc["DOG", "churn_days_overdue"] == 370
    assert full.loc["DOG", "churn_reasons"][0]["factor"] == "overdue_typical_cycle"
    # Alone, the Dog has no repeat buyers beside it to learn a cycle from: the stored one is used.
    alone = score_customers(features.loc[["DOG"]], ScoringParams(), AS_OF,
                            reference=PopulationReference.from_json(stored))
    assert alone.loc["DOG", "churn_score"] == full.loc["DOG", "churn_score"] > 0
    assert alone.loc["DOG", "churn_days_overdue"] == 370


def test_reasons_read_right_at_the_edges_people_notice():
    # ¥ even for nothing; a whole maturity; no "more than 0% of buyers"; no share of no revenue.
    assert model_reasons_text("sabc", [{"factor": "volume", "value": 0.0, "score": 0.0}], "zh") == \
        "业务量 0/100（三年加权营收 ¥0）"
    assert model_reasons_text("rfm", [{"factor": "repeat_purchases", "value": 0, "score": 1, "percentile": 0.0}],
                              "en") == "0 repeat purchases (F=1, among the fewest of buyers)"
    assert model_reasons_text("rfm", [{"factor": "repeat_purchases", "value": 29, "score": 5,
                                       "percentile": 89.98}], "zh") == "复购 29 次（F=5，多于89%的购买客户）"
    assert reason_text({"factor": "digital_maturity", "value": 1.0, "axis": "potential", "direction": "low",
                        "score": 0.0}, "zh") == "数字化成熟度 1/5"


def test_customers_without_revenue_read_alike_in_every_model():
    from scoring.value_matrix import _raw_values

    customers, aggregates = _population()
    money_columns = ["revenue_12m", "cost_12m", "repeat_revenue_12m", "revenue_12_24m", "revenue_24_36m"]
    aggregates.loc[aggregates["customer_id"].isin(["N03", "N04"]), money_columns] = 0.0
    aggregates.loc[aggregates["customer_id"].isin(["N01", "N02"]), ["revenue_12m", "revenue_12_24m",
                                                                     "revenue_24_36m"]] = 77_777.0
    features = build_features(customers, aggregates, AS_OF)
    scored = score_customers(features, ScoringParams())
    # No revenue: said so, not "in the top 93% of customers" depending on the customer id.
    for customer_id in ("N03", "N04"):
        assert scored.loc[customer_id, "pyramid_reasons"] == [{"factor": "no_weighted_revenue", "value": 0.0}]
        assert model_reasons_text("pyramid", scored.loc[customer_id, "pyramid_reasons"], "en") == \
            "no revenue in the last three years"
    # Equal revenue, equal standing.
    assert scored.loc["N01", "pyramid_reasons"][0]["top_share"] == scored.loc["N02", "pyramid_reasons"][0]["top_share"]
    # No revenue in the last 12 months: no "renewals and upsells are 0% of it".
    rows = np.flatnonzero(features.index.isin(["N03", "N05"]))
    shares = _raw_values(features, "repurchase_upsell", rows, features["revenue_12m"].to_numpy())
    assert shares[0] is None and shares[1] == 0.5
    assert reason_text({"factor": "repurchase_upsell", "value": None, "axis": "current", "direction": "low",
                        "score": 0.0}, "zh") == "近12个月无营收，也就没有续费与增购"


def test_revenue_halved_year_on_year_is_churn_risk_not_mature():
    from scoring.segments import LifecycleParams, score_lifecycle

    features = pd.DataFrame({
        "first_order_date": pd.to_datetime(["2023-12-01", "2023-12-01", "2023-12-01"]),
        "last_order_date": pd.to_datetime(["2026-10-01", "2026-10-01", "2026-10-01"]),
        "growth": [-1.0, -0.62, -0.3], "revenue_12m": [0.0, 38_000.0, 70_000.0]}, index=["GONE", "HALVED", "DIP"])
    result = score_lifecycle(features, AS_OF, LifecycleParams())
    assert result["lifecycle_label"].tolist() == ["churn_risk", "churn_risk", "mature"]
    assert model_reasons_text("lifecycle", result.loc["HALVED", "lifecycle_reasons"], "zh") == "营收同比 -62%"
    never = score_lifecycle(features, AS_OF, LifecycleParams(declining_growth=None))
    assert never["lifecycle_label"].tolist() == ["mature", "mature", "mature"]


def test_multi_year_revenue_counts_only_the_years_a_customer_has_been_buying():
    from scoring.params import RevenueYears
    from scoring.pipeline import with_weighted_revenue

    features = pd.DataFrame({
        "first_order_date": pd.to_datetime(["2026-03-10", "2025-05-10", "2021-01-01", None]),
        "revenue_12m": [57_000.0, 100_000.0, 100_000.0, 0.0],
        "revenue_12_24m": [0.0, 40_000.0, 40_000.0, 0.0],
        "revenue_24_36m": [0.0, 0.0, 10_000.0, 0.0]}, index=["NEW", "SECOND_YEAR", "OLD", "NONE"])
    weighted = with_weighted_revenue(features, RevenueYears(), AS_OF)["weighted_revenue"]
    # Won eight months ago: its one year, not a third of it ("¥3.4万 (12 months ¥5.7万)").
    assert weighted["NEW"] == pytest.approx(57_000.0)
    assert weighted["SECOND_YEAR"] == pytest.approx((0.6 * 100_000 + 0.3 * 40_000) / 0.9)
    assert weighted["OLD"] == pytest.approx(0.6 * 100_000 + 0.3 * 40_000 + 0.1 * 10_000)
    assert weighted["NONE"] == 0.0


def test_english_reasons_say_one_day_not_one_days():
    recent = [{"factor": "recency_days", "value": 1, "score": 5, "percentile": 97.0}]
    assert model_reasons_text("rfm", recent, "en").startswith("1 day since the last purchase (R=5")
    assert model_reasons_text("rfm", [{**recent[0], "value": 21}], "en").startswith("21 days since")
