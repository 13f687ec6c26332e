"""The value matrix (价值矩阵 / 四象限): the primary tier.

X = current value, Y = potential + strategic value, each a 0–100 score that is the
weighted mean of component scores (weights in config, normalised by their sum):

current value components
  revenue              multi-year revenue: the weighted sum of the last 12 months, 12–24
                       and 24–36 (weights `scoring.revenue_years`), so one big year does
                       not decide the tier
  gross_margin_12m, contract_value (36-month revenue)
      these three: percentile among all customers: the share of customers with a
      strictly lower value, ×100. Ties score alike, customers without revenue score 0.
  margin_rate          percentile among customers with revenue in the last 12 months
  repurchase_upsell    share of 12-month revenue from renewals and upsells, ×100

potential + strategic components
  industry_outlook     table in config (0–1) ×100; unlisted industries get the default
  expansion_plan       table in config (0–1) ×100; another plan gets `expansion_plan_other`,
                       none 0
  cross_sell_room      share of the module catalogue the customer does not own yet, ×100
  digital_maturity     (maturity − 1) / 4 ×100; unknown → `digital_maturity_unknown`
  growth               50 + 50 × (revenue_12m / revenue_12_24m − 1), clipped to 0–100;
                       revenue only in the last 12 months → 80 (reason value "new"),
                       no revenue in either → 50
  company_size         percentile of employees; unknown → 0
  strategic            points per flag (benchmark, listed, partner), capped at 100

Tier: high X and high Y → star, high X only → cash_cow, high Y only → question_mark,
neither → dog, where "high" means score >= the boundary in config.

Reasons: per axis, the two components that weigh most in the direction of the result
(for a high axis the largest weight × score, for a low one the largest
weight × (100 − score)), with the raw value and percentile behind each.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from scoring.deferred import Deferred, reasons_builder
from scoring.features import modules_owned_count
from scoring.params import ValueMatrixParams

TIERS = ("star", "cash_cow", "question_mark", "dog")
CURRENT_COMPONENTS = ("revenue", "gross_margin_12m", "contract_value", "repurchase_upsell", "margin_rate")
POTENTIAL_COMPONENTS = ("industry_outlook", "expansion_plan", "cross_sell_room", "digital_maturity", "growth",
                        "company_size", "strategic")
REASONS_PER_AXIS = 2


def percentile_below(values: pd.Series, among: pd.Series | None = None) -> pd.Series:
    """Share (0–100) of the population with a strictly lower value. Deterministic for
    ties (equal values score alike) and independent of row order. Missing → NaN.
    `among` restricts the population (a boolean mask); others get NaN."""
    numbers = values.to_numpy(dtype=float)
    scored = ~np.isnan(numbers)
    if among is not None:
        if not among.index.equals(values.index):
            among = among.reindex(values.index, fill_value=False)
        scored &= among.to_numpy(dtype=bool)
    population = numbers[scored]
    result = np.full(len(numbers), np.nan)
    if len(population):
        # One sort: in sorted order, a value's count of lower values is where its run of
        # equal values starts.
        order = np.argsort(population, kind="stable")
        ordered = population[order]
        starts = np.flatnonzero(np.concatenate(([True], ordered[1:] != ordered[:-1])))
        run_start = np.repeat(starts, np.diff(np.append(starts, len(ordered))))
        below = np.empty(len(population))
        below[order] = run_start
        result[scored] = below / len(population) * 100.0
    return pd.Series(result, index=values.index)


def population_percentile(features: pd.DataFrame, column: str, reference=None, among: pd.Series | None = None):
    """Percentile of a feature among this population, or against a stored reference
    (scoring.reference.PopulationReference) when rescoring a few customers."""
    if reference is None:
        return percentile_below(features[column], among)
    values = features[column] if among is None else features[column].where(among)
    return reference.percentile(column, values)


def _component_scores(features: pd.DataFrame, params: ValueMatrixParams,
                      reference=None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(scores 0–100, percentiles shown in reasons) per component."""
    scores = pd.DataFrame(index=features.index)
    percentiles = pd.DataFrame(index=features.index)
    for component, column in (("revenue", "weighted_revenue"), ("gross_margin_12m", "gross_margin_12m"),
                              ("contract_value", "contract_value")):
        percentiles[component] = population_percentile(features, column, reference)
        scores[component] = percentiles[component]
    with_revenue = features["revenue_12m"] > 0
    percentiles["margin_rate"] = population_percentile(features, "margin_rate", reference, with_revenue)
    scores["margin_rate"] = percentiles["margin_rate"].fillna(0.0)
    scores["repurchase_upsell"] = features["repurchase_upsell"] * 100.0

    outlook = features["industry"].map(params.industry_outlook).astype(float)
    scores["industry_outlook"] = outlook.fillna(params.industry_outlook_default) * 100.0
    plan = features["expansion_plan"].fillna("").astype(str).str.strip().str.lower()
    plan_table = {key.lower(): value for key, value in params.expansion_plan.items()}
    plan_score = plan.map(plan_table).astype(float)
    plan_score = plan_score.where(plan_score.notna(), np.where(plan == "", 0.0, params.expansion_plan_other))
    scores["expansion_plan"] = plan_score * 100.0
    catalogue = tuple(m.lower() for m in params.module_catalogue)
    owned = modules_owned_count(features["modules_owned"].str.lower(), catalogue)
    scores["cross_sell_room"] = (1 - owned / len(catalogue)) * 100.0
    maturity = features["digital_maturity"]
    scores["digital_maturity"] = ((maturity - 1) / 4 * 100.0).fillna(params.digital_maturity_unknown)
    growth = features["growth"]
    growth_score = (50 + 50 * growth).clip(0, 100)
    only_recent = growth.isna() & (features["revenue_12m"] > 0)
    scores["growth"] = growth_score.where(growth.notna(), np.where(only_recent, 80.0, 50.0))
    percentiles["company_size"] = population_percentile(features, "employees", reference)
    scores["company_size"] = percentiles["company_size"].fillna(0.0)
    points = params.strategic_points
    strategic = (features["is_benchmark"] * points.is_benchmark + features["is_listed"] * points.is_listed
                 + features["is_partner"] * points.is_partner)
    scores["strategic"] = strategic.astype(float).clip(0, 100)
    return scores, percentiles


