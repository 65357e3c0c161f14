"""Triage priority from findings, by configurable ordered rules.

The rules live in a documented JSON file (default: ``pipelines/findings/priority_rules.json``,
read its ``description``). :func:`evaluate_priority` is pure: findings (the
``findings.json`` dict, or a record with ``to_dict``) and rules in, ``(priority, reasons)`` out.
:class:`Priority` is the one list of levels and their order. This module imports no findings
record: the record imports :class:`Priority` from here.
"""
from __future__ import annotations

import logging
import operator
import os
from enum import StrEnum
from pathlib import Path
from typing import Any, Callable, Mapping, Protocol, Sequence

from ictus.imaging.errors import InvalidInputError
from ictus.imaging.rules import read_rules_json

log = logging.getLogger(__name__)


class Priority(StrEnum):
    """Triage priority, declared from most to least pressing (indeterminate last: no confident answer)."""

    CRITICAL = "critical"
    URGENT = "urgent"
    ROUTINE = "routine"
    INDETERMINATE = "indeterminate"

    @property
    def rank(self) -> int:
        """0 for the most pressing (critical), growing towards indeterminate."""
        return list(Priority).index(self)

    def at_least(self, threshold: "Priority | str") -> bool:
        """Whether this priority is as pressing as ``threshold`` or more (indeterminate never is)."""
        return self is not Priority.INDETERMINATE and self.rank <= Priority(threshold).rank


PRIORITIES: tuple[str, ...] = tuple(p.value for p in Priority)
DEFAULT_RULES_PATH = Path(__file__).with_name("priority_rules.json")
RULES_SCHEMA = "ictus-priority-rules/1"

_MISSING = object()


def _contains(a: Any, b: Any) -> bool:
    return isinstance(a, (list, tuple, str)) and b in a


def _in(a: Any, b: Any) -> bool:
    return isinstance(b, (list, tuple)) and a in b


def _ordered(fn: Callable[[Any, Any], bool]) -> Callable[[Any, Any], bool]:
    def compare(a: Any, b: Any) -> bool:
        if isinstance(a, bool) or not isinstance(a, (int, float)):
            return False
        return fn(a, b)

    return compare


OPS: Mapping[str, Callable[[Any, Any], bool]] = {
    "==": operator.eq,
    "!=": operator.ne,
    ">=": _ordered(operator.ge),
    ">": _ordered(operator.gt),
    "<=": _ordered(operator.le),
    "<": _ordered(operator.lt),
    "in": _in,
    "contains": _contains,
}


def validate_rules(rules: Mapping[str, Any]) -> Mapping[str, Any]:
    """The rules themselves, or InvalidInputError naming what is wrong."""
    def bad(msg: str) -> InvalidInputError:
        return InvalidInputError(f"priority rules: {msg}; see the description in {DEFAULT_RULES_PATH.name}")

    if not isinstance(rules, Mapping) or not isinstance(rules.get("rules"), list):
        raise bad("expected an object with a 'rules' list")
    if rules.get("default", Priority.ROUTINE) not in PRIORITIES:
        raise bad(f"default {rules.get('default')!r} is not one of {', '.join(PRIORITIES)}")
    for i, rule in enumerate(rules["rules"]):
        if not isinstance(rule, Mapping):
            raise bad(f"rule {i} is not an object")
        if rule.get("priority") not in PRIORITIES:
            raise bad(f"rule {i} has priority {rule.get('priority')!r}, not one of {', '.join(PRIORITIES)}")
        conditions = rule.get("any", rule.get("all"))
        if ("any" in rule) == ("all" in rule) or not isinstance(conditions, list) or not conditions:
            raise bad(f"rule {i} needs exactly one non-empty 'any' or 'all' list of conditions")
        for j, cond in enumerate(conditions):
            if not isinstance(cond, Mapping) or not isinstance(cond.get("field"), str) or "value" not in cond:
                raise bad(f"rule {i} condition {j} needs 'field' (a dotted path) and 'value'")
            if cond.get("op", "==") not in OPS:
                raise bad(f"rule {i} condition {j} has op {cond.get('op')!r}, not one of {', '.join(OPS)}")
    return rules


def load_rules(path: str | os.PathLike[str] | None = None) -> Mapping[str, Any]:
    """Read and validate a rules file (default: the packaged ``priority_rules.json``)."""
    return validate_rules(read_rules_json(path or DEFAULT_RULES_PATH, "priority rules"))


def get_field(findings: Mapping[str, Any], dotted: str) -> Any:
    """The value at a dotted path of a findings dict, or a sentinel when absent."""
    node: Any = findings
    for part in dotted.split("."):
        if isinstance(node, Mapping) and part in node:
            node = node[part]
        else:
            return _MISSING
    return node


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.1f}"
    if isinstance(value, (list, tuple)):
        return ", ".join(str(v) for v in value) or "none"
    return str(value)


class _SafeDict(dict):
    """Placeholders a reason template names but that do not exist stay as written."""

    def __missing__(self, key: str) -> str:
        return "{" + key + "}"


class JsonRecord(Protocol):
    """A record with a ``findings.json`` form (:class:`ictus.pipelines.findings.record.Findings`)."""

    def to_dict(self) -> dict[str, Any]: ...


def evaluate_priority(findings: Mapping[str, Any] | JsonRecord, rules: Mapping[str, Any] | None = None
                      ) -> tuple[Priority, tuple[str, ...]]:
    """``(priority, reasons)`` of findings under ordered rules (default: the packaged file).

    The rules are dotted paths into ``findings.json``: they are evaluated on its dict form
    (a record is converted with its ``to_dict``)."""
    rules = validate_rules(rules) if rules is not None else load_rules()
    f = findings if isinstance(findings, Mapping) else findings.to_dict()
    qc = f.get("qc") or {}
    context = {
        "flags": _fmt([d.get("name") for d in qc.get("details", []) if d.get("severity") == "indeterminate"]
                      or list(qc.get("flags", []))),
        "ich_volume": _fmt((f.get("ich") or {}).get("total_volume_ml")),
        "stroke_reason": _fmt((f.get("ischaemia") or {}).get("reason")),
        "aspects": ", ".join(f"{side} {score}" for side, score in ((f.get("ischaemia") or {}).get("aspects") or {}).items()),
    }
    for rule in rules["rules"]:
        conditions = rule.get("any", rule.get("all"))
        hits = []
        for cond in conditions:
            value = get_field(f, cond["field"])
            ok = value is not _MISSING and value is not None and bool(OPS[cond.get("op", "==")](value, cond["value"]))
            if ok:
                template = cond.get("reason") or f"{cond['field']} {cond.get('op', '==')} {cond['value']}"
                fields = _SafeDict(context, value=_fmt(value), threshold=_fmt(cond["value"]))
                hits.append(template.format_map(fields))
            elif "all" in rule:
                hits = []
                break
        if hits:
            return Priority(rule["priority"]), tuple(hits)
    return Priority(rules.get("default", Priority.ROUTINE)), ()


def priorities() -> Sequence[str]:
    """The priority levels, most to least pressing (indeterminate last)."""
    return PRIORITIES
