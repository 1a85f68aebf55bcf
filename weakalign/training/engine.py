"""The resumable, deterministic, optionally distributed training loop shared by both trainings.

Guarantees (tested in ``tests/test_training*.py``):

* **Same seed, same machine -> same weights** (on the CPU). Everything is seeded
  (:func:`seed_everything`), deterministic algorithms are requested, and no sample's content
  depends on a global random generator (see :mod:`weakalign.training.synthetic`). On CUDA the
  request is ``warn_only``: operations without a deterministic CUDA kernel warn and run anyway,
  and the weak loss needs one (``grid_sample`` backward into a sampled tensor), so CUDA weak
  trainings are not bit-reproducible (``docs/gpu.md``, "Determinism on CUDA").
* **Kill at any point, ``--resume`` -> the same final weights as an uninterrupted run.** The
  training-state checkpoint (written atomically every ``checkpoint_every`` steps and at the end
  of every epoch) holds the model, optimiser, LR scheduler, RNG states, the data position
  (epoch + step inside the epoch; each epoch's order is the seeded permutation of
  :class:`ResumableSampler`), the running loss sums, the loss history and the best-so-far
  record. Resuming replays nothing and skips nothing.
* **Distributed.** Under ``torchrun`` (``WORLD_SIZE > 1``) the process group is initialised
  from the environment (NCCL on CUDA, gloo on CPU), the step module is wrapped in
  :class:`~torch.nn.parallel.DistributedDataParallel`, every rank reads its shard of each
  epoch's permutation (a :class:`~torch.utils.data.distributed.DistributedSampler`), losses and
  validation sums are all-reduced, and only rank 0 writes files. ``batch_size`` is the global
  batch; each rank takes ``batch_size / world_size``.
"""

from __future__ import annotations

import math
import os
import random
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader
from torch.utils.data.distributed import DistributedSampler

STATE_VERSION = 1


# ---------------------------------------------------------------------------------------------
# processes, devices, seeds
# ---------------------------------------------------------------------------------------------

@dataclass
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    initialized_here: bool = False

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def all_reduce_sum(self, values: list[float]) -> list[float]:
        """Sum of float lists over ranks (float64; identical result on every rank)."""
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        if self.enabled:
            dist.all_reduce(t)
        return t.tolist()

    def broadcast_object(self, obj):
        if not self.enabled:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def close(self) -> None:
        if self.initialized_here and dist.is_initialized():
            dist.destroy_process_group()


@contextmanager
def distributed_context(cfg, ctx: DistContext | None = None, key: str = "device"):
    """``ctx`` when the caller passes one (and keeps owning it); otherwise a new context from
    ``cfg.device`` / ``cfg.threads`` (:func:`setup_distributed`; ``key`` names the params
    key in errors, e.g. ``train_strong.device``), closed on exit."""
    if ctx is not None:
        yield ctx
        return
    ctx = setup_distributed(cfg.device, int(cfg.threads), key=key)
    try:
        yield ctx
    finally:
        ctx.close()


def setup_distributed(device: str = "auto", threads: int = 0, key: str = "device") -> DistContext:
    """Process group from torchrun's environment (single process when ``WORLD_SIZE`` <= 1).

    The device is :func:`weakalign.devices.resolve_device`'s (``auto`` -> CUDA when available);
    under torchrun a CUDA run puts process ``LOCAL_RANK`` on ``cuda:LOCAL_RANK``, so an explicit
    ``cuda:N`` there is an error."""
    from ..devices import resolve_device

    resolved = resolve_device(device, key)
    want_cuda = resolved.type == "cuda"
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and want_cuda and ":" in str(device):
        from weakalign.cli import UserError

        raise UserError(f"{key}: {device!r} names one GPU, but torchrun started {world} processes; "
                        f"set {key}: auto or cuda (process LOCAL_RANK uses cuda:LOCAL_RANK)")
    ctx = DistContext()
    if world > 1:
        ctx.rank = int(os.environ["RANK"])
        ctx.world_size = world
        ctx.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        ctx.local_world_size = int(os.environ.get("LOCAL_WORLD_SIZE", str(world)))
        if want_cuda:
            torch.cuda.set_device(ctx.local_rank)
        if not dist.is_initialized():
            dist.init_process_group(backend="nccl" if want_cuda else "gloo")
            ctx.initialized_here = True
    if want_cuda:
        ctx.device = torch.device("cuda", ctx.local_rank) if world > 1 else resolved
        if world <= 1:
            torch.cuda.set_device(resolved)
    if threads and int(threads) > 0:
        torch.set_num_threads(int(threads))
    elif ctx.local_world_size > 1 and ctx.device.type == "cpu":
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // ctx.local_world_size))
    return ctx


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch; ask for deterministic algorithms (warn where impossible:
    ``warn_only=True`` lets e.g. CUDA ``grid_sample`` backward run non-deterministically)."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    if "torch._inductor" in sys.modules or not hasattr(torch._C, "_set_deterministic_algorithms"):
        torch.use_deterministic_algorithms(True, warn_only=True)
    else:
        # what torch.use_deterministic_algorithms does, minus importing torch._inductor only to
        # set its (torch.compile) flag: that import costs ~3 s per process, a lot for smoke runs
        torch._C._set_deterministic_algorithms(True, warn_only=True)
    # deterministic mode also fills every new tensor with NaN by default (to expose reads of
    # uninitialised memory), which costs up to 6x in the TPS code; nothing here reads such memory
    torch.utils.deterministic.fill_uninitialized_memory = False
    torch.backends.cudnn.benchmark = False


