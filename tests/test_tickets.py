"""Tickets routed by tier: the Star and Dog paths, agents on duty, even load, the SLA
clock with one escalation per breach, and re-routing when the customer's tier changes."""

from __future__ import annotations

from collections import Counter
from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import select, update

from bot.config import load_config
from bot.rescore import full_rescore
from notifications.tickets import TicketSettings, pick_agent, process_tickets
from storage.importer import ImportFailed, run_import
from storage.models import AgentState, Customer, OutboxMessage, Ticket
from tests.company import AS_OF, write_company

# Monday 2026-11-23 10:00 in Shanghai.
MONDAY_10 = datetime(2026, 11, 23, 2, 0, tzinfo=timezone.utc)
AGENTS = [
    {"userid": "lead", "name": "客服主管", "role": "manager", "manager_userid": "", "team": "客服", "queues": ""},
    {"userid": "ag1", "name": "专家甲", "role": "agent", "manager_userid": "lead", "team": "客服", "queues": "expert|standard"},
    {"userid": "ag2", "name": "专家乙", "role": "agent", "manager_userid": "lead", "team": "客服", "queues": "expert|standard"},
    {"userid": "ag3", "name": "夜班丙", "role": "agent", "manager_userid": "lead", "team": "客服", "queues": "standard"},
]


@pytest.fixture
def config(engine, database_url, tmp_path):
    run_import(engine, [write_company(tmp_path / "crm")])
    run_import(engine, [], records={"users": AGENTS})
    path = tmp_path / "config.yaml"
    # ag3 works nights only: never on duty at 10:00.
    path.write_text('tickets:\n  agent_hours: {ag3: ["20:00", "23:00"]}\n', encoding="utf-8")
    config = load_config(path, environ={"TIERBOT_DATABASE_URL": database_url})
    full_rescore(engine, config, AS_OF, now=MONDAY_10)
    return config


def open_tickets(engine, *tickets: tuple[str, str, str]) -> None:
    """(ticket_id, customer_id, subject), opened at MONDAY_10 local time."""
    opened = MONDAY_10.astimezone(timezone(timedelta(hours=8))).replace(tzinfo=None).isoformat(timespec="seconds")
    run_import(engine, [], records={"tickets": [{"ticket_id": t, "customer_id": c, "subject": s, "opened_at": opened}
                                                for t, c, s in tickets]})


def ticket(engine, ticket_id: str):
    with engine.connect() as connection:
        return connection.execute(select(Ticket).where(Ticket.ticket_id == ticket_id)).one()


def messages_to(engine, userid: str) -> list:
    with engine.connect() as connection:
        return connection.execute(select(OutboxMessage.kind, OutboxMessage.payload)
                                  .where(OutboxMessage.touser == userid, OutboxMessage.kind.like("ticket%"))
                                  .order_by(OutboxMessage.id)).all()


def aware(moment):
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


def test_star_ticket_goes_to_the_expert_queue_with_one_hour(engine, config):
    settings = TicketSettings.from_config(config)
    open_tickets(engine, ("T-STAR", "STAR1", "产线停机，系统无法登录"))
    outcome = process_tickets(engine, settings, MONDAY_10)
    assert (outcome.routed, outcome.assigned) == (1, 1)
    star = ticket(engine, "T-STAR")
    assert (star.queue, star.priority, star.status, star.tier) == ("expert", "P1", "open", "star")
    assert star.assignee_userid in ("ag1", "ag2")
    assert aware(star.first_response_due) == MONDAY_10 + timedelta(hours=1)
    card = messages_to(engine, star.assignee_userid)[0]
    assert card.kind == "ticket"
    body = card.payload["template_card"]
    assert [b["key"] for b in body["button_list"]] == ["accept:T-STAR", "resolve:T-STAR"]
    assert {"keyname": "首响截止", "value": "11-23 11:00"} in body["horizontal_content_list"]
    assert {"keyname": "队列", "value": "专家队列"} in body["horizontal_content_list"]
    # A P1 from the CRM: the owner rep hears of it, once.
    [urgent] = messages_to(engine, "rep_a")
    assert urgent.kind == "ticket_urgent"
    assert urgent.payload["markdown"]["content"].startswith("**您的客户 星辰半导体股份有限公司 有一张 P1 工单 #T-STAR**")
    process_tickets(engine, settings, MONDAY_10 + timedelta(minutes=1))
    assert len(messages_to(engine, "rep_a")) == 1


