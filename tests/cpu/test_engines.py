"""The engine registry, the config's check against it, the engines' protocols, and judging as an
explicit engine call (the verifier for the programmatic teacher, the judge prompt for LLM engines)."""
from __future__ import annotations

import json
import subprocess
import sys

import httpx
import pytest

from actors.engines import (
    ROLE_PROTOCOLS,
    AdapterEngine,
    ForwardEngine,
    GenerationEngine,
    JudgeEngine,
    JudgeItem,
    SamplingParams,
    StreamingEngine,
    build_engine,
    engine_class,
)
from actors.engines.openai_engine import OpenAIEngine
from loopdistill.config import ConfigError, ModelConfig, OpenAIConfig, build_config
from loopdistill.engine_registry import ENGINE_REGISTRY, engine_names
from loopdistill.judging import judge_prompt, parse_verdict
from loopdistill.models import format_prompt, load_tokenizer
from loopdistill.tasks.game24 import question_for

TINY = ModelConfig(path="tiny-random-llama")
GOOD, BAD = "4 * 6 = 24\nAnswer: 4 * 6 * 1 * 1 = 24", "Answer: 4 + 6 + 1 + 1 = 24"


# --- registry and config -------------------------------------------------------------------------
@pytest.mark.parametrize("section,name,valid", [
    ("teacher", "gpt-oss", ["transformers", "programmatic", "vllm", "openai"]),
    ("student", "openai", ["transformers", "vllm"]),  # registered, but a teacher-only engine
    ("student", "programmatic", ["transformers", "vllm"]),
])
def test_config_names_the_engine_field_and_lists_the_valid_names(section, name, valid):
    with pytest.raises(ConfigError) as err:
        build_config({"task": {"name": "game24"}, section: {"engine": name}})
    line = next(line for line in str(err.value).splitlines() if f"{section}.engine" in line)
    assert repr(name) in line and str(valid) in line


def test_config_accepts_every_registered_engine_for_its_role():
    for role in ("teacher", "student"):
        for name in engine_names(role):
            assert getattr(build_config({"task": {"name": "game24"}, role: {"engine": name}}), role).engine == name


def test_every_registered_class_implements_its_roles_protocols():
    assert set(ENGINE_REGISTRY) == {"transformers", "programmatic", "vllm", "openai"}
    for name, entry in ENGINE_REGISTRY.items():
        cls = engine_class(name)
        assert callable(getattr(cls, "from_config", None)), name
        for role in entry.roles:
            for protocol in ROLE_PROTOCOLS[role]:
                assert issubclass(cls, protocol), f"{name} ({role}) lacks {protocol.__name__}"
    assert issubclass(engine_class("vllm"), StreamingEngine) and issubclass(engine_class("openai"), StreamingEngine)
    assert not issubclass(engine_class("openai"), AdapterEngine)  # teacher-only: no LoRA


def test_build_engine_rejects_an_unknown_name_with_the_valid_ones():
    with pytest.raises(ValueError, match=r"unknown engine 'nope'; valid: \['transformers', 'programmatic', 'vllm', 'openai'\]"):
        build_engine("nope", TINY, "game24", 2)


def test_the_registry_imports_no_engine():
    code = "import sys, loopdistill.engine_registry; print(sorted(m for m in sys.modules if m.startswith(('actors', 'torch', 'vllm'))))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


# --- built engines and their protocols --------------------------------------------------------------
@pytest.fixture(scope="module")
def programmatic():
    return build_engine("programmatic", TINY, "game24", 2)


def test_built_engines_satisfy_the_protocols_their_actors_check(programmatic):
    student = build_engine("transformers", TINY, "game24", 2)
    assert isinstance(student, AdapterEngine) and isinstance(student, ForwardEngine) and isinstance(student, JudgeEngine)
    assert isinstance(programmatic, GenerationEngine) and isinstance(programmatic, JudgeEngine)
    assert not isinstance(programmatic, AdapterEngine) and not isinstance(programmatic, StreamingEngine)
    http = build_engine("openai", TINY, "game24", 2, openai=OpenAIConfig(model="m"))
    assert isinstance(http, StreamingEngine) and isinstance(http, JudgeEngine)
    assert not isinstance(http, ForwardEngine) and http.api.model == "m"


def test_programmatic_judge_scores_by_the_verifier(programmatic):
    question = question_for([4, 6, 1, 1])
    items = [JudgeItem(question, GOOD, BAD), JudgeItem(question, BAD, GOOD), JudgeItem(question, BAD, BAD)]
    gens = programmatic.judge(items, SamplingParams(max_new_tokens=16))
    assert [parse_verdict(g.text) for g in gens] == [(10.0, 1.0), (1.0, 10.0), (1.0, 1.0)]
    # Counted as an LLM judge reading the judge prompt would be: the ledger reads the same.
    tokenizer = load_tokenizer(TINY.path)
    for item, gen in zip(items, gens):
        text = format_prompt(tokenizer, judge_prompt(*item), TINY.use_chat_template)
        assert gen.input_tokens == len(tokenizer(text, add_special_tokens=False)["input_ids"])
        assert gen.output_tokens == len(tokenizer(gen.text, add_special_tokens=False)["input_ids"])
    given = programmatic.judge(items[:2], SamplingParams(max_new_tokens=16), input_tokens=[11, 12])
    assert [g.input_tokens for g in given] == [11, 12]
    with pytest.raises(ValueError, match="input_tokens has 1 counts for 2 prompts"):
        programmatic.judge(items[:2], SamplingParams(max_new_tokens=16), input_tokens=[11])


