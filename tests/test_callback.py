"""The WeCom callback end to end over real HTTP: a peer that signs and encrypts as WeCom
does, the real app, the database, and the WeCom emulator behind the send API."""

from __future__ import annotations

import asyncio
from urllib.parse import urlencode

import pytest
from sqlalchemy import func, select

from bot.app import RUNTIME, WeComIdentity, create_app
from bot.config import load_config
from bot.emulator import EMULATOR, create_emulator_app
from bot.rescore import full_rescore
from bot.sandbox import WeComPeer
from handlers.router import router
from storage.db import write_transaction
from storage.importer import run_import
from storage.models import CallbackSeen
from tests.company import AS_OF, write_company

# wechatpy's public test vector (DESIGN §5).
VECTOR_TOKEN = "123456"
VECTOR_AES_KEY = "kWxPEV2UEDyxWpmPdKC3F4dgPDmOvfKX1HGnEUDS1aR"
VECTOR_CORP = "wx49f0ab532d5d035a"


@pytest.fixture
def scored_company(engine, database_url, tmp_path):
    run_import(engine, [write_company(tmp_path / "crm")])
    config = load_config(None, environ={"TIERBOT_DATABASE_URL": database_url})
    full_rescore(engine, config, AS_OF)
    return config


@pytest.fixture
async def wecom(aiohttp_server):
    app = create_emulator_app(VECTOR_CORP, "vector-secret", 1000002,
                              known_users={"admin", "boss", "rep_a", "rep_b"})
    server = await aiohttp_server(app)
    return server


@pytest.fixture
async def bot(scored_company, wecom, aiohttp_client):
    identity = WeComIdentity(VECTOR_CORP, 1000002, "vector-secret", VECTOR_TOKEN, VECTOR_AES_KEY,
                             str(wecom.make_url("")).rstrip("/"))
    app = create_app(scored_company, identity)
    client = await aiohttp_client(app)
    return client


def off_the_loop(work):
    """A synchronous database write from a test, run in a thread: on the event loop's
    thread it would wait for a write lock that the service's background tasks (the
    scheduler's leases) hold across an await, and that wait would keep them from letting go."""
    return asyncio.to_thread(work)


@pytest.fixture
def peer() -> WeComPeer:
    return WeComPeer(VECTOR_TOKEN, VECTOR_AES_KEY, VECTOR_CORP, 1000002)


async def _say(bot, peer: WeComPeer, userid: str, text: str, msg_id: str | None = None) -> tuple[int, str]:
    query, body = peer.text_message(userid, text, msg_id=msg_id)
    response = await bot.post(f"/wecom/callback?{urlencode(query)}", data=body.encode())
    answer = await response.text()
    if response.status == 200 and answer:
        return 200, peer.read_reply(answer)["Content"]
    return response.status, answer


async def test_url_check_answers_the_public_vector(bot):
    response = await bot.get("/wecom/callback", params={
        "msg_signature": "dd6b9c95b495b3f7e2901bfbc76c664930ffdb96", "timestamp": "1411443780",
        "nonce": "437374425",
        "echostr": "4ByGGj+sVCYcvGeQYhaKIk1o0pQRNbRjxybjTGblXrBaXlTXeOo1+bXFXDQQb1o6co6Yh9Bv41n7hOchLF6p+Q=="})
    assert response.status == 200
    assert await response.text() == "5927782489442352469"


async def test_url_check_with_bad_signature_is_403(bot, peer):
    query = peer.url_check("hello")
    query["msg_signature"] = "0" * 40
    response = await bot.get("/wecom/callback", params=query)
    assert response.status == 403


async def test_rep_gets_own_star_customers_as_passive_reply(bot, peer):
    status, reply = await _say(bot, peer, "rep_a", "我的明星客户")
    assert status == 200
    assert "星辰半导体股份有限公司" in reply and "您的明星客户（1–1 / 1）" in reply
    status, english = await _say(bot, peer, "rep_a", "  Show my STAR customers! ")
    assert "Your Star customers (1–1 of 1)" in english
    # As short as 「明星」 is in Chinese.
    for short in ("stars", "star"):
        assert "Your Star customers (1–1 of 1)" in (await _say(bot, peer, "rep_a", short))[1]


