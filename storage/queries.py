"""Permission-scoped reads for the chat commands (async).

Visibility: a rep sees the customers they own, a manager those owned by anyone in their
reporting tree (themselves included), an admin everything. Every query here takes the
asker's visible owners, so a customer outside them behaves exactly like one that does
not exist.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import date
from typing import Any

from sqlalchemy import and_, case, func, literal, or_, select, text, update
from sqlalchemy.ext.asyncio import AsyncConnection

from storage.db import as_date
from storage.models import Customer, FollowUpTask, Order, ScoreRun, ScoreSnapshot, Ticket, TierChange, User
from storage.scores import SnapshotPart, StoredSnapshot

EVERYONE = None  # visible owners of an admin: no filter


@dataclass(frozen=True)
class UserRow:
    userid: str
    name: str
    role: str
    language: str | None = None  # None: the service's


async def get_user(connection: AsyncConnection, userid: str) -> UserRow | None:
    row = (await connection.execute(select(User.userid, User.name, User.role, User.language)
                                    .where(User.userid == userid))).first()
    return UserRow(*row) if row else None


async def set_language(connection: AsyncConnection, userid: str, language: str) -> None:
    await connection.execute(update(User).where(User.userid == userid).values(language=language))


async def visible_owners(connection: AsyncConnection, user: UserRow) -> list[str] | None:
    """UserIDs whose customers `user` may see; None means everyone's (admin)."""
    if user.role == "admin":
        return EVERYONE
    if user.role != "manager":
        return [user.userid]
    tree = await connection.execute(text("""
        WITH RECURSIVE reports(userid, depth) AS (
            SELECT userid, 0 FROM users WHERE userid = :root
            UNION
            SELECT u.userid, r.depth + 1 FROM users u JOIN reports r ON u.manager_userid = r.userid
            WHERE r.depth < 50
        )
        SELECT DISTINCT userid FROM reports"""), {"root": user.userid})
    return sorted(row[0] for row in tree)


def _owned_by(owners: list[str] | None):
    return literal(True) if owners is EVERYONE else Customer.owner_userid.in_(owners)


async def latest_run_id(connection: AsyncConnection) -> int | None:
    """The newest succeeded full run: incremental rescores update its rows in place."""
    return (await connection.execute(
        select(func.max(ScoreRun.id)).where(ScoreRun.status == "succeeded", ScoreRun.kind == "full"))).scalar()


async def run_as_of(connection: AsyncConnection, run_id: int) -> date:
    value = (await connection.execute(select(ScoreRun.as_of).where(ScoreRun.id == run_id))).scalar_one()
    return as_date(value)


async def tier_totals(connection: AsyncConnection, owners: list[str] | None, run_id: int) -> dict[str, dict]:
    """Per tier: customers and 12-month revenue, over the visible customers. Driven from
    customers (owner index): joined the other way round, the planner may scan a whole run."""
    revenue = (select(ScoreSnapshot.revenue_12m)
               .where(ScoreSnapshot.run_id == run_id, ScoreSnapshot.customer_id == Customer.customer_id)
               .scalar_subquery())
    rows = await connection.execute(
        select(Customer.tier, func.count(), func.coalesce(func.sum(revenue), 0.0))
        .where(_owned_by(owners), Customer.tier.is_not(None))
        .group_by(Customer.tier))
    return {tier: {"customers": count, "revenue_12m": float(total)} for tier, count, total in rows}


async def customers_in_tier(connection: AsyncConnection, owners: list[str] | None, run_id: int, tier: str,
                            offset: int, limit: int) -> tuple[list[dict[str, Any]], int]:
    """A page of one tier's visible customers, most valuable first; and the total count.
    Driven from customers (owner, tier) — the current tier is kept there by every run."""
    return await _listed_customers(connection, owners, run_id, Customer.tier == tier, offset, limit)


