"""Import: the documented formats load, re-imports change nothing, bad input changes nothing."""

from __future__ import annotations

from pathlib import Path

import pytest
from openpyxl import Workbook
from sqlalchemy import func, select, text

from storage.importer import ImportFailed, run_import
from storage.models import Customer, CustomerMonth, Order, User
from tests.company import CUSTOMERS_HEADER, ORDERS_HEADER, USERS, USERS_HEADER, write_company
from tests.conftest import write_csv


def _state(engine) -> dict:
    """Everything an import can change, to compare before and after."""
    with engine.connect() as connection:
        return {
            table: connection.execute(text(f"SELECT * FROM {table} ORDER BY 1, 2")).all()
            for table in ("users", "customers", "orders", "customer_months", "activities", "activity_months")
        }


def _count(engine, model) -> int:
    with engine.connect() as connection:
        return connection.execute(select(func.count()).select_from(model)).scalar_one()


def _import_fails(engine, paths, **kwargs) -> list[str]:
    with pytest.raises(ImportFailed) as failure:
        run_import(engine, paths, **kwargs)
    return failure.value.problems


def test_company_imports_and_second_import_changes_nothing(engine, tmp_path):
    folder = write_company(tmp_path / "crm")
    first = run_import(engine, [folder])
    assert first.kinds["customers"].new == 28
    assert first.kinds["orders"].new == _count(engine, Order) > 0
    before = _state(engine)

    second = run_import(engine, [folder])

    assert second.kinds["orders"].unchanged == second.kinds["orders"].rows
    assert second.kinds["customers"].changed == 0 and second.kinds["users"].changed == 0
    assert second.rollups_rebuilt_for == 0
    assert _state(engine) == before


def test_changed_order_updates_row_and_monthly_rollup(engine, tmp_path):
    folder = write_company(tmp_path / "crm")
    run_import(engine, [folder])
    write_csv(tmp_path / "fix" / "orders.csv", ORDERS_HEADER,
              [["QM1-O000", "QM1", "2026-10-11", "50000.00", "30000.00", "crm", "new"]])

    result = run_import(engine, [tmp_path / "fix"])

    assert (result.kinds["orders"].changed, result.kinds["orders"].new) == (1, 0)
    with engine.connect() as connection:
        months = connection.execute(select(CustomerMonth.month, CustomerMonth.revenue)
                                    .where(CustomerMonth.customer_id == "QM1")).all()
    assert [(str(m), r) for m, r in months] == [("2026-10-01", 50000.0)]


def test_order_moved_to_other_customer_rebuilds_both_rollups(engine, tmp_path):
    run_import(engine, [write_company(tmp_path / "crm")])
    write_csv(tmp_path / "fix" / "orders.csv", ORDERS_HEADER,
              [["QM1-O000", "DOG1", "2026-10-11", "20000.00", "12000.00", "crm", "new"]])
    run_import(engine, [tmp_path / "fix"])
    with engine.connect() as connection:
        qm = connection.execute(select(func.count()).select_from(CustomerMonth)
                                .where(CustomerMonth.customer_id == "QM1")).scalar_one()
        dog = connection.execute(select(func.sum(CustomerMonth.revenue))
                                 .where(CustomerMonth.customer_id == "DOG1")).scalar_one()
    assert qm == 0 and dog == 20800.0


def test_one_bad_date_names_file_and_line_and_writes_nothing(engine, tmp_path):
    folder = write_company(tmp_path / "crm")
    run_import(engine, [folder])
    before = _state(engine)
    lines = (folder / "orders.csv").read_text(encoding="utf-8").splitlines()
    lines[41] = lines[41].replace("-15,", "-32,", 1)  # line 42 of the file
    lines.append("NEW-1,QM1,2026-11-01,10.00,1.00,crm,upsell")  # a valid new row must not land either
    (folder / "orders.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")

    problems = _import_fails(engine, [folder])

    assert len(problems) == 1
    assert problems[0].startswith(f"{folder / 'orders.csv'}:42: order_date: not a date")
    assert _state(engine) == before


def test_every_kind_of_bad_row_is_listed(engine, tmp_path):
    write_csv(tmp_path / "users.csv", USERS_HEADER, USERS + [["ghost", "鬼", "wizard", "nobody", "", ""]])
    write_csv(tmp_path / "customers.csv", CUSTOMERS_HEADER, [
        ["C1", "甲公司", "rep_a", "物流", "华东", "abc", "end_user", "maybe", "", "", 9, "", "", "2024-01-01"],
        ["C2", "乙公司", "rep_x", "物流", "华东", "", "", "", "", "", "", "", "", ""],
    ])
    write_csv(tmp_path / "orders.csv", ORDERS_HEADER, [
        ["O1", "C1", "2025-01-01", "12.3.4", "", "", "new"],
        ["O2", "C1", "2025-01-01", "100", "", "", "gift"],
        ["O1", "C1", "2025-01-02", "100", "", "", "new"],
        ["O3", "NOPE", "2025-01-02", "100", "", "", "new"],
        ["", "C1", "", "", "", "", ""],
    ])

    problems = _import_fails(engine, [tmp_path])

    joined = "\n".join(problems)
    users, customers, orders = (str(tmp_path / f"{k}.csv") for k in ("users", "customers", "orders"))
    assert f"{users}:6: role: must be one of rep, manager, agent, admin: 'wizard'" in joined
    assert f"{customers}:2: employees: not a whole number: 'abc'" in joined
    assert f"{customers}:2: is_listed: not a yes/no value" in joined
    assert f"{customers}:2: digital_maturity: not a whole number from 1 to 5: '9'" in joined
    assert f"{orders}:2: amount: not a number: '12.3.4'" in joined
    assert f"{orders}:3: kind: must be one of new, renewal, upsell, service: 'gift'" in joined
    assert f"{orders}:6: order_id: missing value" in joined
    assert f"{orders}:6: order_date: missing value" in joined
    assert _count(engine, User) == 0 and _count(engine, Customer) == 0


