"""Every setting of train.py, test.py and inference.py, as plain Python.

Edit the values here, or override any of them on the command line: `python test.py --test_scales=[4]
--chunk=60000`. `--experiment=NAME` applies one of EXPERIMENTS first; other overrides apply after it.
Defaults reproduce the official EDSR-baseline-LIIF DIV2K recipe. Each script reads the settings of
the sections named in SCRIPTS; `--help` lists them with the one-line comments written here.
"""
import ast
import difflib
import io
import json
import math
import tokenize
from functools import cache
from pathlib import Path
from types import SimpleNamespace

from dataset import check_patch_queries, check_scale_range, check_size_range, check_varied_queries
from imgproc import replacing
from model import option_problems
from precision import check_amp_name
from video import check_encoder

# ---- experiment
experiment = 'edsr-baseline-liif'  # a name from EXPERIMENTS below
out_dir = ''  # where a run writes its files; '' = results/<experiment>
seed = 0  # seeds Python, NumPy and torch for reproducible runs
device = 'auto'  # 'auto' (CUDA when available), 'cpu', 'cuda' or 'cuda:N'
threads = 0  # CPU threads for torch (torch.set_num_threads); 0 = torch's default, one per core
tf32 = False  # CUDA: fp32 matmuls and convolutions on TF32 tensor cores (faster; PSNR moves in the 4th decimal)

# ---- model
model = 'liif'  # 'liif', 'metasr' or 'upsample' (the encoder's own up-sampler, no decoder: the fixed-scale baselines)
encoder = 'edsr-baseline'  # 'edsr-baseline' or 'rdn'
upsample_scale = 2  # scale of the 'upsample' model's pixel-shuffle up-sampler (EDSR 2/3/4/8, RDN 2/3/4)
hidden_list = [256, 256, 256, 256]  # LIIF decoder MLP hidden sizes (MetaSR's is fixed: [256])
feat_unfold = True  # LIIF: feed the 3x3-unfolded feature to the decoder
local_ensemble = True  # LIIF: blend the 4 nearest latent codes by area
cell_decode = True  # LIIF: give the decoder the query's cell size
fast = True  # LIIF: folded first layer + batched ensemble (same function); False runs the official algorithm
compile_decoder = False  # LIIF fast path: torch.compile the decoder for rendering (CUDA graphs on CUDA); off until measured faster

# ---- data
train_data = 'downsampled'  # 'downsampled' (LR made at random scales), 'paired' (train_lr_dir + train_dir) or 'varied' (paired, sizes over [size_min, size_max])
train_dir = ['data/DIV2K/DIV2K_train_HR']  # folders of HR training images (all are used)
train_lr_dir = ['data/DIV2K/DIV2K_train_LR_bicubic/X2']  # 'paired' / 'varied': LR folders, one per train_dir folder, matched by sorted file order
valid_dir = 'data/DIV2K/DIV2K_valid_HR'  # HR images (patch PSNR as the official) or a benchmark set like Set5 (PSNR at valid_scale)
valid_lr_dir = ''  # LR folder paired with valid_dir: validate on paired patches (patch_size, sample_q) as the official; '' = not paired
valid_first = 10  # validate on the first N images of valid_dir (the official recipe uses 10)
valid_repeat = 160  # validation patches per image (the official: 10 images x 160 patches)
valid_scale = 4.0  # scale of the validation when valid_dir is a benchmark set (<set>/HR)
patch_size = 48  # LR patch side in pixels (0 = whole LR images, 'paired' data and paired validation only)
scale_min = 1.0  # training scales are drawn from U(scale_min, scale_max)
scale_max = 4.0  # upper end of the training scales
sample_q = 2304  # HR pixels sampled per training patch (0 = all of them, 'paired' / 'varied' data only)
size_min = 32  # 'varied': the ground truths' shorter sides rise evenly from size_min to size_max over the items
size_max = 256  # 'varied': the largest ground truth's shorter side
gt_resize = 0  # 'varied': resize each ground truth again to this shorter side (0 = off)
repeat = 20  # passes over the training images per epoch
in_memory = True  # decode the training images once and keep them as uint8 when they fit
node_cache = True  # torchrun + in_memory: decode them once per node into one read-only memory-mapped file that every process shares (False: a copy per process)
cache_dir = ''  # node_cache's folder, on a local disk with room for the decoded images ('' = <system temp folder>/liif-cache)
num_workers = 8  # DataLoader worker processes
device_data = False  # make the training patches on the device from the images held there ('downsampled', in_memory); the workers only draw

