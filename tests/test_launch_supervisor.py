"""The local rank runner: several rdrop-train ranks on this machine, their output, fail fast."""

import sys
import time

from rdrop_seq.launch.supervisor import run_local_ranks, threads_per_rank


FAKE_RANK = (
    "import sys, time\n"
    "rank = int(sys.argv[1])\n"
    "print(f'hello from {rank}', flush=True)\n"
    "if rank == 1: sys.exit(3)\n"
    "time.sleep(60)\n"
)


def test_cpu_ranks_share_the_cores():
    assert threads_per_rank(2, cores=2) == 1
    assert threads_per_rank(2, cores=16) == 8
    assert threads_per_rank(4, cores=2) == 1


def test_local_ranks_fail_fast_and_stream_output(capfd):
    start = time.monotonic()
    code = run_local_ranks([["0"], ["1"]], command=[sys.executable, "-c", FAKE_RANK])
    assert code == 3
    assert time.monotonic() - start < 30, "the surviving rank was not stopped"
    out = capfd.readouterr().out
    assert "hello from 0" in out and "[rank 1] hello from 1" in out


def test_local_ranks_succeed_together(capfd):
    ok = (
        "import os, sys; "
        "print(sys.argv[1], os.environ['RDROP_SEQ_LAUNCHED_RANK'], os.environ['OMP_NUM_THREADS'])"
    )
    code = run_local_ranks(
        [["0"], ["1"]], command=[sys.executable, "-c", ok], env={"OMP_NUM_THREADS": "3"}
    )
    assert code == 0
    out = capfd.readouterr().out
    assert "0 1 3" in out and "[rank 1] 1 1 3" in out
