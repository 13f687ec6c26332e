"""Follow-up tasks in chat and on card buttons, end to end: WeComPeer signs and encrypts
as WeCom does, the real callback over HTTP decrypts, claims and dispatches, the handlers
read and write the database. "Today" is fixed at the test company's as-of date."""

from __future__ import annotations

from datetime import date, datetime, timedelta, timezone
from urllib.parse import urlencode

import pytest
from aiohttp import web
from sqlalchemy import delete, select

from bot.callback import WeComCallback
from bot.config import load_config
from bot.metrics import Metrics
from bot.rescore import full_rescore
from bot.sandbox import WeComPeer
from handlers import router
from handlers.services import Services
from handlers.tasks import snooze_days
from notifications.outbox import enqueue_once
from storage.db import make_async_engine
from storage.importer import run_import
from storage.models import FollowUpTask, OutboxMessage, User
from tests.company import AS_OF, write_company

TOKEN = "123456"
AES_KEY = "kWxPEV2UEDyxWpmPdKC3F4dgPDmOvfKX1HGnEUDS1aR"
CORP = "wx49f0ab532d5d035a"
AGENT = 1000002
TODAY = AS_OF  # 2026-11-20, a Friday


class FixedServices(Services):
    """Services whose clock stops at 10:00 on TODAY in the company's time zone."""

    def now(self) -> datetime:
        return datetime(TODAY.year, TODAY.month, TODAY.day, 10, 0, tzinfo=self.config.tz)


@pytest.fixture
def company(engine, database_url, tmp_path):
    """The test company, scored; tasks the playbook made are removed so each test states its own."""
    run_import(engine, [write_company(tmp_path / "crm")])
    config = load_config(None, environ={"TIERBOT_DATABASE_URL": database_url})
    full_rescore(engine, config, AS_OF)
    with engine.begin() as connection:
        connection.execute(delete(FollowUpTask))
    return config


@pytest.fixture
def peer() -> WeComPeer:
    return WeComPeer(TOKEN, AES_KEY, CORP, AGENT)


@pytest.fixture
async def bot(company, aiohttp_client):
    """The real WeCom callback in an app of its own (no dispatcher: the outbox rows stay
    where the tests can look at them); `bot.wakes` counts dispatcher wake-ups."""
    wakes: list[int] = []
    services = FixedServices(db=make_async_engine(company.database.url), config=company,
                             wake=lambda: wakes.append(1))

    async def late_reply(userid, reply, origin):
        await enqueue_once(services.db, [userid], reply.msgtype, {"content": reply.text}, origin)

    callback = WeComCallback(token=TOKEN, encoding_aes_key=AES_KEY, corp_id=CORP, router=router, services=services,
                             metrics=Metrics(), late_reply=late_reply)
    app = web.Application()
    app.add_routes(callback.routes())
    client = await aiohttp_client(app)
    client.wakes = wakes
    client.services = services
    yield client
    await services.db.dispose()


async def post(bot, query: dict, body: str) -> tuple[int, str]:
    response = await bot.post(f"/wecom/callback?{urlencode(query)}", data=body.encode())
    return response.status, await response.text()


async def say(bot, peer: WeComPeer, userid: str, text: str) -> str:
    status, answer = await post(bot, *peer.text_message(userid, text))
    assert status == 200
    return peer.read_reply(answer)["Content"] if answer else ""


async def click(bot, peer: WeComPeer, userid: str, key: str, code: str, create_time: int = 1_763_600_000,
                card: str = "t1_0a1b2c") -> str:
    status, answer = await post(bot, *peer.card_event(userid, event_key=key, task_id=card, response_code=code,
                                                      create_time=create_time))
    assert status == 200
    return peer.read_reply(answer)["Content"] if answer else ""


_rule_numbers = iter(range(1, 1_000_000))


def add_task(engine, customer_id: str, owner: str, due: date, *, tier: str, title: str = "回访客户",
             churn: float = 0.0, value: float = 0.0, status: str = "open", snoozed_until: date | None = None) -> int:
    """A task as a playbook rule would write it; each its own rule (one open task per rule and customer)."""
    with engine.begin() as connection:
        result = connection.execute(FollowUpTask.__table__.insert().values(
            customer_id=customer_id, rule=f"test_rule_{next(_rule_numbers)}", owner_userid=owner, title_zh=title,
            title_en=f"{title} (en)", created_at=datetime.now(timezone.utc), due_date=due, status=status,
            snoozed_until=snoozed_until, tier=tier, churn_score=churn, value_at_stake=value, reasons=[]))
        return result.inserted_primary_key[0]


