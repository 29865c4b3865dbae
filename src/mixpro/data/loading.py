"""Data loaders whose worker processes report a :class:`~mixpro.data.DatasetError` as the
same one-line error the main process would have raised.

Owns :class:`DatasetLoader`. torch re-raises an exception from a loader worker as a new
exception of the same class whose text is ``"Caught DatasetError in DataLoader worker
process 0.\\nOriginal Traceback ..."``: the one-line message (a corrupt file, named) would
reach the user buried in a worker's traceback. Here a worker's dataset catches its
:class:`~mixpro.data.DatasetError`, hands the message back as the "sample" (a small picklable
record, never collated), and the main process raises it as the original error. Any other
exception keeps torch's behaviour (a bug keeps its traceback).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from torch.utils.data import DataLoader, Dataset, IterableDataset

from . import DatasetError


class _Failed:
    """A worker's :class:`DatasetError`, carried back in place of a sample or batch."""

    __slots__ = ("message",)

    def __init__(self, message: str) -> None:
        self.message = message


class _Reporting(Dataset):
    """``dataset`` whose :class:`DatasetError` becomes a :class:`_Failed` result."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getattr__(self, name: str) -> Any:  # the wrapped dataset's attributes
        if name == "dataset" or name.startswith("__"):  # unpickling; torch's hooks: ours
            raise AttributeError(name)
        return getattr(self.dataset, name)

    def __setattr__(self, name: str, value: Any) -> None:  # e.g. loader.dataset.transform
        if name == "dataset":
            object.__setattr__(self, name, value)
        else:
            setattr(self.dataset, name, value)

    def __getitem__(self, index: Any) -> Any:
        try:
            return self.dataset[index]
        except DatasetError as e:
            return _Failed(str(e))

    def __getitems__(self, indices: list) -> list:
        """A batch's samples as torch's fetcher asks for them (the dataset's own
        ``__getitems__``, e.g. a ``Subset``'s, when it has one)."""
        try:
            many = getattr(self.dataset, "__getitems__", None)
            return many(indices) if many else [self.dataset[i] for i in indices]
        except DatasetError as e:
            return [_Failed(str(e))]


class _Collate:
    """``collate`` unless a sample failed: then the first failure, uncollated."""

    def __init__(self, collate: Callable[[Any], Any]) -> None:
        self.collate = collate

    def __call__(self, samples: Any) -> Any:
        if isinstance(samples, _Failed):
            return samples
        if isinstance(samples, list):
            for s in samples:
                if isinstance(s, _Failed):
                    return s
        return self.collate(samples)


class DatasetLoader(DataLoader):
    """:class:`torch.utils.data.DataLoader` (the same keyword arguments) whose workers'
    dataset errors are raised in the main process as the one-line
    :class:`~mixpro.data.DatasetError` they were.

    With workers, a map-style ``loader.dataset`` is the dataset behind a thin wrapper that
    forwards its length and attribute reads and writes (``isinstance`` sees the wrapper); an
    ``IterableDataset``, or ``num_workers=0``, is left as it is.
    """

    def __init__(self, dataset: Dataset, **kwargs: Any) -> None:
        self._reporting = (kwargs.get("num_workers", 0) > 0
                           and not isinstance(dataset, IterableDataset))
        super().__init__(_Reporting(dataset) if self._reporting else dataset, **kwargs)
        if self._reporting:  # torch has chosen collate (batches) or convert (samples)
            self.collate_fn = _Collate(self.collate_fn)

    def __iter__(self) -> Iterator[Any]:
        it = super().__iter__()
        return _Raising(it) if self._reporting else it


class _Raising:
    """torch's loader iterator, raising a worker's :class:`_Failed` as its error."""

    def __init__(self, it: Iterator[Any]) -> None:
        self.it = it

    def __iter__(self) -> _Raising:
        return self

    def __next__(self) -> Any:
        batch = next(self.it)
        if isinstance(batch, _Failed):
            raise DatasetError(batch.message)
        return batch

    def __len__(self) -> int:
        return len(self.it)  # type: ignore[arg-type]
