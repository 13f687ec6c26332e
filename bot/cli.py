"""`python -m bot [--config PATH] COMMAND` — see README "Operations".

Exit codes: 0 success, 2 bad input (one line per problem), 1 anything else.
"""

from __future__ import annotations

import logging
import sys
from datetime import date, datetime
from pathlib import Path

import click

from bot.config import Config, ConfigError, load_config

BAD_INPUT = 2
logger = logging.getLogger("tierbot")


class BadInput(click.ClickException):
    """Exit 2 with every problem on its own line."""

    exit_code = BAD_INPUT

    def __init__(self, problems: list[str], footer: str | None = None):
        super().__init__("\n".join(problems + ([footer] if footer else [])))

    def show(self, file=None) -> None:
        click.echo(self.format_message(), err=True)


def _parse_day(_ctx, _param, value: str | None) -> date | None:
    if value is None:
        return None
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a date (expected YYYY-MM-DD)") from None


def _today(config: Config) -> date:
    return datetime.now(config.tz).date()


def _progress_default() -> bool:
    return sys.stderr.isatty()


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--config", "config_path", type=click.Path(dir_okay=False), default=None,
              help="Configuration file (default: config.yaml beside the code).")
@click.pass_context
def main(ctx: click.Context, config_path: str | None) -> None:
    """tierbot: customer tiering for B2B sales teams, in WeCom."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("alembic").setLevel(logging.WARNING)
    ctx.ensure_object(dict)
    ctx.obj["config_path"] = config_path


def _config(ctx: click.Context) -> Config:
    if "config" not in ctx.obj:
        try:
            ctx.obj["config"] = load_config(ctx.obj["config_path"])
        except ConfigError as exc:
            raise BadInput(exc.problems) from None
    return ctx.obj["config"]


def _engine(ctx: click.Context):
    """The database engine, schema upgraded in place to the newest migration."""
    from sqlalchemy.exc import OperationalError

    from storage.db import make_engine, upgrade_schema

    config = _config(ctx)
    if "engine" not in ctx.obj:
        try:
            upgrade_schema(config.database.url)
        except OperationalError as exc:
            raise click.ClickException(f"database unreachable ({_safe_url(config.database.url)}): "
                                       f"{str(exc.orig).strip().splitlines()[0]}") from None
        except OSError as exc:  # the SQLite file's folder cannot be made or written
            raise click.ClickException(f"database unreachable ({_safe_url(config.database.url)}): "
                                       f"{exc.strerror or exc}: {exc.filename or ''}".rstrip(": ")) from None
        ctx.obj["engine"] = make_engine(config.database.url)
    return ctx.obj["engine"]


@main.command("check-config")
@click.pass_context
def check_config(ctx: click.Context) -> None:
    """Validate config.yaml and the environment; list every problem."""
    config = _config(ctx)
    mode = "WeCom" if config.wecom.has_credentials else "sandbox (no WeCom credentials set)"
    click.echo(f"config OK: database {_safe_url(config.database.url)}, mode {mode}, "
               f"scoring fingerprint {config.scoring_hash()}")


def _safe_url(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


@main.command("import")
@click.argument("paths", nargs=-1, required=True, type=click.Path())
@click.option("--dry-run", is_flag=True, help="Validate only; write nothing.")
@click.option("--progress/--no-progress", default=None, help="Progress bars (default: on a terminal).")
@click.option("--as-of", "as_of", callback=_parse_day,
              help="Import as if on this day (YYYY-MM-DD): later rows are in the future and a bulk load "
                   "builds that day's month totals; the customers it touches are rescored by the service.")
@click.pass_context
def import_command(ctx: click.Context, paths: tuple[str, ...], dry_run: bool, progress: bool | None,
                   as_of: date | None) -> None:
    """Import CSV/XLSX files or folders of them, all or nothing."""
    from storage.importer import ImportFailed, ImportInterrupted, run_import, summarise

    config = _config(ctx)
    engine = _engine(ctx)
    try:
        from bot.rescore import INCREMENTAL_LIMIT

        result = run_import(engine, list(paths), timezone_name=config.timezone,
                            batch_rows=config.import_.batch_rows, max_errors=config.import_.max_errors_listed,
                            dry_run=dry_run, progress=_progress_default() if progress is None else progress,
                            touched_limit=INCREMENTAL_LIMIT, as_of=as_of, known_queues=set(config.tickets.queues),
                            known_modules=config.scoring.value_matrix.module_catalogue)
    except ImportFailed as exc:
        for warning in exc.warnings:
            click.echo(f"warning: {warning}", err=True)
        footer = (f"… and {exc.more:,} more problem(s)" if exc.more else "")
        footer += ("\n" if footer else "") + "nothing was imported: fix the rows above and run the import again"
        raise BadInput(exc.problems, footer) from None
    except ImportInterrupted as interrupt:
        if interrupt.saved:
            click.echo("interrupted after the import was saved: the customers it touched wait for the "
                       "service's rescore or the next full run", err=True)
        else:
            click.echo("interrupted: nothing was imported", err=True)
        ctx.exit(130)
    for warning in result.warnings:
        click.echo(f"warning: {warning}", err=True)
    for line in summarise(result):
        click.echo(line)
    if dry_run:
        click.echo("dry run: every row is valid; nothing was written")
        return
    click.echo(f"imported; monthly roll-ups rebuilt for {result.rollups_rebuilt_for:,} customers")
    if result.touched:
        from bot.rescore import incremental_rescore

        if as_of is not None and as_of != _today(config):
            # Rescoring as of another day would put that day's picture into today's lists.
            click.echo(f"the {len(result.touched):,} customers this import touched wait for the service's "
                       f"rescore (as of today) or the next full run")
            return
        try:
            outcome = incremental_rescore(engine, config, result.touched, _today(config))
        except KeyboardInterrupt:
            click.echo(f"interrupted while rescoring: the import was saved, and the {len(result.touched):,} "
                       "customers it touched wait for the service's rescore or the next full run", err=True)
            ctx.exit(130)
        if outcome is not None:
            click.echo(f"rescored the {outcome.customers:,} customers this import touched: "
                       f"{outcome.tier_changes:,} tier change(s)")


@main.command("score")
@click.option("--as-of", "as_of", callback=_parse_day,
              help="Score as if on this day (YYYY-MM-DD): a back-test, unless --live.")
@click.option("--live", is_flag=True,
              help="With --as-of: a full run as of that day that becomes the current picture and pushes "
                   "its cards, tasks and alerts, as the nightly run does.")
@click.pass_context
def score_command(ctx: click.Context, as_of: date | None, live: bool) -> None:
    """Full rescore now; prints customers and revenue per tier."""
    from bot.rescore import NothingToScore, full_rescore
    from handlers.text import render

    if live and as_of is None:
        raise click.UsageError("--live goes with --as-of DAY (a run as of today is live anyway)")
    config = _config(ctx)
    engine = _engine(ctx)
    today = _today(config)
    # Another day's scores must not become today's tiers, nor reach reps as changes and tasks.
    backtest = as_of is not None and as_of != today and not live
    try:
        outcome, timings = full_rescore(engine, config, as_of or today, backtest=backtest)
    except NothingToScore as exc:
        raise BadInput([str(exc)]) from None
    click.echo(render("cli/score_summary.j2", lang=config.language, run_id=outcome.run_id,
                      summary=outcome.summary, changes=outcome.tier_changes, first=outcome.first_assignments,
                      backtest=backtest))
    logger.info("rescore %.2fs in all: read %.2fs, score %.2fs, write %.2fs", timings.total, timings.read,
                timings.score, timings.write)


@main.group("export")
def export_group() -> None:
    """Export data as CSV."""


@export_group.command("scores")
@click.option("--out", "out", required=True, type=click.Path(dir_okay=False), help="CSV file to write.")
@click.option("--lang", type=click.Choice(["zh", "en"]), default=None, help="Language of tier names and reasons.")
@click.option("--run", "run_id", type=int, default=None,
              help="The run to export, e.g. a back-test's (default: the latest full run).")
@click.pass_context
def export_scores(ctx: click.Context, out: str, lang: str | None, run_id: int | None) -> None:
    """One row per customer from the latest score run."""
    from bot.export import NoScoreRun, export_scores as write_scores

    config = _config(ctx)
    try:
        rows = write_scores(_engine(ctx), Path(out), lang or config.language,
                            catalogue_size=len(config.scoring.value_matrix.module_catalogue), run_id=run_id)
    except NoScoreRun as exc:
        raise BadInput([str(exc)]) from None
    click.echo(f"wrote {rows:,} customers to {out}")


@export_group.command("tasks")
@click.option("--out", "out", required=True, type=click.Path(dir_okay=False), help="CSV file to write.")
@click.option("--lang", type=click.Choice(["zh", "en"]), default=None, help="Language of task titles and tiers.")
@click.option("--status", type=click.Choice(["open", "done", "cancelled", "all"]), default="all", show_default=True,
              help="Only the tasks in this state.")
@click.option("--since", "since", callback=_parse_day, default=None, metavar="DAY",
              help="Only the tasks made or done on or after DAY (YYYY-MM-DD).")
@click.pass_context
def export_tasks(ctx: click.Context, out: str, lang: str | None, status: str, since: date | None) -> None:
    """One row per follow-up task: whose, what, due when, and what came of it (done, the note)."""
    from bot.export import export_tasks as write_tasks

    config = _config(ctx)
    rows = write_tasks(_engine(ctx), Path(out), config.tz, _today(config), lang or config.language,
                       status=None if status == "all" else status, since=since)
    click.echo(f"wrote {rows:,} tasks to {out}")


@main.command("demo")
@click.option("--customers", default=2000, show_default=True, help="Size of the demo company.")
@click.option("--seed", default=42, show_default=True)
@click.option("--serve/--no-serve", default=True, show_default=True, help="Start the sandbox service afterwards.")
@click.option("--data-dir", type=click.Path(file_okay=False), default=None,
              help="Where the demo files go (default var/demo).")
@click.pass_context
def demo_command(ctx: click.Context, customers: int, seed: int, serve: bool, data_dir: str | None) -> None:
    """The sandbox: generate a demo company, import it, score it, print the summary, serve."""
    from bot.demo import run_demo

    run_demo(ctx, customers=customers, seed=seed, data_root=Path(data_dir) if data_dir else None)
    if serve:
        ctx.invoke(serve_command)


@main.command("serve")
@click.pass_context
def serve_command(ctx: click.Context) -> None:
    """The service: WeCom callback, health, metrics, outbox dispatch. Without WeCom
    credentials in the environment: the sandbox (emulator + console at /sandbox)."""
    import asyncio

    from sqlalchemy import select

    from bot.app import serve
    from bot.sandbox import database_directory
    from storage.models import User

    config = _config(ctx)
    engine = _engine(ctx)
    with engine.connect() as connection:
        users = list(connection.execute(select(User.userid)).scalars())

    if not config.wecom.has_credentials:
        click.echo(f"sandbox mode (no WeCom credentials set): open http://127.0.0.1:{config.http.port}/sandbox")
    try:
        asyncio.run(serve(config, config.http.host, config.http.port, sandbox_users=users,
                          sandbox_directory=database_directory(engine)))
        click.echo("stopped")
    except KeyboardInterrupt:
        click.echo("stopped")
    except OSError as exc:
        raise click.ClickException(f"cannot listen on {config.http.host}:{config.http.port}: {exc.strerror}") from None
    finally:
        engine.dispose()


@main.command("migrate")
@click.pass_context
def migrate_command(ctx: click.Context) -> None:
    """Upgrade the database schema in place (every command also does this first)."""
    _engine(ctx)
    click.echo(f"database schema is current: {_safe_url(_config(ctx).database.url)}")


@main.group("bench")
def bench_group() -> None:
    """Benchmarks that print figures (see bench/)."""


@bench_group.command("pipeline")
@click.option("--customers", "sizes", multiple=True, type=int,
              help="Company sizes (repeatable; default 10000, 100000, 1000000).")
@click.option("--orders-per-customer", type=float, default=None,
              help="Average orders per customer (default: 100, and 20 at 1M customers).")
@click.option("--activities-per-customer", type=float, default=10.0, show_default=True)
@click.option("--database-url", default=None,
              help="Benchmark on this database (its public schema is dropped!); default a fresh SQLite file.")
@click.option("--work-dir", type=click.Path(file_okay=False), default=str(Path("var") / "bench"), show_default=True)
@click.option("--keep", is_flag=True, help="Keep the generated files.")
def bench_pipeline(sizes: tuple[int, ...], orders_per_customer: float | None, activities_per_customer: float,
                   database_url: str | None, work_dir: str, keep: bool) -> None:
    """Generate → import → score → score again → import again, per size: time and peak memory."""
    from bench.pipeline import DEFAULT_SCALES, run_pipeline

    scales = {size: orders_per_customer or DEFAULT_SCALES.get(size, 100) for size in sizes} or DEFAULT_SCALES
    folder = Path(work_dir)
    folder.mkdir(parents=True, exist_ok=True)
    run_pipeline(scales, activities_per_customer, database_url, folder, keep=keep)


@bench_group.command("callback")
@click.option("--users", "concurrencies", multiple=True, type=int, help="Concurrent users (repeatable; default 50, 200).")
@click.option("--seconds", type=float, default=15.0, show_default=True, help="Length of each run.")
@click.option("--customers", type=int, default=10_000, show_default=True, help="Size of the company behind the bot.")
@click.option("--work-dir", type=click.Path(file_okay=False), default=str(Path("var") / "bench"), show_default=True)
def bench_callback(concurrencies: tuple[int, ...], seconds: float, customers: int, work_dir: str) -> None:
    """Callback requests/s and p50/p99 vs a bare decrypt-and-200 handler."""
    from bench.callback import run_callback_bench

    run_callback_bench(list(concurrencies) or [50, 200], seconds, customers, Path(work_dir))


@bench_group.command("scoring")
@click.option("--size", "sizes", multiple=True, type=(int, float, float),
              metavar="CUSTOMERS ORDERS_PER ACTIVITIES_PER",
              help="Repeatable; default 100000 100 100 and 1000000 20 20.")
@click.option("--database-url", default=None,
              help="Benchmark on this database (its public schema is dropped!); default a fresh SQLite file.")
@click.option("--work-dir", type=click.Path(file_okay=False), default=str(Path("var") / "bench"), show_default=True)
@click.option("--keep", is_flag=True, help="Keep the generated files and database.")
@click.option("--lifetimes-timeout", type=float, default=900.0, show_default=True)
@click.option("--lifetimes-fraction", type=float, default=0.1, show_default=True)
def bench_scoring(sizes, database_url, work_dir, keep, lifetimes_timeout, lifetimes_fraction) -> None:
    """Full rescore end to end vs DuckDB GROUP BY and lifetimes' summary: times, ratios, peak memory."""
    from bench.scoring import DEFAULT_SIZES, run_scoring_bench

    run_scoring_bench(list(sizes) or DEFAULT_SIZES, database_url, Path(work_dir), keep=keep,
                      lifetimes_timeout=lifetimes_timeout, lifetimes_fraction=lifetimes_fraction)


