"""Reference path vs every fast mode: throughput, % of the device's floor, peak memory and exactness of
LIIF rendering and training.

    python scripts/benchmark.py                                  # 128 and 256 LR at x2, x4, x12
    python scripts/benchmark.py --sizes=128 --scales=4 --repeats=1 --warmup=0   # a quick run
    python scripts/benchmark.py --sizes=0 --test_py              # only time test.py, Set5 + Set14 x4
    python scripts/benchmark.py --sizes=0 --psnr                 # Set5 and Set14 x4 PSNR per amp (and compiled)
    python scripts/benchmark.py --sizes=0 --train --loader       # training steps/s, DataLoader and device patches/s
    python scripts/benchmark.py --sizes=128,256 --scales=2,4 --onnx   # and the exported file under ONNX Runtime
    python scripts/benchmark.py --sizes=0 --ddp_memory --train_dir=T91,BSDS200   # node memory of 1, 2, 4 processes
    python scripts/benchmark.py --sizes=0 --ddp_memory --stand_in=200   # the same on 200 DIV2K-sized images
    python scripts/benchmark.py --sizes=0 --dist_speed              # inference.py: 2 processes vs 1, same cores
    python scripts/benchmark.py --sizes=0 --models --cases=64x4 --threads=1   # LTE beside LIIF's two paths
    python scripts/benchmark.py --sizes=0 --video --video_frames=3   # video frames/s and the pipeline's share

In one process, for each LR size and scale, the modes run alternately (reference fp32, fast fp32,
fast bf16 where supported, fast fp16 on CUDA, and on CUDA the compiled decoder (compile_decoder, CUDA
graphs) in fp32 and bf16; with --onnx, the model exported by onnx_model.export run by ONNX Runtime on
the CPU in windows of --onnx_queries output pixels): `warmup` untimed rounds, then `repeats` timed
rounds; the table gives the median. Renders size chunks and blocks by the device (render.device_budget).
LR inputs are top-left crops of real Set14 images (random if the data is absent), weights the official
EDSR-baseline-LIIF checkpoint (random if absent); the header says which. fp32 is true fp32 (TF32 off).

% floor: each row's useful work (render_flops: the fast path's multiply-adds, credited to every row
alike) per second as a share of --peak_tflops (a GPU's datasheet peak), or, without it, of the rate of a
plain 2048 x 2048 fp32 matmul measured in the same run (best of 5): how close to the device's own
matrix-product speed each mode runs.

Peak memory is the largest resident-set growth during a run on the CPU: /proc/self/clear_refs is
written with 5 to reset the kernel's high-water mark (VmHWM), and the table gives VmHWM after the
run minus VmRSS before it, after glibc's malloc_trim has returned freed memory to the OS
(tracemalloc cannot see torch's allocations). On CUDA it is
torch.cuda.max_memory_allocated after reset_peak_memory_stats. `max |diff|` is against the
reference path's output for the same input.

--train times optimiser steps as train.py takes them (train.build_run and wrap: the objective, fused
Adam, autocast, a GradScaler for fp16, compile=True's compiled step) at the official batch (16 patches
of 48 px LR, 2304 queries each; one real batch from TrainDataset reused) for the reference and fast
paths per amp, compiled or not, and with patches made on the device each step (device_data, from
pre-drawn draws); randomly initialised EDSR-baseline-LIIF. A step's work is 3x its forward's (the
backward pass computes gradients of inputs and of weights, each a forward's multiply-adds). --loader
times the DataLoader alone on the real TrainDataset (train.py's workers and settings) in patches per
second, one worker's rate, the draws alone and DevicePatches' patches per second on the device, and
says whether the loader keeps up with the fastest loader-fed row (>= 1.5x its patches/s). --json writes
every row to a file as well (replaced whole after each row). --no_compile leaves out the compiled rows;
--compiled_only keeps only them (with the reference render, or the fast fp32 step, they are compared with).

--ddp_memory runs train.py under torchrun (gloo, CPU; --memory_steps steps) with 1, 2 and 4 processes
(--procs), with and without the node's shared cache (node_cache), and samples the node's memory every
0.2 s: the sum of PSS (/proc/<pid>/smaps_rollup) over every process of the run (torchrun's agent,
the training processes, their DataLoader workers), largest sample. PSS splits a shared page among the
processes that map it, so the sum counts each page once; pages of the cache file that no process has
touched yet sit in the page cache and are not in any PSS, hence the second column, PSS + the cache
file (an upper bound on the node's memory). --stand_in=N writes N smooth synthetic PNGs of DIV2K's
size (2040x1356) into out_dir once and trains on them. --dist_speed times inference.py on a folder of
real crops, alone (2 threads) and under torchrun (2 processes of 1 thread), alternately. --models times
EDSR-baseline-LTE beside EDSR-baseline-LIIF's fast and reference paths (random weights: the time does not
depend on them), fp32, alternately, at --cases.

--video runs video.upscale_video (inference.py's video path) on clips of --video_frames frames made from a
real Set14 image sliding by 2 px a frame (libx264, crf 18), 360p -> 720p and 480p -> 1080p, with the fast
path (fp32) and ONNX Runtime, encoding libx264 yuv420p crf 18 preset medium. The model's time is the
render calls'; the rest (decode, colour conversion both ways, rounding, encode, mux) is the pipeline's
own cost, given as a share of the model's time. The first frame's encoder start-up counts in it.
"""
import argparse
import ctypes
import functools
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.utils.data import default_collate

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import config
import settings
from checkpoint import model_from_checkpoint
from dataset import BenchmarkDataset, DevicePatches, Draws, TrainDataset, list_images
from files import replacing
from image_quality_assessment import evaluate
from imgproc import image_size, load_uint8, read_image
from model import build_model
from onnx_model import WINDOW_QUERIES, OnnxModel, export
from precision import autocast as amp_context
from precision import machine_name, use_tf32
from train import build_run, train_step, worker_count, wrap
from video import upscale_video

