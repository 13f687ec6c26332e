"""Text for people, from templates/: tier names, reason phrases, Jinja2 messages.

Chinese first, English too: every function takes `lang` ("zh" or "en").
"""

from __future__ import annotations

import math
import re
import unicodedata
from decimal import ROUND_HALF_UP, Decimal
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml
from jinja2 import Environment, FileSystemLoader, StrictUndefined

TEMPLATES_DIR = Path(__file__).resolve().parent.parent / "templates"


@lru_cache(maxsize=None)
def _yaml(name: str) -> dict[str, Any]:
    return yaml.safe_load((TEMPLATES_DIR / name).read_text(encoding="utf-8"))


# model → label → {"zh", "en"}: names the loaded configuration gives labels (an RFM
# segment's `title`), over templates/tiers.yaml's. Set by bot.config.load_config.
_CONFIGURED_NAMES: dict[str, dict[str, dict[str, str]]] = {}


def use_label_names(names: dict[str, dict[str, dict[str, str]]]) -> None:
    _CONFIGURED_NAMES.clear()
    _CONFIGURED_NAMES.update(names)


def configured_label_names() -> list[dict[str, str]]:
    """Every {zh, en} name the loaded configuration gives a label."""
    return [names for labels in _CONFIGURED_NAMES.values() for names in labels.values()]


def title_forms(name: str) -> set[str]:
    """How a configured name may be typed between 「我的」 and 「客户」 (or "my" and
    "customers"), as the router's normalise leaves it: 「VIP 客户」 → vip, vip 客户."""
    from handlers.registry import normalise

    name = normalise(name)
    return {form for form in (name, name.removesuffix("客户").strip(), name.removesuffix(" customers").strip())
            if form}


def configured_label(word: str, names: dict[str, dict[str, dict[str, str]]] | None = None
                     ) -> tuple[str, str] | None:
    """The (model, label) a name the configuration gave means: 「核心」, 「核心客户」, "core".
    `names`: model → label → {zh, en} to look in instead of the loaded configuration's."""
    from handlers.registry import normalise

    word = normalise(word)
    for model, labels in (_CONFIGURED_NAMES if names is None else names).items():
        for label, titles in labels.items():
            if any(word in title_forms(title) for title in titles.values()):
                return model, label
    return None


def tier_name(tier: str | None, lang: str = "zh", model: str = "value_matrix") -> str:
    """A label's display name, for any model (value_matrix, rfm, sabc, pyramid, …)."""
    if not tier:
        return "—"
    names = _CONFIGURED_NAMES.get(model, {}).get(tier) or _yaml("tiers.yaml").get(model, {}).get(tier)
    return names[lang] if names else tier


def queue_name(queue: str | None, lang: str = "zh") -> str:
    """A ticket queue as people say it: 专家队列 / expert queue."""
    if not queue:
        return "—"
    names = _yaml("tiers.yaml").get("queue", {}).get(queue)
    return names[lang] if names else (f"{queue} 队列" if lang == "zh" else f"{queue} queue")


