"""`python -m bot bench dispatch`: the outbox dispatcher against the WeCom emulator.

1. Throughput (real clock). The emulator runs in a child process, served over real HTTP,
   so handling WeCom's side does not take CPU from the dispatcher's process on this
   2-core machine. N distinct messages to M members are queued at once and dispatched
   until all are 'sent'; the same messages sent by a bare sequential loop of
   WeComClient.send_message calls are the baseline (what the outbox costs). A broadcast
   (one content to every member) shows identical messages merged into few calls.
2. Per-member limits (fake clock shared by dispatcher and emulator, so minutes of WeCom
   time take seconds): many messages to one member, and many members' messages against
   the app-wide call cap. The clock moves as the service's dispatch loop sleeps: to the
   next due row, at most 1 s at a time.
3. Incremental latency (DESIGN §6): a demo company imported and scored, the service
   (bot.app.create_app, scheduler and dispatcher on) in a child process, the emulator in
   this one; K times, big orders for one question-mark or dog customer POSTed to
   /api/v1/orders, timed until the emulator receives the owner's card. Send time and
   arrival are taken by the same clock, in this process.
"""

from __future__ import annotations

import asyncio
import json
import math
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import aiohttp

from bot.config import PROJECT_ROOT

API_TOKEN = "bench-api-token"
CALLBACK_TOKEN = "benchtoken"
AES_KEY = "kWxPEV2UEDyxWpmPdKC3F4dgPDmOvfKX1HGnEUDS1aR"
# Duplicate check as the dispatcher asks for it, so the baseline's requests are the same.
DUPLICATE_CHECK = {"enable_duplicate_check": True, "duplicate_check_interval": 4 * 3600}
# A fixed start for the fake clock: a Monday morning in Shanghai.
FAKE_START = datetime(2026, 11, 23, 2, 0, tzinfo=timezone.utc)


# ---------------------------------------------------------------------------- helpers

def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_for_port(port: int, process: subprocess.Popen, what: str, log: Path | None = None,
                   seconds: float = 60) -> None:
    deadline = time.time() + seconds
    while time.time() < deadline:
        if process.poll() is not None:
            break
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    process.kill()
    detail = log.read_text(errors="replace")[-3000:] if log and log.exists() else ""
    raise RuntimeError(f"{what} did not start{': ' + detail if detail else ''}")


def _stop(process: subprocess.Popen) -> None:
    process.send_signal(signal.SIGINT)
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def _peak_rss_mb(pid: int | str = "self") -> float:
    """VmHWM: the peak resident set since start or since _reset_peak_rss."""
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmHWM:\s+(\d+)", status).group(1)) / 1024


def _reset_peak_rss() -> None:
    # Linux: writing 5 to clear_refs resets VmHWM to the current RSS, so each case's peak
    # is its own and not the largest of everything this process did before.
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def _fresh_sqlite(path: Path) -> str:
    from bench.pipeline import fresh_database_env
    from storage.db import upgrade_schema

    url = fresh_database_env(None, path)["TIERBOT_DATABASE_URL"]
    upgrade_schema(url)
    return url


def _remove_sqlite(path: Path) -> None:
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)


