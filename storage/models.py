"""The database schema (SQLAlchemy 2.x). Alembic migrations under storage/migrations
are the source of truth for existing databases; keep the two in step."""

from __future__ import annotations

from datetime import date, datetime

from sqlalchemy import (
    JSON,
    Boolean,
    CheckConstraint,
    Date,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    Numeric,
    String,
    Text,
    false,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

ID = String(64)
# Money in yuan: exact in the database, floats in Python (pandas works in floats anyway).
Money = Numeric(18, 2, asdecimal=False)

USER_ROLES = ("rep", "manager", "agent", "admin")
LANGUAGES = ("zh", "en")
# What people call them, in a users file's `language` column or after 「语言」 in chat.
LANGUAGE_NAMES = {"中文": "zh", "汉语": "zh", "简体中文": "zh", "chinese": "zh",
                  "英文": "en", "英语": "en", "english": "en"}
CUSTOMER_TYPES = ("end_user", "dealer", "integrator")
ORDER_KINDS = ("new", "renewal", "upsell", "service")
ACTIVITY_KINDS = ("login", "visit", "page_view", "download", "event", "call", "meeting", "complaint")
TICKET_SEVERITIES = ("P1", "P2", "P3", "P4")
VALUE_TIERS = ("star", "cash_cow", "question_mark", "dog")

NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def _one_of(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class User(Base):
    __tablename__ = "users"

    userid: Mapped[str] = mapped_column(ID, primary_key=True)
    name: Mapped[str] = mapped_column(String(128))
    role: Mapped[str] = mapped_column(String(16))
    manager_userid: Mapped[str | None] = mapped_column(ID, ForeignKey("users.userid"), index=True)
    team: Mapped[str | None] = mapped_column(String(128))
    queues: Mapped[str | None] = mapped_column(String(512))
    # zh or en: what is pushed to this user is written in it; None: the service's `language`.
    language: Mapped[str | None] = mapped_column(String(2))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))

    __table_args__ = (CheckConstraint(_one_of("role", USER_ROLES), name="role"),)


class Customer(Base):
    __tablename__ = "customers"

    customer_id: Mapped[str] = mapped_column(ID, primary_key=True)
    name: Mapped[str] = mapped_column(String(256), index=True)
    owner_userid: Mapped[str | None] = mapped_column(ID, ForeignKey("users.userid"), index=True)
    industry: Mapped[str | None] = mapped_column(String(64))
    region: Mapped[str | None] = mapped_column(String(64))
    employees: Mapped[int | None] = mapped_column(Integer)
    customer_type: Mapped[str | None] = mapped_column(String(16))
    is_listed: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    is_benchmark: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    is_partner: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    digital_maturity: Mapped[int | None] = mapped_column(Integer)
    expansion_plan: Mapped[str | None] = mapped_column(String(64))
    modules_owned: Mapped[str | None] = mapped_column(String(512))
    created_at: Mapped[date | None] = mapped_column(Date)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    # The current value-matrix tier, kept here so "my Star customers" is one indexed query.
    tier: Mapped[str | None] = mapped_column(String(16))
    tier_since: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # Hysteresis: the tier this customer is heading for and for how many runs so far, as the
    # last run left it (its snapshot keeps the same per run); read by every run.
    pending_tier: Mapped[str | None] = mapped_column(String(16))
    pending_runs: Mapped[int] = mapped_column(Integer, default=0, server_default="0")

    __table_args__ = (
        CheckConstraint(_one_of("customer_type", CUSTOMER_TYPES), name="customer_type"),
        CheckConstraint("digital_maturity BETWEEN 1 AND 5", name="digital_maturity"),
        Index("ix_customers_owner_tier", "owner_userid", "tier"),
    )


