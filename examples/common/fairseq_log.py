"""Reading fairseq-train's json log: the per-epoch validation values and training averages, the
update count, and the epoch whose checkpoint fairseq keeps as ``checkpoint_best.pt``.
"""

import json
import os
import re


def parse_train_log(path, metrics=("loss", "nll_loss", "ppl")):
    """Per-epoch ``metrics`` and the update count from a json-format fairseq log.

    Each epoch's row holds the validation values (``loss``) and the training averages, taken with
    dropout on, as ``train_loss``: their gap shows whether a run overfits; and ``seconds``, fairseq's
    ``wall`` when the epoch was done, counted on across resumes (a resumed process's clock starts at
    the seconds of the epoch it resumed after).
    """
    rows, updates, offset, last_wall = {}, 0, 0.0, 0.0
    if not os.path.exists(path):
        return {"epochs": [], "updates": updates}
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            # the log file holds bare json records; stdout prefixes them with "| valid | "
            m = re.search(r"(\{\".*\})\s*$", line)
            if not m:
                continue
            try:
                rec = json.loads(m.group(1))
            except ValueError:
                continue
            if "train_num_updates" in rec:
                updates = max(updates, int(float(rec["train_num_updates"])))
            if "epoch" not in rec:
                continue
            epoch = int(rec["epoch"])
            if "valid_loss" in rec:
                row = {k: float(rec[f"valid_{k}"]) for k in metrics if f"valid_{k}" in rec}
                if "valid_num_updates" in rec:
                    row["updates"] = int(float(rec["valid_num_updates"]))
                    updates = max(updates, row["updates"])
            elif "train_loss" in rec:  # the epoch's training summary (after its validation)
                row = {f"train_{k}": float(rec[f"train_{k}"]) for k in metrics if f"train_{k}" in rec}
                if "train_wall" in rec:
                    wall = float(rec["train_wall"])
                    if wall < last_wall:  # a new process: its clock restarted
                        offset = rows.get(epoch - 1, {}).get("seconds", offset + last_wall)
                    last_wall = wall
                    row["seconds"] = offset + wall
            else:
                continue
            rows.setdefault(epoch, {"epoch": epoch}).update(row)  # a resumed epoch's values replace
    # an epoch without validation (interrupted after its training summary) is no point of a curve
    epochs = [rows[e] for e in sorted(rows) if any(k in rows[e] for k in metrics)]
    return {"epochs": epochs, "updates": updates}


# validation metrics where higher is better; lower is better for the others (loss, ppl)
HIGHER_IS_BETTER = ("bleu", "accuracy")


def checkpoint_epoch(curve, metric, higher_is_better):
    """The epoch row whose checkpoint fairseq keeps as ``checkpoint_best.pt``: the best
    ``metric``, the later epoch on a tie (fairseq replaces the best on ``>=`` / ``<=``)."""
    sign = 1 if higher_is_better else -1
    rows = [row for row in curve if row.get(metric) is not None]
    return max(reversed(rows), key=lambda row: sign * row[metric], default=None)  # max keeps the first best
