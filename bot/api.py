"""REST ingest: POST /api/v1/{customers,orders,activities,tickets}; and the scores back:
GET /api/v1/scores.

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
# GET /api/v1/scores: customers per page, and ids per request.
MAX_SCORES_PAGE = 5_000
MAX_SCORES_IDS = 1_000
SCORES_PARAMETERS = ("customer_id", "after", "limit", "lang", "run_id")


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
        return [web.get("/api/v1/scores", self.scores), web.post("/api/v1/{kind}", self.ingest)]

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


    async def scores(self, request: web.Request) -> web.Response:
        """The latest full run's scores (incremental rescores included), a page at a time in
        customer order, or for the customers named; the export's fields, as JSON."""
        refused = self._authorised(request)
        if refused is not None:
            return refused
        query = request.query
        problems = [f"{name}: unknown parameter (one of {', '.join(SCORES_PARAMETERS)})"
                    for name in dict.fromkeys(query) if name not in SCORES_PARAMETERS]
        for name in ("after", "limit", "lang", "run_id"):
            if len(query.getall(name, [])) > 1:
                problems.append(f"{name}: given more than once")
        ids = list(dict.fromkeys(part.strip() for value in query.getall("customer_id", [])
                                 for part in value.split(",") if part.strip()))
        if len(ids) > MAX_SCORES_IDS:
            problems.append(f"customer_id: more than {MAX_SCORES_IDS:,} ids: ask in smaller batches")
        limit = _whole_number(query.get("limit", str(MAX_SCORES_PAGE // 5)), "limit", 1, MAX_SCORES_PAGE, problems)
        run_id = _whole_number(query["run_id"], "run_id", 1, None, problems) if "run_id" in query else None
        lang = query.get("lang", self.runtime.config.language)
        if lang not in ("zh", "en"):
            problems.append(f"lang: one of zh, en: {lang!r}")
        if problems:
            return _error(400, "bad query", problems)
        return await asyncio.to_thread(self._scores_blocking, ids or None, query.get("after"), limit, lang, run_id)

    def _scores_blocking(self, ids: list[str] | None, after: str | None, limit: int, lang: str,
                         run_id: int | None) -> web.Response:
        from bot.export import score_records
        from storage.scores import exportable_run, latest_run

        config = self.runtime.config
        with self.runtime.sync_db.connect() as connection:
            run = latest_run(connection) if run_id is None else exportable_run(connection, run_id)
            if run is None:
                return _error(404, "no score run yet: the nightly run (or `python -m bot score`) makes one"
                              if run_id is None else f"no full run or back-test #{run_id} that is still kept")
            items = list(score_records(connection, run, lang, len(config.scoring.value_matrix.module_catalogue),
                                       customer_ids=ids, after=after, limit=None if ids else limit))
        body: dict = {"run_id": run.id, "as_of": str(run.as_of), "items": items}
        if ids:
            found = {item["customer_id"] for item in items}
            body["not_found"] = [customer_id for customer_id in ids if customer_id not in found]
        else:
            body["next_after"] = items[-1]["customer_id"] if len(items) == limit else None
        return web.json_response(body, dumps=lambda data: json.dumps(data, ensure_ascii=False))


def _whole_number(text: str, name: str, low: int, high: int | None, problems: list[str]) -> int:
    try:
        value = int(text)
    except ValueError:
        value = None
    if value is None or value < low or (high is not None and value > high):
        bounds = f"from {low} to {high:,}" if high is not None else f">= {low}"
        problems.append(f"{name}: must be a whole number {bounds}: {text!r}")
        return low
    return value


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