WEIGHTS = [ROOT / 'results/pretrained_models/edsr-baseline-liif.pth']
DATA = [ROOT / 'data/benchmark', ROOT / 'tests/data/benchmark']  # the full sets, else the tests' copy of Set5/Set14
VIDEO_CASES = [((360, 640), (720, 1280)), ((480, 854), (1080, 1920))]  # (input, output) (height, width)
TRAIN = [[ROOT / 'data/DIV2K/DIV2K_train_HR'], [ROOT / f'tests/data/train/{s}' for s in ('T91', 'BSDS200')]]


def bf16_supported(device: torch.device) -> bool:
    if device.type == 'cuda':
        return torch.cuda.is_bf16_supported()
    return torch.ops.mkldnn._is_mkldnn_bf16_supported()


def status_kb(field: str) -> int:
    for line in Path('/proc/self/status').read_text().splitlines():
        if line.startswith(field + ':'):
            return int(line.split()[1])
    raise KeyError(field)


def timed(fn, device: torch.device) -> tuple[float, float, torch.Tensor]:
    """(seconds, peak memory growth in MB, result) of fn()."""
    if device.type == 'cuda':
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
    else:
        ctypes.CDLL(None).malloc_trim(0)  # hand freed heap back to the OS so growth is not hidden
        Path('/proc/self/clear_refs').write_text('5')
        base = status_kb('VmRSS') * 1024
    start = time.perf_counter()
    out = fn()
    if device.type == 'cuda':
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated(device) if device.type == 'cuda' else status_kb('VmHWM') * 1024
    return seconds, (peak - base) / 2 ** 20, out


def load_model(device: torch.device):
    for path in WEIGHTS:
        if path.is_file():
            return model_from_checkpoint(path).to(device).eval(), f"official weights {path}"
    torch.manual_seed(0)
    return build_model('liif').to(device).eval(), "random weights (no checkpoint found)"


def lr_input(size: int, device: torch.device) -> tuple[torch.Tensor, str]:
    for root in DATA:
        hr = root / 'Set14' / 'HR'
        images = sorted(hr.glob('*.png')) if hr.is_dir() else []
        images = [p for p in images if min(read_image(p).shape[:2]) >= size]
        if images:
            img = read_image(images[0])[:size, :size]
            return to_batch(img, device), images[0].name
    return torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(0)).to(device), 'random'


def render_flops(model, lr_pixels: int, queries: int) -> float:
    """Multiply-adds x 2 of the fast path's forward pass: encoder convolutions and the folded first layer
    per LR pixel, the coordinate / cell terms and the later decoder layers per query and ensemble member.
    Every row is credited with this same useful work, so TFLOP/s compare like MP/s."""
    convs = [m for m in model.encoder.modules() if isinstance(m, torch.nn.Conv2d)]
    per_lr_pixel = sum(2 * m.in_channels * m.out_channels * m.kernel_size[0] * m.kernel_size[1] for m in convs)
    linears = [m for m in model.imnet.modules() if isinstance(m, torch.nn.Linear)]
    per_lr_pixel += 2 * model.feat_dim * linears[0].out_features
    members = 4 if model.local_ensemble else 1
    per_query = members * (2 * (linears[0].in_features - model.feat_dim) * linears[0].out_features
                           + sum(2 * m.in_features * m.out_features for m in linears[1:]))
    return lr_pixels * per_lr_pixel + queries * per_query


def matmul_tflops(device: torch.device, n: int = 2048, repeats: int = 5) -> float:
    """TFLOP/s of a plain n x n @ n x n fp32 matmul on the device, the best of `repeats`: the rate its
    matrix-product library reaches, the floor the decoder's matmuls are measured against."""
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    best = min(timed(lambda: a @ b, device)[0] for _ in range(repeats + 1))  # the first one warms up
    return 2 * n ** 3 / best / 1e12


def floor_tflops(args, device: torch.device) -> tuple[float, str]:
    """The rate the % floor column divides by, and its name for the table's header."""
    if args.peak_tflops:
        return args.peak_tflops, f"% of a {args.peak_tflops:g} TFLOP/s peak"
    rate = matmul_tflops(device)
    return rate, f"% of a 2048^3 fp32 matmul's {rate:.3g} TFLOP/s on this device, measured now"


