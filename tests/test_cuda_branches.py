"""Every CUDA branch of chefgenius, run on this CPU machine against a fake CUDA (tests/fake_cuda.py).

Each test asserts a decision the code takes on a GPU machine: which device each local rank gets,
which backend with which ``device_id``, which determinism flags and guarantee line, what the
snapshot path allocates and waits for, where RNG state goes. The multi-GPU layouts are the ones
users launch (1, 2 and 8 GPUs; 1, 2 and 8 processes on the machine), the impossible ones included.
"""

from __future__ import annotations

import contextlib
from datetime import timedelta
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from chefgenius import cli
from chefgenius.checkpoint import rng as rng_mod
from chefgenius.checkpoint import snapshot, tensorfile
from chefgenius.config import ConfigError
from chefgenius.runtime import devices as runtime
from chefgenius.runtime import distributed, parallel
from chefgenius.training.optim import build_optimization
from tests.conftest import tiny_config
from tests.fake_cuda import install, torchrun_env


class FakeCudaTensor(torch.Tensor):
    """A CPU tensor that says it lives on a GPU: what the snapshot and writer paths branch on."""

    @property
    def device(self) -> torch.device:  # type: ignore[override]
        return torch.device("cuda", 0)


def on_fake_gpu(t: torch.Tensor) -> torch.Tensor:
    return t.as_subclass(FakeCudaTensor)


@pytest.fixture
def single_process(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)


# ----- which device: runtime.resolve_device / rank_device -----------------------------------------------

def test_auto_picks_cuda_only_where_a_gpu_is_visible(monkeypatch):
    install(monkeypatch, 0)
    assert runtime.resolve_device("auto") == torch.device("cpu")
    install(monkeypatch, 2)
    assert runtime.resolve_device("auto") == torch.device("cuda")


def test_cuda_without_a_gpu_and_an_index_past_the_last_gpu_are_refused(monkeypatch):
    install(monkeypatch, 0)
    with pytest.raises(ConfigError, match="no CUDA device is visible"):
        runtime.resolve_device("cuda")
    install(monkeypatch, 2)
    with pytest.raises(ConfigError, match="only 2 CUDA device"):
        runtime.resolve_device("cuda:2")
    assert runtime.resolve_device("cuda:1") == torch.device("cuda", 1)


@pytest.mark.parametrize("num_gpus", [1, 2, 8])
@pytest.mark.parametrize("nproc", [1, 2, 8])
@pytest.mark.parametrize("name", ["cuda", "auto"])
def test_each_local_process_gets_its_own_gpu_or_the_layout_is_refused(monkeypatch, num_gpus, nproc, name):
    install(monkeypatch, num_gpus)
    if nproc > num_gpus:
        with pytest.raises(ConfigError, match=f"{nproc} processes on this machine need {nproc} GPUs, "
                                              f"{num_gpus} CUDA device"):
            runtime.rank_device(name, nproc, 0, nproc)
        return
    devices = [runtime.rank_device(name, nproc, local, nproc) for local in range(nproc)]
    if nproc == 1:
        assert devices == [torch.device("cuda")]  # one process: the current GPU, nothing pinned
    else:
        assert devices == [torch.device("cuda", i) for i in range(nproc)]


def test_several_machines_give_each_local_rank_its_local_gpu(monkeypatch):
    install(monkeypatch, 8)  # 2 nodes x 8 GPUs: global ranks 8..15 on the second machine
    assert [runtime.rank_device("cuda", 16, local, 8) for local in range(8)] == \
        [torch.device("cuda", i) for i in range(8)]


def test_a_pinned_gpu_is_refused_for_several_processes_and_kept_for_one(monkeypatch):
    install(monkeypatch, 2)
    with pytest.raises(ConfigError, match="puts all 2 processes on one GPU; use training.device=cuda"):
        runtime.rank_device("cuda:1", 2, 1, 2)
    assert runtime.rank_device("cuda:1", 1, 0, 1) == torch.device("cuda", 1)
    # One process per machine on several machines may pin its GPU.
    assert runtime.rank_device("cuda:1", 4, 0, 1) == torch.device("cuda", 1)


def test_cpu_training_ignores_the_gpus(monkeypatch):
    install(monkeypatch, 2)
    assert runtime.rank_device("cpu", 8, 5, 8) == torch.device("cpu")


# ----- set-up of one rank: the reported bug, end to end through setup_runtime -----------------------------

