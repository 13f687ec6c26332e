"""The benchmark/demo data generator: contract of the files, determinism, and the
business shapes the scoring models are meant to find."""

from __future__ import annotations

import re
from datetime import date
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from scoring import generator as gen
from scoring.generator import GeneratedCounts, customer_archetypes, generate_company

AS_OF = date(2026, 11, 20)
N = 3000
FILES = ("users", "customers", "orders", "activities", "tickets")


def _read(folder: Path, name: str) -> pd.DataFrame:
    return pd.read_csv(folder / f"{name}.csv", dtype=str, keep_default_na=False)


@pytest.fixture(scope="module")
def company(tmp_path_factory):
    out = tmp_path_factory.mktemp("company")
    # Several chunks, so that chunk boundaries are exercised too.
    counts = generate_company(out, customers=N, seed=7, as_of=AS_OF, chunk_customers=1000)
    data = {name: _read(out, name) for name in FILES}
    return out, counts, data


@pytest.fixture(scope="module")
def orders(company):
    o = company[2]["orders"].copy()
    o["amount"] = o["amount"].astype(float)
    o["cost"] = o["cost"].astype(float)
    o["order_date"] = pd.to_datetime(o["order_date"], format="%Y-%m-%d")
    return o


@pytest.fixture(scope="module")
def truth():
    return customer_archetypes(customers=N, seed=7, as_of=AS_OF, chunk_customers=1000)


# ---------------------------------------------------------------------------- determinism


def test_same_arguments_give_byte_identical_files_and_another_seed_differs(tmp_path):
    args = dict(customers=300, as_of=AS_OF, chunk_customers=120)
    a = generate_company(tmp_path / "a", seed=1, **args)
    b = generate_company(tmp_path / "b", seed=1, **args)
    c = generate_company(tmp_path / "c", seed=2, **args)
    assert a == b
    for name in FILES:
        assert (tmp_path / "a" / f"{name}.csv").read_bytes() == (tmp_path / "b" / f"{name}.csv").read_bytes()
    assert (tmp_path / "a" / "customers.csv").read_bytes() != (tmp_path / "c" / "customers.csv").read_bytes()
    assert (tmp_path / "a" / "orders.csv").read_bytes() != (tmp_path / "c" / "orders.csv").read_bytes()
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == sorted(f"{n}.csv" for n in FILES)


def test_ground_truth_replays_the_generated_customers(company, truth):
    customers = company[2]["customers"]
    assert truth["customer_id"].tolist() == customers["customer_id"].tolist()
    assert set(truth["archetype"]) == set(gen.ARCHETYPES)


# ---------------------------------------------------------------------------- file contract


def test_headers_are_exactly_the_documented_ones(company):
    out = company[0]
    expected = {
        "users": "userid,name,role,manager_userid,team,queues",
        "customers": "customer_id,name,owner_userid,industry,region,employees,customer_type,is_listed,"
                     "is_benchmark,is_partner,digital_maturity,expansion_plan,modules_owned,created_at",
        "orders": "order_id,customer_id,order_date,amount,cost,product_line,kind",
        "activities": "activity_id,customer_id,ts,kind,detail",
        "tickets": "ticket_id,customer_id,opened_at,subject,severity,resolved_at",
    }
    for name, header in expected.items():
        text = (out / f"{name}.csv").read_text(encoding="utf-8")
        assert text.split("\n", 1)[0] == header
        assert text.endswith("\n") and "\r" not in text and '"' not in text


def test_counts_match_the_files(company):
    _, counts, data = company
    assert isinstance(counts, GeneratedCounts)
    assert counts.customers == N
    for name in FILES:
        assert getattr(counts, name) == len(data[name])


def test_ids_are_unique_and_well_formed(company):
    data = company[2]
    c, o, a, t = data["customers"], data["orders"], data["activities"], data["tickets"]
    assert c["customer_id"].iloc[0] == "C000001" and c["customer_id"].str.fullmatch(r"C\d{6}").all()
    assert o["order_id"].str.fullmatch(r"O\d{8}").all()
    assert a["activity_id"].str.fullmatch(r"A\d{9}").all()
    assert t["ticket_id"].str.fullmatch(r"T\d{7}").all()
    for frame, key in ((c, "customer_id"), (o, "order_id"), (a, "activity_id"), (t, "ticket_id")):
        assert frame[key].is_unique
    assert o["order_id"].tolist() == [f"O{i:08d}" for i in range(1, len(o) + 1)]
    assert c["name"].is_unique