async def test_my_customers_counts_per_tier_for_each_role(bot, peer):
    _, rep = await _say(bot, peer, "rep_b", "我的客户")
    _, manager = await _say(bot, peer, "boss", "我的客户")
    _, admin = await _say(bot, peer, "admin", "my customers")
    assert "您的客户：共 14 家" in rep
    assert "您团队的客户：共 28 家" in manager
    assert "All customers: 28" in admin


async def test_rep_cannot_learn_anything_about_another_reps_customer(bot, peer):
    _, hidden = await _say(bot, peer, "rep_b", "客户 STAR1")
    _, missing = await _say(bot, peer, "rep_b", "客户 NOPE1")
    assert hidden == missing.replace("NOPE1", "STAR1")
    _, fuzzy = await _say(bot, peer, "rep_b", "客户 星辰")
    assert "没有找到客户「星辰」" in fuzzy
    _, owner_view = await _say(bot, peer, "rep_a", "客户 星辰")
    assert "明星客户" in owner_view and "三年加权营收" in owner_view and "负责人：张三" in owner_view
    assert "金字塔：" in owner_view and "生命周期：" in owner_view
    _, manager_view = await _say(bot, peer, "boss", "customer STAR1")
    assert "Tier: Star" in manager_view
    # The command's words decide the language, not the (mostly Chinese) name typed after them.
    _, by_chinese_name = await _say(bot, peer, "boss", "customer 星辰")
    assert "Tier: Star" in by_chinese_name and "层级" not in by_chinese_name
    _, by_latin_id = await _say(bot, peer, "boss", "客户 STAR1")
    assert "明星客户" in by_latin_id
    # A colon or comma after the command word, as people type it.
    for typed in ("客户：星辰", "客户:STAR1", "客户，星辰", "查询客户、STAR1", "customer: STAR1", "customer:STAR1"):
        _, reply = await _say(bot, peer, "rep_a", typed)
        assert "负责人" in reply or "Owner" in reply, (typed, reply)


async def test_ambiguous_name_gets_a_did_you_mean_list(bot, peer):
    _, reply = await _say(bot, peer, "admin", "客户 普通客户01")
    assert "匹配到多个客户" in reply and "客户 F010 — 普通客户010有限公司" in reply


async def test_lists_page_with_more_and_stay_within_2048_bytes(bot, peer):
    _, first = await _say(bot, peer, "boss", "我的瘦狗客户")
    _, second = await _say(bot, peer, "boss", "更多")
    _, third = await _say(bot, peer, "boss", "更多")
    assert "（1–10 / 20）" in first and "（11–20 / 20）" in second
    assert third.startswith("已经是最后一页了")  # not "ask for a list first": one was just paged through
    assert all(len(text.encode()) <= 2048 for text in (first, second, third))


async def test_unknown_user_is_refused_politely(bot, peer):
    _, reply = await _say(bot, peer, "stranger", "我的客户")
    assert "尚未在 tierbot 中登记" in reply and "stranger" in reply


async def test_a_user_is_known_whatever_case_wecom_and_the_users_file_spell_their_userid_in(bot, peer):
    # WeCom ignores case in UserIDs: its callback may say REP_A for the users file's rep_a.
    _, reply = await _say(bot, peer, "REP_A", "我的明星客户")
    assert "星辰半导体股份有限公司" in reply and "您的明星客户（1–1 / 1）" in reply


async def test_anything_else_gets_a_short_hint(bot, peer):
    _, reply = await _say(bot, peer, "rep_a", "今天天气怎么样")
    assert reply.startswith("没听懂") and "帮助" in reply
    _, blank = await _say(bot, peer, "rep_a", "   ")
    assert blank.startswith("试试：") and "「」" not in blank


async def test_retried_message_is_answered_once(bot, peer, engine):
    status, first = await _say(bot, peer, "rep_a", "我的客户", msg_id="777000111")
    retry_status, retry = await _say(bot, peer, "rep_a", "我的客户", msg_id="777000111")
    assert (status, retry_status) == (200, 200)
    assert first and retry == ""
    with engine.connect() as connection:
        assert connection.execute(select(func.count()).select_from(CallbackSeen)).scalar_one() == 1


async def test_retried_event_is_handled_once(bot, peer):
    query, body = peer.event("rep_a", "enter_agent", create_time=1700000000)
    first = await bot.post(f"/wecom/callback?{urlencode(query)}", data=body.encode())
    assert first.status == 200 and "我的客户" in peer.read_reply(await first.text())["Content"]
    query, body = peer.event("rep_a", "enter_agent", create_time=1700000000)
    again = await bot.post(f"/wecom/callback?{urlencode(query)}", data=body.encode())
    assert again.status == 200 and await again.text() == ""