def test_duplicate_ids_and_unknown_references_are_reported(engine, tmp_path):
    write_csv(tmp_path / "users.csv", USERS_HEADER, USERS)
    write_csv(tmp_path / "customers.csv", CUSTOMERS_HEADER, [
        ["C1", "甲公司", "rep_a", "", "", "", "", "", "", "", "", "", "", ""],
        ["C2", "乙公司", "rep_x", "", "", "", "", "", "", "", "", "", "", ""],
    ])
    write_csv(tmp_path / "orders.csv", ORDERS_HEADER, [
        ["O1", "C1", "2025-01-01", "100", "", "", "new"],
        ["O1", "C1", "2025-01-02", "100", "", "", "new"],
    ])
    problems = _import_fails(engine, [tmp_path])
    assert problems == [f"{tmp_path / 'customers.csv'}:3: owner_userid: unknown user 'rep_x' "
                        "(not in the database nor in the users file)",
                        f"{tmp_path / 'orders.csv'}:3: order_id: duplicate id 'O1' (first at line 2)"]

    write_csv(tmp_path / "customers.csv", CUSTOMERS_HEADER, [["C1", "甲公司", "rep_a"] + [""] * 11])
    write_csv(tmp_path / "orders_more.csv", ORDERS_HEADER, [["O9", "C404", "2025-01-01", "1", "", "", ""]])
    problems = _import_fails(engine, [tmp_path])
    assert problems == [
        f"{tmp_path / 'orders.csv'}:3: order_id: duplicate id 'O1' (first at line 2)",
        f"{tmp_path / 'orders_more.csv'}:2: customer_id: unknown customer 'C404' "
        "(not in the database nor in the customers file)",
    ]
    (tmp_path / "orders.csv").unlink()
    problems = _import_fails(engine, [tmp_path])
    assert problems == [f"{tmp_path / 'orders_more.csv'}:2: customer_id: unknown customer 'C404' "
                        "(not in the database nor in the customers file)"]
    assert _count(engine, Customer) == 0


def test_one_attempt_lists_bad_cells_ragged_rows_duplicates_and_unknown_customers_together(engine, tmp_path):
    write_csv(tmp_path / "users.csv", USERS_HEADER, USERS)
    write_csv(tmp_path / "customers.csv", CUSTOMERS_HEADER, [["C1", "甲公司", "rep_a"] + [""] * 11])
    orders = tmp_path / "orders.csv"
    orders.write_text(",".join(ORDERS_HEADER) + "\n"
                      "O1,C1,2025-01-01,100,,,new\n"
                      "O2,C1,2025-01-01,100,,,new,extra\n"      # line 3: one cell too many
                      "O3,C1,2025-01-02,12.3.4,,,new\n"         # line 4: a bad amount
                      "O1,C1,2025-01-03,100,,,new\n"            # line 5: O1 again
                      "O4,NOPE,2025-01-04,100,,,new\n",         # line 6: no such customer
                      encoding="utf-8")
    problems = _import_fails(engine, [tmp_path])
    assert sorted(problems) == sorted([
        f"{orders}:3: (row): has 8 fields, the header has 7",
        f"{orders}:4: amount: not a number: '12.3.4'",
        f"{orders}:5: order_id: duplicate id 'O1' (first at line 2)",
        f"{orders}:6: customer_id: unknown customer 'NOPE' (not in the database nor in the customers file)",
    ])
    assert _count(engine, Customer) == 0 and _count(engine, Order) == 0


@pytest.mark.parametrize("batch_rows", [2, 50_000])
def test_lines_are_counted_as_an_editor_shows_them_past_blank_lines_and_cells_spanning_lines(engine, tmp_path,
                                                                                           batch_rows):
    write_csv(tmp_path / "users.csv", USERS_HEADER, USERS)
    write_csv(tmp_path / "customers.csv", CUSTOMERS_HEADER, [["C1", "甲公司", "rep_a"] + [""] * 11])
    orders = tmp_path / "orders.csv"
    orders.write_text(",".join(ORDERS_HEADER) + "\n"
                      "\n"                                           # 2: blank
                      "O1,C1,2025-01-01,bad1,,,new\n"                # 3
                      'O2,C1,2025-01-01,100,"multi\nline",,new\n'   # 4–5: a cell over two lines
                      "O3,C1,2025-01-01,100,,,new,x\n"               # 6: one cell too many
                      "   \n"                                        # 7: blank but for spaces
                      "O4,C1,2025-01-01,bad4,,,new\n"                # 8
                      "O5,C1,2025-01-01,100,,,new,x\n"               # 9: one cell too many
                      "O6,C1,2025-01-01,bad6,,,new\n",               # 10
                      encoding="utf-8")
    problems = _import_fails(engine, [tmp_path], batch_rows=batch_rows)
    assert [problem.split(": ")[0].rsplit(":", 1)[1] + " " + problem.split(": ")[1] for problem in problems] == [
        "3 amount", "4 cost", "6 (row)", "8 amount", "9 (row)", "10 amount"]


