"""Service tickets routed by the customer's tier (config `tickets`), with the SLA clock.

One pass (`process_tickets`, run by the scheduler every minute and woken on intake):
1. route new tickets: the first route whose condition holds (over the ticket and its
   customer's tiers) gives queue, priority and first-response SLA in working hours; the
   Dog route answers with knowledge-base links first (self_service);
2. re-route open tickets whose customer changed tier since they were routed;
3. self-service tickets still open when their time is up go to their queue;
4. assign waiting tickets: agents of the queue who are on duty (their hours, holidays,
   not marked away), least open load first, round-robin among equals;
5. warn the agent before the first-response deadline; at the deadline record the breach
   and escalate to the queue lead once (and tell the owner rep of a Star customer).

Everything a pass decides and the messages it causes are written in one transaction.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta, timezone
from typing import Any
from zoneinfo import ZoneInfo

import pandas as pd
from sqlalchemy import Connection, DateTime, Engine, bindparam, select, text, update

from notifications import messages
from notifications.outbox import outbox_row, queue_rows, quiet_until, recipient_languages
from notifications.settings import TicketRoute, TicketsConfig, parse_hh_mm
from notifications.workdays import CalendarConfig, WorkCalendar
from scoring.rules import BusinessRule, RuleAction, RuleError, RulesParams, apply_rules, compile_rules
from storage.db import write_transaction
from storage.models import AgentState, Ticket
from storage.scores import StoredSnapshot

ROUTE_FIELDS: dict[str, str] = {
    **{name: "text" for name in ("tier", "sabc", "pyramid", "lifecycle", "churn_label", "severity", "product_line",
                                 "industry", "region", "customer_type")},
    "churn_score": "number", "revenue_12m": "number",
}
# Tickets opened longer ago than this are history (e.g. a file of old tickets), not work.
ROUTE_WITHIN = timedelta(days=30)
OPEN = ("self_service", "open", "accepted")


def _as_rules(routes: list[TicketRoute]) -> RulesParams:
    return RulesParams(rules=[BusinessRule(name=route.name, when=route.when, then=RuleAction()) for route in routes])


def check_routes(routes: list[TicketRoute]) -> list[str]:
    try:
        compile_rules(_as_rules(routes), ROUTE_FIELDS, {}, actions_required=False)
    except RuleError as error:
        return [problem.replace("rules[", "routes[", 1) for problem in error.problems]
    return []


def choose_routes(frame: pd.DataFrame, routes: list[TicketRoute]) -> pd.Series:
    """The first matching route's name per row (None where none matches)."""
    compiled = compile_rules(_as_rules(routes), ROUTE_FIELDS, {}, actions_required=False)
    matched = apply_rules(compiled, frame, pd.DataFrame(index=frame.index)).matched
    chosen = pd.Series([None] * len(frame), index=frame.index, dtype=object)
    for route in reversed(routes):  # the earliest match wins
        chosen[matched[route.name].to_numpy()] = route.name
    return chosen