# ---- training
batch_size = 16  # patches per step (over all processes)
lr = 1e-4  # Adam learning rate
schedule = 'multistep'  # 'multistep' (the official: lr x gamma at each epoch in milestones) or 'cosine' (per step)
milestones = [200, 400, 600, 800]  # multistep: epochs at which the learning rate is multiplied by gamma
gamma = 0.5  # multistep: learning-rate factor at each milestone
warmup_steps = 0  # cosine: linear warm-up over this many optimiser steps, then cosine decay to 0 at the last step
epochs = 1000  # passes of `repeat` x the training images
valid_every = 1  # validate every N epochs
save_every = 100  # keep a numbered checkpoint every N epochs
ema_decay = 0.0  # EMA of the weights, ema = d*ema + (1-d)*w; 0 disables it
amp = 'fp32'  # 'fp32', 'bf16' or 'fp16' (CUDA) autocast, in training, testing and inference
channels_last = False  # channels_last memory format for the encoder (CUDA)
compile = False  # torch.compile the training step (forward, loss, backward; CUDA graphs on one GPU)
resume = ''  # a run's checkpoint to continue ('' = start fresh; 'auto' = out_dir/last.pth if present)
init_weights = ''  # checkpoint (official or ours) to start from for fine-tuning
max_steps = 0  # stop after this many optimiser steps in total (0 = run all epochs); for short runs

# ---- testing
weights = 'results/pretrained_models/edsr-baseline-liif.pth'  # checkpoint to evaluate or run
test_root = 'data/benchmark'  # folder holding <set>/HR and optional <set>/LR_bicubic/X<s>
test_sets = ['Set5', 'Set14']  # sub-folders of test_root to evaluate
test_scales = [2, 3, 4, 6, 8]  # any positive reals; LR files are used where they exist
chunk = 30000  # queries per decoder call; bounds memory at any scale (0 = sized from the device's memory)
save_images = False  # also write the SR images beside the results table
test_dir = ''  # HR folder of (LR, HR) pairs to score instead of test_sets, e.g. celebA-HQ val/256 ('' = benchmark sets)
test_lr_dir = ''  # LR folder paired with test_dir by sorted file order, images used whole (e.g. val/32)
test_protocol = 'benchmark'  # 'benchmark' (PSNR of Y, border = scale, and SSIM) or 'rgb' (PSNR in RGB, every pixel: celebA-HQ's)

# ---- inference
input = 'figure/example_lr.png'  # an image, a video (mp4, mkv, mov, webm, avi) or a folder of them
output = ''  # output file or folder; '' = results/inference/<input name>_x<scale>.png (a video: its own container)
scale = 4.0  # output / input size; ignored when size is set
scale_hw = []  # [height factor, width factor] for anisotropic output; overrides scale
size = []  # exact output [height, width]; overrides scale and scale_hw
window = []  # [top, left, height, width]: write only this part of the output ([] = all of it)
max_pixels = 200_000_000  # refuse outputs with more pixels than this
bits = 8  # output PNG bit depth: 8 or 16
overwrite = False  # a folder input: write every output again (False: skip those already there, to finish an interrupted run)
codec = 'libx264'  # video output encoder: 'libx264', 'libx265', 'libvpx-vp9' or 'ffv1' (lossless)
crf = 18  # video quality, lower is better and bigger: x264/x265 0-51, VP9 0-63 (ffv1 ignores it)
preset = 'medium'  # x264/x265 speed preset, 'ultrafast' to 'veryslow' (slower: smaller files at the same crf)
pix_fmt = 'yuv420p'  # video pixel format; a source deeper than 8 bits gets its 10-bit form where the codec has one
frames = []  # video: [start, end) frame numbers to render, a preview ([] = every frame)

