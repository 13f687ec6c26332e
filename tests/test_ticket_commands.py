"""Service tickets in chat and on card buttons: a rep opens one with 「工单 客户 问题」, the
router (notifications.tickets.process_tickets) assigns it, the agent lists, accepts,
resolves and hands it over; 暂离 keeps new tickets away; the manager's 工单报表 counts
per tier. Messages go through the real WeCom callback (WeComPeer signs and encrypts);
the clock of the handlers is fixed (FixedServices.moment) and moved by the tests."""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone
from urllib.parse import urlencode
from zoneinfo import ZoneInfo

import pytest
from aiohttp import web
from sqlalchemy import select, update

from bot.callback import WeComCallback
from bot.config import load_config
from bot.metrics import Metrics
from bot.rescore import full_rescore
from bot.sandbox import WeComPeer
from handlers import router
from handlers.registry import Asker
from handlers.services import Services
from handlers.tickets import utc_offsets
from notifications.outbox import enqueue_once
from notifications.tickets import TicketSettings, process_tickets
from storage import queries
from storage.db import make_async_engine
from storage.importer import ImportFailed, run_import
from storage.models import AgentState, Customer, OutboxMessage, Ticket
from tests.company import AS_OF, write_company

TOKEN = "123456"
AES_KEY = "kWxPEV2UEDyxWpmPdKC3F4dgPDmOvfKX1HGnEUDS1aR"
CORP = "wx49f0ab532d5d035a"
WECOM_AGENT = 1000002
SHANGHAI = ZoneInfo("Asia/Shanghai")
# Monday 2026-11-23 10:00 in Shanghai: a working day, every day-shift agent on duty.
MONDAY_10 = datetime(2026, 11, 23, 10, 0, tzinfo=SHANGHAI)
AGENTS = [{"userid": userid, "name": name, "role": role, "manager_userid": manager, "team": "客服", "queues": queues}
          for userid, name, role, manager, queues in [
              ("lead", "客服主管", "manager", "", ""),
              ("ag1", "专家甲", "agent", "lead", "expert|standard"),
              ("ag2", "专家乙", "agent", "lead", "expert|standard"),
              ("ag3", "夜班丙", "agent", "lead", "standard")]]
TICKET_ID = re.compile(r"#(T261123\d{4})")


class FixedServices(Services):
    """Services whose clock stands at `moment` (Shanghai time) until a test moves it."""

    moment: datetime = MONDAY_10

    def now(self) -> datetime:
        return self.moment.astimezone(self.config.tz)


@pytest.fixture
def company(engine, database_url, tmp_path):
    """The test company with three agents (ag3 works nights only), scored."""
    run_import(engine, [write_company(tmp_path / "crm")])
    run_import(engine, [], records={"users": AGENTS})
    path = tmp_path / "config.yaml"
    path.write_text('tickets:\n  agent_hours: {ag3: ["20:00", "23:00"]}\n', encoding="utf-8")
    config = load_config(path, environ={"TIERBOT_DATABASE_URL": database_url})
    full_rescore(engine, config, AS_OF, now=MONDAY_10.astimezone(timezone.utc))
    return config


@pytest.fixture
def peer() -> WeComPeer:
    return WeComPeer(TOKEN, AES_KEY, CORP, WECOM_AGENT)


@pytest.fixture
async def bot(company, aiohttp_client):
    """The real callback; `bot.wakes` / `bot.ticket_wakes` count dispatcher / router wake-ups."""
    wakes: list[int] = []
    ticket_wakes: list[int] = []
    services = FixedServices(db=make_async_engine(company.database.url), config=company,
                             wake=lambda: wakes.append(1), wake_tickets=lambda: ticket_wakes.append(1))

    async def late_reply(userid, reply, origin):
        await enqueue_once(services.db, [userid], reply.msgtype, {"content": reply.text}, origin)

    callback = WeComCallback(token=TOKEN, encoding_aes_key=AES_KEY, corp_id=CORP, router=router, services=services,
                             metrics=Metrics(), late_reply=late_reply)
    app = web.Application()
    app.add_routes(callback.routes())
    client = await aiohttp_client(app)
    client.wakes, client.ticket_wakes, client.services = wakes, ticket_wakes, services
    yield client
    await services.db.dispose()


_create_times = iter(range(1_763_700_000, 1_763_800_000, 7))


async def post(bot, query: dict, body: str) -> tuple[int, str]:
    response = await bot.post(f"/wecom/callback?{urlencode(query)}", data=body.encode())
    return response.status, await response.text()


async def say(bot, peer: WeComPeer, userid: str, text: str) -> str:
    status, answer = await post(bot, *peer.text_message(userid, text))
    assert status == 200
    return peer.read_reply(answer)["Content"] if answer else ""


async def click(bot, peer: WeComPeer, userid: str, key: str, code: str) -> str:
    status, answer = await post(bot, *peer.card_event(userid, event_key=key, task_id="t0_abc", response_code=code,
                                                      create_time=next(_create_times)))
    assert status == 200
    return peer.read_reply(answer)["Content"] if answer else ""


def route(engine, company, at: datetime = MONDAY_10):
    """One pass of the ticket router, as the service's loop runs it."""
    return process_tickets(engine, TicketSettings.from_config(company), at.astimezone(timezone.utc))


def ticket_row(engine, ticket_id: str):
    with engine.connect() as connection:
        return connection.execute(select(Ticket.__table__).where(Ticket.ticket_id == ticket_id)).mappings().one()


def outbox(engine, **where) -> list[dict]:
    with engine.connect() as connection:
        query = select(OutboxMessage.__table__).order_by(OutboxMessage.id)
        for column, value in where.items():
            query = query.where(getattr(OutboxMessage, column) == value)
        return [dict(row) for row in connection.execute(query).mappings()]


def aware(moment):
    return moment if moment is None or moment.tzinfo else moment.replace(tzinfo=timezone.utc)


async def open_star_ticket(bot, peer, text: str = "工单 星辰半导体 P1 产线停机，系统无法登录") -> str:
    reply = await say(bot, peer, "rep_a", text)
    found = TICKET_ID.search(reply)
    assert found, reply
    return found.group(1)


async def assigned_star_ticket(bot, peer, company, engine, text: str = "工单 星辰半导体 P1 产线停机，系统无法登录"
                               ) -> tuple[str, str, str]:
    """(ticket, its agent, the other expert) after the router's pass."""
    ticket_id = await open_star_ticket(bot, peer, text)
    assert route(engine, company).assigned == 1
    agent = ticket_row(engine, ticket_id)["assignee_userid"]
    assert agent in ("ag1", "ag2")
    return ticket_id, agent, {"ag1": "ag2", "ag2": "ag1"}[agent]


