"""Datasets: random-scale training patches and benchmark (LR, HR) pairs, as in the official LIIF.

The pipeline is 8-bit like the official one: images are kept as uint8 and LR images are made by PIL
bicubic resizing of 8-bit pixels. 16-bit files are converted to 8 bits by rounding (v16 / 257).
"""
import functools
import math
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from imgproc import image_to_tensor, load_image, load_uint8, make_coord, pil_resize, to_float

IMAGE_SUFFIXES = ('.png', '.jpg', '.jpeg', '.bmp', '.tif', '.tiff', '.webp')


def list_images(folder: str | Path) -> list[Path]:
    """The image files of a folder in sorted name order; other files are skipped with a warning."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"image folder {folder} does not exist")
    files = sorted(p for p in folder.iterdir() if p.is_file())
    images = [p for p in files if p.suffix.lower() in IMAGE_SUFFIXES]
    others = [p.name for p in files if p.suffix.lower() not in IMAGE_SUFFIXES]
    if others:
        warnings.warn(f"{folder}: skipping {len(others)} non-image file(s): {', '.join(others)}")
    if not images:
        raise ValueError(f"{folder} holds no image files (expected {', '.join(IMAGE_SUFFIXES)})")
    return images


def image_size(path: Path) -> tuple[int, int]:
    """(height, width) of an image file from its header, without decoding the pixels."""
    try:
        with Image.open(path) as im:
            return im.height, im.width
    except (OSError, ValueError, Image.DecompressionBombError):
        return load_image(path).shape[:2]  # formats PIL cannot open; raises ImageError if unreadable


def augment(img: np.ndarray, hflip: bool, vflip: bool, transpose: bool) -> np.ndarray:
    """The official dihedral augmentation of an HxWxC image: rows reversed, columns reversed, then
    rows and columns swapped, each when asked."""
    if hflip:
        img = img[::-1]
    if vflip:
        img = img[:, ::-1]
    if transpose:
        img = img.transpose(1, 0, 2)
    return img


@functools.lru_cache(maxsize=None)
def axis_centres(n: int) -> np.ndarray:
    """imgproc.make_coord's n pixel centres along one axis, float32, computed once per n (per worker)."""
    return make_coord((n,)).squeeze(1).numpy()


def _positive(name: str, value, kind=(int, float)) -> None:
    if isinstance(value, bool) or not isinstance(value, kind) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a positive {'integer' if kind is int else 'number'}, got {value!r}")


