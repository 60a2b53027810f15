"""What a model is fed: the image store's rows as tensors, the training augmentation, class weights."""

from __future__ import annotations

import queue
import threading
from typing import Iterable, Iterator, TypeVar

import numpy as np
import torch
from torch.utils.data import Dataset
from torchvision.transforms import v2

from medtl.data.preprocess import match_channels

T = TypeVar("T")


def class_weights(labels: np.ndarray, num_classes: int) -> torch.Tensor:
    """Inverse-frequency weights N / (K * n_c), the seed study's class weighting."""
    counts = np.bincount(labels, minlength=num_classes).astype(np.float64)
    return torch.tensor(len(labels) / (num_classes * np.maximum(counts, 1)), dtype=torch.float32)


def train_transform(size: int, hflip: bool) -> v2.Compose:
    """The seed study's augmentation on uint8 tensors: resized crop, flip, small rotation, jitter."""
    ops = [v2.RandomResizedCrop(size, scale=(0.8, 1.0), ratio=(0.9, 1.1), antialias=True)]
    if hflip:
        ops.append(v2.RandomHorizontalFlip())
    ops += [v2.RandomRotation(10), v2.ColorJitter(brightness=0.1, contrast=0.1)]
    return v2.Compose(ops)


class StoreDataset(Dataset):
    """Rows of an ImageStore as uint8 CxSxS tensors with the channels the model takes."""

    def __init__(self, array: np.ndarray, rows: np.ndarray, labels: np.ndarray, in_chans: int, transform=None):
        self.array, self.rows, self.labels = array, rows, labels
        self.in_chans, self.transform = in_chans, transform

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int):
        x = torch.from_numpy(np.array(self.array[self.rows[i]]))
        if self.transform is not None:  # before the channels are matched: a gray image is augmented once
            x = self.transform(x)
        return match_channels(x, self.in_chans), int(self.labels[i])


class _Failed:
    def __init__(self, exc: BaseException):
        self.exc = exc


def in_background(items: Iterable[T], depth: int = 2) -> Iterator[T]:
    """`items`, made by a background thread up to `depth` ahead: loading and augmenting the next batch overlaps
    the forward pass of this one (torch kernels and the inference engines release the GIL). The thread's
    error is raised here; when the consumer stops early (an error, Ctrl-C), the thread ends."""
    out: queue.Queue = queue.Queue(depth)
    stop, end = threading.Event(), object()

    def put(item) -> bool:
        while not stop.is_set():
            try:
                out.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def work() -> None:
        torch.set_num_threads(1)  # this thread's own OpenMP setting: never a second team beside the forward's
        try:
            for item in items:
                if not put(item):
                    return
            put(end)
        except BaseException as exc:  # handed to the consumer, which raises it
            put(_Failed(exc))

    threading.Thread(target=work, name="medtl-prefetch", daemon=True).start()
    try:
        while (item := out.get()) is not end:
            if isinstance(item, _Failed):
                raise item.exc
            yield item
    finally:
        stop.set()