def score_points(value: float | None) -> str:
    """A 0–100 score in whole points, rounded down: 69.97 is below a boundary at 70 and must
    not read as 70 in a list of the tier under it."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    return str(math.floor(value + 1e-9))


def duration(minutes: float | None, lang: str = "zh") -> str:
    """A span of time as people read it: 45 分钟, 3 小时 20 分钟, 11 天 6 小时 (two units at most)."""
    if minutes is None or (isinstance(minutes, float) and math.isnan(minutes)):
        return "—"
    total = max(int(round(minutes)), 0)
    days, rest = divmod(total, 24 * 60)
    hours, mins = divmod(rest, 60)
    units = ("天", "小时", "分钟") if lang == "zh" else ("d", "h", "min")
    parts = [(days, units[0]), (hours, units[1])] if days else [(hours, units[1]), (mins, units[2])]
    shown = [f"{value} {unit}" for value, unit in parts if value] or [f"0 {units[2]}"]
    return " ".join(shown)


def tier_names(model: str = "value_matrix") -> dict[str, dict[str, str]]:
    return _yaml("tiers.yaml")[model]


def money(value: float | None, lang: str = "zh") -> str:
    """¥320.5万 / ¥1.23亿 in Chinese, ¥3.2M / ¥850K in English."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    sign = "-" if value < 0 else ""
    amount = abs(float(value))
    if lang == "zh":
        if amount >= 1e8:
            return f"{sign}¥{amount / 1e8:.2f}亿"
        if amount >= 1e4:
            return f"{sign}¥{amount / 1e4:.1f}万"
        return f"{sign}¥{amount:,.0f}"
    if amount >= 1e9:
        return f"{sign}¥{amount / 1e9:.2f}B"
    if amount >= 1e6:
        return f"{sign}¥{amount / 1e6:.1f}M"
    if amount >= 1e4:
        return f"{sign}¥{amount / 1e3:.0f}K"
    return f"{sign}¥{amount:,.0f}"


def percent(share: float | None, signed: bool = False) -> str:
    """A share as a whole percent, half away from zero as people round (1.505 → 151%;
    float formatting would give 150%, from 150.49999…)."""
    if share is None or not math.isfinite(float(share)):
        return "—"
    if abs(share) >= 1e12:  # a near-zero prior year: a ratio no one can read (and Decimal's limit)
        return f"{share * 100:+.3g}%" if signed else f"{share * 100:.3g}%"
    whole = int((Decimal(repr(float(share))) * 100).quantize(Decimal(1), rounding=ROUND_HALF_UP))
    return f"{whole:+d}%" if signed else f"{whole:d}%"


def _reason_value(reason: dict[str, Any], lang: str, phrases: dict[str, Any]) -> dict[str, Any]:
    factor, value = reason["factor"], reason.get("value")
    fields: dict[str, Any] = {"score": _whole(reason.get("score")), "percentile": _share_below(reason.get("percentile"))}
    if factor in ("revenue", "revenue_12m", "gross_margin_12m", "contract_value", "weighted_revenue"):
        fields["value"] = money(value, lang)
        fields["revenue_12m"] = money(reason.get("revenue_12m"), lang)
    elif factor in ("repurchase_upsell", "margin_rate"):
        fields["value"] = percent(value)
    elif factor == "growth":
        fields["value"] = percent(value, signed=True) if isinstance(value, (int, float)) else value
    elif factor == "company_size":
        fields["value"] = f"{int(value):,}" if value is not None else None
    elif factor == "digital_maturity" and isinstance(value, float) and value.is_integer():
        fields["value"] = int(value)  # 1/5, not 1.0/5
    elif factor == "expansion_plan":
        plan = phrases["expansion_plans"].get(str(value).lower()) if value else None
        fields["value"] = plan[lang] if plan else value
    elif factor == "strategic":
        flags = phrases["flags"]
        fields["value"] = ("、" if lang == "zh" else ", ").join(flags[f][lang] for f in value or []) or None
    elif factor == "cross_sell_room":
        owned = [m for m in str(value or "").split("|") if m]
        fields["owned"] = len(owned)
        fields["total"] = reason.get("catalogue_size", "?")
        fields["value"] = "|".join(owned)
    else:
        fields["value"] = value
    return fields


def _whole(number: float | None) -> int | None:
    if number is None or (isinstance(number, float) and math.isnan(number)):
        return None
    return int(math.floor(number + 1e-9))


def _share_below(percentile: float | None) -> int | None:
    """A percentile as "above N% of them": rounded down, and never 100, since a customer is
    never above all of them (itself included); a stored 99.96 must not read as 100."""
    whole = _whole(percentile)
    return None if whole is None else min(whole, 99)


