"""`rsi.toml`: the task's contract with the harness, validated before anything runs.

Every problem is reported as one line naming the key, so a typo never silently falls back to a default.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Annotated, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from rsi.errors import UserError

CONFIG_NAME = "rsi.toml"

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|h)?\s*$")
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(B|KB|MB|GB|TB|KiB|MiB|GiB|TiB)?\s*$")
_SIZE_UNITS = {
    "B": 1,
    "KB": 10**3,
    "MB": 10**6,
    "GB": 10**9,
    "TB": 10**12,
    "KiB": 2**10,
    "MiB": 2**20,
    "GiB": 2**30,
    "TiB": 2**40,
}


def parse_duration(value: object) -> float:
    """Seconds from `90`, `90s`, `10m` or `1.5h`."""
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a duration")
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        m = _DURATION.match(str(value))
        if not m:
            raise ValueError(f"{value!r} is not a duration (write it like 90s, 10m or 2h)")
        seconds = float(m.group(1)) * {"s": 1, "m": 60, "h": 3600, None: 1}[m.group(2)]
    if seconds <= 0:
        raise ValueError(f"{value!r} must be more than zero")
    return seconds


def parse_size(value: object) -> int:
    """Bytes from `4GB` (10^9) or `4GiB` (2^30); a bare number is bytes."""
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a size")
    if isinstance(value, int | float):
        size = int(value)
    else:
        m = _SIZE.match(str(value))
        if not m:
            raise ValueError(f"{value!r} is not a size (write it like 512MB or 4GiB)")
        size = int(float(m.group(1)) * _SIZE_UNITS[m.group(2) or "B"])
    if size <= 0:
        raise ValueError(f"{value!r} must be more than zero")
    return size


Duration = Annotated[float, BeforeValidator(parse_duration)]
Size = Annotated[int, BeforeValidator(parse_size)]


def _check_regex(pattern: str | None) -> str | None:
    if pattern is None:
        return None
    try:
        compiled = re.compile(pattern, re.MULTILINE)
    except re.error as e:
        raise ValueError(f"{pattern!r} is not a valid regex: {e}") from None
    if compiled.groups < 1:
        raise ValueError(f"{pattern!r} needs a group around the value, like '^loss:\\s*(\\S+)'")
    return pattern


def _check_source(pattern: str | None, file: str | None, key: str | None) -> None:
    if (pattern is None) == (file is None):
        raise ValueError("set exactly one of 'pattern' (a regex on the output) or 'file' (a JSON file)")
    if file is not None and key is None:
        raise ValueError("'file' needs 'key', the name of the value in that JSON file")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TaskConfig(_Section):
    name: str = "task"
    editable: list[str] = Field(min_length=1)
    frozen: list[str] = []
    command: str = Field(min_length=1)
    timeout: Duration = 600.0
    memory: Size | None = None
    setup: str | None = None
    budget: Duration | None = None
    env: dict[str, str] = {}
    env_pass: list[str] = []
    secret_patterns: list[str] = []
    output_cap: Size = 10_000_000

    @model_validator(mode="after")
    def _budget_within_timeout(self) -> TaskConfig:
        if self.budget is not None and self.budget >= self.timeout:
            raise ValueError(
                f"budget {self.budget:g}s is not under timeout {self.timeout:g}s: every run that trains for its "
                "budget would be killed (the timeout also covers starting and evaluating)"
            )
        return self


class MetricConfig(_Section):
    name: str = Field(min_length=1)
    goal: Literal["minimize", "maximize"]
    pattern: str | None = None
    file: str | None = None
    key: str | None = None
    evaluator: str | None = None
    progress_pattern: str | None = None  # a line of intermediate progress: (step) and (value)

    _regex = field_validator("pattern")(_check_regex)

    @field_validator("progress_pattern")
    @classmethod
    def _two_groups(cls, pattern: str | None) -> str | None:
        if pattern is not None and re.compile(_check_regex(pattern) or "").groups < 2:
            raise ValueError(f"{pattern!r} needs two groups: the step, then the value")
        return pattern

    @model_validator(mode="after")
    def _one_source(self) -> MetricConfig:
        _check_source(self.pattern, self.file, self.key)
        return self


class HoldoutConfig(_Section):
    command: str = Field(min_length=1)
    pattern: str | None = None
    file: str | None = None
    key: str | None = None
    data: list[str] = []

    _regex = field_validator("pattern")(_check_regex)

    @field_validator("data")
    @classmethod
    def _no_climbing(cls, paths: list[str]) -> list[str]:
        for raw in paths:
            if ".." in raw.split("/"):
                raise ValueError(f"{raw!r}: use a path inside the repository, or an absolute one, without '..'")
        return paths

    @model_validator(mode="after")
    def _one_source(self) -> HoldoutConfig:
        _check_source(self.pattern, self.file, self.key)
        return self


class JudgeConfig(_Section):
    baseline_repeats: int = Field(default=5, ge=1, le=100)
    confidence: float = Field(default=0.99, gt=0.5, lt=1.0)
    max_repeats: int = Field(default=8, ge=1, le=100)
    min_delta: float = Field(default=0.0, ge=0.0)
    replicate: int = Field(default=4, ge=0, le=100)  # fresh runs per arm before a keep lands (a big effect: 1)


class KnobsConfig(_Section):
    include: list[str] = []
    exclude: list[str] = []
    # The defaults are the shipped research program's (programs/default.py), which rsi meta found.
    sampler: Literal["tpe", "cmaes", "random"] = "cmaes"
    per_candidate: int = Field(default=6, ge=1)
    startup: int = Field(default=19, ge=1)  # TPE's random trials before it models
    scouts: int = Field(default=10, ge=0)  # CMA-ES's points before it starts around the best (0: the box middle)
    local: float = Field(default=0.0928, ge=0.0, le=1.0)  # share of candidates that step near the champion
    local_scale: float = Field(default=0.2, gt=0.0)  # their step, as a fraction of each knob's range
    restart_after: int = Field(default=0, ge=0)  # experiments without a keep before the sampler starts over
    multivariate: bool = True  # TPE models the knobs jointly (interactions) instead of one by one
    candidates: int = Field(default=24, ge=1)  # TPE's draws per proposal, the best of which is proposed
    seed: int = Field(default=0, ge=0)  # the proposer's random seed: another one researches another sequence


class ModelConfig(_Section):
    provider: Literal["openai", "anthropic"]
    model: str
    base_url: str | None = None
    api_key_env: str | None = None
    temperature: float = 0.7
    max_tokens: int | None = None
    price_in: float = 0.0
    price_out: float = 0.0
    timeout: Duration = 120.0
    weight: float = 1.0


class ProposerConfig(_Section):
    kind: Literal["knobs", "llm", "swarm"] = "knobs"
    max_cost_usd: float | None = Field(default=None, gt=0)
    max_tokens_total: int | None = Field(default=None, gt=0)
    bench_after: int = Field(default=8, ge=1)  # rejected replies in a row that bench a model
    program: str | None = None
    models: list[ModelConfig] = []
    weights: dict[str, float] = {}  # a swarm's share per kind of member ("knobs", "llm"); 0 leaves it out
    prompt: str = ""  # the research program's advice to an LLM, before the task's program.md


class ExecutorConfig(_Section):
    kind: Literal["local", "ray"] = "local"
    workers: int | None = Field(default=None, ge=1)  # None: one per GPU group with `gpus`, else 1
    gpus: list[int] = []
    gpus_per_experiment: int = Field(default=1, ge=1)
    cpus_per_experiment: int | None = Field(default=None, ge=1)
    address: str | None = None
    node_kind: str | None = None  # Ray: the kind of node to run on (default: the kind with the most CPUs)


class SandboxConfig(_Section):
    enabled: bool = True
    network: bool = False
    read_only: list[str] = []
    writable: list[str] = []
    processes: int = Field(default=1024, ge=8)
    file_size: Size | None = None
    cpu_time: Duration | None = None


class PlateauConfig(_Section):
    """Stop when research has stopped paying: this many finished experiments, or this long, since the last keep."""

    experiments: int | None = Field(default=None, ge=1)
    time: Duration | None = None


class PruningConfig(_Section):
    """Early stopping: a screening run clearly behind the champion's runs at the same step is stopped."""

    enabled: bool = False
    # a run no worse than the champion's is stopped with probability at most 1 - confidence
    confidence: float = Field(default=0.95, gt=0.5, lt=1.0)
    warmup: float = Field(default=0.25, ge=0.0, le=1.0)  # of the champion's trajectory, before the first look
    looks: int = Field(default=4, ge=1, le=100)  # times a run is compared, evenly spaced from warmup to the end
    # what a run must be unlikely to reach to be stopped: the smallest gain the judge detects over the champion
    # (at or below par for a deletion the simplicity rule may keep), or the champion's level ("par")
    spare: Literal["detectable", "par"] = "detectable"


