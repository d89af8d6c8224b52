"""Does the synthetic set keep growing at study sizes? The programmatic teacher, without a student.

Replays the loop's generate stage on its own: every iteration all `--seeds` seeds of the pool are
rewritten (m = pool size, the largest selection a study makes) with `--k` few-shot examples, by the
task's programmatic teacher with the random stream the engine draws for each request (its seed from
loopdistill.seeds.request_seed, as the teacher client gives it); the
rewrites are parsed, decontaminated against the validation and test questions, and deduplicated against
everything kept before. Prints, per iteration, the new distinct questions kept, and the rewrites dropped
as duplicates and as evaluation questions. Game of 24 runs once per `--max-numbers` value (evaluation
stays on the ToT rows 900-999 of 24.csv); ProntoQA once (seeds from the coconut test file, validation from
its valid file, test from Logic-LM).

    PYTHONPATH=. python benchmarks/synthetic_growth.py --seeds 768 --iterations 6 --max-numbers 13 20 25 30 50
"""
from __future__ import annotations

import argparse
import random
import time

from benchmarks.common import data_root
from drivers import decontamination, synthesis
from loopdistill.schemas import TEACHER_RESPONSES, make_table
from loopdistill.seeds import request_seed
from loopdistill.tasks import Task, get_task


def simulate(task: Task, splits, iterations: int, k: int, threshold: float, seed: int = 0) -> list[dict]:
    """Per iteration: {"new", "duplicates", "decontaminated", "unparseable", "total", "wide"} where wide
    counts kept Game of 24 puzzles with a number above 13 (0 for other tasks)."""
    pool = splits.seeds.to_pylist()
    index = decontamination.EvaluationIndex(task, decontamination.evaluation_questions(splits.validation, splits.test), threshold)
    earlier: list[str] = []
    out = []
    for t in range(iterations):
        requests = synthesis.rewrite_requests(task, pool, pool, k, t, seed)
        # The programmatic engine draws one random stream per (request seed, prompt).
        seeds = [request_seed(seed, t, "rewrite", rid) for rid in requests.column("request_id").to_pylist()]
        texts = [task.programmatic_teacher(p, random.Random(f"{s}\n{p}")) for p, s in zip(requests.column("prompt").to_pylist(), seeds)]
        responses = make_table(TEACHER_RESPONSES, [{"request_id": str(i), "text": x, "input_tokens": 0, "output_tokens": 0, "cached": False} for i, x in enumerate(texts)])
        candidates, bad = synthesis.parse_rewrites(task, pool, responses)
        candidates, contaminated = decontamination.decontaminate(candidates, index)
        kept, dropped = synthesis.Deduplicator(task, threshold).filter(candidates, earlier)
        earlier += [c.question for c in kept]
        wide = sum(max(int(n) for n in (task.question_reference(c.question) or "0").split()) > 13 for c in kept) if task.name == "game24" else 0
        out.append({"new": len(kept), "duplicates": dropped, "decontaminated": len(contaminated), "unparseable": bad, "total": len(earlier), "wide": wide})
    return out


def print_table(title: str, rows: list[dict], seconds: float) -> None:
    print(f"\n{title} ({seconds:.0f} s)")
    print("| iteration | new distinct | duplicates | decontaminated | unparseable | total | kept with a number > 13 |")
    print("|---|---|---|---|---|---|---|")
    for t, r in enumerate(rows):
        print(f"| {t} | {r['new']} | {r['duplicates']} | {r['decontaminated']} | {r['unparseable']} | {r['total']} | {r['wide']} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=768, help="seed pool size = rewrites per iteration")
    parser.add_argument("--validation", type=int, default=64)
    parser.add_argument("--test", type=int, default=100)
    parser.add_argument("--iterations", type=int, default=6)
    parser.add_argument("--k", type=int, default=5, help="few-shot examples per rewrite prompt")
    parser.add_argument("--threshold", type=float, default=0.7, help="ROUGE-L F of dedup and decontamination")
    parser.add_argument("--max-numbers", type=int, nargs="+", default=[13, 20, 25, 30, 50])
    parser.add_argument("--tasks", nargs="+", default=["game24", "prontoqa"])
    args = parser.parse_args()
    root = data_root()
    if "game24" in args.tasks:
        base = get_task("game24")
        splits = base.load_splits(str(root / "game24" / "24.csv"), args.seeds, args.validation, args.test, 0)
        for max_number in args.max_numbers:
            start = time.perf_counter()
            rows = simulate(base.with_options(max_number=max_number), splits, args.iterations, args.k, args.threshold)
            print_table(f"game24, max_number {max_number}, {args.seeds} seeds x {args.iterations} iterations", rows, time.perf_counter() - start)
    if "prontoqa" in args.tasks:
        task = get_task("prontoqa")
        splits = task.load_splits(str(root / "prontoqa"), args.seeds, args.validation, args.test, 0)
        start = time.perf_counter()
        rows = simulate(task, splits, args.iterations, args.k, args.threshold)
        print_table(f"prontoqa, {args.seeds} seeds x {args.iterations} iterations", rows, time.perf_counter() - start)


if __name__ == "__main__":
    main()
