"""Helpers shared by train.py, test.py and inference.py."""
import random
import sys

import numpy as np
import torch
from tqdm import tqdm

from image_quality_assessment import psnr, ssim


def pick_device(name: str = 'auto') -> torch.device:
    """'auto' picks CUDA when available, else the CPU; anything else is taken as a torch device name."""
    if name == 'auto':
        return torch.device('cuda' if torch.cuda.is_available() else 'cpu')
    device = torch.device(name)
    if device.type == 'cuda' and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} asked for, but CUDA is not available here")
    return device


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def format_scale(scale: float) -> str:
    """A scale as people write it: 4.0 -> '4', 2.5 -> '2.5'."""
    return f'{scale:g}'


def run_main(main, argv: list[str]) -> int:
    """Run a script's main(argv); a user error (bad setting, missing or unreadable file) prints one
    `error: ...` line on stderr and gives exit status 2 instead of a traceback."""
    try:
        main(argv)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


def evaluate(model: torch.nn.Module, dataset, *, chunk: int = 30000, amp: str = 'fp32',
             protocol: str = 'benchmark', with_ssim: bool = True, on_image=None,
             desc: str = 'evaluate') -> list[dict]:
    """Super-resolve every item of `dataset` (dicts with 'lr' (3,h,w), 'hr' (3,H,W), 'scale', 'name')
    to its HR size with `model.render` (`chunk` queries per decoder call, `amp` autocast) and score
    it: PSNR (image_quality_assessment `protocol`) and SSIM on the clamped SR.

    Returns one row per image: {'name', 'scale', 'psnr'[, 'ssim']}. `on_image(item, sr)`, when
    given, receives each clamped SR as a (1, 3, H, W) tensor (e.g. to save it). Runs on the
    model's device with the model in eval mode, and restores its train/eval mode afterwards.
    """
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    rows = []
    try:
        for i in tqdm(range(len(dataset)), desc=desc, unit='img', leave=False, dynamic_ncols=True):
            item = dataset[i]
            lr, hr = item['lr'].unsqueeze(0).to(device), item['hr'].unsqueeze(0).to(device)
            sr = model.render(lr, tuple(hr.shape[-2:]), chunk=chunk, amp=amp).clamp_(0, 1)
            row = {'name': item['name'], 'scale': item['scale'],
                   'psnr': float(psnr(sr, hr, item['scale'], protocol=protocol))}
            if with_ssim:
                row['ssim'] = float(ssim(sr, hr, item['scale']))
            if on_image is not None:
                on_image(item, sr)
            rows.append(row)
    finally:
        model.train(was_training)
    return rows