def task_row(engine, task_id: int):
    with engine.connect() as connection:
        return connection.execute(select(FollowUpTask.__table__).where(FollowUpTask.id == task_id)).mappings().one()


def card_updates(engine) -> list[dict]:
    with engine.connect() as connection:
        rows = connection.execute(select(OutboxMessage.__table__).where(OutboxMessage.channel == "card_update")
                                  .order_by(OutboxMessage.id)).mappings().all()
    return [dict(row) for row in rows]


# ------------------------------------------------------------------ lists


async def test_tasks_are_listed_by_priority_not_by_due_date(bot, peer, engine):
    # The Dog customer's task is overdue, the Star customer's due in a week: the Star one leads.
    dog = add_task(engine, "F001", "rep_a", TODAY - timedelta(days=1), tier="dog", title="寄送资料", value=42_000)
    star = add_task(engine, "STAR1", "rep_a", TODAY + timedelta(days=7), tier="star", title="安排高层拜访",
                    value=12_000_000)
    hidden = add_task(engine, "COW1", "rep_a", TODAY, tier="cash_cow", snoozed_until=TODAY + timedelta(days=2))
    others = add_task(engine, "DOG1", "rep_b", TODAY, tier="dog", title="李四的任务")

    reply = await say(bot, peer, "rep_a", "今日任务")
    lines = reply.splitlines()
    star_line = next(line for line in lines if line.startswith(f"#{star} "))
    dog_line = next(line for line in lines if line.startswith(f"#{dog} "))
    assert lines.index(star_line) < lines.index(dog_line)
    assert "星辰半导体股份有限公司 · 安排高层拜访 · 截止 2026-11-27 · 优先级" in star_line
    assert "截止 2026-11-19 逾期 · 优先级" in dog_line and "逾期" not in star_line
    assert f"#{hidden} " not in reply and f"#{others} " not in reply and "李四的任务" not in reply
    assert "（1–2 / 2，按优先级）" in reply

    english = await say(bot, peer, "rep_a", "my tasks")
    assert "Your open tasks (1–2 of 2, by priority)" in english
    assert english.index(f"#{star} ") < english.index(f"#{dog} ") and "overdue" in english


async def test_overdue_lists_only_tasks_due_before_today(bot, peer, engine):
    late = add_task(engine, "F001", "rep_a", TODAY - timedelta(days=3), tier="dog", title="寄送资料")
    later = add_task(engine, "F003", "rep_a", TODAY - timedelta(days=1), tier="star", title="补交方案")
    today = add_task(engine, "STAR1", "rep_a", TODAY, tier="star")
    reply = await say(bot, peer, "rep_a", "逾期任务")
    assert f"#{late} " in reply and f"#{later} " in reply and f"#{today} " not in reply
    assert reply.index(f"#{later} ") < reply.index(f"#{late} ")  # the Star tier outranks three days late
    assert "您的逾期任务（1–2 / 2" in reply
    assert "您没有逾期任务" in await say(bot, peer, "rep_b", "逾期任务")


async def test_a_long_task_list_pages_with_more_within_2048_bytes(bot, peer, engine):
    ids = [add_task(engine, f"F{n:03d}", "rep_a" if n % 2 else "rep_b", TODAY + timedelta(days=n), tier="dog",
                    title="电话回访，确认续约意向并记录客户对新版本的反馈" * 2) for n in range(24)]
    mine = ids[1::2] + [add_task(engine, "STAR1", "rep_a", TODAY, tier="star", title="x" * 200),
                        add_task(engine, "COW1", "rep_a", TODAY, tier="cash_cow")]
    pages = [await say(bot, peer, "rep_a", "我的任务")]
    while "更多" in pages[-1] and len(pages) < 10:
        pages.append(await say(bot, peer, "rep_a", "更多"))
    assert len(pages) >= 2 and all(len(page.encode()) <= 2048 for page in pages)
    listed = [int(line.split()[0][1:]) for page in pages for line in page.splitlines() if line.startswith("#")]
    assert sorted(listed) == sorted(mine) and len(listed) == len(set(listed))
    assert "没有更多了" in await say(bot, peer, "rep_a", "更多")


