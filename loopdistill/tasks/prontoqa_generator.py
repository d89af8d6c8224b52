"""ProntoQA-style problems: our own generator and a forward-chaining solver.

After Saparov & He 2023 ("Language Models Are Greedy Reasoners", the fictional-ontology setting):
a made-up world of creatures ("Every wumpus is a yumpus.", "Yumpuses are not sour."), facts about one
person ("Alex is a wumpus."), and a query ("True or false: Alex is sour.") that follows from a chain
of `hops` rules; distractor rules branch off the chain, give the queried property the opposite value
on a creature the person is not, and describe a second creature the person is. Reimplemented here
(no code of asaparov/prontoqa); the sentence forms match the public data so one solver reads both.

The solver parses the question's sentences and forward-chains from the person's facts. It is strict:
a sentence it cannot read makes the whole question unanswerable (None), so an unknown rule form
(e.g. "No wumpus is sour.") can never be silently ignored into a wrong reference.
"""
from __future__ import annotations

import random
import re
from collections import deque
from dataclasses import dataclass
from typing import Iterable, Optional

MAX_HOPS = 10  # 2 * hops adjectives must be distinct; PROPERTIES holds more than 2 * MAX_HOPS
PERSONS = ("Alex", "Max", "Stella", "Sam", "Polly", "Rex", "Sally", "Wren", "Fae", "Jo", "Nico", "Tess")
PROPERTIES = (
    "sour", "bitter", "sweet", "spicy", "small", "large", "hot", "cold", "red", "blue", "green", "orange",
    "opaque", "transparent", "wooden", "metallic", "happy", "sad", "shy", "aggressive", "feisty", "kind",
    "mean", "nervous", "floral", "fruity", "earthy", "luminous", "dull", "bright", "fast", "slow",
    "melodic", "muffled", "loud", "quiet", "snowy", "windy", "rainy", "liquid", "amenable", "brittle",
)
# Made-up creature names are onset + vowel + coda + "pus", like ProntoQA's "wumpus", "brimpus", "sterpus".
_ONSETS = ("", "b", "bl", "br", "d", "dr", "f", "fl", "g", "gl", "gr", "h", "j", "k", "kr", "l", "m", "n",
           "p", "pl", "pr", "qu", "r", "s", "sh", "sl", "sn", "sp", "st", "t", "th", "tr", "v", "w", "y", "z")
_VOWELS = ("a", "e", "i", "o", "u")
_CODAS = ("m", "r", "l", "n")

_QUERY = re.compile(r"(?:is the following statement\s+)?true or false\s*[:?]\s*(?P<statement>[^\n]+?)\s*$", re.I)
_UNIVERSAL = re.compile(r"^(?:every|each) ([a-z]+) is (not )?(an? )?([a-z]+)$", re.I)
_PLURAL = re.compile(r"^([a-z]+) are (not )?([a-z]+)$", re.I)
_FACT = re.compile(r"^([A-Z][a-z]+) is (not )?(an? )?([a-z]+)$")


@dataclass(frozen=True)
class Problem:
    """A generated problem. question: context + " True or false: <statement>."; answer: the chain of
    thought: "The statement says <statement>.", one hop per line, the conclusion, then "The answer is
    True." or "... False."; hops: rules applied."""

    question: str
    answer: str
    label: bool
    hops: int


@dataclass(frozen=True)
class Solution:
    """The solver's result. steps: one line per hop ("Alex is a wumpus. Every wumpus is a yumpus.")
    then the conclusion; hops: rules applied from the person's fact to the queried statement;
    statement: the queried statement as asked ("Alex is not sour"), "" when unknown."""

    label: bool
    steps: tuple[str, ...]
    hops: int
    statement: str = ""

    def text(self) -> str:
        """The worked answer: the statement asked ("The statement says Alex is not sour."), the steps,
        then "The answer is True." (or False). Stating the goal first lets a small student pick the
        rule about the asked property before it chains, instead of following the person's first fact
        and comparing at the end with a statement far back in the question."""
        said = [f"The statement says {self.statement}."] if self.statement else []
        return "\n".join([*said, *self.steps, f"The answer is {self.label}."])


# --- wording -------------------------------------------------------------------------------------
def article(noun: str) -> str:
    return f"an {noun}" if noun[0] in "aeiou" else f"a {noun}"


def plural(noun: str) -> str:
    """"wumpus" -> "wumpuses" (made-up names all end in -s)."""
    return noun + "es" if noun.endswith(("s", "sh", "x", "z")) else noun + "s"


def singular(word: str) -> str:
    """"wumpuses" -> "wumpus", "cats" -> "cat"; a word that is not plural is returned unchanged."""
    if word.endswith(("ses", "shes", "xes", "zes")):
        return word[:-2]
    return word[:-1] if word.endswith("s") and not word.endswith("ss") else word


