"""The WeCom callback: GET (URL check) and POST (messages and events) on /wecom/callback.

Order of work for a POST, each step refusing what it cannot trust:
1. size: over MAX_BODY_BYTES → 400;
2. the envelope (<xml><Encrypt/>…</xml>) read with defusedxml (no entity tricks) → 400 if garbled;
3. the signature sha1(sorted(token, timestamp, nonce, Encrypt)) → 403 if wrong, before
   anything is decrypted or parsed;
4. decrypt (AES-256-CBC, corp id checked) and parse the inner XML → 400 if garbled;
5. claim the dedupe key in the database (MsgId; events FromUserName + CreateTime, card
   button presses also their ResponseCode): a retry WeCom sends while — or after — we
   answered the first gets an empty 200;
6. dispatch to the command router (card button presses to its actions); an answer ready
   within REPLY_DEADLINE goes back as the encrypted passive reply, anything slower gets an
   empty 200 now and its answer is queued in the outbox for the send API.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import secrets
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Awaitable, Callable
from xml.etree.ElementTree import ParseError

from aiohttp import web
from defusedxml import ElementTree as SafeXML
from defusedxml.common import DefusedXmlException
from sqlalchemy.exc import IntegrityError
from wechatpy.enterprise import WeChatCrypto
from wechatpy.exceptions import InvalidSignatureException
from wechatpy.enterprise.exceptions import InvalidCorpIdException

from bot.metrics import Metrics
from handlers.registry import Asker, Reply, Router
from handlers.text import plain_text, render
from storage import queries
from storage.models import CallbackSeen

logger = logging.getLogger(__name__)

MAX_BODY_BYTES = 64 * 1024
# A press on a template card button (wechatpy does not parse it: read its raw fields).
CARD_EVENT = "template_card_event"
# callback_seen.dedupe_key is a String(160).
DEDUPE_KEY_CHARS = 160
# WeCom drops the connection after 5 s; leave room for the network and the encryption.
REPLY_DEADLINE = 4.0


@dataclass(frozen=True)
class InboundMessage:
    """The fields of a decrypted callback we use; `raw` has every element."""

    msg_type: str
    from_user: str
    create_time: str
    msg_id: str | None
    content: str
    event: str | None
    raw: dict[str, str]

    @property
    def dedupe_key(self) -> str:
        if self.msg_id:
            return f"msg:{self.msg_id}"
        key = f"event:{self.from_user}:{self.create_time}"
        if self.event == CARD_EVENT:
            # Two presses within one second share FromUserName + CreateTime but not the
            # ResponseCode WeCom issues per press; a retry resends the same code.
            code = self.raw.get("ResponseCode", "")
            key = f"{key}:{code}"
            if len(key) > DEDUPE_KEY_CHARS:
                key = f"event:{self.from_user}:{self.create_time}:sha1:{hashlib.sha1(code.encode()).hexdigest()}"
        return key


def signature_of(token: str, timestamp: str, nonce: str, encrypted: str) -> str:
    return hashlib.sha1("".join(sorted([token, timestamp, nonce, encrypted])).encode()).hexdigest()


def parse_flat_xml(text: str | bytes) -> dict[str, str]:
    """<xml><A>1</A><B>x</B></xml> → {"A": "1", "B": "x"}; nested elements keep their
    text under their own tag. Raises ValueError on anything that is not such XML."""
    try:
        root = SafeXML.fromstring(text)
    except (ParseError, DefusedXmlException, ValueError) as exc:
        raise ValueError(f"not valid XML: {exc.__class__.__name__}") from None
    if root.tag != "xml":
        raise ValueError("the root element is not <xml>")
    fields: dict[str, str] = {}
    for element in root.iter():
        if element is not root and element.tag not in fields:
            fields[element.tag] = (element.text or "").strip()
    return fields


def inbound_from_xml(text: str) -> InboundMessage:
    fields = parse_flat_xml(text)
    if not fields.get("MsgType") or not fields.get("FromUserName"):
        raise ValueError("MsgType or FromUserName missing")
    return InboundMessage(msg_type=fields["MsgType"], from_user=fields["FromUserName"],
                          create_time=fields.get("CreateTime", ""), msg_id=fields.get("MsgId") or None,
                          content=fields.get("Content", ""), event=fields.get("Event") or None, raw=fields)


def reply_xml(to_user: str, from_corp: str, content: str) -> str:
    """A passive text reply (WeCom's passive replies have no markdown type)."""
    escaped = content.replace("]]>", "]]]]><![CDATA[>")
    return (f"<xml><ToUserName><![CDATA[{to_user}]]></ToUserName><FromUserName><![CDATA[{from_corp}]]></FromUserName>"
            f"<CreateTime>{int(time.time())}</CreateTime><MsgType><![CDATA[text]]></MsgType>"
            f"<Content><![CDATA[{escaped}]]></Content></xml>")


# Queue an answer that missed the deadline for the send API: (userid, reply, origin) → None.
LateReplySink = Callable[[str, Reply, str], Awaitable[None]]


class WeComCallback:
    def __init__(self, *, token: str, encoding_aes_key: str, corp_id: str, router: Router, services: Any,
                 metrics: Metrics, late_reply: LateReplySink, deadline: float = REPLY_DEADLINE):
        self.token = token
        self.corp_id = corp_id
        self.crypto = WeChatCrypto(token, encoding_aes_key, corp_id)
        self.router = router
        self.services = services
        self.metrics = metrics
        self.late_reply = late_reply
        self.deadline = deadline
        self._background: set[asyncio.Task] = set()

    def routes(self) -> list[web.RouteDef]:
        return [web.get("/wecom/callback", self.verify_url), web.post("/wecom/callback", self.receive)]

    # ------------------------------------------------------------------ GET

    async def verify_url(self, request: web.Request) -> web.Response:
        query = request.query
        try:
            signature, timestamp, nonce, echostr = (query[k] for k in ("msg_signature", "timestamp", "nonce",
                                                                        "echostr"))
        except KeyError as missing:
            return self._refuse(400, f"missing query parameter {missing}")
        if not hmac.compare_digest(signature_of(self.token, timestamp, nonce, echostr), signature):
            return self._refuse(403, "bad signature")
        try:
            plain = self.crypto.check_signature(signature, timestamp, nonce, echostr)
        except (InvalidSignatureException, InvalidCorpIdException, ValueError, TypeError):
            return self._refuse(400, "echostr does not decrypt for this corp")
        text = plain.decode() if isinstance(plain, bytes) else str(plain)
        return web.Response(text=text, content_type="text/plain")

    # ------------------------------------------------------------------ POST

    async def receive(self, request: web.Request) -> web.Response:
        query = request.query
        signature, timestamp, nonce = (query.get(k, "") for k in ("msg_signature", "timestamp", "nonce"))
        if not (signature and timestamp and nonce):
            return self._refuse(400, "missing msg_signature, timestamp or nonce")
        if (request.content_length or 0) > MAX_BODY_BYTES:
            return self._refuse(400, "body too large")
        body = await request.content.read(MAX_BODY_BYTES + 1)
        if len(body) > MAX_BODY_BYTES:
            return self._refuse(400, "body too large")
        try:
            encrypted = parse_flat_xml(body).get("Encrypt", "")
        except ValueError as exc:
            return self._refuse(400, f"envelope {exc}")
        if not encrypted:
            return self._refuse(400, "envelope has no Encrypt element")
        if not hmac.compare_digest(signature_of(self.token, timestamp, nonce, encrypted), signature):
            return self._refuse(403, "bad signature")
        try:
            plain = self.crypto.decrypt_message({"Encrypt": encrypted}, signature, timestamp, nonce)
            message = inbound_from_xml(plain)
        except InvalidCorpIdException:
            return self._refuse(400, "message is for another corp")
        except (ValueError, TypeError, UnicodeDecodeError, InvalidSignatureException) as exc:
            return self._refuse(400, f"message does not decrypt or parse ({exc.__class__.__name__})")

        if not await self._claim(message):
            self.metrics.dedupe_hits.inc()
            return web.Response(text="")

        work = asyncio.ensure_future(self._answer(message))
        try:
            reply = await asyncio.wait_for(asyncio.shield(work), timeout=self.deadline)
        except asyncio.TimeoutError:
            # Too slow for a passive reply: WeCom gets its 200 now, the user the answer later.
            self.metrics.late_replies.inc()
            self._background.add(work)
            work.add_done_callback(lambda task: self._finish_late(task, message))
            return web.Response(text="")
        if reply is None:
            return web.Response(text="")
        envelope = self.crypto.encrypt_message(reply_xml(message.from_user, self.corp_id, plain_text(reply.text)),
                                               secrets.token_hex(8), str(int(time.time())))
        return web.Response(text=envelope, content_type="application/xml")

    def _finish_late(self, task: asyncio.Task, message: InboundMessage) -> None:
        self._background.discard(task)
        if task.cancelled() or task.exception() is not None or task.result() is None:
            return
        follow_up = asyncio.ensure_future(self.late_reply(message.from_user, task.result(),
                                                          f"reply:{message.dedupe_key}"))
        self._background.add(follow_up)
        follow_up.add_done_callback(self._background.discard)

    async def _claim(self, message: InboundMessage) -> bool:
        """True for the first delivery of this message; False for WeCom's retries."""
        try:
            async with self.services.db.begin() as connection:
                await connection.execute(CallbackSeen.__table__.insert().values(
                    dedupe_key=message.dedupe_key[:160], received_at=datetime.now(timezone.utc)))
        except IntegrityError:
            return False
        return True

    async def _answer(self, message: InboundMessage) -> Reply | None:
        started = time.perf_counter()
        try:
            return await self._answer_unmeasured(message)
        except Exception:
            self.metrics.errors.labels(kind="handler").inc()
            logger.exception("answering %s failed", message.dedupe_key)
            return Reply(render("chat/error.zh.j2"), msgtype="text")
        finally:
            self.metrics.handler_seconds.observe(time.perf_counter() - started)

    async def _answer_unmeasured(self, message: InboundMessage) -> Reply | None:
        if message.msg_type == "event":
            # Opening the app is a good moment for the help text; other events come with later issues.
            if message.event == "enter_agent":
                return await self._dispatch(message, "帮助")
            if message.event == CARD_EVENT:
                return await self._dispatch_action(message)
            return None
        if message.msg_type != "text":
            return await self._dispatch(message, "")
        return await self._dispatch(message, message.content)

    async def _asker(self, message: InboundMessage) -> Asker | None:
        async def load_user():
            async with self.services.db.connect() as connection:
                # WeCom's own spelling of the UserID, whatever case the users file used.
                return await queries.find_user(connection, message.from_user)

        user = await self.services.cached(("user", message.from_user.lower()), load_user)
        return Asker(user.userid, user.name, user.role, user.language) if user is not None else None

    def _unknown_user(self, message: InboundMessage, lang: str) -> Reply:
        self.metrics.commands.labels(command="unknown_user").inc()
        return Reply(render(f"chat/unknown_user.{lang}.j2", userid=message.from_user), msgtype="text")

    async def _dispatch(self, message: InboundMessage, text: str) -> Reply:
        asker = await self._asker(message)
        if asker is None:
            return self._unknown_user(message, "en" if text and text.isascii() else "zh")
        command, reply = await self.router.dispatch(text, asker, self.services)
        self.metrics.commands.labels(command=command).inc()
        return reply

    async def _dispatch_action(self, message: InboundMessage) -> Reply | None:
        """A card button: EventKey names the action, ResponseCode lets us update the card."""
        asker = await self._asker(message)
        if asker is None:
            return self._unknown_user(message, getattr(self.services.config, "language", "zh"))
        fields = {name: message.raw.get(name, "") for name in ("EventKey", "TaskId", "CardType", "ResponseCode")}
        action, reply = await self.router.dispatch_action(fields["EventKey"], asker, self.services, fields)
        self.metrics.commands.labels(command=f"button:{action}").inc()
        return reply

    def _refuse(self, status: int, why: str) -> web.Response:
        self.metrics.errors.labels(kind=f"http_{status}").inc()
        logger.warning("callback refused (%s): %s", status, why)
        return web.Response(status=status, text={400: "bad request", 403: "forbidden"}[status])
