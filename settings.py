"""The settings of a run: config.py's values, a named experiment, `--name=value` overrides; `--help`
built from config.py's own comments; and the checks that refuse settings that cannot work, naming every
problem in one line. config.py holds only the values a user edits.
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

import config
from dataset import check_patch_queries, check_scale_range, check_size_range, check_varied_queries
from degrade import check_degradation, from_settings, named_plan
from files import found, replacing
from image_quality_assessment import PROTOCOLS
from imgproc import FORMATS, HOLDS_16_BITS
from model import ENCODERS, MODELS, model_keys, option_problems
from precision import check_amp_name
from video import check_encoder

MAX_THREADS = 1024  # more than any CPU has cores; torch takes up to 2**31 - 1 and would start that many threads

# The settings each script reads: whole sections of config.py, plus single settings from other
# sections, minus the ones it ignores.
SCRIPTS = {
    'train': {'sections': ['experiment', 'model', 'data', 'degradation', 'training'], 'plus': ['chunk'], 'minus': ['compile_decoder']},
    'test': {'sections': ['experiment', 'model', 'testing'], 'plus': ['amp'], 'minus': ['seed']},
    'inference': {'sections': ['experiment', 'model', 'inference'], 'plus': ['weights', 'chunk', 'amp'],
                  'minus': ['out_dir', 'seed']},
}


def defaults() -> dict:
    return {k: v for k, v in vars(config).items()
            if not k.startswith('_') and k.islower() and isinstance(v, (bool, int, float, str, list))}


@cache
def documentation() -> dict[str, tuple[str, str]]:
    """{setting: (section, comment)} read from config.py's source: the `# ---- section` lines and the
    comment that ends each setting's assignment, so --help prints the texts written there."""
    source = Path(config.__file__).read_text()
    comments = {token.end[0]: token.string.lstrip('#').strip()
                for token in tokenize.generate_tokens(io.StringIO(source).readline) if token.type == tokenize.COMMENT}
    sections = sorted((line, text.lstrip('-').strip()) for line, text in comments.items() if text.startswith('----'))
    settings = defaults()
    docs = {}
    for node in ast.parse(source).body:
        if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name) and node.targets[0].id in settings:
            section = [name for line, name in sections if line < node.lineno][-1]
            docs[node.targets[0].id] = (section, comments.get(node.end_lineno, ''))
    return docs


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
        if len(option) >= width - 1:  # a long default: its comment goes on the next line (two spaces apart at least)
            lines.append(f"    {option}")
            option = ''
        lines.append(f"    {option:<{width}}{docs[name][1]}")
    lines += ['', f"models (--model=NAME): {', '.join(f'{name} ({cls.__name__})' for name, cls in MODELS.items())}; "
                  f"encoders (--encoder=NAME): {', '.join(ENCODERS)}"]
    lines += ['', "named experiments (--experiment=NAME applies these first, then the other settings):"]
    width = max(map(len, config.EXPERIMENTS)) + 2
    for name, changes in config.EXPERIMENTS.items():
        text = ', '.join(f"{k}={_as_typed(v)}" for k, v in changes.items()) or 'the defaults above'
        lines.append(f"    {name:<{width}}{text}")
    return '\n'.join(lines)


