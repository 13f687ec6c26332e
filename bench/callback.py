"""`python -m bot bench callback`: requests/s and p50/p99 latency of the WeCom callback
for real encrypted commands at several concurrencies, against a bare handler that only
checks the signature, decrypts and returns 200 — both served the same way, in their own
process, on this machine.

The load generator is a separate process from the server (aiohttp client, one task per
simulated user, each sending its next message when the previous one is answered).
"""

from __future__ import annotations

import asyncio
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlencode

import aiohttp

from bot.config import PROJECT_ROOT

TOKEN = "benchtoken"
AES_KEY = "kWxPEV2UEDyxWpmPdKC3F4dgPDmOvfKX1HGnEUDS1aR"
CORP = "wwbench"
COMMANDS = ("我的客户", "我的明星客户", "show my cash cow customers", "我的瘦狗客户", "更多", "帮助")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def serve_forever(kind: str, port: int, database_url: str) -> None:
    """Entry point of the server process (see _start_server)."""
    from aiohttp import web
    from wechatpy.enterprise import WeChatCrypto

    from bot.app import WeComIdentity, create_app
    from bot.callback import parse_flat_xml
    from bot.config import load_config

    if kind == "bare":
        crypto = WeChatCrypto(TOKEN, AES_KEY, CORP)

        async def bare(request: web.Request) -> web.Response:
            query = request.query
            body = await request.read()
            encrypted = parse_flat_xml(body)["Encrypt"]
            crypto.decrypt_message({"Encrypt": encrypted}, query["msg_signature"], query["timestamp"],
                                   query["nonce"])
            return web.Response(text="")

        app = web.Application()
        app.router.add_post("/wecom/callback", bare)
    else:
        config = load_config(None, environ={"TIERBOT_DATABASE_URL": database_url})
        identity = WeComIdentity(CORP, 1000002, "bench-secret", TOKEN, AES_KEY, "http://127.0.0.1:9")
        app = create_app(config, identity, dispatch=False)
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None)


def _start_server(kind: str, port: int, database_url: str) -> subprocess.Popen:
    code = f"from bench.callback import serve_forever; serve_forever({kind!r}, {port}, {database_url!r})"
    process = subprocess.Popen([sys.executable, "-c", code], cwd=PROJECT_ROOT, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE)
    deadline = time.time() + 30
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return process
        except OSError:
            time.sleep(0.1)
    process.kill()
    raise RuntimeError(f"{kind} server did not start: {process.stderr.read().decode()[-2000:]}")


async def _load(port: int, users: list[str], concurrency: int, seconds: float) -> tuple[int, list[float], int]:
    from bot.sandbox import WeComPeer

    peer = WeComPeer(TOKEN, AES_KEY, CORP, 1000002)
    latencies: list[float] = []
    errors = 0
    stop_at = time.perf_counter() + seconds
    connector = aiohttp.TCPConnector(limit=concurrency)

    async def user_loop(session: aiohttp.ClientSession, userid: str, rng: random.Random) -> None:
        nonlocal errors
        while time.perf_counter() < stop_at:
            query, body = peer.text_message(userid, rng.choice(COMMANDS))
            started = time.perf_counter()
            try:
                async with session.post(f"http://127.0.0.1:{port}/wecom/callback?{urlencode(query)}",
                                        data=body.encode()) as response:
                    await response.read()
                    ok = response.status == 200
            except aiohttp.ClientError:
                ok = False
            if ok:
                latencies.append(time.perf_counter() - started)
            else:
                errors += 1

    async with aiohttp.ClientSession(connector=connector) as session:
        await asyncio.gather(*(user_loop(session, users[i % len(users)], random.Random(i))
                               for i in range(concurrency)))
    return len(latencies), latencies, errors


def _percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))] if ordered else float("nan")


def run_callback_bench(concurrencies: list[int], seconds: float, customers: int, work_dir: Path) -> None:
    from sqlalchemy import select

    from bot.config import load_config
    from bot.rescore import full_rescore
    from bench.pipeline import DATA_ENDS
    from scoring.generator import generate_company
    from storage.db import make_engine, upgrade_schema
    from storage.importer import run_import
    from storage.models import User

    work_dir.mkdir(parents=True, exist_ok=True)
    database = work_dir / "callback-bench.db"
    for suffix in ("", "-wal", "-shm"):
        Path(f"{database}{suffix}").unlink(missing_ok=True)
    url = f"sqlite:///{database}"
    upgrade_schema(url)
    engine = make_engine(url)
    data = work_dir / "callback-company"
    shutil.rmtree(data, ignore_errors=True)
    counts = generate_company(data, customers=customers, seed=11, as_of=DATA_ENDS)
    run_import(engine, [data])
    full_rescore(engine, load_config(None, environ={"TIERBOT_DATABASE_URL": url}), DATA_ENDS)
    with engine.connect() as connection:
        users = list(connection.execute(select(User.userid).where(User.role.in_(("rep", "manager")))).scalars())
    engine.dispose()
    print(f"data: {counts.customers:,} customers, {counts.orders:,} orders, {len(users)} reps and managers "
          f"(SQLite); {seconds:.0f} s per run; commands: {', '.join(COMMANDS)}")
    print(f"{'handler':<10} {'users':>6} {'requests':>9} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7}")
    for concurrency in concurrencies:
        for kind in ("bare", "tierbot"):
            port = _free_port()
            server = _start_server(kind, port, url)
            try:
                done, latencies, errors = asyncio.run(_load(port, users, concurrency, seconds))
            finally:
                server.send_signal(signal.SIGINT)
                try:
                    server.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    server.kill()
            print(f"{kind:<10} {concurrency:>6} {done:>9,} {done / seconds:>8.0f} "
                  f"{_percentile(latencies, 0.5) * 1000:>8.1f} {_percentile(latencies, 0.99) * 1000:>8.1f} "
                  f"{errors:>7}", flush=True)
    shutil.rmtree(data, ignore_errors=True)
    if os.environ.get("TIERBOT_BENCH_KEEP") is None:
        for suffix in ("", "-wal", "-shm"):
            Path(f"{database}{suffix}").unlink(missing_ok=True)
