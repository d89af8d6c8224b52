"""ResourceSpec and ActorGroup: every long-lived role of a run (teacher replicas, student, reward model,
trainer ranks, rate limiter) starts the same way, from a declared spec of what each actor holds.

A `ResourceSpec` says what one role asks of the cluster (replicas, CPUs and GPUs per actor, placement,
environment) and how it survives failures: Ray restarts a dead actor up to `max_restarts` times and
retries its in-flight calls up to `max_task_retries` times (safe only for idempotent methods), while
`group_restarts` restarts the whole group, for roles whose members cannot be replaced one by one (ranks
of one process group: a restarted rank could not rejoin the collective).

Several roles start at the same time: each group is created with `wait=False` (its actors are
scheduled, nothing is waited for), then `wait_all_ready` waits for all of them in one `ray.wait`,
naming the role of a constructor that raised or of actors that could not be scheduled in time.
"""
from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Literal, Mapping, Optional, Sequence, TypeVar

import ray
from ray.util.placement_group import placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

log = logging.getLogger(__name__)

T = TypeVar("T")


class ActorStartError(RuntimeError):
    """An actor of a role raised in its constructor, or the role's on_start failed. `role` names the
    role; the message is one line with the reason (the original error is the cause)."""

    def __init__(self, role: str, message: str):
        super().__init__(message)
        self.role = role


