"""Training: optimiser steps per second of every training mode, and the patches per second the data
loader makes.

    python scripts/bench_train.py                          # the steps per mode (official batch)
    python scripts/bench_train.py --loader                 # and the DataLoader alone
    python scripts/bench_train.py --loader_only --patch_size=16   # only the loader
    python scripts/bench_train.py --loader_only --train_data=degraded   # the real-world degradation's cost

Steps are timed as train.py takes them (train.build_run and train.wrap: the objective, fused Adam,
autocast, a GradScaler for fp16, compile=True's compiled step, train.train_step) at the official batch
(16 patches of 48 px LR, 2304 queries each; one real batch from TrainDataset reused) for the reference
and fast paths per amp (bf16 where the device runs it natively, fp16 on CUDA), compiled or not, and with
patches made on the device each step (device_data, from pre-drawn draws); randomly initialised
EDSR-baseline-LIIF. A step's work is 3x its forward's (the backward pass computes gradients of inputs
and of weights, each a forward's multiply-adds). --loader times the DataLoader alone on the real
TrainDataset (train.py's workers and settings) in patches per second, one worker's rate, the draws alone
and DevicePatches' patches per second on the device, and says whether the loader keeps up with the
fastest loader-fed row (>= 1.5x its patches/s). --no_compile leaves out the compiled rows;
--compiled_only keeps only them (with the fast fp32 step they are compared with).
"""
import os
import sys
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader, default_collate

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import config
import settings
import train
from cli import run_main
from dataset import DegradedDataset, DevicePatches, Draws, TrainDataset
from degrade import from_settings
from model import build_model
from precision import autocast, native_bf16
from scripts.benchlib import (
    ROOT,
    floor_columns,
    floors,
    header,
    machine_fields,
    parser,
    setup,
    timed,
    work_flops,
    write_json,
)

TRAIN = [[ROOT / 'data/DIV2K/DIV2K_train_HR'], [ROOT / f'tests/data/train/{s}' for s in ('T91', 'BSDS200')]]


def train_dirs(args) -> list[Path]:
    if args.train_dir:
        return [Path(p) for p in args.train_dir.split(',')]
    return next((dirs for dirs in TRAIN if all(p.is_dir() for p in dirs)), TRAIN[0])


def train_set(args) -> TrainDataset:
    """train.py's training patches at the benchmark's patch size, queries and scales; with
    --train_data=degraded their LR made by config.py's degradation model."""
    options = dict(patch_size=args.patch_size, scale_min=config.scale_min, scale_max=config.scale_max,
                   sample_q=args.sample_q, repeat=config.repeat, augment=True, in_memory=config.in_memory, seed=0)
    if args.train_data == 'degraded':
        dataset = DegradedDataset(train_dirs(args), from_settings(settings.parse([], 'train')), **options)
    else:
        dataset = TrainDataset(train_dirs(args), **options)
    dataset.set_epoch(1)
    return dataset


def modes(args, device: torch.device) -> list[tuple[str, str, bool, bool]]:
    """(path, amp, compile, device_data) of every training mode, the fast fp32 one first; the device-data
    rows in the amp with native speed (bf16 where native), eager and compiled; with compiled_only the fast
    fp32 one (the base of the ratios) and the compiled ones."""
    amps = ['fp32'] + ['bf16'] * native_bf16(device) + ['fp16'] * (device.type == 'cuda')
    compiles = [False] + [True] * (not args.no_compile)
    rows = [('fast', 'fp32', False, False), ('reference', 'fp32', False, False)]
    rows += [('fast', amp, False, False) for amp in amps[1:]]
    rows += [('fast', amp, True, False) for amp in amps[:2] * (not args.no_compile)]
    rows += [('fast', amps[:2][-1], c, True) for c in compiles]
    return [r for r in rows if r[2] or r == rows[0]] if args.compiled_only else rows


