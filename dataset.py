"""Datasets as in the official LIIF: random-scale training patches from HR images, patches from paired
LR / HR folders, ground truths of varying size, and benchmark (LR, HR) pairs.

The pipeline is 8-bit like the official one: images are kept as uint8 and LR images are made by PIL
bicubic resizing of 8-bit pixels. 16-bit files are converted to 8 bits by rounding (v16 / 257), an
alpha channel is dropped, gray is replicated to RGB and EXIF orientation is applied (imgproc.load_image).
"""
import functools
import math
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from degrade import Degradation, apply, degrade_named, draw_plan
from distributed import shared_images
from imgproc import (
    bicubic_taps,
    image_size,
    image_to_tensor,
    load_uint8,
    make_coord,
    pil_resample_torch,
    pil_resize,
    to_float,
)

IMAGE_SUFFIXES = ('.png', '.jpg', '.jpeg', '.bmp', '.tif', '.tiff', '.webp')


def list_images(folder: str | Path, recursive: bool = False, suffixes: tuple[str, ...] = IMAGE_SUFFIXES) -> list[Path]:
    """The image files (those with `suffixes`) of a folder (and its subfolders, `recursive`) in sorted path
    order; other files are skipped with a warning, hidden ones (.name: a write that a killed run left
    behind, files.replacing) silently."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"image folder {folder} does not exist")
    files = sorted(p for p in (folder.rglob('*') if recursive else folder.iterdir())
                   if p.is_file() and not any(part.startswith('.') for part in p.relative_to(folder).parts))
    images = [p for p in files if p.suffix.lower() in suffixes]
    others = [str(p.relative_to(folder)) for p in files if p.suffix.lower() not in suffixes]
    if others:
        warnings.warn(f"{folder}: skipping {len(others)} non-image file(s): {', '.join(others)}", stacklevel=2)
    if not images:
        raise ValueError(f"{folder} holds no image files (expected {', '.join(suffixes)})")
    return images


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


def _count(name: str, value) -> None:
    """A non-negative integer setting where 0 means 'all' (sample_q) or 'whole image' (patch_size)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{name} must be a non-negative integer (0 = all), got {value!r}")


def check_scale_range(scale_min: float, scale_max: float) -> None:
    if scale_min > scale_max:
        raise ValueError(f"scale_min ({scale_min}) is larger than scale_max ({scale_max})")


def check_patch_queries(patch_size: int, scale_min: float, sample_q: int) -> None:
    """Random-scale patches: sample_q distinct pixels must fit in the smallest HR crop."""
    smallest_crop = round(patch_size * scale_min)
    if sample_q > smallest_crop ** 2:
        raise ValueError(f"sample_q ({sample_q}) exceeds the {smallest_crop}x{smallest_crop} pixels of "
                         f"the smallest HR crop (patch_size {patch_size} x scale_min {scale_min})")


def check_size_range(size_min: int, size_max: int) -> None:
    if size_min > size_max:
        raise ValueError(f"size_min ({size_min}) is larger than size_max ({size_max})")


def check_varied_queries(sample_q: int, gt_resize: int, hr_sizes: list = ()) -> None:
    """Ground truths of varying size batch only with a fixed number of queries: sample_q > 0, or all
    pixels of ground truths resized to one square size (gt_resize of square HR images)."""
    if not sample_q and (not gt_resize or any(h != w for h, w in hr_sizes)):
        raise ValueError("sample_q = 0 (all pixels) needs gt_resize > 0 and square HR images, so that every "
                         "item has as many queries to batch")


def as_folders(root: str | Path | list) -> list:
    """One folder or a list of them, as a non-empty list."""
    folders = [root] if isinstance(root, (str, Path)) else list(root)
    if not folders:
        raise ValueError("root: no image folders given")
    return folders


def read_all(files: list[Path], in_memory: bool,
             cache_dir: str | Path | None = None) -> tuple[list[np.ndarray] | None, list[tuple[int, int]]]:
    """(the decoded uint8 images or None, their (height, width)): decoded once when in_memory (from the
    shared file in cache_dir when given: shared_images), otherwise only their sizes, from the file headers."""
    if in_memory and cache_dir is not None:
        images = shared_images(files, cache_dir)
    else:
        images = [load_uint8(path) for path in files] if in_memory else None
    sizes = [img.shape[:2] for img in images] if in_memory else [image_size(path) for path in files]
    return images, sizes


