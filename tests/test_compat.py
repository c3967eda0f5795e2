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
