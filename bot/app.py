"""The aiohttp service: WeCom callback, health, metrics, the outbox dispatcher, and in
sandbox mode the WeCom emulator and the console page.

`python -m bot serve` runs it; with no WeCom credentials in the environment it starts
the sandbox: a local WeCom emulator on its own port stands in for qyapi.weixin.qq.com,
and /sandbox lets you talk to the bot as any user, over the real signed, encrypted
callback path.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import secrets
import signal
import time
from datetime import datetime, timedelta, timezone
from dataclasses import dataclass, field
from typing import Any, Callable

from aiohttp import web
from sqlalchemy import text

from bot.callback import WeComCallback
from bot.config import Config, check_titles
from bot.metrics import CONTENT_TYPE_LATEST, Metrics
from bot.wecom_client import WeComClient
from handlers import router
from handlers.registry import Reply
from handlers.services import Services
from handlers.text import plain_text, use_label_names
from notifications.dispatcher import Dispatcher
from notifications.outbox import enqueue_once
from bot.api import MAX_BODY_BYTES, IngestApi, json_errors
from storage.db import make_async_engine, make_engine

logger = logging.getLogger(__name__)


@dataclass
class WeComIdentity:
    """Who we are to WeCom: the app's credentials and where its API lives."""

    corp_id: str
    agent_id: int
    secret: str
    token: str
    encoding_aes_key: str
    api_base: str


def sandbox_identity() -> WeComIdentity:
    """Fresh credentials for the sandbox, as an admin console would hand them out."""
    from bot.emulator import SANDBOX_AGENT_ID, SANDBOX_CORP_ID, SANDBOX_SECRET

    aes_key = base64.b64encode(secrets.token_bytes(32)).decode().rstrip("=")
    return WeComIdentity(SANDBOX_CORP_ID, SANDBOX_AGENT_ID, SANDBOX_SECRET, secrets.token_urlsafe(16), aes_key,
                         api_base="")


def configured_identity(config: Config) -> WeComIdentity:
    wecom = config.wecom
    return WeComIdentity(wecom.corp_id, int(wecom.agent_id or 0), wecom.secret, wecom.token,
                         wecom.encoding_aes_key, wecom.api_base)


@dataclass
class Runtime:
    config: Config
    identity: WeComIdentity
    services: Services
    metrics: Metrics
    client: WeComClient
    dispatcher: Dispatcher
    callback: WeComCallback
    sandbox: Any = None  # bot.sandbox.Sandbox in sandbox mode
    sync_db: Any = None  # a synchronous engine for imports and rescoring on worker threads
    scheduler: Any = None  # bot.scheduler.Scheduler
    tasks: list[asyncio.Task] = field(default_factory=list)

    # Set when tickets arrive (API, chat): route them now rather than at the next sweep.
    tickets_wakeup: asyncio.Event = field(default_factory=asyncio.Event)

    def wake_dispatcher(self) -> None:
        """Something was queued: send it now rather than at the next pass."""
        self.dispatcher.wakeup.set()

    def wake_tickets(self) -> None:
        self.tickets_wakeup.set()


RUNTIME = web.AppKey("runtime", Runtime)


@web.middleware
async def _measure(request: web.Request, handler):
    metrics: Metrics = request.app[RUNTIME].metrics
    route = request.match_info.route.resource.canonical if request.match_info.route.resource else "unmatched"
    started = time.perf_counter()
    status = 500
    try:
        response = await handler(request)
        status = response.status
        return response
    except web.HTTPException as exc:
        status = exc.status
        raise
    finally:
        metrics.requests.labels(route=route, status=str(status)).inc()
        metrics.latency.labels(route=route).observe(time.perf_counter() - started)


async def _healthz(request: web.Request) -> web.Response:
    runtime = request.app[RUNTIME]
    try:
        async with runtime.services.db.connect() as connection:
            await asyncio.wait_for(connection.execute(text("SELECT 1")), timeout=3)
    except Exception as exc:  # any failure to reach the database is "unhealthy"
        return web.json_response({"status": "unhealthy", "database": exc.__class__.__name__}, status=503)
    return web.json_response({"status": "ok", "database": "ok",
                              "mode": "sandbox" if runtime.sandbox else "wecom"})


async def _metrics(request: web.Request) -> web.Response:
    body = request.app[RUNTIME].metrics.render()
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


# WeCom retries within seconds; a day of dedupe keys is plenty and keeps the table small.
DEDUPE_KEEP = 24 * 3600
DEDUPE_SWEEP_SECONDS = 600