def rng_state() -> dict:
    """Every RNG state as types ``torch.load(weights_only=True)`` accepts."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    out = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": {"kind": str(kind), "keys": [int(k) for k in keys], "pos": int(pos), "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        out["cuda"] = torch.cuda.get_rng_state_all()
    return out


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    np.random.set_state((n["kind"], np.array(n["keys"], dtype=np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ---------------------------------------------------------------------------------------------
# data order
# ---------------------------------------------------------------------------------------------

class ResumableSampler(DistributedSampler):
    """:class:`DistributedSampler` (seeded permutation per epoch, one shard per rank) that can
    start mid-epoch: :meth:`set_start` skips the first ``n`` samples of this rank's shard."""

    def __init__(self, length: int, num_replicas: int = 1, rank: int = 0, seed: int = 0, shuffle: bool = True):
        super().__init__(range(length), num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed, drop_last=False)
        self.start = 0

    def set_start(self, n: int) -> None:
        self.start = int(n)

    def __iter__(self):
        return iter(list(super().__iter__())[self.start:])

    def __len__(self) -> int:
        return max(0, self.num_samples - self.start)


def shard(n: int, ctx: DistContext) -> range:
    """Contiguous share of ``range(n)`` for this rank (validation)."""
    per = math.ceil(n / ctx.world_size)
    return range(min(n, ctx.rank * per), min(n, (ctx.rank + 1) * per))


# ---------------------------------------------------------------------------------------------
# the loop
# ---------------------------------------------------------------------------------------------

class StopTraining(Exception):
    """Raised by a hook (tests) to simulate a crash."""


class Task:
    """What a training provides to :func:`fit` (see ``strong.py`` / ``weak.py``)."""

    model: nn.Module  # the full model (unwrapped); saved in checkpoints
    step_module: nn.Module  # batch -> scalar loss; wrapped in DDP when distributed
    train_dataset: torch.utils.data.Dataset
    collate_fn: Callable | None = None
    selection_mode: str = "min"  # "min" (a loss), "max" (a score) or "last" (no selection)
    selection_name: str = "val_loss"

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.model.parameters() if p.requires_grad]

    def set_train_mode(self) -> None:
        self.model.train()

    def set_epoch(self, epoch: int) -> None:
        pass

    def validate(self) -> dict:
        """``{"value": float, ...}``; ``value`` is the selection criterion (all ranks equal)."""
        raise NotImplementedError


@dataclass
class FitConfig:
    seed: int
    batch_size: int
    schedule: tuple  # of weakalign.training.params.Phase (a list of {epochs, lr} dicts is accepted: phases())
    weight_decay: float
    num_workers: int
    checkpoint_every: int
    state_path: Path
    fingerprint: str
    meta: dict
    desc: str = "train"
    resume: str = "never"  # never | auto | must
    max_steps: int = 0
    progress: bool = True
    on_step: Callable | None = None  # on_step(state) after every step (tests)


def phases(schedule) -> tuple:
    """``schedule`` as :class:`weakalign.training.params.Phase` objects (a plugin's or a script's
    ``[{epochs, lr[, restart_from_best]}]`` list is checked like a params file's)."""
    from ..config import typed
    from .params import Phase, check_schedule

    if all(isinstance(p, Phase) for p in schedule):
        return tuple(schedule)
    check_schedule("schedule", [p.to_dict() if isinstance(p, Phase) else p for p in schedule])
    return tuple(p if isinstance(p, Phase) else typed(Phase, p, "schedule") for p in schedule)


