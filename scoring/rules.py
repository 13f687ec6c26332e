"""Business rules written in config: conditions over customer features that set or
override a label, add a tag or raise intent (the "rule engine" of DOMAIN.md, e.g.
"LTV > X and industry = 高端制造 → Star").

    rules:
      - name: big manufacturers
        when: ltv > 1000000 and industry == "高端制造"
        then: {set_label: {value_matrix: star}, add_tags: [重点客户], raise_intent: high}

Pure, like the rest of `scoring/`: `compile_rules` checks every rule when the config
loads (against the fields a rule may use and the labels each model may give) and
`apply_rules` evaluates the compiled rules on whole columns, DataFrames in and out.

Safety: a condition is parsed with `ast.parse(..., mode="eval")` – parsing runs
nothing – and the tree is then checked node by node against the small grammar below;
anything else is refused. The checked tree is translated into objects of this module
that evaluate with pandas/numpy operations. Config text never reaches eval/exec/compile.

Grammar of `when`
-----------------
=======================  ======================================================
condition                ``a and b``, ``a or b``, ``not a``, ``( … )``, a
                         comparison, a helper, a bool field, ``true``/``false``
comparison               ``== != < <= > >=`` between a field and a literal or two
                         fields of the same type; chains: ``1000 < ltv <= 5000``
                         (``< <= > >=`` only for number and date fields)
membership               ``field in [lit, …]``, ``field not in (lit, …)``: the
                         right side a list/tuple literal of literals of the
                         field's type (``[]`` matches nobody)
helpers                  ``contains(f, "x")``, ``startswith(f, "x")``,
                         ``endswith(f, "x")`` for text fields (plain substring,
                         case-sensitive); ``missing(f)`` for any field
literals                 numbers (``1000000``, ``1_000_000``, ``1e6``, ``-0.2``),
                         strings in straight quotes (``"高端制造"``, ``'x'``),
                         ``true``/``false`` (also ``True``/``False``); a date is a
                         string in ISO form compared with a date field:
                         ``created_at >= "2024-01-01"``
unary minus              on number literals and number fields
=======================  ======================================================

A condition may span several lines (YAML block text); the lines are joined with
spaces before parsing. Error columns count characters (Chinese ones included) from
the first non-blank character.

Not accepted (each refused with the rule named): ``=`` (use ``==``), ``&&``/``&``,
``||``/``|``, ``!``, ``is``, ``None`` (use ``missing(f)``), ``yes``/``no`` (use
``true``/``false``), arithmetic and ``**``, attribute access, subscripts, any other
call, lambdas, comprehensions, f-strings, ``:=``, conditional expressions. Types are
checked: a number field compared with text, a text field with a number, ``<`` on text
or bool, a bare number field used as a condition – all config errors.

Missing values
--------------
A comparison, membership test or text helper with a missing operand (NaN, None, NaT)
is *unknown*, and ``and``/``or``/``not`` follow three-valued (SQL/Kleene) logic: a
rule fires only where its condition is definitely true. So a missing value never
makes a rule fire, and ``not (x == 1)`` means exactly ``x != 1`` (both skip customers
whose x is missing). ``false and unknown`` is false, ``true or unknown`` true. Test
for missing values explicitly with ``missing(x)`` / ``not missing(x)``.

Applying rules
--------------
Enabled rules apply in the order written. ``set_label`` sets each named model's label;
a later rule overrides an earlier one for the same model. ``add_tags`` accumulate
(unique, in order of first appearance). ``raise_intent`` only raises the "intent"
column (none < low < medium < high, the levels of scoring.intent; a missing or
unrecognised current intent counts as none); it never lowers it. Disabled rules are still checked at load time (a typo
should not wait until someone enables the rule) but never applied.
"""

from __future__ import annotations

import ast
import difflib
import io
import math
import operator
import tokenize
import unicodedata
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from functools import cached_property
from typing import Any

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict

FIELD_TYPES = ("number", "text", "bool", "date")
# as scoring.intent: "none" is a level a rule cannot raise to
INTENT_LEVELS = ("none", "low", "medium", "high")
RAISABLE_INTENT = INTENT_LEVELS[1:]
INTENT_COLUMN = "intent"
MAX_CONDITION_LENGTH = 2000
MAX_CONDITION_NODES = 400
TEXT_HELPERS = ("contains", "startswith", "endswith")
HELPERS = TEXT_HELPERS + ("missing",)
BOOL_NAMES = {"true": True, "false": False}


# --------------------------------------------------------------------------- config


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RuleAction(_Strict):
    set_label: dict[str, str] | None = None  # model name → label, e.g. {"value_matrix": "star"}
    add_tags: list[str] = []
    raise_intent: str | None = None  # "low" | "medium" | "high"; only ever raises


class BusinessRule(_Strict):
    name: str
    when: str
    then: RuleAction
    enabled: bool = True


class RulesParams(_Strict):
    rules: list[BusinessRule] = []


# --------------------------------------------------------------------------- errors


@dataclass(frozen=True)
class RuleProblem:
    index: int
    rule_name: str
    message: str
    column: int | None = None  # 1-based character column in `when`, when the problem is there

    def __str__(self) -> str:
        where = f" at column {self.column}" if self.column is not None else ""
        return f'rules[{self.index}] "{self.rule_name}": {self.message}{where}'


