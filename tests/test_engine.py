"""The scoring engine as the business sees it: rules from config, stable tiers, every
model in the export."""

from __future__ import annotations

import csv

import pandas as pd
import pytest
from sqlalchemy import select

from bot.config import ConfigError, load_config
from bot.export import export_scores
from bot.rescore import full_rescore
from scoring.params import ValueMatrixParams
from scoring.pipeline import ScoringParams, score_customers
from scoring.value_matrix import stabilise
from storage.importer import run_import
from storage.models import Customer, ScoreSnapshot
from tests.company import AS_OF, write_company
from tests.test_scoring import _population

RULE = {"name": "big manufacturers", "when": 'ltv > 1000000 and industry == "高端制造"',
        "then": {"set_label": {"value_matrix": "star"}, "add_tags": ["标杆候选"]}}


def _features():
    from scoring.features import build_features

    customers, aggregates = _population()
    customers.loc[customers["customer_id"].isin(["N05", "N30", "N12"]), "industry"] = "高端制造"
    lifetime = {"N05": 2e6, "N30": 5e6, "N10": 3e6, "N12": 5e5}  # N10 is no manufacturer, N12 too small
    aggregates["lifetime_revenue"] = aggregates["customer_id"].map(lifetime).fillna(aggregates["revenue_12m"])
    return build_features(customers, aggregates, AS_OF)


def test_a_config_rule_changes_the_labels_it_should_and_nothing_else():
    features = _features()
    plain = score_customers(features, ScoringParams(), AS_OF)
    ruled = score_customers(features, ScoringParams.model_validate({"rules": {"rules": [RULE]}}), AS_OF)
    matching = {"N05", "N30"}  # 高端制造 with lifetime revenue over 1M
    assert set(features.index[(features["lifetime_revenue"] > 1e6) & (features["industry"] == "高端制造")]) == matching
    assert (ruled.loc[list(matching), "tier"] == "star").all()
    assert all("标杆候选" in ruled.loc[c, "intent_tags"] for c in matching)
    others = [c for c in features.index if c not in matching]
    comparable = [c for c in plain.columns if c not in ("rules_reasons", "intent_tags")]
    pd.testing.assert_frame_equal(plain.loc[others, comparable], ruled.loc[others, comparable])
    assert ruled.loc["N05", "rules_reasons"] == [{"factor": "rule", "value": "big manufacturers"}]


def test_a_tier_a_rule_sets_has_no_move_pending():
    features = _features()
    params = ScoringParams.model_validate({"rules": {"rules": [RULE]}})
    raw = score_customers(features, params, AS_OF)
    # N05 (pinned to Star by the rule) scored as if it had been a Dog last run and were
    # borderline now: hysteresis would leave a move pending; the rule settles it.
    previous = pd.DataFrame({"tier": "dog", "pending_tier": None, "pending_runs": 0}, index=features.index)
    nudged = ScoringParams.model_validate({"rules": {"rules": [RULE]}, "value_matrix": {
        "boundaries": {"current_value": float(raw.loc["N05", "current_value"]) - 1}}})
    unruled = score_customers(features, nudged.model_copy(update={"rules": ScoringParams().rules}), AS_OF,
                              previous=previous)
    assert (unruled.loc["N05", "tier"], unruled.loc["N05", "pending_tier"]) == ("dog", "cash_cow")
    ruled = score_customers(features, nudged, AS_OF, previous=previous)
    assert ruled.loc["N05", "tier"] == "star"
    assert pd.isna(ruled.loc["N05", "pending_tier"]) and ruled.loc["N05", "pending_runs"] == 0


def test_a_rule_can_pin_key_accounts_by_id():
    features = _features()
    pinned = {"name": "key accounts", "when": 'customer_id in ["N05", "N12"]',
              "then": {"set_label": {"sabc": "S"}}}
    ruled = score_customers(features, ScoringParams.model_validate({"rules": {"rules": [pinned]}}), AS_OF)
    assert set(ruled.index[ruled["rules_reasons"].map(bool)]) == {"N05", "N12"}
    assert (ruled.loc[["N05", "N12"], "sabc_label"] == "S").all()