async def test_more_still_pages_a_tier_list(bot, peer):
    first = await say(bot, peer, "boss", "我的瘦狗客户")
    second = await say(bot, peer, "boss", "更多")
    assert "（1–10 / 20）" in first and "（11–20 / 20）" in second


# ------------------------------------------------------------------ done / snooze by message


async def test_done_marks_the_task_done_and_names_it(bot, peer, engine):
    task = add_task(engine, "STAR1", "rep_a", TODAY, tier="star", title="安排高层拜访")
    reply = await say(bot, peer, "rep_a", f"完成 #{task}")
    assert reply == f"已完成任务 #{task}（星辰半导体股份有限公司）：安排高层拜访"
    row = task_row(engine, task)
    assert row["status"] == "done" and row["done_at"] is not None
    assert "之前已经完成" in await say(bot, peer, "rep_a", f"完成 {task}")
    assert f"#{task} " not in await say(bot, peer, "rep_a", "今日任务")


async def test_what_a_rep_says_came_of_a_task_is_kept_and_shown_on_the_customer_card(bot, peer, engine):
    visit = add_task(engine, "STAR1", "rep_a", TODAY, tier="star", title="安排高层拜访")
    call = add_task(engine, "COW1", "rep_a", TODAY, tier="cash_cow", title="续约提醒")
    reply = await say(bot, peer, "rep_a", f"完成 {visit}，客户同意续约两年（下周签）")
    assert reply.endswith("备注：客户同意续约两年（下周签）（查客户时可见）")
    assert task_row(engine, visit)["done_note"] == "客户同意续约两年（下周签）"
    card = await say(bot, peer, "rep_a", "客户 STAR1")
    assert "最近跟进：11-20 张三 完成「安排高层拜访」：客户同意续约两年（下周签）" in card
    # English, and a task done without a note reads without one.
    assert (await say(bot, peer, "rep_a", f"done {call} Renewed, 3 seats more")).endswith(
        "Note: Renewed, 3 seats more (shown on the customer card)")
    assert 'Last follow-up: 张三 did "续约提醒 (en)" on 11-20: Renewed, 3 seats more' in await say(
        bot, peer, "rep_a", "customer COW1")
    plain = add_task(engine, "STAR1", "rep_a", TODAY, tier="star", title="寄送样品")
    assert await say(bot, peer, "rep_a", f"完成 {plain}") == f"已完成任务 #{plain}（星辰半导体股份有限公司）：寄送样品"
    assert task_row(engine, plain)["done_note"] is None
    assert "最近跟进：11-20 张三 完成「寄送样品」\n" in await say(bot, peer, "rep_a", "客户 STAR1")


async def test_a_rep_chooses_the_language_of_their_pushes_in_chat(bot, peer, engine):
    assert await say(bot, peer, "rep_a", "语言") == "推送给您的消息用中文（系统默认）。发送「语言 英文」可以改为英文。"
    chosen = await say(bot, peer, "rep_a", "语言 英文")
    assert chosen.startswith("Done: what tierbot pushes to you") and "in English from now on" in chosen
    with engine.connect() as connection:
        assert connection.execute(select(User.language).where(User.userid == "rep_a")).scalar_one() == "en"
    assert "in English (your choice)" in await say(bot, peer, "rep_a", "language")
    # Card buttons answer in it (the cards came in it); typed commands still follow the message.
    task = add_task(engine, "STAR1", "rep_a", TODAY, tier="star", title="安排高层拜访")
    assert await click(bot, peer, "rep_a", f"done:{task}", "RC-en", create_time=1_763_600_100) == (
        f"Task #{task} (星辰半导体股份有限公司) is done: 安排高层拜访 (en)")
    assert (await say(bot, peer, "rep_a", "今日任务")).startswith("您目前没有待办")
    # Done by typing in Chinese: the English card it was sent on turns to an English label.
    typed = add_task(engine, "STAR1", "rep_a", TODAY, tier="star", title="寄送样品")
    sent_card(engine, f"task:{typed}", "RC-typed")
    assert (await say(bot, peer, "rep_a", f"完成 {typed}")).startswith("已完成任务")
    assert card_updates(engine)[-1]["payload"] == {"response_code": "RC-typed", "replace_name": "Done"}
    assert (await say(bot, peer, "rep_a", "speak chinese")).startswith("好的，以后推送给您的消息")
    with engine.connect() as connection:
        assert connection.execute(select(User.language).where(User.userid == "rep_a")).scalar_one() == "zh"
    assert "法语" in await say(bot, peer, "rep_a", "语言 法语")  # no such choice: the hint, not a change


