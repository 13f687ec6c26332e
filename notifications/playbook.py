"""The playbook: what a scoring run means for people.

Inside the run's own transaction (DESIGN §2: the message row and the event that caused
it commit together, or neither does):
- every tier change becomes a card to the owner rep with the reasons and the new tier's
  action (config `playbook.tier_actions`);
- task rules (config `playbook.tasks`) become follow-up tasks — one open task per rule
  and customer — and a task made with a tier change rides on that change's card;
- customers whose churn risk reaches the threshold are reported to the owner's manager.

Rows for one rep (or manager) share a batch key: the dispatcher turns many of them due
at once into one summary (notifications.dispatcher), and holds them through quiet hours.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any, Callable
from zoneinfo import ZoneInfo

import numpy as np
import pandas as pd
from sqlalchemy import Connection, bindparam, select, text

from notifications import messages
from notifications.outbox import outbox_row, queue_rows, quiet_until
from notifications.settings import PlaybookConfig, PushesConfig, TaskRule, parse_hh_mm
from notifications.workdays import WorkCalendar
from scoring.deferred import column_values
from scoring.pipeline import RULE_FIELDS, reasons_column, rule_view
from scoring.rules import BusinessRule, RuleAction, RuleError, RulesParams, apply_rules, compile_rules
from storage.models import ChurnAlertState, FollowUpTask
from storage.sql import insert_rows

# What a task rule may test, beyond the business-rule fields: the labels of every model,
# the tier before this run, and a few signals the articles name.
TASK_FIELDS: dict[str, str] = {
    **RULE_FIELDS,
    "tier": "text", "previous_tier": "text", "rfm_segment": "text", "sabc": "text", "pyramid": "text",
    "lifecycle": "text", "churn_label": "text", "intent": "text",
    "activity_decline": "number",  # 1 − last 30 days' activity / the customer's own 30-day baseline
}

_LABEL_COLUMNS = {"rfm_segment": "rfm_label", "sabc": "sabc_label", "pyramid": "pyramid_label",
                  "lifecycle": "lifecycle_label", "churn_label": "churn_label", "intent": "intent_label"}


def _as_business_rules(rules: list[TaskRule]) -> RulesParams:
    return RulesParams(rules=[BusinessRule(name=rule.name, when=rule.when, then=RuleAction(), enabled=rule.enabled)
                              for rule in rules])


def check_task_rules(rules: list[TaskRule]) -> list[str]:
    """Problems of the task rules, each naming its rule; [] when all compile."""
    try:
        compile_rules(_as_business_rules(rules), TASK_FIELDS, {}, actions_required=False)
    except RuleError as error:
        return [problem.replace("rules[", "tasks[", 1) for problem in error.problems]
    return []


def task_view(features: pd.DataFrame, scored: pd.DataFrame, previous_tier: pd.Series) -> pd.DataFrame:
    """One row per scored customer with every TASK_FIELDS column."""
    view = rule_view(features.reindex(scored.index), scored)
    view["tier"] = scored["tier"]
    view["previous_tier"] = previous_tier.reindex(scored.index).fillna("").astype(str)
    for field, column in _LABEL_COLUMNS.items():
        view[field] = scored[column] if column in scored else ""
    baseline = view["act_baseline_30d"].to_numpy(dtype=float)
    recent = view["act_30d"].to_numpy(dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        view["activity_decline"] = np.where(baseline > 0, np.clip(1 - recent / baseline, 0, 1), 0.0)
    return view


def matching_customers(rules: list[TaskRule], view: pd.DataFrame) -> dict[str, list[str]]:
    """rule name → customers its condition holds for (enabled rules only)."""
    enabled = [rule for rule in rules if rule.enabled]
    if not enabled or view.empty:
        return {}
    compiled = compile_rules(_as_business_rules(enabled), TASK_FIELDS, {}, actions_required=False)
    outcome = apply_rules(compiled, view, pd.DataFrame(index=view.index))
    return {rule.name: list(view.index[outcome.matched[rule.name].to_numpy()]) for rule in enabled}


# (now, recipient) → when quiet hours let a push to them out, or None when they do not hold it.
Hold = Callable[[datetime, "str | None"], "datetime | None"]


@dataclass(frozen=True)
class PlaybookSettings:
    playbook: PlaybookConfig
    pushes: PushesConfig
    language: str
    tz: ZoneInfo
    calendar: WorkCalendar
    group_robot: bool = False  # a WECOM_WEBHOOK_KEY is configured

    @classmethod
    def from_config(cls, config) -> "PlaybookSettings":
        return cls(config.playbook, config.pushes, config.language, config.tz, WorkCalendar(config.calendar),
                   bool(config.wecom.webhook_key))

    def hold_until(self, now: datetime, who: str | None = None) -> datetime | None:
        """When a push to `who` may go out, if quiet hours hold it now."""
        quiet = self.pushes.quiet_hours
        return quiet_until(now, parse_hh_mm(quiet.start), parse_hh_mm(quiet.end), self.tz, who)


@dataclass(frozen=True)
class PlaybookOutcome:
    messages: int
    tasks: int
    churn_alerts: int


def _top(reasons: Any, count: int = 3) -> list:
    return list(reasons or [])[:count] if isinstance(reasons, (list, tuple)) else []


# Past this many scored customers the churn alert state is read whole.
WHOLE_ALERT_STATE_FROM = 10_000


class _TopReasons:
    """Customer → the top reasons of a column of `scored`, whether the column is in the
    frame or deferred (scoring.deferred: a full run builds reasons only where needed)."""

    def __init__(self, scored: pd.DataFrame, deferred: dict | None) -> None:
        self.scored = scored
        self.deferred = deferred or {}

    def has(self, column: str) -> bool:
        return column in self.scored or column in self.deferred

    def of(self, column: str, customer_ids) -> dict[str, list]:
        """{customer_id: _top(reasons)} for those of `customer_ids` that were scored."""
        return {customer_id: _top(reasons) for customer_id, reasons
                in column_values(self.scored, self.deferred, column, customer_ids).items()}


def apply_playbook(connection: Connection, settings: PlaybookSettings, *, history_run_id: int,
                   features: pd.DataFrame, scored: pd.DataFrame, previous_tier: pd.Series,
                   now: datetime, deferred: dict | None = None) -> PlaybookOutcome:
    """Tier-change cards, tasks and churn alerts for one run, in the caller's transaction.
    `history_run_id` is the run whose tier_history rows are the changes to announce.
    `deferred`: reasons columns `scored` lacks (scoring.deferred), built for the customers
    mentioned."""
    return start_playbook(connection, settings, history_run_id=history_run_id, features=features, scored=scored,
                          previous_tier=previous_tier, now=now, deferred=deferred)(connection)


# Writes a run's playbook rows once its tier changes are recorded (start_playbook).
WritePlaybook = Callable[[Connection], PlaybookOutcome]


def start_playbook(connection: Connection, settings: PlaybookSettings, *, history_run_id: int,
                   features: pd.DataFrame, scored: pd.DataFrame, previous_tier: pd.Series, now: datetime,
                   deferred: dict | None = None, background: bool = False) -> WritePlaybook:
    """apply_playbook in two steps, for a run that records its tier changes in between.

    Now: read what the playbook needs besides the tier changes (people, the tasks that may
    block new ones, the churn alert state: the run writes none of them before the playbook
    does), then work out the new tasks and churn alerts. The function returned, called in
    the same transaction once the tier changes are recorded, writes those with the
    tier-change cards. `background`: work them out in a thread meanwhile: recording a first
    run's tier changes is 0.3 s of SQL at 100k customers, during which the driver lets other
    Python threads run. (storage.scores starts it before the tier changes only on SQLite,
    where the run holds the write lock all along.)"""
    today = now.astimezone(settings.tz).date()
    hold = _per_recipient(settings.hold_until)  # (now, userid) → release time or None
    # What the messages mention, beside the models' output.
    scored = scored.assign(**{column: features[column].reindex(scored.index)
                              for column in ("name", "owner_userid", "revenue_12m") if column in features})
    reasons = _TopReasons(scored, deferred)
    # The index's hash table is built on first use: here, not by two threads at once (the
    # run looks customers up while this one works).
    _ = scored.index.is_unique
    people = _people(connection)
    blocking = _blocking_tasks(connection, settings, now)
    alerted = _alerted_customers(connection, settings, scored)

    def plan() -> tuple[list[dict[str, Any]], _ChurnAlerts]:
        return (_new_tasks(settings, history_run_id, features, scored, previous_tier, now, today, people, reasons,
                           blocking),
                _churn_alerts(settings, scored, people, alerted, history_run_id, now, hold, reasons))

    if background:
        pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="playbook")
        planned = pool.submit(plan)
        pool.shutdown(wait=False)  # the thread ends with the plan
        result = planned.result
    else:
        done = plan()
        result = lambda: done  # noqa: E731

    def write(connection: Connection) -> PlaybookOutcome:
        new_tasks, alerts = result()
        made = _insert_tasks(connection, history_run_id, new_tasks)
        rows: list[dict[str, Any]] = []
        announced = _tier_change_rows(connection, settings, history_run_id, scored, made, now, hold, rows, reasons)
        unannounced = [task for task in made if task["id"] not in announced]
        names = column_values(scored, None, "name", [task["customer_id"] for task in unannounced])
        model_of = {rule.name: rule.reasons for rule in settings.playbook.tasks}
        for task in unannounced:
            task["card_task_id"] = messages.card_task_id(task["id"])
            rows.append(_task_row(task, str(names.get(task["customer_id"], task["customer_id"])), now, hold,
                                  model_of.get(task["rule"], "value_matrix")))
        carded = [{"task": task["id"], "card": task["card_task_id"]} for task in made if task.get("card_task_id")]
        if carded:
            tasks = FollowUpTask.__table__
            connection.execute(tasks.update().where(tasks.c.id == bindparam("task"))
                               .values(card_task_id=bindparam("card")), carded)
        _record_churn_alerts(connection, alerts)
        rows.extend(alerts.rows)
        queue_rows(connection, rows)
        return PlaybookOutcome(len(rows), len(made), len(alerts.told))

    return write


def _per_recipient(hold: Hold) -> Hold:
    """`hold`, worked out once per (now, recipient): a first run queues thousands of pushes
    to a few hundred people."""
    known: dict[tuple[datetime, str | None], datetime | None] = {}

    def cached(now: datetime, who: str | None = None) -> datetime | None:
        key = (now, who)
        if key not in known:
            known[key] = hold(now, who)
        return known[key]

    return cached


def _people(connection: Connection) -> dict[str, tuple[str, str | None]]:
    """userid → (name, manager_userid)."""
    rows = connection.execute(text("SELECT userid, name, manager_userid FROM users"))
    return {row[0]: (row[1], row[2]) for row in rows}


def _blocking_tasks(connection: Connection, settings: PlaybookSettings, now: datetime) -> list:
    """(rule, customer_id, status, created_at) of the tasks that may keep a rule from making
    a new one: open, or made within the longest cooldown."""
    rules = [rule for rule in settings.playbook.tasks if rule.enabled]
    if not rules:
        return []
    longest_cooldown = max(rule.cooldown_days for rule in rules)
    tasks = FollowUpTask.__table__
    return connection.execute(
        select(tasks.c.rule, tasks.c.customer_id, tasks.c.status, tasks.c.created_at)
        .where(tasks.c.rule.in_([rule.name for rule in rules]),
               (tasks.c.status == "open") | (tasks.c.created_at >= now - timedelta(days=longest_cooldown)))).all()


def _new_tasks(settings: PlaybookSettings, run_id: int, features: pd.DataFrame, scored: pd.DataFrame,
               previous_tier: pd.Series, now: datetime, today: date, people: dict[str, tuple[str, str | None]],
               reasons: _TopReasons, blocking: list) -> list[dict[str, Any]]:
    """The rows of the tasks the rules make this run: one open task per rule and customer,
    none within a rule's cooldown."""
    rules = [rule for rule in settings.playbook.tasks if rule.enabled]
    if not rules or scored.empty:
        return []
    matches = matching_customers(rules, task_view(features, scored, previous_tier))
    wanted = {name: ids for name, ids in matches.items() if ids}
    if not wanted:
        return []
    open_pairs = {(row.rule, row.customer_id) for row in blocking if row.status == "open"}
    last_made: dict[tuple[str, str], datetime] = {}
    for row in blocking:
        created = row.created_at if row.created_at.tzinfo else row.created_at.replace(tzinfo=now.tzinfo)
        key = (row.rule, row.customer_id)
        last_made[key] = max(last_made.get(key, created), created)

    candidates = list(dict.fromkeys(customer_id for ids in wanted.values() for customer_id in ids))
    owners, revenue, churn, tiers = (column_values(scored, None, column, candidates)
                                     for column in ("owner_userid", "revenue_12m", "churn_score", "tier"))
    new_rows = []
    for rule in rules:
        due_date = settings.calendar.add_workdays(today, rule.due_working_days)
        for customer_id in wanted.get(rule.name, []):
            key = (rule.name, customer_id)
            if key in open_pairs:
                continue
            if key in last_made and last_made[key] > now - timedelta(days=rule.cooldown_days):
                continue
            owner = owners.get(customer_id)
            if not isinstance(owner, str) or not owner:
                continue
            assignee = owner
            if rule.assign_to == "manager":
                manager = people.get(owner, ("", None))[1]
                assignee = manager or owner
            score = churn.get(customer_id)
            new_rows.append({
                "customer_id": customer_id, "rule": rule.name, "owner_userid": assignee,
                "title_zh": rule.action.zh, "title_en": rule.action.en, "created_at": now, "run_id": run_id,
                "due_date": due_date, "status": "open",
                "tier": tiers[customer_id],
                "churn_score": float(score) if score is not None and not pd.isna(score) else 0.0,
                "value_at_stake": float(revenue.get(customer_id, 0.0) or 0.0),
                "reasons": [],
            })
            open_pairs.add(key)
    model_of = {rule.name: rule.reasons for rule in rules}
    for model in dict.fromkeys(model_of.values()):
        column = reasons_column(model)
        if not reasons.has(column):  # a model switched off: its reasons are not there
            continue
        rows = [row for row in new_rows if model_of[row["rule"]] == model]
        tops = reasons.of(column, [row["customer_id"] for row in rows])
        for row in rows:
            row["reasons"] = tops.get(row["customer_id"], [])
    return new_rows


