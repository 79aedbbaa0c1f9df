"""The stages of ``slicevos-benchmark-gpu`` (see ``slicevos/cli/benchmark_gpu.py``).

Each stage runs in a fresh process (``python -m slicevos.benchmarks.gpu STAGE PARAMS RESULT``,
under torchrun for the ``ddp`` stage), so its peak memory is its own, a crash or a hang costs
only its row, and the parent never touches CUDA (NVML's GPU memory counts every process). The
training stages run the project's trainers (``ReferenceTrainer``, ``PropagationTrainer``) on
a phantom slice cache; a subclass only marks the end of chosen steps, so iterations per
second are timed over the steps after the warm-up, without the final checkpoint.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import traceback
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from slicevos.io.atomic import atomic_write_bytes

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
FLARE_SECONDS, FLARE_GPU_MB = 15.0, 4096.0  # FLARE's tolerance for one case on one GPU
MB = 1024 * 1024


@dataclass(frozen=True)
class Plan:
    """What one run trains and segments: configs, phantom sizes (D, H, W), iterations."""

    reference_config: Path
    propagation_config: Path
    train_shape: tuple[int, int, int]
    volume_shape: tuple[int, int, int]
    iterations: int
    warmup: int
    ddp_iterations: int


def make_plan(tiny: bool, iterations: int | None = None, depth: int | None = None,
              warmup: int | None = None, ddp_iterations: int | None = None) -> Plan:
    """Paper configs at 512x512 (STCN crops 384x384 of them), 200 iterations, a 512x512x300
    volume; ``tiny``: the tiny configs on 64x64 phantoms, 4 iterations, 64x64x24."""
    name, size = ("tiny", 64) if tiny else ("paper", 512)
    n = iterations or (4 if tiny else 200)
    return Plan(CONFIGS / "reference" / f"{name}.yaml", CONFIGS / "propagation" / f"{name}.yaml",
                (24 if tiny else 40, size, size), (depth or (24 if tiny else 300), size, size),
                n, min(n - 1, warmup if warmup is not None else max(1, n // 10)),
                ddp_iterations or (2 if tiny else 20))


def make_data(root: Path, plan: Plan) -> tuple[Path, Path]:
    """Phantoms for training (2 labeled + 1 unlabeled, their flare22 slice cache) and the
    volume to segment: (cache folder, volume file)."""
    from slicevos.data.cache_build import PrepareConfig, prepare_cache
    from slicevos.phantom import PhantomConfig, write_phantom_dataset

    write_phantom_dataset(root / "train", n_labeled=2, n_unlabeled=1,
                          config=PhantomConfig(shape=plan.train_shape), seed=0, progress=False)
    prepare_cache(root / "train", root / "cache", PrepareConfig(schema="flare22", workers=1),
                  progress=False)
    write_phantom_dataset(root / "volume", n_labeled=0, n_unlabeled=1,
                          config=PhantomConfig(shape=plan.volume_shape), seed=1, progress=False)
    return root / "cache", next((root / "volume" / "unlabeled").glob("*.nii.gz"))


# ---- running a stage in its own process ------------------------------------------------------
def run_stage(stage: str, params: dict[str, Any], work: Path, timeout_s: float,
              torchrun: bool = False) -> dict[str, Any]:
    """Run ``stage`` in a fresh process (its own process group, killed after ``timeout_s``);
    its result row, or a row saying how it failed."""
    params_path, result_path = work / f"{stage}_params.json", work / f"{stage}_result.json"
    atomic_write_bytes(params_path, json.dumps(params).encode())
    result_path.unlink(missing_ok=True)
    module = ["-m", "slicevos.benchmarks.gpu", stage, str(params_path), str(result_path)]
    launcher = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1"]
    command = [sys.executable, *(launcher if torchrun else []), *module]
    start = time.perf_counter()
    proc = subprocess.Popen(command, start_new_session=True)
    code = None
    try:
        code = proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        pass
    finally:  # the stage's process group: what is left of it (a hang, data-loader workers)
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()
    wall = time.perf_counter() - start
    if result_path.is_file():
        return {**json.loads(result_path.read_text()), "process_s": wall}
    status = (f"error: killed after {timeout_s:.0f} s (--max-seconds)" if code is None
              else f"error: the process ended with exit code {code} and no result "
                   "(see its output above)")
    return {"stage": stage, "status": status, "process_s": wall}


def _worker(argv: Sequence[str]) -> int:
    stage, params_path, result_path = argv
    params = json.loads(Path(params_path).read_text())
    try:
        import torch

        if params.get("threads"):
            torch.set_num_threads(int(params["threads"]))
        row = WORKERS[stage](params)
    except Exception as err:  # the row says what failed; the other stages go on
        if params.get("debug"):
            traceback.print_exc()
        message = (str(err).strip().splitlines() or ["(no message)"])[0][:300]
        row = {"status": f"error: {type(err).__name__}: {message}"}
    if int(os.environ.get("RANK", "0")) == 0:
        atomic_write_bytes(result_path, json.dumps({"stage": stage, **row}).encode())
    return 0 if row["status"] == "ok" else 1


# ---- stages (each runs in its worker process) ------------------------------------------------
def environment(params: dict[str, Any]) -> dict[str, Any]:
    """The device ``params["device"]`` resolves to, its name and the library versions."""
    import torch

    import slicevos

    cuda = torch.cuda.is_available()
    device = {"auto": "cuda" if cuda else "cpu"}.get(params["device"], params["device"])
    info = {"status": "ok", "device": device, "cuda_available": cuda,
            "torch": torch.__version__, "cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version() if cuda else None,
            "slicevos": slicevos.__version__, "cpu_count": os.cpu_count(),
            "threads": torch.get_num_threads()}
    if device == "cuda" and cuda:
        props = torch.cuda.get_device_properties(0)
        info.update(device_name=props.name, gpu_total_mb=props.total_memory / MB)
    else:
        info["device_name"] = _cpu_name()
    return info


def _cpu_name() -> str:
    import platform

    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        return next(line.split(":", 1)[1].strip() for line in lines if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


class TimeBudget(Exception):
    """Raised after a step once the stage's deadline has passed."""