@dataclass
class TicketSettings:
    tickets: TicketsConfig
    calendar: WorkCalendar
    calendar_config: CalendarConfig
    tz: ZoneInfo
    language: str
    quiet_hours: tuple[str, str] = ("00:00", "00:00")
    _agent_calendars: dict[str, WorkCalendar] = field(default_factory=dict)
    # userid → their own language, for those who chose one (read at the start of each pass).
    chosen_languages: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_config(cls, config) -> "TicketSettings":
        quiet = config.pushes.quiet_hours
        return cls(config.tickets, WorkCalendar(config.calendar), config.calendar, config.tz, config.language,
                   (quiet.start, quiet.end))

    def hold_until(self, now: datetime, who: str | None = None) -> datetime | None:
        return quiet_until(now, parse_hh_mm(self.quiet_hours[0]), parse_hh_mm(self.quiet_hours[1]), self.tz, who)

    def route(self, name: str) -> TicketRoute:
        return next(route for route in self.tickets.routes if route.name == name)

    def on_duty(self, userid: str, now: datetime) -> bool:
        """Within the agent's working hours on a working day (being away is checked apart)."""
        hours = self.tickets.agent_hours.get(userid)
        if hours is None:
            return self.calendar.is_working_time(now.astimezone(self.tz))
        if userid not in self._agent_calendars:
            self._agent_calendars[userid] = WorkCalendar(self.calendar_config.model_copy(
                update={"working_hours": tuple(hours)}))
        return self._agent_calendars[userid].is_working_time(now.astimezone(self.tz))

    def after_working_hours(self, start: datetime, hours: float) -> datetime:
        return self.calendar.add_working_time(start.astimezone(self.tz), timedelta(hours=hours)).astimezone(
            timezone.utc)

    def language_of(self, userid: str) -> str:
        return self.chosen_languages.get(userid, self.language)

    def local(self, moment: datetime) -> str:
        return _aware(moment).astimezone(self.tz).strftime("%m-%d %H:%M")


@dataclass
class TicketOutcome:
    routed: int = 0
    rerouted: int = 0
    handed_over: int = 0
    assigned: int = 0
    warned: int = 0
    breached: int = 0


def _aware(moment: datetime | None, tz: ZoneInfo | timezone = timezone.utc) -> datetime | None:
    if moment is not None and moment.tzinfo is None:
        return moment.replace(tzinfo=tz)
    return moment


def process_tickets(engine: Engine, settings: TicketSettings, now: datetime) -> TicketOutcome:
    outcome = TicketOutcome()
    rows: list[dict[str, Any]] = []
    with write_transaction(engine) as connection:
        settings = replace(settings, chosen_languages=recipient_languages(connection))
        _route_new(connection, settings, now, outcome, rows)
        _reroute_changed(connection, settings, now, outcome, rows)
        _hand_over_self_service(connection, settings, now, outcome)
        _assign_waiting(connection, settings, now, outcome, rows)
        _watch_deadlines(connection, settings, now, outcome, rows)
        # A notice decided twice (a re-route back to the same agent) is not a reason to undo the pass.
        queue_rows(connection, rows, skip_existing=True)
    return outcome


# ------------------------------------------------------------------ reading


_TICKET_SQL = """
SELECT t.ticket_id, t.customer_id, t.opened_at, t.subject, t.severity, t.product_line, t.status, t.source,
       t.opened_by, t.tier AS routed_tier, t.routed_severity, t.route, t.queue, t.priority, t.assignee_userid,
       t.first_response_due, t.accepted_at,
       c.name, c.owner_userid, c.tier, c.industry, c.region, c.customer_type
FROM tickets t JOIN customers c ON c.customer_id = t.customer_id
WHERE {where}
ORDER BY t.opened_at, t.ticket_id
"""


def _tickets(connection: Connection, where: str, parameters: dict, binds: list = ()) -> pd.DataFrame:
    # Typed, so SQLite's text timestamps come back as datetimes.
    statement = text(_TICKET_SQL.format(where=where)).bindparams(*binds).columns(
        opened_at=DateTime, first_response_due=DateTime(timezone=True), accepted_at=DateTime(timezone=True))
    result = connection.execute(statement, parameters)
    frame = pd.DataFrame(result.mappings().all())
    if frame.empty:
        return frame
    # pandas turns a missing text into NaN, which is truthy: None, as the database meant.
    frame = frame.astype(object).where(frame.notna(), None)
    return frame.set_index("ticket_id", drop=False)


