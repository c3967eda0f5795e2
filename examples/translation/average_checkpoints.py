#!/usr/bin/env python3
"""Average the model weights of several fairseq checkpoints (fairseq's scripts/average_checkpoints.py).

    python average_checkpoints.py --inputs CKPT_DIR --num-epoch-checkpoints 5 --output avg.pt
    python average_checkpoints.py --inputs a.pt b.pt c.pt --output avg.pt

The result is the first checkpoint (training arguments, optimizer state,
extra state all kept) with its ``model`` replaced by the element-wise mean of
the ``model`` tensors of all inputs, as fairseq's script computes it: float
tensors are averaged (half precision ones in float32, which is also what is
stored, as fairseq does), integer tensors floor-divided.  Every input must
have the same parameter names and shapes; a mismatch is an error naming the
file.  The sums are kept in float64, so the mean does not depend on the order.

With ``--num-epoch-checkpoints N`` (or ``--num-update-checkpoints N``),
``--inputs`` is one directory and the N checkpoints with the highest epoch
(``checkpointE.pt``) or update (``checkpoint_E_U.pt``) numbers are averaged;
``--checkpoint-upper-bound`` excludes later ones.

Checkpoints are loaded with torch's weights-only loader (the default from
torch 2.6): ``import rdrop_seq`` first allow-lists exactly what fairseq
checkpoints hold besides tensors (``argparse.Namespace``, numpy arrays of BLEU
statistics).  Nothing is ever loaded with ``weights_only=False``.
"""

import argparse
import collections
import os
import re
import sys
from typing import List, Optional, Sequence

from examples.common.stages import atomic_write


class AverageError(Exception):
    """Bad inputs; the message names the file."""


def _torch():
    import torch

    import rdrop_seq  # noqa: F401  (allow-lists fairseq's checkpoint contents for weights-only loading)

    return torch


def last_n_checkpoints(directory: str, n: int, update_based: bool = False,
                       upper_bound: Optional[int] = None) -> List[str]:
    """The ``n`` newest epoch (or update) checkpoints in ``directory``, newest first."""
    if n < 1:
        raise AverageError(f"the number of checkpoints to average must be >= 1, got {n}")
    if not os.path.isdir(directory):
        raise AverageError(f"checkpoint directory not found: {directory}")
    pattern = re.compile(r"checkpoint_\d+_(\d+)\.pt" if update_based else r"checkpoint(\d+)\.pt")
    entries = []
    for name in os.listdir(directory):
        m = pattern.fullmatch(name)
        if m is not None:
            key = int(m.group(1))
            if upper_bound is None or key <= upper_bound:
                entries.append((key, name))
    kind = "update" if update_based else "epoch"
    if len(entries) < n:
        raise AverageError(
            f"{directory} holds {len(entries)} {kind} checkpoint(s) "
            f"({', '.join(sorted(e[1] for e in entries)) or 'none'}) but {n} are to be averaged"
        )
    return [os.path.join(directory, name) for _, name in sorted(entries, reverse=True)[:n]]


def load_checkpoint(path: str):
    torch = _torch()
    if not os.path.isfile(path):
        raise AverageError(f"checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise AverageError(f"cannot load {path} with torch's weights-only loader: {err}") from err
    if not isinstance(state, dict) or "model" not in state:
        raise AverageError(f"{path} is not a fairseq checkpoint (no 'model' entry)")
    return state


def average_checkpoints(paths: Sequence[str]):
    """The first checkpoint of ``paths`` with the mean of all their ``model`` tensors."""
    torch = _torch()
    if not paths:
        raise AverageError("no checkpoints to average")
    first_state = None
    keys: Optional[List[str]] = None
    sums = collections.OrderedDict()
    dtypes = {}
    for path in paths:
        state = load_checkpoint(path)
        model = state["model"]
        if first_state is None:
            first_state, keys = state, list(model.keys())
            for k in keys:
                p = model[k]
                dtypes[k] = torch.float32 if p.dtype in (torch.float16, torch.bfloat16) else p.dtype
                # a copy: shared parameters must not be summed into each other
                sums[k] = p.detach().to(torch.float64 if p.is_floating_point() else p.dtype, copy=True)
            continue
        if list(model.keys()) != keys:
            missing = sorted(set(keys) - set(model))
            extra = sorted(set(model) - set(keys))
            raise AverageError(
                f"{path} has other parameters than {paths[0]}: "
                f"missing {missing[:5]}, unexpected {extra[:5]}" if (missing or extra) else
                f"{path} lists its parameters in another order than {paths[0]}"
            )
        for k in keys:
            p = model[k]
            if p.shape != sums[k].shape:
                raise AverageError(
                    f"{path}: parameter {k} has shape {tuple(p.shape)}, "
                    f"{paths[0]} has {tuple(sums[k].shape)}"
                )
            sums[k] += p.detach().to(sums[k].dtype)
    n = len(paths)
    averaged = collections.OrderedDict()
    for k, total in sums.items():
        if total.is_floating_point():
            averaged[k] = (total / n).to(dtypes[k])
        else:
            averaged[k] = total // n
    first_state["model"] = averaged
    return first_state


def save_atomic(state, path: str) -> None:
    torch = _torch()
    with atomic_write(path, "wb") as f:
        torch.save(state, f)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--inputs", nargs="+", required=True,
                        help="checkpoint files, or one directory with --num-*-checkpoints")
    parser.add_argument("--output", required=True, help="where to write the averaged checkpoint")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--num-epoch-checkpoints", type=int, metavar="N",
                       help="average the last N epoch checkpoints (checkpointE.pt) of the directory")
    group.add_argument("--num-update-checkpoints", type=int, metavar="N",
                       help="average the last N update checkpoints (checkpoint_E_U.pt) of the directory")
    parser.add_argument("--checkpoint-upper-bound", type=int, metavar="E",
                        help="with --num-*-checkpoints: ignore checkpoints after epoch/update E")
    args = parser.parse_args(argv)
    try:
        n = args.num_epoch_checkpoints or args.num_update_checkpoints
        if n is not None:
            if len(args.inputs) != 1:
                raise AverageError("--num-*-checkpoints takes exactly one directory as --inputs")
            paths = last_n_checkpoints(args.inputs[0], n, args.num_update_checkpoints is not None,
                                       args.checkpoint_upper_bound)
        else:
            paths = args.inputs
        print(f"averaging {len(paths)} checkpoint(s): " + ", ".join(paths), flush=True)
        save_atomic(average_checkpoints(paths), args.output)
    except AverageError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {args.output}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
