"""Every setting of train.py, test.py and inference.py, as plain Python.

Edit the values here, or override any of them on the command line: `python test.py --test_scales=[4]
--chunk=60000`. `--experiment=NAME` applies one of EXPERIMENTS first; other overrides apply after it.
Defaults reproduce the official EDSR-baseline-LIIF DIV2K recipe.
"""
import ast
import json
import math
from pathlib import Path
from types import SimpleNamespace

# ---- experiment
experiment = 'edsr-baseline-liif'  # a name from EXPERIMENTS below
out_dir = ''  # where a run writes its files; '' = results/<experiment>
seed = 0  # seeds Python, NumPy and torch for reproducible runs
device = 'auto'  # 'auto' (CUDA when available), 'cpu', 'cuda' or 'cuda:N'

# ---- model
encoder = 'edsr-baseline'  # 'edsr-baseline' or 'rdn'
hidden_list = [256, 256, 256, 256]  # decoder MLP hidden sizes
feat_unfold = True  # feed the 3x3-unfolded feature to the decoder
local_ensemble = True  # blend the 4 nearest latent codes by area
cell_decode = True  # give the decoder the query's cell size
fast = True  # folded first layer + batched ensemble (same function); False runs the official algorithm

# ---- data
train_dir = ['data/DIV2K/DIV2K_train_HR']  # folders of HR training images (all are used)
valid_dir = 'data/DIV2K/DIV2K_valid_HR'  # HR images (patch PSNR as the official) or a benchmark set like Set5 (PSNR at valid_scale)
valid_first = 10  # validate on the first N images of valid_dir (the official recipe uses 10)
valid_repeat = 160  # validation patches per image (the official: 10 images x 160 patches)
valid_scale = 4.0  # scale of the validation when valid_dir is a benchmark set (<set>/HR)
patch_size = 48  # LR patch side in pixels
scale_min = 1.0  # training scales are drawn from U(scale_min, scale_max)
scale_max = 4.0
sample_q = 2304  # HR pixels sampled per training patch
repeat = 20  # passes over the training images per epoch
in_memory = True  # decode the training images once and keep them as uint8 when they fit
num_workers = 8  # DataLoader worker processes

# ---- training
batch_size = 16  # patches per step (over all processes)
lr = 1e-4  # Adam learning rate
schedule = 'multistep'  # 'multistep' (the official: lr x gamma at each epoch in milestones) or 'cosine' (per step)
milestones = [200, 400, 600, 800]  # multistep: epochs at which the learning rate is multiplied by gamma
gamma = 0.5
warmup_steps = 0  # cosine: linear warm-up over this many optimiser steps, then cosine decay to 0 at the last step
epochs = 1000
valid_every = 1  # validate every N epochs
save_every = 100  # keep a numbered checkpoint every N epochs
ema_decay = 0.0  # EMA of the weights, ema = d*ema + (1-d)*w; 0 disables it
amp = 'fp32'  # 'fp32', 'bf16' or 'fp16' (CUDA) autocast, in training, testing and inference
channels_last = False  # channels_last memory format for the encoder (CUDA)
compile = False  # torch.compile the model
resume = ''  # a run's checkpoint to continue ('' = start fresh; 'auto' = out_dir/last.pth if present)
init_weights = ''  # checkpoint (official or ours) to start from for fine-tuning
max_steps = 0  # stop after this many optimiser steps in total (0 = run all epochs); for short runs

# ---- testing
weights = 'results/pretrained_models/edsr-baseline-liif.pth'  # checkpoint to evaluate or run
test_root = 'data/benchmark'  # folder holding <set>/HR and optional <set>/LR_bicubic/X<s>
test_sets = ['Set5', 'Set14']  # sub-folders of test_root to evaluate
test_scales = [2, 3, 4, 6, 8]  # any positive reals; LR files are used where they exist
chunk = 30000  # queries per decoder call; bounds memory at any scale (0 = sized from model.MEMORY_BUDGET)
save_images = False  # also write the SR images beside the results table

