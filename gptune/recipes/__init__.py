"""Reading recipes: YAML file < command-line flags < ``--set key=value`` on top of the dataclass
defaults of ``gptune.config``, into one validated ``Recipe``; and the recipes gptune ships.

The shipped recipes (``books``, ``finetune``, ``gpt1``) and Accelerate configs (``accelerate/ddp`` ...) are
package data in this folder, found with ``importlib.resources``: a recipe argument is a path when that file
exists, else the name of a shipped one (``books``, ``books.yaml`` and ``recipes/books.yaml`` all name it),
so an installed wheel works outside a checkout.

Every problem (unknown key with a "did you mean", wrong type, out-of-range value) is collected and
reported at once as a :class:`GptuneError`, one line each, naming the dotted key the user typed.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib.resources
import types
import typing
from pathlib import Path
from typing import Any, Literal, Union

import yaml

from gptune.config import Recipe
from gptune.errors import GptuneError


def type_name(tp) -> str:
    """How a field's type reads in messages and docs (``'cosine' | 'linear'``, ``int or null``)."""
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(type_name(a) for a in typing.get_args(tp))
    if origin is list:
        return f"a list of {type_name(typing.get_args(tp)[0])}"
    if tp is type(None):
        return "null"
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    return getattr(tp, "__name__", str(tp))


_NO = object()


