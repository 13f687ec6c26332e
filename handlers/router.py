"""The application's one command router; capability modules register on it."""

from handlers.registry import Router

router = Router()