def render_onnx(session: OnnxModel, lr: torch.Tensor, size: tuple[int, int], queries: int) -> torch.Tensor:
    """ONNX Runtime's render of lr, as a tensor on lr's device."""
    return torch.from_numpy(session.render(lr.cpu().numpy(), size, queries=queries)).to(lr.device)


def render_variants(args, device: torch.device) -> list[tuple[str, bool, str, bool]]:
    """(path, fast, amp, compiled) of every render mode this device runs, the reference first."""
    amps = ['fp32'] + ['bf16'] * bf16_supported(device) + ['fp16'] * (device.type == 'cuda')
    variants = [('reference', False, 'fp32', False)] * (not args.no_reference)
    variants += [('fast', True, amp, False) for amp in amps] * (not args.compiled_only)
    if device.type == 'cuda' and not args.no_compile:
        variants += [('fast', True, amp, True) for amp in amps if amp != 'fp16']
    return variants + [('onnx', True, 'fp32', False)] * args.onnx


def load_models(device: torch.device, variants) -> tuple[dict, str]:
    """{compiled: model} for the variants (a second copy with compile_decoder's CUDA graphs, compiled in
    the first renders), and the weights' description."""
    model, weights = load_model(device)
    models = {False: model}
    if any(compiled for *_, compiled in variants):
        models[True] = load_model(device)[0]
        models[True].compile_decoder()
    return models, weights


def renderers(args, device: torch.device, variants) -> tuple[dict, str, torch.nn.Module]:
    """{variant: function(lr, size) -> image}, the weights' description and the model."""
    models, weights = load_models(device, variants)
    model = models[False]
    if args.onnx:
        onnx_path = Path(args.out_dir) / 'liif.onnx'
        onnx_path.parent.mkdir(parents=True, exist_ok=True)
        export(model, onnx_path)
        session = OnnxModel(onnx_path, threads=torch.get_num_threads())

    def renderer(name, fast, amp, compiled):
        if name == 'onnx':
            return lambda lr, size: render_onnx(session, lr, size, args.onnx_queries)
        net = models[compiled]

        def run(lr, size):
            net.fast = fast
            return net.render(lr, size, chunk=args.chunk, amp=amp)
        return run
    return {v: renderer(*v) for v in variants}, weights, model


def time_variants(args, device: torch.device, runs: dict, lr: torch.Tensor, size) -> dict:
    """{variant: (median seconds, peak MB, output)}: the variants alternately, warm-up rounds untimed."""
    times, peaks, outs = {v: [] for v in runs}, {v: 0.0 for v in runs}, {}
    for round_ in range(args.warmup + args.repeats):
        for variant, run in runs.items():
            seconds, peak, outs[variant] = timed(functools.partial(run, lr, size), device)
            if round_ >= args.warmup:
                times[variant].append(seconds)
                peaks[variant] = max(peaks[variant], peak)
    return {v: (statistics.median(times[v]), peaks[v], outs[v]) for v in runs}


def run_grid(args, device: torch.device, results: dict) -> None:
    variants = render_variants(args, device)
    runs, weights, model = renderers(args, device, variants)
    floor, floor_name = floor_tflops(args, device)
    print(f"# LIIF render benchmark on {machine_name(device)}, torch {torch.__version__}"
          + (f", CUDA {torch.version.cuda}" if device.type == 'cuda' else ''))
    print(f"{weights}; {args.warmup} warm-up + {args.repeats} timed rounds, median; chunk {args.chunk or 'auto'}; "
          f"TFLOP/s counts the fast path's work; {floor_name}"
          + (";\nx reference: against the fast fp32 row (--no_reference)" if args.no_reference else '') + "\n")
    print("| LR | input | scale | output | path | amp | compiled | MP/s | x reference | TFLOP/s | % floor | peak MB "
          "| max abs diff |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for size, scale in args.cases:
        lr, source = lr_input(size, device)
        out_size = (round(size * scale), round(size * scale))
        times = time_variants(args, device, runs, lr, out_size)
        ref_time, _, reference = times[variants[0]]
        pixels = out_size[0] * out_size[1]
        flops = render_flops(model, size * size, pixels)
        for (name, _, amp, compiled), (t, peak, out) in times.items():
            diff = (out - reference).abs().max().item()
            results['render'].append({'lr': size, 'scale': scale, 'path': name, 'amp': amp, 'compile': compiled,
                                      'mp_per_s': pixels / 1e6 / t, 'x_reference': ref_time / t, 'max_abs_diff': diff})
            write_json(args, results)
            print(f"| {size}x{size} | {source} | x{scale:g} | {out_size[0]}x{out_size[1]} | {name} | {amp} "
                  f"| {'yes' if compiled else 'no'} | {pixels / 1e6 / t:.3f} | {ref_time / t:.2f} "
                  f"| {flops / t / 1e12:.3g} | {100 * flops / t / 1e12 / floor:.1f} | {peak:.0f} | {diff:.2e} |",
                  flush=True)


def run_models(args, device: torch.device) -> None:
    """MP/s of EDSR-baseline-LTE beside EDSR-baseline-LIIF (fast and reference), alternately in one process."""
    torch.manual_seed(0)
    models = {'LIIF fast': build_model('liif'), 'LIIF reference': build_model('liif', fast=False),
              'LTE': build_model('lte', hidden_list=[256, 256, 256])}
    runs = {name: functools.partial(net.to(device).eval().render, chunk=args.chunk) for name, net in models.items()}
    print(f"\n# LTE beside LIIF on {machine_name(device)}, torch {torch.__version__}; {args.warmup} warm-up + "
          f"{args.repeats} timed rounds, median\n")
    print("| LR | scale | output | model | MP/s | x LIIF fast |\n|---|---|---|---|---|---|")
    for size, scale in args.cases:
        lr, _ = lr_input(size, device)
        out_size = (round(size * scale), round(size * scale))
        times = time_variants(args, device, runs, lr, out_size)
        for name, (t, _, _) in times.items():
            print(f"| {size}x{size} | x{scale:g} | {out_size[0]}x{out_size[1]} | {name} "
                  f"| {out_size[0] * out_size[1] / 1e6 / t:.3f} | {times['LIIF fast'][0] / t:.2f} |", flush=True)


def to_batch(img: np.ndarray, device: torch.device) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1)[None].to(device)


