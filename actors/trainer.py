"""TrainerRankActor and TrainerGroup: DeepSpeed ZeRO + PEFT LoRA finetuning of the student over W ranks.

Recipe (Kessler et al. 2025, arXiv 2512.00884, training details): a *fresh* LoRA every iteration
(re-initialised, never warm-started) on all linear layers with rank = alpha, Adam, gradient-norm clip
2.0, linear decay after a 15% linear warm-up; the epoch best on the validation split is kept.
Only the LoRA adapter leaves the trainer (a directory), never the base weights.
"""
from __future__ import annotations

import copy
import dataclasses
import gc
import logging
import math
import os
import shutil
import socket
import tempfile
import time
from typing import Union

import pyarrow as pa
import ray
from actors.group import ActorGroup, ResourceSpec
from actors.runtime import inject_fault
from actors.sft_data import (
    Example,
    collate,
    completion_nll,
    eval_batches,
    micro_steps_per_epoch,
    rank_batches,
    step_target_tokens,
    tokenize_examples,
    without_loss,
)
from loopdistill.config import ModelConfig, TrainerConfig
from loopdistill.schemas import TRAIN_EXAMPLES, require_columns

log = logging.getLogger(__name__)


def _check_tables(train_table: pa.Table, val_table: pa.Table, where: str) -> None:
    require_columns(train_table, TRAIN_EXAMPLES, where)
    require_columns(val_table, TRAIN_EXAMPLES, where + " (validation)")
    if train_table.num_rows == 0:
        raise ValueError(f"{where}: the training table is empty (0 rows); there is nothing to finetune on")


def _skip_shm_comm_build(deepspeed) -> None:
    """Keep DeepSpeed from JIT-compiling its shared-memory all-reduce op for CPU ranks (~30 s of C++
    build on first use, and a compiler on every host): LoRA gradients are small, gloo suffices."""
    try:
        from deepspeed.ops.op_builder.cpu import ShareMemCommBuilder

        deepspeed.ops.__compatible_ops__[ShareMemCommBuilder.NAME] = False
    except (ImportError, AttributeError, TypeError):  # another DeepSpeed layout: keep its default
        pass