@bench_group.command("dispatch")
@click.option("--messages", type=int, default=5000, show_default=True, help="Throughput: distinct messages queued.")
@click.option("--members", type=int, default=2500, show_default=True,
              help="Throughput: members they go to (and the broadcast's size).")
@click.option("--one-member", type=int, default=200, show_default=True, help="Limits: messages to one member.")
@click.option("--hourly", type=int, default=1200, show_default=True,
              help="Limits: messages to one member for the hourly limit (0: skip).")
@click.option("--app-cap", type=int, default=1500, show_default=True,
              help="Limits: members with one message each, against the app's call cap (0: skip).")
@click.option("--customers", type=int, default=2000, show_default=True, help="Latency: size of the demo company.")
@click.option("--changes", type=int, default=20, show_default=True, help="Latency: customers moved one by one.")
@click.option("--part", "parts", multiple=True, type=click.Choice(["throughput", "limits", "latency"]),
              help="Run only these parts (repeatable; default all).")
@click.option("--work-dir", type=click.Path(file_okay=False), default=str(Path("var") / "bench"), show_default=True)
def bench_dispatch(messages: int, members: int, one_member: int, hourly: int, app_cap: int, customers: int,
                   changes: int, parts: tuple[str, ...], work_dir: str) -> None:
    """Outbox throughput vs bare sends, per-member limits, new order → tier-change card latency."""
    from bench.dispatch import PARTS, run_dispatch_bench

    run_dispatch_bench(messages=messages, members=members, one_member=one_member, hourly=hourly, app_cap=app_cap,
                       customers=customers, changes=changes, parts=parts or PARTS, work_dir=Path(work_dir))
