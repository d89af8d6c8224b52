"""The budget ledger: every teacher token, sample and accelerator-second, against the configured limits.

Teacher spend counts what was *sent*, which is what a provider bills. The guarantee, crash or not:
every teacher attempt (a first send, an HTTP retry after a timeout or 5xx, a request a restarted
replica sends again) is admitted by the spend journal (actors/request_cache.SpendJournal.reserve)
before it leaves, and only if everything already journaled (settled requests at the provider's
usage, open or failed ones at their full reservation, by every replica) plus its own reservation
(estimated prompt tokens + max_new_tokens) stays within budget.teacher_input_tokens,
budget.teacher_output_tokens and budget.usd. Check and append are one step under a file lock
shared by the replicas' processes (one node). An attempt that does not fit is not sent; its request
ends empty for that call and the run stops with a budget reason. So the tokens we *reserve* never
pass a hard limit, and after any crash the journal's spend is >= what a provider billed.

What we cannot bound: a provider counting more tokens than we reserved. Output cannot exceed
max_new_tokens when the server honours `max_tokens` / `max_completion_tokens` (the programmatic
teacher writes whole answers, so its counted output can). Input can exceed our
tokenizer's estimate by the template tokens a server adds that the local chat template lacks; the
settle records the provider's figure, so the next attempt's check sees it, but the requests already
in flight when such an excess lands can take the spend past a limit by the sum of those excesses.
No margin is kept for it: its size depends on the provider's template, which we do not see, and a
guessed margin would either not cover it or waste budget; a run whose limits must hold against the
provider's count should set them below the provider's quota by that difference.

`affordable_requests` is the client's forecast before a call (from the journal's figures): it admits
the requests whose full reservations fit, so a call normally never meets the gate. Accelerator-seconds
are charged after the work, so that limit stops the next iteration rather than the current one; kept
samples (budget.teacher_samples) are capped by the generate stage. Pure logic, no Ray.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Optional

from actors.request_cache import teacher_limit_exceeded
from loopdistill.config import BudgetConfig


@dataclass
class Spent:
    teacher_input_tokens: int = 0
    teacher_output_tokens: int = 0
    teacher_requests: int = 0
    teacher_samples: int = 0
    teacher_answers: int = 0  # answers generated for synthetic questions (r per question), kept or not
    accelerator_seconds: dict[str, float] = field(default_factory=dict)


# The BudgetConfig limits on spending (the two price fields are not limits); each is also a
# `budget/<name>` metric of BudgetLedger.metrics.
LIMITS = ("teacher_input_tokens", "teacher_output_tokens", "teacher_samples", "accelerator_seconds", "usd")


class BudgetLedger:
    """Tracks spend against `BudgetConfig` limits (None = unlimited)."""

    def __init__(self, limits: BudgetConfig):
        self.limits = limits
        self.spent = Spent()

    # --- money --------------------------------------------------------------------------------
    def usd_spent(self) -> float:
        return self.limits.teacher_usd(self.spent.teacher_input_tokens, self.spent.teacher_output_tokens)

    # --- teacher requests ---------------------------------------------------------------------
    def affordable_requests(self, prompt_tokens: list[int], max_new_tokens: int) -> int:
        """How many of these requests, taken in order, fit in the remaining budget when each is
        reserved at prompt_tokens[i] + max_new_tokens (tokens), by the same test the spend journal's
        gate applies to every attempt (actors.request_cache.teacher_limit_exceeded)."""
        n_in, n_out = self.spent.teacher_input_tokens, self.spent.teacher_output_tokens
        for count, tokens in enumerate(prompt_tokens):
            n_in, n_out = n_in + tokens, n_out + max_new_tokens
            if teacher_limit_exceeded(self.limits, n_in, n_out):
                return count
        return len(prompt_tokens)

    # --- samples and seconds ------------------------------------------------------------------
    def samples_left(self) -> Optional[int]:
        """Synthetic pairs that may still be kept (None = unlimited)."""
        lim = self.limits.teacher_samples
        return None if lim is None else max(0, lim - self.spent.teacher_samples)

    def charge_samples(self, n: int, answers: int | None = None) -> None:
        """Count n kept synthetic pairs, out of `answers` teacher answers generated (rejection sampling
        with r answers per question; default: n, one answer each and all kept)."""
        self.spent.teacher_samples += int(n)
        self.spent.teacher_answers += int(n if answers is None else answers)

    def charge_seconds(self, actor: str, seconds: float) -> None:
        """Add busy seconds of one actor role (teacher, student, trainer)."""
        self.spent.accelerator_seconds[actor] = self.spent.accelerator_seconds.get(actor, 0.0) + float(seconds)

    def accelerator_seconds(self) -> float:
        return sum(self.spent.accelerator_seconds.values())

    # --- gates --------------------------------------------------------------------------------
    def exhausted(self) -> Optional[str]:
        """Why no further work can start, or None. A limit counts as exhausted once fully spent."""
        lim, s = self.limits, self.spent
        checks = [
            ("teacher_input_tokens", s.teacher_input_tokens, lim.teacher_input_tokens),
            ("teacher_output_tokens", s.teacher_output_tokens, lim.teacher_output_tokens),
            ("teacher_samples", s.teacher_samples, lim.teacher_samples),
            ("accelerator_seconds", self.accelerator_seconds(), lim.accelerator_seconds),
            ("usd", self.usd_spent(), lim.usd),
        ]
        for name, used, limit in checks:
            if limit is not None and used >= limit:
                return f"budget.{name} exhausted: spent {used:.6g} of {limit:.6g}"
        return None

    # --- reporting ----------------------------------------------------------------------------
    def metrics(self) -> dict[str, float]:
        """Every figure, with units in the names, for MLflow."""
        s = self.spent
        out = {
            "budget/teacher_input_tokens": s.teacher_input_tokens,
            "budget/teacher_output_tokens": s.teacher_output_tokens,
            "budget/teacher_tokens": s.teacher_input_tokens + s.teacher_output_tokens,
            "budget/teacher_requests": s.teacher_requests,
            "budget/teacher_samples": s.teacher_samples,
            "budget/teacher_answers": s.teacher_answers,
            "budget/accelerator_seconds": self.accelerator_seconds(),
            "budget/usd": self.usd_spent(),
        }
        out.update({f"budget/{k}_seconds": v for k, v in s.accelerator_seconds.items()})
        return out

    def state(self) -> dict:
        """The spend as plain data (persisted in the run's state.json)."""
        return asdict(self.spent)

    def restore(self, state: dict) -> None:
        """Take over a spend saved by `state()` (empty dict: nothing spent yet)."""
        self.spent = Spent(**state) if state else Spent()

    def reconcile_teacher(self, paid: dict[str, int]) -> None:
        """Set the teacher figures to what was sent: `paid` = requests, input_tokens, output_tokens
        from the spend journal (actors.request_cache.journal_totals: settled requests at their usage,
        open ones at their full reservation). The journal is written before each request leaves, so
        after a crash it knows spend the last saved ledger missed."""
        self.spent.teacher_requests = int(paid["requests"])
        self.spent.teacher_input_tokens = int(paid["input_tokens"])
        self.spent.teacher_output_tokens = int(paid["output_tokens"])
