"""Config plumbing: frozen dataclasses per stage, one TOML file for a whole run, flags override.

Each stage module defines its own `XConfig` (e.g. `impsamp.embedding.EmbedConfig`); this module
turns a TOML section plus the flags a user typed into one of them, with errors that name the key.

    [embed]
    max_tokens = 128
    [cluster]
    k = 1024
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import os
import re
import sys
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from .errors import ConfigError

T = TypeVar("T")


def from_dict(cls: type[T], data: Mapping[str, Any], *, source: str = "config") -> T:
    """Build `cls` from a mapping, refusing unknown keys with the list of valid ones."""
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"{source}: unknown key(s) {unknown} for {cls.__name__}; valid keys: {sorted(names)}")
    data = _check_types(cls, data, source)
    try:
        return cls(**data)
    except TypeError as e:
        raise ConfigError(f"{source}: {e}") from e


def _check_types(cls: type, data: Mapping[str, Any], source: str) -> dict[str, Any]:
    """`check_fields`' check on a TOML section or the flags, naming the file and section (or "flags")."""
    return {key: _fitted(cls, key, value, source) for key, value in data.items()}


_TYPE_NAMES = {int: "an integer", float: "a number", str: "a string", bool: "true or false", list: "a list",
               tuple: "a list", dict: "a table"}


def _plain_types(hint: Any) -> tuple[type, ...] | None:
    """The plain types a hint allows; None where it is anything else (left to the class to check)."""
    args = typing.get_args(hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        arms = [_plain_types(a) for a in args]
        return None if any(a is None for a in arms) else tuple(t for a in arms for t in a)
    return (hint,) if hint in (int, float, str, bool, type(None)) else None


def load_toml(path: str | Path, *, sections: bool = True) -> dict[str, Any]:
    """The TOML file's tables; `sections`: refuse a top-level name that is not a command's section."""
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover
        import tomli as tomllib
    path = Path(path)
    try:
        doc = tomllib.loads(path.read_bytes().decode("utf-8"))  # TOML is UTF-8 whatever the locale
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot read the config file ({e.strerror or e})") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: not valid TOML ({e})") from None
    unknown = sorted(set(doc) - set(SECTIONS)) if sections else []
    if unknown:
        raise ConfigError(f"{path}: unknown section(s) {', '.join(f'[{u}]' for u in unknown)}; impsamp reads "
                          f"{', '.join(f'[{x}]' for x in SECTIONS)} (a key belongs under one of them)")
    return doc


SECTIONS = ("embed", "cluster", "resample", "train", "compare", "experts")
"""The TOML sections the commands read: each its own (distill reads [train]; project and specialize take flags
only)."""


def resolve_config(cls: type[T], config_file: str | Path | None = None, section: str | None = None,
                   **flags: Any) -> T:
    """Defaults < the `[section]` of `config_file` < flags that are not None. A flag of one of the config's
    `ALTERNATIVES` (the budgets: `--docs` where the file says `tokens`) replaces the file's others."""
    data: dict[str, Any] = {}
    source = "flags"
    if config_file is not None:
        data = config_section(config_file, section) if section else load_toml(config_file, sections=False)
        source = f"{config_file} [{section}]" if section else str(config_file)
    overrides = {k: v for k, v in flags.items() if v is not None}
    data = without_replaced(cls, data, overrides)
    for group in getattr(cls, "ALTERNATIVES", ()):
        if len(both := [k for k in group if k in data]) > 1:
            raise ConfigError(f"{source}: {', '.join(both[:-1])} and {both[-1]} cannot be combined (each replaces "
                              "the other); keep one")
    unknown = sorted(set(overrides) - {f.name for f in dataclasses.fields(cls)})  # type: ignore[arg-type]
    if unknown:
        raise TypeError(f"resolve_config: {unknown} are not fields of {cls.__name__}")
    try:
        return from_dict(cls, {**data, **overrides}, source=source)
    except ConfigError as e:
        raise named_where_given(cls, e, data, overrides, source) from None


def named_where_given(cls: type, e: ConfigError, data: dict[str, Any], overrides: dict[str, Any],
                      source: str) -> ConfigError:
    """A check that names `--flag` (or the field) when the value came from the config file (no flag given): the
    file and key instead, so that the user looks where the value is; a key of a table inside the section
    (`[experts.train]`) is named with that table. `cls.FLAGS` maps flags named otherwise than their field
    (`--alpha`: `distill_alpha`)."""
    m = re.match(r"(?:--)?([a-z][a-z0-9_-]*)\b", str(e))
    name = m.group(1) if m else ""
    key = getattr(cls, "FLAGS", {}).get(name, name.replace("-", "_"))
    if not m or key in overrides:
        return e
    if key in data:
        return ConfigError(f"{source}: {key}{str(e)[m.end():]}")
    table = next((t for t, v in data.items() if isinstance(v, dict) and key in v and t not in overrides), None)
    if table is None or not source.endswith("]"):
        return e
    return ConfigError(f"{source[:-1]}.{table}]: {key}{str(e)[m.end():]}")


