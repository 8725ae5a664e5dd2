"""Tests for rsi.knobs: finding tunable literals, rewriting them byte-exactly, formatting values."""

from __future__ import annotations

import ast
import keyword
import math
from collections.abc import Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rsi.errors import UserError
from rsi.knobs import Knob, apply_values, carried_params, describe, find_knobs, format_value, held_values


def knobs_by_name(source: str, include: Sequence[str] = (), exclude: Sequence[str] = ()) -> dict[str, Knob]:
    return {k.name: k for k in find_knobs("train.py", source, include, exclude)}


# ---------------------------------------------------------------- finding


def test_lowercase_and_uppercase_names_are_found() -> None:
    found = knobs_by_name("LR = 3e-3\nbatch_size = 12\ndropout = 0.0\nUSE_BIAS = True\nMixed_Case = 2\n")
    assert list(found) == ["LR", "batch_size", "dropout", "USE_BIAS", "Mixed_Case"]
    assert all(k.file == "train.py" for k in found.values())


@pytest.mark.parametrize(
    ("line", "kind", "value", "low", "high", "log"),
    [
        ("x = 3e-3", "float", 3e-3, 3e-4, 3e-2, True),
        ("x = 0.5", "float", 0.5, 0.05, 0.75, True),
        ("x = 2.5", "float", 2.5, 0.25, 25.0, True),
        ("x = 0.0", "float", 0.0, 0.0, 0.5, False),
        ("x = -0.5", "float", -0.5, -2.0, -0.125, False),
        ("x = 1", "int", 1, 1, 8, False),
        ("x = 2", "int", 2, 1, 8, True),
        ("x = 12", "int", 12, 3, 48, True),
        ("x = 0", "int", 0, 0, 8, False),
        ("x = -1", "int", -1, -4, 0, False),
        ("x = - 3", "int", -3, -12, 0, False),
    ],
)
def test_numbers_get_default_ranges(line: str, kind: str, value: float, low: float, high: float, log: bool) -> None:
    (knob,) = find_knobs("m.py", line + "\n")
    assert (knob.kind, knob.log, knob.hinted) == (kind, log, False)
    assert knob.value == value and type(knob.value) is type(value)
    assert knob.low == pytest.approx(low) and knob.high == pytest.approx(high)
    assert knob.low is not None and knob.high is not None and knob.low <= knob.value <= knob.high


@pytest.mark.parametrize("text", ["True", "False"])
def test_bools_are_choices(text: str) -> None:
    (knob,) = find_knobs("m.py", f"use_bias = {text}\n")
    assert knob.kind == "bool" and knob.value is (text == "True") and knob.choices == (False, True)


def test_annotated_assignment_is_a_knob() -> None:
    found = knobs_by_name("lr: float = 1e-3\nn_layer: int = 4\nwidth: int\n")
    assert set(found) == {"lr", "n_layer"}
    assert found["lr"].value == 1e-3 and found["n_layer"].kind == "int"


def test_only_module_level_single_name_literals_are_knobs() -> None:
    source = """\
import math
top = 1.5
def f():
    inside_def = 2
class C:
    inside_class = 3
if True:
    inside_if = 4
for i in range(2):
    inside_for = 5
a, b = 1, 2
c = d = 3
e = 2 * 3
g = math.pi
h = "text"
k = b"bytes"
m = 1e999
__version__ = 1
__all__ = ["top"]
"""
    assert list(knobs_by_name(source)) == ["top"]


def test_first_assignment_counts() -> None:
    assert knobs_by_name("lr = 0.1\nlr = 0.2\n") == {}  # assigned twice: state, not a setting
    assert knobs_by_name("lr = 0.1  # rsi: log-range(0.01, 1.0)\nlr = 0.2\n")["lr"].value == 0.1
    assert knobs_by_name("n = int('3')\nn = 4\n") == {}
    assert apply_values("lr = 0.1\nlr = 0.2\n", {"lr": 0.3}) == "lr = 0.3\nlr = 0.2\n"


@pytest.mark.parametrize("name", ["time_budget", "SEED", "data_dir", "out_path", "MAX_TIME", "TimeOut"])
def test_harness_names_are_excluded_by_default(name: str) -> None:
    assert find_knobs("m.py", f"{name} = 10\n") == []
    hinted = find_knobs("m.py", f"{name} = 10  # rsi: range(1, 20)\n")
    assert [(k.name, k.hinted, k.low, k.high) for k in hinted] == [(name, True, 1, 20)]
    assert [k.name for k in find_knobs("m.py", f"{name} = 10\n", include=[name.lower()])] == [name]


