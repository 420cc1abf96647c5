"""Reference path vs fast path: throughput, peak memory and exactness of LIIF rendering.

    python scripts/benchmark.py                                  # 128 and 256 LR at x2, x4, x12
    python scripts/benchmark.py --sizes=128 --scales=4 --repeats=1 --warmup=0   # a quick run
    python scripts/benchmark.py --sizes=0 --test_py              # only time test.py, Set5 + Set14 x4
    python scripts/benchmark.py --sizes=0 --psnr                 # Set5 x4 PSNR, fp32 vs bf16

In one process, for each LR size and scale, the paths run alternately (reference fp32, fast fp32,
fast bf16 where supported, fast fp16 on CUDA): `warmup` untimed rounds, then `repeats` timed rounds;
the table gives the median. LR inputs are top-left crops of real Set14 images (random if the data is
absent), weights the official EDSR-baseline-LIIF checkpoint (random if absent); the header says which.

Peak memory is the largest resident-set growth during a run on the CPU: /proc/self/clear_refs is
written with 5 to reset the kernel's high-water mark (VmHWM), and the table gives VmHWM after the
run minus VmRSS before it, after glibc's malloc_trim has returned freed memory to the OS
(tracemalloc cannot see torch's allocations). On CUDA it is
torch.cuda.max_memory_allocated after reset_peak_memory_stats. `max |diff|` is against the
reference path's output for the same input.
"""
import argparse
import ctypes
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from image_quality_assessment import psnr  # noqa: E402
from imgproc import read_image  # noqa: E402
from model import liif_edsr, model_from_checkpoint  # noqa: E402

WEIGHTS = [ROOT / 'results/pretrained_models/edsr-baseline-liif.pth', ROOT.parent / 'shared/weights/edsr-baseline-liif.pth']
DATA = [ROOT / 'data/benchmark', ROOT.parent / 'shared/data/benchmark']


def machine_name(device: torch.device) -> str:
    if device.type == 'cuda':
        return torch.cuda.get_device_name(device)
    cpu = platform.processor() or 'CPU'
    flags = ''
    cpuinfo = Path('/proc/cpuinfo')
    if cpuinfo.is_file():
        text = cpuinfo.read_text()
        names = [line.split(':', 1)[1].strip() for line in text.splitlines() if line.startswith('model name')]
        cpu = names[0] if names else cpu
        flags = ', '.join(f for f in ('avx512f', 'avx512_bf16', 'amx_bf16') if f' {f}' in text)
    return f"{cpu}, {torch.get_num_threads()} threads" + (f" ({flags})" if flags else '')


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
    return liif_edsr().to(device).eval(), "random weights (no checkpoint found)"


def lr_input(size: int, device: torch.device) -> tuple[torch.Tensor, str]:
    for root in DATA:
        hr = root / 'Set14' / 'HR'
        images = sorted(hr.glob('*.png')) if hr.is_dir() else []
        images = [p for p in images if min(read_image(p).shape[:2]) >= size]
        if images:
            img = read_image(images[0])[:size, :size]
            return to_batch(img, device), images[0].name
    return torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(0)).to(device), 'random'


def run_grid(args, device: torch.device) -> None:
    model, weights = load_model(device)
    variants = [('reference', False, 'fp32'), ('fast', True, 'fp32')]
    if bf16_supported(device):
        variants.append(('fast', True, 'bf16'))
    if device.type == 'cuda':
        variants.append(('fast', True, 'fp16'))
    print(f"# LIIF render benchmark on {machine_name(device)}, torch {torch.__version__}")
    print(f"{weights}; {args.warmup} warm-up + {args.repeats} timed rounds, median; chunk {args.chunk or 'auto'}\n")
    print("| LR | input | scale | output | path | amp | MP/s | x reference | peak MB | max abs diff |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for size in args.sizes:
        lr, source = lr_input(size, device)
        for scale in args.scales:
            out_size = (round(size * scale), round(size * scale))
            times = {v: [] for v in variants}
            peaks = {v: 0.0 for v in variants}
            outs = {}
            for round_ in range(args.warmup + args.repeats):
                for variant in variants:
                    _, fast, amp = variant
                    model.fast = fast
                    seconds, peak, out = timed(lambda: model.render(lr, out_size, chunk=args.chunk, amp=amp), device)
                    outs[variant] = out
                    if round_ >= args.warmup:
                        times[variant].append(seconds)
                        peaks[variant] = max(peaks[variant], peak)
            reference = outs[variants[0]]
            pixels = out_size[0] * out_size[1] / 1e6
            ref_time = statistics.median(times[variants[0]])
            for variant in variants:
                name, _, amp = variant
                t = statistics.median(times[variant])
                diff = (outs[variant] - reference).abs().max().item()
                print(f"| {size}x{size} | {source} | x{scale:g} | {out_size[0]}x{out_size[1]} | {name} | {amp} "
                      f"| {pixels / t:.3f} | {ref_time / t:.2f} | {peaks[variant]:.0f} | {diff:.2e} |", flush=True)
            model.fast = True


def to_batch(img: np.ndarray, device: torch.device) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1)[None].to(device)


