"""The business-rule engine (scoring.rules): checked at load, vectorised, nothing runs."""

from __future__ import annotations

import operator
import random

import numpy as np
import pandas as pd
import pytest
from pydantic import ValidationError

from scoring.rules import (
    BusinessRule,
    RuleAction,
    RuleError,
    RulesParams,
    apply_rules,
    check_rules,
    compile_rules,
    infer_fields,
)

FIELDS = {"ltv": "number", "growth": "number", "employees": "number", "industry": "text", "region": "text",
          "is_listed": "bool", "created_at": "date"}
LABELS = {"value_matrix": ("star", "cash_cow", "question_mark", "dog"), "sabc": ("S", "A", "B", "C")}


def rule(name: str, when: str, **then) -> BusinessRule:
    enabled = then.pop("enabled", True)
    return BusinessRule(name=name, when=when, then=RuleAction(**then), enabled=enabled)


def compiled(*rules: BusinessRule, fields=FIELDS, labels=LABELS):
    return compile_rules(RulesParams(rules=list(rules)), fields, labels)


def problems(*rules: BusinessRule, fields=FIELDS, labels=LABELS) -> list[str]:
    return check_rules(RulesParams(rules=list(rules)), fields, labels)


@pytest.fixture()
def features() -> pd.DataFrame:
    index = pd.Index(["c1", "c2", "c3", "c4", "c5", "c6"], name="customer_id")
    return pd.DataFrame({
        "ltv": [2_000_000.0, 500_000.0, np.nan, 3_000_000.0, 1_000_000.0, 1_500_000.0],
        "growth": [0.3, -0.1, np.nan, 0.05, 0.2, 0.0],
        "employees": [800, 50, 120, 3000, 10, 400],
        "industry": pd.Series(["高端制造", "高端制造", "高端制造", "新能源", "高端制造", None], index=index),
        "region": ["华东", "华南", "华东", None, "华北", "华东"],
        "is_listed": pd.array([True, False, None, True, False, True], dtype="boolean"),
        "created_at": pd.to_datetime(["2024-01-01", "2023-03-01", None, "2025-02-01", "2024-06-30", "2022-01-01"]),
    }, index=index)


@pytest.fixture()
def labels(features) -> pd.DataFrame:
    return pd.DataFrame({"value_matrix": ["dog", "cash_cow", "question_mark", "dog", "dog", "cash_cow"],
                         "sabc": ["B", "A", None, "C", "B", "A"],
                         "intent": ["low", None, "high", "medium", "none", "low"]}, index=features.index)


# --------------------------------------------------------------------------- behaviour


def test_the_example_rule_sets_star_exactly_where_it_matches(features, labels):
    rules = compiled(rule("big manufacturers", 'ltv > 1000000 and industry == "高端制造"',
                          set_label={"value_matrix": "star"}))
    outcome = apply_rules(rules, features, labels)
    # c1 matches; c5 has ltv == 1,000,000 (not >); c6 has no industry; c4 is 新能源; c3 no ltv
    expected = labels.copy()
    expected.loc["c1", "value_matrix"] = "star"
    pd.testing.assert_frame_equal(outcome.labels, expected)
    assert outcome.changed.to_numpy().sum() == 1 and outcome.changed.loc["c1", "value_matrix"]
    assert outcome.fired.to_dict() == {"c1": ["big manufacturers"], "c2": [], "c3": [], "c4": [], "c5": [], "c6": []}
    assert outcome.reasons()["c1"] == [{"factor": "rule", "value": "big manufacturers"}]
    assert outcome.tags.map(len).sum() == 0
    # inputs untouched
    assert labels.loc["c1", "value_matrix"] == "dog"


def test_a_customer_already_carrying_the_label_is_not_counted_as_changed(features, labels):
    rules = compiled(rule("r", 'industry == "高端制造"', set_label={"value_matrix": "cash_cow"}))
    outcome = apply_rules(rules, features, labels)
    assert outcome.matched["r"].tolist() == [True, True, True, False, True, False]
    assert outcome.changed["value_matrix"].tolist() == [True, False, True, False, True, False]
    assert outcome.labels["value_matrix"].tolist() == ["cash_cow", "cash_cow", "cash_cow", "dog", "cash_cow",
                                                       "cash_cow"]