def _percentile(values: list[float], share: float) -> float:
    """Nearest rank: the smallest value with at least `share` of them at or below it."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    return ordered[max(0, math.ceil(share * len(ordered)) - 1)]


def _busiest(times: list[float], seconds: float) -> int:
    """Most events inside any window [t, t + seconds)."""
    ordered = sorted(times)
    best, start = 0, 0
    for end, moment in enumerate(ordered):
        while ordered[start] <= moment - seconds:
            start += 1
        best = max(best, end - start + 1)
    return best


def _earliest_span(count: int, windows: list[tuple[int, float]]) -> float:
    """Seconds from the first to the last of `count` sends made as early as the sliding
    windows (limit, seconds) allow: the theoretical minimum for one member (or the app)."""
    times: list[float] = []
    for index in range(count):
        moment = times[-1] if times else 0.0
        for limit, seconds in windows:
            if index >= limit:
                moment = max(moment, times[index - limit] + seconds)
        times.append(moment)
    return times[-1] if times else 0.0


class _TimedClient:
    """The WeComClient the dispatcher is given, keeping the time spent waiting on WeCom."""

    def __init__(self, client):
        self.client = client
        self.seconds = 0.0
        self.calls = 0

    async def send_message(self, payload, **options):
        started = time.perf_counter()
        try:
            return await self.client.send_message(payload, **options)
        finally:
            self.seconds += time.perf_counter() - started
            self.calls += 1

    async def update_template_card(self, *args, **options):
        return await self.client.update_template_card(*args, **options)


def _insert_rows(url: str, rows: list[dict]) -> None:
    from storage.db import make_engine
    from storage.models import OutboxMessage

    engine = make_engine(url)
    with engine.begin() as connection:
        for start in range(0, len(rows), 5000):
            connection.execute(OutboxMessage.__table__.insert(), rows[start:start + 5000])
    engine.dispose()


async def _status_counts(engine) -> dict[str, int]:
    from sqlalchemy import func, select

    from storage.models import OutboxMessage

    async with engine.connect() as connection:
        rows = (await connection.execute(select(OutboxMessage.status, func.count())
                                         .group_by(OutboxMessage.status))).all()
    return {status: count for status, count in rows}


# ---------------------------------------------------------------------------- 1. throughput

def serve_emulator(port: int, members: int) -> None:
    """Entry point of the emulator's process for the throughput part."""
    from aiohttp import web

    from bot.emulator import EMULATOR, create_emulator_app

    app = create_emulator_app(known_users=[_member(i) for i in range(members)])
    state = app[EMULATOR]

    # Two routes for the bench: its records as figures, and a reset between cases (the
    # emulator's middleware turns a handler's dict into the JSON answer).
    async def stats(_request):
        sends = state.requests_to("message/send")
        recipients = [len(str((request.json or {}).get("touser", "")).split("|")) for request in sends]
        return {"errcode": 0, "delivered": len(state.delivered), "dropped": len(state.dropped_by_rate_limit),
                "deduplicated": len(state.deduplicated), "calls": len(sends),
                "failed_calls": sum(1 for request in sends if request.errcode != 0),
                "largest_call": max(recipients, default=0)}

    async def reset(_request):
        state.clear()
        return {"errcode": 0}

    app.router.add_get("/bench/stats", stats)
    app.router.add_post("/bench/reset", reset)
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None)


def _member(index: int) -> str:
    return f"m{index:05d}"


@dataclass
class ThroughputCase:
    name: str
    messages: int
    members: int
    calls: int
    seconds: float
    peak_rss_mb: float
    delivered: int
    dropped: int
    sent_rows: int
    largest_call: int
    wecom_seconds: float = 0.0  # of `seconds`, waiting on WeCom's answers
    passes: int = 0

    @property
    def per_second(self) -> float:
        return self.messages / self.seconds if self.seconds else float("nan")

    @property
    def calls_per_second(self) -> float:
        return self.calls / self.seconds if self.seconds else float("nan")


async def _emulator_stats(session: aiohttp.ClientSession, base: str) -> dict[str, Any]:
    async with session.get(f"{base}/bench/stats") as response:
        return await response.json()


async def _emulator_reset(session: aiohttp.ClientSession, base: str) -> None:
    async with session.post(f"{base}/bench/reset") as response:
        await response.read()


def _distinct_rows(messages: int, members: int, now: datetime) -> list[dict]:
    from notifications.outbox import outbox_row

    # Message i to member i mod M: with N = 2M every member gets 2, far below 30 a minute.
    return [outbox_row([_member(i % members)], "text", {"content": f"基准消息 {i}：客户分层有变化，请查看"},
                       origin=f"bench:{i}", kind="reply", now=now) for i in range(messages)]


async def _dispatch_case(name: str, url: str, rows: list[dict], session: aiohttp.ClientSession, base: str,
                         pushes) -> ThroughputCase:
    from bot.emulator import SANDBOX_AGENT_ID, SANDBOX_CORP_ID, SANDBOX_SECRET
    from bot.wecom_client import WeComClient
    from notifications.dispatcher import Dispatcher
    from storage.db import make_async_engine

    _insert_rows(url, rows)
    await _emulator_reset(session, base)
    engine = make_async_engine(url)
    client = _TimedClient(WeComClient(session, SANDBOX_CORP_ID, SANDBOX_SECRET, SANDBOX_AGENT_ID, base))
    await client.client.get_token()  # start-up, as the service does it once
    dispatcher = Dispatcher(engine, client, pushes=pushes, language="zh")
    await dispatcher.take_over()
    _reset_peak_rss()
    started = time.perf_counter()
    passes = 0
    while await dispatcher.run_once():
        passes += 1
    seconds = time.perf_counter() - started
    peak = _peak_rss_mb()
    counts = await _status_counts(engine)
    await engine.dispose()
    stats = await _emulator_stats(session, base)
    members = len({row["touser"] for row in rows})
    return ThroughputCase(name, len(rows), members, stats["calls"], seconds, peak, stats["delivered"],
                          stats["dropped"], counts.get("sent", 0), stats["largest_call"], client.seconds, passes)


