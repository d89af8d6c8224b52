"""Checks of settings that must fit the models, run in the driver before Ray or any actor starts, so a
misfit is a one-line config error instead of a failure inside an actor after its retries."""
from __future__ import annotations

from transformers import AutoConfig

from loopdistill.config import ConfigError, RunConfig
from loopdistill.models import check_model


def check_fits_models(config: RunConfig) -> None:
    """Resolve and load both models' configs (a bad path fails here, named), then check:
    - each vLLM engine's tensor_parallel_size divides the model's attention heads, and divides or is a
      multiple of its key/value heads (vLLM shards both, replicating key/value heads below one per rank);
    - the trainer's LoRA rank fits the vLLM student's max_lora_rank (the adapter must load).

    Raises:
        loopdistill.models.ModelLoadError: a model path does not load.
        ConfigError: naming the setting, its value and the model figure it does not fit.
    """
    paths = {"student": check_model(config.student.model.path), "teacher": check_model(config.teacher.model.path)}
    for role, section in (("student", config.student), ("teacher", config.teacher)):
        if section.engine != "vllm":
            continue
        tp = section.vllm.tensor_parallel_size
        model_config = AutoConfig.from_pretrained(paths[role])
        heads = getattr(model_config, "num_attention_heads", None)
        if heads and heads % tp:
            raise ConfigError(
                f"{role}.vllm.tensor_parallel_size: {tp} does not divide the {heads} attention heads of "
                f"{role}.model.path={section.model.path!r}; use a divisor of {heads}"
            )
        # vLLM splits the key/value heads too, or replicates them when there are fewer than ranks: then the
        # ranks must be a multiple of the key/value heads.
        kv_heads = getattr(model_config, "num_key_value_heads", None) or heads
        if kv_heads and (kv_heads % tp if kv_heads >= tp else tp % kv_heads):
            raise ConfigError(
                f"{role}.vllm.tensor_parallel_size: {tp} neither divides nor is a multiple of the {kv_heads} "
                f"key/value heads of {role}.model.path={section.model.path!r}"
            )
    if config.student.engine == "vllm" and config.trainer.lora_rank > config.student.vllm.max_lora_rank:
        raise ConfigError(
            f"trainer.lora_rank: {config.trainer.lora_rank} exceeds student.vllm.max_lora_rank="
            f"{config.student.vllm.max_lora_rank}; the vLLM student could not load the adapter"
        )
