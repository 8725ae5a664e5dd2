"""Knobs: tunable literals in Python source, found and rewritten as pure functions on strings.

A knob is a module-level ``NAME = <literal>`` (or ``NAME: type = <literal>``) whose literal is an int, a
float, a bool or a negated number. The first module-level assignment of a name is the one that counts.
Strings are knobs only with a ``choice`` hint. Inline hints are comments on the assignment's line(s), at
the comment's start or after a later ``  #`` (``# width  # rsi: fixed``); ``#`` in a string is no comment::

    lr = 3e-3          # rsi: log-range(1e-5, 1e-1)
    n_layer = 4        # rsi: range(1, 12)       (int range for an int literal; bounds inclusive)
    act = "gelu"       # rsi: choice("gelu", "relu")
    vocab_size = 256   # rsi: fixed               (never a knob)

Names that look like budgets, seeds or paths (``*budget*``, ``*seed*``, ``*time*``, ``*dir*``, ``*path*``,
case-insensitive) belong to the harness: they are knobs only when hinted or named by an ``include`` pattern.
Dunder names never are, and neither are names assigned again at module level or declared ``global`` in a
function (``b = 0.0`` then ``b -= lr * g`` is state, not a setting) unless hinted. A range, log-range or
choice hint anywhere else than on the first module-level assignment of a literal is an error, so that a hint
is never silently ignored.

Default ranges, when there is no hint:

- float v in (0, 1): log range [v/10, min(10v, (1+v)/2)] (betas, momenta, fractions never reach 1);
- float v >= 1: log range [v/10, 10v];
- float 0.0: linear range [0.0, 0.5] (zeros are usually dropout- or weight-decay-like);
- negative float v: linear range [4v, v/4] (a factor of 4 either way in magnitude; linear because a log
  scale cannot hold negative numbers, and a narrower factor than for positives keeps linear sampling sane);
- int 1: linear range [1, 8]; positive int n > 1: log range [max(1, n // 4), 4n];
- int 0: linear range [0, 8]; negative int n: linear range [4n, 0];
- bool: choices (False, True).
"""

from __future__ import annotations

import ast
import functools
import io
import math
import re
import tokenize
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Any, Literal

from rsi.errors import UserError

Value = float | int | bool | str

DEFAULT_EXCLUDE: tuple[str, ...] = ("*budget*", "*seed*", "*time*", "*dir*", "*path*")

_HINT_RE = re.compile(r"(?:^|\s)#\s*rsi\s*:(.*)")  # at the comment's start, or after "  # "
_CALL_RE = re.compile(r"(log-range|range|choice)\s*\((.*)\)", re.DOTALL)
_EXPONENT_RE = re.compile(r"\s*-?\s*\.?\d[\d_.]*[eE]")
_NEWLINE_RE = re.compile(r"\r\n|\r|\n")


@dataclass(frozen=True)
class Knob:
    """One tunable literal and the space a proposer may sample it from."""

    file: str  # repository-relative path it was found in
    name: str
    kind: Literal["float", "int", "bool", "choice"]
    value: Value  # the value in the source
    low: float | int | None = None  # for float / int
    high: float | int | None = None
    log: bool = False
    choices: tuple[str | int | float | bool, ...] = ()  # for bool (False, True) and choice
    hinted: bool = False  # range came from an inline hint


@dataclass(frozen=True)
class _Hint:
    kind: Literal["fixed", "range", "log-range", "choice"]
    args: tuple[Value, ...]
    line: int
    text: str

    def error(self, file: str, why: str) -> UserError:
        return UserError(f"{file}:{self.line}: bad rsi hint {self.text!r}: {why}")


@dataclass(frozen=True)
class _Site:
    """The first module-level assignment of a name whose value is a literal."""

    name: str
    value: Value
    node: ast.expr
    hint: _Hint | None


