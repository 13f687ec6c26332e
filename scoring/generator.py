"""Deterministic generator of a believable B2B vendor's data (demo, tests, benchmarks).

The company sells eight software modules (finance, crm, mes, plm, scm, hr, bi, wms)
plus services to Chinese businesses, mostly manufacturers. `generate_company()` writes
the five data files of DESIGN §4 into a folder: ``users.csv``, ``customers.csv``,
``orders.csv``, ``activities.csv``, ``tickets.csv`` (UTF-8, header row, ``\\n`` line
ends, ISO-8601 dates, money in yuan with 2 decimals, booleans ``true``/``false``,
lists ``|``-separated). No field ever needs CSV quoting: the vocabulary holds no ASCII
comma, quote or line break.

Customer archetypes
-------------------
Every customer gets one archetype; shares depend on company size (employees < 100,
< 1000, larger) and come out overall at roughly:

==========  =====  ==============================================================
archetype   share  what the data shows
==========  =====  ==============================================================
prospect    ~10%   no orders at all; activity (page views, downloads, calls) only
one_off     ~30%   exactly one order (``new``); activity tails off 90 days after it
steady      ~35%   orders all through their tenure, seasonal but without trend
grower      ~10%   orders and order size rise over time (three growth rates); a
                   fifth of them are *hot*: in the last ~5 months order count
                   grows ~40% and order size ~25% per month, outweighing the
                   calendar, so monthly revenue rises > 20% three months running
                   for many of them (more so the more orders per customer)
fader       ~12%   orders stop (half of them) or fall to a trickle at much smaller
                   size 6–12 months before ``as_of``; activity halves from then on
                   and nearly stops 30–90 days before ``as_of``
whale        ~3%   mostly large companies; ~4× the orders and ~2.5× the order size
==========  =====  ==============================================================

Independently of the archetype, ~5% of buyers (15% of faders) have *rising
complaints*: a handful of extra ``complaint`` activities and more tickets, both
concentrated in the last few months. `customer_archetypes()` returns the ground truth
(archetype, hot grower, rising complaints) without writing anything, so tests and
benchmarks can check that the models find what was planted.

Other shapes in the data:

- Revenue is heavy-tailed: order count and order size both grow with company size and
  carry log-normal noise, so about 20% of customers bring about 80% of revenue (85%
  at the defaults; the top 1% bring about a third).
- Counts scale with tenure: a customer active for half the window (it started late,
  or faded) gets about half the orders, activities and tickets of a full-window one.
- Seasonality of order dates: December and June peaks (strongest in their last ten
  days), quarter-end bumps, a dip around Chinese New Year (late January–February, from
  a table of Spring Festival dates) and National Day (1–7 October), few orders at
  weekends. Activities follow a milder version of the same curve, in working hours
  (09:00–18:00) mostly.
- The first order of every buyer is ``new`` and a software module; later orders are
  ``service`` (product line ``service``), ``upsell`` (first order of a module for
  that customer, or more licences) or ``renewal``. Margins: software 60–80%, service
  20–40%; ``cost = amount × (1 − margin)`` in whole cents, never above ``amount``.
- ``modules_owned`` is the module set the customer's orders are drawn from (it may
  hold a module bought before the window); prospects own nothing. Page views and
  downloads lean towards the one module the customer does not own yet but would want.
- ``created_at`` lies 0–365 days (mean ~45) before the first order; for prospects it
  lies anywhere from a year before the window to ``as_of``. No activity precedes it.

Users: ``admin`` (role admin); a head of sales (manager, no manager); one manager per
sales team (team named region + number, e.g. 华东一组; manager = head of sales); reps,
about one per 50 customers (at least 3 in 2 teams), spread evenly over the teams; a
customer's owner is a rep of a team in the customer's region (the region comes from
the city in its name) when that region has a team. Service: one *queue lead* per
queue (expert, standard, growth) with role **manager**, team 客服中心, ``queues`` = the
queue they lead and no manager of their own — they supervise and take escalations, not
routine tickets; and service agents (role agent, about one per 300 customers, at least
3) each serving one queue and sometimes a second, managed by the lead of their first
queue. Every queue has at least one agent. UserIDs are pinyin: ``zhangwei``, and for
the second person with the same pinyin ``zhang_wei2``.

Knobs
-----
``customers``, ``seed``, ``as_of`` and ``years`` (order dates cover
``[as_of − years, as_of]``, both ends inclusive), ``orders_per_customer`` (mean over
all customers, prospects included; met to within a few percent as long as it is at
least ~1.5, the floor set by the one-off and prospect shares), ``activities_per_customer``
(mean over all customers; 0 writes none), and ``chunk_customers``. Tickets average
~0.3 per customer. Below the ~1.5 floor every one-off buyer still gets its one order
and every other buyer two.

Determinism and memory
----------------------
Customers are generated in chunks of ``chunk_customers``; chunk *k* draws everything
from ``numpy.random.default_rng([seed, 1, k])`` and the users from
``default_rng([seed, 0])``, so the same arguments give byte-identical files and only
the chunk size (besides the documented arguments) shapes the output. Customer names are
unique by construction: a keyed Feistel permutation maps each customer number to a
distinct (city, two-character brand) pair; past ~1.07 million customers a number in
brackets is added. Rows are appended to the files chunk by chunk, so memory is bounded
by one chunk, and within a chunk each kind of row is drawn, written and dropped before
the next: roughly 180 bytes × ``chunk_customers × max(orders_per_customer,
activities_per_customer)`` of numpy arrays plus 250k-row batches of text (measured on
2 cores, one process: 1M customers / 20M orders / 20M activities in ~65–70 s at
~290 MB peak RSS; 100k / 10M / 10M in ~31 s at ~460 MB). Files are written under a
``.partial`` name and renamed when complete; an exception removes them.
"""

from __future__ import annotations

import math
import os
import sys
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

__all__ = [
    "ACTIVITY_KINDS",
    "ARCHETYPES",
    "CUSTOMER_TYPES",
    "EXPANSION_PLANS",
    "HEADERS",
    "INDUSTRIES",
    "MODULES",
    "ORDER_KINDS",
    "PRODUCT_LINES",
    "QUEUES",
    "REGIONS",
    "ROLES",
    "SEVERITIES",
    "GeneratedCounts",
    "customer_archetypes",
    "generate_company",
]

# ---------------------------------------------------------------------------- vocabulary

INDUSTRIES = (
    "高端制造", "新能源", "半导体", "医疗器械", "汽车零部件", "电子制造", "化工", "食品饮料",
    "纺织服装", "建材", "物流", "零售", "金融", "教育", "政府",
)
_INDUSTRY_WEIGHTS = np.array([12, 8, 5, 6, 10, 10, 7, 7, 6, 5, 6, 7, 4, 4, 3], dtype=float)
_MANUFACTURING = frozenset(INDUSTRIES[:10])
REGIONS = ("华东", "华南", "华北", "华中", "西南", "西北", "东北")
MODULES = ("finance", "crm", "mes", "plm", "scm", "hr", "bi", "wms")
PRODUCT_LINES = MODULES + ("service",)
_SERVICE = len(MODULES)  # product-line code of "service"
ORDER_KINDS = ("new", "renewal", "upsell", "service")
ACTIVITY_KINDS = ("login", "visit", "page_view", "download", "event", "call", "meeting", "complaint")
CUSTOMER_TYPES = ("end_user", "dealer", "integrator")
EXPANSION_PLANS = ("ipo", "financing", "new_plant", "overseas")
ROLES = ("rep", "manager", "agent", "admin")
QUEUES = ("expert", "standard", "growth")
SEVERITIES = ("P1", "P2", "P3", "P4")
ARCHETYPES = ("prospect", "one_off", "steady", "grower", "fader", "whale")
_PROSPECT, _ONE_OFF, _STEADY, _GROWER, _FADER, _WHALE = range(6)

HEADERS = {
    "users": ("userid", "name", "role", "manager_userid", "team", "queues"),
    "customers": (
        "customer_id", "name", "owner_userid", "industry", "region", "employees", "customer_type",
        "is_listed", "is_benchmark", "is_partner", "digital_maturity", "expansion_plan",
        "modules_owned", "created_at",
    ),
    "orders": ("order_id", "customer_id", "order_date", "amount", "cost", "product_line", "kind"),
    "activities": ("activity_id", "customer_id", "ts", "kind", "detail"),
    "tickets": ("ticket_id", "customer_id", "opened_at", "subject", "severity", "resolved_at"),
}