def _phase_table(schedule) -> list[int]:
    table = []
    for p, ph in enumerate(phases(schedule)):
        table += [p] * int(ph.epochs)
    return table


def _best_path(state_path: Path, epoch: int) -> Path:
    return state_path.with_name(f"{state_path.stem}.best-e{epoch}{state_path.suffix}")


def _remove_stale_best(state_path: Path, keep: str) -> None:
    for p in state_path.parent.glob(f"{state_path.stem}.best-e*{state_path.suffix}"):
        if p.name != keep:
            p.unlink(missing_ok=True)


def _fresh_state(cfg: FitConfig, ctx: DistContext) -> dict:
    return {
        "version": STATE_VERSION,
        "fingerprint": cfg.fingerprint,
        "world_size": ctx.world_size,
        "batch_size": cfg.batch_size,
        # data order: epoch e visits the permutation of DistributedSampler(seed, epoch e); a
        # resumed run skips the first step_in_epoch * batch_size samples of this epoch
        "sampler": {"kind": "DistributedSampler", "seed": cfg.seed, "shuffle": True, "drop_last": False},
        "epoch": 0,
        "step_in_epoch": 0,
        "global_step": 0,
        "phase_started": -1,
        "epoch_loss_sum": 0.0,
        "epoch_loss_count": 0,
        "history": [],
        "steps": {"step": [], "epoch": [], "loss": []},
        "best": {"value": None, "epoch": None, "step": None, "file": None},
        "finished": False,
        "elapsed": 0.0,
    }


def _make_optimizer(params, lr: float, weight_decay: float):
    return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)


def _make_scheduler(optimizer):
    # Constant learning rate inside a phase (the reference's); kept as a scheduler object so
    # its state travels with the checkpoint and a decay can be added without changing the format.
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)


def _load_resume(cfg: FitConfig, ctx: DistContext):
    from weakalign.cli import UserError

    from ..models.checkpoints import safe_load

    path = cfg.state_path
    if cfg.resume == "never":
        return None
    if not path.is_file():
        if cfg.resume == "must":
            raise UserError(f"--resume: no training-state checkpoint at {path} (nothing to resume; run without --resume)")
        return None
    ckpt = safe_load(path, map_location=ctx.device)
    st = ckpt.get("training_state") or {}
    problems = []
    if st.get("version") != STATE_VERSION:
        problems.append(f"state version {st.get('version')} != {STATE_VERSION}")
    if st.get("fingerprint") != cfg.fingerprint:
        problems.append("the parameters changed since it was written")
    if st.get("world_size") != ctx.world_size:
        problems.append(f"it was written by {st.get('world_size')} process(es), this run has {ctx.world_size}")
    if problems:
        msg = f"{path} cannot be resumed: {'; '.join(problems)}"
        if cfg.resume == "must":
            raise UserError(msg + " (delete it or run without --resume)")
        if ctx.main:
            print(f"{cfg.desc}: {msg}; starting from scratch", file=sys.stderr)
        return None
    return ckpt


def progress_bar(iterable=None, **kw):
    """tqdm with rate and time left; on a terminal it refreshes twice a second, in a log
    (``dvc repro``, CI) every 30 s so the log stays readable."""
    from tqdm import tqdm  # plain text bars: tqdm.auto warns in notebooks without ipywidgets

    kw.setdefault("dynamic_ncols", True)
    kw.setdefault("mininterval", 0.5 if sys.stderr.isatty() else 30.0)
    return tqdm(iterable, **kw)