def test_the_ticket_card_and_notices_come_in_the_language_each_person_chose(engine, config):
    run_import(engine, [], records={"users": [{"userid": "ag1", "language": "en"}, {"userid": "ag2", "language": "en"},
                                              {"userid": "rep_a", "language": "english"}]})
    open_tickets(engine, ("T-STAR", "STAR1", "产线停机，系统无法登录"))
    process_tickets(engine, TicketSettings.from_config(config), MONDAY_10)
    card = messages_to(engine, ticket(engine, "T-STAR").assignee_userid)[0].payload["template_card"]
    assert {"keyname": "Queue", "value": "expert queue"} in card["horizontal_content_list"]
    [urgent] = messages_to(engine, "rep_a")
    assert urgent.payload["markdown"]["content"].startswith("**Your customer 星辰半导体股份有限公司 has a P1 ticket")


def test_dog_ticket_gets_self_service_first_then_the_standard_queue(engine, config):
    settings = TicketSettings.from_config(config)
    open_tickets(engine, ("T-DOG", "DOG1", "发票怎么开"))
    process_tickets(engine, settings, MONDAY_10)
    dog = ticket(engine, "T-DOG")
    assert (dog.status, dog.queue, dog.assignee_userid) == ("self_service", "standard", None)
    kb = messages_to(engine, "rep_b")  # the owner rep forwards the knowledge-base links
    assert [m.kind for m in kb] == ["ticket_self_service"]
    assert "help.example.com/faq" in kb[0].payload["markdown"]["content"]
    assert "（标准队列，首响 24 小时）" in kb[0].payload["markdown"]["content"]
    # Four working hours later it is still open: to the standard queue, 24 working hours.
    later = MONDAY_10 + timedelta(hours=4)
    outcome = process_tickets(engine, settings, later)
    assert (outcome.handed_over, outcome.assigned) == (1, 1)
    dog = ticket(engine, "T-DOG")
    assert dog.status == "open" and dog.assignee_userid in ("ag1", "ag2")  # ag3 is off duty
    assert aware(dog.first_response_due) > later + timedelta(days=2)  # 24 working hours ≈ 3 working days


def test_a_p1_ticket_of_a_dog_goes_to_a_person_at_once_not_to_the_knowledge_base(engine, config):
    settings = TicketSettings.from_config(config)
    opened = MONDAY_10.astimezone(timezone(timedelta(hours=8))).replace(tzinfo=None).isoformat(timespec="seconds")
    run_import(engine, [], records={"tickets": [{"ticket_id": "T-DOWN", "customer_id": "DOG1", "severity": "P1",
                                                 "subject": "生产线停机", "opened_at": opened}]})
    process_tickets(engine, settings, MONDAY_10)
    down = ticket(engine, "T-DOWN")
    assert (down.status, down.route, down.priority) == ("open", "urgent", "P1")
    assert down.assignee_userid in ("ag1", "ag2")
    assert aware(down.first_response_due) == MONDAY_10 + timedelta(hours=2)
    # No knowledge-base links for this one: the owner hears of the P1 instead.
    assert [m.kind for m in messages_to(engine, "rep_b")] == ["ticket_urgent"]


