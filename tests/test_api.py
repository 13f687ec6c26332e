"""REST ingest: token, validation, idempotence — and a new order changes that customer's
scores within the same request, without a full run."""

from __future__ import annotations

import json
from datetime import date, timedelta

import pytest
from sqlalchemy import func, select

from bot.app import WeComIdentity, create_app
from bot.config import load_config
from bot.rescore import full_rescore
from storage.importer import run_import
from storage.models import Order, ScoreRun, ScoreSnapshot, TierChange
from storage.scores import StoredSnapshot
from tests.company import write_company

TOKEN = "test-api-token"


@pytest.fixture
def config(engine, database_url, tmp_path):
    run_import(engine, [write_company(tmp_path / "crm")])
    config = load_config(None, environ={"TIERBOT_DATABASE_URL": database_url, "TIERBOT_API_TOKEN": TOKEN})
    full_rescore(engine, config, date.today())
    return config


@pytest.fixture
async def api(config, aiohttp_client):
    identity = WeComIdentity("wwtest", 1000002, "secret", "token", "k" * 43, "http://127.0.0.1:9")
    return await aiohttp_client(create_app(config, identity, dispatch=False))


def _auth(token: str = TOKEN) -> dict:
    return {"Authorization": f"Bearer {token}"}


async def test_token_is_required(api):
    response = await api.post("/api/v1/orders", json=[], headers=_auth("wrong"))
    assert response.status == 401
    response = await api.post("/api/v1/orders", json=[])
    assert response.status == 401


async def test_new_order_moves_customer_into_star_within_the_request(api, engine):
    today = date.today()
    orders = [{"order_id": f"API-{i}", "customer_id": "QM1", "order_date": (today - timedelta(days=20 * i)).isoformat(),
               "amount": 3_000_000, "cost": 800_000, "product_line": "mes", "kind": "upsell"} for i in range(1, 8)]
    response = await api.post("/api/v1/orders", json=orders, headers=_auth())
    body = await response.json()
    assert response.status == 200, body
    assert (body["new"], body["rescored"]["customers"], body["rescored"]["tier_changes"]) == (7, 1, 1)
    with engine.connect() as connection:
        change = connection.execute(select(TierChange.from_tier, TierChange.to_tier, TierChange.reasons)
                                    .where(TierChange.customer_id == "QM1")
                                    .order_by(TierChange.id.desc()).limit(1)).one()
        stored = connection.execute(select(ScoreSnapshot.reasons, ScoreSnapshot.reasons_chunk)
                                    .where(ScoreSnapshot.run_id == 1, ScoreSnapshot.customer_id == "QM1")).one()
        reasons = StoredSnapshot().read(connection, 1, [("QM1", stored.reasons, stored.reasons_chunk)])[0]
        kinds = connection.execute(select(ScoreRun.kind).order_by(ScoreRun.id)).scalars().all()
        snapshot = connection.execute(select(ScoreSnapshot.tier, ScoreSnapshot.revenue_12m)
                                      .where(ScoreSnapshot.run_id == 1, ScoreSnapshot.customer_id == "QM1")).one()
        rows = connection.execute(select(func.count()).select_from(ScoreSnapshot)
                                  .where(ScoreSnapshot.run_id == 1)).scalar_one()
    assert (change.from_tier, change.to_tier) == ("question_mark", "star")
    # The change is kept with what explains the new tier: revenue now pulls it up.
    assert change.reasons == reasons["value_matrix"]
    assert {"axis": "current", "factor": "revenue", "direction": "high"}.items() <= change.reasons[0].items()
    # The rescored customer's reasons were stored as a new chunk of the full run.
    assert stored.reasons_chunk == 1 and list(reasons)[:6] == ["value_matrix", "rfm", "sabc", "pyramid",
                                                                "lifecycle", "churn"]
    assert kinds == ["full", "incremental"]
    assert snapshot.tier == "star" and snapshot.revenue_12m > 20_000_000
    assert rows == 28  # the full run's picture is updated in place, nobody lost
    # Its labels are coded as the full run coded them: the lists by label find it.
    from storage.scores import label_condition

    with engine.connect() as connection:
        coded = connection.execute(select(ScoreRun.summary).where(ScoreRun.id == 1)).scalar_one()["coded_labels"]
        row = [("QM1", "{}", stored.reasons_chunk)]
        labels = StoredSnapshot().fetch(connection, 1, row).documents(row, "labels")[0]
        for model in ("rfm", "sabc", "pyramid", "lifecycle"):
            listed = connection.execute(select(ScoreSnapshot.customer_id).where(
                ScoreSnapshot.run_id == 1,
                label_condition(ScoreSnapshot.label_codes, coded, model, labels[model]))).scalars().all()
            assert "QM1" in listed, (model, labels[model])

    again = await (await api.post("/api/v1/orders", json=orders, headers=_auth())).json()
    assert (again["new"], again["changed"], again["unchanged"]) == (0, 0, 7)


