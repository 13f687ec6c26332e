"""WeComClient and WebhookClient against the WeCom emulator, over real HTTP."""

from __future__ import annotations

import asyncio
import logging

import aiohttp
import pytest

from bot.emulator import (
    EMULATOR,
    SANDBOX_AGENT_ID,
    SANDBOX_CORP_ID,
    SANDBOX_SECRET,
    SANDBOX_WEBHOOK_KEY,
    EmulatorState,
    RedactingAccessLogger,
    create_emulator_app,
)
from bot.wecom_client import SendResult, WebhookClient, WeComClient, WeComError, WeComTransportError

USERS = ["alice", "bob"] + [f"rep{n:02d}" for n in range(50)]
# The smallest valid PNG: a 1×1 transparent pixel.
PNG = bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
    "1f15c4890000000d49444154789c6300010000000500010d0a2db40000000049454e44ae426082"
)


class FakeClock:
    """Shared by the emulator and the client, so token expiry and rate windows move together."""

    def __init__(self, start: float = 10_000.0):
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def button_card(task_id: str, buttons: int = 2) -> dict:
    return {
        "card_type": "button_interaction",
        "main_title": {"title": "华为 升级为 Star", "desc": "请在 48 小时内跟进"},
        "task_id": task_id,
        "button_list": [{"text": f"按钮{n}", "style": 1, "key": f"key{n}"} for n in range(buttons)],
    }


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def server(aiohttp_server, clock):
    app = create_emulator_app(known_users=USERS, clock=clock)
    return await aiohttp_server(app, access_log_class=RedactingAccessLogger)


@pytest.fixture
def state(server) -> EmulatorState:
    return server.app[EMULATOR]


@pytest.fixture
async def session():
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
def make_client(server, session, clock):
    def make(**options) -> WeComClient:
        options.setdefault("clock", clock)
        return WeComClient(
            session, SANDBOX_CORP_ID, SANDBOX_SECRET, SANDBOX_AGENT_ID, str(server.make_url("/")), **options
        )

    return make


@pytest.fixture
def client(make_client) -> WeComClient:
    return make_client()


def answered(state: EmulatorState, path: str) -> list[int | None]:
    return [request.errcode for request in state.requests_to(path)]


# -- the access token --------------------------------------------------------------------------


async def test_fifty_concurrent_sends_fetch_the_token_once(client, state):
    reps = [user for user in USERS if user.startswith("rep")]
    results = await asyncio.gather(*(client.send_text([rep], f"早上好 {rep}") for rep in reps))
    assert state.token_fetches == 1
    assert all(isinstance(result, SendResult) and result.errcode == 0 and result.msgid for result in results)
    assert sorted(message.userid for message in state.delivered) == sorted(reps)


async def test_callers_queued_behind_a_failed_gettoken_share_its_error(client, state):
    state.inject("gettoken", errcode=-1)
    results = await asyncio.gather(*(client.send_text(["alice"], f"n{n}") for n in range(20)), return_exceptions=True)
    assert all(isinstance(result, WeComError) and result.errcode == -1 for result in results)
    assert state.token_fetches == 1
    await client.send_text(["alice"], "later")  # the next caller tries afresh
    assert state.token_fetches == 2


async def test_concurrent_calls_with_an_expired_token_refetch_it_once(client, state):
    await client.get_token()
    state.expire_tokens()
    await asyncio.gather(*(client.send_text([f"rep{n:02d}"], "hi") for n in range(20)))
    assert state.token_fetches == 2
    assert answered(state, "message/send").count(42001) == 20
    assert len(state.delivered) == 20


async def test_token_is_refreshed_before_it_expires(client, state, clock):
    await client.send_text(["alice"], "one")
    clock.advance(7200 - 299)  # under 5 minutes left
    await client.send_text(["alice"], "two")
    assert state.token_fetches == 2
    clock.advance(400)  # past the first token's expiry
    await client.send_text(["alice"], "three")
    assert state.token_fetches == 3
    assert answered(state, "message/send") == [0, 0, 0]  # never a 42001
    assert len(state.messages_for("alice")) == 3


