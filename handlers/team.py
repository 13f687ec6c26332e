"""流失预警 / churn alerts, 赢回名单 / win-back, and 团队 / team (a summary per rep, for managers and admins).

Scope is the asker's reporting tree (storage.queries.visible_owners): a manager sees
their team, an admin everyone, anyone else their own customers (a rep's at-risk list
is theirs to work). Reps and agents asking for 团队 get a polite "for managers" answer —
the same for every rep, so it tells nothing about anyone's customers.
"""

from __future__ import annotations

from sqlalchemy import func, select

from handlers.customers import _EN_TIERS, _TIER_WORDS, _ZH_TIERS, _tier_page, my_customers
from handlers.paging import fit_page, remember
from handlers.registry import Asker, CommandContext, Reply
from handlers.router import router
from handlers.text import model_reasons_text, render, risk_reasons, tier_names
from scoring import TIERS
from notifications import tasks
from storage import queries
from storage.models import User

CHURN_PAGE = 8
OVERDUE_PAGE = 15
TEAM_PAGE = 20
# Churn reasons shown per customer: the two that add the most risk.
CHURN_REASONS = 2
LEADS = ("manager", "admin")
SCOPE = {"zh": {"manager": "您团队", "admin": "全公司", "own": "您名下"},
         "en": {"manager": "Your team's", "admin": "Company-wide", "own": "Your"}}


def _refused(ctx: CommandContext) -> Reply | None:
    if ctx.asker.role in LEADS:
        return None
    return Reply(render(f"chat/team_only.{ctx.lang}.j2"), msgtype="text")


# ------------------------------------------------------------------ 流失预警 / churn


@router.command("churn", r"(?:团队的?|我的|我名下的?)?(?:高|有)?(?:流失预警|流失风险|流失客户|流失名单|风险客户|预警)(?:的?客户|名单)?",
                r"(?:show |list )?(?:my |team |my team's )?(?:high )?"
                r"(?:churn(?: alerts?| risks?| risk customers| list)?|at[- ]risk(?: customers)?)")
async def churn(ctx: CommandContext) -> Reply:
    return await _churn_page(ctx, 0)


@router.pager("churn")
async def next_churn_page(ctx: CommandContext, arguments: dict, offset: int) -> Reply:
    return await _churn_page(ctx, offset)


# Those at risk with no revenue in 12 months: not in the churn list (nothing left to retain),
# but worth winning back, the most valuable first.
@router.command("winback", r"(?:团队的?|我的|我名下的?)?(?:赢回|挽回|召回)(?:的?客户|名单|列表)?",
                r"(?:show |list )?(?:my |team |my team's )?(?:win[- ]?back(?: list| customers)?|lapsed customers)")
async def winback(ctx: CommandContext) -> Reply:
    return await _churn_page(ctx, 0, lapsed=True)


@router.pager("winback")
async def next_winback_page(ctx: CommandContext, arguments: dict, offset: int) -> Reply:
    return await _churn_page(ctx, offset, lapsed=True)


async def _churn_page(ctx: CommandContext, offset: int, lapsed: bool = False) -> Reply:
    listing = "winback" if lapsed else "churn"
    alerts = ctx.services.config.playbook.churn_alerts
    threshold = alerts.threshold
    scope = SCOPE[ctx.lang][ctx.asker.role if ctx.asker.role in LEADS else "own"]
    async with ctx.services.db.begin() as connection:
        run_id = await ctx.services.latest_run_id(connection)
        if run_id is None:
            return Reply(render(f"chat/no_scores.{ctx.lang}.j2"), msgtype="text")
        owners = await ctx.services.visible_owners(connection, ctx.asker)
        items, total = await queries.churn_risks(connection, owners, run_id, threshold, offset, CHURN_PAGE,
                                                 alerts.min_revenue_12m, lapsed=lapsed)
        if not items:
            await remember(ctx, connection, listing, {}, offset, 0, 0)
            if offset:
                return Reply(render(f"chat/no_more.{ctx.lang}.j2", ended=True), msgtype="text")
            return Reply(render(f"chat/{listing}_empty.{ctx.lang}.j2", scope=scope, threshold=threshold),
                         msgtype="text")
        as_of = await queries.run_as_of(connection, run_id)
        for item in items:
            item["owner_name"] = item["owner_name"] or item["owner_userid"] or "—"
            item["why"] = model_reasons_text("churn", risk_reasons(item["churn_reasons"], CHURN_REASONS), ctx.lang)
        text, shown = fit_page(lambda n, more: render(
            f"chat/{listing}_list.{ctx.lang}.j2", scope=scope, threshold=threshold, items=items[:n],
            first=offset + 1, last=offset + n, total=total, more=more, as_of=as_of,
            show_owner=ctx.asker.role in LEADS), len(items), offset, total)
        await remember(ctx, connection, listing, {}, offset, shown, total)
    return Reply(text)