async def test_bad_signature_is_403_and_nothing_is_processed(bot, peer, engine):
    query, body = peer.text_message("rep_a", "我的客户")
    query["msg_signature"] = "f" * 40
    response = await bot.post(f"/wecom/callback?{urlencode(query)}", data=body.encode())
    assert response.status == 403
    with engine.connect() as connection:
        assert connection.execute(select(func.count()).select_from(CallbackSeen)).scalar_one() == 0


@pytest.mark.parametrize("body", [
    b"not xml at all",
    b"<xml><Encrypt>",
    b"<?xml version='1.0'?><!DOCTYPE x [<!ENTITY a 'aaaaaaaa'><!ENTITY b '&a;&a;&a;&a;'>]><xml><Encrypt>&b;</Encrypt></xml>",
    b"<xml><ToUserName>x</ToUserName></xml>",
])
async def test_garbled_envelopes_are_400(bot, body):
    query = {"msg_signature": "a" * 40, "timestamp": "1", "nonce": "1"}
    response = await bot.post(f"/wecom/callback?{urlencode(query)}", data=body)
    assert response.status == 400


async def test_envelope_signed_right_but_not_decryptable_is_400(bot, peer):
    from bot.callback import signature_of

    encrypted = "bm90IHJlYWxseSBlbmNyeXB0ZWQ="
    body = f"<xml><Encrypt><![CDATA[{encrypted}]]></Encrypt></xml>"
    query = {"msg_signature": signature_of(VECTOR_TOKEN, "1", "2", encrypted), "timestamp": "1", "nonce": "2"}
    response = await bot.post(f"/wecom/callback?{urlencode(query)}", data=body.encode())
    assert response.status == 400


async def test_oversized_body_is_400(bot, peer):
    query, _ = peer.text_message("rep_a", "x")
    response = await bot.post(f"/wecom/callback?{urlencode(query)}", data=b"<xml>" + b"a" * 70_000 + b"</xml>")
    assert response.status == 400


async def test_message_for_another_corp_is_400(bot):
    other = WeComPeer(VECTOR_TOKEN, VECTOR_AES_KEY, "wwsomeoneelse", 1000002)
    query, body = other.text_message("rep_a", "我的客户")
    response = await bot.post(f"/wecom/callback?{urlencode(query)}", data=body.encode())
    assert response.status == 400


async def test_slow_answer_gets_empty_200_then_arrives_through_the_send_api(bot, peer, wecom, monkeypatch):
    runtime = bot.server.app[RUNTIME]
    monkeypatch.setattr(runtime.callback, "deadline", 0.2)
    name, handler, _ = router.resolve("帮助")

    async def slow_help(ctx):
        await asyncio.sleep(0.5)
        return await handler(ctx)

    route = next(r for r in router.routes if r.name == name)
    monkeypatch.setattr(route, "handler", slow_help)
    status, reply = await _say(bot, peer, "rep_a", "帮助", msg_id="5550001")
    assert (status, reply) == (200, "")
    state = wecom.app[EMULATOR]
    for _ in range(100):
        if state.messages_for("rep_a"):
            break
        await asyncio.sleep(0.05)
    delivered = state.messages_for("rep_a")
    assert len(delivered) == 1 and delivered[0].msgtype == "markdown"
    assert "tierbot 客户分层助手" in delivered[0].payload["markdown"]["content"]
    # WeCom's retry of the slow message does not produce a second answer.
    status, retry = await _say(bot, peer, "rep_a", "帮助", msg_id="5550001")
    await asyncio.sleep(0.3)
    assert (status, retry) == (200, "") and len(state.messages_for("rep_a")) == 1


async def test_healthz_and_metrics(bot, peer):
    health = await bot.get("/healthz")
    assert health.status == 200 and (await health.json())["database"] == "ok"
    await _say(bot, peer, "rep_a", "我的客户", msg_id="42")
    await _say(bot, peer, "rep_a", "我的客户", msg_id="42")
    metrics = await (await bot.get("/metrics")).text()
    assert 'tierbot_commands_total{command="my_customers"} 1.0' in metrics
    assert "tierbot_callback_dedupe_hits_total 1.0" in metrics
    assert 'tierbot_http_requests_total{route="/wecom/callback",status="200"} 2.0' in metrics
    assert "tierbot_http_request_seconds_bucket" in metrics


