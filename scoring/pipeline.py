"""Every model in one run: features → labels, scores and reasons per customer.

Order matters where one model feeds another: churn risk feeds the lifecycle stage, the
value matrix's strategic and outlook components feed S/A/B/C, and business rules
(config) see every model's output and may override labels last.
"""

from __future__ import annotations

import dataclasses
from datetime import date

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, model_validator

from scoring.deferred import paused_gc
from scoring.features import window_starts
from scoring.churn import BgNbdParams, ChurnParams, score_churn
from scoring.intent import INTENT_LEVELS, IntentParams, score_intent
from scoring.params import RevenueYears, ValueMatrixParams
from scoring.reference import PopulationReference
from scoring.rfm import RfmParams, RfmReference, score_rfm
from scoring.rules import RulesParams, apply_rules, check_rules, compile_rules
from scoring.segments import (LIFECYCLE_LABELS, PYRAMID_LABELS, SABC_LABELS, LifecycleParams, PyramidParams,
                              SabcParams, score_lifecycle, score_pyramid, score_sabc)
from scoring.value_matrix import TIERS, add_reference, score_value_matrix, stabilise

# Models whose label is stored per customer, in this order in exports.
MODELS = ("value_matrix", "rfm", "sabc", "pyramid", "lifecycle", "churn", "intent")


def reasons_column(model: str) -> str:
    """The column of a scored frame holding a model's reasons."""
    return "reasons" if model == "value_matrix" else f"{model}_reasons"


CHURN_LABELS = ("high", "medium", "low", "none")
MAX_RFM_SEGMENTS = 30

# What a business rule (config `scoring.rules`) may test: feature or model output → type.
RULE_FIELDS: dict[str, str] = {
    **{name: "number" for name in (
        "ltv", "lifetime_revenue", "revenue_12m", "revenue_12_24m", "revenue_24_36m", "weighted_revenue",
        "gross_margin_12m", "margin_rate", "repurchase_upsell", "contract_value", "growth", "employees",
        "digital_maturity", "orders_12m", "lifetime_orders", "purchase_days", "days_since_last_order", "act_30d",
        "days_since_first_order", "revenue_rising_months", "revenue_m1", "revenue_m2", "revenue_m3",
        "act_baseline_30d", "complaints_90d", "complaints_prev_90d", "current_value", "potential_value",
        "churn_score", "rfm_r", "rfm_f", "rfm_m", "rfm_score", "sabc_influence", "sabc_volume", "pyramid_score")},
    **{name: "text" for name in ("industry", "region", "customer_type", "expansion_plan", "modules_owned",
                                 "owner_userid", "name", "customer_id")},
    **{name: "bool" for name in ("is_listed", "is_benchmark", "is_partner")},
    **{name: "date" for name in ("first_order_date", "last_order_date", "created_at")},
}