class Order(Base):
    __tablename__ = "orders"

    order_id: Mapped[str] = mapped_column(ID, primary_key=True)
    customer_id: Mapped[str] = mapped_column(ID, ForeignKey("customers.customer_id"))
    order_date: Mapped[date] = mapped_column(Date)
    amount: Mapped[float] = mapped_column(Money)
    cost: Mapped[float | None] = mapped_column(Money)
    product_line: Mapped[str | None] = mapped_column(String(64))
    kind: Mapped[str | None] = mapped_column(String(16))

    __table_args__ = (
        CheckConstraint(_one_of("kind", ORDER_KINDS), name="kind"),
        # Covering index: the monthly roll-up of a customer never touches the table.
        Index("ix_orders_rollup", "customer_id", "order_date", "amount", "cost", "kind"),
        # Covering index for the as-of month's days: a run reads them without table lookups,
        # which cost minutes when the table is not in the page cache.
        Index("ix_orders_day", "order_date", "customer_id", "amount", "cost", "kind"),
    )


class Activity(Base):
    __tablename__ = "activities"

    activity_id: Mapped[str] = mapped_column(ID, primary_key=True)
    customer_id: Mapped[str] = mapped_column(ID, ForeignKey("customers.customer_id"))
    ts: Mapped[datetime] = mapped_column(DateTime)
    kind: Mapped[str] = mapped_column(String(16))
    detail: Mapped[str | None] = mapped_column(Text)

    __table_args__ = (
        CheckConstraint(_one_of("kind", ACTIVITY_KINDS), name="kind"),
        Index("ix_activities_rollup", "customer_id", "ts", "kind"),
        Index("ix_activities_ts", "ts"),
        # Covering index for the windows a run reads (the last 30 days, complaints in the
        # last 90, intent rules matching on detail): no table lookups, see ix_orders_day.
        Index("ix_activities_kind_window", "kind", "ts", "customer_id", "detail"),
    )


TICKET_STATUSES = ("self_service", "open", "accepted", "resolved", "closed")


class Ticket(Base):
    """A service ticket. Intake (file, API, chat) fills the first columns; routing
    (notifications.tickets) the rest: queue, priority, agent and the SLA clock."""

    __tablename__ = "tickets"

    ticket_id: Mapped[str] = mapped_column(ID, primary_key=True)
    customer_id: Mapped[str] = mapped_column(ID, ForeignKey("customers.customer_id"), index=True)
    opened_at: Mapped[datetime] = mapped_column(DateTime)
    subject: Mapped[str] = mapped_column(String(512))
    severity: Mapped[str | None] = mapped_column(String(4))
    product_line: Mapped[str | None] = mapped_column(String(64))
    # self_service: knowledge-base answer first (the Dog path) · open: waiting for an agent to
    # accept · accepted · resolved · closed.
    status: Mapped[str] = mapped_column(String(16), default="open", server_default="open")
    source: Mapped[str] = mapped_column(String(16), default="import", server_default="import")
    opened_by: Mapped[str | None] = mapped_column(ID)
    # The customer's tier the route was chosen for; a different current tier re-routes it.
    tier: Mapped[str | None] = mapped_column(String(16))
    # The severity the route was chosen for; a ticket re-sent with another one re-routes too.
    routed_severity: Mapped[str | None] = mapped_column(String(4))
    route: Mapped[str | None] = mapped_column(String(64))
    queue: Mapped[str | None] = mapped_column(String(32))
    priority: Mapped[str | None] = mapped_column(String(4))
    assignee_userid: Mapped[str | None] = mapped_column(ID, ForeignKey("users.userid"))
    routed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    self_service_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    first_response_due: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    accepted_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    resolved_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    resolution: Mapped[str | None] = mapped_column(Text)
    warned_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # The first response was late: recorded once, escalated to the queue lead once.
    breached_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    __table_args__ = (
        CheckConstraint(_one_of("severity", TICKET_SEVERITIES), name="severity"),
        CheckConstraint(_one_of("status", TICKET_STATUSES), name="status"),
        Index("ix_tickets_status_due", "status", "first_response_due"),
        Index("ix_tickets_assignee_status", "assignee_userid", "status"),
    )


