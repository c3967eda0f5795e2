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
import statistics
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MMAP_ENV = {"MALLOC_MMAP_THRESHOLD_": "65536"}


# ---- inside a worker process ---------------------------------------------
def reset_peak_rss() -> None:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def peak_rss_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("VmHWM not found in /proc/self/status")


def measure_step(step, device, mode: str, warmup: int, steps: int) -> dict:
    """Run ``step()`` ``warmup`` times, then measure time or peak memory."""
    import torch

    cuda = device.startswith("cuda")
    for _ in range(warmup):
        step()
    if cuda:
        torch.cuda.synchronize()
    if mode == "memory":
        if cuda:
            torch.cuda.reset_peak_memory_stats()
            step()
            torch.cuda.synchronize()
            return {"peak_bytes": torch.cuda.max_memory_allocated()}
        reset_peak_rss()
        step()
        return {"peak_bytes": peak_rss_bytes()}
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return {"seconds": statistics.median(times)}


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
    raise RuntimeError(
        f"benchmark worker failed ({module} {spec}):\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    )


def measure_entries(module: str, config: dict, entries, reps: int, device: str, log=print):
    """Median time and peak memory of each entry, A/B alternating over ``reps``."""
    samples = {e: {"seconds": [], "peak_bytes": []} for e in entries}
    for rep in range(reps):
        order = list(entries) if rep % 2 == 0 else list(reversed(entries))
        for entry in order:
            for mode in ("time", "memory"):
                spec = dict(config, entry=entry, mode=mode, device=device)
                env = MMAP_ENV if (mode == "memory" and device == "cpu") else None
                res = run_worker(module, spec, env)
                key = "seconds" if mode == "time" else "peak_bytes"
                samples[entry][key].append(res[key])
        log(f"  rep {rep + 1}/{reps} done")
    return {
        e: {
            "seconds": statistics.median(s["seconds"]),
            "peak_bytes": statistics.median(s["peak_bytes"]),
            "seconds_all": s["seconds"],
            "peak_bytes_all": s["peak_bytes"],
        }
        for e, s in samples.items()
    }


def add_ratios(results: dict, floor: str = "floor") -> dict:
    base = results[floor]
    for res in results.values():
        res["step_time_ratio"] = round(res["seconds"] / base["seconds"], 3)
        res["step_mem_ratio"] = round(res["peak_bytes"] / base["peak_bytes"], 3)
    return results


def machine_description(device: str) -> str:
    import torch

    if device.startswith("cuda"):
        return f"{torch.cuda.get_device_name()} (torch {torch.__version__})"
    return (
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"{torch.get_num_threads()} torch threads, torch {torch.__version__}, "
        f"Python {platform.python_version()}"
    )


def write_results(kind: str, device: str, payload: dict, table: str) -> str:
    date = datetime.date.today().isoformat()
    out_dir = os.path.join(REPO, "benchmarks", "results")
    os.makedirs(out_dir, exist_ok=True)
    stem = os.path.join(out_dir, f"{kind}-{device.split(':')[0]}-{date}")
    payload = dict(payload, date=date, device=device, machine=machine_description(device),
                   command=" ".join([os.path.relpath(sys.argv[0], REPO)] + sys.argv[1:]))
    tmp = stem + ".json.tmp"
    with open(tmp, "w") as f:
        json.dump(payload, f, indent=2)
    os.replace(tmp, stem + ".json")
    with open(stem + ".md.tmp", "w") as f:
        f.write(table + "\n")
    os.replace(stem + ".md.tmp", stem + ".md")
    return stem


def markdown_table(rows, headers) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)
