"""「我的核心客户」 / "my core customers": lists by a name only the configuration gives a
label (an RFM segment's `title`). Registered after every other command, so it only sees
"my … customers" that nothing else understood; a name config does not have either gets
the hint, as any message not understood does."""

from __future__ import annotations

from handlers.customers import segment_page
from handlers.help import hint
from handlers.registry import CommandContext, Reply, normalise
from handlers.router import router
from handlers.text import configured_label

COMMAND = "my_named_segment"


@router.command(COMMAND, r"(?:我的|我名下的?|团队的?)(?P<title>\S{1,20}?)的?客户",
                r"(?:show |list )?(?:me )?(?:my |team |my team's )(?P<title>[^\s].{0,39}?)(?: customers| accounts)?")
async def my_named_segment(ctx: CommandContext) -> Reply:
    found = configured_label(ctx.argument("title"))
    if found is None:
        return await hint(ctx)
    return await segment_page(ctx, [found], offset=0)


def title_problems(titles: dict[str, dict[str, str]]) -> list[str]:
    """What keeps a configured title from reaching its list, per title (its config key →
    {zh, en}): 「我的<title>客户」 or "my <title> customers" already meaning another command
    (this one is tried last), or another title being the same words."""
    problems, seen = [], {}
    for key, names in titles.items():
        for lang, name in names.items():
            if lang == "zh":
                phrase = f"我的{name.strip().removesuffix('客户')}客户"
            else:
                phrase = f"my {name.strip().lower().removesuffix(' customers')} customers"
            found = router.resolve(normalise(phrase))
            if found is not None and found[0] != COMMAND:
                problems.append(f"{key}.{lang}: {name!r} cannot be listed by its title: "
                                f"\"{phrase}\" already means the {found[0]} command; choose another title")
            words = normalise(phrase)
            if words in seen:
                problems.append(f"{key}.{lang}: {name!r} is also the title of {seen[words]}; titles must differ")
            seen.setdefault(words, key)
    return problems