@pytest.mark.parametrize("name", ["cuda", "auto"])
@pytest.mark.parametrize("num_gpus,local_rank", [(2, 1), (8, 0), (8, 7)])
def test_a_rank_of_a_multi_gpu_run_joins_nccl_on_its_own_gpu(monkeypatch, name, num_gpus, local_rank):
    fake = install(monkeypatch, num_gpus)
    torchrun_env(monkeypatch, rank=local_rank, world_size=num_gpus, local_rank=local_rank,
                 local_world_size=num_gpus)
    cfg = tiny_config(training={"device": name, "dist_timeout_s": 42})
    device = runtime.setup_runtime(cfg.training, local_rank, num_gpus)
    assert device == torch.device("cuda", local_rank)
    assert fake.set_devices == [device]
    pg = fake.process_group
    assert pg["backend"] == "nccl" and pg["device_id"] == device and pg["timeout"] == timedelta(seconds=42)
    # determinism auto on CUDA: strict, with the cuBLAS workspace deterministic GEMMs need.
    assert fake.deterministic is True
    assert runtime.os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"


def test_a_cpu_rank_on_a_gpu_machine_joins_gloo_and_touches_no_gpu(monkeypatch):
    fake = install(monkeypatch, 2)
    torchrun_env(monkeypatch, rank=1, world_size=2, local_rank=1, local_world_size=2)
    cfg = tiny_config(training={"device": "cpu"})
    assert runtime.setup_runtime(cfg.training, 1, 2) == torch.device("cpu")
    assert fake.set_devices == []
    assert fake.process_group["backend"] == "gloo" and "device_id" not in fake.process_group
    assert fake.deterministic is False and "CUBLAS_WORKSPACE_CONFIG" not in runtime.os.environ


def test_an_impossible_layout_stops_every_rank_before_any_process_group(monkeypatch):
    fake = install(monkeypatch, 2)
    torchrun_env(monkeypatch, rank=3, world_size=4, local_rank=3, local_world_size=4)
    cfg = tiny_config(training={"device": "cuda"})
    with pytest.raises(ConfigError, match="4 processes on this machine need 4 GPUs"):
        runtime.setup_runtime(cfg.training, 3, 4)
    assert fake.process_groups == [] and fake.set_devices == []


def test_after_a_torchrun_restart_the_group_uses_a_store_prefix_per_attempt(monkeypatch):
    fake = install(monkeypatch, 2)
    torchrun_env(monkeypatch, rank=1, world_size=2, local_rank=1, local_world_size=2)
    monkeypatch.setenv("TORCHELASTIC_USE_AGENT_STORE", "True")
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "3")
    stores = []
    monkeypatch.setattr(distributed._dist(), "TCPStore", lambda *a, **k: stores.append((a, k)) or "agent-store")
    monkeypatch.setattr(distributed._dist(), "PrefixStore", lambda prefix, store: (prefix, store))
    distributed.init(torch.device("cuda", 1), 30)
    assert stores == [(("127.0.0.1", 29500, 2), {"is_master": False})]
    pg = fake.process_group
    assert pg["store"] == ("chefgenius/attempt-3", "agent-store") and pg["rank"] == 1 and pg["world_size"] == 2
    assert pg["backend"] == "nccl" and pg["device_id"] == torch.device("cuda", 1)


def test_collectives_go_through_the_current_gpu_under_nccl(monkeypatch):
    fake = install(monkeypatch, 8)
    fake.set_device(5)
    monkeypatch.setattr(distributed, "is_initialized", lambda: True)
    monkeypatch.setattr(distributed._dist(), "get_backend", lambda *a: "nccl")
    assert distributed._comm_device() == torch.device("cuda", 5)
    monkeypatch.setattr(distributed._dist(), "get_backend", lambda *a: "gloo")
    assert distributed._comm_device() == torch.device("cpu")


# ----- determinism and the guarantee line ------------------------------------------------------------------

@pytest.mark.parametrize("determinism,compile_model,strict,says", [
    ("auto", False, True, "bit-identical to an uninterrupted run (cuda, deterministic algorithms)"),
    ("strict", False, True, "bit-identical to an uninterrupted run (cuda, deterministic algorithms)"),
    ("default", False, False, "NOT guaranteed"),
    ("auto", True, True, "torch.compile on CUDA is not verified bit-identical"),
])
def test_the_resume_guarantee_said_on_a_gpu(determinism, compile_model, strict, says):
    tc = tiny_config(training={"determinism": determinism}).training
    cuda = torch.device("cuda", 0)
    assert runtime.is_strict(tc, cuda) is strict
    assert says in runtime.resume_guarantee(tc, compile_model, cuda)
    assert "bit-identical" in runtime.resume_guarantee(tc, compile_model, torch.device("cpu"))
    assert runtime.is_strict(tiny_config(training={"determinism": "auto"}).training, torch.device("cpu")) is False