# Cities by region; the region of a customer is the region of the city in its name.
# No city name is a prefix of another, which keeps (city, brand) → name injective.
_CITIES_BY_REGION = {
    "华东": "上海 南京 苏州 无锡 常州 南通 扬州 徐州 杭州 宁波 温州 绍兴 嘉兴 台州 金华 湖州 "
            "合肥 芜湖 济南 青岛 烟台 潍坊 淄博 福州 厦门 泉州 南昌 赣州 昆山 义乌",
    "华南": "广州 深圳 东莞 佛山 珠海 中山 惠州 江门 汕头 湛江 南宁 柳州 桂林 海口 三亚 肇庆",
    "华北": "北京 天津 石家庄 唐山 保定 廊坊 邯郸 沧州 太原 大同 呼和浩特 包头 鄂尔多斯 秦皇岛 长治 晋中",
    "华中": "武汉 宜昌 襄阳 长沙 株洲 湘潭 岳阳 郑州 洛阳 新乡 许昌 南阳 十堰 常德",
    "西南": "成都 绵阳 德阳 宜宾 重庆 贵阳 遵义 昆明 曲靖 拉萨 泸州 南充",
    "西北": "西安 宝鸡 咸阳 兰州 天水 银川 西宁 乌鲁木齐 克拉玛依 榆林",
    "东北": "沈阳 大连 鞍山 长春 吉林 哈尔滨 大庆 齐齐哈尔 营口 锦州",
}
_CITIES = tuple(c for r in REGIONS for c in _CITIES_BY_REGION[r].split())
_CITY_REGION = np.array([REGIONS.index(r) for r in REGIONS for _ in _CITIES_BY_REGION[r].split()])
_BRAND_CHARS = tuple(dict.fromkeys(
    "恒达华信瑞科通创联盛远拓新泰鼎嘉金宏博诚德晟昊辰航汇佳海天浩隆鑫源润丰安康宇星光明腾飞跃"
    "中东正和合凯众兴立顺成益永长江瀚睿智思维卓越力强亿万方圆元美优精锐迅捷鸿辉耀晶锦绿蓝青云"
    "峰岳川伟俊杰豪雄威奥晖铭灿璟骏"
))[:100]
_N_PAIRS = len(_BRAND_CHARS) * (len(_BRAND_CHARS) - 1)
_NAME_SPACE = len(_CITIES) * _N_PAIRS  # distinct (city, brand) names before a number is needed
_INDUSTRY_WORDS = (
    ("精密机械", "智能装备", "精工", "机床", "自动化设备"),
    ("新能源", "光伏科技", "储能科技", "锂电科技", "风电设备"),
    ("微电子", "半导体", "芯片科技", "集成电路", "光电科技"),
    ("医疗器械", "医疗科技", "生物医疗", "医学影像"),
    ("汽车零部件", "汽配", "车桥", "汽车电子"),
    ("电子", "电子科技", "电路板", "精密电子"),
    ("化工", "新材料", "化学", "涂料"),
    ("食品", "饮料", "乳业", "食品科技"),
    ("纺织", "服饰", "制衣", "家纺"),
    ("建材", "新型建材", "管业", "陶瓷"),
    ("物流", "供应链管理", "运输", "仓储"),
    ("商贸", "连锁商业", "零售", "百货"),
    ("融资租赁", "商业保理", "投资", "资产管理"),
    ("教育科技", "职业培训", "教育咨询"),
    ("城市建设投资", "城市发展", "国有资产经营", "公共资源服务", "产业投资"),
)
_SUFFIXES = ("有限公司", "股份有限公司", "集团有限公司")

# People: surname (pinyin) weighted by frequency rank, given-name characters (pinyin).
_SURNAMES = tuple(tuple(x.split(":")) for x in (
    "王:wang 李:li 张:zhang 刘:liu 陈:chen 杨:yang 黄:huang 赵:zhao 吴:wu 周:zhou 徐:xu 孙:sun "
    "马:ma 朱:zhu 胡:hu 郭:guo 何:he 高:gao 林:lin 罗:luo 郑:zheng 梁:liang 谢:xie 宋:song 唐:tang "
    "许:xu 韩:han 冯:feng 邓:deng 曹:cao 彭:peng 曾:zeng 肖:xiao 田:tian 董:dong 袁:yuan 潘:pan "
    "于:yu 蒋:jiang 蔡:cai 余:yu 杜:du 叶:ye 程:cheng 苏:su 魏:wei 吕:lv 丁:ding 任:ren 沈:shen "
    "姚:yao 卢:lu 姜:jiang 崔:cui 钟:zhong 谭:tan 陆:lu 汪:wang 范:fan 金:jin 石:shi 廖:liao 贾:jia "
    "夏:xia 韦:wei 付:fu 方:fang 白:bai 邹:zou 孟:meng 熊:xiong 秦:qin 邱:qiu 江:jiang 尹:yin "
    "薛:xue 闫:yan 段:duan 雷:lei 侯:hou 龙:long 史:shi 陶:tao 黎:li 贺:he 顾:gu 毛:mao 郝:hao "
    "龚:gong 邵:shao 万:wan 钱:qian 严:yan 武:wu 戴:dai 莫:mo 孔:kong 向:xiang 汤:tang"
).split())
_GIVEN = tuple(tuple(x.split(":")) for x in (
    "伟:wei 芳:fang 娜:na 敏:min 静:jing 丽:li 强:qiang 磊:lei 军:jun 洋:yang 勇:yong 艳:yan "
    "杰:jie 娟:juan 涛:tao 明:ming 超:chao 秀:xiu 霞:xia 平:ping 刚:gang 桂:gui 华:hua 建:jian "
    "文:wen 辉:hui 玲:ling 鹏:peng 宇:yu 浩:hao 凯:kai 婷:ting 晨:chen 欣:xin 雪:xue 琳:lin "
    "峰:feng 亮:liang 斌:bin 波:bo 燕:yan 红:hong 鑫:xin 佳:jia 慧:hui 博:bo 阳:yang 帆:fan "
    "倩:qian 颖:ying 蕾:lei 婧:jing 俊:jun 毅:yi 晓:xiao 思:si 雨:yu 梦:meng 然:ran 子:zi "
    "嘉:jia 怡:yi 轩:xuan 昊:hao 天:tian 泽:ze 悦:yue 瑶:yao 琪:qi 晶:jing 璐:lu 诗:shi 梓:zi "
    "瑞:rui 航:hang 宁:ning 彤:tong 旭:xu 东:dong 海:hai 岩:yan 立:li 志:zhi 国:guo 春:chun "
    "荣:rong 兰:lan 新:xin 雯:wen 楠:nan 凡:fan 哲:zhe 睿:rui 宏:hong 露:lu 丹:dan 飞:fei"
).split())

# Activity details: (kind, texts). {m} in a page path is filled per module (see below).
_GENERAL_DETAILS = {
    "login": ("web", "app", "wecom"),
    "visit": ("上门拜访，了解数字化需求", "拜访财务负责人", "现场调研生产流程", "续约沟通拜访",
              "高层拜访", "陪同实施顾问上门", "拜访IT负责人", "新项目需求调研"),
    "page_view": ("/", "/pricing", "/cases", "/solutions/smart-factory", "/solutions/digital-finance",
                  "/solutions/supply-chain", "/docs/getting-started", "/about", "/events",
                  "/blog/digital-transformation"),
    "download": ("/cases/smart-factory.pdf", "/whitepapers/digital-transformation.pdf",
                 "/whitepapers/industry-4.0.pdf", "/brochures/product-overview.pdf",
                 "/cases/group-finance.pdf"),
    "event": ("智能制造峰会", "数字化转型沙龙", "新品发布会", "客户答谢会", "行业研讨会（线上）",
              "用户大会", "财务数字化训练营"),
    "call": ("电话回访", "续费提醒", "需求确认", "报价沟通", "满意度回访", "回款沟通", "预约演示"),
    "meeting": ("季度业务回顾", "方案演示", "项目启动会", "实施周例会", "高层战略会谈", "POC评审会"),
    "complaint": ("系统响应慢", "实施进度滞后", "发票开具延迟", "数据同步失败", "售后响应不及时",
                  "报表数据不准确", "培训不到位", "对续费价格不满", "升级后功能异常"),
}
_DETAILS = [t for k in ACTIVITY_KINDS for t in _GENERAL_DETAILS[k]]
_DETAIL_OFFSET = np.cumsum([0] + [len(_GENERAL_DETAILS[k]) for k in ACTIVITY_KINDS])[:-1]
_DETAIL_COUNT = np.array([len(_GENERAL_DETAILS[k]) for k in ACTIVITY_KINDS])
_PAGE_OFFSET = len(_DETAILS)
_DETAILS += [f"/products/{m}" for m in MODULES]
_CASE_OFFSET = len(_DETAILS)
_DETAILS += [f"/cases/{m}-case.pdf" for m in MODULES]
_DETAILS_ARR = np.array(_DETAILS, dtype=object)
_HUMAN_KINDS = np.array([k in ("visit", "event", "call", "meeting") for k in ACTIVITY_KINDS])
# Kind mix of ordinary activity (complaints of "rising complaints" customers come on top).
_KIND_MIX_BUYER = np.array([0.35, 0.08, 0.22, 0.05, 0.05, 0.14, 0.07, 0.04])
_KIND_MIX_PROSPECT = np.array([0.0, 0.10, 0.40, 0.15, 0.10, 0.18, 0.07, 0.0])