def given(argv: list[str]) -> set[str]:
    """The settings an argv sets explicitly: its overrides and, when it names an experiment, that
    experiment's settings and every model setting (a named experiment describes a whole model)."""
    names = {arg[2:].split('=', 1)[0] for arg in argv}
    if 'experiment' in names:
        experiment = parse(argv).experiment
        names |= set(config.EXPERIMENTS[experiment]) | set(model_keys())
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
    if name not in config.EXPERIMENTS:
        raise ValueError(f"unknown experiment {name!r}; choose one of {', '.join(config.EXPERIMENTS)}")
    settings.update(config.EXPERIMENTS[name])
    settings.update(overrides)
    if not settings['out_dir']:
        settings['out_dir'] = f"results/{settings['experiment']}"
    return SimpleNamespace(**settings)


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
    if cfg.train_data not in ('downsampled', 'degraded', 'paired', 'varied'):
        problems.append(f"train_data must be 'downsampled', 'degraded', 'paired' or 'varied', got {cfg.train_data!r}")
    made = cfg.train_data in ('downsampled', 'degraded')  # patches made from HR images at random scales
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
    if (made or downsampled_valid) and not (cfg.patch_size > 0 and cfg.sample_q > 0):
        problems.append(f"patch_size and sample_q must be > 0 for patches made from HR images (training with "
                        f"train_data='downsampled' or 'degraded', or validation without valid_lr_dir), got "
                        f"{cfg.patch_size} and {cfg.sample_q}")
    elif made:
        problems.rule(check_patch_queries, cfg.patch_size, cfg.scale_min, cfg.sample_q)
    if cfg.train_data == 'degraded':
        problems.rule(lambda: check_degradation(from_settings(cfg)))
    if cfg.device_data and (not made or not cfg.in_memory):
        problems.append(f"device_data makes patches of train_data='downsampled' or 'degraded' from images held in "
                        f"memory; got train_data={cfg.train_data!r}, in_memory={cfg.in_memory}")
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
        value = getattr(cfg, name)
        if value not in ('', 'auto') and not (name == 'init_weights' and value == config.weights and not found(value)):
            problems.existing(name, 'checkpoint')  # (the default weights, missing, are fetched: weights.resolve_weights)


def _check_testing(problems: _Problems, cfg: SimpleNamespace) -> None:
    if cfg.weights and not found(cfg.weights):
        if cfg.weights != config.weights:  # the default file is fetched when missing
            problems.append(f"weights: checkpoint {cfg.weights!r} does not exist "
                            f"(`python scripts/download_weights.py` fetches the official one)")
    else:
        problems.existing('weights', 'checkpoint')
    if cfg.test_protocol not in PROTOCOLS:
        problems.append(f"test_protocol must be one of {', '.join(map(repr, PROTOCOLS))}, got {cfg.test_protocol!r}")
    if cfg.degrade:
        problems.rule(named_plan, cfg.degrade)
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
    if cfg.bits not in (0, 8, 16):
        problems.append(f"bits must be 0 (the input's), 8 or 16, got {cfg.bits}")
    if cfg.alpha not in ('model', 'bicubic'):
        problems.append(f"alpha must be 'model' or 'bicubic', got {cfg.alpha!r}")
    if type(cfg.quality) is not int or not 1 <= cfg.quality <= 100:
        problems.append(f"quality must be an int in [1, 100], got {cfg.quality!r}")
    if cfg.format and '.' + str(cfg.format).lower() not in FORMATS:
        problems.append(f"format must be '' or one of {', '.join(f[1:] for f in FORMATS)}, got {cfg.format!r}")
    elif cfg.format and cfg.bits == 16 and FORMATS['.' + cfg.format.lower()] not in HOLDS_16_BITS:
        problems.append(f"bits=16 needs format 'png' or 'tif', got {cfg.format!r}")
    problems.rule(check_encoder, cfg.codec, cfg.pix_fmt, cfg.preset)
    if type(cfg.crf) is not int or not 0 <= cfg.crf <= 63:
        problems.append(f"crf must be an int in [0, 63], got {cfg.crf!r}")
    if cfg.frames and (len(cfg.frames) != 2 or any(type(n) is not int for n in cfg.frames)
                       or not 0 <= cfg.frames[0] < cfg.frames[1]):
        problems.append(f"frames must be [start, end] frame numbers with 0 <= start < end, got {cfg.frames!r}")


def model_options(cfg: SimpleNamespace) -> dict:
    return {k: getattr(cfg, k) for k in model_keys()}


def save(cfg: SimpleNamespace, path: str | Path) -> None:
    """Write the resolved settings of a run beside its outputs (whole or not at all: files.replacing)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with replacing(path) as tmp:
        tmp.write_text(json.dumps(vars(cfg), indent=2) + '\n')
