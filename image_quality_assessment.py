"""PSNR (the official LIIF evaluation protocols) and SSIM (Wang et al., MATLAB convention).

Both take an SR prediction and its HR target as HxWx3 numpy images (float in [0, 1] or uint8)
or as (B, 3, H, W) / (3, H, W) float tensors in [0, 1].
"""
import math

import cv2
import numpy as np
import torch
from tqdm import tqdm

from imgproc import YCBCR_MATRIX, YCBCR_OFFSET, to_integer

PROTOCOLS = ('benchmark', 'div2k', 'rgb')
# Y weights of the difference image used by the 'benchmark' protocol (MATLAB BT.601 luma / 256)
LUMA_OF_DIFFERENCE = (65.738 / 256, 129.057 / 256, 25.064 / 256)
SSIM_WINDOW, SSIM_SIGMA, SSIM_K1, SSIM_K2, SSIM_L = 11, 1.5, 0.01, 0.03, 255.0


def _shave_for(scale: float, protocol: str) -> int:
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown PSNR protocol '{protocol}' (choose from {', '.join(PROTOCOLS)})")
    if not (math.isfinite(scale) and scale >= 0):
        raise ValueError(f"scale must be a non-negative number, got {scale}")
    shave = math.ceil(scale)
    return shave + 6 if protocol == 'div2k' else shave


def _as_batch(sr, hr, name: str) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """(sr, hr) as float64 (B, 3, H, W) tensors in [0, 1]; numpy HxWx3 images become B = 1."""
    is_numpy = isinstance(sr, np.ndarray)
    if is_numpy != isinstance(hr, np.ndarray):
        raise TypeError(f"{name}: give sr and hr both as numpy images or both as tensors")
    if is_numpy:
        if sr.ndim != 3 or sr.shape[2] != 3:
            raise ValueError(f"{name}: expected HxWx3 images, got {sr.shape}")
        if any(x.dtype != np.uint8 and x.dtype.kind != 'f' for x in (sr, hr)):
            raise ValueError(f"{name}: expected uint8 or float [0, 1] images, got {sr.dtype}, {hr.dtype}")
        sr, hr = (torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)))[None] for x in (sr, hr))
        sr, hr = (x.double() / 255 if x.dtype == torch.uint8 else x.double() for x in (sr, hr))
    else:
        if sr.dim() == 3:
            sr, hr = sr[None], hr[None]
        if sr.dim() != 4 or sr.shape[1] != 3:
            raise ValueError(f"{name}: expected (B, 3, H, W) tensors, got {tuple(sr.shape)}")
        sr, hr = sr.double(), hr.double()
    if sr.shape != hr.shape:
        raise ValueError(f"{name}: sr {tuple(sr.shape)} and hr {tuple(hr.shape)} differ in shape")
    return sr, hr, is_numpy


def _shave(x, shave: int):
    return x[..., shave:x.shape[-2] - shave, shave:x.shape[-1] - shave] if shave else x


def _image_means(x: torch.Tensor) -> torch.Tensor:
    """The (B,) means of a (B, ...) float64 tensor, summed by numpy (pairwise, in one thread): torch's
    sum order follows its thread count, which would move the last digits of a score with the number
    of threads, and so with the number of processes that share the work."""
    return torch.from_numpy(x.flatten(1).cpu().numpy().mean(axis=1)).to(x.device)


def psnr(sr, hr, scale: float, protocol: str = 'benchmark'):
    """PSNR in dB of the prediction `sr` (clamped to [0, 1]) against `hr`, both in [0, 1] units
    (uint8 numpy images are divided by 255), with the official LIIF protocols:

    - 'benchmark' (Set5/Set14/B100/Urban100): PSNR of the luminance of the difference image,
      weights (65.738, 129.057, 25.064) / 256 summed over RGB, `scale` pixels shaved on each side;
    - 'div2k': RGB PSNR with `scale + 6` pixels shaved;
    - 'rgb': plain RGB PSNR with `scale` pixels shaved (scale 0: nothing shaved).
    A non-integer scale shaves ceil(scale) pixels. The MSE is the mean over the whole shaved image.
    Returns a float for an HxWx3 numpy pair, a (B,) float64 tensor of per-image values for
    (B, 3, H, W) tensors (a 0-d tensor for (3, H, W)).
    """
    squeeze = torch.is_tensor(sr) and sr.dim() == 3
    shave = _shave_for(scale, protocol)
    sr, hr, is_numpy = _as_batch(sr, hr, 'psnr')
    diff = sr.clamp(0, 1) - hr
    if protocol == 'benchmark':
        diff = (diff * diff.new_tensor(LUMA_OF_DIFFERENCE).view(1, 3, 1, 1)).sum(dim=1)
    diff = _shave(diff, shave)
    if diff.shape[-1] < 1 or diff.shape[-2] < 1:
        raise ValueError(f"psnr: images {tuple(sr.shape[-2:])} are too small to shave {shave} pixels")
    mse = _image_means(diff.pow(2))
    value = -10 * torch.log10(mse)
    if is_numpy:
        return float(value[0])
    return value[0] if squeeze else value