class ScoringParams(BaseModel):
    """The `scoring:` section of config.yaml."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    revenue_years: RevenueYears = RevenueYears()
    value_matrix: ValueMatrixParams = ValueMatrixParams()
    rfm: RfmParams = RfmParams()
    sabc: SabcParams = SabcParams()
    pyramid: PyramidParams = PyramidParams()
    churn: ChurnParams = ChurnParams()
    lifecycle: LifecycleParams = LifecycleParams()
    intent: IntentParams = IntentParams()
    rules: RulesParams = RulesParams()

    def model_labels(self) -> dict[str, tuple[str, ...]]:
        """Every label each model can give: what a rule may set."""
        return {"value_matrix": TIERS, "rfm": tuple(s.name for s in self.rfm.segments) + ("no_purchase",),
                "sabc": SABC_LABELS, "pyramid": PYRAMID_LABELS, "lifecycle": LIFECYCLE_LABELS,
                "churn": CHURN_LABELS}

    def coded_labels(self) -> dict[str, list[str]]:
        """The labels of every enabled model but the value matrix, in a fixed order: snapshot
        rows keep them as codes (storage.scores.label_codes) so that lists can filter by them."""
        labels = {**self.model_labels(), "intent": INTENT_LEVELS}
        return {model: list(labels[model]) for model in MODELS[1:] if getattr(self, model).enabled}

    @model_validator(mode="after")
    def _rules_are_sound(self) -> "ScoringParams":
        problems = check_rules(self.rules, RULE_FIELDS, self.model_labels())
        for index, rule in enumerate(self.rules.rules):
            for model in (rule.then.set_label or {}) if rule.enabled else ():
                if model in MODELS[1:] and not getattr(self, model).enabled:
                    problems.append(f'rules[{index}] "{rule.name}": set_label: {model} is switched off '
                                    f'(scoring.{model}.enabled: false)')
        if problems:
            raise ValueError("; ".join(problems))
        # Lists code a label in 5 bits (storage.scores.CODE_BITS): 31 of them, no_purchase included.
        if len(self.rfm.segments) > MAX_RFM_SEGMENTS:
            raise ValueError(f"rfm.segments: at most {MAX_RFM_SEGMENTS} segments, got {len(self.rfm.segments)}")
        return self


def with_weighted_revenue(features: pd.DataFrame, years: RevenueYears, as_of: date) -> pd.DataFrame:
    """The multi-year revenue: each year's revenue by its weight, over the years the
    customer has been buying (first order before the year began). A customer won eight
    months ago is judged on its one year, not on two more years of zeros before it."""
    starts = window_starts(as_of)
    first = pd.to_datetime(features["first_order_date"])
    unknown = first.isna()  # no order: every year is 0 anyway

    def bought_by(start) -> pd.Series:
        return unknown | (first < pd.Timestamp(start))

    counts = {"revenue_12m": pd.Series(True, index=features.index),
              "revenue_12_24m": bought_by(starts["m12"]) | (features["revenue_12_24m"] != 0),
              "revenue_24_36m": bought_by(starts["m24"]) | (features["revenue_24_36m"] != 0)}
    weights = {"revenue_12m": years.last_12m, "revenue_12_24m": years.months_12_24,
               "revenue_24_36m": years.months_24_36}
    total = sum(counts[column] * weight for column, weight in weights.items())
    weighted = sum(features[column] * counts[column] * weight for column, weight in weights.items())
    # A year of weight 0 alone (last_12m: 0) leaves nothing to divide by: fall back to all years.
    everything = sum(features[column] * weight for column, weight in weights.items()) / sum(weights.values())
    return features.assign(weighted_revenue=(weighted / total.where(total > 0)).fillna(everything))


def score_customers(features: pd.DataFrame, params: ScoringParams, as_of: date | None = None,
                    previous: pd.DataFrame | None = None, intent_counts: pd.DataFrame | None = None,
                    reference: PopulationReference | None = None, deferred: dict | None = None) -> pd.DataFrame:
    """One row per customer, indexed like `features`: `tier` (the value matrix after
    hysteresis), `tier_raw`, current/potential value, component scores `c_*`, `reasons`
    (value matrix), and `<model>_label`, `<model>_score`, `<model>_reasons` per model.

    Without `reference` the customers are scored against each other (a full run) and the
    population's yardsticks come back in `result.attrs["reference"]`; with one, they are
    scored against that population (an incremental rescore).

    With `deferred` (an empty dict), the reasons columns of the value matrix, RFM, S/A/B/C,
    pyramid, churn and lifecycle are left out of the result and put there instead, as
    scoring.deferred.Deferred columns to be built a chunk of customers at a time: a full
    run's writer does so, and never holds every customer's reasons at once.

    The cyclic garbage collector is paused meanwhile (scoring.deferred.paused_gc): the
    models make millions of small lists and dicts without cycles, and every burst of them
    set off collections that rescan all live containers."""
    with paused_gc():
        return _score_customers(features, params, as_of, previous, intent_counts, reference, deferred)


def _score_customers(features: pd.DataFrame, params: ScoringParams, as_of: date | None,
                     previous: pd.DataFrame | None, intent_counts: pd.DataFrame | None,
                     reference: PopulationReference | None, deferred: dict | None) -> pd.DataFrame:
    as_of = as_of or date.today()
    features = with_weighted_revenue(features, params.revenue_years, as_of)
    built = reference is None
    if built:
        reference = PopulationReference(population=len(features))
        add_reference(reference, features)
    result = score_value_matrix(features, params.value_matrix, None if built else reference, deferred)
    result["tier_raw"] = result["tier"]
    if previous is not None and not previous.empty:
        stable = stabilise(result, previous, params.value_matrix, counts_as_run=built)
        result["tier"] = stable["tier"]
        result["pending_tier"] = stable["pending_tier"]
        result["pending_runs"] = stable["pending_runs"]
    else:
        result["pending_tier"] = None
        result["pending_runs"] = 0
    given = None if built else reference
    if params.rfm.enabled:
        rfm_reference = RfmReference.from_json(reference.rfm) if given is not None and reference.rfm else None
        rfm = score_rfm(features, as_of, params.rfm, rfm_reference, deferred)
        if built and rfm.attrs.get("rfm_reference") is not None:
            reference.rfm = rfm.attrs["rfm_reference"].to_json()
        rfm.attrs.clear()
        result = result.join(rfm)
    if params.sabc.enabled:
        result = result.join(score_sabc(features, params.sabc, result["c_strategic"], result["c_industry_outlook"],
                                        given, deferred))
    if params.pyramid.enabled:
        result = result.join(score_pyramid(features, params.pyramid, given, deferred))
    if params.churn.enabled:
        bgnbd = BgNbdParams(**reference.bgnbd) if given is not None and reference.bgnbd else None
        churn = score_churn(features, as_of, params.churn, bgnbd, deferred,
                            typical_cycle=None if built else reference.churn_typical_cycle)
        if built and churn.attrs.get("bgnbd") is not None:
            reference.bgnbd = dataclasses.asdict(churn.attrs["bgnbd"])
        if built:
            reference.churn_typical_cycle = churn.attrs.get("typical_cycle", float("nan"))
        churn.attrs.clear()
        result = result.join(churn)
    if params.lifecycle.enabled:
        churn_label = result["churn_label"] if "churn_label" in result else None
        result = result.join(score_lifecycle(features, as_of, params.lifecycle, churn_label, deferred))
    if params.intent.enabled:
        counts = intent_counts.set_index("customer_id") if intent_counts is not None and len(intent_counts) else \
            pd.DataFrame(index=features.index)
        result = result.join(score_intent(counts, features.index, params.intent))
    if params.rules.rules:
        result = _apply_business_rules(features, result, params)
    result.attrs["reference"] = reference
    return result


def rule_view(features: pd.DataFrame, result: pd.DataFrame) -> pd.DataFrame:
    """Every RULE_FIELDS column, from the features or the models' output."""
    view = features.assign(ltv=features["lifetime_revenue"], customer_id=features.index.astype(str))
    for column in RULE_FIELDS:
        if column not in view and column in result:
            view[column] = result[column]
    if "churn_score" in result:
        view["churn_score"] = result["churn_score"]
    return view


