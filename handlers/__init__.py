"""Chat commands: parsing (zh + en), permission-scoped queries, replies from templates.

Importing this package registers every capability module on `router` (commands, card
button actions and 「更多」 pagers).
"""

from handlers import reports  # noqa: F401  (first: 「客户报表」 is no customer's name)
from handlers import customers, help, paging, tasks, team, tickets  # noqa: F401  (registration side effects)
from handlers import named_segments  # noqa: F401  (last: it takes only what no other command understood)
from handlers.router import router

__all__ = ["router"]

