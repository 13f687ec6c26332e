"""帮助 / help, and the hint for anything not understood."""

from __future__ import annotations

import difflib

from handlers.registry import CommandContext, Reply, normalise
from handlers.router import router
from handlers.text import configured_label_names, render
from storage import queries
from storage.models import LANGUAGE_NAMES, LANGUAGES

# Commands typed as they are, without an argument: the closest one to a message nobody
# understood is suggested (a typo: 「我的明星客胡」, "show my star custmers").
SUGGESTED = ("我的客户", "我的明星客户", "我的金牛客户", "我的问题客户", "我的瘦狗客户", "今日任务", "逾期任务",
             "流失预警", "赢回名单", "团队", "团队逾期任务", "分层报表", "我的工单", "工单报表", "帮助",
             "my customers", "show my star customers", "my cash cow customers", "my question mark customers",
             "my dog customers", "tasks", "overdue tasks", "churn", "win back", "team", "team overdue tasks", "tier report",
             "my tickets", "ticket report", "help")
# How alike a message and a command must be (difflib's ratio): one wrong character in four.
SUGGEST_FROM = 0.75


@router.command("help", r"帮助|help|菜单|menu|\?|？|h")
async def show_help(ctx: CommandContext) -> Reply:
    # Each role's own commands: everyone's would not fit one message, and an agent has no customer lists.
    return Reply(render(f"chat/help.{ctx.lang}.j2", role=ctx.asker.role))


# A language by any name people give it (storage.models.LANGUAGE_NAMES) or its code.
LANGUAGE_WORDS = {**LANGUAGE_NAMES, **{code: code for code in LANGUAGES}}
_ANY_LANGUAGE = "|".join(sorted(LANGUAGE_WORDS, key=len, reverse=True))
_ZH_LANGUAGE = "|".join(word for word in LANGUAGE_NAMES if not word.isascii())
_EN_LANGUAGE = "|".join(word for word in sorted(LANGUAGE_WORDS, key=len, reverse=True) if word.isascii())


@router.command("language", rf"(?:语言|切换语言|设置语言|推送语言)(?:[\s:：]*(?P<lang>{_ANY_LANGUAGE}))?",
                rf"(?:用|说|改用|切换到|切换为)(?P<lang>{_ZH_LANGUAGE})",
                rf"(?:set )?(?:language|lang)(?:\s*[:=]?\s*(?P<lang>{_EN_LANGUAGE}))?",
                r"(?:speak|use|switch to) (?P<lang>chinese|english)|(?P<lang_please>english|chinese) please")
async def language(ctx: CommandContext) -> Reply:
    """The language of what is pushed to the asker (cards, digests, reminders); chat answers
    keep following the language each message is written in."""
    said = ctx.match.groupdict().get("lang") or ctx.match.groupdict().get("lang_please")
    default = ctx.services.config.language
    if not said:
        return Reply(render(f"chat/language.{ctx.lang}.j2", outcome="current",
                            current=ctx.asker.language or default, chosen=ctx.asker.language is not None),
                     msgtype="text")
    chosen = LANGUAGE_WORDS[said.lower()]
    async with ctx.services.db.begin() as connection:
        await queries.set_language(connection, ctx.asker.userid, chosen)
    ctx.services.forget(("user", ctx.asker.userid.lower()))  # as bot.callback caches it
    # Answered in the language just chosen: the first thing read in it.
    return Reply(render(f"chat/language.{chosen}.j2", outcome="set", current=chosen), msgtype="text")


@router.otherwise
async def hint(ctx: CommandContext) -> Reply:
    return Reply(render(f"chat/hint.{ctx.lang}.j2", text=ctx.raw.strip()[:40], suggestion=suggestion(ctx.text)),
                 msgtype="text")


def suggestion(text: str) -> str | None:
    """The command a message not understood was probably meant to be, if one is close."""
    if len(text) < 3:
        return None
    # With the lists config names (an RFM segment's title): 「我的核心客胡」 → 「我的核心客户」.
    named = [phrase for names in configured_label_names()
             for phrase in (f"我的{names['zh'].removesuffix('客户')}客户", f"my {names['en'].lower()} customers")]
    close = difflib.get_close_matches(normalise(text), [*SUGGESTED, *named], n=1, cutoff=SUGGEST_FROM)
    return close[0] if close else None
