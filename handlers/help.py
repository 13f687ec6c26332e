"""帮助 / help, and the hint for anything not understood."""

from __future__ import annotations

import difflib

from handlers.registry import CommandContext, Reply, normalise
from handlers.router import router
from handlers.text import render

# Commands typed as they are, without an argument: the closest one to a message nobody
# understood is suggested (a typo: 「我的明星客胡」, "show my star custmers").
SUGGESTED = ("我的客户", "我的明星客户", "我的金牛客户", "我的问题客户", "我的瘦狗客户", "今日任务", "逾期任务",
             "流失预警", "赢回名单", "团队", "团队逾期任务", "我的工单", "工单报表", "帮助",
             "my customers", "show my star customers", "my cash cow customers", "my question mark customers",
             "my dog customers", "tasks", "overdue tasks", "churn", "win back", "team", "team overdue tasks",
             "my tickets", "ticket report", "help")
# How alike a message and a command must be (difflib's ratio): one wrong character in four.
SUGGEST_FROM = 0.75


@router.command("help", r"帮助|help|菜单|menu|\?|？|h")
async def show_help(ctx: CommandContext) -> Reply:
    return Reply(render(f"chat/help.{ctx.lang}.j2"))


@router.otherwise
async def hint(ctx: CommandContext) -> Reply:
    return Reply(render(f"chat/hint.{ctx.lang}.j2", text=ctx.raw.strip()[:40], suggestion=suggestion(ctx.text)),
                 msgtype="text")


def suggestion(text: str) -> str | None:
    """The command a message not understood was probably meant to be, if one is close."""
    if len(text) < 3:
        return None
    close = difflib.get_close_matches(normalise(text), SUGGESTED, n=1, cutoff=SUGGEST_FROM)
    return close[0] if close else None