_DIV2K_X2 = {'train_data': 'paired', 'train_lr_dir': ['data/DIV2K/DIV2K_train_LR_bicubic/X2'],
             'valid_lr_dir': 'data/DIV2K/DIV2K_valid_LR_bicubic/X2', 'sample_q': 0}


def _celebahq(lr_size: int, hr_size: int) -> dict:
    """The official celebA-HQ recipe lr_size -> hr_size: LR images whole, ground truths of sizes spread over
    [lr_size, hr_size], 1024 queries; validation on the first 100 whole validation pairs; 200 epochs;
    testing on every validation pair, RGB PSNR over every pixel."""
    return {'train_data': 'varied', 'train_lr_dir': [f'data/celebAHQ/train/{lr_size}'],
            'train_dir': [f'data/celebAHQ/train/{hr_size}'], 'valid_lr_dir': f'data/celebAHQ/val/{lr_size}',
            'valid_dir': f'data/celebAHQ/val/{hr_size}', 'size_min': lr_size, 'size_max': hr_size,
            'patch_size': 0, 'sample_q': 1024, 'repeat': 1, 'valid_first': 100, 'valid_repeat': 1,
            'epochs': 200, 'milestones': [100], 'gamma': 0.1, 'test_lr_dir': f'data/celebAHQ/val/{lr_size}',
            'test_dir': f'data/celebAHQ/val/{hr_size}', 'test_protocol': 'rgb'}


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
    'edsr-baseline-metasr': {'model': 'metasr'},
    'rdn-metasr': {'model': 'metasr', 'encoder': 'rdn'},
    # fixed-scale baselines on DIV2K's X2 LR files: 48-px LR patches, every HR pixel of the patch a query
    'edsr-baseline-x2': {'model': 'upsample', 'upsample_scale': 2, **_DIV2K_X2},
    'rdn-x2': {'model': 'upsample', 'upsample_scale': 2, 'encoder': 'rdn', **_DIV2K_X2},
    # celebA-HQ, ground truths of varying size (see data/README.md for the folders)
    'celebAHQ-32-256-liif': _celebahq(32, 256),
    'celebAHQ-32-256-upsample': {**_celebahq(32, 256), 'gt_resize': 256, 'model': 'upsample', 'upsample_scale': 8},
    'celebAHQ-64-128-liif': _celebahq(64, 128),
    'celebAHQ-64-128-upsample': {**_celebahq(64, 128), 'gt_resize': 128, 'model': 'upsample', 'upsample_scale': 2},
    # minutes on one GPU: batch 32 at twice the official lr (linear scaling), cosine to max_steps after a
    # 200-step warm-up (Adam's early steps at 2e-4 are unstable without it), bf16 autocast for speed
    'edsr-baseline-liif-short': {'batch_size': 32, 'lr': 2e-4, 'schedule': 'cosine', 'warmup_steps': 200,
                                 'amp': 'bf16'},
}

MAX_THREADS = 1024  # more than any CPU has cores; torch takes up to 2**31 - 1 and would start that many threads

MODEL_KEYS = ['model', 'encoder', 'upsample_scale', 'hidden_list', 'feat_unfold', 'local_ensemble', 'cell_decode']

# The settings each script reads: whole sections of this file, plus single settings from other
# sections, minus the ones it ignores.
SCRIPTS = {
    'train': {'sections': ['experiment', 'model', 'data', 'training'], 'plus': ['chunk'], 'minus': ['compile_decoder']},
    'test': {'sections': ['experiment', 'model', 'testing'], 'plus': ['amp'], 'minus': ['seed']},
    'inference': {'sections': ['experiment', 'model', 'inference'], 'plus': ['weights', 'chunk', 'amp'],
                  'minus': ['out_dir', 'seed']},
}


def defaults() -> dict:
    return {k: v for k, v in globals().items()
            if not k.startswith('_') and k.islower() and isinstance(v, (bool, int, float, str, list))}