def test_tags_accumulate_unique_in_order(features, labels):
    rules = compiled(
        rule("listed", "is_listed", add_tags=["上市", "重点"]),
        rule("east", 'region == "华东"', add_tags=["重点", "华东"]),
        rule("big", "ltv >= 2e6", add_tags=["大客户", "上市"]),
    )
    tags = apply_rules(rules, features, labels).tags
    assert tags["c1"] == ["上市", "重点", "华东", "大客户"]
    assert tags["c2"] == []
    assert tags["c3"] == ["重点", "华东"]
    assert tags["c4"] == ["上市", "重点", "大客户"]
    assert tags["c2"] == tags["c5"] == [] and tags["c2"] is not tags["c5"]  # one list each, safe to mutate


def test_intent_only_rises(features, labels):
    rules = compiled(rule("medium for all", "true", raise_intent="medium"))
    outcome = apply_rules(rules, features, labels)
    # low → medium, missing → medium, high stays, medium stays, none → medium
    assert outcome.labels["intent"].tolist() == ["medium", "medium", "high", "medium", "medium", "medium"]
    assert outcome.changed["intent"].tolist() == [True, True, False, False, True, True]
    rules = compiled(rule("low for all", "true", raise_intent="low"),
                     rule("high for c1", "ltv > 1.9e6 and growth > 0.1", raise_intent="high"))
    outcome = apply_rules(rules, features, labels)
    assert outcome.labels["intent"].tolist() == ["high", "low", "high", "medium", "low", "low"]


def test_a_later_rule_overrides_an_earlier_label(features, labels):
    rules = compiled(
        rule("first", "ltv > 0", set_label={"value_matrix": "star", "sabc": "S"}),
        rule("second", "ltv > 1500000", set_label={"value_matrix": "question_mark"}),
    )
    outcome = apply_rules(rules, features, labels)
    assert outcome.labels["value_matrix"].tolist() == ["question_mark", "star", "question_mark", "question_mark",
                                                       "star", "star"]
    assert outcome.labels["sabc"].tolist()[:2] == ["S", "S"]
    assert pd.isna(outcome.labels.loc["c3", "sabc"])
    assert outcome.fired["c1"] == ["first", "second"]
    # order matters: swapped, the broader rule wins everywhere it matches
    swapped = compiled(
        rule("second", "ltv > 1500000", set_label={"value_matrix": "question_mark"}),
        rule("first", "ltv > 0", set_label={"value_matrix": "star", "sabc": "S"}),
    )
    assert apply_rules(swapped, features, labels).labels["value_matrix"].tolist() == [
        "star", "star", "question_mark", "star", "star", "star"]


def test_chained_comparisons(features, labels):
    rules = compiled(rule("mid", "1000000 <= ltv < 2500000", add_tags=["mid"]),
                     rule("rev", "3000 > employees > 100 >= -growth", add_tags=["rev"]))
    outcome = apply_rules(rules, features, labels)
    assert outcome.matched["mid"].tolist() == [True, False, False, False, True, True]
    assert outcome.matched["rev"].tolist() == [True, False, False, False, False, True]


def test_in_and_not_in_lists(features, labels):
    rules = compiled(rule("in", 'industry in ["新能源", "半导体"] or region in ("华北",)', add_tags=["x"]),
                     rule("not in", 'region not in ["华东", "华南"]', add_tags=["y"]),
                     rule("numbers", "employees in [50, 10, 3000]", add_tags=["z"]),
                     rule("empty", "employees in []", add_tags=["never"]))
    matched = apply_rules(rules, features, labels).matched
    assert matched["in"].tolist() == [False, False, False, True, True, False]
    # c4 has no region: unknown, so `not in` does not fire for it
    assert matched["not in"].tolist() == [False, False, False, False, True, False]
    assert matched["numbers"].tolist() == [False, True, False, True, True, False]
    assert not matched["empty"].any()


