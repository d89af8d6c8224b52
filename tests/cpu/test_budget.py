from drivers.budget import BudgetLedger
from loopdistill.config import BudgetConfig


def test_reservation_counts_prompt_plus_max_new_tokens():
    ledger = BudgetLedger(BudgetConfig(teacher_input_tokens=100, teacher_output_tokens=50))
    # each request reserves 20 input + 20 output: two fit the output limit (40 <= 50), three do not
    assert ledger.affordable_requests([20, 20, 20, 20], max_new_tokens=20) == 2


def test_settle_at_real_count_frees_the_unused_reservation():
    ledger = BudgetLedger(BudgetConfig(teacher_output_tokens=50))
    assert ledger.affordable_requests([1, 1, 1], max_new_tokens=20) == 2
    ledger.reconcile_teacher({"requests": 2, "input_tokens": 2, "output_tokens": 10})  # the journal's settled usage
    assert ledger.affordable_requests([1, 1, 1], max_new_tokens=20) == 2
    assert ledger.metrics()["budget/teacher_tokens"] == 12


def test_usd_limit():
    ledger = BudgetLedger(BudgetConfig(usd=1.0, usd_per_million_input_tokens=1e6, usd_per_million_output_tokens=0))
    assert ledger.affordable_requests([1, 1], max_new_tokens=5) == 1


def test_exhausted_names_the_limit():
    ledger = BudgetLedger(BudgetConfig(teacher_samples=3))
    assert ledger.exhausted() is None
    ledger.charge_samples(3)
    assert ledger.exhausted() == "budget.teacher_samples exhausted: spent 3 of 3"
    assert ledger.samples_left() == 0


def test_seconds_per_actor_are_summed():
    ledger = BudgetLedger(BudgetConfig(accelerator_seconds=10))
    ledger.charge_seconds("student", 4)
    ledger.charge_seconds("trainer", 5)
    assert ledger.exhausted() is None
    ledger.charge_seconds("student", 1)
    assert "accelerator_seconds" in ledger.exhausted()
    m = ledger.metrics()
    assert m["budget/student_seconds"] == 5 and m["budget/accelerator_seconds"] == 10


def test_unlimited_budget_affords_everything():
    assert BudgetLedger(BudgetConfig()).affordable_requests([10**9] * 3, 10**9) == 3


def test_rejection_sampling_counts_generated_and_kept_answers():
    ledger = BudgetLedger(BudgetConfig(teacher_samples=10))
    ledger.charge_samples(3, answers=8)  # r = 4 answers for 2 questions, 3 kept
    ledger.charge_samples(2)
    m = ledger.metrics()
    assert m["budget/teacher_samples"] == 5 and m["budget/teacher_answers"] == 10
    restored = BudgetLedger(BudgetConfig())
    restored.restore(ledger.state())
    assert restored.metrics()["budget/teacher_answers"] == 10
    old = ledger.state()
    del old["teacher_answers"]  # a state.json written before this field existed still loads
    restored.restore(old)
    assert restored.metrics()["budget/teacher_answers"] == 0


def test_ledger_takes_spend_from_the_journal_with_open_reservations_in_full(tmp_path):
    """After a crash with requests in flight, the ledger's spend covers them at their reservation, and
    what is still affordable shrinks accordingly (a hard limit holds across the crash)."""
    from actors.request_cache import SpendJournal, journal_totals

    journal = SpendJournal(tmp_path / "j.jsonl")
    done, in_flight = journal.reserve([(10, 50), (10, 50)])
    journal.settle([(done, 10, 5)])
    ledger = BudgetLedger(BudgetConfig(teacher_output_tokens=120))
    ledger.reconcile_teacher(journal_totals(tmp_path / "j.jsonl"))
    assert (ledger.spent.teacher_requests, ledger.spent.teacher_input_tokens, ledger.spent.teacher_output_tokens) == (2, 20, 55)
    assert ledger.affordable_requests([10, 10], 50) == 1  # 55 + 50 <= 120 < 55 + 100