def run_psnr(args, device: torch.device, results: dict) -> None:
    """Set5 and Set14 x4 PSNR (the official benchmark protocol, from the released LR files) of the fast
    path per amp, and of the compiled decoder on CUDA: bf16 and compiled modes against fp32."""
    root = next((p for p in DATA if (p / 'Set14' / 'LR_bicubic' / 'X4').is_dir()), None)
    if root is None:
        print("\nSet5 / Set14 x4 PSNR needs the benchmark data: skipped")
        return
    variants = [v for v in render_variants(args, device) if v[0] == 'fast']
    variants = [('fast', True, 'fp32', False)] * args.compiled_only + variants  # the base of the differences
    models, weights = load_models(device, variants)
    print(f"\n| x4 PSNR (dB), {weights} | " + ' | '.join(f"{amp}{' compiled' * c}" for _, _, amp, c in variants) + ' |')
    print('|---' * (len(variants) + 1) + '|')
    for name in ('Set5', 'Set14'):
        dataset = BenchmarkDataset(root / name, 4)
        scores = {v: statistics.mean(r['psnr'] for r in evaluate(models[v[3]], dataset, chunk=0, amp=v[2],
                                                                 with_ssim=False)) for v in variants}
        base = scores[variants[0]]
        results['psnr'] += [{'set': name, 'amp': v[2], 'compile': v[3], 'psnr': scores[v]} for v in variants]
        write_json(args, results)
        print(f"| {name} | " + ' | '.join(f"{scores[v]:.4f} ({scores[v] - base:+.4f})" for v in variants) + ' |',
              flush=True)