async def _baseline_case(rows: list[dict], session: aiohttp.ClientSession, base: str) -> ThroughputCase:
    from bot.emulator import SANDBOX_AGENT_ID, SANDBOX_CORP_ID, SANDBOX_SECRET
    from bot.wecom_client import WeComClient

    await _emulator_reset(session, base)
    client = WeComClient(session, SANDBOX_CORP_ID, SANDBOX_SECRET, SANDBOX_AGENT_ID, base)
    await client.get_token()
    requests = [{**row["payload"], "touser": row["touser"]} for row in rows]
    _reset_peak_rss()
    started = time.perf_counter()
    for request in requests:
        await client.send_message(request, **DUPLICATE_CHECK)
    seconds = time.perf_counter() - started
    peak = _peak_rss_mb()
    stats = await _emulator_stats(session, base)
    return ThroughputCase("bare send_message loop", len(rows), len({row["touser"] for row in rows}),
                          stats["calls"], seconds, peak, stats["delivered"], stats["dropped"], stats["delivered"],
                          stats["largest_call"], seconds, 1)


async def _throughput_async(messages: int, members: int, broadcast: int, work_dir: Path, base: str
                            ) -> list[ThroughputCase]:
    from notifications.outbox import outbox_row
    from notifications.settings import PushesConfig

    # WeCom's app-wide cap (1000 calls a minute) would make 5,000 distinct messages take
    # 4 minutes by design (part 2 checks the cap is kept). Raised here so the figure is
    # the dispatcher's own speed: how far above the cap it can go.
    uncapped = PushesConfig(app_calls_per_minute=10_000_000)
    now = datetime.now(timezone.utc)
    rows = _distinct_rows(messages, members, now)
    cases = []
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1)) as session:
        cases.append(await _baseline_case(rows, session, base))
        cases.append(await _dispatch_case("dispatcher (outbox)", _fresh_sqlite(work_dir / "dispatch-distinct.db"),
                                          rows, session, base, uncapped))
        if broadcast:
            same = [outbox_row([_member(i)], "text", {"content": "系统将于今晚 22:00 维护，届时暂停推送"},
                               origin=f"broadcast:{i}", kind="reply", now=now) for i in range(broadcast)]
            cases.append(await _dispatch_case("dispatcher, broadcast", _fresh_sqlite(work_dir / "dispatch-same.db"),
                                              same, session, base, PushesConfig()))
    return cases


def run_throughput(messages: int, members: int, work_dir: Path, broadcast: int | None = None
                   ) -> list[ThroughputCase]:
    """Baseline, distinct messages, broadcast (to `broadcast` members, default all)."""
    work_dir.mkdir(parents=True, exist_ok=True)
    broadcast = members if broadcast is None else broadcast
    port = _free_port()
    log = work_dir / "dispatch-emulator.log"
    code = f"from bench.dispatch import serve_emulator; serve_emulator({port}, {max(members, broadcast)})"
    with open(log, "wb") as err:
        emulator = subprocess.Popen([sys.executable, "-c", code], cwd=PROJECT_ROOT, stdout=subprocess.DEVNULL,
                                    stderr=err)
    try:
        _wait_for_port(port, emulator, "emulator", log)
        return asyncio.run(_throughput_async(messages, members, broadcast, work_dir, f"http://127.0.0.1:{port}"))
    finally:
        _stop(emulator)
        for name in ("dispatch-distinct.db", "dispatch-same.db"):
            _remove_sqlite(work_dir / name)


def print_throughput(cases: list[ThroughputCase]) -> None:
    print(f"{'':<26} {'messages':>9} {'members':>8} {'WeCom calls':>11} {'seconds':>8} {'msg/s':>7} "
          f"{'calls/s':>8} {'peak RSS':>9} {'delivered':>10} {'dropped':>8}")
    for case in cases:
        print(f"{case.name:<26} {case.messages:>9,} {case.members:>8,} {case.calls:>11,} {case.seconds:>8.2f} "
              f"{case.per_second:>7,.0f} {case.calls_per_second:>8,.0f} {case.peak_rss_mb:>6.0f} MB "
              f"{case.delivered:>10,} {case.dropped:>8,}")
    base = next((case for case in cases if case.name.startswith("bare")), None)
    outbox = next((case for case in cases if case.name == "dispatcher (outbox)"), None)
    if base and outbox:
        extra = (outbox.seconds - base.seconds) / outbox.messages * 1000
        print(f"  outbox cost: {outbox.seconds / base.seconds:.1f}× the bare loop, +{extra:.2f} ms a message "
              f"({outbox.wecom_seconds:.2f} s of the {outbox.seconds:.2f} s waiting on WeCom; "
              f"{outbox.passes} passes of ≤ 500 rows)")
    for case in cases:
        if "broadcast" in case.name:
            print(f"  broadcast: {case.messages:,} messages in {case.calls} calls (largest {case.largest_call:,} "
                  f"recipients; WeCom allows 1,000), {case.sent_rows:,} rows 'sent'")
    sys.stdout.flush()


