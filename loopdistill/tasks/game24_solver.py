"""Game of 24 arithmetic: an exact solver, a safe expression checker, and backward puzzle generation.

Exact rational arithmetic (fractions.Fraction) throughout, so 8 / (3 - 8 / 3) = 24 counts.
Step format follows Tree of Thoughts (Yao et al. 2023, Sec. 4.1): "a op b = c (left: ...)".
"""
from __future__ import annotations

import ast
import random
from fractions import Fraction
from typing import Optional

TARGET = Fraction(24)
OPS = ("+", "-", "*", "/")


def _apply(a: Fraction, op: str, b: Fraction) -> Optional[Fraction]:
    if op == "+":
        return a + b
    if op == "-":
        return a - b
    if op == "*":
        return a * b
    return a / b if b != 0 else None


def _fmt(x: Fraction) -> str:
    return str(x.numerator) if x.denominator == 1 else f"{x.numerator}/{x.denominator}"


def _search(items: list[tuple[Fraction, str]], steps: list[str], plain: bool) -> Optional[tuple[list[str], str]]:
    """Depth-first over pairs; items are (value, expression). Returns (steps, final expression).
    plain: only non-negative integer intermediate results (the solutions a person writes first)."""
    if len(items) == 1:
        return (steps, items[0][1]) if items[0][0] == TARGET else None
    for i in range(len(items)):
        for j in range(len(items)):
            if i == j:
                continue
            (a, ea), (b, eb) = items[i], items[j]
            rest = [items[k] for k in range(len(items)) if k not in (i, j)]
            for op in OPS:
                if op in "+*" and i > j:  # commutative: try each unordered pair once
                    continue
                value = _apply(a, op, b)
                if value is None or (plain and (value < 0 or value.denominator != 1)):
                    continue
                left = sorted([v for v, _ in rest] + [value])
                step = f"{_fmt(a)} {op} {_fmt(b)} = {_fmt(value)} (left: {' '.join(_fmt(v) for v in left)})"
                found = _search(rest + [(value, f"({ea} {op} {eb})")], steps + [step], plain)
                if found:
                    return found
    return None


def solve(numbers: list[int]) -> Optional[list[str]]:
    """Step-by-step solution lines ending "Answer: <expression> = 24", or None when unsolvable.
    Deterministic: the first solution in a fixed search order."""
    items = [(Fraction(n), str(n)) for n in numbers]
    found = _search(items, [], plain=True) or _search(items, [], plain=False)
    if found is None:
        return None
    steps, expr = found
    return steps + [f"Answer: {_strip_outer(expr)} = 24"]


def is_solvable(numbers: list[int]) -> bool:
    """True when the numbers (each used once, + - * / with exact fractions) can make 24."""
    return solve(numbers) is not None


def _strip_outer(expr: str) -> str:
    if expr.startswith("(") and expr.endswith(")"):
        depth = 0
        for i, ch in enumerate(expr):
            depth += {"(": 1, ")": -1}.get(ch, 0)
            if depth == 0 and i < len(expr) - 1:
                return expr
        return expr[1:-1]
    return expr


class ExpressionError(ValueError):
    """An expression that is not plain arithmetic on integers (or divides by zero)."""


MAX_EXPRESSION_CHARS = 200  # a four-number expression is far shorter; bounds parse and arithmetic work
_AST_OPS = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/"}


def evaluate(expression: str) -> tuple[Fraction, list[int]]:
    """(exact value, the integer literals used) of an arithmetic expression.

    Only integer literals, + - * / and parentheses are accepted; anything else (names, calls,
    attributes, powers) raises ExpressionError, so untrusted model output is never executed.
    """
    if len(expression) > MAX_EXPRESSION_CHARS:
        raise ExpressionError(f"expression longer than {MAX_EXPRESSION_CHARS} characters")
    try:
        tree = ast.parse(expression.replace("×", "*").replace("÷", "/"), mode="eval")
    except (SyntaxError, ValueError, MemoryError, RecursionError) as err:
        raise ExpressionError(f"not an arithmetic expression: {expression!r}") from err
    used: list[int] = []
    return _eval(tree.body, used), used


