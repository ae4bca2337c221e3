"""Typed experiment configs: YAML files, ``key=value`` overrides and one-line validation errors.

Every experiment config is a tree of dataclasses. Fields carry their constraints in
``dataclasses.field(metadata=...)`` (see :func:`param`), and :func:`from_dict` builds the tree
from plain data, rejecting unknown keys, values of the wrong type and values out of range with a
:class:`ConfigError` whose message is one line naming the dotted key.

The experiment *kind* (``kind:`` at the top of a YAML file) selects the root dataclass from an
explicit registry passed in by the caller, so this module knows nothing about any tier.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar, Union, get_args, get_origin

import yaml

from mmclshift.errors import UserError

T = TypeVar("T")


class ConfigError(UserError, ValueError):
    """A bad config: the message is a single line naming the file and/or the key."""


class YAMLSyntaxError(ConfigError):
    """Text that is not valid YAML (as opposed to valid YAML over a limit)."""


# --------------------------------------------------------------------------- constraints


Check = Callable[[Any], str | None]


def positive(v: Any) -> str | None:
    return None if v > 0 else "must be > 0"


def nonnegative(v: Any) -> str | None:
    return None if v >= 0 else "must be >= 0"


def probability(v: Any) -> str | None:
    return None if 0.0 <= v <= 1.0 else "must be a probability in [0, 1]"


def at_least(lo: float) -> Check:
    def check(v: Any) -> str | None:
        return None if v >= lo else f"must be >= {lo}"

    return check


_PATH_PART = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.@+=,-]*$")


def path_part(v: Any) -> str | None:
    """Names that become file or folder names: letters, digits and ``_.@+=,-``, no leading dot."""
    if isinstance(v, str) and _PATH_PART.match(v) and len(v) <= 200:
        return None
    return ("must be usable as a file name (letters, digits, '_.@+=,-'; not starting with '.' "
            "or '-'; no '/')")


def each(check: Check) -> Check:
    """Apply ``check`` to every element of a list-valued field."""

    def check_all(v: Any) -> str | None:
        for i, item in enumerate(v):
            msg = check(item)
            if msg:
                return f"element {i} ({item!r}) {msg}"
        return None

    return check_all


def param(default: Any = dataclasses.MISSING, *, help: str = "", check: Check | None = None,
          default_factory: Any = dataclasses.MISSING) -> Any:
    """A dataclass field with a help string and an optional range check."""
    meta = {"help": help, "check": check}
    if default_factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


# --------------------------------------------------------------------------- conversion


def _type_name(tp: Any) -> str:
    if get_origin(tp) is Literal:
        return "one of " + ", ".join(repr(a) for a in get_args(tp))
    if isinstance(tp, type):
        return tp.__name__
    return str(tp).replace("typing.", "")


def _convert(value: Any, tp: Any, key: str) -> Any:
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:  # the first member that takes the value; none: name them all
            if arg is type(None):
                continue
            try:
                return _convert(value, arg, key)
            except ConfigError:
                continue
        raise ConfigError(f"config key '{key}': expected {_type_name(tp)}, got {value!r}")
    if origin is Literal:
        choices = get_args(tp)
        if value not in choices:
            raise ConfigError(
                f"config key '{key}': must be one of {', '.join(map(repr, choices))}; got {value!r}"
            )
        return value
    if origin in (list, Sequence, tuple):
        if not isinstance(value, list | tuple):
            raise ConfigError(f"config key '{key}': expected a list, got {value!r}")
        args = get_args(tp)
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(args) != len(value):
                raise ConfigError(
                    f"config key '{key}': expected {len(args)} values, got {len(value)}"
                )
            return tuple(_convert(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(args, value, strict=True)))
        item_tp = args[0] if args else Any
        out = [_convert(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(out) if origin is tuple else out
    if origin is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"config key '{key}': expected a mapping, got {value!r}")
        return dict(value)
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, Mapping):
            raise ConfigError(f"config key '{key}': expected a mapping of sub-keys, got {value!r}")
        return from_dict(tp, value, prefix=f"{key}.")
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"config key '{key}': expected true/false, got {value!r}")
    if tp is int:
        value = _number_from_text(value)
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                value = int(value)
            else:
                raise ConfigError(f"config key '{key}': expected an integer, got {value!r}")
        if not INT64[0] <= value <= INT64[1]:
            raise ConfigError(f"config key '{key}': must be a 64-bit integer (at most 2^63 - 1 in "
                              f"size); got {value}")
        return value
    if tp is float:
        value = _number_from_text(value)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"config key '{key}': expected a number, got {value!r}")
        value = float(value)
        if not math.isfinite(value):
            raise ConfigError(f"config key '{key}': must be a finite number; got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"config key '{key}': expected a string, got {value!r}")
        return value
    if isinstance(tp, type) and isinstance(value, tp):
        return value
    raise ConfigError(f"config key '{key}': expected {_type_name(tp)}, got {value!r}")


INT64 = (-(2**63), 2**63 - 1)
#: seeds go to Python's, NumPy's and torch's generators: all accept this range
SEED_RANGE = (0, 2**63 - 1)


def _is_seed(name: str) -> bool:
    return name in ("seed", "seeds") or name.endswith("_seed")


def _implicit_check(name: str, tp: Any, value: Any) -> str | None:
    """Checks every config field gets from its type and name, besides its own ``check``.

    Seeds (``seed``, ``*_seed``, ``seeds``) must lie in :data:`SEED_RANGE`; a list of plain
    values (names, splits, methods, grid values, seeds) must be non-empty and list each value
    once (a split listed twice would be evaluated and stored twice).
    """
    if value is None:
        return None
    items = value if isinstance(value, list | tuple) else [value]
    if _is_seed(name) and all(isinstance(v, int) for v in items):
        for v in items:
            if not SEED_RANGE[0] <= v <= SEED_RANGE[1]:
                return f"a seed must be in [0, 2^63 - 1]; got {v}"
    origin = get_origin(tp)
    if origin in (list, Sequence) and isinstance(value, list):
        args = get_args(tp)
        item = args[0] if args else Any
        if item in (str, int, float) or get_origin(item) is Literal:
            if not value:
                return "must list at least one value"
            seen: set[Any] = set()
            for v in value:
                if v in seen:
                    return f"{v!r} is listed twice (each value may appear once)"
                seen.add(v)
    return None


_NUMBER = re.compile(r"^\s*[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?\s*$")


def _number_from_text(value: Any) -> Any:
    """A number written as text that YAML 1.1 leaves a string (``5e-1``, ``1e3``) -> its value."""
    if isinstance(value, str) and _NUMBER.match(value):
        return float(value)
    return value


def from_dict(cls: type[T], data: Mapping[str, Any] | None, *, prefix: str = "") -> T:
    """Build dataclass ``cls`` from ``data``; unknown keys and bad values raise ConfigError."""
    data = dict(data or {})
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(
            f"unknown config key '{prefix}{unknown[0]}' (known keys under "
            f"'{prefix.rstrip('.') or '<root>'}': {', '.join(sorted(fields))})"
        )
    kwargs: dict[str, Any] = {}
    for name, f in fields.items():
        key = f"{prefix}{name}"
        if name in data:
            value = _convert(data[name], hints[name], key)
        elif f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING:
            continue
        else:
            raise ConfigError(f"missing required config key '{key}'")
        msg = _implicit_check(name, hints[name], value)
        if msg:
            raise ConfigError(f"config key '{key}': {msg}")
        check = f.metadata.get("check")
        if check is not None and value is not None:
            msg = check(value)
            if msg:
                raise ConfigError(f"config key '{key}': {msg}; got {value!r}")
        kwargs[name] = value
    obj = cls(**kwargs)
    validate = getattr(obj, "validate", None)
    if callable(validate):
        try:
            validate()
        except ConfigError as exc:
            msg = str(exc)
            # cross-field checks name keys relative to this dataclass; make them absolute
            if prefix and "config key '" in msg:
                msg = msg.replace("config key '", f"config key '{prefix}")
            raise ConfigError(msg) from None
    return obj


def to_dict(obj: Any) -> Any:
    """Plain-data view of a config tree (tuples become lists), safe for YAML and JSON."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, list | tuple):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