async def test_someone_elses_task_reads_like_no_task_and_stays_open(bot, peer, engine):
    task = add_task(engine, "STAR1", "rep_a", TODAY, tier="star")
    theirs = await say(bot, peer, "rep_b", f"完成 {task}")
    unknown = await say(bot, peer, "rep_b", "完成 987654")
    assert theirs == f"没有找到您的未完成任务 #{task}。发送「今日任务」查看您的任务编号。"
    assert unknown == theirs.replace(f"#{task}", "#987654")
    assert task_row(engine, task)["status"] == "open"
    assert "You have no open task" in await say(bot, peer, "boss", f"done {task}")  # not even the manager
    assert task_row(engine, task)["status"] == "open"


async def test_snooze_hides_the_task_and_moves_its_due_date(bot, peer, engine):
    task = add_task(engine, "STAR1", "rep_a", TODAY - timedelta(days=1), tier="star", title="安排高层拜访")
    reply = await say(bot, peer, "rep_a", f"延后 {task} 3天")
    assert f"已将任务 #{task}（星辰半导体股份有限公司）延后 3 天，2026-11-23 再提醒您" in reply
    row = task_row(engine, task)
    assert (row["snoozed_until"], row["due_date"], row["status"]) == (date(2026, 11, 23), date(2026, 11, 23), "open")
    listed = await say(bot, peer, "rep_a", "今日任务")
    assert f"#{task} " not in listed
    # Out of the list, but not out of mind.
    assert listed.endswith("另有 1 个已延后的任务，最早 11-23 回到列表。")
    assert f"#{task} " not in await say(bot, peer, "rep_a", "逾期任务")
    assert (await say(bot, peer, "rep_a", "tasks")).endswith("1 snoozed task not shown; the first is back on 11-23.")

    english = await say(bot, peer, "rep_a", f"snooze {task} 1w")
    assert "back on 2026-11-27" in english
    assert task_row(engine, task)["snoozed_until"] == date(2026, 11, 27)


async def test_snooze_with_a_bad_amount_explains_the_form_and_changes_nothing(bot, peer, engine):
    task = add_task(engine, "STAR1", "rep_a", TODAY, tier="star")
    reply = await say(bot, peer, "rep_a", f"延后 {task} 明年再说")
    assert "「延后 12 3天」" in reply
    assert "snooze 12 3d" in await say(bot, peer, "rep_a", f"snooze {task} 0d")
    assert task_row(engine, task)["snoozed_until"] is None
    assert "「完成 12」" in await say(bot, peer, "rep_a", "完成")


@pytest.mark.parametrize("amount, days", [
    ("", 1), ("3天", 3), ("3 天", 3), ("2日", 2), ("1周", 7), ("两周", 14), ("三天后", 3), ("5", 5), ("明天", 1),
    ("3d", 3), ("5 days", 5), ("1 day", 1), ("2w", 14), ("1 week", 7), ("weeks", 7), ("tomorrow", 1),
    ("1个月", 30), ("2 months", 60), ("60天", 60),
    ("0天", None), ("61天", None), ("366天", None), ("明年", None), ("3 months", None), ("-2d", None),
])
def test_snooze_amounts(amount, days):
    assert snooze_days(amount) == days


# ------------------------------------------------------------------ card buttons


async def test_done_button_completes_the_task_and_queues_the_card_update(bot, peer, engine):
    task = add_task(engine, "STAR1", "rep_a", TODAY, tier="star", title="安排高层拜访")
    reply = await click(bot, peer, "rep_a", f"done:{task}", "RC-done-1")
    assert reply == f"已完成任务 #{task}（星辰半导体股份有限公司）：安排高层拜访"
    assert task_row(engine, task)["status"] == "done"
    [update] = card_updates(engine)
    assert update["payload"] == {"response_code": "RC-done-1", "replace_name": "已完成"}
    assert (update["touser"], update["origin"], update["kind"], update["status"]) == (
        "rep_a", "card:RC-done-1", "card_update", "pending")
    assert bot.wakes  # the dispatcher is told at once

    # WeCom retries the same press (same CreateTime and ResponseCode): no second answer, no second row.
    assert await click(bot, peer, "rep_a", f"done:{task}", "RC-done-1") == ""
    assert len(card_updates(engine)) == 1