class AgentState(Base):
    """A service agent's availability and turn: marked away from chat, and when they last
    got a ticket (round-robin among agents with equal load)."""

    __tablename__ = "agent_state"

    userid: Mapped[str] = mapped_column(ID, ForeignKey("users.userid"), primary_key=True)
    away: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    away_since: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    last_assigned_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class CustomerMonth(Base):
    """Orders rolled up per customer and calendar month, refreshed in the import transaction.

    Scoring reads this instead of the raw orders (see DESIGN §6: 10M raw rows cost 21 s,
    the roll-up under 2 s)."""

    __tablename__ = "customer_months"

    customer_id: Mapped[str] = mapped_column(ID, ForeignKey("customers.customer_id"), primary_key=True)
    month: Mapped[date] = mapped_column(Date, primary_key=True)
    revenue: Mapped[float] = mapped_column(Money)
    cost: Mapped[float] = mapped_column(Money)
    repeat_revenue: Mapped[float] = mapped_column(Money)
    orders: Mapped[int] = mapped_column(Integer)
    # Distinct purchase days (days whose orders net to more than 0: refunds are no purchase),
    # and the revenue of the month's first such day: enough to rebuild lifetimes' frequency
    # and monetary_value without reading raw orders. No dates in a month of refunds only.
    purchase_days: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    first_day_revenue: Mapped[float] = mapped_column(Money, default=0.0, server_default="0")
    first_order_date: Mapped[date | None] = mapped_column(Date)
    last_order_date: Mapped[date | None] = mapped_column(Date)

    # SQLite: clustered by (customer_id, month), so a scan by customer reads the table in
    # order instead of jumping from the index to the table for every row (DESIGN §6).
    __table_args__ = (Index("ix_customer_months_month", "month"), {"sqlite_with_rowid": False})


class ActivityMonth(Base):
    """Activities counted per customer, calendar month and kind; refreshed like CustomerMonth."""

    __tablename__ = "activity_months"

    customer_id: Mapped[str] = mapped_column(ID, ForeignKey("customers.customer_id"), primary_key=True)
    month: Mapped[date] = mapped_column(Date, primary_key=True)
    kind: Mapped[str] = mapped_column(String(16), primary_key=True)
    events: Mapped[int] = mapped_column(Integer)
    last_ts: Mapped[datetime] = mapped_column(DateTime)

    __table_args__ = ({"sqlite_with_rowid": False},)


class CustomerWindow(Base):
    """Each customer's order and activity totals over the whole months before an as-of
    month (storage.windows): what a run reads instead of grouping the monthly roll-ups.

    Kept for the months listed in window_months; the import refreshes the rows of the
    customers it touches in its own transaction, so they are never stale."""

    __tablename__ = "customer_windows"

    month: Mapped[date] = mapped_column(Date, primary_key=True)
    customer_id: Mapped[str] = mapped_column(ID, ForeignKey("customers.customer_id"), primary_key=True)
    revenue_12m: Mapped[float] = mapped_column(Money, default=0.0, server_default="0")
    cost_12m: Mapped[float] = mapped_column(Money, default=0.0, server_default="0")
    repeat_revenue_12m: Mapped[float] = mapped_column(Money, default=0.0, server_default="0")
    orders_12m: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    revenue_12_24m: Mapped[float] = mapped_column(Money, default=0.0, server_default="0")
    revenue_24_36m: Mapped[float] = mapped_column(Money, default=0.0, server_default="0")
    revenue_m1: Mapped[float] = mapped_column(Money, default=0.0, server_default="0")
    revenue_m2: Mapped[float] = mapped_column(Money, default=0.0, server_default="0")
    revenue_m3: Mapped[float] = mapped_column(Money, default=0.0, server_default="0")
    revenue_m4: Mapped[float] = mapped_column(Money, default=0.0, server_default="0")
    lifetime_revenue: Mapped[float] = mapped_column(Money, default=0.0, server_default="0")
    lifetime_orders: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    purchase_days: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    first_day_revenue: Mapped[float] = mapped_column(Money, default=0.0, server_default="0")
    first_order_date: Mapped[date | None] = mapped_column(Date)
    last_order_date: Mapped[date | None] = mapped_column(Date)
    # Non-complaint activities in the six whole months before `month`, and the latest of them.
    baseline_events: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    baseline_last_ts: Mapped[datetime | None] = mapped_column(DateTime)

    __table_args__ = ({"sqlite_with_rowid": False},)


