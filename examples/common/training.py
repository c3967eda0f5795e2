"""A demo's resumable ``fairseq-train`` run and the records (``started.json``, ``done.json``) that
decide whether it starts, is skipped, resumes, continues or starts afresh (:func:`train_run`)."""

import hashlib
import os
import subprocess
import time

from examples.common.base import DemoError, child_env, display, rel, say
from examples.common.fairseq_log import parse_train_log
from examples.common.provenance import utc_now
from examples.common.stages import read_json, sha256_file, stage_key, unused_path, write_json

# The flags that set a run's budget, not its settings: a finished run whose
# budget was used up is continued (from checkpoint_last.pt) when it grows.
BUDGET_FLAGS = ("--max-epoch", "--patience")


def _budget(cmd):
    return {f: cmd[i + 1] for i, f in enumerate(cmd[:-1]) if f in BUDGET_FLAGS}


def _full_key(cmd):
    """The run's key: its command, paths aside (tool and absolute paths)."""
    return stage_key(cmd=[c for c in cmd[1:] if not os.path.isabs(c)])


def _settings_key(cmd):
    """The key of everything but the budget flags (and paths)."""
    return stage_key(cmd=[c for i, c in enumerate(cmd[1:], 1)
                          if c not in BUDGET_FLAGS and cmd[i - 1] not in BUDGET_FLAGS and not os.path.isabs(c)])


def _match(record, cmd, data=None):
    """``"same"`` (settings and budget), ``"budget"`` (only the budget differs) or None (other
    settings, other ``data``: the binarised data's key, or a record without these keys)."""
    if data is not None and record.get("data_key") != data:
        return None
    if record.get("settings_key") != _settings_key(cmd):
        return None
    return "same" if record.get("budget") == _budget(cmd) else "budget"


def _record(cmd, data=None, **extra):
    data_key = {} if data is None else {"data_key": data}
    return dict(key=_full_key(cmd), settings_key=_settings_key(cmd), budget=_budget(cmd), **data_key, **extra)


def data_key(data_bin):
    """A hash of what a training run reads from ``data_bin``: its dictionaries, ``.bin``, ``.idx`` files."""
    h = hashlib.sha256()
    for name in sorted(os.listdir(data_bin)):
        if name.endswith((".bin", ".idx")) or (name.startswith("dict") and name.endswith(".txt")):
            h.update(name.encode() + b"\0" + sha256_file(os.path.join(data_bin, name)).encode())
    return h.hexdigest()[:16]


# how often a running training's time so far is written to its started.json
TIME_RECORD_SECONDS = 60


def _count_time(started, cmd, data, seconds, history, stopped=False):
    """Record the seconds an unfinished run has trained so far and its ``history`` of segments, for
    when it resumes (``stopped``: its training process has ended)."""
    extra = {"stopped": True} if stopped else {}
    write_json(started, _record(cmd, data, prior_seconds=round(seconds, 1), history=history, **extra))


def _segment(threads, t0, end):
    """One training process's entry of a run's history: when it started, with how many threads,
    how long it ran and how it ended (``running``, ``finished``, ``failed``, ``interrupted``)."""
    return {"start": utc_now(t0), "threads": threads, "seconds": round(time.time() - t0, 1), "end": end}


def _with_log(info, save_dir, metrics):
    """A finished run's record with its curve read afresh from its log (this parser's fields)."""
    log = parse_train_log(os.path.join(save_dir, "train.log"), metrics)
    return dict(info, epochs=log["epochs"], updates=log["updates"] or info.get("updates"))


def stopped_early(budget, trained):
    """Whether a finished run of ``budget`` that trained ``trained`` epochs stopped before its
    ``--max-epoch`` (on ``--patience``)."""
    return trained < int(budget.get("--max-epoch", 0))  # (no --max-epoch: 0, never)


def training_record(info):
    """The fields of a run's per-seed record that come from its training (``info``, from
    :func:`train_run`): epochs and updates trained, whether it stopped early, its time and
    history, its validation curve and its command."""
    epochs = info["epochs"]
    return {
        "epochs": len(epochs),
        "updates": info["updates"],
        "stopped_early": stopped_early(info["budget"], len(epochs)),
        "seconds": info["seconds"],
        "history": info.get("history", []),
        "curve": epochs,
        "train_command": info["command"],
    }


def epochs_text(n):
    """``1 epoch``, ``3 epochs``: a count of epochs as the messages write it."""
    return f"{n} epoch{'' if n == 1 else 's'}"


def _refuse_fewer_epochs(run, save_dir, cmd, trained):
    """A DemoError if the run in ``save_dir`` has trained more epochs than ``cmd``'s ``--max-epoch``."""
    new_max = int(_budget(cmd).get("--max-epoch", 0))
    if 0 < new_max < trained:
        raise DemoError(f"train {run}: {rel(save_dir)} holds a run of {trained} epochs; --max-epoch {new_max} "
                        "would not undo that: give a larger --max-epoch, or another --work-dir")


