"""GPU self-check: everything this project does on a CUDA GPU, in one command, with a report.

    python scripts/gpu_check.py --dry_run       # first: the whole check rehearsed on a bare machine, on the CPU
    python scripts/gpu_check.py --pack=OUT      # on a CUDA machine; done by --deadline (515 s)
    python scripts/gpu_check.py --train_only --deadline=380 --pack=OUT   # then: more training from its weights

Stages, in order of what their numbers are worth, each started only when the compile and run times it
expects (EXPECTED_S) fit in the time left before --deadline, and stopped at its own limit: the CUDA tests
(tests/test_cuda.py); the eager renders (reference fp32, fast fp32 with TF32 off, bf16, fp16 at LR 256 ->
x4, LR 512 -> x4, LR 256 -> x30, % of the bf16 peak) and test.py with the official weights in fp32 and
bf16 on Set5 + Set14 x2-x8, against the official scores: the numbers that decide correctness; then the
compiled decoder (CUDA graphs, fp32 and bf16) at the same cases with Set5 / Set14 x4 PSNR; then the
training modes (reference fp32, fast fp32 / bf16 / fp16, patches made on the device) with the loader's and
the draws' rates, then the compiled training modes; then `--experiment=edsr-baseline-liif-short` on the
291 images (T91 + BSDS200) for the time left, continuing the longest-trained
results/pretrained_models/edsr-baseline-liif-291-*.pth, in the way that trains the most patches in that
time (the training modes' rates after their compile time), its curves, and test.py on the weights it
made. Everything lands in results/gpu_check/<mode>/, with report.md summing it up: the GPU, torch and
CUDA versions, each stage's result (done, skipped and why, or cut and why), each goal of the GPU work
against what was measured, and the tables. The trained weights are saved as
edsr-baseline-liif-291-<sha256[:8]>.pth (the name they are published under in results/pretrained_models/).

--pack=DIR keeps the results in at most 8 files under DIR, each replaced whole after every stage (the
report, the log, the small results and each stage's log as one results.tar.gz, then the weights and the
training checkpoint in 15 MiB parts: `cat last.pth.part-* > last.pth`). SIGTERM, SIGINT, an error or the
deadline end the check with a report that says which stage was cut and why.

Data: --shared=DIR holds data/train (or data/train-webp) with T91/ and BSDS200/ and
weights/edsr-baseline-liif.pth (the official file), and may hold data/benchmark/<Set>/{HR,LR_bicubic}
(else the copy of Set5 and Set14 in tests/data/benchmark serves). A bare GPU machine has the repository
and .device/ (git-ignored, read by default when present) and no network; bundle the data first (57 MiB):

    python scripts/gpu_check.py --bundle --shared=DIR  # DIR's training images and official weights -> .device/

--dry_run rehearses that machine on the CPU: a copy of the repository's files as git carries them (tracked,
and untracked ones it does not ignore) and the bundle, in a temporary folder with no ../shared and no
weights in results/, pip and downloads refused at once, empty compiler caches; there every stage runs on
the CPU at tiny sizes (--cpu; the compiled stages left out), the CUDA tests' device-agnostic parts
included (LIIF_TEST_DEVICE=cpu). --train_only, a second run on the same machine: training continued from
the weights the first made, and test.py.
"""
import argparse
import csv
import hashlib
import importlib.util
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
import traceback
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import settings
from cli import run_main
from files import replacing
from imgproc import load_uint8, write_image
from weights import SHA256, sha256_of

SHARED = ROOT.parent / 'shared'
BUNDLE = ROOT / '.device'  # data/train/{T91,BSDS200} (WebP), weights/edsr-baseline-liif.pth
PRETRAINED = ROOT / 'results/pretrained_models'
CHECKS = ROOT / 'results/gpu_check'  # <mode>/ for the whole check, <mode>-more/ for a --train_only run after it
OFFICIAL = PRETRAINED / 'edsr-baseline-liif.pth'  # where test.py, the benchmark and the tests look by default
EXPERIMENT = 'edsr-baseline-liif-short'
TEST_RESERVE_S = 65  # test.py on the trained weights (Set5 + Set14, 5 scales), after training
REPORT_S = 10  # the report and the pack, after the last stage
STARTUP_S = 30  # train.py before its first step: decoding the 291 images, workers, CUDA context
QUIET = {'TQDM_MININTERVAL': '10', 'PYTHONUNBUFFERED': '1'}  # progress bars every 10 s keep the log short
# The official code's scores with the official weights (README): test.py in fp32 must give them to all
# four printed decimals, bf16 within 0.01 dB
OFFICIAL_PSNR = {'Set5': {2: 37.9919, 3: 34.4039, 4: 32.2394, 6: 28.9551, 8: 26.9824},
                 'Set14': {2: 33.6699, 3: 30.3466, 4: 28.6238, 6: 26.4547, 8: 24.9383}}
PEAK_BF16_TFLOPS = 989  # NVIDIA H200 (and H100 SXM): dense bf16, the % peak columns' reference
TINY_SIDE = 48  # the dry run tests and validates on top-left crops of Set5 of this side
# A bare GPU machine as the dry run makes it: pip finds no index (a refused local address, no config,
# no cache) and HTTP goes to a refused proxy, so the weights' downloader fails at once as it would there
OFFLINE = {'PIP_NO_INDEX': '1', 'PIP_INDEX_URL': 'http://127.0.0.1:9/simple', 'PIP_FIND_LINKS': '',
           'PIP_CONFIG_FILE': os.devnull, 'PIP_NO_CACHE_DIR': '1', 'http_proxy': 'http://127.0.0.1:9',
           'https_proxy': 'http://127.0.0.1:9', 'HTTP_PROXY': 'http://127.0.0.1:9',
           'HTTPS_PROXY': 'http://127.0.0.1:9', 'no_proxy': '', 'NO_PROXY': ''}