def without_replaced(cls: type, data: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """`data` (a config file's section) without the keys a flag in `overrides` replaces: the others of its group
    in `cls.ALTERNATIVES` (a budget flag replaces the file's other budgets)."""
    for group in getattr(cls, "ALTERNATIVES", ()):
        if any(k in overrides for k in group):
            data = {k: v for k, v in data.items() if k not in group or k in overrides}
    return data


def config_section(config_file: str | Path, section: str) -> dict[str, Any]:
    """The `[section]` table of a TOML config file (a copy; {} when absent); anything but a table is refused."""
    data = load_toml(config_file).get(section, {})
    if not isinstance(data, dict):
        raise ConfigError(f"{config_file}: '{section}' must be a table ([{section}] with keys under it), got "
                          f"{type(data).__name__}")
    return dict(data)


def to_dict(cfg: Any) -> dict[str, Any]:
    """A config as plain JSON-able data (tuples become lists, paths strings), equal to what a
    manifest gives back after a JSON round trip."""
    return _plain(dataclasses.asdict(cfg))


def _plain(v: Any) -> Any:
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    if isinstance(v, Path):
        return str(v)
    return v


def documented(cls: type[T]) -> type[T]:
    """Class decorator: append each field's docstring (the string under it in the class body) to the class
    docstring, so `help(ResampleConfig)` shows what every field means, not only the signature. A line scan
    of the module's source (an `ast` parse costs ~10 ms a module at every CLI start); no source: unchanged."""
    import re
    import textwrap

    try:
        lines = Path(sys.modules[cls.__module__].__file__ or "").read_text(encoding="utf-8").splitlines()
        i = next(n for n, line in enumerate(lines) if re.match(rf"class {cls.__name__}\b", line)) + 1
    except (OSError, StopIteration, KeyError, AttributeError):
        return cls
    fields, name, doc = [], None, None
    for line in lines[i:]:
        if line and not line.startswith(" "):
            break  # the class body ended
        if doc is not None:  # inside a multi-line field docstring
            doc.append(line.strip().removesuffix('"""'))
            if line.rstrip().endswith('"""'):
                fields.append((name, doc))
                name, doc = None, None
        elif m := re.match(r"    (\w+): [^=(]+(?:= .*)?$", line):
            name = m[1]
        elif name and (m := re.match(r'    """(.*)$', line)):
            text = m[1]
            if text.endswith('"""') and len(text) >= 3:
                fields.append((name, [text[:-3]]))
                name = None
            else:
                doc = [text]
        else:
            name = None
    if fields:
        body = [textwrap.fill(" ".join(" ".join(d).split()), 100, initial_indent=f"    {n}: ",
                              subsequent_indent=" " * 8, break_on_hyphens=False) for n, d in fields]
        cls.__doc__ = (cls.__doc__ or "").strip() + "\n\nFields:\n" + "\n".join(body)
    return cls


def as_config(cls: type[T], value: Any, name: str = "config") -> T | None:
    """`value` as a `cls`: itself, or built from a dict of its fields (None stays None); anything else is a
    one-line ConfigError, not an AttributeError from deep inside the stage."""
    if value is None or isinstance(value, cls):
        return value
    if isinstance(value, Mapping):
        return from_dict(cls, value, source=name)
    raise ConfigError(f"{name} must be a {cls.__name__} (or a dict of its fields), got {type(value).__name__}")


def check_fields(cfg: Any) -> None:
    """Refuse, in one line naming the field, a value its annotation does not allow: a string for a count,
    "no" for a flag, 2.5 steps, True tokens, None for a name. Values are made plain: an integral float for
    an integer field becomes an integer (2e9 in TOML), numpy scalars and paths Python's own. Fields typed
    anything else (tuples, tables, a string the class parses) are left to the class."""
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        fitted = _fitted(type(cfg), f.name, value, type(cfg).__name__)
        if fitted is not value:
            object.__setattr__(cfg, f.name, fitted)


def _fitted(cls: type, key: str, value: Any, where: str) -> Any:
    """`value` as field `key` of `cls` holds it, or a ConfigError naming `where` the value came from."""
    want = _plain_types(_hints(cls).get(key))
    if want is None:
        return value
    fitted = _fit(value, want)
    if fitted is _UNFIT:
        names = " or ".join(sorted({_TYPE_NAMES[t] for t in want if t is not type(None)}))
        names += " (or None)" if type(None) in want else ""
        what = ("must be given" if value is None else "is not an integer" if isinstance(value, float) and int in want else
                "is a flag" if isinstance(value, bool) else f"is {_TYPE_NAMES.get(type(value), type(value).__name__)}")
        raise ConfigError(f"{where}: {key} = {value!r} {what}; expected {names}")
    return fitted


_UNFIT = object()


def _fit(value: Any, want: tuple[type, ...]) -> Any:
    """`value` as a field of types `want` holds it (numpy scalars and paths as plain Python), or _UNFIT."""
    if value is None:
        return value if type(None) in want else _UNFIT
    if isinstance(value, bool) or (type(value).__module__ == "numpy" and type(value).__name__ in ("bool", "bool_")):
        return bool(value) if bool in want else _UNFIT
    if isinstance(value, (str, os.PathLike)):
        return os.fspath(value) if str in want and isinstance(os.fspath(value), str) else _UNFIT
    if isinstance(value, numbers.Integral):
        return (int(value) if int in want else float(value)) if (int in want or float in want) else _UNFIT
    if isinstance(value, numbers.Real):
        if float in want:
            return float(value)
        return int(value) if int in want and math.isfinite(value) and float(value).is_integer() else _UNFIT
    return _UNFIT


_HINTS: dict[type, dict[str, Any]] = {}


def _hints(cls: type) -> dict[str, Any]:
    if cls not in _HINTS:
        try:
            _HINTS[cls] = typing.get_type_hints(cls)
        except Exception:  # an annotation that does not resolve: leave the checks to the class
            _HINTS[cls] = {}
    return _HINTS[cls]


def positive(name: str, value: float | int | None, *, flag: str | None = None, allow_zero: bool = False,
             most: float | None = None) -> None:
    """Raise ConfigError unless `value` is a finite number > 0 (or >= 0), and at most `most` where given (a value
    past it would overflow further on: float32 in torch, a C int, an int64 loop)."""
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ConfigError(f"{flag or name} must be a number, got {value!r}")
    if not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        what = bound if math.isfinite(value) else f"a finite number {bound}"
        raise ConfigError(f"{flag or name} must be {what}, got {value}")
    if most is not None and value > most:
        raise ConfigError(f"{flag or name} must be at most {most:,}, got {value:g}")


def check_cap(cap: float | None, flag: str = "cap") -> None:
    """A cap on weights as a multiple of their mean: no largest weight is below the mean."""
    if cap is not None and not cap >= 1:
        raise ConfigError(f"{flag} must be >= 1 (a multiple of the mean weight, which no largest weight is "
                          f"below), got {cap}")


def flags_set(cfg: Any, names: Sequence[str]) -> list[str]:
    """The `--flag` names of the fields in `names` whose value differs from the dataclass's default: settings
    a user gave that another setting would ignore."""
    defaults = {f.name: f.default for f in dataclasses.fields(cfg)}
    return [f"--{n.replace('_', '-')}" for n in names if getattr(cfg, n) != defaults[n]]


MAX_SEED = 2**31 - 1
"""The largest seed faiss's k-means takes (a 32-bit signed int): `cluster`'s and `compare`'s."""
MAX_SEED_32 = 2**32 - 1
"""The largest seed numpy's legacy seeding and scikit-learn take: `train`'s and `experts`'."""


def check_seed(value: int | None, flag: str = "--seed", maximum: int | None = MAX_SEED) -> None:
    """Raise ConfigError unless `value` is None or an integer in [0, maximum] (None: no upper bound)."""
    if value is None:
        return
    if (isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0
            or (maximum is not None and value > maximum)):
        bound = f"from 0 to {maximum}" if maximum is not None else ">= 0"
        raise ConfigError(f"{flag} must be an integer {bound}, got {value!r}")


def cache_dir() -> Path:
    """impsamp's user cache (the demo's embeddings, exported ONNX models, tokenizers): `$IMPSAMP_CACHE_DIR`
    or `$IMPSAMP_CACHE`, else `$XDG_CACHE_HOME/impsamp`, else `~/.cache/impsamp`."""
    root = os.environ.get("IMPSAMP_CACHE_DIR") or os.environ.get("IMPSAMP_CACHE")
    if root:
        return Path(root).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser() / "impsamp"
