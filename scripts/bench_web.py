"""The browser's engine (liif.js on onnxruntime-web) beside ONNX Runtime in Python and the PyTorch fast
path, on this machine in one run: MP/s of a whole render, and the largest float difference of each
backend's graph output to ONNX Runtime in Python.

    python scripts/bench_web.py                        # 64x64 LR at x4 (a 256x256 output: one graph run)
    python scripts/bench_web.py --size=128 --scale=2 --repeats=3
    python scripts/bench_web.py --profile              # where ONNX Runtime's time goes (no browser)

Rows: PyTorch fast path (fp32), ONNX Runtime (Python, CPU, all cores), then headless Chromium with
WebAssembly on 1 thread, on every core (the page cross-origin isolated by scripts/serve_web.py), and
WebGPU (on a machine without a GPU Chromium's adapter is SwiftShader, a CPU emulation of a GPU; the
header names the adapter). Each path renders the same LR (a top-left crop of a Set14 image) `warmup`
times untimed, then `repeats` times; the median counts. The model is the official EDSR-baseline-LIIF
(random weights without the file).

--profile: ONNX Runtime's own profile of one graph run (the first 256 x 256 output window) as kernel
time by operator type, and that run's time at each graph optimisation level, in this process.
"""
import base64
import functools
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from cli import run_main
from onnx_model import OnnxModel, export, need
from render import output_size
from scripts import make_figure, serve_web
from scripts.benchlib import header, load_model, lr_input, parser, setup
from scripts.export_web import write_site

BROWSER_ROWS = [('WebAssembly, 1 thread', 'wasm', 1), ('WebAssembly, all threads', 'wasm', 0), ('WebGPU', 'webgpu', 0)]

PAGE_BENCH = """
const [b64, h, w, backend, threads, size, warmup, repeats] = arguments;
const done = result => { globalThis.benchResult = result; };
(async () => {
  try {
    const {loadModel, threadsAvailable} = await import('./liif.js');
    const model = await loadModel(undefined, {backend, threads: threads || threadsAvailable()});
    const image = new ImageData(Uint8ClampedArray.from(atob(b64), c => c.charCodeAt(0)), w, h);
    const seconds = [];
    for (let i = 0; i < warmup + repeats; i++) {
      const start = performance.now();
      await model.render(image, {size});
      if (i >= warmup) seconds.push((performance.now() - start) / 1000);
    }
    const sr = await model.run(image, size, [0, 0, ...size.map(n => Math.min(n, 256))]);
    const bytes = new Uint8Array(sr.data.buffer, sr.data.byteOffset, sr.data.byteLength);
    let s = '';
    for (let i = 0; i < bytes.length; i += 8192) s += String.fromCharCode(...bytes.subarray(i, i + 8192));
    let adapter = '';
    if (model.backend === 'webgpu') {
      const info = (await navigator.gpu.requestAdapter()).info;
      adapter = [info.vendor, info.architecture, info.description].filter(Boolean).join(' ');
    }
    done({backend: model.backend, threads: model.threads, seconds, sr: btoa(s), adapter});
  } catch (e) {
    done({error: String(e.stack || e)});
  }
})();"""


def median_seconds(fn, warmup: int, repeats: int) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def descendants(pid: int) -> set[int]:
    """The processes below `pid` (children, their children, ...), from /proc."""
    parent = {}
    for stat in Path('/proc').glob('[0-9]*/stat'):
        try:
            parent[int(stat.parent.name)] = int(stat.read_text().rsplit(')', 1)[1].split()[1])
        except (OSError, IndexError, ValueError):  # gone meanwhile
            continue
    found, new = set(), {pid}
    while new:
        found |= new
        new = {p for p, up in parent.items() if up in new} - found
    return found - {pid}


def same_priority(driver) -> None:
    """Chromium lowers the priority of its GPU and renderer processes (nice 10); on a shared machine that
    alone would slow its rows: their threads run at this process's priority, as the Python rows do
    (called while the page runs: threads come and go)."""
    nice = os.getpriority(os.PRIO_PROCESS, 0)
    for pid in descendants(driver.service.process.pid):
        for task in Path(f'/proc/{pid}/task').glob('*'):
            try:
                if os.getpriority(os.PRIO_PROCESS, int(task.name)) != nice:
                    os.setpriority(os.PRIO_PROCESS, int(task.name), nice)
            except OSError:  # gone, or not allowed: that thread keeps Chromium's priority
                pass


def in_browser(url: str, rgba: np.ndarray, backend: str, threads: int, size, args) -> dict:
    """One browser row: a fresh headless Chromium (the WebAssembly threads are fixed per page)."""
    driver = make_figure.headless_chromium(640, 480, webgpu=backend == 'webgpu')
    # the engine runs on the page's own thread here, which a session's creation or a WebAssembly run may hold
    # for minutes on a busy machine: a poll waits for it (WebDriver's default gives up after 30 s)
    driver.set_script_timeout(3600)
    try:
        driver.get(url)
        driver.execute_script(PAGE_BENCH, base64.b64encode(rgba.tobytes()).decode(), *rgba.shape[:2],
                              backend, threads, list(size), args.warmup, args.repeats)
        while not (got := driver.execute_script('return globalThis.benchResult')):
            same_priority(driver)
            time.sleep(1)
    finally:
        driver.quit()
    if 'error' in got:
        raise ValueError(f"the {backend} run failed in the browser: {got['error']}")
    return got