# ------------------------------------------------------------------ opening a ticket


async def test_a_rep_opens_a_ticket_for_a_star_customer(bot, peer, engine):
    reply = await say(bot, peer, "rep_a", "工单 星辰半导体 P1 产线停机，系统无法登录")
    ticket_id = TICKET_ID.search(reply).group(1)
    assert reply.startswith(f"已创建工单 #{ticket_id}（星辰半导体股份有限公司），紧急程度 P1，正在按客户分层分配…")
    row = ticket_row(engine, ticket_id)
    assert (row["customer_id"], row["source"], row["opened_by"], row["status"], row["severity"]) == (
        "STAR1", "chat", "rep_a", "open", "P1")
    assert row["subject"] == "产线停机，系统无法登录"  # as typed: full-width comma kept
    assert row["opened_at"] == datetime(2026, 11, 23, 10, 0)  # naive local time
    assert row["routed_at"] is None and bot.ticket_wakes == [1]  # the router is woken to route it

    english = await say(bot, peer, "rep_a", "ticket COW1 report export is slow")
    assert "Ticket #T261123" in english and "(老牌纺织集团有限公司)" in english
    second = ticket_row(engine, TICKET_ID.search(english).group(1))
    assert (second["customer_id"], second["subject"], second["severity"]) == ("COW1", "report export is slow", None)
    assert len(bot.ticket_wakes) == 2


async def test_the_same_problem_sent_twice_gets_the_open_ticket_back_and_odd_severities_are_refused(bot, peer, engine):
    first = TICKET_ID.search(await say(bot, peer, "rep_a", "工单 星辰半导体 紧急 产线停机")).group(1)
    assert ticket_row(engine, first)["severity"] == "P1"  # 紧急 is P1
    again = await say(bot, peer, "rep_a", "工单 星辰半导体 紧急 产线停机")
    assert again == f"您在 11-23 10:00 已为星辰半导体股份有限公司开过相同的工单 #{first}，它还没有关闭，无需重复提交。发送「我的工单」查看进度。"
    assert "same ticket" in await say(bot, peer, "rep_a", "ticket STAR1 产线停机")
    # Sent again to escalate: the open ticket takes the new severity (the router routes it again).
    second = TICKET_ID.search(await say(bot, peer, "rep_a", "工单 星辰半导体 报表打不开")).group(1)
    assert await say(bot, peer, "rep_a", "工单 星辰半导体 P2 报表打不开") == (
        f"已将星辰半导体股份有限公司的工单 #{second} 的紧急程度改为 P2，正在按新的紧急程度重新分配。")
    assert ticket_row(engine, second)["severity"] == "P2"
    assert "「P5」不是其中之一" in await say(bot, peer, "rep_a", "工单 星辰半导体 P5 产线停机")
    # A product model is part of the problem, not a severity.
    p40 = TICKET_ID.search(await say(bot, peer, "rep_a", "工单 星辰半导体 P40 屏幕碎裂")).group(1)
    assert (ticket_row(engine, p40)["subject"], ticket_row(engine, p40)["severity"]) == ("P40 屏幕碎裂", None)
    assert "\"P0\" is not one of them" in await say(bot, peer, "rep_a", "ticket P0 STAR1 line down")
    with engine.connect() as connection:
        assert len(connection.execute(select(Ticket.ticket_id)).all()) == 3


async def test_the_same_problem_sent_twice_at_once_opens_one_ticket(bot, peer, engine):
    import asyncio

    answers = await asyncio.gather(*(say(bot, peer, "rep_a", "工单 星辰半导体 接口超时") for _ in range(4)))
    with engine.connect() as connection:
        opened = connection.execute(select(Ticket.ticket_id).where(Ticket.subject == "接口超时")).scalars().all()
    assert len(opened) == 1, answers
    assert sum("无需重复提交" in answer for answer in answers) == 3


async def test_opening_needs_a_visible_customer_and_a_description(bot, peer, engine):
    # STAR1 is rep_a's: to rep_b it does not exist.
    assert await say(bot, peer, "rep_b", "工单 星辰半导体 系统无法登录") == "没有找到客户「星辰半导体」。请检查名称或编号。"
    usage = await say(bot, peer, "rep_a", "工单 星辰半导体")
    assert "「工单 客户名 问题描述」" in usage
    assert "ticket NAME description" in await say(bot, peer, "rep_a", "ticket")
    several = await say(bot, peer, "rep_a", "工单 普通客户 发票问题")
    assert "匹配到多个客户" in several and "工单 F001 问题描述 — 普通客户001有限公司" in several
    assert "F000" not in several  # rep_b's
    refused = await say(bot, peer, "ag1", "工单 星辰半导体 系统无法登录")
    assert "工单由销售为自己的客户创建" in refused
    with engine.connect() as connection:
        assert connection.execute(select(Ticket.ticket_id)).all() == []
    assert bot.ticket_wakes == []


async def test_a_name_with_spaces_and_a_colon_separator(bot, peer, engine):
    with engine.begin() as connection:
        connection.execute(update(Customer).where(Customer.customer_id == "COW1")
                           .values(name="Acme Trading Co"))
    reply = await say(bot, peer, "boss", "ticket Acme Trading Co P2 invoices missing")
    row = ticket_row(engine, TICKET_ID.search(reply).group(1))
    assert (row["customer_id"], row["severity"], row["subject"], row["opened_by"]) == (
        "COW1", "P2", "invoices missing", "boss")
    colon = await say(bot, peer, "rep_a", "工单 星辰：无法登录")
    assert ticket_row(engine, TICKET_ID.search(colon).group(1))["subject"] == "无法登录"


# ------------------------------------------------------------------ lists


async def test_the_assigned_agent_sees_it_in_my_tickets_and_the_rep_sees_who_has_it(bot, peer, company, engine):
    ticket_id, agent, other = await assigned_star_ticket(bot, peer, company, engine)
    mine = await say(bot, peer, agent, "我的工单")
    assert "您的工单（1–1 / 1，按优先级）" in mine
    assert f"#{ticket_id} 星辰半导体股份有限公司 · 明星客户 · P1 · 首响截止 11-23 11:00 · 待接单" in mine
    assert "没有待处理" in await say(bot, peer, other, "我的工单")

    rep = await say(bot, peer, "rep_a", "我的工单")
    agent_name = {"ag1": "专家甲", "ag2": "专家乙"}[agent]
    assert f"#{ticket_id} 星辰半导体股份有限公司 · 明星客户 · P1 · 首响截止 11-23 11:00 · 待接单 · 客服 {agent_name}" in rep
    assert ticket_id not in await say(bot, peer, "rep_b", "我的工单")
    assert ticket_id in await say(bot, peer, "boss", "我的工单")
    assert ticket_id in await say(bot, peer, "lead", "my tickets")  # the agents' manager

    # Past the deadline it reads 已超时, in English "overdue".
    bot.services.moment = MONDAY_10 + timedelta(minutes=61)
    route(engine, company, bot.services.moment)
    assert "首响截止 11-23 11:00 已超时 · 待接单" in await say(bot, peer, agent, "我的工单")
    assert "respond by 11-23 11:00 overdue · waiting" in await say(
        bot, peer, agent, "my tickets")