def test_missing_required_column_and_unknown_column(engine, tmp_path):
    write_csv(tmp_path / "users.csv", ["userid", "name", "favourite_colour"], [["u1", "甲", "blue"]])
    problems = _import_fails(engine, [tmp_path / "users.csv"])
    assert len(problems) == 1
    assert problems[0].startswith(f"{tmp_path / 'users.csv'}:1: role: missing required column")


def _users(engine) -> dict[str, tuple]:
    with engine.connect() as connection:
        return {row.userid: (row.name, row.role) for row in connection.execute(select(User.userid, User.name, User.role))}


def test_csv_as_excel_saves_it_in_gbk_utf16_or_with_semicolons_imports(engine, tmp_path):
    header = ["企业微信ID", "姓名", "角色", "上级"]
    rows = [["boss", "王总", "经理", ""], ["rep1", "张三", "销售", "boss"]]
    expected = {"boss": ("王总", "manager"), "rep1": ("张三", "rep")}
    # Excel's "CSV" on Chinese Windows is GBK; its "Unicode text" is UTF-16 with tabs; a
    # European locale writes semicolons.
    for name, encoding, delimiter in (("gbk", "gbk", ","), ("utf16", "utf-16", "\t"), ("semicolon", "utf-8", ";")):
        path = tmp_path / name / "用户.csv"
        path.parent.mkdir()
        path.write_bytes("\r\n".join(delimiter.join(row) for row in [header, *rows]).encode(encoding))
        result = run_import(engine, [path])
        assert result.warnings == [] and result.kinds["users"].rows == 2, name
        assert _users(engine) == expected, name


def test_a_currency_unit_in_a_header_is_understood(engine, tmp_path):
    write_csv(tmp_path / "users.csv", USERS_HEADER, USERS)
    write_csv(tmp_path / "customers.csv", ["customer_id", "name", "owner_userid"], [["K1", "华东机械", "rep_a"]])
    write_csv(tmp_path / "orders.csv", ["订单编号", "客户编号", "下单日期", "金额（万元）", "成本 (元)"],
              [["D1", "K1", "2026-03-01", "12.5", "800"], ["D2", "K1", "2026-03-02", "3万", "¥1,000"],
               ["D3", "K1", "2026-03-03", "¥1,200", "0"], ["D4", "K1", "2026-03-04", "-0.5", "0"]])
    run_import(engine, [tmp_path])
    with engine.connect() as connection:
        orders = connection.execute(select(Order.amount, Order.cost).order_by(Order.order_id)).all()
    assert [tuple(row) for row in orders] == [(125_000.0, 800.0), (30_000.0, 1_000.0), (12_000_000.0, 0.0),
                                              (-5_000.0, 0.0)]
    # A cell that is no number is named as it was typed, not as 万 made it.
    write_csv(tmp_path / "orders.csv", ["订单编号", "客户编号", "下单日期", "金额（万元）"],
              [["D5", "K1", "2026-03-05", "约12"]])
    problems = _import_fails(engine, [tmp_path / "orders.csv"])
    assert len(problems) == 1 and problems[0].endswith("'约12'")


def _english_rows_then(tmp_path, *tail: bytes) -> Path:
    """users.csv: 2,000 plain-ASCII rows (past the sniffed head), then `tail` as written."""
    write_csv(tmp_path / "users.csv", USERS_HEADER, [[f"rep{i}", "A" * 40, "rep", "", "", ""] for i in range(2_000)])
    with open(tmp_path / "users.csv", "ab") as handle:
        for line in tail:
            handle.write(line)
    return tmp_path / "users.csv"


def test_a_gbk_file_whose_first_rows_are_english_reads_as_gbk(engine, tmp_path):
    # ASCII reads alike in both: past the sniffed head, the first Chinese line tells. GBK
    # 谢伟 happens to be valid UTF-8 too (лΰ): it must not pass for it.
    path = _english_rows_then(tmp_path, "rep_x,谢伟,rep,,,\r\n".encode("gb18030"),
                              "rep_y,张三,rep,,,\r\n".encode("gb18030"))
    "谢伟".encode("gb18030").decode("utf-8")  # the trap this test sets
    result = run_import(engine, [path])
    assert result.warnings == [] and result.kinds["users"].rows == 2_002
    assert _users(engine)["rep_x"] == ("谢伟", "rep") and _users(engine)["rep_y"] == ("张三", "rep")


@pytest.mark.parametrize("tail, line", [
    # A UTF-8 file (its first Chinese line is UTF-8) with a GBK line further on.
    (["rep_x,李四,rep,,,\r\n".encode(), "rep_y,张三,rep,,,\r\n".encode("gb18030")], 2003),
    # GBK first, then UTF-8 lines: read as GBK, they would be garbled without a word.
    (["rep_x,张三,rep,,,\r\n".encode("gb18030"), "rep_y,李四,rep,,,\r\n".encode()], 2002),
])
def test_a_file_mixing_utf8_and_gbk_is_refused_at_its_gbk_line(engine, tmp_path, tail, line):
    path = _english_rows_then(tmp_path, *tail)
    problems = _import_fails(engine, [path])
    assert problems == [f"{path}:{line}: (file): not UTF-8 text (it looks like GBK/GB18030, "
                        "as Excel saves in Chinese Windows: save it as UTF-8 CSV)"]
    assert _users(engine) == {}