class WindowMonth(Base):
    """A month whose customer_windows rows are complete (every customer with history)."""

    __tablename__ = "window_months"

    month: Mapped[date] = mapped_column(Date, primary_key=True)
    built_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class ScoreRun(Base):
    __tablename__ = "score_runs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    as_of: Mapped[date] = mapped_column(Date)
    status: Mapped[str] = mapped_column(String(16), index=True)
    kind: Mapped[str] = mapped_column(String(16), default="full", server_default="full")
    customers: Mapped[int | None] = mapped_column(Integer)
    tier_changes: Mapped[int | None] = mapped_column(Integer)
    config_hash: Mapped[str] = mapped_column(String(32))
    # Tier counts and revenue share per tier, for the summary and reports.
    summary: Mapped[dict | None] = mapped_column(JSON)
    # Full runs: the population's yardsticks (scoring.reference) for incremental rescoring.
    reference: Mapped[str | None] = mapped_column(Text)
    error: Mapped[str | None] = mapped_column(Text)

    __table_args__ = (
        CheckConstraint(_one_of("status", ("running", "succeeded", "failed")), name="status"),
    )


class ScoreSnapshot(Base):
    """One row per customer per run: every label, score and the reasons behind them."""

    __tablename__ = "score_snapshots"

    run_id: Mapped[int] = mapped_column(ForeignKey("score_runs.id", ondelete="CASCADE"), primary_key=True)
    customer_id: Mapped[str] = mapped_column(ID, primary_key=True)
    tier: Mapped[str] = mapped_column(String(16))
    current_value: Mapped[float] = mapped_column(Float)
    potential_value: Mapped[float] = mapped_column(Float)
    # Kept as a column: lists and reports sum and sort by it.
    revenue_12m: Mapped[float] = mapped_column(Float, default=0.0, server_default="0")
    # Hysteresis state: the tier this customer is heading for and for how many runs so far.
    pending_tier: Mapped[str | None] = mapped_column(String(16))
    pending_runs: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    # The churn risk score, a column for the churn list to filter and sort by.
    churn_score: Mapped[float | None] = mapped_column(Float)
    # Every other model's label as a small code (storage.scores.label_codes), for lists
    # by RFM segment, S/A/B/C, pyramid, lifecycle or intent; NULL in runs before 0010.
    label_codes: Mapped[int | None] = mapped_column(Integer)
    # {"rfm": "champions", "sabc": "S", "pyramid": "gold", ...}: every model's label, and
    # {"revenue": 92.9, ..., "rfm": 545, "churn": 12.5}: component and model scores. Rows
    # written since migration 0007 hold {} here: both are in the row's chunk
    # (storage.scores.StoredSnapshot).
    labels: Mapped[dict] = mapped_column(JSON)
    scores: Mapped[dict] = mapped_column(JSON)
    # Reasons kept as written: {"intent": [...], "rules": [...]} (and, in runs before reason
    # chunks, every model's: {"value_matrix": [{"factor": ..., "value": ...}, ...], ...}).
    reasons: Mapped[dict] = mapped_column(JSON)
    # The score_reason_chunks row holding this customer's labels, scores and the inputs of
    # its other reasons (storage.scores.StoredSnapshot); NULL in runs before chunks.
    reasons_chunk: Mapped[int | None] = mapped_column(Integer)


