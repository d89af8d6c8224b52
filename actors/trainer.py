"""TrainerRankActor and TrainerGroup: DeepSpeed ZeRO + PEFT LoRA finetuning over W ranks.

Training recipe from Kessler et al. 2025 (arXiv 2512.00884), training details: a fresh LoRA on all
linear layers every iteration (rank = alpha), Adam, gradient-norm clipping 2.0, linear decay after a
15% warm-up, the checkpoint best on the validation split is kept.
"""
from __future__ import annotations

import math
import os
import socket
import time
from typing import Optional

import pyarrow as pa
import ray
from ray.util.placement_group import placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from actors.sft_data import collate, rank_batches, tokenize_examples
from loopdistill.config import ModelConfig, TrainerConfig
from loopdistill.schemas import TRAIN_EXAMPLES, require_columns


class TrainerRankActor:
    """One DeepSpeed rank. The base model loads once; each `train` call wraps it in a new LoRA.

    Args:
        rank, world_size: position in the group.
        config: trainer section of the run config.
        model: the student model (the LoRA's base).
    """

    def __init__(self, rank: int, world_size: int, config: TrainerConfig, model: ModelConfig):
        import torch

        from loopdistill.models import load_causal_lm, load_tokenizer

        self.rank, self.world_size, self.config, self.model_config = rank, world_size, config, model
        self.cuda = config.num_gpus_per_rank > 0 and torch.cuda.is_available()
        self.device = "cuda" if self.cuda else "cpu"
        if not self.cuda:  # ranks on one CPU host share its cores
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // world_size))
        self.tokenizer = load_tokenizer(model.path)
        self.base = load_causal_lm(model.path, dtype=torch.bfloat16 if self.cuda else torch.float32, device=self.device)
        self.peft = None

    def node_address(self) -> tuple[str, int]:
        """(IP of this node, a free TCP port) for the process group's rendezvous."""
        with socket.socket() as sock:
            sock.bind(("", 0))
            port = sock.getsockname()[1]
        return ray.util.get_node_ip_address(), port

    def setup(self, master_addr: str, master_port: int) -> None:
        """Join the process group (gloo on CPU, NCCL on GPU) through deepspeed.init_distributed."""
        import deepspeed

        os.environ.update(
            MASTER_ADDR=master_addr, MASTER_PORT=str(master_port), RANK=str(self.rank),
            WORLD_SIZE=str(self.world_size), LOCAL_RANK="0",
        )
        deepspeed.init_distributed(dist_backend="nccl" if self.cuda else "gloo", auto_mpi_discovery=False)

    # --- one training run ------------------------------------------------------------------------
    def train(self, train_table: pa.Table, val_table: pa.Table, output_dir: str) -> dict:
        """Finetune a fresh LoRA on `train_table` (TRAIN_EXAMPLES), pick the epoch with the lowest
        validation loss on `val_table`, and (rank 0) save that adapter to `output_dir`.

        Returns metrics (units in the names); rank 0 adds "adapter_dir".

        Raises:
            SchemaError: a table lacks a TRAIN_EXAMPLES column.
            ValueError: the training table is empty.
        """
        require_columns(train_table, TRAIN_EXAMPLES, "TrainerRankActor.train(train)")
        require_columns(val_table, TRAIN_EXAMPLES, "TrainerRankActor.train(validation)")
        if train_table.num_rows == 0:
            raise ValueError("TrainerRankActor.train: the training table is empty")
        start = time.perf_counter()
        cfg, mc = self.config, self.model_config
        train = tokenize_examples(train_table, self.tokenizer, mc.use_chat_template, cfg.max_seq_len)
        val = tokenize_examples(val_table, self.tokenizer, mc.use_chat_template, cfg.max_seq_len)
        engine = self._fresh_engine(len(train))
        result = self._fit(engine, train, val)
        if self.rank == 0:
            result["adapter_dir"] = self._save(output_dir, result.pop("best_state"))
        else:
            result.pop("best_state")
        result["trainer/seconds"] = time.perf_counter() - start
        result["trainer/tokens_per_s"] = result["trainer/tokens"] / result["trainer/seconds"]
        engine.destroy()
        return result

    def _fresh_lora(self):
        """Remove the previous iteration's LoRA layers and inject new, identically seeded ones."""
        import torch
        from peft import LoraConfig, get_peft_model

        if self.peft is not None:
            self.base = self.peft.unload()  # drops the LoRA layers without merging them
        cfg = self.config
        torch.manual_seed(cfg.seed)  # every rank and every iteration starts from the same init
        lora = LoraConfig(r=cfg.lora_rank, lora_alpha=cfg.lora_alpha, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM")
        self.peft = get_peft_model(self.base, lora)
        return self.peft

    def _fresh_engine(self, num_examples: int):
        import deepspeed
        import torch
        from transformers import get_linear_schedule_with_warmup

        cfg = self.config
        model = self._fresh_lora()
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=cfg.learning_rate)
        steps_per_epoch = math.ceil(num_examples / (cfg.micro_batch_size * self.world_size * cfg.grad_accum_steps))
        total = max(1, steps_per_epoch * cfg.epochs)
        scheduler = get_linear_schedule_with_warmup(optimizer, int(cfg.warmup_ratio * total), total)
        engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, lr_scheduler=scheduler, config=self._ds_config())
        return engine

    def _ds_config(self) -> dict:
        cfg = self.config
        return {
            "train_micro_batch_size_per_gpu": cfg.micro_batch_size,
            "gradient_accumulation_steps": cfg.grad_accum_steps,
            "train_batch_size": cfg.micro_batch_size * cfg.grad_accum_steps * self.world_size,
            "gradient_clipping": cfg.max_grad_norm,
            "zero_optimization": {"stage": cfg.zero_stage},
            "zero_allow_untested_optimizer": True,  # torch AdamW: DeepSpeed's CPU Adam would need compiling
            "bf16": {"enabled": self.cuda},
            "steps_per_print": 10**9,
            "wall_clock_breakdown": False,
        }

    def _fit(self, engine, train: list[dict], val: list[dict]) -> dict:
        """The epoch loop. Stops early (keeping the last good adapter) on a NaN/inf loss."""
        cfg = self.config
        best = {"loss": math.inf, "epoch": -1, "state": self._lora_state(engine)}
        tokens, steps, nan, epoch_loss = 0, 0, False, math.nan
        for epoch in range(cfg.epochs):
            engine.train()
            losses = []
            for batch in rank_batches(train, self.rank, self.world_size, cfg.micro_batch_size, epoch, cfg.seed):
                batch = {k: v.to(self.device) for k, v in collate(batch, self.tokenizer.pad_token_id).items()}
                loss = engine(**batch).loss
                if not self._all_finite(loss):
                    nan = True
                    break
                engine.backward(loss)
                engine.step()
                losses.append(loss.item())
                tokens += int(batch["attention_mask"].sum())
                steps += 1
            if nan:
                break
            epoch_loss = sum(losses) / max(1, len(losses))
            val_loss = self._val_loss(engine, val)
            if val_loss < best["loss"] or best["epoch"] < 0:
                best = {"loss": val_loss, "epoch": epoch, "state": self._lora_state(engine)}
        return {
            "trainer/train_loss": epoch_loss,
            "trainer/val_loss_best": best["loss"],
            "trainer/best_epoch": best["epoch"],
            "trainer/steps": steps,
            "trainer/tokens": self._all_sum(tokens),
            "trainer/examples": len(train),
            "trainer/nan_loss": nan,
            "best_state": best["state"],
        }

    def _val_loss(self, engine, val: list[dict]) -> float:
        """Token-weighted mean NLL (nats/token) of the validation completions, over all ranks."""
        import torch

        engine.eval()
        nll, count = 0.0, 0
        shard = val[self.rank :: self.world_size]
        with torch.no_grad():
            for i in range(0, len(shard), self.config.micro_batch_size):
                batch = collate(shard[i : i + self.config.micro_batch_size], self.tokenizer.pad_token_id)
                batch = {k: v.to(self.device) for k, v in batch.items()}
                logits = engine(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
                labels = batch["labels"][:, 1:]
                nll += float(torch.nn.functional.cross_entropy(logits[:, :-1].float().transpose(1, 2), labels, reduction="sum"))
                count += int((labels != -100).sum())
        return self._all_sum(nll) / max(1, self._all_sum(count))

    # --- collectives and state -------------------------------------------------------------------
    def _all_sum(self, value: float):
        import torch
        import torch.distributed as dist

        t = torch.tensor([float(value)], device=self.device)
        dist.all_reduce(t)
        return type(value)(t.item())

    def _all_finite(self, loss) -> bool:
        """True when the loss is finite on every rank (all ranks must stop together)."""
        return self._all_sum(0 if bool(loss.isfinite()) else 1) == 0

    def _lora_state(self, engine) -> dict:
        """CPU copy of the trainable (LoRA) parameters, gathered first under ZeRO-3."""
        import deepspeed

        named = [(n, p) for n, p in engine.module.named_parameters() if p.requires_grad]
        with deepspeed.zero.GatheredParameters([p for _, p in named], enabled=self.config.zero_stage == 3):
            return {n: p.detach().float().cpu().clone() for n, p in named}

    def _save(self, output_dir: str, state: dict) -> str:
        os.makedirs(output_dir, exist_ok=True)
        self.peft.save_pretrained(output_dir, state_dict=state)
        return output_dir


class TrainerGroup:
    """W TrainerRankActor ranks in one placement group; rank 0 publishes the rendezvous address.

    Args:
        config: trainer section (num_ranks, resources per rank, ZeRO stage, LoRA and optimiser settings).
        model: the student model to finetune.
    """

    def __init__(self, config: TrainerConfig, model: ModelConfig, timeout_s: float = 600.0):
        self.config = config
        bundle = {"CPU": config.num_cpus_per_rank}
        if config.num_gpus_per_rank > 0:
            bundle["GPU"] = config.num_gpus_per_rank
        self.pg = placement_group([dict(bundle) for _ in range(config.num_ranks)], strategy="PACK")
        ray.get(self.pg.ready(), timeout=timeout_s)
        env = {} if config.num_gpus_per_rank > 0 else {"DS_ACCELERATOR": "cpu"}
        self.ranks = [
            ray.remote(TrainerRankActor)
            .options(
                num_cpus=config.num_cpus_per_rank,
                num_gpus=config.num_gpus_per_rank,
                scheduling_strategy=PlacementGroupSchedulingStrategy(self.pg, placement_group_bundle_index=rank),
                runtime_env={"env_vars": env},
            )
            .remote(rank, config.num_ranks, config, model)
            for rank in range(config.num_ranks)
        ]
        addr, port = ray.get(self.ranks[0].node_address.remote())
        ray.get([r.setup.remote(addr, port) for r in self.ranks])

    def train(self, train_table, val_table, output_dir: str) -> dict:
        """Train on every rank (tables or ObjectRefs of TRAIN_EXAMPLES). Returns rank 0's metrics and
        adapter_dir, plus trainer/accelerator_seconds summed over ranks."""
        results = ray.get([r.train.remote(train_table, val_table, output_dir) for r in self.ranks])
        out = dict(results[0])
        out["trainer/accelerator_seconds"] = sum(r["trainer/seconds"] for r in results)
        return out

    def shutdown(self) -> None:
        for rank in self.ranks:
            ray.kill(rank)
        remove_placement_group(self.pg)