def _weighted(scores: pd.DataFrame, weights: dict[str, float]) -> pd.Series:
    total = sum(weights.values())
    matrix = scores[list(weights)].to_numpy(dtype=float)
    vector = np.array([weights[name] for name in weights], dtype=float)
    return pd.Series(matrix @ vector / total, index=scores.index)


def _top_components(scores: pd.DataFrame, weights: dict[str, float], high: np.ndarray,
                    boundary: float | None = None) -> np.ndarray:
    """Per row, the indices (into `weights`) of the components behind the axis result: the
    most weight times distance on the result's side of the `boundary`, so that a high axis
    is never explained by a component below it (nor a low one by one above it); -1 for a
    slot no such component fills (the first slot always holds the strongest). Without a
    boundary (reasons stored before it was kept), distance from 0 or 100."""
    names = list(weights)
    matrix = scores[names].to_numpy(dtype=float)
    vector = np.array([weights[n] for n in names], dtype=float)
    if boundary is None:
        pull = np.where(high[:, None], matrix * vector, (100.0 - matrix) * vector)
        usable = np.ones(matrix.shape, dtype=bool)
    else:
        pull = np.where(high[:, None], matrix - boundary, boundary - matrix) * vector
        usable = pull >= 0
    # A zero-weight component never explains anything.
    usable &= vector[None, :] > 0
    pull = np.where(vector[None, :] > 0, pull, -np.inf)
    # Stable ordering: ties fall back to the configured order of components.
    order = np.argsort(-pull, axis=1, kind="stable")[:, :REASONS_PER_AXIS]
    chosen = np.take_along_axis(usable, order, axis=1)
    chosen[:, 0] = True
    return np.where(chosen, order, -1)


_RAW_VALUE = {
    "revenue": "weighted_revenue",
    "gross_margin_12m": "gross_margin_12m",
    "contract_value": "contract_value",
    "repurchase_upsell": "repurchase_upsell",
    "margin_rate": "margin_rate",
    "industry_outlook": "industry",
    "expansion_plan": "expansion_plan",
    "cross_sell_room": "modules_owned",
    "digital_maturity": "digital_maturity",
    "growth": "growth",
    "company_size": "employees",
    "strategic": None,
}


