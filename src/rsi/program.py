"""The research program: the values that decide how rsi researches (programs/default.py), read from a file.

A program is a Python module of plain assignments, so the knobs proposer can tune it and an LLM can edit it
(`rsi meta`). It is run in a fresh namespace and only its known upper-case names are read; other names are
ignored, except an upper-case one close to a known one (a typo: `SCOUT` for `SCOUTS`), which is one line, as is a
wrong type or range.
"""

from __future__ import annotations

import dataclasses
import difflib
from importlib import resources
from pathlib import Path
from typing import Any

from rsi.config import Config
from rsi.errors import UserError

DEFAULT_FILE = "programs/default.py"
ORIGINAL_FILE = "programs/original.py"  # the first default, frozen: what every meta benchmark compares against


@dataclasses.dataclass(frozen=True)
class Program:
    proposer: str = "knobs"
    knobs_weight: float = 1.0
    llm_weight: float = 1.0
    sampler: str = "cmaes"
    startup: int = 19
    scouts: int = 0  # a program that names none predates scouts (programs/default.py has 10)
    per_candidate: int = 6
    local: float = 0.0928
    local_scale: float = 0.2
    baseline_repeats: int = 5
    confidence: float = 0.99
    max_repeats: int = 8
    min_delta: float = 0.0
    replicate: int = 4
    restart_after: int = 0
    multivariate: bool = True
    candidates: int = 24
    prompt: str = ""


_CHECKS: dict[str, tuple[type, Any, Any]] = {  # name -> (type, low, high); choices for strings
    "proposer": (str, ("knobs", "llm", "swarm"), None),
    "sampler": (str, ("tpe", "cmaes", "random"), None),
    "knobs_weight": (float, 0.0, None),
    "llm_weight": (float, 0.0, None),
    "startup": (int, 1, 1000),
    "scouts": (int, 0, 1000),
    "per_candidate": (int, 1, 100),
    "local": (float, 0.0, 1.0),
    "local_scale": (float, 1e-6, 10.0),
    "baseline_repeats": (int, 1, 100),
    "confidence": (float, 0.5, 0.999999),
    "max_repeats": (int, 1, 100),
    "min_delta": (float, 0.0, None),
    "replicate": (int, 0, 100),
    "restart_after": (int, 0, None),
    "multivariate": (bool, None, None),
    "candidates": (int, 1, 10_000),
    "prompt": (str, None, None),
}


def default_text() -> str:
    return resources.files("rsi").joinpath(DEFAULT_FILE).read_text(encoding="utf-8")


def original_text() -> str:
    return resources.files("rsi").joinpath(ORIGINAL_FILE).read_text(encoding="utf-8")


def parse_program(text: str, where: str = "the program") -> Program:
    """The program a file's text defines. Runs it: it is code the user (or rsi meta) chose to run."""
    path = Path(where)
    namespace: dict[str, Any] = {}
    try:
        code = compile(text, where, "exec")
        exec(code, namespace)  # a program is Python by design, like a config written in code
    except Exception as e:  # a program that does not run is the user's mistake: one line
        raise UserError(f"{path.name}: {type(e).__name__}: {e}") from None
    known = {field.name.upper() for field in dataclasses.fields(Program)}
    for name in sorted(namespace):
        if name.isupper() and name not in known and (near := difflib.get_close_matches(name, known, n=1, cutoff=0.8)):
            raise UserError(f"{path.name}: {name} is no setting of a research program; did you mean {near[0]}?")
    values: dict[str, Any] = {}
    for field in dataclasses.fields(Program):
        name = field.name.upper()
        if name not in namespace:
            continue
        value = namespace[name]
        kind, low, high = _CHECKS[field.name]
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
            raise UserError(f"{path.name}: {name} must be {kind.__name__}, not {value!r}")
        if kind is str and isinstance(low, tuple) and value not in low:
            raise UserError(f"{path.name}: {name} = {value!r}: choose one of {', '.join(low)}")
        if kind in (int, float) and ((low is not None and value < low) or (high is not None and value > high)):
            bounds = f"at least {low}" if high is None else f"between {low} and {high}"
            raise UserError(f"{path.name}: {name} = {value!r}: must be {bounds}")
        values[field.name] = value
    return Program(**values)


def load_program(path: Path) -> Program:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise UserError(f"--program {path}: {e.strerror or e}") from None
    return parse_program(text, str(path))


def default_program() -> Program:
    return parse_program(default_text(), DEFAULT_FILE)


def apply_program(cfg: Config, p: Program) -> Config:
    """The config with the program filling in every setting rsi.toml leaves unset: the task's own choices
    stand, the program decides the rest."""

    def fill(section: Any, values: dict[str, Any]) -> Any:
        return section.model_copy(update={k: v for k, v in values.items() if k not in section.model_fields_set})

    knobs = fill(
        cfg.knobs,
        {
            "sampler": p.sampler,
            "startup": p.startup,
            "scouts": p.scouts,
            "per_candidate": p.per_candidate,
            "local": p.local,
            "local_scale": p.local_scale,
            "restart_after": p.restart_after,
            "multivariate": p.multivariate,
            "candidates": p.candidates,
        },
    )
    judge = fill(
        cfg.judge,
        {
            "baseline_repeats": p.baseline_repeats,
            "confidence": p.confidence,
            "max_repeats": p.max_repeats,
            "min_delta": p.min_delta,
            "replicate": p.replicate,
        },
    )
    weights = {"knobs": p.knobs_weight, "llm": p.llm_weight}
    proposer = fill(cfg.proposer, {"kind": p.proposer, "weights": weights, "prompt": p.prompt})
    return cfg.model_copy(update={"knobs": knobs, "judge": judge, "proposer": proposer})
