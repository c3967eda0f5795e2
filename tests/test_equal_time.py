"""Equal-time figures of the demos: R-Drop at the baseline's training time, and the seconds
it needs to reach the baseline's best (examples/common/equal_time.py), and the per-epoch
seconds they are read from (examples/common/fairseq_log.py)."""

import json

from examples.common import fairseq_log
from examples.common.equal_time import equal_time


def curve(*points, metric="loss"):
    return [{"epoch": i + 1, "seconds": s, metric: v} for i, (s, v) in enumerate(points)]


BASELINE = curve((10, 5.0), (20, 4.0), (30, 4.5))


def test_rdrop_at_the_baseline_time_and_the_seconds_to_the_baseline_best():
    rdrop = curve((15, 5.5), (30, 4.2), (45, 4.0), (60, 3.8))
    assert equal_time(BASELINE, rdrop, "loss", higher=False) == {
        "valid_at_baseline_time": 4.2,  # the best of the epochs done by 30 s
        "seconds_to_baseline_best": 45,  # the first epoch at least as good as 4.0
    }


def test_the_baseline_against_itself_is_its_best_and_the_time_of_it():
    assert equal_time(BASELINE, BASELINE, "loss", higher=False) == {
        "valid_at_baseline_time": 4.0, "seconds_to_baseline_best": 20}


def test_higher_is_better_metrics_compare_the_other_way():
    base = curve((10, 3.0), (20, 5.0), metric="bleu")
    rdrop = curve((12, 4.0), (24, 5.5), metric="bleu")
    assert equal_time(base, rdrop, "bleu", higher=True) == {
        "valid_at_baseline_time": 4.0, "seconds_to_baseline_best": 24}


def test_figures_are_none_where_not_reached_or_not_one_epoch_was_done_in_time():
    rdrop = curve((35, 4.8), (70, 4.6))
    assert equal_time(BASELINE, rdrop, "loss", higher=False) == {
        "valid_at_baseline_time": None, "seconds_to_baseline_best": None}
    untimed = [{"epoch": 1, "loss": 4.0}]
    assert equal_time(untimed, rdrop, "loss", higher=False) == {
        "valid_at_baseline_time": None, "seconds_to_baseline_best": None}


def test_epoch_seconds_come_from_fairseq_wall_and_count_on_across_a_resume(tmp_path):
    recs = []
    for epoch, wall in ((1, 13), (2, 24), (3, 11), (4, 22)):  # a new process from epoch 3 on
        recs.append({"epoch": epoch, "valid_loss": str(9 - epoch), "valid_num_updates": str(10 * epoch)})
        recs.append({"epoch": epoch, "train_loss": "9", "train_num_updates": str(10 * epoch),
                     "train_train_wall": "10", "train_wall": str(wall)})
    log = tmp_path / "train.log"
    log.write_text("".join(json.dumps(r) + "\n" for r in recs))
    epochs = fairseq_log.parse_train_log(str(log), ("loss",))["epochs"]
    assert [e["seconds"] for e in epochs] == [13, 24, 35, 46]
