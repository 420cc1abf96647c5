"""Checkpoints: reading the official release's format and this project's, checking that one fits a
model before anything is built, and train.py's side: atomic saves, the random generators' states and
the checks that a run can continue from a file (resume).

This project's format: {'model': state dict, 'options': the model's options, and from train.py
'optimizer', 'scheduler', 'scaler', 'epoch', 'epoch_step', 'step', 'best_psnr', 'ema', 'rng', 'settings'}.
The official one: {'model': {'name', 'args', 'sd'}}, mapped to options by each registered model's
from_official.
"""
import random
import reprlib
import shutil
import warnings
from pathlib import Path

import numpy as np
import torch

from files import replacing
from model import MODELS, SRModel, build_model, option_problems


def load_file(path: str | Path):
    """torch.load a checkpoint file (tensors and plain data only) onto the CPU, with clear errors."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"checkpoint {path} is a folder, not a file")
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        with warnings.catch_warnings():  # e.g. "Detected pickle protocol 4": a file it then refuses, or torch's own
            warnings.simplefilter('ignore')
            return torch.load(path, map_location='cpu', weights_only=True)
    except Exception as e:  # keep torch's reason, not its advice to load untrusted pickles
        reason = str(e).split('WeightsUnpickler error:')[-1].split('Check the documentation')[0].strip()
        raise ValueError(f"{path} is not a readable PyTorch checkpoint (truncated, corrupted or another format): "
                         f"{type(e).__name__}: {' '.join(reason.split())[:200]}") from None


def official_checkpoint(spec: dict, path: str | Path) -> tuple[dict, object]:
    """(options, state dict) of an official checkpoint's {'name', 'args', 'sd'}: the registered model
    whose `official` name it has and whose from_official takes its spec."""
    name = spec.get('name')
    candidates = [cls for cls in MODELS.values() if cls.official == name] if isinstance(name, str) else []
    if not candidates:
        known = sorted({cls.official for cls in MODELS.values() if cls.official})
        raise ValueError(f"{path} holds a {name!r} model, not one this project builds (official names: "
                         f"{', '.join(known)})")
    try:
        options = next((o for cls in candidates for o in [cls.from_official(spec)] if o is not None), None)
    except (KeyError, TypeError, AttributeError) as e:
        raise ValueError(f"{path} is an official {name} checkpoint with an incomplete model spec (no {e})") from None
    except ValueError as e:
        raise ValueError(f"{path} is not a model this project builds: {e}") from None
    if options is None:
        raise ValueError(f"{path} is an official {name} checkpoint of a variant this project does not build")
    state = spec['sd']
    if isinstance(state, dict):  # EDSR's mean shifts are in the official state dict but unused
        state = {k: v for k, v in state.items() if not str(k).startswith(('encoder.sub_mean', 'encoder.add_mean'))}
    return options, state


def checkpoint_options(ckpt: dict) -> dict:
    """The model options of one of this project's checkpoints; files from before MetaSR and the
    fixed-scale baselines hold no 'model' and are LIIF."""
    return {'model': 'liif', **(ckpt.get('options') or {})}


def read_checkpoint(path: str | Path) -> tuple[dict, dict]:
    """(options, state dict) from an official checkpoint of a registered model or one of ours; ValueError
    for anything else, and for options build_model refuses or a state dict that is not names -> tensors."""
    ckpt = load_file(path)
    if isinstance(ckpt, dict) and isinstance(ckpt.get('model'), dict) and 'sd' in ckpt['model']:
        options, state = official_checkpoint(ckpt['model'], path)
    elif isinstance(ckpt, dict) and isinstance(ckpt.get('options'), dict) and isinstance(ckpt.get('model'), dict):
        # a run with an EMA validated (and chose best.pth by) the averaged weights: use those
        options, state = checkpoint_options(ckpt), ckpt['ema'] if isinstance(ckpt.get('ema'), dict) else ckpt['model']
    else:
        raise ValueError(f"{path} is not a model checkpoint (neither the official format nor this project's)")
    problems = option_problems(options)
    if problems:
        raise ValueError(f"{path} describes a model this project cannot build: {'; '.join(problems)}")
    if not isinstance(state, dict) or not all(isinstance(k, str) and torch.is_tensor(v) and v.layout == torch.strided
                                              and v.device.type == 'cpu' and v.is_floating_point()
                                              for k, v in state.items()):
        raise ValueError(f"{path} holds a state dict that is not parameter names -> floating-point tensors")
    return options, state


def check_fit(model: SRModel, options: dict, state: dict, path: str | Path) -> None:
    """Refuse a checkpoint's `options` and `state` that do not fit `model` exactly (options, names, shapes)."""
    if options['model'] != model.options['model']:
        differ = [f"model: file {options['model']!r}, model {model.options['model']!r}"]
    else:
        differ = [f"{k}: file {options.get(k)!r}, model {v!r}" for k, v in model.options.items() if options.get(k) != v]
    if differ:
        raise ValueError(f"{path} does not fit the model: " + "; ".join(differ))
    own = model.state_dict()
    missing, unexpected = sorted(own.keys() - state.keys()), sorted(state.keys() - own.keys())
    shapes = [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in own.keys() & state.keys()
              if state[k].shape != own[k].shape]
    if missing or unexpected or shapes:
        raise ValueError(f"{path} does not fit the model: missing {missing[:5]}, unexpected {unexpected[:5]}, "
                         f"shape mismatches {shapes[:5]}")