def test_default_determinism_on_a_gpu_leaves_fast_kernels_on(monkeypatch):
    fake = install(monkeypatch, 1)
    runtime.apply_runtime(tiny_config(training={"determinism": "default"}).training, torch.device("cuda"))
    assert fake.deterministic is False and "CUBLAS_WORKSPACE_CONFIG" not in runtime.os.environ


# ----- mixed precision and the optimizer on a GPU ----------------------------------------------------------

@pytest.mark.filterwarnings("ignore:CUDA is not available")
@pytest.mark.parametrize("precision,dtype", [("bf16", torch.bfloat16), ("fp16", torch.float16)])
def test_autocast_on_a_gpu_casts_to_the_asked_dtype(precision, dtype):
    ctx = runtime.autocast_for(torch.device("cuda", 1), precision)
    assert isinstance(ctx, torch.autocast) and ctx.device == "cuda" and ctx.fast_dtype == dtype
    assert isinstance(runtime.autocast_for(torch.device("cuda", 1), "fp32"), contextlib.nullcontext)
    assert isinstance(runtime.autocast_for(torch.device("cuda", 1), "bf16-pure"), contextlib.nullcontext)


@pytest.mark.filterwarnings("ignore:torch.cuda.amp.GradScaler is enabled")
@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_a_gpu_run_gets_fused_adamw_and_a_cuda_grad_scaler_for_fp16(precision):
    tc = tiny_config(training={"precision": precision}).training
    model = torch.nn.Linear(4, 4)
    optimizer, _, scaler = build_optimization(model, tc, torch.device("cuda", 0), 10)
    assert optimizer.defaults["fused"] is True
    if precision == "fp16":
        assert scaler is not None and scaler._device == "cuda"
    else:
        assert scaler is None


# ----- DDP on GPUs -----------------------------------------------------------------------------------------

class RecordingDDP(torch.nn.Module):
    def __init__(self, module, device_ids=None, **kwargs):
        super().__init__()
        self.module, self.device_ids, self.kwargs, self.hooks = module, device_ids, kwargs, []

    def register_comm_hook(self, state, hook):
        self.hooks.append(hook)


@pytest.mark.parametrize("device,determinism,hook", [
    (torch.device("cuda", 1), "auto", distributed.ordered_sum_hook),
    (torch.device("cuda", 1), "default", distributed.sum_hook),
    (torch.device("cpu"), "default", distributed.ordered_sum_hook),
])
def test_ddp_binds_the_rank_gpu_and_picks_the_reduction(monkeypatch, device, determinism, hook):
    monkeypatch.setattr(torch.nn.parallel, "DistributedDataParallel", RecordingDDP)
    cfg = tiny_config(training={"determinism": determinism})
    p = parallel.parallelize(torch.nn.Linear(2, 2), cfg, device, world_size=2)
    assert p.ddp.device_ids == ([1] if device.type == "cuda" else None)
    assert p.ddp.hooks == [hook] and p.ddp.kwargs == {"forward_sync_buffers": False}


# ----- RNG state of the GPUs in checkpoints ------------------------------------------------------------------

def test_every_gpu_rng_state_is_captured_and_restored(monkeypatch):
    fake = install(monkeypatch, 2)
    state = rng_mod.capture_rng()
    assert [torch.equal(a, b) for a, b in zip(state["cuda"], fake.rng_states)] == [True, True]
    fake.rng_states = [torch.zeros(16, dtype=torch.uint8)] * 2  # training moves on
    rng_mod.restore_rng(state)
    assert len(fake.rng_restored) == 1
    assert all(torch.equal(a, b) for a, b in zip(fake.rng_states, state["cuda"]))


def test_gpu_rng_state_survives_the_checkpoint_files(monkeypatch, tmp_path):
    from chefgenius.checkpoint.format import encode_state, load_state
    from chefgenius.checkpoint.layout import RNG, rank_dir

    fake = install(monkeypatch, 8)
    snapshot.write_rank_pieces(tmp_path, {RNG: encode_state(RNG, rng_mod.capture_rng())}, rank=3)
    loaded = load_state(rank_dir(tmp_path, 3), RNG)
    assert len(loaded["cuda"]) == 8 and all(torch.equal(a, b) for a, b in zip(loaded["cuda"], fake.rng_states))
    fake.rng_states = [torch.zeros(16, dtype=torch.uint8)] * 8
    rng_mod.restore_rng(loaded)
    assert [int(s[0]) for s in fake.rng_states] == list(range(1, 9))  # each GPU its own state back


