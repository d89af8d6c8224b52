"""Run configuration: YAML -> typed, validated objects, with `section.key=value` overrides.

Each actor gets its own small section (TeacherConfig, StudentConfig, TrainerConfig), never the whole
RunConfig. Unknown keys are errors, so a typo names the bad field instead of being ignored (one
exception: a stale `teacher.seed` from an old run's config.json is dropped, see TeacherConfig).
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Literal, Optional

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from loopdistill.engine_registry import check_engine
from loopdistill.secrets import ENV_VAR_NAME, redact
from loopdistill.strategy_specs import STRATEGY_SPECS
from loopdistill.tasks import TASKS


class ConfigError(ValueError):
    """A config file or override is missing, unparseable, or has a bad field (named in the message)."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class TaskConfig(_Section):
    name: str = Field(description="task name; see loopdistill.tasks.TASKS")
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
    max_number: Optional[int] = Field(
        None, ge=13, le=1000, description="Game of 24 only: largest integer in synthetic (rewritten) puzzles; "
        "evaluation keeps the 1..13 puzzles of its data. None = the task's default (loopdistill.tasks.game24.DEFAULT_MAX_NUMBER)"
    )
    max_hops: Optional[int] = Field(
        None, ge=1, le=10, description="ProntoQA only: largest hop count of generated splits (data_path 'generate') and of the "
        "programmatic teacher's rewrites; None = 1-5 hop splits and 1-7 hop rewrites"
    )
    opposite_distractor: Optional[bool] = Field(
        None, description="ProntoQA only: false leaves out of generated splits and rewrites the rule giving the queried "
        "property the opposite value on a creature the person is not (easier problems); None = true"
    )
    in_range_fraction: Optional[float] = Field(
        None, ge=0, le=1, description="Game of 24 only: share of synthetic puzzles whose four numbers all lie in 1..13 "
        "(the evaluation range); the rest hold a number in 14..max_number. None = no preference (every split drawn from 1..max_number)"
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
    max_concurrency: int = Field(8, ge=1, description="requests kept in flight per replica (no waves)")
    requests_per_minute: Optional[float] = Field(
        None, gt=0, description="the provider's limit for the key, shared by all replicas of the pool; None = unlimited"
    )
    tokens_per_minute: Optional[float] = Field(
        None, gt=0, description="prompt + max_new_tokens reserved per request, settled on usage; shared by all "
        "replicas of the pool; None = unlimited"
    )
    max_tokens_field: Literal["max_tokens", "max_completion_tokens"] = Field(
        "max_tokens", description="request field for the completion length; reasoning models (OpenAI o-series, "
        "gpt-5) reject max_tokens and need max_completion_tokens"
    )
    preflight: bool = Field(
        True, description="GET /models before any actor starts: unreachable, 401/403 or unknown model stops the run (exit 2)"
    )
    max_retries: int = Field(5, ge=0, description="retries of one request on 429/5xx/timeout/connection error")
    backoff_s: float = Field(1.0, ge=0, description="first retry delay; doubles per retry, with jitter")
    max_backoff_s: float = Field(60.0, ge=0, description="cap of one retry delay")
    timeout_s: float = Field(120.0, gt=0, description="per request")

    @field_validator("api_key_env")
    @classmethod
    def _env_var_name(cls, name: Optional[str]) -> Optional[str]:
        # A pasted key in place of a variable name must not be echoed back (the error omits the value).
        if name is not None and not ENV_VAR_NAME.match(name):
            raise ValueError("must be the NAME of an environment variable holding the key (upper-case letters, digits, _), not the key itself")
        return name


class TeacherConfig(_Section):
    engine: str = Field("programmatic", description="a teacher engine of loopdistill.engine_registry")
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
    batch_size: int = Field(
        8, ge=1, description="prompts per engine call for engines 'transformers' and 'programmatic'; 'vllm' takes "
        "a whole call at once and 'openai' keeps openai.max_concurrency in flight, each storing every answer as it arrives"
    )
    max_restarts: int = Field(1, ge=0, description="restarts of a dead replica; its call is retried as often")

    @model_validator(mode="before")
    @classmethod
    def _drop_stale_seed(cls, data):
        # teacher.seed was read nowhere (a request's sampling seed comes from loop.seed, iteration, purpose
        # and request id: loopdistill.seeds) and is gone. The config.json of every run started before
        # holds its default (`"seed": 0`), dropped here so those runs still resume; any other value was
        # set by a user who expects it to matter, and is an error naming the field.
        if isinstance(data, dict) and "seed" in data:
            if data["seed"] != 0:
                raise ValueError("seed: teacher.seed was removed (it was never read); teacher request seeds come from loop.seed")
            data = {k: v for k, v in data.items() if k != "seed"}
        return data

    @field_validator("engine")
    @classmethod
    def _registered_engine(cls, name: str) -> str:
        return check_engine(name, "teacher")


class StudentConfig(_Section):
    engine: str = Field("transformers", description="a student engine of loopdistill.engine_registry")
    model: ModelConfig = Field(default_factory=ModelConfig)
    vllm: VLLMConfig = Field(default_factory=VLLMConfig, description="used by engine 'vllm'")
    num_cpus: float = Field(1.0, gt=0)
    num_gpus: float = Field(0.0, ge=0)
    max_new_tokens: int = Field(192, ge=1, description="greedy answer length, tokens")
    batch_size: int = Field(16, ge=1)
    max_restarts: int = Field(1, ge=0, description="restarts of a dead scorer; its call is retried as often")

    @field_validator("engine")
    @classmethod
    def _registered_engine(cls, name: str) -> str:
        return check_engine(name, "student")


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
    synthetic_fraction: float = Field(
        1.0, gt=0, le=1, description="synthetic / total rows of the training set; < 1 adds real seed rows "
        "sampled with loop.seed (drivers/mixing.py); 1.0 = synthetic only (plus all seeds with include_seeds)"
    )
    max_restarts: int = Field(1, ge=0, description="times a group whose rank died is restarted per step")
    seed: int = 0


class LoopConfig(_Section):
    iterations: int = Field(3, ge=1, description="T + 1 iterations of Algorithm 1")
    strategy: str = Field("loss_high", description="selection strategy; see loopdistill.strategy_specs (drivers/strategies.py implements them)")
    sampling: Literal["argmax", "softmax"] = "argmax"
    softmax_temperature: float = Field(1.0, gt=0)
    seeds_per_iteration: int = Field(8, ge=1, description="m, selected seeds per iteration")
    few_shot_k: int = Field(5, ge=0, description="few-shot examples from D0 in the rewrite prompt")
    dedup_rouge_l: float = Field(0.7, gt=0, le=1, description="drop questions above this ROUGE-L F")
    decontamination_threshold: float = Field(
        0.7, gt=0, le=1, description="drop synthetic questions whose ROUGE-L F against a validation or test "
        "question exceeds this (free-text tasks); equal normalised keys are always dropped"
    )
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
        if name not in STRATEGY_SPECS:
            raise ValueError(f"unknown strategy {name!r}; valid: {sorted(STRATEGY_SPECS)}")
        return name

    @model_validator(mode="after")
    def _sampling_applies(self) -> "LoopConfig":
        if self.sampling == "softmax" and STRATEGY_SPECS[self.strategy].picks_set:
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

    def teacher_usd(self, input_tokens: int, output_tokens: int) -> float:
        """USD of teacher tokens at the configured prices per million (the ledger and the spend
        journal's admission both price with this)."""
        return (input_tokens * self.usd_per_million_input_tokens + output_tokens * self.usd_per_million_output_tokens) / 1e6


class GateConfig(_Section):
    """The calibration gate (drivers/gating.py; arXiv 2510.05133): after each iteration, compare the
    validation ECE with the last accepted iteration's and act when it rose while accuracy stayed flat."""

    action: Literal["off", "halt", "rollback", "reduce_synthetic_ratio"] = Field(
        "rollback", description="what a fired gate does; default rollback (see drivers/gating.py for why)"
    )
    ece_rise: float = Field(
        0.5, description="relative ECE rise that fires the gate (0.5 = +50%); below -1 it fires on every judged iteration"
    )
    min_accuracy_gain: float = Field(
        0.01, description="validation accuracy gain (absolute) above which a rising ECE is tolerated"
    )
    ece_floor: float = Field(
        0.05, ge=0, le=1, description="ECEs below this count as this much in the relative rise (0 -> 0.01 is no +inf rise)"
    )
    first_iteration: int = Field(
        1, ge=0, description="first iteration judged; earlier ones are accepted (iteration 0 would be compared with "
        "the untrained student, which often cannot write the answer format at all)"
    )
    ratio_step: float = Field(0.25, gt=0, le=1, description="reduce_synthetic_ratio: lower trainer.synthetic_fraction by this")
    min_synthetic_fraction: float = Field(
        0.25, gt=0, le=1, description="reduce_synthetic_ratio: not below this (the paper's safe zone is <= 20-30%)"
    )
    ece_bins: int = Field(10, ge=1, description="most equal-count ECE bins")
    ece_min_per_bin: int = Field(10, ge=1, description="fewest validation answers per ECE bin (fewer answers: fewer bins)")


class ForecastConfig(_Section):
    """The rectified scaling-law forecast (drivers/scaling.py; SynthLLM arXiv 2503.19551, Fixed-Source
    Synthesis arXiv 2607.01727): err(D) = B / (D_l + D^beta) + E fitted after each iteration."""

    enabled: bool = Field(True, description="fit and log the forecast once there are min_points points")
    axis: Literal["samples", "tokens"] = Field(
        "samples", description="D: kept synthetic samples (budget/teacher_samples) or teacher tokens (budget/teacher_tokens)"
    )
    min_points: int = Field(3, ge=3, description="points (baseline + iterations) before the first fit")
    horizon_multiple: float = Field(
        2.0, gt=1, description="when the budget sets no limit on the axis: forecast at D_now * this"
    )
    bootstrap: int = Field(200, ge=0, description="residual-bootstrap refits for the forecast interval (0 = none)")
    interval: float = Field(0.9, gt=0, lt=1, description="central coverage of the bootstrap interval")
    stop_when_gain_below: Optional[float] = Field(
        None, description="stop when the predicted validation-error gain until the budget is spent is below this (None: never)"
    )


class TrackingConfig(_Section):
    experiment: str = "loopdistill"
    run_name: Optional[str] = None
    tracking_uri: Optional[str] = Field(
        None, description="default: $MLFLOW_TRACKING_URI, else sqlite store under output_dir"
    )
    output_dir: str = Field("runs", description="run directories and the local MLflow store")
    parent_run_id: Optional[str] = Field(
        None, description="MLflow run id this run is nested under (set by `loopdistill study` for its children)"
    )


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
    gate: GateConfig = Field(default_factory=GateConfig)
    forecast: ForecastConfig = Field(default_factory=ForecastConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    ray: RayConfig = Field(default_factory=RayConfig)

    @model_validator(mode="after")
    def _known_task(self) -> "RunConfig":
        if self.task.name not in TASKS:
            raise ValueError(f"task.name: unknown task {self.task.name!r}; valid: {sorted(TASKS)}")
        task = TASKS[self.task.name]
        if self.task.levels is not None and self.task.name != "math":
            raise ValueError(f"task.levels: difficulty levels exist only for task 'math', not {self.task.name!r}")
        if self.task.max_number is not None and self.task.name != "game24":
            raise ValueError(f"task.max_number: a number range exists only for task 'game24', not {self.task.name!r}")
        for key in ("max_hops", "opposite_distractor"):
            if getattr(self.task, key) is not None and self.task.name != "prontoqa":
                raise ValueError(f"task.{key}: a ProntoQA generator setting, not for task {self.task.name!r}")
        if self.task.in_range_fraction is not None and self.task.name != "game24":
            raise ValueError(f"task.in_range_fraction: a number range exists only for task 'game24', not {self.task.name!r}")
        if self.task.in_range_fraction is not None and self.task.in_range_fraction < 1 and self.task.max_number == 13:
            raise ValueError("task.in_range_fraction: a value below 1 needs puzzles above 13; task.max_number is 13")
        forward = STRATEGY_SPECS[self.loop.strategy].forward_passes
        if forward and self.student.engine != "transformers":
            raise ValueError(
                f"loop.strategy: {self.loop.strategy!r} needs forward passes of the student ({sorted(forward)}); "
                f"student.engine must be 'transformers', not {self.student.engine!r}"
            )
        if self.trainer.include_seeds and self.trainer.synthetic_fraction < 1:
            raise ValueError("trainer.include_seeds: all seeds or a synthetic_fraction < 1 of sampled seeds, not both")
        fraction = self.trainer.synthetic_fraction
        if fraction < 1:
            # The most synthetic rows the run can keep (one per selected seed and iteration, capped by the
            # sample budget) need ceil(n (1 - f) / f) real rows (drivers/mixing.py): fail before paying.
            most = self.loop.iterations * self.loop.seeds_per_iteration
            most = min(most, self.budget.teacher_samples) if self.budget.teacher_samples is not None else most
            needed = -(-round(most * (1 - fraction) * 1e6) // round(fraction * 1e6))
            if needed > self.task.num_seeds:
                raise ValueError(
                    f"trainer.synthetic_fraction: {fraction} needs up to {needed} real seed rows beside {most} synthetic "
                    f"rows (loop.iterations x loop.seeds_per_iteration), more than task.num_seeds {self.task.num_seeds}"
                )
        if self.gate.action == "reduce_synthetic_ratio" and self.trainer.include_seeds:
            raise ValueError("gate.action: reduce_synthetic_ratio mixes seeds by trainer.synthetic_fraction; set trainer.include_seeds false")
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


def dump_config(config: RunConfig) -> str:
    """The resolved config as JSON with URL credentials replaced by '***' (loopdistill.secrets): what
    config.json and MLflow hold. A resumed run gets credentials back from a `teacher.openai.base_url=`
    override, or better from the URL's host configuration (a key in `api_key_env`)."""
    return json.dumps(redact(config.model_dump(mode="json")), indent=2)


# Field names whose values are not echoed in validation errors (they may be credentials).
_SECRET_FIELD = re.compile(r"(^|_)(api_?key|key|token|secret|passw(or)?d|auth|credentials?|bearer)(_|$)", re.I)


def _format_validation_error(err: ValidationError, source: str) -> str:
    lines = [f"invalid config {source}:"]
    for item in err.errors():
        field = ".".join(str(p) for p in item["loc"]) or "(top level)"
        if item["loc"] and _SECRET_FIELD.search(str(item["loc"][-1])):
            # api_key_env may hold a pasted key, and a mistyped field (teacher.openai.api_key=...) a real one: never echo it
            lines.append(f"  {field}: {item['msg']}")
        elif isinstance(item.get("input"), dict):  # a check across fields: its message names them; the section is noise
            lines.append(f"  {field}: {item['msg']}")
        else:
            lines.append(f"  {field}: {item['msg']} (got {redact(item.get('input'))!r})")
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
