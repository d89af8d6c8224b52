"""Cost per question pair of ROUGE-L F: rouge-score (the old near-duplicate filter) vs rapidfuzz.

Three ways on the same real questions (GSM8K test, ProntoQA, Game of 24): rouge-score's
`RougeScorer(["rougeL"]).score` per pair (baseline: tokenises both texts and fills a Python LCS table);
`drivers.near_duplicates.rouge_l_f` per pair (tokenises, rapidfuzz Indel); and
`TokenIndex.scores`, one candidate against N questions tokenised once (what the Deduplicator and the
decontamination index do). Prints microseconds per pair, the speed-up over the baseline, and the
largest difference between the baseline's F and each rapidfuzz F (they must agree).

    PYTHONPATH=. python benchmarks/dedup_speed.py --pairs 3000 --candidates 200 --earlier 3000
"""
from __future__ import annotations

import argparse
import json
import platform
import random
import time

from rouge_score import rouge_scorer

from benchmarks.common import data_root
from drivers.near_duplicates import TokenIndex, rouge_l_f
from loopdistill.tasks import get_task
from loopdistill.tasks.game24 import question_for, read_puzzles


def questions() -> dict[str, list[str]]:
    root = data_root()
    gsm8k = [json.loads(line)["question"] for line in (root / "gsm8k" / "test.jsonl").read_text().splitlines()]
    prontoqa = [r["question"] for r in get_task("prontoqa").load_splits(str(root / "prontoqa"), 800, 200, 500, 0).seeds.to_pylist()]
    game24 = [question_for(p) for p in read_puzzles(root / "game24" / "24.csv")]
    return {"gsm8k": gsm8k, "prontoqa": prontoqa, "game24": game24}


def per_pair_us(fn, pairs) -> tuple[float, list[float]]:
    start = time.perf_counter()
    scores = [fn(a, b) for a, b in pairs]
    return (time.perf_counter() - start) / len(pairs) * 1e6, scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pairs", type=int, default=3000, help="random pairs per data set, per-pair methods")
    parser.add_argument("--candidates", type=int, default=200, help="queries against the indexed questions")
    parser.add_argument("--earlier", type=int, default=3000, help="indexed questions (capped by the data set)")
    args = parser.parse_args()
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    rng = random.Random(0)
    print(f"machine: {platform.processor() or platform.machine()}, python {platform.python_version()}")
    print("| data | mean tokens | rouge-score (us/pair) | rapidfuzz per pair (us/pair) | rapidfuzz 1-vs-N, tokenised once (us/pair) | speed-up per pair | speed-up 1-vs-N | max abs F difference |")
    print("|---|---|---|---|---|---|---|---|")
    for name, qs in questions().items():
        pairs = [tuple(rng.sample(qs, 2)) for _ in range(args.pairs)]
        base_us, base = per_pair_us(lambda a, b: scorer.score(b, a)["rougeL"].fmeasure, pairs)
        fuzz_us, fuzz = per_pair_us(rouge_l_f, pairs)
        earlier = qs[: args.earlier]
        cands = rng.sample(qs, args.candidates)
        index = TokenIndex(earlier)
        start = time.perf_counter()
        for c in cands:
            index.scores([c])
        vec_us = (time.perf_counter() - start) / (len(cands) * len(earlier)) * 1e6
        matrix = index.scores(cands[:20])
        check = [(c, e) for c in cands[:20] for e in earlier]
        ref = [scorer.score(e, c)["rougeL"].fmeasure for c, e in check]
        diff = max(max(abs(x - y) for x, y in zip(base, fuzz)), max(abs(r - m) for r, m in zip(ref, matrix.ravel())))
        tokens = sum(len(scorer._tokenizer.tokenize(q)) for q in qs[:500]) / min(len(qs), 500)
        print(f"| {name} ({len(pairs)} pairs; {len(cands)} x {len(earlier)}) | {tokens:.0f} | {base_us:.1f} | {fuzz_us:.2f} | {vec_us:.3f} | "
              f"{base_us / fuzz_us:.0f}x | {base_us / vec_us:.0f}x | {diff:.1e} |")


if __name__ == "__main__":
    main()
