"""Rendering: LIIF's reference path against every fast mode (precisions, compiled, ONNX Runtime), other
models beside LIIF, the PSNR each mode scores, test.py's wall time and the viewer's views.

    python scripts/bench_render.py                                 # 128 and 256 LR at x2, x4, x12
    python scripts/bench_render.py --sizes=128 --scales=4 --repeats=1 --warmup=0   # a quick run
    python scripts/bench_render.py --sizes=128,256 --scales=2,4 --onnx   # and the exported file under ONNX Runtime
    python scripts/bench_render.py --models --cases=64x4 --threads=1     # LTE beside LIIF's two paths
    python scripts/bench_render.py --psnr --test_py                # Set5 / Set14 x4 PSNR per amp; test.py's time
    python scripts/bench_render.py --views=4,12 --input=photo.png   # the viewer's 800x600 views

In one process, for each LR size and scale, the modes run alternately (reference fp32, fast fp32, fast
bf16 where the device runs it natively, fast fp16 on CUDA, and on CUDA the compiled decoder (CUDA
graphs) in fp32 and bf16; with --onnx, the model exported by onnx_model.export run by ONNX Runtime on
the CPU in windows of --onnx_queries output pixels): `warmup` untimed rounds, then `repeats` timed
rounds; the table gives the median. Renders size chunks and blocks by the device (render.device_budget).
LR inputs are top-left crops of real Set14 images (random if the data is absent), weights the official
EDSR-baseline-LIIF checkpoint (random if absent); the header says which. fp32 is true fp32 (TF32 off).

% floor: each row's useful work (benchlib.work_flops: the fast path's multiply-adds, credited to every
row alike) per second as a share of --peak_tflops (a GPU's datasheet peak), or, without it, of the rate
of a plain 2048 x 2048 fp32 matmul measured in the same run (best of 5). Peak memory: see benchlib.
`max |diff|` is against the reference path's output for the same input.

--views times the viewer's centred 800x600 view of --input at each zoom: through its HTTP server (the
request until the PNG's last byte) and the window render alone in this process.
"""
import functools
import http.client
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import config
import render
from checkpoint import model_from_checkpoint
from cli import run_main
from dataset import BenchmarkDataset
from image_quality_assessment import evaluate
from model import build_model
from onnx_model import WINDOW_QUERIES, OnnxModel, export
from precision import native_bf16
from render import output_size
from scripts.benchlib import (
    ROOT,
    WEIGHTS,
    alternately,
    benchmark_root,
    comma_list,
    floor_columns,
    floors,
    header,
    load_model,
    lr_input,
    machine_fields,
    parser,
    setup,
    work_flops,
    write_json,
)
from scripts.viewer import MAX_ZOOM, VIEW_KEYS, Viewer, make_server, serve_in_thread
from weights import resolve_weights


def variants(args, device: torch.device) -> list[tuple[str, str, bool]]:
    """(path, amp, compiled) of every render mode this device runs, the reference first."""
    amps = ['fp32'] + ['bf16'] * native_bf16(device) + ['fp16'] * (device.type == 'cuda')
    modes = [('reference', 'fp32', False)] * (not args.no_reference)
    modes += [('fast', amp, False) for amp in amps] * (not args.compiled_only)
    if device.type == 'cuda' and not args.no_compile:
        modes += [('fast', amp, True) for amp in amps if amp != 'fp16']
    return modes + [('onnx', 'fp32', False)] * args.onnx