def _coerce(value, tp):
    """Return ``value`` as type ``tp``, or ``_NO`` when it is not one (YAML ints pass as floats)."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin is Literal:
        choices = typing.get_args(tp)
        if isinstance(value, bool):  # YAML 1.1 reads an unquoted no/off/false (yes/on/true) as a bool
            value = next((c for c in (("yes", "on", "true") if value else ("no", "off", "false"))
                          if c in choices), value)
        return value if value in choices else _NO
    if origin in (Union, types.UnionType):
        for arg in typing.get_args(tp):
            out = _coerce(value, arg)
            if out is not _NO:
                return out
        return _NO
    if tp is type(None):
        return None if value is None else _NO
    if origin is list:
        (inner,) = typing.get_args(tp)
        if isinstance(value, str) and inner is str:
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list | tuple):
            return _NO
        out = [_coerce(v, inner) for v in value]
        return _NO if any(v is _NO for v in out) else out
    if origin is dict or tp is dict:
        return value if isinstance(value, dict) else _NO
    if tp is bool:
        return value if isinstance(value, bool) else _NO
    if tp is int:
        if isinstance(value, str):  # YAML 1.1 reads 2e9 (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                return _NO
        if isinstance(value, float) and value.is_integer():  # 2e9 tokens is a whole number
            return int(value)
        return value if isinstance(value, int) and not isinstance(value, bool) else _NO
    if tp is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads 3e-4 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                return _NO
        return _NO
    if tp is str:
        return value if isinstance(value, str) else (str(value) if isinstance(value, int | float) else _NO)
    return value


def _build(cls, raw: Any, prefix: str, problems: list[str]):
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        problems.append(f"{prefix.rstrip('.') or 'recipe'}: must be a mapping of keys, got {raw!r}")
        return cls()
    field_types = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in raw.items():
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1)
            hint = f" (did you mean {prefix}{close[0]}?)" if close else f" (known: {', '.join(names)})"
            problems.append(f"{prefix}{key}: unknown key{hint}")
            continue
        tp = field_types[key]
        if dataclasses.is_dataclass(tp):
            kwargs[key] = _build(tp, value, f"{prefix}{key}.", problems)
            continue
        out = _coerce(value, tp)
        if out is _NO:
            problems.append(f"{prefix}{key}: expected {type_name(tp)}, got {value!r}")
            continue
        kwargs[key] = out
    obj = cls(**kwargs)
    if hasattr(obj, "_checks"):
        for key, message in obj._checks():
            problems.append(f"{prefix}{key}: {message}")
    return obj


def parse_override(item: str) -> tuple[str, Any]:
    """``a.b=1`` -> (``a.b``, 1). Values are read as YAML scalars (``1e-4``, ``true``, ``null``, ``[a,b]``)."""
    if "=" not in item:
        raise GptuneError(f"--set {item}: expected key=value, e.g. --set train.max_steps=200")
    key, _, text = item.partition("=")
    try:
        value = yaml.safe_load(text) if text.strip() else ""
    except yaml.YAMLError:
        value = text
    # YAML 1.1 reads 6e-4 as a string; a float is meant.
    if isinstance(value, str):
        try:
            value = float(value) if any(c in value for c in ".eE") else value
        except ValueError:
            pass
    return key.strip(), value


def _set_dotted(raw: dict, key: str, value: Any) -> None:
    parts = key.split(".")
    node = raw
    for part in parts[:-1]:
        if not isinstance(node.get(part), dict):
            node[part] = {}
        node = node[part]
    node[parts[-1]] = value


# ----------------------------------------------------------------------------- shipped files

ACCELERATE = "accelerate"
"""The sub-folder of the shipped Accelerate configs."""


def _shipped_root() -> Path:
    return Path(str(importlib.resources.files(__name__)))


def shipped(kind: str = "recipe") -> dict[str, Path]:
    """Name -> file of the shipped recipes (``kind='recipe'``) or Accelerate configs (``'accelerate'``)."""
    folder = _shipped_root() / (ACCELERATE if kind == ACCELERATE else "")
    return {f.stem: f for f in sorted(folder.glob("*.yaml"))}


def purpose(path: Path) -> str:
    """The one-line purpose of a shipped file: its first comment line."""
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("#"):
            return line.lstrip("# ").strip()
    return ""


def shipped_name(arg: str | Path, kind: str = "recipe") -> str:
    """``recipes/books.yaml``, ``books.yaml``, ``books`` -> ``books``; ``recipes/accelerate/ddp.yaml``,
    ``accelerate/ddp``, ``ddp`` -> ``ddp`` (kind ``accelerate``)."""
    name = Path(str(arg)).as_posix()
    for suffix in (".yaml", ".yml"):
        name = name.removesuffix(suffix)
    for prefix in ("./", "recipes/", "gptune/recipes/", *((f"{ACCELERATE}/",) if kind == ACCELERATE else ())):
        name = name.removeprefix(prefix)
    return name


def resolve_shipped(arg: str | Path, kind: str = "recipe", what: str = "recipe") -> Path:
    """`arg` when that file (or run folder) exists, else the shipped file it names; else one error listing
    the shipped names."""
    p = Path(str(arg)).expanduser()
    if p.exists():
        return p
    known = shipped(kind)
    name = shipped_name(arg, kind)
    if name in known:
        return known[name]
    raise GptuneError(f"{what} {arg}: no such file, and not a shipped name (shipped: {', '.join(known)})")


def all_shipped() -> dict[str, Path]:
    """Every shipped file by the name ``recipes list`` shows: ``books`` ..., ``accelerate/ddp`` ..."""
    return {**shipped(), **{f"{ACCELERATE}/{n}": f for n, f in shipped(ACCELERATE).items()}}


def copy_shipped(name: str, dest: str | Path | None = None) -> Path:
    """``gptune recipes cp NAME [DEST]``: a shipped recipe or Accelerate config copied to edit. DEST is a
    file or a folder (default: ``./NAME.yaml``); an existing file is never replaced."""
    known = all_shipped()
    key = shipped_name(name)
    src = known.get(key) or shipped(ACCELERATE).get(shipped_name(name, ACCELERATE))
    if src is None:
        raise GptuneError(f"recipes cp {name}: not a shipped name (shipped: {', '.join(known)})")
    out = Path(dest) if dest is not None else Path(src.name)
    if out.is_dir():
        out = out / src.name
    if out.exists():
        raise GptuneError(f"recipes cp: {out} exists; pass another DEST or remove it")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(src.read_bytes())
    return out


# ----------------------------------------------------------------------------- reading


def read_recipe_file(path: str | Path) -> dict:
    """Read a recipe YAML file (a path, a run folder, or a shipped recipe's name) into a dict; errors
    name the file (and the line for syntax errors)."""
    p = resolve_shipped(path)
    if p.is_dir():
        cand = p / "recipe.yaml"
        if cand.exists():
            p = cand
        else:
            raise GptuneError(f"recipe {p}: is a folder without recipe.yaml")
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise GptuneError(f"recipe {p}: cannot read ({e})") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise GptuneError(f"recipe {p}:{where}: YAML syntax error: {problem}") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise GptuneError(f"recipe {p}: must be a mapping of sections (model, data, train, ...), got {type(raw).__name__}")
    return raw


def build_recipe(raw: dict | None = None, overrides: dict[str, Any] | None = None,
                 sets: list[str] | None = None, *, source: str = "") -> Recipe:
    """Defaults < ``raw`` (from YAML) < ``overrides`` (CLI flags, dotted keys) < ``sets`` (``--set k=v``)."""
    raw = _deep_copy(raw or {})
    for key, value in (overrides or {}).items():
        if value is not None:
            _set_dotted(raw, key, value)
    problems: list[str] = []
    for item in sets or []:
        try:
            key, value = parse_override(item)
        except GptuneError as e:
            problems.extend(e.problems)
            continue
        _set_dotted(raw, key, value)
    recipe = _build(Recipe, raw, "", problems)
    if problems:
        head = f"{source}: " if source else ""
        raise GptuneError(*[head + p for p in problems])
    return recipe


def load_recipe(path: str | Path | None, overrides: dict[str, Any] | None = None,
                sets: list[str] | None = None) -> Recipe:
    raw = read_recipe_file(path) if path else {}
    return build_recipe(raw, overrides, sets, source=str(path) if path else "")


def _deep_copy(obj):
    if isinstance(obj, dict):
        return {k: _deep_copy(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_deep_copy(v) for v in obj]
    return obj


def recipe_diff(a: dict, b: dict, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two recipe dicts."""
    out = []
    for key in sorted(set(a) | set(b)):
        va, vb = a.get(key, _NO), b.get(key, _NO)
        if isinstance(va, dict) and isinstance(vb, dict):
            out += recipe_diff(va, vb, f"{prefix}{key}.")
        elif va != vb:
            out.append(f"{prefix}{key}")
    return out