class ScoreReasonChunk(Base):
    """A chunk of a run's customers, as scoring.deferred.encode_chunk packed them: their
    labels and scores, and the inputs behind their reasons, so that no reasons are put
    into words until someone reads them. A few hundred bytes a customer, not 2 KB of JSON."""

    __tablename__ = "score_reason_chunks"

    run_id: Mapped[int] = mapped_column(ForeignKey("score_runs.id", ondelete="CASCADE"), primary_key=True)
    chunk: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    customers: Mapped[int] = mapped_column(Integer)
    payload: Mapped[bytes] = mapped_column(LargeBinary)


class TierChange(Base):
    __tablename__ = "tier_history"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    customer_id: Mapped[str] = mapped_column(ID, ForeignKey("customers.customer_id"))
    run_id: Mapped[int] = mapped_column(ForeignKey("score_runs.id"))
    model: Mapped[str] = mapped_column(String(32), default="value_matrix", server_default="value_matrix")
    from_tier: Mapped[str | None] = mapped_column(String(16))
    to_tier: Mapped[str] = mapped_column(String(16))
    changed_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    reasons: Mapped[list] = mapped_column(JSON)

    __table_args__ = (Index("ix_tier_history_customer", "customer_id", "changed_at"),)


class CallbackSeen(Base):
    """WeCom retries a callback it got no timely 200 for; the first delivery claims its key
    here, so a retry is never answered twice — across restarts and service processes."""

    __tablename__ = "callback_seen"

    dedupe_key: Mapped[str] = mapped_column(String(160), primary_key=True)
    received_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)


class ChatSession(Base):
    """What a user last listed, so 「更多」/"more" can show the next page."""

    __tablename__ = "chat_sessions"

    userid: Mapped[str] = mapped_column(ID, primary_key=True)
    command: Mapped[str] = mapped_column(String(64))
    arguments: Mapped[dict] = mapped_column(JSON)
    next_offset: Mapped[int | None] = mapped_column(Integer)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


OUTBOX_CHANNELS = ("app", "card_update", "webhook")


class OutboxMessage(Base):
    """Every outgoing message is first a row here (DESIGN §2); the dispatcher sends it."""

    __tablename__ = "outbox"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    # '|'-joined WeCom UserIDs, as message/send takes them.
    touser: Mapped[str] = mapped_column(Text)
    msgtype: Mapped[str] = mapped_column(String(32))
    payload: Mapped[dict] = mapped_column(JSON)
    status: Mapped[str] = mapped_column(String(16), default="pending", server_default="pending")
    attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    # Calls WeCom answered -1 (system busy): retried at most BUSY_RETRIES times (DESIGN §5).
    busy_answers: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    not_before: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    sent_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    last_error: Mapped[str | None] = mapped_column(Text)
    # Why the message exists (e.g. "reply:<msgid>"), unique so a retry never enqueues twice.
    origin: Mapped[str | None] = mapped_column(String(160), unique=True)
    # What it is (reply, tier_change, task, digest, churn_alert, card_update, …): metrics and reports.
    kind: Mapped[str] = mapped_column(String(32), default="reply", server_default="reply")
    # app: message/send · card_update: update_template_card · webhook: the group robot.
    channel: Mapped[str] = mapped_column(String(16), default="app", server_default="app")
    # Rows due together under one batch key go out as one summary (notifications.batches);
    # batch_every > 0: at most one such message per that many seconds.
    batch_key: Mapped[str | None] = mapped_column(String(160))
    batch_every: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    # What the summary needs to mention this row (customer, tiers, reason…), rendered at send time.
    batch_item: Mapped[dict | None] = mapped_column(JSON)
    claimed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # From WeCom's answer: button cards can be updated later with their response_code.
    msgid: Mapped[str | None] = mapped_column(String(128))
    response_code: Mapped[str | None] = mapped_column(String(256))

    __table_args__ = (
        CheckConstraint(_one_of("status", ("pending", "sending", "sent", "failed")), name="status"),
        CheckConstraint(_one_of("channel", OUTBOX_CHANNELS), name="channel"),
        Index("ix_outbox_due", "status", "not_before"),
        Index("ix_outbox_sent", "sent_at"),
    )