async def test_bad_items_are_listed_and_nothing_is_written(api, engine):
    items = [{"order_id": "X1", "customer_id": "QM1", "order_date": "2026-02-30", "amount": 10},
             {"order_id": "X2", "customer_id": "NOBODY", "order_date": "2026-02-01", "amount": "ten"}]
    response = await api.post("/api/v1/orders", json=items, headers=_auth())
    body = await response.json()
    assert response.status == 400 and body["error"] == "nothing was imported"
    assert "item 1: order_date: not a date (expected YYYY-MM-DD): '2026-02-30'" in body["problems"]
    assert "item 2: amount: not a number: 'ten'" in body["problems"]
    with engine.connect() as connection:
        assert connection.execute(select(func.count()).select_from(Order)
                                  .where(Order.order_id.in_(["X1", "X2"]))).scalar_one() == 0


@pytest.mark.parametrize("body, status", [(b"{not json", 400), (b'{"a": 1}', 400), (b"[1, 2]", 400)])
async def test_malformed_bodies(api, body, status):
    response = await api.post("/api/v1/orders", data=body, headers={**_auth(), "Content-Type": "application/json"})
    assert response.status == status and "error" in json.loads(await response.text())


async def test_a_body_not_in_utf8_is_refused_saying_so(api):
    gbk = '[{"customer_id": "C1", "name": "星辰"}]'.encode("gbk")
    declared = await api.post("/api/v1/customers", data=gbk,
                              headers={**_auth(), "Content-Type": "application/json; charset=gbk"})
    assert declared.status == 415
    assert (await declared.json())["error"] == "charset 'gbk': send the JSON as UTF-8 (Content-Type: application/json)"
    undeclared = await api.post("/api/v1/customers", data=gbk, headers={**_auth(), "Content-Type": "application/json"})
    assert undeclared.status == 400 and (await undeclared.json())["error"].startswith("body is not UTF-8 (byte ")


async def test_unknown_collection_is_404(api):
    response = await api.post("/api/v1/invoices", json=[], headers=_auth())
    assert response.status == 404


async def test_deeply_nested_json_is_a_clear_400_not_a_crash(api):
    body = b"[" * 100_000 + b"]" * 100_000
    response = await api.post("/api/v1/orders", data=body, headers={**_auth(), "Content-Type": "application/json"})
    assert response.status == 400 and "nested too deeply" in (await response.json())["error"]


async def test_bearer_scheme_in_any_case_and_a_challenge_on_refusal(api):
    ok = await api.post("/api/v1/orders", json=[], headers={"Authorization": f"bearer {TOKEN}"})
    assert ok.status == 200
    # An empty batch answers in the shape of any other.
    assert await ok.json() == {"kind": "orders", "rows": 0, "new": 0, "changed": 0, "unchanged": 0, "warnings": []}
    refused = await api.post("/api/v1/orders", json=[], headers=_auth("wrong"))
    assert refused.status == 401 and refused.headers["WWW-Authenticate"].startswith("Bearer")