@pytest.mark.parametrize("num_gpus_then,num_gpus_now", [(2, 1), (2, 0), (1, 8)])
def test_gpu_rng_state_for_other_hardware_is_refused(monkeypatch, num_gpus_then, num_gpus_now):
    install(monkeypatch, num_gpus_then)
    state = rng_mod.capture_rng()
    fake = install(monkeypatch, num_gpus_now)
    with pytest.raises(ValueError, match=f"RNG state for {num_gpus_then} CUDA device\\(s\\), this process sees "
                                         f"{num_gpus_now}; resume on the same hardware"):
        rng_mod.restore_rng(state)
    assert fake.rng_restored == []


def test_a_cpu_checkpoint_restores_on_a_gpu_machine_without_touching_the_gpus(monkeypatch):
    state = rng_mod.capture_rng() if not torch.cuda.is_available() else pytest.skip("needs no real GPU")
    fake = install(monkeypatch, 2)
    rng_mod.restore_rng(state)
    assert state["cuda"] == [] and fake.rng_restored == []


def test_sampling_forks_only_the_gpu_it_runs_on(monkeypatch):
    fake = install(monkeypatch, 2)
    before = [s.clone() for s in fake.rng_states]
    with runtime.forked_rng(torch.device("cuda", 1)):
        fake.rng_states[1] = torch.zeros(16, dtype=torch.uint8)  # sampling draws on GPU 1
        cpu_draw = torch.rand(3)
    assert all(torch.equal(a, b) for a, b in zip(fake.rng_states, before))
    assert torch.equal(torch.rand(3), cpu_draw)  # the CPU generator was restored too: the same draw again
    with runtime.forked_rng(torch.device("cpu")):
        fake.rng_states[1] = torch.zeros(16, dtype=torch.uint8)
    assert torch.equal(fake.rng_states[1], torch.zeros(16, dtype=torch.uint8))  # a CPU fork leaves GPUs alone


# ----- the snapshot of GPU state -----------------------------------------------------------------------------

def test_gpu_tensors_go_to_reused_pinned_buffers_and_the_writer_waits_for_the_copy(monkeypatch):
    fake = install(monkeypatch, 1)
    buffers = snapshot.TensorBuffers()
    src = on_fake_gpu(torch.arange(6, dtype=torch.float32))
    buf = buffers.copy("w", src)
    assert fake.pinned == 1 and buf.device.type == "cpu" and type(buf) is torch.Tensor
    event = buffers.finish()
    assert event is fake.events[0] and event.recorded and not event.synchronized
    assert torch.equal(buf, torch.arange(6, dtype=torch.float32))
    # The next save reuses the pinned buffer; CPU-only state needs no event.
    assert buffers.copy("w", on_fake_gpu(torch.ones(6))) is buf and fake.pinned == 1
    buffers.finish()
    buffers.copy("c", torch.ones(2))
    assert buffers.finish() is None and fake.pinned == 1

    class Piece:
        def state_dict(self):
            return {"exp_avg": on_fake_gpu(torch.full((3,), 2.0))}

    snap = snapshot.take_snapshot(model=None, pieces={"optimizer": Piece()}, meta=None, buffers=buffers)
    assert snap.ready is fake.events[-1] and fake.pinned == 2
    # A host copy, not the GPU tensor:
    assert type(snap.pieces["optimizer"].tensors["optimizer.exp_avg"]) is torch.Tensor
    assert not snap.ready.synchronized


def test_writing_a_snapshot_waits_for_its_gpu_copies_first(monkeypatch, tmp_path):
    fake = install(monkeypatch, 1)
    event = fake.event()
    event.record()
    snap = snapshot.StateSnapshot(pieces={}, rank_pieces={}, model_state=None, ready=event)
    monkeypatch.setattr(snapshot, "write_rank_pieces", lambda *a: None)
    snapshot.write_snapshot(tmp_path, snap, model=None, tokenizer=None)
    assert event.synchronized


def test_a_gpu_model_is_not_written_through_a_foreseen_file_image():
    sources = {"w": on_fake_gpu(torch.ones(2))}
    assert snapshot._weights_file(torch.nn.Linear(1, 1), sources, set()) is None