LEVELS = ('ORT_DISABLE_ALL', 'ORT_ENABLE_BASIC', 'ORT_ENABLE_EXTENDED', 'ORT_ENABLE_ALL')


def onnx_profile(path: Path, feed: dict, args) -> tuple[list, Counter]:
    """(level, seconds) of one graph run at each graph optimisation level, and microseconds of kernel
    time by operator type from ONNX Runtime's profile of the runs at the highest level."""
    ort = need('onnxruntime')
    rows, by_op = [], Counter()
    for level in LEVELS:
        options = ort.SessionOptions()
        options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, level)
        options.enable_profiling = level == LEVELS[-1]
        options.profile_file_prefix = str(path.with_name('profile'))
        session = ort.InferenceSession(str(path), options, providers=['CPUExecutionProvider'])
        rows.append((level, median_seconds(functools.partial(session.run, None, feed), args.warmup, args.repeats)))
    for event in json.loads(Path(session.end_profiling()).read_text()):
        if event.get('cat') == 'Node' and event['name'].endswith('_kernel_time'):
            by_op[event['args']['op_name']] += event['dur']
    return rows, by_op


def print_profile(rows: list, by_op: Counter, pixels: int) -> None:
    print("| graph optimisation | seconds per run | MP/s | x disabled |\n|---|---|---|---|")
    for level, seconds in rows:
        print(f"| {level} | {seconds:.3f} | {pixels / 1e6 / seconds:.3g} | {rows[0][1] / seconds:.2f} |")
    total, top = sum(by_op.values()), by_op.most_common(8)
    print("\n| operator (highest level) | share of kernel time |\n|---|---|")
    for op, us in top:
        print(f"| {op} | {100 * us / total:.1f} % |")
    print(f"| other {len(by_op) - len(top)} types | {100 * (total - sum(us for _, us in top)) / total:.1f} % |")


def main(argv: list[str]) -> None:
    p = parser(__doc__)
    p.add_argument('--size', type=int, default=64, help="LR side (default 64)")
    p.add_argument('--scale', type=float, default=4.0, help="scale (default 4)")
    p.add_argument('--profile', action='store_true', help="ONNX Runtime's profile and optimisation levels only")
    args = p.parse_args(argv)
    device = setup(args)
    model, weights = load_model(device)
    lr, name = lr_input(args.size, device)
    size = output_size(args.size, args.size, args.scale)
    mp = size[0] * size[1] / 1e6
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / 'liif.onnx'
        export(model, path)
        session = OnnxModel(path)
        window = (0, 0, min(size[0], 256), min(size[1], 256))
        if args.profile:  # ONNX Runtime alone: no site, no browser
            print(header(f"ONNX Runtime (Python) on one {window[2]}x{window[3]} window of {args.size}x{args.size} "
                         f"{name} at x{args.scale:g}, {weights}", device))
            print_profile(*onnx_profile(path, session.feed(lr.numpy(), size, window), args), window[2] * window[3])
            return
        write_site(Path(folder) / 'site', path)
        reference = session.render(lr.numpy(), size, window)
        rows = [('PyTorch fast path, fp32', median_seconds(lambda: model.render(lr, size), args.warmup, args.repeats), ''),
                ('ONNX Runtime (Python)', median_seconds(lambda: session.render(lr.numpy(), size), args.warmup,
                                                         args.repeats), '(reference)')]
        server = serve_web.make_server(Path(folder) / 'site', port=0)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        url = f'http://127.0.0.1:{server.server_address[1]}/'
        rgba = np.dstack([np.rint(lr[0].permute(1, 2, 0).numpy() * 255).astype(np.uint8),
                          np.full((args.size, args.size), 255, np.uint8)])
        adapter = ''
        for label, backend, threads in BROWSER_ROWS:
            print(f"{label}...", file=sys.stderr, flush=True)
            got = in_browser(url, rgba, backend, threads, size, args)
            sr = np.frombuffer(base64.b64decode(got['sr']), np.float32).reshape(reference.shape)
            label = f"{label} ({got['threads']})" if backend == 'wasm' else label
            adapter = got['adapter'] or adapter
            rows.append((label if got['backend'] == backend else f"{label}: fell back to {got['backend']}",
                         statistics.median(got['seconds']), f"{np.abs(sr - reference).max():.1e}"))
        server.shutdown()
        server.server_close()
    print(header(f"liif.js in headless Chromium beside Python, {args.size}x{args.size} {name} at x{args.scale:g} "
                 f"({size[0]}x{size[1]}), {weights}", device))
    print(f"WebGPU adapter: {adapter or 'none'}; load average {os.getloadavg()[0]:.1f} at the end\n")
    print("| path | seconds | MP/s | x PyTorch fast | max abs float diff to ONNX Runtime (Python) |\n|---|---|---|---|---|")
    for label, seconds, diff in rows:
        print(f"| {label} | {seconds:.2f} | {mp / seconds:.3g} | {rows[0][1] / seconds:.2f} | {diff} |")


if __name__ == '__main__':
    sys.exit(run_main(main, sys.argv[1:]))