def large_enough(files: list[Path], sizes: list, side: int, what: str,
                 warn: bool = True) -> tuple[list[bool], dict, str]:
    """Which images have both sides >= side: the keep mask, the others as {path: (h, w)}, and a one-line
    summary naming how many, `what` they are too small for and a few of them ('' when none). Warns with
    the summary when `warn`; raises when none is left."""
    keep = [min(hw) >= side for hw in sizes]
    skipped = {path: tuple(hw) for path, hw, ok in zip(files, sizes, keep) if not ok}
    summary = ''
    if skipped:
        names = [f"{path.parent.name}/{path.name} ({h}x{w})" for path, (h, w) in skipped.items()]
        more = f" and {len(names) - 3} more" if len(names) > 3 else ''
        summary = f"{len(skipped)} of {len(files)} {what}: {', '.join(names[:3])}{more}"
        if not any(keep):
            raise ValueError(f"{summary}; none is left")
        if warn:
            warnings.warn(f"{summary}; they are skipped", stacklevel=2)
    return keep, skipped, summary


def sample_pixels(height: int, width: int, sample_q: int, rng: np.random.Generator) -> np.ndarray | None:
    """The row-major numbers of sample_q pixels of a height x width patch drawn without replacement;
    None (all pixels) when sample_q is 0."""
    return rng.choice(height * width, sample_q, replace=False) if sample_q else None


def pixel_queries(hr: np.ndarray, picks: np.ndarray | None) -> dict:
    """The training targets of an HR patch: 'coord' (Q, 2) pixel centres (row first, imgproc.make_coord),
    'cell' (Q, 2) = (2 / height, 2 / width) and 'gt' (Q, 3) RGB in [0, 1] of the pixels numbered `picks`
    (sample_pixels), or of all pixels in raster order when picks is None."""
    height, width = hr.shape[:2]
    if picks is not None:  # only the sampled pixels: their (row, column) as the row-major grid numbers them
        rows, cols = np.divmod(picks, width)
        coord = torch.from_numpy(np.stack([axis_centres(height)[rows], axis_centres(width)[cols]], -1))
        gt = torch.from_numpy(to_float(hr[rows, cols]))
    else:
        coord = make_coord((height, width))
        gt = torch.from_numpy(to_float(hr.reshape(-1, 3)))
    cell = torch.tensor([2 / height, 2 / width]).expand(len(coord), 2)
    return {'coord': coord, 'cell': cell, 'gt': gt}


def short_side_size(height: int, width: int, short: int) -> tuple[int, int]:
    """(height, width) with the shorter side = short and the aspect ratio kept, the longer side truncated:
    what the official resize_fn (torchvision Resize with one int) gives."""
    if width <= height:
        return int(short * height / width), short
    return short, int(short * width / height)


class EpochSeeded(Dataset):
    """Items drawn from numpy default_rng([seed, epoch, index]) only, so they do not depend on DataLoader
    workers or their order. Call set_epoch(e) before each epoch (like DistributedSampler); the epoch lives
    in shared memory, so persistent workers see it too. A validation set: augment=False, a fixed seed,
    and never call set_epoch, so every pass sees the same items."""

    def __init__(self, seed: int):
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
        self.seed = seed
        self._epoch = torch.zeros((), dtype=torch.int64).share_memory_()

    @property
    def epoch(self) -> int:
        return int(self._epoch)

    def set_epoch(self, epoch: int) -> None:
        if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
            raise ValueError(f"epoch must be a non-negative integer, got {epoch!r}")
        self._epoch.fill_(epoch)

    def rng(self, index: int) -> np.random.Generator:
        """The only source of randomness of item `index` in this epoch."""
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} items")
        return np.random.default_rng([self.seed, self.epoch, index])