def test_load_spreads_evenly_and_an_agent_off_duty_gets_nothing(engine, config):
    settings = TicketSettings.from_config(config)
    open_tickets(engine, *[(f"T-{n}", "COW1", f"问题 {n}") for n in range(10)])
    process_tickets(engine, settings, MONDAY_10)
    with engine.connect() as connection:
        load = Counter(connection.execute(select(Ticket.assignee_userid)).scalars())
    assert load == Counter({"ag1": 5, "ag2": 5})
    # ag2 marks themself away: the next tickets all go to ag1.
    with engine.begin() as connection:
        connection.execute(update(AgentState).where(AgentState.userid == "ag2").values(away=True))
    open_tickets(engine, ("T-10", "COW1", "又一个"), ("T-11", "COW1", "再一个"))
    process_tickets(engine, settings, MONDAY_10 + timedelta(minutes=1))
    assert {ticket(engine, "T-10").assignee_userid, ticket(engine, "T-11").assignee_userid} == {"ag1"}


def test_round_robin_among_equal_loads():
    agents = {name: {"queues": {"q"}, "away": False, "load": 0, "last": None} for name in ("a", "b", "c")}
    order = []
    for n in range(6):
        chosen = pick_agent(agents, "q", lambda userid: True)
        order.append(chosen)
        agents[chosen]["last"] = datetime(2026, 1, 1, tzinfo=timezone.utc) + timedelta(minutes=n)
    assert order == ["a", "b", "c", "a", "b", "c"]


def test_a_breach_is_warned_then_escalated_exactly_once(engine, config):
    settings = TicketSettings.from_config(config)
    open_tickets(engine, ("T-LATE", "STAR1", "数据丢失"))
    process_tickets(engine, settings, MONDAY_10)
    agent = ticket(engine, "T-LATE").assignee_userid
    assert process_tickets(engine, settings, MONDAY_10 + timedelta(minutes=35)).warned == 1
    assert process_tickets(engine, settings, MONDAY_10 + timedelta(minutes=40)).warned == 0
    first = process_tickets(engine, settings, MONDAY_10 + timedelta(minutes=61))
    again = process_tickets(engine, settings, MONDAY_10 + timedelta(minutes=75))
    assert (first.breached, again.breached) == (1, 0)
    assert aware(ticket(engine, "T-LATE").breached_at) == MONDAY_10 + timedelta(minutes=61)
    assert [m.kind for m in messages_to(engine, "lead")] == ["ticket_breach"]  # the agents' manager leads the queue
    assert [m.kind for m in messages_to(engine, "rep_a")] == ["ticket_urgent", "ticket_star_breach"]  # STAR1's owner
    assert [m.kind for m in messages_to(engine, agent)] == ["ticket", "ticket_warning"]


def test_a_tier_change_reprioritises_open_tickets(engine, config):
    settings = TicketSettings.from_config(config)
    open_tickets(engine, ("T-COW", "COW1", "报表慢"))
    process_tickets(engine, settings, MONDAY_10)
    before = ticket(engine, "T-COW")
    assert (before.queue, before.priority) == ("standard", "P3")
    with engine.begin() as connection:
        connection.execute(update(Customer).where(Customer.customer_id == "COW1").values(tier="star"))
    outcome = process_tickets(engine, settings, MONDAY_10 + timedelta(minutes=5))
    after = ticket(engine, "T-COW")
    assert outcome.rerouted == 1
    assert (after.queue, after.priority, after.tier) == ("expert", "P1", "star")
    # The Star hour runs from the upgrade, not from the opening (never backdated into a breach).
    assert aware(after.first_response_due) == MONDAY_10 + timedelta(minutes=5, hours=1)


def test_a_ticket_sent_again_with_another_severity_is_routed_again(engine, config):
    settings = TicketSettings.from_config(config)
    open_tickets(engine, ("T-SEV", "COW1", "报表慢"))
    process_tickets(engine, settings, MONDAY_10)
    before = ticket(engine, "T-SEV")
    assert (before.route, before.priority) == ("cash_cow", "P3")
    # The CRM sends the same ticket again, now as P1: production is down.
    opened = MONDAY_10.astimezone(timezone(timedelta(hours=8))).replace(tzinfo=None).isoformat(timespec="seconds")
    run_import(engine, [], records={"tickets": [{"ticket_id": "T-SEV", "customer_id": "COW1", "subject": "报表慢",
                                                 "opened_at": opened, "severity": "P1"}]})
    outcome = process_tickets(engine, settings, MONDAY_10 + timedelta(minutes=10))
    after = ticket(engine, "T-SEV")
    assert outcome.rerouted == 1
    assert (after.route, after.priority, after.assignee_userid) == ("urgent", "P1", before.assignee_userid)
    # The urgent route's two hours from the re-send, sooner than the four hours first promised.
    assert aware(after.first_response_due) == MONDAY_10 + timedelta(minutes=10, hours=2)
    assert [m.kind for m in messages_to(engine, before.assignee_userid)] == ["ticket", "ticket_reprioritised"]
    # Routed for what it is now: the next pass leaves it alone.
    assert process_tickets(engine, settings, MONDAY_10 + timedelta(minutes=11)).rerouted == 0


