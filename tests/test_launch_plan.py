"""How rdrop-train lays out processes: the pure argv decisions of the launch plan."""

import pytest

from rdrop_seq.launch.argv import LaunchError, flag_value, has_flag
from rdrop_seq.launch.plan import plan_launch, rank_argv
from rdrop_seq.launch.slurm import slurm_port
from rdrop_seq.launch.supervisor import CHILD_ENV


BASE = ["data-bin", "--arch", "transformer", "--max-tokens", "4096"]
TORCHRUN = {"MASTER_ADDR": "10.0.0.1", "MASTER_PORT": "29500", "WORLD_SIZE": "16",
            "RANK": "9", "LOCAL_RANK": "1"}
SLURM = {"SLURM_JOB_ID": "4242", "SLURM_NTASKS": "16", "SLURM_NNODES": "2",
         "SLURM_NTASKS_PER_NODE": "8", "SLURM_PROCID": "11", "SLURM_LOCALID": "3",
         "SLURM_NODEID": "1", "SLURM_JOB_NODELIST": "gpu[007-008]"}


def added(plan, argv=BASE):
    """The arguments the plan appended to the user's (as a flag -> value dict)."""
    extra = plan.argv[len(argv):]
    assert plan.argv[: len(argv)] == list(argv), "the user's arguments come first, unchanged"
    out, i = {}, 0
    while i < len(extra):
        if i + 1 < len(extra) and not extra[i + 1].startswith("--"):
            out[extra[i]] = extra[i + 1]
            i += 2
        else:
            out[extra[i]] = True
            i += 1
    return out


# ---------------------------------------------------------------- single process


@pytest.mark.parametrize("cuda", [False, True])
def test_single_process_is_left_alone(cuda):
    plan = plan_launch(BASE, {}, cuda_available=cuda, cuda_device_count=1 if cuda else 0)
    assert plan.argv == BASE and plan.reasons == [] and not plan.local_ranks
    plan = plan_launch(BASE + ["--distributed-world-size", "1"], {}, cuda_available=False)
    assert added(plan, BASE + ["--distributed-world-size", "1"]) == {}


# ---------------------------------------------------------------- torchrun


def test_torchrun_on_gpus_passes_rank_world_and_local_device():
    plan = plan_launch(BASE, TORCHRUN, cuda_available=True, cuda_device_count=8)
    assert added(plan) == {
        "--distributed-init-method": "env://",
        "--distributed-world-size": "16",
        "--distributed-rank": "9",
        "--device-id": "1",  # LOCAL_RANK, not RANK % #GPUs (fairseq's guess)
        "--distributed-no-spawn": True,
    }
    assert plan.rank == 9 and not plan.log_reasons  # only rank 0 logs
    assert len(plan.reasons) == 1 and "torchrun: rank 9 of 16" in plan.reasons[0]


def test_torchrun_on_cpu_adds_gloo_and_legacy_ddp_and_logs_on_rank_0():
    env = dict(TORCHRUN, WORLD_SIZE="2", RANK="0", LOCAL_RANK="0")
    plan = plan_launch(BASE, env, cuda_available=False)
    extra = added(plan)
    assert extra["--distributed-init-method"] == "env://"
    assert extra["--device-id"] == "0"
    assert extra["--distributed-backend"] == "gloo"
    assert extra["--ddp-backend"] == "legacy_ddp"
    assert plan.log_reasons and len(plan.reasons) == 3
    # --cpu on a GPU machine is CPU too
    plan = plan_launch(BASE + ["--cpu"], env, cuda_available=True, cuda_device_count=8)
    assert added(plan, BASE + ["--cpu"])["--distributed-backend"] == "gloo"


def test_torchrun_keeps_the_users_choices_and_refuses_contradictions():
    argv = BASE + ["--ddp-backend", "no_c10d", "--distributed-backend", "gloo"]
    env = dict(TORCHRUN, WORLD_SIZE="2", RANK="1", LOCAL_RANK="1")
    extra = added(plan_launch(argv, env, cuda_available=False), argv)
    assert "--ddp-backend" not in extra and "--distributed-backend" not in extra
    with pytest.raises(LaunchError, match="WORLD_SIZE=16"):
        plan_launch(BASE + ["--distributed-world-size", "8"], TORCHRUN, True, 8)
    with pytest.raises(LaunchError, match="RANK=9"):
        plan_launch(BASE + ["--distributed-rank", "0"], TORCHRUN, True, 8)