def _insert_tasks(connection: Connection, run_id: int, new_rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Write the run's new tasks; they come back with their ids, in id order."""
    if not new_rows:
        return []
    tasks = FollowUpTask.__table__
    insert_rows(connection, tasks, new_rows)
    # The playbook runs once per run, so the run's tasks are the ones just made, one per
    # rule and customer. Only their ids are read back: the rows themselves are at hand.
    ids = {(rule, customer_id): task_id for task_id, rule, customer_id in connection.execute(
        select(tasks.c.id, tasks.c.rule, tasks.c.customer_id).where(tasks.c.run_id == run_id))}
    made = [{**row, "id": ids[(row["rule"], row["customer_id"])], "card_task_id": None} for row in new_rows]
    return sorted(made, key=lambda row: row["id"])


def _task_item(task: dict[str, Any]) -> dict[str, Any]:
    return {"id": task["id"], "title_zh": task["title_zh"], "title_en": task["title_en"],
            "due_date": task["due_date"].isoformat()}


def _tier_change_rows(connection: Connection, settings: PlaybookSettings, run_id: int, scored: pd.DataFrame,
                      made: list[dict[str, Any]], now: datetime, hold: Hold,
                      rows: list[dict[str, Any]], reasons: _TopReasons) -> set[int]:
    """A card per tier change of this run to the owner rep; returns the tasks it carries."""
    changes = connection.execute(text("""
        SELECT h.id, h.customer_id, h.from_tier, h.to_tier, c.name, c.owner_userid
        FROM tier_history h JOIN customers c ON c.customer_id = h.customer_id
        WHERE h.run_id = :run AND h.model = 'value_matrix' AND h.from_tier IS NOT NULL
          AND c.owner_userid IS NOT NULL ORDER BY h.id"""), {"run": run_id}).all()
    first_task: dict[tuple[str, str], dict[str, Any]] = {}
    for task in made:
        first_task.setdefault((task["customer_id"], task["owner_userid"]), task)
    announced = set()
    mentioned = [change.customer_id for change in changes]
    tops = reasons.of("reasons", mentioned)
    revenue = column_values(scored, None, "revenue_12m", mentioned)
    for change in changes:
        task = first_task.get((change.customer_id, change.owner_userid))
        item = {"type": "tier_change", "customer_id": change.customer_id, "name": change.name,
                "from_tier": change.from_tier, "to_tier": change.to_tier,
                "reasons": tops.get(change.customer_id, []),
                "revenue_12m": float(revenue.get(change.customer_id, 0.0)),
                "task": _task_item(task) if task else None}
        card_id = messages.card_task_id(task["id"] if task else None)
        if task:
            task["card_task_id"] = card_id
            announced.add(task["id"])
        item["card_task_id"] = card_id
        # Both languages: the card is made when sent, in its recipient's (notifications.messages.message_for).
        action = settings.playbook.tier_actions[change.to_tier]
        item["action"] = {"zh": action.zh, "en": action.en}
        rows.append(outbox_row([change.owner_userid], "template_card", None, origin=f"tier:{change.id}",
                               kind="tier_change", not_before=hold(now, change.owner_userid),
                               batch_key=f"rep:{change.owner_userid}",
                               batch_item=item, now=now))
    return announced


def _task_row(task: dict[str, Any], name: str, now: datetime, hold: Hold, reasons_model: str) -> dict[str, Any]:
    item = {"type": "task", "customer_id": task["customer_id"], "name": name,
            "tier": task["tier"], "reasons": task["reasons"], "reasons_model": reasons_model,
            "task": _task_item(task),
            "card_task_id": task["card_task_id"]}
    return outbox_row([task["owner_userid"]], "template_card", None, origin=f"task:{task['id']}", kind="task",
                      not_before=hold(now, task["owner_userid"]), batch_key=f"rep:{task['owner_userid']}",
                      batch_item=item, now=now)


def _alerted_customers(connection: Connection, settings: PlaybookSettings, scored: pd.DataFrame) -> set[str]:
    """Those of the scored customers whose churn risk was reported and has not fallen back since."""
    alerts = settings.playbook.churn_alerts
    if not alerts.enabled or "churn_score" not in scored or scored.empty:
        return set()
    state = ChurnAlertState.__table__
    if len(scored) > WHOLE_ALERT_STATE_FROM:
        # A full run: the alert state (a row per alerted customer) read whole, rather than
        # every customer id bound into IN lists 10,000 at a time.
        index = scored.index
        return {cid for cid in connection.execute(select(state.c.customer_id)).scalars() if cid in index}
    return set(connection.execute(select(state.c.customer_id).where(state.c.customer_id.in_(list(scored.index))))
               .scalars())


@dataclass(frozen=True)
class _ChurnAlerts:
    rearmed: list[str]             # alert state to drop: the risk fell back by the margin
    rows: list[dict[str, Any]]     # outbox rows
    told: list[dict[str, Any]]     # alert state to add


# A churn alert names at most this many customers (WeCom's 2048 bytes hold about that
# many): a run that puts more of one manager's customers at risk at once (the first run
# after a bulk import) queues these by name and one row counting the rest.
ALERT_NAMED = 20


def _churn_alerts(settings: PlaybookSettings, scored: pd.DataFrame, people: dict[str, tuple[str, str | None]],
                  alerted: set[str], run_id: int, now: datetime, hold: Hold, reasons: _TopReasons) -> _ChurnAlerts:
    """Alert the owner's manager once when a customer's churn risk reaches the threshold
    (with at least `min_revenue_12m` at stake); re-arm when it falls back by the margin.
    Per recipient and run, the ALERT_NAMED riskiest are named and the rest counted."""
    alerts = settings.playbook.churn_alerts
    if not alerts.enabled or "churn_score" not in scored or scored.empty:
        return _ChurnAlerts([], [], [])
    score = scored["churn_score"]
    alerted_scores = score.reindex(list(alerted))
    rearmed = list(alerted_scores.index[alerted_scores < alerts.threshold - alerts.rearm_margin])
    at_stake = (scored["revenue_12m"] >= alerts.min_revenue_12m) if "revenue_12m" in scored else True
    rising = score[(score >= alerts.threshold) & at_stake & ~score.index.isin(list(alerted))]
    if rising.empty:
        return _ChurnAlerts(rearmed, [], [])
    every = alerts.every_minutes * 60
    # Names and owners as the run read them (start_playbook put them on `scored`), not read
    # again with every rising customer bound into one IN list.
    mentioned = list(rising.index)
    # Plain floats: a first run looks up hundreds of thousands, and a Series lookup each costs.
    rising_score = {customer_id: float(value) for customer_id, value in rising.items()}
    revenue, names, owners = (column_values(scored, None, column, mentioned)
                              for column in ("revenue_12m", "name", "owner_userid"))
    # Riskiest first, then the most at stake: the order the message lists them in.
    mentioned.sort(key=lambda customer_id: (-rising_score[customer_id], -float(revenue.get(customer_id) or 0.0),
                                            customer_id))
    recipients: dict[str, list[str]] = {}  # batch key → its customers
    managers: dict[str, str] = {}
    for customer_id in mentioned:
        owner = owners.get(customer_id) if isinstance(owners.get(customer_id), str) else None
        manager = people.get(owner, (owner or "—", None))[1]
        if manager:
            managers[f"churn:{manager}"] = manager
            recipients.setdefault(f"churn:{manager}", []).append(customer_id)
        if alerts.group_robot and settings.group_robot:
            recipients.setdefault("churn:group", []).append(customer_id)
    named = sorted({customer_id for listed in recipients.values() for customer_id in listed[:ALERT_NAMED]})
    tops = reasons.of("churn_reasons", named)
    rows: list[dict[str, Any]] = []

    def queue(batch_key: str, origin: str, item: dict[str, Any]) -> None:
        manager = managers.get(batch_key)
        if manager:
            rows.append(outbox_row([manager], "markdown", None, origin=f"churn:{origin}:{run_id}", kind="churn_alert",
                                   not_before=hold(now, manager), batch_key=batch_key, batch_every=every,
                                   batch_item=item, now=now))
        else:
            rows.append(outbox_row([], "markdown", None, origin=f"churn-group:{origin}:{run_id}", kind="churn_alert",
                                   channel="webhook", not_before=hold(now, "group robot"), batch_key=batch_key,
                                   batch_every=every, batch_item=item, now=now))

    for batch_key, listed in recipients.items():
        for customer_id in listed[:ALERT_NAMED]:
            name = names.get(customer_id)
            owner = owners.get(customer_id) if isinstance(owners.get(customer_id), str) else None
            queue(batch_key, customer_id, {
                "customer_id": customer_id, "name": name if isinstance(name, str) else customer_id,
                "owner_name": people.get(owner, (owner or "—", None))[0],
                "churn_score": rising_score[customer_id], "reasons": tops.get(customer_id, []),
                "revenue_12m": float(revenue.get(customer_id, 0.0))})
        if len(listed) > ALERT_NAMED:
            queue(batch_key, f"more:{batch_key}", {"more": len(listed) - ALERT_NAMED})
    # Only customers someone was told about (by name or in the count) count as alerted: a
    # rep without a manager today still gets their manager told once one is set.
    told_ids = sorted({customer_id for listed in recipients.values() for customer_id in listed})
    told = [{"customer_id": customer_id, "alerted_at": now, "churn_score": rising_score[customer_id]}
            for customer_id in told_ids]
    return _ChurnAlerts(rearmed, rows, told)


def _record_churn_alerts(connection: Connection, alerts: _ChurnAlerts) -> None:
    state = ChurnAlertState.__table__
    for start in range(0, len(alerts.rearmed), 10_000):
        connection.execute(state.delete().where(state.c.customer_id.in_(alerts.rearmed[start:start + 10_000])))
    if alerts.told:
        insert_rows(connection, state, alerts.told)