async def test_a_long_ticket_list_pages_within_2048_bytes(bot, peer, company, engine):
    for n in range(30):
        await say(bot, peer, "rep_a", f"工单 COW1 问题{n:02d}：" + "报表导出很慢，客户要求今天之内给出解决方案" * 3)
    route(engine, company)
    pages = [await say(bot, peer, "rep_a", "我的工单")]
    while "更多" in pages[-1] and len(pages) < 10:
        pages.append(await say(bot, peer, "rep_a", "更多"))
    assert len(pages) >= 2 and all(len(page.encode()) <= 2048 for page in pages)
    listed = [line.split()[0] for page in pages for line in page.splitlines() if line.startswith("#")]
    assert len(listed) == len(set(listed)) == 30
    assert "没有更多了" in await say(bot, peer, "rep_a", "更多")


# ------------------------------------------------------------------ accept, resolve, transfer


async def test_only_the_assignee_accepts_and_is_told_about_the_sla(bot, peer, company, engine):
    ticket_id, agent, other = await assigned_star_ticket(bot, peer, company, engine)
    bot.services.moment = MONDAY_10 + timedelta(minutes=20)
    refused = await say(bot, peer, other, f"接单 {ticket_id}")
    assert refused == f"没有找到您可处理的工单 #{ticket_id}。发送「我的工单」查看工单编号。"
    assert await say(bot, peer, other, "接单 C0000000000") == refused.replace(ticket_id, "C0000000000")
    # The owner rep sees the ticket in 我的工单: told who handles it, not that it does not exist.
    assert await say(bot, peer, "rep_a", f"接单 {ticket_id}") == (
        f"工单 #{ticket_id}（星辰半导体股份有限公司）由客服 {'专家甲' if agent == 'ag1' else '专家乙'} 处理。")
    assert await say(bot, peer, "rep_a", f"resolve {ticket_id}") == (
        f"Ticket #{ticket_id} (星辰半导体股份有限公司) is handled by agent {'专家甲' if agent == 'ag1' else '专家乙'}; "
        "only they or the queue's lead can resolve it.")
    # Nobody learns of a ticket of a customer they do not see.
    assert "没有找到您可处理的工单" in await say(bot, peer, "rep_b", f"解决 {ticket_id}")
    assert ticket_row(engine, ticket_id)["status"] == "open"

    accepted = await say(bot, peer, agent, f"接单 {ticket_id.lower()}")  # any case
    assert accepted.startswith(f"已接单 #{ticket_id}（星辰半导体股份有限公司），在首次响应时限内（截止 11-23 11:00）")
    row = ticket_row(engine, ticket_id)
    assert (row["status"], row["assignee_userid"]) == ("accepted", agent)
    assert aware(row["accepted_at"]) == MONDAY_10 + timedelta(minutes=20)
    assert "您已经接单了（11-23 10:20）" in await say(bot, peer, agent, f"接单 {ticket_id}")


async def test_a_late_accept_says_how_late_and_an_unassigned_ticket_goes_to_whoever_of_its_queue(
        bot, peer, company, engine):
    ticket_id, agent, _other = await assigned_star_ticket(bot, peer, company, engine)
    bot.services.moment = MONDAY_10 + timedelta(minutes=75)
    assert "超出首次响应时限 15 分钟（截止 11-23 11:00）" in await say(bot, peer, agent, f"接单 {ticket_id}")
    # Nobody of the growth queue exists: an expert may not take a growth ticket, but the
    # queue's own agents may take unassigned ones.
    qm = TICKET_ID.search(await say(bot, peer, "rep_b", "工单 新锐新能源 电池管理模块报错")).group(1)
    route(engine, company, bot.services.moment)
    assert ticket_row(engine, qm)["assignee_userid"] is None  # nobody serves "growth"
    assert "没有找到" in await say(bot, peer, "ag1", f"接单 {qm}")
    with engine.begin() as connection:
        connection.execute(update(Ticket).where(Ticket.ticket_id == qm).values(queue="standard"))
    english = await say(bot, peer, "ag3", f"accept {qm}")
    assert english.startswith(f"Ticket #{qm} (新锐新能源科技有限公司) is yours")
    assert ticket_row(engine, qm)["assignee_userid"] == "ag3"


async def test_resolve_stores_the_note_and_counts_as_the_first_response(bot, peer, company, engine):
    ticket_id, agent, other = await assigned_star_ticket(bot, peer, company, engine)
    bot.services.moment = MONDAY_10 + timedelta(minutes=40)
    assert "没有找到" in await say(bot, peer, other, f"解决 {ticket_id} 不是我的")
    reply = await say(bot, peer, agent, f"解决 {ticket_id} 已重置账号，恢复登录。")
    assert reply == f"已解决工单 #{ticket_id}（星辰半导体股份有限公司）：已重置账号，恢复登录。"
    row = ticket_row(engine, ticket_id)
    assert (row["status"], row["resolution"]) == ("resolved", "已重置账号，恢复登录。")
    assert aware(row["resolved_at"]) == aware(row["accepted_at"]) == MONDAY_10 + timedelta(minutes=40)
    assert "之前已经解决了" in await say(bot, peer, agent, f"解决 {ticket_id}")
    assert ticket_id not in await say(bot, peer, agent, "我的工单")
    assert "请带上工单编号" in await say(bot, peer, agent, "解决")


async def test_a_service_lead_resolves_a_ticket_of_their_queue_that_an_agent_holds(bot, peer, company, engine):
    ticket_id, agent, _ = await assigned_star_ticket(bot, peer, company, engine)
    bot.services.moment = MONDAY_10 + timedelta(minutes=20)
    assert "没有找到" in await say(bot, peer, "rep_b", f"解决 {ticket_id} 不是我的")  # no lead, not its customer
    reply = await say(bot, peer, "lead", f"解决 {ticket_id} 已远程处理")
    assert reply == f"已解决工单 #{ticket_id}（星辰半导体股份有限公司）：已远程处理"
    row = ticket_row(engine, ticket_id)
    assert (row["status"], row["assignee_userid"]) == ("resolved", agent)
    assert aware(row["accepted_at"]) == MONDAY_10 + timedelta(minutes=20)