async def customers_with_label(connection: AsyncConnection, owners: list[str] | None, run_id: int,
                               coded_labels: dict[str, list[str]], model: str, label: str, offset: int,
                               limit: int) -> tuple[list[dict[str, Any]], int]:
    """customers_in_tier for another model's label (an RFM segment, S/A/B/C, ...), from
    the run's label codes (storage.scores.label_codes)."""
    from storage.scores import label_condition

    condition = label_condition(ScoreSnapshot.label_codes, coded_labels, model, label)
    # The pyramid ranks by revenue: its lists do too (the others by current value).
    by_revenue = model == "pyramid"
    items, total = await _listed_customers(connection, owners, run_id, condition, offset, limit, by_revenue,
                                           with_reasons=True)
    # Why each is in the list: the model's own reasons, from the page's rows only.
    every_reasons = await snapshot_reasons(connection, run_id, [(item["customer_id"], item.pop("stored_reasons"),
                                                                  item.pop("reasons_chunk")) for item in items])
    for item, reasons in zip(items, every_reasons):
        item["reasons"] = reasons.get(model) or []
    return items, total


async def _listed_customers(connection: AsyncConnection, owners: list[str] | None, run_id: int, condition,
                            offset: int, limit: int, by_revenue: bool = False,
                            with_reasons: bool = False) -> tuple[list[dict[str, Any]], int]:
    joined = (select(Customer.customer_id).select_from(Customer)
              .join(ScoreSnapshot, and_(ScoreSnapshot.run_id == run_id,
                                        ScoreSnapshot.customer_id == Customer.customer_id))
              .where(condition, _owned_by(owners)))
    total = (await connection.execute(select(func.count()).select_from(joined.subquery()))).scalar_one()
    reasons = (ScoreSnapshot.reasons.label("stored_reasons"), ScoreSnapshot.reasons_chunk) if with_reasons else ()
    rows = await connection.execute(
        joined.with_only_columns(Customer.customer_id, Customer.name, Customer.owner_userid, Customer.tier,
                                 func.coalesce(User.name, Customer.owner_userid).label("owner_name"),
                                 ScoreSnapshot.current_value, ScoreSnapshot.potential_value,
                                 ScoreSnapshot.revenue_12m, *reasons)
        .outerjoin(User, User.userid == Customer.owner_userid)
        .order_by(*((ScoreSnapshot.revenue_12m.desc(), ScoreSnapshot.current_value.desc()) if by_revenue else
                    (ScoreSnapshot.current_value.desc(), ScoreSnapshot.revenue_12m.desc())), Customer.customer_id)
        .offset(offset).limit(limit))
    return [dict(row._mapping) for row in rows], total


async def coded_labels(connection: AsyncConnection, run_id: int) -> dict[str, list[str]] | None:
    """How the run coded its labels (ScoringParams.coded_labels); None for runs before that."""
    summary = (await connection.execute(select(ScoreRun.summary).where(ScoreRun.id == run_id))).scalar()
    return (summary or {}).get("coded_labels")


def _like_escape(term: str) -> str:
    return term.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


async def ticket_customers(connection: AsyncConnection, agent: str) -> list[str]:
    """The customers of the tickets in an agent's hands (open or accepted): an agent looks
    them up while working on one, though they own no customer."""
    return list((await connection.execute(
        select(Ticket.customer_id).distinct().where(Ticket.assignee_userid == agent,
                                                    Ticket.status.in_(("open", "accepted"))))).scalars())


def _visible(owners: list[str] | None, also: list[str] | None = None):
    visible = _owned_by(owners)
    return or_(visible, Customer.customer_id.in_(also)) if also else visible


async def find_customers(connection: AsyncConnection, owners: list[str] | None, query: str,
                         limit: int = 8, also: list[str] | None = None) -> list[dict[str, Any]]:
    """Visible customers matching `query`: the exact id or name first, then names that
    contain it, then names that contain its characters in order (华为 → 华为技术, 华X为).
    `also`: customers visible besides those of `owners` (ticket_customers)."""
    visible = _visible(owners, also)
    columns = (Customer.customer_id, Customer.name)
    exact = await connection.execute(
        select(*columns).where(visible, or_(func.lower(Customer.customer_id) == query.lower(),
                                            Customer.name == query)).limit(2))
    found = [dict(r._mapping) for r in exact]
    if len(found) == 1:
        return found
    escaped = _like_escape(query)
    for pattern in (f"%{escaped}%", "%" + "%".join(_like_escape(ch) for ch in query if not ch.isspace()) + "%"):
        rows = await connection.execute(
            select(*columns).where(visible, Customer.name.ilike(pattern, escape="\\"))
            .order_by(func.length(Customer.name), Customer.customer_id).limit(limit))
        found = [dict(r._mapping) for r in rows]
        if found:
            return found
    return []


