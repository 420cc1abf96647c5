"""Train LIIF: the official recipe by default (Adam 1e-4, L1 on normalised values, MultiStepLR halving
at epochs 200/400/600/800, 1000 epochs, batch 16, random scales 1-4 on 48-px LR patches, 2304 queries);
schedule='cosine' instead warms up linearly and decays to 0 at max_steps, per optimiser step.

    python train.py                                       # config.py as it is
    python train.py --experiment=rdn-liif --out_dir=results/rdn
    python train.py --resume=auto                         # continue out_dir/last.pth where it stopped
    python train.py --init_weights=path/to/ckpt.pth       # fine-tune from any checkpoint (weights only)
    torchrun --nproc_per_node=4 train.py                  # 4 processes (GPUs), batch_size stays the global batch

Writes to out_dir: train_config.json, last.pth (every epoch), best.pth (best validation PSNR),
epoch-<n>.pth (every save_every epochs), tensorboard/ (loss, lr, validation PSNR, SR samples) and, when
some training images are smaller than the largest crop, skipped_images.txt; nothing before every input
(settings, images, checkpoints) has been read and checked. `python train.py --help` lists the settings.
Checkpoints: {'model', 'options', 'optimizer', 'scheduler', 'scaler', 'epoch', 'epoch_step', 'step',
'best_psnr', 'ema', 'rng', 'settings'}; test.py and inference.py read them like official ones.
"""
import copy
import itertools
import math
import os
import random
import shutil
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler, Sampler
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

import config
from common import check_writable, evaluate, pick_device, run_main, seed_everything, set_threads
from dataset import BenchmarkDataset, PairedDataset, TrainDataset, VariedDataset, list_images
from image_quality_assessment import psnr
from imgproc import image_to_tensor, load_uint8, pil_resize
from model import build_model, load_file, load_weights
from render import check_amp

LOG_EVERY = 20  # optimiser steps between loss read-outs (each one waits for the device)
VALID_BATCH = 16  # the official validation batch; its PSNR is averaged per batch
SAMPLES = 3  # validation images shown in TensorBoard beside bicubic and the ground truth


class Diverged(ValueError):
    """The loss or the weights became NaN or infinite: the run stops without saving that state."""


class ResumableSampler(Sampler):
    """This process's share of the epoch's shuffle (DistributedSampler: the order depends only on seed
    and epoch), leaving out the first `skip` batches that a resumed run already trained on."""

    def __init__(self, dataset, world_size: int, rank: int, seed: int, batch_size: int):
        self.shuffle = DistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=True, seed=seed)
        self.batch_size, self.skip = batch_size, 0

    def set_epoch(self, epoch: int, skip_batches: int = 0) -> None:
        self.shuffle.set_epoch(epoch)
        self.skip = skip_batches * self.batch_size

    def __iter__(self):
        return itertools.islice(iter(self.shuffle), self.skip, None)

    def __len__(self) -> int:
        return max(0, len(self.shuffle) - self.skip)


class EMA:
    """Exponential moving average of a model's parameters and buffers: ema = d * ema + (1 - d) * w."""

    def __init__(self, model: torch.nn.Module, decay: float):
        self.decay = decay
        self.module = copy.deepcopy(model).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        for ema, w in zip(self.module.state_dict().values(), model.state_dict().values()):
            if ema.dtype.is_floating_point:
                ema.mul_(self.decay).add_(w, alpha=1 - self.decay)
            else:
                ema.copy_(w)


def setup_distributed(cfg) -> tuple[int, int, torch.device]:
    """(rank, world size, device). Under torchrun (RANK in the environment) joins the process group:
    nccl with one GPU per process on CUDA, gloo on the CPU; otherwise a plain single process."""
    device = pick_device(cfg.device)
    if 'RANK' not in os.environ:
        return 0, 1, device
    rank, world_size = int(os.environ['RANK']), int(os.environ['WORLD_SIZE'])
    if device.type == 'cuda':
        device = torch.device('cuda', int(os.environ.get('LOCAL_RANK', 0)))
        torch.cuda.set_device(device)
    dist.init_process_group('nccl' if device.type == 'cuda' else 'gloo')
    return rank, world_size, device