async def _forget_old_callbacks(services: Services) -> None:
    from storage.models import CallbackSeen

    while True:
        await asyncio.sleep(DEDUPE_SWEEP_SECONDS)
        try:
            cutoff = datetime.now(timezone.utc) - timedelta(seconds=DEDUPE_KEEP)
            async with services.db.begin() as connection:
                await connection.execute(CallbackSeen.__table__.delete().where(CallbackSeen.received_at < cutoff))
        except Exception:
            logger.exception("sweeping old callback dedupe keys failed; trying again later")


def create_app(config: Config, identity: WeComIdentity, *, sandbox: Any = None, dispatch: bool = True,
               webhook_key: str | None = None) -> web.Application:
    """The service. `identity.api_base` is where the WeCom API (or the emulator) lives.
    `dispatch=False` leaves out the scheduler and the dispatcher (tests drive them)."""
    from bot.wecom_client import WebhookClient

    check_titles(config)  # a configuration built in code, not read by load_config
    use_label_names(config.label_names())
    metrics = Metrics()
    services = Services(db=make_async_engine(config.database.url), config=config)
    client = WeComClient(None, identity.corp_id, identity.secret, identity.agent_id, identity.api_base)
    webhook_key = config.wecom.webhook_key if webhook_key is None else webhook_key
    webhook = WebhookClient(None, webhook_key, identity.api_base) if webhook_key else None
    dispatcher = Dispatcher(services.db, client, pushes=config.pushes, language=config.language, webhook=webhook,
                            metrics=metrics, timezone=config.tz)
    services.wake = dispatcher.wakeup.set

    async def late_reply(userid: str, reply: Reply, origin: str) -> None:
        if reply.msgtype == "markdown":
            body = {"content": reply.text}
        else:
            body = {"content": plain_text(reply.text)}
        if await enqueue_once(services.db, [userid], reply.msgtype, body, origin):
            dispatcher.wakeup.set()

    callback = WeComCallback(token=identity.token, encoding_aes_key=identity.encoding_aes_key,
                             corp_id=identity.corp_id, router=router, services=services, metrics=metrics,
                             late_reply=late_reply)
    # As large as a REST ingest batch may be (bot.api); the callback keeps its own, smaller limit.
    app = web.Application(middlewares=[_measure, json_errors], client_max_size=MAX_BODY_BYTES)
    runtime = Runtime(config, identity, services, metrics, client, dispatcher, callback, sandbox,
                      sync_db=make_engine(config.database.url))
    app[RUNTIME] = runtime
    services.wake_tickets = runtime.wake_tickets
    app.add_routes(callback.routes())
    app.add_routes(IngestApi(runtime).routes())
    app.add_routes([web.get("/healthz", _healthz), web.get("/metrics", _metrics)])
    if sandbox is not None:
        sandbox.attach(app)

    async def lifecycle(app: web.Application):
        if dispatch:
            runtime.scheduler = build_scheduler(runtime)
            await runtime.scheduler.start()
        runtime.tasks.append(asyncio.create_task(_forget_old_callbacks(services), name="dedupe-cleanup"))
        yield
        if runtime.scheduler is not None:
            await runtime.scheduler.stop()
        for task in runtime.tasks:
            task.cancel()
        for task in runtime.tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await client.close()
        if webhook is not None:
            await webhook.close()
        await services.db.dispose()
        runtime.sync_db.dispose()

    app.cleanup_ctx.append(lifecycle)
    return app