_MODULE_SUBJECTS = {
    "finance": ("总账月结报错", "凭证导入失败", "财务报表取数不准", "发票校验异常"),
    "crm": ("商机阶段无法保存", "客户数据导入失败", "移动端无法登录CRM"),
    "mes": ("MES工单无法下发", "报工数据不同步", "设备数据采集中断", "MES看板显示异常"),
    "plm": ("BOM变更审批卡住", "图纸上传失败", "PLM与ERP物料同步失败"),
    "scm": ("采购订单无法审批", "供应商门户登录异常", "库存数据不一致"),
    "hr": ("考勤数据缺失", "薪资计算有误", "组织架构同步失败"),
    "bi": ("BI报表加载缓慢", "数据看板权限配置", "报表导出异常"),
    "wms": ("WMS拣货单打印失败", "PDA扫码无响应", "库位数据错乱"),
}
_GENERIC_SUBJECTS = ("登录失败", "账号权限配置咨询", "系统响应慢", "数据导出异常", "接口调用报错",
                     "密码重置", "版本升级咨询", "操作培训需求", "系统无法访问", "单点登录失败")
_SUBJECTS = list(_GENERIC_SUBJECTS) + [s for m in MODULES for s in _MODULE_SUBJECTS[m]]
_SUBJECTS_ARR = np.array(_SUBJECTS, dtype=object)
_SUBJECT_OFFSET = np.array(np.cumsum([len(_GENERIC_SUBJECTS)] + [len(_MODULE_SUBJECTS[m]) for m in MODULES])[:-1])
_SUBJECT_COUNT = np.array([len(_MODULE_SUBJECTS[m]) for m in MODULES])

# Chinese New Year (Spring Festival) dates; other years fall back to 5 February.
_CNY = {
    2000: (2, 5), 2001: (1, 24), 2002: (2, 12), 2003: (2, 1), 2004: (1, 22), 2005: (2, 9),
    2006: (1, 29), 2007: (2, 18), 2008: (2, 7), 2009: (1, 26), 2010: (2, 14), 2011: (2, 3),
    2012: (1, 23), 2013: (2, 10), 2014: (1, 31), 2015: (2, 19), 2016: (2, 8), 2017: (1, 28),
    2018: (2, 16), 2019: (2, 5), 2020: (1, 25), 2021: (2, 12), 2022: (2, 1), 2023: (1, 22),
    2024: (2, 10), 2025: (1, 29), 2026: (2, 17), 2027: (2, 6), 2028: (1, 26), 2029: (2, 13),
    2030: (2, 3), 2031: (1, 23), 2032: (2, 11), 2033: (1, 31), 2034: (2, 19), 2035: (2, 8),
}
_MONTH_FACTOR = np.array([0, 0.85, 0.80, 1.10, 0.90, 0.95, 1.35, 0.90, 0.90, 1.10, 0.85, 1.05, 1.60])

# Archetype shares by company size (employees < 100, < 1000, ≥ 1000).
_ARCHETYPE_SHARES = np.array([
    # prospect one_off steady grower fader whale
    [0.130, 0.380, 0.280, 0.090, 0.115, 0.005],
    [0.080, 0.270, 0.390, 0.110, 0.125, 0.025],
    [0.060, 0.150, 0.420, 0.120, 0.120, 0.130],
])

# Module popularity, then per-industry multipliers.
_MODULE_WEIGHTS = np.array([0.22, 0.18, 0.12, 0.06, 0.12, 0.14, 0.10, 0.06])


def _module_weights() -> np.ndarray:
    w = np.tile(_MODULE_WEIGHTS, (len(INDUSTRIES), 1))
    col = {m: i for i, m in enumerate(MODULES)}
    for i, ind in enumerate(INDUSTRIES):
        if ind in _MANUFACTURING:
            w[i, col["mes"]] *= 2.5
            w[i, col["plm"]] *= 2.0
            w[i, col["wms"]] *= 1.5
        elif ind == "物流":
            w[i, col["wms"]] *= 4.0
            w[i, col["scm"]] *= 2.0
            w[i, [col["mes"], col["plm"]]] *= 0.1
        elif ind == "零售":
            w[i, col["crm"]] *= 2.0
            w[i, col["scm"]] *= 1.5
            w[i, [col["mes"], col["plm"]]] *= 0.1
        else:  # 金融, 教育, 政府
            w[i, [col["mes"], col["plm"], col["wms"]]] *= 0.1
    return w / w.sum(axis=1, keepdims=True)


_MODULE_WEIGHTS_BY_INDUSTRY = _module_weights()
# Order size by product line, and by kind (new, renewal, upsell, service).
_LINE_SIZE = np.array([1.0, 0.9, 1.8, 1.5, 1.2, 0.7, 0.8, 1.1, 0.35])
_KIND_SIZE = np.array([1.6, 0.55, 1.0, 1.0])
_MARGIN_MEAN = np.array([0.75, 0.77, 0.64, 0.68, 0.70, 0.78, 0.76, 0.66, 0.30])
_MARGIN_LOW = np.array([0.60] * len(MODULES) + [0.20])
_MARGIN_HIGH = np.array([0.80] * len(MODULES) + [0.40])
_SEVERITY_P = np.array([0.04, 0.16, 0.50, 0.30])

# Bit tables for module sets (bit i = MODULES[i]).
_POPCOUNT = np.array([bin(m).count("1") for m in range(256)])
_NTH_BIT = np.zeros((256, 8), dtype=np.int64)
for _m in range(256):
    _bits = [i for i in range(8) if _m >> i & 1]
    _NTH_BIT[_m, : len(_bits)] = _bits
_MODULE_SET_TEXT = np.array(["|".join(MODULES[i] for i in range(8) if m >> i & 1) for m in range(256)],
                            dtype=object)

_ROWS_PER_WRITE = 250_000  # rows formatted into text at a time
_DAY_LEAD = 400  # days before the window that created_at may reach


# ---------------------------------------------------------------------------- public API


@dataclass(frozen=True)
class GeneratedCounts:
    """Numbers of rows written per file."""

    users: int
    customers: int
    orders: int
    activities: int
    tickets: int