def test_a_byte_no_gbk_text_has_in_a_gbk_file_is_named_with_its_line(engine, tmp_path):
    path = tmp_path / "用户.csv"
    rows = "".join(f"rep{i},销售{i:04d}号{'甲' * 20},销售\r\n" for i in range(2_000))  # past the sniffed head
    path.write_bytes(f"企业微信ID,姓名,角色\r\n{rows}".encode("gb18030") + b"rep_x,\xff\xff,rep\r\n")
    assert _import_fails(engine, [path]) == [
        f"{path}:2002: (file): not GB18030 text like the lines before it: save the file as UTF-8 CSV"]
    assert _users(engine) == {}


def test_a_title_above_the_header_is_skipped_with_a_warning(engine, tmp_path):
    path = tmp_path / "csv" / "users.csv"
    path.parent.mkdir()
    path.write_text("2026年11月 销售团队名单\n\n" + "\n".join(",".join(row) for row in [USERS_HEADER, *USERS])
                    + "\nrep_c,王五,nobody,boss,,\n", encoding="utf-8")
    problems = _import_fails(engine, [path])
    # Lines are still those of the file.
    assert problems == [f"{path}:8: role: must be one of rep, manager, agent, admin: 'nobody'"]
    path.write_text(path.read_text(encoding="utf-8").replace("nobody", "rep"), encoding="utf-8")
    result = run_import(engine, [path])
    assert result.warnings == [f"{path}: the header is on line 3; lines 1–2 above it (a title?) are ignored"]
    assert len(_users(engine)) == len(USERS) + 1

    _write_xlsx(tmp_path / "users.xlsx", [["销售团队名单"], USERS_HEADER, *USERS, ["rep_d", "赵六", "rep", "boss", "", ""]])
    result = run_import(engine, [tmp_path / "users.xlsx"])
    assert result.warnings == [f"{tmp_path / 'users.xlsx'}: the header is on line 2; line 1 above it (a title?) "
                               "is ignored"]
    assert result.kinds["users"].new == 1


def test_unrecognised_file_name_and_missing_path(engine, tmp_path):
    write_csv(tmp_path / "stuff.csv", ["a"], [["1"]])
    problems = _import_fails(engine, [tmp_path / "stuff.csv", tmp_path / "nope"])
    assert problems[0] == (f"{tmp_path / 'stuff.csv'}: cannot tell what the file holds from its name (name it after "
                           "one of: users, customers, orders, activities, tickets; e.g. orders.csv, orders-2025.xlsx, "
                           "订单.csv)")
    assert problems[1] == f"{tmp_path / 'nope'}: no such file or folder"


def test_a_file_is_known_by_its_kind_at_either_end_of_its_name_beside_a_year():
    from storage.schema_files import kind_of_file

    named = {name: getattr(kind_of_file(Path(name)), "name", None)
             for name in ("orders2025.csv", "订单2025.xlsx", "2025订单.csv", "华东-订单.csv", "orders_2025.xlsx",
                          "users-orders.csv", "preorders.csv", "stuff.csv", "orderstuff.csv", "订单明细.xlsx",
                          "客户订单.csv", "客户列表.xlsx", "客户活动记录.csv", "销售名单.csv")}
    assert named == {"orders2025.csv": "orders", "订单2025.xlsx": "orders", "2025订单.csv": "orders",
                     "华东-订单.csv": "orders", "orders_2025.xlsx": "orders", "users-orders.csv": "users",
                     "preorders.csv": None, "stuff.csv": None, "orderstuff.csv": None, "订单明细.xlsx": "orders",
                     "客户订单.csv": "orders", "客户列表.xlsx": "customers", "客户活动记录.csv": "activities",
                     "销售名单.csv": None}


def test_chinese_headers_and_values_are_accepted(engine, tmp_path):
    write_csv(tmp_path / "用户.csv", ["企业微信ID", "姓名", "角色", "上级"], [["boss", "王总", "经理", ""],
                                                                          ["rep1", "张三", "销售", "boss"]])
    write_csv(tmp_path / "客户.csv", ["客户编号", "客户名称", "负责人", "是否上市", "客户类型", "已购模块"],
              [["K1", "华东机械", "rep1", "是", "经销商", "Finance｜CRM"]])
    write_csv(tmp_path / "订单.csv", ["订单编号", "客户编号", "下单日期", "金额", "订单类型", "成本"],
              [["D1", "K1", "2025/03/01", "¥1,200.50", "续费", "800元"],
               ["D2", "K1", "2025/04/01", "12.5万", "增购", "3万元"],
               ["D3", "K1", "2025年5月6日", "100", "新购", ""]])
    run_import(engine, [tmp_path])
    with engine.connect() as connection:
        customer = connection.execute(select(Customer.is_listed, Customer.customer_type, Customer.modules_owned)).one()
        orders = connection.execute(select(Order.order_date, Order.amount, Order.cost, Order.kind)
                                    .order_by(Order.order_id)).all()
    assert tuple(customer) == (True, "dealer", "finance|crm")
    assert [(str(o.order_date), o.amount, o.cost, o.kind) for o in orders] == [
        ("2025-03-01", 1200.5, 800.0, "renewal"), ("2025-04-01", 125_000.0, 30_000.0, "upsell"),
        ("2025-05-06", 100.0, None, "new")]