# ---------------------------------------------------------------------------- 2. limits

@dataclass
class LimitCase:
    name: str
    messages: int
    members: int
    delivered: int
    dropped: int
    busiest_minute: int  # the busiest member's most messages in any 60 s
    busiest_hour: int
    calls: int
    busiest_calls_minute: int  # the app's most message/send calls in any 60 s
    simulated_seconds: float  # queueing → last delivery, WeCom's time
    minimum_seconds: float
    real_seconds: float
    passes: int
    left_pending: int


async def limit_case(name: str, members: list[str], per_member: int, work_dir: Path, *,
                     step: float = 1.0) -> LimitCase:
    """`per_member` distinct messages to each of `members`, all queued at once; passes run
    while a fake clock moves at most `step` seconds at a time, until every row is sent."""
    from aiohttp import web

    from bot.emulator import (EMULATOR, MEMBER_LIMIT_PER_HOUR, MEMBER_LIMIT_PER_MINUTE, SANDBOX_AGENT_ID,
                              SANDBOX_CORP_ID, SANDBOX_SECRET, SharedClock, create_emulator_app)
    from bot.wecom_client import WeComClient
    from notifications.dispatcher import Dispatcher
    from notifications.outbox import outbox_row
    from notifications.settings import PushesConfig
    from storage.db import make_async_engine

    clock = SharedClock(FAKE_START)
    work_dir.mkdir(parents=True, exist_ok=True)
    database = work_dir / "dispatch-limits.db"
    url = _fresh_sqlite(database)
    rows = [outbox_row([member], "text", {"content": f"任务提醒 {n} · {member}"}, origin=f"limit:{member}:{n}",
                       kind="task", now=clock.utc()) for n in range(per_member) for member in members]
    _insert_rows(url, rows)
    app = create_emulator_app(known_users=members, clock=clock)
    state = app[EMULATOR]
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    base = f"http://127.0.0.1:{runner.addresses[0][1]}"
    engine = make_async_engine(url)
    pushes = PushesConfig()
    queued_at = clock()
    started = time.perf_counter()
    passes = 0
    try:
        async with aiohttp.ClientSession() as session:
            client = WeComClient(session, SANDBOX_CORP_ID, SANDBOX_SECRET, SANDBOX_AGENT_ID, base, clock=clock)
            dispatcher = Dispatcher(engine, client, pushes=pushes, language="zh", clock=clock.utc)
            # Far more WeCom time than the limits need: a dispatcher that stalls ends the case.
            give_up = queued_at + 2 * _earliest_span(per_member, [(MEMBER_LIMIT_PER_MINUTE, 60),
                                                                  (MEMBER_LIMIT_PER_HOUR, 3600)]) + 3600
            while clock() < give_up:
                while await dispatcher.run_once():
                    passes += 1
                passes += 1
                counts = await _status_counts(engine)
                if not counts.get("pending") and not counts.get("sending"):
                    break
                # As the service's loop sleeps: until the next row is due, but at most `step`.
                clock.advance(max(await dispatcher.next_due_in(step), 0.001))
        real = time.perf_counter() - started
        counts = await _status_counts(engine)
    finally:
        await engine.dispose()
        await runner.cleanup()
        _remove_sqlite(database)
    by_member: dict[str, list[float]] = {}
    for message in state.delivered:
        by_member.setdefault(message.userid, []).append(message.received_at)
    call_times = [request.received_at for request in state.requests_to("message/send")]
    last = max((message.received_at for message in state.delivered), default=queued_at)
    if len(members) == 1:
        minimum = _earliest_span(per_member, [(pushes.member_per_minute, 60), (pushes.member_per_hour, 3600)])
    else:
        # Distinct messages are one call each: the app's cap is the limit.
        minimum = _earliest_span(len(rows), [(pushes.app_calls_per_minute, 60)])
    return LimitCase(name, len(rows), len(members), len(state.delivered), len(state.dropped_by_rate_limit),
                     max((_busiest(times, 60) for times in by_member.values()), default=0),
                     max((_busiest(times, 3600) for times in by_member.values()), default=0),
                     len(call_times), _busiest(call_times, 60), last - queued_at, minimum, real, passes,
                     counts.get("pending", 0) + counts.get("sending", 0))


def run_limits(one_member: int, hourly: int, app_cap: int, work_dir: Path) -> list[LimitCase]:
    async def run() -> list[LimitCase]:
        cases = [await limit_case(f"{one_member:,} to one member", ["rep_bench"], one_member, work_dir)]
        if hourly:
            cases.append(await limit_case(f"{hourly:,} to one member", ["rep_bench"], hourly, work_dir))
        if app_cap:
            cases.append(await limit_case(f"{app_cap:,} members, 1 each", [_member(i) for i in range(app_cap)], 1,
                                          work_dir))
        return cases

    return asyncio.run(run())