def test_foreign_keys_are_consistent(company):
    data = company[2]
    users, customers = data["users"], data["customers"]
    known = set(customers["customer_id"])
    for name in ("orders", "activities", "tickets"):
        assert set(data[name]["customer_id"]) <= known
    role = dict(zip(users["userid"], users["role"]))
    assert customers["owner_userid"].map(role).eq("rep").all()
    managers = users.loc[users["manager_userid"] != ""]
    assert managers["manager_userid"].map(role).isin(["manager"]).all()
    reps = users[users["role"] == "rep"]
    assert (reps["manager_userid"] != "").all()
    # A rep's manager runs the rep's team.
    team_of = dict(zip(users["userid"], users["team"]))
    assert (reps["manager_userid"].map(team_of) == reps["team"]).all()


def test_users(company):
    users = company[2]["users"]
    assert users["userid"].is_unique
    assert users["userid"].str.fullmatch(r"[A-Za-z0-9_.\-@]{1,64}").all()
    assert set(users["role"]) == set(gen.ROLES)
    admin = users[users["role"] == "admin"]
    assert admin["userid"].tolist() == ["admin"]
    heads = users[(users["role"] == "manager") & (users["manager_userid"] == "") & (users["queues"] == "")]
    assert len(heads) == 1
    n_reps = (users["role"] == "rep").sum()
    assert 40 <= N / n_reps <= 60
    assert users.loc[users["role"] == "rep", "team"].str.fullmatch(r"(华东|华南|华北|华中|西南|西北|东北)[一二三四五六七八九十百千零]+组").all()
    agents = users[users["role"] == "agent"]
    queues = agents["queues"].str.split("|").explode()
    assert set(queues) == set(gen.QUEUES)
    leads = users[(users["role"] == "manager") & (users["queues"] != "")]
    assert sorted(leads["queues"]) == sorted(gen.QUEUES)
    lead_queue = dict(zip(leads["userid"], leads["queues"]))
    assert (agents["manager_userid"].map(lead_queue) == agents["queues"].str.split("|").str[0]).all()
    people = users[users["role"] != "admin"]
    assert people["name"].str.fullmatch(r"[\u4e00-\u9fff]{2,3}").all()


def test_tiny_runs_still_have_three_reps_in_two_teams(tmp_path):
    counts = generate_company(tmp_path, customers=1, as_of=AS_OF)
    assert counts.customers == 1
    users = _read(tmp_path, "users")
    reps = users[users["role"] == "rep"]
    assert len(reps) == 3 and reps["team"].nunique() == 2
    generate_company(tmp_path, customers=10, as_of=AS_OF, chunk_customers=3)
    assert len(_read(tmp_path, "customers")) == 10


