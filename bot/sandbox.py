"""The sandbox: a WeCom emulator on its own port and a console page at /sandbox.

The console does not shortcut anything: what you type is signed and encrypted exactly as
WeCom would (WeComPeer) and POSTed over HTTP to /wecom/callback; the passive reply is
decrypted and shown, and everything the bot sent through the (emulated) WeCom API to
that user is listed beside it.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass
from typing import Callable
from urllib.parse import urlencode

import aiohttp
from aiohttp import web
from sqlalchemy import select
from wechatpy.enterprise.crypto import PrpCrypto, WeChatCrypto

from bot.callback import parse_flat_xml, signature_of
from handlers.text import render
from storage.models import User


def _cdata(text: str) -> str:
    # "]]>" cannot stand inside one CDATA section: split it across two (the standard XML way).
    return "<![CDATA[" + text.replace("]]>", "]]]]><![CDATA[>") + "]]>"


@dataclass
class WeComPeer:
    """Signs and encrypts callbacks as WeCom does, and reads the passive replies."""

    token: str
    encoding_aes_key: str
    corp_id: str
    agent_id: int

    def __post_init__(self) -> None:
        self._crypto = WeChatCrypto(self.token, self.encoding_aes_key, self.corp_id)

    def _encrypt(self, plain: str) -> str:
        encrypted = PrpCrypto(self._crypto.key).encrypt(plain, self.corp_id)
        return encrypted.decode() if isinstance(encrypted, bytes) else encrypted

    def url_check(self, echo: str) -> dict[str, str]:
        """The query of the GET WeCom sends when an admin saves the callback URL."""
        timestamp, nonce = str(int(time.time())), secrets.token_hex(5)
        echostr = self._encrypt(echo)
        return {"msg_signature": signature_of(self.token, timestamp, nonce, echostr), "timestamp": timestamp,
                "nonce": nonce, "echostr": echostr}

    def envelope(self, inner_xml: str, timestamp: str | None = None, nonce: str | None = None) -> tuple[dict, str]:
        """(query, body) of a callback POST carrying `inner_xml`."""
        timestamp = timestamp or str(int(time.time()))
        nonce = nonce or secrets.token_hex(5)
        encrypted = self._encrypt(inner_xml)
        body = (f"<xml><ToUserName><![CDATA[{self.corp_id}]]></ToUserName><AgentID><![CDATA[{self.agent_id}]]>"
                f"</AgentID><Encrypt><![CDATA[{encrypted}]]></Encrypt></xml>")
        query = {"msg_signature": signature_of(self.token, timestamp, nonce, encrypted), "timestamp": timestamp,
                 "nonce": nonce}
        return query, body

    def text_message(self, from_user: str, content: str, msg_id: str | None = None,
                     create_time: int | None = None) -> tuple[dict, str]:
        create_time = create_time or int(time.time())
        msg_id = msg_id or str(secrets.randbelow(10**18))
        inner = (f"<xml><ToUserName>{_cdata(self.corp_id)}</ToUserName><FromUserName>{_cdata(from_user)}"
                 f"</FromUserName><CreateTime>{create_time}</CreateTime><MsgType><![CDATA[text]]></MsgType>"
                 f"<Content>{_cdata(content)}</Content><MsgId>{msg_id}</MsgId><AgentID>{self.agent_id}"
                 f"</AgentID></xml>")
        return self.envelope(inner)

    def event(self, from_user: str, event: str, create_time: int | None = None, **fields: str) -> tuple[dict, str]:
        """An event callback; `fields` follow <Event> in the order given, as in WeCom's samples."""
        create_time = create_time or int(time.time())
        extra = "".join(f"<{k}>{_cdata(str(v))}</{k}>" for k, v in fields.items())
        inner = (f"<xml><ToUserName>{_cdata(self.corp_id)}</ToUserName><FromUserName>{_cdata(from_user)}"
                 f"</FromUserName><CreateTime>{create_time}</CreateTime><MsgType><![CDATA[event]]></MsgType>"
                 f"<Event>{_cdata(event)}</Event>{extra}<AgentID>{self.agent_id}</AgentID></xml>")
        return self.envelope(inner)

    def card_event(self, from_user: str, *, event_key: str, task_id: str, response_code: str,
                   card_type: str = "button_interaction", create_time: int | None = None) -> tuple[dict, str]:
        """A member pressed a template card button: the template_card_event callback.

        Element order as in WeCom's sample (事件格式 · 模板卡片事件推送); SelectedItems, which only
        vote/multiple-choice cards carry, is left out.
        """
        return self.event(from_user, "template_card_event", create_time, EventKey=event_key, TaskId=task_id,
                          CardType=card_type, ResponseCode=response_code)

    def read_reply(self, body: str) -> dict[str, str]:
        """Verify and decrypt a passive reply; returns its fields (Content, MsgType, …)."""
        fields = parse_flat_xml(body)
        expected = signature_of(self.token, fields["TimeStamp"], fields["Nonce"], fields["Encrypt"])
        if expected != fields["MsgSignature"]:
            raise ValueError("the reply's signature does not match")
        plain = self._crypto.decrypt_message({"Encrypt": fields["Encrypt"]}, fields["MsgSignature"],
                                             fields["TimeStamp"], fields["Nonce"])
        return parse_flat_xml(plain)


def database_directory(engine) -> Callable[[str], bool]:
    """Sandbox's `directory` over a (sync) engine: whether the users table holds a userid."""

    def in_database(userid: str) -> bool:
        # Asked only about userids the sandbox has not met yet: rare, one indexed read.
        with engine.connect() as connection:
            return connection.execute(select(User.userid).where(User.userid == userid)).first() is not None

    return in_database


