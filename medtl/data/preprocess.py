"""How an image becomes the network's input, as one record that travels with the weights.

Training, evaluation, prediction, serving and export all use `Preprocess`, so a deployed model sees
exactly the pixels that evaluation saw (8-bit, squashed to the run's size, the run's channels, the
weights' mean/std). It is saved in every checkpoint."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torchvision.transforms import v2

from medtl.data.images import DEFAULT_MAX_PIXELS, Decoding, decode_image, open_image


@dataclass(frozen=True)
class Preprocess:
    size: int  # square input, px: images are squashed to size x size (aspect ratio not kept)
    in_chans: int  # 3: gray replicated; 1: the first conv adapted to one channel
    mean: tuple[float, ...]  # the weights' RGB statistics
    std: tuple[float, ...]
    decoding: Decoding = field(default_factory=Decoding)

    def stats(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean, std) per input channel, shaped (1, C, 1, 1); one channel takes the mean of the RGB values
        (as timm's adapted first conv does)."""
        m = torch.tensor(self.mean, dtype=torch.float32).view(1, -1, 1, 1)
        s = torch.tensor(self.std, dtype=torch.float32).view(1, -1, 1, 1)
        if self.in_chans == 1:
            m, s = m.mean(1, keepdim=True), s.mean(1, keepdim=True)
        return m, s

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 batch (N, C, S, S) -> float input, scaled to 0..1 and normalised, channels_last."""
        m, s = (t.to(x.device) for t in self.stats())
        return ((x.float() / 255.0 - m) / s).contiguous(memory_format=torch.channels_last)

    def pixels(self, img: Image.Image) -> torch.Tensor:
        """uint8 (C, S, S) of an opened image, with the channels the model takes."""
        return match_channels(torch.from_numpy(decode_image(img, self.size, self.decoding.mode)), self.in_chans)

    def load(self, ref: str | Path) -> torch.Tensor:
        """`pixels` of a file or array image (DICOM through the run's window)."""
        return self.pixels(open_image(str(ref), self.decoding.window, self.decoding.max_pixels, self.reduce_to))

    @property
    def reduce_to(self) -> int:
        """The size a JPEG may be decoded down to (twice it at least), or 0 for full decoding."""
        return self.size if self.decoding.fast_jpeg else 0

    def to_dict(self) -> dict[str, Any]:
        return {"image_size": self.size, "in_chans": self.in_chans, "mean": list(self.mean), "std": list(self.std),
                "dicom_window": self.decoding.window, "convert_mode": self.decoding.mode,
                "max_pixels": self.decoding.max_pixels, "fast_jpeg": self.decoding.fast_jpeg}

    @classmethod
    def from_dict(cls, d: dict[str, Any], decoding: Decoding | None = None) -> "Preprocess":
        """From `to_dict`; checkpoints written before the decoding was stored take it from their config."""
        dec = decoding or Decoding(d.get("dicom_window", "auto"), d.get("convert_mode", "auto"),
                                   int(d.get("max_pixels", DEFAULT_MAX_PIXELS)), bool(d.get("fast_jpeg", False)))
        return cls(int(d["image_size"]), int(d["in_chans"]), tuple(map(float, d["mean"])), tuple(map(float, d["std"])),
                   dec)


def match_channels(x: torch.Tensor, in_chans: int) -> torch.Tensor:
    """uint8 (C,H,W) with C in {1,3} to `in_chans`: gray replicated to 3, or RGB to luminance."""
    if x.shape[-3] == in_chans:
        return x
    if in_chans == 3:
        return x.expand(*x.shape[:-3], 3, *x.shape[-2:]).contiguous()
    return v2.functional.rgb_to_grayscale(x)