def test_not_and_missing_values(features, labels):
    rules = compiled(
        rule("not", "not (growth > 0)", add_tags=["a"]),
        rule("ne", "growth != 0.3", add_tags=["b"]),
        rule("missing", "missing(ltv) or missing(industry)", add_tags=["c"]),
        rule("known", "not missing(ltv) and ltv < 1e6", add_tags=["d"]),
        rule("false and unknown", "not (growth > 100 and ltv > 0)", add_tags=["e"]),
        rule("true or unknown", "employees > 100 or ltv > 2500000", add_tags=["f"]),
        rule("bool", "not is_listed", add_tags=["g"]),
        rule("bool ==", "is_listed == false", add_tags=["h"]),
    )
    matched = apply_rules(rules, features, labels).matched
    # c3 has no growth, no ltv, unknown is_listed: nothing fires on its missing values
    assert matched["not"].tolist() == [False, True, False, False, False, True]
    assert matched["ne"].tolist() == [False, True, False, True, True, True]
    assert matched["missing"].tolist() == [False, False, True, False, False, True]
    assert matched["known"].tolist() == [False, True, False, False, False, False]
    # growth > 100 is false wherever growth is known, so c3 (unknown growth and ltv) stays unknown
    assert matched["false and unknown"].tolist() == [True, True, False, True, True, True]
    assert matched["true or unknown"].tolist() == [True, False, True, True, False, True]
    assert matched["bool"].tolist() == [False, True, False, False, True, False]
    assert matched["bool =="].tolist() == matched["bool"].tolist()


def test_text_helpers_and_chinese(features, labels):
    rules = compiled(rule("contains", 'contains(industry, "制造")', add_tags=["a"]),
                     rule("starts", 'startswith(region, "华") and endswith(region, "东")', add_tags=["b"]))
    matched = apply_rules(rules, features, labels).matched
    assert matched["contains"].tolist() == [True, True, True, False, True, False]
    assert matched["starts"].tolist() == [True, False, True, False, False, True]


def test_dates(features, labels):
    rules = compiled(rule("recent", 'created_at >= "2024-01-01"', add_tags=["new"]),
                     rule("window", '"2023-01-01" < created_at < "2024-07-01 12:00"', add_tags=["w"]))
    matched = apply_rules(rules, features, labels).matched
    assert matched["recent"].tolist() == [True, False, False, True, True, False]
    assert matched["window"].tolist() == [True, True, False, False, True, False]
    aware = features.assign(created_at=features["created_at"].dt.tz_localize("Asia/Shanghai"))
    assert apply_rules(rules, aware, labels).matched.equals(matched)


def test_field_against_field_and_unary_minus(features, labels):
    fields = dict(FIELDS, ltv_prev="number")
    frame = features.assign(ltv_prev=[1e6, 1e6, 1e6, np.nan, 2e6, 1e6])
    rules = compiled(rule("up", "ltv > ltv_prev and growth > -0.05", add_tags=["up"]), fields=fields)
    assert apply_rules(rules, frame, labels).matched["up"].tolist() == [True, False, False, False, False, True]


def test_disabled_rules_are_checked_but_not_applied(features, labels):
    assert problems(rule("off", "ltvv > 1", add_tags=["x"], enabled=False)) == [
        'rules[0] "off": unknown field \'ltvv\' (did you mean \'ltv\'?) at column 1']
    rules = compiled(rule("off", "true", set_label={"value_matrix": "star"}, enabled=False))
    outcome = apply_rules(rules, features, labels)
    pd.testing.assert_frame_equal(outcome.labels, labels)
    assert list(outcome.matched.columns) == []


def test_label_dtypes_are_kept(features, labels):
    categorical = labels.assign(value_matrix=labels["value_matrix"].astype(
        pd.CategoricalDtype(["star", "cash_cow", "question_mark", "dog"])),
        intent=pd.Series(np.nan, index=labels.index))  # an intent column with nothing in it yet
    rules = compiled(rule("r", "ltv > 2500000", set_label={"value_matrix": "star"}, raise_intent="high"))
    outcome = apply_rules(rules, features, categorical)
    assert isinstance(outcome.labels["value_matrix"].dtype, pd.CategoricalDtype)
    assert outcome.labels["value_matrix"].tolist() == ["dog", "cash_cow", "question_mark", "star", "dog", "cash_cow"]
    assert outcome.labels.loc["c4", "intent"] == "high"
    assert outcome.labels["intent"].isna().sum() == 5
    pd.testing.assert_series_equal(outcome.labels["sabc"], categorical["sabc"])