async def customer_detail(connection: AsyncConnection, owners: list[str] | None, customer_id: str,
                          run_id: int | None, also: list[str] | None = None) -> dict[str, Any] | None:
    row = (await connection.execute(
        select(Customer.customer_id, Customer.name, Customer.owner_userid, Customer.industry, Customer.tier,
               Customer.tier_since, User.name.label("owner_name"))
        .outerjoin(User, User.userid == Customer.owner_userid)
        .where(Customer.customer_id == customer_id, _visible(owners, also)))).first()
    if row is None:
        return None
    detail = dict(row._mapping)
    detail["snapshot"] = None
    if run_id is not None:
        snapshot = (await connection.execute(
            select(ScoreSnapshot.tier, ScoreSnapshot.current_value, ScoreSnapshot.potential_value,
                   ScoreSnapshot.revenue_12m, ScoreSnapshot.reasons, ScoreSnapshot.reasons_chunk,
                   ScoreSnapshot.labels, ScoreSnapshot.scores, ScoreRun.as_of)
            .join(ScoreRun, ScoreRun.id == ScoreSnapshot.run_id)
            .where(ScoreSnapshot.run_id == run_id, ScoreSnapshot.customer_id == customer_id))).first()
        if snapshot:
            detail["snapshot"] = dict(snapshot._mapping)
            chunk = detail["snapshot"].pop("reasons_chunk")
            stored = await stored_snapshot(connection, run_id, [(customer_id, None, chunk)])
            for document in ("labels", "scores"):
                detail["snapshot"][document] = stored.documents([(customer_id, snapshot._mapping[document], chunk)],
                                                                document)[0]
            detail["snapshot"]["reasons"] = stored.of([(customer_id, snapshot.reasons, chunk)])[0]
    last = (await connection.execute(
        select(Order.order_date, Order.amount).where(Order.customer_id == customer_id)
        .order_by(Order.order_date.desc(), Order.order_id.desc()).limit(1))).first()
    detail["last_order"] = {"date": as_date(last.order_date), "amount": float(last.amount)} if last else None
    detail.update(await _open_work(connection, customer_id))
    return detail


CARD_TASKS = 3


async def _open_work(connection: AsyncConnection, customer_id: str) -> dict[str, Any]:
    """What is open on a customer, for its card: the follow-up tasks (soonest due first, a
    few) with whose they are, its open tickets with the most urgent one, and the follow-up
    done last with what the rep noted came of it."""
    tasks = (await connection.execute(
        select(FollowUpTask.id, FollowUpTask.title_zh, FollowUpTask.title_en, FollowUpTask.due_date,
               FollowUpTask.snoozed_until, FollowUpTask.owner_userid, User.name.label("owner_name"))
        .outerjoin(User, User.userid == FollowUpTask.owner_userid)
        .where(FollowUpTask.customer_id == customer_id, FollowUpTask.status == "open")
        .order_by(FollowUpTask.due_date, FollowUpTask.id))).all()
    tickets = (await connection.execute(
        select(Ticket.ticket_id, Ticket.priority, Ticket.severity, Ticket.status, User.name.label("agent_name"))
        .outerjoin(User, User.userid == Ticket.assignee_userid)
        .where(Ticket.customer_id == customer_id, Ticket.status.in_(("self_service", "open", "accepted")))
        .order_by(func.coalesce(Ticket.priority, Ticket.severity, "P3"), Ticket.opened_at))).all()
    last_done = (await connection.execute(
        select(FollowUpTask.id, FollowUpTask.title_zh, FollowUpTask.title_en, FollowUpTask.done_at,
               FollowUpTask.done_note, FollowUpTask.owner_userid, User.name.label("owner_name"))
        .outerjoin(User, User.userid == FollowUpTask.owner_userid)
        .where(FollowUpTask.customer_id == customer_id, FollowUpTask.status == "done")
        .order_by(FollowUpTask.done_at.desc().nulls_last(), FollowUpTask.id.desc()).limit(1))).first()
    return {"open_tasks": [{**row._mapping, "due_date": as_date(row.due_date)} for row in tasks[:CARD_TASKS]],
            "last_done": dict(last_done._mapping) if last_done else None,
            "open_task_count": len(tasks),
            "open_tickets": len(tickets), "first_ticket": dict(tickets[0]._mapping) if tickets else None}




