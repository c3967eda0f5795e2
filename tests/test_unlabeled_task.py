"""The task sentence_prediction_unlabeled: an unlabeled split mixed into every training batch
(reproducibly, resumably, disjoint across data-parallel ranks, its labels never read), and
fairseq-train with semi-supervised R-Drop end to end."""

import random
import re

import pytest
import torch

import rdrop_seq  # noqa: F401  (registers the task)
from rdrop_seq.tasks.sentence_prediction_unlabeled import (
    SentencePredictionUnlabeledConfig,
    SentencePredictionUnlabeledTask,
)
from tests.conftest import run

WORDS = [f"w{i}" for i in range(30)]
LABELED, UNLABELED = 40, 100


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """input0/{train,valid,valid1} (valid1: the unlabeled split) and label/{train,valid}."""
    work = tmp_path_factory.mktemp("unlabeled")
    rng = random.Random(0)

    def lines(n):
        return "".join(" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 9))) + "\n" for _ in range(n))

    for name, n in (("train", LABELED), ("valid", 12), ("unlab", UNLABELED)):
        (work / f"{name}.input0").write_text(lines(n))
    for name, n in (("train", LABELED), ("valid", 12)):
        (work / f"{name}.label").write_text("".join(rng.choice(["net", "libs", "admin"]) + "\n" for _ in range(n)))
    run("fairseq-preprocess", "--only-source", "--trainpref", "train.input0", "--validpref",
        "valid.input0,unlab.input0", "--destdir", "bin/input0", "--workers", 1, cwd=work)
    run("fairseq-preprocess", "--only-source", "--trainpref", "train.label", "--validpref", "valid.label",
        "--destdir", "bin/label", "--workers", 1, cwd=work)
    return work / "bin"


def make_task(data, **overrides):
    overrides.setdefault("unlabeled_ratio", 1.5)
    cfg = SentencePredictionUnlabeledConfig(
        data=str(data), num_classes=3, unlabeled_subset="valid1", seed=1,
        train_subset="train", max_positions=64, init_token=0, separator_token=2, regression_target=False,
        classification_head_name="sentence_classification_head", **overrides)
    return SentencePredictionUnlabeledTask.setup_task(cfg)


def batches(task, shard=0, shards=1, epoch=1):
    dataset = task.dataset("train")
    itr = task.get_batch_iterator(dataset, max_tokens=120, seed=1, num_shards=shards, shard_id=shard,
                                  epoch=epoch, num_workers=0, disable_iterator_cache=True)
    return itr, itr.next_epoch_itr(shuffle=True)


def sentences(batch):
    """The unlabeled sentences of a batch, as token tuples without padding."""
    tokens = batch["unlabeled"]["net_input"]["src_tokens"]
    return [tuple(t[t.ne(1)].tolist()) for t in tokens]


def test_training_batches_bring_the_ratio_of_unlabeled_sentences_without_labels(data):
    task = make_task(data)
    task.load_dataset("train")
    task.load_dataset("valid")
    _, epoch = batches(task)
    labeled = unlabeled = 0
    for batch in epoch:
        assert "target" in batch and "target" not in batch["unlabeled"]
        labeled += batch["nsentences"]
        unlabeled += batch["unlabeled"]["net_input"]["src_tokens"].size(0)
    assert labeled == LABELED and unlabeled == int(1.5 * LABELED)
    assert "unlabeled" not in task.dataset("valid").collater([task.dataset("valid")[0]])


def test_the_unlabeled_sentences_are_reproducible_change_with_the_epoch_and_resume_mid_epoch(data):
    task = make_task(data)
    task.load_dataset("train")
    first = [sentences(b) for b in batches(task)[1]]
    assert first == [sentences(b) for b in batches(task)[1]]
    assert first != [sentences(b) for b in batches(task, epoch=2)[1]]
    itr, epoch = batches(task)
    for _ in range(2):
        next(epoch)
    state = itr.state_dict()
    resumed_itr, _ = batches(task)
    resumed_itr.load_state_dict(state)
    rest = [sentences(b) for b in resumed_itr.next_epoch_itr(shuffle=True)]
    assert rest == first[2:]


def test_data_parallel_ranks_see_disjoint_unlabeled_sentences(data):
    task = make_task(data, unlabeled_ratio=1.0)
    task.load_dataset("train")
    dataset = task.dataset("train")
    seen = []
    for shard in (0, 1):
        _, epoch = batches(task, shard=shard, shards=2)
        ids = set()
        for batch in epoch:
            for i in batch.get("id", torch.tensor([])).tolist():  # a rank's padding batch is empty
                ids.update(dataset.companions(i))
        seen.append(ids)
    assert seen[0] and seen[1] and not seen[0] & seen[1]


def test_an_unlabeled_split_with_label_files_is_refused(data, tmp_path):
    import shutil

    copy = tmp_path / "bin"
    shutil.copytree(data, copy)
    for ext in ("bin", "idx"):
        shutil.copy(copy / "label" / f"valid.{ext}", copy / "label" / f"valid1.{ext}")
    task = make_task(copy)
    with pytest.raises(ValueError, match="--unlabeled-subset valid1: the split has label files"):
        task.load_dataset("train")


def test_fairseq_train_with_semi_supervised_rdrop(data):
    log = run(
        "rdrop-train", str(data), "--task", "sentence_prediction_unlabeled", "--unlabeled-subset", "valid1",
        "--unlabeled-ratio", 2, "--num-classes", 3, "--arch", "roberta", "--encoder-layers", 1,
        "--encoder-embed-dim", 16, "--encoder-ffn-embed-dim", 32, "--encoder-attention-heads", 2,
        "--max-positions", 64, "--init-token", 0, "--separator-token", 2,
        "--criterion", "rdrop_sentence_prediction", "--rdrop-alpha", 1, "--rdrop-unlabeled-alpha", 1,
        "--unlabeled-confidence", 0.3, "--optimizer", "adam", "--lr", "1e-3", "--batch-size", 8,
        "--max-epoch", 2, "--log-format", "simple", "--log-interval", 1, "--no-save", "--cpu",
        "--num-workers", 0, "--seed", 1, "--best-checkpoint-metric", "accuracy",
        "--maximize-best-checkpoint-metric", cwd=data,
    )
    assert re.search(r"unlabeled_kl=[\d.]+, unlabeled_kept=[\d.]+", log), log[-3000:]
    assert re.search(r"valid on 'valid' subset \| loss [\d.]+ .* accuracy [\d.]+", log), log[-3000:]
    torch.manual_seed(0)  # nothing left seeded differently for the tests after this one