def worker_count(requested: int, world_size: int) -> int:
    """DataLoader workers per process: as requested, but leaving a core per training process."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else (os.cpu_count() or 1)
    return max(0, min(requested, cores // world_size - 1))


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
    """torch.save to a temporary file, then rename: a killed run never leaves a half-written checkpoint."""
    tmp = path.with_name(path.name + '.tmp')
    torch.save(obj, tmp)
    os.replace(tmp, path)


def copy_atomic(src: Path, dst: Path) -> None:
    tmp = dst.with_name(dst.name + '.tmp')
    shutil.copyfile(src, tmp)
    os.replace(tmp, dst)


def all_finite(module: torch.nn.Module) -> bool:
    return bool(torch.stack([t.isfinite().all() for t in module.state_dict().values()
                             if t.dtype.is_floating_point]).all())


def is_benchmark_folder(folder: str | Path) -> bool:
    """A benchmark set (HR/ and LR_bicubic/) rather than a plain folder of HR images."""
    return (Path(folder) / 'HR').is_dir()


def patch_samples(folder: str | Path, patch_size: int, scale: int) -> list[dict]:
    """Centre crops of the first validation images with their PIL-bicubic LR at an integer scale:
    items like BenchmarkDataset's, small enough to render at every validation."""
    items = []
    for path in list_images(folder)[:SAMPLES]:
        hr = load_uint8(path)
        side = min(min(hr.shape[:2]), patch_size * scale) // scale * scale
        top, left = (hr.shape[0] - side) // 2, (hr.shape[1] - side) // 2
        hr = np.ascontiguousarray(hr[top:top + side, left:left + side])
        lr = pil_resize(hr, (side // scale, side // scale))
        items.append({'lr': image_to_tensor(lr), 'hr': image_to_tensor(hr), 'scale': float(scale), 'name': path.stem})
    return items


def sample_panel(item: dict, sr: torch.Tensor) -> torch.Tensor:
    """[bicubic | LIIF | ground truth] side by side, (3, H, 3W) in [0, 1], for TensorBoard."""
    hr = item['hr'].unsqueeze(0)
    bicubic = F.interpolate(item['lr'].unsqueeze(0), size=hr.shape[-2:], mode='bicubic', align_corners=False)
    return torch.cat([bicubic.clamp(0, 1), sr.float().cpu().clamp(0, 1), hr], -1)[0]


@torch.no_grad()
def validate_patches(model: torch.nn.Module, batches: list[dict], device: torch.device) -> float:
    """The official validation: PSNR of the clamped predictions at the validation patches' queries,
    over all their RGB values, per batch, averaged over batches weighted by their size."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for batch in batches:
        pred = model(batch['lr'].to(device), batch['coord'].to(device), batch['cell'].to(device))
        as_image = [x.permute(2, 0, 1).reshape(1, 3, -1, 1) for x in (pred, batch['gt'].to(device))]
        total += float(psnr(*as_image, 0, protocol='rgb')) * len(pred)  # scale 0: nothing shaved
        count += len(pred)
    model.train(was_training)
    return total / count


def training_set(cfg) -> TrainDataset | PairedDataset | VariedDataset:
    """The training items train_data asks for: patches made from HR images at random scales, patches of
    paired LR / HR folders, or paired images with ground truths of varying size."""
    common = dict(repeat=cfg.repeat, augment=True, in_memory=cfg.in_memory, seed=cfg.seed)
    # too-small images are reported by train() once the run folder exists, not warned about here
    if cfg.train_data == 'paired':
        return PairedDataset(cfg.train_lr_dir, cfg.train_dir, cfg.patch_size, cfg.sample_q, warn=False, **common)
    if cfg.train_data == 'varied':
        return VariedDataset(cfg.train_lr_dir, cfg.train_dir, cfg.size_min, cfg.size_max, cfg.gt_resize,
                             cfg.sample_q, **common)
    return TrainDataset(cfg.train_dir, cfg.patch_size, cfg.scale_min, cfg.scale_max, cfg.sample_q, warn=False,
                        **common)
def cosine_factor(step: int, warmup_steps: int, total_steps: int) -> float:
    """The cosine schedule's lr multiplier for optimiser step `step` + 1 (step counts those done):
    (step + 1) / warmup_steps during the warm-up, then 0.5 (1 + cos(pi t / T)) with t the steps since
    the warm-up and T those left after it, so the last step of total_steps runs just above 0."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    return 0.5 * (1 + math.cos(math.pi * (step - warmup_steps) / (total_steps - warmup_steps)))


def make_scheduler(optimizer: torch.optim.Optimizer, cfg, steps_per_epoch: int):
    """'multistep' (stepped per epoch, the official) or 'cosine' (stepped per optimiser step, over
    max_steps, or all epochs when max_steps is 0)."""
    if cfg.schedule == 'multistep':
        return torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=cfg.milestones, gamma=cfg.gamma)
    total_steps = cfg.max_steps or cfg.epochs * steps_per_epoch
    if cfg.warmup_steps >= total_steps:
        raise ValueError(f"warmup_steps ({cfg.warmup_steps}) must be fewer than the run's {total_steps} steps")
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: cosine_factor(step, cfg.warmup_steps, total_steps))