class TrainDataset(EpochSeeded):
    """Random-scale training patches from folders of HR images (official `sr-implicit-downsampled`).

    Per item: s ~ U(scale_min, scale_max); a square HR crop of side round(patch_size * s) at a uniform
    random position; LR = PIL bicubic of the crop to patch_size x patch_size; the same random row
    flip, column flip and transpose (each p = 0.5, when augment) on LR and HR; then sample_q HR pixels
    drawn without replacement. Items are dicts:
      'lr' (3, p, p) float32 in [0, 1]; 'coord', 'cell', 'gt' (Q, 2 / 2 / 3) of the sampled HR pixels
      (see pixel_queries); 'scale' the drawn s (the crop's exact ratio to the LR is crop side / patch_size).
    Randomness per (seed, epoch, index) as EpochSeeded says.

    root is a folder or a list of folders (images of each in sorted order, folders in the given
    order); first_k keeps the first k of these files. Images smaller than the largest crop,
    round(patch_size * scale_max), on either side are skipped (`skipped`: {path: (h, w)};
    `skipped_summary`: one line calling them `role` images), with a warning when `warn` (T91 has many);
    an error when none is left. Images are decoded once and kept as uint8 when in_memory (in the shared
    file of cache_dir when given: read_all), otherwise read per item (their sizes are checked from the
    file headers up front).
    """

    def __init__(self, root: str | Path | list, patch_size: int = 48, scale_min: float = 1.0,
                 scale_max: float = 4.0, sample_q: int = 2304, repeat: int = 1, augment: bool = True,
                 in_memory: bool = True, seed: int = 0, first_k: int | None = None, role: str = 'training',
                 warn: bool = True, cache_dir: str | Path | None = None):
        super().__init__(seed)
        for name, value in (('patch_size', patch_size), ('sample_q', sample_q), ('repeat', repeat)):
            _positive(name, value, int)
        _positive('scale_min', scale_min)
        _positive('scale_max', scale_max)
        check_scale_range(scale_min, scale_max)
        check_patch_queries(patch_size, scale_min, sample_q)
        if first_k is not None:
            _positive('first_k', first_k, int)
        self.patch_size, self.scale_min, self.scale_max = patch_size, float(scale_min), float(scale_max)
        self.sample_q, self.repeat, self.augment = sample_q, repeat, augment

        files = [path for folder in as_folders(root) for path in list_images(folder)][:first_k]
        images, sizes = read_all(files, in_memory, cache_dir)
        largest_crop = round(patch_size * scale_max)
        keep, self.skipped, self.skipped_summary = large_enough(
            files, sizes, largest_crop, f"{role} images are smaller than the {largest_crop}x{largest_crop} HR crop "
            f"that patch_size {patch_size} x scale_max {scale_max:g} needs", warn)
        self.files = [path for path, ok in zip(files, keep) if ok]
        self.sizes = [hw for hw, ok in zip(sizes, keep) if ok]
        self.images = [img for img, ok in zip(images, keep) if ok] if in_memory else None

    def __len__(self) -> int:
        return self.repeat * len(self.files)

    def draw(self, index: int) -> dict:
        """Item `index`'s random choices, in its generator's order: 'image' (the file's number), 'scale',
        'side' (of the HR crop), 'top' and 'left' (its corner), 'flips' (row flip, column flip, transpose)
        and 'picks' (the sampled pixels' row-major numbers in the flipped crop)."""
        rng = self.rng(index)
        i = index % len(self.files)
        height, width = self.sizes[i]
        scale = float(rng.uniform(self.scale_min, self.scale_max))
        side = round(self.patch_size * scale)
        top, left = int(rng.integers(0, height - side + 1)), int(rng.integers(0, width - side + 1))
        flips = rng.random(3) < 0.5 if self.augment else np.zeros(3, bool)
        return {'image': i, 'scale': scale, 'side': side, 'top': top, 'left': left, 'flips': flips,
                'picks': sample_pixels(side, side, self.sample_q, rng)}

    def crop(self, d: dict) -> np.ndarray:
        """The HR crop (side x side x 3 uint8) of a draw, before the flips."""
        img = self.images[d['image']] if self.images is not None else load_uint8(self.files[d['image']])
        top, left, side = d['top'], d['left'], d['side']
        return np.ascontiguousarray(img[top:top + side, left:left + side])

    def make_lr(self, hr: np.ndarray, index: int) -> np.ndarray:
        """The LR patch (before the flips) of item `index`'s HR crop: PIL bicubic."""
        return pil_resize(hr, (self.patch_size, self.patch_size))

    def device_draw(self, index: int) -> dict:
        """What the loader's workers hand DevicePatches for item `index` (device_data): its draws."""
        return self.draw(index)

    def __getitem__(self, index: int) -> dict:
        d = self.draw(index)
        hr = self.crop(d)
        lr, hr = augment(self.make_lr(hr, index), *d['flips']), augment(hr, *d['flips'])
        return {'lr': image_to_tensor(lr), **pixel_queries(hr, d['picks']), 'scale': d['scale']}