async def test_a_batch_over_one_megabyte_is_taken_and_json_arrays_fill_list_columns(api, engine):
    customers = [{"customer_id": "CX1", "name": "测试客户", "owner_userid": "rep_a", "modules_owned": ["MES", "crm"]}]
    # Well past aiohttp's default 1 MB limit, well under the API's 10 MB.
    body = json.dumps(customers).encode() + b" " * 2_000_000
    response = await api.post("/api/v1/customers", data=body, headers={**_auth(), "Content-Type": "application/json"})
    assert response.status == 200, await response.text()
    with engine.connect() as connection:
        modules = connection.exec_driver_sql("SELECT modules_owned FROM customers WHERE customer_id = 'CX1'").scalar()
    assert modules == "mes|crm"
    odd = [{"order_id": "OX1", "customer_id": "CX1", "order_date": "2026-01-05", "amount": 10,
            "product_line": {"a": 1}}]
    refused = await api.post("/api/v1/orders", json=odd, headers=_auth())
    assert refused.status == 400
    assert (await refused.json())["problems"] == ["item 1: product_line: a JSON object, not a single value"]


async def test_tickets_the_api_resolves_are_counted_as_resolved_and_changed(api):
    ticket = {"ticket_id": "RT1", "customer_id": "STAR1", "opened_at": "2026-11-23T09:00:00", "subject": "接口报错"}
    await api.post("/api/v1/tickets", json=[ticket], headers=_auth())
    response = await api.post("/api/v1/tickets", json=[{**ticket, "resolved_at": "2026-11-23T10:00:00"}],
                              headers=_auth())
    body = await response.json()
    assert response.status == 200
    assert (body["changed"], body["unchanged"], body["resolved"]) == (1, 0, 1)
    again = await (await api.post("/api/v1/tickets", json=[{**ticket, "resolved_at": "2026-11-23T10:00:00"}],
                                  headers=_auth())).json()
    assert (again["changed"], again["unchanged"], "resolved" in again) == (0, 1, False)


async def test_amounts_past_a_trillion_and_nul_characters_are_refused_on_every_database(api, engine):
    items = [{"order_id": "BIG1", "customer_id": "QM1", "order_date": "2026-01-05", "amount": 1e16},
             {"order_id": "NUL1", "customer_id": "QM1", "order_date": "2026-01-05", "amount": 10,
              "product_line": "a\u0000b"}]
    response = await api.post("/api/v1/orders", json=items, headers=_auth())
    body = await response.json()
    assert response.status == 400
    assert body["problems"] == [
        "item 1: amount: must be a number from -1,000,000,000,000 to 1,000,000,000,000: '10000000000000000'",
        "item 2: product_line: contains a NUL character (\\u0000): 'a\\x00b'"]


async def test_a_userid_wecom_could_never_message_is_refused(api):
    users = [{"userid": "a b|c", "name": "某人", "role": "rep"}, {"userid": "li.na@corp-2", "name": "李娜", "role": "rep"}]
    response = await api.post("/api/v1/users", json=users, headers=_auth())
    body = await response.json()
    assert response.status == 400
    assert body["problems"] == ["item 1: userid: not a WeCom UserID (letters, digits and _ - @ ., a letter or digit "
                                "first, at most 64): 'a b|c'"]


async def test_a_duplicate_id_in_a_batch_names_the_item_it_repeats(api):
    orders = [{"order_id": "DUP1", "customer_id": "QM1", "order_date": "2026-01-05", "amount": 10}] * 2
    body = await (await api.post("/api/v1/orders", json=orders, headers=_auth())).json()
    assert body["problems"] == ["item 2: order_id: duplicate id 'DUP1' (first at item 1)"]