class ConstraintConfig(_Section):
    """A bound on a secondary figure: a candidate that breaks it is not kept, whatever its metric."""

    name: str = Field(min_length=1)
    source: Literal["peak_memory_mb", "duration_s"] | None = None  # recorded for every run
    pattern: str | None = None  # or parsed from the run's output like the metric (last match wins)
    max: float | None = None
    min: float | None = None

    _regex = field_validator("pattern")(_check_regex)

    @model_validator(mode="after")
    def _complete(self) -> ConstraintConfig:
        if (self.source is None) == (self.pattern is None):
            raise ValueError(f"constraint {self.name!r}: give one of source or pattern")
        if self.max is None and self.min is None:
            raise ValueError(f"constraint {self.name!r}: give max, min or both")
        if self.max is not None and self.min is not None and self.min > self.max:
            raise ValueError(f"constraint {self.name!r}: min {self.min:g} is above max {self.max:g}: nothing meets it")
        return self


class Config(_Section):
    task: TaskConfig
    metric: MetricConfig
    holdout: HoldoutConfig | None = None
    judge: JudgeConfig = JudgeConfig()
    knobs: KnobsConfig = KnobsConfig()
    proposer: ProposerConfig = ProposerConfig()
    executor: ExecutorConfig = ExecutorConfig()
    sandbox: SandboxConfig = SandboxConfig()
    constraints: list[ConstraintConfig] = []
    plateau: PlateauConfig = PlateauConfig()
    pruning: PruningConfig = PruningConfig()


def _first_error(err: ValidationError) -> str:
    e = err.errors()[0]
    where = ".".join(str(p) for p in e["loc"])
    msg = e["msg"].removeprefix("Value error, ")
    if e["type"] == "extra_forbidden":
        msg = "unknown key (check its spelling against the rsi.toml reference)"
    elif e["type"] == "missing":
        msg = "missing, and it has no default"
    elif e["type"] == "literal_error":
        msg = f"{e['input']!r} is not allowed; it must be {msg.removeprefix('Input should be ')}"
    return f"{where}: {msg}" if where else msg


def load_config(root: Path) -> Config:
    """Read and validate `rsi.toml` at the repository root; any problem is a one-line UserError."""
    path = root / CONFIG_NAME
    if not path.is_file():
        raise UserError(f"no {CONFIG_NAME} in {root} (write one with `rsi init`)")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as e:
        raise UserError(f"{CONFIG_NAME} is not valid TOML: {e}") from None
    except UnicodeDecodeError:
        raise UserError(f"{CONFIG_NAME} is not UTF-8 text") from None
    try:
        return Config.model_validate(data)
    except ValidationError as e:
        raise UserError(f"{CONFIG_NAME}: {_first_error(e)}") from None
