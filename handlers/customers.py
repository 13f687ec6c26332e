"""我的客户 / my customers, 我的明星客户 / my Star customers (更多 / more pages them), 客户 X / customer X."""

from __future__ import annotations

import re

from handlers.paging import fit_page, remember
from handlers.registry import Asker, CommandContext, Reply
from handlers.router import router
from handlers.text import model_reasons_text, reasons_text, render, risk_reasons, tier_name, tier_names
from scoring import TIERS
from storage import queries
from storage.db import local_time

PAGE_SIZE = 10
# Shown under the value matrix in the customer card, in this order.
OTHER_MODELS = ("churn", "rfm", "sabc", "pyramid", "lifecycle", "intent")
CARD_REASONS = {"rfm": 3}  # reasons per model on the card; 2 where not named
DID_YOU_MEAN = 8
# A name or id is short; a longer "query" is pasted text, and echoing it back would
# break WeCom's 2048-byte limit.
MAX_QUERY_CHARS = 40
SCOPE = {"zh": {"rep": "您", "agent": "您", "manager": "您团队", "admin": "全公司"},
         "en": {"rep": "Your", "agent": "Your", "manager": "Your team's", "admin": "All"}}

# Every spelling of every tier, for "my <tier> customers" in both languages.
_TIER_WORDS: dict[str, str] = {}
for _code, _names in tier_names().items():
    for _word in (_names["zh"], _names["short_zh"], _names["en"], _code.replace("_", " ")):
        _TIER_WORDS[_word.lower()] = _code
_TIER_WORDS.update({"cashcow": "cash_cow", "cash-cow": "cash_cow", "stars": "star", "dogs": "dog",
                    "question marks": "question_mark", "cash cows": "cash_cow", "questionmark": "question_mark"})
_ZH_TIERS = "|".join(sorted((w for w in _TIER_WORDS if not w.isascii()), key=len, reverse=True))
_EN_TIERS = "|".join(sorted((w for w in _TIER_WORDS if w.isascii()), key=len, reverse=True))


def _scope(ctx: CommandContext) -> str:
    return SCOPE[ctx.lang].get(ctx.asker.role, SCOPE[ctx.lang]["rep"])


def _sees_others(ctx: CommandContext) -> bool:
    """Managers and admins see other people's customers: lists name each one's owner."""
    return ctx.asker.role in ("manager", "admin")


@router.command("my_customers", r"我的客户|我的全部客户|客户概览", r"(show )?my customers|my accounts|customers")
async def my_customers(ctx: CommandContext, rep: Asker | None = None) -> Reply:
    """Customers per tier: the asker's, or with `rep` (a manager drilling down, who may see
    them) that rep's only."""
    async with ctx.services.db.connect() as connection:
        run_id = await ctx.services.latest_run_id(connection)
        if run_id is None:
            return Reply(render(f"chat/no_scores.{ctx.lang}.j2"), msgtype="text")
        owners = [rep.userid] if rep else await ctx.services.visible_owners(connection, ctx.asker)
        totals = await queries.tier_totals(connection, owners, run_id)
        as_of = await queries.run_as_of(connection, run_id)
    tiers = [(tier, totals.get(tier, {"customers": 0, "revenue_12m": 0.0})) for tier in TIERS]
    total = sum(row["customers"] for _tier, row in tiers)
    if total == 0 and rep is None and ctx.asker.role == "agent":  # four rows of zeros would tell an agent nothing
        return Reply(render(f"chat/agent_no_customers.{ctx.lang}.j2"), msgtype="text")
    scope = rep_scope(rep, ctx.lang) if rep else _scope(ctx)
    return Reply(render(f"chat/my_customers.{ctx.lang}.j2", scope=scope, tiers=tiers, total=total, as_of=as_of))


@router.command("my_tier", rf"(?:我的|团队的?|我名下的?)?({_ZH_TIERS})(的?客户)?",
                rf"(show |list )?(me )?(my |team |my team's )?({_EN_TIERS})( customers| accounts)?")
async def my_tier(ctx: CommandContext) -> Reply:
    words = [group for group in ctx.match.groups() if group and group.strip() in _TIER_WORDS]
    tier = _TIER_WORDS[words[0].strip()]
    return await _tier_page(ctx, tier, offset=0)