def test_a_queued_ticket_never_goes_back_to_self_service(engine, config):
    settings = TicketSettings.from_config(config)
    open_tickets(engine, ("T-FALL", "COW1", "接口报错"))
    process_tickets(engine, settings, MONDAY_10)
    assert process_tickets(engine, settings, MONDAY_10 + timedelta(hours=3, minutes=40)).warned == 1
    with engine.begin() as connection:
        connection.execute(update(Customer).where(Customer.customer_id == "COW1").values(tier="dog"))
    process_tickets(engine, settings, MONDAY_10 + timedelta(hours=3, minutes=45))
    fallen = ticket(engine, "T-FALL")
    assert (fallen.status, fallen.queue, fallen.tier) == ("open", "standard", "dog")
    # The deadline already promised stands (24 h from now would be later), and so does its warning.
    assert aware(fallen.first_response_due) == MONDAY_10 + timedelta(hours=4)
    assert fallen.assignee_userid is not None
    assert [m.kind for m in messages_to(engine, fallen.assignee_userid)].count("ticket_warning") == 1


def test_chat_and_api_tickets_waiting_together_are_both_routed(engine, config):
    settings = TicketSettings.from_config(config)
    open_tickets(engine, ("T-API", "COW1", "接口报错"), ("T-CHAT", "COW1", "报表打不开"))
    with engine.begin() as connection:
        connection.execute(update(Ticket).where(Ticket.ticket_id == "T-CHAT").values(source="chat", opened_by="rep_a"))
    outcome = process_tickets(engine, settings, MONDAY_10)
    assert (outcome.routed, outcome.assigned) == (2, 2)
    assert (ticket(engine, "T-API").priority, ticket(engine, "T-CHAT").priority) == ("P3", "P3")
    assert [m.kind for m in messages_to(engine, "rep_a")] == ["ticket_assigned"]  # the opener hears who has it


def test_a_ticket_the_file_says_was_resolved_arrives_resolved_and_is_never_routed(engine, config, tmp_path):
    settings = TicketSettings.from_config(config)
    folder = tmp_path / "more"
    folder.mkdir()
    (folder / "tickets.csv").write_text(
        "工单编号,客户编号,创建时间,标题,解决时间\n"
        "T-DONE,STAR1,2026-11-23T09:00:00,接口报错,2026-11-23T09:45:00\n"
        "T-OPEN,STAR1,2026-11-23T09:30:00,报表打不开,\n", encoding="utf-8")
    result = run_import(engine, [folder / "tickets.csv"])
    assert result.kinds["tickets"].resolved == 1
    done = ticket(engine, "T-DONE")
    # 09:45 in Shanghai is 01:45 UTC, like every time a resolution is stored at.
    assert done.status == "resolved" and aware(done.resolved_at) == datetime(2026, 11, 23, 1, 45, tzinfo=timezone.utc)
    outcome = process_tickets(engine, settings, MONDAY_10)
    assert outcome.routed == 1 and ticket(engine, "T-DONE").routed_at is None
    assert ticket(engine, "T-OPEN").queue == "expert"


