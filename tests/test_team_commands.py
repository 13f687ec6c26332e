"""Manager commands end to end over the real callback: 流失预警 / churn (high-risk customers
of the asker's reporting tree, from the latest full run) and 团队 / team (per rep)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import delete, func, select

from bot.config import load_config
from handlers.text import percent
from bot.rescore import full_rescore
from storage.importer import run_import
from storage.models import Customer, FollowUpTask, ScoreSnapshot, TierChange
from tests.company import AS_OF, CUSTOMERS_HEADER, ORDERS_HEADER, USERS_HEADER, company_rows
from tests.conftest import write_csv
from tests.test_task_commands import TODAY, add_task, bot, peer, say  # noqa: F401  (fixtures)

# 10:00 on TODAY in Shanghai, when the bot's clock stands (tests.test_task_commands.FixedServices).
NOW_UTC = datetime(TODAY.year, TODAY.month, TODAY.day, 2, 0, tzinfo=timezone.utc)

# A second team: boss2 manages rep_c, who owns OTHER1 — outside boss's tree.
EXTRA_USERS = [["boss2", "赵总", "manager", "", "华南", ""], ["rep_c", "王五", "rep", "boss2", "华南一组", ""]]
EXTRA_CUSTOMERS = [["OTHER1", "南方机械制造有限公司", "rep_c", "机械", "华南", 900, "end_user", "false", "false",
                    "false", 3, "", "finance", "2022-03-01"]]
EXTRA_ORDERS = [["OTHER1-O000", "OTHER1", "2025-06-15", "300000.00", "200000.00", "mes", "new"]]

OVERDUE = {"factor": "overdue", "value": 45, "points": 25.0,
           "detail": {"days_since_last_order": 120, "cycle_days": 75}}
DECLINE = {"factor": "activity_decline", "value": 0.8, "points": 28.0, "detail": {"last_30d": 2, "baseline_30d": 10}}
COMPLAINTS = {"factor": "complaints_rising", "value": 3, "points": 15.0, "detail": {"last_90d": 4, "previous_90d": 1}}
# customer → (churn score, churn reasons, 12-month revenue or None to keep the run's)
# written into the latest run's snapshot.
RISKS = {"STAR1": (85.0, [OVERDUE, DECLINE], None), "DOG1": (72.0, [COMPLAINTS], 8_000.0),
         "COW1": (69.9, [DECLINE], None), "OTHER1": (90.0, [OVERDUE], 300_000.0)}


@pytest.fixture
def company(engine, database_url, tmp_path):
    """Two teams, scored; churn scores set by hand (the hand-made company has no activity)."""
    rows = company_rows()
    folder = tmp_path / "crm"
    write_csv(folder / "users.csv", USERS_HEADER, rows["users"] + EXTRA_USERS)
    write_csv(folder / "customers.csv", CUSTOMERS_HEADER, rows["customers"] + EXTRA_CUSTOMERS)
    write_csv(folder / "orders.csv", ORDERS_HEADER, rows["orders"] + EXTRA_ORDERS)
    run_import(engine, [folder])
    config = load_config(None, environ={"TIERBOT_DATABASE_URL": database_url})
    full_rescore(engine, config, AS_OF)
    snapshots = ScoreSnapshot.__table__
    with engine.begin() as connection:
        connection.execute(delete(FollowUpTask))
        run_id = connection.execute(select(func.max(snapshots.c.run_id))).scalar_one()
        for customer_id, (score, reasons, revenue) in RISKS.items():
            scores, why, kept = connection.execute(select(snapshots.c.scores, snapshots.c.reasons,
                                                          snapshots.c.revenue_12m).where(
                snapshots.c.run_id == run_id, snapshots.c.customer_id == customer_id)).one()
            connection.execute(snapshots.update().where(snapshots.c.run_id == run_id,
                                                        snapshots.c.customer_id == customer_id)
                               .values(churn_score=score, scores={**scores, "churn": score},
                                       reasons={**why, "churn": reasons},
                                       revenue_12m=kept if revenue is None else revenue))
    return config


async def test_reps_are_told_politely_that_the_team_summary_is_for_managers(bot, peer):
    reply = await say(bot, peer, "rep_a", "团队")
    assert reply.startswith("「团队」是给销售经理的功能")
    assert "星辰" not in reply and "张三" not in reply
    assert "is for sales managers" in await say(bot, peer, "rep_b", "team")


async def test_a_rep_sees_the_churn_alerts_of_their_own_customers_only(bot, peer):
    reply = await say(bot, peer, "rep_a", "流失预警")
    assert "您名下的流失预警（风险 ≥ 70，1–1 / 1）" in reply
    assert "星辰半导体" in reply and "街角建材" not in reply and "南方机械" not in reply
    assert "负责人" not in reply  # they are the owner
    assert await say(bot, peer, "rep_a", "我的高流失风险客户") == reply
    other = await say(bot, peer, "rep_b", "my churn risks")
    assert "Your churn alerts (risk ≥ 70, 1–1 of 1)" in other and "街角建材" in other and "星辰" not in other


async def test_churn_lists_only_the_managers_team_at_or_above_the_threshold(bot, peer):
    reply = await say(bot, peer, "boss", "流失预警")
    assert "您团队的流失预警（风险 ≥ 70，1–2 / 2）" in reply
    assert "南方机械" not in reply  # boss2's team
    assert "老牌纺织" not in reply  # 69.9 is below 70
    star = reply.index("1. 星辰半导体股份有限公司（STAR1）风险 85 · 负责人 张三 · 涉及金额 ¥")
    dog = reply.index("2. 街角建材商行（DOG1）风险 72 · 负责人 李四")
    assert star < dog
    # The reasons in words, the one adding most risk first.
    assert "近30天活跃 2 次，自身基线 10 次/30天（下降 80%）；已 120 天未下单" in reply
    assert "投诉增加：近90天 4 次，此前90天 1 次" in reply
    assert len(reply.encode()) <= 2048

    other = await say(bot, peer, "boss2", "churn alerts")
    assert "Your team's churn alerts (risk ≥ 70, 1–1 of 1)" in other
    assert "南方机械制造有限公司 (OTHER1) risk 90 · owner 王五" in other and "星辰" not in other

    everyone = await say(bot, peer, "admin", "流失预警")
    assert "全公司的流失预警（风险 ≥ 70，1–3 / 3）" in everyone
    assert everyone.index("南方机械") < everyone.index("星辰") < everyone.index("街角建材")


async def test_churn_threshold_comes_from_config(bot, peer, company):
    alerts = company.playbook.churn_alerts.model_copy(update={"threshold": 80.0})
    bot.services.config = company.model_copy(update={
        "playbook": company.playbook.model_copy(update={"churn_alerts": alerts})})
    reply = await say(bot, peer, "boss", "流失预警")
    assert "风险 ≥ 80，1–1 / 1" in reply and "星辰" in reply and "街角建材" not in reply


async def test_team_summary_counts_tiers_revenue_and_tasks_per_rep(bot, peer, engine):
    add_task(engine, "STAR1", "rep_a", TODAY - timedelta(days=2), tier="star")
    add_task(engine, "COW1", "rep_a", TODAY + timedelta(days=2), tier="cash_cow")
    add_task(engine, "DOG1", "rep_b", TODAY, tier="dog")
    add_task(engine, "QM1", "rep_b", TODAY - timedelta(days=9), tier="question_mark", status="done")
    add_task(engine, "OTHER1", "rep_c", TODAY - timedelta(days=1), tier="dog")
    with engine.connect() as connection:
        counts = {(owner, tier): n for owner, tier, n in connection.execute(
            select(Customer.owner_userid, Customer.tier, func.count()).group_by(Customer.owner_userid, Customer.tier))}

    def line(name: str, owner: str) -> str:
        tiers = " · ".join(f"{label} {counts.get((owner, tier), 0)}" for label, tier in (
            ("明星", "star"), ("金牛", "cash_cow"), ("问题", "question_mark"), ("瘦狗", "dog")))
        return f"{name} {tiers} · 近12月 ¥"

    reply = await say(bot, peer, "boss", "团队")
    assert "您团队概况（2 人）" in reply
    lines = reply.splitlines()
    zhang = next(text for text in lines if text.startswith("张三 "))
    li = next(text for text in lines if text.startswith("李四 "))
    assert zhang.startswith(line("张三", "rep_a")) and zhang.endswith("待办 2（逾期 1）")
    assert li.startswith(line("李四", "rep_b")) and li.endswith("待办 1")
    assert lines.index(zhang) < lines.index(li)  # the Star and the Cash Cow: more revenue
    total = sum(n for (owner, _tier), n in counts.items() if owner in ("rep_a", "rep_b"))
    assert total == 28
    star_total = counts[("rep_a", "star")] + counts.get(("rep_b", "star"), 0)
    assert f"合计：明星 {star_total} · 金牛 " in reply and "待办任务 3（逾期 1）" in reply
    assert "王五" not in reply and len(reply.encode()) <= 2048

    english = await say(bot, peer, "admin", "team")
    assert "Company-wide summary (3 people)" in english and "王五" in english
    assert "open tasks 4 (2 overdue)" in english


async def test_churn_reads_the_latest_full_run(bot, peer, engine, company):
    # A later full run replaces the hand-set picture (STAR1 at 85). In it only the corner
    # shop is at risk, silent for 994 days after its one order: past saving, with nothing
    # bought in 12 months, so not listed.
    full_rescore(engine, company, AS_OF + timedelta(days=1))
    reply = await say(bot, peer, "boss", "流失预警")
    assert reply == "您团队目前没有流失风险 ≥ 70 的客户（近12个月没有营收的客户不计在内，见「赢回名单」）。"


async def test_a_customer_with_nothing_bought_in_12_months_is_past_saving_not_listed(bot, peer, engine):
    with engine.begin() as connection:
        connection.execute(ScoreSnapshot.__table__.update().where(ScoreSnapshot.customer_id == "DOG1")
                           .values(revenue_12m=0.0))
    reply = await say(bot, peer, "boss", "流失预警")
    assert "您团队的流失预警（风险 ≥ 70，1–1 / 1）" in reply and "街角建材" not in reply
    assert "近12个月没有营收的客户不在此列" in reply


async def test_customers_at_risk_with_nothing_bought_in_12_months_are_on_the_win_back_list(bot, peer, engine):
    snapshots = ScoreSnapshot.__table__
    with engine.begin() as connection:
        run_id = connection.execute(select(func.max(snapshots.c.run_id))).scalar_one()
        connection.execute(snapshots.update().where(snapshots.c.run_id == run_id, snapshots.c.customer_id == "COW1")
                           .values(churn_score=80.0, revenue_12m=0.0))
    churn = await say(bot, peer, "rep_a", "流失预警")
    assert "老牌纺织" not in churn and "赢回请看「赢回名单」" in churn
    reply = await say(bot, peer, "rep_a", "赢回名单")
    assert reply.startswith("您名下的赢回名单（流失风险 ≥ 70、近12个月没有营收，1–1 / 1）")
    assert "1. 老牌纺织集团有限公司（COW1）金牛客户 · 价值分 94 · 风险 80" in reply
    assert "星辰" not in reply  # still buying: it is on the churn list instead
    assert "win-back list" in await say(bot, peer, "rep_a", "win back")
    assert "没有要赢回的客户" in await say(bot, peer, "rep_b", "我的赢回客户")


async def test_a_manager_drills_down_to_one_rep_of_their_team(bot, peer):
    summary = await say(bot, peer, "boss", "张三的客户")
    assert summary.startswith("张三的客户：共 ") and "明星客户：1 家" in summary
    stars = await say(bot, peer, "boss", "rep_a的明星客户")
    assert stars.startswith("张三的明星客户（1–1 / 1）") and "星辰半导体" in stars and "负责人" not in stars
    assert "街角建材" not in await say(bot, peer, "boss", "张三名下的瘦狗客户")
    assert (await say(bot, peer, "boss", "rep_b's customers")).startswith("李四's customers")
    # Another team's rep reads like nobody; a rep may not look at a colleague's.
    nobody = await say(bot, peer, "boss", "赵六的客户")
    assert await say(bot, peer, "boss", "王五的客户") == nobody.replace("赵六", "王五")
    assert "南方机械" not in await say(bot, peer, "boss", "rep_c的明星客户")
    assert (await say(bot, peer, "boss2", "王五的客户")).startswith("王五的客户：共 1 家")
    assert (await say(bot, peer, "rep_a", "李四的客户")).startswith("「团队」是给销售经理的功能")
    # Commands of its shape that are others' still work.
    assert (await say(bot, peer, "boss", "我的客户")).startswith("您团队的客户")


async def test_a_manager_lists_the_overdue_tasks_of_their_team(bot, peer, engine):
    old = add_task(engine, "STAR1", "rep_a", TODAY - timedelta(days=9), tier="star", title="安排高层拜访")
    newer = add_task(engine, "DOG1", "rep_b", TODAY - timedelta(days=1), tier="dog", title="回访")
    add_task(engine, "QM1", "rep_b", TODAY + timedelta(days=2), tier="question_mark")  # not due yet
    add_task(engine, "OTHER1", "rep_c", TODAY - timedelta(days=30), tier="dog")  # boss2's team
    reply = await say(bot, peer, "boss", "团队逾期任务")
    assert reply.startswith("您团队的逾期任务（1–2 / 2，逾期最久的在前）")
    assert reply.index(f"#{old} 张三 · 星辰半导体") < reply.index(f"#{newer} 李四 · 街角建材")
    assert "逾期 9 天" in reply and "南方机械" not in reply
    assert "1 day overdue" in await say(bot, peer, "boss", "team overdue tasks")
    assert (await say(bot, peer, "rep_a", "团队逾期任务")).startswith("「团队」是给销售经理的功能")
    other_team = await say(bot, peer, "boss2", "团队逾期")
    assert other_team.startswith("您团队的逾期任务（1–1 / 1") and "南方机械" in other_team and "逾期 30 天" in other_team


def _history(engine, customer_id: str, before: str, after: str, days_ago: float) -> None:
    with engine.begin() as connection:
        run_id = connection.execute(select(func.max(ScoreSnapshot.run_id))).scalar_one()
        connection.execute(TierChange.__table__.insert().values(
            customer_id=customer_id, run_id=run_id, model="value_matrix", from_tier=before, to_tier=after,
            changed_at=NOW_UTC - timedelta(days=days_ago), reasons=[]))


def _done(engine, customer_id: str, owner: str, tier: str, days_ago: float) -> None:
    task_id = add_task(engine, customer_id, owner, TODAY, tier=tier, status="done")
    with engine.begin() as connection:
        connection.execute(FollowUpTask.__table__.update().where(FollowUpTask.id == task_id)
                           .values(done_at=NOW_UTC - timedelta(days=days_ago)))


def _tiers_of(engine, owners: tuple[str, ...]) -> dict[str, int]:
    with engine.connect() as connection:
        return dict(connection.execute(select(Customer.tier, func.count()).where(Customer.owner_userid.in_(owners))
                                       .group_by(Customer.tier)).all())


async def test_the_tier_report_shows_shares_moves_churn_and_effort_of_the_askers_customers(bot, peer, engine):
    _history(engine, "QM1", "question_mark", "star", days_ago=5)
    _history(engine, "F001", "cash_cow", "dog", days_ago=40)  # before the 30 days
    _history(engine, "OTHER1", "dog", "question_mark", days_ago=3)  # boss2's team
    _done(engine, "STAR1", "rep_a", "star", days_ago=2)
    _done(engine, "DOG1", "rep_b", "dog", days_ago=1)
    _done(engine, "OTHER1", "rep_c", "question_mark", days_ago=1)  # boss2's team
    add_task(engine, "COW1", "rep_a", TODAY, tier="cash_cow")  # open: no effort spent yet
    tiers = _tiers_of(engine, ("boss", "rep_a", "rep_b"))

    reply = await say(bot, peer, "boss", "分层报表")
    assert reply.startswith("您团队客户分层报表（近30天，2026-10-21 起）")
    star_line = reply.split("\n")[1]
    assert star_line.startswith(f"明星 {tiers['star']} 家（")
    # STAR1 at risk (85), DOG1 too (72, with revenue); COW1 just under the threshold (69.9).
    assert "转入 1 · 转出 0 · 高流失风险 1（" in reply.split("\n")[2] and "完成跟进 1（50%）" in reply.split("\n")[2]
    assert "高流失风险 0 · 完成跟进 0（0%）" in reply.split("\n")[4]  # Cash Cows
    assert "转入 0 · 转出 1 · 高流失风险 0" in reply.split("\n")[6]  # Question Marks
    assert "高流失风险 1（¥8,000） · 完成跟进 1（50%）" in reply.split("\n")[8]  # Dogs
    with engine.connect() as connection:
        revenues = sorted(connection.execute(
            select(ScoreSnapshot.revenue_12m).join(Customer, Customer.customer_id == ScoreSnapshot.customer_id)
            .where(ScoreSnapshot.run_id == select(func.max(ScoreSnapshot.run_id)).scalar_subquery(),
                   Customer.owner_userid.in_(("boss", "rep_a", "rep_b")))).scalars(), reverse=True)
    top_fifth = sum(revenues[:-(-len(revenues) // 5)]) / sum(revenues)
    assert f"合计 {sum(tiers.values())} 家" in reply and f"营收前 20% 的客户贡献 {percent(top_fifth)}" in reply
    assert "分层变动 1 次：问题→明星 1" in reply  # OTHER1's move, in boss2's team, is not counted

    longer = await say(bot, peer, "boss", "分层报表 60天")
    assert "分层变动 2 次：" in longer and "金牛→瘦狗 1" in longer and "问题→明星 1" in longer

    own = await say(bot, peer, "rep_a", "tier report")
    assert own.startswith("Your tier report, last 30 days (since 2026-10-21)")
    assert f"Total {sum(_tiers_of(engine, ('rep_a',)).values())} customers" in own
    assert "follow-ups done 1 (100%)" in own.split("\n")[2] and "1 tier change" not in own  # QM1 is rep_b's

    assert "（1–365 天）" in await say(bot, peer, "boss", "分层报表 0天")
    assert "您是不是想发「分层报表」？" in await say(bot, peer, "boss", "分层抱表")


async def test_the_tier_reports_period_ends_exactly_that_many_days_back(bot, peer, engine):
    # Hours, not a time zone's eight, either side of the boundary.
    _history(engine, "F003", "dog", "cash_cow", days_ago=29.9)
    _history(engine, "F005", "dog", "cash_cow", days_ago=30.1)
    _done(engine, "F003", "rep_a", "dog", days_ago=29.9)
    _done(engine, "F005", "rep_a", "dog", days_ago=30.1)
    reply = await say(bot, peer, "boss", "分层报表")
    assert "分层变动 1 次：瘦狗→金牛 1" in reply and "完成跟进 1（100%）" in reply.split("\n")[8]
