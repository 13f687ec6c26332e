"""Lead intent from behaviour rules over activities (seed 001).

A rule fires when, within its window, a customer has at least the stated number of
activities of each listed kind (optionally only those whose detail contains a text),
e.g. "the MES page more than 3 times in 7 days and a download":

    - name: smart_manufacturing
      within_days: 7
      all:
        - {kind: page_view, detail_contains: /products/mes, at_least: 4}
        - {kind: download, at_least: 1}
      intent: high
      tag: 智能制造

The database counts the activities per rule condition (storage.scores.load_intent_counts,
columns `intent_<rule>_<condition>`); this module only decides. The highest intent of the
rules that fire wins; score: high 90, medium 60, low 30, none 0.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, field_validator

INTENT_LEVELS = ("none", "low", "medium", "high")
INTENT_SCORES = {"none": 0, "low": 30, "medium": 60, "high": 90}
ACTIVITY_KINDS = ("login", "visit", "page_view", "download", "event", "call", "meeting", "complaint")


class _Params(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class IntentCondition(_Params):
    kind: str
    detail_contains: str | None = None
    at_least: int = Field(1, ge=1)

    @field_validator("kind")
    @classmethod
    def _known_kind(cls, kind: str) -> str:
        if kind not in ACTIVITY_KINDS:
            raise ValueError(f"unknown activity kind {kind!r} (one of {', '.join(ACTIVITY_KINDS)})")
        return kind


class RuleTitle(_Params):
    zh: str = Field(min_length=1, max_length=40)
    en: str = Field(min_length=1, max_length=60)


class IntentRule(_Params):
    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_]+$")
    within_days: int = Field(7, ge=1, le=365)
    all: list[IntentCondition] = Field(min_length=1)
    intent: str = "high"
    tag: str | None = None
    # What reasons call the rule; without one, its name.
    title: RuleTitle | None = None

    @field_validator("intent")
    @classmethod
    def _known_level(cls, level: str) -> str:
        if level not in INTENT_LEVELS[1:]:
            raise ValueError("must be one of low, medium, high")
        return level


def _default_rules() -> list[IntentRule]:
    return [
        IntentRule(name="smart_manufacturing", within_days=7,
                   all=[IntentCondition(kind="page_view", detail_contains="/products/mes", at_least=4),
                        IntentCondition(kind="download", at_least=1)], intent="high", tag="智能制造",
                   title=RuleTitle(zh="关注智能制造", en="looking into smart manufacturing")),
        IntentRule(name="engaged_evaluator", within_days=14,
                   all=[IntentCondition(kind="download", at_least=2), IntentCondition(kind="event", at_least=1)],
                   intent="medium", tag="活跃评估", title=RuleTitle(zh="积极评估", en="evaluating actively")),
        IntentRule(name="browsing", within_days=30, all=[IntentCondition(kind="page_view", at_least=5)],
                   intent="low", title=RuleTitle(zh="频繁浏览产品", en="browsing products often")),
    ]


class IntentParams(_Params):
    enabled: bool = True
    rules: list[IntentRule] = Field(default_factory=_default_rules)

    @field_validator("rules")
    @classmethod
    def _unique_names(cls, rules: list[IntentRule]) -> list[IntentRule]:
        names = [rule.name for rule in rules]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ValueError(f"rule names must be unique: {', '.join(duplicates)}")
        return rules


def count_column(rule_index: int, condition_index: int) -> str:
    return f"intent_{rule_index}_{condition_index}"


def score_intent(counts: pd.DataFrame, index: pd.Index, params: IntentParams) -> pd.DataFrame:
    """`counts`: customer_id-indexed `intent_<r>_<c>` columns (customers without activity
    may be absent). Returns intent_label, intent_score, intent_tags, intent_reasons."""
    counts = counts.reindex(index).fillna(0)
    level = np.zeros(len(index), dtype=int)
    fired: list[list[dict]] = [[] for _ in range(len(index))]
    tags: list[list[str]] = [[] for _ in range(len(index))]
    for r, rule in enumerate(params.rules):
        hits = np.ones(len(index), dtype=bool)
        columns = []
        for c, condition in enumerate(rule.all):
            column = count_column(r, c)
            values = counts[column].to_numpy() if column in counts else np.zeros(len(index))
            columns.append(values)
            hits &= values >= condition.at_least
        rank = INTENT_LEVELS.index(rule.intent)
        names = [cond.kind + (f" {cond.detail_contains}" if cond.detail_contains else "") for cond in rule.all]
        rows = np.flatnonzero(hits)
        level[rows] = np.maximum(level[rows], rank)
        # Python values only for the customers the rule fired for (a few percent).
        counted = [values[rows].astype(np.int64).tolist() for values in columns]
        title = rule.title.model_dump() if rule.title is not None else None
        for position, row in enumerate(rows.tolist()):
            detail = {name: values[position] for name, values in zip(names, counted)}
            reason = {"factor": "intent_rule", "value": rule.name, "intent": rule.intent,
                      "within_days": rule.within_days, "detail": detail}
            if title is not None:
                reason["title"] = title
            fired[row].append(reason)
            if rule.tag and rule.tag not in tags[row]:
                tags[row].append(rule.tag)
    labels = np.array(INTENT_LEVELS, dtype=object)[level]
    for reasons in fired:
        if len(reasons) > 1:  # (most customers fire no rule)
            reasons.sort(key=lambda reason: -INTENT_LEVELS.index(reason["intent"]))
    scores = np.array([INTENT_SCORES[label] for label in INTENT_LEVELS])[level]
    return pd.DataFrame({"intent_label": labels, "intent_score": scores,
                         "intent_tags": tags, "intent_reasons": fired}, index=index)
