"""Push messages rendered from templates/push: tier-change and task cards, the per-rep
summary, churn alerts, delivery-failure notices.

Cards are JSON templates (every value passed through `tojson`, so no text can break
the structure) turned into the template_card JSON WeCom takes. Lists are cut to fit
WeCom's 2048-byte limit for app markdown rather than refused.
"""

from __future__ import annotations

import secrets
from collections import Counter
from typing import Any

import orjson

from handlers.text import fit_bytes, render

MARKDOWN_BYTES = 2048


def card_task_id(task_id: int | None = None) -> str:
    """A card's task_id: unique per app for ever (WeCom refuses a reused one with 42014)."""
    return f"t{task_id or 0}_{secrets.token_hex(6)}"


def _card(template: str, **context: Any) -> dict[str, Any]:
    # JSON templates: a first run can card thousands of tasks, and a YAML parser spends
    # ten times as long on each as the JSON one.
    return orjson.loads(render(template, **context))


def tier_change_card(item: dict[str, Any], action: str, lang: str, task_id: str) -> dict[str, Any]:
    return _card(f"push/tier_change_card.{lang}.json.j2", item=item, action=action, card_task_id=task_id)


def task_card(item: dict[str, Any], lang: str, task_id: str) -> dict[str, Any]:
    return _card(f"push/task_card.{lang}.json.j2", item=item, card_task_id=task_id)


def _fitted(template: str, listed: list, **context: Any) -> str:
    """At most 20 of `listed`, fewer when the message would pass WeCom's size limit."""
    return fit_bytes(lambda shown: render(template, shown=shown, **context), min(len(listed), 20), MARKDOWN_BYTES)


def rep_summary(items: list[dict[str, Any]], lang: str) -> str:
    """Many tier changes and new tasks for one rep at once, as one message."""
    changes = sorted((item for item in items if item.get("type") == "tier_change"),
                     key=lambda item: -(item.get("revenue_12m") or 0))
    tasks = [item for item in items if item.get("type") == "task" or (item.get("type") == "tier_change"
                                                                       and item.get("task"))]
    overdue = [item for item in items if item.get("type") == "overdue"]
    transitions = Counter((item["from_tier"], item["to_tier"]) for item in changes).most_common()
    return _fitted(f"push/rep_summary.{lang}.j2", changes, changes=changes, tasks=tasks, overdue=overdue,
                   transitions=transitions)


def overdue_notice(item: dict[str, Any], lang: str) -> str:
    return render(f"push/overdue.{lang}.j2", item=item)


def digest(name: str, today: Any, tasks: list, total_tasks: int, changes: list, lang: str) -> str:
    """The morning digest: tier changes are cut first, then tasks, until it fits."""
    def with_counts(shown_tasks: int, shown_changes: int) -> str:
        return render(f"push/digest.{lang}.j2", person=name, today=today, tasks=tasks, total_tasks=total_tasks,
                      changes=changes, shown_tasks=shown_tasks, shown_changes=shown_changes)

    for shown_changes in range(min(len(changes), 10), 0, -1):
        text = with_counts(len(tasks), shown_changes)
        if len(text.encode("utf-8")) <= MARKDOWN_BYTES:
            return text
    return fit_bytes(lambda shown: with_counts(shown, 0), len(tasks), MARKDOWN_BYTES)


def churn_alert(items: list[dict[str, Any]], lang: str) -> str:
    """Customers named, riskiest first; items {"more": n} count customers a run did not
    name (notifications.playbook.ALERT_NAMED)."""
    named = [item for item in items if "more" not in item]
    ordered = sorted(named, key=lambda item: (-item["churn_score"], -(item.get("revenue_12m") or 0)))
    total = len(named) + sum(int(item["more"]) for item in items if "more" in item)
    return _fitted(f"push/churn_alert.{lang}.j2", ordered, items=ordered, total=total)


def delivery_failures(items: list[dict[str, Any]], lang: str) -> str:
    return _fitted(f"push/delivery_failures.{lang}.j2", items, items=items)


def ticket_notices(kind: str, items: list[dict[str, Any]], lang: str) -> str:
    """Several breach (or warning) notices for one person at once, as one list."""
    return _fitted(f"push/ticket_notices.{lang}.j2", items, kind=kind, items=items)


def summary_for(kind: str, items: list[dict[str, Any]], lang: str) -> tuple[str, dict[str, Any]]:
    """(msgtype, body) of the one message that stands for several batched rows."""
    if kind in ("ticket_breach", "ticket_warning"):
        return "markdown", {"content": ticket_notices(kind.removeprefix("ticket_"), items, lang)}
    if kind == "churn_alert":
        return "markdown", {"content": churn_alert(items, lang)}
    if kind == "delivery_failure":
        return "markdown", {"content": delivery_failures(items, lang)}
    return "markdown", {"content": rep_summary(items, lang)}


def message_for(kind: str, item: dict[str, Any], lang: str) -> tuple[str, dict[str, Any]]:
    """(msgtype, body) of a row queued with its item only (notifications.outbox), made when
    it is sent on its own: a run's many rows for one person usually go out as one summary,
    and their own cards would be rendered for nothing."""
    if kind == "task":
        return "template_card", task_card(item, lang, item["card_task_id"])
    if kind == "tier_change":
        action = item["action"]
        # A row queued before the action came in both languages holds the service's only.
        return "template_card", tier_change_card(item, action[lang] if isinstance(action, dict) else action, lang,
                                                 item["card_task_id"])
    if kind == "churn_alert":
        return "markdown", {"content": churn_alert([item], lang)}
    raise ValueError(f"a {kind} row needs its message written when it is queued")


def ticket_card(item: dict[str, Any], lang: str, task_id: str) -> dict[str, Any]:
    return _card(f"push/ticket_card.{lang}.json.j2", item=item, card_task_id=task_id)


def ticket_notice(kind: str, item: dict[str, Any], lang: str, links: list | None = None) -> str:
    """self_service · assigned · warning · breach · star_breach · reprioritised."""
    return render(f"push/ticket_notice.{lang}.j2", kind=kind, item=item, links=links or [])
