"""Language models behind one small protocol: the official OpenAI and Anthropic SDKs, and any server that speaks
OpenAI's Chat Completions (vLLM, Ollama, a llama.cpp server) by `base_url`.

The SDKs' own retries are off: `Caller` retries here, the same way for every provider, on 429, 5xx, timeouts
and dropped connections, with exponential backoff that honours Retry-After; a circuit breaker per model stops
calling a model that keeps failing, for a cool-down. A key is read from the variable `api_key_env` names, at
the moment a client is made; it is never stored, logged or put in a prompt.
"""

from __future__ import annotations

import importlib
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from rsi.config import ModelConfig
from rsi.errors import UserError

RETRIES = 4  # attempts after the first, for transient failures
BACKOFF_S = 1.0  # first wait; doubles, with jitter
MAX_WAIT_S = 60.0  # longest wait, Retry-After included
BREAKER_FAILURES = 3  # failed calls in a row (after retries) that open the breaker
BREAKER_COOLDOWN_S = 120.0
DEFAULT_MAX_TOKENS = 4096  # Anthropic requires a cap; the same default for every provider


@dataclass(frozen=True)
class Completion:
    text: str
    tokens_in: int
    tokens_out: int


class Transient(Exception):
    """Worth retrying: rate limit, server error, timeout, connection lost."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class Permanent(Exception):
    """Not worth retrying: a bad request, a bad key, a missing model."""


class Model(Protocol):
    @property
    def name(self) -> str: ...

    def complete(self, system: str, user: str) -> Completion:
        """One call; raises Transient or Permanent."""
        ...


def _key(cfg: ModelConfig) -> str:
    if cfg.api_key_env is None:
        return "none"  # a local server that wants no key; the SDKs insist on a non-empty one
    value = os.environ.get(cfg.api_key_env)
    if not value:
        raise UserError(f"proposer.models: {cfg.api_key_env} is not set (the variable api_key_env names)")
    return value


def _sdk(name: str) -> Any:
    """The provider's official SDK, an optional extra of rsi."""
    try:
        return importlib.import_module(name)
    except ImportError:
        raise UserError(f"the {name} SDK is not installed: pip install 'rsi[llm]'") from None


def _retry_after(error: Any) -> float | None:
    response = getattr(error, "response", None)
    raw = response.headers.get("retry-after") if response is not None else None
    try:
        return None if raw is None else max(float(raw), 0.0)
    except ValueError:
        return None


def _classify(error: Exception, module: Any) -> Exception:
    """The SDKs' exceptions, in our two kinds; both SDKs name their classes alike."""
    if isinstance(error, (module.APITimeoutError, module.APIConnectionError)):
        return Transient(f"{type(error).__name__}: {error}")
    if isinstance(error, module.APIStatusError):
        status = error.status_code
        message = f"HTTP {status}: {str(error)[:200]}"
        if status == 429 or status >= 500 or status == 408:
            return Transient(message, _retry_after(error))
        return Permanent(message)
    return Permanent(f"{type(error).__name__}: {str(error)[:200]}")


class OpenAIChat:
    """OpenAI's Chat Completions, from OpenAI or from any compatible server."""

    def __init__(self, cfg: ModelConfig) -> None:
        openai = _sdk("openai")

        self.cfg, self._module = cfg, openai
        self.client = openai.OpenAI(api_key=_key(cfg), base_url=cfg.base_url, timeout=cfg.timeout, max_retries=0)

    @property
    def name(self) -> str:
        return self.cfg.model

    def complete(self, system: str, user: str) -> Completion:
        try:
            response = self.client.chat.completions.create(
                model=self.cfg.model,
                messages=[{"role": "system", "content": system}, {"role": "user", "content": user}],
                temperature=self.cfg.temperature,
                max_tokens=self.cfg.max_tokens or DEFAULT_MAX_TOKENS,
            )
        except self._module.OpenAIError as e:
            raise _classify(e, self._module) from None
        text = response.choices[0].message.content if response.choices else None
        usage = response.usage
        return Completion(text or "", usage.prompt_tokens if usage else 0, usage.completion_tokens if usage else 0)


class AnthropicMessages:
    """Anthropic's Messages API (its current SDK takes no temperature: `temperature` is for the others)."""

    def __init__(self, cfg: ModelConfig) -> None:
        anthropic = _sdk("anthropic")

        self.cfg, self._module = cfg, anthropic
        self.client = anthropic.Anthropic(api_key=_key(cfg), base_url=cfg.base_url, timeout=cfg.timeout, max_retries=0)

    @property
    def name(self) -> str:
        return self.cfg.model

    def complete(self, system: str, user: str) -> Completion:
        try:
            response = self.client.messages.create(
                model=self.cfg.model,
                system=system,
                messages=[{"role": "user", "content": user}],
                max_tokens=self.cfg.max_tokens or DEFAULT_MAX_TOKENS,
            )
        except self._module.AnthropicError as e:
            raise _classify(e, self._module) from None
        text = "".join(getattr(block, "text", "") for block in response.content)
        return Completion(text, response.usage.input_tokens, response.usage.output_tokens)


def make_model(cfg: ModelConfig) -> Model:
    return AnthropicMessages(cfg) if cfg.provider == "anthropic" else OpenAIChat(cfg)


@dataclass
class Attempt:
    """What one call cost and how it ended, for the ledger."""

    model: str
    completion: Completion | None
    error: str
    duration_s: float
    retries: int


class Caller:
    """Calls one model with retries and a circuit breaker."""

    def __init__(self, model: Model, sleep: Callable[[float], None] = time.sleep) -> None:
        self.model = model
        self.sleep = sleep
        self.failures = 0  # calls in a row that failed after their retries
        self.open_until = 0.0

    def available(self) -> bool:
        return time.monotonic() >= self.open_until

    def call(self, system: str, user: str) -> Attempt:
        started = time.monotonic()
        error = ""
        for attempt in range(RETRIES + 1):
            try:
                completion = self.model.complete(system, user)
            except Transient as e:
                error = str(e)
                if attempt == RETRIES:
                    break
                wait = e.retry_after if e.retry_after is not None else BACKOFF_S * 2**attempt * random.uniform(1, 1.5)
                self.sleep(min(wait, MAX_WAIT_S))
                continue
            except Permanent as e:
                error = str(e)
                break
            self.failures = 0
            return Attempt(self.model.name, completion, "", time.monotonic() - started, attempt)
        self.failures += 1
        if self.failures >= BREAKER_FAILURES:
            self.open_until = time.monotonic() + BREAKER_COOLDOWN_S
            error += f" (breaker open for {BREAKER_COOLDOWN_S:g}s after {self.failures} failed calls)"
        return Attempt(self.model.name, None, error, time.monotonic() - started, attempt)