def _eval(node: ast.AST, used: list[int]) -> Fraction:
    if isinstance(node, ast.Constant) and type(node.value) is int:
        used.append(node.value)
        return Fraction(node.value)
    if isinstance(node, ast.BinOp) and type(node.op) in _AST_OPS:
        value = _apply(_eval(node.left, used), _AST_OPS[type(node.op)], _eval(node.right, used))
        if value is None:
            raise ExpressionError("division by zero")
        return value
    raise ExpressionError(f"unsupported element {type(node).__name__}")


DECK_MAX = 13  # the numbers of the benchmark's puzzles (and so of every evaluation puzzle) are 1..13


def backward_puzzle(anchor: list[int], rng: random.Random, tries: int = 200, max_number: int = 13,
                    in_range_fraction: Optional[float] = None) -> Optional[list[int]]:
    """A new solvable puzzle built backwards from 24, reusing numbers of `anchor` where it can.

    Start from [24]; repeatedly split one value v into (x, y) with x op y = v and x, y integers in
    1..max_number, until four numbers remain (the method's backward reasoning for Game of 24, Kessler et
    al. 2025, arXiv 2512.00884, whose example 4 * 26 - 10 * 8 goes past 13). With probability 0.5 x is
    drawn from the anchor's numbers.

    in_range_fraction: None draws every split from 1..max_number. A number f in [0, 1] makes the share
    of puzzles whose four numbers all lie in 1..DECK_MAX (the evaluation range) f: with probability f
    (one rng.random() draw) the splits stay in 1..DECK_MAX, otherwise they use 1..max_number and the
    puzzle must hold a number above DECK_MAX; when that branch finds nothing within `tries`, the other
    range is tried, then any puzzle of 1..max_number.

    Returns None when no different puzzle was found.
    """
    if in_range_fraction is None:
        return _backward(anchor, rng, tries, max_number, lambda values: True)
    narrow = (DECK_MAX, lambda values: True)
    wide = (max_number, lambda values: max(values) > DECK_MAX)
    order = (narrow, wide) if rng.random() < in_range_fraction else (wide, narrow)
    for top, accept in order + ((max_number, lambda values: True),):
        puzzle = _backward(anchor, rng, tries, top, accept)
        if puzzle is not None:
            return puzzle
    return None


def _backward(anchor: list[int], rng: random.Random, tries: int, max_number: int, accept) -> Optional[list[int]]:
    """Up to `tries` backward constructions in 1..max_number; the first different, solvable puzzle that
    `accept(sorted numbers)` takes, or None."""
    for _ in range(tries):
        values = [24]
        while len(values) < 4:
            v = values.pop(rng.randrange(len(values)))
            split = _split(v, anchor, rng, max_number)
            if split is None:
                break
            values.extend(split)
        if len(values) == 4 and sorted(values) != sorted(anchor) and accept(sorted(values)) and is_solvable(values):
            return sorted(values)
    return None


def _split(v: int, anchor: list[int], rng: random.Random, max_number: int = 13) -> Optional[tuple[int, int]]:
    """A random (x, y) with x op y == v for some op in + - * / (exact), x and y integers in
    1..max_number. With probability 0.5, x is one of the anchor's numbers when such a split exists."""
    pairs = [(x, y) for x in range(1, max_number + 1) for y in _partners(v, x) if 1 <= y <= max_number]
    if not pairs:
        return None
    preferred = [p for p in pairs if p[0] in anchor]
    return rng.choice(preferred if preferred and rng.random() < 0.5 else pairs)


def _partners(v: int, x: int) -> tuple[int, ...]:
    """Every y (0 marks none) with x + y, x - y, y - x, x * y, x / y or y / x equal to v (v >= 1)."""
    return (v - x, x - v, x + v, v // x if v % x == 0 else 0, x // v if x % v == 0 else 0, v * x)