def renderers(args, device: torch.device, modes) -> tuple[dict, str, torch.nn.Module]:
    """{mode: function(lr, size) -> image}, the weights' description and the fast model."""
    fast, weights = load_model(device)
    models = {('fast', False): fast}
    if any(path == 'reference' for path, *_ in modes):
        models['reference', False] = load_model(device, fast=False)[0]
    if any(compiled for *_, compiled in modes):
        models['fast', True] = load_model(device)[0]
        models['fast', True].compile_decoder()  # compiled in the first renders
    if args.onnx:
        onnx_path = Path(args.out_dir) / 'liif.onnx'
        onnx_path.parent.mkdir(parents=True, exist_ok=True)
        export(fast, onnx_path)
        session = OnnxModel(onnx_path, threads=torch.get_num_threads())

    def renderer(path, amp, compiled):
        if path == 'onnx':
            return lambda lr, size: torch.from_numpy(session.render(lr.cpu().numpy(), size,
                                                                    queries=args.onnx_queries)).to(lr.device)
        return functools.partial(models[path, compiled].render, chunk=args.chunk, amp=amp)
    return {mode: renderer(*mode) for mode in modes}, weights, fast


def time_case(args, device: torch.device, runs: dict, size: int, scale: float) -> tuple[str, tuple, dict]:
    """The renders `runs` of a size x size LR crop at `scale`, alternately: the crop's source, the output
    size and {name: (median seconds, peak MB, image)}."""
    lr, source = lr_input(size, device)
    out_size = (round(size * scale), round(size * scale))
    return source, out_size, alternately({k: functools.partial(run, lr, out_size) for k, run in runs.items()},
                                         args.warmup, args.repeats, device)


def run_grid(args, device: torch.device, results: dict) -> None:
    modes = variants(args, device)
    runs, weights, model = renderers(args, device, modes)
    floor, floor_line = floors(device, list(dict.fromkeys(amp for _, amp, _ in modes)), args.peak_tflops)
    print(header('LIIF render benchmark', device))
    print(f"{weights}; {args.warmup} warm-up + {args.repeats} timed rounds, median; chunk {args.chunk or 'auto'}; "
          f"TFLOP/s counts the fast path's work; {floor_line}"
          + (";\nx reference: against the fast fp32 row (--no_reference)" if args.no_reference else '') + "\n")
    print("| LR | input | scale | output | path | amp | compiled | MP/s | x reference | TFLOP/s | % floor "
          "| % decoder floor | peak MB | max abs diff |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for size, scale in args.cases:
        source, out_size, times = time_case(args, device, runs, size, scale)
        ref_time, _, reference = times[modes[0]]
        pixels = out_size[0] * out_size[1]
        flops = work_flops(model, size * size, pixels)
        for (path, amp, compiled), (t, peak, out) in times.items():
            diff = (out - reference).abs().max().item()
            results['render'].append({'lr': size, 'scale': scale, 'path': path, 'amp': amp, 'compile': compiled,
                                      'mp_per_s': pixels / 1e6 / t, 'x_reference': ref_time / t, 'max_abs_diff': diff,
                                      'tflops': flops / t / 1e12, 'floor_tflops': floor[amp]})
            write_json(args.json, results)
            print(f"| {size}x{size} | {source} | x{scale:g} | {out_size[0]}x{out_size[1]} | {path} | {amp} "
                  f"| {'yes' if compiled else 'no'} | {pixels / 1e6 / t:.3f} | {ref_time / t:.2f} "
                  f"{floor_columns(flops, t, floor[amp])} {peak:.0f} | {diff:.2e} |", flush=True)


def run_profile(args, device: torch.device) -> None:
    """Where a fast render's time goes, per precision: torch.profiler's self time per op, largest first
    (ops under 1 % summed as 'other'), of one render after a warm-up one."""
    model, weights = load_model(device)
    amps = ['fp32'] + ['bf16'] * native_bf16(device)
    print(f"\n{header('Where a fast render spends its time', device)}\n{weights}\n")
    for size, scale in args.cases:
        lr, source = lr_input(size, device)
        out_size = (round(size * scale), round(size * scale))
        for amp in amps:
            model.render(lr, out_size, chunk=args.chunk, amp=amp)
            with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
                model.render(lr, out_size, chunk=args.chunk, amp=amp)
            ops = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)
            total = sum(e.self_cpu_time_total for e in ops)
            shares = [(e.key, 100 * e.self_cpu_time_total / total) for e in ops]
            top = [(k, s) for k, s in shares if s >= 1] + [('other', sum(s for _, s in shares if s < 1))]
            print(f"LR {size}x{size} ({source}) x{scale:g}, {amp}, {total / 1e6:.2f} s: "
                  + ', '.join(f"{k} {s:.1f} %" for k, s in top), flush=True)