class RuleError(ValueError):
    """A rule in config is wrong. `rule_name`, `message`, `index`, `column` describe the
    first problem; `problems` (strings) and `details` (RuleProblem) list all of them."""

    def __init__(self, rule_name: str, message: str, *, index: int | None = None, column: int | None = None,
                 details: Sequence[RuleProblem] | None = None) -> None:
        self.rule_name = rule_name
        self.message = message
        self.index = index
        self.column = column
        if details is None:
            details = [RuleProblem(index if index is not None else -1, rule_name, message, column)]
        self.details = list(details)
        self.problems = [str(problem) for problem in self.details]
        super().__init__("\n".join(self.problems))


class _ExprError(Exception):
    def __init__(self, message: str, node: ast.AST | None = None, column: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.node = node
        self.column = column


def _did_you_mean(word: str, choices: Collection[str]) -> str | None:
    choices = list(choices)
    by_case = [choice for choice in choices if choice.lower() == word.lower()]
    if by_case:
        return by_case[0]
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    return close[0] if close else None


def _listing(values: Collection[str]) -> list[str]:
    return sorted(values) if isinstance(values, (set, frozenset)) else list(values)


# --------------------------------------------------------------------------- compiled condition
# Value nodes evaluate to (values, known): values a numpy array / Series / scalar, known a
# numpy bool array or None (a literal is always known). Condition nodes evaluate to
# (true, false): two numpy bool arrays; where neither is set the condition is unknown.


class _Columns:
    """Feature columns converted once per apply, by declared type."""

    def __init__(self, features: pd.DataFrame, fields: Mapping[str, str]) -> None:
        self.features = features
        self.fields = fields
        self.size = len(features)
        self._cache: dict[str, tuple[Any, np.ndarray]] = {}

    def get(self, name: str) -> tuple[Any, np.ndarray]:
        if name not in self._cache:
            self._cache[name] = self._convert(name, self.fields[name])
        return self._cache[name]

    def _convert(self, name: str, kind: str) -> tuple[Any, np.ndarray]:
        series = self.features[name]
        known = series.notna().to_numpy(dtype=bool)
        try:
            if kind == "number":
                if pd.api.types.is_bool_dtype(series.dtype):
                    raise TypeError("true/false is not a number")
                return series.to_numpy(dtype=float, na_value=np.nan), known
            if kind == "bool":
                values = pd.array(series, dtype="boolean").to_numpy(dtype=bool, na_value=False)
                return values, known
            if kind == "date":
                if not pd.api.types.is_datetime64_any_dtype(series.dtype):
                    series = pd.to_datetime(series, errors="raise")
                return series, known
            if not pd.api.types.is_string_dtype(series.dtype) or isinstance(series.dtype, pd.CategoricalDtype):
                series = series.astype("str").where(pd.Series(known, index=series.index))
            return series, known
        except (TypeError, ValueError) as error:
            raise ValueError(f"feature {name!r} is declared {kind}, but its {series.dtype} values cannot be read"
                             f" as {kind}: {error}") from error


def _as_bool(result: Any, size: int) -> np.ndarray:
    if isinstance(result, pd.Series):
        return result.to_numpy(dtype=bool, na_value=False)
    array = np.asarray(result, dtype=bool)
    return np.broadcast_to(array, (size,)) if array.ndim == 0 else array


def _match_tz(series_like: Any, constant: Any) -> Any:
    """A naive date literal compared with a timezone-aware column is read in that zone."""
    if isinstance(constant, pd.Timestamp) and isinstance(series_like, pd.Series):
        tz = getattr(series_like.dt, "tz", None)
        if tz is not None and constant.tzinfo is None:
            return constant.tz_localize(tz)
    return constant


@dataclass(frozen=True)
class _Literal:
    value: Any
    type: str

    def evaluate(self, columns: _Columns) -> tuple[Any, None]:
        return self.value, None

    @property
    def fields(self) -> frozenset[str]:
        return frozenset()


@dataclass(frozen=True)
class _Field:
    name: str
    type: str

    def evaluate(self, columns: _Columns) -> tuple[Any, np.ndarray]:
        return columns.get(self.name)

    @property
    def fields(self) -> frozenset[str]:
        return frozenset({self.name})


@dataclass(frozen=True)
class _Negative:
    operand: _Field
    type: str = "number"

    def evaluate(self, columns: _Columns) -> tuple[Any, np.ndarray]:
        values, known = self.operand.evaluate(columns)
        return -values, known

    @property
    def fields(self) -> frozenset[str]:
        return self.operand.fields


_COMPARE = {ast.Eq: operator.eq, ast.NotEq: operator.ne, ast.Lt: operator.lt, ast.LtE: operator.le,
            ast.Gt: operator.gt, ast.GtE: operator.ge}
_COMPARE_TEXT = {ast.Eq: "==", ast.NotEq: "!=", ast.Lt: "<", ast.LtE: "<=", ast.Gt: ">", ast.GtE: ">="}


@dataclass(frozen=True)
class _Comparison:
    op: Any
    left: Any
    right: Any

    def evaluate(self, columns: _Columns) -> tuple[np.ndarray, np.ndarray]:
        left, left_known = self.left.evaluate(columns)
        right, right_known = self.right.evaluate(columns)
        left, right = _match_tz(right, left), _match_tz(left, right)
        known = np.ones(columns.size, dtype=bool)
        for mask in (left_known, right_known):
            if mask is not None:
                known &= mask
        result = _as_bool(self.op(left, right), columns.size)
        true = result & known
        return true, known & ~true

    @property
    def fields(self) -> frozenset[str]:
        return self.left.fields | self.right.fields


@dataclass(frozen=True)
class _Membership:
    operand: Any
    values: tuple
    negate: bool

    def evaluate(self, columns: _Columns) -> tuple[np.ndarray, np.ndarray]:
        values, known = self.operand.evaluate(columns)
        if isinstance(values, pd.Series):
            choices = [_match_tz(values, value) for value in self.values]
            found = values.isin(choices).to_numpy(dtype=bool, na_value=False)
        else:
            found = np.isin(values, np.asarray(self.values, dtype=values.dtype)) if self.values else \
                np.zeros(columns.size, dtype=bool)
        if self.negate:
            found = ~found
        true = found & known
        return true, known & ~true

    @property
    def fields(self) -> frozenset[str]:
        return self.operand.fields


@dataclass(frozen=True)
class _TextHelper:
    helper: str
    operand: _Field
    text: str

    def evaluate(self, columns: _Columns) -> tuple[np.ndarray, np.ndarray]:
        values, known = self.operand.evaluate(columns)
        if self.helper == "contains":
            result = values.str.contains(self.text, regex=False)
        elif self.helper == "startswith":
            result = values.str.startswith(self.text)
        else:
            result = values.str.endswith(self.text)
        true = _as_bool(result, columns.size) & known
        return true, known & ~true

    @property
    def fields(self) -> frozenset[str]:
        return self.operand.fields


@dataclass(frozen=True)
class _Missing:
    operand: _Field

    def evaluate(self, columns: _Columns) -> tuple[np.ndarray, np.ndarray]:
        _, known = self.operand.evaluate(columns)
        return ~known, known.copy()

    @property
    def fields(self) -> frozenset[str]:
        return self.operand.fields


@dataclass(frozen=True)
class _BoolField:
    operand: _Field

    def evaluate(self, columns: _Columns) -> tuple[np.ndarray, np.ndarray]:
        values, known = self.operand.evaluate(columns)
        true = values & known
        return true, known & ~true

    @property
    def fields(self) -> frozenset[str]:
        return self.operand.fields


@dataclass(frozen=True)
class _Constant:
    value: bool

    def evaluate(self, columns: _Columns) -> tuple[np.ndarray, np.ndarray]:
        full = np.full(columns.size, self.value, dtype=bool)
        return full, ~full

    @property
    def fields(self) -> frozenset[str]:
        return frozenset()


@dataclass(frozen=True)
class _Not:
    operand: Any

    def evaluate(self, columns: _Columns) -> tuple[np.ndarray, np.ndarray]:
        true, false = self.operand.evaluate(columns)
        return false, true

    @property
    def fields(self) -> frozenset[str]:
        return self.operand.fields


@dataclass(frozen=True)
class _And:
    operands: tuple

    def evaluate(self, columns: _Columns) -> tuple[np.ndarray, np.ndarray]:
        true, false = self.operands[0].evaluate(columns)
        true, false = true.copy(), false.copy()
        for operand in self.operands[1:]:
            other_true, other_false = operand.evaluate(columns)
            true &= other_true
            false |= other_false
        return true, false

    @property
    def fields(self) -> frozenset[str]:
        return frozenset().union(*(operand.fields for operand in self.operands))


@dataclass(frozen=True)
class _Or:
    operands: tuple

    def evaluate(self, columns: _Columns) -> tuple[np.ndarray, np.ndarray]:
        true, false = self.operands[0].evaluate(columns)
        true, false = true.copy(), false.copy()
        for operand in self.operands[1:]:
            other_true, other_false = operand.evaluate(columns)
            true |= other_true
            false &= other_false
        return true, false

    @property
    def fields(self) -> frozenset[str]:
        return frozenset().union(*(operand.fields for operand in self.operands))


# --------------------------------------------------------------------------- checking a condition

_FORBIDDEN = {
    ast.Attribute: "attribute access is not allowed",
    ast.Subscript: "subscripts (x[...]) are not allowed",
    ast.Lambda: "lambda is not allowed",
    ast.JoinedStr: "f-strings are not allowed",
    ast.FormattedValue: "f-strings are not allowed",
    ast.NamedExpr: "':=' is not allowed (use == to compare)",
    ast.ListComp: "comprehensions are not allowed",
    ast.SetComp: "comprehensions are not allowed",
    ast.DictComp: "comprehensions are not allowed",
    ast.GeneratorExp: "comprehensions are not allowed",
    ast.IfExp: "'… if … else …' is not allowed (use and / or)",
    ast.Dict: "a dict is not allowed",
    ast.Starred: "'*' is not allowed",
    ast.Await: "await is not allowed",
    ast.Yield: "yield is not allowed",
    ast.YieldFrom: "yield is not allowed",
    ast.Slice: "slices are not allowed",
}
_BINOP_HINTS = {ast.Pow: "'**' is not allowed", ast.BitAnd: "'&' is not allowed (use and)",
                ast.BitOr: "'|' is not allowed (use or)", ast.BitXor: "'^' is not allowed",
                ast.MatMult: "'@' is not allowed", ast.LShift: "'<<' is not allowed", ast.RShift: "'>>' is not allowed"}


class _Checker:
    def __init__(self, source: str, fields: Mapping[str, str]) -> None:
        self.source = source
        self.fields = fields
        self._encoded = source.encode("utf-8")

    # positions in the AST are UTF-8 byte offsets; errors report 1-based characters
    def column(self, node: ast.AST | None) -> int | None:
        offset = getattr(node, "col_offset", None)
        if offset is None:
            return None
        return len(self._encoded[:offset].decode("utf-8", errors="ignore")) + 1

    def text(self, node: ast.AST) -> str:
        """The node as the user wrote it."""
        return ast.get_source_segment(self.source, node) or ast.unparse(node)

    def fail(self, message: str, node: ast.AST | None) -> _ExprError:
        return _ExprError(message, node, self.column(node))

    def forbidden(self, node: ast.AST) -> _ExprError:
        if isinstance(node, ast.Attribute):
            return self.fail(f"attribute access '.{node.attr}' is not allowed", node)
        if isinstance(node, ast.Call):
            return self.bad_call(node)
        if isinstance(node, ast.BinOp):
            hint = _BINOP_HINTS.get(type(node.op), "arithmetic is not allowed (compare fields with literals)")
            return self.fail(hint, node)
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Invert):
            return self.fail("'~' is not allowed (use not)", node)
        if isinstance(node, (ast.List, ast.Tuple, ast.Set)):
            return self.fail("a list is only allowed on the right of 'in' / 'not in'", node)
        message = _FORBIDDEN.get(type(node), f"{type(node).__name__} is not allowed here")
        return self.fail(message, node)

    def bad_call(self, node: ast.Call) -> _ExprError:
        allowed = ", ".join(HELPERS)
        if isinstance(node.func, ast.Attribute):
            return self.fail(f"method calls ('.{node.func.attr}(…)') are not allowed; functions allowed: {allowed}"
                             f" (e.g. startswith(industry, \"高端\"))", node)
        if isinstance(node.func, ast.Name):
            return self.fail(f"calling '{node.func.id}' is not allowed; functions allowed: {allowed}", node)
        return self.fail(f"this call is not allowed; functions allowed: {allowed}", node)

    def unknown_name(self, node: ast.Name) -> _ExprError:
        name = node.id
        if name.lower() in ("yes", "no", "on", "off"):
            return self.fail(f"unknown field '{name}' (write true or false for yes/no)", node)
        if name in ("null", "none", "nan", "NaN", "NA"):
            return self.fail(f"unknown field '{name}' (test for a missing value with missing(field))", node)
        if name in ("AND", "OR", "NOT", "And", "Or", "Not"):
            return self.fail(f"unknown field '{name}' (write '{name.lower()}' in lower case)", node)
        guess = _did_you_mean(name, self.fields)
        # No close spelling: the fields themselves, rather than a search of the source.
        hint = f" (did you mean '{guess}'?)" if guess else f" (fields: {', '.join(sorted(self.fields))})"
        return self.fail(f"unknown field '{name}'{hint}", node)

    # -- conditions

    def condition(self, node: ast.AST) -> Any:
        if isinstance(node, ast.BoolOp):
            operands = tuple(self.condition(value) for value in node.values)
            return _And(operands) if isinstance(node.op, ast.And) else _Or(operands)
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
            return _Not(self.condition(node.operand))
        if isinstance(node, ast.Compare):
            return self.comparison(node)
        if isinstance(node, ast.Call):
            return self.helper(node)
        if isinstance(node, ast.Constant) and isinstance(node.value, bool):
            return _Constant(node.value)
        if isinstance(node, ast.Name):
            if node.id in BOOL_NAMES:
                return _Constant(BOOL_NAMES[node.id])
            if node.id not in self.fields:
                raise self.unknown_name(node)
            kind = self.fields[node.id]
            if kind == "bool":
                return _BoolField(_Field(node.id, kind))
            example = {"number": f"{node.id} > 0", "text": f'{node.id} == "…"',
                       "date": f'{node.id} >= "2024-01-01"'}[kind]
            raise self.fail(f"'{node.id}' is a {kind} field, not a condition (compare it, e.g. {example})", node)
        if isinstance(node, ast.Constant) or (isinstance(node, ast.UnaryOp)
                                              and isinstance(node.op, (ast.USub, ast.UAdd))):
            self.value(node)  # refuses what is not even a value (None, bytes, …) with its own message
            raise self.fail(f"{self.text(node)} is not a condition (compare a field with it, e.g. ltv > 0)", node)
        raise self.forbidden(node)

    def helper(self, node: ast.Call) -> Any:
        if not isinstance(node.func, ast.Name) or node.func.id not in HELPERS:
            raise self.bad_call(node)
        name = node.func.id
        if node.keywords or any(isinstance(arg, ast.Starred) for arg in node.args):
            raise self.fail(f"{name}() takes plain arguments only", node)
        wanted = 1 if name == "missing" else 2
        usage = f"{name}(field)" if name == "missing" else f'{name}(field, "text")'
        if len(node.args) != wanted:
            raise self.fail(f"{name}() takes {wanted} argument{'s' if wanted > 1 else ''}: {usage}", node)
        target = node.args[0]
        if not isinstance(target, ast.Name):
            raise self.fail(f"the first argument of {name}() must be a field: {usage}", target)
        if target.id not in self.fields:
            raise self.unknown_name(target)
        kind = self.fields[target.id]
        operand = _Field(target.id, kind)
        if name == "missing":
            return _Missing(operand)
        if kind != "text":
            raise self.fail(f"{name}() works on text fields; '{target.id}' is a {kind} field", target)
        text = node.args[1]
        if not (isinstance(text, ast.Constant) and isinstance(text.value, str)):
            raise self.fail(f"the second argument of {name}() must be a string literal: {usage}", text)
        return _TextHelper(name, operand, text.value)

    def comparison(self, node: ast.Compare) -> Any:
        operands = [node.left, *node.comparators]
        for op in node.ops:
            if isinstance(op, (ast.Is, ast.IsNot)):
                raise self.fail("'is' is not allowed (use == / != , or missing(field) for missing values)", node)
        if len(node.ops) > 1 and any(isinstance(op, (ast.In, ast.NotIn)) for op in node.ops):
            raise self.fail("'in' / 'not in' cannot be chained with other comparisons (use and)", node)
        if isinstance(node.ops[0], (ast.In, ast.NotIn)):
            return self.membership(node.left, node.comparators[0], isinstance(node.ops[0], ast.NotIn))
        values = [self.value(operand) for operand in operands]
        parts = []
        for op, (left_node, left), (right_node, right) in zip(node.ops, zip(operands, values),
                                                              zip(operands[1:], values[1:])):
            parts.append(self.pair(op, left_node, left, right_node, right))
        return parts[0] if len(parts) == 1 else _And(tuple(parts))

    def pair(self, op: ast.cmpop, left_node: ast.AST, left: Any, right_node: ast.AST, right: Any) -> Any:
        symbol = _COMPARE_TEXT[type(op)]
        if isinstance(left, _Literal) and isinstance(right, _Literal):
            raise self.fail(f"'{self.text(left_node)} {symbol} {self.text(right_node)}' compares two literals;"
                            f" one side must be a field", left_node)
        field_node, field_value = (left_node, left) if not isinstance(left, _Literal) else (right_node, right)
        kind = field_value.type
        left = self.coerce(left, kind, left_node, field_node)
        right = self.coerce(right, kind, right_node, field_node)
        if symbol not in ("==", "!=") and kind in ("text", "bool"):
            raise self.fail(f"'{symbol}' cannot compare {kind} ('{self.text(field_node)}' is a {kind} field;"
                            f" use ==, !=, in{', contains()' if kind == 'text' else ''})", left_node)
        return _Comparison(_COMPARE[type(op)], left, right)

    def coerce(self, value: Any, kind: str, node: ast.AST, field_node: ast.AST) -> Any:
        """Check that a comparison operand is of the field's type; date strings become dates."""
        field_text = self.text(field_node)
        if value.type == kind and kind != "date":
            return value
        if kind == "date" and isinstance(value, _Literal) and value.type == "text":
            return _Literal(self.parse_date(value.value, node), "date")
        if kind == "date" and value.type == "date":
            return value
        shown = self.text(node)
        if isinstance(value, _Literal):
            advice = {"number": "a number", "text": 'a string in quotes, e.g. "高端制造"', "bool": "true or false",
                      "date": 'an ISO date string, e.g. "2024-01-31"'}[kind]
            raise self.fail(f"'{field_text}' is a {kind} field; it cannot be compared with the {value.type} "
                            f"{shown} (use {advice})", node)
        raise self.fail(f"'{field_text}' is a {kind} field and '{shown}' is a {value.type} field;"
                        f" they cannot be compared", node)

    def parse_date(self, text: str, node: ast.AST) -> pd.Timestamp:
        try:
            if len(text) == 10:
                return pd.Timestamp(date.fromisoformat(text))
            return pd.Timestamp(datetime.fromisoformat(text))
        except ValueError:
            raise self.fail(f"'{text}' is not a date (write it as \"YYYY-MM-DD\")", node) from None

    def membership(self, left_node: ast.AST, right_node: ast.AST, negate: bool) -> Any:
        word = "not in" if negate else "in"
        operand = self.value(left_node)
        if isinstance(operand, _Literal):
            hint = " (to search text use contains(field, \"…\"))" if operand.type == "text" else ""
            raise self.fail(f"the left side of '{word}' must be a field{hint}", left_node)
        if not isinstance(right_node, (ast.List, ast.Tuple, ast.Set)):
            raise self.fail(f"the right side of '{word}' must be a list of literals, e.g. "
                            f"{self.text(left_node)} {word} [\"a\", \"b\"]", right_node)
        kind = operand.type
        choices = []
        for element in right_node.elts:
            value = self.value(element) if not isinstance(element, ast.Starred) else None
            if not isinstance(value, _Literal):
                raise self.fail(f"the list after '{word}' may hold literals only", element)
            choices.append(self.coerce(value, kind, element, left_node).value)
        return _Membership(operand, tuple(choices), negate)

    # -- values (comparison operands)

    def value(self, node: ast.AST) -> Any:
        if isinstance(node, ast.Constant):
            constant = node.value
            if isinstance(constant, bool):
                return _Literal(constant, "bool")
            if isinstance(constant, (int, float)):
                if not math.isfinite(constant):
                    raise self.fail(f"{self.text(node)} is not a finite number", node)
                return _Literal(constant, "number")
            if isinstance(constant, str):
                return _Literal(constant, "text")
            if constant is None:
                raise self.fail("None is not allowed (test for a missing value with missing(field))", node)
            raise self.fail(f"the literal {self.text(node)} is not allowed (numbers, strings, true, false)", node)
        if isinstance(node, ast.Name):
            if node.id in BOOL_NAMES:
                return _Literal(BOOL_NAMES[node.id], "bool")
            if node.id not in self.fields:
                raise self.unknown_name(node)
            return _Field(node.id, self.fields[node.id])
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
            operand = self.value(node.operand)
            if operand.type != "number" or isinstance(operand, _Negative):
                raise self.fail(f"'{'-' if isinstance(node.op, ast.USub) else '+'}' applies to numbers only", node)
            if isinstance(node.op, ast.UAdd):
                return operand
            if isinstance(operand, _Literal):
                return _Literal(-operand.value, "number")
            return _Negative(operand)
        if isinstance(node, (ast.Compare, ast.BoolOp)) or (isinstance(node, ast.UnaryOp)
                                                            and isinstance(node.op, ast.Not)):
            raise self.fail("a condition cannot be compared; compare fields with literals and join with and/or",
                            node)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in HELPERS:
            raise self.fail(f"{node.func.id}() is a condition and cannot be compared", node)
        raise self.forbidden(node)


