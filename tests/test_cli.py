"""The CLI as an admin runs it: exit 0 on success, 2 with one line per problem."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
from click.testing import CliRunner
from sqlalchemy import select

from bot.cli import main
from bot.config import PROJECT_ROOT
from storage.db import make_engine
from storage.models import OutboxMessage, TierChange
from tests.company import write_company
from tests.conftest import write_csv


@pytest.fixture
def cli(database_url):
    runner = CliRunner()

    def invoke(*args: str):
        return runner.invoke(main, list(args), env={"TIERBOT_DATABASE_URL": database_url}, catch_exceptions=False)

    return invoke


def test_import_score_export_round_trip(cli, tmp_path):
    folder = write_company(tmp_path / "crm")

    imported = cli("import", str(folder), "--no-progress")
    assert imported.exit_code == 0, imported.output
    assert "orders: 914 rows — 914 new, 0 changed, 0 unchanged" in imported.stdout

    again = cli("import", str(folder), "--no-progress")
    assert "orders: 914 rows — 0 new, 0 changed, 914 unchanged" in again.stdout

    scored = cli("score", "--as-of", "2026-11-20", "--live")
    assert scored.exit_code == 0, scored.output
    assert "28 个客户, 基准日 2026-11-20, 28 个首次定级\n\n层级 / Tier" in scored.stdout
    assert "明星客户 Star" in scored.stdout and "瘦狗客户 Dog" in scored.stdout

    exported = cli("export", "scores", "--out", str(tmp_path / "out.csv"), "--lang", "en")
    assert exported.exit_code == 0 and "wrote 28 customers" in exported.stdout
    assert (tmp_path / "out.csv").read_bytes().startswith(b"\xef\xbb\xbfcustomer_id,")  # for Excel
    text = (tmp_path / "out.csv").read_text(encoding="utf-8-sig")
    assert "STAR1,星辰半导体股份有限公司,rep_a,张三,star,Star," in text
    assert "multi-year revenue" in text and "sabc_label" in text and "pyramid_reasons" in text
    # Each model's label also by its name, in the export's language.
    import pandas as pd

    chinese = cli("export", "scores", "--out", str(tmp_path / "zh.csv"))
    assert chinese.exit_code == 0
    frame = pd.read_csv(tmp_path / "zh.csv", encoding="utf-8-sig", dtype=str).set_index("customer_id")
    assert frame.loc["STAR1", "sabc_name"] == "S 战略客户" and frame.loc["STAR1", "sabc_label"] == "S"
    names = {"platinum": "铂金", "gold": "黄金", "iron": "铁质", "lead": "铅质"}
    assert (frame["pyramid_label"].map(names) == frame["pyramid_name"]).all()


def test_export_tasks_lists_whose_each_task_is_and_what_came_of_it(cli, tmp_path, database_url):
    import pandas as pd
    from sqlalchemy import create_engine, text

    assert cli("import", str(write_company(tmp_path / "crm")), "--no-progress").exit_code == 0
    engine = create_engine(database_url)
    with engine.begin() as connection:
        for task_id, customer, owner, status, due, done_at, note in (
                (1, "STAR1", "rep_a", "done", "2026-11-10", "2026-11-09 03:30:00+00:00", "客户同意续约两年"),
                (2, "QM1", "rep_b", "open", "2026-11-12", None, None),
                (3, "COW1", "rep_a", "open", "2099-01-01", None, None)):
            connection.execute(text(
                "INSERT INTO tasks (id, customer_id, rule, owner_userid, title_zh, title_en, created_at, due_date, "
                "status, done_at, done_note, tier, churn_score, value_at_stake, reasons, overdue_notified) VALUES "
                "(:id, :customer, 'manual', :owner, '安排高层拜访', 'Arrange an executive visit', "
                "'2026-11-02 01:00:00+00:00', :due, :status, :done_at, :note, 'star', 0, 0, '[]', false)"),
                {"id": task_id, "customer": customer, "owner": owner, "status": status, "due": due,
                 "done_at": done_at, "note": note})
    engine.dispose()
    out = tmp_path / "tasks.csv"
    result = cli("export", "tasks", "--out", str(out))
    assert result.exit_code == 0 and "wrote 3 tasks" in result.stdout
    frame = pd.read_csv(out, encoding="utf-8-sig", dtype=str, keep_default_na=False).set_index("task_id")
    # Times in the service's time zone (Shanghai), the note as the rep typed it.
    assert frame.loc["1", ["owner_name", "status", "done_at", "done_note"]].tolist() == [
        "张三", "done", "2026-11-09 11:30", "客户同意续约两年"]
    assert frame.loc["2", "overdue"] == "yes" and frame.loc["3", "overdue"] == ""
    assert frame.loc["1", "title"] == "安排高层拜访" and frame.loc["1", "tier_name"] == "明星客户"
    done = cli("export", "tasks", "--out", str(out), "--status", "done", "--lang", "en")
    assert "wrote 1 tasks" in done.stdout and "Arrange an executive visit" in out.read_text(encoding="utf-8-sig")
    # The day in Shanghai: done at 11:30 there on the 9th (03:30 UTC), made on the 2nd.
    assert "wrote 1 tasks" in cli("export", "tasks", "--out", str(out), "--since", "2026-11-09").stdout
    assert "wrote 0 tasks" in cli("export", "tasks", "--out", str(out), "--since", "2026-11-10").stdout
    bad = cli("export", "tasks", "--out", str(out), "--since", "2026-13-01")
    assert bad.exit_code == 2 and "'2026-13-01' is not a date" in bad.output


def test_bad_rows_exit_2_listing_each_and_nothing_is_imported(cli, tmp_path):
    write_csv(tmp_path / "users.csv", ["userid", "name", "role", "colour"], [["u1", "甲", "rep", ""],
                                                                          ["u2", "乙", "chief", ""]])
    result = cli("import", str(tmp_path), "--no-progress")
    assert result.exit_code == 2
    assert f"{tmp_path / 'users.csv'}:3: role: must be one of rep, manager, agent, admin: 'chief'" in result.stderr
    assert "colour" in result.stderr  # what a good file would be warned of, said now, not at the next try
    assert "nothing was imported" in result.stderr
    assert "0 rows" not in result.stdout and cli("score").exit_code == 2


def test_dry_run_reports_and_writes_nothing(cli, tmp_path):
    folder = write_company(tmp_path / "crm")
    result = cli("import", "--dry-run", str(folder), "--no-progress")
    assert result.exit_code == 0 and "dry run: every row is valid; nothing was written" in result.stdout
    nothing = cli("score")
    assert nothing.exit_code == 2
    assert "no customers to score: import data first" in nothing.stderr


def test_export_before_any_run_and_bad_as_of_are_bad_input(cli, tmp_path):
    result = cli("export", "scores", "--out", str(tmp_path / "x.csv"))
    assert result.exit_code == 2 and "no score run yet" in result.stderr
    assert not (tmp_path / "x.csv").exists()
    bad_day = cli("score", "--as-of", "2026-13-01")
    assert bad_day.exit_code == 2 and "'2026-13-01' is not a date (expected YYYY-MM-DD)" in bad_day.stderr


def test_check_config_as_a_real_process_lists_every_problem(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text("http:\n  port: 0\nscoring:\n  value_matrix:\n    boundaries:\n      potential_value: x\n",
                    encoding="utf-8")
    environment = {**os.environ, "TIERBOT_TIMEZONE": "Nowhere/Land"}
    process = subprocess.run([sys.executable, "-m", "bot", "--config", str(path), "check-config"],
                             cwd=PROJECT_ROOT, env=environment, capture_output=True, text=True, timeout=60)
    assert process.returncode == 2
    assert process.stderr.splitlines() == [
        "timezone (from TIERBOT_TIMEZONE): unknown time zone 'Nowhere/Land' (e.g. Asia/Shanghai)",
        "http.port: must be a number >= 1",
        "scoring.value_matrix.boundaries.potential_value: must be a number",
    ]


def test_check_config_accepts_the_shipped_file():
    result = CliRunner().invoke(main, ["check-config"], env={"TIERBOT_DATABASE_URL": "sqlite:///unused.db"})
    assert result.exit_code == 0 and result.stdout.startswith("config OK")


def test_demo_generates_imports_scores_and_shows_examples_with_reasons(cli, database_url, tmp_path):
    result = cli("demo", "--no-serve", "--customers", "300", "--data-dir", str(tmp_path / "demo"))
    assert result.exit_code == 0, result.output
    assert "300 个客户" in result.stdout and "明星客户 Star" in result.stdout
    assert "三年加权营收" in result.stdout  # example customers come with their reasons
    assert (tmp_path / "demo" / "scores.csv").exists()
    # A new database was scored as of 8 and 4 weeks ago first: today's run has changes to tell.
    assert re.search(r"评分完成 #3: 300 个客户, 基准日 \S+, [1-9]\d* 个客户层级变化", result.stdout), result.stdout
    # Their pushes would be weeks late: only today's run's are waiting to go out.
    engine = make_engine(database_url)
    with engine.connect() as connection:
        pending = connection.execute(select(OutboxMessage.kind, OutboxMessage.origin).where(
            OutboxMessage.status == "pending")).all()
        changes = dict(connection.execute(select(TierChange.id, TierChange.run_id)).all())
    engine.dispose()
    kinds = {kind for kind, _ in pending}
    assert {"tier_change", "churn_alert"} <= kinds, kinds
    assert {changes[int(origin.split(":")[1])] for kind, origin in pending if kind == "tier_change"} == {3}
    assert {origin.rsplit(":", 1)[1] for kind, origin in pending if kind == "churn_alert"} == {"3"}
    again = cli("demo", "--no-serve", "--customers", "300", "--data-dir", str(tmp_path / "demo"))
    assert again.exit_code == 0 and "0 new, 0 changed" in again.stdout
    assert "评分完成 #4: " in again.stdout  # no history again on a database scored before


def test_a_database_file_that_cannot_be_made_is_one_line_not_a_traceback(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder", encoding="utf-8")
    result = CliRunner().invoke(main, ["score"], env={"TIERBOT_DATABASE_URL": f"sqlite:///{blocker}/x.db"})
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit)  # a ClickException, not a crash
    assert result.output.strip().startswith(f"Error: database unreachable (sqlite:///{blocker}/x.db):")
    assert "Traceback" not in result.output


def test_serve_stops_cleanly_on_sigterm(tmp_path):
    import signal
    import socket
    import time
    import urllib.request

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    environment = {**os.environ, "TIERBOT_DATABASE_URL": f"sqlite:///{tmp_path / 'serve.db'}",
                   "TIERBOT_HTTP_PORT": str(port)}
    for name in ("WECOM_CORP_ID", "WECOM_AGENT_ID", "WECOM_SECRET", "WECOM_TOKEN", "WECOM_ENCODING_AES_KEY"):
        environment.pop(name, None)
    process = subprocess.Popen([sys.executable, "-m", "bot", "serve"], cwd=PROJECT_ROOT, env=environment,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as answer:
                    assert answer.status == 200
                    break
            except OSError:
                assert process.poll() is None and time.monotonic() < deadline, "the service did not come up"
                time.sleep(0.2)
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    # Stopped by its own shutdown (exit 0, "stopped"), not killed by the signal (-15).
    assert process.returncode == 0, output
    assert output.rstrip().endswith("stopped")


def test_import_as_of_a_day_refuses_what_comes_after_it(cli, tmp_path):
    write_csv(tmp_path / "users.csv", ["userid", "name", "role"], [["u1", "甲", "rep"]])
    write_csv(tmp_path / "customers.csv", ["customer_id", "name", "owner_userid"], [["C1", "甲公司", "u1"]])
    write_csv(tmp_path / "activities.csv", ["activity_id", "customer_id", "ts", "kind"],
              [["A1", "C1", "2026-06-30T18:00:00", "visit"], ["A2", "C1", "2026-07-01T09:00:00", "visit"]])
    result = cli("import", str(tmp_path), "--no-progress", "--as-of", "2026-06-30")
    assert result.exit_code == 2
    assert f"{tmp_path / 'activities.csv'}:3: ts: in the future: '2026-07-01T09:00:00'" in result.stderr
    assert cli("import", str(tmp_path), "--no-progress", "--as-of", "2026-07-01").exit_code == 0
    bad = cli("import", str(tmp_path), "--no-progress", "--as-of", "2026-07-32")
    assert bad.exit_code == 2 and "'2026-07-32' is not a date" in bad.output


def test_a_back_test_changes_no_tier_tells_nobody_and_is_exported_by_its_run(cli, tmp_path, engine):
    import csv

    from sqlalchemy import func, select

    from storage.models import Customer, FollowUpTask, OutboxMessage, TierChange, WindowMonth

    def live_state() -> tuple:
        with engine.connect() as connection:
            return (dict(connection.execute(select(Customer.customer_id, Customer.tier)).all()),
                    *(connection.execute(select(func.count()).select_from(table)).scalar_one()
                      for table in (TierChange, OutboxMessage, FollowUpTask)),
                    sorted(str(month) for month in connection.execute(select(WindowMonth.month)).scalars()))

    def exported(*run: str) -> dict:
        out = tmp_path / "scores.csv"
        assert cli("export", "scores", "--out", str(out), "--lang", "en", *run).exit_code == 0
        with open(out, encoding="utf-8-sig") as handle:
            return {row["customer_id"]: (row["tier"], row["churn_label"], row["as_of"])
                    for row in csv.DictReader(handle)}

    assert cli("import", str(write_company(tmp_path / "crm")), "--no-progress").exit_code == 0
    assert cli("score", "--as-of", "2026-11-20", "--live").exit_code == 0
    before, current = live_state(), exported()
    # Half a year on, customers have gone quiet: as a back-test nobody hears of it.
    back_test = cli("score", "--as-of", "2027-05-20")
    assert back_test.exit_code == 0
    assert "基准日 2027-05-20\n回测：客户当前层级与历史未改动，也未推送任何消息或任务" in back_test.stdout
    run_id = back_test.stdout.split("#", 1)[1].split(":", 1)[0]
    assert live_state() == before and exported() == current
    then = exported("--run", run_id)
    assert {as_of for _, _, as_of in then.values()} == {"2027-05-20"}
    assert [churn for _, churn, _ in then.values()] != [churn for _, churn, _ in current.values()]
    # The same day, data and config give the same scores, whatever ran in between.
    again = cli("score", "--as-of", "2027-05-20")
    assert exported("--run", again.stdout.split("#", 1)[1].split(":", 1)[0]) == then
    # --live makes it a real run: it becomes the current picture and pushes.
    live = cli("score", "--as-of", "2027-05-21", "--live")
    assert live.exit_code == 0 and "回测" not in live.stdout
    assert live_state()[2] > before[2]
    alone = cli("score", "--live")
    assert alone.exit_code == 2 and "--live goes with --as-of DAY" in alone.output
    missing = cli("export", "scores", "--out", str(tmp_path / "x.csv"), "--run", "999")
    assert missing.exit_code == 2 and "no full run or back-test #999" in missing.stderr


@pytest.mark.parametrize("pressed_at", ["staging", "commit"])
def test_ctrl_c_during_an_import_says_whether_it_was_saved(cli, tmp_path, database_url, pressed_at):
    import signal

    from sqlalchemy import create_engine, event, text
    from sqlalchemy.engine import Engine

    folder = write_company(tmp_path / "crm")
    seen = {"last_statement": False}

    def before_execute(connection, cursor, statement, parameters, context, executemany):
        if pressed_at == "staging" and "stage_orders" in statement and statement.lstrip().upper().startswith("INSERT"):
            signal.raise_signal(signal.SIGINT)
        if "DROP TABLE IF EXISTS touched_customers" in statement:
            seen["last_statement"] = True

    def on_commit(connection):
        if pressed_at == "commit" and seen["last_statement"]:
            seen["last_statement"] = False
            signal.raise_signal(signal.SIGINT)

    event.listen(Engine, "before_cursor_execute", before_execute)
    event.listen(Engine, "commit", on_commit)
    # Ctrl-C as in a fresh `python -m bot` process: an event loop an earlier test ran in this
    # process may have left its own SIGINT handler, which would swallow the key press.
    handler = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        result = cli("import", str(folder), "--no-progress")
    finally:
        signal.signal(signal.SIGINT, handler)
        event.remove(Engine, "before_cursor_execute", before_execute)
        event.remove(Engine, "commit", on_commit)

    assert result.exit_code == 130 and "Traceback" not in result.output
    engine = create_engine(database_url)
    with engine.connect() as connection:
        orders = connection.execute(text("SELECT COUNT(*) FROM orders")).scalar_one()
    engine.dispose()
    if pressed_at == "commit":
        assert "interrupted after the import was saved" in result.stderr
        assert orders == 914
    else:
        assert result.stderr.strip() == "interrupted: nothing was imported"
        assert orders == 0
