"""Image processing: coordinates, image I/O, colour conversion and resizing."""
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image


def make_coord(shape: tuple[int, ...], flatten: bool = True) -> torch.Tensor:
    """Pixel-centre coordinates -1 + (2i + 1) / n per axis, row axis first: (H*W, 2) or (H, W, 2)."""
    axes = [-1 + 1 / n + (2 / n) * torch.arange(n).float() for n in shape]
    coord = torch.stack(torch.meshgrid(*axes, indexing='ij'), -1)
    return coord.view(-1, len(shape)) if flatten else coord


def coord_cell(height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The (coord, cell) query pair, each (H*W, 2), that renders an image of height x width."""
    coord = make_coord((height, width))
    cell = torch.tensor([2 / height, 2 / width]).expand_as(coord).clone()
    return coord, cell


class ImageError(ValueError):
    """A file that is missing or cannot be read as an image."""


def load_image(path: str | Path) -> np.ndarray:
    """An image file as stored: HxWx3 RGB, uint8 or uint16. Grayscale is replicated to 3 channels
    (like the official PIL `convert('RGB')`) and an alpha channel is dropped."""
    path = Path(path)
    if not path.is_file():
        raise ImageError(f"image {path} does not exist")
    img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if img is None:
        raise ImageError(f"{path} is not a readable image (PNG, JPEG, BMP or TIFF expected)")
    if img.dtype not in (np.uint8, np.uint16):
        raise ImageError(f"{path} has unsupported sample type {img.dtype} (8- or 16-bit expected)")
    if img.ndim == 2:
        img = img[:, :, None]
    if img.shape[2] == 1:
        return np.repeat(img, 3, axis=2)
    if img.shape[2] == 2:  # gray + alpha
        return np.repeat(img[:, :, :1], 3, axis=2)
    return np.ascontiguousarray(img[:, :, 2::-1])  # BGR(A) -> RGB


def to_float(img: np.ndarray) -> np.ndarray:
    """uint8 / uint16 image -> float32 in [0, 1]."""
    return img.astype(np.float32) / (65535 if img.dtype == np.uint16 else 255)


def read_image(path: str | Path) -> np.ndarray:
    """An image file as HxWx3 RGB float32 in [0, 1] (16-bit files scaled by 65535)."""
    return to_float(load_image(path))


def pil_resize(img: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """PIL bicubic resize of an 8-bit HxWx3 image to size = (height, width), as the official
    training and on-the-fly test inputs are made."""
    if img.dtype != np.uint8:
        raise TypeError(f"pil_resize takes 8-bit images, got {img.dtype}")
    return np.asarray(Image.fromarray(img).resize((size[1], size[0]), Image.BICUBIC))