_ASCII_FOR = {"“": '"', "”": '"', "‘": "'", "’": "'", "「": '"', "」": '"'}


def _syntax_hint(source: str, error: SyntaxError) -> tuple[str, int | None]:
    """A friendlier message for the usual slips (=, &&, ||, !, <>, full-width punctuation)."""
    column = error.offset
    message = error.msg or "invalid syntax"
    if message.startswith("invalid character") and column and 0 < column <= len(source):
        char = source[column - 1]
        ascii_char = _ASCII_FOR.get(char) or unicodedata.normalize("NFKC", char)
        if ascii_char != char and ascii_char.isascii():
            return f"invalid character '{char}' (use the ASCII '{ascii_char}' instead)", column
    try:
        tokens = list(tokenize.generate_tokens(io.StringIO(source).readline))
    except (tokenize.TokenError, SyntaxError, IndentationError):
        tokens = []
    previous = None
    for token in tokens:
        text, col = token.string, token.start[1] + 1
        if token.type in (tokenize.OP, tokenize.ERRORTOKEN):
            if text == "=":
                return "operator '=' is not allowed here (use ==)", col
            if text == ">" and previous == "<":
                return "operator '<>' is not allowed here (use !=)", col - 1
            if text == "!":
                return "operator '!' is not allowed here (use not, or != to compare)", col
            if text == "&" and previous == "&":
                return "operator '&&' is not allowed here (use and)", col - 1
            if text == "|" and previous == "|":
                return "operator '||' is not allowed here (use or)", col - 1
        if token.type == tokenize.NAME and text in ("AND", "OR", "NOT", "And", "Or", "Not"):
            return f"'{text}' is not an operator (write '{text.lower()}' in lower case)", col
        previous = text
    return f"syntax error: {message}", column