async def save_listing(connection: AsyncConnection, userid: str, command: str, arguments: dict,
                       next_offset: int, now) -> None:
    """Remember the list a user is paging through (one per user; the newest wins)."""
    from storage.models import ChatSession

    await connection.execute(ChatSession.__table__.delete().where(ChatSession.userid == userid))
    await connection.execute(ChatSession.__table__.insert().values(
        userid=userid, command=command, arguments=arguments, next_offset=next_offset, updated_at=now))


async def load_listing(connection: AsyncConnection, userid: str) -> dict[str, Any] | None:
    from storage.models import ChatSession

    row = (await connection.execute(select(ChatSession.command, ChatSession.arguments, ChatSession.next_offset)
                                    .where(ChatSession.userid == userid))).first()
    return dict(row._mapping) if row else None


# ---------------------------------------------------------------- managers: churn risk and team


async def churn_risks(connection: AsyncConnection, owners: list[str] | None, run_id: int, threshold: float,
                      offset: int, limit: int, min_revenue_12m: float = 0.0, lapsed: bool = False
                      ) -> tuple[list[dict[str, Any]], int]:
    """A page of visible customers whose churn score in run `run_id` is at least
    `threshold` (and 12-month revenue at least `min_revenue_12m`), highest first, with
    their owner's name and the churn reasons; and the total count. Driven from customers
    (owner index) like tier_totals.

    `lapsed`: the win-back list instead — those at risk with less than `min_revenue_12m`
    (nothing, by default) in 12 months who did buy before (lifecycle not "potential"),
    the most valuable (multi-year current value) first."""
    from storage.scores import label_condition

    if lapsed:
        at_risk_where = and_(_owned_by(owners), ScoreSnapshot.churn_score >= threshold,
                             or_(ScoreSnapshot.revenue_12m < min_revenue_12m, ScoreSnapshot.revenue_12m <= 0))
        coded = await coded_labels(connection, run_id) or {}
        # Prospects who never bought have nothing to win back: lifecycle's "potential", else
        # RFM's "no_purchase"; with both off (or a run before label codes) all are listed.
        for model, label in (("lifecycle", "potential"), ("rfm", "no_purchase")):
            try:
                never_bought = label_condition(ScoreSnapshot.label_codes, coded, model, label)
            except KeyError:
                continue
            at_risk_where = and_(at_risk_where, ~never_bought)
            break
        order = (ScoreSnapshot.current_value.desc(), ScoreSnapshot.churn_score.desc(), Customer.customer_id)
    else:
        at_risk_where = and_(_owned_by(owners), ScoreSnapshot.churn_score >= threshold,
                             ScoreSnapshot.revenue_12m >= min_revenue_12m)
        order = (ScoreSnapshot.churn_score.desc(), ScoreSnapshot.revenue_12m.desc(), Customer.customer_id)
    at_risk = (select(Customer.customer_id).select_from(Customer)
               .join(ScoreSnapshot, and_(ScoreSnapshot.run_id == run_id,
                                         ScoreSnapshot.customer_id == Customer.customer_id))
               .where(at_risk_where))
    total = (await connection.execute(select(func.count()).select_from(at_risk.subquery()))).scalar_one()
    if not total:
        return [], 0
    rows = await connection.execute(
        select(Customer.customer_id, Customer.name, Customer.owner_userid, User.name.label("owner_name"),
               ScoreSnapshot.churn_score.label("churn_score"), ScoreSnapshot.revenue_12m, ScoreSnapshot.current_value,
               ScoreSnapshot.tier, ScoreSnapshot.reasons.label("stored_reasons"), ScoreSnapshot.reasons_chunk)
        .select_from(Customer)
        .join(ScoreSnapshot, and_(ScoreSnapshot.run_id == run_id, ScoreSnapshot.customer_id == Customer.customer_id))
        .outerjoin(User, User.userid == Customer.owner_userid)
        .where(at_risk_where)
        .order_by(*order)
        .offset(offset).limit(limit))
    rows = rows.all()
    every_reasons = await snapshot_reasons(connection, run_id, [(row.customer_id, row.stored_reasons,
                                                                  row.reasons_chunk) for row in rows])
    found = []
    for row, reasons in zip(rows, every_reasons):
        item = dict(row._mapping)
        del item["stored_reasons"], item["reasons_chunk"]
        item["churn_reasons"] = reasons.get("churn") or []
        item["churn_score"] = float(item["churn_score"])
        item["revenue_12m"] = float(item["revenue_12m"] or 0.0)
        found.append(item)
    return found, total