def fit(task: Task, cfg: FitConfig, ctx: DistContext) -> dict:
    """Train ``task`` under ``cfg``; returns the final training state. After the call the model
    holds the **selected** (best) weights. Raises :class:`Paused` when ``max_steps`` is hit."""
    from ..models.checkpoints import safe_load, save_checkpoint

    model = task.model
    schedule = phases(cfg.schedule)
    phase_of = _phase_table(schedule)
    total_epochs = len(phase_of)
    if cfg.batch_size % ctx.world_size:
        from weakalign.cli import UserError

        raise UserError(f"batch_size {cfg.batch_size} is not divisible by the {ctx.world_size} processes")
    local_batch = cfg.batch_size // ctx.world_size
    n_train = len(task.train_dataset)
    if n_train == 0:
        from weakalign.cli import UserError

        raise UserError("the training set is empty")
    sampler = ResumableSampler(n_train, ctx.world_size, ctx.rank, seed=cfg.seed, shuffle=True)
    steps_per_epoch = math.ceil(sampler.num_samples / local_batch)

    step_module = task.step_module
    if ctx.enabled:
        from torch.nn.parallel import DistributedDataParallel

        dev_ids = [ctx.device.index] if ctx.device.type == "cuda" else None
        step_module = DistributedDataParallel(step_module, device_ids=dev_ids)

    ckpt = _load_resume(cfg, ctx)
    if ckpt is not None:
        state = ckpt["training_state"]
        model.load_state_dict(ckpt["state_dict"])
        set_rng_state(ckpt["rng"])
    else:
        state = _fresh_state(cfg, ctx)

    best_sd = None
    if state["best"].get("file"):
        best_sd = safe_load(cfg.state_path.with_name(state["best"]["file"]), map_location=ctx.device)["state_dict"]

    def start_phase(p: int):
        nonlocal optimizer, scheduler
        ph = schedule[p]
        if ph.restart_from_best and best_sd is not None:
            model.load_state_dict(best_sd)
        optimizer = _make_optimizer(task.trainable_parameters(), float(ph.lr), float(cfg.weight_decay))
        scheduler = _make_scheduler(optimizer)
        state["phase_started"] = p

    optimizer = scheduler = None
    if state["epoch"] < total_epochs:
        p = phase_of[state["epoch"]]
        if ckpt is not None and state["phase_started"] == p:
            optimizer = _make_optimizer(task.trainable_parameters(), float(schedule[p].lr), float(cfg.weight_decay))
            scheduler = _make_scheduler(optimizer)
            optimizer.load_state_dict(ckpt["optimizer"])
            scheduler.load_state_dict(ckpt["scheduler"])
    ckpt = None

    def save_state():
        if ctx.main:
            extra = {"optimizer": optimizer.state_dict() if optimizer else {}, "scheduler": scheduler.state_dict() if scheduler else {}}
            save_checkpoint(cfg.state_path, model, meta=cfg.meta, training_state=state, rng=rng_state(), **extra)

    total_steps = total_epochs * steps_per_epoch
    bar = progress_bar(total=total_steps, initial=min(state["global_step"], total_steps), desc=cfg.desc, unit="step",
                       disable=not (cfg.progress and ctx.main), smoothing=0.05)
    t_start = time.perf_counter()
    elapsed0 = state["elapsed"]
    loader_gen = torch.Generator()
    try:
        while state["epoch"] < total_epochs:
            e = state["epoch"]
            p = phase_of[e]
            if state["phase_started"] != p:
                start_phase(p)
            task.set_epoch(e)
            sampler.set_epoch(e)
            sampler.set_start(min(state["step_in_epoch"] * local_batch, sampler.num_samples))
            loader_gen.manual_seed(cfg.seed + e)
            loader = DataLoader(task.train_dataset, batch_size=local_batch, sampler=sampler, num_workers=cfg.num_workers,
                                collate_fn=task.collate_fn, generator=loader_gen, drop_last=False,
                                pin_memory=ctx.device.type == "cuda")
            task.set_train_mode()
            for batch in loader:
                optimizer.zero_grad(set_to_none=True)
                loss = step_module(batch)
                loss.backward()
                optimizer.step()
                scheduler.step()
                lval = ctx.all_reduce_sum([float(loss.detach())])[0] / ctx.world_size
                if not math.isfinite(lval):
                    raise FloatingPointError(f"{cfg.desc}: loss is {lval} at step {state['global_step'] + 1}")
                state["step_in_epoch"] += 1
                state["global_step"] += 1
                state["epoch_loss_sum"] += lval
                state["epoch_loss_count"] += 1
                state["steps"]["step"].append(state["global_step"])
                state["steps"]["epoch"].append(e + 1)
                state["steps"]["loss"].append(lval)
                state["elapsed"] = elapsed0 + time.perf_counter() - t_start
                bar.update(1)
                bar.set_postfix(epoch=f"{e + 1}/{total_epochs}", loss=f"{lval:.4g}", refresh=False)
                last_of_epoch = state["step_in_epoch"] >= steps_per_epoch
                if cfg.checkpoint_every and state["global_step"] % int(cfg.checkpoint_every) == 0 and not last_of_epoch:
                    save_state()
                if cfg.on_step is not None:
                    cfg.on_step(state)
                if cfg.max_steps and state["global_step"] >= cfg.max_steps and not last_of_epoch:
                    save_state()
                    raise Paused(state["global_step"])
            # end of epoch: validation, selection, checkpoint
            if ctx.enabled:
                # BN running statistics are per rank after the last step; DDP would broadcast
                # rank 0's at the next forward: do it now so validation and the saved model agree
                for b in model.buffers():
                    dist.broadcast(b, src=0)
            model.eval()
            val = task.validate()
            value = float(val["value"])
            best = state["best"]
            if best["value"] is None or task.selection_mode == "last":
                improved = True
            else:
                improved = value < best["value"] if task.selection_mode == "min" else value > best["value"]
            if improved:
                # the best weights go to a file named after the epoch, written before the state
                # that refers to it: a kill between the two writes never mixes up two epochs
                best.update(value=value, epoch=e + 1, step=state["global_step"], file=_best_path(cfg.state_path, e + 1).name)
                best_sd = {k: v.detach().clone() for k, v in model.state_dict().items()}
                if ctx.main:
                    save_checkpoint(cfg.state_path.with_name(best["file"]), model, meta=cfg.meta)
            train_loss = state["epoch_loss_sum"] / max(1, state["epoch_loss_count"])
            state["history"].append({
                "epoch": e + 1, "step": state["global_step"], "phase": p, "lr": float(schedule[p].lr),
                "train_seconds": round(elapsed0 + time.perf_counter() - t_start, 2),
                "train_loss": train_loss, task.selection_name: value,
                **{k: float(v) for k, v in val.items() if k != "value"},
            })
            state["epoch"] += 1
            state["step_in_epoch"] = 0
            state["epoch_loss_sum"], state["epoch_loss_count"] = 0.0, 0
            state["elapsed"] = elapsed0 + time.perf_counter() - t_start
            save_state()
            if improved and ctx.main:
                _remove_stale_best(cfg.state_path, keep=best["file"])
            if ctx.main and cfg.progress:
                bar.write(f"{cfg.desc}: epoch {e + 1}/{total_epochs} train loss {train_loss:.5g}, {task.selection_name} {value:.5g}"
                          + (" (best)" if improved else ""))
            if cfg.max_steps and state["global_step"] >= cfg.max_steps and state["epoch"] < total_epochs:
                raise Paused(state["global_step"])
        if not state["finished"]:
            state["finished"] = True
            save_state()
    finally:
        bar.close()
    if best_sd is not None:
        model.load_state_dict(best_sd)
    model.eval()
    if ctx.enabled:  # DDP keeps replicas identical; check it, a silent divergence would be worse
        from .sources import module_fingerprint

        prints = [None] * ctx.world_size
        dist.all_gather_object(prints, module_fingerprint(model))
        if len(set(prints)) != 1:
            raise RuntimeError(f"{cfg.desc}: model replicas differ across ranks after training: {prints}")
    return state


