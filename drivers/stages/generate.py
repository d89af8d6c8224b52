"""Step 4: the teacher rewrites each selected seed into a new question (k few-shot examples from the
pool), questions equal or near to a validation/test question (decontamination) or to an earlier
synthetic question (ROUGE-L deduplication) are dropped before any answer is paid for, and the teacher
answers the rest r times (rejection sampling keeps the verified or majority answers).
"""
from __future__ import annotations

import pyarrow as pa

from drivers import decontamination, synthesis
from drivers.context import RunContext, StageInputs, StageResult

TABLES = ("synthetic",)


def run(ctx: RunContext, inputs: StageInputs) -> StageResult:
    """{"synthetic": SYNTHETIC rows of this iteration} from inputs.tables["selected"] (SEEDS rows)
    and inputs.synthetic (S so far: the earlier questions new ones must not repeat). Stops (no
    tables) when the budget cannot pay for a single rewrite or first-round answer."""
    loop, task, t = ctx.config.loop, ctx.task, inputs.iteration
    chosen = inputs.tables["selected"].to_pylist()
    requests = synthesis.rewrite_requests(task, chosen, ctx.splits.seeds.to_pylist(), loop.few_shot_k, t, loop.seed)
    rewrites = ctx.teacher.ask(requests, t, "rewrite")
    if rewrites.stop_reason:
        return StageResult(stop_reason=rewrites.stop_reason)
    candidates, bad_rewrites = synthesis.parse_rewrites(task, chosen, rewrites.responses)
    # Before any answer is paid for: every path to S (one answer or r for rejection sampling)
    # starts from these candidates, so no validation/test question can reach training data.
    evaluation = decontamination.evaluation_questions(ctx.splits.validation, ctx.splits.test)
    index = decontamination.EvaluationIndex(task, evaluation, loop.decontamination_threshold)
    candidates, contaminated = decontamination.decontaminate(candidates, index)
    earlier = inputs.synthetic.column("question").to_pylist()
    kept, dropped = synthesis.Deduplicator(task, loop.dedup_rouge_l).filter(candidates, earlier)
    left = ctx.ledger.samples_left()
    kept = kept if left is None else kept[:left]
    answers, reason = answer_candidates(ctx, kept, t)
    if reason:
        return StageResult(stop_reason=reason)
    answered = answers[0].num_rows if answers else 0  # the budget may cut the first round short
    new, bad_answers = synthesis.build_synthetic(task, kept[:answered], answers, t, loop.strategy)
    left = ctx.ledger.samples_left()
    new = new if left is None else new.slice(0, left)
    ctx.ledger.charge_samples(new.num_rows, answers=sum(a.num_rows for a in answers))
    return StageResult(tables={"synthetic": new}, metrics={
        "synth/unparseable_rewrites": bad_rewrites,
        "synth/decontaminated": len(contaminated),
        "synth/deduplicated": dropped,
        "synth/rejected_answers": bad_answers,
        "synth/responses_per_question": len(answers),
        "synth/answers_generated": sum(a.num_rows for a in answers),
        "synth/kept": new.num_rows,
        "synth/total": inputs.synthetic.num_rows + new.num_rows,
    })


def answer_candidates(ctx: RunContext, kept: list[synthesis.Candidate], t: int) -> tuple[list[pa.Table], str]:
    """r = loop.responses_per_question TEACHER_RESPONSES tables for the kept candidates (round j's
    request ids end in -r<j>, so each answer samples with its own seed); stops early, keeping what was
    paid, when the budget runs out after the first round. (tables, stop reason of the first round)."""
    tables = []
    for j in range(ctx.config.loop.responses_per_question):
        reply = ctx.teacher.ask(synthesis.answer_requests(ctx.task, kept, t, response=j), t, "answer")
        if reply.stop_reason and not tables:
            return [], reply.stop_reason
        if reply.stop_reason or reply.responses.num_rows == 0:
            break
        tables.append(reply.responses)
    return tables, ""
