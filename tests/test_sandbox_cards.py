"""Button cards end to end: a member's click in the emulator, the template_card_event callback
WeComPeer signs and encrypts, and the sandbox's /sandbox/api/click route into the real service."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest
from sqlalchemy import select
from wechatpy.enterprise import WeChatCrypto

from bot.app import RUNTIME, create_app, sandbox_identity
from bot.callback import inbound_from_xml, parse_flat_xml
from bot.config import load_config
from bot.emulator import EMULATOR, RESPONSE_CODE_VALID_SECONDS, SANDBOX_AGENT_ID, SharedClock, create_emulator_app
from bot.sandbox import Sandbox, WeComPeer
from storage.models import CallbackSeen

USERS = ["alice", "bob"]


def follow_up_card(task_id: str) -> dict:
    return {
        "card_type": "button_interaction",
        "main_title": {"title": "跟进 华为", "desc": "明星客户 · 3 天未联系"},
        "task_id": task_id,
        "button_list": [
            {"text": "完成", "style": 1, "key": "done"},
            {"text": "延后", "style": 2, "key": "snooze"},
            {"type": 1, "text": "打开 CRM", "url": "https://crm.example.com/c/1", "key": "crm"},
        ],
    }


@pytest.fixture
def clock() -> SharedClock:
    return SharedClock(datetime(2026, 11, 23, 2, 0, tzinfo=timezone.utc))


async def _fetch_token(wecom) -> None:
    answer = await (await wecom.get("/cgi-bin/gettoken", params={"corpid": "wwsandbox",
                                                                 "corpsecret": "sandbox-secret"})).json()
    wecom.token = answer["access_token"]


@pytest.fixture
async def wecom(aiohttp_client, clock):
    """A client of the emulator app with a valid access_token; `.state` is the emulator's state."""
    client = await aiohttp_client(create_emulator_app(known_users=USERS, clock=clock))
    await _fetch_token(client)
    client.state = client.app[EMULATOR]
    return client


async def _send(wecom, users: list[str], card: dict) -> dict:
    response = await wecom.post("/cgi-bin/message/send", params={"access_token": wecom.token}, json={
        "touser": "|".join(users), "msgtype": "template_card", "agentid": SANDBOX_AGENT_ID, "template_card": card})
    answer = await response.json()
    assert answer["errcode"] == 0, answer
    return answer


async def _update(wecom, code: str, users: list[str], **change) -> dict:
    response = await wecom.post("/cgi-bin/message/update_template_card", params={"access_token": wecom.token},
                                json={"userids": users, "agentid": SANDBOX_AGENT_ID, "response_code": code, **change})
    return await response.json()


# -- the emulator: EmulatorState.click and card_state ------------------------------------------------


async def test_click_returns_the_callback_fields_and_a_code_that_updates_the_card_once(wecom):
    sent = await _send(wecom, ["alice"], follow_up_card("fu-1"))
    event = wecom.state.click("alice", "fu-1", "done")
    code = event.pop("ResponseCode")
    assert event == {"Event": "template_card_event", "EventKey": "done", "TaskId": "fu-1",
                     "CardType": "button_interaction"}
    assert code and code != sent["response_code"]

    assert (await _update(wecom, code, ["alice"], button={"replace_name": "已完成"}))["errcode"] == 0
    again = await _update(wecom, code, ["alice"], button={"replace_name": "再来一次"})
    assert again["errcode"] == 40058
    state = wecom.state.card_state("fu-1", "alice")
    assert (state["replaced_name"], state["updated"]) == ("已完成", True)
    assert wecom.state.card_updates[-1].task_id == "fu-1"
    with pytest.raises(ValueError, match="already updated"):
        wecom.state.click("alice", "fu-1", "snooze")


