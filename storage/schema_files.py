"""The data-file contract (DESIGN §4): which files exist, their columns, Chinese header
aliases, and how each value is read. The importer and the REST API both validate
against these specs."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from storage.models import (
    ACTIVITY_KINDS,
    CUSTOMER_TYPES,
    LANGUAGE_NAMES,
    LANGUAGES,
    ORDER_KINDS,
    TICKET_SEVERITIES,
    USER_ROLES,
    Activity,
    Base,
    Customer,
    Order,
    Ticket,
    User,
)


@dataclass(frozen=True)
class Column:
    name: str
    kind: str  # id | text | int | money | date | datetime | bool | enum | list
    required: bool = False
    aliases: tuple[str, ...] = ()
    choices: tuple[str, ...] = ()
    # Other spellings of enum values (Chinese, capitalisation) → the canonical value.
    value_aliases: dict[str, str] = field(default_factory=dict)
    max_length: int | None = None
    minimum: float | None = None
    maximum: float | None = None
    # For `list` columns: lower-case every item (module names are codes, not prose).
    lowercase: bool = False
    # A column of the same row this one may not be earlier than (dates and datetimes).
    not_before: str | None = None
    # A datetime that cannot be later than the import (a moment that has happened).
    not_future: bool = False
    # For id and text columns: a regular expression every value must match whole, and what
    # the error calls such a value.
    pattern: tuple[str, str] | None = None
    # False: not written over the stored value by an import; the importer applies it
    # itself (a ticket's resolved_at closes it, and no file reopens a ticket).
    upsert: bool = True


@dataclass(frozen=True)
class Reference:
    column: str
    kind: str  # the file kind whose key the column names
    what: str  # "customer", "user": used in the error message


@dataclass(frozen=True)
class FileKind:
    name: str
    model: type[Base]
    key: str
    columns: tuple[Column, ...]
    references: tuple[Reference, ...] = ()
    file_aliases: tuple[str, ...] = ()
    # Set to the import time when a row is inserted or changed.
    stamped: bool = False

    @property
    def table(self):
        return self.model.__table__

    def column(self, name: str) -> Column:
        return next(c for c in self.columns if c.name == name)


# An order's amount or cost, in yuan: a trillion either way. The database keeps money as
# NUMERIC(18, 2), and monthly totals must fit too.
MAX_MONEY = 1e12


def _id(name: str, *aliases: str, required: bool = False) -> Column:
    return Column(name, "id", required=required, aliases=aliases, max_length=64)


# WeCom's UserID: letters, digits and _ - @ ., a letter or digit first (通讯录 · 创建成员).
# Anything else ('|' above all, message/send's separator) could never be messaged.
USERID_PATTERN = (r"[A-Za-z0-9][A-Za-z0-9_\-@.]{0,63}",
                  "a WeCom UserID (letters, digits and _ - @ ., a letter or digit first, at most 64)")


# Ticket numbers are typed in chat (「接单 T-001」) and carried in card buttons: no spaces, and
# nothing chat would split or fold away.
TICKET_ID_PATTERN = (r"[A-Za-z0-9][A-Za-z0-9_\-./]{0,63}",
                     "a ticket number agents can type in chat (letters, digits and _ - . /, a letter or digit "
                     "first, at most 64)")


def _userid(name: str, *aliases: str, required: bool = False) -> Column:
    return Column(name, "id", required=required, aliases=aliases, max_length=64, pattern=USERID_PATTERN)


USERS = FileKind(
    "users",
    User,
    "userid",
    (
        _userid("userid", "用户ID", "用户id", "企业微信ID", "企业微信账号", "账号", "成员ID", required=True),
        Column("name", "text", True, ("姓名", "名称"), max_length=128),
        Column(
            "role",
            "enum",
            True,
            ("角色",),
            choices=USER_ROLES,
            value_aliases={"销售": "rep", "经理": "manager", "销售经理": "manager", "客服": "agent",
                           "管理员": "admin"},
        ),
        _userid("manager_userid", "上级", "直属上级", "上级ID", "经理"),
        Column("team", "text", False, ("团队", "部门"), max_length=128),
        Column("queues", "list", False, ("队列", "服务队列"), max_length=512, lowercase=True),
        Column("language", "enum", False, ("语言", "推送语言"), choices=LANGUAGES, value_aliases=LANGUAGE_NAMES),
    ),
    references=(Reference("manager_userid", "users", "user"),),
    file_aliases=("用户", "成员"),
    stamped=True,
)

CUSTOMERS = FileKind(
    "customers",
    Customer,
    "customer_id",
    (
        _id("customer_id", "客户编号", "客户ID", "客户id", "客户代码", required=True),
        Column("name", "text", True, ("客户名称", "名称", "公司名称"), max_length=256),
        _userid("owner_userid", "负责人", "客户负责人", "销售", "归属销售"),
        Column("industry", "text", False, ("行业",), max_length=64),
        Column("region", "text", False, ("区域", "地区"), max_length=64),
        Column("employees", "int", False, ("员工数", "人数", "员工人数"), minimum=0, maximum=10_000_000),
        Column(
            "customer_type",
            "enum",
            False,
            ("客户类型",),
            choices=CUSTOMER_TYPES,
            value_aliases={"终端用户": "end_user", "终端客户": "end_user", "经销商": "dealer",
                           "代理商": "dealer", "集成商": "integrator"},
        ),
        Column("is_listed", "bool", False, ("是否上市", "上市公司")),
        Column("is_benchmark", "bool", False, ("是否标杆", "行业标杆")),
        Column("is_partner", "bool", False, ("是否合作伙伴", "生态伙伴")),
        Column("digital_maturity", "int", False, ("数字化成熟度",), minimum=1, maximum=5),
        Column("expansion_plan", "text", False, ("扩张计划", "发展计划"), max_length=64),
        Column("modules_owned", "list", False, ("已购模块", "已有模块"), max_length=512, lowercase=True),
        Column("created_at", "date", False, ("创建日期", "创建时间", "建档日期"), not_future=True),
    ),
    references=(Reference("owner_userid", "users", "user"),),
    file_aliases=("客户",),
    stamped=True,
)

ORDERS = FileKind(
    "orders",
    Order,
    "order_id",
    (
        _id("order_id", "订单编号", "订单号", "订单ID", required=True),
        _id("customer_id", "客户编号", "客户ID", "客户id", required=True),
        Column("order_date", "date", True, ("下单日期", "订单日期", "日期")),
        Column("amount", "money", True, ("金额", "订单金额", "合同金额"), minimum=-MAX_MONEY, maximum=MAX_MONEY),
        Column("cost", "money", False, ("成本",), minimum=0, maximum=MAX_MONEY),
        Column("product_line", "text", False, ("产品线", "产品"), max_length=64),
        Column(
            "kind",
            "enum",
            False,
            ("类型", "订单类型"),
            choices=ORDER_KINDS,
            value_aliases={"新购": "new", "新签": "new", "续费": "renewal", "续约": "renewal",
                           "增购": "upsell", "服务": "service"},
        ),
    ),
    references=(Reference("customer_id", "customers", "customer"),),
    file_aliases=("订单",),
)

ACTIVITIES = FileKind(
    "activities",
    Activity,
    "activity_id",
    (
        _id("activity_id", "活动编号", "记录编号", "记录ID", required=True),
        _id("customer_id", "客户编号", "客户ID", "客户id", required=True),
        Column("ts", "datetime", True, ("时间", "发生时间", "活动时间"), not_future=True),
        Column(
            "kind",
            "enum",
            True,
            ("类型", "行为类型", "活动类型"),
            choices=ACTIVITY_KINDS,
            value_aliases={"登录": "login", "拜访": "visit", "页面浏览": "page_view", "浏览": "page_view",
                           "下载": "download", "活动": "event", "会议活动": "event", "电话": "call",
                           "会议": "meeting", "投诉": "complaint"},
        ),
        Column("detail", "text", False, ("详情", "内容", "备注"), max_length=4000),
    ),
    references=(Reference("customer_id", "customers", "customer"),),
    file_aliases=("活动", "行为"),
)

TICKETS = FileKind(
    "tickets",
    Ticket,
    "ticket_id",
    (
        Column("ticket_id", "id", required=True, aliases=("工单编号", "工单号", "工单ID"), max_length=64,
               pattern=TICKET_ID_PATTERN),
        _id("customer_id", "客户编号", "客户ID", "客户id", required=True),
        Column("opened_at", "datetime", True, ("创建时间", "提交时间", "开单时间"), not_future=True),
        Column("subject", "text", True, ("标题", "问题", "问题描述", "主题"), max_length=512),
        Column("severity", "enum", False, ("级别", "严重程度", "优先级"), choices=TICKET_SEVERITIES,
               value_aliases={"p1": "P1", "p2": "P2", "p3": "P3", "p4": "P4"}),
        Column("product_line", "text", False, ("产品线", "产品"), max_length=64),
        # When the ticket was resolved in the system it comes from (local time): it arrives
        # resolved, and is never routed. Blank: still open.
        Column("resolved_at", "datetime", False, ("解决时间", "关闭时间", "完成时间"), not_before="opened_at",
               not_future=True, upsert=False),
    ),
    references=(Reference("customer_id", "customers", "customer"),),
    file_aliases=("工单",),
)

# Import order: a kind may only refer to kinds before it.
FILE_KINDS: tuple[FileKind, ...] = (USERS, CUSTOMERS, ORDERS, ACTIVITIES, TICKETS)
KINDS_BY_NAME = {kind.name: kind for kind in FILE_KINDS}
DATA_SUFFIXES = (".csv", ".xlsx")

# What may stand between a kind's name and the rest of a file name: a separator or a digit (a year).
_NAME_SEPARATOR = re.compile(r"[-_ .0-9]")


def kind_of_file(path: Path) -> FileKind | None:
    """`orders.csv`, `orders_2025.xlsx`, `orders2025.csv`, `订单-华东.csv`, `2025订单.xlsx`,
    `华东-订单.csv`, `订单明细.xlsx`, `客户订单.csv` → ORDERS; anything else → None. A name
    at the start wins over one at the end (`users-orders.csv` holds users)."""
    stem = path.stem.lower()
    names = [(kind, name) for kind in FILE_KINDS for name in (kind.name, *kind.file_aliases)]
    for kind, name in names:
        if stem == name or (stem.startswith(name) and _NAME_SEPARATOR.match(stem[len(name)])):
            return kind
    for kind, name in names:
        if len(stem) > len(name) and stem.endswith(name) and _NAME_SEPARATOR.match(stem[-len(name) - 1]):
            return kind
    # Chinese names run words together (订单明细, 客户列表, 客户活动记录): the last kind named wins.
    found = [(stem.rfind(name), kind) for kind in FILE_KINDS for name in kind.file_aliases if name in stem]
    return max(found, key=lambda item: item[0])[1] if found else None


def header_names(kind: FileKind) -> dict[str, str]:
    """Every accepted header spelling (case- and space-insensitive) → canonical column."""
    names = {}
    for column in kind.columns:
        for spelling in (column.name, *column.aliases):
            names[normalise_header(spelling)] = column.name
    return names


# A currency unit after a header (金额（元）, Amount (CNY), 金额(万元)): the column is the same.
_UNIT = re.compile(r"[（(]\s*(万元|万|元|人民币|rmb|cny|¥|￥)\s*[)）]$", re.IGNORECASE)


def normalise_header(text: str) -> str:
    plain = re.sub(r"[\s_]+", "", str(text)).strip().lower().lstrip("\ufeff")
    return _UNIT.sub("", plain) or plain


def in_ten_thousands(text: str) -> bool:
    """A header saying its amounts are in 万 (ten thousand yuan): 金额（万元）."""
    unit = _UNIT.search(re.sub(r"\s+", "", str(text)))
    return unit is not None and unit.group(1).startswith("万")