def generate_company(
    out_dir: Path,
    *,
    customers: int = 2000,
    seed: int = 42,
    as_of: date = date(2026, 11, 20),
    years: int = 3,
    orders_per_customer: float = 12,
    activities_per_customer: float = 15,
    chunk_customers: int = 20000,
    progress: bool = False,
) -> GeneratedCounts:
    """Write users/customers/orders/activities/tickets CSV files into `out_dir`.

    Same arguments → byte-identical files. Memory is bounded by one chunk of
    `chunk_customers` customers and their rows. See the module docstring for what the
    data looks like.
    """
    ctx = _Context(customers, seed, as_of, years, orders_per_customer, activities_per_customer,
                   chunk_customers)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    names = ("users", "customers", "orders", "activities", "tickets")
    partial = {n: out_dir / f"{n}.csv.partial" for n in names}
    files = {}
    counts = dict.fromkeys(names, 0)
    try:
        for n in names:
            files[n] = open(partial[n], "wb", buffering=1 << 20)
            files[n].write((",".join(HEADERS[n]) + "\n").encode())
        files["users"].write(_join_lines(ctx.user_lines))
        counts["users"] = len(ctx.user_lines)
        next_id = {"customers": 1, "orders": 1, "activities": 1, "tickets": 1}
        with tqdm(total=customers, unit="customers", desc="generate", file=sys.stderr,
                  disable=not progress, dynamic_ncols=True) as bar:
            for k, start in enumerate(range(0, customers, chunk_customers)):
                n = min(chunk_customers, customers - start)
                # Each kind of row is drawn, written and dropped before the next, so
                # a chunk's orders and activities are never in memory together.
                chunk = _Chunk(ctx, k, start, n)
                for kind in ("orders", "customers", "activities", "tickets"):
                    written = getattr(chunk, f"write_{kind}")(files[kind], next_id[kind])
                    next_id[kind] += written
                    counts[kind] += written
                del chunk
                bar.update(n)
    except BaseException:
        for f in files.values():
            f.close()
        for p in partial.values():
            p.unlink(missing_ok=True)
        raise
    for n in names:
        files[n].close()
        os.replace(partial[n], out_dir / f"{n}.csv")
    return GeneratedCounts(**counts)


def customer_archetypes(
    *, customers: int = 2000, seed: int = 42, as_of: date = date(2026, 11, 20), years: int = 3,
    chunk_customers: int = 20000,
) -> pd.DataFrame:
    """The planted ground truth of a `generate_company()` run with the same arguments:
    one row per customer with `customer_id`, `archetype` (one of ARCHETYPES),
    `hot_grower` and `rising_complaints` (bools). Writes nothing; cheap (no orders or
    activities are drawn)."""
    ctx = _Context(customers, seed, as_of, years, 12, 15, chunk_customers)
    parts = []
    for k, start in enumerate(range(0, customers, chunk_customers)):
        n = min(chunk_customers, customers - start)
        c = _draw_customers(np.random.default_rng([seed, 1, k]), ctx, start, n)
        parts.append(pd.DataFrame({
            "customer_id": c.customer_id,
            "archetype": np.array(ARCHETYPES, dtype=object)[c.arch],
            "hot_grower": c.growth_class == 4,
            "rising_complaints": c.complainer,
        }))
    return pd.concat(parts, ignore_index=True)


# ---------------------------------------------------------------------------- helpers


def _join_lines(lines: list[str]) -> bytes:
    return "".join(lines).encode("utf-8")


def _chinese_number(n: int) -> str:
    """1..9999 → 一, 十二, 一百零三, 二千零五十 (team numbers)."""
    digits = "零一二三四五六七八九"
    if n < 10:
        return digits[n]
    if n < 20:
        return "十" + (digits[n % 10] if n % 10 else "")
    out, zero = "", False
    for value, unit in ((1000, "千"), (100, "百"), (10, "十"), (1, "")):
        d = n // value % 10
        if d:
            if zero and out:
                out += "零"
            out += digits[d] + unit
            zero = False
        else:
            zero = True
    return out


def _shift_years(d: date, years: int) -> date:
    try:
        return d.replace(year=d.year - years)
    except ValueError:  # 29 February
        return d.replace(year=d.year - years, day=28)