def _with_scores(connection: Connection, frame: pd.DataFrame) -> pd.DataFrame:
    """The other models' labels, churn and revenue from the latest full run."""
    snapshot = connection.execute(text("""
        SELECT s.run_id, s.customer_id, s.labels, s.churn_score, s.revenue_12m, s.reasons_chunk
        FROM score_snapshots s
        WHERE s.run_id = (SELECT MAX(id) FROM score_runs WHERE status = 'succeeded' AND kind = 'full')
          AND s.customer_id IN :ids""").bindparams(bindparam("ids", expanding=True)),
        {"ids": sorted(set(frame["customer_id"]))}).all()
    parts = [(row.customer_id, row.labels, row.reasons_chunk) for row in snapshot]
    every_labels = StoredSnapshot(keep=len(parts)).fetch(connection, snapshot[0].run_id, parts).documents(
        parts, "labels") if parts else []
    by_customer = {row.customer_id: {"sabc": labels.get("sabc"), "pyramid": labels.get("pyramid"),
                                     "lifecycle": labels.get("lifecycle"), "churn_label": labels.get("churn"),
                                     "churn_score": row.churn_score, "revenue_12m": row.revenue_12m}
                   for row, labels in zip(snapshot, every_labels)}
    extra = pd.DataFrame([by_customer.get(cid, {}) for cid in frame["customer_id"]], index=frame.index,
                         columns=["sabc", "pyramid", "lifecycle", "churn_label", "churn_score", "revenue_12m"])
    return frame.join(extra)


def _decide(connection: Connection, settings: TicketSettings, frame: pd.DataFrame) -> pd.Series:
    frame = _with_scores(connection, frame)
    view = frame.copy()
    for column, kind in ROUTE_FIELDS.items():
        if kind == "text":
            view[column] = view[column].where(view[column].notna(), "").astype(str)
        else:
            view[column] = pd.to_numeric(view[column], errors="coerce")
    return choose_routes(view[list(ROUTE_FIELDS)], settings.tickets.routes)


def _item(ticket: Any, settings: TicketSettings, **extra: Any) -> dict[str, Any]:
    due = getattr(ticket, "first_response_due", None)
    return {"ticket_id": ticket.ticket_id, "customer_id": ticket.customer_id, "name": ticket.name,
            "subject": ticket.subject, "tier": ticket.tier, "queue": ticket.queue, "priority": ticket.priority,
            "due": settings.local(due) if due is not None and not pd.isna(due) else "—", **extra}


# Notices to reps wait through quiet hours; agents and leads hear of tickets while on duty.
REP_NOTICES = ("self_service", "assigned", "star_breach", "urgent")


# Notices one person may get many of in one pass (a lead when a queue falls behind): sent
# together, they go as one list (notifications.dispatcher batches by key).
LISTED_NOTICES = ("breach", "warning")


def _notice(userid: str, kind: str, item: dict, settings: TicketSettings, origin: str, now: datetime,
            links: list | None = None) -> dict[str, Any]:
    body = {"content": messages.ticket_notice(kind, item, settings.language_of(userid), links)}
    hold = settings.hold_until(now, userid) if kind in REP_NOTICES else None
    listed = kind in LISTED_NOTICES
    return outbox_row([userid], "markdown", body, origin=origin, kind=f"ticket_{kind}", not_before=hold, now=now,
                      batch_key=f"ticket_{kind}:{userid}" if listed else None, batch_item=item if listed else None)


# ------------------------------------------------------------------ 1–3: routes


def _route_values(ticket: Any, route: TicketRoute, settings: TicketSettings, now: datetime,
                  self_service: bool) -> dict[str, Any]:
    """`self_service`: the ticket may (still) take the knowledge-base path; one already in
    a queue never goes back to it."""
    opened = _aware(ticket.opened_at, settings.tz)
    values: dict[str, Any] = {"route": route.name, "queue": route.queue, "tier": ticket.tier,
                              "routed_severity": ticket.severity, "priority": route.priority or ticket.severity or "P3", "warned_at": None}
    if route.self_service_hours and self_service:
        values.update(status="self_service", first_response_due=None,
                      self_service_until=settings.after_working_hours(max(opened, now), route.self_service_hours))
    else:
        values.update(first_response_due=settings.after_working_hours(opened, route.first_response_hours))
        if ticket.status == "self_service":
            values["status"] = "open"
    return values


