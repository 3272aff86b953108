"""The one training loop of the project, used by the CLIP bootstrap, pre-training and fine-tuning.

A stage describes its job with a :class:`TrainJob` (steps, learning-rate schedule, clipping, AMP, logging) and
gives :class:`Trainer` its model, optimizer, a ``batches(epoch)`` iterable of batches and a ``forward(batch)``
that returns the losses (``{"loss": total, <term>: value, ...}``); hooks (:class:`Hook`) add what is
specific: epoch checkpoints, clamping a parameter after the step, per-epoch bookkeeping. Pointcept's trainer
has the same shape.

The loop, per step: the learning rate of the step is set (``schedule(global_step)``, e.g. :func:`warmup_cosine`),
the forward runs under ``torch.autocast`` (float16, only on CUDA with ``amp``), the scaled loss is
back-propagated, gradients are clipped to ``grad_clip`` (0: off), the optimizer steps, hooks run, and the fault
point ``<stage>.step`` (:mod:`text4point.faults`) is passed with ``epoch`` (1-based), ``step`` (the global step,
1-based) and the job's tags. The step's losses stay on the device; every ``log_every`` steps and at the end of
each epoch they are copied to the host in one transfer (averaged over the ranks under DDP) and checked (a
non-finite value stops the job with :class:`TrainingDiverged`, one line naming the step and the values).
``Trainer.history`` keeps every step's host values; ``Trainer.epochs`` the per-epoch means. Rank 0 logs them,
per step, to MLflow through :mod:`text4point.tracking`, in one call per ``log_every`` steps (an epoch of one step
does not add a call of its own: one MLflow write costs about as much as a small step), and always before an
epoch's hooks run (what an epoch checkpoint resumes from is in MLflow), at the end, and when the job stops.

Everything an exact resume needs is in :meth:`Trainer.state_dict`: model, optimizer, scaler, epoch, global step
and every RNG state (python, numpy, torch CPU and CUDA, the loader's generator); the learning rate is a
function of the global step, so there is no scheduler state.
"""

from __future__ import annotations

import contextlib
import math
import os
import signal
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler

from . import faults, tracking
from .checkpoints import rng_state, set_rng_state
from .errors import InputError


class TrainingDiverged(InputError):
    """A non-finite loss stopped training (one line: the job, the step and the loss values)."""


class Interrupted(InputError):
    """SIGTERM (what Slurm sends before a preemption or at the time limit) stopped training after a step; the CLI
    exits with 143 (128 + SIGTERM) and a rerun resumes from the newest epoch checkpoint."""

    exit_code = 143


def warmup_cosine(base_lr: float, total_steps: int, warmup_steps: int = 0) -> Callable[[int], float]:
    """Learning rate at a (0-based) global step: linear warm-up over ``warmup_steps`` to ``base_lr``, then a
    cosine decay to 0 at ``total_steps``: ``lr(s) = base·(s+1)/w`` for ``s < w``, else
    ``½·base·(1 + cos(π·(s − w)/(T − w)))``."""
    base, total, warmup = float(base_lr), max(int(total_steps), 1), int(warmup_steps)

    def lr(step: int) -> float:
        if step < warmup:
            return base * (step + 1) / warmup
        return 0.5 * base * (1.0 + math.cos(math.pi * (min(step, total) - warmup) / max(1, total - warmup)))

    return lr


def make_optimizer(params, kind: str, lr: float, weight_decay: float, momentum: float = 0.9,
                   betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8) -> torch.optim.Optimizer:
    """AdamW (``kind`` "adamw") or SGD with momentum (``kind`` "sgd") over ``params`` (tensors or groups)."""
    if kind == "sgd":
        return torch.optim.SGD(params, lr=float(lr), momentum=float(momentum), weight_decay=float(weight_decay))
    if kind != "adamw":
        raise InputError(f"optimizer: expected adamw or sgd, got {kind!r}")
    return torch.optim.AdamW(params, lr=float(lr), weight_decay=float(weight_decay), betas=betas, eps=eps)


# ---------------------------------------------------------------- data parallel


