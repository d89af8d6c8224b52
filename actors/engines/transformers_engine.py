"""Batched generation with a Hugging Face causal LM, optionally through a PEFT LoRA adapter.

The per-token logprobs come from the logits `generate` already computed, so the student's loss on its
own answer costs no second forward pass.
"""
from __future__ import annotations

import torch

from actors.engines.base import Generation, JudgeItem, SamplingParams, check_input_tokens, judge_by_prompt
from loopdistill.seeds import prompt_seeds
from loopdistill.config import ModelConfig
from loopdistill.models import format_prompt, load_causal_lm, load_tokenizer


class TransformersEngine:
    """Generation engine over `transformers.generate`.

    Args:
        model: which model and how prompts are formatted.
        batch_size: prompts per `generate` call.
        device: "cpu" or "cuda"; bf16 on CUDA, fp32 on CPU.

    Raises:
        loopdistill.models.ModelLoadError: the model path does not load.
    """

    def __init__(self, model: ModelConfig, batch_size: int, device: str = "cpu"):
        self.config = model
        self.batch_size = batch_size
        self.device = device
        self.tokenizer = load_tokenizer(model.path)
        dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
        self.base = load_causal_lm(model.path, dtype=dtype, device=device)
        self.peft = None  # PeftModel wrapping self.base once an adapter was loaded
        self.adapter_name = None  # None: generate with the base weights
        self._adapters_loaded = 0

    @classmethod
    def from_config(cls, model: ModelConfig, *, batch_size: int, device: str = "cpu", **_unused) -> "TransformersEngine":
        """`build_engine`'s uniform constructor (task, vllm, openai, enable_lora and limits are not used:
        LoRA adapters load on demand)."""
        return cls(model, batch_size=batch_size, device=device)

    # --- LoRA adapters -------------------------------------------------------------------------
    def set_adapter(self, adapter_dir: str | None) -> None:
        """Serve `adapter_dir` (a PEFT LoRA directory) from now on; None = the base model.

        The base weights are shared: a new adapter is loaded beside the old one, which is then
        deleted, so switching costs only the (small) adapter weights.
        """
        if adapter_dir is None:
            self.adapter_name = None
            return
        from peft import PeftModel

        name = f"adapter{self._adapters_loaded}"
        self._adapters_loaded += 1
        if self.peft is None:
            self.peft = PeftModel.from_pretrained(self.base, adapter_dir, adapter_name=name)
        else:
            self.peft.load_adapter(adapter_dir, adapter_name=name)
        self.peft.set_adapter(name)
        if self.adapter_name is not None and self.adapter_name in self.peft.peft_config:
            self.peft.delete_adapter(self.adapter_name)
        self.peft.eval()
        self.adapter_name = name

    def _model(self):
        return self.peft if (self.peft is not None and self.adapter_name) else self.base

    def serving_model(self):
        """(model, context): the module that serves now (base + current adapter) and the context to
        run its forward passes in (no_grad; with the adapter layers bypassed when none is served)."""
        return self._model(), self._base_only()

    def _base_only(self):
        # With an adapter injected but none wanted, generation must bypass the LoRA layers.
        if self.peft is not None and self.adapter_name is None:
            return self.peft.disable_adapter()
        return torch.no_grad()

    # --- generation ----------------------------------------------------------------------------
    def count_tokens(self, prompts: list[str]) -> list[int]:
        texts = [format_prompt(self.tokenizer, p, self.config.use_chat_template) for p in prompts]
        ids = self.tokenizer(texts, add_special_tokens=False)["input_ids"]
        return [min(len(i), self.config.max_prompt_tokens) for i in ids]

    def generate(self, prompts: list[str], params: SamplingParams, seeds: list[int] | None = None,
                 input_tokens: list[int] | None = None) -> list[Generation]:
        """seeds: one per prompt (the teacher's per-request seeds; None: `prompt_seeds(prompts,
        params.seed)`, as the vLLM and HTTP engines). With temperature > 0 each row samples from its own
        torch.Generator seeded by its request's seed (`_GumbelMax`), so a request's sample does not
        depend on which requests share its batch (up to the float rounding of a padded batch);
        temperature 0 is greedy and takes no seed. Sampling applies temperature and top-p only (no
        top-k), as the vLLM and HTTP engines do. input_tokens: checked for length only;
        `Generation.input_tokens` is the encoder's own count, which is `count_tokens`' number (same
        template, same truncation) at no extra cost.

        Raises:
            ValueError: input_tokens of another length than prompts.
        """
        check_input_tokens(input_tokens, len(prompts))
        if params.temperature > 0:
            seeds = list(seeds) if seeds is not None else prompt_seeds(prompts, params.seed)
        out: list[Generation] = []
        for start in range(0, len(prompts), self.batch_size):
            batch = prompts[start : start + self.batch_size]
            batch_seeds = seeds[start : start + self.batch_size] if params.temperature > 0 else None
            out.extend(self._generate_batch(batch, params, batch_seeds))
        return out

    def judge(self, items: list[JudgeItem], params: SamplingParams, seeds: list[int] | None = None,
              input_tokens: list[int] | None = None) -> list[Generation]:
        """Generate each item's `judging.judge_prompt` (see `actors.engines.base.judge_by_prompt`)."""
        return judge_by_prompt(self, items, params, seeds, input_tokens)

    def _encode(self, prompts: list[str]):
        texts = [format_prompt(self.tokenizer, p, self.config.use_chat_template) for p in prompts]
        # Left truncation keeps the end of a long prompt, where the question and instruction sit.
        self.tokenizer.truncation_side = "left"
        return self.tokenizer(
            texts,
            return_tensors="pt",
            padding=True,
            truncation=True,
            max_length=self.config.max_prompt_tokens,
            add_special_tokens=False,
        ).to(self.device)

    @torch.no_grad()
    def _generate_batch(self, prompts: list[str], params: SamplingParams, seeds: list[int] | None) -> list[Generation]:
        """seeds: one per prompt when sampling (temperature > 0), None for greedy decoding."""
        enc = self._encode(prompts)
        # Greedy whatever the model's generation_config says (some chat models ship do_sample=True).
        kwargs = {"do_sample": False}
        if seeds is not None:
            if len(seeds) != len(prompts):  # one generator per row, or a short list would be broadcast
                raise ValueError(f"{len(seeds)} sampling seeds for {len(prompts)} prompts")
            # Greedy argmax over Gumbel-perturbed, temperature/top-p-processed scores is a sample of
            # softmax(processed scores), drawn from per-row generators instead of torch's global RNG
            # (HF's do_sample draws all rows from that one RNG, so a row's sample depends on its batch).
            from transformers import LogitsProcessorList, TemperatureLogitsWarper, TopPLogitsWarper

            processors = [TemperatureLogitsWarper(params.temperature)]
            if params.top_p < 1.0:
                processors.append(TopPLogitsWarper(params.top_p))
            processors.append(_GumbelMax(seeds, enc["input_ids"].device))
            kwargs = dict(do_sample=False, logits_processor=LogitsProcessorList(processors))
        with self._base_only():
            out = self._model().generate(
                **enc,
                max_new_tokens=params.max_new_tokens,
                pad_token_id=self.tokenizer.pad_token_id,
                return_dict_in_generate=True,
                output_logits=params.logprobs,
                **kwargs,
            )
        new_tokens = out.sequences[:, enc["input_ids"].shape[1] :]
        logprobs = _token_logprobs(out.logits, new_tokens) if params.logprobs else None
        input_lengths = enc["attention_mask"].sum(dim=1).tolist()
        return [
            self._to_generation(new_tokens[i], input_lengths[i], logprobs[i] if logprobs is not None else None)
            for i in range(len(prompts))
        ]

    def _to_generation(self, tokens: torch.Tensor, input_tokens: int, logprobs) -> Generation:
        ids = _until_eos(tokens.tolist(), self.tokenizer.eos_token_id, self.tokenizer.pad_token_id)
        text = self.tokenizer.decode(ids, skip_special_tokens=True)
        gen = Generation(text=text, input_tokens=int(input_tokens), output_tokens=len(ids))
        if logprobs is not None:
            gen.token_logprobs = logprobs[: len(ids)].tolist()
            gen.token_spans = _token_spans(self.tokenizer, ids)
        return gen