@dataclass(frozen=True)
class ResourceSpec:
    """What one role of a run holds, per actor, and how it restarts.

    Args:
        role: name used in errors, logs and resources.json ("teacher", "trainer", ...).
        replicas: actors in the group (>= 1).
        num_cpus, num_gpus: Ray logical CPUs / GPUs reserved per actor (fractions share a device).
        max_restarts: Ray restarts of a dead actor (-1 = unlimited, 0 = never).
        max_task_retries: Ray retries of a call whose actor died (-1 = unlimited); only for idempotent
            methods.
        placement: "pack" or "spread" puts the actors in one placement group of `replicas` bundles
            (one per actor) with that strategy, reserved before any actor starts; None schedules each
            actor on its own (Ray's default strategy).
        env_vars: environment variables of each actor's process.
        group_restarts: times `ActorGroup.call_with_restarts` restarts the whole group after a member
            died (use with max_restarts=0).
        ready_timeout_s: seconds to wait for the placement group (and `ActorGroup.wait_ready`).

    Raises:
        ValueError: a field out of range (the message names the role and the field).
    """

    role: str
    replicas: int = 1
    num_cpus: float = 1.0
    num_gpus: float = 0.0
    max_restarts: int = 0
    max_task_retries: int = 0
    placement: Optional[Literal["pack", "spread"]] = None
    env_vars: dict[str, str] = field(default_factory=dict)
    group_restarts: int = 0
    ready_timeout_s: float = 600.0

    def __post_init__(self) -> None:
        problems = []
        if self.replicas < 1:
            problems.append(f"replicas={self.replicas} (needs >= 1)")
        if self.num_cpus < 0 or self.num_gpus < 0:
            problems.append(f"num_cpus={self.num_cpus}, num_gpus={self.num_gpus} (needs >= 0)")
        if self.max_restarts < -1 or self.max_task_retries < -1 or self.group_restarts < 0:
            problems.append(f"max_restarts={self.max_restarts}, max_task_retries={self.max_task_retries}, "
                            f"group_restarts={self.group_restarts} (-1 = unlimited for the first two)")
        if self.placement not in (None, "pack", "spread"):
            problems.append(f"placement={self.placement!r} (valid: 'pack', 'spread', None)")
        elif self.placement and not self.bundle():
            problems.append("placement needs a bundle with CPUs or GPUs (both are 0)")
        if self.ready_timeout_s <= 0:
            problems.append(f"ready_timeout_s={self.ready_timeout_s} (needs > 0)")
        if problems:
            raise ValueError(f"ResourceSpec {self.role!r}: " + "; ".join(problems))

    def bundle(self) -> dict[str, float]:
        """One actor's placement-group bundle, e.g. {"CPU": 1.0, "GPU": 0.5} (zero resources left out)."""
        out = {}
        if self.num_cpus > 0:
            out["CPU"] = self.num_cpus
        if self.num_gpus > 0:
            out["GPU"] = self.num_gpus
        return out

    def demand(self) -> list[tuple[float, float]]:
        """(CPUs, GPUs) of each actor of the group, one entry per replica."""
        return [(self.num_cpus, self.num_gpus)] * self.replicas

    def actor_options(self) -> dict[str, Any]:
        """The `ray.remote(...).options(...)` of every actor of the group (without placement)."""
        options: dict[str, Any] = dict(
            num_cpus=self.num_cpus, num_gpus=self.num_gpus,
            max_restarts=self.max_restarts, max_task_retries=self.max_task_retries,
        )
        if self.env_vars:
            options["runtime_env"] = {"env_vars": dict(self.env_vars)}
        return options

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields (resources.json)."""
        return asdict(self)


class ActorGroup:
    """`spec.replicas` actors of one class, started from a ResourceSpec (placement, resources,
    restarts, environment), with call-all / call-one helpers and a whole-group restart.

    Needs `ray.init` done by the caller. By default the constructor returns once the placement group
    (if any) is placed and `on_start` (if any) has run; the actors' constructors may still be running
    (see `wait_ready`). With `wait=False` it returns at once: Ray places the group and runs the
    constructors meanwhile, and `wait_all_ready` (or `finish_start` after `wait_ready`) runs on_start
    once the actors are up, so the roles of a run start at the same time.

    Args:
        actor_class: the plain (undecorated) actor class.
        spec: the role's resources and restart policy.
        args: constructor arguments, one tuple per replica (len == spec.replicas).
        on_start: called with the group after every (re)start, e.g. to form a process group; if it
            raises, the group is shut down and the error propagates.
        wait: False: do not wait for the placement group nor run on_start here (see above); a
            restart always waits.

    Raises:
        ValueError: len(args) != spec.replicas.
        TimeoutError: (wait=True) the placement group is not placed within spec.ready_timeout_s; the
            message names the role, its bundles and the cluster's resources.
    """

    def __init__(self, actor_class: type, spec: ResourceSpec, args: Sequence[tuple],
                 on_start: Optional[Callable[["ActorGroup"], None]] = None, wait: bool = True):
        if len(args) != spec.replicas:
            raise ValueError(f"{spec.role}: {len(args)} argument tuples for {spec.replicas} replicas")
        self.spec, self.args, self.on_start = spec, [tuple(a) for a in args], on_start
        self._remote = ray.remote(actor_class)
        self.actors: list = []
        self.placement_group = None
        self._on_start_due = False  # a start without waiting left on_start to finish_start
        self.start(wait=wait)

    # --- life cycle -------------------------------------------------------------------------------
    def start(self, wait: bool = True) -> None:
        """Reserve the placement group (when the spec asks for one), start the actors, run on_start.
        wait False: return without waiting for the placement group or running on_start (Ray starts
        the actors once their bundles are placed; `finish_start` runs on_start)."""
        spec = self.spec
        if self.actors:
            raise RuntimeError(f"{spec.role}: the group is running; restart() or shutdown() it first")
        if spec.placement:
            bundles = [spec.bundle() for _ in range(spec.replicas)]
            pg = placement_group(bundles, strategy=spec.placement.upper())
            # Without waiting, the actors below wait for their bundles inside Ray (wait_all_ready bounds it).
            if wait:
                try:
                    ray.get(pg.ready(), timeout=spec.ready_timeout_s)
                except ray.exceptions.GetTimeoutError:
                    remove_placement_group(pg)
                    raise TimeoutError(
                        f"{spec.role}: {spec.replicas} bundles of {spec.bundle()} (placement {spec.placement}) not placed "
                        f"within {spec.ready_timeout_s:.0f} s; cluster resources: {ray.cluster_resources()}"
                    ) from None
                except BaseException:  # Ctrl-C, SIGTERM, a Ray error: the reservation must not outlive the group
                    remove_placement_group(pg)
                    raise
            self.placement_group = pg
        options = spec.actor_options()
        try:
            for index, args in enumerate(self.args):
                placed = {}
                if self.placement_group is not None:
                    placed["scheduling_strategy"] = PlacementGroupSchedulingStrategy(
                        self.placement_group, placement_group_bundle_index=index
                    )
                self.actors.append(self._remote.options(**options, **placed).remote(*args))
            if self.on_start is not None:
                if wait:
                    self.on_start(self)
                else:
                    self._on_start_due = True
        except BaseException:
            self.shutdown()
            raise

    def finish_start(self) -> None:
        """Run the on_start that a `start(wait=False)` left due (once; nothing otherwise). Call it
        after the actors are ready (`wait_ready`); if on_start raises, the group is shut down and the
        error propagates."""
        if not self._on_start_due:
            return
        self._on_start_due = False
        try:
            self.on_start(self)
        except BaseException:
            self.shutdown()
            raise

    def ready_refs(self) -> list:
        """One ObjectRef per actor that resolves once its constructor has returned (raises the
        constructor's error as ray.exceptions.ActorDiedError)."""
        return [actor.__ray_ready__.remote() for actor in self.actors]

    def placed(self) -> bool:
        """True when the group has no placement group or Ray has placed all its bundles."""
        if self.placement_group is None:
            return True
        return ray.util.placement_group_table(self.placement_group).get("state") == "CREATED"

    def wait_ready(self, timeout_s: Optional[float] = None) -> None:
        """Block until every actor's constructor has finished.

        Raises:
            TimeoutError: not all ready within timeout_s (default spec.ready_timeout_s); names the role,
                what each actor asks for and the resources the cluster has free.
            ray.exceptions.ActorDiedError: a constructor raised (its error is the cause).
        """
        timeout_s = self.spec.ready_timeout_s if timeout_s is None else timeout_s
        refs = [actor.__ray_ready__.remote() for actor in self.actors]
        ready, pending = ray.wait(refs, num_returns=len(refs), timeout=timeout_s)
        ray.get(ready)  # a constructor that failed raises here
        if pending:
            raise TimeoutError(
                f"{self.spec.role}: {len(pending)} of {len(refs)} actors not ready within {timeout_s:.0f} s "
                f"(each asks {self.spec.bundle() or 'no resources'}); free cluster resources: {ray.available_resources()}"
            )

    def restart(self) -> None:
        """Kill every actor, free the placement group, and start the group again (same spec, args)."""
        self.shutdown()
        self.start()

    def shutdown(self) -> None:
        """Kill the actors (no restart) and free the placement group; idempotent."""
        for actor in self.actors:
            ray.kill(actor)
        self.actors = []
        self._on_start_due = False
        if self.placement_group is not None:
            remove_placement_group(self.placement_group)
            self.placement_group = None

    # --- calls ------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.actors)

    def __getitem__(self, index: int):
        return self.actors[index]

    def remote_all(self, method: str, *args, **kwargs) -> list:
        """ObjectRefs of `method(*args, **kwargs)` called on every actor (same arguments)."""
        return [getattr(actor, method).remote(*args, **kwargs) for actor in self.actors]

    def call_all(self, method: str, *args, **kwargs) -> list:
        """Results of `method(*args, **kwargs)` on every actor, in replica order (blocks)."""
        return ray.get(self.remote_all(method, *args, **kwargs))

    def call_one(self, method: str, *args, index: int = 0, **kwargs) -> Any:
        """Result of `method(*args, **kwargs)` on actor `index` (blocks)."""
        return ray.get(getattr(self.actors[index], method).remote(*args, **kwargs))

    def call_with_restarts(self, call: Callable[["ActorGroup"], T]) -> T:
        """`call(self)`; when an actor of the group died during it, restart the whole group and run
        `call` again from its start, up to spec.group_restarts times.

        Raises:
            ray.exceptions.ActorDiedError: a member died once more than group_restarts allows.
        """
        restarts = 0
        while True:
            try:
                return call(self)
            except ray.exceptions.ActorDiedError:
                if restarts == self.spec.group_restarts:
                    raise
                restarts += 1
                log.warning("%s: an actor died; restarting the group (%d/%d)", self.spec.role, restarts,
                            self.spec.group_restarts)
                self.restart()


@dataclass
class StartedActors:
    """Actors of one role started outside an ActorGroup (e.g. a pool's shared helper actor), so that
    `wait_all_ready` waits for them with the others; `spec` gives the role name and its timeout."""

    spec: ResourceSpec
    actors: list
    placement_group: Any = None

    def ready_refs(self) -> list:
        return [actor.__ray_ready__.remote() for actor in self.actors]

    def placed(self) -> bool:
        return True

    def finish_start(self) -> None:
        pass


def _reason(err: BaseException) -> str:
    """The last line of an error's text: for a constructor that raised, Ray's message ends with the
    original 'Type: message' line after its traceback."""
    lines = [line.strip() for line in str(err).strip().splitlines() if line.strip()]
    return lines[-1] if lines else type(err).__name__


def wait_all_ready(groups: Mapping[str, "ActorGroup | StartedActors"], since: Optional[float] = None) -> dict[str, float]:
    """Wait, in one `ray.wait` over every actor of every role, until each role's constructors have
    returned; as soon as one role's actors are all up, its due on_start runs (`finish_start`, e.g. the
    trainer's process group) while the other roles' actors are still loading.

    Args:
        groups: role name -> ActorGroup (or StartedActors), all started already (e.g. `wait=False`).
        since: time.perf_counter() value the timings and deadlines count from (default: now); each
            role must be ready within its spec.ready_timeout_s seconds of it.

    Returns:
        Seconds from `since` until each role was ready (on_start included), by role.

    Raises:
        ActorStartError: a constructor raised or an on_start failed (message: role, actor, reason).
        TimeoutError: a role not ready within its spec.ready_timeout_s; the message names the role,
            what each actor asks for (its placement group's bundles when they were not placed) and
            the cluster's total and free resources.
        On an error the caller shuts the groups down (here only a group whose on_start failed is).
    """
    since = time.perf_counter() if since is None else since
    owner: dict = {}  # ObjectRef -> (role, actor index)
    left: dict[str, int] = {}
    for role, group in groups.items():
        refs = group.ready_refs()
        owner.update((ref, (role, index)) for index, ref in enumerate(refs))
        left[role] = len(refs)
    ready_s: dict[str, float] = {}
    for role, n in left.items():
        if n == 0:  # nothing to wait for (an empty group)
            groups[role].finish_start()
            ready_s[role] = time.perf_counter() - since
    pending = list(owner)
    while pending:
        waiting = {owner[ref][0] for ref in pending}
        role = min(waiting, key=lambda r: groups[r].spec.ready_timeout_s)  # the first deadline
        timeout = max(0.0, since + groups[role].spec.ready_timeout_s - time.perf_counter())
        done, pending = ray.wait(pending, num_returns=1, timeout=timeout)
        if not done:
            raise _not_ready(role, groups[role], left[role])
        for ref in done:
            role, index = owner[ref]
            try:
                ray.get(ref)
            except ray.exceptions.RayActorError as err:
                spec = groups[role].spec
                raise ActorStartError(role, f"{role}: actor {index} of {spec.replicas} failed to start: {_reason(err)}") from err
            left[role] -= 1
            if left[role] == 0:
                try:
                    groups[role].finish_start()
                except Exception as err:
                    raise ActorStartError(role, f"{role}: its actors started, then forming the group failed: "
                                                f"{type(err).__name__}: {_reason(err)}") from err
                ready_s[role] = time.perf_counter() - since
                log.debug("%s ready after %.1f s", role, ready_s[role])
    return ready_s


def _not_ready(role: str, group, pending: int) -> TimeoutError:
    spec = group.spec
    if not group.placed():
        what = f"{spec.replicas} bundles of {spec.bundle()} (placement {spec.placement}) not placed"
    else:
        what = f"{pending} of {spec.replicas} actors (each asks {spec.bundle() or 'no resources'}) not ready"
    return TimeoutError(
        f"{role}: {what} within {spec.ready_timeout_s:.0f} s; cluster resources: {ray.cluster_resources()}, "
        f"free: {ray.available_resources()}"
    )
