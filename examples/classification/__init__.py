"""Sentence classification: the Debian-sections demo (masked-LM pre-training, then fine-tuning)."""