def score_value_matrix(features: pd.DataFrame, params: ValueMatrixParams, reference=None,
                       deferred: dict | None = None) -> pd.DataFrame:
    """One row per customer: tier, current_value, potential_value, the component
    scores (`c_<name>`), and `reasons` (a list of dicts, most important first).
    With `deferred` (a dict), `reasons` goes there as a scoring.deferred.Deferred
    instead of into the frame."""
    scores, percentiles = _component_scores(features, params, reference)
    current_weights = params.current_weights.model_dump()
    potential_weights = params.potential_weights.model_dump()
    current = _weighted(scores, current_weights).round(2)
    potential = _weighted(scores, potential_weights).round(2)
    high_x = (current >= params.boundaries.current_value).to_numpy()
    high_y = (potential >= params.boundaries.potential_value).to_numpy()
    tier = tier_of(high_x, high_y)

    result = pd.DataFrame({"tier": tier, "current_value": current, "potential_value": potential},
                          index=features.index)
    for name in scores.columns:
        result[f"c_{name}"] = scores[name].round(2)
    boundaries = [params.boundaries.current_value, params.boundaries.potential_value]
    if deferred is None:
        result["reasons"] = _reasons(features, scores, percentiles, current_weights, potential_weights, high_x,
                                     high_y, boundaries)
    else:
        deferred["reasons"] = Deferred(
            "value_matrix", {"features": features[_REASON_INPUTS], "scores": scores, "percentiles": percentiles,
                             "high_x": high_x, "high_y": high_y},
            len(features), {"current_weights": current_weights, "potential_weights": potential_weights,
                            "boundaries": boundaries})
    return result


@reasons_builder("value_matrix")
def _deferred_reasons(inputs: dict, settings: dict) -> list[list[dict]]:
    return _reasons(inputs["features"], inputs["scores"], inputs["percentiles"], settings["current_weights"],
                    settings["potential_weights"], inputs["high_x"], inputs["high_y"], settings.get("boundaries"))


# The feature columns the reasons show.
_REASON_INPUTS = sorted({"revenue_12m", "is_benchmark", "is_listed", "is_partner",
                         *(column for column in _RAW_VALUE.values() if column)})


def _plain_list(values) -> list:
    """A column as a JSON-ready list: Python scalars, NaN → None, floats to 6 places (a
    share shown as a whole percent is then rounded once, not twice)."""
    array = np.asarray(values)
    if array.dtype.kind == "f":
        return [None if v != v else v for v in np.round(array, 6).tolist()]
    if array.dtype.kind == "b":
        return array.tolist()
    return [None if (v is None or (isinstance(v, float) and v != v)) else
            (v.item() if isinstance(v, np.generic) else v) for v in array.tolist()]


def _raw_values(features: pd.DataFrame, name: str, rows: np.ndarray, revenue: np.ndarray) -> list:
    if name == "strategic":
        flags = features[["is_benchmark", "is_listed", "is_partner"]].to_numpy()[rows]
        return [[flag for flag, on in zip(("is_benchmark", "is_listed", "is_partner"), row) if on] for row in flags]
    values = _plain_list(features[_RAW_VALUE[name]].to_numpy()[rows])
    if name == "growth":
        # Revenue this year and none the year before: "new" rather than "unknown".
        new = (revenue[rows] > 0).tolist()
        values = ["new" if value is None and is_new else value for value, is_new in zip(values, new)]
    elif name == "repurchase_upsell":
        # No revenue: no share of it to speak of (the score counts it as 0).
        values = [value if has_revenue else None for value, has_revenue in zip(values, (revenue[rows] > 0).tolist())]
    return values


def _reasons(features, scores, percentiles, current_weights, potential_weights, high_x, high_y,
             boundaries: list[float] | None = None) -> list[list[dict]]:
    """Per customer, REASONS_PER_AXIS entries per axis. Built column by column (one pass per
    component and slot), not row by row: a full run explains a million customers."""
    count = len(features)
    revenue = features["revenue_12m"].to_numpy()
    slots: list[list[dict | None]] = []
    boundary_x, boundary_y = boundaries or (None, None)  # None: reasons stored before boundaries were kept
    for axis, weights, high, boundary in (("current", current_weights, high_x, boundary_x),
                                          ("potential", potential_weights, high_y, boundary_y)):
        names = list(weights)
        top = _top_components(scores, weights, high, boundary)
        direction = np.where(high, "high", "low").tolist()
        for slot in range(top.shape[1]):
            entries: list[dict | None] = [None] * count
            for position, name in enumerate(names):
                rows = np.flatnonzero(top[:, slot] == position)
                if not len(rows):
                    continue
                score_list = _plain_list(scores[name].to_numpy()[rows])
                value_list = _raw_values(features, name, rows, revenue)
                percentile_list = (_plain_list(percentiles[name].to_numpy()[rows])
                                   if name in percentiles else None)
                revenue_list = _plain_list(revenue[rows]) if name == "revenue" else None
                for i, row in enumerate(rows.tolist()):
                    entry = {"axis": axis, "factor": name, "direction": direction[row], "score": score_list[i],
                             "value": value_list[i]}
                    if revenue_list is not None:
                        entry["revenue_12m"] = revenue_list[i]
                    if percentile_list is not None:
                        entry["percentile"] = percentile_list[i]
                    entries[row] = entry
            slots.append(entries)
    return [[entry for entry in row if entry is not None] for row in zip(*slots)]