def _apply_business_rules(features: pd.DataFrame, result: pd.DataFrame, params: ScoringParams) -> pd.DataFrame:
    """Rules see features and model outputs; they may set labels, add tags, raise intent."""
    view = rule_view(features, result)
    models = [m for m in params.model_labels() if m == "value_matrix" or f"{m}_label" in result]
    labels = pd.DataFrame({m: (result["tier"] if m == "value_matrix" else result[f"{m}_label"]) for m in models},
                          index=result.index)
    labels["intent"] = result["intent_label"] if "intent_label" in result else "none"
    outcome = apply_rules(compile_rules(params.rules, RULE_FIELDS, params.model_labels()), view, labels)
    result = result.copy()
    for model in models:
        target = "tier" if model == "value_matrix" else f"{model}_label"
        result[target] = outcome.labels[model]
    if "intent_label" in result:
        result["intent_label"] = outcome.labels["intent"]
        result["intent_score"] = result["intent_label"].map(
            {level: score for level, score in zip(INTENT_LEVELS, (0, 30, 60, 90))})
    tags = outcome.tags
    result["intent_tags"] = [list(dict.fromkeys((base or []) + extra)) for base, extra in
                             zip(result.get("intent_tags", pd.Series([[]] * len(result), index=result.index)),
                                 tags.reindex(result.index))]
    result["rules_reasons"] = outcome.reasons().reindex(result.index)
    # A tier a rule set is not on its way anywhere: no borderline move waits for runs.
    pinning = [rule.name for rule in params.rules.rules
               if rule.enabled and "value_matrix" in (rule.then.set_label or {}) and rule.name in outcome.matched]
    if pinning and "pending_tier" in result:
        pinned = outcome.matched[pinning].any(axis=1).reindex(result.index, fill_value=False).to_numpy()
        result["pending_tier"] = np.where(pinned, None, result["pending_tier"].to_numpy(dtype=object))
        result["pending_runs"] = np.where(pinned, 0, result["pending_runs"].to_numpy())
    return result


def labels_of(result: pd.DataFrame) -> dict[str, np.ndarray]:
    """model → label array, for the models present in a result."""
    labels = {"value_matrix": result["tier"].to_numpy()}
    for model in MODELS[1:]:
        column = f"{model}_label"
        if column in result:
            labels[model] = result[column].to_numpy()
    return labels


__all__ = ["MODELS", "TIERS", "ScoringParams", "score_customers", "labels_of"]