class Dist:
    """The process group under ``torchrun`` (``WORLD_SIZE > 1``: gloo on CPU, NCCL on CUDA), or a single
    process (``world=1``, whatever the environment says). Rank 0 is :attr:`main`: it alone writes files and
    MLflow."""

    def __init__(self, device: torch.device, world: int | None = None):
        self.world = int(os.environ.get("WORLD_SIZE", "1")) if world is None else int(world)
        self.rank, self.local_rank, self.owns_group = 0, 0, False
        self.device = device
        if self.world > 1:
            import torch.distributed as dist

            self.rank = int(os.environ.get("RANK", "0"))
            self.local_rank = int(os.environ.get("LOCAL_RANK", self.rank))
            if device.type == "cuda":
                self.device = torch.device("cuda", self.local_rank)
                torch.cuda.set_device(self.device)
            if not dist.is_initialized():
                dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
                self.owns_group = True

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world > 1:
            import torch.distributed as dist

            if self.device.type == "cuda":
                dist.barrier(device_ids=[self.local_rank])
            else:
                dist.barrier()

    def mean(self, t: torch.Tensor) -> torch.Tensor:
        if self.world > 1:
            import torch.distributed as dist

            t = t.clone()
            dist.all_reduce(t)
            t /= self.world
        return t

    def sync_buffers(self, model: nn.Module) -> None:
        """Average the floating-point buffers (BatchNorm running statistics) over the ranks: each rank updated
        them with its own batches, and DDP only broadcasts rank 0's at the next forward."""
        if self.world > 1:
            import torch.distributed as dist

            for buf in model.buffers():
                if buf.is_floating_point():
                    dist.all_reduce(buf)
                    buf /= self.world

    def gather(self, obj) -> list:
        if self.world <= 1:
            return [obj]
        import torch.distributed as dist

        out = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def close(self) -> None:
        if self.owns_group:
            import torch.distributed as dist

            dist.destroy_process_group()


# ---------------------------------------------------------------- loading


class EpochSampler(DistributedSampler):
    """:class:`~torch.utils.data.DistributedSampler` (seeded shuffle per epoch, one shard per rank, padded so
    every rank gets as many items) that yields ``(epoch, index)`` keys, so an item's randomness can follow the
    epoch even in persistent workers. ``num_replicas=1, rank=0`` is the single-process case."""

    def __iter__(self):
        epoch = int(self.epoch)
        for i in super().__iter__():
            yield (epoch, int(i))


def _worker_init(worker_id: int) -> None:
    # Items draw from their own (seed, epoch, index) generators; seed the global ones anyway, and keep workers
    # to one intra-op thread each (they only slice arrays). A SIGTERM to the whole process group is the main
    # process's to handle (it stops after the step); the workers end with it.
    import random

    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    seed = torch.initial_seed() % 2 ** 32
    random.seed(seed)
    np.random.seed(seed)
    torch.set_num_threads(1)


def make_loader(dataset: torch.utils.data.Dataset, collate_fn, batch_size: int, workers: int, seed: int,
                device: torch.device | str, rank: int = 0, world_size: int = 1, shuffle: bool = True,
                prefetch_factor: int = 4) -> tuple[DataLoader, EpochSampler, torch.Generator]:
    """DataLoader of ``dataset`` (items keyed ``(epoch, index)``) with its :class:`EpochSampler` and seeded
    generator; ``persistent_workers`` when ``workers > 0``, ``pin_memory`` on CUDA."""
    sampler = EpochSampler(dataset, num_replicas=world_size, rank=rank, shuffle=shuffle, seed=seed,
                           drop_last=False)
    generator = torch.Generator()
    generator.manual_seed(int(seed))
    kwargs = {}
    if workers > 0:
        kwargs = {"persistent_workers": True, "prefetch_factor": int(prefetch_factor),
                  "worker_init_fn": _worker_init}
    loader = DataLoader(dataset, batch_size=int(batch_size), sampler=sampler, num_workers=int(workers),
                        collate_fn=collate_fn, pin_memory=torch.device(device).type == "cuda",
                        generator=generator, drop_last=False, **kwargs)
    return loader, sampler, generator


# ---------------------------------------------------------------- the loop


@dataclass
class TrainJob:
    """What one training job is: its name (in messages), its stage (the fault point ``<stage>.step``), its
    length, schedule and the per-step options. ``tags`` are passed to the fault point."""

    name: str
    stage: str
    steps: int
    steps_per_epoch: int
    schedule: Callable[[int], float]
    grad_clip: float = 0.0
    amp: bool = False
    log_every: int = 10
    progress: bool = False
    tags: dict = field(default_factory=dict)

    @property
    def epochs(self) -> int:
        return math.ceil(self.steps / max(self.steps_per_epoch, 1))


