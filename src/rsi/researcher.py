"""The LLM proposer: a language model reads the research so far and writes the next change as code edits.

Each proposal is one model call (retried and circuit-broken in `models.Caller`), recorded in the ledger's
`calls` table with its tokens and cost. A reply that is not a clean edit becomes a `rejected` experiment with
its reason, which the model sees in its memory next time. A model whose replies are rejected
`bench_after` times in a row is benched; when every model is benched, or a cost or token cap is reached, the
proposer stops and the research ends cleanly. A candidate that crashes goes back to the model that wrote it
with its error tail, up to MAX_FIXES times; each fix is recorded as a child of the crashed experiment.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence

from rsi.config import ModelConfig, ProposerConfig
from rsi.edits import EditError, apply, parse
from rsi.errors import UserError
from rsi.judge import NoisePool
from rsi.ledger import UNANSWERED_CALL, Experiment
from rsi.models import Attempt, Caller, Model, make_model
from rsi.prompt import SYSTEM, fix_prompt, user_prompt
from rsi.proposer import Context, Proposal

MAX_FIXES = 2  # fix attempts per crashed candidate
CRASHES = ("crash", "timeout", "oom", "no_metric", "invalid_metric")
MAX_WAIT_S = 300.0  # longest wait for an open circuit breaker before giving up on this proposal


class LLMProposer:
    overlap = True

    def __init__(
        self,
        cfg: ProposerConfig,
        *,
        program: str,
        frozen: Sequence[str],
        metric: str,
        goal: str,
        make: Callable[[ModelConfig], Model] = make_model,
        sleep: Callable[[float], None] = time.sleep,
        seed: int = 0,
        name: str = "llm",
    ) -> None:
        self.name = name
        if not cfg.models:
            raise UserError("proposer.models: the llm proposer needs at least one [[proposer.models]] table")
        self.cfg, self.program, self.frozen, self.metric, self.goal = cfg, program, list(frozen), metric, goal
        self.callers = {m.model: (m, Caller(make(m), sleep)) for m in cfg.models}
        self.sleep = sleep
        self.rng = random.Random(seed)
        self.rejected_in_a_row: dict[str, int] = dict.fromkeys(self.callers, 0)
        self.benched: set[str] = set()
        self.written: dict[int, dict[str, str]] = {}  # experiment id -> the files its edits produced
        self.fixes: dict[int, int] = {}  # crashed root experiment -> fix attempts so far
        self.to_fix: Experiment | None = None
        self.done_reason = ""

    def propose(self, ctx: Context) -> Proposal | None:
        if stop := self._capped(ctx):
            self.done_reason = stop
            return None
        live = [name for name in self.callers if name not in self.benched]
        if not live:
            self.done_reason = f"every model is benched after {self.cfg.bench_after} rejected replies in a row"
            return None
        name = self._pick(live)
        cfg, caller = self.callers[name]
        exp_id = ctx.ledger.next_id()
        fix, self.to_fix = self.to_fix, None
        if fix is not None:
            base = self.written[fix.id]
            tail = next((r.stderr_tail or r.stdout_tail for r in reversed(fix.runs) if r.status != "ok"), "")
            prompt, files = fix_prompt(fix, base, tail), base
        else:
            prompt, files = self._prompt(ctx), dict(ctx.files)
        with ctx.ledger.transaction():  # recorded first: a call the research stops waiting for stays on record
            row = ctx.ledger.add_call(exp_id, self.name, cfg.model, (0, 0), 0.0, 0.0, 0, UNANSWERED_CALL)
        try:
            attempt = caller.call(SYSTEM, prompt)
        except BaseException as e:  # not a failed call (those are attempts): a defect, or an interrupt
            self._record(ctx, row, cfg, Attempt(cfg.model, None, f"{type(e).__name__}: {e}"[:500], 0.0, 0))
            raise
        self._record(ctx, row, cfg, attempt)
        params: dict[str, object] = {"model": name}
        if fix is not None:
            params["fix_of"] = int(fix.params.get("fix_of", fix.id))
        if attempt.completion is None:
            return Proposal({}, f"no reply from {name}", params, rejected=f"the model call failed: {attempt.error}")
        try:
            reply = parse(attempt.completion.text)
            touched = [e.path for e in reply.edits if e.path in self.frozen]
            if touched:  # said before a SEARCH block fails on a file the model was never shown
                raise EditError(f"{touched[0]} is frozen")
            edited = apply(files, reply.edits)
        except EditError as e:
            return Proposal({}, _first_line(attempt.completion.text), params, rejected=str(e))
        new_files = {**files, **edited}
        self.written[exp_id] = new_files
        changed = {p: t for p, t in new_files.items() if ctx.files.get(p) != t}
        parent = fix.id if fix is not None else None
        return Proposal(changed, reply.hypothesis, params, parent=parent)

    def observe(self, exp: Experiment) -> None:
        if exp.proposer != self.name:
            return
        model = str(exp.params.get("model", ""))
        if model in self.rejected_in_a_row:
            if exp.status == "rejected":
                self.rejected_in_a_row[model] += 1
                if self.rejected_in_a_row[model] >= self.cfg.bench_after:
                    self.benched.add(model)
            else:
                self.rejected_in_a_row[model] = 0
        root = int(exp.params.get("fix_of", exp.id))
        if exp.status in CRASHES and exp.id in self.written and self.fixes.get(root, 0) < MAX_FIXES:
            self.fixes[root] = self.fixes.get(root, 0) + 1
            self.to_fix = exp

    def _capped(self, ctx: Context) -> str:
        tokens, cost = ctx.ledger.spent()
        if self.cfg.max_cost_usd is not None and cost >= self.cfg.max_cost_usd:
            return f"the cost cap of ${self.cfg.max_cost_usd:g} is reached (${cost:.4f} spent)"
        if self.cfg.max_tokens_total is not None and tokens >= self.cfg.max_tokens_total:
            return f"the token cap of {self.cfg.max_tokens_total} is reached ({tokens} used)"
        return ""

    def _pick(self, live: list[str]) -> str:
        """A model by weight among those whose breaker is closed; waits for one to reopen if none is."""
        waited = 0.0
        while True:
            ready = [n for n in live if self.callers[n][1].available()]
            if ready:
                weights = [self.callers[n][0].weight for n in ready]
                return self.rng.choices(ready, weights=weights)[0]
            if waited >= MAX_WAIT_S:
                return self.rng.choice(live)  # the call itself will fail fast and be recorded
            self.sleep(5.0)
            waited += 5.0

    def _prompt(self, ctx: Context) -> str:
        noise = NoisePool(anchor=0)(ctx.ledger.select_metrics())
        detectable = ctx.ledger.get("detectable")
        return user_prompt(
            program=self.program,
            metric=self.metric,
            goal=self.goal,
            files=ctx.files,
            frozen=self.frozen,
            history=ctx.history(),
            noise_sd=noise.sd if noise else None,
            detectable=float(detectable) if detectable else None,
            ideas=[i["text"] for i in ctx.ledger.ideas()],
        )

    def _record(self, ctx: Context, row: int, cfg: ModelConfig, attempt: Attempt) -> None:
        c = attempt.completion
        tokens = (c.tokens_in, c.tokens_out) if c else (0, 0)
        cost = (tokens[0] * cfg.price_in + tokens[1] * cfg.price_out) / 1e6
        with ctx.ledger.transaction():
            ctx.ledger.finish_call(row, tokens, cost, attempt.duration_s, attempt.retries, attempt.error)


def _first_line(text: str) -> str:
    for line in text.splitlines():
        if line.strip().startswith("Hypothesis:"):
            return line.split(":", 1)[1].strip()[:200] or "a malformed reply"
    return "a malformed reply"
