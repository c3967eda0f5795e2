#!/usr/bin/env python3
"""Predict the class of every sentence of a binarised ``sentence_prediction`` split, in file order.

Writes one line per sentence, ``<predicted label> <gold label>`` (the labels as
the label dictionary spells them), and prints the accuracy.  The model is the
checkpoint's, in evaluation mode (no dropout); the R-Drop criterions are
registered first, so checkpoints trained with them load too.

Usage::

    python -m examples.classification.predict DATA --path checkpoint_best.pt --subset test --out test.pred
"""

import argparse
import sys


def predict(data, path, subset, out, batch_size=64, head="sentence_classification_head", cpu=True):
    import torch

    import rdrop_seq  # noqa: F401  (registers the criterions; lets torch load fairseq checkpoints)
    from fairseq import checkpoint_utils

    models, cfg, task = checkpoint_utils.load_model_ensemble_and_task([path], arg_overrides={"data": data})
    model = models[0].eval()
    if not cpu and torch.cuda.is_available():
        model = model.cuda()
    task.load_dataset(subset, combine=False, epoch=1)
    dataset = task.dataset(subset)
    labels = task.label_dictionary
    offset = labels.nspecial
    correct, rows = 0, []
    with torch.no_grad():
        for start in range(0, len(dataset), batch_size):
            batch = dataset.collater([dataset[i] for i in range(start, min(start + batch_size, len(dataset)))])
            tokens = batch["net_input"]["src_tokens"].to(next(model.parameters()).device)
            logits, _ = model(tokens, features_only=True, classification_head_name=head)
            predicted = logits.argmax(dim=-1).cpu()
            gold = batch["target"].view(-1)
            # the collater orders a batch by its ids: put it back in file order
            order = batch["id"].argsort()
            for p, g in zip(predicted[order].tolist(), gold[order].tolist()):
                rows.append((labels[p + offset], labels[g + offset]))
                correct += int(p == g)
    with open(out, "w", encoding="utf-8") as f:
        f.writelines(f"{p} {g}\n" for p, g in rows)
    return correct / max(1, len(rows)), len(rows)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("data", help="the sentence_prediction data directory (input0/, label/)")
    p.add_argument("--path", required=True, help="the checkpoint")
    p.add_argument("--subset", default="test")
    p.add_argument("--out", required=True, help="where the predictions go")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--cuda", action="store_true", help="predict on the GPU if there is one")
    a = p.parse_args(argv)
    accuracy, n = predict(a.data, a.path, a.subset, a.out, a.batch_size, cpu=not a.cuda)
    print(f"predicted {n} sentences of {a.subset}: accuracy {100 * accuracy:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
