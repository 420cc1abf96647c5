"""What the benchmarks (scripts/bench_*.py) share: the common options, the device and the machine header,
timing with peak memory, the matmul floor, the inputs and the model, and the JSON file of rows.

Peak memory is the largest resident-set growth during a run on the CPU: /proc/self/clear_refs is written
with 5 to reset the kernel's high-water mark (VmHWM), and a run's peak is VmHWM after it minus VmRSS before
it, after glibc's malloc_trim has returned freed memory to the OS (tracemalloc cannot see torch's
allocations). On CUDA it is torch.cuda.max_memory_allocated after reset_peak_memory_stats.
"""
import argparse
import ctypes
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from checkpoint import model_from_checkpoint
from cli import ArgumentParser, pick_device, set_threads
from files import replacing
from imgproc import read_image
from model import build_model
from precision import AMP_DTYPES, machine_name, use_tf32

ROOT = Path(__file__).resolve().parents[1]
WEIGHTS = ROOT / 'results/pretrained_models/edsr-baseline-liif.pth'
DATA = [ROOT / 'data/benchmark', ROOT / 'tests/data/benchmark']  # the full sets, else the tests' copy of Set5/Set14


def parser(doc: str, rounds: bool = True) -> ArgumentParser:
    """A benchmark's parser with the options every benchmark has (with `rounds`: --repeats, --warmup)."""
    p = ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    if rounds:
        p.add_argument('--repeats', type=int, default=3, help="timed rounds (median reported)")
        p.add_argument('--warmup', type=int, default=1, help="untimed rounds first")
    p.add_argument('--threads', type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument('--device', default='auto', help="'auto', 'cpu', 'cuda' or 'cuda:N'")
    p.add_argument('--out_dir', default='results/benchmark', help="where the files a benchmark makes go")
    p.add_argument('--json', default='', help="also write every row to this JSON file")
    return p


def setup(args: argparse.Namespace) -> torch.device:
    """Check the common options, set the threads and true fp32 (TF32 off, as the scripts by default); the device."""
    if getattr(args, 'repeats', 1) < 1 or getattr(args, 'warmup', 0) < 0 or args.threads < 0:
        raise ValueError("repeats must be >= 1, warmup and threads >= 0")
    set_threads(args.threads)
    use_tf32(False)
    return pick_device(args.device)


def header(title: str, device: torch.device) -> str:
    """'# title on <machine (CPU features)>, torch <version>[, CUDA <version>]' and on a CPU the kernels
    oneDNN picks there."""
    return (f"# {title} on {machine_name(device)}, torch {torch.__version__}"
            + (f", CUDA {torch.version.cuda}" if device.type == 'cuda' else f"\noneDNN kernels: {onednn_kernels()}"))


def machine_fields(device: torch.device) -> dict:
    """The machine and versions, the first fields of a benchmark's JSON file."""
    return {'device': machine_name(device), 'torch': torch.__version__, 'cuda': torch.version.cuda}


def status_kb(field: str) -> int:
    for line in Path('/proc/self/status').read_text().splitlines():
        if line.startswith(field + ':'):
            return int(line.split()[1])
    raise KeyError(field)


def timed(fn, device: torch.device) -> tuple[float, float, object]:
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


def alternately(runs: dict, warmup: int, repeats: int, device: torch.device) -> dict:
    """{name: (median seconds, peak MB, last result)} of the argument-less functions `runs`, run in turn
    round after round (so that a machine's changing load spreads over all), warm-up rounds untimed."""
    times, peaks, outs = {k: [] for k in runs}, {k: 0.0 for k in runs}, {}
    for round_ in range(warmup + repeats):
        for name, run in runs.items():
            seconds, peak, outs[name] = timed(run, device)
            if round_ >= warmup:
                times[name].append(seconds)
                peaks[name] = max(peaks[name], peak)
    return {k: (statistics.median(times[k]), peaks[k], outs[k]) for k in runs}


# The products a precision's floor is measured on, (m, k, n): a large square one, and the decoder's own
# (a block of 16384 rows through a 256 x 256 layer)
FLOOR_SHAPES = {'2048^3': (2048, 2048, 2048), 'decoder': (16384, 256, 256)}


def matmul_tflops(device: torch.device, dtype: torch.dtype, shape: tuple[int, int, int], repeats: int = 5) -> float:
    """TFLOP/s of a plain (m, k) @ (k, n) matmul in `dtype` on the device, the best of `repeats`: the rate
    its matrix-product library reaches, the floor a model's matmuls are measured against."""
    m, k, n = shape
    a, b = torch.randn(m, k, device=device).to(dtype), torch.randn(k, n, device=device).to(dtype)
    best = min(timed(lambda: a @ b, device)[0] for _ in range(repeats + 1))  # the first one warms up
    return 2 * m * k * n / best / 1e12


def floors(device: torch.device, amps: list[str], peak_tflops: float = 0) -> tuple[dict, str]:
    """{amp: {shape name: TFLOP/s}}: each precision's own floor, matmuls of FLOOR_SHAPES in that precision
    measured now (a datasheet peak for every one when given), and a line saying so for a table's header."""
    if peak_tflops:
        return {amp: dict.fromkeys(FLOOR_SHAPES, peak_tflops) for amp in amps}, f"% floor: of a {peak_tflops:g} TFLOP/s peak"
    rates = {amp: {name: matmul_tflops(device, AMP_DTYPES[amp] or torch.float32, shape)
                   for name, shape in FLOOR_SHAPES.items()} for amp in amps}
    return rates, ("% floor / % decoder floor: of the same precision's 2048^3 matmul / (16384x256)@(256x256) "
                   "matmul, measured now: " + ', '.join(f"{amp} {r['2048^3']:.3g} / {r['decoder']:.3g} TFLOP/s"
                                                        for amp, r in rates.items()))


def onednn_kernels() -> str:
    """The kernels oneDNN runs here for the decoder's fused linear and an encoder convolution, in fp32 and
    (where native) bf16: 'linear f32 brg_matmul:avx512_core, ...', from ONEDNN_VERBOSE in a child process
    (oneDNN reads it once, when it starts)."""
    code = ("import torch, precision\n"
            "for dtype in [d for d in (torch.float32, torch.bfloat16) if precision.onednn_linear(d)\n"
            "              and (d == torch.float32 or precision.native_cpu_bf16())]:\n"
            "    x = torch.randn(256, 256).to(dtype)\n"
            "    torch.ops.mkldnn._linear_pointwise(x, x, x[0], 'relu', [], '')\n"
            "    torch.nn.functional.conv2d(torch.randn(1, 64, 32, 32).to(dtype), torch.randn(64, 64, 3, 3).to(dtype))\n")
    out = subprocess.run([sys.executable, '-c', code], cwd=ROOT, env={**os.environ, 'ONEDNN_VERBOSE': '1'},
                         capture_output=True, text=True).stdout
    kernels = []
    for line in out.splitlines():
        fields = line.split(',')
        probe = 'mb1ic1oc1' in line  # precision.onednn_linear's 1x1 check, not a model's shape
        if len(fields) > 8 and fields[3] == 'exec' and fields[5] in ('inner_product', 'convolution') and not probe:
            dtype = fields[8].split(':')[1]  # src:f32::blocked...
            kernels.append(f"{'linear' if fields[5] == 'inner_product' else 'conv'} {dtype} {fields[6]}")
    return ', '.join(sorted(set(kernels))) or 'none (oneDNN not used)'


def floor_columns(work: float, seconds: float, floor: dict) -> str:
    """'| TFLOP/s | % floor | % decoder floor |' of `work` flops done in `seconds` against one precision's floor."""
    rate = work / seconds / 1e12
    return f"| {rate:.3g} | {100 * rate / floor['2048^3']:.1f} | {100 * rate / floor['decoder']:.1f} |"


def work_flops(model, lr_pixels: int, queries: int) -> float:
    """Multiply-adds x 2 of LIIF's fast path's forward pass: encoder convolutions and the folded first
    layer per LR pixel, the coordinate / cell terms and the later decoder layers per query and ensemble
    member. Every row is credited with this same useful work, so TFLOP/s compare like MP/s."""
    convs = [m for m in model.encoder.modules() if isinstance(m, torch.nn.Conv2d)]
    per_lr_pixel = sum(2 * m.in_channels * m.out_channels * m.kernel_size[0] * m.kernel_size[1] for m in convs)
    linears = [m for m in model.imnet.modules() if isinstance(m, torch.nn.Linear)]
    per_lr_pixel += 2 * model.feat_dim * linears[0].out_features
    members = 4 if model.local_ensemble else 1
    per_query = members * (2 * (linears[0].in_features - model.feat_dim) * linears[0].out_features
                           + sum(2 * m.in_features * m.out_features for m in linears[1:]))
    return lr_pixels * per_lr_pixel + queries * per_query


def load_model(device: torch.device, **overrides):
    """The official EDSR-baseline-LIIF (random weights if its file is absent: speed does not depend on
    them) on `device` in eval mode, and a description of the weights for the table's header."""
    if WEIGHTS.is_file():
        return model_from_checkpoint(WEIGHTS, **overrides).to(device).eval(), f"official weights {WEIGHTS}"
    torch.manual_seed(0)
    return build_model('liif', **overrides).to(device).eval(), "random weights (no checkpoint found)"


def benchmark_root() -> Path | None:
    """The benchmark sets: data/benchmark, else the tests' copy; None without either."""
    return next((root for root in DATA if (root / 'Set14' / 'HR').is_dir()), None)


def lr_input(size: int, device: torch.device) -> tuple[torch.Tensor, str]:
    """A size x size top-left crop of the first Set14 image that large, as (1, 3, size, size) on the
    device, and its name (a seeded random image, 'random', without the data)."""
    root = benchmark_root()
    images = [p for p in sorted((root / 'Set14' / 'HR').glob('*.png')) if min(read_image(p).shape[:2]) >= size] if root else []
    if images:
        return to_batch(read_image(images[0])[:size, :size], device), images[0].name
    return torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(0)).to(device), 'random'


def to_batch(img: np.ndarray, device: torch.device) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1)[None].to(device)


def write_json(path: str, results: dict) -> None:
    """Every row measured so far to `path` ('' writes nothing), replaced whole after each row so that a
    run stopped at a time limit keeps what it measured."""
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        with replacing(path) as tmp:  # a reader never sees half a file
            tmp.write_text(json.dumps(results, indent=2) + '\n')


def comma_list(text: str, kind=float) -> list:
    """'1,2,3' as a list of `kind`; a ValueError naming the text otherwise."""
    try:
        return [kind(v) for v in text.split(',')] if text else []
    except ValueError:
        raise ValueError(f"expected comma-separated numbers, got {text!r}") from None
