"""torch.distributed for the trainer: process group from the torchrun environment, the few collectives
the trainer needs, gradient reduction hooks, and rank-0 printing.

Everything here is a no-op in a single process, so the trainer reads the same either way.
Messages between ranks are JSON (never pickle: ``broadcast_object_list`` would unpickle).
"""

from __future__ import annotations

import json
import os
import signal
import sys
from datetime import timedelta
from typing import Any

import torch

from chefgenius.config import ConfigError


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def local_world_size() -> int:
    return int(os.environ.get("LOCAL_WORLD_SIZE", "1"))


def is_main() -> bool:
    return rank() == 0


def print0(*args: object, file=None) -> None:
    """Print on rank 0 only, so that N processes do not repeat every line."""
    if is_main():
        print(*args, file=file or sys.stdout, flush=True)


def _dist():
    import torch.distributed as dist

    return dist


def is_initialized() -> bool:
    return world_size() > 1 and _dist().is_available() and _dist().is_initialized()


LAUNCHER_PID_ENV = "CHEFGENIUS_LAUNCHER_PID"  # set by `train --nproc` before it becomes torchrun


def die_with_launcher() -> None:
    """Under torchrun, have the kernel SIGKILL this worker when its launcher dies, by any signal.

    torchrun starts each worker in a session of its own, so a launcher killed with its process group
    (``kill -9 -PGID``, an OOM kill, a closed terminal) would otherwise leave the workers training
    as orphans, still writing checkpoints into a run the next command cannot take. Dying at once
    leaves nothing half-done: a checkpoint commits atomically or not at all.
    """
    if "TORCHELASTIC_RUN_ID" not in os.environ or not sys.platform.startswith("linux"):
        return
    import ctypes

    pr_set_pdeathsig = 1
    if ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, int(signal.SIGKILL), 0, 0, 0) != 0:
        print(f"warning: rank {rank()}: cannot ask to die with the launcher (prctl errno "
              f"{ctypes.get_errno()}); kill the workers too if you kill the launcher", file=sys.stderr, flush=True)
        return
    launcher = os.environ.get(LAUNCHER_PID_ENV)
    parent = os.getppid()
    if parent == 1 or (launcher is not None and parent != int(launcher)):
        # The launcher died before the request above took effect: nobody would stop this process.
        print(f"error: rank {rank()}: the launcher is gone; stopping", file=sys.stderr, flush=True)
        os._exit(1)


def check_local_devices(device: torch.device, local: int) -> None:
    """Refuse, in one line, ``local`` processes on this machine on the configured ``device`` where they
    cannot each have a GPU of their own (NCCL fails or hangs instead): a pinned ``cuda:K`` for several
    processes, or more processes than visible GPUs. ``device`` is what the user asked for, before
    :func:`runtime.rank_device` gives each process ``cuda:LOCAL_RANK``; ``train --nproc`` asks before
    launching anything, every rank again at start.
    """
    if device.type != "cuda":
        return

    visible = torch.cuda.device_count()
    if local > 1 and device.index is not None:
        raise ConfigError(f"training.device={device} puts all {local} processes on one GPU; use "
                          "training.device=cuda (each process takes cuda:LOCAL_RANK) or training.device=cpu")
    if local > visible:
        raise ConfigError(f"{local} processes on this machine need {local} GPUs, {visible} CUDA device(s) visible; "
                          f"use at most {visible} processes per machine, or training.device=cpu")


def init(device: torch.device, timeout_s: float = 300.0) -> None:
    """Join the process group torchrun describes (gloo on CPU, NCCL on CUDA bound to this rank's
    ``device``, from :func:`runtime.rank_device`); idempotent.

    ``timeout_s`` bounds every collective: a rank whose peer died mid-run fails after it instead of
    waiting (torch's default is 30 minutes), and torchrun then ends the job.
    """
    if world_size() <= 1 or is_initialized():
        return
    die_with_launcher()
    dist = _dist()
    backend = "nccl" if device.type == "cuda" else "gloo"
    kwargs: dict[str, Any] = {"device_id": device} if device.type == "cuda" else {}
    kwargs["timeout"] = timedelta(seconds=timeout_s)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True":
        # torchrun keeps one store for the whole job: after a restart, the previous attempt's addresses
        # are still in it and the new processes try to connect to dead peers (seen with torch 2.13:
        # "connectFullMesh failed ... Connection refused"). A prefix per attempt keeps them apart.
        store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), world_size(),
                              is_master=False)
        attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
        dist.init_process_group(backend, store=dist.PrefixStore(f"chefgenius/attempt-{attempt}", store),
                                rank=rank(), world_size=world_size(), **kwargs)
    else:
        dist.init_process_group(backend, **kwargs)