def test_include_and_exclude_patterns() -> None:
    source = "lr = 0.1\nLR_DECAY = 0.5\nbatch_size = 8\nwarmup = 10  # rsi: range(0, 100)\n"
    assert list(knobs_by_name(source, include=["lr*"])) == ["lr", "LR_DECAY"]
    assert list(knobs_by_name(source, exclude=["*DECAY", "batch_*"])) == ["lr", "warmup"]
    assert list(knobs_by_name(source, include=["*"], exclude=["warm*"])) == ["lr", "LR_DECAY", "batch_size"]
    assert list(knobs_by_name(source, include=["batch*"])) == ["batch_size"]  # include filters hints too


def test_log_range_hint() -> None:
    (knob,) = find_knobs("m.py", "lr = 3e-3  # rsi: log-range(1e-5, 1e-1)\n")
    assert (knob.kind, knob.low, knob.high, knob.log, knob.hinted) == ("float", 1e-5, 1e-1, True, True)
    (knob,) = find_knobs("m.py", "n = 64  #rsi:log-range(8, 512)\n")
    assert (knob.kind, knob.low, knob.high, knob.log) == ("int", 8, 512, True)
    (knob,) = find_knobs("m.py", "n = 64  # width  # rsi: log-range(8, 512)\n")
    assert (knob.kind, knob.low, knob.high, knob.log) == ("int", 8, 512, True)


def test_range_hint_is_int_for_int_literal_and_float_otherwise() -> None:
    found = knobs_by_name("n_layer = 4  # rsi: range(1, 12)\nwd = 0.1  # rsi: range(0, 1)\n")
    assert (found["n_layer"].kind, found["n_layer"].low, found["n_layer"].high) == ("int", 1, 12)
    assert not found["n_layer"].log
    wd = found["wd"]
    assert (wd.kind, wd.low, wd.high, wd.log) == ("float", 0.0, 1.0, False)
    assert isinstance(wd.low, float) and isinstance(wd.high, float)


def test_choice_hint_makes_strings_and_numbers_choices() -> None:
    source = 'act = "gelu"  # rsi: choice("gelu", "relu", \'silu\')\nn = 4  # rsi: choice(2, 4, 8.0, True)\n'
    found = knobs_by_name(source)
    assert found["act"] == Knob("train.py", "act", "choice", "gelu", choices=("gelu", "relu", "silu"), hinted=True)
    assert found["n"].kind == "choice" and found["n"].choices == (2, 4, 8.0, True)


def test_fixed_hint_is_never_a_knob() -> None:
    assert find_knobs("m.py", "vocab = 256  # rsi: fixed\nlr = 0.1 # rsi:fixed\n") == []
    assert find_knobs("m.py", "def f():\n    x = 1  # rsi: fixed\n") == []  # harmless anywhere
    with pytest.raises(ValueError, match="fixed"):
        apply_values("vocab = 256  # rsi: fixed\n", {"vocab": 512})


@pytest.mark.parametrize(
    "hint",
    [
        "# rsi: range(1)",
        "# rsi: range(1, 2, 3)",
        "# rsi: range(5, 1)",
        "# rsi: range(1, 1)",
        "# rsi: range('a', 'b')",
        "# rsi: range(True, 3)",
        "# rsi: log-range(0, 1)",
        "# rsi: log-range(1, inf)",
        "# rsi: choice()",
        "# rsi: choice(gelu, relu)",
        "# rsi: choice([1], [2])",
        "# rsi: loose",
        "# rsi: range(1, 12) extra",
        "# rsi:",
    ],
)
def test_malformed_hint_raises_user_error_naming_file_line_and_hint(hint: str) -> None:
    source = f"import os\nn = 4  {hint}\n"
    with pytest.raises(UserError) as info:
        find_knobs("src/train.py", source)
    message = str(info.value)
    assert "src/train.py:2" in message and hint in message