@cache
def documentation() -> dict[str, tuple[str, str]]:
    """{setting: (section, comment)} read from this file's source: the `# ---- section` lines and the
    comment that ends each setting's assignment, so --help prints the texts written above."""
    source = Path(__file__).read_text()
    comments = {token.end[0]: token.string.lstrip('#').strip()
                for token in tokenize.generate_tokens(io.StringIO(source).readline) if token.type == tokenize.COMMENT}
    sections = sorted((line, text.lstrip('-').strip()) for line, text in comments.items() if text.startswith('----'))
    settings = defaults()
    found = {}
    for node in ast.parse(source).body:
        if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name) and node.targets[0].id in settings:
            section = [name for line, name in sections if line < node.lineno][-1]
            found[node.targets[0].id] = (section, comments.get(node.end_lineno, ''))
    return found


def script_settings(script: str) -> list[str]:
    """The names of the settings `script` ('train', 'test' or 'inference') reads, in file order."""
    rule = SCRIPTS[script]
    return [name for name, (section, _) in documentation().items()
            if (section in rule['sections'] or name in rule['plus']) and name not in rule['minus']]


def _as_typed(value) -> str:
    """A value as one types it after --name=."""
    if isinstance(value, list):
        if value and all(isinstance(v, str) for v in value):
            return ','.join(value)
        return '[' + ','.join(repr(v) for v in value) + ']'
    return value if isinstance(value, str) else repr(value)


def help_text(script: str) -> str:
    """`--help` for a script: its settings by section with default and comment, then the experiments."""
    settings, docs = defaults(), documentation()
    names = script_settings(script)
    lines = [f"usage: python {script}.py [--name=value ...]   (lists: --name=[a,b] or --name=a,b)", '',
             f"settings read by {script}.py, with their defaults (edit config.py or override them here):"]
    section, width = None, 34
    for name in names:
        if docs[name][0] != section:
            section = docs[name][0]
            lines.append(f"\n  {section}")
        option = f"--{name}={_as_typed(settings[name])}"
        if len(option) >= width:  # a long default: its comment goes on the next line
            lines.append(f"    {option}")
            option = ''
        lines.append(f"    {option:<{width}}{docs[name][1]}")
    lines += ['', "named experiments (--experiment=NAME applies these first, then the other settings):"]
    width = max(map(len, EXPERIMENTS)) + 2
    for name, changes in EXPERIMENTS.items():
        text = ', '.join(f"{k}={_as_typed(v)}" for k, v in changes.items()) or 'the defaults above'
        lines.append(f"    {name:<{width}}{text}")
    return '\n'.join(lines)


def given(argv: list[str]) -> set[str]:
    """The settings an argv sets explicitly: its overrides and, when it names an experiment, that
    experiment's settings and every model setting (a named experiment describes a whole model)."""
    names = {arg[2:].split('=', 1)[0] for arg in argv}
    if 'experiment' in names:
        experiment = parse(argv).experiment
        names |= set(EXPERIMENTS[experiment]) | set(MODEL_KEYS)
    return names


def _convert(name: str, text: str, default):
    """Parse a command-line value and insist that it has the default's type (a list of names holds names)."""
    if isinstance(default, str):
        return text
    names = isinstance(default, list) and default and all(isinstance(v, str) for v in default)
    if names and not text.startswith('['):
        return text.split(',') if text else []  # --test_sets=Set5,Set14
    shown = f"--{name}={text if len(text) <= 60 else text[:57] + '...'}"
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):  # {[]: 1}; ((((...)))) nested deep
        if isinstance(default, bool) and text.lower() in ('true', 'false'):
            return text.lower() == 'true'
        raise ValueError(f"{shown}: cannot read this as a {type(default).__name__}") from None
    if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
        try:
            value = float(value)
        except OverflowError:
            raise ValueError(f"{shown}: the number is too large for a float") from None
    if isinstance(default, list) and isinstance(value, (tuple, int, float)) and not isinstance(value, bool):
        value = list(value) if isinstance(value, tuple) else [value]  # --test_scales=2,3,4 or --test_scales=4
    if type(value) is not type(default) or (names and not all(isinstance(v, str) for v in value)):
        raise ValueError(f"{shown}: expected a {type(default).__name__} like {default!r}, "
                         f"got a {type(value).__name__}{' holding other things than names' if names else ''}")
    return value


