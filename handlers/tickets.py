"""Service tickets in chat: 工单 客户 问题 / ticket NAME description (reps and managers
open one), 我的工单 / my tickets, 接单 N / accept N, 解决 N 备注 / resolve N note,
转交 N userid / transfer N userid, 暂离 / away and 回来 / back (agents), 工单报表 /
ticket report (managers) — and the 接单 / 解决 buttons on ticket cards.

Routing, assignment and the SLA clock live in notifications.tickets; here are only
parsing, permission and text. Who may act on a ticket: its assignee; an agent of its
queue while nobody is assigned; for a ticket still on self-service, or one no queue holds
(imported open but too old to route), whoever may see its customer may mark it solved.
Anyone else gets the same answer as for a number that does not exist. Times: opened_at is
naive local time (config time zone), every other ticket time is UTC.
"""

from __future__ import annotations

import re
import secrets
import unicodedata
from datetime import datetime, timedelta, timezone
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import func, or_, select, update
from sqlalchemy.exc import IntegrityError

from handlers.paging import fit_page, remember
from handlers.registry import PERIOD_EN, PERIOD_ZH, ActionContext, Asker, CommandContext, Reply
from handlers.router import router
from handlers.tasks import grey_cards_sent_to, queue_card_replacement, queue_card_update
from handlers.text import render
from notifications import messages
from notifications.outbox import outbox_row
from notifications.tickets import ROUTE_WITHIN
from scoring import TIERS
from storage import queries
from storage.db import as_utc
from storage.models import AgentState, OutboxMessage, Ticket

PAGE_SIZE = 15
DID_YOU_MEAN = 8
MAX_SUBJECT = 512
MAX_QUERY_CHARS = 40
REPORT_DAYS = 30
MAX_REPORT_DAYS = 365
# Who opens tickets in chat (agents see no customers), who reads the report.
OPENERS = ("rep", "manager", "admin")
LEADS = ("manager", "admin")
SCOPE = {"zh": {"rep": "您客户", "manager": "您团队", "admin": "全公司", "agent": "您"},
         "en": {"rep": "Your customers'", "manager": "Your team's", "admin": "All", "agent": "Your"}}

_TID = r"#?\s*(?P<ticket>[a-z0-9][a-z0-9_\-./]{0,63})"
_SEVERITY = re.compile(r"[pP][1-4]|紧急|urgent", re.IGNORECASE)
# P0, P5, …: meant as a severity, but not one of ours; refused rather than kept in the subject.
_NOT_A_SEVERITY = re.compile(r"[pP](?:0|[5-9])")  # P40, P2000: product models, part of the problem
# The same problem sent again for the same customer while its ticket is open (a rep who did
# not see the answer and typed it twice) gets that ticket back, not a second one.
SAME_TICKET_WITHIN = timedelta(hours=24)
_OPEN_WORDS = re.compile(r"^(?:新建工单|开工单|提工单|建工单|报工单|工单|报修|(?:new ticket|open a ticket|open ticket|ticket)(?![a-z]))"
                         r"\s*", re.IGNORECASE)


def _wake_tickets(services: Any) -> None:
    """Route the new ticket now rather than at the router's next sweep."""
    wake = getattr(services, "wake_tickets", None)
    if callable(wake):
        wake()


def _utc_now(services: Any) -> datetime:
    return services.now().astimezone(timezone.utc)


def _local(services: Any, moment: datetime | None) -> str | None:
    moment = as_utc(moment)
    return moment.astimezone(services.config.tz).strftime("%m-%d %H:%M") if moment is not None else None


def _result(ctx: CommandContext | ActionContext, outcome: str, **fields: Any) -> str:
    return render(f"chat/ticket_result.{ctx.lang}.j2", outcome=outcome, **fields).strip()


async def _owners(ctx, connection) -> list[str] | None:
    return await ctx.services.cached(("owners", ctx.asker.userid, ctx.asker.role),
                                     lambda: queries.visible_owners(connection, ctx.asker))


async def _led_queues(ctx, connection) -> list[str]:
    if ctx.asker.role not in LEADS:
        return []
    leads = {queue: settings.lead for queue, settings in ctx.services.config.tickets.queues.items()}
    return await queries.led_queues(connection, ctx.asker.userid, leads)


# ------------------------------------------------------------------ 工单报表 / ticket report
# (registered before 「工单 客户 问题」, which would otherwise take 「工单报表」 for a customer)


@router.command("ticket_report", rf"(?:工单|客服)(?:报表|报告|统计|分析){PERIOD_ZH}",
                rf"(?:show )?tickets? (?:report|stats|statistics){PERIOD_EN}")