def _route_new(connection: Connection, settings: TicketSettings, now: datetime, outcome: TicketOutcome,
               rows: list) -> None:
    since = (now - ROUTE_WITHIN).astimezone(settings.tz).replace(tzinfo=None)  # opened_at is local time
    frame = _tickets(connection, "t.routed_at IS NULL AND t.status = 'open' AND t.opened_at >= :since",
                     {"since": since}, [bindparam("since", type_=DateTime)])
    if frame.empty:
        return
    chosen = _decide(connection, settings, frame)
    for ticket in frame.itertuples(index=False):
        name = chosen[ticket.ticket_id]
        if name is None:
            continue
        route = settings.route(name)
        values = _route_values(ticket, route, settings, now, self_service=True)
        connection.execute(update(Ticket).where(Ticket.ticket_id == ticket.ticket_id)
                           .values(routed_at=now, **values))
        outcome.routed += 1
        if values.get("status") == "self_service":
            item = _item(ticket, settings, queue=route.queue, hours=f"{route.first_response_hours:g}",
                         until=settings.local(values["self_service_until"]))
            for userid in dict.fromkeys(u for u in (ticket.owner_userid, ticket.opened_by) if u):
                rows.append(_notice(userid, "self_service", item, settings, f"ticket-kb:{ticket.ticket_id}:{userid}",
                                    now, [link.model_dump() for link in settings.tickets.knowledge_base]))


def _reroute_changed(connection: Connection, settings: TicketSettings, now: datetime, outcome: TicketOutcome,
                     rows: list) -> None:
    """A customer's tier change, or a ticket re-sent with another severity, re-prioritises
    its open tickets."""
    frame = _tickets(connection, "t.routed_at IS NOT NULL AND t.status IN ('self_service', 'open', 'accepted') "
                                 "AND ((c.tier IS NOT NULL AND (t.tier IS NULL OR t.tier <> c.tier)) "
                                 "OR COALESCE(t.routed_severity, '') <> COALESCE(t.severity, ''))", {})
    if frame.empty:
        return
    chosen = _decide(connection, settings, frame)
    for ticket in frame.itertuples(index=False):
        name = chosen[ticket.ticket_id]
        if name is None:
            continue
        route = settings.route(name)
        values = _route_values(ticket, route, settings, now, self_service=ticket.status == "self_service")
        if ticket.status == "accepted":
            # Already in an agent's hands: the new priority counts, the queue and clock stay.
            values = {"tier": ticket.tier, "routed_severity": ticket.severity, "route": route.name,
                      "priority": values["priority"]}
        else:
            if values.get("first_response_due") is not None:
                # Never backdated (the new clock starts now at the latest), never later than
                # the deadline already promised.
                fresh = settings.after_working_hours(now, route.first_response_hours)
                old = _aware(ticket.first_response_due)
                values["first_response_due"] = min(fresh, old) if old is not None and old > now else fresh
                if values["first_response_due"] == old:
                    values.pop("warned_at")  # the same deadline: its warning stands
            if route.queue != ticket.queue:
                values["assignee_userid"] = None  # the new queue's agents take it
        connection.execute(update(Ticket).where(Ticket.ticket_id == ticket.ticket_id).values(**values))
        outcome.rerouted += 1
        keeps_agent = ticket.assignee_userid and "assignee_userid" not in values
        if keeps_agent and values["priority"] != ticket.priority:
            due = values.get("first_response_due", ticket.first_response_due)
            item = _item(ticket, settings, priority=values["priority"],
                         due=settings.local(due) if due is not None and not pd.isna(due) else "—")
            rows.append(_notice(ticket.assignee_userid, "reprioritised", item, settings,
                                f"ticket-prio:{ticket.ticket_id}:{ticket.tier}:{now.isoformat()}", now))