class TrainDataset(Dataset):
    """Random-scale training patches from folders of HR images (official `sr-implicit-downsampled`).

    Per item: s ~ U(scale_min, scale_max); a square HR crop of side round(patch_size * s) at a uniform
    random position; LR = PIL bicubic of the crop to patch_size x patch_size; the same random row
    flip, column flip and transpose (each p = 0.5, when augment) on LR and HR; then sample_q HR pixels
    drawn without replacement. Items are dicts:
      'lr' (3, p, p) float32 in [0, 1]; 'coord' (Q, 2) pixel centres of the sampled HR pixels (row
      first, imgproc.make_coord); 'cell' (Q, 2) = (2 / crop_h, 2 / crop_w); 'gt' (Q, 3) their RGB in
      [0, 1]; 'scale' the drawn s (the crop's exact ratio to the LR is crop side / patch_size).

    Randomness: item `index` of epoch `e` uses numpy default_rng([seed, e, index]) only, so items do
    not depend on DataLoader workers or their order. Call set_epoch(e) before each epoch (like
    DistributedSampler); the epoch lives in shared memory, so persistent workers see it too.
    A validation set: augment=False, a fixed seed, and never call set_epoch, so every pass sees the
    same patches.

    root is a folder or a list of folders (images of each in sorted order, folders in the given
    order); first_k keeps the first k of these files. Images smaller than the largest crop,
    round(patch_size * scale_max), on either side are skipped with one warning naming them (T91 has
    many); an error is raised when none is left. Images are decoded once and kept as uint8 when
    in_memory, otherwise read per item (their sizes are checked from the file headers up front).
    """

    def __init__(self, root: str | Path | list, patch_size: int = 48, scale_min: float = 1.0,
                 scale_max: float = 4.0, sample_q: int = 2304, repeat: int = 1, augment: bool = True,
                 in_memory: bool = True, seed: int = 0, first_k: int | None = None):
        for name, value in (('patch_size', patch_size), ('sample_q', sample_q), ('repeat', repeat)):
            _positive(name, value, int)
        _positive('scale_min', scale_min)
        _positive('scale_max', scale_max)
        if scale_min > scale_max:
            raise ValueError(f"scale_min ({scale_min}) is larger than scale_max ({scale_max})")
        smallest_crop = round(patch_size * scale_min)
        if sample_q > smallest_crop ** 2:
            raise ValueError(f"sample_q ({sample_q}) exceeds the {smallest_crop}x{smallest_crop} pixels of "
                             f"the smallest HR crop (patch_size {patch_size} x scale_min {scale_min})")
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
        if first_k is not None:
            _positive('first_k', first_k, int)
        self.patch_size, self.scale_min, self.scale_max = patch_size, float(scale_min), float(scale_max)
        self.sample_q, self.repeat, self.augment, self.seed = sample_q, repeat, augment, seed
        self._epoch = torch.zeros((), dtype=torch.int64).share_memory_()

        folders = [root] if isinstance(root, (str, Path)) else list(root)
        if not folders:
            raise ValueError("root: no training folders given")
        files = [path for folder in folders for path in list_images(folder)][:first_k]
        images = [load_uint8(path) for path in files] if in_memory else None
        sizes = [img.shape[:2] for img in images] if in_memory else [image_size(path) for path in files]
        largest_crop = round(patch_size * scale_max)
        keep = [min(hw) >= largest_crop for hw in sizes]
        self.skipped = [path for path, ok in zip(files, keep) if not ok]
        if self.skipped:
            listing = ', '.join(f"{path.parent.name}/{path.name} ({h}x{w})"
                                for path, (h, w), ok in zip(files, sizes, keep) if not ok)
            message = (f"{len(self.skipped)} of {len(files)} training images are smaller than the largest "
                       f"HR crop {largest_crop}x{largest_crop} (patch_size {patch_size} x scale_max "
                       f"{scale_max})")
            if not any(keep):
                raise ValueError(f"{message}; none is left: {listing}")
            warnings.warn(f"{message} and are skipped: {listing}")
        self.files = [path for path, ok in zip(files, keep) if ok]
        self.images = [img for img, ok in zip(images, keep) if ok] if in_memory else None

    @property
    def epoch(self) -> int:
        return int(self._epoch)

    def set_epoch(self, epoch: int) -> None:
        if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
            raise ValueError(f"epoch must be a non-negative integer, got {epoch!r}")
        self._epoch.fill_(epoch)

    def __len__(self) -> int:
        return self.repeat * len(self.files)

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} items")
        rng = np.random.default_rng([self.seed, self.epoch, index])
        i = index % len(self.files)
        img = self.images[i] if self.images is not None else load_uint8(self.files[i])
        scale = float(rng.uniform(self.scale_min, self.scale_max))
        side = round(self.patch_size * scale)
        x0 = rng.integers(0, img.shape[0] - side + 1)
        y0 = rng.integers(0, img.shape[1] - side + 1)
        hr = np.ascontiguousarray(img[x0:x0 + side, y0:y0 + side])
        lr = pil_resize(hr, (self.patch_size, self.patch_size))
        if self.augment:
            flips = rng.random(3) < 0.5
            lr, hr = augment(lr, *flips), augment(hr, *flips)
        # only the sampled pixels: their (row, column) in the augmented crop, as its row-major grid numbers them
        rows, cols = np.divmod(rng.choice(side * side, self.sample_q, replace=False), side)
        centres = axis_centres(side)  # the crop is square: one axis serves both
        coord = torch.from_numpy(np.stack([centres[rows], centres[cols]], -1))
        gt = torch.from_numpy(to_float(hr[rows, cols]))
        cell = torch.tensor([2 / side, 2 / side]).expand(self.sample_q, 2)
        return {'lr': image_to_tensor(lr), 'coord': coord, 'cell': cell, 'gt': gt, 'scale': scale}