def shutdown() -> None:
    """Leave the process group together: gloo's destructor waits for its peers, so nobody leaves early."""
    if is_initialized():
        import gc

        gc.collect()  # DDP's reducer holds the group; drop it while every peer is still here
        _dist().barrier()
        _dist().destroy_process_group()


def barrier() -> None:
    if is_initialized():
        _dist().barrier()


def _comm_device() -> torch.device:
    if is_initialized() and _dist().get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_gather_sum(values: list[float]) -> list[float]:
    """Element-wise sum over ranks, added in rank order so the result never depends on the reduction tree."""
    if not is_initialized():
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=_comm_device())
    parts = [torch.empty_like(t) for _ in range(world_size())]
    _dist().all_gather(parts, t)
    total = parts[0].clone()
    for p in parts[1:]:
        total += p
    return total.tolist()


def all_sum_int(value: int) -> int:
    if not is_initialized():
        return value
    t = torch.tensor([value], dtype=torch.int64, device=_comm_device())
    _dist().all_reduce(t)
    return int(t.item())


def all_true(flag: bool) -> bool:
    """Whether ``flag`` holds on every rank (a failed write anywhere fails the checkpoint everywhere)."""
    if not is_initialized():
        return flag
    t = torch.tensor([0 if flag else 1], dtype=torch.int64, device=_comm_device())
    _dist().all_reduce(t)
    return int(t.item()) == 0


def broadcast_json(obj: Any = None) -> Any:
    """Rank 0's ``obj`` on every rank, sent as JSON bytes."""
    if not is_initialized():
        return obj
    dist, dev = _dist(), _comm_device()
    data = json.dumps(obj).encode() if rank() == 0 else b""
    size = torch.tensor([len(data)], dtype=torch.int64, device=dev)
    dist.broadcast(size, 0)
    buf = (torch.frombuffer(bytearray(data), dtype=torch.uint8).to(dev) if rank() == 0 else
           torch.empty(int(size.item()), dtype=torch.uint8, device=dev))
    dist.broadcast(buf, 0)
    return json.loads(bytes(buf.cpu().tolist()).decode())


def all_gather_json(obj: Any) -> list[Any]:
    """Every rank's ``obj``, in rank order, on every rank (JSON bytes padded to the longest)."""
    if not is_initialized():
        return [obj]
    dist, dev = _dist(), _comm_device()
    data = json.dumps(obj).encode()
    sizes = [torch.zeros(1, dtype=torch.int64, device=dev) for _ in range(world_size())]
    dist.all_gather(sizes, torch.tensor([len(data)], dtype=torch.int64, device=dev))
    width = max(int(x.item()) for x in sizes)
    mine = torch.zeros(width, dtype=torch.uint8, device=dev)
    mine[:len(data)] = torch.frombuffer(bytearray(data), dtype=torch.uint8) if data else mine[:0]
    parts = [torch.empty(width, dtype=torch.uint8, device=dev) for _ in range(world_size())]
    dist.all_gather(parts, mine)
    return [json.loads(bytes(part[:int(n.item())].cpu().tolist()).decode()) for part, n in zip(parts, sizes)]


# ----- gradient reduction hooks for DistributedDataParallel -----------------------------------------
# The trainer divides each step's loss by the global token count, so gradients are *summed* over
# ranks (DDP's built-in hook would average them).


# (No annotations on the hooks: DDP checks them at run time and string annotations fail that check.)
def sum_hook(state, bucket):  # noqa: ANN001, ANN201
    """All-reduce sum: fastest; the summation tree may change with DDP's bucket layout."""
    fut = _dist().all_reduce(bucket.buffer(), async_op=True).get_future()
    return fut.then(lambda f: f.value()[0])


def ordered_sum_hook(state, bucket):  # noqa: ANN001, ANN201
    """Gather every rank's gradients and add them in rank order: the same bits whatever the bucket layout.

    DDP rebuilds its buckets after the first iteration, so with 3 or more ranks a tree reduction
    after a restart (first iteration, initial buckets) can round differently from the uninterrupted
    run (rebuilt buckets). Summing ``g0 + g1 + g2 ...`` element by element cannot.

    With two ranks every element is one addition, and ``g0 + g1 == g1 + g0`` exactly: any all-reduce
    gives the same bits, so the faster one is used (8% more tokens/s on 2 CPU processes, README).
    """
    if world_size() == 2:
        return sum_hook(state, bucket)
    buf = bucket.buffer()
    parts = [torch.empty_like(buf) for _ in range(world_size())]
    fut = _dist().all_gather(parts, buf, async_op=True).get_future()

    def add_in_rank_order(f: torch.futures.Future) -> torch.Tensor:
        gathered = f.value()
        gathered = gathered[0] if isinstance(gathered[0], list) else gathered
        out = gathered[0].clone()
        for g in gathered[1:]:
            out += g
        return out

    return fut.then(add_in_rank_order)