async def ticket_report(ctx: CommandContext) -> Reply:
    if ctx.asker.role not in LEADS:
        return Reply(_result(ctx, "leads_only"), msgtype="text")
    days = ctx.days(REPORT_DAYS)
    if not 1 <= days <= MAX_REPORT_DAYS:
        return Reply(render(f"chat/ticket_usage.{ctx.lang}.j2", which="report", most=MAX_REPORT_DAYS),
                     msgtype="text")
    tz = ctx.services.config.tz
    now_local = ctx.services.now().astimezone(tz)
    since_local = (now_local - timedelta(days=days)).replace(tzinfo=None)
    offsets = utc_offsets(tz, since_local, now_local.replace(tzinfo=None))
    async with ctx.services.db.connect() as connection:
        owners = await _owners(ctx, connection)
        found = await queries.ticket_report(connection, owners, since_local, now_local.astimezone(timezone.utc),
                                            offsets, await _led_queues(ctx, connection))
    rows = [_report_row(tier, found.get(tier)) for tier in (*TIERS, None)]
    totals = _report_row("total", {key: sum(row[key] for row in rows) for key in
                                   ("tickets", "judged", "met", "accepted", "response_seconds", "open")})
    return Reply(render(f"chat/ticket_report.{ctx.lang}.j2", scope=SCOPE[ctx.lang][ctx.asker.role], days=days,
                        rows=rows, totals=totals, since=since_local.strftime("%Y-%m-%d")))


def _report_row(tier: str | None, stats: dict[str, float] | None) -> dict[str, Any]:
    stats = stats or {"tickets": 0, "judged": 0, "met": 0, "accepted": 0, "response_seconds": 0.0, "open": 0}
    return {**stats, "tier": tier or "unscored",
            "met_share": stats["met"] / stats["judged"] if stats["judged"] else None,
            "breaches": stats["judged"] - stats["met"],
            "average_minutes": (stats["response_seconds"] / stats["accepted"] / 60.0) if stats["accepted"] else None}


def utc_offsets(tz: ZoneInfo, start_local: datetime, end_local: datetime) -> list[tuple[datetime | None, int]]:
    """The time zone's UTC offsets between two naive local times, for SQL that turns the
    naive local opened_at into UTC: [(boundary, seconds), ..., (None, seconds)] — each
    offset holds for local times before its boundary (the last one from there on). In an
    hour that happens twice when the clocks go back, the earlier (fold=0) reading counts,
    as with zoneinfo."""
    def offset_at(moment: datetime) -> int:
        return int(moment.astimezone(tz).utcoffset().total_seconds())

    start = start_local.replace(tzinfo=tz).astimezone(timezone.utc) - timedelta(days=1)
    end = end_local.replace(tzinfo=tz).astimezone(timezone.utc) + timedelta(days=1)
    found: list[tuple[datetime | None, int]] = []
    step = timedelta(minutes=30)
    moment, current = start, offset_at(start)
    while moment < end:
        following = moment + step
        if offset_at(following) != current:
            low, high = moment, following  # find the change to the second
            while high - low > timedelta(seconds=1):
                middle = low + (high - low) / 2
                if offset_at(middle) == current:
                    low = middle
                else:
                    high = middle
            change = high.replace(microsecond=0)
            found.append(((change + timedelta(seconds=current)).replace(tzinfo=None), current))
            current = offset_at(following)
        moment = following
    found.append((None, current))
    return found


# ------------------------------------------------------------------ 我的工单 / my tickets


@router.command("my_tickets", r"(?:我的|我们的|团队的?|全部|所有)?工单(?:列表|清单)|(?:我的|我们的|团队的?|查看|全部|所有)工单",
                r"(?:show |list )?(?:my |our |all |team )?tickets(?: list)?|ticket list")
async def my_tickets(ctx: CommandContext) -> Reply:
    return await _ticket_page(ctx, 0)


@router.pager("tickets")
async def next_ticket_page(ctx: CommandContext, arguments: dict, offset: int) -> Reply:
    return await _ticket_page(ctx, offset)