async def test_lists_by_every_other_models_label_match_the_export(bot, peer, engine, tmp_path):
    import pandas as pd
    from sqlalchemy import select as sql_select

    from bot.export import export_scores
    from storage.models import ScoreRun, ScoreSnapshot
    from storage.scores import label_condition

    export_scores(engine, tmp_path / "scores.csv", lang="en")
    exported = pd.read_csv(tmp_path / "scores.csv", dtype=str, keep_default_na=False).set_index("customer_id")
    with engine.connect() as connection:
        run_id, summary = connection.execute(sql_select(ScoreRun.id, ScoreRun.summary)
                                             .where(ScoreRun.kind == "full")).one()
        coded = summary["coded_labels"]
        # Every label of every coded model selects exactly the customers the export gives it.
        for model, labels in coded.items():
            for label in labels:
                found = set(connection.execute(sql_select(ScoreSnapshot.customer_id).where(
                    ScoreSnapshot.run_id == run_id,
                    label_condition(ScoreSnapshot.label_codes, coded, model, label))).scalars())
                assert found == set(exported.index[exported[f"{model}_label"] == label]), (model, label)

    mine = exported[exported["owner_userid"] == "rep_a"]
    gold_ones = mine[mine["pyramid_label"] == "gold"]
    _, gold = await _say(bot, peer, "rep_a", "我的黄金客户")
    assert f"您的黄金客户（金字塔，1–{len(gold_ones)} / {len(gold_ones)}）" in gold
    assert all(f"（{customer_id}）" in gold for customer_id in gold_ones.index)
    champions = mine[mine["rfm_label"] == "champions"]
    _, english = await _say(bot, peer, "rep_a", "show my champions")
    assert f"Your customers: Champions (RFM, 1–{len(champions)} of {len(champions)})" in english
    assert english.count("\n") >= len(champions)  # one line each
    # Why each is in the list: the model's own reasons.
    assert english.count("days since the last purchase (R=") == len(champions)
    assert gold.count("三年加权营收") == len(gold_ones)
    # Another rep's customers never show.
    _, theirs = await _say(bot, peer, "rep_b", "我的黄金客户")
    assert not any(f"（{customer_id}）" in theirs for customer_id in gold_ones.index)
    s_class = exported[exported["sabc_label"] == "S"]
    _, admin = await _say(bot, peer, "admin", "S类客户")
    assert f"全公司的S 战略客户（S/A/B/C，1–{len(s_class)} / {len(s_class)}）" in admin


async def test_a_run_from_before_label_codes_asks_for_a_full_run(bot, peer, engine):
    from sqlalchemy import update as sql_update

    from storage.models import ScoreRun

    def forget_label_codes():
        with engine.begin() as connection:
            connection.execute(sql_update(ScoreRun).values(summary={"customers": 28}))

    await off_the_loop(forget_label_codes)
    _, reply = await _say(bot, peer, "rep_a", "我的冠军客户")
    assert reply == "按 RFM 分组的名单要在下一次全量评分后才有（每晚自动运行，或 python -m bot score）。"


async def test_a_label_word_means_what_the_configuration_has_and_a_bare_word_is_no_command(bot, peer, engine):
    from sqlalchemy import select as sql_select, update as sql_update

    from storage.models import ScoreRun

    # 「新客户」 are customers won lately (lifecycle 新增); RFM's "new" is 新近首购.
    _, new = await _say(bot, peer, "admin", "我的新客户")
    assert new.startswith("全公司的新增客户（生命周期") or new == "全公司目前没有新增客户（生命周期）。"
    _, english = await _say(bot, peer, "admin", "my new customers")
    # The default RFM table has no "new_customers": the word falls to lifecycle's "new".
    assert "(lifecycle" in english and "New Customers" not in english
    _, recent = await _say(bot, peer, "admin", "新近首购客户")
    assert "RFM" in recent
    # A bare word is not a list: 「成长」 alone gets the hint.
    _, bare = await _say(bot, peer, "rep_a", "成长")
    assert bare.startswith("没听懂「成长」")
    # 有流失风险 is the churn list, as "at risk" is; RFM's At Risk is 流失边缘.
    _, churn = await _say(bot, peer, "rep_a", "我的有流失风险客户")
    assert "流失" in churn and "RFM" not in churn
    _, verge = await _say(bot, peer, "rep_a", "我的流失边缘客户")
    assert "流失边缘客户（RFM" in verge
    # Sibling phrasings a manager uses.
    for phrase in ("团队的明星客户", "team star customers", "my team's champions"):
        assert not (await _say(bot, peer, "boss", phrase))[1].startswith(("没听懂", "I did not"))
    # A model switched off for the run: said so, not "none right now".
    def switch_intent_off():
        with write_transaction(engine) as connection:
            summary = connection.execute(sql_select(ScoreRun.summary).where(ScoreRun.kind == "full")).scalar_one()
            coded = {model: labels for model, labels in summary["coded_labels"].items() if model != "intent"}
            connection.execute(sql_update(ScoreRun).values(summary={**summary, "coded_labels": coded}))

    await off_the_loop(switch_intent_off)
    _, off = await _say(bot, peer, "rep_a", "我的高意向客户")
    assert off == "意向 没有启用，所以没有按它分组的名单。"