def reason_text(reason: dict[str, Any], lang: str = "zh", catalogue_size: int | None = None) -> str:
    """One reason as a phrase, e.g. 「近12个月营收 ¥320.5万，高于92%的客户」."""
    phrases = _yaml("reasons.yaml")
    entry = phrases.get(reason["factor"])
    if entry is None:
        return reason["factor"]
    if catalogue_size is not None:
        reason = {**reason, "catalogue_size": catalogue_size}
    fields = _reason_value(reason, lang, phrases)
    missing = fields.get("value") in (None, "", "—") and reason["factor"] != "cross_sell_room"
    template = entry.get(f"{lang}_none") if missing else None
    if reason.get("value") == 0:
        template = entry.get(f"{lang}_zero", template)
    elif reason.get("value") == "new":
        template = entry.get(f"{lang}_new", template)
    return singular_after_one((template or entry[lang]).format(**fields), lang)


_PLURALS = {"days": "day", "activities": "activity", "months": "month", "complaints": "complaint",
            "orders": "order", "purchases": "purchase", "times": "time", "visits": "visit", "years": "year",
            "downloads": "download", "customers": "customer", "tasks": "task", "tickets": "ticket"}
_ONE_PLURAL = re.compile(rf"(?<![\d.,])1 ({'|'.join(_PLURALS)})\b")


def singular_after_one(text: str, lang: str) -> str:
    """English templates say "{value} days"; a value of 1 reads "1 day"."""
    return _ONE_PLURAL.sub(lambda m: f"1 {_PLURALS[m.group(1)]}", text) if lang == "en" else text


def risk_reasons(reasons: list[dict[str, Any]], count: int) -> list[dict[str, Any]]:
    """Churn reasons to show: those that add risk, most first; else the first note (such
    as "too little activity to judge"), which says why there is none."""
    adding = sorted((r for r in reasons if isinstance(r, dict) and (r.get("points") or 0) > 0),
                    key=lambda r: -(r.get("points") or 0))
    return adding[:count] or [r for r in reasons if isinstance(r, dict)][:1]


def model_reasons_text(model: str, reasons: list[dict[str, Any]], lang: str = "zh") -> str:
    """The reasons of one of the other models (RFM, S/A/B/C, …) in words, from
    templates/model_reasons.yaml; an unknown factor shows as factor=value."""
    phrases = _yaml("model_reasons.yaml").get(model, {})
    separator = "；" if lang == "zh" else "; "
    parts = []
    for reason in reasons:
        entry = phrases.get(reason.get("factor"))
        fields = {key: _format_field(key, value, lang) for key, value in reason.items()}
        if reason.get("factor") in _SHARE_FACTORS and isinstance(reason.get("value"), (int, float)):
            fields["value"] = percent(reason["value"], signed=reason["factor"] == "growth")
        elif reason.get("factor") in _MONEY_FACTORS and isinstance(reason.get("value"), (int, float)):
            fields["value"] = money(reason["value"], lang)
        if model != "intent":
            fields.update({key: _format_field(key, value, lang) for key, value in (reason.get("detail") or {}).items()})
        elif fields.get("title"):
            fields["value"] = fields["title"]  # a rule's title, where it has one, rather than its name
        if entry is None:
            parts.append(f"{reason.get('factor')}={reason.get('value')}")
            continue
        template = entry.get(f"{lang}_none") if reason.get("value") is None and f"{lang}_none" in entry else entry[lang]
        if _share_below(reason.get("percentile")) == 0 and f"{lang}_lowest" in entry:  # not "more than 0%"
            template = entry[f"{lang}_lowest"]
        elif (reason.get("top_share") or 0) > 50 and f"{lang}_lower_half" in entry:  # not "in the top 71%"
            template = entry[f"{lang}_lower_half"]
        try:
            parts.append(singular_after_one(template.format_map(_Missing(fields)), lang))
        except (ValueError, TypeError):
            parts.append(f"{reason.get('factor')}={reason.get('value')}")
    return separator.join(parts)