def train_run(cmd, save_dir, run, threads, metrics, data=None):
    """Run ``fairseq-train`` ``cmd`` (which saves into ``save_dir``), or skip/resume it; the run's info
    (seconds over all its invocations, the command, the updates and per-epoch ``metrics`` of its log).

    A run finished with the same command (paths aside) is skipped; one whose used-up ``--max-epoch``
    grew is continued (not one that stopped early on an unchanged ``--patience``); an interrupted
    or failed one resumes, its time so far counted (written every minute, so a run killed outright
    keeps it too); one of other settings or ``data`` (:func:`data_key`) starts afresh, the old
    directory kept as ``<save_dir>.replaced-<date>``.
    """
    done = os.path.join(save_dir, "done.json")
    started = os.path.join(save_dir, "started.json")
    prior_seconds, resumed, history = 0.0, False, []
    finished = read_json(done) if os.path.exists(done) else None
    match = _match(finished, cmd, data) if finished else None
    if match == "same":
        say(f"train {run}: done already ({rel(save_dir)})")
        return _with_log(finished, save_dir, metrics)
    if match == "budget":
        trained = max((e["epoch"] for e in finished.get("epochs", [])), default=0)
        new_budget, old_budget = _budget(cmd), finished["budget"]
        _refuse_fewer_epochs(run, save_dir, cmd, trained)
        if stopped_early(old_budget, trained) and new_budget.get("--patience") == old_budget.get("--patience"):
            say(f"train {run}: done already, stopped early at epoch {trained} ({rel(save_dir)})")
            return _with_log(finished, save_dir, metrics)
        say(f"train {run}: continuing the finished run of {trained} epochs with the larger budget")
        prior_seconds, resumed, history = float(finished.get("seconds", 0.0)), True, finished.get("history", [])
        _count_time(started, cmd, data, prior_seconds, history)
        os.remove(done)
    else:
        state = read_json(started) if os.path.exists(started) else None
        resumed = state is not None and _match(state, cmd, data) is not None
        if resumed:
            # an interrupted run that had trained past this budget would stop at once
            # and be recorded as this budget's run
            log = parse_train_log(os.path.join(save_dir, "train.log"), metrics)
            _refuse_fewer_epochs(run, save_dir, cmd, max((e["epoch"] for e in log["epochs"]), default=0))
            prior_seconds = float(state.get("prior_seconds", 0.0))
            # a segment still marked running was killed outright
            history = [dict(h, end="killed") if h.get("end") == "running" else h for h in state.get("history", [])]
        elif os.path.exists(save_dir):
            # a run of other settings or data: start afresh, keeping the old one aside
            stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(os.path.getmtime(save_dir)))
            aside = unused_path(f"{save_dir}.replaced-{stamp}")
            os.replace(save_dir, aside)
            say(f"train {run}: {rel(save_dir)} held a run of other settings or data; kept as {rel(aside)}")
        os.makedirs(save_dir, exist_ok=True)
        _count_time(started, cmd, data, prior_seconds, history)
    say(f"train {run}: {'resuming' if resumed else 'starting'}; fairseq's log follows")
    say("  " + display(cmd))
    t0 = time.time()

    def count_time(end, stopped=True):  # this process's time so far, ended with ``end``
        _count_time(started, cmd, data, prior_seconds + time.time() - t0, history + [_segment(threads, t0, end)],
                    stopped)

    proc = subprocess.Popen(cmd, env=child_env(threads))
    try:
        while True:
            try:
                returncode = proc.wait(timeout=TIME_RECORD_SECONDS)
                break
            except subprocess.TimeoutExpired:
                count_time("running", stopped=False)  # on disk, should this process be killed outright
    except BaseException:  # interrupted (Ctrl-C): the time spent still counts when it resumes
        proc.kill()
        proc.wait()
        count_time("interrupted")
        raise
    seconds = prior_seconds + time.time() - t0
    if returncode != 0:
        count_time("failed")
        raise DemoError(f"fairseq-train ({run}) failed with exit code {returncode}; see {rel(save_dir)}/train.log")
    if not os.path.exists(os.path.join(save_dir, "checkpoint_best.pt")):
        raise DemoError(f"fairseq-train ({run}) wrote no checkpoint_best.pt in {rel(save_dir)}")
    log = parse_train_log(os.path.join(save_dir, "train.log"), metrics)
    info = _record(cmd, data, seconds=round(seconds, 1), resumed=resumed, updates=log["updates"], epochs=log["epochs"],
                   command=display(cmd), history=history + [_segment(threads, t0, "finished")])
    write_json(done, info)
    say(f"train {run}: finished in {seconds:.0f}s, {log['updates']} updates, {epochs_text(len(log['epochs']))}")
    return info