def run_test_py(args) -> None:
    """Wall time of the whole test.py evaluation on Set5 + Set14 at x4, fast vs reference path."""
    script = ROOT / 'test.py'
    if not script.is_file():
        print("\ntest.py does not exist yet: skipped")
        return
    weights = next((p for p in WEIGHTS if p.is_file()), None)
    root = next((p for p in DATA if p.is_dir()), None)
    if weights is None or root is None:
        print("\ntest.py timing needs the official weights and the benchmark data: skipped")
        return
    print("\n| test.py Set5 + Set14 x4 | seconds | x reference |\n|---|---|---|")
    seconds = {}
    for fast in (False, True):
        out_dir = Path(args.out_dir) / f"test_py_fast_{fast}"
        cmd = [sys.executable, str(script), '--test_scales=[4]', '--test_sets=Set5,Set14', f'--fast={fast}',
               f'--test_root={root}', f'--weights={weights}', f'--out_dir={out_dir}']
        start = time.perf_counter()
        subprocess.run(cmd, check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
        seconds[fast] = time.perf_counter() - start
        print(f"| {'fast' if fast else 'reference'} | {seconds[fast]:.1f} | {seconds[False] / seconds[fast]:.2f} |",
              flush=True)


def train_dirs(args) -> list[Path]:
    if args.train_dir:
        return [Path(p) for p in args.train_dir.split(',')]
    return next((dirs for dirs in TRAIN if all(p.is_dir() for p in dirs)), TRAIN[0])


def train_set(args) -> TrainDataset:
    """train.py's training patches at the benchmark's patch size, queries and scales."""
    dataset = TrainDataset(train_dirs(args), args.patch_size, config.scale_min, config.scale_max, args.sample_q,
                           config.repeat, augment=True, in_memory=config.in_memory, seed=0)
    dataset.set_epoch(1)
    return dataset


def write_json(args, results: dict) -> None:
    """Every row measured so far ({'device', 'torch', 'cuda', 'render', 'psnr', 'train', 'loader'}) to --json,
    so that a stage stopped at its time limit keeps what it measured."""
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        with replacing(args.json) as tmp:  # a reader (or a stop at a time limit) never sees half a file
            tmp.write_text(json.dumps(results, indent=2) + '\n')


def train_variants(args, device: torch.device) -> list[tuple[str, bool, str, bool, bool]]:
    """(path, fast, amp, compile, device_data) of every training mode, the fast fp32 one first; the
    device-data rows in the amp with native speed (bf16 where supported), eager and compiled; with
    compiled_only the fast fp32 one (the base of the ratios) and the compiled ones."""
    amps = ['fp32'] + ['bf16'] * bf16_supported(device) + ['fp16'] * (device.type == 'cuda')
    compiles = [False] + [True] * (not args.no_compile)
    variants = [('fast', True, 'fp32', False, False), ('reference', False, 'fp32', False, False)]
    variants += [('fast', True, amp, False, False) for amp in amps[1:]]
    variants += [('fast', True, amp, True, False) for amp in amps[:2] * (not args.no_compile)]
    variants += [('fast', True, amps[:2][-1], c, True) for c in compiles]
    return [v for v in variants if v[3] or v == variants[0]] if args.compiled_only else variants


def step_run(args, device: torch.device, fast: bool, amp: str, compiled: bool):
    """A fresh train.py run (seeded model, fused Adam, objective, compiled when asked) at the benchmark's batch."""
    cfg = settings.parse([f'--fast={fast}', f'--amp={amp}', f'--compile={compiled}', f'--batch_size={args.batch}'])
    run = build_run(cfg, device, 1, 1)
    wrap(run)
    run.net.train()
    return run


def time_steps(args, device: torch.device, variant, batch: dict, patches: DevicePatches, draws: list) -> dict:
    """One training mode's row: steps/s after the warm-up steps (the compiled ones compile there), the
    warm-up's seconds, peak memory and the first and last loss."""
    name, fast, amp, compiled, device_data = variant
    run, autocast, losses = step_run(args, device, fast, amp, compiled), amp_context(device, amp), []

    def steps(n: int) -> None:
        for _ in range(n):
            b = patches(draws[len(losses) % len(draws)]) if device_data else batch
            loss = train_step(run.net, run.optimizer, run.scaler, autocast, b['lr'], b['coord'], b['cell'], b['gt'])
            losses.append(loss.clone())  # a copy: with CUDA graphs the next replay overwrites the step's output
    warmup_s = timed(lambda: steps(args.train_warmup), device)[0]
    seconds, peak, _ = timed(lambda: steps(args.train_steps), device)
    return {'path': name, 'amp': amp, 'compile': compiled, 'data': 'device' if device_data else 'loader',
            'steps_per_s': args.train_steps / seconds, 'patches_per_s': args.train_steps * args.batch / seconds,
            'warmup_s': warmup_s, 'peak_mb': peak, 'loss_first': float(losses[0]), 'loss_last': float(losses[-1])}


def run_train(args, dataset: TrainDataset, device: torch.device, results: dict) -> list[dict]:
    """Optimiser steps per second, % floor and peak memory per training mode at one fixed real batch
    (device-data rows: made on the device each step from pre-drawn draws)."""
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(0)).tolist()
    batch = {k: v.to(device) for k, v in default_collate([dataset[i] for i in order[:args.batch]]).items()}
    draws = [default_collate([dataset.draw(i) for i in order[j:j + args.batch]])
             for j in range(0, min(8 * args.batch, len(order) - args.batch + 1), args.batch)]
    patches = DevicePatches(dataset, device)
    floor, floor_name = floor_tflops(args, device)
    flops = 3 * args.batch * render_flops(build_model('liif'), args.patch_size ** 2, args.sample_q)  # forward + backward
    print(f"\n# LIIF training steps on {machine_name(device)}, torch {torch.__version__}"
          + (f", CUDA {torch.version.cuda}" if device.type == 'cuda' else ''))
    print(f"batch {args.batch} x {args.sample_q} queries, {args.patch_size}-px LR; {args.train_warmup} warm-up + "
          f"{args.train_steps} timed steps; TFLOP/s: 3 x the fast path's forward work; {floor_name}\n")
    print("| path | amp | compile | data | steps/s | patches/s | x fast fp32 | TFLOP/s | % floor | warm-up s | peak MB "
          "| loss first -> last |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    rows = results['train']
    for variant in train_variants(args, device):
        rows.append(time_steps(args, device, variant, batch, patches, draws))
        write_json(args, results)
        r, rate = rows[-1], flops * rows[-1]['steps_per_s'] / 1e12
        print(f"| {r['path']} | {r['amp']} | {'yes' if r['compile'] else 'no'} | {r['data']} | {r['steps_per_s']:.3g} "
              f"| {r['patches_per_s']:.3g} | {r['steps_per_s'] / rows[0]['steps_per_s']:.2f} | {rate:.3g} "
              f"| {100 * rate / floor:.1f} | {r['warmup_s']:.1f} | {r['peak_mb']:.0f} "
              f"| {r['loss_first']:.4f} -> {r['loss_last']:.4f} |", flush=True)
    return rows


def items_per_s(make, indices: list[int]) -> float:
    start = time.perf_counter()
    for i in indices:
        make(i)
    return len(indices) / (time.perf_counter() - start)


def loader_per_s(args, items, order: list[int], workers: int, device: torch.device) -> float:
    """Items per second from train.py's kind of DataLoader over `items`, its workers started (not timed)."""
    loader = torch.utils.data.DataLoader(items, batch_size=args.batch, sampler=order, num_workers=workers,
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
    draws = [default_collate([dataset.draw(i) for i in order[j:j + args.batch]])
             for j in range(0, args.loader_batches * args.batch, args.batch)]
    patches(draws[0])  # warm-up
    seconds = timed(lambda: [patches(d) for d in draws], device)[0]
    return len(draws) * args.batch / seconds


def run_loader(args, dataset: TrainDataset, device: torch.device, train_rows: list[dict]) -> dict:
    """Patches per second of the DataLoader alone (train.py's worker count) and of one worker; draws per
    second (one worker, and the loader of draws) and DevicePatches' patches per second on the device."""
    workers = worker_count(args.workers, 1)
    order = (torch.randperm(len(dataset), generator=torch.Generator().manual_seed(0)).tolist() * 2)[:(args.loader_batches + 2) * args.batch]
    items = order[:args.loader_batches * args.batch]
    result = {'workers': workers, 'one_worker_patches_per_s': items_per_s(dataset.__getitem__, items),
              'patches_per_s': loader_per_s(args, dataset, order, workers, device),
              'one_worker_draws_per_s': items_per_s(dataset.draw, items),
              'draws_per_s': loader_per_s(args, Draws(dataset), order, workers, device),
              'device_patches_per_s': device_patches_per_s(args, dataset, order, device)}
    print(f"\n| training data ({len(dataset.files)} images of {', '.join(str(p) for p in train_dirs(args))}) "
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


def process_tree(pid: int) -> list[int]:
    """pid and every process below it."""
    pids, todo = [], [pid]
    while todo:
        pids.append(todo.pop())
        for task in Path(f'/proc/{pids[-1]}/task').glob('*'):
            try:
                todo += [int(child) for child in (task / 'children').read_text().split()]
            except OSError:  # ended meanwhile
                pass
    return pids


def pss_mb(pids: list[int]) -> float:
    """The sum of the processes' PSS in MB (those that ended meanwhile count 0)."""
    total = 0
    for pid in pids:
        try:
            total += sum(int(line.split()[1]) for line in Path(f'/proc/{pid}/smaps_rollup').read_text().splitlines()
                         if line.startswith('Pss:'))
        except OSError:
            pass
    return total / 1024


def peak_pss(cmd: list[str]) -> float:
    """Run cmd (one thread per process); the largest PSS sum over its processes, sampled every 0.2 s."""
    env = {**os.environ, 'OMP_NUM_THREADS': '1'}
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    peak = 0.0
    while proc.poll() is None:
        peak = max(peak, pss_mb(process_tree(proc.pid)))
        time.sleep(0.2)
    if proc.returncode:
        raise RuntimeError(f"{' '.join(cmd[:6])} ... failed: {proc.stderr.read()[-2000:]}")
    return peak


def stand_in(folder: Path, count: int) -> list[Path]:
    """`count` DIV2K-sized (2040x1356) PNGs of smooth random content in folder (kept for later runs):
    bicubic enlargements of 40x27 random images, which PNG packs and unpacks quickly."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(count):
        path = folder / f'{i:04d}.png'
        small = rng.integers(0, 256, (27, 40, 3), dtype=np.uint8)
        if not path.is_file():
            cv2.imwrite(str(path), cv2.resize(small, (2040, 1356), interpolation=cv2.INTER_CUBIC),
                        [cv2.IMWRITE_PNG_COMPRESSION, 1])
    return [folder]


def run_ddp_memory(args) -> None:
    """The node's memory of train.py with 1, 2, 4 processes, without and with the shared cache."""
    dirs = stand_in(Path(args.out_dir) / 'div2k_stand_in', args.stand_in) if args.stand_in else train_dirs(args)
    work = Path(args.out_dir) / 'ddp_memory'
    shutil.rmtree(work, ignore_errors=True)
    decoded = sum(3 * h * w for h, w in (image_size(p) for folder in dirs for p in list_images(folder))) / 2 ** 20
    print(f"\n# train.py node memory on {machine_name(torch.device('cpu'))}: {', '.join(map(str, dirs))} "
          f"({decoded:.0f} MB decoded); {args.memory_steps} steps of batch {args.batch} x {args.sample_q} queries")
    print("\n| processes | node cache | PSS sum MB | PSS + cache file MB |\n|---|---|---|---|")
    for procs in args.procs:
        for cache in ([False] if procs == 1 else [False, True]):
            out = work / f'{procs}-{cache}'
            cmd = [sys.executable, '-m', 'torch.distributed.run', '--standalone', f'--nproc_per_node={procs}',
                   'train.py', f"--train_dir=[{','.join(repr(str(d)) for d in dirs)}]", f'--valid_dir={dirs[-1]}',
                   f'--out_dir={out}', f'--max_steps={args.memory_steps}', f'--batch_size={args.batch}',
                   f'--sample_q={args.sample_q}', '--repeat=1', '--valid_first=1', '--valid_repeat=1',
                   f'--num_workers={args.workers}', f'--node_cache={cache}', f"--cache_dir={out / 'cache'}"]
            peak = peak_pss(cmd)
            cached = sum(p.stat().st_size for p in (out / 'cache').glob('*.u8')) / 2 ** 20 if cache else 0
            print(f"| {procs} | {'yes' if cache else 'no'} | {peak:.0f} | {peak + cached:.0f} |", flush=True)


def run_dist_speed(args) -> None:
    """inference.py on 8 real 128x128 crops at x4: one process of 2 threads vs torchrun's 2 processes of
    1 thread each, alternately, `repeats` times; medians of whole commands (start-up included)."""
    folder = Path(args.out_dir) / 'dist_speed'
    shutil.rmtree(folder, ignore_errors=True)
    (folder / 'in').mkdir(parents=True)
    root = next(p for p in DATA if p.is_dir())
    for i, path in enumerate(list_images(root / 'Set14' / 'HR')[:8]):
        cv2.imwrite(str(folder / 'in' / f'{i}.png'), cv2.imread(str(path))[:128, :128])
    weights = next((p for p in WEIGHTS if p.is_file()), folder / 'random.pth')
    if not weights.is_file():  # the speed does not depend on the weights' values
        model, _ = load_model(torch.device('cpu'))
        torch.save({'model': model.state_dict(), 'options': model.options}, weights)
    common = ['inference.py', f"--input={folder / 'in'}", '--scale=4', '--overwrite=True', '--device=cpu',
              f'--weights={weights}']
    runs = {'1 process x 2 threads': [sys.executable, *common, f"--output={folder / 'one'}/", '--threads=2'],
            '2 processes x 1 thread': [sys.executable, '-m', 'torch.distributed.run', '--standalone',
                                       '--nproc_per_node=2', *common, f"--output={folder / 'two'}/", '--threads=1']}
    seconds = {name: [] for name in runs}
    for _ in range(args.repeats):
        for name, cmd in runs.items():
            start = time.perf_counter()
            subprocess.run(cmd, check=True, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            seconds[name].append(time.perf_counter() - start)
    one, two = (statistics.median(v) for v in seconds.values())
    print(f"\n# inference.py, 8 Set14 crops 128x128 at x4 on {machine_name(torch.device('cpu'))}, median of "
          f"{args.repeats}: 1 process x 2 threads {one:.1f} s, 2 processes x 1 thread {two:.1f} s: "
          f"speed-up {one / two:.2f}")


def video_clip(path: Path, size: tuple[int, int], frames: int) -> Path:
    """A libx264 clip of `size` at 25 fps: a real Set14 image resized to it, sliding 2 px a frame."""
    import av
    image = cv2.resize(load_uint8(next(root / 'Set14' / 'HR' / 'baboon.png' for root in DATA
                                       if (root / 'Set14').is_dir())), size[::-1], interpolation=cv2.INTER_AREA)
    with av.open(str(path), 'w') as out:
        stream = out.add_stream('libx264', rate=25, options={'crf': '18'})
        stream.height, stream.width, stream.pix_fmt = *size, 'yuv420p'
        for i in range(frames):
            out.mux(stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(np.roll(image, 2 * i, 1)))))
        out.mux(stream.encode(None))
    return path


def run_video(args, device: torch.device) -> None:
    variants = [('fast', True, 'fp32', False), ('onnx', True, 'fp32', False)]
    args.onnx = True
    runs, weights, _ = renderers(args, device, variants)
    folder = Path(args.out_dir) / 'video'
    folder.mkdir(parents=True, exist_ok=True)
    print(f"# inference.py's video path on {machine_name(device)}, torch {torch.__version__}\n{weights}; "
          f"{args.video_frames} frame(s) per clip; libx264 yuv420p crf 18 preset medium\n")
    print("| input | output | path | frames/s | model s/frame | pipeline s/frame | pipeline / model |")
    print("|---|---|---|---|---|---|---|")
    cfg = settings.parse([], 'inference')  # libx264, yuv420p, crf 18, preset medium
    for lr_size, size in VIDEO_CASES:
        clip = video_clip(folder / f'clip_{lr_size[0]}p.mp4', lr_size, args.video_frames)
        for (name, *_), run in runs.items():
            spent = [0.0]

            def render(lr, out_size, run=run, spent=spent):
                start = time.perf_counter()
                sr = run(lr.to(device), out_size)
                spent[0] += time.perf_counter() - start
                return sr
            start = time.perf_counter()
            with torch.no_grad():
                upscale_video(render, clip, folder / f'out_{lr_size[0]}p_{name}.mp4', size, cfg, progress=False)
            total, n = time.perf_counter() - start, args.video_frames
            print(f"| {lr_size[1]}x{lr_size[0]} | {size[1]}x{size[0]} | {name} | {n / total:.4f} | {spent[0] / n:.1f} "
                  f"| {(total - spent[0]) / n:.2f} | {100 * (total - spent[0]) / spent[0]:.1f} % |", flush=True)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--sizes', default='128,256', help="LR sides, comma-separated; 0 skips the grid")
    parser.add_argument('--scales', default='2,4,12', help="scales, comma-separated")
    parser.add_argument('--cases', default='', help="LR side x scale pairs instead of every size at every scale, "
                        "e.g. 256x4,512x4,256x30")
    parser.add_argument('--repeats', type=int, default=3, help="timed rounds (median reported)")
    parser.add_argument('--warmup', type=int, default=1, help="untimed rounds first")
    parser.add_argument('--chunk', type=int, default=None, help="queries per decoder call (default: auto)")
    parser.add_argument('--threads', type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument('--device', default='auto', help="'auto', 'cpu' or 'cuda'")
    parser.add_argument('--test_py', action='store_true', help="also time test.py on Set5 + Set14 x4")
    parser.add_argument('--psnr', action='store_true', help="also Set5 / Set14 x4 PSNR per amp (and compiled)")
    parser.add_argument('--out_dir', default='results/benchmark', help="where the test.py runs write")
    parser.add_argument('--no_reference', action='store_true', help="leave out the (slow) reference path")
    parser.add_argument('--onnx', action='store_true', help="also the exported ONNX file under ONNX Runtime (CPU)")
    parser.add_argument('--onnx_queries', type=int, default=WINDOW_QUERIES,
                        help=f"output pixels per ONNX Runtime run (default {WINDOW_QUERIES})")
    parser.add_argument('--peak_tflops', type=float, default=0,
                        help="the GPU's dense bf16 peak for the %% floor column (0: a fp32 matmul measured now)")
    parser.add_argument('--no_compile', action='store_true', help="leave out the compiled modes")
    parser.add_argument('--compiled_only', action='store_true',
                        help="only the compiled modes (and the reference or fast fp32 row they are compared with)")
    parser.add_argument('--train', action='store_true', help="also time training steps per mode")
    parser.add_argument('--loader', action='store_true', help="also time the training DataLoader alone")
    parser.add_argument('--train_dir', default='', help="training folders, comma-separated (default: DIV2K or the 291)")
    parser.add_argument('--batch', type=int, default=config.batch_size, help="patches per training step")
    parser.add_argument('--sample_q', type=int, default=config.sample_q, help="queries per patch")
    parser.add_argument('--patch_size', type=int, default=config.patch_size, help="LR patch side")
    parser.add_argument('--train_steps', type=int, default=30, help="timed training steps per mode")
    parser.add_argument('--train_warmup', type=int, default=5, help="untimed training steps first (compiles)")
    parser.add_argument('--workers', type=int, default=config.num_workers, help="DataLoader workers asked for")
    parser.add_argument('--loader_batches', type=int, default=50, help="batches timed from the DataLoader")
    parser.add_argument('--json', default='', help="also write every row to this JSON file")
    parser.add_argument('--ddp_memory', action='store_true', help="node memory (PSS) of 1, 2, 4 training processes")
    parser.add_argument('--procs', default='1,2,4', help="--ddp_memory: process counts, comma-separated")
    parser.add_argument('--memory_steps', type=int, default=10, help="--ddp_memory: training steps per run")
    parser.add_argument('--stand_in', type=int, default=0, help="--ddp_memory on N DIV2K-sized synthetic images")
    parser.add_argument('--dist_speed', action='store_true', help="inference.py: 2 processes vs 1 on the same cores")
    parser.add_argument('--models', action='store_true', help="LTE beside LIIF's fast and reference paths at --cases")
    parser.add_argument('--video', action='store_true', help="video frames/s, 360p->720p and 480p->1080p, and the "
                        "pipeline's share")
    parser.add_argument('--video_frames', type=int, default=3, help="--video: frames per clip")
    args = parser.parse_args()
    try:
        args.cases = ([(int(size), float(scale)) for size, scale in (case.split('x') for case in args.cases.split(','))]
                      if args.cases else [(int(size), float(scale)) for size in args.sizes.split(',') if int(size) > 0
                                          for scale in args.scales.split(',')])
        args.procs = [int(n) for n in args.procs.split(',')]
    except ValueError:
        parser.error("sizes, scales, cases and procs are comma-separated numbers (cases: SIDExSCALE, e.g. 256x4)")
    if (args.repeats < 1 or args.warmup < 0 or any(size <= 0 or scale <= 0 for size, scale in args.cases)
            or args.onnx_queries < 1):
        parser.error("repeats must be >= 1, warmup >= 0, sizes and scales positive and onnx_queries >= 1")
    return args


def main() -> None:
    args = parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    device = torch.device('cuda' if args.device == 'auto' and torch.cuda.is_available() else
                          'cpu' if args.device == 'auto' else args.device)
    use_tf32(False)  # fp32 rows are true fp32, as in the three scripts by default
    results = {'device': machine_name(device), 'torch': torch.__version__, 'cuda': torch.version.cuda,
               'batch': args.batch, 'render': [], 'psnr': [], 'train': [], 'loader': None}
    if args.models:
        run_models(args, device)
    elif args.cases:
        run_grid(args, device, results)
    if args.psnr:
        run_psnr(args, device, results)
    if args.test_py:
        run_test_py(args)
    dataset = train_set(args) if args.train or args.loader else None
    train_rows = run_train(args, dataset, device, results) if args.train else []
    if args.loader:
        results['loader'] = run_loader(args, dataset, device, train_rows)
    write_json(args, results)
    if args.ddp_memory:
        run_ddp_memory(args)
    if args.dist_speed:
        run_dist_speed(args)
    if args.video:
        run_video(args, device)


if __name__ == '__main__':
    main()