def _count_nodes(tree: ast.AST) -> int:
    return sum(1 for node in ast.walk(tree) if isinstance(node, ast.expr))


def _check_condition(source: str, fields: Mapping[str, str]) -> Any:
    if not source.strip():
        raise _ExprError("the condition is empty (write e.g. ltv > 1000000, or true to match everyone)")
    if len(source) > MAX_CONDITION_LENGTH:
        raise _ExprError(f"the condition is longer than {MAX_CONDITION_LENGTH} characters")
    if "\n" in source.strip() or "\r" in source:
        source = " ".join(source.split())  # YAML folded text: lines join with spaces
    try:
        tree = ast.parse(source.strip(), mode="eval")
    except SyntaxError as error:
        message, column = _syntax_hint(source.strip(), error)
        raise _ExprError(message, column=column) from None
    except (ValueError, RecursionError, MemoryError) as error:  # null bytes, absurd nesting
        raise _ExprError(f"the condition cannot be read: {type(error).__name__}") from None
    if _count_nodes(tree) > MAX_CONDITION_NODES:
        raise _ExprError(f"the condition is too complex (over {MAX_CONDITION_NODES} parts); split the rule")
    checker = _Checker(source.strip(), fields)
    try:
        return checker.condition(tree.body)
    except RecursionError:
        raise _ExprError("the condition is nested too deeply") from None