def _parse_hint(file: str, line: int, comment: str) -> _Hint | None:
    match = _HINT_RE.search(comment)
    if match is None:
        return None
    body = match.group(1).strip()

    def fail(why: str) -> UserError:
        return _Hint("fixed", (), line, comment).error(file, why)

    if body == "fixed":
        return _Hint("fixed", (), line, comment)
    call = _CALL_RE.fullmatch(body)
    if call is None:
        raise fail("expected fixed, range(low, high), log-range(low, high) or choice(a, b, ...)")
    kind, inner = call.group(1), call.group(2)
    try:
        args = ast.literal_eval(f"({inner},)")
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        raise fail("the arguments must be Python literals") from None
    if not isinstance(args, tuple) or not all(isinstance(a, str | int | float) for a in args):
        raise fail("each argument must be a number, a bool or a string")
    if kind == "choice":
        return _Hint("choice", args, line, comment)
    if len(args) != 2 or not all(isinstance(a, int | float) and not isinstance(a, bool) for a in args):
        raise fail(f"{kind} takes two numbers: {kind}(low, high)")
    low, high = args
    if not (math.isfinite(low) and math.isfinite(high) and low < high):
        raise fail("the bounds must be finite with low < high")
    if kind == "log-range" and low <= 0:
        raise fail("a log-range needs low > 0")
    return _Hint("range" if kind == "range" else "log-range", args, line, comment)


def _hints(file: str, source: str) -> dict[int, _Hint]:
    hints: dict[int, _Hint] = {}
    readline = io.StringIO(source, newline=None).readline
    for tok in tokenize.generate_tokens(readline):
        if tok.type == tokenize.COMMENT:
            hint = _parse_hint(file, tok.start[0], tok.string)
            if hint is not None:
                hints[tok.start[0]] = hint
    return hints


def _literal(node: ast.expr) -> Value | None:
    """The value of a number, bool or string constant, or of a negated number; None for anything else."""
    if isinstance(node, ast.Constant) and isinstance(node.value, int | float | str):
        if isinstance(node.value, float) and not math.isfinite(node.value):
            return None
        return node.value
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        inner = _literal(node.operand)
        if isinstance(inner, int | float) and not isinstance(inner, bool):
            return -inner
    return None


def _parse(file: str, source: str) -> ast.Module:
    try:
        return ast.parse(source)
    except SyntaxError as exc:
        raise UserError(f"{file}:{exc.lineno}: cannot parse Python source: {exc.msg}") from None


@functools.lru_cache(maxsize=256)
def _sites(file: str, source: str) -> tuple[_Site, ...]:
    """First module-level literal assignment of each name, in source order, with its hint if any. Cached: a
    research parses the same champion text for every proposal (nothing here is mutated)."""
    tree = _parse(file, source)  # first: tokenize's errors are less helpful
    hints = _hints(file, source)
    seen: set[str] = set()
    sites: list[_Site] = []
    for stmt in tree.body:
        if isinstance(stmt, ast.Assign) and len(stmt.targets) == 1:
            target, value = stmt.targets[0], stmt.value
        elif isinstance(stmt, ast.AnnAssign) and stmt.value is not None:
            target, value = stmt.target, stmt.value
        else:
            continue
        if not isinstance(target, ast.Name) or target.id in seen:
            continue
        seen.add(target.id)
        literal = _literal(value)
        if literal is None:
            continue
        last = stmt.end_lineno if stmt.end_lineno is not None else stmt.lineno
        mine = [hints.pop(n) for n in range(stmt.lineno, last + 1) if n in hints]
        if len(mine) > 1:
            raise mine[1].error(file, f"{target.id} already has the hint {mine[0].text!r}")
        sites.append(_Site(target.id, literal, value, mine[0] if mine else None))
    for hint in hints.values():
        if hint.kind != "fixed":
            raise hint.error(file, "a hint belongs on the first module-level `NAME = literal` of a name")
    return tuple(sites)


