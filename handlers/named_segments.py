"""「我的核心客户」 / "my core customers": lists by a name only the configuration gives a
label (an RFM segment's `title`). Registered after every other command, so it only sees
"my … customers" that nothing else understood; a name config does not have either gets
the hint, as any message not understood does."""

from __future__ import annotations

from handlers.customers import segment_page
from handlers.help import hint
from handlers.registry import CommandContext, Reply, normalise
from handlers.router import router
from handlers.text import configured_label, title_forms

COMMAND = "my_named_segment"


@router.command(COMMAND, r"(?:我的|我名下的?|团队的?)(?P<title>\S{1,20}?)的?客户",
                r"(?:show |list )?(?:me )?(?:my |team |my team's )(?P<title>[^\s].{0,39}?)(?: customers| accounts)?")
async def my_named_segment(ctx: CommandContext) -> Reply:
    found = configured_label(ctx.argument("title"))
    if found is None:
        return await hint(ctx)
    return await segment_page(ctx, [found], offset=0)


def title_problems(titles: dict[str, dict[str, str]], where: dict[str, str]) -> list[str]:
    """What keeps a configured RFM segment title from reaching its list, per segment
    (name → {zh, en}; `where`: name → its config key): 「我的<title>客户」 or "my <title>
    customers" read as another command (this one is tried last), or as another segment's
    title, or not read at all."""
    from handlers.customers import label_meanings

    names = {"rfm": titles}
    problems = []
    for segment, words in titles.items():
        for lang, title in words.items():
            base = sorted(title_forms(title), key=len)[0]
            phrase = normalise(f"我的{base}客户" if lang == "zh" else f"my {base} customers")
            found = router.resolve(phrase)
            if found is None:
                meant = None
            elif found[0] == COMMAND:
                meant = configured_label(found[2].group("title"), names)
            else:
                meant = ("rfm", segment) if ("rfm", segment) in label_meanings(found) else found[0]
            if meant == ("rfm", segment):
                continue
            if meant is None:
                why = f'"{phrase}" is not understood as a list'
            elif isinstance(meant, tuple):
                why = f'"{phrase}" lists segment {meant[1]} ({where.get(meant[1], meant[1])}): titles must differ'
            else:
                why = f'"{phrase}" already means the {meant} command'
            problems.append(f"{where[segment]}.{lang}: {title!r} cannot be listed by its title: {why}; "
                            f"choose another title")
    return problems