async def stored_snapshot(connection: AsyncConnection, run_id: int, rows: list[SnapshotPart]) -> StoredSnapshot:
    """A reader of a few snapshot rows of run `run_id`, with the chunks they need fetched."""
    reader = StoredSnapshot(keep=len(rows))
    needed = reader.missing(rows)
    if needed:
        for chunk, payload in await connection.execute(reader.query(run_id, needed)):
            reader.add(chunk, payload)
    return reader


async def snapshot_reasons(connection: AsyncConnection, run_id: int, rows: list[SnapshotPart]) -> list[dict]:
    """Every model's reasons for a few snapshot rows of run `run_id`."""
    return (await stored_snapshot(connection, run_id, rows)).of(rows)


async def team_tiers(connection: AsyncConnection, owners: list[str] | None,
                     run_id: int | None) -> dict[str, dict[str | None, dict[str, float]]]:
    """owner → tier → {"customers", "revenue_12m"} over the visible customers (tier None:
    not scored yet). One GROUP BY; revenue from the run's snapshot, as in tier_totals."""
    if run_id is None:
        revenue = literal(0.0)
    else:
        revenue = (select(ScoreSnapshot.revenue_12m)
                   .where(ScoreSnapshot.run_id == run_id, ScoreSnapshot.customer_id == Customer.customer_id)
                   .scalar_subquery())
    rows = await connection.execute(
        select(Customer.owner_userid, Customer.tier, func.count(), func.coalesce(func.sum(revenue), 0.0))
        .where(_owned_by(owners), Customer.owner_userid.is_not(None))
        .group_by(Customer.owner_userid, Customer.tier))
    found: dict[str, dict[str | None, dict[str, float]]] = {}
    for owner, tier, count, total in rows:
        found.setdefault(owner, {})[tier] = {"customers": int(count), "revenue_12m": float(total or 0.0)}
    return found


async def team_tasks(connection: AsyncConnection, owners: list[str] | None, today: date) -> dict[str, dict[str, int]]:
    """owner → {"open", "overdue"}: open follow-up tasks and those due before `today`."""
    overdue = func.sum(case((FollowUpTask.due_date < today, 1), else_=0))
    query = (select(FollowUpTask.owner_userid, func.count(), overdue)
             .where(FollowUpTask.status == "open").group_by(FollowUpTask.owner_userid))
    if owners is not EVERYONE:
        query = query.where(FollowUpTask.owner_userid.in_(owners))
    return {owner: {"open": int(count), "overdue": int(late or 0)} for owner, count, late in
            await connection.execute(query)}


@dataclass(frozen=True)
class TierReport:
    """What 分层报表 / tier report shows over the visible customers (see tier_report)."""

    tiers: dict[str, dict[str, float]]  # tier → customers, revenue_12m, at_risk, at_risk_revenue
    top_revenue: float  # 12-month revenue of the top `top_share` of the customers by it
    flows: dict[tuple[str, str], int]  # (from tier, to tier) → tier changes in the period
    done: dict[str | None, int]  # tier the task was made for → follow-up tasks done in the period