async def test_expired_token_is_fetched_again_and_the_call_repeated_once(client, state):
    await client.send_text(["alice"], "before")
    state.expire_tokens()
    result = await client.send_text(["alice"], "after")
    assert result.errcode == 0
    assert answered(state, "message/send") == [0, 42001, 0]
    assert state.token_fetches == 2
    assert [m.payload["text"]["content"] for m in state.messages_for("alice")] == ["before", "after"]


async def test_revoked_token_is_replaced(client, state):
    await client.send_text(["alice"], "before")
    state.revoke_tokens()
    await client.send_text(["alice"], "after")
    assert answered(state, "message/send") == [0, 40014, 0]


async def test_persistent_invalid_token_is_tried_exactly_twice(client, state):
    state.inject("message/send", errcode=40014, times=10)
    with pytest.raises(WeComError) as raised:
        await client.send_text(["alice"], "hello")
    assert raised.value.errcode == 40014
    assert not raised.value.retryable
    assert answered(state, "message/send") == [40014, 40014]
    assert state.token_fetches == 2
    assert state.delivered == []


async def test_wrong_secret_fails_once_without_retrying(server, session, state):
    client = WeComClient(session, SANDBOX_CORP_ID, "not-the-secret", SANDBOX_AGENT_ID, str(server.make_url("/")))
    with pytest.raises(WeComError) as raised:
        await client.send_text(["alice"], "hello")
    assert raised.value.errcode == 40001
    assert "not-the-secret" not in str(raised.value)
    assert state.token_fetches == 1
    assert state.requests_to("message/send") == []


# -- recipients and errors ---------------------------------------------------------------------


async def test_unknown_recipients_come_back_as_invaliduser(client, state):
    result = await client.send_text(["alice", "ghost", "bob"], "周报已生成")
    assert result.invaliduser == ["ghost"]
    assert {message.userid for message in state.delivered} == {"alice", "bob"}


async def test_no_valid_recipient_is_81013_and_not_retryable(client, state):
    with pytest.raises(WeComError) as raised:
        await client.send_text(["ghost1", "ghost2"], "hello")
    assert raised.value.errcode == 81013
    assert not raised.value.retryable
    assert raised.value.response["invaliduser"] == "ghost1|ghost2"
    assert "user & party & tag all invalid" in raised.value.errmsg


@pytest.mark.parametrize("errcode", [-1, 45009, 45033])
async def test_busy_and_frequency_errors_are_retryable(client, state, errcode):
    state.inject("message/send", errcode=errcode)
    with pytest.raises(WeComError) as raised:
        await client.send_text(["alice"], "hello")
    assert raised.value.errcode == errcode
    assert raised.value.retryable
    assert state.delivered == []
    await client.send_text(["alice"], "hello")  # the fault was for one call only
    assert len(state.delivered) == 1


async def test_dropped_connection_is_a_retryable_transport_error(client, state):
    state.inject_disconnect(path="message/send")
    with pytest.raises(WeComTransportError) as raised:
        await client.send_text(["alice"], "hello")
    assert raised.value.errcode is None
    assert raised.value.retryable
    assert answered(state, "message/send") == [None]
    await client.send_text(["alice"], "hello again")
    assert len(state.delivered) == 1


async def test_answer_slower_than_the_timeout_is_a_retryable_transport_error(make_client, state):
    client = make_client(timeout=0.2)
    await client.get_token()
    state.inject_delay(1.0, path="message/send")
    with pytest.raises(WeComTransportError) as raised:
        await client.send_text(["alice"], "hello")
    assert raised.value.retryable
    assert "0.2 s" in str(raised.value)
    assert await client.get_token() not in str(raised.value)


# -- limits checked before sending ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("send", "limit_named"),
    [
        (lambda c: c.send_text(["alice"], "字" * 683), "2048 bytes"),  # 2049 bytes of UTF-8
        (lambda c: c.send_markdown(["alice"], "x" * 2049), "2048 bytes"),
        (lambda c: c.send_textcard(["alice"], "标" * 43, "ok", "https://example.com"), "128 bytes"),
        (lambda c: c.send_textcard(["alice"], "ok", "d" * 513, "https://example.com"), "512 bytes"),
        (lambda c: c.send_text([f"u{n}" for n in range(1001)], "hi"), "at most 1000"),
        (lambda c: c.send_template_card(["alice"], button_card("t1", buttons=7)), "at most 6"),
        (lambda c: c.send_template_card(["alice"], button_card("bad task id")), "task_id"),
        (
            lambda c: c.send_text(["alice"], "hi", enable_duplicate_check=True, duplicate_check_interval=14401),
            "4 hours",
        ),
        (lambda c: c.upload_media("image", "huge.png", b"x" * (10 * 1024 * 1024 + 1)), "10485760 bytes"),
    ],
)
async def test_limits_are_checked_before_sending(client, state, send, limit_named):
    with pytest.raises(ValueError, match=limit_named):
        await send(client)
    assert state.received == []


