"""What the plugin mends in current torch/fairseq when it is imported."""

import logging

import rdrop_seq  # noqa: F401  (imports apply the fixes)
from fairseq.logging import progress_bar as fairseq_progress_bar

from rdrop_seq.compat import log_file_once


def test_a_log_file_gets_one_handler_however_many_progress_bars(tmp_path):
    log_file_once()  # a second call does not wrap again
    assert not hasattr(fairseq_progress_bar.progress_bar.__wrapped__, "__wrapped__")
    logger = fairseq_progress_bar.logger
    handlers, level = list(logger.handlers), logger.level
    logger.setLevel(logging.INFO)
    try:
        first, second = tmp_path / "first.log", tmp_path / "second.log"
        for epoch in (1, 2, 3):  # fairseq-train makes one progress bar per epoch
            bar = fairseq_progress_bar.progress_bar([], log_format="json", log_file=str(first), epoch=epoch)
            bar.print({"loss": epoch}, tag="train", step=epoch)
        assert [line[:13] for line in first.read_text().splitlines()] == [
            '{"epoch": 1, ', '{"epoch": 2, ', '{"epoch": 3, ']
        # another file still gets its own handler
        bar = fairseq_progress_bar.progress_bar([], log_format="json", log_file=str(second), epoch=4)
        bar.print({"loss": 4}, tag="train", step=4)
        assert len(second.read_text().splitlines()) == 1
        assert len(first.read_text().splitlines()) == 4
    finally:
        for handler in set(logger.handlers) - set(handlers):
            logger.removeHandler(handler)
            handler.close()
        logger.setLevel(level)


def _bleu_log(totals):
    log = {"loss": 1.0, "ntokens": 10, "nsentences": 2, "sample_size": 10,
           "_bleu_sys_len": sum(totals[:1]), "_bleu_ref_len": 12}
    for i, total in enumerate(totals):
        log[f"_bleu_counts_{i}"] = total // 2
        log[f"_bleu_totals_{i}"] = total
    return log


def _validation_bleu(*steps):
    """What fairseq's translation task logs as validation ``bleu`` over validation steps with
    these n-gram totals (one list per step)."""
    from fairseq import metrics
    from fairseq.criterions.cross_entropy import CrossEntropyCriterion
    from fairseq.data import Dictionary
    from fairseq.tasks.translation import TranslationConfig, TranslationTask

    task = TranslationTask(TranslationConfig(eval_bleu=True), Dictionary(), Dictionary())
    criterion = CrossEntropyCriterion(task, sentence_avg=False)
    with metrics.aggregate() as agg:
        for totals in steps:
            task.reduce_metrics([_bleu_log(totals)], criterion)
        return agg.get_smoothed_values().get("bleu")


def test_validation_bleu_of_an_all_empty_output_is_zero_not_missing():
    # fairseq 0.12 derives no "bleu" then, and --best-checkpoint-metric bleu dies with KeyError
    assert _validation_bleu([0, 0, 0, 0]) == 0
    assert _validation_bleu([0, 0, 0, 0], [0, 0, 0, 0]) == 0


def test_validation_bleu_with_empty_steps_is_the_corpus_bleu_of_all_steps():
    bleu = _validation_bleu([8, 6, 4, 2])
    assert bleu is not None and bleu > 0
    # an empty step before or after a real one breaks nothing, and its references count: the
    # corpus BLEU of both steps (fairseq 0.12 itself would drop the empty step's reference length)
    from sacrebleu.metrics import BLEU

    corpus = round(BLEU.compute_bleu(correct=[4, 3, 2, 1], total=[8, 6, 4, 2], sys_len=8, ref_len=24,
                                     smooth_method="exp").score, 2)
    assert corpus < bleu
    assert _validation_bleu([0, 0, 0, 0], [8, 6, 4, 2]) == corpus
    assert _validation_bleu([8, 6, 4, 2], [0, 0, 0, 0]) == corpus