def run_blocks(args, device: torch.device) -> None:
    """MP/s of the fast path per precision at each CPU decoder block size (render.CPU_BLOCK_ROWS rows),
    alternately in one process."""
    model, weights = load_model(device)
    modes = [(amp, rows) for amp in ['fp32'] + ['bf16'] * native_bf16(device) for rows in args.blocks]

    def at(amp, rows, lr, size):
        render.CPU_BLOCK_ROWS = rows
        return model.render(lr, size, chunk=args.chunk, amp=amp)
    print(f"\n{header('Decoder block sizes', device)}\n{weights}\n\n| LR | scale | amp | rows a block | MP/s |\n"
          "|---|---|---|---|---|")
    default = render.CPU_BLOCK_ROWS
    for size, scale in args.cases:
        _, out_size, times = time_case(args, device, {m: functools.partial(at, *m) for m in modes}, size, scale)
        for (amp, rows), (t, _, _) in times.items():
            print(f"| {size}x{size} | x{scale:g} | {amp} | {rows} | {out_size[0] * out_size[1] / 1e6 / t:.3f} |",
                  flush=True)
    render.CPU_BLOCK_ROWS = default


def run_models(args, device: torch.device) -> None:
    """MP/s of EDSR-baseline-LTE beside EDSR-baseline-LIIF (fast and reference), alternately in one process."""
    torch.manual_seed(0)
    models = {'LIIF fast': build_model('liif'), 'LIIF reference': build_model('liif', fast=False),
              'LTE': build_model('lte', hidden_list=[256, 256, 256])}
    runs = {name: functools.partial(net.to(device).eval().render, chunk=args.chunk) for name, net in models.items()}
    print(f"\n{header('LTE beside LIIF', device)}; {args.warmup} warm-up + {args.repeats} timed rounds, median\n")
    print("| LR | scale | output | model | MP/s | x LIIF fast |\n|---|---|---|---|---|---|")
    for size, scale in args.cases:
        _, out_size, times = time_case(args, device, runs, size, scale)
        for name, (t, _, _) in times.items():
            print(f"| {size}x{size} | x{scale:g} | {out_size[0]}x{out_size[1]} | {name} "
                  f"| {out_size[0] * out_size[1] / 1e6 / t:.3f} | {times['LIIF fast'][0] / t:.2f} |", flush=True)


def run_psnr(args, device: torch.device, results: dict) -> None:
    """Set5 and Set14 x4 PSNR (the official benchmark protocol, from the released LR files) of the fast
    path per amp, and of the compiled decoder on CUDA: bf16 and compiled modes against fp32."""
    root = benchmark_root()
    if root is None or not (root / 'Set14' / 'LR_bicubic' / 'X4').is_dir():
        print("\nSet5 / Set14 x4 PSNR needs the benchmark data: skipped")
        return
    modes = [('fast', 'fp32', False)] * args.compiled_only + [m for m in variants(args, device) if m[0] == 'fast']
    models = {False: load_model(device)[0]}
    weights = load_model(device)[1]
    if any(compiled for *_, compiled in modes):
        models[True] = load_model(device)[0]
        models[True].compile_decoder()
    print(f"\n| x4 PSNR (dB), {weights} | " + ' | '.join(f"{amp}{' compiled' * c}" for _, amp, c in modes) + ' |')
    print('|---' * (len(modes) + 1) + '|')
    for name in ('Set5', 'Set14'):
        dataset = BenchmarkDataset(root / name, 4)
        scores = {m: statistics.mean(r['psnr'] for r in evaluate(models[m[2]], dataset, chunk=0, amp=m[1],
                                                                 with_ssim=False)) for m in modes}
        base = scores[modes[0]]
        results['psnr'] += [{'set': name, 'amp': m[1], 'compile': m[2], 'psnr': scores[m]} for m in modes]
        write_json(args.json, results)
        print(f"| {name} | " + ' | '.join(f"{scores[m]:.4f} ({scores[m] - base:+.4f})" for m in modes) + ' |',
              flush=True)