def load_weights(model: SRModel, path: str | Path) -> SRModel:
    """Load an official or project checkpoint into `model`; refuse anything that does not fit exactly."""
    options, state = read_checkpoint(path)
    check_fit(model, options, state, path)
    model.load_state_dict(state)
    return model


def model_from_checkpoint(path: str | Path, **overrides) -> SRModel:
    """Build the model a checkpoint describes and load it (overrides: e.g. fast=False). The fit is checked
    first on a twin on the meta device (shapes, no memory): a file that does not fit allocates nothing."""
    options, state = read_checkpoint(path)
    with torch.device('meta'):
        check_fit(build_model(**options, **overrides), options, state, path)
    model = build_model(**options, **overrides)
    model.load_state_dict(state)
    return model


def rng_state() -> dict:
    """Python, NumPy and torch generator states, in types that torch.load(weights_only=True) reads."""
    numpy_state = np.random.get_state(legacy=False)
    state = {'python': random.getstate(), 'torch': torch.get_rng_state(),
             'numpy': {'key': torch.from_numpy(numpy_state['state']['key'].astype(np.int64)),
                       'pos': numpy_state['state']['pos'], 'has_gauss': numpy_state['has_gauss'],
                       'gauss': numpy_state['gauss']}}
    if torch.cuda.is_available():
        state['cuda'] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    version, internal, gauss_next = state['python']
    random.setstate((version, tuple(internal), gauss_next))
    n = state['numpy']
    np.random.set_state(('MT19937', n['key'].numpy().astype(np.uint32), n['pos'], n['has_gauss'], n['gauss']))
    torch.set_rng_state(state['torch'])
    if 'cuda' in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state['cuda'])


def save_atomic(obj: dict, path: Path) -> None:
    """torch.save to a temporary file, then rename: a killed run never leaves a half-written checkpoint,
    and a full disk leaves the previous one as it was. Written through a Python file, whose OSError
    (and so the reason) torch's writer keeps as the context of its RuntimeError, for `replacing`."""
    with replacing(path) as tmp, open(tmp, 'wb') as f:
        torch.save(obj, f)


def copy_atomic(src: Path, dst: Path) -> None:
    with replacing(dst) as tmp:
        shutil.copyfile(src, tmp)


def same_layout(saved, fresh) -> bool:
    """Whether `saved` is laid out like `fresh`, all the way down: records (dicts with str keys) with the
    same keys, lists and tuples of the same lengths, tensors of the same shapes and dtypes, other values of
    the same types; a dict with other keys (MultiStepLR's milestones) holds keys and values of its types."""
    if isinstance(fresh, dict) and all(isinstance(k, str) for k in fresh):
        return isinstance(saved, dict) and saved.keys() == fresh.keys() and all(
            same_layout(saved[k], v) for k, v in fresh.items())
    if isinstance(fresh, dict):
        kinds = {(type(k), type(v)) for k, v in fresh.items()}
        return isinstance(saved, dict) and all((type(k), type(v)) in kinds for k, v in saved.items())
    if isinstance(fresh, (list, tuple)):
        return type(saved) is type(fresh) and len(saved) == len(fresh) and all(map(same_layout, saved, fresh))
    if torch.is_tensor(fresh):
        return torch.is_tensor(saved) and saved.shape == fresh.shape and saved.dtype == fresh.dtype
    return type(saved) is type(fresh)


OPTIMIZER_KERNEL = ('fused', 'foreach')  # how Adam runs, not what it computes: the run's own choice, not the checkpoint's