async def test_exactly_at_the_limit_is_sent(client, state):
    await client.send_text(["alice"], "字" * 682 + "ab")  # 2048 bytes
    assert len(state.delivered) == 1


# -- WeCom's silent behaviour ------------------------------------------------------------------------


async def test_thirty_first_message_in_a_minute_is_accepted_but_not_delivered(client, state, clock):
    results = [await client.send_text(["alice"], f"提醒 {n}") for n in range(31)]
    assert all(result.errcode == 0 for result in results)
    assert len(state.messages_for("alice")) == 30
    assert [m.payload["text"]["content"] for m in state.dropped_by_rate_limit] == ["提醒 30"]
    clock.advance(61)
    await client.send_text(["alice"], "一分钟后")
    assert len(state.messages_for("alice")) == 31


async def test_duplicate_check_accepts_an_identical_resend_without_delivering_it(client, state, clock):
    first = await client.send_text(["alice"], "同一条", enable_duplicate_check=True, duplicate_check_interval=600)
    second = await client.send_text(["alice"], "同一条", enable_duplicate_check=True, duplicate_check_interval=600)
    assert first.errcode == second.errcode == 0
    assert len(state.messages_for("alice")) == 1
    assert [message.userid for message in state.deduplicated] == ["alice"]
    clock.advance(601)
    await client.send_text(["alice"], "同一条", enable_duplicate_check=True, duplicate_check_interval=600)
    assert len(state.messages_for("alice")) == 2


# -- template cards ---------------------------------------------------------------------------------


async def test_response_code_updates_a_card_once(client, state):
    sent = await client.send_template_card(["alice"], button_card("task-huawei-1"))
    assert sent.response_code
    updated = await client.update_template_card(["alice"], sent.response_code, replace_button_name="已跟进")
    assert updated.errcode == 0
    assert [update.payload["button"] for update in state.card_updates] == [{"replace_name": "已跟进"}]
    with pytest.raises(WeComError) as raised:
        await client.update_template_card(["alice"], sent.response_code, card=button_card("task-huawei-2"))
    assert raised.value.errcode == 40058
    assert not raised.value.retryable
    assert len(state.card_updates) == 1


async def test_response_code_expires_after_72_hours(client, state, clock):
    sent = await client.send_template_card(["alice"], button_card("task-expiring"))
    clock.advance(72 * 3600 + 1)
    with pytest.raises(WeComError):
        await client.update_template_card(["alice"], sent.response_code, replace_button_name="已过期")


async def test_task_id_is_unique_per_app(client, state):
    await client.send_template_card(["alice"], button_card("task-once"))
    with pytest.raises(WeComError) as raised:
        await client.send_template_card(["bob"], button_card("task-once"))
    assert raised.value.errcode == 42014
    assert [message.userid for message in state.delivered] == ["alice"]


# -- media ---------------------------------------------------------------------------------------------


async def test_uploaded_image_can_be_sent(client, state):
    media_id = await client.upload_media("image", "tiers.png", PNG, content_type="image/png")
    assert state.media[media_id].size == len(PNG)
    await client.send_image(["alice"], media_id)
    [message] = state.messages_for("alice")
    assert message.msgtype == "image"
    assert message.payload["image"]["media_id"] == media_id
    with pytest.raises(WeComError) as raised:
        await client.send_image(["alice"], "no-such-media")
    assert raised.value.errcode == 40007


async def test_upload_is_repeated_once_with_a_fresh_token(client, state):
    await client.get_token()
    state.expire_tokens()
    media_id = await client.upload_media("file", "report.csv", b"customer_id,tier\nC1,Star\n")
    assert answered(state, "media/upload") == [42001, 0]
    assert state.media[media_id].filename == "report.csv"


