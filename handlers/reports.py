"""分层报表 / tier report in chat (notifications.reports makes it): a rep's own customers,
a manager's tree, everyone's for an admin, over 30 days or as many as typed.
Registered before 「客户 X」, which would otherwise take 「客户报表」 for a customer's name.
"""

from __future__ import annotations

from handlers.registry import PERIOD_EN, PERIOD_ZH, CommandContext, Reply
from handlers.router import router
from handlers.text import render
from notifications.reports import MAX_REPORT_DAYS, REPORT_DAYS, tier_report_text
from storage import queries


@router.command("tier_report",
                rf"(?:我的|团队的?)?(?:客户分层|价值分层|分层|客户)(?:报表|报告|统计|分析){PERIOD_ZH}",
                rf"(?:经营|管理|销售|客户)?驾驶舱{PERIOD_ZH}",
                rf"(?:show )?(?:my |team |my team's )?(?:tiers?|tiering|customers?) (?:report|stats|statistics)"
                rf"{PERIOD_EN}",
                rf"(?:show )?(?:my |the )?(?:cockpit|dashboard){PERIOD_EN}")
async def tier_report(ctx: CommandContext) -> Reply:
    days = ctx.days(REPORT_DAYS)
    if not 1 <= days <= MAX_REPORT_DAYS:
        return Reply(render(f"chat/tier_report_usage.{ctx.lang}.j2", most=MAX_REPORT_DAYS), msgtype="text")
    config = ctx.services.config
    async with ctx.services.db.connect() as connection:
        run_id = await ctx.services.latest_run_id(connection)
        if run_id is None:
            return Reply(render(f"chat/no_scores.{ctx.lang}.j2"), msgtype="text")
        owners = await ctx.services.visible_owners(connection, ctx.asker)
        report = await tier_report_text(connection, ctx.asker.role, owners, run_id, config.playbook.churn_alerts,
                                        config.tz, ctx.services.now(), days, ctx.lang)
    if report.customers == 0 and ctx.asker.role == "agent":
        return Reply(render(f"chat/agent_no_customers.{ctx.lang}.j2"), msgtype="text")
    return Reply(report.text)