def test_features_in_another_order_are_aligned(features, labels):
    rules = compiled(rule("r", "ltv > 2500000", set_label={"value_matrix": "star"}))
    outcome = apply_rules(rules, features.iloc[::-1], labels)
    assert outcome.labels.index.equals(labels.index)
    assert outcome.changed["value_matrix"].tolist() == [False, False, False, True, False, False]
    with pytest.raises(ValueError, match="same customers"):
        apply_rules(rules, features.iloc[1:], labels)


def test_missing_columns_at_apply_are_reported(features, labels):
    rules = compiled(rule("r", "ltv > 0", set_label={"sabc": "S"}, raise_intent="high"))
    with pytest.raises(ValueError, match="ltv"):
        apply_rules(rules, features.drop(columns="ltv"), labels)
    with pytest.raises(ValueError, match="intent, sabc"):
        apply_rules(rules, features, labels.drop(columns=["sabc", "intent"]))


def test_no_rules_and_no_customers(features, labels):
    outcome = apply_rules(compiled(), features, labels)
    pd.testing.assert_frame_equal(outcome.labels, labels)
    assert outcome.tags.tolist() == [[]] * 6
    empty = apply_rules(compiled(rule("r", "ltv > 0", add_tags=["t"])), features.iloc[:0], labels.iloc[:0])
    assert len(empty.labels) == 0 and len(empty.tags) == 0


# --------------------------------------------------------------------------- refused at load

FORBIDDEN = [
    ("x.__class__", "attribute access '.__class__' is not allowed"),
    ("ltv.__class__.__bases__ == 1", "attribute access"),
    ('__import__("os").system("touch CANARY")', "method calls ('.system(…)') are not allowed"),
    ('__import__("os")', "calling '__import__' is not allowed"),
    ('open("CANARY", "w")', "calling 'open' is not allowed"),
    ('industry.startswith("高")', "method calls"),
    ("industry[0] == 'a'", "subscripts"),
    ("(lambda: 1)() == 1", "this call is not allowed"),
    ("lambda: True", "lambda is not allowed"),
    ("ltv ** 2 > 1", "'**' is not allowed"),
    ("ltv * 2 > 1", "arithmetic is not allowed"),
    ("f'{ltv}' == 'a'", "f-strings are not allowed"),
    ("(x := 1)", "':=' is not allowed"),
    ("(ltv := 1) > 0", "':=' is not allowed"),
    ("[a for a in b]", "comprehensions are not allowed"),
    ("any(x > 1 for x in [ltv])", "calling 'any' is not allowed"),
    ("ltv in [x for x in [1]]", "must be a list of literals"),
    ("{ltv: 1}", "a dict is not allowed"),
    ("ltv > 1 if is_listed else false", "if … else"),
    ("ltv & 1", "use and"),
    ("~is_listed", "use not"),
    ("ltv is None", "'is' is not allowed"),
    ("ltv == None", "None is not allowed"),
    ("secret > 1", "unknown field 'secret'"),
    ("__builtins__", "unknown field '__builtins__'"),
    ("industry in industry", "must be a list of literals"),
    ("ltv in [1, employees]", "literals only"),
    ("ltv > 'big'", "'ltv' is a number field; it cannot be compared with the text 'big'"),
    ('industry == 5', "'industry' is a text field; it cannot be compared with the number 5"),
    ('industry < "b"', "'<' cannot compare text"),
    ("is_listed == 1", "'is_listed' is a bool field"),
    ("is_listed > false", "'>' cannot compare bool"),
    ("ltv == is_listed", "'ltv' is a number field and 'is_listed' is a bool field"),
    ('created_at > "last week"', "'last week' is not a date"),
    ("ltv", "'ltv' is a number field, not a condition"),
    ("1000", "is not a condition"),
    ("1 < 2", "compares two literals"),
    ("(ltv > 1) == true", "a condition cannot be compared"),
    ("-industry == 'a'", "'-' applies to numbers only"),
    ('contains(ltv, "1")', "contains() works on text fields"),
    ('contains(industry, region)', "must be a string literal"),
    ('missing(ltv, 1)', "missing() takes 1 argument"),
    ('contains(industry, text="a")', "plain arguments only"),
    ("ltv > 1e999", "not a finite number"),
    ("b'x' == industry", "the literal b'x' is not allowed"),
    ("is_listed == yes", "write true or false"),
    ("ltv > 5 AND is_listed", "write 'and' in lower case"),
    ("", "the condition is empty"),
    ("x" * 2001, "longer than 2000"),
    (" or ".join(["ltv>1"] * 200), "too complex"),
]


