"""The measurement method every benchmark of this project shares.

* Each measurement runs in its own process (``python -m benchmarks.<bench>
  --worker JSON``), entries A/B alternating (the order flips every repetition),
  and the median over repetitions is reported.
* Time: the default allocator, wall time of a step after warm-up.
* CPU peak memory: the process's peak RSS over one step after warm-up (reset
  through ``/proc/self/clear_refs``, read from ``VmHWM``), in a separate process
  started with glibc's mmap threshold fixed (``MALLOC_MMAP_THRESHOLD_=65536``)
  so that freed tensors return to the OS and the peak is the step's own.
  On CUDA: ``torch.cuda.max_memory_allocated`` over the step.
* Ratios are against the entry named ``floor`` in the same run.
"""

import datetime
import json
import os
import platform
import shlex
import signal
import statistics
import subprocess
import sys
import time

from examples.common.provenance import git_commit
from examples.common.stages import atomic_write

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MMAP_ENV = {"MALLOC_MMAP_THRESHOLD_": "65536"}


# ---- inside a worker process ---------------------------------------------
def reset_peak_rss() -> None:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def _status_bytes(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not found in /proc/self/status")


def peak_rss_bytes() -> int:
    return _status_bytes("VmHWM")


def rss_bytes() -> int:
    return _status_bytes("VmRSS")


def measure_step(step, device, mode: str, warmup: int, steps: int) -> dict:
    """Run ``step()`` ``warmup`` times, then measure time or peak memory.

    Memory: ``peak_bytes`` = the peak over one step (process RSS on CPU,
    allocated memory on CUDA) and ``step_bytes`` = that peak minus the memory
    in use before the step (interpreter, libraries, model and inputs).
    """
    import torch

    cuda = device.startswith("cuda")
    for _ in range(warmup):
        step()
    if cuda:
        torch.cuda.synchronize()
    if mode == "memory":
        if cuda:
            before = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
            step()
            torch.cuda.synchronize()
            peak = torch.cuda.max_memory_allocated()
        else:
            before = rss_bytes()
            reset_peak_rss()
            step()
            peak = peak_rss_bytes()
        return {"peak_bytes": peak, "step_bytes": peak - before}
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return {"seconds": statistics.median(times)}


def driver_or_worker(main, run_entry) -> None:
    """A benchmark's command line: its driver, or with ``--worker JSON`` one measurement."""
    if "--worker" in sys.argv:
        worker_main(run_entry)
    else:
        main()


def add_timing_arguments(parser, *, warmup: int, quick_help: str) -> None:
    """The flags every timing benchmark takes: repetitions, steps, threads, device, label, quick."""
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--steps", type=int, default=3, help="timed steps per process")
    parser.add_argument("--warmup", type=int, default=warmup)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--label", default="",
                        help="added to the results file name (keeps other runs of the day)")
    parser.add_argument("--quick", action="store_true", help=quick_help)


def apply_quick(args) -> bool:
    """``--quick``: one repetition of one timed step after one warm-up step."""
    if args.quick:
        args.reps, args.steps, args.warmup = 1, 1, 1
    return args.quick


def report_written(stem: str) -> None:
    print(f"wrote {os.path.relpath(stem, REPO)}.json and .md")


def worker_main(run_entry) -> None:
    """``--worker JSON``: run one measurement and print its result as JSON."""
    spec = json.loads(sys.argv[sys.argv.index("--worker") + 1])
    result = run_entry(spec)
    print("RESULT " + json.dumps(result), flush=True)


# ---- in the driver ---------------------------------------------------------
def run_worker(module: str, spec: dict, extra_env=None, timeout=1800) -> dict:
    env = dict(os.environ)
    env.update(extra_env or {})
    env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run(
        [sys.executable, "-m", module, "--worker", json.dumps(spec)],
        capture_output=True, text=True, env=env, cwd=REPO, timeout=timeout,
    )
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    raise WorkerFailed(
        f"benchmark worker failed ({module} {spec}):\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}",
        proc.returncode, proc.stderr,
    )


class WorkerFailed(RuntimeError):
    """A measurement's worker process ended without a result."""

    def __init__(self, message, returncode, stderr):
        super().__init__(message)
        self.returncode, self.stderr = returncode, stderr

    @property
    def out_of_memory(self):
        """Killed by the kernel's OOM killer (SIGKILL), or an allocator that ran out."""
        return self.returncode == -signal.SIGKILL or any(sign in self.stderr for sign in OOM_SIGNS)


OOM_SIGNS = ("OutOfMemoryError", "CUDA out of memory", "DefaultCPUAllocator: not enough memory")


def measure_entries(module: str, config: dict, entries, reps: int, device: str, log=print):
    """Median of every measured value of each entry, A/B alternating over ``reps``."""
    samples = {e: {} for e in entries}
    for rep in range(reps):
        order = list(entries) if rep % 2 == 0 else list(reversed(entries))
        for entry in order:
            for mode in ("time", "memory"):
                spec = dict(config, entry=entry, mode=mode, device=device)
                env = MMAP_ENV if (mode == "memory" and device == "cpu") else None
                for key, value in run_worker(module, spec, env).items():
                    samples[entry].setdefault(key, []).append(value)
        log(f"  rep {rep + 1}/{reps} done", flush=True)
    out = {}
    for entry, values in samples.items():
        out[entry] = {k: statistics.median(v) for k, v in values.items()}
        out[entry].update({k + "_all": v for k, v in values.items()})
    return out


TRAIN_STEP_RATIOS = {"step_time_ratio": "seconds", "step_mem_ratio": "peak_bytes"}


def add_ratios(results: dict, floor: str = "floor", ratios=None) -> dict:
    """``ratio name -> measured key`` (default: time and peak memory) against ``floor``."""
    base = results[floor]
    for res in results.values():
        for name, key in (ratios or TRAIN_STEP_RATIOS).items():
            res[name] = round(res[key] / base[key], 3)
    return results


def machine_description(device: str, worker_threads=None) -> str:
    """The machine; on CPU with the torch threads the measuring workers ran with when given
    (else this process's)."""
    import torch

    if device.startswith("cuda"):
        return f"{torch.cuda.get_device_name()} (torch {torch.__version__})"
    threads = (f"{worker_threads} torch threads per worker" if worker_threads
               else f"{torch.get_num_threads()} torch threads")
    return (
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"{threads}, torch {torch.__version__}, Python {platform.python_version()}"
    )


def write_results(kind: str, device: str, payload: dict, table: str) -> str:
    date = datetime.date.today().isoformat()
    out_dir = os.path.join(REPO, "benchmarks", "results")
    os.makedirs(out_dir, exist_ok=True)
    stem = os.path.join(out_dir, f"{kind}-{device.split(':')[0]}-{date}")
    payload = dict(payload, date=date, device=device, commit=git_commit(),
                   machine=machine_description(device, payload.get("threads")),
                   command=shlex.join([os.path.relpath(sys.argv[0], REPO)] + sys.argv[1:]))
    with atomic_write(stem + ".json") as f:
        json.dump(payload, f, indent=2)
    with atomic_write(stem + ".md") as f:
        f.write(table + "\n")
    return stem


def markdown_table(rows, headers) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)