def test_the_tensor_writer_refuses_gpu_tensors(tmp_path):
    with pytest.raises(ValueError, match="tensor w must be contiguous and on the CPU"):
        tensorfile.write_tensors(tmp_path / "x.safetensors", {"w": on_fake_gpu(torch.ones(2))})


# ----- loading for generation and the launcher's check -------------------------------------------------------

def test_generation_refuses_a_missing_gpu_before_loading_anything(monkeypatch, tmp_path):
    from chefgenius.generation.loading import load_generator

    install(monkeypatch, 0)
    with pytest.raises(ConfigError, match="no CUDA device is visible"):
        load_generator(model=str(tmp_path / "nothing-here"), device="cuda")


def test_data_preparation_spawns_its_workers_once_cuda_is_initialised(monkeypatch):
    from chefgenius.data import prepared

    methods = []

    class Ctx:
        def __init__(self, method):
            methods.append(method)

        def Pool(self, *args):  # noqa: N802 - multiprocessing's name
            return contextlib.nullcontext()

    monkeypatch.setattr(prepared.mp, "get_context", Ctx)
    for initialised in (False, True):
        monkeypatch.setattr(torch.cuda, "is_initialized", lambda v=initialised: v)
        with prepared._pool(2):
            pass
    assert methods == ["fork", "spawn"]


@pytest.fixture
def nvidia_nodes(monkeypatch, tmp_path):
    node = tmp_path / "nvidia0"
    node.touch()
    monkeypatch.setattr(cli, "NVIDIA_DEVICE_NODES", (node,))


@pytest.mark.parametrize("num_gpus,nproc,device,launched", [
    (2, 2, "auto", True), (2, 2, "cuda", True), (8, 8, "auto", True), (1, 1, "cuda", True),
    (2, 3, "auto", False), (2, 3, "cuda", False), (1, 8, "cuda", False), (2, 2, "cuda:1", False),
])
def test_train_nproc_launches_torchrun_only_for_a_layout_that_works(monkeypatch, tmp_path, single_process,
                                                                      nvidia_nodes, num_gpus, nproc, device, launched):
    install(monkeypatch, num_gpus)
    execs = []
    monkeypatch.setattr(cli.os, "execv", lambda exe, argv: execs.append(argv) or (_ for _ in ()).throw(SystemExit(0)))
    run = tmp_path / "run"
    result = CliRunner().invoke(cli.app, ["train", "--nproc", str(nproc), "--device", device, "-o", str(run)])
    if launched:
        assert result.exit_code == 0, result.output
        assert execs and f"--nproc-per-node={nproc}" in execs[0] and "--nproc" not in execs[0]
    else:
        lines = [x for x in result.output.splitlines() if x.strip()]
        assert result.exit_code == 2 and len(lines) == 1 and lines[0].startswith("error: "), result.output
        assert "GPU" in lines[0] and execs == []
    assert not run.exists()


def test_a_cpu_launch_on_a_machine_without_nvidia_nodes_skips_the_gpu_check(monkeypatch, tmp_path, single_process):
    install(monkeypatch, 1)  # even a (fake) visible GPU is not asked about: auto on a machine with no nodes
    monkeypatch.setattr(cli, "NVIDIA_DEVICE_NODES", (tmp_path / "no-nvidia0",))
    calls = []
    monkeypatch.setattr(runtime, "rank_device", lambda *a: calls.append(a))
    cli._check_gpus_for("auto", 8)
    cli._check_gpus_for("cpu", 8)
    assert calls == []
    cli._check_gpus_for("cuda", 8)
    assert calls == [("cuda", 8, 0, 8)]


def test_every_cuda_branch_of_src_is_listed_in_the_coverage_table():
    """docs/cuda-branches.md lists each place src/ branches on CUDA with the test that covers it; a new branch
    without a row fails here."""
    src = Path(__file__).resolve().parents[1] / "src" / "chefgenius"
    table = (src.parents[1] / "docs" / "cuda-branches.md").read_text()
    found = set()
    for path in sorted(src.rglob("*.py")):
        for line in path.read_text().splitlines():
            code = line.split("#")[0]
            if "cuda" in code.lower() and not code.strip().startswith(('"', "'")):
                found.add(path.relative_to(src).as_posix())
    missing = sorted(f for f in found if f"`{f}`" not in table)
    assert not missing, f"CUDA branches in {missing} have no row in docs/cuda-branches.md"