class BenchmarkDataset(Dataset):
    """(LR, HR) pairs of a benchmark set at one scale; set_root = <root>/<Name> holding HR/ and
    optionally LR_bicubic/X<s>/<name>x<s>.png.

    An integer scale with an LR_bicubic/X<s> folder uses its files, paired with HR cropped from the
    top-left to (h_lr * s, w_lr * s). Any other scale > 0 follows the official on-the-fly protocol:
    h_lr = floor(H / s + 1e-9), w_lr likewise, HR cropped to (round(h_lr * s), round(w_lr * s)), LR =
    PIL bicubic of that 8-bit crop. Items: {'lr' (3, h, w), 'hr' (3, H', W') float32 in [0, 1],
    'scale' float, 'name' HR file stem}; sizes differ between images, so batch with batch_size=1.
    """

    def __init__(self, set_root: str | Path, scale: float):
        _positive('scale', scale)
        self.set_root, self.scale = Path(set_root), float(scale)
        self.hr_files = list_images(self.set_root / 'HR')
        hr_sizes = [image_size(path) for path in self.hr_files]
        lr_dir = self.set_root / 'LR_bicubic' / f'X{int(scale)}'
        self.lr_files = None
        if self.scale.is_integer() and lr_dir.is_dir():
            s = int(scale)
            self.lr_files = [lr_dir / f'{path.stem}x{s}.png' for path in self.hr_files]
            missing = [path.name for path in self.lr_files if not path.is_file()]
            if missing:
                raise FileNotFoundError(f"{lr_dir} lacks the LR file(s) {', '.join(missing)} for "
                                        f"{len(missing)} of the {len(self.hr_files)} HR images")
            for hr_path, lr_path, (h, w) in zip(self.hr_files, self.lr_files, hr_sizes):
                h_lr, w_lr = image_size(lr_path)
                if h_lr * s > h or w_lr * s > w:
                    raise ValueError(f"{lr_path} ({h_lr}x{w_lr}) times {s} is larger than its HR "
                                     f"{hr_path} ({h}x{w})")
        else:
            for path, (h, w) in zip(self.hr_files, hr_sizes):
                h_lr, w_lr = self.lr_size(h, w)
                if h_lr < 1 or w_lr < 1:
                    raise ValueError(f"scale {scale} is too large for {path} ({h}x{w}): its LR would be "
                                     f"{h_lr}x{w_lr}")

    def lr_size(self, height: int, width: int) -> tuple[int, int]:
        """The on-the-fly LR size of an HR image of height x width."""
        return math.floor(height / self.scale + 1e-9), math.floor(width / self.scale + 1e-9)

    def __len__(self) -> int:
        return len(self.hr_files)

    def __getitem__(self, index: int) -> dict:
        hr = load_uint8(self.hr_files[index])
        if self.lr_files is not None:
            s = int(self.scale)
            lr = load_uint8(self.lr_files[index])
            hr = hr[:lr.shape[0] * s, :lr.shape[1] * s]
        else:
            h_lr, w_lr = self.lr_size(*hr.shape[:2])
            hr = np.ascontiguousarray(hr[:round(h_lr * self.scale), :round(w_lr * self.scale)])
            lr = pil_resize(hr, (h_lr, w_lr))
        return {'lr': image_to_tensor(lr), 'hr': image_to_tensor(hr), 'scale': self.scale,
                'name': self.hr_files[index].stem}