def test_programmatic_generate_takes_the_given_input_tokens(programmatic):
    prompt = question_for([4, 6, 1, 1])
    counted = programmatic.generate([prompt], SamplingParams(max_new_tokens=64, temperature=0.7), seeds=[5])[0]
    given = programmatic.generate([prompt], SamplingParams(max_new_tokens=64, temperature=0.7), seeds=[5], input_tokens=[99])[0]
    assert given.input_tokens == 99 and given.text == counted.text


class _Limits:
    """Records the tokens each request reserves (the pool's shared limiter has the same methods)."""

    def __init__(self):
        self.acquired, self.waited_s = [], 0.0

    def acquire(self, tokens):
        self.acquired.append(tokens)

    def refund(self, tokens):
        pass


def test_llm_judge_sends_the_judge_prompt_text_and_reserves_the_given_counts():
    """OpenAI engine over an in-process transport: what reaches the server is judge_prompt's exact
    text (the cache key and the paid text); the TPM reservation uses the counts given, not a recount."""
    bodies = []

    def handler(request):
        bodies.append(json.loads(request.content))
        return httpx.Response(200, json={"choices": [{"message": {"content": "Score A: 7; Score B: 2"}}],
                                         "usage": {"prompt_tokens": 3, "completion_tokens": 4}})

    limits = _Limits()
    eng = OpenAIEngine(TINY, OpenAIConfig(max_concurrency=1), transport=httpx.MockTransport(handler), limits=limits)
    items = [JudgeItem(" Q1 ", "a1\n", "b1"), JudgeItem("Q2", "a2", "b2")]
    gens = eng.judge(items, SamplingParams(max_new_tokens=8), seeds=[0, 0], input_tokens=[40, 50])
    assert [b["messages"][0]["content"] for b in bodies] == [judge_prompt(*i) for i in items]
    assert [b["seed"] for b in bodies] == [0, 0] and [parse_verdict(g.text) for g in gens] == [(7.0, 2.0)] * 2
    assert limits.acquired == [40 + 8, 50 + 8]
    eng.judge(items[:1], SamplingParams(max_new_tokens=8))  # no counts given: the engine counts
    assert limits.acquired[-1] == eng.count_tokens([judge_prompt(*items[0])])[0] + 8


def test_transformers_judge_is_generation_of_the_judge_prompt():
    eng = build_engine("transformers", TINY, "game24", 2)
    items = [JudgeItem("What is 1+1?", "2", "3"), JudgeItem("What is 2+2?", "4", "5")]
    params = SamplingParams(max_new_tokens=6)
    judged = eng.judge(items, params)
    generated = eng.generate([judge_prompt(*i) for i in items], params)
    assert [(g.text, g.input_tokens, g.output_tokens) for g in judged] == [
        (g.text, g.input_tokens, g.output_tokens) for g in generated]
    assert judged[0].input_tokens == eng.count_tokens([judge_prompt(*items[0])])[0]


# --- per-request sampling in the transformers engine -------------------------------------------------
def test_transformers_sample_depends_on_the_request_seed_not_on_its_batch():
    eng = build_engine("transformers", TINY, "game24", 4)
    prompts = ["What is 2+3?", "Name a colour.", "Use 4 4 6 8 to make 24.", "Say hi."]
    params = SamplingParams(max_new_tokens=8, temperature=0.9, top_p=0.95)
    together = [g.text for g in eng.generate(prompts, params, seeds=[1, 2, 3, 4])]
    alone = eng.generate(prompts[2:3], params, seeds=[3])[0].text
    reordered = [g.text for g in eng.generate(prompts[::-1], params, seeds=[4, 3, 2, 1])][::-1]
    assert alone == together[2] and reordered == together
    other = [g.text for g in eng.generate(prompts, params, seeds=[11, 12, 13, 14])]
    assert sum(a != b for a, b in zip(together, other)) >= 3  # the seed does decide the sample


def test_gumbel_max_draws_from_the_softmax_of_the_scores():
    import torch

    from actors.engines.transformers_engine import _GumbelMax

    probs = torch.tensor([0.5, 0.3, 0.15, 0.05, 0.0])
    scores = torch.log(probs).repeat(4000, 1)  # one row per seed; a -inf (filtered) token stays out
    picked = _GumbelMax(list(range(4000)), torch.device("cpu"))(None, scores).argmax(dim=-1)
    freq = torch.bincount(picked, minlength=5).float() / 4000
    se = (probs * (1 - probs) / 4000).sqrt()
    assert freq[4] == 0 and torch.all((freq - probs).abs() <= 4 * se + 1e-6), freq
