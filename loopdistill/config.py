"""Run configuration: YAML -> typed, validated objects, with `section.key=value` overrides.

Each actor gets its own small section (TeacherConfig, StudentConfig, TrainerConfig), never the whole
RunConfig. Unknown keys are errors, so a typo names the bad field instead of being ignored.
"""
from __future__ import annotations

from pathlib import Path
from typing import Literal, Optional

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator


class ConfigError(ValueError):
    """A config file or override is missing, unparseable, or has a bad field (named in the message)."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class TaskConfig(_Section):
    name: str = Field(description="task name; see tasks.TASKS")
    data_path: Optional[str] = Field(
        None, description="file or directory of the benchmark; 'generate' for tasks with a generator"
    )
    num_seeds: int = Field(64, ge=1, description="size of the seed pool D0")
    num_validation: int = Field(16, ge=1, description="validation split size (original data)")
    num_test: int = Field(32, ge=1, description="test split size (original data)")
    seed: int = Field(0, description="RNG seed of the split sampling")
    levels: Optional[list[int]] = Field(
        None, description="MATH difficulty levels to keep (subset of 1..5); None = all levels; other tasks ignore it"
    )


class ModelConfig(_Section):
    path: str = Field("smollm2", description="'smollm2', 'tiny-random-llama', a local dir or a hub id")
    max_prompt_tokens: int = Field(512, ge=8, description="prompts are left-truncated to this many tokens")
    use_chat_template: bool = Field(True, description="wrap prompts in the tokenizer's chat template")


class VLLMConfig(_Section):
    """Offline `vllm.LLM` settings of one actor (actors/engines/vllm_engine.py).

    Tensor parallelism > 1 runs the LLM's workers inside the actor (vLLM's multiprocessing executor),
    so the actor must own that many GPUs: set the section's `num_gpus` = `tensor_parallel_size`.
    """

    tensor_parallel_size: int = Field(1, ge=1, description="GPUs one engine shards the model over")
    gpu_memory_utilization: float = Field(
        0.3, gt=0, le=1, description="fraction of accelerator memory for weights + KV cache (CPU: of RAM)"
    )
    kv_cache_memory_gib: Optional[float] = Field(
        None, gt=0, description="KV cache size, GiB; overrides gpu_memory_utilization. None: GPU sizes it from "
        "gpu_memory_utilization, CPU takes 1 GiB (vLLM-CPU needs a small explicit one)"
    )
    max_model_len: Optional[int] = Field(2048, ge=16, description="prompt + completion tokens; None = model's")
    enforce_eager: Optional[bool] = Field(
        None, description="no CUDA graphs / torch.compile: faster start, slower decode. None: eager on CPU, graphs on GPU"
    )
    max_lora_rank: int = Field(64, ge=1, description="largest LoRA rank served (student only)")
    max_loras: int = Field(1, ge=1, description="adapters resident per batch (student only)")
    dtype: str = Field(
        "auto", description="'auto' (GPU: vLLM's choice; CPU: float32, as the transformers engine), 'bfloat16', 'float16', 'float32'"
    )


class OpenAIConfig(_Section):
    """An OpenAI-compatible HTTP endpoint (actors/engines/openai_engine.py). The API key never appears
    here, in logs or in MLflow: only the name of the environment variable that holds it."""

    base_url: str = Field("http://127.0.0.1:8000/v1", description="API root; /chat/completions is appended")
    model: str = Field("default", description="model name the server expects in the request body")
    api_key_env: Optional[str] = Field(
        "OPENAI_API_KEY", description="env var holding the key; unset or empty var = no Authorization header"
    )
    endpoint: Literal["chat", "completions"] = Field(
        "chat", description="chat: server applies its chat template; completions: ours (model.path tokenizer)"
    )
    max_concurrency: int = Field(8, ge=1, description="requests in flight per actor")
    requests_per_minute: Optional[float] = Field(None, gt=0, description="None = unlimited")
    tokens_per_minute: Optional[float] = Field(
        None, gt=0, description="prompt + max_new_tokens reserved per request, settled on usage; None = unlimited"
    )
    max_retries: int = Field(5, ge=0, description="retries of one request on 429/5xx/timeout/connection error")
    backoff_s: float = Field(1.0, ge=0, description="first retry delay; doubles per retry, with jitter")
    max_backoff_s: float = Field(60.0, ge=0, description="cap of one retry delay")
    timeout_s: float = Field(120.0, gt=0, description="per request")


class TeacherConfig(_Section):
    engine: Literal["transformers", "programmatic", "vllm", "openai"] = "programmatic"
    model: ModelConfig = Field(default_factory=ModelConfig)
    vllm: VLLMConfig = Field(default_factory=VLLMConfig, description="used by engine 'vllm'")
    openai: OpenAIConfig = Field(
        default_factory=OpenAIConfig, description="used by engine 'openai'; model.path is then the tokenizer"
    )
    num_replicas: int = Field(1, ge=1, description="TeacherActor replicas in the pool")
    num_cpus: float = Field(1.0, gt=0, description="CPUs reserved per replica")
    num_gpus: float = Field(0.0, ge=0, description="GPUs reserved per replica")
    max_new_tokens: int = Field(256, ge=1, description="per request, output tokens")
    temperature: float = Field(0.7, ge=0, description="0 = greedy")
    top_p: float = Field(0.95, gt=0, le=1)
    batch_size: int = Field(8, ge=1, description="prompts per generate() call")
    max_restarts: int = Field(1, ge=0, description="restarts of a dead replica; its call is retried as often")
    seed: int = 0


class StudentConfig(_Section):
    engine: Literal["transformers", "vllm"] = "transformers"
    model: ModelConfig = Field(default_factory=ModelConfig)
    vllm: VLLMConfig = Field(default_factory=VLLMConfig, description="used by engine 'vllm'")
    num_cpus: float = Field(1.0, gt=0)
    num_gpus: float = Field(0.0, ge=0)
    max_new_tokens: int = Field(192, ge=1, description="greedy answer length, tokens")
    batch_size: int = Field(16, ge=1)
    max_restarts: int = Field(1, ge=0, description="restarts of a dead scorer; its call is retried as often")


class TrainerConfig(_Section):
    num_ranks: int = Field(1, ge=1, description="DeepSpeed ranks in the trainer group")
    num_cpus_per_rank: float = Field(1.0, gt=0)
    num_gpus_per_rank: float = Field(0.0, ge=0)
    zero_stage: Literal[0, 1, 2, 3] = 2
    lora_rank: int = Field(16, ge=1)
    lora_alpha: int = Field(16, ge=1, description="the paper uses alpha = rank")
    learning_rate: float = Field(5e-4, gt=0)
    epochs: int = Field(2, ge=1)
    micro_batch_size: int = Field(8, ge=1, description="examples per rank per step")
    grad_accum_steps: int = Field(1, ge=1)
    warmup_ratio: float = Field(0.15, ge=0, lt=1)
    max_grad_norm: float = Field(2.0, gt=0)
    max_seq_len: int = Field(384, ge=16, description="prompt + answer tokens")
    include_seeds: bool = Field(False, description="also train on the seed pool itself")
    max_restarts: int = Field(1, ge=0, description="times a group whose rank died is restarted per step")
    seed: int = 0


class LoopConfig(_Section):
    iterations: int = Field(3, ge=1, description="T + 1 iterations of Algorithm 1")
    strategy: str = Field("loss_high", description="selection strategy; see drivers.selection.STRATEGIES")
    sampling: Literal["argmax", "softmax"] = "argmax"
    softmax_temperature: float = Field(1.0, gt=0)
    seeds_per_iteration: int = Field(8, ge=1, description="m, selected seeds per iteration")
    few_shot_k: int = Field(5, ge=0, description="few-shot examples from D0 in the rewrite prompt")
    dedup_rouge_l: float = Field(0.7, gt=0, le=1, description="drop questions above this ROUGE-L F")
    responses_per_question: int = Field(
        1, ge=1, description="rejection sampling: r teacher answers per synthetic question"
    )
    judge_max_new_tokens: int = Field(64, ge=8, description="output tokens of one judge verdict")
    badge_projection_dim: int = Field(
        16, ge=1, description="BADGE: sparse random projection to dim x dim (vocab side x hidden side)"
    )
    fidelity_metrics: bool = Field(
        True, description="score the synthetic children with the same student (Spearman vs parents)"
    )
    seed: int = 0

    @field_validator("strategy")
    @classmethod
    def _known_strategy(cls, name: str) -> str:
        from drivers.strategies import STRATEGIES  # late import: strategies import nothing from here

        if name not in STRATEGIES:
            raise ValueError(f"unknown strategy {name!r}; valid: {sorted(STRATEGIES)}")
        return name

    @model_validator(mode="after")
    def _sampling_applies(self) -> "LoopConfig":
        from drivers.strategies import STRATEGIES

        if self.sampling == "softmax" and not STRATEGIES[self.strategy].score_based:
            raise ValueError(f"sampling: 'softmax' ranks scores; strategy {self.strategy!r} picks a set by its own rule")
        return self


class RewardConfig(_Section):
    """Where r(x, y_hat) comes from for the reward_low / reward_high strategies."""

    source: Literal["verifier", "model"] = Field(
        "verifier", description="verifier: 1.0 if the task verifier accepts the answer else 0.0; model: a reward model"
    )
    model: ModelConfig = Field(
        default_factory=lambda: ModelConfig(path="tiny-random-llama", use_chat_template=True),
        description="a Hugging Face sequence-classification model (local dir or hub id); its first logit is r",
    )
    batch_size: int = Field(8, ge=1)
    num_cpus: float = Field(1.0, gt=0)
    num_gpus: float = Field(0.0, ge=0)
    max_restarts: int = Field(1, ge=0)


class BudgetConfig(_Section):
    """Hard limits. None = unlimited. Work the remaining budget cannot pay for is never started."""

    teacher_input_tokens: Optional[int] = Field(None, ge=0)
    teacher_output_tokens: Optional[int] = Field(None, ge=0)
    teacher_samples: Optional[int] = Field(None, ge=0, description="synthetic pairs kept")
    accelerator_seconds: Optional[float] = Field(None, ge=0, description="summed over all actors")
    usd: Optional[float] = Field(None, ge=0)
    usd_per_million_input_tokens: float = Field(0.0, ge=0)
    usd_per_million_output_tokens: float = Field(0.0, ge=0)


class TrackingConfig(_Section):
    experiment: str = "loopdistill"
    run_name: Optional[str] = None
    tracking_uri: Optional[str] = Field(
        None, description="default: $MLFLOW_TRACKING_URI, else sqlite store under output_dir"
    )
    output_dir: str = Field("runs", description="run directories and the local MLflow store")


class RayConfig(_Section):
    address: Optional[str] = Field(None, description="None: connect to a running cluster or start local Ray")
    num_cpus: Optional[int] = Field(None, ge=1, description="only when starting local Ray")


class RunConfig(_Section):
    task: TaskConfig
    student: StudentConfig = Field(default_factory=StudentConfig)
    teacher: TeacherConfig = Field(default_factory=TeacherConfig)
    trainer: TrainerConfig = Field(default_factory=TrainerConfig)
    loop: LoopConfig = Field(default_factory=LoopConfig)
    reward: RewardConfig = Field(default_factory=RewardConfig)
    budget: BudgetConfig = Field(default_factory=BudgetConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    ray: RayConfig = Field(default_factory=RayConfig)

    @model_validator(mode="after")
    def _known_task(self) -> "RunConfig":
        from tasks import TASKS

        if self.task.name not in TASKS:
            raise ValueError(f"task.name: unknown task {self.task.name!r}; valid: {sorted(TASKS)}")
        task = TASKS[self.task.name]
        if self.task.levels is not None and self.task.name != "math":
            raise ValueError(f"task.levels: difficulty levels exist only for task 'math', not {self.task.name!r}")
        from drivers.strategies import STRATEGIES

        forward = {"gt_loss", "embedding"} & set(STRATEGIES[self.loop.strategy].needs)
        if forward and self.student.engine != "transformers":
            raise ValueError(
                f"loop.strategy: {self.loop.strategy!r} needs forward passes of the student ({sorted(forward)}); "
                f"student.engine must be 'transformers', not {self.student.engine!r}"
            )
        if self.teacher.engine == "programmatic" and not task.has_programmatic_teacher:
            valid = sorted(n for n, t in TASKS.items() if t.has_programmatic_teacher)
            raise ValueError(f"teacher.engine: 'programmatic' is only available for tasks {valid}")
        return self


def _parse_override(text: str) -> tuple[list[str], object]:
    if "=" not in text:
        raise ConfigError(f"override {text!r} is not of the form section.key=value")
    key, raw = text.split("=", 1)
    return key.strip().split("."), yaml.safe_load(raw) if raw != "" else ""


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Set `a.b.c=value` paths in a nested dict; values are parsed as YAML scalars ("3", "null", "x")."""
    for text in overrides:
        path, value = _parse_override(text)
        node = data
        for part in path[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {text!r}: {part!r} is not a section")
        node[path[-1]] = value
    return data


def _format_validation_error(err: ValidationError, source: str) -> str:
    lines = [f"invalid config {source}:"]
    for item in err.errors():
        field = ".".join(str(p) for p in item["loc"]) or "(top level)"
        lines.append(f"  {field}: {item['msg']} (got {item.get('input')!r})")
    return "\n".join(lines)


def build_config(data: dict, source: str = "<dict>") -> RunConfig:
    """Validate a nested dict into a RunConfig.

    Raises:
        ConfigError: listing each bad field as `section.key: reason (got value)`.
    """
    try:
        return RunConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_format_validation_error(err, source)) from None


def load_config(path: str | Path, overrides: list[str] | None = None) -> RunConfig:
    """Read a YAML run config, apply `section.key=value` overrides and validate it.

    Raises:
        ConfigError: the file is missing or not a YAML mapping, or a field is invalid (named).
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"config file {path} is not valid YAML: {err}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of sections, got {type(data).__name__}")
    return build_config(apply_overrides(data, overrides or []), str(path))