class DegradedDataset(TrainDataset):
    """TrainDataset's patches with the LR made by a real-world degradation (degrade.draw_plan: Real-ESRGAN's
    second-order model, its final resize to patch_size) instead of PIL bicubic. The crop, scale, flips
    and queries are TrainDataset's own draws for the same seed; the degradation draws from a second
    generator of (seed, epoch, index), so items stay exactly reproducible. Under device_data the workers
    hand over the degraded LR ('lr', uint8, before the flips) with the draws: JPEG needs the CPU encoder."""

    def __init__(self, root: str | Path | list, degradation: Degradation, **options):
        super().__init__(root, **options)
        self.degradation = degradation

    def make_lr(self, hr: np.ndarray, index: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, self.epoch, index, 1])
        plan = draw_plan(rng, self.degradation, hr.shape[:2], (self.patch_size, self.patch_size))
        return apply(hr, plan, rng)

    def device_draw(self, index: int) -> dict:
        d = self.draw(index)
        return {**d, 'lr': torch.from_numpy(self.make_lr(self.crop(d), index))}


class Draws(Dataset):
    """A TrainDataset's random choices only (TrainDataset.device_draw), for DevicePatches: what the DataLoader's
    workers make when the items themselves are made on the device."""

    def __init__(self, dataset: TrainDataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict:
        return self.dataset.device_draw(index)


def dihedral_source(rows: torch.Tensor, cols: torch.Tensor, n: torch.Tensor, flips: torch.Tensor):
    """Where pixel (rows, cols) of an n x n image after `augment` (flips (B, 3): row flip, column flip,
    transpose) comes from in the image before it; everything broadcasts over a leading batch dim B."""
    def per_image(t):
        return t.view(-1, *[1] * (rows.dim() - 1))
    hflip, vflip, transpose = (per_image(f) for f in flips.unbind(-1))
    a, b = torch.where(transpose, cols, rows), torch.where(transpose, rows, cols)
    n = per_image(n)
    return torch.where(hflip, n - 1 - a, a), torch.where(vflip, n - 1 - b, b)


class DevicePatches:
    """TrainDataset's items made on a device from its decoded images (the device_data setting): the
    images are held there as uint8, the random draws are the dataset's own (Draws, in the loader's
    workers), and the crop, Pillow's bicubic down-sampling (integer arithmetic:
    imgproc.pil_resample_torch), the flips and the query gather run on the device. A batch equals the
    DataLoader's batch of the same items, bit for bit."""

    def __init__(self, dataset: TrainDataset, device: torch.device):
        if dataset.images is None:
            raise ValueError("device_data needs the training images decoded in memory (in_memory=True)")
        self.device, p = torch.device(device), dataset.patch_size
        self.pixels = torch.cat([torch.from_numpy(img).flatten() for img in dataset.images]).to(self.device)
        sizes = torch.tensor(dataset.sizes)
        self.width = sizes[:, 1].to(self.device)
        self.offset = torch.cumsum(3 * sizes[:, 0] * sizes[:, 1], 0).sub(3 * sizes[:, 0] * sizes[:, 1]).to(self.device)
        self.max_side = round(p * dataset.scale_max)
        # per HR crop side s, the taps of s -> p (padded to the widest with weight 0), the pixel centres
        # (imgproc.make_coord's) and the cell 2 / s, all as the CPU items compute them
        taps = [bicubic_taps(s, p, 0, p) if s else (np.zeros(p, np.int64), np.zeros((p, 1), np.int64))
                for s in range(self.max_side + 1)]
        k = max(fixed.shape[1] for _, fixed in taps)
        self.first = torch.from_numpy(np.stack([first for first, _ in taps])).to(self.device)
        self.fixed = torch.from_numpy(np.stack([np.pad(f, ((0, 0), (0, k - f.shape[1]))) for _, f in taps])).to(self.device)
        self.centres = torch.stack([F.pad(torch.from_numpy(axis_centres(s)), (0, self.max_side - s)) if s else
                                    torch.zeros(self.max_side) for s in range(self.max_side + 1)]).to(self.device)
        self.cell = torch.tensor([2 / s if s else 0.0 for s in range(self.max_side + 1)]).to(self.device)

    def __call__(self, draws: dict) -> dict:
        """The batch {'lr', 'coord', 'cell', 'gt', 'scale'} of a batch of draws (collated TrainDataset.device_draw)."""
        d = {k: v.to(self.device, non_blocking=True) for k, v in draws.items()}
        side, flips = d['side'], d['flips']
        lr = d['lr'] if 'lr' in d else self.bicubic_lr(d)  # (B, p, p, 3); 'lr': made by the workers (degraded)
        grid = torch.arange(lr.shape[1], device=self.device)
        rows, cols = dihedral_source(grid.view(1, -1, 1), grid.view(1, 1, -1), torch.full_like(side, lr.shape[1]), flips)
        lr = lr[torch.arange(len(lr), device=self.device).view(-1, 1, 1), rows, cols]
        q_rows, q_cols = d['picks'] // side[:, None], d['picks'] % side[:, None]  # in the flipped crop
        rows, cols = dihedral_source(q_rows, q_cols, side, flips)
        gt = self.gather(d['image'], d['top'][:, None] + rows, d['left'][:, None] + cols)
        coord = torch.stack([self.centres[side[:, None], q_rows], self.centres[side[:, None], q_cols]], -1)
        return {'lr': lr.permute(0, 3, 1, 2).contiguous().float() / 255, 'coord': coord,  # NCHW, as collated
                'cell': self.cell[side].view(-1, 1, 1).expand(*coord.shape).contiguous(), 'gt': gt.float() / 255,
                'scale': d['scale']}

    def bicubic_lr(self, d: dict) -> torch.Tensor:
        """The items' LR patches (B, p, p, 3) by Pillow's bicubic, made on the device."""
        side = d['side']
        crops = self.crops(d)  # (B, S, S, 3), rows and columns past the side repeat its last one
        taps = self.first[side], self.fixed[side]
        wide = pil_resample_torch(crops.transpose(1, 2), *taps, side).transpose(1, 2)  # Pillow: width first
        return pil_resample_torch(wide, *taps, side)

    def gather(self, image: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
        """RGB (..., 3) uint8 at (rows, cols) of each item's image (image (B,), rows and cols (B, ...))."""
        def per_item(t):
            return t.view(-1, *[1] * (rows.dim() - 1))
        at = per_item(self.offset[image]) + (rows * per_item(self.width[image]) + cols) * 3
        return self.pixels[at.unsqueeze(-1) + torch.arange(3, device=self.device)]

    def crops(self, d: dict) -> torch.Tensor:
        """The HR crops (B, S, S, 3), S the largest side: each item's side x side crop, its last row and
        column repeated beyond it (read only by taps of weight 0)."""
        inside = torch.minimum(torch.arange(self.max_side, device=self.device), d['side'][:, None] - 1)
        return self.gather(d['image'], (d['top'][:, None] + inside)[:, :, None], (d['left'][:, None] + inside)[:, None, :])


class PairedFolders(EpochSeeded):
    """(LR, HR) image pairs from LR and HR folders matched by sorted file order (official
    `paired-image-folders`): lr_root[k] pairs with hr_root[k] (each a folder or a list of folders), the
    j-th image of one with the j-th of the other; first_k keeps the first k pairs; `repeat` passes per
    epoch. Images are kept as uint8 when in_memory (in the shared file of cache_dir when given: read_all;
    else read per item). Subclasses make the items."""

    def __init__(self, lr_root: str | Path | list, hr_root: str | Path | list, repeat: int = 1,
                 in_memory: bool = True, seed: int = 0, first_k: int | None = None,
                 cache_dir: str | Path | None = None):
        super().__init__(seed)
        _positive('repeat', repeat, int)
        if first_k is not None:
            _positive('first_k', first_k, int)
        lr_folders, hr_folders = as_folders(lr_root), as_folders(hr_root)
        if len(lr_folders) != len(hr_folders):
            raise ValueError(f"{len(lr_folders)} LR folder(s) for {len(hr_folders)} HR folder(s): "
                             f"each HR folder needs its LR folder")
        self.lr_files, self.hr_files = [], []
        for lr_folder, hr_folder in zip(lr_folders, hr_folders):
            lr_files, hr_files = list_images(lr_folder), list_images(hr_folder)
            if len(lr_files) != len(hr_files):
                raise ValueError(f"LR folder {lr_folder} holds {len(lr_files)} images but HR folder {hr_folder} "
                                 f"holds {len(hr_files)}; they are paired one to one in sorted name order")
            self.lr_files += lr_files
            self.hr_files += hr_files
        self.lr_files, self.hr_files = self.lr_files[:first_k], self.hr_files[:first_k]
        self.repeat = repeat
        self.skipped, self.skipped_summary = {}, ''  # pairs left out as too small: {path: (h, w)}, one line
        self.lr_images, self.lr_sizes = read_all(self.lr_files, in_memory, cache_dir)
        self.hr_images, self.hr_sizes = read_all(self.hr_files, in_memory, cache_dir)

    @property
    def files(self) -> list[Path]:
        """The HR file of each pair (as TrainDataset.files)."""
        return self.hr_files

    def keep(self, mask: list[bool]) -> None:
        """Drop the pairs whose mask entry is False."""
        for name in ('lr_files', 'hr_files', 'lr_images', 'hr_images', 'lr_sizes', 'hr_sizes', 'scales'):
            if getattr(self, name, None) is not None:
                setattr(self, name, [x for x, ok in zip(getattr(self, name), mask) if ok])

    def pair(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """Pair i as (LR, HR) HxWx3 uint8 images."""
        if self.lr_images is not None:
            return self.lr_images[i], self.hr_images[i]
        return load_uint8(self.lr_files[i]), load_uint8(self.hr_files[i])

    def require_equal(self, shapes: list, what: str, fix: str) -> None:
        """Batched items must agree in shape: refuse pairs that would not, naming two that differ."""
        for j, shape in enumerate(shapes):
            if shape != shapes[0]:
                raise ValueError(f"{what} differ ({self.lr_files[0].name}: {shapes[0]}, {self.lr_files[j].name}: "
                                 f"{shape}), so items cannot be batched; {fix}")

    def __len__(self) -> int:
        return self.repeat * len(self.files)


class PairedDataset(PairedFolders):
    """Training / validation patches from paired LR and HR folders (official `sr-implicit-paired`).

    Each pair's scale s = HR height // LR height must be an integer with LR = floor(HR / s) on both
    sides (HR is cropped to s x the LR size, as the official). Per item: an LR crop of patch_size x
    patch_size at a uniform random position (x0, y0) and the aligned HR crop HR[x0*s : (x0+p)*s,
    y0*s : (y0+p)*s], or the whole images when patch_size is 0; the same random row flip, column flip and
    transpose (each p = 0.5, when augment) on both; the HR patch's pixels as queries, sample_q of them
    or all when sample_q is 0 (pixel_queries). Items are dicts like TrainDataset's with 'scale' = s.
    LR images smaller than the patch are skipped with a warning. Randomness per (seed, epoch, index).
    """

    def __init__(self, lr_root: str | Path | list, hr_root: str | Path | list, patch_size: int = 48,
                 sample_q: int = 0, repeat: int = 1, augment: bool = True, in_memory: bool = True,
                 seed: int = 0, first_k: int | None = None, role: str = 'training', warn: bool = True,
                 cache_dir: str | Path | None = None):
        _count('patch_size', patch_size)
        _count('sample_q', sample_q)
        super().__init__(lr_root, hr_root, repeat, in_memory, seed, first_k, cache_dir)
        self.patch_size, self.sample_q, self.augment = patch_size, sample_q, augment
        self.scales = []
        for lr_path, hr_path, (h, w), (hh, hw) in zip(self.lr_files, self.hr_files, self.lr_sizes, self.hr_sizes):
            s = hh // h
            if s < 1 or hh // s != h or hw // s != w:
                raise ValueError(f"LR {lr_path} ({h}x{w}) and HR {hr_path} ({hh}x{hw}): the HR size is not an "
                                 f"integer multiple of the LR size (HR = s x LR, give or take s - 1 pixels)")
            self.scales.append(s)
        if patch_size:
            mask, self.skipped, self.skipped_summary = large_enough(
                self.lr_files, self.lr_sizes, patch_size,
                f"{role} LR images are smaller than the {patch_size}x{patch_size} patch (patch_size)", warn)
            self.keep(mask)
        if sample_q:
            smallest = min(h * w for h, w in self.hr_crop_sizes())
            if sample_q > smallest:
                raise ValueError(f"sample_q ({sample_q}) exceeds the {smallest} pixels of the smallest HR patch")
        self.require_equal(self.lr_crop_sizes(), 'LR patch sizes',
                           'use a patch_size > 0 or LR images of one size')
        if not sample_q:
            self.require_equal(self.hr_crop_sizes(), 'HR patch sizes (all pixels are queries)',
                               'use a sample_q > 0 or pairs of one scale')

    def lr_crop_sizes(self) -> list[tuple[int, int]]:
        p = self.patch_size
        return [(p, p) if p else tuple(hw) for hw in self.lr_sizes]

    def hr_crop_sizes(self) -> list[tuple[int, int]]:
        return [(h * s, w * s) for (h, w), s in zip(self.lr_crop_sizes(), self.scales)]

    def crop(self, i: int, x0: int, y0: int, side: int | None) -> tuple[np.ndarray, np.ndarray]:
        """Pair i's LR crop of side x side at (x0, y0) (the whole LR when side is None) and its HR crop."""
        lr, hr = self.pair(i)
        s = self.scales[i]
        height, width = (side, side) if side else lr.shape[:2]
        return (lr[x0:x0 + height, y0:y0 + width],
                hr[x0 * s:(x0 + height) * s, y0 * s:(y0 + width) * s])

    def __getitem__(self, index: int) -> dict:
        rng = self.rng(index)
        i = index % len(self.files)
        x0 = y0 = 0
        if self.patch_size:
            h, w = self.lr_sizes[i]
            x0 = rng.integers(0, h - self.patch_size + 1)
            y0 = rng.integers(0, w - self.patch_size + 1)
        lr, hr = self.crop(i, x0, y0, self.patch_size)
        if self.augment:
            flips = rng.random(3) < 0.5
            lr, hr = augment(lr, *flips), augment(hr, *flips)
        return {'lr': image_to_tensor(lr), **pixel_queries(hr, sample_pixels(*hr.shape[:2], self.sample_q, rng)),
                'scale': float(self.scales[i])}

    def centre_item(self, i: int) -> dict:
        """Pair i's centre LR crop of side min(patch_size, LR sides) (whole when patch_size is 0) and its
        HR crop, as a BenchmarkDataset item {'lr', 'hr', 'scale', 'name'}: a sample to render."""
        h, w = self.lr_sizes[i]
        side = min(self.patch_size, h, w) if self.patch_size else None
        x0, y0 = ((h - side) // 2, (w - side) // 2) if side else (0, 0)
        lr, hr = self.crop(i, x0, y0, side)
        return {'lr': image_to_tensor(lr), 'hr': image_to_tensor(hr), 'scale': float(self.scales[i]),
                'name': self.hr_files[i].stem}


class VariedDataset(PairedFolders):
    """Ground truths of varying size from paired LR and HR folders (official `sr-implicit-uniform-varied`).

    Item `index` of the len(self) items (repeat included) takes its pair's HR image resized (PIL bicubic)
    so that its shorter side is round(size_min + (size_max - size_min) * index / (len(self) - 1)) (the
    aspect ratio kept, short_side_size): the sizes rise evenly over [size_min, size_max] with the index,
    so an image keeps its size from epoch to epoch (size_max for a single item). Then, when augment, LR
    and HR are flipped left-right together (p = 0.5; the official wrapper does no other flip); then HR is
    resized again to a shorter side of gt_resize when it is > 0. LR is the whole paired LR image. Queries:
    sample_q HR pixels (all when 0). Items are dicts like TrainDataset's with 'scale' = HR rows / LR rows.
    """

    def __init__(self, lr_root: str | Path | list, hr_root: str | Path | list, size_min: int, size_max: int,
                 gt_resize: int = 0, sample_q: int = 1024, repeat: int = 1, augment: bool = True,
                 in_memory: bool = True, seed: int = 0, first_k: int | None = None,
                 cache_dir: str | Path | None = None):
        _positive('size_min', size_min, int)
        _positive('size_max', size_max, int)
        check_size_range(size_min, size_max)
        _count('gt_resize', gt_resize)
        _count('sample_q', sample_q)
        super().__init__(lr_root, hr_root, repeat, in_memory, seed, first_k, cache_dir)
        self.size_min, self.size_max, self.gt_resize = size_min, size_max, gt_resize
        self.sample_q, self.augment = sample_q, augment
        smallest = (gt_resize or size_min) ** 2
        if sample_q > smallest:
            raise ValueError(f"sample_q ({sample_q}) exceeds the {smallest} pixels of the smallest ground truth "
                             f"({'gt_resize' if gt_resize else 'size_min'} squared)")
        self.require_equal(self.lr_sizes, 'LR image sizes', 'the LR images are used whole')
        check_varied_queries(sample_q, gt_resize, self.hr_sizes)

    def gt_side(self, index: int) -> int:
        """The shorter side of item `index`'s ground truth before gt_resize."""
        p = index / (len(self) - 1) if len(self) > 1 else 1.0
        return round(self.size_min + (self.size_max - self.size_min) * p)

    def __getitem__(self, index: int) -> dict:
        rng = self.rng(index)
        lr, hr = self.pair(index % len(self.files))
        hr = pil_resize(hr, short_side_size(*hr.shape[:2], self.gt_side(index)))
        if self.augment and rng.random() < 0.5:
            lr, hr = augment(lr, False, True, False), np.ascontiguousarray(augment(hr, False, True, False))
        if self.gt_resize:
            hr = pil_resize(hr, short_side_size(*hr.shape[:2], self.gt_resize))
        return {'lr': image_to_tensor(lr), **pixel_queries(hr, sample_pixels(*hr.shape[:2], self.sample_q, rng)),
                'scale': hr.shape[0] / lr.shape[0]}


class PairedTestSet(PairedFolders):
    """Whole (LR, HR) pairs of paired folders for evaluation, as the official test configs read them
    (`paired-image-folders` + `sr-implicit-paired` without a crop size, e.g. celebA-HQ 32 -> 256): the LR
    image whole; s = int(HR rows / LR rows) and the HR image cropped top-left to s x the LR size. Every
    pair must have the same s. Items like BenchmarkDataset's, with 'scale' = s."""

    def __init__(self, lr_root: str | Path, hr_root: str | Path):
        super().__init__(lr_root, hr_root, in_memory=False)
        scales = {int(hh / h + 1e-9) for (h, _), (hh, _) in zip(self.lr_sizes, self.hr_sizes)}
        if len(scales) != 1 or min(scales) < 1:
            raise ValueError(f"the pairs of {lr_root} and {hr_root} have HR / LR ratios {sorted(scales)}: "
                             f"one integer scale >= 1 expected")
        self.scale = scales.pop()
        for lr_path, hr_path, (h, w), (hh, hw) in zip(self.lr_files, self.hr_files, self.lr_sizes, self.hr_sizes):
            if w * self.scale > hw:
                raise ValueError(f"LR {lr_path} ({h}x{w}) times {self.scale} is wider than HR {hr_path} ({hh}x{hw})")

    def __getitem__(self, index: int) -> dict:
        lr, hr = self.pair(index)
        hr = hr[:lr.shape[0] * self.scale, :lr.shape[1] * self.scale]
        return {'lr': image_to_tensor(lr), 'hr': image_to_tensor(hr), 'scale': float(self.scale),
                'name': self.hr_files[index].stem}


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


class DegradedInputs(Dataset):
    """A test set whose LR images go through a named degradation (degrade.named_plan) before the model
    sees them, each seeded by its image's name (degrade.degrade_named); the ground truths are unchanged."""

    def __init__(self, dataset: Dataset, name: str):
        self.dataset, self.name = dataset, name
        self.hr_files = dataset.hr_files

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict:
        item = self.dataset[index]
        lr = item['lr'].mul(255).round().to(torch.uint8).permute(1, 2, 0).numpy()  # the 8-bit image it was
        return {**item, 'lr': image_to_tensor(degrade_named(lr, self.name, item['name']))}
