"""A small hand-made company whose extreme customers have an obvious tier."""

from __future__ import annotations

from datetime import date, timedelta
from pathlib import Path

from tests.conftest import write_csv

AS_OF = date(2026, 11, 20)

USERS_HEADER = ["userid", "name", "role", "manager_userid", "team", "queues"]
CUSTOMERS_HEADER = ["customer_id", "name", "owner_userid", "industry", "region", "employees", "customer_type",
                    "is_listed", "is_benchmark", "is_partner", "digital_maturity", "expansion_plan",
                    "modules_owned", "created_at"]
ORDERS_HEADER = ["order_id", "customer_id", "order_date", "amount", "cost", "product_line", "kind"]

USERS = [
    ["admin", "管理员", "admin", "", "", ""],
    ["boss", "王总", "manager", "", "华东", ""],
    ["rep_a", "张三", "rep", "boss", "华东一组", ""],
    ["rep_b", "李四", "rep", "boss", "华东二组", ""],
]

EXTREMES = {
    # customer_id: (name, owner, industry, employees, listed, benchmark, partner, maturity, plan, modules)
    "STAR1": ("星辰半导体股份有限公司", "rep_a", "半导体", 20000, "true", "true", "false", 5, "ipo", "finance"),
    "COW1": ("老牌纺织集团有限公司", "rep_a", "纺织服装", 3000, "false", "false", "false", 2, "",
             "finance|crm|mes|plm|scm|hr|bi|wms"),
    "QM1": ("新锐新能源科技有限公司", "rep_b", "新能源", 800, "false", "false", "true", 4, "financing", ""),
    "DOG1": ("街角建材商行", "rep_b", "建材", 12, "false", "false", "false", 1, "",
             "finance|crm|mes|plm|scm|hr|bi|wms"),
}
FILLERS = 24


def _monthly(customer_id: str, start: date, months: int, amount_of, margin: float, kinds) -> list[list]:
    rows = []
    for i in range(months):
        day = date(start.year + (start.month - 1 + i) // 12, (start.month - 1 + i) % 12 + 1, 15)
        if day > AS_OF:
            break
        amount = round(amount_of(i), 2)
        rows.append([f"{customer_id}-O{i:03d}", customer_id, day.isoformat(), f"{amount:.2f}",
                     f"{amount * (1 - margin):.2f}", "mes", kinds(i)])
    return rows


def company_rows() -> dict[str, list[list]]:
    customers, orders = [], []
    for customer_id, (name, owner, industry, employees, listed, bench, partner, maturity, plan, modules) in EXTREMES.items():
        customers.append([customer_id, name, owner, industry, "华东", employees, "end_user", listed, bench, partner,
                          maturity, plan, modules, "2022-01-10"])
    start = date(2023, 12, 1)
    # Star: large and growing fast, renewals and upsells, high margin.
    orders += _monthly("STAR1", start, 36, lambda i: 100_000 * (1.08 ** i), 0.7,
                       lambda i: "new" if i == 0 else "upsell")
    # Cash cow: large and flat, renewals.
    orders += _monthly("COW1", start, 36, lambda i: 500_000, 0.65, lambda i: "new" if i == 0 else "renewal")
    # Question mark: one small recent order.
    orders.append(["QM1-O000", "QM1", (AS_OF - timedelta(days=40)).isoformat(), "20000.00", "12000.00", "crm", "new"])
    # Dog: one tiny order long ago.
    orders.append(["DOG1-O000", "DOG1", "2024-03-02", "800.00", "700.00", "service", "service"])
    for n in range(FILLERS):
        customer_id = f"F{n:03d}"
        customers.append([customer_id, f"普通客户{n:03d}有限公司", "rep_a" if n % 2 else "rep_b", "物流", "华南",
                          200 + 10 * n, "dealer", "false", "false", "false", 3, "", "finance|crm", "2023-05-01"])
        orders += _monthly(customer_id, date(2024, 1, 1), 35, lambda i, n=n: 3_000 + 500 * n, 0.4,
                           lambda i: "new" if i == 0 else "renewal")
    return {"users": USERS, "customers": customers, "orders": orders}


def write_company(folder: Path) -> Path:
    rows = company_rows()
    write_csv(folder / "users.csv", USERS_HEADER, rows["users"])
    write_csv(folder / "customers.csv", CUSTOMERS_HEADER, rows["customers"])
    write_csv(folder / "orders.csv", ORDERS_HEADER, rows["orders"])
    return folder