class _GumbelMax:
    """Logits processor that adds standard Gumbel noise to each row's scores from that row's own
    torch.Generator, so that the argmax of greedy decoding is a sample of softmax(scores): the
    Gumbel-max trick (Gumbel 1954; Maddison, Tarlow & Minka 2014, "A* Sampling", Sec. 2). Tokens
    filtered out by top-p (-inf) stay out.

    Args:
        seeds: one seed per batch row (the request's sampling seed).
        device: where the scores live (a generator must be on the same device).
    """

    def __init__(self, seeds: list[int], device: torch.device):
        self.generators = [torch.Generator(device=device).manual_seed(int(s)) for s in seeds]

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        """scores: (batch, vocab) processed logits; returns (batch, vocab) float32 perturbed scores."""
        vocab = scores.shape[-1]
        uniform = torch.stack([
            torch.rand(vocab, generator=g, device=scores.device, dtype=torch.float32) for g in self.generators
        ])
        # U in [0, 1): U = 0 gives -inf (never picked), never NaN.
        return scores.float() - torch.log(-torch.log(uniform))


def _token_logprobs(logits: tuple[torch.Tensor, ...], tokens: torch.Tensor) -> torch.Tensor:
    """log p(token_t) from the raw per-step logits: logits is a tuple of (batch, vocab) per step,
    tokens (batch, steps). Returns (batch, steps) natural-log probabilities."""
    stacked = torch.stack(logits, dim=1).float()  # (batch, steps, vocab)
    logp = torch.log_softmax(stacked, dim=-1)
    return logp.gather(-1, tokens[:, : stacked.shape[1]].unsqueeze(-1)).squeeze(-1)


def _until_eos(ids: list[int], eos_id: int | None, pad_id: int | None) -> list[int]:
    """Generated ids up to and including the first EOS (what was really generated and paid for)."""
    for i, tok in enumerate(ids):
        if tok == eos_id:
            return ids[: i + 1]
    if pad_id is not None and pad_id != eos_id:
        while ids and ids[-1] == pad_id:
            ids = ids[:-1]
    return ids


def _token_spans(tokenizer, ids: list[int]) -> list[tuple[int, int]]:
    """Character span of each token in the decoded text, by decoding growing prefixes (robust to
    byte-level BPE pieces that only form a character together)."""
    spans, prev = [], 0
    for i in range(1, len(ids) + 1):
        end = len(tokenizer.decode(ids[:i], skip_special_tokens=True))
        spans.append((prev, max(prev, end)))
        prev = max(prev, end)
    return spans