@pytest.mark.parametrize(
    "source",
    [
        'act = "gelu"  # rsi: range(1, 2)\n',  # a range for a string
        "flag = True  # rsi: range(0, 1)\n",  # a range for a bool
        "n = 4  # rsi: range(0.5, 8)\n",  # float bounds for an int literal
        "def f():\n    n = 4  # rsi: range(1, 8)\n",  # not module level
        "n = 2 * 4  # rsi: range(1, 8)\n",  # not a literal
        "n = 1\nn = 2  # rsi: range(1, 8)\n",  # not the first assignment
        "n = (\n    4  # rsi: range(1, 8)\n)  # rsi: range(1, 9)\n",  # two hints for one name
    ],
)
def test_hint_that_cannot_apply_raises_user_error(source: str) -> None:
    with pytest.raises(UserError, match=r"m\.py:\d+: bad rsi hint"):
        find_knobs("m.py", source)


def test_rsi_inside_a_string_is_not_a_hint() -> None:
    source = 'doc = "# rsi: range(1, 2)"\nn = 4  # see "# rsi: nonsense" in docs\nlr = 0.1  # x = "#" rsi: no\n'
    found = knobs_by_name(source)
    assert set(found) == {"n", "lr"} and not found["n"].hinted
    assert find_knobs("m.py", '"""\nn = 4  # rsi: range(\n"""\n') == []


def test_hint_on_continuation_line_of_the_assignment() -> None:
    (knob,) = find_knobs("m.py", "n = (\n    4  # rsi: range(1, 8)\n)\n")
    assert (knob.name, knob.low, knob.high, knob.hinted) == ("n", 1, 8, True)


def test_unparsable_source_is_a_user_error() -> None:
    with pytest.raises(UserError, match=r"bad\.py:2"):
        find_knobs("bad.py", "x = 1\ny = (\n")


# ---------------------------------------------------------------- rewriting


def test_apply_values_changes_only_the_literals() -> None:
    source = "import torch\nLR  =   3e-3   # rsi: log-range(1e-5, 1e-1)\nbatch_size: int=12 # bs\nx = (0.5)\n"
    out = apply_values(source, {"LR": 6e-3, "batch_size": 16, "x": 0.25})
    expected = "import torch\nLR  =   6e-3   # rsi: log-range(1e-5, 1e-1)\nbatch_size: int=16 # bs\nx = (0.25)\n"
    assert out == expected
    assert apply_values(source, {}) == source


def test_apply_values_handles_non_ascii_before_the_literal() -> None:
    assert apply_values("größe = 3  # größe\n", {"größe": 7}) == "größe = 7  # größe\n"
    assert apply_values("x = 1; ü = 2.0\n", {"ü": 0.5, "x": 3}) == "x = 3; ü = 0.5\n"
    source = 's = "ñ→€"; lr = 0.1  # ünïcode\n'
    assert apply_values(source, {"lr": 0.2}) == 's = "ñ→€"; lr = 0.2  # ünïcode\n'


def test_apply_values_negative_and_crlf_lines() -> None:
    source = "a = 1\r\nb = -0.5\r\nc = 2\rd = 3\n"
    assert apply_values(source, {"b": -1.25, "d": -4, "c": 5}) == "a = 1\r\nb = -1.25\r\nc = 5\rd = -4\n"


def test_apply_values_keeps_float_a_float_and_strings_quoted_like_the_original() -> None:
    assert apply_values("wd = 0.1\n", {"wd": 2}) == "wd = 2.0\n"
    assert apply_values("act = 'gelu'\n", {"act": "it's"}) == "act = 'it\\'s'\n"
    assert apply_values('act = "gelu"\n', {"act": 'say "hi"\n'}) == 'act = "say \\"hi\\"\\n"\n'
    out = apply_values('act = "gelu"  # rsi: choice("gelu", 2)\n', {"act": 2})
    assert out == 'act = 2  # rsi: choice("gelu", 2)\n'
    assert ast.literal_eval(apply_values("x = 'a'\n", {"x": "b\\\t'\"é"}).split("= ", 1)[1]) == "b\\\t'\"é"


def test_apply_values_unknown_name_is_a_key_error() -> None:
    with pytest.raises(KeyError, match="nope"):
        apply_values("lr = 0.1\n", {"nope": 1})
    with pytest.raises(KeyError, match="inner"):
        apply_values("def f():\n    inner = 1\n", {"inner": 2})