# -- group robot ------------------------------------------------------------------------------------------


async def test_group_robot_takes_twenty_messages_a_minute(server, session, state, clock):
    robot = WebhookClient(session, SANDBOX_WEBHOOK_KEY, str(server.make_url("/")))
    for n in range(20):
        await robot.send_text(f"告警 {n}")
    with pytest.raises(WeComError) as raised:
        await robot.send_markdown("**第 21 条**")
    assert raised.value.errcode == 45009
    assert raised.value.retryable
    assert len(state.webhook_messages) == 20
    clock.advance(60)
    await robot.send_markdown("**一分钟后**")
    assert state.webhook_messages[-1].msgtype == "markdown"


async def test_group_robot_limits_and_unknown_key(server, session, state):
    robot = WebhookClient(session, SANDBOX_WEBHOOK_KEY, str(server.make_url("/")))
    with pytest.raises(ValueError, match="4096 bytes"):
        await robot.send_markdown("m" * 4097)
    stranger = WebhookClient(session, "not-a-key", str(server.make_url("/")))
    with pytest.raises(WeComError) as raised:
        await stranger.send_text("hello")
    assert raised.value.errcode == 93000
    assert "not-a-key" not in str(raised.value)


# -- the emulator refuses what WeCom refuses (requests the client would never send) ------------------------


@pytest.mark.parametrize(
    ("body", "errcode"),
    [
        ({"touser": "alice", "msgtype": "text", "agentid": SANDBOX_AGENT_ID, "text": {"content": "x" * 2049}}, 45002),
        ({"touser": "alice", "msgtype": "text", "agentid": 1, "text": {"content": "hi"}}, 40056),
        ({"touser": "alice", "msgtype": "voice", "agentid": SANDBOX_AGENT_ID, "voice": {}}, 40008),
        ({"touser": "|".join(f"u{n}" for n in range(1001)), "msgtype": "text", "agentid": SANDBOX_AGENT_ID,
          "text": {"content": "hi"}}, 40032),
        ({"touser": "alice", "msgtype": "template_card", "agentid": SANDBOX_AGENT_ID,
          "template_card": button_card("t7", buttons=7)}, 40058),
        ({"touser": "alice", "msgtype": "text", "agentid": SANDBOX_AGENT_ID, "text": {"content": ""}}, 44004),
    ],
)
async def test_emulator_refuses_what_wecom_refuses(client, session, server, state, body, errcode):
    token = await client.get_token()
    async with session.post(server.make_url("/cgi-bin/message/send"), params={"access_token": token}, json=body) as r:
        answer = await r.json()
    assert answer["errcode"] == errcode
    assert state.delivered == []


async def test_emulator_checks_the_token_and_the_json(session, server):
    url = server.make_url("/cgi-bin/message/send")
    async with session.post(url, json={}) as response:
        assert (await response.json())["errcode"] == 41001
    async with session.post(url, params={"access_token": "forged"}, json={}) as response:
        assert (await response.json())["errcode"] == 40014
    async with session.get(server.make_url("/cgi-bin/gettoken"), params={"corpid": "wwother", "corpsecret": "x"}) as r:
        assert (await r.json())["errcode"] == 40013


async def test_emulator_rejects_malformed_json(client, session, server):
    token = await client.get_token()
    url = server.make_url("/cgi-bin/message/send")
    async with session.post(url, params={"access_token": token}, data=b"{not json") as response:
        assert (await response.json())["errcode"] == 47001


# -- secrets ------------------------------------------------------------------------------------------------


async def test_secret_and_token_stay_out_of_records_reprs_and_logs(client, state, caplog):
    caplog.set_level(logging.DEBUG)
    await client.send_text(["alice"], "hello")
    token = await client.get_token()
    for request in state.received:
        assert "access_token" not in request.query and "corpsecret" not in request.query
    assert SANDBOX_SECRET not in repr(client)
    assert SANDBOX_SECRET not in caplog.text
    assert token not in caplog.text
    assert "corpsecret=***" in caplog.text  # the emulator's access log was there, redacted