# ------------------------------------------------------------------ 团队 / team


@router.command("team", r"(?:我的)?团队(?:概况|汇总|总览|情况|数据)?",
                r"(?:show )?(?:my )?team(?: summary| overview| report)?")
async def team(ctx: CommandContext) -> Reply:
    return await _team_page(ctx, 0)


@router.pager("team")
async def next_team_page(ctx: CommandContext, arguments: dict, offset: int) -> Reply:
    return await _team_page(ctx, offset)


def _empty_row(userid: str, name: str) -> dict:
    return {"userid": userid, "name": name, "tiers": {tier: 0 for tier in TIERS}, "unscored": 0, "customers": 0,
            "revenue_12m": 0.0, "open": 0, "overdue": 0}


def team_rows(tiers: dict, task_counts: dict, people: dict, tree: list[str] | None) -> list[dict]:
    """One row per rep of the tree, and per anyone else in it who owns customers or tasks;
    most 12-month revenue first."""
    members = set(tiers) | set(task_counts)
    members |= {userid for userid, person in people.items()
                if person.role == "rep" and (tree is None or userid in tree)}
    rows = []
    for userid in members:
        person = people.get(userid)
        row = _empty_row(userid, person.name if person else userid)
        for tier, totals in tiers.get(userid, {}).items():
            if tier in row["tiers"]:
                row["tiers"][tier] += totals["customers"]
            else:
                row["unscored"] += totals["customers"]
            row["customers"] += totals["customers"]
            row["revenue_12m"] += totals["revenue_12m"]
        row.update(task_counts.get(userid, {}))
        rows.append(row)
    return sorted(rows, key=lambda row: (-row["revenue_12m"], -row["customers"], row["name"], row["userid"]))


def _short_names(lang: str) -> dict[str, str]:
    # 明星 rather than 明星客户: four of them on every line of the summary.
    return {tier: names["short_zh" if lang == "zh" else "en"] for tier, names in tier_names().items()}


def _totals(rows: list[dict]) -> dict:
    total = _empty_row("", "")
    for row in rows:
        for tier in TIERS:
            total["tiers"][tier] += row["tiers"][tier]
        for key in ("unscored", "customers", "revenue_12m", "open", "overdue"):
            total[key] += row[key]
    return total


async def _team_page(ctx: CommandContext, offset: int) -> Reply:
    refused = _refused(ctx)
    if refused:
        return refused
    today = ctx.services.now().date()
    scope = SCOPE[ctx.lang][ctx.asker.role]
    async with ctx.services.db.begin() as connection:
        run_id = await ctx.services.latest_run_id(connection)
        owners = await ctx.services.visible_owners(connection, ctx.asker)
        tiers = await queries.team_tiers(connection, owners, run_id)
        task_counts = await queries.team_tasks(connection, owners, today)
        people = await queries.people(connection, owners)
        as_of = await queries.run_as_of(connection, run_id) if run_id is not None else None
        rows = team_rows(tiers, task_counts, people, owners)
        page = rows[offset:offset + TEAM_PAGE]
        if not page:
            await remember(ctx, connection, "team", {}, offset, 0, 0)
            if offset:
                return Reply(render(f"chat/no_more.{ctx.lang}.j2", ended=True), msgtype="text")
        total = _totals(rows)
        text, shown = fit_page(lambda n, more: render(
            f"chat/team_summary.{ctx.lang}.j2", scope=scope, rows=page[:n], totals=total, people=len(rows),
            first=offset + 1, last=offset + n, more=more, as_of=as_of, tiers=TIERS, names=_short_names(ctx.lang)),
            max(len(page), 1), offset,
            len(rows))
        await remember(ctx, connection, "team", {}, offset, shown if page else 0, len(rows))
    return Reply(text)


# ------------------------------------------------------------------ 团队逾期任务 / team overdue


@router.command("team_overdue", r"团队的?(?:逾期|过期|超期)(?:任务|待办)?|(?:逾期|过期|超期)(?:任务)?(?:按人|团队)",
                r"(?:show |list )?(?:my )?team(?:'s)? (?:overdue|late)(?: tasks)?|overdue tasks (?:of|in) (?:my )?team")