def run_test_py(args) -> None:
    """Wall time of the whole test.py evaluation on Set5 + Set14 at x4, fast vs reference path."""
    root = benchmark_root()
    if not WEIGHTS.is_file() or root is None:
        print("\ntest.py timing needs the official weights and the benchmark data: skipped")
        return
    print("\n| test.py Set5 + Set14 x4 | seconds | x reference |\n|---|---|---|")
    seconds = {}
    for fast in (False, True):
        cmd = [sys.executable, str(ROOT / 'test.py'), '--test_scales=[4]', '--test_sets=Set5,Set14', f'--fast={fast}',
               f'--test_root={root}', f'--weights={WEIGHTS}', f"--out_dir={Path(args.out_dir) / f'test_py_fast_{fast}'}"]
        start = time.perf_counter()
        subprocess.run(cmd, check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
        seconds[fast] = time.perf_counter() - start
        print(f"| {'fast' if fast else 'reference'} | {seconds[fast]:.1f} | {seconds[False] / seconds[fast]:.2f} |",
              flush=True)


def run_views(args, device: torch.device) -> None:
    """The viewer's centred 800x600 view at each zoom: through its server (the request until the PNG's last
    byte) and the window render alone in this process, alternately, median of `repeats`."""
    if args.weights.lower().endswith('.onnx'):
        model, engine = OnnxModel(args.weights, threads=torch.get_num_threads()), 'ONNX Runtime'
    else:
        model, engine = model_from_checkpoint(resolve_weights(args.weights)).to(device).eval(), f'amp {args.amp}'
    viewer = Viewer(args.input, model, args.amp)
    server = make_server(viewer, '127.0.0.1', 0)
    serve_in_thread(server)

    def request(query):
        conn = http.client.HTTPConnection('127.0.0.1', server.server_address[1], timeout=3600)
        conn.request('GET', f'/render?{query}')
        response = conn.getresponse()
        if response.status != 200 or not response.read():
            raise RuntimeError(f"the server answered {response.status} for {query}")
        conn.close()
    print(f"\n{header(f'The viewer on {viewer.name} ({viewer.shape[0]}x{viewer.shape[1]})', device)}, {engine}\n")
    print("| zoom | view (w x h) | whole render (w x h) | server, to the PNG's last byte | window render alone "
          "| ratio |\n|---|---|---|---|---|---|")
    try:
        for zoom in args.views:
            full = output_size(*viewer.shape, zoom)
            height, width = min(600, full[0]), min(800, full[1])
            window = ((full[0] - height) // 2, (full[1] - width) // 2, height, width)
            query = 'mode=liif&' + '&'.join(f'{k}={v}' for k, v in zip(VIEW_KEYS[1:], (zoom, *window)))
            times = alternately({'server': functools.partial(request, query),
                                 'direct': functools.partial(viewer.render_model, full, window)},
                                args.warmup, args.repeats, device)
            server_s, direct_s = times['server'][0], times['direct'][0]
            print(f"| x{zoom:g} | {width}x{height} | {full[1]}x{full[0]} | {server_s:.2f} s | {direct_s:.2f} s "
                  f"| {server_s / direct_s:.2f} |", flush=True)
    finally:
        server.shutdown()
        server.server_close()


def parse_args(argv: list[str]):
    p = parser(__doc__)
    p.add_argument('--sizes', default=None, help="LR sides, comma-separated (default 128,256, unless only --psnr, "
                   "--test_py or --views is asked for)")
    p.add_argument('--scales', default='2,4,12', help="scales, comma-separated")
    p.add_argument('--cases', default='', help="LR side x scale pairs instead of every size at every scale, "
                   "e.g. 256x4,512x4,256x30")
    p.add_argument('--chunk', type=int, default=None, help="queries per decoder call (default: auto)")
    p.add_argument('--no_reference', action='store_true', help="leave out the (slow) reference path")
    p.add_argument('--onnx', action='store_true', help="also the exported ONNX file under ONNX Runtime (CPU)")
    p.add_argument('--onnx_queries', type=int, default=WINDOW_QUERIES,
                   help=f"output pixels per ONNX Runtime run (default {WINDOW_QUERIES})")
    p.add_argument('--peak_tflops', type=float, default=0,
                   help="the GPU's dense bf16 peak for the %% floor column (0: a fp32 matmul measured now)")
    p.add_argument('--no_compile', action='store_true', help="leave out the compiled modes")
    p.add_argument('--compiled_only', action='store_true',
                   help="only the compiled modes (and the reference or fast fp32 row they are compared with)")
    p.add_argument('--models', action='store_true', help="LTE beside LIIF's fast and reference paths at the cases")
    p.add_argument('--blocks', default='', help="MP/s at these CPU decoder block sizes (rows), e.g. 1024,4096,16384")
    p.add_argument('--profile', action='store_true', help="where the fast path's time goes, per precision, at the cases")
    p.add_argument('--psnr', action='store_true', help="also Set5 / Set14 x4 PSNR per amp (and compiled)")
    p.add_argument('--test_py', action='store_true', help="also time test.py on Set5 + Set14 x4")
    p.add_argument('--views', default='', help="time the viewer's 800x600 view of --input at these zooms")
    p.add_argument('--input', default='', help="--views: the image")
    p.add_argument('--weights', default=config.weights, help="--views: a checkpoint or an .onnx file")
    p.add_argument('--amp', default='fp32', help="--views: autocast of a checkpoint's renders, fp32 or bf16")
    args = p.parse_args(argv)
    if args.sizes is None:
        args.sizes = '' if args.psnr or args.test_py or args.views else '128,256'
    pairs = [case.split('x') for case in args.cases.split(',')] if args.cases else []
    if any(len(pair) != 2 for pair in pairs):
        raise ValueError(f"--cases takes SIDExSCALE pairs, e.g. 256x4, got {args.cases!r}")
    args.cases = ([(int(size), float(scale)) for size, scale in pairs] if pairs else
                  [(int(size), scale) for size in comma_list(args.sizes, int) if size > 0
                   for scale in comma_list(args.scales)])
    args.views = comma_list(args.views)
    args.blocks = comma_list(args.blocks, int)
    if any(size <= 0 or scale <= 0 for size, scale in args.cases) or args.onnx_queries < 1 or min(args.blocks, default=1) < 1:
        raise ValueError("sizes, scales and blocks must be positive and onnx_queries >= 1")
    if args.views and not (args.input and Path(args.input).is_file() and all(0 < z <= MAX_ZOOM for z in args.views)):
        raise ValueError(f"--views takes zooms in (0, {MAX_ZOOM:g}] and an image (--input=PATH)")
    return args


def main(argv: list[str]) -> None:
    args = parse_args(argv)
    device = setup(args)
    results = {**machine_fields(device), 'render': [], 'psnr': []}
    if args.models:
        run_models(args, device)
    elif args.profile:
        run_profile(args, device)
    elif args.blocks:
        run_blocks(args, device)
    elif args.cases:
        run_grid(args, device, results)
    if args.psnr:
        run_psnr(args, device, results)
    if args.test_py:
        run_test_py(args)
    if args.views:
        run_views(args, device)


if __name__ == '__main__':
    sys.exit(run_main(main, sys.argv[1:]))