def test_coded_labels_leave_out_switched_off_models_and_the_rfm_table_fits_the_code():
    from pydantic import ValidationError

    from scoring.intent import IntentParams
    from scoring.pipeline import ScoringParams
    from scoring.rfm import RfmParams, SegmentRule

    assert "intent" not in ScoringParams(intent=IntentParams(enabled=False)).coded_labels()
    cells = [(r, f, m) for r in range(1, 6) for f in range(1, 6) for m in range(1, 6)][:30]
    many = tuple(SegmentRule(name=f"s{i}", r_min=r, r_max=r, f_min=f, f_max=f, m_min=m, m_max=m)
                 for i, (r, f, m) in enumerate(cells)) + (SegmentRule(name="rest"),)
    with pytest.raises(ValidationError, match="rfm.segments: at most 30 segments, got 31"):
        ScoringParams(rfm=RfmParams(segments=many))


async def test_a_pyramid_list_runs_by_revenue_the_others_by_value(bot, peer, engine):
    from sqlalchemy import select as sql_select, update as sql_update

    from storage.models import ScoreRun, ScoreSnapshot
    from storage.scores import label_condition

    def iron_by_value_with_revenue_the_other_way() -> list[str]:
        # Read, then write: the write lock first, or a lease written meanwhile makes the read stale.
        with write_transaction(engine) as connection:
            run_id, summary = connection.execute(sql_select(ScoreRun.id, ScoreRun.summary)
                                                 .where(ScoreRun.kind == "full")).one()
            iron = connection.execute(sql_select(ScoreSnapshot.customer_id).where(
                ScoreSnapshot.run_id == run_id,
                label_condition(ScoreSnapshot.label_codes, summary["coded_labels"], "pyramid", "iron"))
                .order_by(ScoreSnapshot.current_value.desc(), ScoreSnapshot.customer_id)).scalars().all()
            # The most valuable get the least revenue: the two orders disagree.
            for rank, customer_id in enumerate(iron):
                connection.execute(sql_update(ScoreSnapshot).where(ScoreSnapshot.run_id == run_id,
                                                                   ScoreSnapshot.customer_id == customer_id)
                                   .values(revenue_12m=1_000.0 * (rank + 1)))
        return iron

    iron = await off_the_loop(iron_by_value_with_revenue_the_other_way)
    assert len(iron) >= 3
    _, listed = await _say(bot, peer, "admin", "铁质客户")
    shown = [customer_id for customer_id in reversed(iron) if f"（{customer_id}）" in listed]
    assert len(shown) == min(len(iron), 10)
    assert [listed.index(f"（{c}）") for c in shown] == sorted(listed.index(f"（{c}）") for c in shown)