async def test_two_presses_in_one_second_both_count(bot, peer, engine):
    first = add_task(engine, "STAR1", "rep_a", TODAY, tier="star")
    second = add_task(engine, "COW1", "rep_a", TODAY, tier="cash_cow")
    await click(bot, peer, "rep_a", f"done:{first}", "RC-a", create_time=1_763_600_100, card="t1_aaa")
    await click(bot, peer, "rep_a", f"snooze:{second}", "RC-b", create_time=1_763_600_100, card="t2_bbb")
    assert task_row(engine, first)["status"] == "done"
    assert task_row(engine, second)["snoozed_until"] == date(2026, 11, 21)
    assert [u["payload"] for u in card_updates(engine)] == [
        {"response_code": "RC-a", "replace_name": "已完成"},
        {"response_code": "RC-b", "replace_name": "已延后至 11-21"}]


async def test_button_on_a_task_not_the_clickers_changes_nothing_but_still_greys_the_button(bot, peer, engine):
    task = add_task(engine, "STAR1", "rep_a", TODAY, tier="star")
    reply = await click(bot, peer, "rep_b", f"done:{task}", "RC-x")
    assert reply == f"没有找到您的未完成任务 #{task}。发送「今日任务」查看您的任务编号。"
    assert task_row(engine, task)["status"] == "open"
    [update] = card_updates(engine)
    assert (update["touser"], update["payload"]["replace_name"]) == ("rep_b", "已失效")

    done = add_task(engine, "COW1", "rep_a", TODAY, tier="cash_cow", status="done")
    assert "之前已经完成" in await click(bot, peer, "rep_a", f"snooze:{done}", "RC-y", create_time=1_763_600_200)
    assert card_updates(engine)[-1]["payload"]["replace_name"] == "已完成"


async def test_ack_button_only_greys_the_button_and_unknown_keys_are_ignored(bot, peer, engine):
    assert await click(bot, peer, "rep_a", "ack", "RC-ack") == ""
    assert [u["payload"] for u in card_updates(engine)] == [{"response_code": "RC-ack", "replace_name": "已知晓"}]
    assert await click(bot, peer, "rep_a", "launch-rocket", "RC-z", create_time=1_763_600_300) == ""
    assert len(card_updates(engine)) == 1


def visit_item(task: int, card_id: str) -> dict:
    """The item of STAR1's visit task card, as the playbook queues it."""
    return {"type": "task", "customer_id": "STAR1", "name": "星辰半导体股份有限公司", "tier": "star", "reasons": [],
            "card_task_id": card_id,
            "task": {"id": task, "title_zh": "安排高层拜访", "title_en": "Executive visit", "due_date": "2026-11-25"}}


@pytest.fixture
async def sandbox_service(company, aiohttp_client):
    """The real service in sandbox mode for rep_a, its dispatcher drained by hand: (client,
    runtime, sandbox)."""
    from bot.app import RUNTIME, create_app, sandbox_identity
    from bot.sandbox import Sandbox

    identity = sandbox_identity()
    sandbox = Sandbox(identity, ["rep_a"])
    identity.api_base = await sandbox.start_emulator()
    try:
        service = await aiohttp_client(create_app(company, identity, sandbox=sandbox, dispatch=False))
        yield service, service.app[RUNTIME], sandbox
    finally:
        await sandbox.stop_emulator()