async def test_the_rep_closes_a_dog_ticket_the_knowledge_base_answered(bot, peer, company, engine):
    dog = TICKET_ID.search(await say(bot, peer, "rep_b", "工单 街角建材 发票怎么开")).group(1)
    route(engine, company)
    assert ticket_row(engine, dog)["status"] == "self_service"
    assert dog in await say(bot, peer, "rep_b", "我的工单")  # 自助中
    assert "没有找到" in await say(bot, peer, "rep_a", f"解决 {dog}")  # not rep_a's customer
    assert "正在走自助服务" in await say(bot, peer, "lead", f"转交 {dog} ag3")  # no agent holds it yet
    assert "客户已通过自助服务解决" in await say(bot, peer, "rep_b", f"解决 {dog} 已按FAQ开票")
    row = ticket_row(engine, dog)
    assert (row["status"], row["accepted_at"], row["assignee_userid"]) == ("resolved", None, None)
    # Four working hours later nothing is handed to an agent.
    assert route(engine, company, MONDAY_10 + timedelta(hours=5)).handed_over == 0


async def test_an_old_open_ticket_no_queue_holds_can_be_closed_by_its_rep(bot, peer, company, engine):
    # Imported open, opened two months ago: too old for the router, so no agent will ever take it.
    run_import(engine, [], records={"tickets": [{"ticket_id": "T-OLD", "customer_id": "STAR1",
                                                 "subject": "旧系统遗留问题", "opened_at": "2026-09-20T10:00:00"}]})
    # A ticket just opened is not the rep's to close before the router has seen it.
    fresh = TICKET_ID.search(await say(bot, peer, "rep_a", "工单 星辰半导体 报表导出慢")).group(1)
    assert "尚未分派" in await say(bot, peer, "rep_a", f"解决 {fresh}")
    route(engine, company)
    assert ticket_row(engine, "T-OLD")["routed_at"] is None
    assert "没有找到" in await say(bot, peer, "ag1", "接单 T-OLD")
    assert "没有找到" in await say(bot, peer, "rep_b", "解决 T-OLD")  # not rep_b's customer
    answer = await say(bot, peer, "rep_a", "解决 T-OLD 已在旧系统处理")
    assert "已解决工单 #T-OLD" in answer and "自助" not in answer
    row = ticket_row(engine, "T-OLD")
    assert (row["status"], row["resolution"], row["assignee_userid"]) == ("resolved", "已在旧系统处理", None)


async def test_transfer_moves_the_ticket_and_queues_a_card_to_the_new_agent(bot, peer, company, engine):
    ticket_id, agent, other = await assigned_star_ticket(bot, peer, company, engine)
    bot.services.moment = MONDAY_10 + timedelta(minutes=5)
    before = len(outbox(engine, touser=other, kind="ticket"))
    names = {"ag1": "专家甲", "ag2": "专家乙"}
    reply = await say(bot, peer, agent, f"转交 {ticket_id} {other}")
    assert reply.startswith(f"已将工单 #{ticket_id}（星辰半导体股份有限公司）转交给 {names[other]}（{other}）")
    row = ticket_row(engine, ticket_id)
    assert (row["assignee_userid"], row["status"]) == (other, "open")
    cards = outbox(engine, touser=other, kind="ticket")
    assert len(cards) == before + 1
    card = cards[-1]["payload"]["template_card"]
    assert [b["key"] for b in card["button_list"]] == [f"accept:{ticket_id}", f"resolve:{ticket_id}"]
    assert {"keyname": "说明", "value": f"由 {names[agent]} 转交"} in card["horizontal_content_list"]
    assert {"keyname": "首响截止", "value": "11-23 11:00"} in card["horizontal_content_list"]
    assert cards[-1]["status"] == "pending" and bot.wakes
    # The old agent has no say any more; the new one accepts.
    assert "没有找到" in await say(bot, peer, agent, f"接单 {ticket_id}")
    assert "已接单" in await say(bot, peer, other, f"接单 {ticket_id}")


async def test_an_accepted_ticket_is_handed_over_accepted_with_only_the_resolve_button(bot, peer, company, engine):
    ticket_id, agent, other = await assigned_star_ticket(bot, peer, company, engine)
    assert "已接单" in await say(bot, peer, agent, f"接单 {ticket_id}")
    await say(bot, peer, agent, f"转交 {ticket_id} {other}")
    row = ticket_row(engine, ticket_id)
    assert (row["assignee_userid"], row["status"]) == (other, "accepted")
    card = outbox(engine, touser=other, kind="ticket")[-1]["payload"]["template_card"]
    # The first response is made: no 接单 button to press, and the card says so.
    assert [b["key"] for b in card["button_list"]] == [f"resolve:{ticket_id}"]
    assert any(item["keyname"] == "说明" and item["value"].endswith("转交，已接单")
               for item in card["horizontal_content_list"])
    assert "已解决工单" in await say(bot, peer, other, f"解决 {ticket_id} 已处理")


async def test_a_ticket_handed_to_an_agent_who_reads_english_reaches_them_in_english(bot, peer, company, engine):
    ticket_id, agent, other = await assigned_star_ticket(bot, peer, company, engine)
    assert "in English from now on" in await say(bot, peer, other, "language english")
    await say(bot, peer, agent, f"转交 {ticket_id} {other}")
    card = outbox(engine, touser=other, kind="ticket")[-1]["payload"]["template_card"]
    assert {"keyname": "Queue", "value": "expert queue"} in card["horizontal_content_list"]
    assert any(item["value"].startswith("Transferred by ") for item in card["horizontal_content_list"])


async def test_a_service_lead_hands_a_ticket_of_their_queue_to_another_agent(bot, peer, company, engine):
    ticket_id, agent, other = await assigned_star_ticket(bot, peer, company, engine)
    names = {"ag1": "专家甲", "ag2": "专家乙"}
    assert "已经在 " + names[agent] + " 手上了" in await say(bot, peer, "lead", f"转交 {ticket_id} {agent}")
    reply = await say(bot, peer, "lead", f"转交 {ticket_id} {other}")
    assert reply.startswith(f"已将工单 #{ticket_id}（星辰半导体股份有限公司）转交给 {names[other]}（{other}）")
    assert ticket_row(engine, ticket_id)["assignee_userid"] == other
    card = outbox(engine, touser=other, kind="ticket")[-1]["payload"]["template_card"]
    assert {"keyname": "说明", "value": "由 客服主管 转交"} in card["horizontal_content_list"]
    # A rep sees the ticket (their customer's) but does not hand it on.
    assert await say(bot, peer, "rep_a", f"转交 {ticket_id} {agent}") == (
        f"工单 #{ticket_id}（星辰半导体股份有限公司）由客服 {names[other]} 处理，只有 TA 或队列负责人能转交。")