def test_enums_and_formats(company, orders):
    data = company[2]
    c, o, a, t = data["customers"], data["orders"], data["activities"], data["tickets"]
    assert set(c["industry"]) == set(gen.INDUSTRIES)
    assert gen.INDUSTRIES == ("高端制造", "新能源", "半导体", "医疗器械", "汽车零部件", "电子制造", "化工",
                              "食品饮料", "纺织服装", "建材", "物流", "零售", "金融", "教育", "政府")
    assert set(c["region"]) == {"华东", "华南", "华北", "华中", "西南", "西北", "东北"}
    assert set(c["customer_type"]) == {"end_user", "dealer", "integrator"}
    for flag in ("is_listed", "is_benchmark", "is_partner"):
        assert set(c[flag]) == {"true", "false"}
    assert set(c["digital_maturity"]) == {"", "1", "2", "3", "4", "5"}
    assert set(c["expansion_plan"]) == {"", "ipo", "financing", "new_plant", "overseas"}
    modules = set(gen.MODULES)
    assert c["modules_owned"].map(lambda s: s == "" or set(s.split("|")) <= modules).all()
    employees = c["employees"].astype(int)
    assert employees.between(10, 100_000).all()
    assert c["name"].str.endswith("有限公司").all()
    assert c["created_at"].str.fullmatch(r"\d{4}-\d\d-\d\d").all()
    assert set(o["product_line"]) == set(gen.MODULES) | {"service"}
    assert set(o["kind"]) == {"new", "renewal", "upsell", "service"}
    assert o["amount"].str.fullmatch(r"\d+\.\d\d").all() and o["cost"].str.fullmatch(r"\d+\.\d\d").all()
    assert set(a["kind"]) == set(gen.ACTIVITY_KINDS)
    assert a["ts"].str.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d").all()
    assert t["opened_at"].str.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d").all()
    assert set(t["severity"]) <= {"P1", "P2", "P3", "P4"}
    assert t["subject"].str.len().gt(0).all()
    paths = a.loc[a["kind"].isin(["page_view", "download"]), "detail"]
    assert paths.str.startswith("/").all()
    notes = a.loc[a["kind"].isin(["visit", "call", "meeting", "complaint"]), "detail"]
    assert notes.str.contains(r"[\u4e00-\u9fff]").all()
    # Shares of the customer attributes are roughly as documented.
    assert 0.65 <= (c["customer_type"] == "end_user").mean() <= 0.75
    assert 0.02 <= (c["is_listed"] == "true").mean() <= 0.09
    assert 0.01 <= (c["is_benchmark"] == "true").mean() <= 0.06
    assert 0.02 <= (c["is_partner"] == "true").mean() <= 0.09
    assert 0.06 <= (c["digital_maturity"] == "").mean() <= 0.14
    assert 0.5 <= (c["expansion_plan"] == "").mean() <= 0.7
    big = employees >= 1000
    assert (c.loc[big, "is_listed"] == "true").mean() > (c.loc[~big, "is_listed"] == "true").mean()


def test_money(orders):
    assert (orders["cost"] <= orders["amount"]).all()
    assert (orders["cost"] >= 0).all() and (orders["amount"] > 0).all()
    margin = 1 - orders["cost"] / orders["amount"]
    service = orders["product_line"] == "service"
    assert margin[~service].between(0.595, 0.805).all()
    assert margin[service].between(0.195, 0.405).all()


# ---------------------------------------------------------------------------- dates


def test_dates_stay_inside_the_window(company, orders):
    data = company[2]
    assert orders["order_date"].max() <= pd.Timestamp(AS_OF)
    assert orders["order_date"].min() >= pd.Timestamp(date(2023, 11, 20))
    ts = pd.to_datetime(data["activities"]["ts"])
    assert ts.max() < pd.Timestamp(AS_OF) + pd.Timedelta(days=1)
    opened = pd.to_datetime(data["tickets"]["opened_at"])
    assert opened.max() < pd.Timestamp(AS_OF) + pd.Timedelta(days=1)
    created = pd.to_datetime(data["customers"].set_index("customer_id")["created_at"])
    assert created.max() <= pd.Timestamp(AS_OF)
    first_order = orders.groupby("customer_id")["order_date"].min()
    assert (created.loc[first_order.index] <= first_order).all()
    first_activity = ts.groupby(data["activities"]["customer_id"]).min()
    assert (created.loc[first_activity.index] <= first_activity).all()


def test_years_and_leap_day(tmp_path):
    generate_company(tmp_path, customers=200, as_of=date(2028, 2, 29), years=1)
    o = pd.read_csv(tmp_path / "orders.csv", parse_dates=["order_date"])
    assert o["order_date"].min() >= pd.Timestamp(2027, 2, 28)
    assert o["order_date"].max() <= pd.Timestamp(2028, 2, 29)


def test_seasonality(orders):
    month = orders["order_date"].dt.month
    per_month = orders.groupby(month).size() / orders.groupby(month)["order_date"].nunique()
    # Orders per active day: December and June peaks, the Chinese New Year dip in February.
    average = per_month.mean()
    assert per_month[12] > average and per_month[6] > average
    assert per_month[2] < average
    weekend = orders["order_date"].dt.day_of_week >= 5
    assert weekend.mean() < 0.1


def test_activities_mostly_in_working_hours(company):
    hours = company[2]["activities"]["ts"].str[11:13].astype(int)
    assert hours.between(9, 17).mean() > 0.8


# ---------------------------------------------------------------------------- business shapes


