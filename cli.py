"""What the three scripts share: the command-line wrapper (help, one-line errors, quiet closed pipes),
the device and threads, seeding, and the model a script runs (a checkpoint, or an ONNX export) and its
renders of a window, an image's alpha included.

Elsewhere: settings and their checks (settings.py), models (model.py), checkpoints (checkpoint.py), the
official weights (weights.py), torchrun (distributed.py), files (files.py), scores (image_quality_assessment.py).
"""
import argparse
import os
import random
import sys
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
from tqdm import tqdm

import settings
from checkpoint import model_from_checkpoint, read_checkpoint
from distributed import leave, reports_error, under_torchrun
from imgproc import Picture, pil_resize_float, three_to_one
from model import model_keys, model_name
from onnx_model import OnnxModel, window_queries


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


def set_threads(threads: int) -> None:
    """torch's CPU threads; 0 leaves torch's default (one per core). On a busy machine fewer can be faster."""
    if threads:
        torch.set_num_threads(threads)


def adopt_model_settings(cfg: SimpleNamespace, argv: list[str], options: dict, weights: str | Path) -> None:
    """Model settings that argv gives (directly or by --experiment) must agree with `options`, the
    model that `weights` holds; the others follow it, and cfg is updated to it."""
    given = settings.given(argv)
    differ = []
    for key in model_keys():
        if key in given and key in options and options[key] != getattr(cfg, key):
            by = f"--{key}" if any(arg.startswith(f'--{key}=') for arg in argv) else f"--experiment={cfg.experiment}"
            differ.append(f"{by} asks for {key}={getattr(cfg, key)!r} but {weights} holds {key}={options[key]!r}")
    if differ:
        raise ValueError("; ".join(differ) + " (leave the model settings out to use the checkpoint's)")
    for key in model_keys():
        if key in options:
            setattr(cfg, key, options[key])


def checkpoint_model(cfg: SimpleNamespace, argv: list[str], weights: str | Path, device: torch.device) -> torch.nn.Module:
    """The model stored in `weights` on `device`, after adopt_model_settings; its decoder compiled
    when cfg.compile_decoder asks (with CUDA graphs on CUDA)."""
    options, _ = read_checkpoint(weights)
    adopt_model_settings(cfg, argv, options, weights)
    model = model_from_checkpoint(weights, fast=cfg.fast).to(device)
    if cfg.compile_decoder:
        if not hasattr(model, 'compile_decoder'):  # LIIF's fast path (fast_liif.FastLIIF) alone has one
            raise ValueError(f"compile_decoder compiles LIIF's fast decoder; {weights} holds {model_name(options)}"
                             + (' and fast=False runs the reference path' if options['model'] == 'liif' else ''))
        model.compile_decoder(cuda_graphs=device.type == 'cuda')
    return model


def load_onnx(cfg: SimpleNamespace, argv: list[str], weights: str | Path) -> OnnxModel:
    """An exported .onnx file in ONNX Runtime (cfg.amp must be fp32, cfg.threads its threads); its model
    settings are adopted as a checkpoint's are."""
    if cfg.amp != 'fp32':
        raise ValueError(f"amp={cfg.amp!r}: an .onnx model runs in fp32 under ONNX Runtime")
    if getattr(cfg, 'compile_decoder', False):
        raise ValueError("compile_decoder compiles a PyTorch model; an .onnx model runs under ONNX Runtime")
    model = OnnxModel(weights, threads=cfg.threads)
    adopt_model_settings(cfg, argv, model.options, weights)
    return model


def render_window(model, device: torch.device, lr: torch.Tensor, size: tuple[int, int],
                  window: tuple[int, int, int, int], cfg: SimpleNamespace, progress: bool) -> torch.Tensor:
    """The (1, 3, h, w) window of the model's render of lr (1, 3, H, W) at `size` (cfg.chunk, cfg.amp): a
    PyTorch model on `device`, or an ONNX Runtime one (OnnxModel) on the CPU."""
    if not isinstance(model, torch.nn.Module):  # ONNX Runtime, on the CPU
        return torch.from_numpy(model.render(lr.numpy(), size, window, window_queries(cfg.chunk), progress=progress))
    return model.render(lr.to(device), size, chunk=cfg.chunk, amp=cfg.amp, progress=progress, window=window)


def upscaled_alpha(model, device: torch.device, picture: Picture, size: tuple[int, int],
                   window: tuple[int, int, int, int], cfg: SimpleNamespace) -> torch.Tensor:
    """The window of the output's alpha, (1, 1, h, w) in [0, 1] units: a constant alpha (fully opaque, fully
    clear) stays exactly that constant, which a render of a constant image is not to the last bit; any
    other is rendered as a gray image (three_to_one), or resized by PIL bicubic with cfg.alpha='bicubic'."""
    top, left, height, width = window
    alpha = picture.alpha
    if alpha.min() == alpha.max():
        return torch.full((1, 1, height, width), float(alpha.flat[0]))
    if cfg.alpha == 'bicubic':  # the whole plane resized, then cut: the same for every window
        return torch.from_numpy(pil_resize_float(alpha, size)[top:top + height, left:left + width])[None, None]
    gray = torch.from_numpy(np.repeat(alpha[None, None], 3, axis=1))
    return three_to_one(render_window(model, device, gray, size, window, cfg, progress=False))


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def format_scale(scale: float) -> str:
    """A scale as people write it: 4.0 -> '4', 2.5 -> '2.5'."""
    return f'{scale:g}'


def run_main(main, argv: list[str]) -> int:
    """Run a script's main(argv); -h or --help prints the script's settings (settings.help_text). A user
    error (bad setting, missing or unreadable file, unwritable output) prints one `error: ...` line
    on stderr and gives exit status 2 instead of a traceback; a closed output pipe (`| head`) ends
    quietly with status 1. Out of memory (a render's RenderOutOfMemory, numpy's MemoryError) is one
    `error:` line too."""
    script = Path(sys.modules[main.__module__].__file__).stem
    # warnings and the error: one line each, on a line of their own even while a progress bar is shown
    warnings.showwarning = lambda message, *args, **kwargs: tqdm.write(f"warning: {message}", file=sys.stderr)
    try:
        if ('-h' in argv or '--help' in argv) and script in settings.SCRIPTS:  # other scripts use argparse's help
            print(sys.modules[main.__module__].__doc__.strip() + '\n\n' + settings.help_text(script))
        else:
            main(argv)
        sys.stdout.flush()  # a closed pipe shows here, not in the interpreter's last flush
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # nothing more to write to
        return 1
    except (ValueError, OSError, MemoryError) as e:  # OSError: FileNotFoundError, PermissionError, a full disk
        if reports_error():  # under torchrun, only the first process to fail
            # rank 0's progress bar may hold the line (another process's): clear it on a terminal, leave it in a log
            over_bar = ('\r\x1b[K' if sys.stderr.isatty() else '\n') if under_torchrun() else ''
            tqdm.write(f"{over_bar}error: {' '.join(str(e).split()) or type(e).__name__}", file=sys.stderr)
        return 2
    finally:
        leave()  # after reporting: the others learn of a failure from the flag before the group closes
    return 0


class ArgumentParser(argparse.ArgumentParser):
    """argparse for the scripts in scripts/: a usage error is one `error:` line with exit status 2
    (raised as ValueError for run_main), not argparse's usage block."""

    def error(self, message: str):
        raise ValueError(f"{message} (python scripts/{self.prog} --help)")