def test_xlsx_files_import_like_csv(engine, tmp_path):
    from datetime import datetime

    _write_xlsx(tmp_path / "users.xlsx", [USERS_HEADER, *USERS])
    book = Workbook()
    sheet = book.active
    sheet.append(CUSTOMERS_HEADER)
    sheet.append(["C1", "甲公司", "rep_a", "物流", "华东", 120, "end_user", True, False, None, 3, None, None,
                  datetime(2024, 5, 6)])
    sheet.append(["C2", "乙公司", "rep_b", "物流", "华东", 1.5, "end_user", None, None, None, None, None, None, None])
    sheet.append(["C3", "丙公司", "rep_b", "物流", "华东", 8, "end_user", None, None, None, None, None, None, 2024])
    # A date cell formatted as General holds Excel's day number.
    sheet.append(["C4", "丁公司", "rep_b", "物流", "华东", 9, "end_user", None, None, None, None, None, None, 45418])
    book.save(tmp_path / "customers.xlsx")

    problems = _import_fails(engine, [tmp_path])
    assert problems == [f"{tmp_path / 'customers.xlsx'}:3: employees: not a whole number: '1.5'",
                        f"{tmp_path / 'customers.xlsx'}:4: created_at: not a date (expected YYYY-MM-DD): '2024'"]

    sheet.delete_rows(3, 2)
    book.save(tmp_path / "customers.xlsx")
    run_import(engine, [tmp_path])
    with engine.connect() as connection:
        rows = connection.execute(select(Customer.employees, Customer.is_listed, Customer.created_at)
                                  .order_by(Customer.customer_id)).all()
    assert [(row.employees, row.is_listed, str(row.created_at)) for row in rows] == [
        (120, True, "2024-05-06"), (9, False, "2024-05-06")]


def test_record_spanning_lines_reports_its_real_line(engine, tmp_path):
    (tmp_path / "users.csv").write_text(
        'userid,name,role\nu1,"多行\n名字",rep\nu2,乙,rep\nu3,丙,boss\n', encoding="utf-8")
    problems = _import_fails(engine, [tmp_path / "users.csv"])
    assert problems == [f"{tmp_path / 'users.csv'}:5: role: must be one of rep, manager, agent, admin: 'boss'"]


def test_dry_run_validates_and_writes_nothing(engine, tmp_path):
    folder = write_company(tmp_path / "crm")
    result = run_import(engine, [folder], dry_run=True)
    assert result.kinds["orders"].new > 0
    assert _count(engine, Order) == 0 and _count(engine, Customer) == 0


def test_problem_list_is_capped_with_a_count_of_the_rest(engine, tmp_path):
    write_csv(tmp_path / "users.csv", USERS_HEADER, [[f"u{i}", "x", "pilot", "", "", ""] for i in range(30)])
    with pytest.raises(ImportFailed) as failure:
        run_import(engine, [tmp_path], max_errors=5)
    assert len(failure.value.problems) == 5 and failure.value.more == 25


def test_small_batches_give_the_same_result(engine, tmp_path):
    folder = write_company(tmp_path / "crm")
    run_import(engine, [folder], batch_rows=100)
    with engine.connect() as connection:
        months = connection.execute(select(func.count()).select_from(CustomerMonth)).scalar_one()
        revenue = connection.execute(select(func.sum(Order.amount))).scalar_one()
        rolled = connection.execute(select(func.sum(CustomerMonth.revenue))).scalar_one()
    assert months > 0 and round(revenue, 2) == round(rolled, 2)


def test_activities_and_tickets_import(engine, tmp_path: Path):
    folder = write_company(tmp_path / "crm")
    write_csv(folder / "activities.csv", ["activity_id", "customer_id", "ts", "kind", "detail"], [
        ["A1", "STAR1", "2026-11-01T09:30:00", "page_view", "/products/mes"],
        ["A2", "STAR1", "2026-11-02T10:00:00+08:00", "下载", "/cases/a.pdf"],
        ["A3", "QM1", "2026-10-02 14:00", "complaint", "交付延期"],
    ])
    write_csv(folder / "tickets.csv", ["ticket_id", "customer_id", "opened_at", "subject", "severity"],
              [["T1", "STAR1", "2026-11-03T08:00:00", "系统无法登录", "p1"]])
    result = run_import(engine, [folder], timezone_name="Asia/Shanghai")
    assert result.kinds["activities"].new == 3 and result.kinds["tickets"].new == 1
    with engine.connect() as connection:
        months = connection.execute(text(
            "SELECT customer_id, kind, events FROM activity_months ORDER BY customer_id, kind")).all()
        severity = connection.execute(text("SELECT severity FROM tickets")).scalar_one()
    assert [tuple(m) for m in months] == [("QM1", "complaint", 1), ("STAR1", "download", 1),
                                          ("STAR1", "page_view", 1)]
    assert severity == "P1"


def test_bulk_load_of_an_empty_table_rebuilds_its_indexes(engine, tmp_path, monkeypatch):
    from sqlalchemy import inspect

    import storage.importer as importer

    monkeypatch.setattr(importer, "BULK_LOAD_ROWS", 10)
    before = {index["name"] for index in inspect(engine).get_indexes("orders")}
    folder = write_company(tmp_path / "crm")
    result = run_import(engine, [folder])
    assert result.kinds["orders"].new == 914
    assert {index["name"] for index in inspect(engine).get_indexes("orders")} == before
    again = run_import(engine, [folder])
    assert again.kinds["orders"].unchanged == 914


