"""Batched generation with a Hugging Face causal LM, optionally through a PEFT LoRA adapter.

The per-token logprobs come from the logits `generate` already computed, so the student's loss on its
own answer costs no second forward pass (DESIGN.md, "free win").
"""
from __future__ import annotations

import torch

from loopdistill.seeds import teacher_seed
from actors.engines.base import Generation, SamplingParams
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

    def generate(self, prompts: list[str], params: SamplingParams, seeds: list[int] | None = None) -> list[Generation]:
        """seeds: one per prompt (the teacher's per-request seeds); a batch samples with one torch seed
        hashed from its requests' seeds (HF generate has no per-row generator), so a batch's sample
        depends on which requests share it. None: params.seed + batch offset (the student's path)."""
        out: list[Generation] = []
        for start in range(0, len(prompts), self.batch_size):
            batch = prompts[start : start + self.batch_size]
            seed = params.seed + start if seeds is None else teacher_seed(*seeds[start : start + self.batch_size])
            out.extend(self._generate_batch(batch, params, seed=seed))
        return out

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
    def _generate_batch(self, prompts: list[str], params: SamplingParams, seed: int) -> list[Generation]:
        enc = self._encode(prompts)
        sample = params.temperature > 0
        torch.manual_seed(seed)
        kwargs = dict(do_sample=sample, temperature=params.temperature, top_p=params.top_p) if sample else {}
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