async def tier_report(connection: AsyncConnection, owners: list[str] | None, run_id: int, since_utc,
                      churn_threshold: float, min_revenue_12m: float, top_share: float = 0.2) -> TierReport:
    """Per tier over the visible scored customers: how many, their 12-month revenue, those
    at high churn risk (as 流失预警 counts them) and their revenue; how much the top
    `top_share` of them by revenue bring in; the value-matrix tier changes since `since_utc`
    (first tiers left out); follow-up tasks held in the scope and done since then. Driven
    from customers (owner index), as tier_totals."""
    snapshot = and_(ScoreSnapshot.run_id == run_id, ScoreSnapshot.customer_id == Customer.customer_id)
    at_risk = and_(ScoreSnapshot.churn_score >= churn_threshold, ScoreSnapshot.revenue_12m >= min_revenue_12m)
    scored = and_(_owned_by(owners), Customer.tier.is_not(None))
    rows = await connection.execute(
        select(Customer.tier, func.count(), func.coalesce(func.sum(ScoreSnapshot.revenue_12m), 0.0),
               func.coalesce(func.sum(case((at_risk, 1), else_=0)), 0),
               func.coalesce(func.sum(case((at_risk, ScoreSnapshot.revenue_12m), else_=0.0)), 0.0))
        .select_from(Customer).outerjoin(ScoreSnapshot, snapshot).where(scored).group_by(Customer.tier))
    tiers = {tier: {"customers": int(count), "revenue_12m": float(revenue), "at_risk": int(risky),
                    "at_risk_revenue": float(risky_revenue)} for tier, count, revenue, risky, risky_revenue in rows}
    customers = sum(row["customers"] for row in tiers.values())
    top = math.ceil(customers * top_share)
    biggest = (select(func.coalesce(ScoreSnapshot.revenue_12m, 0.0).label("revenue"))
               .select_from(Customer).outerjoin(ScoreSnapshot, snapshot).where(scored)
               .order_by(func.coalesce(ScoreSnapshot.revenue_12m, 0.0).desc()).limit(top).subquery())
    top_revenue = float((await connection.execute(select(func.coalesce(func.sum(biggest.c.revenue), 0.0))))
                        .scalar_one()) if top else 0.0
    # Each customer's history from its (customer_id, changed_at) index.
    flows = {(before, after): int(count) for before, after, count in await connection.execute(
        select(TierChange.from_tier, TierChange.to_tier, func.count())
        .select_from(Customer).join(TierChange, and_(TierChange.customer_id == Customer.customer_id,
                                                     TierChange.changed_at >= since_utc))
        .where(_owned_by(owners), TierChange.model == "value_matrix", TierChange.from_tier.is_not(None))
        .group_by(TierChange.from_tier, TierChange.to_tier))}
    done_query = (select(FollowUpTask.tier, func.count())
                  .where(FollowUpTask.status == "done", FollowUpTask.done_at >= since_utc)
                  .group_by(FollowUpTask.tier))
    if owners is not EVERYONE:
        done_query = done_query.where(FollowUpTask.owner_userid.in_(owners))
    done = {tier: int(count) for tier, count in await connection.execute(done_query)}
    return TierReport(tiers, top_revenue, flows, done)


async def people(connection: AsyncConnection, userids: list[str] | None) -> dict[str, UserRow]:
    """userid → (userid, name, role) for `userids` (None: everyone)."""
    query = select(User.userid, User.name, User.role)
    if userids is not EVERYONE:
        query = query.where(User.userid.in_(userids))
    return {row[0]: UserRow(*row) for row in await connection.execute(query)}


# ---------------------------------------------------------------- service tickets

# Tickets still being worked on: waiting on self-service, waiting for an agent, accepted.
TICKETS_OPEN = ("self_service", "open", "accepted")


def _ticket_priority_order():
    priority = func.coalesce(Ticket.priority, Ticket.severity)
    return case((priority == "P1", 1), (priority == "P2", 2), (priority == "P3", 3), else_=4)


def _ticket_scope(owners: list[str] | None, queues: list[str] = ()):
    """A manager's tickets: their team's customers', those handled by their team's agents,
    and every ticket of the queues they lead (waiting ones too); an admin's: all."""
    if owners is EVERYONE:
        return literal(True)
    scope = [Customer.owner_userid.in_(owners), Ticket.assignee_userid.in_(owners)]
    if queues:
        scope.append(Ticket.queue.in_(list(queues)))
    return or_(*scope)