def stabilise(raw: pd.DataFrame, previous: pd.DataFrame, params: ValueMatrixParams,
              counts_as_run: bool = True) -> pd.DataFrame:
    """Hysteresis on the tier, an axis at a time. `raw`: tier, current_value,
    potential_value. `previous`: tier, pending_tier, pending_runs from the last run
    (NaN/None when new). Returns tier, pending_tier, pending_runs, held (True where the
    raw tier was held back).

    An axis (current value X, potential value Y) that crossed its boundary by
    `stability.margin` or more moves at once; one that crossed by less keeps its side
    until the raw tier has come out `confirm_runs` runs in a row. A Star whose Y fell far
    and whose X slipped just under the line becomes a Cash Cow now, and a Dog if the next
    run says so too, rather than staying a Star because one axis was borderline. When the
    axes move opposite ways (a Question Mark heading for Cash Cow), a tier between the two
    would be neither (Star or Dog): the move is then all or nothing, at once only when
    every axis that moved is clear.

    `counts_as_run` False (an incremental rescore): clear moves still happen at once,
    but the rescore is not one of the runs a borderline move waits for: a CRM that sends
    every login would otherwise confirm it within minutes."""
    previous = previous.reindex(raw.index)
    before = previous["tier"].to_numpy(dtype=object)
    now = raw["tier"].to_numpy(dtype=object)
    boundaries, margin = params.boundaries, params.stability.margin
    first_time = pd.isna(previous["tier"]).to_numpy()
    pending_before = previous["pending_tier"].to_numpy(dtype=object)
    runs_before = previous["pending_runs"].fillna(0).to_numpy(dtype=int)
    runs = np.where(pending_before == now, runs_before + 1, 1) if counts_as_run else \
        np.where(pending_before == now, runs_before, 0)
    settled = first_time | (runs >= params.stability.confirm_runs)
    axes = []  # per axis: side before, side now, moved clear of the boundary
    for high_tiers, value, boundary in ((("star", "cash_cow"), "current_value", boundaries.current_value),
                                        (("star", "question_mark"), "potential_value", boundaries.potential_value)):
        high_before, high_now = np.isin(before, high_tiers), np.isin(now, high_tiers)
        clear = np.abs(raw[value].to_numpy() - boundary) >= margin
        axes.append((high_before, high_now, (high_now != high_before) & clear))
    (x_before, x_now, x_clear), (y_before, y_now, y_clear) = axes
    opposite = (x_now != x_before) & (y_now != y_before) & (x_now != y_now)
    all_clear = (x_clear | (x_now == x_before)) & (y_clear | (y_now == y_before))
    x_move = settled | np.where(opposite, all_clear, x_clear)
    y_move = settled | np.where(opposite, all_clear, y_clear)
    tier = tier_of(np.where(x_move, x_now, x_before), np.where(y_move, y_now, y_before))
    waiting = tier != now
    return pd.DataFrame({"tier": tier, "pending_tier": np.where(waiting, now, None),
                         "pending_runs": np.where(waiting, runs, 0), "held": waiting}, index=raw.index)


def tier_of(high_x: np.ndarray, high_y: np.ndarray) -> np.ndarray:
    """The quadrant of each customer's sides of the two boundaries."""
    return np.select([high_x & high_y, high_x, high_y], ["star", "cash_cow", "question_mark"], "dog").astype(object)


def add_reference(reference, features: pd.DataFrame) -> None:
    """Record this population's yardsticks (see population_percentile)."""
    for column in ("weighted_revenue", "gross_margin_12m", "contract_value", "employees"):
        reference.add(column, features[column])
    reference.add("margin_rate", features["margin_rate"].where(features["revenue_12m"] > 0))
