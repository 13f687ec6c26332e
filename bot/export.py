"""`python -m bot export scores` (the latest score run) and `export tasks` (the follow-up
tasks and what came of them) as CSV, streamed in bounded memory."""

from __future__ import annotations

import csv
from collections.abc import Iterator
from datetime import date, datetime, time, timezone
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import Connection, Engine, or_, select

from handlers.text import model_reasons_text, reasons_text, tier_name
from storage.db import as_date, local_time
from storage.models import Customer, FollowUpTask, ScoreSnapshot, User
from storage.scores import StoredSnapshot, exportable_run, latest_run

# pending_tier: the tier a borderline customer is heading for, held back until the runs confirm it.
SCORE_COLUMNS = ("customer_id", "name", "owner_userid", "owner_name", "tier", "tier_name", "pending_tier",
                 "current_value", "potential_value", "revenue_12m", "reasons")
# Per model after the value matrix: label (its code), name (in the export's language),
# score, reasons (in words).
MODEL_COLUMNS = ("rfm", "sabc", "pyramid", "lifecycle", "churn", "intent")


class NoScoreRun(Exception):
    pass


def score_records(connection: Connection, run, lang: str = "zh", catalogue_size: int | None = None,
                  customer_ids: list[str] | None = None, after: str | None = None,
                  limit: int | None = None) -> Iterator[dict[str, Any]]:
    """One record per customer of run `run` in customer order: every model's label, its
    name in `lang`, score and reasons in words. The export writes them as CSV rows, the
    REST API as JSON. `customer_ids` / `after` / `limit` pick a page of them."""
    query = (select(ScoreSnapshot.customer_id, Customer.name, Customer.owner_userid, ScoreSnapshot.tier,
                    ScoreSnapshot.current_value, ScoreSnapshot.potential_value, ScoreSnapshot.reasons,
                    ScoreSnapshot.scores, ScoreSnapshot.labels, ScoreSnapshot.reasons_chunk,
                    ScoreSnapshot.revenue_12m, User.name.label("owner_name"), ScoreSnapshot.pending_tier)
             .join(Customer, Customer.customer_id == ScoreSnapshot.customer_id)
             .outerjoin(User, User.userid == Customer.owner_userid)
             .where(ScoreSnapshot.run_id == run.id)
             .order_by(ScoreSnapshot.customer_id))
    if customer_ids is not None:
        query = query.where(ScoreSnapshot.customer_id.in_(customer_ids))
    if after is not None:
        query = query.where(ScoreSnapshot.customer_id > after)
    if limit is not None:
        query = query.limit(limit)
    result = connection.execution_options(stream_results=True, yield_per=10_000).execute(query)
    # Reasons are put into words a page at a time; the run's chunks follow customer order.
    stored = StoredSnapshot()
    for page in result.partitions():
        stored.fetch(connection, run.id, [(row[0], None, row[9]) for row in page])
        documents = zip(stored.of([(row[0], row[6], row[9]) for row in page]),
                        stored.documents([(row[0], row[7], row[9]) for row in page], "scores"),
                        stored.documents([(row[0], row[8], row[9]) for row in page], "labels"))
        for row, (reasons, scores, labels) in zip(page, documents):
            customer_id, name, owner, tier, current, potential = row[:6]
            revenue, owner_name, pending = row[10:13]
            models = {}
            for model in MODEL_COLUMNS:
                if model not in labels:
                    continue
                label = labels.get(model) or ""
                models[model] = {"label": label, "name": tier_name(label, lang, model) if label else "",
                                 "score": scores.get(model),
                                 "reasons": model_reasons_text(model, reasons.get(model) or [], lang)}
            yield {"customer_id": customer_id, "name": name, "owner_userid": owner or "",
                   "owner_name": owner_name or "", "tier": tier, "tier_name": tier_name(tier, lang),
                   "pending_tier": pending or "", "current_value": round(float(current), 2),
                   "potential_value": round(float(potential), 2), "revenue_12m": round(float(revenue or 0), 2),
                   "reasons": reasons_text(reasons.get("value_matrix") or [], lang, catalogue_size),
                   "models": models, "tags": list(labels.get("tags") or []),
                   "rules": model_reasons_text("rules", reasons.get("rules") or [], lang),
                   "components": {c: value for c, value in scores.items() if c not in MODEL_COLUMNS},
                   "as_of": str(run.as_of), "run_id": run.id}