def test_activities_and_tickets_from_the_future_are_refused_and_future_orders_warned_of(engine, tmp_path: Path):
    folder = write_company(tmp_path / "crm")
    run_import(engine, [folder])
    later = tmp_path / "later"
    write_csv(later / "activities.csv", ["activity_id", "customer_id", "ts", "kind"],
              [["A1", "STAR1", "2026-11-01T09:30:00", "visit"], ["A2", "STAR1", "2062-11-02T10:00:00", "visit"]])
    write_csv(later / "tickets.csv", ["ticket_id", "customer_id", "opened_at", "subject"],
              [["T1", "STAR1", "2062-11-03T08:00:00", "系统无法登录"]])
    problems = _import_fails(engine, [later])
    assert any("activities.csv:3" in p and "ts: in the future: '2062-11-02T10:00:00'" in p for p in problems)
    assert any("tickets.csv:2" in p and "opened_at: in the future" in p for p in problems)
    # A contract that starts next year loads, with a word that it counts from then on.
    write_csv(tmp_path / "next" / "orders.csv", ORDERS_HEADER,
              [["STAR1-NEXT", "STAR1", "2062-01-01", "80000.00", "", "crm", "renewal"],
               ["STAR1-NEXT2", "STAR1", "2062-03-01", "10000.00", "", "crm", "upsell"]])
    result = run_import(engine, [tmp_path / "next"])
    assert result.kinds["orders"].new == 2
    assert result.warnings == ["orders: 2 dated after today (2062-01-01 … 2062-03-01); they count from their date on"]


def test_an_import_as_of_a_day_takes_that_day_for_today(engine, tmp_path: Path):
    from datetime import date

    folder = write_company(tmp_path / "crm")
    # A bulk load (past touched_limit) builds the month totals of its as-of day, not of the clock's.
    run_import(engine, [folder], touched_limit=0, as_of=date(2026, 11, 20))
    with engine.connect() as connection:
        months = connection.execute(text("SELECT month FROM window_months")).scalars().all()
    assert [str(month)[:10] for month in months] == ["2026-11-01"]
    later = tmp_path / "later"
    write_csv(later / "activities.csv", ["activity_id", "customer_id", "ts", "kind"],
              [["A1", "STAR1", "2026-11-20T23:30:00", "visit"], ["A2", "STAR1", "2026-11-21T00:00:00", "visit"]])
    problems = _import_fails(engine, [later], as_of=date(2026, 11, 20))
    assert problems == [f"{later / 'activities.csv'}:3: ts: in the future: '2026-11-21T00:00:00'"]
    write_csv(tmp_path / "next" / "orders.csv", ORDERS_HEADER,
              [["STAR1-NEXT", "STAR1", "2026-11-21", "80000.00", "", "crm", "renewal"]])
    result = run_import(engine, [tmp_path / "next"], as_of=date(2026, 11, 20))
    assert result.warnings == ["orders: 1 dated after 2026-11-20 (2026-11-21); they count from their date on"]


def test_api_items_that_leave_a_field_out_keep_its_stored_value_and_never_store_nan(engine, tmp_path: Path):
    run_import(engine, [write_company(tmp_path / "crm")])
    with engine.connect() as connection:
        before = dict(connection.execute(text("SELECT customer_id, industry FROM customers")).all())
    result = run_import(engine, [], records={"customers": [
        {"customer_id": "STAR1", "name": "星辰半导体股份有限公司", "owner_userid": "rep_a", "industry": "新行业"},
        {"customer_id": "QM1", "name": "新名字", "owner_userid": "rep_a"},  # no industry: it stays
        {"customer_id": "NEW1", "name": "新客户", "owner_userid": "rep_a", "industry": None}]})
    assert (result.kinds["customers"].new, result.kinds["customers"].changed) == (1, 2)
    with engine.connect() as connection:
        rows = {row.customer_id: row for row in connection.execute(text(
            "SELECT customer_id, name, industry FROM customers WHERE customer_id IN ('STAR1', 'QM1', 'NEW1')"))}
    assert rows["STAR1"].industry == "新行业"
    assert (rows["QM1"].name, rows["QM1"].industry) == ("新名字", before["QM1"])
    assert rows["NEW1"].industry is None
    # A new customer without a yes/no field another item has: no, as in a file with a blank cell.
    run_import(engine, [], records={"customers": [
        {"customer_id": "NEW4", "name": "甲", "owner_userid": "rep_a", "is_listed": True},
        {"customer_id": "NEW5", "name": "乙", "owner_userid": "rep_a"}]})
    with engine.connect() as connection:
        listed = dict(connection.execute(text(
            "SELECT customer_id, is_listed FROM customers WHERE customer_id IN ('NEW4', 'NEW5')")).all())
    assert {key: bool(value) for key, value in listed.items()} == {"NEW4": True, "NEW5": False}
    # A required field an item for a new row leaves out is its missing value, not the text "nan";
    # one sent as null is missing for any row.
    problems = _import_fails(engine, [], records={"customers": [
        {"customer_id": "NEW2", "name": "甲", "owner_userid": "rep_a"}, {"customer_id": "NEW3", "owner_userid": "rep_a"},
        {"customer_id": "QM1", "name": None}]})
    assert problems == ["<customers>:2: name: missing value (the item is for a new customer: it needs one)",
                        "<customers>:3: name: missing value"]
    # An item for a stored customer may send only what changes: here its owner, in a batch
    # where no item has a name.
    result = run_import(engine, [], records={"customers": [{"customer_id": "QM1", "owner_userid": "rep_b"}]})
    assert (result.kinds["customers"].new, result.kinds["customers"].changed) == (0, 1)
    assert _import_fails(engine, [], records={"customers": [{"customer_id": "NEW6", "owner_userid": "rep_b"}]}) == [
        "<customers>:1: name: missing value (the item is for a new customer: it needs one)"]
    with engine.connect() as connection:
        owner, name = connection.execute(text("SELECT owner_userid, name FROM customers WHERE customer_id = 'QM1'")).one()
    assert (owner, name) == ("rep_b", "新名字")
    # Ids keep every digit, next to an item without one.
    problems = _import_fails(engine, [], records={"orders": [
        {"order_id": 9007199254740993, "customer_id": "STAR1", "order_date": "2026-11-01", "amount": 5},
        {"customer_id": "STAR1", "order_date": "2026-11-02", "amount": 6}]})
    assert problems == ["<orders>:2: order_id: missing value"]
    run_import(engine, [], records={"orders": [
        {"order_id": 9007199254740993, "customer_id": "STAR1", "order_date": "2026-11-01", "amount": 5},
        {"order_id": "X2", "customer_id": "STAR1", "order_date": "2026-11-02", "amount": 6, "cost": 1}]})
    with engine.connect() as connection:
        ids = set(connection.execute(text("SELECT order_id FROM orders WHERE customer_id = 'STAR1'")).scalars())
        costs = dict(connection.execute(text("SELECT order_id, cost FROM orders WHERE order_id IN "
                                             "('9007199254740993', 'X2')")).all())
    assert "9007199254740993" in ids and "nan" not in ids
    assert costs == {"9007199254740993": None, "X2": 1.0}