def _config_problems(tmp_path, text: str) -> list[str]:
    path = tmp_path / "config.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as failure:
        load_config(path, environ={})
    return failure.value.problems


def test_an_unknown_field_with_no_close_spelling_lists_the_fields(tmp_path):
    [problem] = _config_problems(tmp_path, 'scoring:\n  rules:\n    rules:\n      - name: grade\n'
                                           '        when: 客户等级 == "A"\n        then: {set_label: {sabc: S}}\n')
    assert "unknown field '客户等级' (fields: act_30d, act_baseline_30d," in problem and "customer_id" in problem


def test_a_misspelt_field_in_a_rule_is_refused_at_start_up_naming_the_rule(tmp_path):
    [problem] = _config_problems(tmp_path, 'scoring:\n  rules:\n    rules:\n      - name: big manufacturers\n'
                                           '        when: ltvv > 1000000 and industry == "高端制造"\n'
                                           '        then: {set_label: {value_matrix: star}}\n')
    assert problem.startswith("scoring: ") and '"big manufacturers"' in problem
    assert "unknown field 'ltvv' (did you mean 'ltv'?)" in problem


def test_a_rule_that_sets_the_label_of_a_switched_off_model_is_refused_at_start_up(tmp_path):
    assert _config_problems(tmp_path, 'scoring:\n  rfm: {enabled: false}\n  rules:\n    rules:\n'
                                      '      - name: champions by hand\n        when: ltv > 1000000\n'
                                      '        then: {set_label: {rfm: champions}}\n') == [
        'scoring: rules[0] "champions by hand": set_label: rfm is switched off (scoring.rfm.enabled: false)']


def _state(tier, pending=None, runs=0):
    return pd.DataFrame({"tier": [tier], "pending_tier": [pending], "pending_runs": [runs]}, index=["C"])


def _raw(tier, x, y=60.0):
    return pd.DataFrame({"tier": [tier], "current_value": [x], "potential_value": [y]}, index=["C"])


def test_a_customer_wobbling_on_the_boundary_does_not_flip():
    params = ValueMatrixParams()  # boundary X=70, margin 3, two runs to confirm
    state = _state("star")
    tiers = []
    for x in (69.0, 71.0, 69.5, 70.5, 68.0, 72.0):
        raw_tier = "star" if x >= 70 else "question_mark"
        stable = stabilise(_raw(raw_tier, x), state, params)
        tiers.append(stable.loc["C", "tier"])
        state = stable[["tier", "pending_tier", "pending_runs"]]
    assert tiers == ["star"] * 6


def test_a_clear_move_switches_at_once_and_a_lasting_one_after_the_runs():
    params = ValueMatrixParams()
    assert stabilise(_raw("question_mark", 50.0), _state("star"), params).loc["C", "tier"] == "question_mark"
    first = stabilise(_raw("question_mark", 68.5), _state("star"), params)
    assert (first.loc["C", "tier"], first.loc["C", "pending_tier"], first.loc["C", "pending_runs"]) == \
        ("star", "question_mark", 1)
    second = stabilise(_raw("question_mark", 68.5), first[["tier", "pending_tier", "pending_runs"]], params)
    assert second.loc["C", "tier"] == "question_mark"


def _scored_with_f023_just_under_the_line(engine, database_url, tmp_path):
    """The test company scored once, and a config whose X boundary is one point above
    F023, a cash cow just above the shipped boundary."""
    run_import(engine, [write_company(tmp_path / "crm")])
    config = load_config(None, environ={"TIERBOT_DATABASE_URL": database_url})
    full_rescore(engine, config, AS_OF)
    with engine.connect() as connection:
        x = connection.execute(select(ScoreSnapshot.current_value).where(ScoreSnapshot.customer_id == "F023")
                               ).scalar_one()
    assert x >= 70
    return config.model_copy(update={"scoring": ScoringParams.model_validate(
        {"value_matrix": {"boundaries": {"current_value": x + 1}}})})