def export_scores(engine: Engine, out: Path, lang: str = "zh", catalogue_size: int | None = None,
                  run_id: int | None = None) -> int:
    """Write one row per customer of the latest succeeded full run (or of run `run_id`, a
    full run or a back-test); returns the row count. The file is written beside its final
    name and renamed, so a crash never leaves half a file."""
    partial = out.with_name(out.name + ".partial")
    written = 0
    with engine.connect() as connection:
        run = latest_run(connection) if run_id is None else exportable_run(connection, run_id)
        if run is None and run_id is not None:
            raise NoScoreRun(f"no full run or back-test #{run_id} that succeeded and is still kept "
                             f"(the newest retention.score_runs full runs are)")
        if run is None:
            raise NoScoreRun("no score run yet: run `python -m bot score` first")
        out.parent.mkdir(parents=True, exist_ok=True)
        # With a BOM: Excel, which most sales teams open it in, reads UTF-8 only so.
        with open(partial, "w", encoding="utf-8-sig", newline="") as handle:
            writer = csv.writer(handle)
            header_written = False
            for record in score_records(connection, run, lang, catalogue_size):
                if not header_written:
                    # The first record's models and components name the columns: a run scores
                    # every customer with the same ones.
                    models, components = list(record["models"]), list(record["components"])
                    writer.writerow([*SCORE_COLUMNS,
                                     *(f"{m}_{part}" for m in models for part in ("label", "name", "score", "reasons")),
                                     "tags", "rules", "as_of", "run_id", *(f"score_{c}" for c in components)])
                    header_written = True
                model_cells = []
                for model in models:
                    # A row an incremental rescore wrote after a model was switched off lacks it: blank.
                    cells = record["models"].get(model) or {"label": "", "name": "", "score": None, "reasons": ""}
                    model_cells += [cells["label"], cells["name"], _cell(cells["score"]), cells["reasons"]]
                writer.writerow([*(_cell(record[column]) for column in SCORE_COLUMNS), *model_cells,
                                 "|".join(record["tags"]), record["rules"], record["as_of"], record["run_id"],
                                 *(_cell(record["components"].get(c)) for c in components)])
                written += 1
            if not header_written:
                writer.writerow([*SCORE_COLUMNS, "tags", "rules", "as_of", "run_id"])
    partial.replace(out)
    return written


def _cell(value) -> str:
    if value is None:
        return ""
    return f"{value:.2f}" if isinstance(value, float) else str(value)


TASK_COLUMNS = ("task_id", "customer_id", "customer_name", "owner_userid", "owner_name", "rule", "title", "tier",
                "tier_name", "status", "created_at", "due_date", "overdue", "snoozed_until", "done_at", "done_note")


def export_tasks(engine: Engine, out: Path, tz: ZoneInfo, today: date, lang: str = "zh",
                 status: str | None = None, since: date | None = None) -> int:
    """Write one row per follow-up task, oldest first: whose it is, what it asks, and what
    came of it (done when, the rep's note). `status`: only those; `since`: only tasks made
    or done on or after that day (in `tz`, as are the times). Written beside its final name
    and renamed, as export_scores is."""
    tasks = FollowUpTask.__table__
    query = (select(tasks, Customer.name.label("customer_name"), User.name.label("owner_name"))
             .join(Customer, Customer.customer_id == tasks.c.customer_id)
             .outerjoin(User, User.userid == tasks.c.owner_userid).order_by(tasks.c.id))
    if status is not None:
        query = query.where(tasks.c.status == status)
    if since is not None:
        # In UTC: SQLite keeps timestamps as UTC wall-clock text, and compares them as text.
        start = datetime.combine(since, time.min, tzinfo=tz).astimezone(timezone.utc)
        query = query.where(or_(tasks.c.created_at >= start, tasks.c.done_at >= start))

    def local(moment) -> str:
        return local_time(moment, tz).strftime("%Y-%m-%d %H:%M") if moment is not None else ""

    partial = out.with_name(out.name + ".partial")
    written = 0
    out.parent.mkdir(parents=True, exist_ok=True)
    with engine.connect() as connection, open(partial, "w", encoding="utf-8-sig", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(TASK_COLUMNS)
        for row in connection.execution_options(yield_per=2000).execute(query):
            due = as_date(row.due_date)
            writer.writerow([row.id, row.customer_id, row.customer_name, row.owner_userid, row.owner_name or "",
                             row.rule, row.title_zh if lang == "zh" else row.title_en, row.tier or "",
                             tier_name(row.tier, lang) if row.tier else "", row.status, local(row.created_at),
                             due.isoformat(), "yes" if row.status == "open" and due < today else "",
                             str(row.snoozed_until)[:10] if row.snoozed_until else "", local(row.done_at),
                             row.done_note or ""])
            written += 1
    partial.replace(out)
    return written
