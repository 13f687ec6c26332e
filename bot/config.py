"""Configuration: config.yaml, overridden by environment variables, validated at start-up.

Every problem is reported at once with its key path, e.g.
``scoring.value_matrix.current_weights.revenue_12m: must be a number >= 0``.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from notifications.settings import PlaybookConfig, PushesConfig, SchedulerConfig, TicketsConfig
from notifications.workdays import CalendarConfig
from scoring.pipeline import ScoringParams

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CONFIG_PATH = PROJECT_ROOT / "config.yaml"
DEFAULT_DATABASE_URL = f"sqlite:///{PROJECT_ROOT / 'var' / 'tierbot.db'}"

# Environment variable → key path in the config. Secrets come only from here in production.
ENV_OVERRIDES: dict[str, tuple[str, ...]] = {
    "WECOM_CORP_ID": ("wecom", "corp_id"),
    "WECOM_AGENT_ID": ("wecom", "agent_id"),
    "WECOM_SECRET": ("wecom", "secret"),
    "WECOM_TOKEN": ("wecom", "token"),
    "WECOM_ENCODING_AES_KEY": ("wecom", "encoding_aes_key"),
    "WECOM_API_BASE": ("wecom", "api_base"),
    "WECOM_WEBHOOK_KEY": ("wecom", "webhook_key"),
    "TIERBOT_DATABASE_URL": ("database", "url"),
    "TIERBOT_HTTP_HOST": ("http", "host"),
    "TIERBOT_HTTP_PORT": ("http", "port"),
    "TIERBOT_API_TOKEN": ("api", "token"),
    "TIERBOT_TIMEZONE": ("timezone",),
}


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DatabaseConfig(_Section):
    url: str = DEFAULT_DATABASE_URL

    @field_validator("url")
    @classmethod
    def _known_backend(cls, url: str) -> str:
        from sqlalchemy.engine import make_url
        from sqlalchemy.exc import ArgumentError

        if not url.startswith(("sqlite:", "sqlite+", "postgresql:", "postgresql+", "postgres:")):
            raise ValueError("must be a sqlite:/// or postgresql:// URL")
        try:
            make_url(url)
        except ArgumentError:
            raise ValueError("is not a database URL SQLAlchemy can read (e.g. sqlite:///var/tierbot.db)") from None
        return url


class HttpConfig(_Section):
    host: str = "127.0.0.1"
    port: int = Field(8080, ge=1, le=65535)


_CREDENTIALS = ("corp_id", "agent_id", "secret", "token", "encoding_aes_key")


def _decodes_to_32_bytes(key: str) -> bool:
    """WeCom's AES key is base64 of 32 bytes without its trailing '='."""
    import base64
    import binascii

    try:
        return len(base64.b64decode(key + "=", validate=True)) == 32
    except (binascii.Error, ValueError):
        return False


class WecomConfig(_Section):
    corp_id: str = ""
    agent_id: str = ""
    secret: str = Field("", repr=False)
    token: str = Field("", repr=False)
    encoding_aes_key: str = Field("", repr=False)
    api_base: str = "https://qyapi.weixin.qq.com"
    webhook_key: str = Field("", repr=False)

    @field_validator("encoding_aes_key")
    @classmethod
    def _aes_key_length(cls, key: str) -> str:
        if key and (len(key) != 43 or not _decodes_to_32_bytes(key)):
            raise ValueError("must be the 43-character EncodingAESKey from the WeCom admin console "
                             "(letters and digits, base64 of a 32-byte key)")
        return key

    @model_validator(mode="after")
    def _all_or_no_credentials(self) -> "WecomConfig":
        given = {name: bool(getattr(self, name)) for name in _CREDENTIALS}
        if any(given.values()) and not all(given.values()):
            missing = ", ".join(f"WECOM_{name.upper()}" for name, ok in given.items() if not ok)
            raise ValueError(f"some WeCom credentials are set but not all: also set {missing} "
                             "(or unset them all for the sandbox)")
        if self.agent_id and not str(self.agent_id).isdigit():
            raise ValueError("agent_id: must be the app's numeric AgentId")
        return self

    @property
    def has_credentials(self) -> bool:
        return all(getattr(self, name) for name in _CREDENTIALS)