def test_hysteresis_state_survives_between_runs_in_the_database(engine, database_url, tmp_path):
    nudged = _scored_with_f023_just_under_the_line(engine, database_url, tmp_path)

    def tier_now() -> str:
        with engine.connect() as connection:
            return connection.execute(select(Customer.tier).where(Customer.customer_id == "F023")).scalar_one()

    def heading() -> tuple:
        with engine.connect() as connection:
            return tuple(connection.execute(select(Customer.pending_tier, Customer.pending_runs)
                                            .where(Customer.customer_id == "F023")).one())

    full_rescore(engine, nudged, AS_OF)
    assert tier_now() == "cash_cow"  # one point past the boundary: held
    assert heading() == ("dog", 1)
    # The export says where it is heading.
    export_scores(engine, tmp_path / "held.csv", "en", 8)
    with open(tmp_path / "held.csv", encoding="utf-8-sig") as handle:
        held = {row["customer_id"]: row for row in csv.DictReader(handle)}
    assert (held["F023"]["tier"], held["F023"]["pending_tier"]) == ("cash_cow", "dog")
    assert held["STAR1"]["pending_tier"] == ""
    full_rescore(engine, nudged, AS_OF)
    assert tier_now() == "dog"  # the second run in a row confirms it
    assert heading() == (None, 0)


def test_incremental_rescores_do_not_count_as_the_runs_a_borderline_move_waits_for(engine, database_url,
                                                                                    tmp_path):
    from bot.rescore import incremental_rescore

    nudged = _scored_with_f023_just_under_the_line(engine, database_url, tmp_path)

    def state() -> tuple:
        with engine.connect() as connection:
            return tuple(connection.execute(select(Customer.tier, Customer.pending_tier, Customer.pending_runs)
                                            .where(Customer.customer_id == "F023")).one())

    full_rescore(engine, nudged, AS_OF)
    assert state() == ("cash_cow", "dog", 1)
    # A CRM sending activity after activity: each rescores F023, none confirms the move.
    for number in range(3):
        run_import(engine, [], records={"activities": [{"activity_id": f"F023-LOGIN-{number}", "customer_id": "F023",
                                                        "ts": f"{AS_OF.isoformat()}T0{number}:00:00",
                                                        "kind": "login"}]})
        outcome = incremental_rescore(engine, nudged, ["F023"], AS_OF)
        assert outcome is not None and outcome.tier_changes == 0
        assert state() == ("cash_cow", "dog", 1)
    full_rescore(engine, nudged, AS_OF)  # the second full run in a row confirms it
    assert state() == ("dog", None, 0)


def test_an_axis_that_crossed_clearly_moves_at_once_beside_a_borderline_one():
    params = ValueMatrixParams()  # X boundary 70, Y boundary 50, margin 3
    # A Star whose potential fell far (Y 40) while its current value slipped just under (X 69).
    first = stabilise(_raw("dog", 69.0, 40.0), _state("star"), params)
    assert (first.loc["C", "tier"], first.loc["C", "pending_tier"], first.loc["C", "pending_runs"]) == \
        ("cash_cow", "dog", 1)
    second = stabilise(_raw("dog", 69.0, 40.0), first[["tier", "pending_tier", "pending_runs"]], params)
    assert (second.loc["C", "tier"], second.loc["C", "pending_tier"]) == ("dog", None)
    # Back over the line on the borderline axis: the clear move stays, nothing waits.
    back = stabilise(_raw("cash_cow", 70.5, 40.0), first[["tier", "pending_tier", "pending_runs"]], params)
    assert (back.loc["C", "tier"], back.loc["C", "pending_tier"], back.loc["C", "pending_runs"]) == \
        ("cash_cow", None, 0)


