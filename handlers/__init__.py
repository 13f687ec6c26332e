"""Chat commands: parsing (zh + en), permission-scoped queries, replies from templates.

Importing this package registers every capability module on `router`.
"""

from handlers import customers, help  # noqa: F401  (registration side effects)
from handlers.router import router

__all__ = ["router"]
