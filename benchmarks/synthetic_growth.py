"""Does the synthetic set keep growing at study sizes? The programmatic teacher, without a student.

Replays the loop's generate stage on its own, at the sizes of a run config (seed pool, validation and
test splits, m = `loop.seeds_per_iteration`, `loop.iterations`, `loop.few_shot_k`, the task options):
every iteration m seeds are drawn at random from the pool (the `random` strategy; `--replicates` loop
seeds 0, 1, ...), rewritten with k few-shot examples by the task's programmatic teacher with the random
stream the engine draws for each request (its seed from loopdistill.seeds.request_seed, as the teacher
client gives it), parsed, decontaminated against the validation and test questions, and deduplicated
against everything kept before. Prints, per iteration (mean over replicates): the new distinct questions
kept, how many of them are Game of 24 puzzles with all four numbers in 1..13 (the evaluation range), the
rewrites dropped as evaluation questions (decontaminated), as duplicates and as unparseable, and the
kept total. Game of 24 runs once per `--fractions` value of `task.in_range_fraction` ("config": the
config's own value, "off": None, no preference); other tasks once.

    PYTHONPATH=. python benchmarks/synthetic_growth.py --config configs/study_game24_gpu.yaml --fractions off 0.3 0.5
    PYTHONPATH=. python benchmarks/synthetic_growth.py --config configs/study_prontoqa_gpu.yaml
"""
from __future__ import annotations

import argparse
import random
import statistics
import time

from drivers import decontamination, synthesis
from drivers.loop import configured_task, load_splits
from loopdistill.config import RunConfig, load_config
from loopdistill.schemas import TEACHER_RESPONSES, make_table
from loopdistill.seeds import request_seed
from loopdistill.tasks import Task

DECK = 13  # Game of 24 evaluation puzzles use 1..13


def in_deck(task: Task, question: str) -> bool:
    """True for a Game of 24 question whose four numbers all lie in 1..13 (False for other tasks)."""
    reference = task.question_reference(question) if task.name == "game24" else None
    return reference is not None and max(int(n) for n in reference.split()) <= DECK


def simulate(task: Task, splits, iterations: int, m: int, k: int, threshold: float, seed: int = 0) -> list[dict]:
    """Per iteration: {"new", "in_deck", "decontaminated", "duplicates", "unparseable", "total",
    "total_in_deck"}: counts of rewrites (m of them an iteration) and of kept questions; in_deck counts
    kept Game of 24 puzzles with all numbers in 1..13 (0 for other tasks)."""
    pool = splits.seeds.to_pylist()
    index = decontamination.EvaluationIndex(task, decontamination.evaluation_questions(splits.validation, splits.test), threshold)
    earlier: list[str] = []
    total_in_deck = 0
    out = []
    for t in range(iterations):
        selected = random.Random(f"{seed}-select-{t}").sample(pool, min(m, len(pool)))
        requests = synthesis.rewrite_requests(task, selected, pool, k, t, seed)
        # The programmatic engine draws one random stream per (request seed, prompt).
        seeds = [request_seed(seed, t, "rewrite", rid) for rid in requests.column("request_id").to_pylist()]
        texts = [task.programmatic_teacher(p, random.Random(f"{s}\n{p}")) for p, s in zip(requests.column("prompt").to_pylist(), seeds)]
        responses = make_table(TEACHER_RESPONSES, [{"request_id": str(i), "text": x, "input_tokens": 0, "output_tokens": 0, "cached": False} for i, x in enumerate(texts)])
        candidates, bad = synthesis.parse_rewrites(task, selected, responses)
        candidates, contaminated = decontamination.decontaminate(candidates, index)
        kept, dropped = synthesis.Deduplicator(task, threshold).filter(candidates, earlier)
        earlier += [c.question for c in kept]
        new_in_deck = sum(in_deck(task, c.question) for c in kept)
        total_in_deck += new_in_deck
        out.append({"new": len(kept), "in_deck": new_in_deck, "decontaminated": len(contaminated), "duplicates": dropped,
                    "unparseable": bad, "total": len(earlier), "total_in_deck": total_in_deck})
    return out


def run_replicates(task: Task, splits, config: RunConfig, replicates: int) -> list[list[dict]]:
    """simulate() once per loop seed 0..replicates-1 at the config's sizes."""
    loop = config.loop
    return [simulate(task, splits, loop.iterations, loop.seeds_per_iteration, loop.few_shot_k, loop.decontamination_threshold, seed)
            for seed in range(replicates)]


def print_table(title: str, runs: list[list[dict]], m: int, seconds: float, deck: bool = True) -> None:
    """Markdown table, one row per iteration, each figure the mean over the replicate runs; deck: show
    the 1..13 counts (Game of 24; "-" otherwise)."""
    print(f"\n{title} ({len(runs)} replicates, {seconds:.0f} s)")
    print("| iteration | rewrites | new distinct | new in 1..13 | decontaminated | duplicates | unparseable | total kept | total in 1..13 |")
    print("|---|---|---|---|---|---|---|---|---|")
    for t in range(len(runs[0])):
        mean = {key: statistics.fmean(run[t][key] for run in runs) for key in runs[0][t]}
        share = mean["in_deck"] / mean["new"] if mean["new"] else 0.0
        total_share = mean["total_in_deck"] / mean["total"] if mean["total"] else 0.0
        new_deck = f"{mean['in_deck']:.0f} ({share:.0%})" if deck else "-"
        total_deck = f"{mean['total_in_deck']:.0f} ({total_share:.0%})" if deck else "-"
        print(f"| {t} | {m} | {mean['new']:.0f} | {new_deck} | {mean['decontaminated']:.1f} | "
              f"{mean['duplicates']:.0f} | {mean['unparseable']:.1f} | {mean['total']:.0f} | {total_deck} |")
    totals = [run[-1]["total"] for run in runs]
    if len(totals) > 1:
        print(f"total kept per replicate: {totals} (SE {statistics.stdev(totals) / len(totals) ** 0.5:.1f})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default="configs/study_game24_gpu.yaml", help="run config giving the sizes and task options")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="config overrides, e.g. loop.iterations=3")
    parser.add_argument("--fractions", nargs="+", default=["config"],
                        help="Game of 24 task.in_range_fraction values to compare; 'config': the config's own, 'off': None")
    parser.add_argument("--replicates", type=int, default=3, help="loop seeds 0..N-1 (selection and request seeds)")
    args = parser.parse_args()
    config = load_config(args.config, args.set)
    splits = load_splits(config)
    base = configured_task(config)
    values = args.fractions if config.task.name == "game24" else ["config"]
    for value in values:
        if value == "off":
            task = type(base)(base.max_number, None)
        else:
            task = base if value == "config" else base.with_options(in_range_fraction=float(value))
        label = f"in_range_fraction {getattr(task, 'in_range_fraction', None)}, max_number {task.max_number}, " if task.name == "game24" else ""
        start = time.perf_counter()
        runs = run_replicates(task, splits, config, args.replicates)
        title = (f"{config.task.name}, {label}{config.task.num_seeds} seeds, {config.task.num_validation} validation, "
                 f"{config.task.num_test} test, m = {config.loop.seeds_per_iteration} x {config.loop.iterations} iterations, k = {config.loop.few_shot_k}")
        print_table(title, runs, config.loop.seeds_per_iteration, time.perf_counter() - start, deck=task.name == "game24")


if __name__ == "__main__":
    main()