def gaussian_window() -> np.ndarray:
    """The 1-D factor of MATLAB fspecial('gaussian', 11, 1.5): the 2-D window is its outer product."""
    x = np.arange(SSIM_WINDOW) - (SSIM_WINDOW - 1) / 2
    g = np.exp(-x ** 2 / (2 * SSIM_SIGMA ** 2))
    return g / g.sum()


def _y_255(rgb_255, channel_axis: int):
    """Y of MATLAB rgb2ycbcr in 0-255 units from RGB in 0-255 units (numpy or torch)."""
    r, g, b = (rgb_255.select(channel_axis, c) if torch.is_tensor(rgb_255) else rgb_255[..., c]
               for c in range(3))
    wr, wg, wb = (float(w) for w in YCBCR_MATRIX[0])
    return float(YCBCR_OFFSET[0]) + (wr * r + wg * g + wb * b) / 255


def _ssim_from_moments(mu1, mu2, e11, e22, e12):
    """SSIM map from the local means and local second moments E[xy] (numpy or torch)."""
    c1, c2 = (SSIM_K1 * SSIM_L) ** 2, (SSIM_K2 * SSIM_L) ** 2
    var1, var2, cov = e11 - mu1 * mu1, e22 - mu2 * mu2, e12 - mu1 * mu2
    return ((2 * mu1 * mu2 + c1) * (2 * cov + c2)) / ((mu1 * mu1 + mu2 * mu2 + c1) * (var1 + var2 + c2))


def _round_y(y):
    """Y rounded to an integer level, as MATLAB rgb2ycbcr returns it for uint8 images (Y > 0)."""
    return torch.floor(y + 0.5) if torch.is_tensor(y) else np.floor(y + 0.5)


def _round_8bit(x):
    """[0, 1] values (numpy or torch) -> 8-bit levels 0..255 (clamped, rounded half up) as float; the
    torch branch is imgproc.to_integer's rule on tensors."""
    if torch.is_tensor(x):
        return torch.floor(x.clamp(0, 1) * 255 + 0.5)
    return to_integer(x).astype(np.float64)


def ssim(sr, hr, scale: float):
    """SSIM of Wang et al. as in their MATLAB ssim_index.m, with the usual SR evaluation: on the
    Y channel of the 8-bit-rounded images as MATLAB rgb2ycbcr gives it for uint8 images (0-255
    units, rounded to integers, Y in [16, 235]), 11x11 Gaussian window (sigma 1.5),
    K1 = 0.01, K2 = 0.03, L = 255, 'valid' filtering, after shaving ceil(scale) border pixels.

    sr, hr: HxWx3 numpy images (float in [0, 1], or uint8 used as is) -> float; or (B, 3, H, W) /
    (3, H, W) float tensors in [0, 1] -> (B,) float64 tensor (0-d for (3, H, W)).
    The prediction and target are both clamped to [0, 1] and rounded to 8 bits first.
    """
    shave = _shave_for(scale, 'rgb')  # ceil(scale) pixels
    if isinstance(sr, np.ndarray) and isinstance(hr, np.ndarray):
        return _ssim_numpy(sr, hr, shave)
    if not (torch.is_tensor(sr) and torch.is_tensor(hr)):
        raise TypeError("ssim: give sr and hr both as numpy images or both as tensors")
    squeeze = sr.dim() == 3
    value = _ssim_torch(sr[None] if squeeze else sr, hr[None] if squeeze else hr, shave)
    return value[0] if squeeze else value


def _check_ssim_size(shape, shave: int) -> None:
    if min(shape) - 2 * shave < SSIM_WINDOW:
        raise ValueError(f"ssim: images of size {tuple(shape)} shaved by {shave} are smaller "
                         f"than the {SSIM_WINDOW}x{SSIM_WINDOW} window")


