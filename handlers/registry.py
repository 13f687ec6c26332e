"""A Bolt-like registry of chat commands.

    router = Router()

    @router.command("my_customers", r"我的客户", r"(show )?my customers")
    async def my_customers(ctx: CommandContext) -> Reply: ...

    @router.action(r"done:(?P<task>[0-9]+)")      # a template card button, by its key
    async def done_button(ctx: ActionContext) -> Reply | None: ...

    @router.pager("my_tier")                      # what 「更多」 continues
    async def next_tier_page(ctx: CommandContext, arguments: dict, offset: int) -> Reply: ...

A handler takes the parsed message and the asking user (in `ctx`) and returns a Reply;
it knows nothing about HTTP, XML or crypto. Patterns are full matches against the
normalised text (see `normalise`), so "  我的明星客户！" and "Show my STAR customers"
reach the same handler as their plain forms.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable

_TRAILING_PUNCTUATION = "。！？!?.,，、；;：: "


def normalise(text: str, keep_case: bool = False) -> str:
    """Full-width → half-width (NFKC), lower case, single spaces, no trailing punctuation."""
    folded = unicodedata.normalize("NFKC", text or "")
    if not keep_case:
        folded = folded.lower()
    folded = re.sub(r"\s+", " ", folded).strip()
    # Chinese needs no spaces: 「我的 明星客户」 means 「我的明星客户」.
    folded = re.sub(r"(?<=[\u4e00-\u9fff]) (?=[\u4e00-\u9fff])", "", folded)
    return folded.strip(_TRAILING_PUNCTUATION).strip()


_CJK = re.compile(r"[\u4e00-\u9fff]")

# A report's period after its name: 「工单报表 7天」, 「分层报表 近90天」, "ticket report 7d",
# "tier report for the last 90 days"; CommandContext.days reads it.
PERIOD_ZH = r"(?:\s*(?:近|最近)?\s*(?P<days>\d{1,4})\s*(?:天|日)?)?"
PERIOD_EN = r"(?:\s+(?:for |last |past )?(?:the )?(?:last |past )?(?P<days_en>\d{1,4})\s*(?:d|days?)?)?"


def guess_language(text: str) -> str:
    """Answer in Chinese unless the message is written in Latin letters only."""
    return "zh" if _CJK.search(text) or not re.search(r"[a-z]", text, re.I) else "en"


def command_language(text: str, match: re.Match) -> str:
    """English when an English pattern matched (one with no Chinese in it): "customer 华为"
    is asked in English, though customer names are mostly Chinese. Otherwise as the text
    reads: 「客户 Huawei」 is Chinese, and a pattern with both ("帮助|help") goes by the text."""
    if not _CJK.search(match.re.pattern):
        return "en"
    return guess_language(text)


@dataclass(frozen=True)
class Asker:
    """The WeCom user who sent the message, as known to tierbot."""

    userid: str
    name: str
    role: str
    language: str | None = None  # chosen for pushes (users.language); None: the service's


@dataclass(frozen=True)
class Reply:
    text: str
    msgtype: str = "markdown"  # or "text"


@dataclass
class CommandContext:
    text: str  # normalised
    raw: str
    lang: str
    asker: Asker
    match: re.Match
    services: Any  # what handlers need to answer (database, config); see handlers.services
    command: str = ""

    def days(self, default: int) -> int:
        """The period typed after a report's name (PERIOD_ZH / PERIOD_EN), else `default`."""
        typed = self.match.groupdict().get("days") or self.match.groupdict().get("days_en")
        return int(typed) if typed else default

    def argument(self, group: str) -> str:
        """A matched group as the user typed it (case kept), e.g. a customer name."""
        cased = normalise(self.raw, keep_case=True)
        if len(cased) == len(self.text):
            return cased[self.match.start(group):self.match.end(group)].strip()
        return self.match.group(group).strip()

    def typed_after(self, group: str, rest: str) -> str:
        """Group `rest`, a free note after group `group` (a ticket or task number), exactly as
        typed: full-width punctuation and spaces kept, a leading colon or comma dropped."""
        typed = self.argument(group)
        found = re.search(re.escape(typed), self.raw or "", re.IGNORECASE)
        if found is None:  # typed in full-width letters: the normalised note will do
            return self.argument(rest)
        return self.raw[found.end():].strip().lstrip(":：,，").strip()