@router.pager("my_tier")
async def next_tier_page(ctx: CommandContext, arguments: dict, offset: int) -> Reply:
    return await _tier_page(ctx, arguments["tier"], offset=offset)


async def _tier_page(ctx: CommandContext, tier: str, offset: int, rep: Asker | None = None) -> Reply:
    """A page of the asker's customers in `tier`; with `rep` (a manager drilling down, who
    may see them), that rep's only."""
    listing, arguments = ("rep_tier", {"tier": tier, "rep": rep.userid}) if rep else ("my_tier", {"tier": tier})
    scope = rep_scope(rep, ctx.lang) if rep else _scope(ctx)
    async with ctx.services.db.begin() as connection:
        run_id = await ctx.services.latest_run_id(connection)
        if run_id is None:
            return Reply(render(f"chat/no_scores.{ctx.lang}.j2"), msgtype="text")
        owners = [rep.userid] if rep else await ctx.services.visible_owners(connection, ctx.asker)
        items, total = await queries.customers_in_tier(connection, owners, run_id, tier, offset, PAGE_SIZE)
        if not items:
            if offset:
                await remember(ctx, connection, listing, arguments, offset, 0, 0)
                return Reply(render(f"chat/no_more.{ctx.lang}.j2", ended=True), msgtype="text")
            return Reply(render(f"chat/tier_empty.{ctx.lang}.j2", scope=scope, tier=tier), msgtype="text")
        show_owner = _sees_others(ctx) and rep is None
        text, shown = fit_page(lambda n, more: render(
            f"chat/tier_list.{ctx.lang}.j2", scope=scope, tier=tier, items=items[:n], first=offset + 1,
            last=offset + n, total=total, more=more, show_owner=show_owner), len(items), offset, total)
        await remember(ctx, connection, listing, arguments, offset, shown, total)
    return Reply(text)


def rep_scope(rep: Asker, lang: str) -> str:
    """Whose customers a manager's drill-down shows: 「张三」的客户 / Zhang San's customers."""
    return rep.name if lang == "zh" else f"{rep.name}'s"


# "my <label> customers" for the other models: RFM segments, S/A/B/C, pyramid, lifecycle
# and intent levels, in either language. Churn has its own list (流失预警), and a label
# no one would list ("none") is left out.
LISTED_MODELS = ("rfm", "sabc", "pyramid", "lifecycle", "intent")
# Words people use beyond the display names; claimed first ("new customers" are those won lately).
_SYNONYMS = {("lifecycle", "new"): ("新", "新签", "new"), ("lifecycle", "growing"): ("成长期",),
             ("lifecycle", "mature"): ("成熟期",), ("rfm", "champions"): ("champion",)}
_UNLISTED = {("lifecycle", "churn_risk"), ("intent", "none")}
# Words other commands answer (流失预警: "at risk", 有流失风险) or too vague alone ("high": intent?).
_NOT_LABEL_WORDS = {"at risk", "high", "medium", "low"}
_MODEL_NAMES = {"zh": {"rfm": "RFM", "sabc": "S/A/B/C", "pyramid": "金字塔", "lifecycle": "生命周期", "intent": "意向"},
                "en": {"rfm": "RFM", "sabc": "S/A/B/C", "pyramid": "pyramid", "lifecycle": "lifecycle",
                       "intent": "intent"}}


def _label_words() -> dict[str, list[tuple[str, str]]]:
    """Every spelling of every listed label → the (model, label)s it may mean, in model
    order: 「新客户」 is RFM's "new" or "new_customers", whichever the configuration has."""
    words: dict[str, list[tuple[str, str]]] = {}

    def claim(word: str, model: str, label: str) -> None:
        word = word.strip().lower()
        if word and word not in _TIER_WORDS and word not in _NOT_LABEL_WORDS:
            meanings = words.setdefault(word, [])
            if (model, label) not in meanings:
                meanings.append((model, label))

    for (model, label), synonyms in _SYNONYMS.items():
        for word in synonyms:
            claim(word, model, label)
    for model in LISTED_MODELS:
        for label, names in tier_names(model).items():
            if (model, label) in _UNLISTED:
                continue
            zh, en = names["zh"], names["en"]
            claim(zh.removesuffix("客户"), model, label)
            claim(en, model, label)
            claim(en.lower().removesuffix(" customers"), model, label)
            claim(label.replace("_", " "), model, label)
            if model == "sabc":  # "S 战略客户": also S类, S级, S客户 (below), 战略客户
                claim(f"{label}类", model, label)
                claim(f"{label}级", model, label)
                claim(zh.split(" ", 1)[1].removesuffix("客户"), model, label)
    # "new customers" may be said of RFM's "new" too ("my new customers" is read whole).
    for word, meanings in words.items():
        for other in words.get(word.removesuffix(" customers"), []) if word.endswith(" customers") else []:
            if other not in meanings:
                meanings.append(other)
    return words


