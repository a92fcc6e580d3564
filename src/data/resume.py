"""Training loaders that a resumed run continues batch for batch where the stopped run was.

Lightning saves ``state_dict()`` of every training DataLoader that has one into each checkpoint and
hands it to ``load_state_dict`` before a resumed run draws its first batch. A
:class:`ResumableLoader` records where training stands in its stream:

    {"epoch": e, "batches": k}    k batches of epoch e have been trained on

and a resumed loader leaves those k out without producing them: through a :class:`ResumableSampler`
for map-style data (one index per batch, ``batch_size=None``), or through the ``start`` attribute of
a :class:`ResumableStream` (an iterable dataset of whole batches, as batch ``start`` is the first
one it makes). A checkpoint taken after an epoch's last batch resumes at batch 0 of the next epoch.

``batches`` is the trainer's count of the epoch's batches it has stepped through (the loop may hold
one more that it fetched ahead); without a trainer, the count of batches this loader handed out.
"""
from __future__ import annotations

from typing import Any, Callable, Iterator, Optional

from torch.utils.data import DataLoader, Dataset, DistributedSampler, IterableDataset


def batches_consumed(trainer: Any) -> Optional[int]:
    """Training batches of the current epoch that ``trainer`` has stepped through (None: no trainer)."""
    if trainer is None:
        return None
    return int(trainer.fit_loop.epoch_loop.batch_progress.current.processed)


class ResumableSampler(DistributedSampler):
    """All indices of ``dataset`` in ``order(epoch)``, the same on every rank (``num_replicas`` 1, so
    Lightning keeps it under DDP and calls ``set_epoch`` at every epoch start). ``start`` > 0 leaves
    out the first ``start`` indices of the next iteration only. Subclasses that draw a permuted
    ``order`` set ``shuffled`` (what Lightning reads as the sampler's ``shuffle``)."""

    shuffled = False

    def __init__(self, dataset: Dataset, seed: int = 0):
        super().__init__(dataset, num_replicas=1, rank=0, shuffle=self.shuffled, seed=int(seed), drop_last=False)
        self.start = 0

    def order(self, epoch: int) -> list[int]:
        return list(range(len(self.dataset)))

    def __iter__(self) -> Iterator[int]:
        start, self.start = self.start, 0
        return iter(self.order(self.epoch)[start:])

    def __len__(self) -> int:
        return len(self.dataset)


class ResumableStream(IterableDataset):
    """An endless iterable of whole batches; the next iteration begins at batch ``start`` (then 0)."""

    start: int = 0

    def take_start(self) -> int:
        start, self.start = int(self.start), 0
        return start


class ResumableLoader(DataLoader):
    """A DataLoader of whole batches (``batch_size=None``) whose place in the stream is saved in
    checkpoints. ``progress``: the batches of the current epoch training has consumed (the data
    module passes the trainer's count); None or returning None: the batches this loader handed out.
    With a sampler Lightning substituted (``overfit_batches``) it restarts at the sampler's start."""

    def __init__(self, *args: Any, progress: Optional[Callable[[], Optional[int]]] = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        if self.batch_size is not None:
            raise ValueError("ResumableLoader serves whole batches: pass batch_size=None")
        self._progress = progress
        self._handed_out = 0

    def __iter__(self) -> Iterator[Any]:
        # a generator: the sampler's order is drawn at the first batch, after Lightning's set_epoch
        start = self.sampler.start if isinstance(self.sampler, ResumableSampler) else int(getattr(self.dataset, "start", 0))
        iterator = super().__iter__()  # the sampler, or the stream in each worker, takes its start here
        if isinstance(self.dataset, ResumableStream):
            self.dataset.start = 0  # the workers took their copies; the next epoch begins at batch 0
        self._handed_out = start
        for batch in iterator:
            self._handed_out += 1
            yield batch

    def state_dict(self) -> dict[str, int]:
        done = self._progress() if self._progress is not None else None
        epoch = self.sampler.epoch if isinstance(self.sampler, ResumableSampler) else 0
        return {"epoch": int(epoch), "batches": int(self._handed_out if done is None else done)}

    def load_state_dict(self, state: dict[str, int]) -> None:
        epoch, batches = int(state.get("epoch", 0)), int(state.get("batches", 0))
        if isinstance(self.sampler, ResumableSampler):
            if batches >= len(self.sampler):  # saved after the epoch's last batch: the next epoch, whole
                epoch, batches = epoch + 1, 0
            self.sampler.set_epoch(epoch)
            self.sampler.start = batches
        elif isinstance(self.dataset, ResumableStream):
            self.dataset.start = batches
        else:  # Lightning put its own sampler in (overfit_batches): it starts where it starts
            batches = 0
        self._handed_out = batches
