"""SLURM host lists: the first host of a compressed list is the rendezvous host."""

import pytest

from rdrop_seq.launch.argv import LaunchError
from rdrop_seq.launch.slurm import slurm_first_host


def test_slurm_host_lists():
    assert slurm_first_host("gpu[007-008]") == "gpu007"
    assert slurm_first_host("node[3,5-9],big1") == "node3"
    assert slurm_first_host("a1,b[1-2]") == "a1"
    assert slurm_first_host("rack[2-3]-n[01-04]") == "rack2-n01"
    assert slurm_first_host("localhost") == "localhost"
    with pytest.raises(LaunchError):
        slurm_first_host(" ")