def parse(argv: list[str], script: str | None = None) -> SimpleNamespace:
    """Defaults, then the named experiment, then `--name=value` overrides. With `script` ('train',
    'test' or 'inference') only the settings that script reads are accepted."""
    settings = defaults()
    known = script_settings(script) if script else list(settings)
    overrides = {}
    for arg in argv:
        if not arg.startswith('--') or '=' not in arg:
            raise ValueError(f"{arg!r}: settings are given as --name=value (--help lists them)")
        name, text = arg[2:].split('=', 1)
        if name not in known:
            close = difflib.get_close_matches(name, known, n=1)
            hint = f"; did you mean --{close[0]}?" if close else '.'
            where = f" for {script}.py" if script else ''
            raise ValueError(f"unknown setting --{name}{where}{hint} Its settings: {', '.join(known)} "
                             f"(--help describes them)")
        overrides[name] = _convert(name, text, settings[name])
    name = overrides.get('experiment', settings['experiment'])
    if name not in EXPERIMENTS:
        raise ValueError(f"unknown experiment {name!r}; choose one of {', '.join(EXPERIMENTS)}")
    settings.update(EXPERIMENTS[name])
    settings.update(overrides)
    if not settings['out_dir']:
        settings['out_dir'] = f"results/{settings['experiment']}"
    return SimpleNamespace(**settings)


def found(path: str | Path, test=Path.exists) -> bool:
    """test(Path(path)) (exists, is_dir or is_file); False for a name the system cannot look up (too long,
    a NUL character), which then counts as missing."""
    try:
        return test(Path(path))
    except (OSError, ValueError):
        return False


class _Problems(list):
    """What is wrong with a script's settings, collected so that one error names every problem."""

    def __init__(self, cfg: SimpleNamespace):
        super().__init__()
        self.cfg = cfg

    def positive(self, *names: str) -> None:
        for name in names:
            value = getattr(self.cfg, name)
            if not (isinstance(value, (int, float)) and 0 < value < math.inf):  # no float(): ints of any size
                self.append(f"{name} must be a positive number, got {value!r}")

    def count(self, *names: str) -> None:
        for name in names:
            if not isinstance(getattr(self.cfg, name), int) or getattr(self.cfg, name) < 0:
                self.append(f"{name} must be a non-negative int, got {getattr(self.cfg, name)!r}")

    def existing(self, name: str, kind: str = 'folder', value: str | None = None) -> None:
        value = getattr(self.cfg, name) if value is None else value
        test = {'folder': Path.is_dir, 'checkpoint': Path.is_file}.get(kind, Path.exists)
        if not value:  # Path('') is the current folder: never what an empty setting means
            self.append(f"{name} is empty: give a {kind}")
        elif kind == 'checkpoint' and found(value, Path.is_dir):
            self.append(f"{name}: {value!r} is a folder, not a checkpoint file")
        elif not found(value, test):
            self.append(f"{name}: {kind} {value!r} does not exist")

    def rule(self, check, *args) -> None:
        """A rule owned elsewhere (the datasets, the precision policy): its refusal, as one problem."""
        try:
            check(*args)
        except ValueError as e:
            self.append(str(e))


def check(cfg: SimpleNamespace, job: str) -> None:
    """Refuse settings that cannot work for `job` ('train', 'test' or 'inference'), listing every problem."""
    problems = _Problems(cfg)
    _check_model_and_device(problems, cfg)
    if job == 'train':
        _check_train_data(problems, cfg)
        _check_training(problems, cfg)
    if job == 'test':
        _check_testing(problems, cfg)
    if job == 'inference':
        _check_inference(problems, cfg)
    if problems:
        raise ValueError("invalid settings: " + "; ".join(problems))