async def test_transfer_to_someone_who_is_not_an_agent_of_its_queue_is_refused_by_name(bot, peer, company, engine):
    ticket_id, agent, _other = await assigned_star_ticket(bot, peer, company, engine)
    cards = len(outbox(engine, kind="ticket"))
    assert await say(bot, peer, agent, f"转交 {ticket_id} rep_a") == "无法转交：「rep_a」不是客服，工单只能转交给客服。"
    assert "没有找到用户「nobody9」" in await say(bot, peer, agent, f"转交 {ticket_id} 给 nobody9")
    assert '"rep_b" is not a service agent' in await say(bot, peer, agent, f"transfer {ticket_id} to rep_b")
    assert "已经在您手上了" in await say(bot, peer, agent, f"转交 {ticket_id} {agent}")
    # A Star's ticket is in the expert queue: not for an agent who serves the standard queue only.
    assert await say(bot, peer, agent, f"转交 {ticket_id} ag3") == (
        f"无法转交：夜班丙（ag3）不负责专家队列，工单 #{ticket_id} 只能转交给该队列的客服。")
    assert "does not serve the expert queue" in await say(bot, peer, agent, f"transfer {ticket_id} to ag3")
    assert ticket_row(engine, ticket_id)["assignee_userid"] == agent
    assert len(outbox(engine, kind="ticket")) == cards
    assert "转交 工单编号 同事账号" in await say(bot, peer, agent, f"转交 {ticket_id}")


async def test_an_agent_asking_for_their_customers_is_pointed_to_their_tickets(bot, peer):
    assert (await say(bot, peer, "ag1", "我的客户")).startswith("客服名下没有客户。发送「我的工单」")
    assert (await say(bot, peer, "ag1", "my customers")).startswith('Service agents own no customers.')
    assert "星辰" not in await say(bot, peer, "ag1", "我的客户")


async def test_an_agent_opens_the_customer_of_a_ticket_in_their_hands_and_no_other(bot, peer, company, engine):
    opened = MONDAY_10.replace(tzinfo=None).isoformat(timespec="seconds")
    run_import(engine, [], records={"tickets": [{"ticket_id": "T-CARD", "customer_id": "STAR1", "subject": "停机",
                                                 "opened_at": opened, "severity": "P1"}]})
    route(engine, company)
    agent = ticket_row(engine, "T-CARD")["assignee_userid"]
    other = next(userid for userid in ("ag1", "ag2") if userid != agent)
    card = await say(bot, peer, agent, "客户 星辰半导体")
    assert card.startswith("星辰半导体股份有限公司（STAR1）") and "#T-CARD" in card
    assert (await say(bot, peer, other, "客户 星辰半导体")).startswith("没有找到")
    assert (await say(bot, peer, agent, "客户 COW1")).startswith("没有找到")  # not one of their tickets
    await say(bot, peer, agent, "解决 T-CARD 已重启")
    assert (await say(bot, peer, agent, "客户 星辰半导体")).startswith("没有找到")


async def test_a_crm_ticket_number_with_dots_and_slashes_is_typed_and_clicked_as_is(bot, peer, company, engine):
    opened = MONDAY_10.replace(tzinfo=None).isoformat(timespec="seconds")
    with pytest.raises(ImportFailed) as refused:
        run_import(engine, [], records={"tickets": [{"ticket_id": "INC 0001", "customer_id": "STAR1",
                                                     "subject": "停机", "opened_at": opened}]})
    assert "ticket_id: not a ticket number agents can type in chat" in refused.value.problems[0]
    run_import(engine, [], records={"tickets": [{"ticket_id": "TK-2025/001.2", "customer_id": "STAR1",
                                                 "subject": "停机", "opened_at": opened}]})
    route(engine, company)
    agent = ticket_row(engine, "TK-2025/001.2")["assignee_userid"]
    assert (await say(bot, peer, agent, "接单 TK-2025/001.2")).startswith("已接单 #TK-2025/001.2")
    assert (await click(bot, peer, agent, "resolve:TK-2025/001.2", "RC-slash")).startswith("已解决工单 #TK-2025/001.2")


# ------------------------------------------------------------------ away / back


async def test_an_agent_away_gets_no_new_tickets_until_back(bot, peer, company, engine):
    reply = await say(bot, peer, "ag1", "暂离")
    assert reply.startswith("已设为暂离")
    with engine.connect() as connection:
        state = connection.execute(select(AgentState.__table__).where(AgentState.userid == "ag1")).mappings().one()
    assert state["away"] and aware(state["away_since"]) == MONDAY_10

    for n in range(4):
        await say(bot, peer, "rep_a", f"工单 COW1 报表问题{n}")
    assert route(engine, company).assigned == 4
    with engine.connect() as connection:
        assert set(connection.execute(select(Ticket.assignee_userid)).scalars()) == {"ag2"}  # ag3 is off duty

    back = await say(bot, peer, "ag1", "回来")
    assert back.startswith("欢迎回来") and bot.ticket_wakes[-1] == 1
    with engine.connect() as connection:
        state = connection.execute(select(AgentState.__table__).where(AgentState.userid == "ag1")).mappings().one()
    assert not state["away"] and state["away_since"] is None
    ticket_id = TICKET_ID.search(await say(bot, peer, "rep_a", "工单 COW1 又一个")).group(1)
    route(engine, company, MONDAY_10 + timedelta(minutes=1))
    assert ticket_row(engine, ticket_id)["assignee_userid"] == "ag1"
    assert "是给客服的功能" in await say(bot, peer, "rep_a", "暂离")


async def test_going_away_hands_tickets_not_yet_accepted_back_to_the_queue(bot, peer, company, engine):
    ticket_id, agent, other = await assigned_star_ticket(bot, peer, company, engine)
    route(engine, company, MONDAY_10 + timedelta(minutes=35))  # its 11:00 deadline is near: the agent is warned
    accepted_id = TICKET_ID.search(await say(bot, peer, "rep_a", "工单 星辰半导体 P2 报表导出慢")).group(1)
    route(engine, company)
    with engine.begin() as connection:  # the second one is in the agent's hands already
        connection.execute(update(Ticket).where(Ticket.ticket_id == accepted_id)
                           .values(assignee_userid=agent, status="accepted", accepted_at=MONDAY_10))
    reply = await say(bot, peer, agent, "暂离")
    assert "还没接的 1 张工单已退回队列" in reply and bot.ticket_wakes
    assert ticket_row(engine, ticket_id)["assignee_userid"] is None
    assert ticket_row(engine, accepted_id)["assignee_userid"] == agent
    route(engine, company, MONDAY_10 + timedelta(minutes=36))
    assert ticket_row(engine, ticket_id)["assignee_userid"] == other
    # The colleague who has it now is warned too.
    assert [row["touser"] for row in outbox(engine, kind="ticket_warning")] == [agent, other]