def _reassigned(tree: ast.Module) -> set[str]:
    """Names stored more than once at module scope, or made global by a function: state, not settings."""
    stores: dict[str, int] = {}
    globals_: set[str] = set()
    todo: list[ast.AST] = list(tree.body)
    while todo:
        node = todo.pop()
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda | ast.ClassDef):
            globals_.update(n for g in ast.walk(node) if isinstance(g, ast.Global) for n in g.names)
            continue
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            stores[node.id] = stores.get(node.id, 0) + 1
        todo.extend(ast.iter_child_nodes(node))
    return globals_ | {name for name, n in stores.items() if n > 1}


def _matches(name: str, patterns: Sequence[str]) -> bool:
    return any(fnmatchcase(name.lower(), pattern.lower()) for pattern in patterns)


def _default_knob(file: str, name: str, value: Value) -> Knob | None:
    if isinstance(value, bool):
        return Knob(file, name, "bool", value, choices=(False, True))
    if isinstance(value, int):
        if value > 1:
            return Knob(file, name, "int", value, max(1, value // 4), value * 4, log=True)
        low, high = {1: (1, 8), 0: (0, 8)}.get(value, (value * 4, 0))
        return Knob(file, name, "int", value, low, high)
    if isinstance(value, float):
        if 0 < value < 1:  # betas, momenta, fractions: stay below 1
            return Knob(file, name, "float", value, value / 10, min(value * 10, (1 + value) / 2), log=True)
        if value > 0:
            return Knob(file, name, "float", value, value / 10, value * 10, log=True)
        bounds = (0.0, 0.5) if value == 0 else (value * 4, value / 4)
        return Knob(file, name, "float", value, *bounds)
    return None  # strings need a choice hint


def _hinted_knob(file: str, site: _Site, hint: _Hint) -> Knob:
    value = site.value
    if hint.kind == "choice":
        return Knob(file, site.name, "choice", value, choices=hint.args, hinted=True)
    low, high = hint.args
    log = hint.kind == "log-range"
    assert isinstance(low, int | float) and isinstance(high, int | float)  # checked when parsed
    if isinstance(value, bool | str):
        raise hint.error(file, f"{hint.kind} needs a number literal, {site.name} is {value!r}")
    if isinstance(value, int):
        if isinstance(low, float) or isinstance(high, float):
            raise hint.error(file, f"{site.name} is an int: give int bounds or write it as a float")
        return Knob(file, site.name, "int", value, low, high, log=log, hinted=True)
    return Knob(file, site.name, "float", value, float(low), float(high), log=log, hinted=True)


def find_knobs(file: str, source: str, include: Sequence[str] = (), exclude: Sequence[str] = ()) -> list[Knob]:
    """The knobs of one file, in source order. Raises UserError for a malformed hint or unparsable source."""
    return list(_knobs(file, source, tuple(include), tuple(exclude)))


@functools.lru_cache(maxsize=256)
def _knobs(file: str, source: str, include: tuple[str, ...], exclude: tuple[str, ...]) -> tuple[Knob, ...]:
    knobs: list[Knob] = []
    state = _reassigned(_parse(file, source))
    for site in _sites(file, source):
        hint = site.hint
        if hint is not None and hint.kind == "fixed":
            continue
        knob = _default_knob(file, site.name, site.value) if hint is None else _hinted_knob(file, site, hint)
        name = site.name
        if knob is None or (name.startswith("__") and name.endswith("__")):
            continue
        if (include and not _matches(name, include)) or _matches(name, exclude):
            continue
        if hint is None and _matches(name, DEFAULT_EXCLUDE) and not _matches(name, include):
            continue
        if hint is None and name in state:
            continue
        knobs.append(knob)
    return tuple(knobs)


def _quote(text: str, like: str | None) -> str:
    quote = '"'
    if like is not None:
        body = like.lstrip("rRbBuUfF")
        if body[:1] in ("'", '"'):
            quote = body[0]
    out = []
    for char in text:
        if char == "\\" or char == quote:
            out.append("\\" + char)
        elif char.isprintable():
            out.append(char)
        else:
            out.append(repr(char)[1:-1])
    return quote + "".join(out) + quote


def _format_float(value: float, like: str | None) -> str:
    if not math.isfinite(value):
        raise ValueError(f"{value!r} cannot be written as a Python literal")
    mantissa, _, exponent = f"{value:.2e}".partition("e")  # 3 significant digits
    rounded = float(f"{mantissa}e{exponent}")
    plain = repr(rounded)
    if rounded == 0:
        return plain
    letter = "E" if like is not None and "E" in like else "e"
    exp = f"{mantissa.rstrip('0').rstrip('.')}{letter}{int(exponent)}"
    if abs(rounded) < 1e-4 or abs(rounded) >= 1e6:
        return exp
    if like is None:
        return exp if len(exp) < len(plain) else plain
    return exp if _EXPONENT_RE.match(like) else plain


def format_value(value: Value, like: str | None = None) -> str:
    """Python literal text for a knob value; floats get 3 significant digits in the style of `like`.

    `like` is the literal text being replaced: an exponent there (`3e-3`, `1E-4`) gives `6e-3`, a plain
    decimal gives a plain decimal, except below 1e-4 or from 1e6 on. Without `like`, the shorter of the two.
    Strings keep the quote character of `like`.
    """
    if isinstance(value, bool):
        return "True" if value else "False"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return _format_float(value, like)
    if isinstance(value, str):
        return _quote(value, like)
    raise TypeError(f"a knob value must be a float, int, bool or str, not {type(value).__name__}")


def as_written(value: Value) -> Value:
    """The value a file holds once `value` is written: floats keep 3 significant digits, the rest is exact."""
    if isinstance(value, float):
        return float(_format_float(value, None))
    return value


def _coerce(site: _Site, value: object) -> Value:
    """The value to write in place of site's literal; ValueError if it does not fit."""
    old, name = site.value, site.name
    if site.hint is not None and site.hint.kind == "fixed":
        raise ValueError(f"{name} is marked `# rsi: fixed`")
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{name}: {value!r} cannot be written as a Python literal")
    if site.hint is not None and site.hint.kind == "choice" and isinstance(value, int | float | str):
        return value
    if isinstance(old, bool) == isinstance(value, bool):
        if isinstance(old, float) and isinstance(value, int | float):
            return float(value)  # a float stays a float: 2 is written 2.0
        if isinstance(value, int | str) and isinstance(old, type(value)):
            return value  # bool for bool, int for int, str for str
    raise ValueError(f"{name} holds {type(old).__name__} {old!r}; cannot set it to {value!r}")


def apply_values(source: str, values: Mapping[str, Value]) -> str:
    """Source with the literal of each named knob replaced; every other character stays as it was.

    KeyError for a name with no module-level literal assignment, ValueError for a value of the wrong type.
    """
    sites = {site.name: site for site in _sites("<source>", source)}
    starts = [0] + [m.end() for m in _NEWLINE_RE.finditer(source)]

    def offset(line: int, col: int) -> int:  # ast columns count UTF-8 bytes
        text = source[starts[line - 1] : starts[line] if line < len(starts) else len(source)]
        return starts[line - 1] + len(text.encode("utf-8")[:col].decode("utf-8"))

    edits: list[tuple[int, int, str]] = []
    for name, value in values.items():
        if name not in sites:
            raise KeyError(f"{name!r}: no module-level assignment of a literal has this name")
        node = sites[name].node
        assert node.end_lineno is not None and node.end_col_offset is not None
        start, end = offset(node.lineno, node.col_offset), offset(node.end_lineno, node.end_col_offset)
        edits.append((start, end, format_value(_coerce(sites[name], value), like=source[start:end])))
    for start, end, text in sorted(edits, reverse=True):
        source = source[:start] + text + source[end:]
    return source


def _show(value: object, like: str | None = None) -> str:
    if isinstance(value, int | float | str):
        try:
            return format_value(value, like)
        except ValueError:
            pass
    return repr(value)


def describe(old: Mapping[str, object], new: Mapping[str, object]) -> str:
    """`lr 3e-3 -> 6e-3, batch_size 12 -> 16`: the names of `new` whose written value changed, in order."""
    parts = []
    for name, value in new.items():
        if name not in old:
            parts.append(f"{name} -> {_show(value)}")
            continue
        before = _show(old[name])
        after = _show(value, like=before)
        if after != before:
            parts.append(f"{name} {before} -> {after}")
    return ", ".join(parts)


def literal_change(before: Mapping[str, str], after: Mapping[str, str]) -> str:
    """`describe` of the module-level literals that differ between two versions of some files, when they are
    all that differs ("" when anything else changed too, or a file does not parse): a change replayed on
    another commit, told as it is there."""
    old: dict[str, Value] = {}
    new: dict[str, Value] = {}
    for path in sorted(set(before) | set(after)):
        a, b = before.get(path), after.get(path)
        if a == b:
            continue
        if a is None or b is None:
            return ""
        try:
            was = {site.name: site.value for site in _sites(path, a)}
            now = {site.name: site.value for site in _sites(path, b)}
            changed = {name: value for name, value in now.items() if name in was and was[name] != value}
            if not changed or apply_values(a, changed) != b:
                return ""
        except (UserError, KeyError, ValueError):
            return ""
        old.update({name: was[name] for name in changed})
        new.update(changed)
    return describe(old, new)


def named_knobs(
    files: Mapping[str, str], include: Sequence[str] = (), exclude: Sequence[str] = (), *, strict: bool = True
) -> dict[str, Knob]:
    """The knobs of the Python files among `files`, keyed as a research names them: by name in the first file
    (in path order) that has it, as `path:name` in the others. A file that does not parse raises UserError, or
    is left out when not `strict`."""
    named: dict[str, Knob] = {}
    for path, text in sorted(files.items()):
        if not path.endswith(".py"):
            continue
        try:
            knobs = find_knobs(path, text, include, exclude)
        except (UserError, ValueError, RecursionError):  # (ast.parse's ValueError: a NUL byte)
            if strict:
                raise
            continue
        for k in knobs:
            named[k.name if k.name not in named else f"{path}:{k.name}"] = k
    return named


def held_values(
    files: Mapping[str, str], keys: Iterable[str], include: Sequence[str] = (), exclude: Sequence[str] = ()
) -> dict[str, Value]:
    """The value each knob named by `keys` holds in `files` (knobs found and named as `named_knobs` does).
    Keys naming no knob, and files that do not parse, are left out."""
    wanted = set(keys)
    names = {key.rsplit(":", 1)[-1] for key in wanted}
    # a file whose text holds none of the names holds none of these knobs, and takes no name from another file's
    holding = {path: text for path, text in files.items() if any(name in text for name in names)}
    return {key: k.value for key, k in named_knobs(holding, include, exclude, strict=False).items() if key in wanted}


def carried_params(
    params: Mapping[str, Any],
    before: Mapping[str, str],
    after: Mapping[str, str],
    include: Sequence[str] = (),
    exclude: Sequence[str] = (),
) -> dict[str, Any]:
    """A candidate's params once its change is replayed on another commit (`before`: its own files, `after`:
    the replay's): a param that was a knob's value in its code becomes that knob's value in the replay, where
    the knobs its change left alone hold the other commit's values. The rest (a model's name, say) is carried
    as it was."""
    was, now = held_values(before, params, include, exclude), held_values(after, params, include, exclude)
    return {k: now[k] if k in now and k in was and was[k] == v else v for k, v in params.items()}
