"""A labeled dataset whose every training example brings unlabeled ones along.

Labeled example ``i`` brings the unlabeled examples ``floor(i r)`` to ``floor((i + 1) r) - 1``
of this epoch's order of the unlabeled set (a permutation drawn from the seed and the
epoch), ``r`` being the ratio: an epoch uses ``r`` unlabeled examples per labeled one, each
at most once while ``r N`` does not exceed the unlabeled set.  Which unlabeled examples a
batch brings is so a function of the seed, the epoch and its labeled examples alone:
resuming mid-epoch (fairseq saves the epoch and the position in it) gives the same batches,
and data-parallel ranks, whose batches hold different labeled examples, different unlabeled
ones.  A batch counts the tokens of both against ``--max-tokens``; ``--max-sentences`` counts
the labeled sentences.  The collated batch is the labeled one plus ``"unlabeled"``: the
unlabeled batch, which has no ``target``.
"""

import math

import numpy as np

from fairseq.data import FairseqDataset


class WithUnlabeledDataset(FairseqDataset):
    def __init__(self, labeled, unlabeled, ratio: float, seed: int):
        if not ratio > 0:
            raise ValueError(f"--unlabeled-ratio={ratio}: must be > 0")
        if len(unlabeled) == 0:
            raise ValueError("the unlabeled split is empty")
        self.labeled, self.unlabeled, self.ratio, self.seed = labeled, unlabeled, float(ratio), int(seed)
        self.set_epoch(1)

    def set_epoch(self, epoch):
        super().set_epoch(epoch)
        for dataset in (self.labeled, self.unlabeled):
            if hasattr(dataset, "set_epoch"):
                dataset.set_epoch(epoch)
        self.order = np.random.RandomState([self.seed, epoch]).permutation(len(self.unlabeled))

    def companions(self, index):
        """The unlabeled examples that labeled example ``index`` brings this epoch."""
        start, end = math.floor(index * self.ratio), math.floor((index + 1) * self.ratio)
        return [int(self.order[k % len(self.order)]) for k in range(start, end)]

    def __getitem__(self, index):
        return {"labeled": self.labeled[index],
                "unlabeled": [self.unlabeled[j] for j in self.companions(index)]}

    def __len__(self):
        return len(self.labeled)

    def collater(self, samples):
        batch = self.labeled.collater([s["labeled"] for s in samples])
        extra = [u for s in samples for u in s["unlabeled"]]
        if batch and extra:
            unlabeled = self.unlabeled.collater(extra)
            unlabeled.pop("target", None)  # none is there: never hand one on
            batch["unlabeled"] = unlabeled
        return batch

    def num_tokens(self, index):
        return self.labeled.num_tokens(index) + sum(self.unlabeled.num_tokens(j) for j in self.companions(index))

    def num_tokens_vec(self, indices):
        return np.array([self.num_tokens(i) for i in indices], dtype=np.int64)

    def size(self, index):
        return self.labeled.size(index)

    @property
    def sizes(self):
        return self.labeled.sizes

    def ordered_indices(self):
        return self.labeled.ordered_indices()

    def filter_indices_by_size(self, indices, max_sizes):
        return self.labeled.filter_indices_by_size(indices, max_sizes)

    @property
    def supports_prefetch(self):
        return False

    @property
    def can_reuse_epoch_itr_across_epochs(self):
        return False  # the unlabeled examples, and so the batches' sizes, change with the epoch
