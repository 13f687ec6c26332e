"""What config.yaml says about pushes: the scheduler's times, WeCom's sending limits,
quiet hours, the playbook (tier actions and follow-up task rules) and churn alerts.

Validated when the config loads, like everything else: a task rule's condition is
compiled here, so a misspelt field is refused at start-up with the rule named.
"""

from __future__ import annotations

import re
from datetime import time
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from scoring.pipeline import MODELS
from scoring.value_matrix import TIERS

_HH_MM = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)$")


def parse_hh_mm(value: str) -> time:
    match = _HH_MM.match(value or "")
    if not match:
        raise ValueError(f'must be a time of day as "HH:MM" (e.g. "21:00"), not {value!r}')
    return time(int(match.group(1)), int(match.group(2)))


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


_WEEKDAYS = ("sun", "mon", "tue", "wed", "thu", "fri", "sat", "sun")


def cron_trigger(expression: str, timezone: str | None = None):
    """APScheduler's trigger for a standard crontab line. Standard cron counts weekdays
    from 0 = Sunday; APScheduler's from_crontab from 0 = Monday, so digits in the weekday
    field become names first ("1-5" → "mon-fri")."""
    from apscheduler.triggers.cron import CronTrigger

    fields = expression.split()
    if len(fields) == 5:
        fields[4] = re.sub(r"\d+", lambda m: _WEEKDAYS[int(m.group())] if int(m.group()) <= 7 else m.group(),
                           fields[4])
    return CronTrigger.from_crontab(" ".join(fields), timezone=timezone)


def _check_cron(expression: str) -> str:
    try:
        cron_trigger(expression)
    except ValueError as error:
        raise ValueError(f'must be a cron expression "minute hour day month weekday" (e.g. "0 2 * * *"): '
                         f"{error}") from None
    return expression


class SchedulerConfig(_Section):
    # The nightly full rescore: the source of truth (imports and the API rescore what they touch at once).
    full_rescore: str = "0 2 * * *"
    # The morning digest; it goes out only on working days (see `calendar`).
    digest: str = "0 9 * * *"
    # The week's tier report (分层报表, 7 days) to every manager and admin: the job runs at
    # these times and sends on the first working day of each week it runs on; "off": none.
    tier_report: str = "0 9 * * *"
    # Overdue tasks (and, later, ticket SLAs) are checked this often.
    watch_every_minutes: int = Field(10, ge=1, le=24 * 60)
    # The outbox is also woken at once whenever something is queued; this is the fallback.
    dispatch_every_seconds: float = Field(2.0, gt=0, le=600)

    @field_validator("full_rescore", "digest")
    @classmethod
    def _cron(cls, value: str) -> str:
        return _check_cron(value)

    @field_validator("tier_report", mode="before")
    @classmethod
    def _cron_or_off(cls, value):
        if value is False:  # YAML reads a bare off (or no, false) as false
            return "off"
        return value if isinstance(value, str) and value.strip().lower() == "off" else value

    @field_validator("tier_report")
    @classmethod
    def _cron_unless_off(cls, value: str) -> str:
        return value if value.strip().lower() == "off" else _check_cron(value)


class QuietHours(_Section):
    start: str = "21:00"
    end: str = "08:00"

    @field_validator("start", "end")
    @classmethod
    def _clock(cls, value: str) -> str:
        parse_hh_mm(value)
        return value


class PushesConfig(_Section):
    # Pushes (tier changes, task cards, alerts) wait through these hours; answers to a
    # user's own command never do. start == end turns quiet hours off.
    quiet_hours: QuietHours = QuietHours()
    # WeCom drops messages beyond these per member and app silently, with no error.
    member_per_minute: int = Field(30, ge=1, le=30)
    member_per_hour: int = Field(1000, ge=1, le=1000)
    # WeCom's per-app call frequency cap (message/send calls per minute, all members).
    app_calls_per_minute: int = Field(1000, ge=1)
    # The group robot (WECOM_WEBHOOK_KEY) accepts 20 messages a minute.
    webhook_per_minute: int = Field(20, ge=1, le=20)
    # This many tier changes (or more) for one rep at once go out as one summary.
    summary_from: int = Field(3, ge=2)
    # WeCom's duplicate check: a resend of the same content within this window is dropped
    # by WeCom, so a crash between sending and recording never reaches anyone twice. A
    # real repeat within it is dropped too, hence WeCom's own default rather than 4 h.
    duplicate_check_seconds: int = Field(1800, ge=1, le=4 * 3600)
    # Tasks listed in the morning digest.
    digest_tasks: int = Field(8, ge=1, le=30)


class Words(_Section):
    zh: str
    en: str