class ApiConfig(_Section):
    token: str = Field("", repr=False)


class ImportConfig(_Section):
    # Rows validated and written per batch; bounds memory on big files.
    batch_rows: int = Field(50_000, ge=100)
    # How many problems a failed import lists before it only counts the rest.
    max_errors_listed: int = Field(50, ge=1)


class RetentionConfig(_Section):
    # Score runs whose per-customer snapshots are kept; older runs keep only their summary row.
    score_runs: int = Field(30, ge=1)
    # Days a sent or failed outbox row is kept (0: for ever). Not fewer than
    # MIN_OUTBOX_DAYS: the weekly tier report and the task cards' buttons look back that far.
    outbox_days: int = Field(90, ge=0)

    @field_validator("outbox_days")
    @classmethod
    def _outbox_days_cover_what_looks_back(cls, days: int) -> int:
        from notifications.outbox import MIN_OUTBOX_DAYS

        if 0 < days < MIN_OUTBOX_DAYS:
            raise ValueError(f"must be 0 (keep for ever) or at least {MIN_OUTBOX_DAYS}: the weekly tier report "
                             f"and the task cards' buttons look back at what was sent")
        return days


class Config(_Section):
    timezone: str = "Asia/Shanghai"
    language: Literal["zh", "en"] = "zh"
    database: DatabaseConfig = DatabaseConfig()
    http: HttpConfig = HttpConfig()
    wecom: WecomConfig = WecomConfig()
    api: ApiConfig = ApiConfig()
    import_: ImportConfig = Field(ImportConfig(), alias="import")
    retention: RetentionConfig = RetentionConfig()
    scoring: ScoringParams = ScoringParams()
    scheduler: SchedulerConfig = SchedulerConfig()
    calendar: CalendarConfig = CalendarConfig()
    pushes: PushesConfig = PushesConfig()
    playbook: PlaybookConfig = PlaybookConfig()
    tickets: TicketsConfig = TicketsConfig()

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @field_validator("timezone")
    @classmethod
    def _known_timezone(cls, name: str) -> str:
        try:
            ZoneInfo(name)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {name!r} (e.g. Asia/Shanghai)") from None
        return name

    @property
    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    def label_names(self) -> dict[str, dict[str, dict[str, str]]]:
        """model → label → {zh, en}: the display names this configuration gives labels."""
        return {"rfm": {segment.name: segment.title.model_dump()
                        for segment in self.scoring.rfm.segments if segment.title is not None}}

    def scoring_hash(self) -> str:
        """A short fingerprint of everything that changes scores, stored with each run."""
        payload = json.dumps(self.scoring.model_dump(mode="json"), sort_keys=True, ensure_ascii=False)
        return hashlib.sha256(payload.encode()).hexdigest()[:16]


class ConfigError(Exception):
    """The configuration is unusable; `problems` holds one line per problem."""

    def __init__(self, problems: list[str]):
        super().__init__("\n".join(problems))
        self.problems = problems


_FRIENDLY = {
    "greater_than_equal": "must be a number >= {ge}",
    "less_than_equal": "must be a number <= {le}",
    "greater_than": "must be a number > {gt}",
    "less_than": "must be a number < {lt}",
    "float_parsing": "must be a number",
    "float_type": "must be a number",
    "int_parsing": "must be a whole number",
    "int_type": "must be a whole number",
    "int_from_float": "must be a whole number",
    "bool_parsing": "must be true or false",
    "bool_type": "must be true or false",
    "string_type": "must be text",
    "dict_type": "must be a mapping of keys to values",
    "model_type": "must be a mapping of keys to values",
    "tuple_type": "must be a list",
    "list_type": "must be a list",
    "too_short": "must not be empty",
    "extra_forbidden": "unknown setting (misspelt?)",
    "missing": "is required",
    "literal_error": "must be one of {expected}",
}


def _describe(error: dict[str, Any]) -> str:
    template = _FRIENDLY.get(error["type"])
    if template:
        context = {key: f"{value:g}" if isinstance(value, float) else value
                   for key, value in (error.get("ctx") or {}).items()}
        try:
            return template.format(**context)
        except (KeyError, IndexError):
            pass
    message = error["msg"]
    return message.removeprefix("Value error, ")