async def _ticket_page(ctx: CommandContext, offset: int) -> Reply:
    agent = ctx.asker.role == "agent"
    now = _utc_now(ctx.services)
    async with ctx.services.db.begin() as connection:
        if agent:
            items, total = await queries.ticket_list(connection, assignee=ctx.asker.userid, offset=offset,
                                                     limit=PAGE_SIZE)
        else:
            owners = await _owners(ctx, connection)
            items, total = await queries.ticket_list(connection, owners=owners, queues=await _led_queues(ctx, connection),
                                                     offset=offset, limit=PAGE_SIZE)
        if not items:
            await remember(ctx, connection, "tickets", {}, offset, 0, 0)
            if offset:
                return Reply(render(f"chat/no_more.{ctx.lang}.j2", ended=True), msgtype="text")
            return Reply(render(f"chat/tickets_empty.{ctx.lang}.j2", agent=agent), msgtype="text")
        rows = [_list_row(ctx.services, item, now) for item in items]
        text, shown = fit_page(lambda n, more: render(
            f"chat/tickets_list.{ctx.lang}.j2", agent=agent, scope=SCOPE[ctx.lang][ctx.asker.role], items=rows[:n],
            first=offset + 1, last=offset + n, total=total, more=more), len(rows), offset, total)
        await remember(ctx, connection, "tickets", {}, offset, shown, total)
    return Reply(text)


def _list_row(services: Any, item: dict[str, Any], now: datetime) -> dict[str, Any]:
    due = as_utc(item["first_response_due"])
    late = item["breached_at"] is not None or (item["status"] == "open" and due is not None and due <= now)
    return {**item, "due": _local(services, due), "until": _local(services, item["self_service_until"]),
            "late": late}


# ------------------------------------------------------------------ 工单 客户 问题 / ticket NAME description


@router.command("ticket_open", r"(?:新建工单|开工单|提工单|建工单|报工单|工单|报修)(?P<rest>.*)",
                r"(?:new ticket|open a ticket|open ticket|ticket)(?:\s+(?P<rest>.*))?")
async def open_ticket(ctx: CommandContext) -> Reply:
    if ctx.asker.role not in OPENERS:
        return Reply(_result(ctx, "openers_only"), msgtype="text")
    tokens = _words_after_command(ctx.raw)
    severity = None
    if tokens and _is_severity(tokens[0]):
        severity = _severity(tokens.pop(0))
    if (bad := _bad_severity(tokens)) is not None:
        return Reply(_result(ctx, "bad_severity", severity=bad), msgtype="text")
    if len(tokens) < 2:
        return Reply(render(f"chat/ticket_usage.{ctx.lang}.j2", which="open"), msgtype="text")
    async with ctx.services.db.connect() as connection:
        owners = await _owners(ctx, connection)
        customer, used, matches, query = await _find_customer(connection, owners, tokens)
    if customer is None:
        if matches:
            return Reply(render(f"chat/ticket_did_you_mean.{ctx.lang}.j2", query=query, matches=matches[:DID_YOU_MEAN],
                                more=len(matches) > DID_YOU_MEAN))
        return Reply(render(f"chat/not_found.{ctx.lang}.j2", query=query), msgtype="text")
    words = tokens[used:]
    if severity is None and len(words) > 1 and _is_severity(words[0]):
        severity = _severity(words.pop(0))
    if severity is None and len(words) > 1 and (bad := _bad_severity(words)) is not None:
        return Reply(_result(ctx, "bad_severity", severity=bad), msgtype="text")
    subject = " ".join(words)[:MAX_SUBJECT]
    if not subject:
        return Reply(render(f"chat/ticket_usage.{ctx.lang}.j2", which="open"), msgtype="text")
    # One transaction from the look for the same ticket to the new one's insert: the same
    # message sent twice at once (a double tap, a retry) opens one ticket.
    async with ctx.services.db.begin() as connection:
        await _one_at_a_time(connection, ctx.asker.userid, customer["customer_id"], subject)
        same = await _same_open_ticket(connection, ctx, customer["customer_id"], subject)
        if same is None:
            ticket_id = await _insert_ticket(connection, ctx, customer["customer_id"], subject, severity)
        elif severity is not None and severity != same[2]:
            # Sent again to escalate it: the new severity counts, and the router routes it again.
            await connection.execute(update(Ticket).where(Ticket.ticket_id == same[0]).values(severity=severity))
    if same is not None:
        same_id, opened, before = same
        if severity is not None and severity != before:
            _wake_tickets(ctx.services)
            return Reply(_result(ctx, "severity_changed", ticket_id=same_id, customer_name=customer["name"],
                                 severity=severity, before=before), msgtype="text")
        return Reply(_result(ctx, "same_ticket", ticket_id=same_id, customer_name=customer["name"],
                             at=_local(ctx.services, opened)), msgtype="text")
    _wake_tickets(ctx.services)
    return Reply(render(f"chat/ticket_created.{ctx.lang}.j2", ticket_id=ticket_id, customer=customer,
                        severity=severity, subject=subject), msgtype="text")


