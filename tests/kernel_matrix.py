"""Run the exactness tests under the matrix kernels of other processors.

``python -m tests.kernel_matrix`` (part of ``make test``) runs every test that compares two
code paths (:data:`EXACTNESS_TESTS`) once per kernel set of :data:`KERNEL_SETS`: the
instruction sets MKL may use for matrix products (``MKL_ENABLE_INSTRUCTIONS``) with the
matching ones of PyTorch's own vectorised kernels (``ATEN_CPU_CAPABILITY``), as an SSE4.2,
an AVX2 and (where this processor has it) an AVX-512 machine would pick them.  A test that
holds only for one machine's rounding fails here, on any machine.

MKL honours ``MKL_ENABLE_INSTRUCTIONS`` only where it believes the processor is an Intel
one; elsewhere (AMD's processors) it takes one code path whatever the variable says.  So
where a C compiler is at hand the runs load ``tests/mkl_intel_dispatch.c``, built here, with
``LD_PRELOAD``, which makes MKL dispatch by the processor's instruction sets as it does on
Intel's.  Each run prints a digest of one fixed matrix product, so the log shows whether
the kernel sets really computed differently.
"""

import os
import subprocess
import sys
import sysconfig
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)

# every test file that compares two code paths (bitwise, or to a bound from tests/rounding.py);
# the half-precision tests compare with tolerances of bf16's own rounding, far above any kernel's
EXACTNESS_TESTS = [
    "tests/test_losses.py",
    "tests/test_divergences.py",
    "tests/test_fused.py",
    "tests/test_adaptive_kl.py",
    "tests/test_adaptive_fused.py",
    "tests/test_criterion_families.py",
    "tests/test_rdrop_label_smoothed_cross_entropy.py",
    "tests/test_rdrop_cross_entropy.py",
    "tests/test_rdrop_adaptive_loss.py",
    "tests/test_sentence_prediction.py",
    "tests/test_cost_variants.py",
    "tests/test_semi_supervised.py",
]

# (name, MKL_ENABLE_INSTRUCTIONS, ATEN_CPU_CAPABILITY, the /proc/cpuinfo flag it needs)
KERNEL_SETS = [
    ("SSE4.2", "SSE4_2", "default", "sse4_2"),
    ("AVX2", "AVX2", "avx2", "avx2"),
    ("AVX-512", "AVX512", "avx512", "avx512f"),
]

PROBE = (
    "import hashlib, torch; g = torch.Generator().manual_seed(0); "
    "a = torch.randn(257, 123, generator=g); b = torch.randn(123, 1001, generator=g); "
    "print(hashlib.sha256((a @ b).numpy().tobytes()).hexdigest()[:12])"
)


def cpu_flags():
    """The processor's instruction-set flags (empty where /proc/cpuinfo is not there)."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def build_dispatch_shim(directory):
    """Compile tests/mkl_intel_dispatch.c into ``directory``; None where that is not possible."""
    if not sys.platform.startswith("linux"):
        return None
    compiler = os.environ.get("CC") or (sysconfig.get_config_var("CC") or "cc").split()[0]
    library = os.path.join(directory, "libmkl_intel_dispatch.so")
    source = os.path.join(HERE, "mkl_intel_dispatch.c")
    try:
        subprocess.run([compiler, "-shared", "-fPIC", "-O2", "-o", library, source],
                       check=True, capture_output=True)
    except (OSError, subprocess.CalledProcessError) as err:
        print(f"kernel matrix: cannot build the MKL dispatch shim ({err}); MKL_ENABLE_INSTRUCTIONS "
              "then takes effect on Intel processors only", flush=True)
        return None
    return library


def kernel_env(mkl, aten, shim):
    env = dict(os.environ, MKL_ENABLE_INSTRUCTIONS=mkl, ATEN_CPU_CAPABILITY=aten)
    if shim:
        env["LD_PRELOAD"] = " ".join(filter(None, [shim, os.environ.get("LD_PRELOAD")]))
    return env


def probe_digest(env):
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True)
    return out.stdout.strip() or f"probe failed: {out.stderr.strip()[-200:]}"


def main(argv=None):
    extra = list(sys.argv[1:] if argv is None else argv)  # passed on to pytest
    flags = cpu_flags()
    with tempfile.TemporaryDirectory() as tmp:
        shim = build_dispatch_shim(tmp)
        results, digests = [], set()
        for name, mkl, aten, flag in KERNEL_SETS:
            if flags and flag not in flags:
                print(f"kernel matrix: {name} left out: this processor has no {flag}", flush=True)
                continue
            env = kernel_env(mkl, aten, shim)
            digest = probe_digest(env)
            digests.add(digest)
            print(f"kernel matrix: {name} (MKL_ENABLE_INSTRUCTIONS={mkl}, ATEN_CPU_CAPABILITY={aten}"
                  f"{', MKL dispatch shim' if shim else ''}): matrix product digest {digest}", flush=True)
            code = subprocess.run(
                [sys.executable, "-m", "pytest", "-q", "-n", "auto", "--maxprocesses", "4",
                 "-m", "not memory", *EXACTNESS_TESTS, *extra],
                cwd=REPO, env=env,
            ).returncode
            results.append((name, code))
    print("kernel matrix: " + ", ".join(f"{n} {'ok' if c == 0 else f'FAILED (exit {c})'}"
                                        for n, c in results), flush=True)
    if len(digests) == 1:
        print("kernel matrix: every kernel set gave the same matrix product here, so these runs "
              "did not see other kernels' rounding", flush=True)
    return 0 if results and all(code == 0 for _, code in results) else 1


if __name__ == "__main__":
    sys.exit(main())
