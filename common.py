"""Helpers shared by train.py, test.py and inference.py."""
import os
import random
import sys
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
from tqdm import tqdm

import config
from image_quality_assessment import psnr, ssim
from model import model_from_checkpoint, read_checkpoint


def pick_device(name: str = 'auto') -> torch.device:
    """'auto' picks CUDA when available, else the CPU; anything else is taken as a torch device name."""
    if name == 'auto':
        return torch.device('cuda' if torch.cuda.is_available() else 'cpu')
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"device {name!r} is not a device name: use 'auto', 'cpu', 'cuda' or 'cuda:N'") from None
    if device.type == 'cuda' and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} asked for, but CUDA is not available here")
    if device.type == 'cuda' and (device.index or 0) >= torch.cuda.device_count():
        raise ValueError(f"device {name!r} asked for, but there are {torch.cuda.device_count()} CUDA device(s)")
    if device.type not in ('cpu', 'cuda'):
        raise ValueError(f"device {name!r}: only 'cpu' and 'cuda' devices are supported")
    return device


def check_writable(folder: str | Path, what: str) -> None:
    """Refuse, before any work, a folder that cannot be made or written to: one of its parents is a
    file, or the nearest existing one is not writable."""
    folder = Path(folder)
    for parent in [folder, *folder.parents]:
        if parent.exists():
            if not parent.is_dir():
                raise ValueError(f"{what} {folder}: {parent} is a file, not a folder")
            if not os.access(parent, os.W_OK):
                raise ValueError(f"{what} {folder}: no permission to write into {parent}")
            return


def set_threads(threads: int) -> None:
    """torch's CPU threads; 0 leaves torch's default (one per core). On a busy machine fewer can be faster."""
    if threads:
        torch.set_num_threads(threads)


def adopt_model_settings(cfg: SimpleNamespace, argv: list[str], options: dict, weights: str | Path) -> None:
    """Model settings that argv gives (directly or by --experiment) must agree with `options`, the
    model that `weights` holds; the others follow it, and cfg is updated to it."""
    given = config.given(argv)
    differ = []
    for key in config.MODEL_KEYS:
        if key in given and key in options and options[key] != getattr(cfg, key):
            by = f"--{key}" if any(arg.startswith(f'--{key}=') for arg in argv) else f"--experiment={cfg.experiment}"
            differ.append(f"{by} asks for {key}={getattr(cfg, key)!r} but {weights} holds {key}={options[key]!r}")
    if differ:
        raise ValueError("; ".join(differ) + " (leave the model settings out to use the checkpoint's)")
    for key in config.MODEL_KEYS:
        if key in options:
            setattr(cfg, key, options[key])


def checkpoint_model(cfg: SimpleNamespace, argv: list[str], weights: str | Path) -> torch.nn.Module:
    """The model stored in `weights`, after adopt_model_settings."""
    options, _ = read_checkpoint(weights)
    adopt_model_settings(cfg, argv, options, weights)
    return model_from_checkpoint(weights, fast=cfg.fast)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def format_scale(scale: float) -> str:
    """A scale as people write it: 4.0 -> '4', 2.5 -> '2.5'."""
    return f'{scale:g}'


def run_main(main, argv: list[str]) -> int:
    """Run a script's main(argv); -h or --help prints the script's settings (config.help_text). A user
    error (bad setting, missing or unreadable file, unwritable output) prints one `error: ...` line
    on stderr and gives exit status 2 instead of a traceback."""
    script = Path(sys.modules[main.__module__].__file__).stem
    if ('-h' in argv or '--help' in argv) and script in config.SCRIPTS:  # other scripts use argparse's help
        print(sys.modules[main.__module__].__doc__.strip() + '\n\n' + config.help_text(script))
        return 0
    warnings.formatwarning = lambda message, *args, **kwargs: f"warning: {message}\n"  # one line each
    try:
        main(argv)
    except (ValueError, OSError) as e:  # OSError: FileNotFoundError, PermissionError, a full disk
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
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
