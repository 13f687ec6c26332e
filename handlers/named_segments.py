"""「我的核心客户」 / "my core customers": lists by a name only the configuration gives a
label (an RFM segment's `title`). Registered after every other command, so it only sees
"my … customers" that nothing else understood; a name config does not have either gets
the hint, as any message not understood does."""

from __future__ import annotations

from handlers.customers import segment_page
from handlers.help import hint
from handlers.registry import CommandContext, Reply
from handlers.router import router
from handlers.text import configured_label


@router.command("my_named_segment", r"(?:我的|我名下的?|团队的?)(?P<title>\S{1,20}?)的?客户",
                r"(?:show |list )?(?:me )?(?:my |team |my team's )(?P<title>[^\s].{0,39}?)(?: customers| accounts)?")
async def my_named_segment(ctx: CommandContext) -> Reply:
    found = configured_label(ctx.argument("title"))
    if found is None:
        return await hint(ctx)
    return await segment_page(ctx, [found], offset=0)
