"""分层报表 / tier report: DOMAIN.md's cockpit KPIs over one person's customers — per
value-matrix tier the customers and 12-month revenue with their shares (is the 80/20
holding?), tier changes in and out over a period and the commonest moves between tiers,
customers at high churn risk, and follow-up effort against revenue.

Made for the chat command (handlers.reports) and pushed weekly to managers and admins
(`scheduler.tier_report`, queue_tier_reports): one text for both.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from notifications.outbox import outbox_row, personal_delay
from notifications.settings import ChurnAlerts
from scoring import TIERS
from storage import queries
from storage.models import OutboxMessage, User

REPORT_DAYS = 30
MAX_REPORT_DAYS = 365
# What the weekly push covers.
WEEKLY_DAYS = 7
# The moves between tiers named under the table, the commonest first.
FLOWS_SHOWN = 6
TOP_SHARE = 0.2
SCOPE = {"zh": {"rep": "您", "agent": "您", "manager": "您团队", "admin": "全公司"},
         "en": {"rep": "Your", "agent": "Your", "manager": "Your team's", "admin": "Company-wide"}}
LEADS = ("manager", "admin")


@dataclass(frozen=True)
class TierReportText:
    text: str
    customers: int  # scored customers it covers


async def tier_report_text(connection: AsyncConnection, role: str, owners: list[str] | None, run_id: int,
                           alerts: ChurnAlerts, tz: ZoneInfo, now: datetime, days: int, lang: str) -> TierReportText:
    """The report over `owners`' customers (None: everyone's) for the `days` to `now`."""
    # Here, not at the top: handlers (whose package registers handlers.reports) imports this module.
    from handlers.text import render, tier_names

    # In UTC: SQLite keeps timestamps as UTC wall-clock text, and compares them as text.
    since = (now - timedelta(days=days)).astimezone(timezone.utc)
    found = await queries.tier_report(connection, owners, run_id, since, alerts.threshold, alerts.min_revenue_12m,
                                      TOP_SHARE)
    as_of = await queries.run_as_of(connection, run_id)
    rows = report_rows(found)
    total = {key: sum(row[key] for row in rows) for key in ("customers", "revenue_12m", "at_risk", "done")}
    # Tasks made for a customer before its first tier: effort all the same.
    total["done"] += found.done.get(None, 0)
    for row in rows:
        row["effort_share"] = row["done"] / total["done"] if total["done"] else None
    flows = sorted(found.flows.items(), key=lambda item: (-item[1], TIERS.index(item[0][0]) if item[0][0] in TIERS
                                                          else len(TIERS), item[0]))[:FLOWS_SHOWN]
    short = {tier: names["short_zh" if lang == "zh" else "en"] for tier, names in tier_names().items()}
    text = render(f"chat/tier_report.{lang}.j2", scope=SCOPE[lang].get(role, ""), days=days,
                  since=since.astimezone(tz).strftime("%Y-%m-%d"), as_of=as_of, rows=rows, total=total, names=short,
                  top_share=found.top_revenue / total["revenue_12m"] if total["revenue_12m"] > 0 else None,
                  top_percent=round(TOP_SHARE * 100), flows=[(before, after, count) for (before, after), count in flows],
                  moves=sum(found.flows.values()), threshold=alerts.threshold)
    return TierReportText(text, total["customers"])


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


async def queue_tier_reports(engine: AsyncEngine, settings, now: datetime) -> int:
    """The week's tier report to every manager and admin with scored customers in view, in
    their language: on the first working day the job runs in each ISO week (a holiday
    Monday moves it to Tuesday), once per person and week. Returns how many were queued."""
    today = now.astimezone(settings.tz).date()
    if not settings.calendar.is_workday(today):
        return 0
    year, week, _ = today.isocalendar()
    key = f"{year}-W{week:02d}"
    rows = []
    async with engine.connect() as connection:
        run_id = await queries.latest_run_id(connection)
        if run_id is None:
            return 0
        sent = set((await connection.execute(select(OutboxMessage.origin).where(
            OutboxMessage.origin.like(f"tier_report:%:{key}")))).scalars())
        leads = (await connection.execute(select(User.userid, User.name, User.role, User.language)
                                          .where(User.role.in_(LEADS)).order_by(User.userid))).all()
        for lead in leads:
            origin = f"tier_report:{lead.userid}:{key}"
            if origin in sent:
                continue
            owners = await queries.visible_owners(connection, queries.UserRow(lead.userid, lead.name, lead.role))
            report = await tier_report_text(connection, lead.role, owners, run_id, settings.playbook.churn_alerts,
                                            settings.tz, now, WEEKLY_DAYS, lead.language or settings.language)
            if report.customers == 0:
                continue
            rows.append(outbox_row([lead.userid], "markdown", {"content": report.text}, origin=origin,
                                   kind="tier_report", now=now, not_before=now + personal_delay(lead.userid)))
    if rows:
        async with engine.begin() as connection:
            await connection.execute(OutboxMessage.__table__.insert(), rows)
    return len(rows)