def time_steps(args, device: torch.device, mode, batch: dict, patches: DevicePatches, draws: list) -> dict:
    """One training mode's row: steps/s after the warm-up steps (the compiled ones compile there), the
    warm-up's seconds, peak memory and the first and last loss."""
    path, amp, compiled, device_data = mode
    cfg = settings.parse([f'--fast={path == "fast"}', f'--amp={amp}', f'--compile={compiled}',
                          f'--batch_size={args.batch}'])
    run = train.build_run(cfg, device, 1, 1)
    train.wrap(run)
    run.net.train()
    context, losses = autocast(device, amp), []

    def steps(n: int) -> None:
        for _ in range(n):
            b = patches(draws[len(losses) % len(draws)]) if device_data else batch
            loss = train.train_step(run.net, run.optimizer, run.scaler, context, b['lr'], b['coord'], b['cell'], b['gt'])
            losses.append(loss.clone())  # a copy: with CUDA graphs the next replay overwrites the step's output
    warmup_s = timed(lambda: steps(args.train_warmup), device)[0]
    seconds, peak, _ = timed(lambda: steps(args.train_steps), device)
    return {'path': path, 'amp': amp, 'compile': compiled, 'data': 'device' if device_data else 'loader',
            'steps_per_s': args.train_steps / seconds, 'patches_per_s': args.train_steps * args.batch / seconds,
            'warmup_s': warmup_s, 'peak_mb': peak, 'loss_first': float(losses[0]), 'loss_last': float(losses[-1])}