def print_limits(cases: list[LimitCase]) -> None:
    print(f"{'':<24} {'delivered':>11} {'dropped':>8} {'busiest min':>12} {'busiest hour':>13} "
          f"{'calls':>6} {'busiest calls/min':>18} {'WeCom time':>11} {'minimum':>9} {'real s':>7} {'passes':>7}")
    for case in cases:
        delivered = f"{case.delivered:,}/{case.messages:,}"
        print(f"{case.name:<24} {delivered:>11} {case.dropped:>8,} "
              f"{case.busiest_minute:>5} ({case.busiest_minute / 30:>4.0%}) "
              f"{case.busiest_hour:>6} ({case.busiest_hour / 1000:>4.0%}) "
              f"{case.calls:>6,} {case.busiest_calls_minute:>18,} {case.simulated_seconds / 60:>7.1f} min "
              f"{case.minimum_seconds / 60:>5.1f} min {case.real_seconds:>7.1f} {case.passes:>7,}")
        if case.left_pending:
            print(f"  {case.name}: {case.left_pending:,} rows were still not sent when the case gave up")
    print("  busiest min/hour: one member's most messages in any 60 s / 3,600 s (share of WeCom's 30/min, 1000/h);"
          " minimum: the earliest the last one can go under those windows (the app's 1,000 calls/min for the"
          " many-member case)")
    sys.stdout.flush()


# ---------------------------------------------------------------------------- 3. latency

def bench_config(database_url: str, *, api_token: str = API_TOKEN):
    """The project's config with what the bench needs: the API token, no quiet hours
    (figures must not depend on the time of day), and the nightly rescore and morning
    digest moved 12 hours away, so neither runs (or catches up) during the bench."""
    from bot.config import load_config
    from notifications.settings import QuietHours

    config = load_config(None, environ={"TIERBOT_DATABASE_URL": database_url, "TIERBOT_API_TOKEN": api_token})
    later = datetime.now(config.tz) + timedelta(hours=12)
    cron = f"{later.minute} {later.hour} * * *"
    return config.model_copy(update={
        "pushes": config.pushes.model_copy(update={"quiet_hours": QuietHours(start="00:00", end="00:00")}),
        "scheduler": config.scheduler.model_copy(update={"full_rescore": cron, "digest": cron}),
    })


def serve_service(port: int, database_url: str, api_base: str) -> None:
    """Entry point of the service's process for the latency part: the real app, with its
    scheduler and dispatcher, talking to the emulator at `api_base`."""
    import logging

    from aiohttp import web

    from bot.app import WeComIdentity, create_app
    from bot.emulator import SANDBOX_AGENT_ID, SANDBOX_CORP_ID, SANDBOX_SECRET

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    identity = WeComIdentity(SANDBOX_CORP_ID, SANDBOX_AGENT_ID, SANDBOX_SECRET, CALLBACK_TOKEN, AES_KEY, api_base)
    app = create_app(bench_config(database_url), identity, dispatch=True)
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None)


@dataclass
class LatencyResult:
    customers: int
    orders: int
    users: int
    setup_seconds: float
    startup_pushes: int
    tried: int
    moved: int
    latencies: list[float] = field(default_factory=list)  # POST sent → card at the emulator, seconds
    answers: list[float] = field(default_factory=list)  # POST sent → API answered
    after_answer: list[float] = field(default_factory=list)  # API answered → card at the emulator
    missing: int = 0  # moved, but no card within the timeout
    retried: int = 0  # POSTs answered 500 and sent again
    unmoved: list[str] = field(default_factory=list)
    held: int = 0  # of those, held back by the tier hysteresis (a pending tier)
    msgtypes: dict[str, int] = field(default_factory=dict)
    transitions: dict[str, int] = field(default_factory=dict)
    service_peak_rss_mb: float = 0.0


def _prepare_company(customers: int, work_dir: Path, today: date) -> tuple[str, Any, dict]:
    from bot.rescore import full_rescore
    from scoring.generator import generate_company
    from storage.db import make_engine
    from storage.importer import run_import

    data = work_dir / "dispatch-company"
    shutil.rmtree(data, ignore_errors=True)
    # Generated as of today: the API scores "today", so the data must not look stale.
    counts = generate_company(data, customers=customers, seed=42, as_of=today)
    url = _fresh_sqlite(work_dir / "dispatch-latency.db")
    config = bench_config(url)
    engine = make_engine(url)
    run_import(engine, [data], timezone_name=config.timezone, batch_rows=config.import_.batch_rows)
    full_rescore(engine, config, today)
    engine.dispose()
    shutil.rmtree(data, ignore_errors=True)
    return url, config, counts.__dict__


