"""帮助 / help, and the hint for anything not understood."""

from __future__ import annotations

from handlers.registry import CommandContext, Reply
from handlers.router import router
from handlers.text import render


@router.command("help", r"帮助|help|菜单|menu|\?|？|h")
async def show_help(ctx: CommandContext) -> Reply:
    return Reply(render(f"chat/help.{ctx.lang}.j2"))


@router.otherwise
async def hint(ctx: CommandContext) -> Reply:
    return Reply(render(f"chat/hint.{ctx.lang}.j2", text=ctx.raw.strip()[:40]), msgtype="text")
