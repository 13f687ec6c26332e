"""kill -9 of the service in the middle of dispatching, then a restart: every queued
message reaches its member exactly once (DESIGN §6, issue "pushes")."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
from collections import Counter
from datetime import datetime, timezone

import pytest
from sqlalchemy import func, select

from bot.emulator import EMULATOR, SANDBOX_AGENT_ID, SANDBOX_CORP_ID, SANDBOX_SECRET, create_emulator_app
from bot.config import PROJECT_ROOT
from notifications.outbox import outbox_row
from storage.models import OutboxMessage

MEMBERS = [f"u{i}" for i in range(30)]
MESSAGES = [(member, f"第 {n} 条提醒：给 {member}") for member in MEMBERS for n in range(2)]

# Cron times that never catch up in a test: only the queued messages are sent.
QUIET_CONFIG = """
scheduler:
  full_rescore: "0 0 29 2 *"
  digest: "0 0 29 2 *"
pushes:
  quiet_hours: {start: "00:00", end: "00:00"}
"""


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


async def _start_service(env: dict, config_path) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bot", "--config", str(config_path), "serve", cwd=str(PROJECT_ROOT), env=env,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)


def _statuses(engine) -> Counter:
    with engine.connect() as connection:
        return Counter(dict(connection.execute(select(OutboxMessage.status, func.count())
                                               .group_by(OutboxMessage.status)).all()))


async def test_kill_9_mid_dispatch_then_restart_delivers_each_message_once(engine, database_url, aiohttp_server,
                                                                             tmp_path):
    emulator = await aiohttp_server(create_emulator_app(known_users=MEMBERS))
    state = emulator.app[EMULATOR]
    # Each send takes a while, so the kill lands in the middle of the queue — and, with
    # luck, between WeCom accepting a message and the service recording it.
    state.inject_delay(0.15, times=10_000, path="message/send")
    now = datetime.now(timezone.utc)
    with engine.begin() as connection:
        connection.execute(OutboxMessage.__table__.insert(), [
            outbox_row([member], "text", {"content": text}, origin=f"crash-test:{i}", kind="task", now=now)
            for i, (member, text) in enumerate(MESSAGES)])

    config_path = tmp_path / "config.yaml"
    config_path.write_text(QUIET_CONFIG, encoding="utf-8")
    env = {**os.environ, "TIERBOT_DATABASE_URL": database_url, "TIERBOT_HTTP_PORT": str(_free_port()),
           "WECOM_CORP_ID": SANDBOX_CORP_ID, "WECOM_SECRET": SANDBOX_SECRET, "WECOM_AGENT_ID": str(SANDBOX_AGENT_ID),
           "WECOM_TOKEN": "crash-test-token", "WECOM_ENCODING_AES_KEY": "k" * 43,
           "WECOM_API_BASE": str(emulator.make_url("/")).rstrip("/")}
    env.pop("WECOM_WEBHOOK_KEY", None)

    service = await _start_service(env, config_path)
    try:
        for _ in range(600):
            if len(state.delivered) >= len(MESSAGES) // 3:
                break
            await asyncio.sleep(0.05)
        assert len(state.delivered) >= len(MESSAGES) // 3, "the service did not start dispatching"
    finally:
        service.send_signal(signal.SIGKILL)
        await service.wait()
    delivered_before_restart = len(state.delivered)
    assert _statuses(engine)["sending"] > 0, "the kill left claimed rows for the restart to recover"
    assert delivered_before_restart < len(MESSAGES), "killed too late to test anything"
    await asyncio.sleep(0.3)  # requests the dead process left in flight finish at the emulator

    restarted = await _start_service(env, config_path)
    try:
        for _ in range(900):
            if _statuses(engine).get("sent", 0) == len(MESSAGES):
                break
            await asyncio.sleep(0.05)
    finally:
        restarted.send_signal(signal.SIGTERM)
        await restarted.wait()

    assert _statuses(engine) == Counter({"sent": len(MESSAGES)})
    received = Counter((message.userid, message.payload["text"]["content"]) for message in state.delivered)
    assert received == Counter(MESSAGES), "every message exactly once to its member"
    assert not state.dropped_by_rate_limit