# --------------------------------------------------------------------------- compile


@dataclass(frozen=True)
class CompiledRule:
    index: int
    name: str
    when: str
    condition: Any = field(repr=False)
    set_label: tuple[tuple[str, str], ...]
    add_tags: tuple[str, ...]
    raise_intent: str | None
    enabled: bool

    @property
    def fields(self) -> frozenset[str]:
        return self.condition.fields


@dataclass(frozen=True)
class CompiledRules:
    rules: tuple[CompiledRule, ...]
    fields: Mapping[str, str]
    labels: Mapping[str, tuple[str, ...]]

    @property
    def enabled(self) -> tuple[CompiledRule, ...]:
        return tuple(rule for rule in self.rules if rule.enabled)


def _check_mappings(fields: Mapping[str, str], labels: Mapping[str, Collection[str]]) -> None:
    for name, kind in fields.items():
        if kind not in FIELD_TYPES:
            raise ValueError(f"field {name!r} has type {kind!r}; expected one of {', '.join(FIELD_TYPES)}")
        if name in BOOL_NAMES:
            raise ValueError(f"field {name!r} clashes with the literal {name}")
    for model, allowed in labels.items():
        if isinstance(allowed, str):
            raise ValueError(f"labels of model {model!r} must be a collection of labels, not a string")