@pytest.mark.parametrize(("when", "expected"), FORBIDDEN, ids=[case[0][:40] for case in FORBIDDEN])
def test_forbidden_constructs_are_refused_naming_the_rule(when, expected, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(RuleError) as caught:
        compiled(rule("ok", "ltv > 1", add_tags=["t"]), rule("evil", when, add_tags=["t"]))
    error = caught.value
    assert error.rule_name == "evil" and error.index == 1
    assert len(error.problems) == 1
    assert error.problems[0].startswith('rules[1] "evil": ')
    assert expected in error.problems[0]
    assert not (tmp_path / "CANARY").exists()


SYNTAX = [
    ("ltv = 1000", "operator '=' is not allowed here (use ==)", 5),
    ("ltv > 1 && is_listed", "operator '&&' is not allowed here (use and)", 9),
    ("ltv > 1 || is_listed", "operator '||' is not allowed here (use or)", 9),
    ("!is_listed", "operator '!' is not allowed here", 1),
    ("ltv <> 1", "operator '<>' is not allowed here (use !=)", 5),
    ("ltv > > 1", "syntax error: invalid syntax", 7),
    ('industry == “高端制造”', "invalid character '“' (use the ASCII '\"' instead)", 13),
    ('industry == "高端制造" and ltv ＞ 1', "invalid character '＞' (use the ASCII '>' instead)", 28),
    ('industry == "高端制造', "syntax error: unterminated string literal", 13),
    ("(ltv > 1", "syntax error", 1),
]


@pytest.mark.parametrize(("when", "expected", "column"), SYNTAX, ids=[case[0] for case in SYNTAX])
def test_syntax_errors_name_the_rule_and_the_column(when, expected, column):
    with pytest.raises(RuleError) as caught:
        compiled(rule("typo", when, add_tags=["t"]))
    assert caught.value.column == column
    [problem] = caught.value.problems
    assert problem.startswith(f'rules[0] "typo": {expected}')
    assert problem.endswith(f" at column {column}")


def test_unknown_field_gets_did_you_mean():
    assert problems(rule("big manufacturers", 'ltvv > 1000000 and industry == "高端制造"', add_tags=["t"])) == [
        'rules[0] "big manufacturers": unknown field \'ltvv\' (did you mean \'ltv\'?) at column 1']
    assert "did you mean 'industry'" in problems(rule("r", 'Industry == "x"', add_tags=["t"]))[0]
    # No close spelling: the fields it may use.
    assert problems(rule("r", 'zzz == "x"', add_tags=["t"])) == [
        'rules[0] "r": unknown field \'zzz\' (fields: created_at, employees, growth, industry, is_listed, ltv, '
        'region) at column 1']
    # the column counts characters, Chinese ones included
    assert problems(rule("r", 'industry == "高端制造" and regoin == "华东"', add_tags=["t"])) == [
        'rules[0] "r": unknown field \'regoin\' (did you mean \'region\'?) at column 24']


def test_labels_models_and_intent_are_checked():
    assert problems(rule("y", "ltv > 1", set_label={"value_matrix": "gold"})) == [
        'rules[0] "y": label \'gold\' is not a value_matrix label (star, cash_cow, question_mark, dog)']
    assert problems(rule("y", "ltv > 1", set_label={"value_matrix": "Star"})) == [
        'rules[0] "y": label \'Star\' is not a value_matrix label (star, cash_cow, question_mark, dog);'
        ' did you mean \'star\'?']
    assert problems(rule("y", "ltv > 1", set_label={"value_matrx": "star"})) == [
        'rules[0] "y": set_label: unknown model \'value_matrx\' (did you mean \'value_matrix\'? models: value_matrix,'
        ' sabc)']
    assert problems(rule("y", "ltv > 1", raise_intent="hihg")) == [
        'rules[0] "y": raise_intent \'hihg\' is not one of low, medium, high; did you mean \'high\'?']
    assert problems(rule("y", "ltv > 1", raise_intent="none"))[0].startswith('rules[0] "y": raise_intent \'none\'')
    assert problems(rule("y", "ltv > 1")) == [
        'rules[0] "y": the rule does nothing (then: needs set_label, add_tags or raise_intent)']
    assert problems(rule("y", "ltv > 1", add_tags=[" "])) == ['rules[0] "y": add_tags: a tag is empty']


def test_many_rules_report_every_problem_at_once():
    params = RulesParams(rules=[
        rule("fine", "ltv > 1", add_tags=["t"]),
        rule("field", "ltvv > 1", add_tags=["t"]),
        rule("syntax", "ltv = 1", add_tags=["t"]),
        rule("label and field", "regin == 'x'", set_label={"sabc": "Z"}),
        rule("fine", "true", add_tags=["t"]),
        rule("evil", "__import__('os')", add_tags=["t"]),
    ])
    with pytest.raises(RuleError) as caught:
        compile_rules(params, FIELDS, LABELS)
    found = caught.value.problems
    assert [line.split(":")[0] for line in found] == [
        'rules[1] "field"', 'rules[2] "syntax"', 'rules[3] "label and field"', 'rules[3] "label and field"',
        'rules[4] "fine"', 'rules[5] "evil"']
    assert "another rule has the same name (rules[0])" in found[4]
    assert str(caught.value) == "\n".join(found)
    assert caught.value.rule_name == "field" and "ltvv" in caught.value.message
    assert check_rules(params, FIELDS, LABELS) == found
    assert isinstance(caught.value, ValueError)  # so a pydantic validator can raise it


def test_config_shape_is_strict():
    with pytest.raises(ValidationError):
        RuleAction(set_lable={"value_matrix": "star"})
    with pytest.raises(ValidationError):
        BusinessRule(name="r", when="ltv > 1", then={"add_tags": ["t"]}, enbled=False)
    parsed = RulesParams.model_validate({"rules": [
        {"name": "大客户", "when": 'ltv > 1_000_000 and industry == "高端制造"',
         "then": {"set_label": {"value_matrix": "star"}, "add_tags": ["重点"], "raise_intent": "high"}}]})
    assert compile_rules(parsed, FIELDS, LABELS).rules[0].fields == {"ltv", "industry"}


def test_bad_field_declarations_are_programming_errors():
    with pytest.raises(ValueError, match="expected one of"):
        compile_rules(RulesParams(), {"ltv": "float"}, LABELS)


def test_multi_line_conditions_from_yaml(features, labels):
    rules = compiled(rule("r", "ltv > 1000000\n  and industry == '高端制造'\n", add_tags=["t"]))
    assert apply_rules(rules, features, labels).matched["r"].tolist() == [True, False, False, False, False, False]


def test_infer_fields(features):
    assert infer_fields(features) == {"ltv": "number", "growth": "number", "employees": "number",
                                      "industry": "text", "region": "text", "is_listed": "bool",
                                      "created_at": "date"}


# --------------------------------------------------------------------------- property: vectorised == row by row
# Random safe expressions, evaluated by the engine on whole columns and by a plain Python
# reference row by row (three-valued: None is unknown). hypothesis is not in the venv, so
# a seeded generator draws the cases.

NUMBERS = [-2, -1, 0, 0.5, 1, 2, 3]
TEXTS = ["高端制造", "新能源", "零售", "a", "ab", "b"]
DATES = ["2023-01-01", "2024-01-01", "2024-06-30", "2025-01-01"]
PROPERTY_FIELDS = {"n1": "number", "n2": "number", "n3": "number", "t1": "text", "t2": "text", "b1": "bool",
                   "d1": "date"}
OPS = {"==": operator.eq, "!=": operator.ne, "<": operator.lt, "<=": operator.le, ">": operator.gt,
       ">=": operator.ge}


def _random_frame(rng: random.Random, size: int) -> pd.DataFrame:
    def pick(values, missing):
        return [None if rng.random() < 0.2 else rng.choice(values) for _ in range(size)] if missing else \
            [rng.choice(values) for _ in range(size)]
    return pd.DataFrame({
        "n1": pd.array(pick(NUMBERS, True), dtype="Float64"),
        "n2": np.array([np.nan if value is None else value for value in pick(NUMBERS, True)], dtype=float),
        "n3": np.array(pick([-1, 0, 1, 2], False), dtype="int64"),
        "t1": pd.array(pick(TEXTS, True), dtype="str"),
        "t2": np.array(pick(TEXTS, True), dtype=object),
        "b1": pd.array(pick([True, False], True), dtype="boolean"),
        "d1": pd.to_datetime(pick(DATES, True)),
    }, index=pd.Index([f"c{i}" for i in range(size)], name="customer_id"))


def _plain(value):
    if pd.isna(value):
        return None
    return value.item() if isinstance(value, np.generic) else value


def _rows(frame: pd.DataFrame) -> list[dict]:
    """The frame as plain Python values per row (None where missing)."""
    return [{name: _plain(frame[name].iloc[row]) for name in frame.columns} for row in range(len(frame))]


def _row_value(rows: list[dict], name: str, row: int):
    return rows[row][name]


def _literal(rng: random.Random, kind: str) -> tuple[str, object]:
    if kind == "number":
        value = rng.choice(NUMBERS)
        return repr(value), value
    if kind == "text":
        value = rng.choice(TEXTS)
        return f'"{value}"', value
    if kind == "bool":
        value = rng.choice([True, False])
        return rng.choice(["true", "True"]) if value else rng.choice(["false", "False"]), value
    value = rng.choice(DATES)
    return f'"{value}"', pd.Timestamp(value)


def _fields_of(kind: str) -> list[str]:
    return [name for name, field_kind in PROPERTY_FIELDS.items() if field_kind == kind]


def _and(values):
    if any(value is False for value in values):
        return False
    return True if all(value is True for value in values) else None


def _or(values):
    if any(value is True for value in values):
        return True
    return False if all(value is False for value in values) else None


def _atom(rng: random.Random):
    """(text, evaluate(frame, row) -> True/False/None)."""
    kind = rng.choice(["number", "number", "text", "bool", "date"])
    name = rng.choice(_fields_of(kind))
    ordered = kind in ("number", "date")
    ops = list(OPS) if ordered else ["==", "!="]
    choice = rng.randrange(8)

    def compare(op, left, right):
        return None if left is None or right is None else bool(OPS[op](left, right))

    if choice == 0 and ordered:  # chain
        (low_text, low), (high_text, high) = _literal(rng, kind), _literal(rng, kind)
        op1, op2 = rng.choice(["<", "<="]), rng.choice(["<", "<="])
        return (f"{low_text} {op1} {name} {op2} {high_text}",
                lambda frame, row: _and([compare(op1, low, _row_value(frame, name, row)),
                                         compare(op2, _row_value(frame, name, row), high)]))
    if choice == 1:  # membership
        values = [_literal(rng, kind) for _ in range(rng.randrange(0, 4))]
        negate = rng.random() < 0.5
        text = f"{name} {'not in' if negate else 'in'} [{', '.join(item[0] for item in values)}]"

        def member(frame, row):
            value = _row_value(frame, name, row)
            return None if value is None else (value in [item[1] for item in values]) != negate
        return text, member
    if choice == 2 and kind == "text":
        helper, (literal_text, literal) = rng.choice(["contains", "startswith", "endswith"]), _literal(rng, "text")
        literal_text, literal = rng.choice([(literal_text, literal), ('"a"', "a"), ('"制造"', "制造")])
        method = {"contains": lambda value: literal in value, "startswith": lambda value: value.startswith(literal),
                  "endswith": lambda value: value.endswith(literal)}[helper]
        return (f"{helper}({name}, {literal_text})",
                lambda frame, row: None if _row_value(frame, name, row) is None else
                method(_row_value(frame, name, row)))
    if choice == 3:
        return f"missing({name})", lambda frame, row: _row_value(frame, name, row) is None
    if choice == 4 and kind == "bool":
        return name, lambda frame, row: _row_value(frame, name, row)
    if choice == 5:  # two fields of one type
        other = rng.choice(_fields_of(kind))
        op = rng.choice(ops)
        return (f"{name} {op} {other}",
                lambda frame, row: compare(op, _row_value(frame, name, row), _row_value(frame, other, row)))
    if choice == 6 and kind == "number":  # unary minus on a field
        op, (literal_text, literal) = rng.choice(ops), _literal(rng, kind)
        return (f"-{name} {op} {literal_text}",
                lambda frame, row: compare(op, None if _row_value(frame, name, row) is None else
                                           -_row_value(frame, name, row), literal))
    if choice == 7:
        value = rng.choice([True, False])
        return ("true" if value else "false"), lambda frame, row: value
    op, (literal_text, literal) = rng.choice(ops), _literal(rng, kind)
    if rng.random() < 0.5:
        return (f"{name} {op} {literal_text}",
                lambda frame, row: compare(op, _row_value(frame, name, row), literal))
    return (f"{literal_text} {op} {name}",
            lambda frame, row: compare(op, literal, _row_value(frame, name, row)))


def _expression(rng: random.Random, depth: int):
    if depth == 0 or rng.random() < 0.3:
        return _atom(rng)
    shape = rng.choice(["and", "or", "not"])
    if shape == "not":
        text, evaluate = _expression(rng, depth - 1)
        return f"not ({text})", lambda frame, row: (lambda value: None if value is None else not value)(
            evaluate(frame, row))
    parts = [_expression(rng, depth - 1) for _ in range(rng.randrange(2, 4))]
    combine = _and if shape == "and" else _or
    return (f" {shape} ".join(f"({text})" for text, _ in parts),
            lambda frame, row: combine([evaluate(frame, row) for _, evaluate in parts]))


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_random_expressions_match_a_row_by_row_evaluation(seed):
    rng = random.Random(seed)
    frame = _random_frame(rng, 40)
    cases = [_expression(rng, 3) for _ in range(150)]
    params = RulesParams(rules=[rule(f"r{i}", text, add_tags=[f"t{i % 7}"]) for i, (text, _) in enumerate(cases)])
    engine = compile_rules(params, PROPERTY_FIELDS, {})
    labels = pd.DataFrame(index=frame.index)
    outcome = apply_rules(engine, frame, labels)
    rows = _rows(frame)
    expected = {i: [evaluate(rows, row) is True for row in range(len(rows))] for i, (_, evaluate) in enumerate(cases)}
    for i, (text, _) in enumerate(cases):
        assert outcome.matched[f"r{i}"].tolist() == expected[i], text
    # tags: the union, in rule order, of the tags of the rules that fired
    for row, customer in enumerate(frame.index):
        wanted: list[str] = []
        for i in range(len(cases)):
            if expected[i][row] and f"t{i % 7}" not in wanted:
                wanted.append(f"t{i % 7}")
        assert outcome.tags[customer] == wanted


def test_nothing_from_config_reaches_eval(monkeypatch):
    """The checked tree is interpreted by the engine: eval/exec/compile are never called."""
    import builtins

    def refuse(*args, **kwargs):
        raise AssertionError("eval/exec called")

    frame = pd.DataFrame({"ltv": [1.0, 2e6]}, index=pd.Index(["a", "b"]))
    monkeypatch.setattr(builtins, "eval", refuse)
    monkeypatch.setattr(builtins, "exec", refuse)
    rules = compiled(rule("r", "ltv > 1e6 and not missing(ltv)", add_tags=["t"]), fields={"ltv": "number"})
    assert apply_rules(rules, frame, pd.DataFrame(index=frame.index)).matched["r"].tolist() == [False, True]