def creature_names(count: int, rng: random.Random, exclude: Iterable[str] = ()) -> list[str]:
    """`count` distinct made-up names not in `exclude`. Raises ValueError when too few exist."""
    taken = set(exclude)
    pool = [o + v + c + "pus" for o in _ONSETS for v in _VOWELS for c in _CODAS]
    pool = [name for name in pool if name not in taken]
    if count > len(pool):
        raise ValueError(f"asked for {count} creature names, only {len(pool)} are free")
    return rng.sample(pool, count)


def _is_rule(subject: str, obj: str, negated: bool, concept: bool, rng: random.Random) -> str:
    """One rule sentence in a random one of ProntoQA's three forms."""
    target = (article(obj) if concept else obj)
    form = rng.randrange(3)
    if form == 2:
        target = plural(obj) if concept else obj
        return f"{plural(subject).capitalize()} are {'not ' if negated else ''}{target}."
    return f"{('Every', 'Each')[form]} {subject} is {'not ' if negated else ''}{target}."


# --- generator -----------------------------------------------------------------------------------
def generate_problem(
    rng: random.Random, hops: int, label: Optional[bool] = None, exclude_names: Iterable[str] = (), person: Optional[str] = None,
    opposite_distractor: bool = True,
) -> Problem:
    """A problem whose query needs exactly `hops` rules (hops - 1 "is a" rules along a chain of
    creatures, then the property rule of the last one). label: the wanted answer (random when None);
    exclude_names: creature names not to use (e.g. those of the problem being rewritten);
    opposite_distractor: also state a rule giving the queried property the opposite value on a
    creature the person is not (False: the queried property appears in one rule only, an easier problem).

    Raises:
        ValueError: hops outside 1..MAX_HOPS.
    """
    if not 1 <= hops <= MAX_HOPS:
        raise ValueError(f"hops must be in 1..{MAX_HOPS}, got {hops}")
    label = rng.random() < 0.5 if label is None else label
    person = person or rng.choice(PERSONS)
    names = creature_names(2 * hops + 1, rng, exclude_names)
    chain, branches, (opposite, second) = names[:hops], names[hops : 2 * hops - 1], names[2 * hops - 1 :]
    queried, *adjectives = rng.sample(PROPERTIES, 2 * hops)
    negated = rng.random() < 0.5  # the value the chain gives the queried property

    def flip() -> bool:  # the polarity of a distractor property
        return rng.random() < 0.5

    steps, rules = [], []
    for i in range(hops - 1):
        rule = _is_rule(chain[i], chain[i + 1], False, True, rng)
        steps.append(f"{person} is {article(chain[i])}. {rule}")
        # distractors: a property of each chain creature, and a branch off the chain with its own property
        rules += [
            rule,
            _is_rule(chain[i], adjectives[2 * i], flip(), False, rng),
            _is_rule(chain[i], branches[i], False, True, rng),
            _is_rule(branches[i], adjectives[2 * i + 1], flip(), False, rng),
        ]
    final = _is_rule(chain[-1], queried, negated, False, rng)
    steps.append(f"{person} is {article(chain[-1])}. {final}")
    # distractors: the opposite value on a creature the person is not; a second creature the person is
    rules += [final] + ([_is_rule(opposite, queried, not negated, False, rng)] if opposite_distractor else [])
    rules.append(_is_rule(second, adjectives[-1], flip(), False, rng))
    rng.shuffle(rules)
    facts = [f"{person} is {article(chain[0])}.", f"{person} is {article(second)}."]
    rng.shuffle(facts)
    query_negated = negated if label else not negated
    question = " ".join(rules + facts) + f" True or false: {person} is {'not ' if query_negated else ''}{queried}."
    conclusion = f"{person} is {'not ' if negated else ''}{queried}."
    asked = f"The statement says {person} is {'not ' if query_negated else ''}{queried}."  # as Solution.text()
    return Problem(question, "\n".join([asked] + steps + [conclusion, f"The answer is {label}."]), label, hops)


def generate_problems(count: int, rng: random.Random, hops: Iterable[int], opposite_distractor: bool = True) -> list[Problem]:
    """`count` problems with distinct questions, hops drawn uniformly from `hops`, labels balanced
    (alternating True/False, then shuffled); opposite_distractor as in generate_problem."""
    choices = list(hops)
    out, seen = [], set()
    while len(out) < count:
        problem = generate_problem(rng, rng.choice(choices), label=len(out) % 2 == 0, opposite_distractor=opposite_distractor)
        if problem.question not in seen:
            seen.add(problem.question)
            out.append(problem)
    rng.shuffle(out)
    return out


# --- solver --------------------------------------------------------------------------------------
@dataclass
class _Theory:
    """Parsed context. isa: creature -> [(creature, rule text)]; props: creature -> [(adjective,
    value, rule text)]; facts: person -> (creatures, {adjective: value})."""

    isa: dict
    props: dict
    facts: dict


