"""Parameters of the scoring models, validated when the configuration loads.

These are the `scoring:` section of config.yaml. They live beside the models so that
the pure scoring functions take an explicit parameter object (as scikit-learn
estimators do) and the config loader only has to compose them.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, model_validator

Share = Annotated[float, Field(ge=0, le=1)]


class _Strict(BaseModel):
    # A misspelt key must be an error, not a silently ignored setting.
    model_config = ConfigDict(extra="forbid", frozen=True)


class Weights(_Strict):
    """Relative weights: each >= 0, normalised by their sum, so at least one must be > 0."""

    @model_validator(mode="after")
    def _some_weight(self):
        if sum(self.model_dump().values()) <= 0:
            raise ValueError("at least one weight must be > 0")
        return self


class CurrentValueWeights(Weights):
    """Weights of the current-value (X axis) components; normalised by their sum."""

    revenue: float = Field(0.35, ge=0)
    gross_margin_12m: float = Field(0.25, ge=0)
    contract_value: float = Field(0.15, ge=0)
    repurchase_upsell: float = Field(0.15, ge=0)
    margin_rate: float = Field(0.10, ge=0)



class PotentialValueWeights(Weights):
    """Weights of the potential + strategic value (Y axis) components."""

    industry_outlook: float = Field(0.20, ge=0)
    expansion_plan: float = Field(0.15, ge=0)
    cross_sell_room: float = Field(0.10, ge=0)
    digital_maturity: float = Field(0.10, ge=0)
    growth: float = Field(0.20, ge=0)
    company_size: float = Field(0.10, ge=0)
    strategic: float = Field(0.15, ge=0)



class Stability(_Strict):
    """Hysteresis: a customer changes tier at once only when it is past the boundary by
    `margin` points on every axis that changed; otherwise only after the new tier has
    come out `confirm_runs` runs in a row. Borderline customers do not flap."""

    margin: float = Field(3.0, ge=0, le=100)
    confirm_runs: int = Field(2, ge=1, le=30)


class RevenueYears(Weights):
    """Weights of each year's revenue in the multi-year revenue (normalised by the sum of
    the years the customer has been buying in), so that a single big year does not decide
    a tier (seed 004), and a new customer is not held down by years before it bought."""

    last_12m: float = Field(0.6, ge=0)
    months_12_24: float = Field(0.3, ge=0)
    months_24_36: float = Field(0.1, ge=0)



class Boundaries(_Strict):
    """A customer is "high" on an axis when its 0–100 score is >= the boundary."""

    current_value: float = Field(70, ge=0, le=100)
    potential_value: float = Field(50, ge=0, le=100)


class StrategicPoints(_Strict):
    """Points (0–100 in all) for the strategic flags; summed and capped at 100."""

    is_benchmark: float = Field(50, ge=0, le=100)
    is_listed: float = Field(30, ge=0, le=100)
    is_partner: float = Field(20, ge=0, le=100)


DEFAULT_INDUSTRY_OUTLOOK = {
    "高端制造": 0.9,
    "新能源": 0.9,
    "半导体": 0.9,
    "医疗器械": 0.8,
    "汽车零部件": 0.6,
    "电子制造": 0.6,
    "化工": 0.4,
    "食品饮料": 0.4,
    "纺织服装": 0.2,
    "建材": 0.2,
    "物流": 0.5,
    "零售": 0.3,
    "金融": 0.5,
    "教育": 0.4,
    "政府": 0.5,
}

DEFAULT_EXPANSION_PLAN = {
    "ipo": 1.0,
    "financing": 0.8,
    "new_plant": 0.8,
    "overseas": 0.7,
}

DEFAULT_MODULE_CATALOGUE = ("finance", "crm", "mes", "plm", "scm", "hr", "bi", "wms")


class ValueMatrixParams(_Strict):
    """The value matrix (四象限): X = current value, Y = potential + strategic value."""

    current_weights: CurrentValueWeights = CurrentValueWeights()
    potential_weights: PotentialValueWeights = PotentialValueWeights()
    boundaries: Boundaries = Boundaries()
    stability: Stability = Stability()
    # Outlook of each industry, 0 (shrinking) to 1 (policy-backed, fast-growing).
    industry_outlook: dict[str, Share] = Field(default_factory=lambda: dict(DEFAULT_INDUSTRY_OUTLOOK))
    industry_outlook_default: float = Field(0.5, ge=0, le=1)
    # Value of a declared expansion plan, 0 to 1; no plan scores 0.
    expansion_plan: dict[str, Share] = Field(default_factory=lambda: dict(DEFAULT_EXPANSION_PLAN))
    expansion_plan_other: float = Field(0.3, ge=0, le=1)
    # Modules we sell: cross-sell room is the share of these a customer does not own.
    module_catalogue: tuple[str, ...] = Field(DEFAULT_MODULE_CATALOGUE, min_length=1)
    # Score (0–100) used when digital maturity is not known.
    digital_maturity_unknown: float = Field(40, ge=0, le=100)
    strategic_points: StrategicPoints = StrategicPoints()