DEFAULT_TIER_ACTIONS = {
    "star": Words(zh="组建战略客户小组，安排高层拜访，探索联合创新与标杆案例",
                  en="Form a strategic account team, arrange an executive visit, explore co-innovation and a "
                     "lighthouse case"),
    "cash_cow": Words(zh="高效维护：标准服务与自助服务，推动续约和增购，关注健康度预防流失",
                      en="Keep them satisfied efficiently: standard and self-service, renewals and upsells, watch "
                         "health for early churn signs"),
    "question_mark": Words(zh="重点培育：弄清价值低的原因，投入试点/PoC，设定里程碑",
                           en="Incubate: find out why value is low, offer a pilot or PoC, set milestones"),
    "dog": Words(zh="低成本自动化触达（邮件、知识库、机器人），控制投入，留意突发潜力",
                 en="Low-cost automated touch (email, knowledge base, chatbot), cap the effort, watch for sudden "
                    "potential"),
}


class TaskRule(_Section):
    name: str = Field(min_length=1, max_length=64)
    # A condition over the customer after a run, in the business-rule language (see
    # scoring.rules), with the extra fields listed in notifications.playbook.TASK_FIELDS.
    when: str
    action: Words
    due_working_days: int = Field(ge=0, le=250)
    # owner: the customer's rep; manager: that rep's manager (e.g. the sales director).
    assign_to: str = "owner"
    # No new task from this rule for the customer until this many days after the last one.
    cooldown_days: int = Field(30, ge=0)
    enabled: bool = True
    # The model whose top reasons the task's card gives: the one the rule is about.
    reasons: Literal[MODELS] = "value_matrix"

    @field_validator("assign_to")
    @classmethod
    def _assignee(cls, value: str) -> str:
        if value not in ("owner", "manager"):
            raise ValueError('must be "owner" or "manager"')
        return value


DEFAULT_TASK_RULES = [
    TaskRule(name="new_star_visit", when='tier == "star" and previous_tier != "star" and previous_tier != ""',
             action=Words(zh="安排高层拜访", en="Arrange an executive visit"), due_working_days=7),
    TaskRule(name="question_mark_rising", when='tier == "question_mark" and revenue_rising_months >= 3',
             action=Words(zh="销售总监拜访，评估升级为明星客户", en="Sales director visit: assess promotion to Star"),
             due_working_days=5, assign_to="manager", cooldown_days=90),
    TaskRule(name="activity_down_retention", when="activity_decline >= 0.5 and act_baseline_30d >= 3",
             action=Words(zh="挽留回访：了解活跃度下降的原因", en="Retention call: find out why activity dropped"),
             due_working_days=2, cooldown_days=30, reasons="churn"),
    TaskRule(name="key_account_silence_retention",
             when='tier in ["star", "cash_cow"] and churn_label == "high" and revenue_12m > 0 '
                  'and not (activity_decline >= 0.5 and act_baseline_30d >= 3)',
             action=Words(zh="挽留回访：重点客户超出采购周期未下单，了解原因", en="Retention call: a key account is "
                                                               "overdue on its purchase cycle; find out why"),
             due_working_days=3, cooldown_days=60, reasons="churn"),
    TaskRule(name="first_order_nurture", when="purchase_days == 1 and days_since_first_order <= 30",
             action=Words(zh="首单培育：回访使用情况，介绍上手资源", en="First-order nurture: check in on the start, share "
                                                                   "onboarding resources"),
             due_working_days=3, cooldown_days=365),
    TaskRule(name="high_intent_follow_up", when='intent == "high"',
             action=Words(zh="高意向跟进：一个工作日内联系，了解需求并约演示",
                          en="High intent: get in touch within a working day, learn the need, book a demo"),
             due_working_days=1, cooldown_days=30, reasons="intent"),
]


class PriorityWeights(_Section):
    """priority = tier points + churn_weight × churn score + value points + urgency points
    (README "Follow-up tasks" has the formula)."""

    tier_points: dict[str, float] = {"star": 40, "cash_cow": 30, "question_mark": 20, "dog": 5}
    churn_weight: float = Field(0.3, ge=0)  # × churn score 0–100
    value_points: float = Field(20, ge=0)  # × the value-at-stake percentile (0–1)
    urgency_points: float = Field(20, ge=0)  # overdue: all of it; due in n working days: / (n + 1)

    @field_validator("tier_points")
    @classmethod
    def _known_tiers(cls, points: dict[str, float]) -> dict[str, float]:
        unknown = sorted(set(points) - set(TIERS))
        if unknown:
            raise ValueError(f"unknown tier(s) {', '.join(unknown)}: use {', '.join(TIERS)}")
        return points


class ChurnAlerts(_Section):
    enabled: bool = True
    # A customer whose churn risk reaches this (0–100) is reported to the owner's manager.
    threshold: float = Field(70, ge=0, le=100)
    # It is reported again only after falling below threshold − rearm_margin and rising again.
    rearm_margin: float = Field(10, ge=0, le=100)
    # At most one alert message per manager per this many minutes; alerts in between are batched.
    every_minutes: int = Field(60, ge=1)
    # Also post the alerts to the team group robot (needs WECOM_WEBHOOK_KEY).
    group_robot: bool = False
    # Only customers with at least this much revenue in the last 12 months are alerted on
    # and listed by 流失预警: one with none is past saving, not at risk (RFM's lost and
    # hibernating lists are for winning them back).
    min_revenue_12m: float = Field(1.0, ge=0)