async def team_overdue(ctx: CommandContext) -> Reply:
    return await _team_overdue_page(ctx, 0)


@router.pager("team_overdue")
async def next_team_overdue_page(ctx: CommandContext, arguments: dict, offset: int) -> Reply:
    return await _team_overdue_page(ctx, offset)


async def _team_overdue_page(ctx: CommandContext, offset: int) -> Reply:
    refused = _refused(ctx)
    if refused is not None:
        return refused
    scope = SCOPE[ctx.lang][ctx.asker.role]
    today = ctx.services.now().astimezone(ctx.services.config.tz).date()
    async with ctx.services.db.begin() as connection:
        holders = await ctx.services.visible_owners(connection, ctx.asker)
        items, total = await tasks.overdue_in_team(connection, holders, today, offset, OVERDUE_PAGE)
        if not items:
            await remember(ctx, connection, "team_overdue", {}, offset, 0, 0)
            if offset:
                return Reply(render(f"chat/no_more.{ctx.lang}.j2", ended=True), msgtype="text")
            return Reply(render(f"chat/team_overdue_empty.{ctx.lang}.j2", scope=scope), msgtype="text")
        text, shown = fit_page(lambda n, more: render(
            f"chat/team_overdue.{ctx.lang}.j2", scope=scope, items=items[:n], first=offset + 1, last=offset + n,
            total=total, more=more), len(items), offset, total)
        await remember(ctx, connection, "team_overdue", {}, offset, shown, total)
    return Reply(text)


# ------------------------------------------------------------------ 张三的客户 / zhangsan's customers
# A manager drilling down to one rep of their tree. Words that are other commands' (我的…,
# 团队的…, 工单 …) never start it: those routes come first or are ruled out here.
_NOT_A_REP = r"(?!(?:我|团队|我们|全公司|公司|所有|全部|新建工单|开工单|提工单|建工单|报工单|工单|报修))"


@router.command("rep_customers",
                rf"{_NOT_A_REP}(?P<who>[\u4e00-\u9fff·]{{2,8}}|[a-z0-9][a-z0-9_.@\-]{{0,63}})(?:名下)?的"
                rf"(?:(?P<tier>{_ZH_TIERS})(?:的?客户)?|(?:全部)?客户)",
                rf"(?:show |list )?(?!(?:my|team|your)'s)(?P<who_en>[a-z0-9][a-z0-9_.@\-]{{0,63}})'s "
                rf"(?:(?P<tier_en>{_EN_TIERS}) )?(?:customers|accounts)")
async def rep_drill_down(ctx: CommandContext) -> Reply:
    refused = _refused(ctx)
    if refused is not None:
        return refused
    groups = ctx.match.groupdict()
    typed = ctx.argument("who") if groups.get("who") else ctx.argument("who_en")
    tier_word = (groups.get("tier") or groups.get("tier_en") or "").strip()
    async with ctx.services.db.connect() as connection:
        found = await _rep_in_tree(ctx, connection, typed)
    if isinstance(found, Reply):
        return found
    if tier_word:
        return await _tier_page(ctx, _TIER_WORDS[tier_word], 0, rep=found)
    return await my_customers(ctx, rep=found)


@router.pager("rep_tier")
async def next_rep_tier_page(ctx: CommandContext, arguments: dict, offset: int) -> Reply:
    async with ctx.services.db.connect() as connection:
        found = await _rep_in_tree(ctx, connection, arguments["rep"])
    if isinstance(found, Reply):
        return found
    return await _tier_page(ctx, arguments["tier"], offset, rep=found)


async def _rep_in_tree(ctx: CommandContext, connection, typed: str) -> Asker | Reply:
    """The user `typed` names (UserID, any case, or exact name) among those whose customers
    the asker sees; a reply saying why not otherwise (the same for someone outside the
    tree as for nobody, so a manager learns nothing of other teams)."""
    owners = await ctx.services.visible_owners(connection, ctx.asker)
    rows = (await connection.execute(select(User.userid, User.name, User.role).where(
        (func.lower(User.userid) == typed.lower()) | (User.name == typed)))).all()
    mine = [row for row in rows if owners is None or row.userid in owners]
    if len(mine) > 1:
        return Reply(render(f"chat/rep_ambiguous.{ctx.lang}.j2", typed=typed, users=mine), msgtype="text")
    if not mine:
        return Reply(render(f"chat/rep_not_found.{ctx.lang}.j2", typed=typed), msgtype="text")
    return Asker(*mine[0])