async def test_send_and_click_codes_are_each_good_for_one_update(wecom):
    sent = await _send(wecom, ["alice"], follow_up_card("fu-2"))
    first = wecom.state.click("alice", "fu-2", "snooze")["ResponseCode"]
    second = wecom.state.click("alice", "fu-2", "snooze")["ResponseCode"]  # not updated yet: still clickable
    assert len({sent["response_code"], first, second}) == 3
    for code in (sent["response_code"], first, second):
        assert (await _update(wecom, code, ["alice"], button={"replace_name": "已延后"}))["errcode"] == 0
        assert (await _update(wecom, code, ["alice"], button={"replace_name": "已延后"}))["errcode"] == 40058


async def test_click_code_expires_after_72_hours(wecom, clock):
    await _send(wecom, ["alice"], follow_up_card("fu-3"))
    code = wecom.state.click("alice", "fu-3", "done")["ResponseCode"]
    clock.advance(RESPONSE_CODE_VALID_SECONDS + 1)
    await _fetch_token(wecom)  # the old access_token expired long ago
    assert (await _update(wecom, code, ["alice"], button={"replace_name": "已完成"}))["errcode"] == 40058


@pytest.mark.parametrize("userid, task_id, key, why", [
    ("alice", "no-such-task", "done", "no card with task_id 'no-such-task' was delivered to 'alice'"),
    ("alice", "fu-4", "archive", "no callback button with key 'archive'; its keys: done, snooze"),
    ("alice", "fu-4", "crm", "no callback button with key 'crm'"),  # a URL button opens a page, no callback
    ("bob", "fu-4", "done", "delivered to 'bob' \\(it went to other members\\)"),
])
async def test_clicks_wecom_could_not_send_are_refused(wecom, userid, task_id, key, why):
    await _send(wecom, ["alice"], follow_up_card("fu-4"))
    codes_before = len(wecom.state._response_codes)
    with pytest.raises(ValueError, match=why):
        wecom.state.click(userid, task_id, key)
    assert len(wecom.state._response_codes) == codes_before


async def test_a_card_dropped_by_the_rate_limit_cannot_be_clicked(wecom):
    for n in range(30):
        await _send(wecom, ["alice"], follow_up_card(f"flood-{n}"))
    await _send(wecom, ["alice"], follow_up_card("fu-dropped"))
    assert wecom.state.dropped_by_rate_limit
    with pytest.raises(ValueError, match="no card"):
        wecom.state.click("alice", "fu-dropped", "done")


async def test_an_update_reaches_only_the_members_it_names(wecom):
    await _send(wecom, ["alice", "bob"], follow_up_card("fu-5"))
    code = wecom.state.click("alice", "fu-5", "done")["ResponseCode"]
    answer = await _update(wecom, code, ["alice", "Carol"], button={"replace_name": "已完成"})
    assert (answer["errcode"], answer["invaliduser"]) == (0, ["carol"])
    assert wecom.state.card_state("fu-5", "alice")["replaced_name"] == "已完成"
    assert wecom.state.card_state("fu-5", "bob") == {"task_id": "fu-5", "card": follow_up_card("fu-5"),
                                                     "replaced_name": None, "updated": False}
    assert wecom.state.card_state("fu-5")["replaced_name"] == "已完成"
    assert wecom.state.click("bob", "fu-5", "snooze")["EventKey"] == "snooze"


async def test_a_card_replaced_by_a_new_card_follows_the_new_buttons(wecom):
    await _send(wecom, ["alice"], follow_up_card("fu-6"))
    code = wecom.state.click("alice", "fu-6", "snooze")["ResponseCode"]
    # As in WeCom's update examples, the replacement carries no task_id: the code names the card.
    snoozed = {"card_type": "button_interaction", "main_title": {"title": "已延后到明天"},
               "button_list": [{"text": "现在完成", "key": "done_now"}]}
    assert (await _update(wecom, code, ["alice"], template_card=snoozed))["errcode"] == 0
    state = wecom.state.card_state("fu-6", "alice")
    assert (state["card"], state["replaced_name"], state["updated"]) == (snoozed, None, True)
    with pytest.raises(ValueError, match="its keys: done_now"):
        wecom.state.click("alice", "fu-6", "done")
    code = wecom.state.click("alice", "fu-6", "done_now")["ResponseCode"]

    finished = {"card_type": "text_notice", "main_title": {"title": "已完成"}, "card_action": {"type": 1,
                                                                                              "url": "https://x.cn"}}
    assert (await _update(wecom, code, ["alice"], template_card=finished))["errcode"] == 0
    assert wecom.state.card_state("fu-6", "alice")["card"] == finished
    with pytest.raises(ValueError, match="text_notice card now"):
        wecom.state.click("alice", "fu-6", "done_now")