def _compile_one(index: int, rule: BusinessRule, fields: Mapping[str, str], labels: Mapping[str, Collection[str]],
                 actions_required: bool = True) -> tuple[CompiledRule | None, list[RuleProblem]]:
    problems: list[RuleProblem] = []
    name = rule.name

    def problem(message: str, column: int | None = None) -> None:
        problems.append(RuleProblem(index, name, message, column))

    if not name.strip():
        problem("the rule needs a name")
    condition = None
    try:
        condition = _check_condition(rule.when, fields)
    except _ExprError as error:
        problem(error.message, error.column)

    action = rule.then
    set_label = []
    for model, label in (action.set_label or {}).items():
        if model not in labels:
            guess = _did_you_mean(model, labels)
            hint = f"did you mean '{guess}'? " if guess else ""
            problem(f"set_label: unknown model '{model}' ({hint}models: {', '.join(_listing(labels))})")
            continue
        allowed = _listing(labels[model])
        if label not in allowed:
            guess = _did_you_mean(label, allowed)
            hint = f"; did you mean '{guess}'?" if guess else ""
            problem(f"label '{label}' is not a {model} label ({', '.join(allowed)}){hint}")
            continue
        set_label.append((model, label))
    tags = []
    for tag in action.add_tags:
        if not tag.strip():
            problem("add_tags: a tag is empty")
        elif tag not in tags:
            tags.append(tag)
    if action.raise_intent is not None and action.raise_intent not in RAISABLE_INTENT:
        guess = _did_you_mean(action.raise_intent, RAISABLE_INTENT)
        hint = f"; did you mean '{guess}'?" if guess else ""
        problem(f"raise_intent '{action.raise_intent}' is not one of {', '.join(RAISABLE_INTENT)}{hint}")
    if actions_required and not action.set_label and not action.add_tags and action.raise_intent is None:
        problem("the rule does nothing (then: needs set_label, add_tags or raise_intent)")
    if problems:
        return None, problems
    return CompiledRule(index, name, rule.when, condition, tuple(set_label), tuple(tags), action.raise_intent,
                        rule.enabled), []