def without_kernel(groups):
    """Optimiser param groups without the settings of how they run (OPTIMIZER_KERNEL), to compare layouts."""
    if not isinstance(groups, list) or not all(isinstance(g, dict) for g in groups):
        return groups
    return [{k: v for k, v in g.items() if k not in OPTIMIZER_KERNEL} for g in groups]


def resumable_problems(run, ckpt: dict) -> list[str]:
    """The parts of a train.py checkpoint that `run` could not continue from: a layout other than its own
    (same_layout: the model, EMA, schedule, counters, optimiser groups) or optimiser state of other shapes."""
    own = run.checkpoint()
    parts = ['model', 'scheduler', 'epoch', 'epoch_step', 'step', 'best_psnr'] + (['ema'] if run.ema else [])
    problems = [k for k in parts if not (k == 'ema' and ckpt.get(k) is None) and not same_layout(ckpt.get(k), own[k])]
    if 'epoch_step' not in problems and not 0 <= ckpt['epoch_step'] < run.steps_per_epoch:
        problems.append(f"epoch_step (step {ckpt['epoch_step']} of an epoch of {run.steps_per_epoch} steps now)")
    problems += [k for k in ('epoch', 'step') if k not in problems and ckpt[k] < 0]
    optimizer, params = ckpt['optimizer'], list(run.model.parameters())
    if not isinstance(optimizer, dict) or not same_layout(without_kernel(optimizer.get('param_groups')),
                                                          without_kernel(own['optimizer']['param_groups'])):
        return problems + ['optimizer']
    state = optimizer.get('state')
    if not isinstance(state, dict) or not all(
            type(i) is int and 0 <= i < len(params) and isinstance(values, dict)
            and all(torch.is_tensor(v) and v.shape in ((), params[i].shape) for v in values.values())
            for i, values in state.items()):
        problems.append('optimizer state')
    return problems


def resume(run, path: Path, master: bool) -> dict:
    """Load a train.py checkpoint into `run`; returns its random generator states, which the caller
    restores last, once setting up has drawn what it draws. Anything else is refused (ValueError) before
    it can change the run or break it later."""
    ckpt = load_file(path)
    if not isinstance(ckpt, dict) or 'optimizer' not in ckpt or 'epoch_step' not in ckpt:
        raise ValueError(f"{path} is not a train.py checkpoint; to start from its weights, use --init_weights={path}")
    options = checkpoint_options(ckpt) if isinstance(ckpt.get('options'), dict) else {'options': ckpt.get('options')}
    if option_problems(options) or options != run.model.options:
        raise ValueError(f"{path} holds a model with options {reprlib.repr(options)}, "
                         f"but the settings ask for {run.model.options}")
    settings = ckpt.get('settings') if isinstance(ckpt.get('settings'), dict) else {}
    schedule = settings.get('schedule', 'multistep')
    if schedule != run.cfg.schedule:
        raise ValueError(f"{path} was trained with schedule={reprlib.repr(schedule)}; resume it with the same "
                         f"schedule (or start from its weights with --init_weights)")
    problems = resumable_problems(run, ckpt)
    try:
        if problems:
            raise ValueError(f"{', '.join(problems)} laid out otherwise than this run's")
        set_rng_state(ckpt['rng'])  # here to check it; the caller sets it again last
        run.model.load_state_dict(ckpt['model'])
        kernels = [{k: group[k] for k in OPTIMIZER_KERNEL} for group in run.optimizer.param_groups]
        run.optimizer.load_state_dict(ckpt['optimizer'])
        for group, kernel in zip(run.optimizer.param_groups, kernels):  # e.g. a checkpoint of the unfused Adam
            group.update(kernel)
        run.scheduler.load_state_dict(ckpt['scheduler'])
        if ckpt.get('scaler'):
            run.scaler.load_state_dict(ckpt['scaler'])
        if run.ema is not None:
            run.ema.module.load_state_dict(ckpt['ema'] if ckpt.get('ema') is not None else run.model.state_dict())
    except (KeyError, TypeError, ValueError, RuntimeError, AttributeError, IndexError) as e:
        raise ValueError(f"{path} is a damaged or incomplete train.py checkpoint ({type(e).__name__}: "
                         f"{' '.join(str(e).split())[:200]})") from None
    run.epoch, run.epoch_step, run.step, run.best_psnr = (ckpt[k] for k in ('epoch', 'epoch_step', 'step', 'best_psnr'))
    if master:
        print(f"resuming {path}: {run.epoch} epochs and {run.step} steps done, best PSNR {run.best_psnr:.4f}")
    return ckpt['rng']


