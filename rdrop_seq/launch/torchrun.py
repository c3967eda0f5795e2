"""What torchrun (or ``torch.distributed.launch``) tells a rank process.

:data:`TORCHRUN_VARS` are the variables that must all be set for a process
to count as started by torchrun; :func:`torchrun_rank` reads its rank from them.
"""

from dataclasses import dataclass
from typing import Mapping, Optional

from rdrop_seq.launch.argv import env_int

TORCHRUN_VARS = ("MASTER_ADDR", "MASTER_PORT", "WORLD_SIZE", "RANK")


@dataclass(frozen=True)
class TorchrunRank:
    """One rank started by torchrun."""

    world: int  # WORLD_SIZE
    rank: int  # RANK
    local_rank: int  # LOCAL_RANK: the rank's index on its node (0 when unset)
    master: str  # MASTER_ADDR:MASTER_PORT, the rendezvous


def torchrun_rank(environ: Mapping[str, str]) -> Optional[TorchrunRank]:
    """This process as a torchrun rank; None unless every one of :data:`TORCHRUN_VARS` is set."""
    if not all(environ.get(k) for k in TORCHRUN_VARS):
        return None
    return TorchrunRank(
        world=env_int(environ, "WORLD_SIZE"),
        rank=env_int(environ, "RANK"),
        local_rank=env_int(environ, "LOCAL_RANK") or 0,
        master=f"{environ['MASTER_ADDR']}:{environ['MASTER_PORT']}",
    )