class StepClock:
    """Marks the end of the warm-up and of the last step (the GPU synchronised first), and
    stops the run once ``deadline`` (``time.time()``) has passed."""

    def __init__(self, device: Any, warmup: int, total: int, deadline: float) -> None:
        self.device, self.warmup, self.total, self.deadline = device, warmup, total, deadline
        self.times: dict[int, float] = {}
        self.done = 0
        self.peak_mb: float | None = None

    def _now(self) -> float:
        import torch

        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter()

    def start(self) -> None:
        import torch

        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        self.times[0] = self._now()

    def step_done(self, done: int) -> None:
        late = time.time() > self.deadline
        if done == self.warmup or done == self.total or late:
            self.times[done], self.done = self._now(), done
        if done == self.total or late:
            self.peak_mb = peak_memory_mb(self.device)
        if late and done < self.total:
            raise TimeBudget(done)

    def rate(self) -> tuple[float, float, int]:
        """(iterations per second after the warm-up, seconds of all steps, steps timed)."""
        first = self.warmup if self.warmup in self.times and self.warmup < self.done else 0
        timed = self.done - first
        span = self.times[self.done] - self.times[first]
        return timed / span if span > 0 else float("nan"), self.times[self.done] - self.times[0], timed


def peak_memory_mb(device: Any) -> float:
    """CUDA: ``torch.cuda.max_memory_allocated``; CPU: the process's peak RSS (getrusage)."""
    import torch

    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / MB
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def train(params: dict[str, Any]) -> dict[str, Any]:
    """``params["kind"]`` (reference or propagation) trained for ``iterations`` steps with its
    config; the ``ddp`` stage is this under torchrun."""
    import torch

    from slicevos.cli.training_args import load_training_config

    if params["kind"] == "reference":
        from slicevos.training.reference import ReferenceConfig as Config
        from slicevos.training.reference import ReferenceTrainer as Base
    else:
        from slicevos.training.propagation import PropagationConfig as Config
        from slicevos.training.propagation import PropagationTrainer as Base
    n, warmup = params["iterations"], params["warmup"]
    sets = [f"data.cache_dir={params['cache']}", f"train.out_dir={params['out_dir']}",
            f"train.iterations={n}", f"train.device={params['device']}",
            f"train.val_every={n}", f"train.checkpoint_every={n}", "data.val_fraction=0.0"]
    sets += [] if params.get("progress", True) else ["train.progress=false"]
    sets += params.get("sets", [])  # further KEY=VALUE overrides (none from the CLI)
    config = load_training_config(params["config"], Config, sets)

    class Timed(Base):
        def _optimize(self, loss: torch.Tensor) -> torch.Tensor | None:
            grad_norm = super()._optimize(loss)
            self.clock.step_done(self.step + 1)  # self.step counts the steps before this one
            return grad_norm

    start = time.perf_counter()
    trainer = Timed(config)
    trainer.setup()
    clock = trainer.clock = StepClock(trainer.device, warmup, n, params["deadline"])
    setup_s = time.perf_counter() - start
    status = "ok"
    clock.start()
    try:
        trainer.fit()
    except TimeBudget:
        trainer.save_last()  # weights for the inference stage all the same
        status = (f"partial: stopped after {clock.done} of {n} iterations at the time limit "
                  "(--max-seconds)")
    it_s, seconds, timed = clock.rate()
    row = {"status": status, "iterations": clock.done, "warmup": clock.done - timed,
           "it_per_s": it_s, "seconds": seconds, "setup_s": setup_s, "peak_mb": clock.peak_mb,
           "memory": "cuda max allocated" if trainer.device.type == "cuda" else "peak RSS (cpu)",
           "amp": str(trainer.amp_dtype).replace("torch.", "") if trainer.amp_dtype else "off",
           "device": str(trainer.device), "config": params["config"],
           "checkpoint": str(Path(params["out_dir"]) / "last.pt")}
    if trainer.device.type == "cuda":
        row["peak_reserved_mb"] = torch.cuda.max_memory_reserved(trainer.device) / MB
    if params.get("ddp"):
        row.update(_ddp_facts(trainer))
    return row


