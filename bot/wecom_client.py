"""WeCom (企业微信) server API client on aiohttp: app messages, template cards, media, group robot.

One client is one self-built app (corp_id + secret + agent_id). It never blocks the event
loop, keeps one access_token per app and refreshes it before it runs out, and sends every
message through one path, `WeComClient.send_message`.

What the client does and does not do:
- It checks WeCom's documented limits before sending and raises `ValueError` naming the
  limit, so a message WeCom would reject (or silently cut) never leaves the process.
- On 40001/40014/42001 from an API call it drops the token, fetches a new one and repeats
  the call once. A second failure raises: never a loop.
- Every other failure raises `WeComError` with `.errcode`, `.errmsg` and `.retryable`.
  Retrying with backoff is the outbox dispatcher's job, not this module's.
- The secret, the access_token and the robot key never appear in logs or error messages.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import aiohttp

logger = logging.getLogger(__name__)

DEFAULT_API_BASE = "https://qyapi.weixin.qq.com"
DEFAULT_TIMEOUT_SECONDS = 10.0

# WeCom's limits (developer.work.weixin.qq.com: 发送应用消息, 上传临时素材, 消息推送/群机器人).
TEXT_MAX_BYTES = 2048
APP_MARKDOWN_MAX_BYTES = 2048
TEXTCARD_TITLE_MAX_BYTES = 128
TEXTCARD_DESCRIPTION_MAX_BYTES = 512
MAX_RECIPIENTS = 1000
TEMPLATE_CARD_MAX_BUTTONS = 6
TASK_ID_PATTERN = re.compile(r"^[0-9A-Za-z_\-@]{1,128}$")
# Cards whose buttons call back; WeCom requires a task_id on them.
CALLBACK_CARD_TYPES = frozenset({"button_interaction", "vote_interaction", "multiple_interaction"})
DUPLICATE_CHECK_DEFAULT_SECONDS = 1800
DUPLICATE_CHECK_MAX_SECONDS = 4 * 3600
WEBHOOK_TEXT_MAX_BYTES = 2048
WEBHOOK_MARKDOWN_MAX_BYTES = 4096
MEDIA_MIN_BYTES = 6  # "所有文件size必须大于5个字节"
MEDIA_MAX_BYTES = {
    "image": 10 * 1024 * 1024,
    "voice": 2 * 1024 * 1024,
    "video": 10 * 1024 * 1024,
    "file": 20 * 1024 * 1024,
}

# A token is refreshed this long before WeCom says it expires, so a call never races expiry.
TOKEN_REFRESH_MARGIN_SECONDS = 300

# 40001 invalid credential, 40014 invalid access_token, 42001 access_token expired:
# all mean "this token is no good", and WeCom may revoke tokens early (获取access_token 注意事项).
TOKEN_ERRCODES = frozenset({40001, 40014, 42001})
# -1 system busy (retry ≤ 3 times), 45009 api freq out of limit, 45033 too many concurrent calls.
RETRYABLE_ERRCODES = frozenset({-1, 45009, 45033})

_SECRET_QUERY = re.compile(r"(access_token|corpsecret|key)=[^&\s'\"]*", re.IGNORECASE)


def redact(text: str) -> str:
    """Blank out access_token, corpsecret and robot key values in a URL or message."""
    return _SECRET_QUERY.sub(r"\1=***", text)


class WeComError(Exception):
    """WeCom answered with a non-zero errcode, or (subclass) did not answer at all."""

    def __init__(self, errcode: int | None, errmsg: str, *, path: str = "", response: Mapping | None = None):
        self.errcode = errcode
        self.errmsg = errmsg
        self.path = path
        # The decoded answer (never holds the token); 81013 carries `invaliduser` here.
        self.response = dict(response or {})
        where = f" from {path}" if path else ""
        super().__init__(f"WeCom errcode {errcode}{where}: {errmsg}")

    @property
    def retryable(self) -> bool:
        return self.errcode is None or self.errcode in RETRYABLE_ERRCODES


class WeComTransportError(WeComError):
    """No usable answer: timeout, dropped connection, HTTP error status, or a body that is not JSON."""

    def __init__(self, errmsg: str, *, path: str = ""):
        super().__init__(None, errmsg, path=path)

    @property
    def retryable(self) -> bool:
        return True


@dataclass(frozen=True)
class SendResult:
    errcode: int = 0
    msgid: str | None = None
    # Recipients WeCom did not accept (not in the app's visible range, unknown, left the company).
    invaliduser: list[str] = field(default_factory=list)
    # Only for callback template cards: one call of update_template_card, valid 72 h.
    response_code: str | None = None


def _parse_user_list(value: Any) -> list[str]:
    # message/send answers "a|b"; update_template_card answers ["a", "b"].
    if not value:
        return []
    if isinstance(value, str):
        return [user for user in value.split("|") if user]
    return [str(user) for user in value]


def _utf8_len(text: str) -> int:
    return len(text.encode("utf-8"))


def _check_bytes(what: str, text: str, limit: int) -> None:
    size = _utf8_len(text)
    if size > limit:
        raise ValueError(f"{what} is {size} bytes (UTF-8); WeCom accepts at most {limit} bytes")


def _check_not_empty(what: str, text: str) -> None:
    if not text or not text.strip():
        raise ValueError(f"{what} is empty; WeCom rejects empty content (errcode 44004)")


def _touser_field(touser: Iterable[str] | str) -> str:
    users = [touser] if isinstance(touser, str) else list(touser)
    users = [user for user in users if user]
    if not users:
        raise ValueError("touser is empty; name at least one recipient")
    if len(users) > MAX_RECIPIENTS:
        raise ValueError(f"touser has {len(users)} recipients; WeCom accepts at most {MAX_RECIPIENTS} per message")
    return "|".join(users)


def validate_template_card(card: Mapping[str, Any]) -> None:
    """Raise ValueError for a card WeCom would refuse: too many buttons or a malformed task_id."""
    card_type = card.get("card_type")
    if not card_type:
        raise ValueError("template_card.card_type is missing")
    buttons = card.get("button_list") or []
    if len(buttons) > TEMPLATE_CARD_MAX_BUTTONS:
        raise ValueError(
            f"template_card has {len(buttons)} buttons; WeCom accepts at most {TEMPLATE_CARD_MAX_BUTTONS}"
        )
    task_id = card.get("task_id")
    if task_id is None:
        if card_type in CALLBACK_CARD_TYPES:
            raise ValueError(f"template_card of type {card_type} needs a task_id (unique per app)")
        return
    if not isinstance(task_id, str) or not TASK_ID_PATTERN.match(task_id):
        raise ValueError(
            f"template_card.task_id {task_id!r} must be 1-128 characters of 0-9 A-Z a-z _ - @ (unique per app)"
        )


def validate_message(payload: Mapping[str, Any]) -> None:
    """The client-side mirror of WeCom's message/send limits."""
    msgtype = payload.get("msgtype")
    if not msgtype:
        raise ValueError("payload has no msgtype")
    body = payload.get(msgtype)
    if not isinstance(body, Mapping):
        raise ValueError(f"payload has no {msgtype!r} object")
    if payload.get("touser") is not None:
        users = [user for user in str(payload["touser"]).split("|") if user]
        if len(users) > MAX_RECIPIENTS:
            raise ValueError(f"touser has {len(users)} recipients; WeCom accepts at most {MAX_RECIPIENTS} per message")
    if not (payload.get("touser") or payload.get("toparty") or payload.get("totag")):
        raise ValueError("payload names no recipient (touser, toparty or totag)")
    if msgtype == "text":
        _check_not_empty("text content", body.get("content", ""))
        _check_bytes("text content", body["content"], TEXT_MAX_BYTES)
    elif msgtype == "markdown":
        _check_not_empty("markdown content", body.get("content", ""))
        _check_bytes("markdown content", body["content"], APP_MARKDOWN_MAX_BYTES)
    elif msgtype == "textcard":
        for required in ("title", "description", "url"):
            if not body.get(required):
                raise ValueError(f"textcard {required} is missing")
        _check_bytes("textcard title", body["title"], TEXTCARD_TITLE_MAX_BYTES)
        _check_bytes("textcard description", body["description"], TEXTCARD_DESCRIPTION_MAX_BYTES)
    elif msgtype == "template_card":
        validate_template_card(body)
    elif msgtype == "image":
        if not body.get("media_id"):
            raise ValueError("image media_id is missing; upload the image first")
    if payload.get("enable_duplicate_check"):
        interval = payload.get("duplicate_check_interval", DUPLICATE_CHECK_DEFAULT_SECONDS)
        if not isinstance(interval, int) or not 0 < interval <= DUPLICATE_CHECK_MAX_SECONDS:
            raise ValueError(
                f"duplicate_check_interval {interval!r} must be 1..{DUPLICATE_CHECK_MAX_SECONDS} seconds (4 hours)"
            )