def _check_model_and_device(problems: _Problems, cfg: SimpleNamespace) -> None:
    """The model section and the settings every script reads (amp, threads, chunk)."""
    problems.extend(option_problems(model_options(cfg)))
    problems.rule(check_amp_name, cfg.amp)
    if not isinstance(cfg.threads, int) or not 0 <= cfg.threads <= MAX_THREADS:
        problems.append(f"threads must be a non-negative int up to {MAX_THREADS} (0 = torch's default), "
                        f"got {cfg.threads!r}")
    if not isinstance(cfg.chunk, int) or cfg.chunk < 0:
        problems.append(f"chunk must be a positive int (or 0 for automatic), got {cfg.chunk!r}")


def _check_train_data(problems: _Problems, cfg: SimpleNamespace) -> None:
    """The data section: folders, patch and query counts; the datasets own the rules they share."""
    if cfg.train_data not in ('downsampled', 'paired', 'varied'):
        problems.append(f"train_data must be 'downsampled', 'paired' or 'varied', got {cfg.train_data!r}")
    paired = cfg.train_data in ('paired', 'varied')
    for name in ('train_dir', 'train_lr_dir') if paired else ('train_dir',):
        if not getattr(cfg, name):
            problems.append(f"{name} is empty: give one or more folders")
        for folder in getattr(cfg, name):
            problems.existing(name, 'folder', folder)
    if paired and len(cfg.train_lr_dir) != len(cfg.train_dir):
        problems.append(f"train_lr_dir has {len(cfg.train_lr_dir)} folder(s) for the {len(cfg.train_dir)} of "
                        f"train_dir: each HR folder needs its LR folder")
    problems.existing('valid_dir')
    if cfg.valid_lr_dir:
        problems.existing('valid_lr_dir')
    problems.positive('repeat', 'valid_repeat', 'valid_scale', 'scale_min', 'scale_max', 'valid_first')
    problems.count('patch_size', 'sample_q', 'gt_resize', 'num_workers')
    if cfg.cache_dir and found(cfg.cache_dir) and not found(cfg.cache_dir, Path.is_dir):
        problems.append(f"cache_dir: {cfg.cache_dir!r} is a file, not a folder")
    problems.rule(check_scale_range, cfg.scale_min, cfg.scale_max)
    # downsampled patches (training, or validation on a folder of HR images) have random scales
    downsampled_valid = not cfg.valid_lr_dir and not found(Path(cfg.valid_dir) / 'HR', Path.is_dir)
    if (cfg.train_data == 'downsampled' or downsampled_valid) and not (cfg.patch_size > 0 and cfg.sample_q > 0):
        problems.append(f"patch_size and sample_q must be > 0 for patches made from HR images (training with "
                        f"train_data='downsampled' or validation without valid_lr_dir), got {cfg.patch_size} "
                        f"and {cfg.sample_q}")
    elif cfg.train_data == 'downsampled':
        problems.rule(check_patch_queries, cfg.patch_size, cfg.scale_min, cfg.sample_q)
    if cfg.device_data and (cfg.train_data != 'downsampled' or not cfg.in_memory):
        problems.append(f"device_data makes patches of train_data='downsampled' from images held in memory; got "
                        f"train_data={cfg.train_data!r}, in_memory={cfg.in_memory}")
    if cfg.train_data == 'varied':
        problems.positive('size_min', 'size_max')
        problems.rule(check_size_range, cfg.size_min, cfg.size_max)
        problems.rule(check_varied_queries, cfg.sample_q, cfg.gt_resize)