def _alternatives(words) -> str:
    return "|".join(re.escape(word) for word in sorted(words, key=len, reverse=True))


_LABEL_WORDS = _label_words()
_ZH_LABELS = _alternatives(w for w in _LABEL_WORDS if not w.isascii())
_EN_LABELS = _alternatives(w for w in _LABEL_WORDS if w.isascii())


# With 我的/团队 before the label or 客户 after it: a bare 「成长」 or 「一般」 is not a command.
def label_meanings(found) -> list[tuple[str, str]]:
    """The (model, label)s a message router.resolve gave to my_segment may mean; [] for
    any other command."""
    name, _, match = found
    return _LABEL_WORDS.get(match.group("label").strip(), []) if name == "my_segment" else []


@router.command("my_segment", rf"(?:我的|我名下的?|团队的?)(?P<label>{_ZH_LABELS})(?:的?客户)?",
                rf"(?P<label>{_ZH_LABELS})的?客户",
                rf"(?:我的|我名下的?|团队的?)?(?P<label>[sabc])的?客户",
                rf"(?:show |list )?(?:me )?(?:my |team |my team's )(?P<label>{_EN_LABELS})(?: customers| accounts)?",
                rf"(?:show |list )?(?:me )?(?P<label>{_EN_LABELS}) (?:customers|accounts)")
async def my_segment(ctx: CommandContext) -> Reply:
    return await segment_page(ctx, _LABEL_WORDS[ctx.match.group("label").strip()], offset=0)


@router.pager("my_segment")
async def next_segment_page(ctx: CommandContext, arguments: dict, offset: int) -> Reply:
    return await segment_page(ctx, [(arguments["model"], arguments["label"])], offset=offset)


def _segment_names(ctx: CommandContext, model: str, label: str) -> dict[str, str]:
    label_name = tier_name(label, ctx.lang, model)
    if ctx.lang == "zh" and not label_name.endswith("客户"):
        label_name += "客户"  # 铂金 → 铂金客户, as 冠军客户 reads
    return {"model": _MODEL_NAMES[ctx.lang][model], "label": label_name}


async def segment_page(ctx: CommandContext, meanings: list[tuple[str, str]], offset: int) -> Reply:
    """The list of the first of `meanings` (model, label) the latest run gave labels for."""
    async with ctx.services.db.begin() as connection:
        run_id = await ctx.services.latest_run_id(connection)
        if run_id is None:
            return Reply(render(f"chat/no_scores.{ctx.lang}.j2"), msgtype="text")
        coded = await queries.coded_labels(connection, run_id)
        if coded is None:
            return Reply(render(f"chat/segment_needs_run.{ctx.lang}.j2", **_segment_names(ctx, *meanings[0])),
                         msgtype="text")
        found = [(model, label) for model, label in meanings if label in coded.get(model, [])]
        if not found:
            model, label = meanings[0]
            # Switched off, or a label the configuration does not have (a custom RFM table).
            template = "segment_model_off" if model not in coded else "segment_empty"
            return Reply(render(f"chat/{template}.{ctx.lang}.j2", scope=_scope(ctx),
                                **_segment_names(ctx, model, label)), msgtype="text")
        model, label = found[0]
        names = _segment_names(ctx, model, label)
        owners = await ctx.services.visible_owners(connection, ctx.asker)
        items, total = await queries.customers_with_label(connection, owners, run_id, coded, model, label, offset,
                                                          PAGE_SIZE)
        arguments = {"model": model, "label": label}
        for item in items:
            item["why"] = model_reasons_text(model, item.pop("reasons")[:2], ctx.lang)
        if not items:
            await remember(ctx, connection, "my_segment", arguments, offset, 0, 0)
            if offset:
                return Reply(render(f"chat/no_more.{ctx.lang}.j2", ended=True), msgtype="text")
            return Reply(render(f"chat/segment_empty.{ctx.lang}.j2", scope=_scope(ctx), **names), msgtype="text")
        text, shown = fit_page(lambda n, more: render(
            f"chat/segment_list.{ctx.lang}.j2", scope=_scope(ctx), items=items[:n], first=offset + 1,
            last=offset + n, total=total, more=more, show_owner=_sees_others(ctx), **names),
            len(items), offset, total)
        await remember(ctx, connection, "my_segment", arguments, offset, shown, total)
    return Reply(text)


