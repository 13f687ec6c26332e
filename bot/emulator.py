"""A stand-in for the WeCom server API, as an aiohttp app: what the tests and the sandbox talk to.

It answers the five endpoints tierbot uses the way WeCom does — same paths, same JSON,
same error codes, same limits — including the behaviour that is easy to forget:

- access_tokens expire (42001) and are unknown after a revocation (40014);
- recipients outside the address book come back in `invaliduser`, and a message with no
  valid recipient at all fails with 81013;
- more than 30 messages a minute (or 1000 an hour) to one member are accepted with
  errcode 0 and then silently not delivered: `state.dropped_by_rate_limit` shows them;
- with `enable_duplicate_check`, an identical request inside the interval is accepted and
  not delivered again: `state.deduplicated` shows it;
- a callback template card returns a `response_code` that works once, for 72 hours;
- `state.click(userid, task_id, key)` is a member pressing a card button: it issues a fresh
  response_code and returns the fields WeCom puts in the template_card_event callback;
  `state.card_state(task_id, userid)` is how the card looks after update_template_card;
- the group robot takes 20 messages a minute, then answers 45009.

Tests and the sandbox reach the state through `app[EMULATOR]`: what was delivered, every
request received (secrets left out), counters, and fault injection (errcodes, slow
answers, dropped connections).

Error codes come from WeCom's global error table (全局错误码) unless a comment says the
code is our closest guess.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import itertools
import json
import math
import secrets
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

SANDBOX_CORP_ID = "wwsandbox"
SANDBOX_SECRET = "sandbox-secret"
SANDBOX_AGENT_ID = 1000002
SANDBOX_WEBHOOK_KEY = "sandbox-webhook-key"

# Query parameters that are credentials: never kept in `state.received`.
SECRET_QUERY_PARAMS = frozenset({"access_token", "corpsecret", "key"})

MESSAGE_TYPES = frozenset({"text", "markdown", "textcard", "news", "template_card", "image"})
TEMPLATE_CARD_TYPES = frozenset(
    {"text_notice", "news_notice", "button_interaction", "vote_interaction", "multiple_interaction"}
)
CALLBACK_CARD_TYPES = frozenset({"button_interaction", "vote_interaction", "multiple_interaction"})
WEBHOOK_MESSAGE_TYPES = frozenset({"text", "markdown", "markdown_v2", "image", "news", "file", "template_card"})

TEXT_MAX_BYTES = 2048
APP_MARKDOWN_MAX_BYTES = 2048
TEXTCARD_TITLE_MAX_BYTES = 128
TEXTCARD_DESCRIPTION_MAX_BYTES = 512
NEWS_MAX_ARTICLES = 8
MAX_RECIPIENTS = 1000
TEMPLATE_CARD_MAX_BUTTONS = 6
TASK_ID_MAX_BYTES = 128
TASK_ID_CHARACTERS = frozenset("0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz_-@")
DUPLICATE_CHECK_DEFAULT_SECONDS = 1800
DUPLICATE_CHECK_MAX_SECONDS = 4 * 3600
RESPONSE_CODE_VALID_SECONDS = 72 * 3600
MEMBER_LIMIT_PER_MINUTE = 30
MEMBER_LIMIT_PER_HOUR = 1000
WEBHOOK_LIMIT_PER_MINUTE = 20
WEBHOOK_TEXT_MAX_BYTES = 2048
WEBHOOK_MARKDOWN_MAX_BYTES = 4096
WEBHOOK_IMAGE_MAX_BYTES = 2 * 1024 * 1024
MEDIA_MIN_BYTES = 6  # "所有文件size必须大于5个字节"
# kind → (largest size, errcode WeCom gives beyond it)
MEDIA_LIMITS = {
    "image": (10 * 1024 * 1024, 40009),
    "voice": (2 * 1024 * 1024, 40006),
    "video": (10 * 1024 * 1024, 40011),
    "file": (20 * 1024 * 1024, 40006),
}
# Room for a 20 MB file plus the multipart envelope; aiohttp's default is 1 MB.
CLIENT_MAX_SIZE = 32 * 1024 * 1024

ERRMSGS = {
    -1: "system busy",
    40001: "invalid credential",
    40005: "invalid media type",
    40006: "invalid file size",
    40007: "invalid media_id",
    40008: "invalid message type",
    40009: "invalid image size",
    40011: "invalid video size",
    40013: "invalid corpid",
    40014: "invalid access_token",
    40032: "invalid userid list size",
    40056: "invalid agentid",
    40058: "invalid Request Parameter",
    41001: "access_token missing",
    41002: "corpid missing",
    41004: "corpsecret missing",
    41010: "url missing",
    41011: "agentid missing",
    41033: "description missing",
    42001: "access_token expired",
    42014: "taskid has existed or empty or exceed max len",
    44001: "empty media data",
    44004: "empty content",
    45002: "content size out of limit",
    45008: "article size out of limit",
    45009: "api freq out of limit",
    45033: "api concurrent out of limit",
    47001: "data format error",
    81013: "user & party & tag all invalid",
    93000: "invalid webhook url",
}


@dataclass(frozen=True)
class UserMessage:
    """One message to one member: delivered, dropped by the rate limit, or deduplicated."""

    userid: str
    msgtype: str
    payload: dict[str, Any]  # the whole message/send request body
    msgid: str
    received_at: float


@dataclass
class ReceivedRequest:
    method: str
    path: str
    query: dict[str, str]  # without access_token, corpsecret or key
    json: dict[str, Any] | None = None
    body_bytes: int = 0
    received_at: float = 0.0
    errcode: int | None = None  # what the emulator answered; None when it dropped the connection


@dataclass(frozen=True)
class WebhookMessage:
    key: str
    msgtype: str
    payload: dict[str, Any]
    received_at: float


@dataclass(frozen=True)
class UploadedMedia:
    media_id: str
    kind: str
    filename: str
    size: int
    created_at: float


@dataclass(frozen=True)
class CardUpdate:
    response_code: str
    userids: list[str]
    payload: dict[str, Any]
    received_at: float
    task_id: str | None = None  # the card the response_code belongs to


@dataclass
class _Fault:
    kind: str  # "errcode" | "delay" | "disconnect"
    path: str | None
    remaining: int
    errcode: int = 0
    errmsg: str | None = None
    seconds: float = 0.0


@dataclass
class _ResponseCode:
    task_id: str | None
    issued_at: float
    used: bool = False


def _normalise_path(path: str | None) -> str | None:
    if path is None:
        return None
    path = path.strip()
    if not path.startswith("/"):
        path = "/cgi-bin/" + path
    return path


def _utf8_len(text: str) -> int:
    return len(text.encode("utf-8"))


class SharedClock:
    """A settable time for tests and benchmarks, read both ways: as epoch seconds (the
    emulator, the WeCom client) and as an aware UTC datetime (the dispatcher). One clock
    for all of them keeps token expiry, rate windows and not_before in step."""

    def __init__(self, start: datetime):
        self.moment = start

    def utc(self) -> datetime:
        return self.moment

    def __call__(self) -> float:
        return self.moment.timestamp()

    def advance(self, seconds: float) -> None:
        self.moment += timedelta(seconds=seconds)


class EmulatorState:
    """Everything the emulator knows and records. Tests read it and steer it."""

    def __init__(
        self,
        corp_id: str = SANDBOX_CORP_ID,
        secret: str = SANDBOX_SECRET,
        agent_id: int = SANDBOX_AGENT_ID,
        known_users: Iterable[str] = (),
        token_ttl: int = 7200,
        clock: Callable[[], float] = time.monotonic,
        webhook_keys: Iterable[str] = (SANDBOX_WEBHOOK_KEY,),
        directory: Callable[[str], bool] | None = None,
    ):
        """`directory`: asked about a userid not among `known_users` (the sandbox asks its
        database, where an import may have added people); a yes makes them a member."""
        self.corp_id = corp_id
        self.secret = secret
        self.agent_id = int(agent_id)
        self.token_ttl = token_ttl
        self.clock = clock
        if isinstance(known_users, str):
            known_users = [known_users]
        self.known_users: set[str] = set(known_users)
        self._directory = directory
        self.webhook_keys: set[str] = set(webhook_keys)
        # Live data that survives clear(): tokens (token → expires at), uploaded media.
        self.tokens: dict[str, float] = {}
        self._current_token: str | None = None
        self.media: dict[str, UploadedMedia] = {}
        # Called with each UserMessage as it is delivered (the sandbox console listens here).
        self.listeners: list[Callable[[UserMessage], None]] = []
        self._hints = itertools.count(1)
        self._faults: list[_Fault] = []
        self._shutting_down: asyncio.Event | None = None
        self.clear()

    # -- what tests read -----------------------------------------------------------------

    def clear(self) -> None:
        """Forget every record, every limit's memory and every pending fault.

        Users, webhook keys, tokens and uploaded media stay.
        """
        self.received: list[ReceivedRequest] = []
        self.delivered: list[UserMessage] = []
        self.dropped_by_rate_limit: list[UserMessage] = []
        self.deduplicated: list[UserMessage] = []
        self.webhook_messages: list[WebhookMessage] = []
        self.card_updates: list[CardUpdate] = []
        self._deliveries_by_user: dict[str, deque[float]] = {}
        self._recent_requests: dict[str, float] = {}
        self._task_ids: set[str] = set()
        self._response_codes: dict[str, _ResponseCode] = {}
        self._webhook_sends: dict[str, deque[float]] = {}
        self._faults.clear()

    @property
    def token_fetches(self) -> int:
        """gettoken requests received, whatever they were answered."""
        return len(self.requests_to("gettoken"))

    def messages_for(self, userid: str) -> list[UserMessage]:
        return [message for message in self.delivered if message.userid == userid]

    def requests_to(self, path: str) -> list[ReceivedRequest]:
        wanted = _normalise_path(path)
        return [request for request in self.received if request.path == wanted]

    def card_state(self, task_id: str, userid: str | None = None) -> dict[str, Any] | None:
        """How the card with `task_id` looks now: to `userid`, or after every update when None.

        {"task_id", "card": the template_card shown (as sent, or the latest replacement),
        "replaced_name": the grey button's text after a `button.replace_name` update (else None),
        "updated": whether any update reached it}. None when no such card was delivered (to `userid`).
        """
        card = self._delivered_card(task_id, userid)
        if card is None:
            return None
        replaced_name: str | None = None
        updated = False
        for update in self.card_updates:
            if update.task_id != task_id or (userid is not None and not _update_reaches(update, userid)):
                continue
            updated = True
            if "template_card" in update.payload:
                card, replaced_name = update.payload["template_card"], None
            else:
                replaced_name = str(update.payload["button"]["replace_name"])
        return {"task_id": task_id, "card": card, "replaced_name": replaced_name, "updated": updated}

    # -- what tests steer ----------------------------------------------------------------

    def add_user(self, userid: str) -> None:
        self.known_users.add(userid)

    def is_known_user(self, userid: str) -> bool:
        if userid in self.known_users:
            return True
        if self._directory is not None and self._directory(userid):
            self.known_users.add(userid)
            return True
        return False

    def add_webhook_key(self, key: str) -> None:
        self.webhook_keys.add(key)

    def expire_tokens(self) -> None:
        """Every token issued so far expires now: the next call with one answers 42001."""
        now = self.clock()
        for token in self.tokens:
            self.tokens[token] = min(self.tokens[token], now)

    def revoke_tokens(self) -> None:
        """Forget every token, as WeCom may do early: the next call with one answers 40014."""
        self.tokens.clear()
        self._current_token = None

    def inject(self, path: str | None, errcode: int, times: int = 1, errmsg: str | None = None) -> None:
        """The next `times` calls to `path` (e.g. "message/send"; None: any endpoint) answer `errcode`."""
        self._faults.append(_Fault("errcode", _normalise_path(path), times, errcode=errcode, errmsg=errmsg))

    def inject_delay(self, seconds: float, times: int = 1, path: str | None = None) -> None:
        """The next `times` calls wait `seconds` before answering (normally, after the wait)."""
        self._faults.append(_Fault("delay", _normalise_path(path), times, seconds=seconds))

    def inject_disconnect(self, times: int = 1, path: str | None = None) -> None:
        """The next `times` calls get their connection closed without any answer."""
        self._faults.append(_Fault("disconnect", _normalise_path(path), times))

    def clear_faults(self) -> None:
        self._faults.clear()

    def click(self, userid: str, task_id: str, key: str) -> dict[str, str]:
        """Member `userid` presses the button `key` on the card `task_id` delivered to them.

        Returns the fields of the template_card_event callback WeCom then sends (documented in
        事件格式 · 模板卡片事件推送), with a fresh ResponseCode: one update_template_card call,
        72 hours, like the one message/send returned. Raises ValueError for a click WeCom's
        client could not make: a card not delivered to this member, an unknown key, a URL
        button (it opens the page, no callback), or buttons greyed out by an update.
        Not documented, so our guess: a button stays clickable until the app updates the card,
        and every click brings a new code.
        """
        state = self.card_state(task_id, userid)
        if state is None:
            elsewhere = self._delivered_card(task_id, None) is not None
            raise ValueError(f"no card with task_id {task_id!r} was delivered to {userid!r}"
                             + (" (it went to other members)" if elsewhere else ""))
        if state["replaced_name"] is not None:
            raise ValueError(f"card {task_id!r} was already updated: its button reads "
                             f"{state['replaced_name']!r} and cannot be clicked")
        card = state["card"]
        card_type = str(card.get("card_type"))
        # vote/multiple cards (SelectedItems) and action_menu (template_card_menu_event) are not simulated.
        if card_type != "button_interaction":
            raise ValueError(f"card {task_id!r} is a {card_type} card now: it has no buttons to click")
        if card.get("replace_text"):
            raise ValueError(f"card {task_id!r} shows a grey {card['replace_text']!r} button: nothing to click")
        buttons = [button for button in card.get("button_list") or [] if isinstance(button, dict)]
        callback_keys = [str(button.get("key")) for button in buttons if button.get("type") in (None, 0, "0")]
        if key not in callback_keys:
            raise ValueError(f"card {task_id!r} has no callback button with key {key!r}; "
                             f"its keys: {', '.join(callback_keys) or '(none)'}")
        code = secrets.token_urlsafe(32)
        self._response_codes[code] = _ResponseCode(task_id, self.clock())
        return {"Event": "template_card_event", "EventKey": key, "TaskId": task_id, "CardType": card_type,
                "ResponseCode": code}

    # -- internals -----------------------------------------------------------------------

    def _take_fault(self, kind: str, path: str) -> _Fault | None:
        for fault in self._faults:
            if fault.kind == kind and fault.remaining > 0 and fault.path in (None, path):
                fault.remaining -= 1
                if fault.remaining == 0:
                    self._faults.remove(fault)
                return fault
        return None

    async def _sleep(self, seconds: float) -> None:
        # Cut short when the app shuts down, so a slow answer never holds up a test's teardown.
        if self._shutting_down is None:
            self._shutting_down = asyncio.Event()
        try:
            await asyncio.wait_for(self._shutting_down.wait(), seconds)
        except TimeoutError:
            pass

    def _error(self, errcode: int, errmsg: str | None = None, **extra: Any) -> dict[str, Any]:
        base = errmsg or ERRMSGS.get(errcode, "error")
        hint = f"emulator-{next(self._hints)}"
        message = f"{base}, hint: [{hint}], more info at https://open.work.weixin.qq.com/devtool/query?e={errcode}"
        return {"errcode": errcode, "errmsg": message, **extra}

    def _issue_token(self) -> tuple[str, int]:
        now = self.clock()
        token = self._current_token
        if token is not None and self.tokens.get(token, now) > now:
            # WeCom: "有效期内重复获取返回相同结果" — the same token while it is valid.
            return token, max(1, math.floor(self.tokens[token] - now))
        token = secrets.token_urlsafe(48)
        self.tokens[token] = now + self.token_ttl
        self._current_token = token
        return token, self.token_ttl

    def _token_error(self, request: web.Request) -> dict[str, Any] | None:
        token = request.query.get("access_token")
        if not token:
            return self._error(41001)
        expires_at = self.tokens.get(token)
        if expires_at is None:
            return self._error(40014)
        if self.clock() >= expires_at:
            return self._error(42001)
        return None

    def _agentid_error(self, body: Mapping[str, Any]) -> dict[str, Any] | None:
        if "agentid" not in body:
            return self._error(41011)
        if str(body["agentid"]) != str(self.agent_id):
            return self._error(40056)
        return None

    def _delivered_card(self, task_id: str, userid: str | None) -> dict[str, Any] | None:
        for message in self.delivered:
            card = message.payload.get("template_card") if message.msgtype == "template_card" else None
            if card and card.get("task_id") == task_id and (userid is None or message.userid == userid):
                return card
        return None

    def _card_recipients(self, task_id: str | None) -> set[str]:
        # Members the card went to, delivered or not: WeCom counts them as its receivers either way.
        return {message.userid for message in itertools.chain(self.delivered, self.dropped_by_rate_limit)
                if message.msgtype == "template_card" and message.payload["template_card"].get("task_id") == task_id}

    def _rate_limit_allows(self, userid: str, now: float) -> bool:
        sent = self._deliveries_by_user.setdefault(userid, deque())
        while sent and sent[0] <= now - 3600:
            sent.popleft()
        last_minute = sum(1 for at in sent if at > now - 60)
        if last_minute >= MEMBER_LIMIT_PER_MINUTE or len(sent) >= MEMBER_LIMIT_PER_HOUR:
            return False
        sent.append(now)
        return True

    def _deliver(self, message: UserMessage) -> None:
        if self._rate_limit_allows(message.userid, message.received_at):
            self.delivered.append(message)
            for listener in self.listeners:
                listener(message)
        else:
            # Exactly WeCom's behaviour: errcode 0 to the sender, nothing to the member.
            self.dropped_by_rate_limit.append(message)


EMULATOR = web.AppKey("emulator", EmulatorState)
_RECORD = web.RequestKey("emulator_record", ReceivedRequest)


async def _read_json(request: web.Request, record: ReceivedRequest) -> dict[str, Any] | None:
    raw = await request.read()
    record.body_bytes = len(raw)
    try:
        body = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return None
    if not isinstance(body, dict):
        return None
    record.json = body
    return body


# -- message/send ------------------------------------------------------------------------------


def _content_error(state: EmulatorState, msgtype: str, content: Any) -> dict[str, Any] | None:
    if msgtype == "text":
        if not isinstance(content, dict) or not content.get("content"):
            return state._error(44004)
        # The docs say text beyond 2048 bytes is cut; WeCom has been seen answering 45002 instead,
        # and the client never sends more, so the emulator refuses it.
        if _utf8_len(str(content["content"])) > TEXT_MAX_BYTES:
            return state._error(45002)
    elif msgtype == "markdown":
        if not isinstance(content, dict) or not content.get("content"):
            return state._error(44004)
        if _utf8_len(str(content["content"])) > APP_MARKDOWN_MAX_BYTES:
            return state._error(45002)
    elif msgtype == "textcard":
        if not isinstance(content, dict):
            return state._error(40058)
        if not content.get("description"):
            return state._error(41033)
        if not content.get("url"):
            return state._error(41010)
        # Closest documented code for an over-long title/description (WeCom documents cutting them).
        title_too_long = _utf8_len(str(content.get("title", ""))) > TEXTCARD_TITLE_MAX_BYTES
        if title_too_long or _utf8_len(str(content["description"])) > TEXTCARD_DESCRIPTION_MAX_BYTES:
            return state._error(45002)
    elif msgtype == "news":
        articles = content.get("articles") if isinstance(content, dict) else None
        if not articles:
            return state._error(40058, "news.articles is empty. invalid Request Parameter")
        if len(articles) > NEWS_MAX_ARTICLES:
            return state._error(45008)
    elif msgtype == "image":
        if not isinstance(content, dict) or content.get("media_id") not in state.media:
            return state._error(40007)
    elif msgtype == "template_card":
        return _card_shape_error(state, content)
    return None


def _update_reaches(update: CardUpdate, userid: str) -> bool:
    # partyids/tagids are not modelled (the emulator has no departments or tags). An update that
    # names nobody reaches nobody here: the docs do not say, and naming the members is safe either way.
    return bool(update.payload.get("atall")) or userid in update.userids


def _card_shape_error(state: EmulatorState, card: Any, task_id_required: bool = True) -> dict[str, Any] | None:
    if not isinstance(card, dict) or card.get("card_type") not in TEMPLATE_CARD_TYPES:
        return state._error(40058, "template_card.card_type is invalid. invalid Request Parameter")
    buttons = card.get("button_list") or []
    if len(buttons) > TEMPLATE_CARD_MAX_BUTTONS:
        # No dedicated code is documented; WeCom reports bad card fields as 40058.
        return state._error(
            40058, f"template_card.button_list exceed max size {TEMPLATE_CARD_MAX_BUTTONS}. invalid Request Parameter"
        )
    task_id = card.get("task_id")
    needs_task_id = task_id_required and (card["card_type"] in CALLBACK_CARD_TYPES or "action_menu" in card)
    if task_id is None and not needs_task_id:
        return None
    if (
        not isinstance(task_id, str)
        or not task_id
        or _utf8_len(task_id) > TASK_ID_MAX_BYTES
        or not set(task_id) <= TASK_ID_CHARACTERS
    ):
        # 42014 is documented for an empty, over-long or reused task_id; bad characters get it too.
        return state._error(42014)
    return None


def _duplicate_key(body: Mapping[str, Any]) -> str:
    content = {k: v for k, v in body.items() if k not in ("enable_duplicate_check", "duplicate_check_interval")}
    return json.dumps(content, sort_keys=True, ensure_ascii=False)


async def _authorised_app_body(request: web.Request) -> tuple[dict[str, Any] | None, dict[str, Any]]:
    """(error answer, None) for a bad token, bad JSON or wrong agentid; else (None, body)."""
    state = request.app[EMULATOR]
    record: ReceivedRequest = request[_RECORD]
    if error := state._token_error(request):
        return error, {}
    body = await _read_json(request, record)
    if body is None:
        return state._error(47001, "data format error. Warning: wrong json format."), {}
    if error := state._agentid_error(body):
        return error, {}
    return None, body


async def _message_send(request: web.Request) -> dict[str, Any]:
    state = request.app[EMULATOR]
    error, body = await _authorised_app_body(request)
    if error:
        return error
    msgtype = body.get("msgtype")
    if msgtype not in MESSAGE_TYPES:
        return state._error(40008)
    if error := _content_error(state, msgtype, body.get(msgtype)):
        return error
    interval = body.get("duplicate_check_interval", DUPLICATE_CHECK_DEFAULT_SECONDS)
    if not isinstance(interval, int) or not 0 < interval <= DUPLICATE_CHECK_MAX_SECONDS:
        # Our guess: the docs only say the interval may not exceed 4 hours.
        return state._error(40058, "duplicate_check_interval exceed max 14400. invalid Request Parameter")

    requested = list(dict.fromkeys(user for user in str(body.get("touser", "")).split("|") if user))
    if len(requested) > MAX_RECIPIENTS:
        return state._error(40032)
    if requested == ["@all"]:
        recipients, invalid = sorted(state.known_users), []
    else:
        recipients = [user for user in requested if state.is_known_user(user)]
        invalid = [user for user in requested if not state.is_known_user(user)]
    if not recipients:
        return state._error(81013, invaliduser="|".join(invalid), invalidparty="", invalidtag="")

    now = state.clock()
    msgid = secrets.token_urlsafe(24)
    answer: dict[str, Any] = {
        "errcode": 0,
        "errmsg": "ok",
        "invaliduser": "|".join(invalid),
        "invalidparty": "",
        "invalidtag": "",
        "unlicenseduser": "",
        "msgid": msgid,
    }
    duplicate_key = _duplicate_key(body)
    sent_before = state._recent_requests.get(duplicate_key)
    if body.get("enable_duplicate_check") and sent_before is not None and now - sent_before < interval:
        state.deduplicated.extend(UserMessage(user, msgtype, body, msgid, now) for user in recipients)
        return answer

    card = body["template_card"] if msgtype == "template_card" else None
    task_id = card.get("task_id") if card else None
    if task_id is not None and task_id in state._task_ids:
        return state._error(42014)

    # Accepted from here on: remember it for the duplicate check and the task_id rule.
    state._recent_requests[duplicate_key] = now
    if task_id is not None:
        state._task_ids.add(task_id)
    if card is not None and (card["card_type"] in CALLBACK_CARD_TYPES or "action_menu" in card):
        response_code = secrets.token_urlsafe(32)
        state._response_codes[response_code] = _ResponseCode(task_id, now)
        answer["response_code"] = response_code

    for user in recipients:
        state._deliver(UserMessage(user, msgtype, body, msgid, now))
    return answer


# -- message/update_template_card -----------------------------------------------------------------


async def _update_template_card(request: web.Request) -> dict[str, Any]:
    state = request.app[EMULATOR]
    error, body = await _authorised_app_body(request)
    if error:
        return error
    code = body.get("response_code")
    issued = state._response_codes.get(code) if isinstance(code, str) else None
    now = state.clock()
    if issued is None or issued.used or now - issued.issued_at > RESPONSE_CODE_VALID_SECONDS:
        # Our closest guess: WeCom documents "one use, 72 hours" but no dedicated errcode.
        return state._error(40058, "response_code is invalid, used or expired. invalid Request Parameter")
    if "template_card" in body:
        # The documented update examples carry no task_id: the response_code names the card.
        if error := _card_shape_error(state, body["template_card"], task_id_required=False):
            return error
    elif not isinstance(body.get("button"), dict) or not body["button"].get("replace_name"):
        return state._error(40058, "template_card or button.replace_name is required. invalid Request Parameter")
    userids = [str(user) for user in body.get("userids") or []]
    if len(userids) > MAX_RECIPIENTS:
        return state._error(40032)
    issued.used = True
    state.card_updates.append(CardUpdate(code, userids, body, now, issued.task_id))
    # Documented: members outside the app or outside the card's receivers come back, lower-cased,
    # and the update still happens for the others.
    receivers = state._card_recipients(issued.task_id)
    invalid = [user.lower() for user in userids if not state.is_known_user(user) or user not in receivers]
    return {"errcode": 0, "errmsg": "ok", "invaliduser": invalid}


# -- webhook/send -------------------------------------------------------------------------------


def _webhook_content_error(state: EmulatorState, msgtype: str, content: Any) -> dict[str, Any] | None:
    if not isinstance(content, dict):
        return state._error(40058, f"{msgtype} is required. invalid Request Parameter")
    if msgtype in ("text", "markdown", "markdown_v2"):
        text = str(content.get("content", ""))
        if not text:
            return state._error(44004)
        limit = WEBHOOK_TEXT_MAX_BYTES if msgtype == "text" else WEBHOOK_MARKDOWN_MAX_BYTES
        if _utf8_len(text) > limit:
            # The robot reports over-long content as 40058 with this wording (not 45002).
            return state._error(
                40058, f"{msgtype}.content exceed max length {limit}. Invalid input invalid Request Parameter"
            )
    elif msgtype == "image":
        try:
            image = base64.b64decode(str(content.get("base64", "")), validate=True)
        except (binascii.Error, ValueError):
            return state._error(40058, "image.base64 is invalid. invalid Request Parameter")
        if not image or len(image) > WEBHOOK_IMAGE_MAX_BYTES:
            return state._error(40009)
        if hashlib.md5(image).hexdigest() != str(content.get("md5", "")).lower():
            return state._error(40058, "image.md5 does not match. invalid Request Parameter")
    return None


async def _webhook_send(request: web.Request) -> dict[str, Any]:
    state = request.app[EMULATOR]
    record: ReceivedRequest = request[_RECORD]
    key = request.query.get("key", "")
    if key not in state.webhook_keys:
        return state._error(93000)
    now = state.clock()
    sends = state._webhook_sends.setdefault(key, deque())
    while sends and sends[0] <= now - 60:
        sends.popleft()
    if len(sends) >= WEBHOOK_LIMIT_PER_MINUTE:
        return state._error(45009)
    body = await _read_json(request, record)
    if body is None:
        return state._error(47001, "data format error. Warning: wrong json format.")
    msgtype = body.get("msgtype")
    if msgtype not in WEBHOOK_MESSAGE_TYPES:
        return state._error(40008)
    if error := _webhook_content_error(state, msgtype, body.get(msgtype)):
        return error
    sends.append(now)
    state.webhook_messages.append(WebhookMessage(key, msgtype, body, now))
    return {"errcode": 0, "errmsg": "ok"}


# -- media/upload ---------------------------------------------------------------------------------


async def _media_upload(request: web.Request) -> dict[str, Any]:
    state = request.app[EMULATOR]
    record: ReceivedRequest = request[_RECORD]
    if error := state._token_error(request):
        return error
    kind = request.query.get("type", "")
    if kind not in MEDIA_LIMITS:
        return state._error(40005)
    if not request.content_type.startswith("multipart/"):
        return state._error(44001)
    form = await request.post()
    media = form.get("media")
    if not isinstance(media, web.FileField):
        return state._error(44001)
    data = media.file.read()
    record.body_bytes = len(data)
    largest, errcode_beyond = MEDIA_LIMITS[kind]
    if len(data) < MEDIA_MIN_BYTES:
        return state._error(40006)
    if len(data) > largest:
        return state._error(errcode_beyond)
    media_id = "3" + secrets.token_urlsafe(40)
    state.media[media_id] = UploadedMedia(media_id, kind, media.filename or "", len(data), state.clock())
    return {"errcode": 0, "errmsg": "", "type": kind, "media_id": media_id, "created_at": str(int(time.time()))}


# -- gettoken -------------------------------------------------------------------------------------


async def _gettoken(request: web.Request) -> dict[str, Any]:
    state = request.app[EMULATOR]
    corp_id = request.query.get("corpid")
    secret = request.query.get("corpsecret")
    if not corp_id:
        return state._error(41002)
    if corp_id != state.corp_id:
        return state._error(40013)
    if not secret:
        return state._error(41004)
    if not secrets.compare_digest(secret.encode(), state.secret.encode()):
        return state._error(40001)
    token, expires_in = state._issue_token()
    return {"errcode": 0, "errmsg": "ok", "access_token": token, "expires_in": expires_in}


# -- the app ------------------------------------------------------------------------------------------


@web.middleware
async def _record_and_inject_faults(request: web.Request, handler: Callable) -> web.StreamResponse:
    state = request.app[EMULATOR]
    # Mounted as a sub-app under a prefix, paths still read "/cgi-bin/...", as tests expect.
    path = request.path[request.path.find("/cgi-bin/"):] if "/cgi-bin/" in request.path else request.path
    record = ReceivedRequest(
        method=request.method,
        path=path,
        query={k: v for k, v in request.query.items() if k not in SECRET_QUERY_PARAMS},
        received_at=state.clock(),
    )
    state.received.append(record)
    request[_RECORD] = record

    if delay := state._take_fault("delay", path):
        await state._sleep(delay.seconds)
    if state._take_fault("disconnect", path):
        transport = request.transport
        if transport is not None:
            transport.close()
        # Ends the handler with no response written: the client sees the server hang up.
        raise asyncio.CancelledError
    if fault := state._take_fault("errcode", path):
        answer = state._error(fault.errcode, fault.errmsg)
    else:
        answer = await handler(request)
    record.errcode = answer.get("errcode")
    return web.json_response(answer, dumps=lambda value: json.dumps(value, ensure_ascii=False))


class RedactingAccessLogger(AbstractAccessLogger):
    """An access log without access_token, corpsecret or robot key values in it.

    Serve the emulator with `access_log_class=RedactingAccessLogger` (AppRunner, TestServer):
    aiohttp's default access log writes the full query string, and with it the credentials.
    """

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        url = request.rel_url
        hidden = {name: "***" for name in url.query if name in SECRET_QUERY_PARAMS}
        shown = url.update_query(hidden) if hidden else url
        self.logger.info('%s "%s %s" %s %.1f ms', request.remote, request.method, shown, response.status, time * 1000)


async def _release_slow_answers(app: web.Application) -> None:
    state = app[EMULATOR]
    if state._shutting_down is None:
        state._shutting_down = asyncio.Event()
    state._shutting_down.set()


def create_emulator_app(
    corp_id: str = SANDBOX_CORP_ID,
    secret: str = SANDBOX_SECRET,
    agent_id: int = SANDBOX_AGENT_ID,
    known_users: Iterable[str] = (),
    token_ttl: int = 7200,
    clock: Callable[[], float] = time.monotonic,
    webhook_keys: Iterable[str] = (SANDBOX_WEBHOOK_KEY,),
    directory: Callable[[str], bool] | None = None,
) -> web.Application:
    """The WeCom emulator app; its state is `app[EMULATOR]`. Mount it anywhere or serve it alone."""
    app = web.Application(middlewares=[_record_and_inject_faults], client_max_size=CLIENT_MAX_SIZE)
    app[EMULATOR] = EmulatorState(corp_id, secret, agent_id, known_users, token_ttl, clock, webhook_keys, directory)
    app.router.add_get("/cgi-bin/gettoken", _gettoken)
    app.router.add_post("/cgi-bin/message/send", _message_send)
    app.router.add_post("/cgi-bin/message/update_template_card", _update_template_card)
    app.router.add_post("/cgi-bin/webhook/send", _webhook_send)
    app.router.add_post("/cgi-bin/media/upload", _media_upload)
    app.on_shutdown.append(_release_slow_answers)
    return app
