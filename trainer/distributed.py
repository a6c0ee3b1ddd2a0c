"""Process-group setup for torchrun, and the few collectives the loop needs.

Under `torchrun --nproc_per_node N -m trainer.run ...` the environment carries RANK,
LOCAL_RANK and WORLD_SIZE; a plain `python -m trainer.run` is world size 1 and never
touches torch.distributed. NCCL is used with CUDA, gloo on CPU (tests run 2 CPU ranks);
`--dist-backend gloo` with CUDA (DDP only) is for a machine without NCCL, and lets the CUDA
tests run two ranks on one GPU, which NCCL refuses (every collective goes through host memory).
"""

from __future__ import annotations

import os
import re
import sys
import time
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistEnv:
    rank: int
    local_rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


class DeviceUnavailable(RuntimeError):
    """The device asked for is not on this machine (what `trainer.run` reports in one line;
    errors of torch.distributed itself, such as a failed rendezvous, keep their traceback).
    `said_by`: the local rank that says it under torchrun, where the node's ranks find it alike
    (the first rank that finds it: ranks below it may have a device of their own)."""

    def __init__(self, message: str, said_by: int = 0):
        super().__init__(message)
        self.said_by = said_by


def pick_device(requested: str | None, local_rank: int = 0) -> torch.device:
    if requested in (None, "auto"):
        requested = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(requested)
    except RuntimeError as exc:  # torch's own words for a string that names no device
        raise DeviceUnavailable(f"--device {requested!r}: {exc}") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceUnavailable("--device cuda was requested but CUDA is not available")
        if device.index is None:
            count = torch.cuda.device_count()
            if local_rank >= count:
                raise DeviceUnavailable(f"local rank {local_rank} has no CUDA device of its own: this machine "
                                        f"has {count}; start at most {count} rank(s) per node (torchrun "
                                        "--nproc_per_node), or name one device for all (--device cuda:0)",
                                        said_by=count)
            device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    return device


def launched_world_size() -> int:
    """The number of ranks torchrun started (1 for a plain `python -m ...`)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


# How long a rank other than its node's first waits for torchrun to stop it (`one_process_refusal`).
ONE_PROCESS_WAIT_S = 30.0


def one_process_refusal(prog: str, module: str) -> int | None:
    """Exit status 2, after one line, where a one-process command (trainer.eval, export_hf, soup) was
    started under torchrun; None otherwise. Each of the N ranks ran the whole command: N copies of the
    model on the first GPU (each picks cuda:0), N writes of one output, every line N times (found by a
    tester). The node's first rank says it; the others wait for torchrun to stop them once it has exited
    (the first rank to exit is torchrun's root cause), and say it themselves if it has not. torchrun's
    own variable, not WORLD_SIZE alone: a job's environment may hold that for a later plain `python -m`."""
    world_size = launched_world_size()
    if world_size == 1 or "TORCHELASTIC_RUN_ID" not in os.environ:
        return None
    if int(os.environ.get("LOCAL_RANK", "0")) != 0:
        time.sleep(ONE_PROCESS_WAIT_S)
    sys.stderr.write(f"{prog}: error: it runs in one process and does not share its work between ranks, and "
                     f"torchrun started {world_size}: run it as python -m {module}\n")
    sys.stderr.flush()
    return 2


BACKENDS = ("auto", "nccl", "gloo")


def process_group_backend(requested: str | None, device: torch.device, fsdp: bool = False) -> str:
    """auto: NCCL with CUDA, gloo on CPU. NCCL cannot hold CPU tensors, so it is refused there.

    FSDP over gloo on CUDA is refused too: its training steps run, but the checkpoint's full
    state dict is gathered with torch's functional all-gather, and under gloo on CUDA tensors
    that killed both ranks with SIGSEGV (torch 2.11 + CUDA 13 on an H200: a run that trains
    and then loses its checkpoint). DDP over gloo on CUDA trains and saves."""
    if requested in (None, "auto"):
        return "nccl" if device.type == "cuda" else "gloo"
    if requested not in BACKENDS:
        raise ValueError(f"unknown process group backend {requested!r}; expected one of {BACKENDS}")
    if requested == "nccl" and device.type != "cuda":
        raise ValueError(f"the nccl backend needs CUDA devices, and this run is on {device.type}; use gloo")
    if requested == "gloo" and device.type == "cuda" and fsdp:
        raise ValueError("--fsdp over gloo on CUDA is not supported: gathering the checkpoint's full state dict "
                         "crashes there (torch's functional all-gather); use nccl on CUDA, or DDP (no --fsdp)")
    return requested


def init_distributed(requested_device: str | None = None, backend: str | None = "auto",
                     fsdp: bool = False) -> DistEnv:
    world_size = launched_world_size()
    if fsdp and "RANK" not in os.environ:
        # FSDP's device mesh would look for torchrun's rendezvous and fail with "environment
        # variable RANK expected, but not set", naming neither --fsdp nor torchrun.
        raise ValueError("--fsdp shards the model over the processes torchrun starts; run it under torchrun "
                         "(torchrun --nproc_per_node N -m trainer.run ... --fsdp), or drop --fsdp")
    _HELD_GROUPS.clear()  # a run before this one in the process (`shutdown`)
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = pick_device(requested_device, local_rank)
    backend = process_group_backend(backend, device, fsdp)  # checked in a single process too
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend=backend)
    return DistEnv(rank, local_rank, world_size, device)


def all_reduce_mean(tensor: torch.Tensor, env: DistEnv) -> torch.Tensor:
    if env.distributed:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        tensor /= env.world_size
    return tensor


class RanksDisagree(ValueError):
    """Every rank found, through a collective, that the ranks' inputs differ: they all stop, and
    leave as the agreed start-up stops do (trainer.run's AGREED_STOP), not through a teardown."""


