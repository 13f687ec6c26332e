"""A Bolt-like registry of chat commands.

    router = Router()

    @router.command("my_customers", r"我的客户", r"(show )?my customers")
    async def my_customers(ctx: CommandContext) -> Reply: ...

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


def guess_language(text: str) -> str:
    """Answer in Chinese unless the message is written in Latin letters only."""
    return "zh" if re.search(r"[\u4e00-\u9fff]", text) or not re.search(r"[a-z]", text, re.I) else "en"


@dataclass(frozen=True)
class Asker:
    """The WeCom user who sent the message, as known to tierbot."""

    userid: str
    name: str
    role: str


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

    def argument(self, group: str) -> str:
        """A matched group as the user typed it (case kept), e.g. a customer name."""
        cased = normalise(self.raw, keep_case=True)
        if len(cased) == len(self.text):
            return cased[self.match.start(group):self.match.end(group)].strip()
        return self.match.group(group).strip()


Handler = Callable[[CommandContext], Awaitable[Reply]]


@dataclass
class _Route:
    name: str
    patterns: list[re.Pattern]
    handler: Handler


@dataclass
class Router:
    routes: list[_Route] = field(default_factory=list)
    fallback: Handler | None = None

    def command(self, name: str, *patterns: str) -> Callable[[Handler], Handler]:
        compiled = [re.compile(rf"(?:{p})", re.IGNORECASE) for p in patterns]

        def register(handler: Handler) -> Handler:
            self.routes.append(_Route(name, compiled, handler))
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
        lang = guess_language(text)
        found = self.resolve(text)
        if found is None:
            if self.fallback is None:
                raise LookupError("no handler and no fallback")
            name, handler, match = "unknown", self.fallback, re.match("", "")
        else:
            name, handler, match = found
        context = CommandContext(text=text, raw=raw, lang=lang, asker=asker, match=match, services=services,
                                 command=name)
        return name, await handler(context)