def _words_after_command(raw: str) -> list[str]:
    """The words after 「工单」 as typed: spaces kept (normalise() drops those between
    Chinese characters, and here a space separates the customer from the problem), and
    full-width punctuation too (it is the customer's problem, in their words). One word
    with a colon or comma in it splits there: 「工单 星辰：无法登录」."""
    text = (raw or "").strip()
    stripped = _OPEN_WORDS.sub("", text, count=1)
    if stripped == text:  # the command typed in full-width letters
        stripped = _OPEN_WORDS.sub("", unicodedata.normalize("NFKC", text), count=1)
    words = stripped.split()
    if len(words) == 1 or (len(words) == 2 and _is_severity(words[0])):
        parts = re.split(r"[:：;；,，、]", words[-1], maxsplit=1)
        if len(parts) == 2 and parts[0] and parts[1]:
            words[-1:] = parts
    return words


def _is_severity(word: str) -> bool:
    return bool(_SEVERITY.fullmatch(unicodedata.normalize("NFKC", word)))


def _severity(word: str) -> str:
    """P1–P4 as typed; 紧急 / urgent is P1."""
    word = unicodedata.normalize("NFKC", word).upper()
    return word if word.startswith("P") else "P1"


def _bad_severity(words: list[str]) -> str | None:
    for word in words[:1]:
        if _NOT_A_SEVERITY.fullmatch(unicodedata.normalize("NFKC", word)) and not _is_severity(word):
            return word
    return None


async def _find_customer(connection, owners, tokens: list[str]) -> tuple[dict | None, int, list[dict], str]:
    """(customer, words its name took, did-you-mean matches, what was looked for). The
    longest run of leading words that is exactly a visible customer's name or id wins
    (names have spaces: "Acme Trading Co"); else the first word as in 「客户 X」."""
    def spellings(count: int) -> set[str]:
        typed = " ".join(tokens[:count])
        return {typed, unicodedata.normalize("NFKC", typed)}

    candidates = sorted({word for count in range(1, len(tokens)) for word in spellings(count)})
    exact = await queries.exact_customers(connection, owners, candidates)
    for count in range(len(tokens) - 1, 0, -1):
        candidate = " ".join(tokens[:count])
        forms = spellings(count)
        hits = [c for c in exact if c["name"] in forms or c["customer_id"].lower() in {f.lower() for f in forms}]
        if len(hits) == 1:
            return hits[0], count, [], candidate
        if hits:
            return None, count, hits, candidate[:MAX_QUERY_CHARS]
    query = unicodedata.normalize("NFKC", tokens[0])[:MAX_QUERY_CHARS]
    matches = await queries.find_customers(connection, owners, query, limit=DID_YOU_MEAN + 1)
    if len(matches) == 1:
        return matches[0], 1, [], query
    return None, 1, matches, query


async def _same_open_ticket(connection, ctx: CommandContext, customer_id: str,
                            subject: str) -> tuple[str, datetime, str | None] | None:
    """(ticket id, opened at in UTC, severity) of the asker's open ticket with this subject
    for this customer, opened within SAME_TICKET_WITHIN; None when there is none."""
    local_now = ctx.services.now().astimezone(ctx.services.config.tz).replace(tzinfo=None)
    row = (await connection.execute(
        select(Ticket.ticket_id, Ticket.opened_at, Ticket.severity).where(
            Ticket.customer_id == customer_id, Ticket.subject == subject, Ticket.opened_by == ctx.asker.userid,
            Ticket.status.in_(("open", "self_service", "accepted")),
            Ticket.opened_at >= local_now - SAME_TICKET_WITHIN).order_by(Ticket.opened_at.desc()).limit(1))).first()
    if row is None:
        return None
    # opened_at is naive local time: as the UTC moment _local expects.
    return (row.ticket_id, row.opened_at.replace(tzinfo=ctx.services.config.tz).astimezone(timezone.utc),
            row.severity)


def new_ticket_id(local_now: datetime, digits: int = 4) -> str:
    """T + the local date (YYMMDD) + random digits: short enough to type in 「接单 T2611231234」,
    and not to be taken for a customer id (C…)."""
    return f"T{local_now:%y%m%d}{secrets.randbelow(10 ** digits):0{digits}d}"


async def _one_at_a_time(connection, *key: str) -> None:
    """Holds the rest of the transaction until any other one with the same key has ended.
    On PostgreSQL a transaction-scoped advisory lock; SQLite needs none, since the service
    has one connection to it and its transactions run one after another."""
    if connection.dialect.name == "postgresql":
        await connection.execute(select(func.pg_advisory_xact_lock(func.hashtext("\x1f".join(key)))))