def _ssim_numpy(sr: np.ndarray, hr: np.ndarray, shave: int) -> float:
    if sr.shape != hr.shape or sr.ndim != 3 or sr.shape[2] != 3:
        raise ValueError(f"ssim: expected two HxWx3 images of one shape, got {sr.shape}, {hr.shape}")
    if any(x.dtype != np.uint8 and x.dtype.kind != 'f' for x in (sr, hr)):
        raise ValueError(f"ssim: expected uint8 or float [0, 1] images, got {sr.dtype}, {hr.dtype}")
    _check_ssim_size(sr.shape[:2], shave)
    y1, y2 = (_round_y(_y_255(x.astype(np.float64) if x.dtype == np.uint8
                              else _round_8bit(x.astype(np.float64)), -1)) for x in (sr, hr))
    y1, y2 = _shave(y1, shave), _shave(y2, shave)
    g = gaussian_window()
    pad = SSIM_WINDOW // 2

    def filt(x: np.ndarray) -> np.ndarray:  # 'valid' part of the separable Gaussian correlation
        return cv2.sepFilter2D(x, cv2.CV_64F, g, g, borderType=cv2.BORDER_REFLECT)[pad:-pad, pad:-pad]

    ssim_map = _ssim_from_moments(filt(y1), filt(y2), filt(y1 * y1), filt(y2 * y2), filt(y1 * y2))
    return float(ssim_map.mean())


def _ssim_torch(sr: torch.Tensor, hr: torch.Tensor, shave: int) -> torch.Tensor:
    if sr.shape != hr.shape or sr.dim() != 4 or sr.shape[1] != 3:
        raise ValueError(f"ssim: expected two (B, 3, H, W) tensors of one shape, "
                         f"got {tuple(sr.shape)}, {tuple(hr.shape)}")
    _check_ssim_size(sr.shape[-2:], shave)
    # float64: E[y^2] - mu^2 at 0-255 units loses too many digits in float32
    y1, y2 = (_shave(_round_y(_y_255(_round_8bit(x.double()), 1)), shave) for x in (sr, hr))
    # separable 'valid' filtering of the five maps at once, tap by tap (float64 conv2d is slow on CPU)
    maps = torch.stack([y1, y2, y1 * y1, y2 * y2, y1 * y2])
    for axis in (-2, -1):
        out_len = maps.shape[axis] - SSIM_WINDOW + 1
        filtered = torch.zeros_like(maps.narrow(axis, 0, out_len))
        for k, w in enumerate(gaussian_window()):
            filtered.add_(maps.narrow(axis, k, out_len), alpha=float(w))
        maps = filtered
    mu1, mu2, e11, e22, e12 = maps
    ssim_map = _ssim_from_moments(mu1, mu2, e11, e22, e12)
    return _image_means(ssim_map)


def evaluate(model: torch.nn.Module, dataset, *, chunk: int = 30000, amp: str = 'fp32',
             protocol: str = 'benchmark', with_ssim: bool = True, border: bool = True, on_image=None,
             desc: str = 'evaluate', progress: bool = True) -> list[dict]:
    """Super-resolve every item of `dataset` (dicts with 'lr' (3,h,w), 'hr' (3,H,W), 'scale', 'name')
    to its HR size with `model.render` (`chunk` queries per decoder call, `amp` autocast) and score
    it: PSNR (image_quality_assessment `protocol`, shaving the scale's border unless `border` is
    False) and SSIM on the clamped SR.

    Returns one row per image: {'name', 'scale', 'psnr'[, 'ssim']}. `on_image(item, sr)`, when
    given, receives each clamped SR as a (1, 3, H, W) tensor (e.g. to save it); `progress` shows a
    bar named `desc`. Runs on the model's device with the model in eval mode, and restores its
    train/eval mode afterwards.
    """
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    rows = []
    try:
        for i in tqdm(range(len(dataset)), desc=desc, unit='img', leave=False, dynamic_ncols=True,
                      disable=not progress):
            item = dataset[i]
            lr, hr = item['lr'].unsqueeze(0).to(device), item['hr'].unsqueeze(0).to(device)
            sr = model.render(lr, tuple(hr.shape[-2:]), chunk=chunk, amp=amp).clamp_(0, 1)
            row = {'name': item['name'], 'scale': item['scale'],
                   'psnr': float(psnr(sr, hr, item['scale'] if border else 0, protocol=protocol))}
            if with_ssim:
                row['ssim'] = float(ssim(sr, hr, item['scale']))
            if on_image is not None:
                on_image(item, sr)
            rows.append(row)
    finally:
        model.train(was_training)
    return rows
