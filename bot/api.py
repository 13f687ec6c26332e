"""REST ingest: POST /api/v1/{customers,orders,activities,tickets}.

A JSON array of objects with the fields of the data files (DESIGN §4), bearer token
(TIERBOT_API_TOKEN), idempotent by id. The rows go through the same validation and
all-or-nothing upsert as a file import; then the customers they touched are rescored
at once against the last full run (incremental), so a new order shows in the bot's
answers within seconds.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
from datetime import datetime

from aiohttp import web

from storage.schema_files import KINDS_BY_NAME, header_names, normalise_header

logger = logging.getLogger(__name__)

API_KINDS = ("customers", "orders", "activities", "tickets", "users")
MAX_BODY_BYTES = 10 * 1024 * 1024
MAX_ITEMS = 20_000


def _error(status: int, message: str, problems: list[str] | None = None) -> web.Response:
    body = {"error": message}
    if problems is not None:
        body["problems"] = problems
    return web.json_response(body, status=status, dumps=lambda data: json.dumps(data, ensure_ascii=False))


@web.middleware
async def json_errors(request: web.Request, handler):
    """Under /api/, aiohttp's own refusals (no such path, wrong method, body too large)
    answer in the API's JSON shape too, as a client parses every other error."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400 or not request.path.startswith("/api/"):
            raise
        refused = _error(exc.status, exc.reason.lower() if exc.reason else "refused")
        for header in ("Allow", "WWW-Authenticate"):
            if header in exc.headers:
                refused.headers[header] = exc.headers[header]
        return refused


class IngestApi:
    def __init__(self, runtime):
        self.runtime = runtime

    def routes(self) -> list[web.RouteDef]:
        return [web.post("/api/v1/{kind}", self.ingest)]

    def _authorised(self, request: web.Request) -> web.Response | None:
        token = self.runtime.config.api.token
        if not token:
            return _error(503, "the REST API is off: set TIERBOT_API_TOKEN to turn it on")
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        # The scheme is case-insensitive (RFC 7235); the token is not.
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), token.encode()):
            refused = _error(401, "missing or wrong bearer token")
            refused.headers["WWW-Authenticate"] = 'Bearer realm="tierbot"'
            return refused
        return None

    async def ingest(self, request: web.Request) -> web.Response:
        refused = self._authorised(request)
        if refused is not None:
            return refused
        kind = request.match_info["kind"]
        if kind not in API_KINDS:
            return _error(404, f"unknown collection {kind!r}: one of {', '.join(API_KINDS)}")
        if (request.content_length or 0) > MAX_BODY_BYTES:
            return _error(413, f"body larger than {MAX_BODY_BYTES // (1024 * 1024)} MB: send smaller batches")
        charset = request.charset
        if charset and charset.lower().replace("_", "-") not in ("utf-8", "utf8", "us-ascii", "ascii"):
            return _error(415, f"charset {charset!r}: send the JSON as UTF-8 (Content-Type: application/json)")
        try:
            items = json.loads(await request.read())
        except web.HTTPRequestEntityTooLarge:  # a chunked body, with no length given up front
            return _error(413, f"body larger than {MAX_BODY_BYTES // (1024 * 1024)} MB: send smaller batches")
        except UnicodeDecodeError as exc:
            return _error(400, f"body is not UTF-8 (byte {exc.start}): send the JSON as UTF-8")
        except ValueError as exc:
            return _error(400, f"body is not JSON: {exc}")
        except RecursionError:
            return _error(400, "body is not JSON we take: nested too deeply")
        if not isinstance(items, list) or not all(isinstance(item, dict) for item in items):
            return _error(400, "body must be a JSON array of objects")
        if not items:
            return web.json_response({"kind": kind, "rows": 0, "new": 0, "changed": 0, "unchanged": 0,
                                      "warnings": []})
        if len(items) > MAX_ITEMS:
            return _error(413, f"more than {MAX_ITEMS:,} items: send smaller batches")
        items, problems = flat_values(kind, items)
        if problems:
            return _error(400, "nothing was imported", problems)
        response = await asyncio.to_thread(self._ingest_blocking, kind, items)
        if kind == "users" and response.status == 200 and self.runtime.sandbox is not None:
            self.runtime.sandbox.add_users([str(item.get("userid")) for item in items if item.get("userid")])
        # A rescore may have queued tier-change messages and tasks: send them now; new
        # tickets are routed now.
        self.runtime.wake_dispatcher()
        if kind in ("tickets", "orders", "activities", "customers"):
            self.runtime.wake_tickets()
        return response

    def _ingest_blocking(self, kind: str, items: list[dict]) -> web.Response:
        """Import and rescore on a worker thread: the event loop keeps answering WeCom."""
        from bot.rescore import INCREMENTAL_LIMIT, incremental_rescore
        from storage.importer import ImportFailed, run_import

        config, engine = self.runtime.config, self.runtime.sync_db
        try:
            result = run_import(engine, [], timezone_name=config.timezone, records={kind: items},
                                max_errors=config.import_.max_errors_listed, touched_limit=INCREMENTAL_LIMIT,
                                known_queues=set(config.tickets.queues),
                                known_modules=config.scoring.value_matrix.module_catalogue)
        except ImportFailed as failure:
            problems = [f"item {p.line}: {p.column}: {p.reason}" for p in failure.details] or failure.problems
            if failure.more:
                problems.append(f"… and {failure.more:,} more")
            return _error(400, "nothing was imported", problems)
        counts = result.kinds.get(kind)
        body = {"kind": kind, "rows": counts.rows, "new": counts.new, "changed": counts.changed,
                "unchanged": counts.unchanged, "warnings": result.warnings}
        if counts.resolved:
            body["resolved"] = counts.resolved
        if result.touched:
            outcome = incremental_rescore(engine, config, result.touched, datetime.now(config.tz).date())
            if outcome is not None:
                body["rescored"] = {"customers": outcome.customers, "tier_changes": outcome.tier_changes,
                                    "run_id": outcome.run_id}
        elif result.touched is None:
            body["rescored"] = {"customers": 0, "note": "too many customers touched: the next full run scores them"}
        return web.json_response(body, dumps=lambda data: json.dumps(data, ensure_ascii=False))


def flat_values(kind: str, items: list[dict]) -> tuple[list[dict], list[str]]:
    """JSON may carry what a file cell cannot: an array for a list column (modules_owned,
    queues) becomes its `|`-separated text; any other array or object is refused by item
    and field, rather than stored as its Python spelling."""
    names = header_names(KINDS_BY_NAME[kind])
    list_columns = {column.name for column in KINDS_BY_NAME[kind].columns if column.kind == "list"}
    flat, problems = [], []
    for number, item in enumerate(items, start=1):
        row = {}
        for field, value in item.items():
            if isinstance(value, list) and names.get(normalise_header(field)) in list_columns and all(
                    isinstance(part, (str, int, float)) and not isinstance(part, bool) for part in value):
                value = "|".join(str(part) for part in value)
            elif isinstance(value, (list, dict)):
                problems.append(f"item {number}: {field}: a JSON {'array' if isinstance(value, list) else 'object'}"
                                f", not a single value")
            row[field] = value
        flat.append(row)
    return flat, problems


assert set(API_KINDS) <= set(KINDS_BY_NAME)