async def _insert_ticket(connection, ctx: CommandContext, customer_id: str, subject: str,
                         severity: str | None) -> str:
    local_now = ctx.services.now().astimezone(ctx.services.config.tz)
    for attempt in range(8):
        ticket_id = new_ticket_id(local_now, 4 if attempt < 4 else 6)
        if await queries.ticket_ids_taken(connection, [ticket_id]):
            continue
        try:
            async with connection.begin_nested():  # a clash undoes this insert, not the transaction
                await connection.execute(Ticket.__table__.insert().values(
                    ticket_id=ticket_id, customer_id=customer_id, opened_at=local_now.replace(tzinfo=None),
                    subject=subject, severity=severity, status="open", source="chat", opened_by=ctx.asker.userid))
            return ticket_id
        except IntegrityError:  # the same number taken at the same moment by someone else
            continue
    raise RuntimeError("no free ticket number after 8 tries")


# ------------------------------------------------------------------ 接单 / 解决 / 转交


@router.command("ticket_accept", rf"(?:接单|受理|接受工单|领取工单|认领工单|认领)\s*{_TID}",
                rf"(?:accept|take|claim)(?: ticket)?\s*{_TID}")
async def accept_ticket(ctx: CommandContext) -> Reply:
    # The card is left as it is: its one response_code is kept for 解决 (or a handover) to grey
    # it; a press on its 接单 says it is accepted and turns it into the accepted card.
    async with ctx.services.db.begin() as connection:
        text, _state = await _accept(connection, ctx, ctx.argument("ticket"))
    return Reply(text, msgtype="text")


@router.command("ticket_resolve", rf"(?:解决|已解决|结单|关单|解决工单)\s*{_TID}(?:\s*(?P<note>.+))?",
                rf"(?:resolve|resolved|solve|solved)(?: ticket)?\s*{_TID}(?:\s+(?P<note>.+))?")
async def resolve_ticket(ctx: CommandContext) -> Reply:
    note = ctx.typed_after("ticket", "note") if ctx.match.group("note") else ""
    queued = False
    async with ctx.services.db.begin() as connection:
        before = await queries.ticket_by_id(connection, ctx.argument("ticket"))
        text, state = await _resolve(connection, ctx, ctx.argument("ticket"), note)
        if state == "resolved" and before is not None and before["status"] not in ("resolved", "closed"):
            queued = await _grey_sent_cards(connection, ctx, before["ticket_id"], before["assignee_userid"],
                                              "resolved")
    if queued:
        ctx.services.wake_dispatcher()
    return Reply(text, msgtype="text")


@router.command("ticket_transfer",
                rf"(?:转交|转给|转派|转单|移交)(?:工单)?\s*{_TID}(?:\s*给\s*|\s+)(?P<to>[a-z0-9_.@\-]{{1,64}})",
                rf"(?:transfer|reassign|hand over|handover|forward)(?: ticket)?\s*{_TID}\s+(?:to\s+)?"
                r"(?P<to>[a-z0-9_.@\-]{1,64})")
async def transfer_ticket(ctx: CommandContext) -> Reply:
    async with ctx.services.db.begin() as connection:
        before = await queries.ticket_by_id(connection, ctx.argument("ticket"))
        text, queued = await _transfer(connection, ctx, ctx.argument("ticket"), ctx.argument("to"))
        if queued and before is not None:  # the old holder's card no longer invites clicks
            await _grey_sent_cards(connection, ctx, before["ticket_id"], before["assignee_userid"], "transferred")
    if queued:
        ctx.services.wake_dispatcher()
    return Reply(text, msgtype="text")


# Without a ticket number (or a receiver): say how, instead of the generic "not understood".
@router.command("ticket_usage", r"(?P<which>接单|受理|解决|结单|转交|转给|转派|移交)(?:工单)?(?:\s*#?\s*[a-z0-9_\-]+)?",
                r"(?P<which_en>accept|resolve|transfer|reassign)(?: ticket)?(?:\s*#?\s*[a-z0-9_\-]+)?")
async def ticket_usage(ctx: CommandContext) -> Reply:
    word = ctx.match.groupdict().get("which") or ctx.match.groupdict().get("which_en") or ""
    which = {"接单": "accept", "受理": "accept", "accept": "accept", "解决": "resolve", "结单": "resolve",
             "resolve": "resolve"}.get(word, "transfer")
    return Reply(render(f"chat/ticket_usage.{ctx.lang}.j2", which=which), msgtype="text")


def _item(ticket: dict[str, Any]) -> dict[str, Any]:
    return {"ticket_id": ticket["ticket_id"], "customer_name": ticket["customer_name"]}


