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

The file reads in the order things run: main, then train (one process's loop), then what train calls:
the data (training_data), the run (build_run: model, optimiser, schedule; resume_if_asked; wrap), rank 0's
validation (Validation) and run folder, the epoch (train_epoch, train_step) and its end (end_of_epoch).
"""
from __future__ import annotations  # what runs first comes first: annotations name classes defined later

import copy
import itertools
import math
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler, Sampler
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

import precision
import render
import settings
from checkpoint import copy_atomic, load_weights, resume, rng_state, save_atomic, set_rng_state
from cli import pick_device, run_main, seed_everything, set_threads
from dataset import (
    BenchmarkDataset,
    DegradedDataset,
    DevicePatches,
    Draws,
    PairedDataset,
    TrainDataset,
    VariedDataset,
    list_images,
)
from degrade import from_settings
from distributed import Team, join
from files import check_writable, replacing
from image_quality_assessment import evaluate, psnr
from imgproc import image_to_tensor, load_uint8, pil_resize
from model import build_model, model_name, normalise
from weights import resolve_weights

LOG_EVERY = 20  # optimiser steps between loss read-outs (each one waits for the device)
VALID_BATCH = 16  # the official validation batch; its PSNR is averaged per batch
SAMPLES = 3  # validation images shown in TensorBoard beside bicubic and the ground truth


def main(argv: list[str]) -> dict:
    """Train; returns {'epoch', 'step', 'best_psnr', 'last_psnr'} of the run."""
    cfg = settings.parse(argv, 'train')
    settings.check(cfg, 'train')
    set_threads(cfg.threads)
    return train(cfg, join(pick_device(cfg.device)))  # run_main leaves the process group


def train(cfg: SimpleNamespace, team: Team) -> dict:
    """The training loop of one process (rank 0 validates, saves and logs)."""
    rank, world_size, device = team.rank, team.world_size, team.device
    master = rank == 0
    if cfg.batch_size % world_size:
        raise ValueError(f"batch_size ({cfg.batch_size}) must be a multiple of the {world_size} processes")
    precision.check_amp(device, cfg.amp)
    precision.use_tf32(cfg.tf32)
    out_dir = Path(cfg.out_dir)  # written to only once every input below has been read and checked
    if master:
        check_writable(out_dir, 'out_dir')
    if cfg.init_weights:  # the official weights are fetched when they are the missing default file
        cfg.init_weights = str(team.first_on_node(lambda: resolve_weights(cfg.init_weights)))
    train_set, sampler, loader, on_device = training_data(cfg, team)
    run = build_run(cfg, device, world_size, math.ceil(len(sampler.shuffle) / sampler.batch_size))
    resumed_rng = resume_if_asked(run, master)
    wrap(run)
    validation, writer = None, None
    if master:
        validation = Validation(cfg)
        writer = open_run_folder(cfg, out_dir, train_set)
        print(f"training on {device} x {world_size} process(es): {len(train_set)} patches per epoch from "
              f"{len(train_set.files)} images, {run.steps_per_epoch} steps per epoch of {cfg.batch_size}, "
              f"{loader.num_workers} loader worker(s) per process; validation on {cfg.valid_dir}")

    total_steps = min(cfg.epochs * run.steps_per_epoch, cfg.max_steps or math.inf)
    run.net.train()
    if resumed_rng is not None:
        set_rng_state(resumed_rng)  # last: setting up has drawn what it draws
    start = time.perf_counter()
    # closed on any error too, so that the error's line does not end the bar's
    with tqdm(total=total_steps, initial=run.step, disable=not master, unit='step', dynamic_ncols=True) as bar:
        autocast, log = precision.autocast(device, cfg.amp), LossLog(run, writer, bar)
        while not run.finished():
            train_set.set_epoch(run.epoch + 1)
            sampler.set_epoch(run.epoch + 1, run.epoch_step)
            bar.set_description(f"epoch {run.epoch + 1}/{cfg.epochs}")
            train_epoch(run, loader, on_device, autocast, log, bar)
            if master:
                end_of_epoch(run, validation, writer, bar)
    if world_size > 1:
        dist.barrier()  # every process leaves after rank 0's last validation and save
    if master:
        writer.close()
        print(f"done: {run.where()}, {run.step} steps in {time.perf_counter() - start:.0f} s; "
              f"best validation PSNR {run.best_psnr:.4f} dB; checkpoints in {out_dir}")
    return {'epoch': run.epoch, 'step': run.step, 'best_psnr': run.best_psnr, 'last_psnr': run.last_psnr}


def training_data(cfg: SimpleNamespace, team: Team):
    """(dataset, sampler, loader, on_device) of this process: the same patches for a given (seed, epoch,
    index) however many processes and workers, made by the loader or (device_data) on the device from
    the loader's draws. Under torchrun with in_memory and node_cache, the node's first process decodes
    the images into cache_dir (once: later runs on the same files reuse it) while the node's others wait,
    and every process maps that one file."""
    if team.world_size > 1 and cfg.in_memory and cfg.node_cache:
        folder = Path(cfg.cache_dir) if cfg.cache_dir else Path(tempfile.gettempdir()) / 'liif-cache'
        train_set = team.first_on_node(lambda: training_set(cfg, folder))
    else:
        train_set = training_set(cfg)
    batch_size = cfg.batch_size // team.world_size
    sampler = ResumableSampler(train_set, team.world_size, team.rank, cfg.seed, batch_size)
    workers = worker_count(cfg.num_workers, team.world_size)
    loader = DataLoader(Draws(train_set) if cfg.device_data else train_set, batch_size=batch_size, sampler=sampler,
                        num_workers=workers, pin_memory=team.device.type == 'cuda', persistent_workers=workers > 0)
    return train_set, sampler, loader, batch_maker(train_set if cfg.device_data else None, team.device)


def training_set(cfg, cache_dir: Path | None = None) -> TrainDataset | PairedDataset | VariedDataset:
    """The training items train_data asks for: patches made from HR images at random scales (LR by bicubic
    or by the real-world degradation), patches of paired LR / HR folders, or paired images with ground
    truths of varying size; with cache_dir, their decoded images come from the shared file there
    (distributed.shared_images)."""
    common = dict(repeat=cfg.repeat, augment=True, in_memory=cfg.in_memory, seed=cfg.seed, cache_dir=cache_dir)
    # too-small images are reported by train() once the run folder exists, not warned about here
    if cfg.train_data == 'paired':
        return PairedDataset(cfg.train_lr_dir, cfg.train_dir, cfg.patch_size, cfg.sample_q, warn=False, **common)
    if cfg.train_data == 'varied':
        return VariedDataset(cfg.train_lr_dir, cfg.train_dir, cfg.size_min, cfg.size_max, cfg.gt_resize,
                             cfg.sample_q, **common)
    made = dict(patch_size=cfg.patch_size, scale_min=cfg.scale_min, scale_max=cfg.scale_max, sample_q=cfg.sample_q,
                warn=False, **common)
    if cfg.train_data == 'degraded':
        return DegradedDataset(cfg.train_dir, from_settings(cfg), **made)
    return TrainDataset(cfg.train_dir, **made)


def worker_count(requested: int, world_size: int) -> int:
    """DataLoader workers per process: as requested, but leaving a core per training process."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else (os.cpu_count() or 1)
    return max(0, min(requested, cores // world_size - 1))


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


def batch_maker(device_set: TrainDataset | None, device: torch.device):
    """The loader's batch -> the step's tensors on `device`: moved there, or made there (DevicePatches)
    from the draws of `device_set`."""
    if device_set is not None:
        return DevicePatches(device_set, device)
    return lambda batch: {k: batch[k].to(device, non_blocking=True) for k in ('lr', 'coord', 'cell', 'gt')}


def build_run(cfg: SimpleNamespace, device: torch.device, world_size: int, steps_per_epoch: int) -> Run:
    """A fresh run: the seeded model on the device, Adam, the schedule, the fp16 scaler and the EMA.
    Adam is the fused one (one multi-tensor kernel per step on CUDA; on a CPU 2.6x faster than the
    per-tensor loop, and identical from a checkpoint on, so a resumed run goes on bit for bit)."""
    model = make_model(cfg).to(device)
    if cfg.channels_last:
        model.encoder.to(memory_format=torch.channels_last)
    ema = EMA(model, cfg.ema_decay) if cfg.ema_decay > 0 else None
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr, fused=True)
    return Run(cfg, device, world_size, steps_per_epoch, model, Objective(model), optimizer,
               make_scheduler(optimizer, cfg, steps_per_epoch),
               torch.amp.GradScaler(device.type, enabled=cfg.amp == 'fp16'), ema)


def make_model(cfg) -> torch.nn.Module:
    """The model the settings describe, seeded, with init_weights' weights when given (a resumed run
    then replaces them with its checkpoint's)."""
    seed_everything(cfg.seed)
    model = build_model(**settings.model_options(cfg), fast=cfg.fast)
    if cfg.init_weights:
        load_weights(model, cfg.init_weights)
    return model


@dataclass
class Run:
    """One process's training: the model (`net` is what steps: its Objective, compiled and/or
    DDP-wrapped; `model` is what is saved, validated and averaged), its optimiser, schedule, scaler and
    EMA, and where the run stands. The counters and best_psnr are saved in every checkpoint, so a resumed run goes on as if
    never stopped."""
    cfg: SimpleNamespace
    device: torch.device
    world_size: int
    steps_per_epoch: int
    model: torch.nn.Module
    net: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    ema: EMA | None
    epoch: int = 0  # whole epochs done
    epoch_step: int = 0  # optimiser steps done in the epoch in progress
    step: int = 0  # optimiser steps done in all
    best_psnr: float = -math.inf
    last_psnr: float | None = None  # the latest validation's (not saved)

    def finished(self) -> bool:
        return self.epoch >= self.cfg.epochs or self.out_of_steps()

    def out_of_steps(self) -> bool:
        return bool(self.cfg.max_steps and self.step >= self.cfg.max_steps)

    def where(self) -> str:
        """The epoch as the progress bar, the log lines and the summary all name it: the one in progress
        (or, between epochs, the one just finished), 1-based, with its step count when unfinished."""
        if self.epoch_step == 0 and self.epoch > 0:
            return f"epoch {self.epoch}/{self.cfg.epochs}"
        return f"epoch {self.epoch + 1}/{self.cfg.epochs} ({self.epoch_step}/{self.steps_per_epoch} steps)"

    def checkpoint(self) -> dict:
        return {'model': self.model.state_dict(), 'options': self.model.options,
                'optimizer': self.optimizer.state_dict(), 'scheduler': self.scheduler.state_dict(),
                'scaler': self.scaler.state_dict(), 'epoch': self.epoch, 'epoch_step': self.epoch_step,
                'step': self.step, 'best_psnr': self.best_psnr,
                'ema': self.ema.module.state_dict() if self.ema is not None else None, 'rng': rng_state(),
                'settings': vars(self.cfg)}


class EMA:
    """Exponential moving average of a model's parameters and buffers: ema = d * ema + (1 - d) * w."""

    def __init__(self, model: torch.nn.Module, decay: float):
        self.decay = decay
        self.module = copy.deepcopy(model).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        pairs = list(zip(self.module.state_dict().values(), model.state_dict().values()))
        floats = [(ema, w) for ema, w in pairs if ema.dtype.is_floating_point]
        if floats:  # a few multi-tensor kernels a step, not two per tensor
            emas, weights = zip(*floats)
            torch._foreach_mul_(emas, self.decay)
            torch._foreach_add_(emas, weights, alpha=1 - self.decay)
        for ema, w in pairs:
            if not ema.dtype.is_floating_point:
                ema.copy_(w)


class Objective(torch.nn.Module):
    """The official training objective of a model, as one module (what steps, and what compile=True
    compiles): L1 between the prediction and the ground truth, both normalised to [-1, 1], in fp32."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, lr: torch.Tensor, coord: torch.Tensor, cell: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
        pred = self.model(lr, coord, cell)
        return F.l1_loss(normalise(pred.float()), normalise(gt))


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


def cosine_factor(step: int, warmup_steps: int, total_steps: int) -> float:
    """The cosine schedule's lr multiplier for optimiser step `step` + 1 (step counts those done):
    (step + 1) / warmup_steps during the warm-up, then 0.5 (1 + cos(pi t / T)) with t the steps since
    the warm-up and T those left after it, so the last step of total_steps runs just above 0."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    return 0.5 * (1 + math.cos(math.pi * (step - warmup_steps) / (total_steps - warmup_steps)))


def resume_if_asked(run: Run, master: bool) -> dict | None:
    """Resume from cfg.resume ('auto': out_dir/last.pth when there is one); the rng states to restore."""
    cfg = run.cfg
    path = Path(cfg.out_dir) / 'last.pth' if cfg.resume == 'auto' else Path(cfg.resume) if cfg.resume else None
    if path is not None and path.is_file():
        return resume(run, path, master)
    if master and cfg.resume == 'auto':
        print(f"no {path} yet: starting a new run")
    return None


def wrap(run: Run) -> None:
    """Over several processes DistributedDataParallel, then with compile=True torch.compile around the
    objective that steps: forward, loss and (AOTAutograd) backward compiled for the fixed training
    shapes, on one GPU as CUDA graphs ('reduce-overhead': a replay per step instead of hundreds of
    kernel launches; DDP's gradient hooks stay outside graphs)."""
    if run.world_size > 1:
        run.net = DistributedDataParallel(run.net, device_ids=[run.device.index] if run.device.type == 'cuda' else None)
    if run.cfg.compile:
        graphs = run.device.type == 'cuda' and run.world_size == 1
        run.net = torch.compile(run.net, mode='reduce-overhead' if graphs else None)


class Validation:
    """Rank 0's validation data: the official patch PSNR on paired folders or an HR folder (`batches`,
    with a few whole `samples` to show), or the benchmark protocol when valid_dir is a benchmark set."""

    def __init__(self, cfg: SimpleNamespace):
        self.batches, self.benchmark, self.samples = None, None, []
        common = dict(augment=False, in_memory=cfg.in_memory, seed=cfg.seed, first_k=cfg.valid_first,
                      role='validation')
        if cfg.valid_lr_dir:
            patches = PairedDataset(cfg.valid_lr_dir, cfg.valid_dir, cfg.patch_size, cfg.sample_q, cfg.valid_repeat,
                                    **common)
            self.samples = [patches.centre_item(i) for i in range(min(SAMPLES, len(patches.files)))]
        elif is_benchmark_folder(cfg.valid_dir):
            self.benchmark = BenchmarkDataset(cfg.valid_dir, cfg.valid_scale)
            return
        else:
            patches = TrainDataset(cfg.valid_dir, cfg.patch_size, cfg.scale_min, cfg.scale_max, cfg.sample_q,
                                   cfg.valid_repeat, **common)
            self.samples = patch_samples(cfg.valid_dir, cfg.patch_size, max(1, math.floor(cfg.scale_max)))
        self.batches = list(DataLoader(patches, batch_size=VALID_BATCH))

    def score(self, model: torch.nn.Module, chunk: int, device: torch.device) -> tuple[float, list[torch.Tensor]]:
        """(validation PSNR, up to SAMPLES sample panels) of `model`."""
        if self.benchmark is None:
            score = validate_patches(model, self.batches, device, chunk)
            return score, [sample_panel(item, model.render(item['lr'].unsqueeze(0).to(device),
                                                           tuple(item['hr'].shape[-2:]), chunk=chunk))
                           for item in self.samples]
        panels = []

        def keep_sample(item: dict, sr: torch.Tensor) -> None:
            if len(panels) < SAMPLES:
                panels.append(sample_panel(item, sr))
        rows = evaluate(model, self.benchmark, chunk=chunk, protocol='benchmark', with_ssim=False,
                        on_image=keep_sample, desc='validate')
        return sum(r['psnr'] for r in rows) / len(rows), panels


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
    """[bicubic | the model's SR | ground truth] side by side, (3, H, 3W) in [0, 1], for TensorBoard."""
    hr = item['hr'].unsqueeze(0)
    bicubic = F.interpolate(item['lr'].unsqueeze(0), size=hr.shape[-2:], mode='bicubic', align_corners=False)
    return torch.cat([bicubic.clamp(0, 1), sr.float().cpu().clamp(0, 1), hr], -1)[0]


@torch.no_grad()
def validate_patches(model: torch.nn.Module, batches: list[dict], device: torch.device, chunk: int = 0) -> float:
    """The official validation: PSNR of the clamped predictions at the validation patches' queries,
    over all their RGB values, per batch, averaged over batches weighted by their size. Decoded `chunk`
    queries at a time (0: from the memory budget), so whole paired images validate in bounded memory."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for batch in batches:
        pred = render.predict(model, *(batch[k].to(device) for k in ('lr', 'coord', 'cell')), chunk or None)
        as_image = [x.permute(2, 0, 1).reshape(1, 3, -1, 1) for x in (pred, batch['gt'].to(device))]
        total += float(psnr(*as_image, 0, protocol='rgb')) * len(pred)  # scale 0: nothing shaved
        count += len(pred)
    model.train(was_training)
    return total / count


def open_run_folder(cfg: SimpleNamespace, out_dir: Path, train_set) -> SummaryWriter:
    """Once every input is read: the run's folder, its settings, the list of skipped images, TensorBoard."""
    out_dir.mkdir(parents=True, exist_ok=True)
    settings.save(cfg, out_dir / 'train_config.json')
    if train_set.skipped:
        listing = out_dir / 'skipped_images.txt'
        with replacing(listing) as tmp:
            tmp.write_text(''.join(f"{path}\t{h}x{w}\n" for path, (h, w) in train_set.skipped.items()))
        print(f"warning: {train_set.skipped_summary}; they are skipped (all listed in {listing})", file=sys.stderr)
    return SummaryWriter(str(out_dir / 'tensorboard'))


class LossLog:
    """The training loss summed on the device between read-outs (each read-out waits for the device),
    logged by rank 0 (the one with a `writer`)."""

    def __init__(self, run: Run, writer: SummaryWriter | None, bar: tqdm):
        self.run, self.writer, self.bar = run, writer, bar
        self.sum, self.count = torch.zeros((), device=run.device), 0

    def add(self, loss: torch.Tensor) -> None:
        self.sum += loss
        self.count += 1

    def read(self) -> float:
        """Mean loss since the last read-out over all processes; stops the run if it is not finite."""
        run = self.run
        total = torch.stack([self.sum, self.sum.new_tensor(float(self.count))])
        if run.world_size > 1:
            dist.all_reduce(total)
        mean = float(total[0] / total[1])
        self.sum, self.count = torch.zeros((), device=run.device), 0
        if not math.isfinite(mean):
            raise Diverged(f"the loss became {mean} by step {run.step} ({run.where()}); stopping. The last good "
                           f"checkpoint, {Path(run.cfg.out_dir) / 'last.pth'}, is left as it was (try a lower lr "
                           f"or amp='fp32')")
        if self.writer is not None:
            self.writer.add_scalar('train/loss', mean, run.step)
            self.bar.set_postfix(loss=f'{mean:.4f}', lr=f"{run.optimizer.param_groups[0]['lr']:.2e}")
        return mean


def train_epoch(run: Run, loader: DataLoader, on_device, autocast, log: LossLog, bar: tqdm) -> None:
    """The optimiser steps of the epoch in progress, from where the run stands to the epoch's end or
    max_steps; then the epoch counts as done when it is whole. on_device: the loader's batch -> the
    batch on the device (batch_maker)."""
    cfg = run.cfg
    for batch in loader:
        batch = on_device(batch)
        lr = batch['lr']
        if cfg.channels_last:
            lr = lr.contiguous(memory_format=torch.channels_last)
        log.add(train_step(run.net, run.optimizer, run.scaler, autocast, lr, batch['coord'], batch['cell'], batch['gt']))
        if cfg.schedule == 'cosine':
            run.scheduler.step()
        if run.ema is not None:
            run.ema.update(run.model)
        run.step += 1
        run.epoch_step += 1
        bar.update()
        if run.step % LOG_EVERY == 0:
            log.read()
        if run.out_of_steps():
            break
    if log.count:
        log.read()
    if run.epoch_step == run.steps_per_epoch:  # a whole epoch done (not cut short by max_steps)
        run.epoch, run.epoch_step = run.epoch + 1, 0
        if cfg.schedule == 'multistep':
            run.scheduler.step()
    if not all_finite(run.model) or (run.ema is not None and not all_finite(run.ema.module)):
        raise Diverged(f"the weights became non-finite by step {run.step}; stopping. The last good checkpoint, "
                       f"{Path(cfg.out_dir) / 'last.pth'}, is left as it was")


def train_step(objective: torch.nn.Module, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler, autocast,
               lr: torch.Tensor, coord: torch.Tensor, cell: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    """One optimiser step on `objective` (an Objective, maybe compiled or DDP-wrapped) under the `autocast`
    context (the loss itself is fp32 under any); returns the detached loss (reading it would wait for the
    device)."""
    with autocast:
        loss = objective(lr, coord, cell, gt)
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()
    return loss.detach()


def all_finite(module: torch.nn.Module) -> bool:
    return bool(torch.stack([t.isfinite().all() for t in module.state_dict().values()
                             if t.dtype.is_floating_point]).all())


class Diverged(ValueError):
    """The loss or the weights became NaN or infinite: the run stops without saving that state."""


def end_of_epoch(run: Run, validation: Validation, writer: SummaryWriter, bar: tqdm) -> None:
    """Rank 0 after each epoch (or the part of one that max_steps allows): validate when due, then save
    last.pth, best.pth when the score improved and epoch-<n>.pth every save_every epochs."""
    cfg, out_dir = run.cfg, Path(run.cfg.out_dir)
    writer.add_scalar('train/lr', run.optimizer.param_groups[0]['lr'], run.step)
    due = (run.epoch_step == 0 and run.epoch % cfg.valid_every == 0) or run.finished()
    improved = validate(run, validation, writer, bar) if due else False
    save_atomic(run.checkpoint(), out_dir / 'last.pth')
    if improved:
        copy_atomic(out_dir / 'last.pth', out_dir / 'best.pth')
    if run.epoch_step == 0 and run.epoch % cfg.save_every == 0:
        copy_atomic(out_dir / 'last.pth', out_dir / f'epoch-{run.epoch}.pth')
    writer.flush()


def validate(run: Run, validation: Validation, writer: SummaryWriter, bar: tqdm) -> bool:
    """Rank 0: score the EMA weights (or the model) and show a few samples; True when the best so far."""
    score, panels = validation.score(run.ema.module if run.ema is not None else run.model, run.cfg.chunk, run.device)
    for i, panel in enumerate(panels):
        writer.add_image(f'samples/{i} bicubic | {model_name(run.model.options)} | GT', panel, run.step)
    writer.add_scalar('valid/psnr', score, run.step)
    improved = score > run.best_psnr
    run.last_psnr, run.best_psnr = score, max(run.best_psnr, score)
    bar.write(f"{run.where()}, step {run.step}: validation PSNR {score:.4f} dB (best {run.best_psnr:.4f})")
    return improved


if __name__ == '__main__':
    sys.exit(run_main(main, sys.argv[1:]))
