"""The long-lived actors of one run and the resources they hold, both from its config.

`resource_specs(config)` is the one place a run's resources are declared (teacher replicas, rate
limiter, student scorer, reward model, trainer ranks); `start_actors` starts every role from it as an
actors.group.ActorGroup, the study runner (drivers/study.py) sizes its concurrent runs from it, and
the run directory's resources.json records it."""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

from actors.group import ActorGroup, ResourceSpec
from actors.rate_limiter import LIMITER_SPEC
from actors.teacher_pool import shares_rate_limit
from loopdistill.config import RewardConfig, RunConfig, StudentConfig, TeacherConfig, TrainerConfig
from loopdistill.strategy_specs import STRATEGY_SPECS

TEACHER_JOURNAL = "teacher_journal.jsonl"  # the SpendJournal of teacher requests sent, in the run dir
RESOURCES_FILE = "resources.json"  # resource_specs of the run, {role: ResourceSpec fields}, in the run dir


def teacher_spec(config: TeacherConfig) -> ResourceSpec:
    """Teacher replicas: restarted and their calls retried `max_restarts` times (generate and judge are
    idempotent: an answer already paid for comes back from the request cache)."""
    return ResourceSpec(
        role="teacher", replicas=config.num_replicas, num_cpus=config.num_cpus, num_gpus=config.num_gpus,
        max_restarts=config.max_restarts, max_task_retries=config.max_restarts,
    )


def student_spec(config: StudentConfig) -> ResourceSpec:
    """The student scorer: its calls take the adapter as an argument, so a call retried on a restarted
    actor is exact."""
    return ResourceSpec(
        role="student", num_cpus=config.num_cpus, num_gpus=config.num_gpus,
        max_restarts=config.max_restarts, max_task_retries=config.max_restarts,
    )


def reward_spec(config: RewardConfig) -> ResourceSpec:
    """The reward model (scoring is a pure function of its inputs, so retries are exact)."""
    return ResourceSpec(
        role="reward", num_cpus=config.num_cpus, num_gpus=config.num_gpus,
        max_restarts=config.max_restarts, max_task_retries=config.max_restarts,
    )


def trainer_spec(config: TrainerConfig) -> ResourceSpec:
    """Trainer ranks: one bundle per rank packed in one placement group; a rank never restarts alone
    (it could not rejoin the process group), the whole group restarts `max_restarts` times per step.
    CPU ranks run DeepSpeed's CPU accelerator (DS_ACCELERATOR=cpu)."""
    return ResourceSpec(
        role="trainer", replicas=config.num_ranks, num_cpus=config.num_cpus_per_rank,
        num_gpus=config.num_gpus_per_rank, max_restarts=0, max_task_retries=0, placement="pack",
        env_vars={} if config.num_gpus_per_rank > 0 else {"DS_ACCELERATOR": "cpu"},
        group_restarts=config.max_restarts,
    )


def uses_reward_model(config: RunConfig) -> bool:
    """The strategy reads rewards, and they come from a model (not the verifier)."""
    return "reward" in STRATEGY_SPECS[config.loop.strategy].needs and config.reward.source == "model"


def resource_specs(config: RunConfig) -> dict[str, ResourceSpec]:
    """Every role a run starts, by role name, in start order: "teacher", "rate_limiter" (an HTTP
    teacher with RPM/TPM limits), "student", "trainer", "reward" (a reward-model strategy)."""
    specs = {"teacher": teacher_spec(config.teacher)}
    if shares_rate_limit(config.teacher):
        specs["rate_limiter"] = LIMITER_SPEC
    specs["student"] = student_spec(config.student)
    specs["trainer"] = trainer_spec(config.trainer)
    if uses_reward_model(config):
        specs["reward"] = reward_spec(config.reward)
    return specs


def describe_resources(specs: dict[str, ResourceSpec]) -> str:
    """One line for errors and logs, e.g. "teacher 2 x {'CPU': 0.5}, trainer 1 x {'CPU': 1.0} (pack)"."""
    return ", ".join(
        f"{role} {spec.replicas} x {spec.bundle() or 'no resources'}" + (f" ({spec.placement})" if spec.placement else "")
        for role, spec in specs.items()
    )


def write_resources(specs: dict[str, ResourceSpec], run_dir: Path) -> Path:
    """Write `specs` to run_dir/resources.json ({role: fields}); returns the path."""
    path = Path(run_dir) / RESOURCES_FILE
    path.write_text(json.dumps({role: spec.to_dict() for role, spec in specs.items()}, indent=2) + "\n")
    return path