def test_torchrun_local_rank_maps_onto_the_visible_gpus():
    # e.g. each process sees only its own GPU (CUDA_VISIBLE_DEVICES per rank)
    plan = plan_launch(BASE, TORCHRUN, cuda_available=True, cuda_device_count=1)
    assert added(plan)["--device-id"] == "0"
    assert any("LOCAL_RANK=1" in r for r in plan.reasons)


def test_incomplete_torchrun_environment_is_not_torchrun():
    env = {k: v for k, v in TORCHRUN.items() if k != "MASTER_PORT"}
    plan = plan_launch(BASE, env, cuda_available=False)
    assert plan.argv == BASE


# ---------------------------------------------------------------- SLURM


def test_slurm_one_task_per_gpu_is_one_rank_per_task():
    plan = plan_launch(BASE, SLURM, cuda_available=True, cuda_device_count=8)
    port = slurm_port(SLURM)
    assert added(plan) == {
        "--distributed-port": str(port),
        "--distributed-init-method": f"tcp://gpu007:{port}",
        "--distributed-world-size": "16",
        "--distributed-rank": "11",
        "--device-id": "3",
        "--distributed-no-spawn": True,
    }
    assert plan.rank == 11
    # every task of the job agrees on the port; another job gets another one
    assert slurm_port(dict(SLURM, SLURM_PROCID="0")) == port
    assert slurm_port(dict(SLURM, SLURM_JOB_ID="4243")) != port
    assert 20000 <= port < 60000


def test_slurm_uses_the_given_port_and_checks_the_world_size():
    argv = BASE + ["--distributed-port", "12345", "--distributed-world-size", "16"]
    plan = plan_launch(argv, SLURM, cuda_available=True, cuda_device_count=8)
    assert added(plan, argv)["--distributed-init-method"] == "tcp://gpu007:12345"
    with pytest.raises(LaunchError, match="SLURM_NTASKS=16"):
        plan_launch(BASE + ["--distributed-world-size", "8"], SLURM, True, 8)


def test_slurm_one_task_per_node_on_gpus_is_left_to_fairseqs_spawn():
    env = dict(SLURM, SLURM_NTASKS="2", SLURM_NTASKS_PER_NODE="1", SLURM_PROCID="1",
               SLURM_LOCALID="0")
    plan = plan_launch(BASE, env, cuda_available=True, cuda_device_count=8)
    assert added(plan) == {"--distributed-port": str(slurm_port(env))}
    assert "fairseq spawns one process per GPU" in plan.reasons[0]


def test_slurm_on_cpu_is_one_rank_per_task_with_gloo():
    env = dict(SLURM, SLURM_NTASKS="4", SLURM_NTASKS_PER_NODE="2(x2)", SLURM_PROCID="0",
               SLURM_LOCALID="0", SLURM_JOB_NODELIST="cpu[1-2]")
    plan = plan_launch(BASE, env, cuda_available=False)
    extra = added(plan)
    assert extra["--distributed-init-method"].startswith("tcp://cpu1:")
    assert extra["--distributed-world-size"] == "4" and extra["--distributed-rank"] == "0"
    assert extra["--distributed-backend"] == "gloo" and extra["--ddp-backend"] == "legacy_ddp"
    assert plan.log_reasons


def test_a_single_slurm_task_is_a_single_process_and_torchrun_wins_over_slurm():
    plan = plan_launch(BASE, dict(SLURM, SLURM_NTASKS="1"), cuda_available=False)
    assert plan.argv == BASE
    plan = plan_launch(BASE, dict(SLURM, **TORCHRUN), cuda_available=True, cuda_device_count=8)
    assert added(plan)["--distributed-init-method"] == "env://"


# ---------------------------------------------------------------- --distributed-world-size


def test_world_size_on_cpu_starts_the_ranks_here():
    argv = BASE + ["--distributed-world-size", "3"]
    plan = plan_launch(argv, {}, cuda_available=False)
    assert plan.local_ranks == 3 and plan.local_port is None and plan.log_reasons
    assert added(plan, argv) == {"--distributed-backend": "gloo", "--ddp-backend": "legacy_ddp"}
    child = rank_argv(plan.argv, 2, "tcp://127.0.0.1:5555")
    assert child[: len(plan.argv)] == plan.argv
    assert added(plan_launch(child, {CHILD_ENV: "1"}, cuda_available=False), child) == {}
    assert flag_value(child, "--distributed-rank") == "2"
    assert flag_value(child, "--distributed-world-size") == "3"
    assert has_flag(child, "--distributed-no-spawn")
    # a rank process started by rdrop-train does not log the decisions again
    assert not plan_launch(child, {CHILD_ENV: "1"}, cuda_available=False).log_reasons