async def led_queues(connection: AsyncConnection, userid: str, configured_leads: dict[str, str]) -> list[str]:
    """The ticket queues `userid` leads, as breaches are escalated (notifications.tickets.
    queue_lead): those naming them as lead, and those without a lead whose agents they manage."""
    led = {queue for queue, lead in configured_leads.items() if lead == userid}
    rows = await connection.execute(select(User.queues).where(User.role == "agent", User.manager_userid == userid))
    for (queues,) in rows:
        led.update(queue for queue in (queues or "").split("|") if queue and not configured_leads.get(queue))
    return sorted(led)


async def exact_customers(connection: AsyncConnection, owners: list[str] | None,
                          candidates: list[str]) -> list[dict[str, Any]]:
    """Visible customers whose id (any case) or exact name is one of `candidates`."""
    if not candidates:
        return []
    rows = await connection.execute(
        select(Customer.customer_id, Customer.name)
        .where(_owned_by(owners), or_(func.lower(Customer.customer_id).in_([c.lower() for c in candidates]),
                                      Customer.name.in_(candidates)))
        .order_by(Customer.customer_id).limit(50))
    return [dict(row._mapping) for row in rows]


async def ticket_ids_taken(connection: AsyncConnection, ticket_ids: list[str]) -> set[str]:
    rows = await connection.execute(select(Ticket.ticket_id).where(Ticket.ticket_id.in_(ticket_ids)))
    return {row[0] for row in rows}


async def ticket_by_id(connection: AsyncConnection, typed: str) -> dict[str, Any] | None:
    """The ticket `typed` names (as typed, else upper or lower case: chat lower-cases
    nothing, but people do), with its customer's name, owner and current tier. Not
    permission-scoped: the caller decides whether the asker may act on it."""
    spellings = list(dict.fromkeys((typed, typed.upper(), typed.lower())))
    rows = (await connection.execute(
        select(Ticket.__table__, Customer.name.label("customer_name"), Customer.owner_userid,
               Customer.tier.label("customer_tier"), User.name.label("agent_name"))
        .select_from(Ticket.__table__.join(Customer, Customer.customer_id == Ticket.customer_id)
                     .outerjoin(User, User.userid == Ticket.assignee_userid))
        .where(Ticket.ticket_id.in_(spellings)))).mappings().all()
    if not rows:
        return None
    rows = sorted(rows, key=lambda row: spellings.index(row["ticket_id"]))
    return dict(rows[0])


async def agent_of(connection: AsyncConnection, userid: str) -> dict[str, Any] | None:
    """An agent's name, queues and away flag; None when `userid` is no agent."""
    from storage.models import AgentState

    row = (await connection.execute(
        select(User.userid, User.name, User.role, User.queues, AgentState.away)
        .outerjoin(AgentState, AgentState.userid == User.userid)
        .where(User.userid == userid))).first()
    if row is None or row.role != "agent":
        return None
    return {"userid": row.userid, "name": row.name, "away": bool(row.away),
            "queues": {queue for queue in (row.queues or "").split("|") if queue}}


async def find_user(connection: AsyncConnection, userid: str) -> UserRow | None:
    """A user by UserID; WeCom's UserIDs ignore case, so does this."""
    exact = await get_user(connection, userid)
    if exact is not None:
        return exact
    row = (await connection.execute(select(User.userid, User.name, User.role, User.language)
                                    .where(func.lower(User.userid) == userid.lower()).limit(1))).first()
    return UserRow(*row) if row else None