def test_one_off_buyers_and_prospects_have_believable_shares(company, orders):
    counts = orders.groupby("customer_id").size().reindex(company[2]["customers"]["customer_id"], fill_value=0)
    assert 0.05 <= (counts == 0).mean() <= 0.15
    assert 0.22 <= (counts == 1).mean() <= 0.38
    customers = company[2]["customers"].set_index("customer_id")
    prospects = counts.index[counts == 0]
    assert (customers.loc[prospects, "modules_owned"] == "").all()


def test_revenue_is_concentrated(company, orders):
    revenue = orders.groupby("customer_id")["amount"].sum().reindex(
        company[2]["customers"]["customer_id"], fill_value=0).sort_values(ascending=False)
    top = revenue.iloc[: len(revenue) // 5].sum() / revenue.sum()
    assert 0.6 <= top <= 0.95


def test_bigger_companies_buy_more(company, orders):
    customers = company[2]["customers"].set_index("customer_id")
    revenue = orders.groupby("customer_id")["amount"].sum().reindex(customers.index, fill_value=0)
    big = customers["employees"].astype(int) >= 1000
    assert revenue[big].median() > 2 * revenue[~big].median()


def test_orders_and_activities_per_customer_are_met(company):
    counts = company[1]
    assert 12 * 0.85 <= counts.orders / N <= 12 * 1.15
    assert 15 * 0.85 <= counts.activities / N <= 15 * 1.15
    assert 0.2 <= counts.tickets / N <= 0.4


@pytest.mark.parametrize("per_customer", [3, 40])
def test_other_densities_are_met(tmp_path, per_customer):
    counts = generate_company(tmp_path, customers=800, orders_per_customer=per_customer,
                              activities_per_customer=per_customer, as_of=AS_OF)
    assert per_customer * 0.85 <= counts.orders / 800 <= per_customer * 1.15
    assert per_customer * 0.85 <= counts.activities / 800 <= per_customer * 1.15


def test_order_kinds_follow_the_purchase_history(orders):
    ordered = orders.sort_values(["customer_id", "order_date", "order_id"])
    first = ~ordered["customer_id"].duplicated()
    assert ordered.loc[first, "order_id"].tolist() == orders.groupby("customer_id")["order_id"].min().tolist()
    assert (ordered.loc[first, "kind"] == "new").all()
    assert (ordered.loc[~first, "kind"] != "new").all()
    assert ((ordered["kind"] == "service") == (ordered["product_line"] == "service")).all()
    assert (ordered.loc[first, "product_line"] != "service").all()


def test_product_lines_are_owned_modules(company, orders):
    owned = company[2]["customers"].set_index("customer_id")["modules_owned"].str.split("|")
    software = orders[orders["product_line"] != "service"]
    ok = [line in owned[cid] for cid, line in zip(software["customer_id"], software["product_line"])]
    assert all(ok)


def test_growers_and_faders_are_distinguishable(orders, truth):
    kind = truth.set_index("customer_id")["archetype"]
    recent = orders["order_date"] > pd.Timestamp(AS_OF) - pd.DateOffset(months=6)
    earlier = (orders["order_date"] > pd.Timestamp(AS_OF) - pd.DateOffset(months=18)) & ~recent
    last6 = orders[recent].groupby("customer_id")["amount"].sum()
    prior = orders[earlier].groupby("customer_id")["amount"].sum() / 2  # per 6 months
    frame = pd.DataFrame({"last6": last6, "prior": prior}).fillna(0).join(kind)
    ratio = (frame["last6"] + 1) / (frame["prior"] + 1)
    by_kind = ratio.groupby(frame["archetype"]).median()
    assert by_kind["grower"] > 1.5
    assert by_kind["fader"] < 0.2
    assert 0.6 < by_kind["steady"] < 1.6
    faders = frame[frame["archetype"] == "fader"]
    assert (faders["last6"] == 0).mean() > 0.4
    one_off = truth.loc[truth["archetype"] == "one_off", "customer_id"]
    assert orders[orders["customer_id"].isin(one_off)].groupby("customer_id").size().eq(1).all()
    prospects = truth.loc[truth["archetype"] == "prospect", "customer_id"]
    assert not orders["customer_id"].isin(prospects).any()


def test_some_hot_growers_rise_twenty_percent_three_months_running(orders, truth):
    hot = set(truth.loc[truth["hot_grower"], "customer_id"])
    assert hot
    o = orders[orders["customer_id"].isin(hot)]
    monthly = o.groupby(["customer_id", o["order_date"].dt.to_period("M")])["amount"].sum().unstack(fill_value=0)
    months = [pd.Period("2026-07", "M") + i for i in range(4)]  # July → October, complete months
    values = monthly.reindex(columns=months, fill_value=0).to_numpy()
    rising = (values[:, 1:] > 1.2 * values[:, :-1]).all(axis=1)
    assert rising.sum() >= 3


def test_faders_fall_silent_and_complaints_rise(company, truth):
    a = company[2]["activities"].copy()
    a["ts"] = pd.to_datetime(a["ts"])
    a = a.merge(truth, on="customer_id")
    end = pd.Timestamp(AS_OF) + pd.Timedelta(days=1)
    last30 = a["ts"] >= end - pd.Timedelta(days=30)
    before = (a["ts"] >= end - pd.Timedelta(days=210)) & (a["ts"] < end - pd.Timedelta(days=30))
    rate = lambda mask, days: a[mask].groupby("archetype").size() / days  # noqa: E731
    recent, earlier = rate(last30, 30), rate(before, 180)
    assert recent["fader"] < 0.25 * earlier["fader"]
    assert recent["steady"] > 0.6 * earlier["steady"]
    complaints = a[(a["kind"] == "complaint") & a["rising_complaints"]]
    halves = complaints["ts"] >= end - pd.Timedelta(days=180)
    assert halves.sum() > 2 * (~halves & (complaints["ts"] >= end - pd.Timedelta(days=360))).sum()


def test_owners_work_in_the_customers_region(company):
    data = company[2]
    team = dict(zip(data["users"]["userid"], data["users"]["team"]))
    customers = data["customers"]
    assert (customers["owner_userid"].map(team).str[:2] == customers["region"]).all()


def test_names_stay_unique_past_the_name_space():
    ctx = gen._Context(gen._NAME_SPACE + 10, 3, AS_OF, 3, 12, 15, 100)
    rng = np.random.default_rng(0)
    before = gen._draw_customers(rng, ctx, gen._NAME_SPACE - 5, 5)
    after = gen._draw_customers(rng, ctx, gen._NAME_SPACE, 5)
    first = gen._draw_customers(rng, ctx, 0, 5)
    names = [line.split(",")[1] for c in (before, after, first) for line in c.lines]
    assert len(set(names)) == 15
    assert all("（2）" in line.split(",")[1] for line in after.lines)
    assert not any(re.search(r"（\d+）", line.split(",")[1]) for line in before.lines + first.lines)


def test_feistel_permutation_is_a_bijection():
    keys = np.arange(4, dtype=np.uint64)
    for size in (1, 2, 7, 1000, 4097):
        assert sorted(gen._permute(np.arange(size), size, keys).tolist()) == list(range(size))


@pytest.mark.parametrize("kwargs", [
    {"customers": 0}, {"seed": -1}, {"years": 0}, {"orders_per_customer": -1},
    {"activities_per_customer": float("nan")}, {"chunk_customers": 0},
])
def test_bad_arguments_raise(tmp_path, kwargs):
    with pytest.raises(ValueError):
        generate_company(tmp_path, **kwargs)
    assert not list(tmp_path.iterdir())


def test_chinese_numbers():
    assert [gen._chinese_number(i) for i in (1, 10, 12, 20, 105, 110, 2500)] == [
        "一", "十", "十二", "二十", "一百零五", "一百一十", "二千五百"]


def test_some_customers_research_a_purchase_so_every_intent_rule_fires(company):
    """The default intent rules (config.yaml) each find customers in a generated company."""
    from bot.config import load_config

    rules = load_config(None, environ={}).scoring.intent.rules
    activities = company[2]["activities"]
    ts = pd.to_datetime(activities["ts"])
    end = pd.Timestamp(AS_OF) + pd.Timedelta(days=1)
    fired = {}
    for rule in rules:
        recent = activities[ts >= end - pd.Timedelta(days=rule.within_days)]
        met = None
        for condition in rule.all:
            rows = recent[recent["kind"] == condition.kind]
            if condition.detail_contains:
                rows = rows[rows["detail"].str.contains(condition.detail_contains, regex=False)]
            counts = rows.groupby("customer_id").size()
            these = set(counts[counts >= condition.at_least].index)
            met = these if met is None else met & these
        fired[rule.name] = len(met or ())
    assert all(count > 0 for count in fired.values()), fired