@router.command("customer_without_name", r"客户|查客户|查询客户|查询", r"customer|cust|lookup|find")
async def customer_without_name(ctx: CommandContext) -> Reply:
    return Reply(render(f"chat/customer_needs_name.{ctx.lang}.j2"), msgtype="text")


# 「客户：华为」「客户，华为」: people put a colon or comma after the command word.
@router.command("customer", r"(?:客户|查客户|查询客户|查询)[\s:,、]*(?P<query>[^\s:,、].*)",
                r"(?:customer|cust|lookup|find)(?:\s*[:,]\s*|\s+)(?P<query>.+)")
async def customer(ctx: CommandContext) -> Reply:
    query = ctx.argument("query")[:MAX_QUERY_CHARS]
    catalogue = len(ctx.services.config.scoring.value_matrix.module_catalogue)
    async with ctx.services.db.connect() as connection:
        owners = await ctx.services.visible_owners(connection, ctx.asker)
        also = await queries.ticket_customers(connection, ctx.asker.userid) if ctx.asker.role == "agent" else None
        matches = await queries.find_customers(connection, owners, query, limit=DID_YOU_MEAN + 1, also=also)
        if not matches:
            return Reply(render(f"chat/not_found.{ctx.lang}.j2", query=query), msgtype="text")
        if len(matches) > 1:
            shown = matches[:DID_YOU_MEAN]
            return Reply(render(f"chat/did_you_mean.{ctx.lang}.j2", query=query, matches=shown,
                                more=len(matches) > DID_YOU_MEAN))
        run_id = await ctx.services.latest_run_id(connection)
        detail = await queries.customer_detail(connection, owners, matches[0]["customer_id"], run_id, also=also)
    snapshot = detail.pop("snapshot")
    if detail.get("tier_since"):
        # The day in the service's time zone, as the scoring day is: a run at 01:00 in Shanghai is still
        # yesterday in UTC.
        detail["tier_since"] = local_time(detail["tier_since"], ctx.services.config.tz).date().isoformat()
    if detail["last_done"] and detail["last_done"]["done_at"] is not None:
        detail["last_done"]["done_at"] = local_time(detail["last_done"]["done_at"], ctx.services.config.tz).date()
    reasons, models = [], []
    if snapshot:
        # Documents as queries.customer_detail merged them from the row and its chunk.
        raw, labels, scores = snapshot["reasons"], snapshot["labels"], snapshot["scores"]
        reasons = [reasons_text([reason], ctx.lang, catalogue) for reason in raw.get("value_matrix", [])]
        for model in OTHER_MODELS:
            if labels.get(model):
                shown = raw.get(model) or []
                # Churn: what adds risk (not "too little activity" beside it); RFM: R, F and M.
                shown = risk_reasons(shown, 2) if model == "churn" else shown[:CARD_REASONS.get(model, 2)]
                models.append({"model": model, "label": tier_name(labels[model], ctx.lang, model),
                               "score": scores.get(model), "why": model_reasons_text(model, shown, ctx.lang)})
        snapshot["as_of"] = str(snapshot["as_of"])[:10]
        # A label a business rule set has no reason among the models' own: the rule is it.
        rules = model_reasons_text("rules", raw.get("rules") or [], ctx.lang)
    else:
        rules = ""
    return Reply(render(f"chat/customer.{ctx.lang}.j2", c=detail, s=snapshot, reasons=reasons, models=models,
                        rules=rules))