async def test_a_press_in_the_sandbox_greys_the_button_through_the_dispatcher(sandbox_service, engine):
    """The whole loop with the real service: a task card sent to the emulator, the member's
    press as WeCom's signed event, the task done, and the dispatcher's update_template_card."""
    from notifications import messages

    service, runtime, sandbox = sandbox_service
    task = add_task(engine, "STAR1", "rep_a", TODAY + timedelta(days=3), tier="star", title="安排高层拜访")
    card_id = messages.card_task_id(task)
    item = visit_item(task, card_id)
    await runtime.client.send_template_card(["rep_a"], messages.task_card(item, "zh", card_id))

    answer = await (await service.post("/sandbox/api/click", json={
        "userid": "rep_a", "task_id": card_id, "key": f"done:{task}"})).json()
    assert answer["reply"] == f"已完成任务 #{task}（星辰半导体股份有限公司）：安排高层拜访"
    assert task_row(engine, task)["status"] == "done"
    assert runtime.dispatcher.wakeup.is_set()  # services.wake is the dispatcher's

    await runtime.dispatcher.drain()
    assert sandbox.emulator.card_state(card_id, "rep_a")["replaced_name"] == "已完成"
    assert [row["status"] for row in card_updates(engine)] == ["sent"]


# ------------------------------------------------------------------ typed commands grey the sent card

NOW = datetime(TODAY.year, TODAY.month, TODAY.day, 2, 0, tzinfo=timezone.utc)  # 10:00 in Shanghai


def sent_card(engine, origin: str, code: str, owner: str = "rep_a", sent_at: datetime = NOW) -> None:
    """A button card the dispatcher sent, with the response_code WeCom answered."""
    with engine.begin() as connection:
        connection.execute(OutboxMessage.__table__.insert().values(
            created_at=sent_at, touser=owner, msgtype="template_card", payload={}, status="sent", origin=origin,
            kind="task", channel="app", sent_at=sent_at, response_code=code, batch_item={"type": "task"}))


async def test_typing_done_greys_the_card_the_task_was_sent_on(bot, peer, engine):
    task = add_task(engine, "STAR1", "rep_a", TODAY, tier="star", title="安排高层拜访")
    sent_card(engine, f"task:{task}", "RC-sent-1")
    assert await say(bot, peer, "rep_a", f"完成 {task}") == f"已完成任务 #{task}（星辰半导体股份有限公司）：安排高层拜访"
    [update] = card_updates(engine)
    assert update["payload"] == {"response_code": "RC-sent-1", "replace_name": "已完成"}
    assert (update["touser"], update["status"]) == ("rep_a", "pending")
    assert bot.wakes
    # Typed again: the task is done already and the card's update is queued once.
    await say(bot, peer, "rep_a", f"完成 {task}")
    assert len(card_updates(engine)) == 1


async def test_typing_snooze_greys_the_tier_change_card_that_carried_the_task(bot, peer, engine):
    with engine.begin() as connection:
        run_id = connection.exec_driver_sql(
            "INSERT INTO score_runs (started_at, as_of, status, kind, config_hash) "
            "VALUES ('2026-11-20 01:00:00', '2026-11-20', 'succeeded', 'incremental', 'x') RETURNING id").scalar()
        change = connection.exec_driver_sql(
            "INSERT INTO tier_history (customer_id, run_id, model, from_tier, to_tier, changed_at, reasons) "
            f"VALUES ('QM1', {run_id}, 'value_matrix', 'question_mark', 'star', '2026-11-20 01:00:00', '[]') "
            "RETURNING id").scalar()
    task = add_task(engine, "QM1", "rep_b", TODAY, tier="star")
    with engine.begin() as connection:
        connection.execute(FollowUpTask.__table__.update().where(FollowUpTask.id == task).values(run_id=run_id))
    sent_card(engine, f"tier:{change}", "RC-tier-1", owner="rep_b")
    await say(bot, peer, "rep_b", f"延后 {task} 3天")
    [update] = card_updates(engine)
    assert update["payload"] == {"response_code": "RC-tier-1", "replace_name": "已延后至 11-23"}


async def test_a_command_typed_in_english_greys_the_card_in_the_language_it_was_sent_in(bot, peer, engine):
    task = add_task(engine, "STAR1", "rep_a", TODAY, tier="star", title="安排高层拜访")
    sent_card(engine, f"task:{task}", "RC-en-1")
    answer = await say(bot, peer, "rep_a", f"snooze {task} 2d")
    assert "is snoozed for 2 days" in answer  # the answer in the asker's language
    [update] = card_updates(engine)
    assert update["payload"] == {"response_code": "RC-en-1", "replace_name": "已延后至 11-22"}