class Paused(Exception):
    """``max_steps`` reached: the training state is saved; continue with ``--resume``."""

    def __init__(self, step: int):
        super().__init__(f"stopped after step {step} (--max-steps); continue with --resume")
        self.step = step


# ---------------------------------------------------------------------------------------------
# outputs
# ---------------------------------------------------------------------------------------------

def write_curves(state: dict, selection_name: str, epoch_csv: str | Path | None, steps_csv: str | Path | None,
                 minutes_offset: float = 0.0) -> None:
    """Loss curves for ``dvc plots``: per epoch (epoch, step, lr, train_loss, <selection>, ...,
    ``minutes``: wall-clock minutes since the stage started, i.e. ``minutes_offset`` (time spent
    before the first step, e.g. caching features) plus the training time at the epoch's end)
    and per step (step, epoch, train_loss)."""
    from ..atomic import write_csv

    if epoch_csv:
        hist = state["history"]
        cols = ["epoch", "step", "lr", "train_loss", selection_name]
        extra = sorted({k for h in hist for k in h} - set(cols) - {"phase", "train_seconds"})
        rows = [[h.get(c, "") for c in cols + extra] for h in hist]
        if all("train_seconds" in h for h in hist):
            cols, rows = cols + extra + ["minutes"], [r + [round(minutes_offset + h["train_seconds"] / 60.0, 3)] for r, h in zip(rows, hist)]
        else:
            cols = cols + extra
        write_csv(epoch_csv, cols, rows)
    if steps_csv:
        s = state["steps"]
        write_csv(steps_csv, ["step", "epoch", "train_loss"], list(zip(s["step"], s["epoch"], s["loss"])))


def format_duration(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"


def resolve_path(path: str | Path, **fmt) -> Path:
    from ..data.paths import project_root

    p = Path(str(path).format(**fmt))
    return p if p.is_absolute() else project_root() / p