async def test_a_replacement_with_replace_text_is_greyed_out(wecom):
    await _send(wecom, ["alice"], follow_up_card("fu-7"))
    code = wecom.state.click("alice", "fu-7", "done")["ResponseCode"]
    grey = {**follow_up_card("fu-7"), "replace_text": "已处理"}
    assert (await _update(wecom, code, ["alice"], template_card=grey))["errcode"] == 0
    with pytest.raises(ValueError, match="grey '已处理' button"):
        wecom.state.click("alice", "fu-7", "done")


# -- WeComPeer.card_event -------------------------------------------------------------------------------


def test_card_event_is_the_xml_wecom_sends_and_the_callback_parses_it():
    peer = WeComPeer("tok", "k" * 43, "wwcorp", 1000002)
    query, body = peer.card_event("rep_a", event_key="done]]>x", task_id="fu-9", response_code="RC-1",
                                  create_time=1700000000)
    crypto = WeChatCrypto("tok", "k" * 43, "wwcorp")
    plain = crypto.decrypt_message({"Encrypt": parse_flat_xml(body)["Encrypt"]}, query["msg_signature"],
                                   query["timestamp"], query["nonce"])
    plain = plain.decode() if isinstance(plain, bytes) else plain
    fields = parse_flat_xml(plain)
    assert list(fields) == ["ToUserName", "FromUserName", "CreateTime", "MsgType", "Event", "EventKey", "TaskId",
                            "CardType", "ResponseCode", "AgentID"]
    assert fields["AgentID"] == "1000002" and "<AgentID>1000002</AgentID>" in plain  # an integer, no CDATA
    message = inbound_from_xml(plain)
    assert (message.msg_type, message.event, message.from_user, message.create_time) == (
        "event", "template_card_event", "rep_a", "1700000000")
    assert (message.raw["EventKey"], message.raw["TaskId"], message.raw["ResponseCode"], message.raw["CardType"],
            message.raw["ToUserName"]) == ("done]]>x", "fu-9", "RC-1", "button_interaction", "wwcorp")


# -- the sandbox route ----------------------------------------------------------------------------------


@pytest.fixture
async def sandbox_service(database_url, aiohttp_client):
    identity = sandbox_identity()
    sandbox = Sandbox(identity, ["rep_a"])
    identity.api_base = await sandbox.start_emulator()
    config = load_config(None, environ={"TIERBOT_DATABASE_URL": database_url})
    client = await aiohttp_client(create_app(config, identity, sandbox=sandbox, dispatch=False))
    client.sandbox = sandbox
    yield client
    await sandbox.stop_emulator()


async def test_click_route_delivers_the_signed_event_to_the_service(sandbox_service, engine):
    runtime = sandbox_service.app[RUNTIME]
    await runtime.client.send_template_card(["rep_a"], follow_up_card("fu-route"))

    response = await sandbox_service.post("/sandbox/api/click",
                                          json={"userid": "rep_a", "task_id": "fu-route", "key": "done"})
    answer = await response.json()
    assert response.status == 200, answer
    assert answer["status"] == 200 and isinstance(answer["reply"], str) and answer["ms"] >= 0
    # The service verified, decrypted and claimed the event (dedupe key of an event).
    with engine.connect() as connection:
        keys = connection.execute(select(CallbackSeen.dedupe_key)).scalars().all()
    assert [key.split(":")[:2] for key in keys] == [["event", "rep_a"]]

    # The click's code is the last one issued (the send returned one before it).
    code = [c for c, issued in sandbox_service.sandbox.emulator._response_codes.items()
            if issued.task_id == "fu-route"][-1]
    await runtime.client.update_template_card(["rep_a"], code, replace_button_name="已完成")
    pushes = await (await sandbox_service.get("/sandbox/api/pushes", params={"userid": "rep_a"})).json()
    assert [push["card_state"]["replaced_name"] for push in pushes] == ["已完成"]


