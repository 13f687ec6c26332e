"""The sandbox demo: a generated company, imported, scored, summarised, before
`python -m bot demo` (what `make run` runs) starts the service on it. The company's data
runs up to yesterday and is scored as of today, as the nightly run does: the service's
own clock (the incremental rescore of new data, tasks' due days, the digest) then agrees
with the scores. It is generated once per (size, seed, day) under var/demo/ and reused
that day.
"""

from __future__ import annotations

import json
import shutil
from datetime import date, timedelta
from pathlib import Path

import click
from sqlalchemy import delete, func, select

from bot.config import PROJECT_ROOT

EXAMPLES_PER_TIER = 3
# A new demo database is also scored as of these many weeks ago, oldest first.
HISTORY_WEEKS = (8, 4)


def company_folder(data_root: Path, customers: int, seed: int, data_ends: date) -> Path:
    """Where the demo company ending on `data_ends` is kept; other days' companies of the
    same size and seed are removed."""
    folder = data_root / f"company-{customers}-seed{seed}-{data_ends:%Y%m%d}"
    # Other days' (and the undated folder versions before 2026-11-30 kept), not other seeds'.
    for stale in [*data_root.glob(f"company-{customers}-seed{seed}-*"), data_root / f"company-{customers}-seed{seed}"]:
        if stale != folder and stale.is_dir():
            shutil.rmtree(stale, ignore_errors=True)
    return folder


def run_demo(ctx: click.Context, customers: int, seed: int, data_root: Path | None = None) -> None:
    from bot.cli import _config, _engine, _progress_default, _today
    from bot.rescore import full_rescore
    from handlers.text import reasons_text, render, score_points, tier_name
    from scoring.generator import generate_company
    from bot.export import export_scores
    from storage.importer import run_import, summarise
    from storage.models import Customer, OutboxMessage, ScoreSnapshot
    from storage.scores import StoredSnapshot, latest_run

    config = _config(ctx)
    engine = _engine(ctx)
    lang = config.language
    data_root = data_root or PROJECT_ROOT / "var" / "demo"
    today = _today(config)
    data_ends = today - timedelta(days=1)
    data_dir = company_folder(data_root, customers, seed, data_ends)
    marker = data_dir / ".complete"
    if not marker.exists():
        click.echo(f"generating a demo company of {customers:,} customers in {data_dir} …")
        data_dir.mkdir(parents=True, exist_ok=True)
        counts = generate_company(data_dir, customers=customers, seed=seed, as_of=data_ends,
                                  progress=_progress_default())
        marker.write_text(json.dumps(counts.__dict__))
    click.echo(f"importing {data_dir} …")
    result = run_import(engine, [data_dir], timezone_name=config.timezone, batch_rows=config.import_.batch_rows,
                        progress=_progress_default(), known_queues=set(config.tickets.queues),
                        known_modules=config.scoring.value_matrix.module_catalogue)
    for line in summarise(result):
        click.echo("  " + line)
    with engine.connect() as connection:
        first_scoring = latest_run(connection) is None
    if first_scoring:
        # Nightly runs of weeks past on a new database, as if the service had been running:
        # today's run then has tier changes to push, and 分层报表 and the digest moves to show.
        with engine.connect() as connection:
            queued_before = connection.execute(select(func.coalesce(func.max(OutboxMessage.id), 0))).scalar_one()
        for weeks_ago in HISTORY_WEEKS:
            full_rescore(engine, config, today - timedelta(weeks=weeks_ago))
        # What those runs queued was news weeks ago (in this story it went out then): only
        # today's run pushes, as on any morning of a service that has been running.
        with engine.begin() as connection:
            connection.execute(delete(OutboxMessage).where(OutboxMessage.id > queued_before,
                                                           OutboxMessage.status == "pending"))
    outcome, _timings = full_rescore(engine, config, today)
    click.echo()
    click.echo(render("cli/score_summary.j2", lang=lang, run_id=outcome.run_id, summary=outcome.summary,
                      changes=outcome.tier_changes, first=outcome.first_assignments))
    click.echo()
    catalogue = len(config.scoring.value_matrix.module_catalogue)
    with engine.connect() as connection:
        for tier in ("star", "cash_cow", "question_mark", "dog"):
            rows = connection.execute(
                select(Customer.customer_id, Customer.name, ScoreSnapshot.current_value,
                       ScoreSnapshot.potential_value, ScoreSnapshot.reasons, ScoreSnapshot.reasons_chunk)
                .join(Customer, Customer.customer_id == ScoreSnapshot.customer_id)
                .where(ScoreSnapshot.run_id == outcome.run_id, ScoreSnapshot.tier == tier)
                .order_by(ScoreSnapshot.current_value.desc(), ScoreSnapshot.customer_id)
                .limit(EXAMPLES_PER_TIER)).all()
            click.echo(f"{tier_name(tier, 'zh')} {tier_name(tier, 'en')}")
            every_reasons = StoredSnapshot().read(connection, outcome.run_id,
                                                 [(row.customer_id, row.reasons, row.reasons_chunk) for row in rows])
            for (customer_id, name, current, potential, _, _), reasons in zip(rows, every_reasons):
                click.echo(f"  {customer_id} {name}  X={score_points(current)} Y={score_points(potential)}")
                click.echo(f"    {reasons_text(reasons['value_matrix'], lang, catalogue)}")
    out = data_root / "scores.csv"
    export_scores(engine, out, lang, catalogue)
    click.echo()
    click.echo(f"every customer with its tier and reasons: {out}")