@pytest.mark.parametrize(
    ("line", "value"),
    [
        ("flag = True", 1),
        ("n = 4", True),
        ("n = 4", 4.5),
        ("n = 4", "4"),
        ("lr = 0.1", False),
        ("lr = 0.1", "0.2"),
        ("lr = 0.1", math.nan),
        ("lr = 0.1", math.inf),
        ("act = 'gelu'", 3),
        ("lr = 0.1", None),
    ],
)
def test_apply_values_wrong_type_is_a_value_error(line: str, value: object) -> None:
    name = line.split(" ")[0]
    with pytest.raises(ValueError, match=name):
        apply_values(line + "\n", {name: value})  # type: ignore[dict-item]


NAMES = st.sampled_from(["lr", "LR", "batch_size", "größe", "ü", "dropout", "n_layer", "x"])
SPACE = st.sampled_from(["", " ", "  ", "\t"])
COMMENT = st.sampled_from(["", "  # note", " # größe = 1", "# lr = 0.5", "  # rsi? not a hint"])
FILLER = st.sampled_from(["", "# comment\n", "\n", "def f():\n    lr = 1\n", 'S = "x = 1  # y"\n', "import os\n"])
NEWLINE = st.sampled_from(["\n", "\r\n"])
FLOATS = st.floats(allow_nan=False, allow_infinity=False, min_value=-1e12, max_value=1e12)
KNOB_VALUE = st.one_of(st.integers(-(10**6), 10**6), FLOATS, st.booleans())


@st.composite
def modules(draw: st.DrawFn) -> tuple[list[str], list[str], dict[str, float | int | bool]]:
    """A module as alternating pieces: other text, literal, other text, literal, ..., other text."""
    count = draw(st.integers(1, 6))
    others: list[str] = [draw(FILLER)]
    literals: list[str] = []
    values: dict[str, float | int | bool] = {}
    for i in range(count):
        name = f"{draw(NAMES)}_{i}"
        assert not keyword.iskeyword(name)
        old = draw(KNOB_VALUE)
        annotation = draw(st.sampled_from(["", ": float", ": 'int'"]))
        others[-1] += f"{name}{annotation}{draw(SPACE)}={draw(SPACE)}"
        literals.append(repr(old))
        others.append(f"{draw(COMMENT)}{draw(NEWLINE)}{draw(FILLER)}")
        if draw(st.booleans()):  # not every knob changes
            if isinstance(old, bool):
                values[name] = draw(st.booleans())
            elif isinstance(old, int):
                values[name] = draw(st.integers(-(10**9), 10**9))
            else:
                values[name] = draw(st.one_of(FLOATS, st.integers(-1000, 1000)))
    return others, literals, values


@settings(max_examples=200, deadline=None)
@given(modules())
def test_apply_values_preserves_every_other_byte(
    module: tuple[list[str], list[str], dict[str, float | int | bool]],
) -> None:
    others, literals, values = module
    source = "".join(o + lit for o, lit in zip(others, literals, strict=False)) + others[-1]
    names = [k.name for k in find_knobs("m.py", source, include=["*"])]
    assert len(names) == len(literals)
    new_literals = list(literals)
    for index, name in enumerate(names):
        if name in values:
            value = values[name]
            if isinstance(ast.literal_eval(literals[index]), float):
                value = float(value)
            new_literals[index] = format_value(value, like=literals[index])
    out = apply_values(source, values)
    assert out == "".join(o + lit for o, lit in zip(others, new_literals, strict=False)) + others[-1]
    after = {k.name: k.value for k in find_knobs("m.py", out, include=["*"])}
    for index, name in enumerate(names):
        assert after[name] == ast.literal_eval(new_literals[index])
        assert type(after[name]) is type(ast.literal_eval(literals[index]))


# ---------------------------------------------------------------- formatting


@pytest.mark.parametrize(
    ("value", "like", "text"),
    [
        (6e-3, "3e-3", "6e-3"),
        (6e-3, "1E-4", "6E-3"),
        (0.123456, "3e-3", "1.23e-1"),
        (1.5e-12, "3e-3", "1.5e-12"),
        (2500.0, "1e+03", "2.5e3"),
        (0.1, None, "0.1"),
        (0.1, "0.5", "0.1"),
        (0.123456, "0.5", "0.123"),
        (250.0, "1.5", "250.0"),
        (1.5, "2.0", "1.5"),
        (-0.0625, "-0.5", "-0.0625"),
        (1e-7, None, "1e-7"),
        (1e-7, "0.5", "1e-7"),
        (3.0e-5, "0.001", "3e-5"),
        (2.5e6, "1.0", "2.5e6"),
        (999999.0, "1.0", "1e6"),
        (0.0, "3e-3", "0.0"),
        (3e-3, None, "3e-3"),
        (12, None, "12"),
        (-7, "3", "-7"),
        (True, None, "True"),
        (False, "True", "False"),
        ("relu", "'gelu'", "'relu'"),
        ("relu", None, '"relu"'),
    ],
)
def test_format_value(value: float | int | bool | str, like: str | None, text: str) -> None:
    assert format_value(value, like) == text
    assert ast.literal_eval(text) == value or isinstance(value, float)