def _mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser on uint64 arrays (wrapping arithmetic)."""
    x = x ^ (x >> np.uint64(30))
    x = x * np.uint64(0xBF58476D1CE4E5B9)
    x = x ^ (x >> np.uint64(27))
    x = x * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def _permute(index: np.ndarray, size: int, keys: np.ndarray) -> np.ndarray:
    """A keyed bijection of [0, size): balanced Feistel network + cycle walking."""
    half = max(1, math.ceil(math.ceil(math.log2(max(size, 2))) / 2))
    mask = np.uint64((1 << half) - 1)
    shift = np.uint64(half)

    def feistel(x: np.ndarray) -> np.ndarray:
        left, right = x >> shift, x & mask
        for key in keys:
            left, right = right, left ^ (_mix64(right ^ key) & mask)
        return (left << shift) | right

    x = feistel(index.astype(np.uint64))
    outside = x >= size
    while outside.any():
        x[outside] = feistel(x[outside])
        outside = x >= size
    return x.astype(np.int64)


# ---------------------------------------------------------------------------- context


class _Context:
    """Everything that is the same for all chunks: the calendar, the day-intensity
    profiles, the users, the name permutation key, the id widths."""

    def __init__(self, customers, seed, as_of, years, orders_per_customer, activities_per_customer,
                 chunk_customers):
        if not isinstance(customers, (int, np.integer)) or customers < 1:
            raise ValueError("customers must be a positive integer")
        if not isinstance(seed, (int, np.integer)) or seed < 0:
            raise ValueError("seed must be a non-negative integer")
        if not isinstance(years, (int, np.integer)) or years < 1:
            raise ValueError("years must be a positive integer")
        if not isinstance(chunk_customers, (int, np.integer)) or chunk_customers < 1:
            raise ValueError("chunk_customers must be a positive integer")
        if not (orders_per_customer >= 0 and math.isfinite(orders_per_customer)):
            raise ValueError("orders_per_customer must be a finite number >= 0")
        if not (activities_per_customer >= 0 and math.isfinite(activities_per_customer)):
            raise ValueError("activities_per_customer must be a finite number >= 0")
        if isinstance(as_of, pd.Timestamp) or type(as_of) is not date:
            as_of = pd.Timestamp(as_of).date()
        self.customers = int(customers)
        self.seed = int(seed)
        self.as_of = as_of
        self.start = _shift_years(as_of, years)
        self.days = (as_of - self.start).days + 1  # D: day index 0..D-1, D-1 = as_of
        self.orders_per_customer = float(orders_per_customer)
        self.activities_per_customer = float(activities_per_customer)
        self.cust_width = max(6, len(str(customers)))
        self.order_width = max(8, len(str(int(customers * max(orders_per_customer, 2) * 1.2) + 9)))
        self.activity_width = max(9, len(str(int(customers * activities_per_customer * 1.2) + 9)))
        self.ticket_width = max(7, len(str(int(customers * 0.6) + 9)))
        self.name_keys = np.random.default_rng([seed, 2]).integers(0, 2**63, size=4, dtype=np.uint64)
        self._calendar()
        self._users(np.random.default_rng([seed, 0]))

    # ---- calendar and intensity profiles
    def _calendar(self):
        D = self.days
        first = np.datetime64(self.start, "D")
        all_days = first + np.arange(-_DAY_LEAD, D)
        self.day_text = np.array([str(d) for d in all_days], dtype=object)  # index day + _DAY_LEAD
        days = all_days[_DAY_LEAD:]
        month = days.astype("datetime64[M]").astype(np.int64) % 12 + 1
        dom = (days - days.astype("datetime64[M]")).astype(np.int64) + 1
        weekday = (days.astype(np.int64) + 3) % 7  # 1970-01-01 was a Thursday; Monday = 0
        weekend = weekday >= 5
        cny = np.zeros(D, dtype=bool)
        for year in range(self.start.year, self.as_of.year + 1):
            m, d = _CNY.get(year, (2, 5))
            c = np.datetime64(date(year, m, d), "D")
            cny |= (days >= c - 7) & (days <= c + 12)
        national = (month == 10) & (dom <= 7)
        season = _MONTH_FACTOR[month] * np.where(np.isin(month, (6, 12)) & (dom >= 20), 1.35, 1.0)
        order_season = season * np.where(weekend, 0.12, 1.0) * np.where(cny, 0.25, 1.0) * np.where(
            national, 0.3, 1.0)
        act_season = np.sqrt(season) * np.where(weekend, 0.2, 1.0) * np.where(cny, 0.35, 1.0) * np.where(
            national, 0.35, 1.0)
        t = (np.arange(D) - (D - 1)) / 365.25  # years before as_of (≤ 0)
        months_into_surge = np.maximum(0.0, np.arange(D) - (D - 1 - 150)) / 30.44

        growth = (0.45, 0.8, 1.2)
        amount_growth = (0.2, 0.35, 0.5)
        intensity, trend = [order_season], [np.ones(D)]
        for g, a in zip(growth, amount_growth):
            intensity.append(order_season * np.exp(g * t))
            trend.append(np.exp(a * t))
        # Hot growers: the ramp-up outweighs the calendar, so only weekends show.
        intensity.append(np.where(weekend, 0.12, 1.0) * np.exp(0.4 * t) * 1.4 ** months_into_surge)
        trend.append(np.exp(0.2 * t) * 1.25 ** months_into_surge)
        # Activity profiles start at index 5: flat, three growths, hot, rising (complaints).
        intensity.append(act_season)
        for g in growth:
            intensity.append(act_season * np.exp(g * t))
        intensity.append(act_season * np.exp(0.4 * t) * 1.3 ** months_into_surge)
        intensity.append(act_season * np.exp(4.0 * t))
        trend += [np.ones(D)] * 6
        intensity = np.array(intensity)
        intensity /= intensity.mean(axis=1, keepdims=True)
        self.amount_trend = np.array(trend)
        cum = np.zeros((len(intensity), D + 1))
        np.cumsum(intensity, axis=1, out=cum[:, 1:])
        self.cum = cum
        self.cum_step = float(cum[:, -1].max()) + 1.0
        self.cum_flat = (cum + np.arange(len(cum))[:, None] * self.cum_step).ravel()

    # ---- users
    def _users(self, rng):
        n = self.customers
        n_reps = max(3, round(n / 50))
        n_teams = max(2, math.ceil(n_reps / 8))
        n_agents = max(3, round(n / 300))
        region_weight = np.bincount(_CITY_REGION, minlength=len(REGIONS)).astype(float)
        if n_teams >= len(REGIONS):
            extra = (n_teams - len(REGIONS)) * region_weight / region_weight.sum()
            per_region = 1 + np.floor(extra).astype(int)
            rest = n_teams - per_region.sum()
            order = np.argsort(-(extra - np.floor(extra)), kind="stable")
            per_region[order[:rest]] += 1
        else:
            per_region = np.zeros(len(REGIONS), dtype=int)
            per_region[np.argsort(-region_weight, kind="stable")[:n_teams]] = 1
        team_region = np.repeat(np.arange(len(REGIONS)), per_region)
        team_names = []
        for r, k in enumerate(per_region):
            team_names += [f"{REGIONS[r]}{_chinese_number(i + 1)}组" for i in range(k)]

        surname_p = 1.0 / (np.arange(len(_SURNAMES)) + 5.0)
        surname_p /= surname_p.sum()
        total = 2 + n_teams + n_reps + len(QUEUES) + n_agents
        sur = rng.choice(len(_SURNAMES), size=total, p=surname_p)
        g1 = rng.integers(0, len(_GIVEN), size=total)
        g2 = rng.integers(0, len(_GIVEN), size=total)
        two = rng.random(total) < 0.7
        taken = {"admin"}
        seen: dict[str, int] = {}
        people = []
        for i in range(total):
            s_char, s_py = _SURNAMES[sur[i]]
            given = [_GIVEN[g1[i]]] + ([_GIVEN[g2[i]]] if two[i] else [])
            name = s_char + "".join(c for c, _ in given)
            base = s_py + "".join(p for _, p in given)
            uid = base
            if uid in taken:
                k = seen.get(base, 1)
                while True:
                    k += 1
                    uid = f"{s_py}_{''.join(p for _, p in given)}{k}"
                    if uid not in taken:
                        break
                seen[base] = k
            taken.add(uid)
            people.append((uid, name))
        it = iter(people)
        lines = ["admin,系统管理员,admin,,信息中心,\n"]
        head_uid, head_name = next(it)
        lines.append(f"{head_uid},{head_name},manager,,销售中心,\n")
        managers = []
        for t in range(n_teams):
            uid, name = next(it)
            managers.append(uid)
            lines.append(f"{uid},{name},manager,{head_uid},{team_names[t]},\n")
        rep_ids, rep_region = [], []
        for j in range(n_reps):
            uid, name = next(it)
            t = j % n_teams
            rep_ids.append(uid)
            rep_region.append(team_region[t])
            lines.append(f"{uid},{name},rep,{managers[t]},{team_names[t]},\n")
        leads = []
        for q in QUEUES:
            uid, name = next(it)
            leads.append(uid)
            lines.append(f"{uid},{name},manager,,客服中心,{q}\n")
        queue_p = np.array([0.2, 0.5, 0.3])
        primary = rng.choice(len(QUEUES), size=n_agents, p=queue_p)
        primary[:3] = [0, 1, 2]
        second = (primary + rng.integers(1, len(QUEUES), size=n_agents)) % len(QUEUES)
        has_second = rng.random(n_agents) < 0.3
        for a in range(n_agents):
            uid, name = next(it)
            queues = QUEUES[primary[a]] + (f"|{QUEUES[second[a]]}" if has_second[a] else "")
            lines.append(f"{uid},{name},agent,{leads[primary[a]]},客服中心,{queues}\n")
        self.user_lines = lines
        self.rep_ids = np.array(rep_ids, dtype=object)
        rep_region = np.array(rep_region)
        self.reps_by_region = np.argsort(rep_region, kind="stable")
        self.region_rep_count = np.bincount(rep_region, minlength=len(REGIONS))
        self.region_rep_offset = np.concatenate([[0], np.cumsum(self.region_rep_count)[:-1]])


# ---------------------------------------------------------------------------- per chunk


@dataclass
class _Customers:
    customer_id: np.ndarray  # object array of strings
    arch: np.ndarray
    employees: np.ndarray
    industry: np.ndarray
    region: np.ndarray
    lines: list  # customers.csv lines without created_at and the line end
    mask: np.ndarray  # module set
    primary: np.ndarray
    interest: np.ndarray
    growth_class: np.ndarray  # 0 flat, 1–3 growth rates, 4 hot
    start_day: np.ndarray
    fade_day: np.ndarray
    fade_weight: np.ndarray
    quiet_day: np.ndarray
    order_weight: np.ndarray
    amount_base: np.ndarray
    service_p: np.ndarray
    activity_weight: np.ndarray
    ticket_weight: np.ndarray
    created_offset: np.ndarray
    prospect_created: np.ndarray
    complainer: np.ndarray


def _draw_customers(rng: np.random.Generator, ctx: _Context, start: int, n: int) -> _Customers:
    """Customer attributes and per-customer plans. Drawn first in every chunk, so
    `customer_archetypes()` can replay just this part."""
    D = ctx.days
    gidx = np.arange(start, start + n, dtype=np.int64)
    customer_id = np.array([f"C{i + 1:0{ctx.cust_width}d}" for i in gidx], dtype=object)

    # Name and region: a bijection from the customer number to (city, brand pair).
    pos = _permute(gidx % _NAME_SPACE, _NAME_SPACE, ctx.name_keys)
    rounds = gidx // _NAME_SPACE
    city = pos % len(_CITIES)
    pair = pos // len(_CITIES)
    nb = len(_BRAND_CHARS)
    b1 = pair // (nb - 1)
    b2 = pair % (nb - 1)
    b2 = b2 + (b2 >= b1)
    region = _CITY_REGION[city]

    employees = np.minimum(100_000, np.rint(10 + np.exp(rng.normal(math.log(140), 1.5, n)))).astype(np.int64)
    size = np.digitize(employees, [100, 1000])  # 0 small, 1 mid, 2 large
    industry = rng.choice(len(INDUSTRIES), size=n, p=_INDUSTRY_WEIGHTS / _INDUSTRY_WEIGHTS.sum())
    cum_shares = np.cumsum(_ARCHETYPE_SHARES, axis=1)[size]
    arch = (rng.random(n)[:, None] >= cum_shares[:, :-1]).sum(axis=1)
    buyer = arch != _PROSPECT

    ctype = np.searchsorted(np.cumsum([0.70, 0.18]), rng.random(n), side="right")
    listed = rng.random(n) < np.array([0.005, 0.04, 0.30])[size]
    benchmark = rng.random(n) < np.array([0.01, 0.03, 0.10])[size] * np.where(arch == _WHALE, 2.0, 1.0)
    partner = rng.random(n) < np.array([0.02, 0.13, 0.12])[ctype]
    maturity = np.clip(np.rint(2.6 + 0.6 * np.log10(employees / 100) + rng.normal(0, 0.9, n)), 1, 5)
    maturity = np.where(rng.random(n) < 0.10, 0, maturity).astype(np.int64)  # 0 = unknown
    plan_p = np.where(arch == _GROWER, 0.65, 0.38)
    has_plan = rng.random(n) < plan_p
    manufacturing = industry < 10
    plan_w = np.stack([
        np.array([0.03, 0.12, 0.25])[size],  # ipo
        np.full(n, 0.35),  # financing
        np.where(manufacturing, 0.40, 0.08),  # new_plant
        np.full(n, 0.25),  # overseas
    ], axis=1)
    plan_cum = np.cumsum(plan_w / plan_w.sum(axis=1, keepdims=True), axis=1)
    plan = np.where(has_plan, (rng.random(n)[:, None] >= plan_cum[:, :-1]).sum(axis=1), -1)

    # Module set: Gumbel top-k on industry weights; first = primary, next = interest.
    keys = np.log(_MODULE_WEIGHTS_BY_INDUSTRY[industry]) - np.log(-np.log(rng.random((n, 8))))
    order = np.argsort(-keys, axis=1, kind="stable")
    k_modules = np.select(
        [arch == _PROSPECT, arch == _ONE_OFF, arch == _WHALE],
        [0, 1 + (rng.random(n) < 0.15), 3 + rng.poisson(1.5, n)],
        1 + rng.poisson(0.5 + 0.5 * np.maximum(0.0, np.log10(employees / 50)), n),
    )
    k_modules = np.minimum(k_modules, np.where(arch == _WHALE, 8, 6))
    in_set = np.arange(8)[None, :] < k_modules[:, None]
    mask = (np.left_shift(1, order) * in_set).sum(axis=1)
    primary = order[:, 0]
    interest = np.take_along_axis(order, np.minimum(k_modules, 7)[:, None], axis=1)[:, 0]

    # Timing plans.
    grower_class = 1 + np.searchsorted(np.cumsum([0.3, 0.3, 0.2]), rng.random(n), side="right")
    growth_class = np.where(arch == _GROWER, grower_class, 0)
    r_start = rng.random(n)
    r_start2 = rng.random(n)
    fade_day = D - rng.integers(180, 366, n)
    fade_day = np.maximum(fade_day, 1)
    quiet_day = np.maximum(D - rng.integers(30, 91, n), fade_day)
    start_day = np.select(
        [arch == _ONE_OFF, arch == _GROWER, arch == _FADER],
        [0,
         np.where(r_start < 0.4, 0, (r_start2 * max(1, D - 365)).astype(np.int64)),
         np.where(r_start < 0.6, 0, (r_start2 * np.maximum(1, fade_day - 180)).astype(np.int64))],
        np.where(r_start < 0.5, 0, (r_start2 * max(1, D - 120)).astype(np.int64)),
    )
    start_day = np.minimum(start_day, D - 1)
    fade_weight = np.where(rng.random(n) < 0.5, 0.0, 0.12)
    size_factor = (employees / 100.0)
    arch_orders = np.array([0, 0, 1.0, 1.2, 0.8, 4.0])[arch] * np.where(growth_class == 4, 2.5, 1.0)
    order_weight = size_factor ** 0.25 * arch_orders * np.exp(rng.normal(0, 0.5, n))
    amount_base = (20_000 * size_factor ** 0.35 * np.array([0, 0.6, 1, 1, 1, 2.5])[arch]
                   * np.exp(rng.normal(0, 0.55, n)))
    service_p = rng.uniform(0.03, 0.20, n)
    activity_weight = (np.array([0.6, 0.5, 1.0, 1.4, 1.0, 3.0])[arch] * size_factor ** 0.15
                       * np.exp(rng.normal(0, 0.5, n)))
    complainer = buyer & (rng.random(n) < np.where(arch == _FADER, 0.15, 0.05))
    ticket_weight = (np.array([0.05, 0.5, 1.0, 1.0, 1.2, 3.0])[arch] * size_factor ** 0.2
                     * np.where(complainer, 4.0, 1.0))
    created_offset = np.minimum(365, rng.exponential(45, n)).astype(np.int64)
    prospect_created = rng.integers(-365, D, n)

    # Text columns.
    word_idx = (rng.random(n) * np.array([len(w) for w in _INDUSTRY_WORDS])[industry]).astype(np.int64)
    words = np.array([w for ws in _INDUSTRY_WORDS for w in ws], dtype=object)
    word_offset = np.cumsum([0] + [len(w) for w in _INDUSTRY_WORDS])[:-1]
    r_suffix = rng.random(n)
    suffix = np.where(listed, 1, np.where(
        employees >= 5000, np.where(r_suffix < 0.5, 2, 1),
        np.where(r_suffix < (0.1 + 0.2 * (size == 2)), 1, 0)))
    owner_u = rng.random(n)
    count = ctx.region_rep_count[region]
    own = np.where(
        count > 0,
        ctx.reps_by_region[np.minimum(ctx.region_rep_offset[region] + (owner_u * count).astype(np.int64),
                                      len(ctx.reps_by_region) - 1)],
        (owner_u * len(ctx.rep_ids)).astype(np.int64),
    )
    cities = np.array(_CITIES, dtype=object)
    brands = np.array(_BRAND_CHARS, dtype=object)
    marker = np.array(["" if r == 0 else f"（{r + 1}）" for r in rounds.tolist()], dtype=object) \
        if rounds.any() else np.full(n, "", dtype=object)
    names = (cities[city] + brands[b1] + brands[b2] + words[word_offset[industry] + word_idx] + marker
             + np.array(_SUFFIXES, dtype=object)[suffix])
    tf = np.array(["false", "true"], dtype=object)
    maturity_text = np.array(["", "1", "2", "3", "4", "5"], dtype=object)[maturity]
    plan_text = np.array(list(EXPANSION_PLANS) + [""], dtype=object)[plan]
    lines = [
        f"{a},{b},{c},{d},{e},{f},{g},{h},{i},{j},{k},{m},{o},"
        for a, b, c, d, e, f, g, h, i, j, k, m, o in zip(
            customer_id.tolist(), names.tolist(), ctx.rep_ids[own].tolist(),
            np.array(INDUSTRIES, dtype=object)[industry].tolist(),
            np.array(REGIONS, dtype=object)[region].tolist(), employees.tolist(),
            np.array(CUSTOMER_TYPES, dtype=object)[ctype].tolist(), tf[listed.astype(int)].tolist(),
            tf[benchmark.astype(int)].tolist(), tf[partner.astype(int)].tolist(),
            maturity_text.tolist(), plan_text.tolist(), _MODULE_SET_TEXT[mask].tolist())
    ]
    return _Customers(
        customer_id=customer_id, arch=arch, employees=employees, industry=industry, region=region,
        lines=lines, mask=mask, primary=primary, interest=interest, growth_class=growth_class,
        start_day=start_day, fade_day=fade_day, fade_weight=fade_weight, quiet_day=quiet_day,
        order_weight=order_weight, amount_base=amount_base, service_p=service_p,
        activity_weight=activity_weight, ticket_weight=ticket_weight, created_offset=created_offset,
        prospect_created=prospect_created, complainer=complainer,
    )


def _normalised_counts(rng, weight: np.ndarray, target: float) -> np.ndarray:
    """Poisson counts with expected total `target`, shared in proportion to `weight`."""
    total = weight.sum()
    if total <= 0 or target <= 0:
        return np.zeros(len(weight), dtype=np.int64)
    return rng.poisson(weight * (target / total))


def _tenure_share(ctx: _Context, profile, bounds, weights) -> np.ndarray:
    """Each customer's expected event mass over its segments, as a share of a whole
    window at full intensity: a customer active half the window does half the things."""
    p2 = profile[:, None]
    mass = weights * (ctx.cum[p2, bounds[:, 1:]] - ctx.cum[p2, bounds[:, :3]])
    return mass.sum(axis=1) / ctx.cum[profile, -1]


def _sample_days(rng, ctx: _Context, profile, bounds, weights, counts):
    """Event days for customers. Customer i has `counts[i]` events spread over three
    segments [b0,b1), [b1,b2), [b2,b3) of the window with relative intensities
    `weights[i]` times day profile `profile[i]`. Returns (customer index, day), grouped
    by customer."""
    n = len(counts)
    cidx = np.repeat(np.arange(n), counts)
    if len(cidx) == 0:
        return cidx, cidx.copy()
    cum = ctx.cum
    lo_b, hi_b = bounds[:, :3], bounds[:, 1:]
    p2 = profile[:, None]
    mass = weights * (cum[p2, hi_b] - cum[p2, lo_b])
    dead = mass.sum(axis=1) <= 0
    if dead.any():  # only empty segments have weight: fall back to plain intensity
        mass[dead] = (cum[p2, hi_b] - cum[p2, lo_b])[dead]
    cm = np.cumsum(mass, axis=1)
    u = rng.random(len(cidx)) * cm[cidx, 2]
    seg = (u[:, None] >= cm[cidx, :2]).sum(axis=1)
    lo = lo_b[cidx, seg]
    hi = hi_b[cidx, seg]
    p = profile[cidx]
    c_lo, c_hi = cum[p, lo], cum[p, hi]
    target = c_lo + rng.random(len(cidx)) * (c_hi - c_lo) + p * ctx.cum_step
    day = np.searchsorted(ctx.cum_flat, target, side="right") - 1 - p * (ctx.days + 1)
    return cidx, np.clip(day, lo, np.maximum(lo, hi - 1))


def _time_of_day(rng, n: int, human: np.ndarray) -> np.ndarray:
    """Seconds after midnight: working hours mostly; people's touchpoints on 5-minute
    marks, digital ones to the second."""
    working = rng.random(n) < np.where(human, 0.97, 0.85)
    t = np.where(working, rng.integers(9 * 3600, 18 * 3600, n), rng.integers(7 * 3600, 23 * 3600, n))
    return np.where(human, t // 300 * 300, t)


_TOD_TEXT = np.array([f"{s // 3600:02d}:{s // 60 % 60:02d}:{s % 60:02d}" for s in range(86400)], dtype=object)


class _Chunk:
    """One chunk of customers. The draws happen in a fixed order — customers, orders,
    activities, tickets — each in its write method, which must be called in that order
    (customers after orders: created_at depends on the first order)."""

    def __init__(self, ctx: _Context, k: int, start: int, n: int):
        self.rng = np.random.default_rng([ctx.seed, 1, k])
        # Intent bursts draw from their own stream: adding them moved no other draw.
        self.burst_rng = np.random.default_rng([ctx.seed, 2, k])
        self.ctx = ctx
        self.n = n
        self.c = _draw_customers(self.rng, ctx, start, n)

    def _orders(self):
        rng, ctx, c, n = self.rng, self.ctx, self.c, self.n
        D = ctx.days
        arch = c.arch
        one_off = arch == _ONE_OFF
        multi = arch >= _STEADY
        fader = arch == _FADER
        bounds = np.stack([c.start_day, np.where(fader, c.fade_day, D), np.full(n, D), np.full(n, D)], axis=1)
        bounds[:, 1] = np.maximum(bounds[:, 1], bounds[:, 0])
        weights = np.stack([np.ones(n), np.where(fader, c.fade_weight, 0.0), np.zeros(n)], axis=1)
        spare = ctx.orders_per_customer * n - one_off.sum() - 2 * multi.sum()
        weight = np.where(multi, c.order_weight * _tenure_share(ctx, c.growth_class, bounds, weights), 0.0)
        counts = np.where(one_off, 1, 0) + np.where(multi, 2 + _normalised_counts(rng, weight, spare), 0)
        cidx, day = _sample_days(rng, ctx, c.growth_class, bounds, weights, counts)
        order = np.argsort(cidx * (D + 1) + day, kind="stable")
        cidx, day = cidx[order], day[order]
        m = len(cidx)
        first = np.zeros(m, dtype=bool)
        first_pos = np.cumsum(counts) - counts
        first[first_pos[counts > 0]] = True
        service = (rng.random(m) < c.service_p[cidx]) & ~first
        k_owned = np.maximum(_POPCOUNT[c.mask[cidx]], 1)
        nth = np.minimum((rng.random(m) * k_owned).astype(np.int64), k_owned - 1)
        module = np.where(rng.random(m) < 0.45, c.primary[cidx], _NTH_BIT[c.mask[cidx], nth])
        line = np.where(service, _SERVICE, module)
        seen = np.ones(m, dtype=bool)
        seen[np.unique(cidx * 16 + line, return_index=True)[1]] = False
        kind = np.where(first, 0, np.where(service, 3, np.where(seen & (rng.random(m) < 0.75), 1, 2)))
        amount = (c.amount_base[cidx] * _LINE_SIZE[line] * _KIND_SIZE[kind]
                  * np.exp(rng.normal(0, 0.45, m)) * ctx.amount_trend[c.growth_class[cidx], day]
                  * np.where(fader[cidx] & (day >= c.fade_day[cidx]), 0.5, 1.0))
        amount_cents = np.maximum(200, np.rint(amount)).astype(np.int64) * 100
        margin = np.clip(_MARGIN_MEAN[line] + rng.normal(0, 0.04, m), _MARGIN_LOW[line], _MARGIN_HIGH[line])
        cost_cents = np.minimum(amount_cents, np.floor(amount_cents * (1 - margin)).astype(np.int64))
        # created_at: before the first order; prospects anywhere.
        self.counts = counts
        self.first_day = np.full(n, D, dtype=np.int64)
        self.first_day[cidx[first]] = day[first]
        self.created = np.where(counts > 0, self.first_day - c.created_offset, c.prospect_created)
        return cidx, day, amount_cents, cost_cents, line, kind

    def _activities(self):
        rng, ctx, c, n = self.rng, self.ctx, self.c, self.n
        D = ctx.days
        arch = c.arch
        one_off, fader = arch == _ONE_OFF, arch == _FADER
        first_day = self.first_day
        act_start = np.maximum(0, self.created)
        one_order_end = np.minimum(D, first_day + 90)
        b1 = np.select([one_off, fader], [one_order_end, c.fade_day], D)
        b2 = np.where(fader, c.quiet_day, D)
        bounds = np.stack([act_start, b1, b2, np.full(n, D)], axis=1)
        bounds[:, 1] = np.maximum(bounds[:, 1], bounds[:, 0])
        bounds[:, 2] = np.maximum(bounds[:, 2], bounds[:, 1])
        weights = np.stack([np.ones(n), np.select([one_off, fader], [0.3, 0.5], 0.0),
                            np.where(fader, 0.03, 0.0)], axis=1)
        # Extra complaints of "rising complaints" customers: ~7 at the default 15
        # activities per customer, scaled with it.
        scale = min(3.0, max(0.25, ctx.activities_per_customer / 15)) if ctx.activities_per_customer else 0.0
        complaints = np.where(c.complainer, rng.poisson(7 * scale, n), 0)
        regular = _normalised_counts(
            rng, c.activity_weight * _tenure_share(ctx, 5 + c.growth_class, bounds, weights),
            ctx.activities_per_customer * n - complaints.sum())
        a_cidx, a_day = _sample_days(rng, ctx, 5 + c.growth_class, bounds, weights, regular)
        u = rng.random(len(a_cidx))
        a_kind = np.where(arch[a_cidx] == _PROSPECT,
                          np.searchsorted(np.cumsum(_KIND_MIX_PROSPECT)[:-1], u, side="right"),
                          np.searchsorted(np.cumsum(_KIND_MIX_BUYER)[:-1], u, side="right"))
        # Rising complaints; a fader's stop when it falls silent.
        x_end = np.where(fader, np.maximum(c.quiet_day, act_start + 1), D)
        flat = np.stack([act_start, x_end, x_end, x_end], axis=1)
        unit = np.tile([1.0, 0.0, 0.0], (n, 1))
        x_cidx, x_day = _sample_days(rng, ctx, np.full(n, 10), flat, unit, complaints)
        a_cidx = np.concatenate([a_cidx, x_cidx])
        a_day = np.concatenate([a_day, x_day])
        a_kind = np.concatenate([a_kind, np.full(len(x_cidx), ACTIVITY_KINDS.index("complaint"))])
        ma = len(a_cidx)
        tod = _time_of_day(rng, ma, _HUMAN_KINDS[a_kind])
        r = rng.random(ma)
        detail = _DETAIL_OFFSET[a_kind] + (rng.random(ma) * _DETAIL_COUNT[a_kind]).astype(np.int64)
        page = a_kind == ACTIVITY_KINDS.index("page_view")
        download = a_kind == ACTIVITY_KINDS.index("download")
        detail = np.where(page & (r < 0.45), _PAGE_OFFSET + c.interest[a_cidx], detail)
        detail = np.where(page & (r >= 0.45) & (r < 0.6), _PAGE_OFFSET + rng.integers(0, 8, ma), detail)
        detail = np.where(download & (r < 0.35), _CASE_OFFSET + c.interest[a_cidx], detail)
        b_cidx, b_day, b_tod, b_kind, b_detail = self._intent_bursts(act_start)
        a_cidx, a_day, tod = (np.concatenate(pair) for pair in ((a_cidx, b_cidx), (a_day, b_day), (tod, b_tod)))
        a_kind, detail = np.concatenate([a_kind, b_kind]), np.concatenate([detail, b_detail])
        order = np.argsort((a_cidx * (D + 1) + a_day) * 86400 + tod, kind="stable")
        return a_cidx[order], a_day[order], tod[order], a_kind[order], detail[order]

    def _intent_bursts(self, act_start: np.ndarray):
        """A few customers researching a purchase right now, so that lead intent fires as
        the default intent rules (config.yaml) describe it: about one prospect in ten and one
        other customer in a hundred, a third each with high intent (4–6 views of the MES
        product page and a download in the last week), medium (two downloads and an event in
        the last two weeks) and low (5–8 page views in the last month)."""
        rng, D, n = self.burst_rng, self.ctx.days, self.n
        chance = np.where(self.c.arch == _PROSPECT, 0.10, 0.01)
        chosen = np.flatnonzero((rng.random(n) < chance) & (act_start < D - 30))
        level = rng.integers(0, 3, len(chosen))
        kinds = {name: ACTIVITY_KINDS.index(name) for name in ("page_view", "download", "event")}
        parts = []
        for customer, how in zip(chosen.tolist(), level.tolist()):
            if how == 0:
                views = int(rng.integers(4, 7))
                plan = [(kinds["page_view"], _PAGE_OFFSET + MODULES.index("mes"), 7)] * views
                plan.append((kinds["download"], _CASE_OFFSET + MODULES.index("mes"), 7))
            elif how == 1:
                plan = [(kinds["download"], _CASE_OFFSET + int(self.c.interest[customer]), 14)] * 2
                plan.append((kinds["event"], _DETAIL_OFFSET[kinds["event"]], 14))
            else:
                plan = [(kinds["page_view"], _PAGE_OFFSET + int(self.c.interest[customer]), 30)] * int(
                    rng.integers(5, 9))
            for kind, detail, within in plan:
                parts.append((customer, D - 1 - int(rng.integers(0, within)), kind, detail))
        if not parts:
            empty = np.zeros(0, dtype=np.int64)
            return empty, empty, empty, empty, empty
        cidx, day, kind, detail = (np.array(column, dtype=np.int64) for column in zip(*parts))
        tod = _time_of_day(rng, len(cidx), np.ones(len(cidx), dtype=bool))
        return cidx, day, tod, kind, detail

    def _tickets(self):
        rng, ctx, c, n = self.rng, self.ctx, self.c, self.n
        D = ctx.days
        fader = c.arch == _FADER
        first_day = self.first_day
        act_start = np.maximum(0, self.created)
        unit = np.tile([1.0, 0.0, 0.0], (n, 1))
        t_start = np.where(self.counts > 0, np.minimum(first_day, D - 1), act_start)
        t_end = np.where(fader, np.maximum(c.quiet_day, t_start + 1), D)  # silent faders file none
        flat = np.stack([t_start, t_end, t_end, t_end], axis=1)
        t_profile = np.where(c.complainer, 10, 5)
        t_counts = _normalised_counts(
            rng, c.ticket_weight * _tenure_share(ctx, np.full(n, 5), flat, unit), 0.3 * n)
        t_cidx, t_day = _sample_days(rng, ctx, t_profile, flat, unit, t_counts)
        mt = len(t_cidx)
        t_tod = _time_of_day(rng, mt, np.zeros(mt, dtype=bool))
        severity = np.searchsorted(np.cumsum(_SEVERITY_P)[:-1], rng.random(mt), side="right")
        severity = np.where(c.complainer[t_cidx] & (severity > 0) & (rng.random(mt) < 0.3), severity - 1, severity)
        owned = c.mask[t_cidx]
        k_owned = np.maximum(_POPCOUNT[owned], 1)
        mod = _NTH_BIT[owned, np.minimum((rng.random(mt) * k_owned).astype(np.int64), k_owned - 1)]
        generic = (rng.random(mt) * len(_GENERIC_SUBJECTS)).astype(np.int64)
        specific = _SUBJECT_OFFSET[mod] + (rng.random(mt) * _SUBJECT_COUNT[mod]).astype(np.int64)
        subject = np.where((owned > 0) & (rng.random(mt) < 0.6), specific, generic)
        order = np.argsort((t_cidx * (D + 1) + t_day) * 86400 + t_tod, kind="stable")
        return t_cidx[order], t_day[order], t_tod[order], subject[order], severity[order]

    # ---- writing
    def write_customers(self, f, first_id: int) -> int:  # ids come from the customer number
        created = self.ctx.day_text[self.created + _DAY_LEAD].tolist()
        f.write("".join([f"{a}{b}\n" for a, b in zip(self.c.lines, created)]).encode("utf-8"))
        return len(created)

    def write_orders(self, f, first_id: int) -> int:
        cidx, day, amount, cost, line, kind = self._orders()
        fmt = "O%0" + str(self.ctx.order_width) + "d,%s,%s,%.2f,%.2f,%s,%s\n"
        lines = np.array(PRODUCT_LINES, dtype=object)
        kinds = np.array(ORDER_KINDS, dtype=object)
        for a in range(0, len(cidx), _ROWS_PER_WRITE):
            b = min(a + _ROWS_PER_WRITE, len(cidx))
            rows = zip(range(first_id + a, first_id + b), self.c.customer_id[cidx[a:b]].tolist(),
                       self.ctx.day_text[day[a:b] + _DAY_LEAD].tolist(), (amount[a:b] / 100).tolist(),
                       (cost[a:b] / 100).tolist(), lines[line[a:b]].tolist(), kinds[kind[a:b]].tolist())
            f.write("".join([fmt % r for r in rows]).encode("utf-8"))
        return len(cidx)

    def write_activities(self, f, first_id: int) -> int:
        cidx, day, tod, kind, detail = self._activities()
        fmt = "A%0" + str(self.ctx.activity_width) + "d,%s,%sT%s,%s,%s\n"
        kinds = np.array(ACTIVITY_KINDS, dtype=object)
        for a in range(0, len(cidx), _ROWS_PER_WRITE):
            b = min(a + _ROWS_PER_WRITE, len(cidx))
            rows = zip(range(first_id + a, first_id + b), self.c.customer_id[cidx[a:b]].tolist(),
                       self.ctx.day_text[day[a:b] + _DAY_LEAD].tolist(), _TOD_TEXT[tod[a:b]].tolist(),
                       kinds[kind[a:b]].tolist(), _DETAILS_ARR[detail[a:b]].tolist())
            f.write("".join([fmt % r for r in rows]).encode("utf-8"))
        return len(cidx)

    def write_tickets(self, f, first_id: int) -> int:
        cidx, day, tod, subject, severity = self._tickets()
        fmt = "T%0" + str(self.ctx.ticket_width) + "d,%s,%sT%s,%s,%s,%s\n"
        sev = np.array(SEVERITIES, dtype=object)
        ids = np.arange(first_id, first_id + len(cidx))
        rows = zip(ids.tolist(), self.c.customer_id[cidx].tolist(),
                   self.ctx.day_text[day + _DAY_LEAD].tolist(), _TOD_TEXT[tod].tolist(),
                   _SUBJECTS_ARR[subject].tolist(), sev[severity].tolist(), self._resolved_at(ids, day, tod).tolist())
        f.write("".join([fmt % r for r in rows]).encode("utf-8"))
        return len(cidx)

    def _resolved_at(self, ids: np.ndarray, day: np.ndarray, tod: np.ndarray) -> np.ndarray:
        """When each ticket was resolved ("" while open): every ticket older than 30 days
        (the routing window), within four days; of the rest, one in two opened before the
        last week, within two. So the service queues hold the last weeks' work, not three
        years of it. From the ticket id, not the random stream, which the other files share."""
        D = self.ctx.days
        old = day < D - 30
        resolved = old | ((day < D - 7) & (ids % 2 == 0))
        hours = np.where(old, 1 + ids * 7919 % 96, 1 + ids * 7919 % 48)
        at = np.where(resolved, day * 86400 + tod + hours * 3600, 0)
        text = self.ctx.day_text[at // 86400 + _DAY_LEAD].astype(object) + "T" + _TOD_TEXT[at % 86400]
        return np.where(resolved, text, "")
