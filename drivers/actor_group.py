"""The long-lived actors of one run, started from its config: teacher pool, student scorer, trainer
group, and the reward model when the strategy reads one."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import ray

from drivers.strategies import STRATEGIES
from loopdistill.config import RunConfig


@dataclass
class Actors:
    """Handles of the long-lived actors of one run."""

    teacher: object  # actors.teacher_pool.TeacherPool
    student: object  # ray ActorHandle of StudentScorerActor
    trainer: object  # actors.trainer.TrainerGroup
    reward: object = None  # ray ActorHandle of RewardModelActor, when the strategy reads a reward model

    def shutdown(self) -> None:
        self.teacher.shutdown()
        self.trainer.shutdown()
        ray.kill(self.student)
        if self.reward is not None:
            ray.kill(self.reward)


def start_actors(config: RunConfig, run_dir: Path) -> Actors:
    """Create the teacher pool, the student scorer and the trainer group (resources from config).
    The teacher's paid-once request cache and its spend journal live in the run directory."""
    from actors.student import StudentScorerActor
    from actors.teacher_pool import TeacherPool
    from actors.trainer import TrainerGroup

    student = ray.remote(StudentScorerActor).options(
        num_cpus=config.student.num_cpus, num_gpus=config.student.num_gpus,
        # predict() takes the adapter as an argument, so a retried call on a restarted actor is exact.
        max_restarts=config.student.max_restarts, max_task_retries=config.student.max_restarts,
    )
    return Actors(
        teacher=TeacherPool(config.teacher, config.task.name, str(run_dir / "teacher_cache.sqlite"),
                            str(run_dir / TEACHER_JOURNAL)),
        student=student.remote(config.student, config.task.name),
        trainer=TrainerGroup(config.trainer, config.student.model),
        reward=start_reward_model(config),
    )


TEACHER_JOURNAL = "teacher_journal.jsonl"  # the SpendJournal of teacher requests sent, in the run dir


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


def start_reward_model(config: RunConfig):
    """A RewardModelActor when the strategy reads rewards from a model (None otherwise)."""
    from actors.reward import RewardModelActor

    if "reward" not in STRATEGIES[config.loop.strategy].needs or config.reward.source != "model":
        return None
    rc = config.reward
    actor = ray.remote(RewardModelActor).options(
        num_cpus=rc.num_cpus, num_gpus=rc.num_gpus, max_restarts=rc.max_restarts, max_task_retries=rc.max_restarts
    )
    return actor.remote(rc)