def split_query(question: str) -> Optional[tuple[str, str]]:
    """(context, statement) of "<context> True or false: <statement>." (or "Is the following statement
    true or false? <statement>"); None without such a query."""
    match = _QUERY.search(question.strip())
    if not match:
        return None
    return question[: match.start()].strip(), match.group("statement").strip().rstrip(".").strip()


def solve(question: str) -> Optional[Solution]:
    """Answer a ProntoQA question by forward chaining over the rules it states.

    Returns None when the question has no query, a context sentence is not one of the known forms,
    the chained facts contradict each other, or the queried property is never derived.
    """
    parts = split_query(question)
    theory = _parse_context(parts[0]) if parts else None
    statement = _FACT.match(parts[1]) if parts else None
    if theory is None or statement is None:
        return None
    person, negated, is_concept, word = statement.group(1), bool(statement.group(2)), bool(statement.group(3)), statement.group(4)
    creatures, props = theory.facts.get(person, (set(), {}))
    reached, derived = _chain(theory, creatures, props)
    if reached is None:
        return None
    if is_concept:  # closed world: a creature never reached is one the person is not
        holds = word in reached
        steps = _path(person, reached, word) if holds else [f"No rule makes {person} {article(word)}."]
        return Solution(holds != negated, tuple(steps + [f"{person} is {'' if holds else 'not '}{article(word)}."]),
                        max(len(steps) - (not holds), 0), parts[1])
    if word not in derived:
        return None
    value, source, rule = derived[word]
    steps = _path(person, reached, source) + ([f"{person} is {article(source)}. {rule}"] if source else [])
    return Solution(value != negated, tuple(steps + [f"{person} is {'' if value else 'not '}{word}."]), len(steps), parts[1])


def _parse_context(context: str) -> Optional[_Theory]:
    sentences = [s.strip() for s in re.split(r"(?<=\.)\s+", context) if s.strip()]
    parsed = [_parse_sentence(s.rstrip(".").strip()) for s in sentences]
    if any(p is None for p in parsed):
        return None
    # a plural object ("Tumpuses are vumpuses") is a creature when its singular is named as one anywhere
    creatures = {p[1] for p in parsed if p[0] in ("rule", "plural")} | {p[3] for p in parsed if p[0] in ("rule", "fact") and p[4]}
    theory = _Theory({}, {}, {})
    for kind, subject, negated, obj, concept, text in parsed:
        concept = concept or (kind == "plural" and singular(obj) in creatures)
        obj = singular(obj) if kind == "plural" and concept else obj
        if kind == "fact":
            found, props = theory.facts.setdefault(subject, (set(), {}))
            if concept and not negated:
                found.add(obj)
            elif not concept:
                props[obj] = not negated
            else:
                return None  # "Alex is not a wumpus": not a ProntoQA form; refuse rather than guess
        elif concept and negated:
            return None
        elif concept:
            theory.isa.setdefault(subject, []).append((obj, text))
        else:
            theory.props.setdefault(subject, []).append((obj, not negated, text))
    return theory


def _parse_sentence(sentence: str) -> Optional[tuple]:
    """(kind, subject, negated, object, object is a creature, sentence text) or None."""
    text = sentence + "."
    if match := _UNIVERSAL.match(sentence):
        return ("rule", match.group(1).lower(), bool(match.group(2)), match.group(4).lower(), bool(match.group(3)), text)
    if match := _PLURAL.match(sentence):
        return ("plural", singular(match.group(1).lower()), bool(match.group(2)), match.group(3).lower(), False, text)
    if match := _FACT.match(sentence):
        return ("fact", match.group(1), bool(match.group(2)), match.group(4).lower(), bool(match.group(3)), text)
    return None


def _chain(theory: _Theory, creatures: set, props: dict) -> tuple[Optional[dict], dict]:
    """Breadth-first forward chaining. Returns ({creature: (parent creature or None, rule text)},
    {adjective: (value, creature whose rule gave it or None for a stated fact, rule text)}), or
    (None, {}) when two reached rules give one adjective both values."""
    reached = {c: (None, "") for c in sorted(creatures)}
    derived = {adj: (value, None, "") for adj, value in props.items()}
    queue = deque(reached)
    while queue:
        creature = queue.popleft()
        for adjective, value, text in theory.props.get(creature, ()):
            if adjective in derived and derived[adjective][0] != value:
                return None, {}
            derived.setdefault(adjective, (value, creature, text))
        for other, text in theory.isa.get(creature, ()):
            if other not in reached:
                reached[other] = (creature, text)
                queue.append(other)
    return reached, derived


def _path(person: str, reached: dict, creature: Optional[str]) -> list[str]:
    """Steps "Alex is a c. <rule c -> next>" from a stated creature to `creature` (exclusive)."""
    steps = []
    while creature is not None and reached[creature][0] is not None:
        parent, text = reached[creature]
        steps.append(f"{person} is {article(parent)}. {text}")
        creature = parent
    return steps[::-1]
