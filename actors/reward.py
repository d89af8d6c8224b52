"""RewardModelActor: r(x, y_hat) of the student's answers from a Hugging Face sequence-classification
reward model (the reward_low / reward_high strategies of Kessler et al. 2025, arXiv 2512.00884, Sec. 3).

The reward is the model's first logit for the conversation [user: question, assistant: answer], read at
the last non-padding token, as reward models trained with a Bradley-Terry head are used (Ouyang et al.
2022, "Training language models to follow instructions with human feedback", Sec. 3.5).
"""
from __future__ import annotations

import pyarrow as pa
import torch

from actors.runtime import BusyClock, pick_device, use_all_cpu_threads
from loopdistill.config import RewardConfig
from loopdistill.models import ModelLoadError, load_tokenizer, resolve_model
from loopdistill.schemas import PREDICTIONS, REWARDS, SEEDS, make_table, require_columns


class RewardModelActor:
    """A reward model, loaded once per run.

    Args:
        config: the reward section of the run config (`model.path`: a local directory or hub id of a
            sequence-classification model; a causal-LM directory gets a fresh, seeded score head).

    Raises:
        loopdistill.models.ModelLoadError: the model or its tokenizer does not load (path named).
    """

    def __init__(self, config: RewardConfig):
        from transformers import AutoModelForSequenceClassification

        self.config = config
        self.device = pick_device(config.num_gpus)
        if self.device == "cpu":
            use_all_cpu_threads()
        self.tokenizer = load_tokenizer(config.model.path)
        self.tokenizer.padding_side = "right"
        path = resolve_model(config.model.path)
        torch.manual_seed(0)  # a missing score head is initialised the same way in every run
        try:
            model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1)
        except (OSError, ValueError) as err:
            raise ModelLoadError(f"cannot load reward model from {path!r}: {err}") from None
        model.config.pad_token_id = self.tokenizer.pad_token_id
        dtype = torch.bfloat16 if self.device == "cuda" else torch.float32
        self.model = model.to(self.device, dtype=dtype).eval()
        self.clock = BusyClock()

    def _text(self, question: str, answer: str) -> str:
        if self.config.model.use_chat_template and getattr(self.tokenizer, "chat_template", None):
            messages = [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
            return self.tokenizer.apply_chat_template(messages, tokenize=False)
        return f"{question}\n\n{answer}"

    @torch.no_grad()
    def rewards(self, questions: list[str], answers: list[str]) -> list[float]:
        """r for each (question, answer) pair, in order (floats, the model's logit scale)."""
        texts = [self._text(q, a) for q, a in zip(questions, answers)]
        out: list[float] = []
        size = self.config.batch_size
        with self.clock.measure():
            for start in range(0, len(texts), size):
                enc = self.tokenizer(
                    texts[start : start + size], return_tensors="pt", padding=True, truncation=True,
                    max_length=self.config.model.max_prompt_tokens, add_special_tokens=False,
                ).to(self.device)
                out.extend(self.model(**enc).logits[:, 0].float().tolist())
        return out

    def score(self, examples: pa.Table, predictions: pa.Table) -> pa.Table:
        """REWARDS (id, reward) of the student's answers. examples: SEEDS (n); predictions: PREDICTIONS
        of the same n seeds, same order. Raises SchemaError for a wrong table."""
        require_columns(examples, SEEDS, "RewardModelActor.score")
        require_columns(predictions, PREDICTIONS, "RewardModelActor.score")
        values = self.rewards(examples.column("question").to_pylist(), predictions.column("prediction").to_pylist())
        return make_table(REWARDS, [{"id": i, "reward": v} for i, v in zip(examples.column("id").to_pylist(), values)])

    def busy_seconds(self) -> float:
        return self.clock.total_s