def _picks(url: str, count: int, seed: int = 5) -> tuple[list[dict], float, list[str]]:
    """Question-mark and dog customers with an owner, different owners first; the largest
    12-month revenue of the population; every userid."""
    from sqlalchemy import func, select

    from storage.db import make_engine
    from storage.models import Customer, ScoreRun, ScoreSnapshot, User

    engine = make_engine(url)
    with engine.connect() as connection:
        candidates = [dict(row._mapping) for row in connection.execute(
            select(Customer.customer_id, Customer.name, Customer.owner_userid, Customer.tier)
            .where(Customer.tier.in_(("question_mark", "dog")), Customer.owner_userid.is_not(None))
            .order_by(Customer.customer_id))]
        full_run = connection.execute(select(func.max(ScoreRun.id)).where(ScoreRun.kind == "full")).scalar_one()
        top = connection.execute(select(func.max(ScoreSnapshot.revenue_12m))
                                 .where(ScoreSnapshot.run_id == full_run)).scalar_one()
        users = list(connection.execute(select(User.userid)).scalars())
    engine.dispose()
    random.Random(seed).shuffle(candidates)
    chosen, owners = [], set()
    for candidate in candidates:  # one per owner while they last: no rep gets a summary instead of a card
        if candidate["owner_userid"] not in owners:
            owners.add(candidate["owner_userid"])
            chosen.append(candidate)
    chosen += [candidate for candidate in candidates if candidate not in chosen]
    return chosen[:count], float(top or 1_000_000), users


def _big_orders(customer_id: str, n: int, top_revenue: float, today: date) -> list[dict]:
    from scoring.generator import MODULES

    # Six upsell orders over the last half year, each as large as the biggest customer's
    # whole year: the customer's current value jumps far past the boundary (no hysteresis hold).
    amount = round(top_revenue, 2)
    return [{"order_id": f"BENCH-{n}-{k}", "customer_id": customer_id,
             "order_date": (today - timedelta(days=15 + 30 * k)).isoformat(), "amount": amount,
             "cost": round(amount * 0.25, 2), "product_line": MODULES[k % len(MODULES)], "kind": "upsell"}
            for k in range(6)]


async def _quiet_outbox(url: str, seconds: float = 120) -> None:
    """Wait until the service has sent everything due (the first run's tasks and alerts)."""
    from sqlalchemy import func, or_, select

    from storage.db import make_async_engine
    from storage.models import OutboxMessage

    engine = make_async_engine(url)
    outbox = OutboxMessage.__table__
    deadline = time.perf_counter() + seconds
    calm = 0
    try:
        while time.perf_counter() < deadline:
            soon = datetime.now(timezone.utc) + timedelta(seconds=5)
            async with engine.connect() as connection:
                busy = (await connection.execute(select(func.count()).select_from(outbox).where(
                    (outbox.c.status == "sending") | ((outbox.c.status == "pending")
                                                      & or_(outbox.c.not_before.is_(None),
                                                            outbox.c.not_before <= soon))))).scalar_one()
            calm = calm + 1 if busy == 0 else 0
            if calm >= 2:
                return
            await asyncio.sleep(0.25)
    finally:
        await engine.dispose()
    raise RuntimeError("the service did not send the first run's messages in time")


async def _latency_async(url: str, users: list[str], picks: list[dict], top: float, today: date,
                         result: LatencyResult, work_dir: Path, timeout: float) -> None:
    from aiohttp import web

    from bot.emulator import EMULATOR, create_emulator_app

    app = create_emulator_app(known_users=users)
    state = app[EMULATOR]
    waiting: dict[str, tuple[str, asyncio.Future]] = {}

    def listener(message) -> None:
        # Called by the emulator as it delivers: the moment the card reaches "WeCom".
        wanted = waiting.get(message.userid)
        if wanted is None or wanted[1].done():
            return
        needle, future = wanted
        if needle in json.dumps(message.payload, ensure_ascii=False):
            future.set_result((time.perf_counter(), message.msgtype))

    state.listeners.append(listener)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    api_base = f"http://127.0.0.1:{runner.addresses[0][1]}"
    port = _free_port()
    log = work_dir / "dispatch-service.log"
    code = f"from bench.dispatch import serve_service; serve_service({port}, {url!r}, {api_base!r})"
    with open(log, "wb") as err:
        service = subprocess.Popen([sys.executable, "-c", code], cwd=PROJECT_ROOT, stdout=subprocess.DEVNULL,
                                   stderr=err)
    try:
        await asyncio.to_thread(_wait_for_port, port, service, "service", log)
        await _quiet_outbox(url)
        result.startup_pushes = len(state.delivered)
        loop = asyncio.get_running_loop()
        async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {API_TOKEN}"}) as session:
            for n, pick in enumerate(picks):
                owner = pick["owner_userid"]
                future = loop.create_future()
                # The card's title carries the name, clipped to 26 characters in all.
                waiting[owner] = (pick["name"][:8], future)
                orders = _big_orders(pick["customer_id"], n, top, today)
                sent = time.perf_counter()
                body = await _post_orders(session, f"http://127.0.0.1:{port}/api/v1/orders", orders, result)
                answered = time.perf_counter()
                result.tried += 1
                result.answers.append(answered - sent)
                if not body.get("rescored", {}).get("tier_changes"):
                    waiting.pop(owner, None)
                    result.unmoved.append(pick["customer_id"])
                    continue
                result.moved += 1
                move = f"{pick['tier']} → ?"
                try:
                    arrived, msgtype = await asyncio.wait_for(future, timeout)
                except asyncio.TimeoutError:
                    result.missing += 1
                else:
                    result.latencies.append(arrived - sent)
                    result.after_answer.append(arrived - answered)
                    result.msgtypes[msgtype] = result.msgtypes.get(msgtype, 0) + 1
                    move = f"{pick['tier']} → {_new_tier(state, owner)}"
                result.transitions[move] = result.transitions.get(move, 0) + 1
                waiting.pop(owner, None)
        result.service_peak_rss_mb = _peak_rss_mb(service.pid)
    finally:
        _stop(service)
        await runner.cleanup()