# ---- inference
input = 'figure/example_lr.png'  # an image or a folder of images
output = ''  # output file or folder; '' = results/inference/<input name>_x<scale>.png
scale = 4.0  # output / input size; ignored when size is set
scale_hw = []  # [height factor, width factor] for anisotropic output; overrides scale
size = []  # exact output [height, width]; overrides scale and scale_hw
max_pixels = 200_000_000  # refuse outputs with more pixels than this
bits = 8  # output PNG bit depth: 8 or 16

EXPERIMENTS = {
    'edsr-baseline-liif': {},
    'rdn-liif': {'encoder': 'rdn'},
    'edsr-baseline-liif-c': {'cell_decode': False},
    'edsr-baseline-liif-u': {'feat_unfold': False},
    'edsr-baseline-liif-e': {'local_ensemble': False},
    'edsr-baseline-liif-d': {'hidden_list': [256, 256]},
    'edsr-baseline-liif-x2': {'scale_min': 2.0, 'scale_max': 2.0},
    'edsr-baseline-liif-x3': {'scale_min': 3.0, 'scale_max': 3.0},
    'edsr-baseline-liif-x4': {'scale_min': 4.0, 'scale_max': 4.0},
    # minutes on one GPU: batch 32 at twice the official lr (linear scaling), cosine to max_steps after a
    # 200-step warm-up (Adam's early steps at 2e-4 are unstable without it), bf16 autocast for speed
    'edsr-baseline-liif-short': {'batch_size': 32, 'lr': 2e-4, 'schedule': 'cosine', 'warmup_steps': 200,
                                 'amp': 'bf16'},
}

MODEL_KEYS = ['encoder', 'hidden_list', 'feat_unfold', 'local_ensemble', 'cell_decode']


def defaults() -> dict:
    return {k: v for k, v in globals().items()
            if not k.startswith('_') and k.islower() and isinstance(v, (bool, int, float, str, list))}


def _convert(name: str, text: str, default):
    """Parse a command-line value and insist that it has the default's type."""
    if isinstance(default, str):
        return text
    if isinstance(default, list) and default and all(isinstance(v, str) for v in default) and not text.startswith('['):
        return text.split(',')  # --test_sets=Set5,Set14
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        if isinstance(default, bool) and text.lower() in ('true', 'false'):
            return text.lower() == 'true'
        raise ValueError(f"--{name}={text}: cannot read this as a {type(default).__name__}") from None
    if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if isinstance(default, list) and isinstance(value, (tuple, int, float)) and not isinstance(value, bool):
        value = list(value) if isinstance(value, tuple) else [value]  # --test_scales=2,3,4 or --test_scales=4
    if type(value) is not type(default):
        raise ValueError(f"--{name}={text}: expected a {type(default).__name__} like {default!r}, "
                         f"got a {type(value).__name__}")
    return value


def parse(argv: list[str]) -> SimpleNamespace:
    """Defaults, then the named experiment, then `--name=value` overrides."""
    settings = defaults()
    overrides = {}
    for arg in argv:
        if not arg.startswith('--') or '=' not in arg:
            raise ValueError(f"{arg!r}: settings are given as --name=value")
        name, text = arg[2:].split('=', 1)
        if name not in settings:
            raise ValueError(f"unknown setting {name!r}; valid settings: {', '.join(sorted(settings))}")
        overrides[name] = _convert(name, text, settings[name])
    name = overrides.get('experiment', settings['experiment'])
    if name not in EXPERIMENTS:
        raise ValueError(f"unknown experiment {name!r}; choose one of {', '.join(EXPERIMENTS)}")
    settings.update(EXPERIMENTS[name])
    settings.update(overrides)
    if not settings['out_dir']:
        settings['out_dir'] = f"results/{settings['experiment']}"
    return SimpleNamespace(**settings)