def test_world_size_on_cpu_uses_the_given_port():
    argv = BASE + ["--distributed-world-size", "2", "--distributed-port", "23456"]
    assert plan_launch(argv, {}, cuda_available=False).local_port == 23456


def test_world_size_on_gpus_is_fairseqs_spawn_and_too_many_is_refused():
    argv = BASE + ["--distributed-world-size", "4"]
    plan = plan_launch(argv, {}, cuda_available=True, cuda_device_count=4)
    assert plan.argv == argv and not plan.local_ranks
    with pytest.raises(LaunchError, match="torchrun or srun"):
        plan_launch(argv, {}, cuda_available=True, cuda_device_count=2)


def test_hand_launched_rank_needs_the_rendezvous():
    argv = BASE + ["--distributed-world-size", "2", "--distributed-rank", "1"]
    with pytest.raises(LaunchError, match="--distributed-init-method"):
        plan_launch(argv, {}, cuda_available=False)


def test_explicit_init_method_on_cpu_gets_no_spawn_and_cpu_backends():
    argv = BASE + ["--distributed-world-size", "2", "--distributed-rank", "1",
                   "--distributed-init-method", "tcp://127.0.0.1:29999"]
    plan = plan_launch(argv, {}, cuda_available=False)
    assert added(plan, argv) == {"--distributed-no-spawn": True,
                                 "--distributed-backend": "gloo", "--ddp-backend": "legacy_ddp"}
    assert plan.rank == 1 and not plan.log_reasons
    on_gpu = plan_launch(argv, {}, cuda_available=True, cuda_device_count=2)
    assert on_gpu.argv == argv


@pytest.mark.parametrize("ddp", ["pytorch_ddp", "c10d"])
def test_pytorch_ddp_on_cpu_is_refused_before_training(ddp):
    argv = BASE + ["--distributed-world-size", "2", "--ddp-backend", ddp]
    with pytest.raises(LaunchError, match="legacy_ddp"):
        plan_launch(argv, {}, cuda_available=False)
    with pytest.raises(LaunchError, match="legacy_ddp"):
        plan_launch(BASE + ["--ddp-backend", ddp], TORCHRUN, cuda_available=False)
    # single process: no DDP wrapper, nothing to refuse
    assert plan_launch(BASE + ["--ddp-backend", ddp], {}, cuda_available=False)


def test_nccl_on_cpu_is_refused():
    with pytest.raises(LaunchError, match="gloo"):
        plan_launch(BASE + ["--distributed-backend", "nccl"], TORCHRUN, cuda_available=False)


# ---------------------------------------------------------------- precision


def test_bf16_is_kept_off_the_tpu_path_on_cpu_and_gpu():
    for cuda in (False, True):
        plan = plan_launch(BASE + ["--bf16"], {}, cuda_available=cuda, cuda_device_count=1)
        assert plan.bf16_not_tpu and "--bf16" in plan.reasons[0]
    assert plan_launch(BASE + ["--memory-efficient-bf16"], {}, False).bf16_not_tpu
    plan = plan_launch(BASE + ["--bf16", "--tpu"], {}, cuda_available=False)
    assert not plan.bf16_not_tpu and plan.argv == BASE + ["--bf16", "--tpu"]


@pytest.mark.parametrize("flag", ["--fp16", "--memory-efficient-fp16", "--amp"])
def test_fp16_and_amp_need_cuda(flag):
    with pytest.raises(LaunchError, match="needs CUDA.*--bf16"):
        plan_launch(BASE + [flag], {}, cuda_available=False)
    with pytest.raises(LaunchError, match="needs CUDA"):
        plan_launch(BASE + [flag, "--cpu"], {}, cuda_available=True, cuda_device_count=1)
    assert plan_launch(BASE + [flag], {}, cuda_available=True, cuda_device_count=1).argv == (
        BASE + [flag]
    )