async def _post_orders(session: aiohttp.ClientSession, url: str, orders: list[dict], result: LatencyResult,
                       attempts: int = 5) -> dict:
    """POST, and again after a 500 (the orders are idempotent by id): on SQLite the API's
    import can fail with "database is locked" while the dispatcher writes. Each retry is
    counted; the latency still runs from the first attempt, as the caller waits it out."""
    for attempt in range(attempts):
        async with session.post(url, json=orders) as response:
            text = await response.text()
            if response.status == 200:
                return json.loads(text)
            if response.status != 500 or attempt == attempts - 1:
                raise RuntimeError(f"POST /api/v1/orders answered {response.status}: {text[:500]}")
            result.retried += 1
    raise AssertionError("unreachable")


def _new_tier(state, owner: str) -> str:
    from handlers.text import tier_name

    names = {tier_name(tier, "zh"): tier for tier in ("star", "cash_cow", "question_mark", "dog")}
    for message in reversed(state.messages_for(owner)):
        if message.msgtype == "template_card":
            desc = message.payload["template_card"].get("main_title", {}).get("desc", "")
            return names.get(desc.split("→")[-1].strip(), "?")
    return "?"


def run_latency(customers: int, changes: int, work_dir: Path, timeout: float = 30.0) -> LatencyResult:
    from bot.config import load_config

    work_dir.mkdir(parents=True, exist_ok=True)
    today = datetime.now(load_config(None, environ={}).tz).date()
    started = time.perf_counter()
    url, _config, counts = _prepare_company(customers, work_dir, today)
    picks, top, users = _picks(url, changes)
    result = LatencyResult(counts["customers"], counts["orders"], len(users), time.perf_counter() - started, 0, 0, 0)
    try:
        asyncio.run(_latency_async(url, users, picks, top, today, result, work_dir, timeout))
        result.held = _pending_tiers(url, result.unmoved)
    finally:
        _remove_sqlite(work_dir / "dispatch-latency.db")
    return result


def _pending_tiers(url: str, customer_ids: list[str]) -> int:
    """How many of these customers the hysteresis holds: a new tier pending another run
    (DESIGN: borderline customers do not flap), not a failure to score."""
    from sqlalchemy import func, select

    from storage.db import make_engine
    from storage.models import ScoreRun, ScoreSnapshot

    if not customer_ids:
        return 0
    engine = make_engine(url)
    with engine.connect() as connection:
        full_run = connection.execute(select(func.max(ScoreRun.id)).where(ScoreRun.kind == "full")).scalar_one()
        held = connection.execute(select(func.count()).select_from(ScoreSnapshot).where(
            ScoreSnapshot.run_id == full_run, ScoreSnapshot.customer_id.in_(customer_ids),
            ScoreSnapshot.pending_tier.is_not(None))).scalar_one()
    engine.dispose()
    return held


