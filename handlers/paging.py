"""更多 / more: the next page of whatever list the user asked for last.

A listing command saves (command, arguments, next offset) per user (storage.queries.
save_listing); 「更多」 hands them to the pager that command registered with
`@router.pager(command)`. One listing per user: the newest wins.
"""

from __future__ import annotations

from typing import Callable

from handlers.registry import CommandContext, Reply
from handlers.router import router
from handlers.services import MESSAGE_BYTES
from handlers.text import render
from storage import queries


@router.command("more", r"更多|下一页|继续", r"more|next|next page")
async def more(ctx: CommandContext) -> Reply:
    async with ctx.services.db.connect() as connection:
        listing = await queries.load_listing(connection, ctx.asker.userid)
    pager = router.pagers.get(listing["command"]) if listing and listing["next_offset"] is not None else None
    if pager is None:
        # A listing whose last page was shown, or none asked for yet.
        return Reply(render(f"chat/no_more.{ctx.lang}.j2", ended=listing is not None), msgtype="text")
    return await pager(ctx, listing["arguments"] or {}, listing["next_offset"])


def fit_page(render_page: Callable[[int, bool], str], available: int, offset: int, total: int) -> tuple[str, int]:
    """(text, rows shown): `render_page(shown, more)` for the most of the `available` rows
    that fit WeCom's 2048 bytes — fewer rows rather than a message cut off at the end.
    One row is always shown, so a list never stalls on a long line."""
    for shown in range(available, 0, -1):
        text = render_page(shown, offset + shown < total)
        if len(text.encode("utf-8")) <= MESSAGE_BYTES or shown == 1:
            return text, shown
    raise ValueError("fit_page needs at least one row")


async def remember(ctx: CommandContext, connection, command: str, arguments: dict, offset: int, shown: int,
                   total: int) -> None:
    """Save where 「更多」 continues (or that it has nothing more)."""
    following = offset + shown
    await queries.save_listing(connection, ctx.asker.userid, command, arguments,
                               following if following < total else None, ctx.services.now())