def _hand_over_self_service(connection: Connection, settings: TicketSettings, now: datetime,
                            outcome: TicketOutcome) -> None:
    """Self-service tickets still open when their time is up go to their queue."""
    due = connection.execute(select(Ticket.ticket_id, Ticket.route).where(
        Ticket.status == "self_service", Ticket.self_service_until <= now)).all()
    for ticket_id, route_name in due:
        route = next((r for r in settings.tickets.routes if r.name == route_name), None)
        hours = route.first_response_hours if route else 24
        connection.execute(update(Ticket).where(Ticket.ticket_id == ticket_id).values(
            status="open", first_response_due=settings.after_working_hours(now, hours)))
        outcome.handed_over += 1


# ------------------------------------------------------------------ 4: agents


def _agents(connection: Connection) -> dict[str, dict[str, Any]]:
    """Every agent: name, manager, queues, away, last assignment, open load."""
    people = connection.execute(text("""
        SELECT u.userid, u.name, u.manager_userid, u.queues, COALESCE(a.away, FALSE) AS away, a.last_assigned_at
        FROM users u LEFT JOIN agent_state a ON a.userid = u.userid WHERE u.role = 'agent'""").columns(
        last_assigned_at=DateTime(timezone=True))).all()
    load = dict(connection.execute(text("""
        SELECT assignee_userid, COUNT(*) FROM tickets WHERE status IN ('open', 'accepted')
          AND assignee_userid IS NOT NULL GROUP BY assignee_userid""")).all())
    return {userid: {"name": name, "manager": manager, "queues": {q for q in (queues or "").split("|") if q},
                     "away": bool(away), "last": _aware(last), "load": int(load.get(userid, 0))}
            for userid, name, manager, queues, away, last in people}


def pick_agent(agents: dict[str, dict[str, Any]], queue: str, on_duty) -> str | None:
    """Least open load first; among equals whoever waited longest since their last ticket."""
    candidates = [userid for userid, agent in agents.items()
                  if queue in agent["queues"] and not agent["away"] and on_duty(userid)]
    if not candidates:
        return None
    never = datetime.min.replace(tzinfo=timezone.utc)
    return min(candidates, key=lambda userid: (agents[userid]["load"], agents[userid]["last"] or never, userid))


_PRIORITY_ORDER = "CASE t.priority WHEN 'P1' THEN 1 WHEN 'P2' THEN 2 WHEN 'P3' THEN 3 ELSE 4 END"


def _assign_waiting(connection: Connection, settings: TicketSettings, now: datetime, outcome: TicketOutcome,
                    rows: list) -> None:
    waiting = _tickets(connection, "t.status = 'open' AND t.assignee_userid IS NULL AND t.queue IS NOT NULL", {})
    if waiting.empty:
        return
    waiting["order"] = waiting["priority"].map({"P1": 1, "P2": 2, "P3": 3}).fillna(4)
    waiting = waiting.sort_values(["order", "first_response_due", "opened_at"], na_position="last")
    agents = _agents(connection)
    duty: dict[str, bool] = {}

    def on_duty(userid: str) -> bool:
        if userid not in duty:
            duty[userid] = settings.on_duty(userid, now)
        return duty[userid]

    for ticket in waiting.itertuples(index=False):
        agent = pick_agent(agents, ticket.queue, on_duty)
        if agent is None:
            continue  # nobody of that queue on duty: it waits, the SLA clock keeps running
        card_id = messages.card_task_id()
        connection.execute(update(Ticket).where(Ticket.ticket_id == ticket.ticket_id).values(assignee_userid=agent))
        _mark_assigned(connection, agent, now)
        agents[agent]["load"] += 1
        agents[agent]["last"] = now
        outcome.assigned += 1
        item = _item(ticket, settings, agent_name=agents[agent]["name"])
        card = messages.ticket_card(item, settings.language_of(agent), card_id)
        rows.append(outbox_row([agent], "template_card", card,
                               origin=f"ticket-card:{ticket.ticket_id}:{agent}:{now.isoformat()}", kind="ticket",
                               now=now))
        if ticket.opened_by and ticket.opened_by != agent:
            rows.append(_notice(ticket.opened_by, "assigned", item, settings,
                                f"ticket-assigned:{ticket.ticket_id}:{agent}:{now.isoformat()}", now))
        elif not ticket.opened_by and ticket.owner_userid and item["priority"] == "P1":
            # A P1 from the CRM or a file: the owner rep hears of it (once) before the customer calls them.
            rows.append(_notice(ticket.owner_userid, "urgent", item, settings,
                                f"ticket-urgent:{ticket.ticket_id}", now))


