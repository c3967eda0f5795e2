"""The local rank runner: several rdrop-train ranks on this machine, their output, fail fast."""

import sys
import threading

from rdrop_seq.launch.supervisor import run_local_ranks, threads_per_rank


# rank 1 fails once rank 0 is listening for SIGTERM; rank 0 records how it ended: stopped by
# SIGTERM, or its sleep done
FAKE_RANK = (
    "import os, signal, sys, time\n"
    "rank, record = int(sys.argv[1]), sys.argv[2]\n"
    "def stopped(*_):\n"
    "    open(record, 'w').write('stopped'); sys.exit(143)\n"
    "signal.signal(signal.SIGTERM, stopped)\n"
    "print(f'hello from {rank}', flush=True)\n"
    "if rank == 0: open(record + '.ready', 'w').close()\n"
    "while rank == 1 and not os.path.exists(record + '.ready'): time.sleep(0.05)\n"
    "if rank == 1: sys.exit(3)\n"
    "time.sleep(60)\n"
    "open(record, 'w').write('slept to the end')\n"
)


PORT_TAKEN_RANK = "import sys; print('listen failed: EADDRINUSE', flush=True); sys.exit(1)"


def test_cpu_ranks_share_the_cores():
    assert threads_per_rank(2, cores=2) == 1
    assert threads_per_rank(2, cores=16) == 8
    assert threads_per_rank(4, cores=2) == 1


def test_local_ranks_fail_fast_and_stream_output(capfd, tmp_path):
    record = str(tmp_path / "rank0")
    code = run_local_ranks([["0", record], ["1", record]], command=[sys.executable, "-c", FAKE_RANK])
    assert code == 3
    with open(record) as f:
        assert f.read() == "stopped", "the surviving rank was not stopped"
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


def test_a_rank_reporting_its_port_taken_is_seen(capfd):
    taken = threading.Event()
    code = run_local_ranks([["0"]], command=[sys.executable, "-c", PORT_TAKEN_RANK], port_taken=taken)
    assert code == 1 and taken.is_set()
    assert "EADDRINUSE" in capfd.readouterr().out


def test_rdrop_train_starts_again_on_another_port_when_its_pick_was_taken(monkeypatch):
    """A free port is found, released, then bound by rank 0: another process may take it in
    between.  rdrop-train then starts the ranks again on another port (only a port it picked)."""
    from rdrop_seq import cli, launch

    calls = []

    def ranks(argvs, port_taken=None):
        calls.append(next(a for a in argvs[0] if str(a).startswith("tcp://")))
        if len(calls) == 1:
            port_taken.set()
            return 1
        return 0

    monkeypatch.setattr(launch, "run_local_ranks", ranks)
    plan = launch.LaunchPlan(argv=["data"], local_ranks=2)
    assert cli._run_local_ranks(plan) == 0 and len(calls) == 2
    calls.clear()
    fixed = launch.LaunchPlan(argv=["data"], local_ranks=2, local_port=29511)
    assert cli._run_local_ranks(fixed) == 1 and calls == ["tcp://127.0.0.1:29511"]  # the user's port: no retry