def check(cfg: SimpleNamespace, job: str) -> None:
    """Refuse settings that cannot work for `job` ('train', 'test' or 'inference'), listing every problem."""
    problems = []

    def positive(name):
        value = getattr(cfg, name)
        if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
            problems.append(f"{name} must be a positive number, got {value!r}")

    def existing(name, kind='folder'):
        path = Path(getattr(cfg, name))
        if not (path.is_dir() if kind == 'folder' else path.exists()):
            problems.append(f"{name}: {kind} {str(path)!r} does not exist")

    if cfg.encoder not in ('edsr-baseline', 'rdn'):
        problems.append(f"encoder must be 'edsr-baseline' or 'rdn', got {cfg.encoder!r}")
    if not cfg.hidden_list or any(not isinstance(n, int) or n <= 0 for n in cfg.hidden_list):
        problems.append(f"hidden_list must be a non-empty list of positive ints, got {cfg.hidden_list!r}")
    if cfg.amp not in ('fp32', 'bf16', 'fp16'):
        problems.append(f"amp must be 'fp32', 'bf16' or 'fp16', got {cfg.amp!r}")
    if not isinstance(cfg.chunk, int) or cfg.chunk < 0:
        problems.append(f"chunk must be a positive int (or 0 for automatic), got {cfg.chunk!r}")
    if job == 'train':
        for folder in cfg.train_dir:
            if not Path(folder).is_dir():
                problems.append(f"train_dir: folder {folder!r} does not exist")
        existing('valid_dir')
        for name in ('patch_size', 'sample_q', 'repeat', 'batch_size', 'lr', 'epochs', 'valid_every',
                     'valid_repeat', 'valid_scale', 'save_every', 'scale_min', 'scale_max'):
            positive(name)
        if cfg.scale_min > cfg.scale_max:
            problems.append(f"scale_min ({cfg.scale_min}) is larger than scale_max ({cfg.scale_max})")
        if cfg.sample_q > round(cfg.patch_size * cfg.scale_min) ** 2:
            problems.append(f"sample_q ({cfg.sample_q}) exceeds the pixels of the smallest HR patch")
        if cfg.schedule not in ('multistep', 'cosine'):
            problems.append(f"schedule must be 'multistep' or 'cosine', got {cfg.schedule!r}")
        if cfg.warmup_steps < 0:
            problems.append(f"warmup_steps must be >= 0, got {cfg.warmup_steps}")
        if not 0 <= cfg.ema_decay < 1:
            problems.append(f"ema_decay must be in [0, 1), got {cfg.ema_decay}")
        for name in ('resume', 'init_weights'):
            if getattr(cfg, name) not in ('', 'auto') and not Path(getattr(cfg, name)).is_file():
                problems.append(f"{name}: checkpoint {getattr(cfg, name)!r} does not exist")
    if job == 'test':
        if not Path(cfg.weights).is_file():
            problems.append(f"weights: checkpoint {cfg.weights!r} does not exist "
                            f"(`python scripts/download_weights.py` fetches the official one)")
        existing('test_root')
        if not cfg.test_sets or not cfg.test_scales:
            problems.append(f"test_sets and test_scales must not be empty, "
                            f"got {cfg.test_sets!r} and {cfg.test_scales!r}")
        for s in cfg.test_scales:
            if not (isinstance(s, (int, float)) and math.isfinite(s) and s > 0):
                problems.append(f"test_scales must hold positive numbers, got {s!r}")
        for name in cfg.test_sets:
            if not (Path(cfg.test_root) / name / 'HR').is_dir():
                problems.append(f"test_sets: {Path(cfg.test_root) / name / 'HR'} does not exist")
    if job == 'inference':
        existing('input', 'file or folder')
        if cfg.size:
            if len(cfg.size) != 2 or any(not isinstance(n, int) or n <= 0 for n in cfg.size):
                problems.append(f"size must be [height, width] in positive ints, got {cfg.size!r}")
        elif cfg.scale_hw:
            if len(cfg.scale_hw) != 2 or any(not isinstance(s, (int, float)) or not s > 0 for s in cfg.scale_hw):
                problems.append(f"scale_hw must be [height factor, width factor] > 0, got {cfg.scale_hw!r}")
        else:
            positive('scale')
        positive('max_pixels')
        if cfg.bits not in (8, 16):
            problems.append(f"bits must be 8 or 16, got {cfg.bits}")
    if problems:
        raise ValueError("invalid settings:\n  " + "\n  ".join(problems))


def model_options(cfg: SimpleNamespace) -> dict:
    return {k: getattr(cfg, k) for k in MODEL_KEYS}


def save(cfg: SimpleNamespace, path: str | Path) -> None:
    """Write the resolved settings of a run beside its outputs."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(vars(cfg), indent=2) + '\n')