def _ddp_facts(trainer: Any) -> dict[str, Any]:
    """What the torchrun run used: process group backend, world size, whether DDP wrapped the
    model; the row fails unless all three are the multi-GPU path's."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    from slicevos.training.distributed import shutdown_distributed

    backend = dist.get_backend() if dist.is_initialized() else None
    facts = {"backend": backend, "world_size": trainer.dist.world_size,
             "ddp": isinstance(trainer.model, DistributedDataParallel)}
    shutdown_distributed()
    expected = "nccl" if trainer.device.type == "cuda" else "gloo"
    if backend != expected or not facts["ddp"]:
        facts["status"] = (f"error: expected DDP over {expected}, got backend {backend}, "
                           f"DDP {facts['ddp']}")
    return facts


def infer(params: dict[str, Any]) -> dict[str, Any]:
    """The automatic pipeline (reference key slices, propagation, rules, write) on the phantom
    volume with the given checkpoints; bf16 autocast on CUDA."""
    import dataclasses

    import torch
    import yaml

    from slicevos.cli.infer_cases import Case, OutputOptions, run_case
    from slicevos.config import from_dict
    from slicevos.inference.config import InferenceConfig
    from slicevos.inference.pipeline import VolumePipeline

    cuda = params["device"] == "cuda"
    options = from_dict(InferenceConfig, yaml.safe_load(
        (CONFIGS / "inference" / "default.yaml").read_text()))
    options = dataclasses.replace(options, propagator=params["engine"], backend="torch",
                                  amp="bf16" if cuda else "none")
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    start = time.perf_counter()
    pipeline = VolumePipeline.from_checkpoints(
        params["propagation"] if params["engine"] != "flow" else None, params["reference"],
        None, options, "cuda" if cuda else "cpu")
    sync()
    loaded = time.perf_counter()
    report = run_case(Case("phantom", Path(params["volume"]), Path(params["out"])), pipeline,
                      OutputOptions(progress=False))
    sync()
    seconds = time.perf_counter() - loaded
    memory = report.memory_mb
    peak = memory["peak_gpu_mb"] if cuda else memory["peak_rss_mb"]
    judged = cuda and not params.get("tiny")  # FLARE's tolerance is for a full-size case
    within = (seconds <= FLARE_SECONDS and peak is not None and peak <= FLARE_GPU_MB
              ) if judged else None
    return {"status": "ok", "seconds": seconds, "setup_s": loaded - start, "peak_mb": peak,
            "memory": "gpu (nvml, all processes)" if cuda else "peak RSS (cpu)",
            "peak_cuda_allocated_mb": memory["peak_cuda_allocated_mb"],
            "peak_rss_mb": memory["peak_rss_mb"], "stages_s": report.timing_s,
            "volume_shape": list(report.shape), "keys": len(report.key_slices),
            "objects": len(report.organs), "engine": params["engine"],
            "amp": options.amp if cuda else "off", "within_tolerance": within,
            "tolerance_note": None if judged else ("n/a (tiny)" if cuda else "n/a (cpu)"),
            "tolerance": {"seconds": FLARE_SECONDS, "gpu_mb": FLARE_GPU_MB},
            "checkpoints": {"reference": params["reference"],
                            "propagation": params["propagation"]}}


WORKERS = {"env": environment, "reference": train, "propagation": train, "ddp": train,
           "inference": infer}

if __name__ == "__main__":
    sys.exit(_worker(sys.argv[1:]))