def check_rules(params: RulesParams, fields: Mapping[str, str],
                labels: Mapping[str, Collection[str]]) -> list[str]:
    """Every problem of every rule, as messages naming the rule; [] when all is well."""
    try:
        compile_rules(params, fields, labels)
    except RuleError as error:
        return error.problems
    return []


def compile_rules(params: RulesParams, fields: Mapping[str, str],
                  labels: Mapping[str, Collection[str]], actions_required: bool = True) -> CompiledRules:
    """Check every rule (enabled or not) and compile the conditions.

    `actions_required=False` is for callers that only want to know where a condition
    holds (the playbook's task rules): a rule with an empty `then` is fine there.

    `fields`: the features a rule may use → "number" | "text" | "bool" | "date".
    `labels`: model name → the labels it may give. Raises RuleError carrying every
    problem of every rule (`.problems`), each naming the rule. A bad `fields`/`labels`
    argument is a programming error: ValueError."""
    _check_mappings(fields, labels)
    problems: list[RuleProblem] = []
    compiled: list[CompiledRule] = []
    seen: dict[str, int] = {}
    for index, rule in enumerate(params.rules):
        if rule.name in seen:
            problems.append(RuleProblem(index, rule.name, f"another rule has the same name (rules[{seen[rule.name]}])"))
        seen.setdefault(rule.name, index)
        result, found = _compile_one(index, rule, fields, labels, actions_required)
        problems.extend(found)
        if result is not None:
            compiled.append(result)
    if problems:
        first = problems[0]
        raise RuleError(first.rule_name, first.message, index=first.index, column=first.column, details=problems)
    frozen_labels = {model: tuple(_listing(allowed)) for model, allowed in labels.items()}
    return CompiledRules(tuple(compiled), dict(fields), frozen_labels)


# --------------------------------------------------------------------------- apply


@dataclass(frozen=True)
class RuleOutcome:
    labels: pd.DataFrame  # the input labels with the cells rules changed
    changed: pd.DataFrame  # bool, same shape: True where a rule changed the cell
    matched: pd.DataFrame  # bool, one column per enabled rule (by name)
    add_tags: tuple[tuple[str, ...], ...] = ()  # per enabled rule, in matched's column order

    # The per-customer lists are built on first use: a list per customer costs a tenth of a
    # second per 100k, and the playbook's task rules only ask which customers matched.
    @cached_property
    def tags(self) -> pd.Series:
        """list[str] per customer: the tags of the rules that matched, unique, in rule order."""
        return _lists_per_row(self.matched.to_numpy(), list(self.add_tags), self.matched.index)

    @cached_property
    def fired(self) -> pd.Series:
        """list[str] per customer: the names of the rules whose condition held, in order."""
        return _lists_per_row(self.matched.to_numpy(), [(name,) for name in self.matched.columns],
                              self.matched.index)

    def reasons(self) -> pd.Series:
        """Per customer: [{"factor": "rule", "value": rule name}, …] for the rules that fired."""
        return self.fired.map(lambda names: [{"factor": "rule", "value": name} for name in names])


def _row_patterns(matrix: np.ndarray) -> np.ndarray:
    """A code per row, equal for rows with equal bool patterns (62 columns per int64 key)."""
    keys = []
    for start in range(0, matrix.shape[1], 62):
        block = matrix[:, start:start + 62].astype(np.int64)
        keys.append(block @ (np.int64(1) << np.arange(block.shape[1], dtype=np.int64)))
    if len(keys) == 1:
        return pd.factorize(keys[0])[0]
    return pd.MultiIndex.from_arrays(keys).factorize()[0]