# Factors whose value is a share (0.8 → 80%), or an amount of money (even ¥0).
_SHARE_FACTORS = {"growth", "activity_decline", "p_alive"}
_MONEY_FACTORS = {"weighted_revenue", "no_weighted_revenue", "volume", "avg_repeat_value"}


class _Missing(dict):
    def __missing__(self, key: str) -> str:
        return "—"


def _format_field(key: str, value: Any, lang: str) -> Any:
    if key == "direction" and lang == "zh":
        return {"high": "高", "low": "低"}.get(value, value)
    if key == "title" and isinstance(value, dict):  # {"zh": …, "en": …}
        return value.get(lang) or value.get("zh")
    if isinstance(value, float):
        if key in ("value", "monetary_value", "weighted_revenue") and abs(value) >= 100:
            return money(value, lang)
        if key == "percentile":
            return str(_share_below(value))
        if key in ("p_alive", "share", "growth"):
            return percent(value, signed=(key == "growth"))
        return f"{value:.1f}".rstrip("0").rstrip(".")
    if isinstance(value, dict):
        return ("、" if lang == "zh" else ", ").join(f"{_activity_name(k, lang)}×{v}" for k, v in value.items())
    return value


def _activity_name(condition: str, lang: str) -> str:
    """An intent condition, "page_view /products/mes", in words: 页面浏览 /products/mes."""
    kind, _, contains = condition.partition(" ")
    names = _yaml("tiers.yaml").get("activity", {}).get(kind)
    return f"{names[lang] if names else kind} {contains}".strip()


def reasons_text(reasons: list[dict[str, Any]], lang: str = "zh", catalogue_size: int | None = None) -> str:
    separator = "；" if lang == "zh" else "; "
    return separator.join(reason_text(r, lang, catalogue_size) for r in reasons)


def display_width(text: str) -> int:
    """Columns a string takes in a terminal: CJK characters take two."""
    return sum(2 if unicodedata.east_asian_width(ch) in "WF" else 1 for ch in text)


def pad(text: Any, width: int, align: str = "left") -> str:
    """Pad to a terminal width, counting CJK characters as two columns."""
    text = str(text)
    fill = " " * max(width - display_width(text), 0)
    return text + fill if align == "left" else fill + text


def plain_text(markdown: str) -> str:
    """WeCom markdown (bold, quotes, <font>) as plain text, for passive replies and text cards."""
    import re

    text = re.sub(r"</?font[^>]*>", "", markdown)
    text = text.replace("**", "")
    return re.sub(r"(?m)^> ?", "", text).strip()


def clip(text: Any, characters: int) -> str:
    """At most `characters` characters, with … when cut: WeCom card fields have lengths."""
    text = str(text)
    return text if len(text) <= characters else text[:max(characters - 1, 0)] + "…"


def fit_bytes(render_with: Any, count: int, limit: int = 2048) -> str:
    """`render_with(n)` for the largest n <= count whose UTF-8 text fits `limit` bytes:
    lists in one WeCom message are cut to fit instead of being refused."""
    for n in range(count, -1, -1):
        text = render_with(n)
        if len(text.encode("utf-8")) <= limit:
            return text
    raise ValueError("even an empty list does not fit the message limit")


@lru_cache(maxsize=None)
def environment() -> Environment:
    # Templates are read once per process: no file check on every message.
    env = Environment(loader=FileSystemLoader(TEMPLATES_DIR), undefined=StrictUndefined, auto_reload=False,
                      trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=False, autoescape=False)
    env.filters["money"] = money
    env.filters["percent"] = percent
    env.filters["tier"] = tier_name
    env.filters["queue"] = queue_name
    env.filters["duration"] = duration
    env.filters["score"] = score_points
    env.filters["pad"] = pad
    env.filters["clip"] = clip
    env.filters["reasons"] = reasons_text
    env.filters["model_reasons"] = lambda reasons, model, lang="zh": model_reasons_text(model, reasons, lang)
    return env


def render(name: str, **context: Any) -> str:
    return environment().get_template(name).render(**context)