def train_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler, autocast,
               lr: torch.Tensor, coord: torch.Tensor, cell: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    """One optimiser step on the official objective (L1 on values normalised to [-1, 1]) under the
    `autocast` context; returns the detached loss (reading it would wait for the device)."""
    with autocast:
        pred = model(lr, coord, cell)
    loss = F.l1_loss((pred.float() - 0.5) / 0.5, (gt - 0.5) / 0.5)
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()
    return loss.detach()


def make_model(cfg) -> torch.nn.Module:
    """The model the settings describe, seeded, with init_weights' weights when given (a resumed run
    then replaces them with its checkpoint's)."""
    seed_everything(cfg.seed)
    model = build_model(**config.model_options(cfg), fast=cfg.fast)
    if cfg.init_weights:
        load_weights(model, cfg.init_weights)
    return model


def main(argv: list[str]) -> dict:
    """Train; returns {'epoch', 'step', 'best_psnr', 'last_psnr'} of the run."""
    cfg = config.parse(argv, 'train')
    config.check(cfg, 'train')
    set_threads(cfg.threads)
    rank, world_size, device = setup_distributed(cfg)
    try:
        return train(cfg, rank, world_size, device)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def train(cfg, rank: int, world_size: int, device: torch.device) -> dict:
    master = rank == 0
    if cfg.batch_size % world_size:
        raise ValueError(f"batch_size ({cfg.batch_size}) must be a multiple of the {world_size} processes")
    check_amp(device, cfg.amp)
    batch_size = cfg.batch_size // world_size
    out_dir = Path(cfg.out_dir)  # written to only once every input below has been read and checked
    if master:
        check_writable(out_dir, 'out_dir')

    # ---- data: the same patches for a given (seed, epoch, index) however many processes and workers
    train_set = training_set(cfg)
    sampler = ResumableSampler(train_set, world_size, rank, cfg.seed, batch_size)
    workers = worker_count(cfg.num_workers, world_size)
    loader = DataLoader(train_set, batch_size=batch_size, sampler=sampler, num_workers=workers,
                        pin_memory=device.type == 'cuda', persistent_workers=workers > 0)
    steps_per_epoch = math.ceil(len(sampler.shuffle) / batch_size)

    # ---- model, optimiser, schedule
    model = make_model(cfg).to(device)
    if cfg.channels_last:
        model.encoder.to(memory_format=torch.channels_last)
    ema = EMA(model, cfg.ema_decay) if cfg.ema_decay > 0 else None
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    scheduler = make_scheduler(optimizer, cfg, steps_per_epoch)
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.amp == 'fp16')
    amp_dtype = {'bf16': torch.bfloat16, 'fp16': torch.float16}.get(cfg.amp)

    # ---- resume: everything that decides what happens next, so the run goes on as if never stopped
    epoch, epoch_step, step, best_psnr, resumed_rng = 0, 0, 0, -math.inf, None
    resume = out_dir / 'last.pth' if cfg.resume == 'auto' else Path(cfg.resume) if cfg.resume else None
    if resume is not None and resume.is_file():
        ckpt = load_file(resume)
        if not isinstance(ckpt, dict) or 'optimizer' not in ckpt or 'epoch_step' not in ckpt:
            raise ValueError(f"{resume} is not a train.py checkpoint; to start from its weights, "
                             f"use --init_weights={resume}")
        options = {'model': 'liif', **(ckpt.get('options') or {})}  # runs from before MetaSR and the baselines
        if options != model.options:
            raise ValueError(f"{resume} holds a model with options {options}, "
                             f"but the settings ask for {model.options}")
        if ckpt['settings'].get('schedule', 'multistep') != cfg.schedule:
            raise ValueError(f"{resume} was trained with schedule={ckpt['settings'].get('schedule', 'multistep')!r}; "
                             f"resume it with the same schedule (or start from its weights with --init_weights)")
        model.load_state_dict(ckpt['model'])
        optimizer.load_state_dict(ckpt['optimizer'])
        scheduler.load_state_dict(ckpt['scheduler'])
        if ckpt['scaler']:
            scaler.load_state_dict(ckpt['scaler'])
        if ema is not None and ckpt.get('ema') is not None:
            ema.module.load_state_dict(ckpt['ema'])
        elif ema is not None:
            ema.module.load_state_dict(model.state_dict())
        epoch, epoch_step, step, best_psnr = ckpt['epoch'], ckpt['epoch_step'], ckpt['step'], ckpt['best_psnr']
        resumed_rng = ckpt['rng']  # restored last, once setting up has drawn what it draws
        if master:
            print(f"resuming {resume}: {epoch} epochs and {step} steps done, best PSNR {best_psnr:.4f}")
    elif master and cfg.resume == 'auto':
        print(f"no {resume} yet: starting a new run")

    raw_model = model  # what is saved, validated and averaged
    if cfg.compile:
        model = torch.compile(model)
    if world_size > 1:
        model = DistributedDataParallel(model, device_ids=[device.index] if device.type == 'cuda' else None)

    # ---- validation (rank 0): the official patch PSNR on an HR folder, or the benchmark protocol
    writer, valid_batches, valid_set, samples = None, None, None, []
    if master:
        if cfg.valid_lr_dir:
            patches = PairedDataset(cfg.valid_lr_dir, cfg.valid_dir, cfg.patch_size, cfg.sample_q, cfg.valid_repeat,
                                    augment=False, in_memory=cfg.in_memory, seed=cfg.seed, first_k=cfg.valid_first,
                                    role='validation')
            valid_batches = list(DataLoader(patches, batch_size=VALID_BATCH))
            samples = [patches.centre_item(i) for i in range(min(SAMPLES, len(patches.files)))]
        elif is_benchmark_folder(cfg.valid_dir):
            valid_set = BenchmarkDataset(cfg.valid_dir, cfg.valid_scale)
        else:
            patches = TrainDataset(cfg.valid_dir, cfg.patch_size, cfg.scale_min, cfg.scale_max, cfg.sample_q,
                                   cfg.valid_repeat, augment=False, in_memory=cfg.in_memory, seed=cfg.seed,
                                   first_k=cfg.valid_first, role='validation')
            valid_batches = list(DataLoader(patches, batch_size=VALID_BATCH))
            samples = patch_samples(cfg.valid_dir, cfg.patch_size, max(1, math.floor(cfg.scale_max)))
        # every input is read: now the run's files
        out_dir.mkdir(parents=True, exist_ok=True)
        config.save(cfg, out_dir / 'train_config.json')
        if train_set.skipped:
            listing = out_dir / 'skipped_images.txt'
            listing.write_text(''.join(f"{path}\t{h}x{w}\n" for path, (h, w) in train_set.skipped.items()))
            print(f"warning: {train_set.skipped_summary}; they are skipped (all listed in {listing})",
                  file=sys.stderr)
        writer = SummaryWriter(str(out_dir / 'tensorboard'))
        print(f"training on {device} x {world_size} process(es): {len(train_set)} patches per epoch from "
              f"{len(train_set.files)} images, {steps_per_epoch} steps per epoch of {cfg.batch_size}, "
              f"{workers} loader worker(s) per process; validation on {cfg.valid_dir}")

    def validate(model_to_score: torch.nn.Module) -> float:
        if valid_set is not None:
            shown = []

            def keep_sample(item: dict, sr: torch.Tensor) -> None:
                if len(shown) < SAMPLES:
                    shown.append(sample_panel(item, sr))
            rows = evaluate(model_to_score, valid_set, chunk=cfg.chunk, protocol='benchmark', with_ssim=False,
                            on_image=keep_sample, desc='validate')
            score = sum(r['psnr'] for r in rows) / len(rows)
        else:
            score = validate_patches(model_to_score, valid_batches, device)
            shown = [sample_panel(item, model_to_score.render(item['lr'].unsqueeze(0).to(device),
                                                               tuple(item['hr'].shape[-2:]), chunk=cfg.chunk))
                     for item in samples]
        for i, panel in enumerate(shown):
            writer.add_image(f'samples/{i} bicubic | LIIF | GT', panel, step)
        return score

    def checkpoint() -> dict:
        return {'model': raw_model.state_dict(), 'options': raw_model.options, 'optimizer': optimizer.state_dict(),
                'scheduler': scheduler.state_dict(), 'scaler': scaler.state_dict(), 'epoch': epoch,
                'epoch_step': epoch_step, 'step': step, 'best_psnr': best_psnr,
                'ema': ema.module.state_dict() if ema is not None else None, 'rng': rng_state(),
                'settings': vars(cfg)}

    # ---- train
    total_steps = cfg.epochs * steps_per_epoch
    if cfg.max_steps:
        total_steps = min(total_steps, cfg.max_steps)
    progress = tqdm(total=total_steps, initial=step, disable=not master, unit='step', dynamic_ncols=True)
    autocast = torch.autocast(device.type, dtype=amp_dtype) if amp_dtype else nullcontext()
    loss_sum, loss_count = torch.zeros((), device=device), 0
    last_psnr = None
    model.train()

    def where() -> str:
        """The epoch as the progress bar, the log lines and the summary all name it: the one in progress
        (or, between epochs, the one just finished), 1-based, with its step count when unfinished."""
        if epoch_step == 0 and epoch > 0:
            return f"epoch {epoch}/{cfg.epochs}"
        return f"epoch {epoch + 1}/{cfg.epochs} ({epoch_step}/{steps_per_epoch} steps)"

    def read_loss() -> float:
        """Mean loss since the last read-out over all processes; stops the run if it is not finite."""
        nonlocal loss_sum, loss_count
        total = torch.stack([loss_sum, loss_sum.new_tensor(float(loss_count))])
        if world_size > 1:
            dist.all_reduce(total)
        mean = float(total[0] / total[1])
        loss_sum, loss_count = torch.zeros((), device=device), 0
        if not math.isfinite(mean):
            raise Diverged(f"the loss became {mean} by step {step} ({where()}); stopping. The last "
                           f"good checkpoint, {out_dir / 'last.pth'}, is left as it was (try a lower lr or amp='fp32')")
        if master:
            writer.add_scalar('train/loss', mean, step)
            progress.set_postfix(loss=f'{mean:.4f}', lr=f"{optimizer.param_groups[0]['lr']:.2e}")
        return mean

    if resumed_rng is not None:
        set_rng_state(resumed_rng)
    start = time.perf_counter()
    while epoch < cfg.epochs and not (cfg.max_steps and step >= cfg.max_steps):
        train_set.set_epoch(epoch + 1)
        sampler.set_epoch(epoch + 1, epoch_step)
        progress.set_description(f"epoch {epoch + 1}/{cfg.epochs}")
        for batch in loader:
            lr = batch['lr'].to(device, non_blocking=True)
            if cfg.channels_last:
                lr = lr.contiguous(memory_format=torch.channels_last)
            coord, cell = batch['coord'].to(device, non_blocking=True), batch['cell'].to(device, non_blocking=True)
            gt = batch['gt'].to(device, non_blocking=True)
            loss = train_step(model, optimizer, scaler, autocast, lr, coord, cell, gt)
            if cfg.schedule == 'cosine':
                scheduler.step()
            if ema is not None:
                ema.update(raw_model)
            loss_sum += loss
            loss_count += 1
            step += 1
            epoch_step += 1
            progress.update()
            if step % LOG_EVERY == 0:
                read_loss()
            if cfg.max_steps and step >= cfg.max_steps:
                break
        if loss_count:
            read_loss()
        if epoch_step == steps_per_epoch:  # a whole epoch done (not cut short by max_steps)
            epoch, epoch_step = epoch + 1, 0
            if cfg.schedule == 'multistep':
                scheduler.step()
        finished = epoch == cfg.epochs or bool(cfg.max_steps and step >= cfg.max_steps)
        if not all_finite(raw_model) or (ema is not None and not all_finite(ema.module)):
            raise Diverged(f"the weights became non-finite by step {step}; stopping. The last good checkpoint, "
                           f"{out_dir / 'last.pth'}, is left as it was")
        if not master:
            continue
        writer.add_scalar('train/lr', optimizer.param_groups[0]['lr'], step)
        improved = False
        if (epoch_step == 0 and epoch % cfg.valid_every == 0) or finished:
            last_psnr = validate(ema.module if ema is not None else raw_model)
            writer.add_scalar('valid/psnr', last_psnr, step)
            improved = last_psnr > best_psnr
            best_psnr = max(best_psnr, last_psnr)
            progress.write(f"{where()}, step {step}: validation PSNR {last_psnr:.4f} dB (best {best_psnr:.4f})")
        save_atomic(checkpoint(), out_dir / 'last.pth')
        if improved:
            copy_atomic(out_dir / 'last.pth', out_dir / 'best.pth')
        if epoch_step == 0 and epoch % cfg.save_every == 0:
            copy_atomic(out_dir / 'last.pth', out_dir / f'epoch-{epoch}.pth')
        writer.flush()
    progress.close()
    if world_size > 1:
        dist.barrier()  # every process leaves after rank 0's last validation and save
    if master:
        writer.close()
        print(f"done: {where()}, {step} steps in {time.perf_counter() - start:.0f} s; "
              f"best validation PSNR {best_psnr:.4f} dB; checkpoints in {out_dir}")
    return {'epoch': epoch, 'step': step, 'best_psnr': best_psnr, 'last_psnr': last_psnr}


if __name__ == '__main__':
    sys.exit(run_main(main, sys.argv[1:]))