def test_an_agent_given_a_queue_the_config_lacks_is_warned_of(engine):
    result = run_import(engine, [], known_queues={"standard", "expert"}, records={"users": [
        {"userid": "agent_1", "name": "客服一", "role": "agent", "queues": "standard|standrad"},
        {"userid": "agent_2", "name": "客服二", "role": "agent", "queues": "expert"}]})
    assert result.kinds["users"].new == 2
    assert result.warnings == ["users: queue 'standrad' (agent_1) is not one of tickets.queues (expert, standard): "
                               "no ticket reaches it"]


def test_modules_outside_the_catalogue_are_warned_of_and_a_customer_created_in_the_future_is_refused(engine):
    users = {"users": [{"userid": "rep_x", "name": "销售", "role": "rep"}]}
    result = run_import(engine, [], known_modules=("mes", "crm"), records={**users, "customers": [
        {"customer_id": "M1", "name": "甲", "owner_userid": "rep_x", "modules_owned": "MES|nosuch"},
        {"customer_id": "M2", "name": "乙", "owner_userid": "rep_x", "modules_owned": "crm"}]})
    assert result.warnings == ["customers: module 'nosuch' (M1) is not one of scoring.value_matrix.module_catalogue "
                               "(crm, mes): it counts for nothing in cross-selling"]
    problems = _import_fails(engine, [], records={"customers": [
        {"customer_id": "M3", "name": "丙", "owner_userid": "rep_x", "created_at": "2099-01-01"}]})
    assert problems == ["<customers>:1: created_at: in the future: '2099-01-01'"]


def test_the_visible_sheet_is_read_and_zero_width_characters_do_not_make_new_ids(engine, tmp_path):
    book = Workbook()
    old = book.active
    old.title = "旧数据"
    old.append(USERS_HEADER)
    old.append(["old_rep", "旧人", "rep", "", "", ""])
    old.sheet_state = "hidden"
    current = book.create_sheet("用户")
    current.append(USERS_HEADER)
    for row in USERS:
        current.append(row)
    book.active = 1
    book.save(tmp_path / "users.xlsx")
    run_import(engine, [tmp_path / "users.xlsx"])
    run_import(engine, [], records={"users": [{"userid": "rep_a\u200b", "name": "张三", "role": "rep"}]})
    with engine.connect() as connection:
        userids = sorted(connection.execute(select(User.userid)).scalars())
    assert userids == sorted(row[0] for row in USERS)


def _write_xlsx(path, rows: list[list]) -> None:
    """One sheet of `rows` (the header among them), as write_csv writes a CSV."""
    book = Workbook()
    for row in rows:
        book.active.append(row)
    book.save(path)


def _shrink_dimension(path: Path, ref: str) -> None:
    """Rewrites the first sheet's <dimension> tag, as some exporters write it wrong."""
    import re
    import zipfile

    with zipfile.ZipFile(path) as source:
        members = {info: source.read(info.filename) for info in source.infolist()}
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as target:
        for info, data in members.items():
            if info.filename == "xl/worksheets/sheet1.xml":
                data, count = re.subn(rb'<dimension ref="[^"]*"', f'<dimension ref="{ref}"'.encode(), data)
                assert count == 1
            target.writestr(info, data)


def test_an_xlsx_with_a_wrong_dimension_tag_loses_no_rows(engine, tmp_path):
    _write_xlsx(tmp_path / "users.xlsx", [USERS_HEADER, *USERS])
    _shrink_dimension(tmp_path / "users.xlsx", "A1:C2")

    result = run_import(engine, [tmp_path / "users.xlsx"])

    assert result.kinds["users"].new == len(USERS)
    with engine.connect() as connection:
        managers = dict(connection.execute(select(User.userid, User.manager_userid)).all())
    assert managers["rep_b"] == "boss"  # column D, outside the tag's A:C