async def test_wrong_paths_and_methods_under_the_api_answer_in_json(api):
    missing = await api.post("/api/v1/orders/extra", json=[], headers=_auth())
    assert missing.status == 404 and (await missing.json())["error"] == "not found"
    wrong = await api.get("/api/v1/orders", headers=_auth())
    assert wrong.status == 405 and "POST" in wrong.headers["Allow"] and "error" in await wrong.json()


async def test_scores_are_read_back_by_customer_with_the_new_order_in_them(api):
    today = date.today()
    orders = [{"order_id": f"RB-{i}", "customer_id": "QM1", "order_date": (today - timedelta(days=20 * i)).isoformat(),
               "amount": 3_000_000, "cost": 800_000, "product_line": "mes", "kind": "upsell"} for i in range(1, 8)]
    assert (await api.post("/api/v1/orders", json=orders, headers=_auth())).status == 200
    response = await api.get("/api/v1/scores?customer_id=QM1,STAR1&customer_id=NOPE&lang=en", headers=_auth())
    body = await response.json()
    assert response.status == 200, body
    assert [item["customer_id"] for item in body["items"]] == ["QM1", "STAR1"]
    assert body["not_found"] == ["NOPE"]
    moved = body["items"][0]
    assert (moved["tier"], moved["tier_name"], moved["run_id"]) == ("star", "Star", body["run_id"])
    assert moved["revenue_12m"] > 20_000_000 and moved["reasons"].startswith("multi-year revenue ¥21.0M")
    assert set(moved["models"]) == {"rfm", "sabc", "pyramid", "lifecycle", "churn", "intent"}
    assert moved["models"]["churn"]["label"] in ("low", "medium", "high") and moved["models"]["churn"]["reasons"]


async def test_scores_page_through_every_customer_once(api):
    seen, after, pages = [], None, 0
    while True:
        response = await api.get("/api/v1/scores", params={"limit": 10, **({"after": after} if after else {})},
                                 headers=_auth())
        body = await response.json()
        assert response.status == 200, body
        seen += [item["customer_id"] for item in body["items"]]
        pages += 1
        after = body["next_after"]
        if after is None:
            break
    assert pages == 3 and len(seen) == 28 and seen == sorted(set(seen))
    assert body["items"][0]["models"]["rfm"]["name"]  # the names in the configured language (zh)


async def test_a_bad_scores_query_names_every_problem(api):
    assert (await api.get("/api/v1/scores")).status == 401
    response = await api.get("/api/v1/scores?limit=0&lang=fr&customer=QM1&run_id=x", headers=_auth())
    body = await response.json()
    assert response.status == 400
    assert body["problems"] == ["customer: unknown parameter (one of customer_id, after, limit, lang, run_id)",
                                "limit: must be a whole number from 1 to 5,000: '0'",
                                "run_id: must be a whole number >= 1: 'x'",
                                "lang: one of zh, en: 'fr'"]
    missing = await api.get("/api/v1/scores?run_id=999", headers=_auth())
    assert missing.status == 404 and "#999" in (await missing.json())["error"]


async def test_a_crm_moves_a_customer_to_another_rep_by_sending_only_the_owner(api, engine):
    from storage.models import Customer

    response = await api.post("/api/v1/customers", json=[{"customer_id": "QM1", "owner_userid": "rep_a"}],
                              headers=_auth())
    body = await response.json()
    assert response.status == 200, body
    assert (body["new"], body["changed"]) == (0, 1)
    with engine.connect() as connection:
        name, owner = connection.execute(select(Customer.name, Customer.owner_userid)
                                         .where(Customer.customer_id == "QM1")).one()
    assert owner == "rep_a" and name == "新锐新能源科技有限公司"  # the stored name stays

    response = await api.post("/api/v1/customers", json=[{"customer_id": "BRAND_NEW", "owner_userid": "rep_b"}],
                              headers=_auth())
    body = await response.json()
    assert response.status == 400
    assert body["problems"] == ["item 1: name: missing value (the item is for a new customer: it needs one)"]