class _HttpCaller:
    """One JSON-over-HTTP exchange with WeCom, turned into a dict or a WeComTransportError."""

    def __init__(self, session: aiohttp.ClientSession | None, api_base: str, timeout: float | aiohttp.ClientTimeout):
        self._session = session
        self._owns_session = session is None
        self._api_base = api_base.rstrip("/")
        self._timeout = timeout if isinstance(timeout, aiohttp.ClientTimeout) else aiohttp.ClientTimeout(total=timeout)

    def _get_session(self) -> aiohttp.ClientSession:
        # Created lazily: a ClientSession belongs to the running loop.
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession()
            self._owns_session = True
        return self._session

    async def close(self) -> None:
        if self._owns_session and self._session is not None and not self._session.closed:
            await self._session.close()

    async def call(
        self,
        method: str,
        path: str,
        params: Mapping[str, str],
        *,
        json_body: Mapping[str, Any] | None = None,
        form_factory: Callable[[], aiohttp.FormData] | None = None,
    ) -> dict[str, Any]:
        url = f"{self._api_base}{path}"
        # A FormData can be sent only once, so each attempt builds its own.
        data = form_factory() if form_factory is not None else None
        started = time.monotonic()
        try:
            async with self._get_session().request(
                method, url, params=params, json=json_body, data=data, timeout=self._timeout
            ) as response:
                if response.status != 200:
                    raise WeComTransportError(f"HTTP {response.status}", path=path)
                try:
                    body = await response.json(content_type=None)
                except ValueError:
                    raise WeComTransportError("answer is not JSON", path=path) from None
        except TimeoutError:
            raise WeComTransportError(
                f"no answer within {self._timeout.total} s", path=path
            ) from None
        except aiohttp.ClientError as exc:
            # `from None`: aiohttp's exception text can quote the URL, and so the token.
            raise WeComTransportError(f"{type(exc).__name__}: {redact(str(exc))}", path=path) from None
        if not isinstance(body, dict):
            raise WeComTransportError("answer is not a JSON object", path=path)
        elapsed_ms = (time.monotonic() - started) * 1000
        logger.debug("wecom %s %s → errcode %s in %.0f ms", method, path, body.get("errcode"), elapsed_ms)
        return body