def ranks_agree(values: list[int], env: DistEnv) -> tuple[list[int], list[int]]:
    """(smallest, largest) of each value over the ranks; equal lists mean every rank holds the
    same values. Collective. Integers below 2**53 (float64 carries them exactly, on any backend)."""
    if not env.distributed:
        return list(values), list(values)
    # NCCL reduces only GPU tensors; gloo's own home is host memory (its CUDA path copies there).
    device = env.device if dist.get_backend() == "nccl" else torch.device("cpu")
    low = torch.tensor(values, dtype=torch.float64, device=device)
    high = low.clone()
    dist.all_reduce(low, op=dist.ReduceOp.MIN)
    dist.all_reduce(high, op=dist.ReduceOp.MAX)
    return [int(v) for v in low.cpu().tolist()], [int(v) for v in high.cpu().tolist()]


def failure_values(failed: BaseException | None) -> list[int]:
    """[whether this rank failed, a digest of what it said]: what `ranks_agree` compares so that every
    rank knows whether any failed, and whether all failed alike (one setting: said once, by rank 0)."""
    import zlib

    return [int(failed is not None), 0 if failed is None else zlib.crc32(f"{type(failed).__name__}: {failed}".encode())]


# How a collective fails when a peer has gone: gloo's transport, a closed connection, NCCL's
# word for a peer that exited. Not "NCCL" alone: this rank's own CUDA or NCCL fault is a
# DistBackendError too, and must keep its traceback (found by a reviewer).
_PEER_GONE = re.compile(r"gloo/transport|Connection (?:closed|reset) by peer|Broken pipe|remote process exited")


def peer_stopped(exc: BaseException) -> bool:
    """Whether `exc` is a collective failing because another rank stopped (the store or the
    network gone, or gloo's plain RuntimeError naming its transport), not this rank's own fault."""
    gone = tuple(t for t in (getattr(dist, "DistNetworkError", None), getattr(dist, "DistStoreError", None)) if t)
    return isinstance(exc, gone) or bool(_PEER_GONE.search(str(exc)))


def barrier(env: DistEnv) -> None:
    if env.distributed:
        dist.barrier()


# Process groups held until the process exits (see `shutdown`).
_HELD_GROUPS: list = []


def _all_groups() -> list:
    world = getattr(dist.distributed_c10d, "_world", None)
    groups = list(getattr(world, "pg_map", None) or ())
    return groups or [dist.group.WORLD]


def shutdown(env: DistEnv, finished: bool = True) -> None:
    """Leave the process group. After a finished run the ranks first meet at a barrier: a rank
    that tears gloo down while a peer is still finishing its last collective can abort the
    peer at exit ("terminate called without an active exception"), turning a finished run
    into a failed one. After an error there is no barrier: the peers may be stuck in a
    collective and would never reach it, and torchrun stops them once this rank exits.

    The groups themselves are held until the process exits: destroy_process_group leaves them
    to their last reference, the trainer's DDP reducer (or FSDP's state), freed when main()
    returns. A gloo thread still freeing the barrier's work holds the group's work mutex and
    waits for the GIL, while the main thread, freeing the group, holds the GIL and waits for
    the mutex: a finished 2-rank run hung at exit in 2 of 27 runs, none of 45 after (gdb: Reducer ->
    ~ProcessGroupGloo -> mutex; runLoop -> ~AsyncBarrierWork -> decref -> take_gil). A process
    that starts another group (tests, a notebook) lets the held ones go then (`init_distributed`):
    that barrier's work is long done, and rank 0's store frees its port."""
    if env.distributed and dist.is_initialized():
        _HELD_GROUPS.extend(_all_groups())
        try:
            if finished:
                dist.barrier()
        finally:
            dist.destroy_process_group()


# A rank stopped by another rank's failed start-up check leaves this long after it: torchrun names
# the first rank to exit as the root cause and stops the rest (its monitor looks every 0.1 s).
PEER_EXIT_DELAY_S = 1.0


def exit_process(code: int, agreed_stop: str | None = None) -> None:
    """Exit with `code`; a torchrun rank whose run finished (code 0) skips Python's finalization.

    gloo's worker threads outlive destroy_process_group (gloo has no shutdown; its threads stop
    with the last reference to the group, which FSDP's and DDP's state hold). After the final
    barrier returns, a worker thread may still be freeing that barrier's work and the
    collectives it waited on, whose tensors are Python objects: freeing them takes the GIL. If
    the main thread is finalizing the interpreter by then, the thread is told to exit inside a
    C++ destructor and the process aborts ("terminate called without an active exception"),
    turning a finished run into a failed one (seen in a core dump: AsyncBarrierWork ->
    AsyncAllreduceWork -> decref_pyobject -> take_gil -> PyThread_exit_thread). Call it only
    after a run that finished: then every thread and file of the trainer's own is closed (the
    checkpoint writer joined, the data loader shut down), and only the interpreter's teardown
    is skipped. A failed rank, or a single process, exits normally, so a checkpoint still
    being written is waited for.

    After a stop the ranks agreed on at start-up (`agreed_stop`: "failed" for the rank whose
    check failed, "peer" for the others) nothing of the trainer's runs either, and the ranks
    left through the same barrier: they exit the same quick way, the peers PEER_EXIT_DELAY_S
    later. Both exited 2 through a full teardown, and whichever finished first was torchrun's
    "root cause" while the other was killed: often the rank that had only said that another
    rank's check failed (found by a tester)."""
    if launched_world_size() > 1 and (code == 0 or agreed_stop is not None):
        sys.stdout.flush()
        sys.stderr.flush()
        if agreed_stop == "peer":
            time.sleep(PEER_EXIT_DELAY_S)
        os._exit(code)
    sys.exit(code)