# ------------------------------------------------------------------ card buttons


async def test_the_accept_button_accepts_and_leaves_the_card_its_resolve_button(bot, peer, company, engine):
    ticket_id, agent, other = await assigned_star_ticket(bot, peer, company, engine)
    refused = await click(bot, peer, other, f"accept:{ticket_id}", "RC-other")
    assert "没有找到您可处理的工单" in refused and ticket_row(engine, ticket_id)["status"] == "open"

    bot.services.moment = MONDAY_10 + timedelta(minutes=10)
    reply = await click(bot, peer, agent, f"accept:{ticket_id}", "RC-accept")
    assert reply.startswith(f"已接单 #{ticket_id}（星辰半导体股份有限公司），在首次响应时限内")
    row = ticket_row(engine, ticket_id)
    assert (row["status"], aware(row["accepted_at"])) == ("accepted", MONDAY_10 + timedelta(minutes=10))
    updates = outbox(engine, channel="card_update")
    assert [(u["touser"], u["payload"]) for u in updates[:1]] == [
        (other, {"response_code": "RC-other", "replace_name": "已失效"})]
    # The accepting agent's card is replaced by one with only 解决 left, saying it is accepted.
    (touser, replaced), = [(u["touser"], u["payload"]) for u in updates[1:]]
    assert touser == agent and replaced["response_code"] == "RC-accept" and "replace_name" not in replaced
    card = replaced["template_card"]
    assert [b["key"] for b in card["button_list"]] == [f"resolve:{ticket_id}"]
    assert {"keyname": "说明", "value": "已接单"} in card["horizontal_content_list"]
    assert card["main_title"]["title"].startswith(f"工单 #{ticket_id} · P1")
    assert bot.wakes

    assert "已解决工单" in await click(bot, peer, agent, f"resolve:{ticket_id}", "RC-resolve")
    assert ticket_row(engine, ticket_id)["status"] == "resolved"
    assert outbox(engine, channel="card_update")[-1]["payload"] == {"response_code": "RC-resolve",
                                                                    "replace_name": "已解决"}


def mark_sent(engine, origin_prefix: str, code: str) -> None:
    """The dispatcher's part: the card went out, and WeCom answered with its response_code."""
    with engine.begin() as connection:
        connection.execute(update(OutboxMessage).where(OutboxMessage.origin.startswith(origin_prefix))
                           .values(status="sent", response_code=code, sent_at=MONDAY_10))


async def test_typed_commands_change_the_cards_the_ticket_was_sent_on(bot, peer, company, engine):
    ticket_id, agent, other = await assigned_star_ticket(bot, peer, company, engine)
    mark_sent(engine, f"ticket-card:{ticket_id}:{agent}:", "RC-SENT")
    bot.services.moment = MONDAY_10 + timedelta(minutes=5)
    # Accepting by typing leaves the card (its one code is kept for what ends the ticket) …
    assert (await say(bot, peer, agent, f"接单 {ticket_id}")).startswith("已接单")
    assert outbox(engine, channel="card_update") == []
    # … resolving by typing greys it.
    assert (await say(bot, peer, agent, f"解决 {ticket_id} 已远程处理")).startswith("已解决工单")
    [greyed] = [u["payload"] for u in outbox(engine, channel="card_update")]
    assert greyed == {"response_code": "RC-SENT", "replace_name": "已解决"}
    assert bot.wakes
    # Handed on: the old agent's card stops inviting clicks (its code is used: a second
    # ticket shows it); the new agent's card is greyed when the lead closes the ticket.
    second, holder, colleague = await assigned_star_ticket(bot, peer, company, engine, "工单 星辰半导体 P1 报表丢失")
    mark_sent(engine, f"ticket-card:{second}:{holder}:", "RC-SECOND")
    await say(bot, peer, holder, f"转交 {second} {colleague}")
    mark_sent(engine, f"ticket-transfer:{second}:{colleague}:", "RC-HANDED")
    await say(bot, peer, "lead", f"解决 {second} 已处理")
    updates = [(u["touser"], u["payload"]) for u in outbox(engine, channel="card_update")][1:]
    assert updates == [(holder, {"response_code": "RC-SECOND", "replace_name": "已转交"}),
                       (colleague, {"response_code": "RC-HANDED", "replace_name": "已解决"})]


async def test_buttons_answer_in_english_when_the_company_does(company, engine):
    english = company.model_copy(update={"language": "en"})
    services = FixedServices(db=make_async_engine(company.database.url), config=english)
    try:
        with engine.begin() as connection:
            connection.execute(Ticket.__table__.insert().values(
                ticket_id="T-EN", customer_id="COW1", opened_at=datetime(2026, 11, 23, 9, 0), subject="slow",
                status="open", queue="standard", priority="P3", assignee_userid="ag2", tier="cash_cow",
                routed_at=MONDAY_10, first_response_due=MONDAY_10 + timedelta(hours=3)))
        asker = Asker("ag2", "专家乙", "agent")
        name, reply = await router.dispatch_action("accept:T-EN", asker, services, {"ResponseCode": "RC-en"})
        assert name == "card_accept" and reply.text.startswith("Ticket #T-EN (老牌纺织集团有限公司) is yours")
        name, reply = await router.dispatch_action("resolve:T-EN", asker, services, {"ResponseCode": "RC-en2"})
        accepted, resolved = [u["payload"] for u in outbox(engine, channel="card_update")]
        assert {"keyname": "Note", "value": "Accepted"} in accepted["template_card"]["horizontal_content_list"]
        assert resolved["replace_name"] == "Resolved"
    finally:
        await services.db.dispose()


# ------------------------------------------------------------------ 工单报表


def add_ticket(engine, ticket_id: str, customer_id: str, tier: str, opened_local: datetime, *, status: str,
               due_after: timedelta | None = None, accepted_after: timedelta | None = None,
               breached: bool = False, breached_after: timedelta | None = None, assignee: str | None = "ag1",
               queue: str = "expert") -> None:
    """A routed ticket opened at `opened_local` (Shanghai wall clock), its deadline and
    acceptance given as times after opening."""
    opened_utc = opened_local.replace(tzinfo=SHANGHAI).astimezone(timezone.utc)
    due = opened_utc + due_after if due_after is not None else None
    with engine.begin() as connection:
        connection.execute(Ticket.__table__.insert().values(
            ticket_id=ticket_id, customer_id=customer_id, opened_at=opened_local, subject="问题", status=status,
            tier=tier, route="r", queue=queue, priority="P1", assignee_userid=assignee, routed_at=opened_utc,
            first_response_due=due,
            accepted_at=opened_utc + accepted_after if accepted_after is not None else None,
            breached_at=(opened_utc + breached_after if breached_after is not None
                         else due + timedelta(minutes=1) if breached else None)))