def _format_path(loc: tuple[Any, ...]) -> str:
    parts = ["import" if part == "import_" else str(part) for part in loc]
    return ".".join(parts) if parts else "(top level)"


def _without_empty(tree: dict[str, Any]) -> dict[str, Any]:
    """A key left empty in YAML (`database:` with only comments below) means "the default"."""
    return {key: _without_empty(value) if isinstance(value, dict) else value
            for key, value in tree.items() if value is not None}


def _set_path(tree: dict[str, Any], path: tuple[str, ...], value: str) -> None:
    node = tree
    for key in path[:-1]:
        child = node.get(key)
        if not isinstance(child, dict):
            child = {}
            node[key] = child
        node = child
    node[path[-1]] = value


class _UniqueKeyLoader(yaml.SafeLoader):
    """yaml.safe_load, but a key written twice in one mapping is an error: YAML keeps the
    last one without a word, which drops a whole section written earlier."""


def _mapping_of_unique_keys(loader: _UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    first_line: dict[Any, int] = {}
    for key_node, _value in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":
            continue
        key = loader.construct_object(key_node, deep=deep)
        try:
            hash(key)
        except TypeError:
            raise yaml.constructor.ConstructorError(None, None, "a key must be a plain value, not a list or mapping",
                                                    key_node.start_mark) from None
        if key in first_line:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r} (first on line {first_line[key] + 1})", key_node.start_mark)
        first_line[key] = key_node.start_mark.line
    return loader.construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping_of_unique_keys)


def load_config(path: Path | str | None = None, environ: dict[str, str] | None = None) -> Config:
    """Read config.yaml (or `path`), apply the environment overrides and validate.

    Raises ConfigError listing every problem, each as `key.path: reason`.
    """
    environ = os.environ if environ is None else environ
    config_path = Path(path) if path else DEFAULT_CONFIG_PATH
    raw: dict[str, Any] = {}
    if config_path.exists():
        try:
            loaded = yaml.load(config_path.read_text(encoding="utf-8"), Loader=_UniqueKeyLoader)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f"{config_path}:{mark.line + 1}" if mark else str(config_path)
            raise ConfigError([f"{where}: not valid YAML: {getattr(exc, 'problem', exc)}"]) from None
        except UnicodeDecodeError:
            raise ConfigError([f"{config_path}: not UTF-8 text"]) from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError([f"{config_path}: the top level must be a mapping of settings"])
        raw = _without_empty(loaded or {})
    elif path:
        raise ConfigError([f"{config_path}: no such file"])

    env_sources: dict[str, str] = {}
    for variable, key_path in ENV_OVERRIDES.items():
        value = environ.get(variable)
        if value is not None and value != "":
            _set_path(raw, key_path, value)
            env_sources[".".join(key_path)] = variable

    try:
        config = Config.model_validate(raw)
    except ValidationError as exc:
        problems = []
        errors = exc.errors()
        for error in errors:
            # A list whose items were all refused is also "too short": the items' problems say it.
            if error["type"] == "too_short" and any(
                    len(other["loc"]) > len(error["loc"]) and other["loc"][:len(error["loc"])] == error["loc"]
                    for other in errors):
                continue
            key = _format_path(error["loc"])
            source = f" (from {env_sources[key]})" if key in env_sources else ""
            problems.append(f"{key}{source}: {_describe(error)}")
        raise ConfigError(problems) from None
    from handlers.text import use_label_names  # the names every message and export reads labels by

    check_titles(config)
    use_label_names(config.label_names())
    return config


def check_titles(config: Config) -> None:
    """ConfigError when an RFM segment's title cannot be typed to list it (see
    handlers.named_segments.title_problems)."""
    from handlers.named_segments import title_problems

    segments = config.scoring.rfm.segments
    problems = title_problems(config.label_names()["rfm"], {
        segment.name: f"scoring.rfm.segments.{index}.title ({segment.name})" for index, segment in enumerate(segments)})
    if problems:
        raise ConfigError(problems)