@pytest.mark.parametrize("payload, error", [
    ({"userid": "rep_a", "task_id": "nope", "key": "done"}, "no card with task_id 'nope'"),
    ({"userid": "rep_a", "task_id": "fu-bad", "key": "launch"}, "no callback button with key 'launch'"),
    ({"userid": "rep_a", "task_id": "fu-bad"}, "send JSON"),
    ("not json", "send JSON"),
])
async def test_click_route_refuses_bad_clicks_before_the_service_sees_them(sandbox_service, engine, payload, error):
    await sandbox_service.app[RUNTIME].client.send_template_card(["rep_a"], follow_up_card("fu-bad"))
    if isinstance(payload, str):
        response = await sandbox_service.post("/sandbox/api/click", data=payload)
    else:
        response = await sandbox_service.post("/sandbox/api/click", json=payload)
    assert response.status == 400
    assert error in (await response.json())["error"]
    with engine.connect() as connection:
        assert connection.execute(select(CallbackSeen.dedupe_key)).all() == []


async def test_a_user_added_through_the_api_can_be_messaged_in_the_sandbox(database_url, aiohttp_client):
    identity = sandbox_identity()
    sandbox = Sandbox(identity, ["rep_a"])
    identity.api_base = await sandbox.start_emulator()
    config = load_config(None, environ={"TIERBOT_DATABASE_URL": database_url, "TIERBOT_API_TOKEN": "t0ken"})
    service = await aiohttp_client(create_app(config, identity, sandbox=sandbox, dispatch=False))
    try:
        answer = await service.post("/api/v1/users", json=[{"userid": "rep_new", "name": "新人", "role": "rep"}],
                                    headers={"Authorization": "Bearer t0ken"})
        assert answer.status == 200, await answer.text()
        # The emulated WeCom knows them now: a message reaches them instead of failing with 81013.
        result = await service.app[RUNTIME].client.send_text(["rep_new"], "欢迎加入")
        assert result.errcode == 0 and not result.invaliduser
    finally:
        await sandbox.stop_emulator()


async def test_a_user_a_cli_import_added_while_the_sandbox_serves_can_be_messaged(database_url, engine,
                                                                                  aiohttp_client, tmp_path):
    from bot.sandbox import database_directory
    from storage.importer import run_import

    identity = sandbox_identity()
    sandbox = Sandbox(identity, ["rep_a"], database_directory(engine))
    identity.api_base = await sandbox.start_emulator()
    config = load_config(None, environ={"TIERBOT_DATABASE_URL": database_url})
    service = await aiohttp_client(create_app(config, identity, sandbox=sandbox, dispatch=False))
    try:
        client = service.app[RUNTIME].client
        from bot.wecom_client import WeComError

        with pytest.raises(WeComError) as unknown:
            await client.send_text(["rep_later"], "你好")
        assert unknown.value.errcode == 81013
        # Another process (python -m bot import) adds them to the database.
        run_import(engine, [], records={"users": [{"userid": "rep_later", "name": "后来者", "role": "rep"}]})
        result = await client.send_text(["rep_later"], "欢迎加入")
        assert result.errcode == 0 and not result.invaliduser
        # The people known at start-up are members from the first moment: @all reaches them.
        assert (await client.send_text(["@all"], "全员通知")).errcode == 0
        assert sandbox.emulator.messages_for("rep_a")
    finally:
        await sandbox.stop_emulator()
