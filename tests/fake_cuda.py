"""A fake CUDA for a machine without one: ``torch.cuda`` shows N GPUs, and what the code asks of them is
recorded, so that every CUDA branch of chefgenius runs in CI and its decisions can be asserted.

It fakes only the surface chefgenius touches: availability and device count, ``set_device`` /
``current_device``, per-device RNG state (``get_rng_state_all`` and friends, ``fork_rng``), pinned host
memory (``torch.empty(pin_memory=True)``), ``torch.cuda.Event``, and ``init_process_group`` (its
arguments are recorded, nothing connects). Tensors stay on the CPU: a test asserts the decision
(which device, which backend, which flags), not a kernel.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist


class FakeEvent:
    """``torch.cuda.Event``: records that it was recorded and waited for."""

    def __init__(self, fake: FakeCuda) -> None:
        self.fake, self.recorded, self.synchronized = fake, False, False
        fake.events.append(self)

    def record(self, stream: Any = None) -> None:
        self.recorded = True

    def synchronize(self) -> None:
        assert self.recorded, "waited for an event that was never recorded"
        self.synchronized = True


@dataclass
class FakeCuda:
    """What the code asked of the fake GPUs."""

    num_gpus: int
    current: int = 0
    set_devices: list[torch.device] = field(default_factory=list)
    rng_states: list[torch.Tensor] = field(default_factory=list)
    rng_restored: list[list[torch.Tensor]] = field(default_factory=list)
    pinned: int = 0  # buffers allocated with pin_memory=True
    events: list[FakeEvent] = field(default_factory=list)
    process_groups: list[dict[str, Any]] = field(default_factory=list)
    deterministic: bool = False  # what torch.use_deterministic_algorithms was last given

    def __post_init__(self) -> None:
        # A distinct state per device, so that a restore onto the wrong device shows.
        self.rng_states = [torch.full((16,), i + 1, dtype=torch.uint8) for i in range(self.num_gpus)]

    def index_of(self, device: Any) -> int:
        if device is None:
            return self.current
        if isinstance(device, int):
            return device
        dev = torch.device(device)
        return self.current if dev.index is None else dev.index

    # ----- torch.cuda -----
    def device_count(self) -> int:
        return self.num_gpus

    def set_device(self, device: Any) -> None:
        index = self.index_of(device)
        if not 0 <= index < self.num_gpus:
            raise RuntimeError(f"CUDA error: invalid device ordinal {index} (fake: {self.num_gpus} GPUs)")
        self.current = index
        self.set_devices.append(torch.device("cuda", index))

    def current_device(self) -> int:
        return self.current

    def get_rng_state(self, device: Any = "cuda") -> torch.Tensor:
        return self.rng_states[self.index_of(device)].clone()

    def set_rng_state(self, state: torch.Tensor, device: Any = "cuda") -> None:
        self.rng_states[self.index_of(device)] = state.clone()

    def get_rng_state_all(self) -> list[torch.Tensor]:
        return [s.clone() for s in self.rng_states]

    def set_rng_state_all(self, states: list[torch.Tensor]) -> None:
        assert len(states) == self.num_gpus
        self.rng_restored.append([s.clone() for s in states])
        self.rng_states = [s.clone() for s in states]

    def event(self, *args: Any, **kwargs: Any) -> FakeEvent:
        return FakeEvent(self)

    # ----- torch.distributed -----
    def init_process_group(self, backend: str | None = None, **kwargs: Any) -> None:
        self.process_groups.append({"backend": backend, **kwargs})

    @property
    def process_group(self) -> dict[str, Any]:
        assert len(self.process_groups) == 1, f"{len(self.process_groups)} process groups started"
        return self.process_groups[0]


def install(monkeypatch: Any, num_gpus: int) -> FakeCuda:
    """Fake ``num_gpus`` GPUs for the rest of the test (``monkeypatch`` undoes everything after it)."""
    fake = FakeCuda(num_gpus)
    cuda = torch.cuda
    monkeypatch.setattr(cuda, "is_available", lambda: num_gpus > 0)
    monkeypatch.setattr(cuda, "device_count", fake.device_count)
    monkeypatch.setattr(cuda, "set_device", fake.set_device)
    monkeypatch.setattr(cuda, "current_device", fake.current_device)
    monkeypatch.setattr(cuda, "get_rng_state", fake.get_rng_state)
    monkeypatch.setattr(cuda, "set_rng_state", fake.set_rng_state)
    monkeypatch.setattr(cuda, "get_rng_state_all", fake.get_rng_state_all)
    monkeypatch.setattr(cuda, "set_rng_state_all", fake.set_rng_state_all)
    monkeypatch.setattr(cuda, "Event", fake.event)
    # torch.manual_seed seeds every GPU too (queued until CUDA initialises, which it never does here).
    monkeypatch.setattr(cuda, "manual_seed_all", lambda seed: None)
    real_empty = torch.empty

    def empty(*args: Any, pin_memory: bool = False, **kwargs: Any) -> torch.Tensor:
        if pin_memory:
            fake.pinned += 1
        return real_empty(*args, **kwargs)

    monkeypatch.setattr(torch, "empty", empty)
    monkeypatch.setattr(dist, "init_process_group", fake.init_process_group)
    # What torchrun would set for a launcher that is not ours: no agent store, no parent-death wiring.
    for name in ("TORCHELASTIC_USE_AGENT_STORE", "TORCHELASTIC_RUN_ID", "CUBLAS_WORKSPACE_CONFIG"):
        monkeypatch.delenv(name, raising=False)
    # Recorded, not applied: a flag flipped for one test would leak into every later test of the worker.
    fake.deterministic = torch.are_deterministic_algorithms_enabled()
    monkeypatch.setattr(torch, "use_deterministic_algorithms",
                        lambda mode, *, warn_only=False: setattr(fake, "deterministic", mode))
    return fake


def torchrun_env(monkeypatch: Any, *, rank: int, world_size: int, local_rank: int, local_world_size: int) -> None:
    """The environment torchrun gives one worker."""
    for name, value in (("RANK", rank), ("WORLD_SIZE", world_size), ("LOCAL_RANK", local_rank),
                        ("LOCAL_WORLD_SIZE", local_world_size), ("MASTER_ADDR", "127.0.0.1"),
                        ("MASTER_PORT", "29500")):
        monkeypatch.setenv(name, str(value))