# --------------------------------------------------------------------------- overrides


def parse_override(text: str) -> tuple[list[str], Any]:
    """``a.b.c=value`` -> (['a', 'b', 'c'], parsed value). Values are parsed as YAML scalars."""
    if "=" not in text:
        raise ConfigError(f"override '{text}' is not of the form key=value")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override '{text}' has an empty key")
    try:
        value = load_yaml_text(raw, f"override '{text}'") if raw.strip() else ""
    except YAMLSyntaxError:
        value = raw
    return key.split("."), value


def set_by_path(data: dict[str, Any], path: Sequence[str], value: Any, *, what: str = "") -> None:
    """Set ``data[path[0]][path[1]]... = value``, creating sections as needed."""
    node = data
    for i, part in enumerate(path[:-1]):
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        elif not isinstance(child, dict):
            raise ConfigError(
                f"config key '{'.'.join(path[: i + 1])}' is a value, not a section{what}"
            )
        node = child
    node[path[-1]] = value


def apply_overrides(data: Mapping[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Return a copy of ``data`` with each ``key=value`` override set (nested keys by dots).

    Keys are not checked here; :func:`from_dict` rejects unknown ones with the full dotted key.
    """
    out = _deepcopy(data)
    for text in overrides:
        path, value = parse_override(text)
        set_by_path(out, path, value, what=f" (override '{text}')")
    return out


def _deepcopy(data: Any) -> Any:
    if isinstance(data, Mapping):
        return {k: _deepcopy(v) for k, v in data.items()}
    if isinstance(data, list):
        return [_deepcopy(v) for v in data]
    return data


# --------------------------------------------------------------------------- files


# --------------------------------------------------------------------------- limits

#: bounds on what one request may ask for, checked before any work: name -> (variable, default)
LIMITS: dict[str, tuple[str, int]] = {
    "yaml_nodes": ("MMCLSHIFT_MAX_YAML_NODES", 100_000),   # values in one YAML file, aliases expanded
    "yaml_depth": ("MMCLSHIFT_MAX_YAML_DEPTH", 50),        # nesting of lists and mappings
    "map_points": ("MMCLSHIFT_MAX_MAP_POINTS", 10_000),    # theory-map grid points
    "sweep_jobs": ("MMCLSHIFT_MAX_SWEEP_JOBS", 10_000),    # jobs one sweep file expands to
}


def limit(name: str) -> int:
    """The bound :data:`LIMITS` names, raised by its environment variable if set."""
    var, default = LIMITS[name]
    text = os.environ.get(var, "").strip()
    if not text:
        return default
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise ConfigError(f"environment variable {var}: must be a positive integer; got {text!r}")
    return value


def limit_error(name: str, what: str) -> ConfigError:
    """``what`` exceeds limit ``name``: a one-line error saying the limit and how to raise it."""
    var, _ = LIMITS[name]
    return ConfigError(f"{what}: over the limit of {limit(name):,} (raise it with {var}=N)")


# --------------------------------------------------------------------------- files


def _yaml_loader(source: str) -> type:
    """A safe YAML loader that refuses duplicate keys and nesting beyond the depth limit."""
    max_depth = limit("yaml_depth")

    class Loader(yaml.SafeLoader):
        depth = 0

        def compose_node(self, parent: Any, index: Any) -> Any:
            self.depth += 1
            if self.depth > max_depth:
                mark = self.peek_event().start_mark
                raise limit_error("yaml_depth", f"{source}:{mark.line + 1}: lists and mappings "
                                  f"nested more than {max_depth} deep")
            try:
                return super().compose_node(parent, index)
            finally:
                self.depth -= 1

        def construct_mapping(self, node: Any, deep: bool = False) -> Any:
            if isinstance(node, yaml.MappingNode):
                seen: set[Any] = set()
                for key_node, _ in node.value:
                    if key_node.tag == "tag:yaml.org,2002:merge":
                        continue
                    key = self.construct_object(key_node, deep=True)
                    try:
                        dup = key in seen
                        seen.add(key)
                    except TypeError:  # an unhashable key: the constructor refuses it below
                        continue
                    if dup:
                        raise ConfigError(f"{source}:{key_node.start_mark.line + 1}: duplicate key "
                                          f"{key!r} (each key may appear once in a mapping)")
            return super().construct_mapping(node, deep=deep)

    return Loader


def _expanded_size(root: Any, source: str) -> int:
    """Number of values in the composed YAML tree with every alias expanded (cycles refused)."""
    cap = limit("yaml_nodes")
    sizes: dict[int, int] = {}
    active: set[int] = set()

    def size(node: Any) -> int:
        key = id(node)
        if key in sizes:
            return sizes[key]
        if key in active:
            raise ConfigError(f"{source}:{node.start_mark.line + 1}: an alias refers to a value "
                              "that contains it (a recursive alias)")
        active.add(key)
        total = 1
        if isinstance(node, yaml.SequenceNode):
            total += sum(size(child) for child in node.value)
        elif isinstance(node, yaml.MappingNode):
            total += sum(size(k) + size(v) for k, v in node.value)
        total = min(total, cap + 1)  # enough to tell "over the limit"; keeps the numbers small
        active.discard(key)
        sizes[key] = total
        return total

    return size(root)


def load_yaml_text(data: str | bytes, source: str = "<yaml>") -> Any:
    """Parse one YAML document safely: UTF-8 only, no duplicate keys, bounded nesting and alias
    expansion (:data:`LIMITS`); every failure a one-line :class:`ConfigError` naming ``source``."""
    if isinstance(data, bytes):
        try:
            data = data.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            raise ConfigError(f"{source}: not UTF-8 text (byte {exc.start}); save it as UTF-8") from None
    loader = None
    try:
        loader = _yaml_loader(source)(data)  # reading the text: refuses control characters
        node = loader.get_single_node()
        if node is None:
            return None
        if _expanded_size(node, source) > limit("yaml_nodes"):
            raise limit_error("yaml_nodes", f"{source}: too many values once aliases are expanded")
        return loader.construct_document(node)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = f"{source}:{mark.line + 1}" if mark is not None else source
        raise YAMLSyntaxError(f"{where}: invalid YAML: {exc.problem}") from None
    except yaml.YAMLError as exc:
        raise YAMLSyntaxError(f"{source}: invalid YAML: {exc}") from None
    except RecursionError:
        raise limit_error("yaml_depth", f"{source}: nested too deep") from None
    finally:
        if loader is not None:
            loader.dispose()


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping; syntax errors name the file and line (see :func:`load_yaml_text`)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the config file ({exc.strerror or exc})") from None
    data = load_yaml_text(raw, str(path))
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping of config keys")
    return data


def build_config(
    data: Mapping[str, Any],
    registry: Mapping[str, type],
    *,
    source: str = "<config>",
    default_kind: str | None = None,
) -> Any:
    """Validate plain config data against the dataclass its ``kind`` names in ``registry``."""
    data = dict(data)
    kind = data.get("kind", default_kind)
    if kind is None:
        raise ConfigError(f"{source}: missing config key 'kind' (one of {', '.join(sorted(registry))})")
    if kind not in registry:
        raise ConfigError(
            f"{source}: config key 'kind' must be one of {', '.join(sorted(registry))}; got {kind!r}"
        )
    data["kind"] = kind
    try:
        return from_dict(registry[kind], data)
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None


def load_config(
    path: str | Path,
    overrides: Sequence[str],
    registry: Mapping[str, type],
) -> Any:
    """Read ``path``, apply ``key=value`` overrides, and validate against ``registry``.

    The registry of experiment kinds is the caller's (``mmclshift.experiments.load_config``
    passes the built-in one): this module knows no experiment layer.
    """
    data = apply_overrides(read_yaml(path), overrides)
    return build_config(data, registry, source=str(path))


def dump_yaml(obj: Any) -> str:
    # libyaml's emitter when present: the same text as safe_dump, ~3x faster (one per run)
    return yaml.dump(to_dict(obj), Dumper=getattr(yaml, "CSafeDumper", yaml.SafeDumper), sort_keys=False)


def replace(cfg: T, **changes: Any) -> T:
    """Dotted-key replace that re-validates: ``replace(cfg, **{"data.pi_core": 0.5})``."""
    data = to_dict(cfg)
    for key, value in changes.items():
        set_by_path(data, key.split("."), to_dict(value))
    return from_dict(type(cfg), data)
