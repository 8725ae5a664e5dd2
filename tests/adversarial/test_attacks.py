"""Each hostile candidate is contained: right status, no secret out, nothing outside its worktree changed,
no process left behind, and the orchestrator goes on to finish its budget. Inside bubblewrap every attack is
contained; without it (sandbox disabled) the harness's own limits still contain those that need no view."""

from __future__ import annotations

from pathlib import Path

import pytest
from attacks import ATTACKS, Attack, cli, run_attack, sandbox_available

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("attack", ATTACKS, ids=[a.name.split(",")[0][:40] for a in ATTACKS])
def test_attack_is_contained_in_the_sandbox(attack: Attack, tmp_path: Path) -> None:
    if not sandbox_available():
        pytest.skip("bubblewrap is not installed (.ci/run installs it)")
    outcome = run_attack(attack, tmp_path, sandbox=True, rsi=cli)
    assert outcome.contained, outcome


@pytest.mark.parametrize(
    "attack", [a for a in ATTACKS if not a.needs_sandbox], ids=[a.name[:40] for a in ATTACKS if not a.needs_sandbox]
)
def test_attack_is_contained_by_the_limits_alone(attack: Attack, tmp_path: Path) -> None:
    outcome = run_attack(attack, tmp_path, sandbox=False, rsi=cli)
    assert outcome.contained, outcome