async def test_no_card_update_without_a_usable_response_code(bot, peer, engine):
    summarised = add_task(engine, "STAR1", "rep_a", TODAY, tier="star")  # its card went out in a summary
    stale = add_task(engine, "COW1", "rep_a", TODAY, tier="cash_cow")
    sent_card(engine, f"task:{stale}", "RC-old", sent_at=NOW - timedelta(hours=80))  # WeCom honours 72 hours
    someone_elses = add_task(engine, "F001", "rep_b", TODAY, tier="dog")
    sent_card(engine, f"task:{someone_elses}", "RC-b", owner="rep_b")
    for task in (summarised, stale, someone_elses):
        await say(bot, peer, "rep_a", f"完成 {task}")
    assert card_updates(engine) == []
    assert task_row(engine, someone_elses)["status"] == "open"


async def test_typing_done_in_the_sandbox_greys_the_card_through_the_dispatcher(sandbox_service, engine):
    """The card queued as a run queues it (made when sent), sent by the dispatcher, the task
    done by typing, and the card greyed with the response_code the send was answered with."""
    from notifications import messages
    from notifications.outbox import outbox_row, queue_rows

    service, runtime, sandbox = sandbox_service
    task = add_task(engine, "STAR1", "rep_a", TODAY + timedelta(days=3), tier="star", title="安排高层拜访")
    card_id = messages.card_task_id(task)
    item = visit_item(task, card_id)
    with engine.begin() as connection:
        queue_rows(connection, [outbox_row(["rep_a"], "template_card", None, origin=f"task:{task}", kind="task",
                                           batch_key="rep:rep_a", batch_item=item)])
    await runtime.dispatcher.drain()
    assert sandbox.emulator.card_state(card_id, "rep_a")["replaced_name"] is None

    answer = await (await service.post("/sandbox/api/say", json={"userid": "rep_a",
                                                                 "text": f"完成 {task}"})).json()
    assert answer["reply"] == f"已完成任务 #{task}（星辰半导体股份有限公司）：安排高层拜访"
    await runtime.dispatcher.drain()
    assert sandbox.emulator.card_state(card_id, "rep_a")["replaced_name"] == "已完成"
    assert [row["status"] for row in card_updates(engine)] == ["sent"]


async def test_the_customer_card_shows_what_is_open_on_the_customer(bot, peer, engine):
    visit = add_task(engine, "STAR1", "rep_a", TODAY + timedelta(days=3), tier="star", title="安排高层拜访")
    call = add_task(engine, "STAR1", "boss", TODAY + timedelta(days=1), tier="star", title="经理回访")
    add_task(engine, "STAR1", "rep_a", TODAY, tier="star", title="已完成的", status="done")
    await say(bot, peer, "rep_a", "工单 星辰半导体 P2 报表导出慢")
    card = await say(bot, peer, "rep_a", "客户 STAR1")
    # Soonest due first, whoever holds it; a done task is not open work.
    assert f"待办跟进（2）：#{call} 经理回访（王总，截止 11-21）；#{visit} 安排高层拜访（张三，截止 11-23）" in card
    assert "未关闭工单 1 张：#T" in card and " P2 · 待接单" in card
    english = await say(bot, peer, "rep_a", "customer STAR1")
    assert f"Open tasks (2): #{call} 经理回访 (en) (王总, due 11-21)" in english and "Open tickets: 1" in english
    assert "待办跟进" not in await say(bot, peer, "rep_a", "客户 COW1")


async def test_card_updates_go_only_to_cards_the_asker_got_and_count_71_hours_in_utc(bot, peer, engine):
    handed = add_task(engine, "STAR1", "rep_b", TODAY, tier="star")  # carded to rep_a, then handed to rep_b
    sent_card(engine, f"task:{handed}", "RC-rep-a", owner="rep_a")
    await say(bot, peer, "rep_b", f"完成 {handed}")
    assert task_row(engine, handed)["status"] == "done" and card_updates(engine) == []
    # 65 hours old: within WeCom's 72 (71 kept), whatever the service's time zone.
    recent = add_task(engine, "COW1", "rep_a", TODAY, tier="cash_cow")
    sent_card(engine, f"task:{recent}", "RC-65h", sent_at=NOW - timedelta(hours=65))
    await say(bot, peer, "rep_a", f"完成 {recent}")
    assert [u["payload"]["response_code"] for u in card_updates(engine)] == ["RC-65h"]