def test_format_value_rejects_non_finite() -> None:
    with pytest.raises(ValueError):
        format_value(math.inf)
    with pytest.raises(ValueError):
        format_value(math.nan, "0.1")


@given(
    FLOATS | st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from([None, "3e-3", "1E5", "0.5", "12.0"]),
)
def test_format_value_parses_back_to_the_rounded_value(value: float, like: str | None) -> None:
    text = format_value(value, like)
    parsed = ast.literal_eval(text)
    assert isinstance(parsed, float) and parsed == float(f"{value:.2e}")
    assert "e+" not in text.lower() and "e-0" not in text.lower()
    mantissa = text.lower().split("e")[0].lstrip("-").replace(".", "").strip("0")
    assert len(mantissa) <= 3
    if like is not None and "e" in like.lower():
        assert "e" in text.lower() or parsed == 0
    if 1e-4 <= abs(parsed) < 1e6 and like in ("0.5", "12.0"):
        assert "e" not in text.lower()


def test_describe() -> None:
    old = {"lr": 3e-3, "batch_size": 12, "dropout": 0.1, "act": "gelu"}
    new = {"lr": 6e-3, "batch_size": 16, "dropout": 0.1}
    assert describe(old, new) == "lr 3e-3 -> 6e-3, batch_size 12 -> 16"
    assert describe(old, {"batch_size": 16, "lr": 6e-3}) == "batch_size 12 -> 16, lr 3e-3 -> 6e-3"
    assert describe(old, {"act": "relu", "dropout": 0.25}) == 'act "gelu" -> "relu", dropout 0.1 -> 0.25'
    assert describe(old, {"lr": 0.0030001}) == ""  # unchanged once written
    assert describe({"use_bias": True}, {"use_bias": False}) == "use_bias True -> False"
    assert describe({}, {"n_layer": 4}) == "n_layer -> 4"


def test_names_assigned_again_are_state_not_knobs() -> None:
    source = """\
lr = 0.1
b = 0.0
vb = 0.0
step = 0
counter = 0
mode = 1
for _ in range(3):
    vb = 0.9 * vb + 1
    b -= lr * vb
    step += 1


def bump() -> None:
    global counter
    counter = counter + 1


class C:
    mode = 2
"""
    names = [k.name for k in find_knobs("t.py", source)]
    assert names == ["lr", "mode"]
    hinted = source.replace("\nb = 0.0", "\nb = 0.0  # rsi: range(0.0, 1.0)")
    assert [k.name for k in find_knobs("t.py", hinted)] == ["lr", "b", "mode"]


def test_a_replayed_change_carries_the_knob_values_its_files_hold() -> None:
    """A candidate's params after its change is replayed on another commit: each knob's value as the replay's
    files hold it (a bare name is its first file's, `path:name` another file's); a param that was no literal of
    the candidate's code (a model's name) is carried as it was."""
    own = {"a.py": "lr = 0.01\nwidth = 32\nname = 'x'\n", "b.py": "lr = 0.5\n", "c.txt": "lr = 9\n"}
    replay = {"a.py": "lr = 0.01\nwidth = 64\nname = 'x'\n", "b.py": "lr = 0.25\n", "c.txt": "lr = 9\n"}
    assert held_values(replay, ["lr", "b.py:lr", "width", "depth"]) == {"lr": 0.01, "b.py:lr": 0.25, "width": 64}
    params = {"lr": 0.01, "b.py:lr": 0.5, "width": 32, "name": "y", "model": "m"}
    carried = carried_params(params, own, replay)
    assert carried == {"lr": 0.01, "b.py:lr": 0.25, "width": 64, "name": "y", "model": "m"}
    assert carried_params(params, own, {"a.py": "lr = (\n"}) == params  # a replay that does not parse: as it was