def run_steps(args, dataset: TrainDataset, device: torch.device, results: dict) -> list[dict]:
    """Optimiser steps per second, % floor and peak memory per training mode at one fixed real batch
    (device-data rows: made on the device each step from pre-drawn draws)."""
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(0)).tolist()
    batch = {k: v.to(device) for k, v in default_collate([dataset[i] for i in order[:args.batch]]).items()}
    draws = [default_collate([dataset.device_draw(i) for i in order[j:j + args.batch]])
             for j in range(0, min(8 * args.batch, len(order) - args.batch + 1), args.batch)]
    patches = DevicePatches(dataset, device)
    floor, floor_line = floors(device, list(dict.fromkeys(amp for _, amp, *_ in modes(args, device))),
                               args.peak_tflops)
    flops = 3 * args.batch * work_flops(build_model('liif'), args.patch_size ** 2, args.sample_q)  # forward + backward
    print(header('LIIF training steps', device))
    print(f"batch {args.batch} x {args.sample_q} queries, {args.patch_size}-px LR; {args.train_warmup} warm-up + "
          f"{args.train_steps} timed steps; TFLOP/s: 3 x the fast path's forward work; {floor_line}\n")
    print("| path | amp | compile | data | steps/s | patches/s | x fast fp32 | TFLOP/s | % floor | % decoder floor "
          "| warm-up s | peak MB | loss first -> last |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    rows = results['train']
    for mode in modes(args, device):
        rows.append(time_steps(args, device, mode, batch, patches, draws))
        write_json(args.json, results)
        r = rows[-1]
        print(f"| {r['path']} | {r['amp']} | {'yes' if r['compile'] else 'no'} | {r['data']} | {r['steps_per_s']:.3g} "
              f"| {r['patches_per_s']:.3g} | {r['steps_per_s'] / rows[0]['steps_per_s']:.2f} "
              f"{floor_columns(flops, 1 / r['steps_per_s'], floor[r['amp']])} {r['warmup_s']:.1f} | {r['peak_mb']:.0f} "
              f"| {r['loss_first']:.4f} -> {r['loss_last']:.4f} |", flush=True)
    return rows


def items_per_s(make, indices: list[int]) -> float:
    start = time.perf_counter()
    for i in indices:
        make(i)
    return len(indices) / (time.perf_counter() - start)


def loader_per_s(args, items, order: list[int], workers: int, device: torch.device) -> float:
    """Items per second from train.py's kind of DataLoader over `items`, its workers started (not timed)."""
    loader = DataLoader(items, batch_size=args.batch, sampler=order, num_workers=workers,
                        pin_memory=device.type == 'cuda', persistent_workers=workers > 0)
    batches = iter(loader)
    next(batches)  # workers started and the first batches in flight: not timed
    start = time.perf_counter()
    for _ in range(args.loader_batches):
        next(batches)
    return args.loader_batches * args.batch / (time.perf_counter() - start)


def device_patches_per_s(args, dataset: TrainDataset, order: list[int], device: torch.device) -> float:
    """Patches per second DevicePatches makes on the device from collated draws (drawn beforehand)."""
    patches = DevicePatches(dataset, device)
    draws = [default_collate([dataset.device_draw(i) for i in order[j:j + args.batch]])
             for j in range(0, args.loader_batches * args.batch, args.batch)]
    patches(draws[0])  # warm-up
    seconds = timed(lambda: [patches(d) for d in draws], device)[0]
    return len(draws) * args.batch / seconds


def run_loader(args, dataset: TrainDataset, device: torch.device, train_rows: list[dict]) -> dict:
    """Patches per second of the DataLoader alone (train.py's worker count) and of one worker; draws per
    second (one worker, and the loader of draws) and DevicePatches' patches per second on the device."""
    workers = train.worker_count(args.workers, 1)
    order = (torch.randperm(len(dataset), generator=torch.Generator().manual_seed(0)).tolist() * 2)
    order = order[:(args.loader_batches + 2) * args.batch]
    items = order[:args.loader_batches * args.batch]
    result = {'workers': workers, 'one_worker_patches_per_s': items_per_s(dataset.__getitem__, items),
              'patches_per_s': loader_per_s(args, dataset, order, workers, device),
              'one_worker_draws_per_s': items_per_s(dataset.device_draw, items),
              'draws_per_s': loader_per_s(args, Draws(dataset), order, workers, device),
              'device_patches_per_s': device_patches_per_s(args, dataset, order, device)}
    print(f"\n| training data ({args.train_data}, {len(dataset.files)} images of {', '.join(str(p) for p in train_dirs(args))}) "
          f"| workers | per second |\n|---|---|---|")
    print(f"| patches, one worker (in process) | 1 | {result['one_worker_patches_per_s']:.0f} |")
    print(f"| patches, train.py's loader (num_workers {args.workers}, {os.cpu_count()} cores) | {workers} "
          f"| {result['patches_per_s']:.0f} |")
    print(f"| draws only, one worker (in process) | 1 | {result['one_worker_draws_per_s']:.0f} |")
    print(f"| draws only, train.py's loader (device_data) | {workers} | {result['draws_per_s']:.0f} |")
    print(f"| patches made by DevicePatches on {device.type} (in process) | - | {result['device_patches_per_s']:.0f} |")
    loader_rows = [r for r in train_rows if r['data'] == 'loader']
    if loader_rows:
        fastest = max(loader_rows, key=lambda r: r['patches_per_s'])
        need = 1.5 * fastest['patches_per_s']
        result['keeps_up'] = result['patches_per_s'] >= need
        print(f"\nloader keeps up: {'yes' if result['keeps_up'] else 'NO'} ({result['patches_per_s']:.0f} patches/s vs "
              f"1.5 x {fastest['patches_per_s']:.0f} = {need:.0f} for the fastest training row, "
              f"{fastest['path']} {fastest['amp']}{' compiled' if fastest['compile'] else ''})", flush=True)
    return result


def parse_args(argv: list[str]):
    p = parser(__doc__, rounds=False)
    p.add_argument('--loader', action='store_true', help="also time the training DataLoader alone")
    p.add_argument('--loader_only', action='store_true', help="only the DataLoader, no training steps")
    p.add_argument('--train_data', default='downsampled', choices=['downsampled', 'degraded'],
                   help="the patches: bicubic LR, or through the real-world degradation model")
    p.add_argument('--train_dir', default='', help="training folders, comma-separated (default: DIV2K or the 291)")
    p.add_argument('--batch', type=int, default=config.batch_size, help="patches per training step")
    p.add_argument('--sample_q', type=int, default=config.sample_q, help="queries per patch")
    p.add_argument('--patch_size', type=int, default=config.patch_size, help="LR patch side")
    p.add_argument('--train_steps', type=int, default=30, help="timed training steps per mode")
    p.add_argument('--train_warmup', type=int, default=5, help="untimed training steps first (compiles)")
    p.add_argument('--workers', type=int, default=config.num_workers, help="DataLoader workers asked for")
    p.add_argument('--loader_batches', type=int, default=50, help="batches timed from the DataLoader")
    p.add_argument('--peak_tflops', type=float, default=0,
                   help="the GPU's dense bf16 peak for the %% floor column (0: a fp32 matmul measured now)")
    p.add_argument('--no_compile', action='store_true', help="leave out the compiled modes")
    p.add_argument('--compiled_only', action='store_true', help="only the compiled modes (and the fast fp32 row)")
    args = p.parse_args(argv)
    if min(args.batch, args.sample_q, args.patch_size, args.train_steps, args.loader_batches) < 1:
        raise ValueError("batch, sample_q, patch_size, train_steps and loader_batches must be >= 1")
    return args


def main(argv: list[str]) -> None:
    args = parse_args(argv)
    device = setup(args)
    results = {**machine_fields(device), 'batch': args.batch, 'train': [], 'loader': None}
    dataset = train_set(args)
    rows = [] if args.loader_only else run_steps(args, dataset, device, results)
    if args.loader or args.loader_only:
        results['loader'] = run_loader(args, dataset, device, rows)
    write_json(args.json, results)


if __name__ == '__main__':
    sys.exit(run_main(main, sys.argv[1:]))