def run_psnr(device: torch.device) -> None:
    """Set5 x4 PSNR (official benchmark protocol: luminance, 4-pixel shave, SR clamped to [0, 1]) of
    the fast path in fp32 and in bf16, from the LR files with the HR cropped top-left to 4x their size."""
    root = next((p / 'Set5' for p in DATA if (p / 'Set5' / 'LR_bicubic' / 'X4').is_dir()), None)
    if root is None:
        print("\nSet5 x4 PSNR needs the benchmark data: skipped")
        return
    model, weights = load_model(device)
    amps = ['fp32'] + (['bf16'] if bf16_supported(device) else []) + (['fp16'] if device.type == 'cuda' else [])
    scores = {amp: [] for amp in amps}
    for hr_path in sorted((root / 'HR').glob('*.png')):
        lr = to_batch(read_image(root / 'LR_bicubic' / 'X4' / f"{hr_path.stem}x4.png"), device)
        hr = to_batch(read_image(hr_path), device)[:, :, :lr.shape[2] * 4, :lr.shape[3] * 4]
        for amp in amps:
            sr = model.render(lr, tuple(hr.shape[-2:]), amp=amp).clamp_(0, 1)
            scores[amp].append(float(psnr(sr, hr, 4)))
    print(f"\n| Set5 x4 PSNR (dB), {weights} | " + ' | '.join(amps) + ' |')
    print('|---' * (len(amps) + 1) + '|')
    print('| mean | ' + ' | '.join(f"{statistics.mean(scores[a]):.4f}" for a in amps) + ' |')
    print('| difference to fp32 | ' + ' | '.join(f"{statistics.mean(scores[a]) - statistics.mean(scores['fp32']):+.4f}"
                                             for a in amps) + ' |', flush=True)


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--sizes', default='128,256', help="LR sides, comma-separated; 0 skips the grid")
    parser.add_argument('--scales', default='2,4,12', help="scales, comma-separated")
    parser.add_argument('--repeats', type=int, default=3, help="timed rounds (median reported)")
    parser.add_argument('--warmup', type=int, default=1, help="untimed rounds first")
    parser.add_argument('--chunk', type=int, default=None, help="queries per decoder call (default: auto)")
    parser.add_argument('--threads', type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument('--device', default='auto', help="'auto', 'cpu' or 'cuda'")
    parser.add_argument('--test_py', action='store_true', help="also time test.py on Set5 + Set14 x4")
    parser.add_argument('--psnr', action='store_true', help="also Set5 x4 PSNR of the fast path, fp32 vs bf16")
    parser.add_argument('--out_dir', default='results/benchmark', help="where the test.py runs write")
    args = parser.parse_args()
    args.sizes = [int(s) for s in args.sizes.split(',') if int(s) > 0]
    args.scales = [float(s) for s in args.scales.split(',')]
    if args.repeats < 1 or args.warmup < 0 or any(s <= 0 for s in args.scales):
        parser.error("repeats must be >= 1, warmup >= 0 and scales positive")
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    device = torch.device('cuda' if args.device == 'auto' and torch.cuda.is_available() else
                          'cpu' if args.device == 'auto' else args.device)
    if args.sizes:
        run_grid(args, device)
    if args.psnr:
        run_psnr(device)
    if args.test_py:
        run_test_py(args)


if __name__ == '__main__':
    main()