class Sandbox:
    def __init__(self, identity, known_users: list[str], directory: Callable[[str], bool] | None = None):
        """`directory`: whether a userid is in the database now. People an import run by
        another process (the CLI) added are then members too, as they would be in WeCom."""
        self.identity = identity
        self.peer = WeComPeer(identity.token, identity.encoding_aes_key, identity.corp_id, identity.agent_id)
        self.known_users = set(known_users)
        self.directory = directory
        self.service_url = ""
        self.emulator_app: web.Application | None = None
        self._emulator_runner: web.AppRunner | None = None

    def add_users(self, userids: list[str]) -> None:
        """People added after start-up (the REST API, an import) join the emulated
        company's directory, as an admin would add them in WeCom."""
        from bot.emulator import EMULATOR

        self.known_users.update(userids)
        if self.emulator_app is not None:
            for userid in userids:
                self.emulator_app[EMULATOR].add_user(userid)

    async def start_emulator(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Serve the WeCom emulator; returns its base URL."""
        from bot.emulator import RedactingAccessLogger, create_emulator_app

        self.emulator_app = create_emulator_app(self.identity.corp_id, self.identity.secret,
                                                self.identity.agent_id, known_users=self.known_users,
                                                directory=self.directory)
        self._emulator_runner = web.AppRunner(self.emulator_app, access_log_class=RedactingAccessLogger)
        await self._emulator_runner.setup()
        site = web.TCPSite(self._emulator_runner, host, port)
        await site.start()
        bound = self._emulator_runner.addresses[0][1]  # the port the OS chose when asked for 0
        return f"http://{host}:{bound}"

    async def stop_emulator(self) -> None:
        if self._emulator_runner is not None:
            await self._emulator_runner.cleanup()

    @property
    def emulator(self):
        from bot.emulator import EMULATOR

        return self.emulator_app[EMULATOR] if self.emulator_app is not None else None

    def attach(self, app: web.Application) -> None:
        app.add_routes([
            web.get("/sandbox", self.console),
            web.get("/sandbox/api/users", self.users),
            web.post("/sandbox/api/say", self.say),
            web.post("/sandbox/api/click", self.click),
            web.get("/sandbox/api/pushes", self.pushes),
        ])

    async def console(self, request: web.Request) -> web.Response:
        return web.Response(text=render("sandbox/console.html.j2"), content_type="text/html")

    async def users(self, request: web.Request) -> web.Response:
        from bot.app import RUNTIME

        async with request.app[RUNTIME].services.db.connect() as connection:
            rows = await connection.execute(select(User.userid, User.name, User.role, User.team)
                                            .where(User.role.in_(("rep", "manager", "admin", "agent")))
                                            .order_by(User.role, User.userid).limit(500))
            users = [dict(row._mapping) for row in rows]
        return web.json_response(users)

    async def say(self, request: web.Request) -> web.Response:
        try:
            data = await request.json()
            userid, content = data["userid"], data["text"]
            if not isinstance(userid, str) or not isinstance(content, str) or not userid:
                raise TypeError
        except (ValueError, KeyError, TypeError):
            return web.json_response({"error": "send JSON {\"userid\": ..., \"text\": ...}"}, status=400)
        status, reply, elapsed_ms = await self._callback(request, *self.peer.text_message(userid, content))
        return web.json_response({"status": status, "reply": reply, "passive": bool(reply), "ms": elapsed_ms})

    async def click(self, request: web.Request) -> web.Response:
        """A member presses a card button: the emulator checks the click and issues the
        ResponseCode, and the event goes to /wecom/callback signed and encrypted, as WeCom sends it."""
        try:
            data = await request.json()
            userid, task_id, key = data["userid"], data["task_id"], data["key"]
            if not all(isinstance(value, str) and value for value in (userid, task_id, key)):
                raise TypeError
        except (ValueError, KeyError, TypeError):
            return web.json_response({"error": "send JSON {\"userid\": ..., \"task_id\": ..., \"key\": ...}"},
                                     status=400)
        if self.emulator is None:
            return web.json_response({"error": "the WeCom emulator is not running"}, status=400)
        try:
            event = self.emulator.click(userid, task_id, key)
        except ValueError as exc:
            return web.json_response({"error": str(exc)}, status=400)
        status, reply, elapsed_ms = await self._callback(request, *self.peer.card_event(
            userid, event_key=event["EventKey"], task_id=event["TaskId"], response_code=event["ResponseCode"],
            card_type=event["CardType"]))
        return web.json_response({"status": status, "reply": reply, "ms": elapsed_ms})

    async def _callback(self, request: web.Request, query: dict, body: str) -> tuple[int, str, int]:
        """POST one callback to the service: (HTTP status, passive reply text or "", milliseconds)."""
        base = self.service_url or f"{request.scheme}://{request.host}"
        async with aiohttp.ClientSession() as session:
            started = time.perf_counter()
            async with session.post(f"{base}/wecom/callback?{urlencode(query)}", data=body.encode()) as response:
                status, answer = response.status, await response.text()
            elapsed_ms = round((time.perf_counter() - started) * 1000)
        reply = self.peer.read_reply(answer).get("Content", "") if status == 200 and answer else ""
        return status, reply, elapsed_ms

    async def pushes(self, request: web.Request) -> web.Response:
        userid = request.query.get("userid", "")
        state = self.emulator
        messages = [] if state is None else state.messages_for(userid)

        def card_state(message) -> dict | None:
            # How the card looks to this user after update_template_card (greyed button or a new card).
            task_id = message.payload.get("template_card", {}).get("task_id")
            return state.card_state(task_id, userid) if message.msgtype == "template_card" and task_id else None

        return web.json_response([{"msgtype": m.msgtype, "payload": m.payload, "msgid": m.msgid,
                                   "received_at": m.received_at, "card_state": card_state(m)} for m in messages])