def _mark_assigned(connection: Connection, agent: str, now: datetime) -> None:
    updated = connection.execute(update(AgentState).where(AgentState.userid == agent)
                                 .values(last_assigned_at=now)).rowcount
    if not updated:
        connection.execute(AgentState.__table__.insert().values(userid=agent, away=False, last_assigned_at=now))


# ------------------------------------------------------------------ 5: the SLA clock


def queue_lead(settings: TicketSettings, queue: str, agents: dict[str, dict[str, Any]],
               admins: list[str]) -> list[str]:
    """Who hears of a breach: the configured lead, else the queue's agents' manager(s), else admins."""
    configured = settings.tickets.queues.get(queue)
    if configured is not None and configured.lead:
        return [configured.lead]
    managers = sorted({agent["manager"] for agent in agents.values() if queue in agent["queues"] and agent["manager"]})
    return managers or admins


def _watch_deadlines(connection: Connection, settings: TicketSettings, now: datetime, outcome: TicketOutcome,
                     rows: list) -> None:
    warn_from = now + timedelta(minutes=settings.tickets.warn_before_minutes)
    due_now = select(Ticket.ticket_id).where(Ticket.status == "open", Ticket.first_response_due.is_not(None))
    warn_ids = connection.execute(due_now.where(Ticket.assignee_userid.is_not(None), Ticket.warned_at.is_(None),
                                                Ticket.first_response_due <= warn_from,
                                                Ticket.first_response_due > now)).scalars().all()
    breach_ids = connection.execute(due_now.where(Ticket.breached_at.is_(None),
                                                  Ticket.first_response_due <= now)).scalars().all()
    if not warn_ids and not breach_ids:
        return
    frame = _tickets(connection, "t.ticket_id IN :ids", {"ids": list({*warn_ids, *breach_ids})},
                     [bindparam("ids", expanding=True)])
    agents = _agents(connection)
    admins = connection.execute(text("SELECT userid FROM users WHERE role = 'admin' ORDER BY userid")).scalars().all()
    for ticket in frame.itertuples(index=False):
        agent_name = agents.get(ticket.assignee_userid, {}).get("name") or "—"
        item = _item(ticket, settings, agent_name=agent_name)
        if ticket.ticket_id in breach_ids:
            connection.execute(update(Ticket).where(Ticket.ticket_id == ticket.ticket_id, Ticket.breached_at.is_(None))
                               .values(breached_at=now, warned_at=now))
            outcome.breached += 1
            for lead in queue_lead(settings, ticket.queue, agents, admins):
                rows.append(_notice(lead, "breach", item, settings, f"ticket-breach:{ticket.ticket_id}:{lead}", now))
            if ticket.tier == "star" and ticket.owner_userid:
                rows.append(_notice(ticket.owner_userid, "star_breach", item, settings,
                                    f"ticket-breach-owner:{ticket.ticket_id}", now))
        elif ticket.ticket_id in warn_ids:
            connection.execute(update(Ticket).where(Ticket.ticket_id == ticket.ticket_id).values(warned_at=now))
            outcome.warned += 1
            rows.append(_notice(ticket.assignee_userid, "warning", item, settings,
                                f"ticket-warning:{ticket.ticket_id}:{ticket.assignee_userid}:"
                                f"{ticket.first_response_due}", now))