async def test_rfm_segments_go_by_the_names_the_configuration_gives_them(engine, database_url, tmp_path, wecom, peer,
                                                                         aiohttp_client):
    from bot.export import export_scores

    run_import(engine, [write_company(tmp_path / "crm")])
    path = tmp_path / "config.yaml"
    path.write_text("""scoring:
  rfm:
    segments:
      - {name: champions, r_min: 4, f_min: 4, m_min: 4, title: {zh: 核心客户, en: Core}}
      - {name: steady, title: {zh: 稳定客户, en: Steady}}
""", encoding="utf-8")
    config = load_config(path, environ={"TIERBOT_DATABASE_URL": database_url})
    outcome, _ = full_rescore(engine, config, AS_OF)
    identity = WeComIdentity(VECTOR_CORP, 1000002, "vector-secret", VECTOR_TOKEN, VECTOR_AES_KEY,
                             str(wecom.make_url("")).rstrip("/"))
    bot = await aiohttp_client(create_app(config, identity))
    _, star = await _say(bot, peer, "boss", "客户 STAR1")
    _, dog = await _say(bot, peer, "boss", "customer DOG1")
    assert "\nRFM：核心客户 — " in star and "\nRFM: Steady — " in dog
    # Listed by those names too, after every other command had its say.
    _, core = await _say(bot, peer, "boss", "我的核心客户")
    _, steady = await _say(bot, peer, "boss", "show my steady customers")
    assert core.startswith("您团队的核心客户（RFM") and "星辰半导体" in core
    assert steady.startswith("Your team's customers: Steady (RFM")
    _, unknown = await _say(bot, peer, "boss", "我的神秘客户")
    assert unknown.startswith("没听懂「我的神秘客户」")
    _, typo = await _say(bot, peer, "boss", "我的核心客胡")
    assert "您是不是想发「我的核心客户」？" in typo
    assert (await _say(bot, peer, "boss", "我的明星客户"))[1].startswith("您团队的明星客户")
    out = tmp_path / "scores.csv"
    export_scores(engine, out, "en", run_id=outcome.run_id)
    exported = out.read_text(encoding="utf-8-sig")
    assert "Core" in exported and "Steady" in exported and "Champions" not in exported


async def test_the_card_names_the_business_rule_that_set_a_label(engine, database_url, tmp_path, wecom, peer,
                                                                 aiohttp_client):
    from scoring.pipeline import ScoringParams

    run_import(engine, [write_company(tmp_path / "crm")])
    config = load_config(None, environ={"TIERBOT_DATABASE_URL": database_url})
    config = config.model_copy(update={"scoring": ScoringParams.model_validate({"rules": {"rules": [
        {"name": "key semiconductor accounts", "when": 'industry == "半导体"',
         "then": {"set_label": {"sabc": "S"}}}]}})})
    full_rescore(engine, config, AS_OF)
    identity = WeComIdentity(VECTOR_CORP, 1000002, "vector-secret", VECTOR_TOKEN, VECTOR_AES_KEY,
                             str(wecom.make_url("")).rstrip("/"))
    bot = await aiohttp_client(create_app(config, identity))
    _, star = await _say(bot, peer, "boss", "客户 STAR1")
    assert "\n按规则：业务规则「key semiconductor accounts」\n" in star and "S/A/B/C：S 战略客户" in star
    _, other = await _say(bot, peer, "boss", "客户 QM1")
    assert "按规则" not in other
    _, english = await _say(bot, peer, "boss", "customer STAR1")
    assert "\nSet by rules: business rule \"key semiconductor accounts\"\n" in english


async def test_the_card_gives_the_day_a_tier_was_assigned_in_the_service_time_zone(bot, peer, engine):
    from datetime import datetime, timezone

    from sqlalchemy import update

    from storage.models import Customer

    def assigned_at_one_in_the_night():  # 01:00 on 12-01 in Shanghai is still 11-30 in UTC
        with engine.begin() as connection:
            connection.execute(update(Customer).where(Customer.customer_id == "STAR1")
                               .values(tier_since=datetime(2026, 11, 30, 17, 0, tzinfo=timezone.utc)))

    await off_the_loop(assigned_at_one_in_the_night)
    _, card = await _say(bot, peer, "boss", "客户 STAR1")
    assert "层级：明星客户（2026-12-01 定级）" in card


async def test_a_typo_gets_the_command_it_was_probably_meant_to_be(bot, peer):
    from handlers import router
    from handlers.help import SUGGESTED
    from handlers.registry import normalise

    _, reply = await _say(bot, peer, "rep_a", "我的明星客胡")
    assert reply == "没听懂「我的明星客胡」。您是不是想发「我的明星客户」？发送「帮助」查看全部命令。"
    _, reply = await _say(bot, peer, "rep_a", "show my star custmers")
    assert reply.startswith('I did not understand "show my star custmers". Did you mean "show my star customers"?')
    _, reply = await _say(bot, peer, "rep_a", "流失预井")
    assert "「流失预警」" in reply
    _, reply = await _say(bot, peer, "rep_a", "今天天气怎么样")
    assert "是不是" not in reply
    # Every suggestion is a command as it stands.
    assert [phrase for phrase in SUGGESTED if router.resolve(normalise(phrase)) is None] == []