def print_latency(result: LatencyResult) -> None:
    ms = [value * 1000 for value in result.latencies]
    answers = [value * 1000 for value in result.answers]
    print(f"data: {result.customers:,} customers, {result.orders:,} orders, {result.users} users (SQLite), generated, "
          f"imported and scored in {result.setup_seconds:.1f} s; the first run's {result.startup_pushes} pushes "
          f"were sent before timing")
    print(f"{'':<34} {'n':>4} {'p50 ms':>8} {'p95 ms':>8} {'max ms':>8}")
    print(f"{'POST → API answered':<34} {len(answers):>4} {_percentile(answers, 0.5):>8.0f} "
          f"{_percentile(answers, 0.95):>8.0f} {max(answers, default=float('nan')):>8.0f}")
    dispatch = [value * 1000 for value in result.after_answer]
    print(f"{'API answered → card (dispatch)':<34} {len(dispatch):>4} {_percentile(dispatch, 0.5):>8.1f} "
          f"{_percentile(dispatch, 0.95):>8.1f} {max(dispatch, default=float('nan')):>8.1f}")
    print(f"{'POST → card at the WeCom API':<34} {len(ms):>4} {_percentile(ms, 0.5):>8.0f} "
          f"{_percentile(ms, 0.95):>8.0f} {max(ms, default=float('nan')):>8.0f}")
    moves = ", ".join(f"{move} {count}" for move, count in sorted(result.transitions.items()))
    print(f"  moved tier: {result.moved}/{result.tried} ({moves}); not moved: {len(result.unmoved)} "
          f"({result.held} held by the hysteresis, new tier pending a second run); "
          f"card missing after the timeout: {result.missing}; "
          f"message types: {', '.join(f'{k} {v}' for k, v in result.msgtypes.items())}; "
          f"service peak RSS {result.service_peak_rss_mb:.0f} MB")
    if result.retried:
        print(f"  {result.retried} POST(s) answered 500 (database is locked, see dispatch-service.log) and were sent "
              f"again; their time counts from the first attempt")
    sys.stdout.flush()


# ---------------------------------------------------------------------------- all

PARTS = ("throughput", "limits", "latency")


def run_dispatch_bench(*, messages: int = 5000, members: int = 2500, one_member: int = 200, hourly: int = 1200,
                       app_cap: int = 1500, customers: int = 2000, changes: int = 20, parts: tuple[str, ...] = PARTS,
                       work_dir: Path = Path("var") / "bench") -> dict[str, Any]:
    import logging

    # One "access_token fetched" line per case is noise between the tables.
    logging.getLogger("bot.wecom_client").setLevel(logging.WARNING)
    results: dict[str, Any] = {}
    started = time.perf_counter()
    if "throughput" in parts:
        print(f"\n1. throughput, real clock: {messages:,} distinct messages to {members:,} members, queued at once; "
              f"broadcast: one content to {members:,} members. Emulator in a child process over HTTP; "
              f"sequential calls; SQLite.")
        results["throughput"] = run_throughput(messages, members, work_dir)
        print_throughput(results["throughput"])
    if "limits" in parts:
        print("\n2. per-member limits, fake clock shared by dispatcher and emulator (in-process, over HTTP); "
              "the clock moves to the next due row, ≤ 1 s a step")
        results["limits"] = run_limits(one_member, hourly, app_cap, work_dir)
        print_limits(results["limits"])
    if "latency" in parts:
        print(f"\n3. incremental: one order batch through POST /api/v1/orders → tier-change card at the WeCom API; "
              f"{changes} customers one after another; service in a child process, emulator here")
        results["latency"] = run_latency(customers, changes, work_dir)
        print_latency(results["latency"])
    _summary(results, time.perf_counter() - started)
    return results


def _summary(results: dict[str, Any], seconds: float) -> None:
    lines = []
    cases = {case.name: case for case in results.get("throughput", [])}
    if "dispatcher (outbox)" in cases:
        outbox, bare = cases["dispatcher (outbox)"], cases["bare send_message loop"]
        lines.append(f"throughput {outbox.per_second:,.0f} msg/s through the outbox vs {bare.per_second:,.0f} bare "
                     f"({outbox.seconds / bare.seconds:.1f}×); WeCom's app cap is {1000 / 60:.0f} calls/s")
    for case in cases.values():
        if "broadcast" in case.name:
            lines.append(f"broadcast {case.messages:,} messages in {case.calls} calls")
    for case in results.get("limits", []):
        lines.append(f"{case.name}: busiest minute {case.busiest_minute}/30, busiest hour {case.busiest_hour}/1000, "
                     f"{case.dropped} dropped, all in {case.simulated_seconds / 60:.1f} min "
                     f"(minimum {case.minimum_seconds / 60:.1f})")
    if "latency" in results:
        latency = results["latency"]
        ms = [value * 1000 for value in latency.latencies]
        lines.append(f"new order → tier-change card p50 {_percentile(ms, 0.5):.0f} ms, p95 "
                     f"{_percentile(ms, 0.95):.0f} ms ({latency.moved}/{latency.tried} moved)")
    print(f"\nsummary ({seconds:.0f} s):")
    for line in lines:
        print(f"  {line}")
    sys.stdout.flush()