async def _agent(connection, asker: Asker) -> dict[str, Any] | None:
    return await queries.agent_of(connection, asker.userid) if asker.role == "agent" else None


def _claimable(ticket: dict[str, Any], agent: dict[str, Any] | None) -> bool:
    """Unassigned, waiting, and of one of the agent's queues."""
    return (agent is not None and ticket["assignee_userid"] is None and ticket["queue"] in agent["queues"]
            and ticket["status"] in ("open", "self_service"))


async def _accept(connection, ctx, typed: str) -> tuple[str, str]:
    """(answer, state of the card's button: accepted · resolved · gone)."""
    ticket = await queries.ticket_by_id(connection, typed)
    if ticket is None:
        return _result(ctx, "not_found", ticket_id=typed), "gone"
    agent = await _agent(connection, ctx.asker)
    mine = ticket["assignee_userid"] == ctx.asker.userid
    if agent is None or not (mine or _claimable(ticket, agent)):
        return await _refused(connection, ctx, ticket, typed, "accept"), "gone"
    if ticket["status"] == "accepted":
        return _result(ctx, "already_accepted", ticket=_item(ticket),
                       at=_local(ctx.services, ticket["accepted_at"])), "accepted"
    if ticket["status"] in ("resolved", "closed"):
        return _result(ctx, "already_resolved", ticket=_item(ticket)), "resolved"
    now = _utc_now(ctx.services)
    due = as_utc(ticket["first_response_due"])
    values: dict[str, Any] = {"status": "accepted", "accepted_at": now, "assignee_userid": ctx.asker.userid}
    if due is not None and now > due and ticket.get("breached_at") is None:
        # Late, but before the SLA sweep saw it: the breach is still recorded (its moment: the deadline).
        values["breached_at"] = due
    changed = (await connection.execute(
        update(Ticket).where(Ticket.ticket_id == ticket["ticket_id"], Ticket.status.in_(("open", "self_service")),
                             _assigned_to(ticket["assignee_userid"])).values(**values))).rowcount
    if not changed:  # taken or closed a moment ago
        return _result(ctx, "not_found", ticket_id=typed), "gone"
    late_minutes = int((now - due).total_seconds() // 60) if due is not None and now > due else 0
    return _result(ctx, "accepted", ticket=_item(ticket), due=_local(ctx.services, due),
                   late_minutes=late_minutes, within=due is None or now <= due), "accepted"


async def _resolve(connection, ctx, typed: str, note: str) -> tuple[str, str]:
    ticket = await queries.ticket_by_id(connection, typed)
    if ticket is None:
        return _result(ctx, "not_found", ticket_id=typed), "gone"
    agent = await _agent(connection, ctx.asker)
    mine = ticket["assignee_userid"] == ctx.asker.userid
    by_agent = mine or _claimable(ticket, agent)
    # The Dog path: whoever may see the customer closes a ticket the knowledge base answered;
    # and one no queue holds (imported open, but opened before the routing window).
    # (opened_at is naive local time)
    local_now = _utc_now(ctx.services).astimezone(ctx.services.config.tz).replace(tzinfo=None)
    never_routed = (ticket["status"] == "open" and ticket["routed_at"] is None
                    and ticket["opened_at"] < local_now - ROUTE_WITHIN)
    by_owner = (agent is None and ticket["assignee_userid"] is None
                and (ticket["status"] in ("self_service", "resolved", "closed") or never_routed)
                and await _visible(connection, ctx, ticket))
    # A service lead closes what their queues hold, whoever has it: they see those tickets in 我的工单.
    by_lead = (not (by_agent or by_owner) and ticket["queue"] is not None
               and ticket["queue"] in await _led_queues(ctx, connection))
    if not (by_agent or by_owner or by_lead):
        return await _refused(connection, ctx, ticket, typed, "resolve"), "gone"
    if ticket["status"] in ("resolved", "closed"):
        return _result(ctx, "already_resolved", ticket=_item(ticket)), "resolved"
    now = _utc_now(ctx.services)
    values: dict[str, Any] = {"status": "resolved", "resolved_at": now, "resolution": note[:4000] or None}
    if by_agent:
        # Resolving an open ticket is its first response too.
        values.update(assignee_userid=ctx.asker.userid, accepted_at=ticket["accepted_at"] or now)
    elif by_lead:  # the agent keeps it in the report; the customer has had an answer
        values.update(accepted_at=ticket["accepted_at"] or now)
    changed = (await connection.execute(
        update(Ticket).where(Ticket.ticket_id == ticket["ticket_id"], Ticket.status == ticket["status"],
                             _assigned_to(ticket["assignee_userid"])).values(**values))).rowcount
    if not changed:
        return _result(ctx, "not_found", ticket_id=typed), "gone"
    return _result(ctx, "resolved", ticket=_item(ticket), note=note,
                   self_served=not by_agent and ticket["status"] == "self_service"), "resolved"


def _assigned_to(userid: str | None):
    """Guard for an update: still in the hands it was read in (no transfer in between)."""
    return Ticket.assignee_userid.is_(None) if userid is None else Ticket.assignee_userid == userid


async def _refused(connection, ctx, ticket: dict[str, Any], typed: str, action: str) -> str:
    """Why the asker may not act on a ticket: a ticket of a customer they see (it is in
    their 我的工单) is named with whoever handles it; any other reads as unknown, so that
    nobody learns of another team's tickets."""
    if not await _visible(connection, ctx, ticket) and ticket["queue"] not in await _led_queues(ctx, connection):
        return _result(ctx, "not_found", ticket_id=typed)
    return _result(ctx, "not_yours", ticket=_item(ticket), action=action, agent=ticket["agent_name"],
                   queue=ticket["queue"], status=ticket["status"])


async def _visible(connection, ctx, ticket: dict[str, Any]) -> bool:
    owners = await _owners(ctx, connection)
    return owners is queries.EVERYONE or ticket["owner_userid"] in owners


async def _transfer(connection, ctx, typed: str, to: str) -> tuple[str, bool]:
    """(answer, whether a card was queued)."""
    ticket = await queries.ticket_by_id(connection, typed)
    if ticket is None:
        return _result(ctx, "not_found", ticket_id=typed), False
    holder = ticket["assignee_userid"]
    by_agent = ctx.asker.role == "agent" and holder == ctx.asker.userid
    # A service lead hands on what their queues hold: a ticket whose agent is away or swamped.
    by_lead = not by_agent and ticket["queue"] is not None and ticket["queue"] in await _led_queues(ctx, connection)
    if not (by_agent or by_lead) or ticket["status"] not in ("open", "accepted"):
        if ticket["status"] in ("resolved", "closed") and (by_agent or by_lead):
            return _result(ctx, "already_resolved", ticket=_item(ticket)), False
        return await _refused(connection, ctx, ticket, typed, "transfer"), False
    target = await queries.find_user(connection, to)
    if target is None or target.role != "agent":
        return _result(ctx, "not_an_agent", userid=to, known=target is not None), False
    if target.userid == holder:
        return _result(ctx, "same_agent", ticket=_item(ticket), own=by_agent, to=target.name), False
    receiver = await queries.agent_of(connection, target.userid)
    if ticket["queue"] and (receiver is None or ticket["queue"] not in receiver["queues"]):
        # A Star's ticket in the expert queue must not land with an agent who does not serve it.
        return _result(ctx, "not_in_queue", ticket=_item(ticket), to=target.name, to_userid=target.userid,
                       queue=ticket["queue"]), False
    now = _utc_now(ctx.services)
    values: dict[str, Any] = {"assignee_userid": target.userid}
    if ticket["breached_at"] is None:
        values["warned_at"] = None  # the new agent hears of a deadline coming too
    changed = (await connection.execute(
        update(Ticket).where(Ticket.ticket_id == ticket["ticket_id"], _assigned_to(holder),
                             Ticket.status == ticket["status"]).values(**values))).rowcount
    if not changed:
        return _result(ctx, "not_found", ticket_id=typed), False
    lang = target.language or ctx.services.config.language  # the card is the new agent's
    due = _local(ctx.services, ticket["first_response_due"]) or "—"
    item = {"ticket_id": ticket["ticket_id"], "customer_id": ticket["customer_id"],
            "name": ticket["customer_name"], "subject": ticket["subject"],
            "tier": ticket["tier"] or ticket["customer_tier"], "queue": ticket["queue"],
            "priority": ticket["priority"] or ticket["severity"] or "P3", "due": due,
            # Accepted already (the first response is made): the new agent's card offers only 解决.
            "accepted": ticket["status"] == "accepted",
            "note": render(f"chat/ticket_result.{lang}.j2", outcome="transfer_note", by=ctx.asker.name,
                           accepted=ticket["status"] == "accepted").strip()}
    card = messages.ticket_card(item, lang, messages.card_task_id())
    await connection.execute(OutboxMessage.__table__.insert().values(**outbox_row(
        [target.userid], "template_card", card, kind="ticket", now=now,
        origin=f"ticket-transfer:{ticket['ticket_id']}:{target.userid}:{now.isoformat()}")))
    return _result(ctx, "transferred", ticket=_item(ticket), to=receiver["name"] if receiver else target.name,
                   to_userid=target.userid, away=bool(receiver and receiver["away"])), True


# ------------------------------------------------------------------ 暂离 / away, 回来 / back


@router.command("agent_away", r"暂离|我暂离|离开|暂停接单|请假|忙碌|下班",
                r"away|i'?m away|afk|pause|be right back|brb|off duty")
async def agent_away(ctx: CommandContext) -> Reply:
    return await _set_away(ctx, True)


@router.command("agent_back", r"上班|回来|回来了|我回来了|恢复接单|开始接单|在线|在岗",
                r"back|i'?m back|available|online|on duty")
async def agent_back(ctx: CommandContext) -> Reply:
    return await _set_away(ctx, False)


async def _set_away(ctx: CommandContext, away: bool) -> Reply:
    if ctx.asker.role != "agent":
        return Reply(_result(ctx, "agents_only"), msgtype="text")
    now = _utc_now(ctx.services)
    async with ctx.services.db.begin() as connection:
        values = {"away": away, "away_since": now if away else None}
        changed = (await connection.execute(update(AgentState).where(AgentState.userid == ctx.asker.userid)
                                            .values(**values))).rowcount
        if not changed:
            await connection.execute(AgentState.__table__.insert().values(userid=ctx.asker.userid, **values))
        if away:
            # Not accepted yet: back to the queue, for a colleague on duty, while the SLA clock runs.
            waiting = (await connection.execute(
                update(Ticket).where(Ticket.assignee_userid == ctx.asker.userid, Ticket.status == "open")
                .values(assignee_userid=None, warned_at=None))).rowcount
        else:
            waiting = await queries.open_ticket_count(connection, ctx.asker.userid)
    _wake_tickets(ctx.services)  # handed-back tickets go out, or waiting ones come now
    return Reply(_result(ctx, "away" if away else "back", waiting=waiting), msgtype="text")


# ------------------------------------------------------------------ card buttons


@router.action(r"accept:(?P<ticket>[A-Za-z0-9][A-Za-z0-9_\-./]{0,63})", name="card_accept")
async def accept_button(ctx: ActionContext) -> Reply:
    async with ctx.services.db.begin() as connection:
        text, state = await _accept(connection, ctx, ctx.match.group("ticket"))
        ticket = await queries.ticket_by_id(connection, ctx.match.group("ticket")) if state == "accepted" else None
        if ticket is not None and ticket["assignee_userid"] == ctx.asker.userid and ctx.response_code:
            # Accepted: the card goes on to its 解决 button rather than ending as a grey label.
            await queue_card_replacement(connection, ctx.asker.userid, ctx.response_code, _accepted_card(ctx, ticket))
        else:
            await queue_card_update(connection, ctx, state)
    ctx.services.wake_dispatcher()
    return Reply(text, msgtype="text")


def _accepted_card(ctx: ActionContext, ticket: dict[str, Any]) -> dict:
    lang = ctx.lang  # the clicker's own language, as the card that went out to them
    item = {"ticket_id": ticket["ticket_id"], "customer_id": ticket["customer_id"], "name": ticket["customer_name"],
            "subject": ticket["subject"], "tier": ticket["tier"] or ticket["customer_tier"], "queue": ticket["queue"],
            "priority": ticket["priority"] or ticket["severity"] or "P3",
            "due": _local(ctx.services, ticket["first_response_due"]) or "—", "accepted": True,
            "note": render(f"chat/card_button.{lang}.j2", state="accepted", until=None).strip()}
    return messages.ticket_card(item, lang, ctx.card_task_id or messages.card_task_id())


async def _grey_sent_cards(connection, ctx: CommandContext, ticket_id: str, userid: str | None, state: str) -> bool:
    """A ticket resolved or handed on by typing: the cards it was sent to `userid` on are
    greyed to `state` too, with the response_code WeCom answered each send with. True when
    an update was queued."""
    if not userid:
        return False
    sent_on = or_(*(OutboxMessage.origin.startswith(f"{kind}:{ticket_id}:{userid}:", autoescape=True)
                    for kind in ("ticket-card", "ticket-transfer")))
    return await grey_cards_sent_to(connection, ctx.services, userid, sent_on, state)


@router.action(r"resolve:(?P<ticket>[A-Za-z0-9][A-Za-z0-9_\-./]{0,63})", name="card_resolve")
async def resolve_button(ctx: ActionContext) -> Reply:
    async with ctx.services.db.begin() as connection:
        text, state = await _resolve(connection, ctx, ctx.match.group("ticket"), "")
        await queue_card_update(connection, ctx, state)
    ctx.services.wake_dispatcher()
    return Reply(text, msgtype="text")