# Per mode and stage: (compile s, run s) expected from empty compiler caches. A stage starts only when
# they fit in the time left; its limit is LIMIT_FACTOR x them + LIMIT_SLACK_S (a slower or busier machine).
# GPU: the H200 run of the earlier code took 39 s for the CUDA tests, a stage of all render modes did not
# finish LR 512 and x30 in 100 s with one compiled mode, and a compiled training step takes ~40 s to compile.
EXPECTED_S = {
    'gpu': {'CUDA tests': (40, 50), 'eager renders': (0, 60), 'test.py official fp32': (0, 25),
            'test.py official bf16': (0, 25), 'compiled renders': (70, 40), 'training modes': (0, 45),
            'compiled training modes': (120, 20)},
    'dry_run': {'CUDA tests': (0, 75), 'eager renders': (0, 25), 'test.py official fp32': (0, 20),
                'test.py official bf16': (0, 25), 'training modes': (0, 60)},  # compiling: minutes on a CPU
}
LIMIT_FACTOR, LIMIT_SLACK_S = 1.3, 10
# The CUDA tests' parts that run on a CPU within the dry run's time (LIIF_TEST_DEVICE=cpu; the official
# weights through the tests' own fixture, as on the GPU machine)
# (the bf16 ones take minutes where bf16 is not native; tests/test_compiled_decoder.py compiles a small
# decoder on the CPU)
DRY_RUN_TESTS = 'not bf16 and not compiled_decoder'

# per mode: the sizes each stage runs at (the dry run only proves that every stage runs)
SIZES = {
    'gpu': dict(tests=[], tests_env={},
                bench_infer=['--cases=256x4,512x4,256x30', '--repeats=1', '--warmup=1',
                             f'--peak_tflops={PEAK_BF16_TFLOPS}'],
                bench_train=['--train_steps=20', '--train_warmup=5', '--loader_batches=200',
                             f'--peak_tflops={PEAK_BF16_TFLOPS}'],
                train=[], test_sets='Set5,Set14', test_scales='2,3,4,6,8', amps=['fp32', 'bf16'],
                steps=0, continue_weights=True),  # steps: as many as the measured rate fits
    'dry_run': dict(tests=['-k', DRY_RUN_TESTS], tests_env={'LIIF_TEST_DEVICE': 'cpu'},
                    bench_infer=['--cases=16x4,8x30', '--repeats=1', '--warmup=0', '--device=cpu'],
                    bench_train=['--batch=2', '--sample_q=64', '--patch_size=16', '--train_steps=2',
                                 '--train_warmup=1', '--loader_batches=3', '--device=cpu'],
                    train=['--patch_size=16', '--sample_q=64', '--batch_size=4', '--hidden_list=[32]',
                           '--amp=fp32', '--warmup_steps=2', '--repeat=1', '--device=cpu', '--num_workers=1'],
                    test_sets='Set5', test_scales='4', amps=['fp32', 'bf16'],  # on TINY_SIDE crops of Set5
                    steps=12, continue_weights=False),  # the tiny model cannot start from real weights
}


def training_folders(shared: Path) -> list[Path]:
    train = shared / 'data' / ('train-webp' if (shared / 'data/train-webp').is_dir() else 'train')
    return [train / 'T91', train / 'BSDS200']


def check_shared(shared: Path) -> Path:
    """The official weights in `shared`, after checking that it holds what the check reads."""
    weights = shared / 'weights/edsr-baseline-liif.pth'
    if not all(p.is_dir() for p in training_folders(shared)) or not weights.is_file():
        raise ValueError(f"{shared} lacks data/train(-webp)/T91 and BSDS200 or weights/edsr-baseline-liif.pth "
                         f"(--shared=DIR, or --bundle)")
    if sha256_of(weights) != SHA256:  # a model-only or other copy would fail the tests' and test.py's checks
        raise ValueError(f"{weights} is not the official edsr-baseline-liif.pth (sha256 {SHA256[:8]}...); "
                         f"bundle the official file (--bundle --shared=DIR)")
    return weights


def bundle(shared: Path, folder: Path = BUNDLE) -> None:
    """Copy the training images and the official weights the check reads from `shared` into `folder`
    (.device/, git-ignored); a copy already there is kept if it is whole (the weights: by their sha256)."""
    weights = check_shared(shared)
    copies = [(src, folder / 'data/train' / src.name) for src in training_folders(shared)]
    copies.append((weights, folder / 'weights/edsr-baseline-liif.pth'))
    for src, dst in copies:
        if dst.is_file() and sha256_of(dst) != SHA256:
            dst.unlink()  # an older bundle's model-only copy
        if dst.exists():
            continue
        dst.parent.mkdir(parents=True, exist_ok=True)
        (shutil.copytree if src.is_dir() else shutil.copyfile)(src, dst)
    size = sum(p.stat().st_size for p in folder.rglob('*') if p.is_file())
    print(f"{folder}: {size / 2 ** 20:.1f} MiB")


class Cut(Exception):
    """SIGTERM or SIGINT arrived: the check ends with what it measured."""