class PlaybookConfig(_Section):
    tier_actions: dict[str, Words] = DEFAULT_TIER_ACTIONS
    tasks: list[TaskRule] = DEFAULT_TASK_RULES
    priority: PriorityWeights = PriorityWeights()
    churn_alerts: ChurnAlerts = ChurnAlerts()

    @field_validator("tier_actions")
    @classmethod
    def _every_tier(cls, actions: dict[str, Words]) -> dict[str, Words]:
        unknown = sorted(set(actions) - set(TIERS))
        if unknown:
            raise ValueError(f"unknown tier(s) {', '.join(unknown)}: use {', '.join(TIERS)}")
        missing = [tier for tier in TIERS if tier not in actions]
        if missing:
            raise ValueError(f"no action for {', '.join(missing)}: every tier needs one")
        return actions

    @model_validator(mode="after")
    def _task_rules_compile(self) -> "PlaybookConfig":
        from notifications.playbook import check_task_rules

        problems = check_task_rules(self.tasks)
        if problems:
            raise ValueError("; ".join(problems))
        return self


SEVERITIES = ("P1", "P2", "P3", "P4")


class TicketRoute(_Section):
    name: str = Field(min_length=1, max_length=64)
    # A condition in the business-rule language over the ticket and its customer: tier,
    # sabc, pyramid, lifecycle, churn_label, churn_score, revenue_12m, severity,
    # product_line, industry, region, customer_type (notifications.tickets.ROUTE_FIELDS).
    when: str
    queue: str = Field(min_length=1, max_length=32)
    # The priority tickets on this route get; none: the ticket's own severity (else P3).
    priority: str | None = None
    # Time to the first response (an agent accepting), counted in working hours.
    first_response_hours: float = Field(gt=0, le=24 * 30)
    # > 0: answer with knowledge-base links first; still open after this many working
    # hours, the ticket goes to `queue` with the SLA above (the Dog path).
    self_service_hours: float = Field(0, ge=0, le=24 * 30)

    @field_validator("priority")
    @classmethod
    def _severity(cls, value: str | None) -> str | None:
        if value is not None and value not in SEVERITIES:
            raise ValueError(f"must be one of {', '.join(SEVERITIES)}")
        return value


DEFAULT_ROUTES = [
    TicketRoute(name="strategic", when='tier == "star" or sabc == "S"', queue="expert", priority="P1",
                first_response_hours=1),
    # Production down at any other customer: a person at once, not the knowledge base first.
    TicketRoute(name="urgent", when='severity == "P1"', queue="standard", priority="P1", first_response_hours=2),
    TicketRoute(name="cash_cow", when='tier == "cash_cow"', queue="standard", first_response_hours=4),
    TicketRoute(name="growth", when='tier == "question_mark"', queue="growth", first_response_hours=4),
    TicketRoute(name="self_service_first", when='tier == "dog"', queue="standard", first_response_hours=24,
                self_service_hours=4),
    TicketRoute(name="unscored", when="true", queue="standard", first_response_hours=8),
]


class TicketQueue(_Section):
    # Told when a ticket of this queue breaches its SLA. Empty: the manager of the queue's
    # agents, else every admin.
    lead: str = ""


class KnowledgeLink(_Section):
    title: str
    url: str


class TicketsConfig(_Section):
    # First match wins; the last route should match everything ("true").
    routes: list[TicketRoute] = DEFAULT_ROUTES
    queues: dict[str, TicketQueue] = {"expert": TicketQueue(), "standard": TicketQueue(), "growth": TicketQueue()}
    knowledge_base: list[KnowledgeLink] = [
        KnowledgeLink(title="常见问题 FAQ", url="https://help.example.com/faq"),
        KnowledgeLink(title="使用手册 Manuals", url="https://help.example.com/manuals"),
    ]
    # The assigned agent is warned this long before the first-response deadline.
    warn_before_minutes: int = Field(30, ge=0)
    # Agents' own working hours, where they differ from calendar.working_hours.
    agent_hours: dict[str, tuple[str, str]] = {}
    # Tickets are routed at once on intake; this sweep also runs the SLA clock.
    watch_every_seconds: float = Field(60, gt=0, le=3600)

    @model_validator(mode="after")
    def _routes_are_sound(self) -> "TicketsConfig":
        from notifications.tickets import check_routes

        problems = check_routes(self.routes)
        unknown = sorted({route.queue for route in self.routes} - set(self.queues))
        if unknown:
            problems.append(f"routes use queue(s) {', '.join(unknown)} that tickets.queues does not have "
                            f"({', '.join(sorted(self.queues))})")
        for userid, hours in self.agent_hours.items():
            try:
                if parse_hh_mm(hours[0]) >= parse_hh_mm(hours[1]):
                    problems.append(f"agent_hours.{userid}: the start must be before the end")
            except ValueError as error:
                problems.append(f"agent_hours.{userid}: {error}")
        if problems:
            raise ValueError("; ".join(problems))
        return self