@dataclass
class ActionContext:
    """A press on one of our template card buttons (WeCom's template_card_event)."""

    key: str  # the button's EventKey
    lang: str  # cards are written in the recipient's language, so their answers are too
    asker: Asker
    match: re.Match
    services: Any
    # The event's raw fields: TaskId (the card), ResponseCode (one use, to update the card), CardType.
    fields: dict[str, str]
    action: str = ""

    @property
    def response_code(self) -> str:
        return self.fields.get("ResponseCode", "")

    @property
    def card_task_id(self) -> str:
        return self.fields.get("TaskId", "")


Handler = Callable[[CommandContext], Awaitable[Reply]]
ActionHandler = Callable[[ActionContext], Awaitable["Reply | None"]]
# Continues a listing for 「更多」: (context of the 「更多」 message, the listing's arguments, offset).
Pager = Callable[[CommandContext, dict, int], Awaitable[Reply]]


@dataclass
class _Route:
    name: str
    patterns: list[re.Pattern]
    handler: Handler


@dataclass
class _ActionRoute:
    name: str
    pattern: re.Pattern
    handler: ActionHandler


@dataclass
class Router:
    routes: list[_Route] = field(default_factory=list)
    fallback: Handler | None = None
    actions: list[_ActionRoute] = field(default_factory=list)
    pagers: dict[str, Pager] = field(default_factory=dict)

    def command(self, name: str, *patterns: str) -> Callable[[Handler], Handler]:
        compiled = [re.compile(rf"(?:{p})", re.IGNORECASE) for p in patterns]

        def register(handler: Handler) -> Handler:
            self.routes.append(_Route(name, compiled, handler))
            return handler

        return register

    def action(self, pattern: str, name: str | None = None) -> Callable[[ActionHandler], ActionHandler]:
        """Register a card button handler; `pattern` must match the whole EventKey (case kept:
        keys are ours, not typed by people)."""
        compiled = re.compile(rf"(?:{pattern})")

        def register(handler: ActionHandler) -> ActionHandler:
            self.actions.append(_ActionRoute(name or handler.__name__, compiled, handler))
            return handler

        return register

    def pager(self, command: str) -> Callable[[Pager], Pager]:
        """Register what 「更多」 / "more" does after a listing saved under `command`."""

        def register(handler: Pager) -> Pager:
            self.pagers[command] = handler
            return handler

        return register

    def otherwise(self, handler: Handler) -> Handler:
        self.fallback = handler
        return handler

    def resolve(self, text: str) -> tuple[str, Handler, re.Match] | None:
        for route in self.routes:
            for pattern in route.patterns:
                match = pattern.fullmatch(text)
                if match:
                    return route.name, route.handler, match
        return None

    async def dispatch(self, raw: str, asker: Asker, services: Any) -> tuple[str, Reply]:
        """Run the matching handler; returns (command name, reply)."""
        text = normalise(raw)
        found = self.resolve(text)
        if found is None:
            if self.fallback is None:
                raise LookupError("no handler and no fallback")
            name, handler, match = "unknown", self.fallback, re.match("", "")
            lang = guess_language(text)
        else:
            name, handler, match = found
            lang = command_language(text, match)
        context = CommandContext(text=text, raw=raw, lang=lang, asker=asker, match=match, services=services,
                                 command=name)
        return name, await handler(context)

    def resolve_action(self, event_key: str) -> tuple[str, ActionHandler, re.Match] | None:
        for route in self.actions:
            match = route.pattern.fullmatch(event_key or "")
            if match:
                return route.name, route.handler, match
        return None

    async def dispatch_action(self, event_key: str, asker: Asker, services: Any,
                              fields: dict[str, str]) -> tuple[str, Reply | None]:
        """Run the handler of a card button; returns (action name, reply or None). A key no
        handler knows (an old card, another app's button) is ignored: ("unknown_action", None)."""
        found = self.resolve_action(event_key)
        if found is None:
            return "unknown_action", None
        name, handler, match = found
        lang = asker.language or getattr(getattr(services, "config", None), "language", "zh")
        context = ActionContext(key=event_key, lang=lang, asker=asker, match=match, services=services,
                                fields=dict(fields), action=name)
        return name, await handler(context)