class OutboxBatch(Base):
    """When a batch key last went out, so alerts batched "at most one per hour" stay so
    across restarts."""

    __tablename__ = "outbox_batches"

    batch_key: Mapped[str] = mapped_column(String(160), primary_key=True)
    last_sent_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


TASK_STATUSES = ("open", "done", "cancelled")


class FollowUpTask(Base):
    """A follow-up task from a playbook rule (config `playbook.tasks`)."""

    __tablename__ = "tasks"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    customer_id: Mapped[str] = mapped_column(ID, ForeignKey("customers.customer_id"))
    rule: Mapped[str] = mapped_column(String(64))
    owner_userid: Mapped[str] = mapped_column(ID, ForeignKey("users.userid"))
    # The action in words, rendered from the rule when the task was made (zh and en).
    title_zh: Mapped[str] = mapped_column(String(256))
    title_en: Mapped[str] = mapped_column(String(256))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    run_id: Mapped[int | None] = mapped_column(ForeignKey("score_runs.id"))
    due_date: Mapped[date] = mapped_column(Date)
    status: Mapped[str] = mapped_column(String(16), default="open", server_default="open")
    done_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # What the rep typed after 「完成 N」: the outcome, for whoever opens the customer next.
    done_note: Mapped[str | None] = mapped_column(String(500))
    snoozed_until: Mapped[date | None] = mapped_column(Date)
    # Inputs of the priority formula (notifications.tasks.priority) as of the task's run.
    tier: Mapped[str | None] = mapped_column(String(16))
    churn_score: Mapped[float] = mapped_column(Float, default=0.0, server_default="0")
    value_at_stake: Mapped[float] = mapped_column(Float, default=0.0, server_default="0")
    reasons: Mapped[list] = mapped_column(JSON)
    # The card that carries the 完成 / 延后 buttons (its outbox row has the response_code).
    card_task_id: Mapped[str | None] = mapped_column(String(128), unique=True)
    overdue_notified: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())

    __table_args__ = (
        CheckConstraint(_one_of("status", TASK_STATUSES), name="status"),
        # Same rule and customer → one open task, whatever runs twice.
        Index("uq_tasks_open_rule_customer", "rule", "customer_id", unique=True,
              sqlite_where=text("status = 'open'"), postgresql_where=text("status = 'open'")),
        Index("ix_tasks_owner_status", "owner_userid", "status", "due_date"),
    )


class ChurnAlertState(Base):
    """Customers a manager has been alerted about while their churn risk stays high; a
    customer drops out when the risk falls, so a later rise alerts again."""

    __tablename__ = "churn_alert_state"

    customer_id: Mapped[str] = mapped_column(ID, ForeignKey("customers.customer_id"), primary_key=True)
    alerted_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    churn_score: Mapped[float] = mapped_column(Float)


class RescorePending(Base):
    """Customers with new data committed (an import, the REST API) whose incremental
    rescore has not run yet. Written with the data, removed with the rescore: a process
    stopped in between leaves them here, and the service rescores them
    (bot.rescore.rescore_pending); a full run takes them all."""

    __tablename__ = "rescore_pending"

    customer_id: Mapped[str] = mapped_column(ID, ForeignKey("customers.customer_id"), primary_key=True)
    queued_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class JobState(Base):
    """One row per scheduled job: who runs it now (a lease, so several service processes
    sharing one database run each job in one of them only) and which slot ran last."""

    __tablename__ = "job_state"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    holder: Mapped[str | None] = mapped_column(String(128))
    lease_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    last_slot: Mapped[str | None] = mapped_column(String(64))
    last_started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    last_finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    last_error: Mapped[str | None] = mapped_column(Text)
    # When a service process first had the job: a slot before it was nobody's to miss.
    # None: before this was recorded (the job is older than any slot it could catch up).
    registered_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
