"""data.decode=gpu: loader workers only read JPEG bytes; nvJPEG decodes whole batches on the GPU.

A worker's item is the file's bytes (a 1-D uint8 tensor) and its EXIF orientation (read from the header,
no pixel decoded) for a JPEG; any other format, or a JPEG nvJPEG cannot read (CMYK, damaged), is decoded
on the CPU as usual (load_rgb) and travels as a (3, H, W) uint8 tensor. `decode_batch` turns a batch of
those into one (B, 3, H, W) uint8 tensor on the device: torchvision.io.decode_jpeg(device="cuda") for the
JPEGs (one call for the batch), the EXIF orientation applied with flips and transposes (decode_jpeg only
applies it on the CPU), then each image resized on the device to the stack's first Resize. The rest of the
stack runs there too (transforms.DeviceAugmentation). JPEGs decode at full size here: draft mode is a
libjpeg (CPU) feature.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision.transforms import v2

from noodlenext.data.images import exif_orientation, load_rgb
from noodlenext.data.transforms import decode_size

JPEG_MAGIC = b"\xff\xd8\xff"


def require_cuda(option: str = "data.decode=gpu") -> None:
    """A clear error where no CUDA device is visible."""
    if not torch.cuda.is_available():
        raise RuntimeError(
            f"{option} decodes JPEGs with nvJPEG (torchvision.io.decode_jpeg on a CUDA device), and no CUDA "
            "GPU is visible here (torch.cuda.is_available() is False): use data.decode=cpu"
        )


def upright(image: torch.Tensor, orientation: int) -> torch.Tensor:
    """(C, H, W) as stored -> upright, per EXIF orientation (the same result as ImageOps.exif_transpose)."""
    if orientation == 2:
        return image.flip(-1)
    if orientation == 3:
        return image.flip(-1, -2)
    if orientation == 4:
        return image.flip(-2)
    if orientation == 5:
        return image.transpose(-1, -2)
    if orientation == 6:
        return torch.rot90(image, -1, (-2, -1))
    if orientation == 7:
        return image.transpose(-1, -2).flip(-1, -2)
    if orientation == 8:
        return torch.rot90(image, 1, (-2, -1))
    return image


def _cpu_decode(source: Any, resize: Any) -> torch.Tensor:
    """load_rgb (upright, JPEGs in draft mode) and the Resize, as a (3, H, W) uint8 tensor."""
    return v2.functional.pil_to_tensor(resize(load_rgb(source, decode_size(resize))))


class EncodedImages(Dataset):
    """A data set's (path, label) samples as loader items for decode_batch: (JPEG bytes or decoded image,
    EXIF orientation, label). resize: the first Resize of the stack (used for the CPU-decoded ones)."""

    def __init__(self, samples: Sequence[tuple[Path, int]], resize: Any) -> None:
        self.samples, self.resize = list(samples), resize

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, int]:
        path, label = self.samples[index]
        try:
            data = Path(path).read_bytes()
            if data[:3] == JPEG_MAGIC:
                with Image.open(io.BytesIO(data)) as im:  # the header only
                    if im.mode in ("RGB", "L"):  # nvJPEG's RGB output covers YCbCr and grayscale
                        encoded = torch.frombuffer(bytearray(data), dtype=torch.uint8)
                        return encoded, exif_orientation(im), label
            return _cpu_decode(path, self.resize), 1, label
        except Exception as e:  # checked at setup, so only a file changed since then lands here
            raise RuntimeError(f"could not read {path} (it was readable at setup): {e}") from e


def collate_encoded(
    items: Sequence[tuple[torch.Tensor, int, int]],
) -> tuple[list[torch.Tensor], list[int], torch.Tensor]:
    """Items of different byte lengths and sizes: lists, not one stacked tensor."""
    data = [item[0] for item in items]
    orientations = [int(item[1]) for item in items]
    return data, orientations, torch.tensor([int(item[2]) for item in items], dtype=torch.long)


def decode_batch(
    data: Sequence[torch.Tensor], orientations: Sequence[int], resize: Any, device: str | torch.device
) -> torch.Tensor:
    """(B, 3, H, W) uint8 on `device`: the JPEG bytes (1-D tensors) decoded there in one nvJPEG call (any
    device torchvision.io.decode_jpeg takes: "cpu" runs libjpeg, for tests), upright, then resized there.
    Already decoded (3, H, W) images are moved and resized alike."""
    from torchvision.io import ImageReadMode, decode_jpeg

    device = torch.device(device)
    jpegs = [i for i, d in enumerate(data) if d.ndim == 1]
    out: list[torch.Tensor | None] = [None] * len(data)
    if jpegs:
        with warnings.catch_warnings():  # torchvision 0.29 marks its decoders deprecated (for TorchCodec)
            warnings.filterwarnings("ignore", message=".*deprecated.*")
            try:
                decoded = decode_jpeg([data[i] for i in jpegs], ImageReadMode.RGB, device)
                for i, image in zip(jpegs, decoded, strict=True):
                    out[i] = upright(image, orientations[i])
            except RuntimeError:  # one image nvJPEG cannot read fails the batch: decode them one by one
                for i in jpegs:
                    try:
                        out[i] = upright(decode_jpeg(data[i], ImageReadMode.RGB, device), orientations[i])
                    except RuntimeError:  # refused again: PIL on the CPU (upright and resized already)
                        out[i] = _cpu_decode(io.BytesIO(data[i].numpy().tobytes()), resize).to(device)
    for i, d in enumerate(data):
        if out[i] is None:
            out[i] = d.to(device, non_blocking=True)
    device_resize = v2.Resize(resize.size, resize.interpolation, resize.max_size, antialias=resize.antialias)
    return torch.stack([img if _same_size(img, resize) else device_resize(img) for img in out])


def _same_size(image: torch.Tensor, resize: Any) -> bool:
    size = resize.size
    if isinstance(size, int) or len(size) == 1:
        return False
    return tuple(image.shape[-2:]) == (int(size[0]), int(size[1]))