class Hook:
    """Stage-specific behaviour around the loop; every method is optional."""

    def after_step(self, trainer: "Trainer") -> None:
        """After the optimizer step (e.g. clamp a parameter)."""

    def after_epoch(self, trainer: "Trainer", row: dict) -> None:
        """After an epoch's losses were flushed; ``row`` holds its mean losses (e.g. write a checkpoint)."""


class Trainer:
    """Runs a :class:`TrainJob` (see the module docstring).

    Args:
        job: the job.
        model: the module whose state is checkpointed (not a DDP wrapper).
        optimizer: its optimizer (:func:`make_optimizer`).
        forward: ``forward(batch) -> {"loss": total, <term>: value}`` (0-dim tensors), e.g. through a DDP wrapper.
        batches: ``batches(epoch) -> iterable of batches`` (on the device).
        device: where the step runs.
        dist: the process group (:class:`Dist`); one process when None.
        hooks: :class:`Hook` s.
        generator: the loader's generator, saved with the RNG states.
    """

    def __init__(self, job: TrainJob, model: nn.Module, optimizer: torch.optim.Optimizer,
                 forward: Callable[[object], dict], batches: Callable[[int], Iterable], device,
                 dist: Dist | None = None, hooks: Iterable[Hook] = (), generator: torch.Generator | None = None):
        self.job, self.model, self.optimizer = job, model, optimizer
        self.forward, self.batches, self.device = forward, batches, torch.device(device)
        self.dist = dist or Dist(self.device, world=1)
        self.hooks = list(hooks)
        self.generator = generator
        self.amp = bool(job.amp) and self.device.type == "cuda"
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp)
        self.epoch, self.global_step = 0, 0
        self.names: tuple[str, ...] | None = None
        self.history: list[dict] = []  # one row per step: {"step", "epoch", "lr", "loss", <terms>}
        self.epochs: list[dict] = []   # one row per epoch: {"epoch", "loss", <terms> (means), "seconds"}
        self._buf: list[tuple[torch.Tensor, float, int]] = []
        self._rows: list[tuple[str, float, int]] = []  # (key, value, step) not yet sent to MLflow
        self._logged_step = 0

    # ------------------------------------------------------------ state

    def state_dict(self) -> dict:
        """Everything an exact resume needs (tensors and plain types)."""
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scaler": self.scaler.state_dict(), "epoch": self.epoch, "global_step": self.global_step,
                "rng": rng_state(self.generator)}

    def load_state_dict(self, state: dict, path) -> None:
        """Continue from :meth:`state_dict` (a one-line ``InputError`` naming ``path`` when it does not fit)."""
        from .checkpoints import load_weights

        load_weights(self.model, state["model"], path)
        try:
            self.optimizer.load_state_dict(state["optimizer"])
            self.scaler.load_state_dict(state["scaler"])
        except (KeyError, RuntimeError, ValueError) as e:
            raise InputError(f"checkpoint {path}: does not fit this model ({str(e).splitlines()[0][:200]})") from None
        self.epoch, self.global_step = int(state["epoch"]), int(state["global_step"])
        set_rng_state(state["rng"], self.generator)

    # ------------------------------------------------------------ the loop

    @staticmethod
    def _on_sigterm(flag: dict):
        def handler(signum, frame):
            flag["signal"] = signum
        return handler

    def fit(self) -> "Trainer":
        """Train to ``job.steps``; a SIGTERM stops it after the current step with :class:`Interrupted`."""
        flag: dict = {"signal": None}
        previous = None
        if threading.current_thread() is threading.main_thread():
            previous = signal.signal(signal.SIGTERM, self._on_sigterm(flag))
        try:
            return self._fit(flag)
        except BaseException:
            with contextlib.suppress(Exception):  # best effort: the store may be the reason
                self._log()
            raise
        finally:
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)

    def _fit(self, flag: dict) -> "Trainer":
        from tqdm import tqdm

        job = self.job
        bar = tqdm(total=job.steps, initial=self.global_step, desc=job.name, unit="step",
                   disable=not (job.progress and self.dist.main), leave=False)
        params = [p for g in self.optimizer.param_groups for p in g["params"]]
        while self.global_step < job.steps:
            epoch = self.epoch
            first = len(self.history)
            t_epoch = time.perf_counter()
            for batch in self.batches(epoch):
                if self.global_step >= job.steps:
                    break
                self._step(batch, params, epoch)
                bar.update(1)
                if flag["signal"] is not None:
                    self._flush(epoch)  # fit() sends the queued rows on the way out
                    bar.close()
                    done = self.global_step - epoch * job.steps_per_epoch
                    raise Interrupted(f"{job.name}: SIGTERM: stopped after step {self.global_step} ({done} of "
                                      f"{job.steps_per_epoch} steps of epoch {epoch + 1}); the epoch is abandoned, "
                                      f"a rerun resumes from the newest epoch checkpoint")
            self._flush(epoch)
            self.dist.sync_buffers(self.model)
            rows = self.history[first:]
            row = {"epoch": epoch + 1, **{k: float(np.mean([r[k] for r in rows])) for k in ("loss",) + self.names},
                   "seconds": time.perf_counter() - t_epoch}
            self.epochs.append(row)
            self.epoch = epoch + 1
            self._rows += [(f"epoch_{k}", v, epoch + 1) for k, v in row.items() if k not in ("epoch", "seconds")]
            self._log(force=bool(self.hooks))
            for h in self.hooks:
                h.after_epoch(self, row)
            bar.set_postfix(epoch=epoch + 1, loss=f"{row['loss']:.3f}")
        bar.close()
        self._log()
        return self

    def _step(self, batch, params: list, epoch: int) -> None:
        job = self.job
        lr = float(job.schedule(self.global_step))
        for g in self.optimizer.param_groups:
            g["lr"] = lr
        with torch.autocast(device_type=self.device.type, dtype=torch.float16, enabled=self.amp):
            losses = self.forward(batch)
        if self.names is None:
            self.names = tuple(k for k in losses if k != "loss")
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(losses["loss"]).backward()
        if float(job.grad_clip) > 0:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(params, float(job.grad_clip))
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.global_step += 1
        for h in self.hooks:
            h.after_step(self)
        faults.point(f"{job.stage}.step", epoch=epoch + 1, step=self.global_step, **job.tags)
        vals = torch.stack([losses["loss"].detach().float()] + [losses[n].detach().float() for n in self.names])
        self._buf.append((vals, lr, self.global_step))
        if len(self._buf) >= job.log_every:
            self._flush(epoch)
            self._log(force=False)

    def _flush(self, epoch: int) -> None:
        """Copy the buffered step losses to the host (one transfer), check them and queue them for MLflow."""
        if not self._buf:
            return
        buf, self._buf = self._buf, []
        vals = self.dist.mean(torch.stack([v for v, _, _ in buf])).cpu()
        names = ("loss",) + self.names
        bad = ~torch.isfinite(vals).all(1)
        if bool(bad.any()):
            j = int(torch.nonzero(bad)[0])
            desc = ", ".join(f"{k}={float(v):.6g}" for k, v in zip(names, vals[j].tolist()))
            raise TrainingDiverged(f"{self.job.name}: non-finite loss at step {buf[j][2]} (epoch {epoch + 1}): "
                                   f"{desc}; stopped")
        rows = []
        for (_, lr, step), row in zip(buf, vals.tolist()):
            self.history.append({"step": step, "epoch": epoch + 1, "lr": lr, **dict(zip(names, row))})
            rows += [(k, v, step) for k, v in zip(names, row)] + [("lr", lr, step)]
        self._rows += rows

    def _log(self, force: bool = True) -> None:
        """Send the queued MLflow rows in one call (rank 0): always when ``force``, else once ``log_every`` steps
        are queued."""
        if not self._rows or (not force and self.global_step - self._logged_step < self.job.log_every):
            return
        rows, self._rows = self._rows, []
        self._logged_step = self.global_step
        if self.dist.main:
            tracking.log_batch(rows)


__all__ = ["Dist", "EpochSampler", "Hook", "Interrupted", "TrainJob", "Trainer", "TrainingDiverged", "make_loader",
           "make_optimizer", "warmup_cosine"]