async def ticket_list(connection: AsyncConnection, *, assignee: str | None = None, owners: list[str] | None = None,
                      queues: list[str] = (), offset: int = 0, limit: int = 15) -> tuple[list[dict[str, Any]], int]:
    """A page of tickets by priority, then first-response deadline, and the total count:
    an agent's own open and accepted ones (`assignee`), else the open ones (self-service
    included) of the customers `owners` see (see _ticket_scope)."""
    if assignee is not None:
        where = and_(Ticket.assignee_userid == assignee, Ticket.status.in_(("open", "accepted")))
    else:
        where = and_(Ticket.status.in_(TICKETS_OPEN), _ticket_scope(owners, queues))
    joined = Ticket.__table__.join(Customer, Customer.customer_id == Ticket.customer_id)
    total = (await connection.execute(select(func.count()).select_from(joined).where(where))).scalar_one()
    if not total:
        return [], 0
    rows = await connection.execute(
        select(Ticket.ticket_id, Ticket.customer_id, Customer.name, func.coalesce(Ticket.tier, Customer.tier)
               .label("tier"), func.coalesce(Ticket.priority, Ticket.severity).label("priority"), Ticket.status,
               Ticket.subject, Ticket.first_response_due, Ticket.self_service_until, Ticket.breached_at,
               Ticket.accepted_at, Ticket.assignee_userid, User.name.label("agent_name"))
        .select_from(joined.outerjoin(User, User.userid == Ticket.assignee_userid))
        .where(where)
        .order_by(_ticket_priority_order(), case((Ticket.first_response_due.is_(None), 1), else_=0),
                  Ticket.first_response_due, Ticket.opened_at, Ticket.ticket_id)
        .offset(offset).limit(limit))
    return [dict(row._mapping) for row in rows], total


async def open_ticket_count(connection: AsyncConnection, assignee: str) -> int:
    """Tickets waiting for `assignee` to accept them."""
    return (await connection.execute(select(func.count()).select_from(Ticket).where(
        Ticket.assignee_userid == assignee, Ticket.status == "open"))).scalar_one()


async def ticket_report(connection: AsyncConnection, owners: list[str] | None, since_local, now_utc,
                        utc_offsets: list[tuple[Any, int]], queues: list[str] = ()
                        ) -> dict[str | None, dict[str, float]]:
    """Per tier (the one the ticket was routed for, else the customer's; None: unscored)
    over the tickets opened since `since_local` (naive local time, as opened_at is stored):
    {"tickets", "judged", "met", "accepted", "response_seconds", "open"}, in one GROUP BY.

    judged: tickets whose first response can be judged — they have a deadline, and were
    accepted or are past it (or a breach was recorded); met: of those, accepted on or
    before the deadline without a recorded breach. response_seconds: the sum of
    accepted_at − opened_at over accepted tickets, opened_at turned into UTC with
    `utc_offsets` — [(local boundary, offset seconds), ...]: the offset in force before each
    boundary, the last one's boundary None (see handlers.tickets.utc_offsets)."""
    from sqlalchemy import DateTime as _DateTime

    due, accepted = Ticket.first_response_due, Ticket.accepted_at
    judged = and_(due.is_not(None), or_(accepted.is_not(None), Ticket.breached_at.is_not(None), due <= now_utc))
    met = and_(due.is_not(None), accepted.is_not(None), accepted <= due, Ticket.breached_at.is_(None))
    if len(utc_offsets) == 1:
        offset = literal(utc_offsets[0][1])
    else:
        offset = case(*[(Ticket.opened_at < literal(boundary, _DateTime()), seconds)
                        for boundary, seconds in utc_offsets[:-1]], else_=utc_offsets[-1][1])
    if connection.dialect.name == "postgresql":
        naive = func.extract("epoch", accepted) - func.extract("epoch", Ticket.opened_at)
    else:  # SQLite keeps both as text, the tz-aware one in UTC
        naive = (func.julianday(accepted) - func.julianday(Ticket.opened_at)) * 86400.0
    tier = func.coalesce(Ticket.tier, Customer.tier).label("tier")
    rows = await connection.execute(
        select(tier, func.count(),
               func.sum(case((judged, 1), else_=0)),
               func.sum(case((met, 1), else_=0)),
               func.count(accepted),
               func.sum(case((accepted.is_not(None), naive + offset), else_=None)),
               func.sum(case((Ticket.status.in_(TICKETS_OPEN), 1), else_=0)))
        .select_from(Ticket.__table__.join(Customer, Customer.customer_id == Ticket.customer_id))
        .where(Ticket.opened_at >= since_local, _ticket_scope(owners, queues))
        .group_by(tier))
    return {tier: {"tickets": int(count), "judged": int(judged or 0), "met": int(met or 0),
                   "accepted": int(accepted or 0), "response_seconds": float(seconds or 0.0),
                   "open": int(still_open or 0)}
            for tier, count, judged, met, accepted, seconds, still_open in rows}