class TrainerRankActor:
    """One DeepSpeed rank of a TrainerGroup (a long-lived Ray actor that TrainerGroup starts with its spec).

    The tokenizer and base model load once, in `__init__`; each `train` call finetunes a new LoRA on a
    copy of the base, so the base weights never change across iterations.

    Args:
        rank, world_size: this rank's index and the number of ranks (0 <= rank < world_size).
        config: the trainer section of the run config.
        model: the student model (`path`, prompt formatting), the LoRA's base.

    Raises:
        loopdistill.models.ModelLoadError: the base model does not load.
    """

    def __init__(self, rank: int, world_size: int, config: TrainerConfig, model: ModelConfig):
        import torch

        from loopdistill.models import load_causal_lm, load_tokenizer

        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside 0..{world_size - 1}")
        self.rank, self.world_size = rank, world_size
        self.config, self.model_config = config, model
        self.cuda = config.num_gpus_per_rank > 0 and torch.cuda.is_available()
        self.device = "cuda" if self.cuda else "cpu"
        if not self.cuda:
            # All ranks train at once and (PACK) usually share one host: split its cores between them.
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // world_size))
        logging.getLogger("DeepSpeed").setLevel(logging.WARNING)
        self.tokenizer = load_tokenizer(model.path)
        dtype = torch.bfloat16 if self.cuda else torch.float32
        self.base = load_causal_lm(model.path, dtype=dtype, device=self.device)

    # --- process group ---------------------------------------------------------------------------
    def node_address(self) -> str:
        """IP address of this rank's node (rank 0's is MASTER_ADDR)."""
        return ray.util.get_node_ip_address()

    def free_port(self) -> int:
        """A TCP port that is free on this node now (rank 0's is MASTER_PORT)."""
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("", 0))
            return sock.getsockname()[1]

    def setup(self, master_addr: str, master_port: int) -> None:
        """Join the group's process group: gloo on CPU, NCCL on GPU (blocks until all ranks join)."""
        import deepspeed

        os.environ.update(
            MASTER_ADDR=master_addr,
            MASTER_PORT=str(master_port),
            RANK=str(self.rank),
            WORLD_SIZE=str(self.world_size),
            # Ray gives each rank only its own GPU (CUDA_VISIBLE_DEVICES), so it is always device 0.
            LOCAL_RANK="0",
        )
        if not self.cuda:
            _skip_shm_comm_build(deepspeed)
        deepspeed.init_distributed(dist_backend="nccl" if self.cuda else "gloo", auto_mpi_discovery=False, verbose=False)

    # --- one training run ------------------------------------------------------------------------
    def train(self, train_table: pa.Table, val_table: pa.Table, output_dir: str) -> dict:
        """Finetune a fresh LoRA on `train_table`, keep the epoch best on `val_table`, and (rank 0)
        save that adapter with `save_pretrained` to `output_dir` (shared storage when ranks span nodes).
        Every rank of the group must be called with the same tables.

        train_table, val_table: TRAIN_EXAMPLES (id, prompt, completion). An empty validation table
        keeps the last epoch.

        Returns plain metrics, identical on every rank except "adapter_dir" (rank 0 only):
            trainer/train_loss     last (or NaN-cut) epoch's mean completion NLL, nats/token, all ranks
            trainer/val_loss_best  best epoch's validation NLL, nats/token (NaN: no epoch finished or
                                   no validation tokens)
            trainer/best_epoch     0-based epoch of the saved adapter (-1: the initial LoRA, = base model)
            trainer/steps          optimizer steps taken
            trainer/tokens         non-padding training tokens (prompt + completion), all ranks
            trainer/seconds        wall seconds of this call on this rank
            trainer/tokens_per_s   trainer/tokens / trainer/seconds
            trainer/examples       training rows
            trainer/truncated_examples  rows whose completion was cut by max_seq_len
            trainer/nan_loss       True when a non-finite loss stopped training early
            trainer/step_losses    list, one per optimizer step: the global batch's token-mean NLL
                                   (nats/token) before that step's update; not an MLflow metric

        Raises:
            SchemaError: a table lacks a TRAIN_EXAMPLES column (named).
            ValueError: the training table is empty.
        """
        _check_tables(train_table, val_table, "TrainerRankActor.train")
        start = time.perf_counter()
        cfg, mc = self.config, self.model_config
        train = tokenize_examples(train_table, self.tokenizer, mc.use_chat_template, mc.max_prompt_tokens, cfg.max_seq_len)
        val = tokenize_examples(val_table, self.tokenizer, mc.use_chat_template, mc.max_prompt_tokens, cfg.max_seq_len)
        engine = self._fresh_engine(len(train))
        try:
            result, best_state = self._fit(engine, train, val)
            if self.rank == 0:
                result["adapter_dir"] = self._save(engine.module, best_state, output_dir)
        finally:
            self._release(engine)
        result["trainer/examples"] = len(train)
        result["trainer/truncated_examples"] = sum(e.truncated for e in train)
        result["trainer/seconds"] = time.perf_counter() - start
        result["trainer/tokens_per_s"] = result["trainer/tokens"] / max(result["trainer/seconds"], 1e-9)
        return result

    def _fresh_engine(self, num_examples: int):
        """A new LoRA (seeded: identical on every rank and every call) on a copy of the base model,
        wrapped by DeepSpeed with AdamW over the LoRA parameters only and a warm-up/linear-decay schedule."""
        import deepspeed
        import torch
        from peft import LoraConfig, get_peft_model
        from transformers import get_linear_schedule_with_warmup

        cfg = self.config
        # A copy, not self.base: DeepSpeed casts (bf16) and, under ZeRO-3, partitions the module in
        # place, so wrapping the kept base would leave it altered for the next iteration.
        torch.manual_seed(cfg.seed)
        lora = LoraConfig(
            r=cfg.lora_rank, lora_alpha=cfg.lora_alpha, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM"
        )
        model = get_peft_model(copy.deepcopy(self.base), lora)
        trainable = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(trainable, lr=cfg.learning_rate)
        micro = micro_steps_per_epoch(num_examples, self.world_size, cfg.micro_batch_size, cfg.grad_accum_steps)
        total_steps = cfg.epochs * micro // cfg.grad_accum_steps
        warmup_steps = round(cfg.warmup_ratio * total_steps)
        scheduler = get_linear_schedule_with_warmup(optimizer, warmup_steps, total_steps)
        engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, lr_scheduler=scheduler, config=self._ds_config())
        return engine

    def _ds_config(self) -> dict:
        cfg = self.config
        return {
            "train_micro_batch_size_per_gpu": cfg.micro_batch_size,
            "gradient_accumulation_steps": cfg.grad_accum_steps,
            "gradient_clipping": cfg.max_grad_norm,
            "zero_optimization": {"stage": cfg.zero_stage},
            # torch AdamW as the client optimizer: DeepSpeed's CPU Adam would need a C++ build.
            "zero_allow_untested_optimizer": True,
            "bf16": {"enabled": self.cuda},
            "steps_per_print": 2**31 - 1,
            "wall_clock_breakdown": False,
        }

    def _fit(self, engine, train: list[Example], val: list[Example]) -> tuple[dict, dict]:
        """The epoch loop: train, validate, keep the best LoRA state. A non-finite loss on any rank
        stops all ranks before its backward pass, keeping the best adapter so far.

        Each optimizer step minimises the token-mean NLL of its *global* batch (all ranks, all
        accumulation micro-batches), so W ranks x micro-batch b and 1 rank x 2b (or b with 2
        accumulation steps) take the same step on the same examples (tests/cpu/test_trainer_equivalence.py).
        """
        cfg, gas = self.config, self.config.grad_accum_steps
        fault_point = f"trainer.rank{self.rank}.step"
        best_state, best_loss, best_epoch = self._lora_state(engine), math.nan, -1
        tokens, steps, nan_loss, train_loss = 0, 0, False, math.nan
        step_losses: list[float] = []
        for epoch in range(cfg.epochs):
            engine.train()
            nll_sum, nll_count, step_nll = 0.0, 0, 0.0
            batches = rank_batches(len(train), epoch, cfg.seed, self.rank, self.world_size, cfg.micro_batch_size, gas)
            step_tokens = step_target_tokens(train, epoch, cfg.seed, self.world_size, cfg.micro_batch_size, gas)
            for micro, indices in enumerate(batches):
                batch = self._to_device(collate([train[i] for i in indices], self.tokenizer.pad_token_id))
                logits = engine(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
                total, count = completion_nll(logits, batch["labels"])
                denominator = max(step_tokens[micro // gas], 1)
                # DeepSpeed divides the loss by gas (backward) and the gradient by W (all-reduce
                # average); scaling by W * gas / (global batch tokens) undoes both, so the step's
                # gradient is that of sum(NLL) / tokens over the global batch, not a mean of means.
                loss = total * (self.world_size * gas / denominator)
                global_total = self._all_sum(float(total.detach()))  # non-finite if any rank's is
                if not math.isfinite(global_total):
                    nan_loss = True
                    break
                engine.backward(loss)
                engine.step()
                inject_fault(fault_point)  # a rank dying mid-epoch (a set lookup when faults are off)
                step_nll += global_total
                if (micro + 1) % gas == 0:
                    steps += 1
                    step_losses.append(step_nll / denominator)
                    step_nll = 0.0
                nll_sum += float(total.detach())
                nll_count += int(count)
                tokens += int(batch["attention_mask"].sum())
            epoch_nll, epoch_count = self._all_sum(nll_sum), self._all_sum(float(nll_count))
            if epoch_count > 0:
                train_loss = epoch_nll / epoch_count
            if nan_loss:
                log.warning("rank %d: non-finite loss in epoch %d; keeping the adapter of epoch %d", self.rank, epoch, best_epoch)
                break
            val_loss, val_tokens = self._val_loss(engine, val)
            no_validation = val_tokens == 0  # then the last epoch is kept
            if no_validation or best_epoch < 0 or val_loss < best_loss:
                best_state, best_loss, best_epoch = self._lora_state(engine), val_loss, epoch
        metrics = {
            "trainer/train_loss": train_loss,
            "trainer/val_loss_best": best_loss,
            "trainer/best_epoch": best_epoch,
            "trainer/steps": steps,
            "trainer/tokens": int(self._all_sum(float(tokens))),
            "trainer/nan_loss": nan_loss,
            "trainer/step_losses": step_losses,
        }
        return metrics, best_state

    def _val_loss(self, engine, val: list[Example]) -> tuple[float, int]:
        """(token-weighted mean NLL in nats/token of the validation completions, completion tokens),
        summed over all ranks. Each rank takes a strided shard; empty slots carry no loss."""
        import torch

        engine.eval()
        nll, count = 0.0, 0
        filler = val[0] if val else None
        with torch.no_grad():
            for indices in eval_batches(len(val), self.rank, self.world_size, self.config.micro_batch_size):
                examples = [val[i] if i is not None else without_loss(filler) for i in indices]
                batch = self._to_device(collate(examples, self.tokenizer.pad_token_id))
                logits = engine(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
                total, n = completion_nll(logits, batch["labels"])
                nll, count = nll + float(total), count + int(n)
        nll, count = self._all_sum(nll), int(self._all_sum(float(count)))
        return (nll / count if count else math.nan), count

    # --- collectives, state, cleanup -------------------------------------------------------------
    def _to_device(self, batch: dict):
        return {k: v.to(self.device) for k, v in batch.items()}

    def _all_sum(self, value: float) -> float:
        """Sum of a scalar over all ranks (a collective: every rank must call it)."""
        import torch
        import torch.distributed as dist

        t = torch.tensor([float(value)], dtype=torch.float64, device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return float(t.item())

    def _lora_state(self, engine) -> dict:
        """CPU copy of the trainable (LoRA) parameters by full module name, gathered under ZeRO-3
        (a collective there: every rank must call it)."""
        import deepspeed

        named = [(n, p) for n, p in engine.module.named_parameters() if p.requires_grad]
        with deepspeed.zero.GatheredParameters([p for _, p in named], enabled=self.config.zero_stage == 3):
            return {n: p.detach().to("cpu", copy=True) for n, p in named}

    @staticmethod
    def _save(peft_model, state: dict, output_dir: str) -> str:
        """Write the adapter (adapter_config.json + adapter_model.safetensors) of `state`; written
        beside `output_dir` and renamed, so a killed save never leaves a half adapter behind."""
        parent = os.path.dirname(os.path.abspath(output_dir))
        os.makedirs(parent, exist_ok=True)
        tmp = tempfile.mkdtemp(dir=parent, prefix=".adapter-")
        peft_model.save_pretrained(tmp, state_dict=state)
        shutil.rmtree(output_dir, ignore_errors=True)
        os.replace(tmp, output_dir)
        return output_dir

    def _release(self, engine) -> None:
        import torch

        engine.destroy()
        del engine
        gc.collect()
        if self.cuda:
            torch.cuda.empty_cache()


Table = Union[pa.Table, "ray.ObjectRef"]


def _form_process_group(group: ActorGroup) -> None:
    """Rank 0's node address and a free port there become every rank's MASTER_ADDR/MASTER_PORT."""
    timeout_s = group.spec.ready_timeout_s
    master_addr, master_port = ray.get([group[0].node_address.remote(), group[0].free_port.remote()], timeout=timeout_s)
    ray.get(group.remote_all("setup", master_addr, master_port), timeout=timeout_s)


class TrainerGroup:
    """W TrainerRankActor ranks started as one ActorGroup; rank 0 publishes MASTER_ADDR/MASTER_PORT.

    The spec (drivers/actor_group.py `trainer_spec`) packs one bundle per rank into a placement group
    (placement "pack"), gives CPU ranks DS_ACCELERATOR=cpu, and never restarts a rank on its own
    (max_restarts 0: a restarted rank could not rejoin the process group); instead a rank that dies
    during `train` restarts the whole group and the step, up to spec.group_restarts times.
    Needs `ray.init` done by the caller.

    Args:
        config: trainer section (ZeRO stage, LoRA and optimiser settings).
        model: the student model to finetune.
        spec: the ranks' resources; spec.replicas is the world size.
        ready_timeout_s: overrides spec.ready_timeout_s: how long to wait for the placement group and
            for the ranks to form their process group.
        wait: False: return once the ranks are created, without waiting for their placement group,
            their constructors or the process group; `actors.group.wait_all_ready` with `self.group`
            forms the process group as soon as the ranks are up (so the ranks load their model while
            the other roles load theirs). A group restart always waits.

    Raises:
        ValueError: spec.max_restarts != 0.
        TimeoutError: (wait=True) the cluster cannot place the bundles within the timeout (the
            message names the role, the bundles and the cluster's resources).
    """

    def __init__(self, config: TrainerConfig, model: ModelConfig, spec: ResourceSpec,
                 ready_timeout_s: float | None = None, wait: bool = True):
        if spec.max_restarts != 0:
            raise ValueError(f"{spec.role}: max_restarts={spec.max_restarts}; ranks of one process group restart "
                             "together (group_restarts), never one by one")
        if ready_timeout_s is not None:
            spec = dataclasses.replace(spec, ready_timeout_s=ready_timeout_s)
        self.config, self.model, self.spec = config, model, spec
        world = spec.replicas
        self.group = ActorGroup(TrainerRankActor, spec, [(rank, world, config, model) for rank in range(world)],
                                on_start=_form_process_group, wait=wait)

    @property
    def ranks(self) -> list:
        """The ranks' actor handles, rank order (empty once shut down)."""
        return self.group.actors

    def train(self, train_table: Table, val_table: Table, output_dir: str) -> dict:
        """Finetune a fresh LoRA on all ranks (see TrainerRankActor.train) and return rank 0's metrics
        and "adapter_dir", plus trainer/accelerator_seconds (the ranks' trainer/seconds summed).

        train_table, val_table: TRAIN_EXAMPLES tables or ObjectRefs to them; a table is put in the
        object store once and every rank reads the same object.

        Raises:
            SchemaError, ValueError: as TrainerRankActor.train (checked here first for tables).
            ray.exceptions.RayError: a rank failed with an error, or ranks died more than
                spec.group_restarts times (a died rank restarts the whole group and the step).
        """
        if isinstance(train_table, pa.Table) and isinstance(val_table, pa.Table):
            _check_tables(train_table, val_table, "TrainerGroup.train")
        train_ref = ray.put(train_table) if isinstance(train_table, pa.Table) else train_table
        val_ref = ray.put(val_table) if isinstance(val_table, pa.Table) else val_table
        # A dead rank breaks the process group: the group restarts and the step runs again from its
        # start (a fresh LoRA; nothing of the failed attempt is reused).
        results = self.group.call_with_restarts(
            lambda group: self._gather(group.remote_all("train", train_ref, val_ref, output_dir))
        )
        out = dict(results[0])
        out["trainer/accelerator_seconds"] = sum(r["trainer/seconds"] for r in results)
        return out

    def _gather(self, refs: list, grace_s: float = 60.0) -> list[dict]:
        """ray.get of all ranks, except that a failed rank does not leave the others hanging in a
        collective forever: they get `grace_s` to finish (a bad table fails on every rank at once),
        after which the group is shut down."""
        pending = list(refs)
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            try:
                ray.get(done[0])
            except Exception as first:
                _, still = ray.wait(pending, num_returns=len(pending), timeout=grace_s)
                if still:
                    log.error("TrainerGroup: a rank failed while others were still training; shutting the group down")
                    self.shutdown()
                # A dead rank makes the survivors fail in their collective ("connection closed by peer"),
                # and their error may arrive first: raise the death, which the group restart acts on.
                for ref in refs:
                    try:
                        ray.get(ref, timeout=0)
                    except ray.exceptions.RayActorError as died:
                        raise died from first
                    except Exception:
                        continue
                raise
        return ray.get(refs)

    def shutdown(self) -> None:
        """Kill the ranks and free their placement group (idempotent)."""
        self.group.shutdown()