def _check_training(problems: _Problems, cfg: SimpleNamespace) -> None:
    """The training section: batch, optimiser, schedule, EMA and the checkpoints to start from; the seed."""
    if not isinstance(cfg.seed, int) or not 0 <= cfg.seed < 2 ** 32:
        problems.append(f"seed must be an int in [0, 2**32) (NumPy's seeds), got {cfg.seed!r}")
    problems.positive('batch_size', 'lr', 'epochs', 'valid_every', 'save_every', 'gamma')
    problems.count('max_steps')
    if any(type(m) is not int or m <= 0 for m in cfg.milestones):
        problems.append(f"milestones must be positive epoch numbers, got {cfg.milestones!r}")
    if cfg.schedule not in ('multistep', 'cosine'):
        problems.append(f"schedule must be 'multistep' or 'cosine', got {cfg.schedule!r}")
    problems.count('warmup_steps')
    if not 0 <= cfg.ema_decay < 1:
        problems.append(f"ema_decay must be in [0, 1), got {cfg.ema_decay}")
    for name in ('resume', 'init_weights'):
        if getattr(cfg, name) not in ('', 'auto'):
            problems.existing(name, 'checkpoint')


def _check_testing(problems: _Problems, cfg: SimpleNamespace) -> None:
    if cfg.weights and not found(cfg.weights):
        if cfg.weights != weights:  # the default file is fetched when missing
            problems.append(f"weights: checkpoint {cfg.weights!r} does not exist "
                            f"(`python scripts/download_weights.py` fetches the official one)")
    else:
        problems.existing('weights', 'checkpoint')
    if cfg.test_protocol not in ('benchmark', 'rgb'):
        problems.append(f"test_protocol must be 'benchmark' or 'rgb', got {cfg.test_protocol!r}")
    if cfg.test_dir or cfg.test_lr_dir:  # paired folders instead of benchmark sets
        problems.existing('test_dir')
        problems.existing('test_lr_dir')
        return
    problems.existing('test_root')
    if not cfg.test_sets or not cfg.test_scales:
        problems.append(f"test_sets and test_scales must not be empty, got {cfg.test_sets!r} and {cfg.test_scales!r}")
    for s in cfg.test_scales:
        if not (type(s) in (int, float) and 0 < s < math.inf):
            problems.append(f"test_scales must hold positive numbers, got {s!r}")
    for name in cfg.test_sets:
        if not found(Path(cfg.test_root) / name / 'HR', Path.is_dir):
            problems.append(f"test_sets: {Path(cfg.test_root) / name / 'HR'} does not exist")


def _check_inference(problems: _Problems, cfg: SimpleNamespace) -> None:
    problems.existing('input', 'file or folder')
    if not cfg.weights or found(cfg.weights, Path.is_dir):  # a missing default file is fetched later
        problems.existing('weights', 'checkpoint')
    if cfg.size:
        if len(cfg.size) != 2 or any(type(n) is not int or n <= 0 for n in cfg.size):
            problems.append(f"size must be [height, width] in positive ints, got {cfg.size!r}")
    elif cfg.scale_hw:
        if len(cfg.scale_hw) != 2 or any(type(s) not in (int, float) or not 0 < s < math.inf for s in cfg.scale_hw):
            problems.append(f"scale_hw must be [height factor, width factor] > 0, got {cfg.scale_hw!r}")
    else:
        problems.positive('scale')
    problems.positive('max_pixels')
    if cfg.bits not in (8, 16):
        problems.append(f"bits must be 8 or 16, got {cfg.bits}")
    problems.rule(check_encoder, cfg.codec, cfg.pix_fmt, cfg.preset)
    if type(cfg.crf) is not int or not 0 <= cfg.crf <= 63:
        problems.append(f"crf must be an int in [0, 63], got {cfg.crf!r}")
    if cfg.frames and (len(cfg.frames) != 2 or any(type(n) is not int for n in cfg.frames)
                       or not 0 <= cfg.frames[0] < cfg.frames[1]):
        problems.append(f"frames must be [start, end] frame numbers with 0 <= start < end, got {cfg.frames!r}")


def model_options(cfg: SimpleNamespace) -> dict:
    return {k: getattr(cfg, k) for k in MODEL_KEYS}


def save(cfg: SimpleNamespace, path: str | Path) -> None:
    """Write the resolved settings of a run beside its outputs (whole or not at all: imgproc.replacing)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with replacing(path) as tmp:
        tmp.write_text(json.dumps(vars(cfg), indent=2) + '\n')
