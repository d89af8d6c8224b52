"""StudentScorerActor: the student's greedy answers with their loss, correctness and confidence."""
from __future__ import annotations

import math

import pyarrow as pa

from actors.engines import AdapterEngine, ForwardEngine, Generation, SamplingParams, build_engine
from actors.runtime import BusyClock, inject_fault, pick_device, use_all_cpu_threads
from loopdistill.config import StudentConfig
from loopdistill.training_data import to_train_examples
from actors.student_signals import gradient_embeddings, reference_nll
from loopdistill.schemas import (
    EMBEDDINGS,
    PREDICTIONS,
    REFERENCE_LOSSES,
    SEEDS,
    make_table,
    require_columns,
)
from loopdistill.tasks import get_task


class StudentScorerActor:
    """Base model + the current LoRA adapter (long-lived; only the adapter changes per iteration).

    Args:
        config: the student section of the run config.
        task_name: gives the answer prompt, answer extraction and verifier.

    Raises:
        loopdistill.models.ModelLoadError: the student model does not load.
    """

    def __init__(self, config: StudentConfig, task_name: str):
        self.config = config
        self.task = get_task(task_name)
        device = pick_device(config.num_gpus)
        if device == "cpu":
            use_all_cpu_threads()
        # 'vllm': LoRA through LoRARequest; forward-pass strategies (gt_loss, badge) need 'transformers'.
        engine = build_engine(config.engine, config.model, task_name, config.batch_size, device,
                              vllm=config.vllm, enable_lora=True)
        if not isinstance(engine, AdapterEngine):
            raise ValueError(f"student.engine {config.engine!r} cannot serve LoRA adapters (no set_adapter)")
        self.engine: AdapterEngine = engine
        self.adapter_dir: str | None = None
        self.clock = BusyClock()

    def set_adapter(self, adapter_dir: str | None) -> None:
        """Serve the LoRA adapter in `adapter_dir` (None: the base model); no-op if already served."""
        if adapter_dir != self.adapter_dir:
            self.engine.set_adapter(adapter_dir)
            self.adapter_dir = adapter_dir

    def predict(self, examples: pa.Table, adapter_dir: str | None) -> pa.Table:
        """Greedy answers to every question, scored, by the base model + the adapter in `adapter_dir`.

        The adapter is an argument, not actor state, so the call is idempotent: a restarted actor
        (which starts without an adapter) answers a retried call exactly as the first one would.

        examples: SEEDS rows (n). Returns PREDICTIONS (n rows, same order) where
        loss = mean NLL (nats/token) of the student's own generated tokens, taken from the generation
        logprobs (no extra forward pass; Kessler et al. 2025, arXiv 2512.00884, "loss (high)"),
        correct = the task verifier on the answer, confidence = exp(sum logprob) of the final-answer
        tokens (0 when no answer can be extracted).
        """
        require_columns(examples, SEEDS, "StudentScorerActor.predict")
        self.set_adapter(adapter_dir)
        prompts = [self.task.answer_prompt(q) for q in examples.column("question").to_pylist()]
        params = SamplingParams(self.config.max_new_tokens, temperature=0.0, logprobs=True)
        with self.clock.measure():
            gens = self.engine.generate(prompts, params)
        inject_fault("student.predict")  # dies mid-scoring, after the work and before the answer
        refs = examples.column("reference").to_pylist()
        ids = examples.column("id").to_pylist()
        return make_table(PREDICTIONS, [self._row(i, g, r) for i, g, r in zip(ids, gens, refs)])

    def reference_loss(self, examples: pa.Table, adapter_dir: str | None) -> pa.Table:
        """REFERENCE_LOSSES: mean NLL (nats/token) of each seed's reference answer under the student,
        teacher-forced (the gt_loss_high strategy). examples: SEEDS rows (n); n rows out, same order."""
        require_columns(examples, SEEDS, "StudentScorerActor.reference_loss")
        table = to_train_examples(self.task, examples)
        model, context = self._forward_model(adapter_dir)
        with self.clock.measure(), context:
            losses = reference_nll(model, self.engine.tokenizer, table, *self._lengths(), device=self.engine.device)
        rows = [{"id": i, "gt_loss": v} for i, v in zip(examples.column("id").to_pylist(), losses)]
        return make_table(REFERENCE_LOSSES, rows)

    def gradient_embeddings(self, examples: pa.Table, predictions: pa.Table, adapter_dir: str | None,
                            dim: int, seed: int) -> pa.Table:
        """EMBEDDINGS: BADGE gradient embedding (dim * dim floats) of the loss on the student's own
        answer to each seed. examples: SEEDS (n); predictions: PREDICTIONS of the same n seeds, same order.
        See actors/student_signals.py for the method and its sources."""
        require_columns(examples, SEEDS, "StudentScorerActor.gradient_embeddings")
        require_columns(predictions, PREDICTIONS, "StudentScorerActor.gradient_embeddings")
        table = to_train_examples(self.task, examples, predictions.column("prediction").to_pylist())
        model, context = self._forward_model(adapter_dir)
        with self.clock.measure(), context:
            emb = gradient_embeddings(
                model, self.engine.tokenizer, table, *self._lengths(), dim=dim, seed=seed, device=self.engine.device
            )
        rows = [{"id": i, "embedding": e.tolist()} for i, e in zip(examples.column("id").to_pylist(), emb)]
        return make_table(EMBEDDINGS, rows)

    def _lengths(self) -> tuple[bool, int, int]:
        """(use_chat_template, max prompt tokens, max sequence tokens) of a teacher-forced pass."""
        model = self.config.model
        return model.use_chat_template, model.max_prompt_tokens, model.max_prompt_tokens + self.config.max_new_tokens

    def _forward_model(self, adapter_dir: str | None):
        if not isinstance(self.engine, ForwardEngine):
            raise ValueError(
                f"this strategy needs forward passes of the student; student.engine {type(self.engine).__name__} "
                "does not give them: use student.engine 'transformers'"
            )
        self.set_adapter(adapter_dir)
        return self.engine.serving_model()

    def _row(self, example_id: str, gen: Generation, reference: str) -> dict:
        loss = -sum(gen.token_logprobs) / len(gen.token_logprobs) if gen.token_logprobs else 0.0
        return {
            "id": example_id,
            "prediction": gen.text,
            "output_tokens": gen.output_tokens,
            "loss": loss,
            "confidence": self._confidence(gen),
            "correct": bool(self.task.verify(gen.text, reference)),
        }

    def _confidence(self, gen: Generation) -> float:
        span = self.task.answer_span(gen.text)
        logprob = gen.span_logprob(*span) if span else None
        return math.exp(logprob) if logprob is not None else 0.0

    def busy_seconds(self) -> float:
        """Cumulative seconds spent generating."""
        return self.clock.total_s