@pytest.fixture
def report_tickets(company, engine):
    friday = datetime(2026, 11, 20, 14, 0)
    # Star: one answered in 30 min (met), one in 90 min against a 60-min deadline (breached).
    add_ticket(engine, "R-A", "STAR1", "star", friday, status="resolved", due_after=timedelta(hours=1),
               accepted_after=timedelta(minutes=30))
    add_ticket(engine, "R-B", "STAR1", "star", friday + timedelta(hours=1), status="accepted",
               due_after=timedelta(hours=1), accepted_after=timedelta(minutes=90), breached=True)
    # Cash cow: waiting, its deadline still ahead: not judged yet.
    add_ticket(engine, "R-C", "COW1", "cash_cow", datetime(2026, 11, 23, 9, 0), status="open",
               due_after=timedelta(hours=4))
    # Dog: answered by self-service, never accepted.
    add_ticket(engine, "R-D", "DOG1", "dog", datetime(2026, 11, 23, 8, 0), status="resolved", assignee=None)
    # Star, 20 days ago: in the 30-day report only, answered in 10 min.
    add_ticket(engine, "R-E", "STAR1", "star", datetime(2026, 11, 3, 11, 0), status="resolved",
               due_after=timedelta(hours=1), accepted_after=timedelta(minutes=10))
    # Question mark: breached at its first deadline (1 h), then re-routed to a 4-hour one and
    # accepted after 130 min: within the new deadline, but the recorded breach counts.
    add_ticket(engine, "R-G", "QM1", "question_mark", datetime(2026, 11, 20, 9, 0), status="resolved",
               due_after=timedelta(hours=4), accepted_after=timedelta(minutes=130),
               breached_after=timedelta(hours=1))
    # 40 days ago: in no report.
    add_ticket(engine, "R-F", "STAR1", "star", datetime(2026, 10, 14, 11, 0), status="resolved",
               due_after=timedelta(hours=1), accepted_after=timedelta(hours=5))


async def test_the_ticket_report_counts_per_tier(bot, peer, report_tickets):
    report = await say(bot, peer, "boss", "工单报表")
    assert "您团队工单报表（近30天，2026-10-24 起）" in report
    # Star: R-A 30 min (met), R-B 90 min (breached), R-E 10 min (met): 2 of 3, (30 + 90 + 10) / 3 = 43.3 min.
    assert "明星客户：3 单 · 首响达标 67% · 超时 1 · 平均首响 43 分钟 · 未关闭 1" in report
    assert "金牛客户：1 单 · 首响达标 — · 超时 0 · 平均首响 — · 未关闭 1" in report
    assert "瘦狗客户：1 单 · 首响达标 — · 超时 0 · 平均首响 — · 未关闭 0" in report
    assert "问题客户：1 单 · 首响达标 0% · 超时 1 · 平均首响 2 小时 10 分钟 · 未关闭 0" in report
    assert "未评分：0 单" in report
    # 2 of 4 judged met; (30 + 90 + 10 + 130) / 4 = 65 min.
    assert "合计：6 单 · 首响达标 50% · 超时 2 · 平均首响 1 小时 5 分钟 · 未关闭 2" in report

    week = await say(bot, peer, "boss", "工单报表 7天")
    assert "近7天，2026-11-16 起" in week
    assert "明星客户：2 单 · 首响达标 50% · 超时 1 · 平均首响 1 小时 · 未关闭 1" in week
    english = await say(bot, peer, "admin", "ticket report 7d")
    assert "Star: 2 · SLA met 50% · breaches 1 · avg first response 1 h · open 1" in english
    # 1 of 3 judged met; (30 + 90 + 130) / 3 = 83.3 min.
    assert "Total: 5 · SLA met 33% · breaches 2 · avg first response 1 h 23 min · open 2" in english


async def test_the_ticket_report_is_scoped_and_for_leads_only(bot, peer, report_tickets, engine):
    assert "是给销售经理和管理员的功能" in await say(bot, peer, "rep_a", "工单报表")
    assert "is for sales managers" in await say(bot, peer, "ag1", "ticket report")
    # The service lead sees the tickets of the queues their agents serve, waiting ones too
    # (the Dog one went to self-service in the expert queue), not the growth queue's.
    add_ticket(engine, "R-W", "STAR1", "star", datetime(2026, 11, 23, 8, 0), status="open", assignee=None,
               due_after=timedelta(hours=1), breached=True)
    add_ticket(engine, "R-X", "QM1", "question_mark", datetime(2026, 11, 23, 8, 0), status="open", assignee=None,
               queue="growth")
    lead = await say(bot, peer, "lead", "工单报表")
    assert "明星客户：4 单" in lead and "瘦狗客户：1 单" in lead and "问题客户：1 单" in lead and "合计：7 单" in lead
    assert "R-W" in await say(bot, peer, "lead", "我的工单")
    assert "R-X" not in await say(bot, peer, "lead", "我的工单")
    assert "1–365 天" in await say(bot, peer, "boss", "工单报表 400天")


async def test_report_turns_local_opening_times_into_utc_across_a_clock_change(company, async_db, engine):
    """In a zone with summer time the offset in force when the ticket was opened counts."""
    berlin = ZoneInfo("Europe/Berlin")
    offsets = utc_offsets(berlin, datetime(2026, 10, 1), datetime(2026, 11, 1))
    assert offsets == [(datetime(2026, 10, 25, 3, 0), 7200), (None, 3600)]
    assert utc_offsets(SHANGHAI, datetime(2026, 10, 1), datetime(2026, 11, 1)) == [(None, 28800)]
    # Opened 10:00 local the day before (UTC+2) and the day after (UTC+1); both answered 15 min later.
    for ticket_id, opened in (("B-1", datetime(2026, 10, 24, 10, 0)), ("B-2", datetime(2026, 10, 26, 10, 0))):
        opened_utc = opened.replace(tzinfo=berlin).astimezone(timezone.utc)
        with engine.begin() as connection:
            connection.execute(Ticket.__table__.insert().values(
                ticket_id=ticket_id, customer_id="STAR1", opened_at=opened, subject="x", status="accepted",
                tier="star", first_response_due=opened_utc + timedelta(hours=1),
                accepted_at=opened_utc + timedelta(minutes=15)))
    async with async_db.connect() as connection:
        found = await queries.ticket_report(connection, None, datetime(2026, 10, 1),
                                            datetime(2026, 11, 1, tzinfo=timezone.utc), offsets)
    assert found["star"]["accepted"] == 2 and found["star"]["met"] == 2
    assert found["star"]["response_seconds"] == pytest.approx(2 * 15 * 60)