def _lists_per_row(matrix: np.ndarray, items: list[tuple[str, ...]], index: pd.Index) -> pd.Series:
    """For each row, the unique items of the true columns, in column order; computed once
    per distinct row pattern."""
    if matrix.shape[0] == 0:
        return pd.Series([], index=index, dtype=object)
    if matrix.shape[1] == 0:
        return pd.Series([[] for _ in range(matrix.shape[0])], index=index, dtype=object)
    codes = _row_patterns(matrix)
    first = np.zeros(codes.max() + 1, dtype=np.int64)
    first[codes[::-1]] = np.arange(len(codes) - 1, -1, -1)  # first row of each pattern
    per_pattern = []
    for pattern in matrix[first]:
        found: dict[str, None] = {}
        for column in np.flatnonzero(pattern):
            for item in items[column]:
                found.setdefault(item, None)
        per_pattern.append(list(found))
    return pd.Series([list(per_pattern[code]) for code in codes], index=index, dtype=object)


def _write_column(original: pd.Series, changed: np.ndarray, values: np.ndarray) -> pd.Series:
    positions = np.flatnonzero(changed)
    if positions.size == 0:
        return original
    result = original.copy()
    if isinstance(result.dtype, pd.CategoricalDtype):
        new = [value for value in dict.fromkeys(values[positions]) if value not in result.cat.categories]
        if new:
            result = result.cat.add_categories(new)
    try:
        result.iloc[positions] = values[positions]
    except (TypeError, ValueError):
        result = original.astype(object)
        result.iloc[positions] = values[positions]
    return result


def apply_rules(compiled: CompiledRules, features: pd.DataFrame, labels: pd.DataFrame) -> RuleOutcome:
    """Evaluate the enabled rules on every customer at once and apply them in order.

    `features`: one row per customer (index customer_id) with the fields the rules use.
    `labels`: the current labels, same customers, one column per model (+ "intent" when a
    rule raises intent). Only cells a rule changed differ in the result."""
    if not labels.index.is_unique or not features.index.is_unique:
        raise ValueError("features and labels need a unique customer index")
    if not features.index.equals(labels.index):
        if len(features.index) != len(labels.index) or not features.index.isin(labels.index).all():
            raise ValueError("features and labels must hold the same customers")
        features = features.reindex(labels.index)
    rules = compiled.enabled
    needed_fields = sorted(frozenset().union(*(rule.fields for rule in rules)))
    absent = [name for name in needed_fields if name not in features.columns]
    if absent:
        raise ValueError(f"features lack the column(s) {', '.join(absent)} used by the rules")
    needed_columns = sorted({model for rule in rules for model, _ in rule.set_label}
                            | ({INTENT_COLUMN} if any(rule.raise_intent for rule in rules) else set()))
    absent = [name for name in needed_columns if name not in labels.columns]
    if absent:
        raise ValueError(f"labels lack the column(s) {', '.join(absent)} the rules set")

    columns = _Columns(features, compiled.fields)
    size = len(labels)
    matched = np.zeros((size, len(rules)), dtype=bool)
    for position, rule in enumerate(rules):
        matched[:, position] = rule.condition.evaluate(columns)[0]

    originals = {name: labels[name].to_numpy(dtype=object) for name in needed_columns}
    working = {name: values.copy() for name, values in originals.items()}
    touched = {name: np.zeros(size, dtype=bool) for name in needed_columns}
    rank = {level: position for position, level in enumerate(INTENT_LEVELS)}
    if INTENT_COLUMN in needed_columns:  # missing or unrecognised intent ranks with "none"
        intent_rank = labels[INTENT_COLUMN].map(rank).to_numpy(dtype=float, na_value=np.nan)
        intent_rank = np.where(np.isnan(intent_rank), -1, intent_rank).astype(int)
    for position, rule in enumerate(rules):
        mask = matched[:, position]
        if not mask.any():
            continue
        for model, label in rule.set_label:
            working[model][mask] = label
            touched[model] |= mask
            if model == INTENT_COLUMN:
                intent_rank[mask] = rank.get(label, -1)
        if rule.raise_intent is not None:
            level = rank[rule.raise_intent]
            up = mask & (intent_rank < level)
            working[INTENT_COLUMN][up] = rule.raise_intent
            intent_rank[up] = level
            touched[INTENT_COLUMN] |= up

    result = labels.copy()
    changed = pd.DataFrame(False, index=labels.index, columns=labels.columns)
    for name in needed_columns:
        positions = np.flatnonzero(touched[name])
        known = labels[name].notna().to_numpy(dtype=bool)[positions]
        old, new = originals[name][positions], working[name][positions]
        differs = np.zeros(size, dtype=bool)
        differs[positions] = ~known | (old != new)
        if differs.any():
            result[name] = _write_column(labels[name], differs, working[name])
            changed[name] = differs

    names = [rule.name for rule in rules]
    return RuleOutcome(
        labels=result,
        changed=changed,
        matched=pd.DataFrame(matched, index=labels.index, columns=pd.Index(names, dtype=object)),
        add_tags=tuple(tuple(rule.add_tags) for rule in rules),
    )


def infer_fields(features: pd.DataFrame) -> dict[str, str]:
    """A `fields` mapping guessed from dtypes (number/text/bool/date); object columns count
    as text. Handy in tests and tools; production config should declare its fields."""
    result = {}
    for name, dtype in features.dtypes.items():
        if pd.api.types.is_bool_dtype(dtype):
            result[str(name)] = "bool"
        elif pd.api.types.is_numeric_dtype(dtype):
            result[str(name)] = "number"
        elif pd.api.types.is_datetime64_any_dtype(dtype):
            result[str(name)] = "date"
        else:
            result[str(name)] = "text"
    return result
