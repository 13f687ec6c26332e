"""The few SQL spellings that differ between SQLite and PostgreSQL."""

from __future__ import annotations


def month_of(dialect: str, column: str) -> str:
    """The first day of the column's calendar month, as a DATE."""
    if dialect == "postgresql":
        return f"CAST(date_trunc('month', {column}) AS DATE)"
    return f"date({column}, 'start of month')"


def null_safe_differs(dialect: str, left: str, right: str, columns: list[str]) -> str:
    """SQL that is true when any column differs between two row aliases, NULLs included."""
    if not columns:
        return "false"
    operator = "IS DISTINCT FROM" if dialect == "postgresql" else "IS NOT"
    return " OR ".join(f"{left}.{c} {operator} {right}.{c}" for c in columns)