# ------------------------------------------------------------------ help


async def test_help_lists_the_commands_of_the_askers_role(bot, peer):
    rep = await say(bot, peer, "rep_a", "帮助")
    assert "工单 客户名 问题描述" in rep and "今日任务" in rep and "分层报表" in rep
    assert "接单 编号" not in rep and "工单报表" not in rep and "团队逾期任务" not in rep
    assert "解决 编号 说明 — 关闭自助处理中的工单" in rep  # whoever sees the customer may
    manager = await say(bot, peer, "boss", "帮助")
    assert "工单报表" in manager and "团队逾期任务" in manager and "张三的客户" in manager and "转交 编号" in manager
    agent = await say(bot, peer, "ag1", "帮助")
    assert "接单 编号" in agent and "暂离" in agent and "我的明星客户" not in agent and "今日任务" not in agent
    en = await say(bot, peer, "boss", "help")
    assert "ticket NAME description" in en and "my tickets" in en and "ticket report" in en and "team" in en
    assert all(len(text.encode()) <= 2048 for text in (rep, manager, agent, en))
    assert "accept N" in await say(bot, peer, "ag1", "help")


# ------------------------------------------------------------------ end to end, in the sandbox


async def test_star_and_dog_tickets_follow_their_tier_paths_in_the_sandbox(company, engine, aiohttp_client):
    """The real service with the WeCom emulator: reps open a Star and a Dog ticket in chat,
    the router's pass and the dispatcher deliver the Star card to an expert (who accepts it
    from the card) and the knowledge-base links to the Dog's rep; four working hours on the
    Dog ticket goes to the standard queue, and the manager's report shows both."""
    from bot.app import RUNTIME, create_app, sandbox_identity
    from bot.sandbox import Sandbox

    identity = sandbox_identity()
    sandbox = Sandbox(identity, ["rep_a", "rep_b", "boss", "lead", "ag1", "ag2", "ag3"])
    identity.api_base = await sandbox.start_emulator()
    try:
        service = await aiohttp_client(create_app(company, identity, sandbox=sandbox, dispatch=False))
        runtime = service.app[RUNTIME]
        clock = {"now": MONDAY_10}
        runtime.services.now = lambda: clock["now"]
        settings = TicketSettings.from_config(company)

        async def say_(userid: str, text: str) -> str:
            answer = await (await service.post("/sandbox/api/say", json={"userid": userid, "text": text})).json()
            return answer["reply"]

        async def pushes(userid: str) -> list[dict]:
            return await (await service.get(f"/sandbox/api/pushes?userid={userid}")).json()

        star = TICKET_ID.search(await say_("rep_a", "工单 星辰半导体 产线停机，系统无法登录")).group(1)
        dog = TICKET_ID.search(await say_("rep_b", "工单 街角建材 发票怎么开")).group(1)
        assert runtime.tickets_wakeup.is_set()  # services.wake_tickets is the service's router

        outcome = process_tickets(runtime.sync_db, settings, MONDAY_10.astimezone(timezone.utc))
        assert (outcome.routed, outcome.assigned) == (2, 1)
        await runtime.dispatcher.drain()

        # Star: expert queue, P1, one hour; the card reaches the agent.
        agent = ticket_row(engine, star)["assignee_userid"]
        assert agent in ("ag1", "ag2")
        [card] = [m for m in await pushes(agent) if m["msgtype"] == "template_card"]
        body = card["payload"]["template_card"]
        assert body["main_title"]["title"] == f"工单 #{star} · P1"
        assert {"keyname": "首响截止", "value": "11-23 11:00"} in body["horizontal_content_list"]
        # Dog: self-service first, the links to the owner rep.
        assert ticket_row(engine, dog)["status"] == "self_service"
        kb = [m for m in await pushes("rep_b") if m["msgtype"] == "markdown"]
        assert any("help.example.com/faq" in m["payload"]["markdown"]["content"] for m in kb)

        clock["now"] = MONDAY_10 + timedelta(minutes=12)
        answer = await (await service.post("/sandbox/api/click", json={
            "userid": agent, "task_id": body["task_id"], "key": f"accept:{star}"})).json()
        assert answer["reply"].startswith(f"已接单 #{star}（星辰半导体股份有限公司），在首次响应时限内")
        await runtime.dispatcher.drain()
        shown = sandbox.emulator.card_state(body["task_id"], agent)
        assert shown["replaced_name"] is None and [b["text"] for b in shown["card"]["button_list"]] == ["解决"]
        clock["now"] = MONDAY_10 + timedelta(minutes=40)
        answer = await (await service.post("/sandbox/api/click", json={
            "userid": agent, "task_id": body["task_id"], "key": f"resolve:{star}"})).json()
        assert answer["reply"].startswith(f"已解决工单 #{star}")
        await runtime.dispatcher.drain()
        assert sandbox.emulator.card_state(body["task_id"], agent)["replaced_name"] == "已解决"

        # Still open four working hours later: the Dog ticket goes to the standard queue.
        later = MONDAY_10 + timedelta(hours=4, minutes=1)
        outcome = process_tickets(runtime.sync_db, settings, later.astimezone(timezone.utc))
        assert (outcome.handed_over, outcome.assigned) == (1, 1)
        await runtime.dispatcher.drain()
        dog_agent = ticket_row(engine, dog)["assignee_userid"]
        assert dog_agent in ("ag1", "ag2")  # ag3 is off duty
        assert any(m["payload"]["template_card"]["main_title"]["title"] == f"工单 #{dog} · P3"
                   for m in await pushes(dog_agent) if m["msgtype"] == "template_card")
        clock["now"] = MONDAY_10 + timedelta(hours=4, minutes=30)
        assert (await say_(dog_agent, f"解决 {dog} 已指导客户自助开票")).startswith(f"已解决工单 #{dog}")

        report = await say_("boss", "工单报表")
        assert "明星客户：1 单 · 首响达标 100% · 超时 0 · 平均首响 12 分钟 · 未关闭 0" in report
        assert "瘦狗客户：1 单 · 首响达标 100% · 超时 0 · 平均首响 4 小时 30 分钟 · 未关闭 0" in report
    finally:
        await sandbox.stop_emulator()