def test_a_value_under_a_blank_header_is_warned_of(engine, tmp_path):
    write_csv(tmp_path / "csv" / "users.csv", [*USERS_HEADER, ""],
              [[*USERS[0], ""], [*USERS[1], ""], [*USERS[2], "备注：大客户"], [*USERS[3], ""]])
    result = run_import(engine, [tmp_path / "csv"])
    assert result.warnings == [f"{tmp_path / 'csv' / 'users.csv'}:4: column G has a value ('备注：大客户') but no "
                               "header: that column is ignored (give it a header to import it)"]

    _write_xlsx(tmp_path / "users.xlsx",
                [USERS_HEADER, *([*row, None, "x"] if row[0] == "boss" else row for row in USERS)])
    result = run_import(engine, [tmp_path / "users.xlsx"])
    assert result.warnings == [f"{tmp_path / 'users.xlsx'}:3: column H has a value ('x') but no header: that "
                               "column is ignored (give it a header to import it)"]
    assert result.kinds["users"].unchanged == len(USERS)


def test_a_month_or_a_mistyped_year_is_not_a_date_and_amounts_round_half_up(engine, tmp_path):
    write_csv(tmp_path / "bad" / "users.csv", USERS_HEADER, USERS)
    write_csv(tmp_path / "bad" / "customers.csv", ["customer_id", "name", "owner_userid"], [["K1", "华东机械", "rep_a"]])
    write_csv(tmp_path / "bad" / "orders.csv", ORDERS_HEADER[:4],
              [["D1", "K1", "2026-03", "100"], ["D2", "K1", "0026-03-05", "100"], ["D3", "K1", "2026-03-05", "100"]])
    orders = tmp_path / "bad" / "orders.csv"
    assert _import_fails(engine, [tmp_path / "bad"]) == [
        f"{orders}:2: order_date: not a date (expected YYYY-MM-DD): '2026-03'",
        f"{orders}:3: order_date: a year before 1900 (a typo?): '0026-03-05'"]
    assert _count(engine, Customer) == 0

    write_csv(orders, ORDERS_HEADER[:4], [["D1", "K1", "1926-03-05", "1234.565"], ["D2", "K1", "2026-03-05", "1.005"],
                                          ["D3", "K1", "2026-03-06", "-2.675"], ["D4", "K1", "2026-03-07", "0.29"]])
    run_import(engine, [tmp_path / "bad"])
    with engine.connect() as connection:
        amounts = connection.execute(select(Order.amount).order_by(Order.order_id)).scalars().all()
    assert amounts == [1234.57, 1.01, -2.68, 0.29]


def test_a_users_language_is_read_in_either_language_and_kept_by_a_file_without_the_column(engine, tmp_path):
    users = tmp_path / "users.csv"
    users.write_text("用户ID,姓名,角色,语言\nrep_x,Alex,销售,英文\nrep_y,李四,销售,\n", encoding="utf-8")
    run_import(engine, [users])
    problems = _import_fails(engine, [], records={"users": [{"userid": "rep_y", "language": "法语"}]})
    assert problems == ["<users>:1: language: must be one of zh, en: '法语'"]
    users.write_text("用户ID,姓名,角色\nrep_x,Alex Wang,销售\n", encoding="utf-8")
    run_import(engine, [users])
    with engine.connect() as connection:
        chosen = dict(connection.execute(text("SELECT userid, language FROM users")).all())
    assert chosen == {"rep_x": "en", "rep_y": None}


def test_userids_are_matched_as_wecom_does_whatever_their_case(engine, tmp_path):
    run_import(engine, [], records={"users": [{"userid": "zhangsan", "name": "张三", "role": "rep"}]})
    # A CRM that capitalises: the customer is zhangsan's, and the users row updates zhangsan.
    run_import(engine, [], records={
        "users": [{"userid": "ZhangSan", "name": "张三丰", "role": "manager"},
                  {"userid": "lisi", "name": "李四", "role": "rep", "manager_userid": "ZHANGSAN"}],
        "customers": [{"customer_id": "C1", "name": "甲公司", "owner_userid": "LiSi"}]})
    with engine.connect() as connection:
        users = connection.execute(text("SELECT userid, name, manager_userid FROM users ORDER BY userid")).all()
        owner = connection.execute(text("SELECT owner_userid FROM customers WHERE customer_id = 'C1'")).scalar_one()
    assert [tuple(user) for user in users] == [("lisi", "李四", "zhangsan"), ("zhangsan", "张三丰", None)]
    assert owner == "lisi"
    problems = _import_fails(engine, [], records={"users": [{"userid": "WangWu", "name": "王五", "role": "rep"},
                                                            {"userid": "wangwu", "name": "王五", "role": "rep"}]})
    assert problems == ["<users>:2: userid: 'wangwu' is the same WeCom UserID as 'WangWu' (item 1): "
                        "UserIDs ignore case"]
    # Bound to fail on something else: the case of a UserID is still no problem of its own.
    problems = _import_fails(engine, [], records={
        "users": [{"userid": "zhaoliu", "name": "赵六", "role": "rep"}],
        "customers": [{"customer_id": "C2", "name": "乙公司", "owner_userid": "ZhaoLiu", "employees": "many"}]})
    assert [problem.split(": ")[1] for problem in problems] == ["employees"]