def build_scheduler(runtime: Runtime):
    """The service's jobs (bot.scheduler): nightly rescore, digest, weekly tier report, overdue
    watch, dispatch."""
    from bot.rescore import NothingToScore, full_rescore, rescore_pending
    from bot.scheduler import Scheduler, last_fire
    from notifications.digest import queue_digests, queue_overdue_notices
    from notifications.outbox import prune_outbox
    from notifications.reports import queue_tier_reports
    from notifications.playbook import PlaybookSettings
    from notifications.tickets import TicketSettings, process_tickets

    config = runtime.config
    engine = runtime.services.db
    scheduler = Scheduler(engine, config.timezone)
    settings = PlaybookSettings.from_config(config)

    def scored_since_slot(today) -> bool:
        """A full run as of today that started after this slot's time (someone ran `score`,
        or `make run` scored the demo, while the service was down) makes the slot's run a repeat."""
        from storage.db import as_utc
        from storage.scores import latest_run

        slot = last_fire(scheduler.cron_jobs["full_rescore"].trigger, datetime.now(timezone.utc))
        with runtime.sync_db.connect() as connection:
            run = latest_run(connection)
        return slot is not None and run is not None and run.as_of >= today and as_utc(run.started_at) >= slot

    async def nightly() -> None:
        await nightly_rescore()
        if config.retention.outbox_days:
            since = datetime.now(timezone.utc) - timedelta(days=config.retention.outbox_days)
            pruned = await asyncio.to_thread(prune_outbox, runtime.sync_db, since)
            if pruned:
                logger.info("outbox: %s sent or failed rows older than %s days deleted", pruned,
                            config.retention.outbox_days)

    async def nightly_rescore() -> None:
        today = datetime.now(config.tz).date()
        if await asyncio.to_thread(scored_since_slot, today):
            logger.info("nightly rescore: a full run as of %s started after this slot's time; not run again", today)
            return
        try:
            outcome, _ = await asyncio.to_thread(full_rescore, runtime.sync_db, config, today)
        except NothingToScore:
            logger.info("nightly rescore: no customers yet")
            return
        logger.info("nightly rescore: run %s, %s customers, %s tier changes", outcome.run_id, outcome.customers,
                    outcome.tier_changes)
        runtime.wake_dispatcher()

    async def digest() -> None:
        if await queue_digests(engine, settings, datetime.now(timezone.utc)):
            runtime.wake_dispatcher()

    async def tier_report() -> None:
        if await queue_tier_reports(engine, settings, datetime.now(timezone.utc)):
            runtime.wake_dispatcher()

    async def watch() -> None:
        # Rescores an import or API call committed data for but did not finish (a stop in between).
        caught_up = await asyncio.to_thread(rescore_pending, runtime.sync_db, config, datetime.now(config.tz).date())
        if caught_up is not None:
            logger.info("caught up on %s pending rescores: %s tier changes", caught_up.customers,
                        caught_up.tier_changes)
        if await queue_overdue_notices(engine, settings, datetime.now(timezone.utc)) or caught_up is not None:
            runtime.wake_dispatcher()

    dispatcher = runtime.dispatcher

    async def dispatch_pass() -> float:
        # One dispatcher at a time keeps WeCom's per-member limits whole across processes.
        handled = await dispatcher.run_once()
        return 0.0 if handled else await dispatcher.next_due_in(config.scheduler.dispatch_every_seconds)

    tickets = TicketSettings.from_config(config)

    async def tickets_pass() -> float:
        outcome = await asyncio.to_thread(process_tickets, runtime.sync_db, tickets, datetime.now(timezone.utc))
        if outcome.routed or outcome.assigned or outcome.warned or outcome.breached or outcome.rerouted:
            runtime.wake_dispatcher()
        return config.tickets.watch_every_seconds

    scheduler.cron("full_rescore", config.scheduler.full_rescore, nightly)
    scheduler.cron("digest", config.scheduler.digest, digest)
    if config.scheduler.tier_report.strip().lower() != "off":
        scheduler.cron("tier_report", config.scheduler.tier_report, tier_report)
    scheduler.every("watch", config.scheduler.watch_every_minutes * 60, watch)
    scheduler.leased_loop("dispatch", dispatch_pass, dispatcher.wakeup, on_acquire=dispatcher.take_over)
    scheduler.leased_loop("tickets", tickets_pass, runtime.tickets_wakeup)
    return scheduler





# How long a stopping service (SIGTERM, Ctrl-C) waits for the requests it is answering.
SHUTDOWN_GRACE_SECONDS = 30


async def serve(config: Config, host: str, port: int, sandbox_users: list[str] | None = None,
                sandbox_directory: Callable[[str], bool] | None = None) -> None:
    """Run until interrupted. Without WeCom credentials: the sandbox (see bot.sandbox.Sandbox
    for its users and directory)."""
    from bot.sandbox import Sandbox

    sandbox = None
    if config.wecom.has_credentials:
        identity = configured_identity(config)
    else:
        identity = sandbox_identity()
        sandbox = Sandbox(identity, sandbox_users or [], sandbox_directory)
        identity.api_base = await sandbox.start_emulator()
    app = create_app(config, identity, sandbox=sandbox)
    if sandbox is not None:
        sandbox.service_url = f"http://127.0.0.1:{port}"
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=SHUTDOWN_GRACE_SECONDS)
    await runner.setup()  # starts the scheduler: cleaned up below even if the port is taken
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
        if sandbox is not None:
            logger.info("sandbox: open http://%s:%s/sandbox — WeCom emulator at %s", host if host != "0.0.0.0" else
                        "127.0.0.1", port, identity.api_base)
        else:
            logger.info("serving WeCom callbacks at http://%s:%s/wecom/callback", host, port)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        await stop.wait()
        logger.info("stopping: no new requests; those in flight get up to %s s", SHUTDOWN_GRACE_SECONDS)
    finally:
        # Requests in flight (an ingest and its rescore) finish; then the scheduler stops
        # and gives up its leases, so another process takes the jobs over at once.
        await runner.cleanup()
        if sandbox is not None:
            await sandbox.stop_emulator()