class WeComClient:
    """The WeCom server API for one self-built app."""

    def __init__(
        self,
        session: aiohttp.ClientSession | None,
        corp_id: str,
        secret: str,
        agent_id: int | str,
        api_base: str = DEFAULT_API_BASE,
        *,
        timeout: float | aiohttp.ClientTimeout = DEFAULT_TIMEOUT_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ):
        if not corp_id or not secret:
            raise ValueError("WeComClient needs corp_id and secret")
        try:
            self.agent_id = int(agent_id)
        except (TypeError, ValueError):
            raise ValueError(f"agent_id must be the app's numeric AgentId, got {agent_id!r}") from None
        self.corp_id = corp_id
        self._secret = secret
        self._http = _HttpCaller(session, api_base, timeout)
        self._clock = clock
        self._token: str | None = None
        self._token_refresh_at = 0.0
        self._token_lock = asyncio.Lock()
        # Lets callers that queued behind a failed gettoken share its error instead of each
        # trying again in turn (a herd of fetches against a WeCom that just said "busy").
        self._token_fetches_finished = 0
        self._token_fetch_error: WeComError | None = None

    @classmethod
    def from_config(cls, wecom_config: Any, session: aiohttp.ClientSession | None = None, **kwargs: Any) -> WeComClient:
        """Build from the `wecom` config section (corp_id, secret, agent_id, api_base)."""
        return cls(
            session,
            wecom_config.corp_id,
            wecom_config.secret,
            wecom_config.agent_id,
            wecom_config.api_base or DEFAULT_API_BASE,
            **kwargs,
        )

    def __repr__(self) -> str:
        return f"WeComClient(corp_id={self.corp_id!r}, agent_id={self.agent_id})"

    async def close(self) -> None:
        """Close the HTTP session if this client created it."""
        await self._http.close()

    async def __aenter__(self) -> WeComClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # -- token ---------------------------------------------------------------------------

    def _token_is_fresh(self) -> bool:
        return self._token is not None and self._clock() < self._token_refresh_at

    async def get_token(self) -> str:
        """The cached access_token, fetched or refreshed first when due. One fetch at a time."""
        if self._token_is_fresh():
            return self._token  # type: ignore[return-value]
        fetches_before_waiting = self._token_fetches_finished
        async with self._token_lock:
            # Whoever held the lock before us may have fetched it already, or failed to.
            if self._token_is_fresh():
                return self._token  # type: ignore[return-value]
            if self._token_fetches_finished != fetches_before_waiting and self._token_fetch_error is not None:
                raise self._token_fetch_error
            try:
                await self._fetch_token()
                self._token_fetch_error = None
            except WeComError as error:
                self._token_fetch_error = error
                raise
            finally:
                self._token_fetches_finished += 1
            return self._token  # type: ignore[return-value]

    async def _fetch_token(self) -> None:
        path = "/cgi-bin/gettoken"
        body = await self._http.call("GET", path, {"corpid": self.corp_id, "corpsecret": self._secret})
        errcode = body.get("errcode", 0)
        if errcode != 0 or not body.get("access_token"):
            raise WeComError(errcode, str(body.get("errmsg", "")), path=path, response=body)
        expires_in = float(body.get("expires_in", 7200))
        # Refresh 5 minutes early; when WeCom hands back a token that has less than that left
        # (it returns the same token while it is valid), use half of what remains instead, so
        # the end of a token's life costs a few fetches, not one per call.
        lifetime = max(expires_in - TOKEN_REFRESH_MARGIN_SECONDS, expires_in / 2)
        self._token = body["access_token"]
        self._token_refresh_at = self._clock() + lifetime
        logger.info("wecom access_token fetched for agent %s, valid %.0f s", self.agent_id, expires_in)

    def _invalidate_token(self, rejected_token: str) -> None:
        # Only the token that was rejected: a concurrent caller may have replaced it already.
        if self._token == rejected_token:
            self._token = None

    # -- the one path every API call takes -------------------------------------------------

    async def _call_api(
        self,
        method: str,
        path: str,
        *,
        json_body: Mapping[str, Any] | None = None,
        params: Mapping[str, str] | None = None,
        form_factory: Callable[[], aiohttp.FormData] | None = None,
    ) -> dict[str, Any]:
        def call_with(token: str) -> Any:
            query = {**(params or {}), "access_token": token}
            return self._http.call(method, path, query, json_body=json_body, form_factory=form_factory)

        token = await self.get_token()
        body = await call_with(token)
        if body.get("errcode", 0) in TOKEN_ERRCODES:
            logger.info("wecom %s answered errcode %s; fetching a new token, trying once more", path, body["errcode"])
            self._invalidate_token(token)
            body = await call_with(await self.get_token())
        errcode = body.get("errcode", 0)
        if errcode != 0:
            raise WeComError(errcode, str(body.get("errmsg", "")), path=path, response=body)
        return body

    async def send_message(
        self,
        payload: Mapping[str, Any],
        *,
        enable_duplicate_check: bool | None = None,
        duplicate_check_interval: int | None = None,
    ) -> SendResult:
        """POST message/send. Every `send_*` comes through here; `agentid` is filled in."""
        message = dict(payload)
        message.setdefault("agentid", self.agent_id)
        if isinstance(message.get("touser"), list | tuple | set):
            message["touser"] = _touser_field(message["touser"])
        if enable_duplicate_check is not None:
            message["enable_duplicate_check"] = 1 if enable_duplicate_check else 0
        if duplicate_check_interval is not None:
            message["duplicate_check_interval"] = duplicate_check_interval
        validate_message(message)
        body = await self._call_api("POST", "/cgi-bin/message/send", json_body=message)
        result = SendResult(
            errcode=body.get("errcode", 0),
            msgid=body.get("msgid"),
            invaliduser=_parse_user_list(body.get("invaliduser")),
            response_code=body.get("response_code") or None,
        )
        if result.invaliduser:
            logger.warning("wecom message %s not accepted for users %s", result.msgid, ",".join(result.invaliduser))
        return result

    # -- message kinds -----------------------------------------------------------------------

    async def send_text(self, touser: Iterable[str] | str, content: str, **options: Any) -> SendResult:
        payload = {"touser": _touser_field(touser), "msgtype": "text", "text": {"content": content}}
        return await self.send_message(payload, **options)

    async def send_markdown(self, touser: Iterable[str] | str, content: str, **options: Any) -> SendResult:
        payload = {"touser": _touser_field(touser), "msgtype": "markdown", "markdown": {"content": content}}
        return await self.send_message(payload, **options)

    async def send_textcard(
        self,
        touser: Iterable[str] | str,
        title: str,
        description: str,
        url: str,
        btntxt: str = "详情",
        **options: Any,
    ) -> SendResult:
        card = {"title": title, "description": description, "url": url, "btntxt": btntxt}
        payload = {"touser": _touser_field(touser), "msgtype": "textcard", "textcard": card}
        return await self.send_message(payload, **options)

    async def send_template_card(
        self, touser: Iterable[str] | str, card: Mapping[str, Any], **options: Any
    ) -> SendResult:
        payload = {"touser": _touser_field(touser), "msgtype": "template_card", "template_card": dict(card)}
        return await self.send_message(payload, **options)

    async def send_image(self, touser: Iterable[str] | str, media_id: str, **options: Any) -> SendResult:
        payload = {"touser": _touser_field(touser), "msgtype": "image", "image": {"media_id": media_id}}
        return await self.send_message(payload, **options)

    async def update_template_card(
        self,
        userids: Iterable[str],
        response_code: str,
        card: Mapping[str, Any] | None = None,
        *,
        replace_button_name: str | None = None,
    ) -> SendResult:
        """Replace a sent callback card (`card`) or grey out its buttons (`replace_button_name`).

        A response_code works once and for 72 hours; WeCom refuses it after that.
        """
        if (card is None) == (replace_button_name is None):
            raise ValueError("update_template_card needs exactly one of card or replace_button_name")
        users = list(userids)
        if len(users) > MAX_RECIPIENTS:
            raise ValueError(f"userids has {len(users)} entries; WeCom accepts at most {MAX_RECIPIENTS}")
        if not response_code:
            raise ValueError("response_code is empty")
        request: dict[str, Any] = {"userids": users, "agentid": self.agent_id, "response_code": response_code}
        if card is not None:
            validate_template_card(card)
            request["template_card"] = dict(card)
        else:
            request["button"] = {"replace_name": replace_button_name}
        body = await self._call_api("POST", "/cgi-bin/message/update_template_card", json_body=request)
        return SendResult(errcode=body.get("errcode", 0), invaliduser=_parse_user_list(body.get("invaliduser")))

    async def upload_media(self, kind: str, filename: str, data: bytes, content_type: str | None = None) -> str:
        """Upload a temporary media file (valid 3 days) and return its media_id."""
        if kind not in MEDIA_MAX_BYTES:
            raise ValueError(f"media kind {kind!r} must be one of {', '.join(MEDIA_MAX_BYTES)}")
        if len(data) < MEDIA_MIN_BYTES:
            raise ValueError(f"{kind} {filename!r} is {len(data)} bytes; WeCom needs more than 5 bytes")
        if len(data) > MEDIA_MAX_BYTES[kind]:
            raise ValueError(
                f"{kind} {filename!r} is {len(data)} bytes; WeCom accepts at most {MEDIA_MAX_BYTES[kind]} bytes"
            )

        def form() -> aiohttp.FormData:
            form_data = aiohttp.FormData()
            form_data.add_field(
                "media", data, filename=filename, content_type=content_type or "application/octet-stream"
            )
            return form_data

        body = await self._call_api("POST", "/cgi-bin/media/upload", params={"type": kind}, form_factory=form)
        media_id = body.get("media_id")
        if not media_id:
            raise WeComError(body.get("errcode", 0), "upload answered without a media_id", path="/cgi-bin/media/upload")
        return str(media_id)