def stop_on_signals(stages: 'Stages') -> None:
    """SIGTERM and SIGINT only note the stop, which the stage running (or the next) acts on: a handler
    that raised could interrupt the start of a stage's process and leave it running unknown."""
    def stop(signum, frame):
        stages.stop = signal.Signals(signum).name
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, stop)


def slug(name: str) -> str:
    return re.sub(r'[^a-z0-9]+', '_', name.lower()).strip('_')


class Stages:
    """Runs the stages as subprocesses within their limits and the deadline, each into its own log;
    keeps every stage's result, and after each one rewrites the report and the pack."""

    def __init__(self, work: Path, first: Path, deadline_s: float, mode: str, pack_dir: Path | None):
        self.work, self.first, self.mode, self.pack_dir = work, first, mode, pack_dir
        self.start, self.deadline_s = time.monotonic(), deadline_s
        self.results: list[tuple[str, str, float]] = []  # (stage, result, seconds)
        self.planned: list[str] = []
        self.cut, self.stop, self.weights = '', '', None
        self.log = open(work / 'check.log', 'a')

    def left(self) -> float:
        return self.deadline_s - (time.monotonic() - self.start)

    def say(self, text: str) -> None:
        line = f"[{time.monotonic() - self.start:6.1f} s] {text}"
        print(line, flush=True)
        self.log.write(line + '\n')
        self.log.flush()

    def record(self, name: str, result: str, seconds: float = 0.0) -> None:
        self.results.append((name, result, seconds))
        self.say(f"{name}: {result}" + (f" after {seconds:.0f} s" if seconds else ''))

    def limit(self, name: str, keep_s: float = 0.0) -> float | None:
        """The time limit of stage `name` from its expected compile and run times, or None (recorded as
        skipped) when they do not fit in the time left before the deadline, keeping keep_s."""
        expected = EXPECTED_S[self.mode].get(name)
        if expected is None:
            self.record(name, "skipped: left out of the dry run (compiling on a CPU takes minutes)")
            return None
        need, left = sum(expected), self.left() - REPORT_S - keep_s
        if need > left:
            self.record(name, f"skipped: expects {expected[0]} s compiling + {expected[1]} s running, "
                              f"{max(left, 0):.0f} s left")
            return None
        return min(LIMIT_FACTOR * need + LIMIT_SLACK_S, left)

    def run(self, name: str, args: list[str], limit_s: float, env: dict | None = None) -> bool:
        """Run `python args` for at most limit_s, output to work/<name>.log; returns whether it finished
        with status 0. The report and the pack are rewritten after it."""
        if limit_s < 5:
            self.record(name, f"skipped: {self.left():.0f} s left")
            return False
        self.check_stop()
        started, proc = time.monotonic(), None
        result = 'cut by an error in the check'
        try:
            self.say(f"{name}: {' '.join(args)} (limit {limit_s:.0f} s)")
            with open(self.work / f'{slug(name)}.log', 'w') as out:
                # its own process group, so that a stop also ends its DataLoader workers and compile workers
                proc = subprocess.Popen([sys.executable, *args], cwd=ROOT, env={**os.environ, **QUIET, **(env or {})},
                                        stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
                result = self.wait(proc, limit_s)
        except Cut as e:
            result = f'cut by {e}'
            raise
        finally:
            if proc is not None and proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            self.record(name, result, time.monotonic() - started)
            if result.startswith('cut by'):
                self.cut = f"{name}: {result}"
        self.save()
        return result == 'done'

    def check_stop(self) -> None:
        if self.stop:
            raise Cut(self.stop)

    def wait(self, proc: subprocess.Popen, limit_s: float) -> str:
        """How proc ended: done, failed, or stopped at its limit or the deadline; Cut if a signal came first."""
        end = time.monotonic() + limit_s
        while proc.poll() is None:
            self.check_stop()
            if time.monotonic() > end:
                at_deadline = self.left() <= REPORT_S + 1
                return f"stopped at {'the deadline' if at_deadline else 'its time limit'} ({limit_s:.0f} s)"
            time.sleep(0.2)
        return 'done' if proc.returncode == 0 else f'failed (status {proc.returncode})'

    def save(self) -> None:
        """report.md, and the pack when asked, as they stand now."""
        write_report(self)
        if self.pack_dir is not None:
            pack(self, self.pack_dir)


def tiny_benchmark(benchmark: Path, work: Path) -> Path:
    """work/tiny_benchmark/Set5/HR: TINY_SIDE crops of Set5 (the dry run's test set: a CPU renders it in seconds)."""
    folder = work / 'tiny_benchmark' / 'Set5' / 'HR'
    folder.mkdir(parents=True)
    for path in sorted((benchmark / 'Set5' / 'HR').glob('*.png')):
        write_image(folder / path.name, load_uint8(path)[:TINY_SIDE, :TINY_SIDE])
    return folder.parents[1]


def previous_weights() -> tuple[Path | None, int]:
    """The weights of an earlier check that trained longest (published, or left by an earlier run on
    this machine), and their step count; (None, 0) if there are none."""
    paths = [*PRETRAINED.glob('edsr-baseline-liif-291-*.pth'), *CHECKS.glob('*/edsr-baseline-liif-291-*.pth')]
    found = [(torch.load(path, map_location='cpu', weights_only=True)['step'], path) for path in paths]
    steps, path = max(found, default=(0, None))
    return path, steps


RENDER_JSON = ('bench_infer.json', 'bench_compiled.json')  # the eager and the compiled renders' rows
TRAIN_JSON = ('bench_train.json', 'bench_train_compiled.json')  # the eager and the compiled training modes'


def read_json(path: Path) -> dict:
    """A benchmark's rows ({} when the file is missing or unreadable: its stage did not get that far)."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def measured(first: Path, names: tuple[str, ...]) -> dict:
    """The rows of the benchmark JSON files `names` in `first`, joined."""
    joined = {'render': [], 'psnr': [], 'train': [], 'loader': None, 'batch': None}
    for name in names:
        rows = read_json(first / name)
        for key in ('render', 'psnr', 'train'):
            joined[key] += rows.get(key, [])
        joined['loader'] = joined['loader'] or rows.get('loader')
        joined['batch'] = joined['batch'] or rows.get('batch')
    return joined


def training_mode(rows: dict, amp: str, seconds: float) -> tuple[list[str], float, float, str]:
    """The train.py settings of the way to train in `amp` that the training benchmark measured (compiled
    or not, patches from the loader or made on the device) which trains the most patches in `seconds`
    after its warm-up (compiling), its patches per second as fed (the step's rate, capped by the loader's
    patches or draws per second), its warm-up seconds, and its name; ([], 0, 0, '') if none was measured."""
    loader = rows.get('loader') or {}
    best = None
    for row in rows.get('train', []):
        if row['path'] == 'fast' and row['amp'] == amp:
            feed = loader.get('patches_per_s' if row['data'] == 'loader' else 'draws_per_s', math.inf)
            rate = min(row['patches_per_s'], feed)
            patches = rate * max(0.0, seconds - row['warmup_s'])
            if best is None or patches > best[0]:
                best = (patches, rate, row)
    if best is None:
        return [], 0.0, 0.0, ''
    _, rate, row = best
    settings = [f"--compile={row['compile']}", f"--device_data={row['data'] == 'device'}"]
    name = f"{'compiled' if row['compile'] else 'eager'} step, patches from the {row['data']}"
    return settings, rate, row['warmup_s'], name


def planned_steps(patches_per_s: float, batch: int, seconds: float) -> int:
    """Optimiser steps of `batch` that fit in `seconds` at the measured patches per second, assuming
    time per step grows with the batch. On a large GPU a step of twice the batch takes less than twice
    as long, so this errs on the short side (--steps sets the count)."""
    return int(0.85 * seconds * patches_per_s / batch)  # 15 %: validation, checkpoints, epoch starts


def save_weights(work: Path, checkpoint: Path, steps_before: int) -> Path:
    """The trained model state (fp32) and its total step count as work/edsr-baseline-liif-291-<sha256[:8]>.pth."""
    ckpt = torch.load(checkpoint, map_location='cpu', weights_only=True)
    state = {'model': ckpt['model'], 'options': ckpt['options'], 'step': steps_before + ckpt['step']}
    with replacing(work / 'weights.pth') as tmp:
        torch.save(state, tmp)
    digest = hashlib.sha256((work / 'weights.pth').read_bytes()).hexdigest()
    path = work / f'edsr-baseline-liif-291-{digest[:8]}.pth'
    os.replace(work / 'weights.pth', path)
    return path


def test_scores(folder: Path) -> dict:
    """{(set, scale): PSNR} from a test.py run's test_results.csv ({} if it did not finish)."""
    path = folder / 'test_results.csv'
    if not path.is_file():
        return {}
    with open(path) as f:
        return {(row['dataset'], round(float(row['scale']))): float(row['psnr']) for row in csv.DictReader(f)}


def official_table(work: Path) -> str:
    """test.py's fp32 and bf16 scores (of the check in `work`) beside the official ones, with their differences."""
    runs = {amp: test_scores(work / f'test_official_{amp}') for amp in ('fp32', 'bf16')}
    lines = ["| set | scale | official | fp32 | fp32 - official | bf16 | bf16 - official |", "|---" * 7 + "|"]
    for name, scores in OFFICIAL_PSNR.items():
        for scale, official in scores.items():
            cells = [(f"{runs[a][name, scale]:.4f}", f"{runs[a][name, scale] - official:+.4f}")
                     if (name, scale) in runs[a] else ('-', '-') for a in ('fp32', 'bf16')]
            lines.append(f"| {name} | x{scale} | {official:.4f} | " + ' | '.join(' | '.join(c) for c in cells) + ' |')
    return '\n'.join(lines) + '\n'


def best_render(rows: list[dict], lr: int, scale: float, amp: str, max_diff: float = math.inf) -> dict | None:
    """The fastest fast-path render row of a case in `amp` (eager or compiled), within max_diff of the reference."""
    found = [r for r in rows if (r['lr'], r['scale'], r['path'], r['amp']) == (lr, scale, 'fast', amp)
             and r['max_abs_diff'] <= max_diff]
    return max(found, key=lambda r: r['mp_per_s'], default=None)


def render_goals(infer: dict) -> list[tuple]:
    """(goal, target, measured, met) of the rendering speed goals."""
    rows, goals = infer.get('render', []), []
    for lr, scale, amp, target, times in ((256, 4, 'bf16', 150, 30), (256, 4, 'fp32', 25, 0), (512, 4, 'bf16', 100, 0),
                                          (256, 30, 'bf16', 100, 0)):
        best = best_render(rows, lr, float(scale), amp, 1e-5 if amp == 'fp32' else math.inf)
        text = f">= {target} MP/s" + (f", >= {times}x the reference fp32" if times else '')
        if best is None:
            goals.append((f"render LR {lr} -> x{scale}, {amp}", text, 'not measured', '-'))
            continue
        met = best['mp_per_s'] >= target and best['x_reference'] >= times
        goals.append((f"render LR {lr} -> x{scale}, {amp}{' (TF32 off)' * (amp == 'fp32')}", text,
                       f"{best['mp_per_s']:.1f} MP/s, {best['x_reference']:.1f}x ({'compiled' if best['compile'] else 'eager'})",
                       'yes' if met else 'NO'))
    return goals


def compile_goals(infer: dict) -> list[tuple]:
    """Whether the compiled decoder keeps the fidelity rules and is faster: what decides compile_decoder's default."""
    rows, psnr = infer.get('render', []), infer.get('psnr', [])
    compiled = [r for r in rows if r['compile']]
    if not compiled:
        return [("compile_decoder keeps fidelity and pays", "fp32 <= 1e-5, bf16 <= 0.01 dB, faster", 'not measured', '-')]
    fp32_diff = max(r['max_abs_diff'] for r in compiled if r['amp'] == 'fp32')
    scores = {(r['set'], r['amp'], r['compile']): r['psnr'] for r in psnr}
    db = [abs(scores[name, 'bf16', True] - scores[name, 'fp32', False]) for name in ('Set5', 'Set14')
          if (name, 'bf16', True) in scores and (name, 'fp32', False) in scores]
    eager = {(r['lr'], r['scale'], r['amp']): r['mp_per_s'] for r in rows if r['path'] == 'fast' and not r['compile']}
    faster = all(r['mp_per_s'] > eager.get((r['lr'], r['scale'], r['amp']), math.inf) for r in compiled)
    kept = fp32_diff <= 1e-5 and bool(db) and max(db) <= 0.01
    return [("compile_decoder: fp32 within 1e-5 of the reference, bf16 within 0.01 dB of fp32 (Set5/Set14 x4)",
             "both", f"{fp32_diff:.1e}; {max(db):.4f} dB" if db else f"{fp32_diff:.1e}; PSNR not measured",
             'yes' if kept else 'NO'),
            ("compile_decoder faster than eager at every case", "all", 'yes' if faster else 'no',
             'on by default' if kept and faster else 'stays off')]


def train_goals(trained: dict) -> list[tuple]:
    """(goal, target, measured, met) of the training speed goals."""
    rows = trained.get('train', [])
    reference = next((r['steps_per_s'] for r in rows if r['path'] == 'reference'), None)
    goals = []
    for amp, target, times in (('bf16', 250, 4), ('fp32', 120, 0)):
        found = [r for r in rows if r['path'] == 'fast' and r['amp'] == amp]
        best = max(found, key=lambda r: r['steps_per_s'], default=None)
        text = f">= {target} steps/s" + (f", >= {times}x the reference fp32" if times else '')
        if best is None or not reference:
            goals.append((f"training steps, {amp}", text, 'not measured', '-'))
            continue
        ratio = best['steps_per_s'] / reference
        mode = f"{'compiled' if best['compile'] else 'eager'}, {best['data']} data"
        goals.append((f"training steps, {amp} (batch {trained['batch']})", text,
                       f"{best['steps_per_s']:.0f} steps/s, {ratio:.1f}x ({mode})",
                       'yes' if best['steps_per_s'] >= target and ratio >= times else 'NO'))
    loader = trained.get('loader') or {}
    if loader:
        goals.append(("data keeps up: loader patches/s, draws/s (device_data)", "> the fastest step's patches/s",
                      f"{loader['patches_per_s']:.0f}, {loader['draws_per_s']:.0f}; device patches "
                      f"{loader['device_patches_per_s']:.0f}/s", 'yes' if loader.get('keeps_up') else 'see table'))
    return goals


def fidelity_goals(first: Path, work: Path) -> list[tuple]:
    """test.py's scores (the whole check's, in `first`) against the official ones, and the Set5 x4 of the
    weights trained in `work`."""
    goals = []
    for amp, bound, text in (('fp32', 0.00005, 'all 10 equal to 4 decimals'), ('bf16', 0.01, 'within 0.01 dB')):
        scores = test_scores(first / f'test_official_{amp}')
        diffs = [abs(round(scores[k], 4) - OFFICIAL_PSNR[k[0]][k[1]]) for k in scores if k[0] in OFFICIAL_PSNR]
        measured = f"{len(diffs)} scores, largest difference {max(diffs):.4f} dB" if diffs else 'not measured'
        goals.append((f"test.py official weights, {amp}", text, measured,
                      '-' if not diffs else 'yes' if max(diffs) <= bound and len(diffs) == 10 else 'NO'))
    trained = test_scores(work / 'test_trained').get(('Set5', 4))
    goals.append(("weights trained here, Set5 x4", ">= 31.6 dB", f"{trained:.4f} dB" if trained else 'not measured',
                  '-' if trained is None else 'yes' if trained >= 31.6 else 'NO'))
    return goals


def goals_table(first: Path, work: Path) -> str:
    """Each goal of the GPU work against what the check in `first` (and the training in `work`) measured."""
    infer = measured(first, RENDER_JSON)
    goals = (render_goals(infer) + compile_goals(infer) + train_goals(measured(first, TRAIN_JSON))
             + fidelity_goals(first, work))
    return '\n'.join(["| goal | target | measured | met |", "|---|---|---|---|"]
                     + [f"| {' | '.join(goal)} |" for goal in goals]) + '\n'



def stages_table(stages: Stages) -> str:
    """Each stage's result (done, failed, skipped and why, stopped, cut), the cut first if there was one."""
    rows = [f"| {name} | {result} | {seconds:.0f} |" for name, result, seconds in stages.results]
    done = {name for name, *_ in stages.results}
    rows += [f"| {name} | not reached | - |" for name in stages.planned if name not in done]
    at_deadline = [f"{name}: {result}" for name, result, _ in stages.results if 'the deadline' in result]
    cut = stages.cut or ''.join(at_deadline[:1])
    return ((f"**The check was cut:** {cut}\n\n" if cut else '')
            + "| stage | result | seconds |\n|---|---|---|\n" + '\n'.join(rows) + '\n')


def test_summary(log: Path) -> str:
    """pytest's counts ('9 passed, 4 skipped') and its lines on what failed or was skipped."""
    lines = log.read_text().splitlines() if log.is_file() else []
    counts = [re.findall(r'\d+ (?:passed|failed|errors?|skipped|deselected)', line) for line in lines]
    last = next((found for found in reversed(counts) if found), ['no test ran'])
    notes = [line for line in lines if line.startswith(('FAILED', 'ERROR', 'SKIPPED'))]
    return ', '.join(last) + '\n' + ''.join(f"\n    {line}" for line in notes) + '\n'


def section(title: str, path: Path, lines: int | None = None) -> str:
    if not path.is_file():
        return f"## {title}\n\n(not run)\n"
    text = path.read_text().strip().splitlines()
    return f"## {title}\n\n" + '\n'.join(text[-lines:] if lines else text) + '\n'


def write_report(stages: Stages) -> None:
    """work/report.md, replaced whole: the machine and versions, each stage's result, the goals against
    what was measured, then each stage's output; the measurements are the whole check's (in `first`,
    which is `work` unless --train_only)."""
    first, work = stages.first, stages.work
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else 'the CPU'
    dry_run = ("A dry run: tiny sizes on the CPU, which show that every stage runs; the goals are a GPU's.\n"
               if stages.mode == 'dry_run' else '')
    parts = [f"# GPU self-check on {device}, torch {torch.__version__}, CUDA {torch.version.cuda}, "
             f"{os.cpu_count()} CPU cores\n", dry_run, "## Stages\n\n" + stages_table(stages),
             "## Goals\n\n" + goals_table(first, work),
             "## CUDA tests\n\n" + test_summary(first / 'cuda_tests.log'),
             section('Eager renders', first / 'eager_renders.log'),
             section('Compiled renders', first / 'compiled_renders.log'),
             section('Training modes and the data', first / 'training_modes.log'),
             section('Compiled training modes', first / 'compiled_training_modes.log'),
             "## test.py with the official weights against the official scores\n\n" + official_table(first)]
    parts += [section(f'test.py, official weights, {amp}', first / f'test_official_{amp}/test_results.md')
              for amp in ('fp32', 'bf16')]
    parts += [section('test.py, the weights trained here', work / 'test_trained/test_results.md')]
    with replacing(work / 'report.md') as tmp:
        tmp.write_text('\n'.join(parts))


def copy_whole(src: Path, dst: Path) -> None:
    with replacing(dst) as tmp:
        shutil.copyfile(src, tmp)


def pack(stages: Stages, out: Path) -> None:
    """At most 8 files into out, each replaced whole: the report, the log, the small results (each
    stage's log and JSON, the tables, the curves; not the TensorBoard events, whose image panels can be
    large) as one tar.gz, and once trained the weights and the training checkpoint in 15 MiB parts."""
    work = stages.work
    out.mkdir(parents=True, exist_ok=True)
    with replacing(out / 'results.tar.gz') as tmp, tarfile.open(tmp, 'w:gz') as tar:
        for path in sorted(work.rglob('*')):
            small = path.suffix != '.pth' and 'tfevents' not in path.name and not path.name.startswith('.')
            if path.is_file() and small:
                tar.add(path, arcname=str(path.relative_to(work)))
    stages.log.flush()
    for src in (work / 'report.md', work / 'check.log'):
        copy_whole(src, out / src.name)
    last = work / 'train' / 'last.pth'
    if stages.weights is not None and last.is_file():
        copy_whole(stages.weights, out / stages.weights.name)
        data, part = last.read_bytes(), 15 * 2 ** 20
        for i in range(0, len(data), part):
            with replacing(out / f'last.pth.part-{i // part:02d}') as tmp:
                tmp.write_bytes(data[i:i + part])


def measuring_stages(args, sizes: dict, work: Path, shared: Path, benchmark: Path) -> list[tuple[str, list[str], dict]]:
    """(name, python arguments, environment) of the measuring stages, in order of value: the tests, the
    numbers that decide correctness, the compiled modes, the training modes."""
    infer = ['scripts/bench_render.py', *sizes['bench_infer']]
    folders = ','.join(map(str, training_folders(shared)))
    train = ['scripts/bench_train.py', f'--train_dir={folders}', *sizes['bench_train']]
    tests = ['-m', 'pytest', '-q', '-rfEs', '-p', 'no:cacheprovider',
             *(['-k', args.tests] if args.tests else sizes['tests']), 'tests/test_cuda.py']
    stages = [('CUDA tests', tests, sizes['tests_env']),
              ('eager renders', [*infer, '--no_compile', f"--json={work / RENDER_JSON[0]}"], {})]
    stages += [(f'test.py official {amp}', ['test.py', f'--test_root={benchmark}', f"--test_sets={sizes['test_sets']}",
                                            f"--test_scales={sizes['test_scales']}", f'--amp={amp}',
                                            f"--out_dir={work / f'test_official_{amp}'}"], {}) for amp in sizes['amps']]
    return stages + [('compiled renders', [*infer, '--compiled_only', '--psnr', f"--json={work / RENDER_JSON[1]}"], {}),
                     ('training modes', [*train, '--loader', '--no_compile', f"--json={work / TRAIN_JSON[0]}"], {}),
                     ('compiled training modes', [*train, '--compiled_only', f"--json={work / TRAIN_JSON[1]}"], {})]


def checks(stages: Stages, plan: list[tuple[str, list[str], dict]], only: set[str]) -> None:
    """The measuring stages in order, each when its expected time fits (and --only names it)."""
    for name, args, env in plan:
        if only and slug(name) not in only:
            stages.record(name, "skipped: not in --only")
            continue
        limit = stages.limit(name)
        if limit is not None:
            stages.run(name, args, limit, env)


def plan_training(stages: Stages, sizes: dict, steps: int) -> tuple[list[str], int, float]:
    """train.py's settings for the fastest measured way to train, its steps and the seconds it has."""
    train_s = stages.left() - TEST_RESERVE_S - REPORT_S
    cfg = settings.parse([f'--experiment={EXPERIMENT}', *sizes['train']])
    mode, rate, warmup_s, name = training_mode(measured(stages.first, TRAIN_JSON), cfg.amp, train_s - STARTUP_S)
    steps = steps or sizes['steps'] or planned_steps(rate, cfg.batch_size, max(0.0, train_s - STARTUP_S - warmup_s))
    stages.say(f"training: {train_s:.0f} s left for it, {steps} steps planned ({name or 'no rate measured'}, "
               f"{rate:.0f} patches/s after {warmup_s:.0f} s of warm-up)")
    return mode, steps, train_s


def train_and_test(stages: Stages, sizes: dict, shared: Path, benchmark: Path, steps: int) -> None:
    """Training for the time left (continuing earlier weights, in the fastest measured way), its curves,
    then test.py on its weights (on `benchmark`)."""
    work = stages.work
    previous, steps_before = previous_weights() if sizes['continue_weights'] else (None, 0)
    mode, steps, train_s = plan_training(stages, sizes, steps)
    if steps <= 10 or train_s < STARTUP_S:
        stages.record('training', f"skipped: {steps} steps in {max(train_s, 0):.0f} s (no step rate measured, "
                                  "or too little time left)")
        return
    train_args = ['train.py', f'--experiment={EXPERIMENT}',
                  f"--train_dir={','.join(map(str, training_folders(shared)))}", f"--valid_dir={benchmark / 'Set5'}",
                  f"--out_dir={work / 'train'}", f'--max_steps={steps}', '--epochs=100000', '--valid_every=5',
                  '--save_every=100000', *mode, *sizes['train'], *([f'--init_weights={previous}'] if previous else [])]
    stages.run('training', train_args, train_s)
    if not (work / 'train' / 'last.pth').is_file():
        return
    stages.weights = save_weights(work, work / 'train' / 'last.pth', steps_before)
    stages.say(f"training: {stages.weights.name} ({steps_before} steps before)")
    if importlib.util.find_spec('matplotlib') is None:
        stages.record('curves', "skipped: plot_curves.py needs matplotlib (not a project requirement)")
    else:
        stages.run('curves', ['scripts/plot_curves.py', str(work / 'train'), str(work / 'training_curves.png')],
                   min(30, stages.left() - REPORT_S))
    stages.run('test.py trained', ['test.py', f'--weights={stages.weights}', f'--test_root={benchmark}',
                                   f"--test_sets={sizes['test_sets']}", f"--test_scales={sizes['test_scales']}",
                                   f"--out_dir={work / 'test_trained'}"], stages.left() - REPORT_S)


def run_stages(args, stages: Stages, sizes: dict, shared: Path) -> None:
    """The official weights where the scripts and tests look, then the stages."""
    stages.say(f"{stages.mode}: torch {torch.__version__}, CUDA {torch.version.cuda} (available: "
               f"{torch.cuda.is_available()}), {os.cpu_count()} cores"
               + (f", {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ''))
    if not OFFICIAL.is_file() or sha256_of(OFFICIAL) != SHA256:
        PRETRAINED.mkdir(parents=True, exist_ok=True)
        copy_whole(shared / 'weights/edsr-baseline-liif.pth', OFFICIAL)
    benchmark = shared / 'data/benchmark' if (shared / 'data/benchmark').is_dir() else ROOT / 'tests/data/benchmark'
    benchmark = tiny_benchmark(benchmark, stages.work) if stages.mode == 'dry_run' else benchmark
    only = set(args.only.split(',')) if args.only else set()
    plan = [] if args.train_only else measuring_stages(args, sizes, stages.work, shared, benchmark)
    stages.planned = [name for name, *_ in plan] + ['training', 'curves', 'test.py trained']
    checks(stages, plan, only)
    if only and 'training' not in only:
        stages.record('training', "skipped: not in --only")
        return
    train_and_test(stages, sizes, shared, benchmark, args.steps)


def carried_files(root: Path) -> list[str]:
    """The repository's files as they reach a GPU machine: tracked, and untracked ones git does not ignore."""
    listed = subprocess.run(['git', 'ls-files', '-z', '--cached', '--others', '--exclude-standard'], cwd=root,
                            capture_output=True, check=True).stdout.decode()
    return [name for name in listed.split('\0') if name and (root / name).is_file()]


def bare_machine(folder: Path, shared: Path) -> Path:
    """folder/repo: the repository as a bare GPU machine gets it, with the bundle of `shared` in .device/."""
    clone = folder / 'repo'
    for name in carried_files(ROOT):
        (clone / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, clone / name)
    bundle(shared, clone / '.device')
    return clone


def offline_env(folder: Path) -> dict:
    """This environment as a bare machine's: no network, empty compiler caches, no LIIF_* settings (such
    as LIIF_WEIGHTS naming a file the machine does not have)."""
    env = {key: value for key, value in os.environ.items() if not key.startswith('LIIF_')}
    caches = {'TORCHINDUCTOR_CACHE_DIR': 'inductor', 'TRITON_CACHE_DIR': 'triton', 'XDG_CACHE_HOME': 'cache'}
    return {**env, **OFFLINE, **{key: str(folder / name) for key, name in caches.items()}}


def rehearse(args, shared: Path) -> int:
    """--dry_run: the check (--cpu) in a bare machine made in a temporary folder, SIGTERM and SIGINT passed
    on to it; its results packed (--pack) or else copied back into results/gpu_check/. Returns its exit
    status."""
    passed_on = [f'--deadline={args.deadline}', f'--steps={args.steps}', f'--only={args.only}', f'--tests={args.tests}',
                 *(['--train_only'] if args.train_only else []),
                 *([f'--pack={Path(args.pack).resolve()}'] if args.pack else [])]
    with tempfile.TemporaryDirectory(prefix='gpu_check_') as folder:
        clone = bare_machine(Path(folder), shared)
        print(f"dry run: a bare machine in {clone} ({len(carried_files(ROOT))} files and .device/), offline",
              flush=True)
        proc = subprocess.Popen([sys.executable, 'scripts/gpu_check.py', '--cpu', *passed_on], cwd=clone,
                                env=offline_env(Path(folder)), start_new_session=True)
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda signum, frame: proc.send_signal(signum))
        status = proc.wait()
        for results in (clone / 'results/gpu_check').glob('*') if not args.pack else []:
            shutil.rmtree(CHECKS / results.name, ignore_errors=True)
            shutil.copytree(results, CHECKS / results.name)
    return status


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--bundle', action='store_true', help="copy the data and weights of --shared into .device/ and stop")
    parser.add_argument('--shared', default='', help="folder with data/ and weights/ (default: .device/ if present, "
                        "else ../shared)")
    parser.add_argument('--dry_run', action='store_true', help="rehearse the check on a bare machine, on the CPU")
    parser.add_argument('--cpu', action='store_true', help="every stage here on the CPU at tiny sizes (what --dry_run "
                        "runs in its bare machine)")
    parser.add_argument('--train_only', action='store_true',
                        help="a second run on the same machine: only training (continued) and test.py")
    parser.add_argument('--deadline', type=float, default=515, help="seconds from start by which the check is done")
    parser.add_argument('--steps', type=int, default=0, help="training steps (0: as many as the measured rate fits)")
    parser.add_argument('--pack', default='', help="also keep the results in at most 8 files in this folder")
    parser.add_argument('--only', default='', help="only these stages, comma-separated: cuda_tests, eager_renders, "
                        "test_py_official_fp32, test_py_official_bf16, compiled_renders, training_modes, "
                        "compiled_training_modes, training")
    parser.add_argument('--tests', default='', help="the CUDA tests to run, a pytest -k expression (default: all; "
                        "on the CPU those that run there in seconds)")
    return parser.parse_args(argv)


def refuse_unplanned_training(args, first: Path, sizes: dict) -> None:
    """--train_only plans its steps from the first check's training benchmark: without it, and without
    --steps, it would plan none."""
    if args.train_only and not (args.steps or sizes['steps']) and not measured(first, TRAIN_JSON)['train']:
        raise ValueError(f"--train_only plans its steps from the training modes an earlier check measured on this "
                         f"machine ({first / TRAIN_JSON[0]}), which are missing: run the whole check first, or "
                         f"give --steps=N")


def main(argv: list[str]) -> None:
    args = parse_args(argv)
    shared = Path(args.shared) if args.shared else BUNDLE if BUNDLE.is_dir() else SHARED
    if args.bundle:
        return bundle(shared if args.shared else SHARED)
    if args.dry_run:
        sys.exit(rehearse(args, shared))
    check_shared(shared)
    mode = 'dry_run' if args.cpu else 'gpu'
    first = CHECKS / mode  # the whole check's measurements, also for a --train_only run after it
    work = CHECKS / (mode + ('-more' if args.train_only else ''))
    refuse_unplanned_training(args, first, SIZES[mode])
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    stages = Stages(work, first, args.deadline, mode, Path(args.pack) if args.pack else None)
    stop_on_signals(stages)
    status = 0
    try:
        run_stages(args, stages, SIZES[mode], shared)
        stages.check_stop()
    except Cut as e:
        stages.cut, status = stages.cut or f"between stages: cut by {e}", 128 + signal.Signals[str(e)]
    except Exception as e:  # the report says so, and the traceback is in the log
        stages.cut, status = f"{stages.cut or 'between stages: cut by an error in the check'} ({e!r})", 1
        stages.log.write(traceback.format_exc())
    finally:
        stages.save()
        stages.say(f"report: {work / 'report.md'}" + (f"; packed into {args.pack}" if args.pack else ''))
    if status:
        sys.exit(status)


if __name__ == '__main__':
    sys.exit(run_main(main, sys.argv[1:]))
