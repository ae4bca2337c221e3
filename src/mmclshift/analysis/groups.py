"""Claim groups: the runs one claim may read together.

A claim compares runs that differ only by the seed and by the axes the claim varies by design
(for the Figure 2 claims: the method, ``pi_core`` and ``pi_spu``). Runs of any other config
difference -- an InfoNCE run beside linear-loss runs, ``n_train`` 10,000 beside 20,000, the cells
of a sweep -- are never pooled: :func:`claim_groups` splits the collected table into groups that
agree on every other config key, each named by the keys that distinguish it from the other
groups of its kind (:attr:`Group.label`).

Runs moved aside by ``--force`` (``<name>.replaced-<time>``, :func:`mmclshift.runs.move_aside`)
are superseded and never read (:func:`drop_moved_aside`).

*Baseline runs* may join several groups: a run whose config matches ``wildcard`` (for example a
semi-synthetic SL-only run, whose training length and data size are the strengths of the
effective-robustness baseline) ignores those keys and joins every group it agrees with on the
others, without forming a group of its own (unless no other run is there to anchor one).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from mmclshift.analysis.collect import ROW_KEYS
from mmclshift.errors import UserError
from mmclshift.runs import MOVED_ASIDE, is_moved_aside

#: config keys that identify a run rather than the experiment (never distinguish groups)
SEED_KEYS = ("seed", "data_seed", "init_seed", "name", "device", "threads")


def drop_moved_aside(table: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """The table without rows of runs moved aside by ``--force``, and those runs."""
    if table.empty or "run" not in table.columns:
        return table, []
    aside = table["run"].astype(str).map(is_moved_aside)
    return table[~aside], sorted(set(table.loc[aside, "run"].astype(str)))


def config_columns(table: pd.DataFrame) -> list[str]:
    """The collected table's config columns (keys that vary among the collected runs)."""
    return [c for c in table.columns if c not in ROW_KEYS]


def _norm(v: Any) -> Any:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return None
    if hasattr(v, "item"):  # numpy scalars
        v = v.item()
    if isinstance(v, float) and v.is_integer():
        return int(v)
    return v


def config_signature(table: pd.DataFrame, run: str, drop: Sequence[str] = SEED_KEYS) -> str:
    """A run's config (its collected config columns but ``drop``) as one comparable string."""
    row = table[table["run"] == run].iloc[0]
    return json.dumps([_norm(row[c]) for c in config_columns(table) if c not in set(drop)], default=str)


def same_value(a: Any, b: Any) -> bool:
    """Whether two config values are equal as a group label compares them (1.0 == 1, NaN == None)."""
    return json.dumps(_norm(a), default=str) == json.dumps(_norm(b), default=str)


def format_label(label: dict[str, Any]) -> str:
    """``key=value, key=value`` (``all runs`` for an empty label)."""
    return ", ".join(f"{k}={_norm(v)}" for k, v in label.items()) or "all runs"


@dataclass
class Group:
    """The rows of one group; ``label``: the config keys that set it apart from its kind's other
    groups (empty when the kind has one group)."""

    table: pd.DataFrame
    label: dict[str, Any] = field(default_factory=dict)
    kind: str | None = None
    n_shared: int = 0  # baseline runs joined from the wildcard rule


Wildcard = Callable[[pd.Series], Sequence[str]]


def claim_groups(table: pd.DataFrame, kinds: Sequence[str], axes: Sequence[str],
                 wildcard: Wildcard | None = None) -> list[Group]:
    """Split the rows of ``kinds`` into groups that agree on every config key but ``axes``.

    ``wildcard(row)`` names keys a run may ignore to join a group (see the module doc). A table
    with no rows of ``kinds`` gives one empty group (the claim then says what is missing).
    """
    t = table[table["kind"].isin(list(kinds))] if "kind" in table.columns else table.iloc[0:0]
    if t.empty:
        return [Group(t)]
    cols = [c for c in config_columns(t) if c not in set(axes)]
    runs = t.drop_duplicates("run").set_index("run")
    values = {r: {c: _norm(row[c]) for c in cols} for r, row in runs.iterrows()}
    ignored = {r: set(wildcard(row)) & set(cols) if wildcard else set() for r, row in runs.iterrows()}
    anchors = [r for r in values if not ignored[r]] or list(values)

    def sig(r: str, drop: set[str] = frozenset()) -> str:  # type: ignore[assignment]
        return json.dumps([str(runs.at[r, "kind"])] + [values[r][c] for c in cols if c not in drop],
                          default=str)

    members: dict[str, list[str]] = {}
    for r in anchors:
        members.setdefault(sig(r), []).append(r)
    shared: dict[str, int] = {s: 0 for s in members}
    for r in values:
        if r in anchors:
            continue
        for s, ms in members.items():
            if sig(ms[0], ignored[r]) == sig(r, ignored[r]):
                ms.append(r)
                shared[s] += 1
    by_kind: dict[str, list[Group]] = {}
    for s, ms in members.items():
        kind = str(runs.at[ms[0], "kind"])
        same_kind = [m[0] for m in members.values() if str(runs.at[m[0], "kind"]) == kind]
        label = {c: values[ms[0]][c] for c in cols
                 if len({json.dumps(values[a][c], default=str) for a in same_kind}) > 1}
        by_kind.setdefault(kind, []).append(Group(t[t["run"].isin(ms)], label, kind, shared[s]))
    # a claim reading several kinds reads one group of each: every combination
    combos: list[Group] = [Group(t.iloc[0:0])]
    for kind in sorted(by_kind):
        combos = [_join(a, b, len(by_kind) > 1) for a in combos for b in by_kind[kind]]
    return combos


def _join(a: Group, b: Group, several_kinds: bool) -> Group:
    label = dict(a.label)
    for k, v in b.label.items():
        key = f"{b.kind}:{k}" if several_kinds and k in label and label[k] != v else k
        label[key] = v
    kind = b.kind if a.kind is None else f"{a.kind}+{b.kind}"
    return Group(pd.concat([a.table, b.table]) if not a.table.empty else b.table, label, kind,
                 a.n_shared + b.n_shared)


def parse_group_filter(items: Sequence[str]) -> dict[str, str]:
    """``KEY=VALUE`` strings -> {key: value}; one-line error for a malformed item."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UserError(f"--group {item!r}: expected KEY=VALUE (a config key, e.g. n_train=20000)")
        out[key.strip()] = value.strip()
    return out


def matches(label: dict[str, Any], wanted: dict[str, str]) -> bool:
    """Whether a group's label has every ``wanted`` key at the given value (compared as text)."""
    return all(k in label and str(_norm(label[k])) == v for k, v in wanted.items())


__all__ = ["MOVED_ASIDE", "SEED_KEYS", "Group", "claim_groups", "config_columns", "config_signature", "drop_moved_aside", "format_label",
           "matches", "parse_group_filter", "same_value"]