class WebhookClient:
    """The group robot (群机器人 / 消息推送): POST /cgi-bin/webhook/send?key=. 20 messages a minute."""

    def __init__(
        self,
        session: aiohttp.ClientSession | None,
        key: str,
        api_base: str = DEFAULT_API_BASE,
        *,
        timeout: float | aiohttp.ClientTimeout = DEFAULT_TIMEOUT_SECONDS,
    ):
        if not key:
            raise ValueError("WebhookClient needs the robot key")
        self._key = key
        self._http = _HttpCaller(session, api_base, timeout)

    def __repr__(self) -> str:
        return "WebhookClient(key=***)"

    async def close(self) -> None:
        await self._http.close()

    async def __aenter__(self) -> WebhookClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def send(self, payload: Mapping[str, Any]) -> None:
        """POST one robot message; the one path `send_text` and `send_markdown` take."""
        msgtype = payload.get("msgtype")
        body = payload.get(msgtype) if msgtype else None
        if not isinstance(body, Mapping):
            raise ValueError("robot payload needs a msgtype and its object")
        if msgtype == "text":
            _check_not_empty("robot text content", body.get("content", ""))
            _check_bytes("robot text content", body["content"], WEBHOOK_TEXT_MAX_BYTES)
        elif msgtype == "markdown":
            _check_not_empty("robot markdown content", body.get("content", ""))
            _check_bytes("robot markdown content", body["content"], WEBHOOK_MARKDOWN_MAX_BYTES)
        path = "/cgi-bin/webhook/send"
        answer = await self._http.call("POST", path, {"key": self._key}, json_body=payload)
        errcode = answer.get("errcode", 0)
        if errcode != 0:
            raise WeComError(errcode, str(answer.get("errmsg", "")), path=path, response=answer)

    async def send_text(
        self,
        content: str,
        mentioned_list: Iterable[str] = (),
        mentioned_mobile_list: Iterable[str] = (),
    ) -> None:
        text: dict[str, Any] = {"content": content}
        if mentioned_list:
            text["mentioned_list"] = list(mentioned_list)
        if mentioned_mobile_list:
            text["mentioned_mobile_list"] = list(mentioned_mobile_list)
        await self.send({"msgtype": "text", "text": text})

    async def send_markdown(self, content: str) -> None:
        await self.send({"msgtype": "markdown", "markdown": {"content": content}})