def test_axes_moving_opposite_ways_move_together_never_to_a_tier_neither_run_gave():
    params = ValueMatrixParams()
    # A Question Mark whose scores say Cash Cow: X up clearly (80), Y down just under (49).
    # Moving X alone would make it a Star for a night; it waits as a whole instead.
    first = stabilise(_raw("cash_cow", 80.0, 49.0), _state("question_mark"), params)
    assert (first.loc["C", "tier"], first.loc["C", "pending_tier"]) == ("question_mark", "cash_cow")
    second = stabilise(_raw("cash_cow", 80.0, 49.0), first[["tier", "pending_tier", "pending_runs"]], params)
    assert second.loc["C", "tier"] == "cash_cow"
    # Both clear: at once.
    assert stabilise(_raw("cash_cow", 80.0, 40.0), _state("question_mark"), params).loc["C", "tier"] == "cash_cow"


def test_a_rescore_that_is_not_a_run_holds_a_borderline_move_and_switches_a_clear_one():
    params = ValueMatrixParams()
    held = stabilise(_raw("question_mark", 68.5), _state("star", "question_mark", 1), params, counts_as_run=False)
    assert (held.loc["C", "tier"], held.loc["C", "pending_tier"], held.loc["C", "pending_runs"]) == \
        ("star", "question_mark", 1)
    new_direction = stabilise(_raw("question_mark", 68.5), _state("star"), params, counts_as_run=False)
    assert (new_direction.loc["C", "tier"], new_direction.loc["C", "pending_runs"]) == ("star", 0)
    then = stabilise(_raw("question_mark", 68.5), new_direction[["tier", "pending_tier", "pending_runs"]], params)
    assert (then.loc["C", "tier"], then.loc["C", "pending_runs"]) == ("star", 1)
    assert stabilise(_raw("question_mark", 50.0), _state("star"), params, counts_as_run=False).loc["C", "tier"] == \
        "question_mark"


def test_export_has_every_models_label_score_and_reasons(engine, database_url, tmp_path):
    run_import(engine, [write_company(tmp_path / "crm")])
    config = load_config(None, environ={"TIERBOT_DATABASE_URL": database_url})
    full_rescore(engine, config, AS_OF)
    export_scores(engine, tmp_path / "scores.csv", "zh", 8)
    with open(tmp_path / "scores.csv", encoding="utf-8-sig") as handle:
        rows = {row["customer_id"]: row for row in csv.DictReader(handle)}
    star = rows["STAR1"]
    for model in ("rfm", "sabc", "pyramid", "lifecycle", "churn", "intent"):
        assert f"{model}_label" in star and f"{model}_score" in star and f"{model}_reasons" in star
    assert star["sabc_label"] == "S" and star["pyramid_label"] in ("platinum", "gold")
    assert star["rfm_label"] in ("champions", "loyal") and "距上次购买" in star["rfm_reasons"]
    assert rows["DOG1"]["lifecycle_label"] == "churn_risk" and rows["QM1"]["lifecycle_label"] == "new"


def test_the_export_names_the_business_rules_that_fired(engine, database_url, tmp_path):
    run_import(engine, [write_company(tmp_path / "crm")])
    config = load_config(None, environ={"TIERBOT_DATABASE_URL": database_url})
    config = config.model_copy(update={"scoring": ScoringParams.model_validate({"rules": {"rules": [
        {"name": "key semiconductor accounts", "when": 'industry == "半导体"', "then": {"set_label": {"sabc": "S"}}}]}})})
    full_rescore(engine, config, AS_OF)
    export_scores(engine, tmp_path / "scores.csv", "en", 8)
    with open(tmp_path / "scores.csv", encoding="utf-8-sig") as handle:
        rows = {row["customer_id"]: row for row in csv.DictReader(handle)}
    assert rows["STAR1"]["rules"] == 'business rule "key semiconductor accounts"'
    assert rows["STAR1"]["sabc_label"] == "S" and rows["QM1"]["rules"] == ""