@dataclass
class Actors:
    """Handles of the long-lived actors of one run, and how long they took to start."""

    teacher: object  # actors.teacher_pool.TeacherPool
    student: object  # ray ActorHandle of StudentScorerActor
    trainer: object  # actors.trainer.TrainerGroup
    reward: object = None  # ray ActorHandle of RewardModelActor, when the strategy reads a reward model
    groups: list = field(default_factory=list)  # the student's and reward model's ActorGroups
    # Seconds from the call of start_actors until each role was ready ("teacher", "rate_limiter",
    # "student", "trainer", "reward" as started) and until all were ("actors").
    startup_s: dict = field(default_factory=dict)

    def shutdown(self) -> None:
        """Kill every actor and free the trainer's placement group."""
        self.teacher.shutdown()
        self.trainer.shutdown()
        for group in self.groups:
            group.shutdown()


def start_actors(config: RunConfig, run_dir: Path) -> Actors:
    """Start every role of `resource_specs(config)` (written first to run_dir/resources.json): the
    teacher pool (its paid-once request cache and spend journal live in the run directory; the
    journal gates every teacher attempt on `config.budget`), the student scorer, the trainer group,
    and the reward model when the strategy reads one; returns once every actor's constructor has
    returned and the trainer ranks have formed their process group.

    The roles start at the same time: every role's actors are created first, then one wait covers
    them all, and the trainer's process group forms as soon as its ranks are up, while the engines of
    the other roles may still be loading. The named models (loopdistill.models.resolve_model, e.g. a
    GGUF converted to safetensors) are resolved here once, before any actor, so the actors find them
    converted instead of queueing on the conversion's file lock. Actors.startup_s holds the seconds
    per role. If a role fails to start, every role started is shut down.

    Raises:
        actors.group.ActorStartError: an actor's constructor raised, or the trainer's process group
            did not form (the message names the role and the reason).
        TimeoutError: a role not ready within its spec.ready_timeout_s seconds (message names the
            role, its bundles or what each actor asks, and the cluster's resources).
    """
    from actors.group import StartedActors, wait_all_ready
    from actors.reward import RewardModelActor
    from actors.student import StudentScorerActor
    from actors.teacher_pool import TeacherPool
    from actors.trainer import TrainerGroup
    from loopdistill.models import resolve_model

    since = time.perf_counter()
    specs = resource_specs(config)
    write_resources(specs, run_dir)
    paths = [config.student.model.path, config.teacher.model.path] + ([config.reward.model.path] if "reward" in specs else [])
    for path in dict.fromkeys(paths):
        resolve_model(path)  # a no-op for a path or hub id, and for a model converted before
    started: list = []
    try:
        teacher = TeacherPool(config.teacher, config.task.name, specs["teacher"], str(run_dir / "teacher_cache.sqlite"),
                              str(run_dir / TEACHER_JOURNAL), limiter_spec=specs.get("rate_limiter", LIMITER_SPEC),
                              budget=config.budget)
        started.append(teacher)
        waiting = {"teacher": teacher.group}
        if teacher.limiter is not None:
            waiting["rate_limiter"] = StartedActors(specs.get("rate_limiter", LIMITER_SPEC), [teacher.limiter])
        # wait=False: no role waits for a placement group or an on_start before the next is created.
        student = ActorGroup(StudentScorerActor, specs["student"], [(config.student, config.task.name)], wait=False)
        started.append(student)
        waiting["student"] = student
        trainer = TrainerGroup(config.trainer, config.student.model, specs["trainer"], wait=False)
        started.append(trainer)
        waiting["trainer"] = trainer.group
        reward = None
        if "reward" in specs:
            reward = ActorGroup(RewardModelActor, specs["reward"], [(config.reward,)], wait=False)
            started.append(reward)
            waiting["reward"] = reward
        startup_s = wait_all_ready(waiting, since=since)
    except BaseException:
        for one in reversed(started):
            one.shutdown()
        raise
    startup_s["actors"] = time.perf_counter() - since
    groups = [student] + ([reward] if reward is not None else [])
    return Actors(teacher=teacher, student=student[0], trainer=trainer, reward=reward[0] if reward is not None else None,
                  groups=groups, startup_s=startup_s)


def startup_metrics(ray_init_s: float, actors_s: dict[str, float], total_s: float) -> dict[str, float]:
    """The start-up figures of a run (seconds), as MLflow metrics: startup/ray_init_s (connecting to
    or starting Ray), startup/actors_s (start_actors until every role was ready),
    startup/<role>_s (start_actors' call until that role was ready; Actors.startup_s) and
    startup/total_s (the driver's start until the first stage)."""
    out = {"startup/ray_init_s": ray_init_s}
    out.update({f"startup/{role}_s": seconds for role, seconds in actors_s.items()})
    out["startup/total_s"] = total_s
    return out


def preflight_teacher(config: RunConfig) -> None:
    """Before any actor starts: an HTTP teacher must answer, accept the key and serve the model.

    Raises:
        actors.engines.openai_engine.TeacherUnreachable (a ConfigError: the CLI exits 2 with one line
            naming the base URL without credentials).
    """
    oc = config.teacher.openai
    if config.teacher.engine == "openai" and oc.preflight:
        from actors.engines.openai_engine import preflight

        preflight(oc)
