"""分层报表 / tier report: the manager's cockpit of DOMAIN.md's KPIs over the asker's
customers — per value-matrix tier the customers and 12-month revenue with their shares
(is the 80/20 holding?), tier changes in and out over a period and the commonest moves
between tiers, customers at high churn risk, and follow-up effort against revenue.

Scope as everywhere: a rep their own customers, a manager their tree, an admin all.
Registered before 「客户 X」, which would otherwise take 「客户报表」 for a customer's name.
"""

from __future__ import annotations

from datetime import timedelta, timezone

from handlers.registry import CommandContext, Reply
from handlers.router import router
from handlers.text import render, tier_names
from scoring import TIERS
from storage import queries

REPORT_DAYS = 30
MAX_REPORT_DAYS = 365
# The moves between tiers named under the table, the commonest first.
FLOWS_SHOWN = 6
TOP_SHARE = 0.2
SCOPE = {"zh": {"rep": "您", "agent": "您", "manager": "您团队", "admin": "全公司"},
         "en": {"rep": "Your", "agent": "Your", "manager": "Your team's", "admin": "Company-wide"}}
_DAYS_ZH = r"(?:\s*(?:近|最近)?\s*(?P<days>\d{1,4})\s*(?:天|日)?)?"
_DAYS_EN = r"(?:\s+(?:for |last |past )?(?:the )?(?:last |past )?(?P<days_en>\d{1,4})\s*(?:d|days?)?)?"


@router.command("tier_report",
                rf"(?:我的|团队的?)?(?:客户分层|价值分层|分层|客户)(?:报表|报告|统计|分析){_DAYS_ZH}",
                rf"(?:经营|管理|销售|客户)?驾驶舱{_DAYS_ZH}",
                rf"(?:show )?(?:my |team |my team's )?(?:tiers?|tiering|customers?) (?:report|stats|statistics)"
                rf"{_DAYS_EN}",
                rf"(?:show )?(?:my |the )?(?:cockpit|dashboard){_DAYS_EN}")
async def tier_report(ctx: CommandContext) -> Reply:
    typed = ctx.match.groupdict().get("days") or ctx.match.groupdict().get("days_en")
    days = int(typed) if typed else REPORT_DAYS
    if not 1 <= days <= MAX_REPORT_DAYS:
        return Reply(render(f"chat/tier_report_usage.{ctx.lang}.j2", most=MAX_REPORT_DAYS), msgtype="text")
    alerts = ctx.services.config.playbook.churn_alerts
    now = ctx.services.now()
    # In UTC: SQLite keeps timestamps as UTC wall-clock text, and compares them as text.
    since = (now - timedelta(days=days)).astimezone(timezone.utc)
    async with ctx.services.db.connect() as connection:
        run_id = await ctx.services.cached(("latest_run",), lambda: queries.latest_run_id(connection), seconds=5.0)
        if run_id is None:
            return Reply(render(f"chat/no_scores.{ctx.lang}.j2"), msgtype="text")
        owners = await ctx.services.cached(("owners", ctx.asker.userid, ctx.asker.role),
                                           lambda: queries.visible_owners(connection, ctx.asker))
        found = await queries.tier_report(connection, owners, run_id, since, alerts.threshold,
                                          alerts.min_revenue_12m, TOP_SHARE)
        as_of = await queries.run_as_of(connection, run_id)
    rows = report_rows(found)
    total = {key: sum(row[key] for row in rows) for key in ("customers", "revenue_12m", "at_risk", "done")}
    if total["customers"] == 0 and ctx.asker.role == "agent":
        return Reply(render(f"chat/agent_no_customers.{ctx.lang}.j2"), msgtype="text")
    # Tasks made for a customer before its first tier: effort all the same.
    total["done"] += found.done.get(None, 0)
    for row in rows:
        row["effort_share"] = row["done"] / total["done"] if total["done"] else None
    flows = sorted(found.flows.items(), key=lambda item: (-item[1], TIERS.index(item[0][0]) if item[0][0] in TIERS
                                                          else len(TIERS), item[0]))[:FLOWS_SHOWN]
    short = {tier: names["short_zh" if ctx.lang == "zh" else "en"] for tier, names in tier_names().items()}
    return Reply(render(f"chat/tier_report.{ctx.lang}.j2", scope=SCOPE[ctx.lang].get(ctx.asker.role, ""),
                        days=days, since=since.astimezone(ctx.services.config.tz).strftime("%Y-%m-%d"),
                        as_of=as_of, rows=rows, total=total, names=short,
                        top_share=found.top_revenue / total["revenue_12m"] if total["revenue_12m"] > 0 else None,
                        top_percent=round(TOP_SHARE * 100), flows=[(before, after, count)
                                                                   for (before, after), count in flows],
                        moves=sum(found.flows.values()), threshold=alerts.threshold))


def report_rows(found: queries.TierReport) -> list[dict]:
    """One row per tier, in TIERS order, with its shares of the customers and revenue."""
    customers = sum(stats["customers"] for stats in found.tiers.values())
    revenue = sum(stats["revenue_12m"] for stats in found.tiers.values())
    rows = []
    for tier in TIERS:
        stats = found.tiers.get(tier, {"customers": 0, "revenue_12m": 0.0, "at_risk": 0, "at_risk_revenue": 0.0})
        rows.append({
            "tier": tier, **stats,
            "customer_share": stats["customers"] / customers if customers else None,
            "revenue_share": stats["revenue_12m"] / revenue if revenue > 0 else None,
            "moved_in": sum(count for (before, after), count in found.flows.items() if after == tier),
            "moved_out": sum(count for (before, after), count in found.flows.items() if before == tier),
            "done": found.done.get(tier, 0)})
    return rows