def test_an_import_never_reopens_a_ticket_and_takes_no_resolution_earlier_than_the_opening(engine, config, tmp_path):
    settings = TicketSettings.from_config(config)
    open_tickets(engine, ("T-KEEP", "STAR1", "接口报错"))
    process_tickets(engine, settings, MONDAY_10)
    assigned = ticket(engine, "T-KEEP")
    assert assigned.assignee_userid in ("ag1", "ag2")
    # The CRM exports it again, still without a resolution: our agent keeps it.
    open_tickets(engine, ("T-KEEP", "STAR1", "接口报错"))
    again = ticket(engine, "T-KEEP")
    assert (again.status, again.assignee_userid) == (assigned.status, assigned.assignee_userid)
    # The CRM closed it: it is resolved here too, and stays so when a file says nothing.
    run_import(engine, [], records={"tickets": [{"ticket_id": "T-KEEP", "customer_id": "STAR1", "subject": "接口报错",
                                                 "opened_at": "2026-11-23T10:00:00",
                                                 "resolved_at": "2026-11-23T11:00:00"}]})
    assert ticket(engine, "T-KEEP").status == "resolved"
    open_tickets(engine, ("T-KEEP", "STAR1", "接口报错"))
    assert ticket(engine, "T-KEEP").status == "resolved"
    # A blank resolved_at where the column is sent: it stays resolved, and the answer says so.
    blank = run_import(engine, [], records={"tickets": [{"ticket_id": "T-KEEP", "customer_id": "STAR1",
                                                         "subject": "接口报错", "opened_at": "2026-11-23T10:00:00",
                                                         "resolved_at": None}]})
    assert ticket(engine, "T-KEEP").status == "resolved"
    assert blank.warnings == ["tickets: 1 resolved here came without resolved_at (T-KEEP); they stay resolved: "
                              "an import never reopens a ticket"]
    moved = run_import(engine, [], records={"tickets": [{"ticket_id": "T-KEEP", "customer_id": "QM1",
                                                         "subject": "接口报错", "opened_at": "2026-11-23T10:00:00"}]})
    assert moved.warnings == ["tickets: 1 moved to another customer (T-KEEP STAR1 → QM1)"]
    with pytest.raises(ImportFailed) as failure:
        run_import(engine, [], records={"tickets": [{"ticket_id": "T-ODD", "customer_id": "STAR1", "subject": "x",
                                                     "opened_at": "2026-11-23T10:00:00",
                                                     "resolved_at": "2026-11-22T10:00:00"}]})
    assert any("resolved_at" in problem and "before opened_at" in problem for problem in failure.value.problems)
    assert ticket_or_none(engine, "T-ODD") is None
    with pytest.raises(ImportFailed) as failure:
        run_import(engine, [], records={"tickets": [{"ticket_id": "T-LATER", "customer_id": "STAR1", "subject": "x",
                                                     "opened_at": "2026-11-23T10:00:00",
                                                     "resolved_at": "2099-01-01T10:00:00"}]})
    assert any("resolved_at: in the future: '2099-01-01T10:00:00'" in problem for problem in failure.value.problems)


def ticket_or_none(engine, ticket_id: str):
    with engine.connect() as connection:
        return connection.execute(select(Ticket).where(Ticket.ticket_id == ticket_id)).first()


def test_a_routed_ticket_the_crm_resolved_in_time_counts_as_answered_in_time(engine, config):
    settings = TicketSettings.from_config(config)
    open_tickets(engine, ("T-CRM", "STAR1", "接口报错"))
    process_tickets(engine, settings, MONDAY_10)
    assert aware(ticket(engine, "T-CRM").first_response_due) == MONDAY_10 + timedelta(hours=1)
    # Resolved in the CRM at 10:30 local, before its 11:00 deadline.
    run_import(engine, [], records={"tickets": [{"ticket_id": "T-CRM", "customer_id": "STAR1", "subject": "接口报错",
                                                 "opened_at": "2026-11-23T10:00:00",
                                                 "resolved_at": "2026-11-23T10:30:00"}]})
    done = ticket(engine, "T-CRM")
    assert done.status == "resolved" and aware(done.accepted_at) == MONDAY_10 + timedelta(minutes=30)
    process_tickets(engine, settings, MONDAY_10 + timedelta(hours=2))
    assert ticket(engine, "T-CRM").breached_at is None
