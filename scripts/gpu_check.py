"""GPU self-check: everything this project does on a CUDA GPU, in one command, with a report.

    python scripts/gpu_check.py                        # on a CUDA machine; done by --deadline (515 s)
    python scripts/gpu_check.py --train_only --deadline=380   # then: more training from the weights just made

Stages, each within its own time limit and together within --deadline seconds, the measuring ones
stopped early enough to leave the training at least TRAIN_MIN_S: the CUDA tests (tests/test_cuda.py);
the render benchmark (reference fp32 against fast fp32 (TF32 off), bf16, fp16 and the compiled decoder
with CUDA graphs in fp32 and bf16; LR 256 -> x4, LR 512 -> x4, LR 256 -> x30; % of the bf16 peak) and
Set5 / Set14 x4 PSNR per mode; the training benchmark (reference fp32, fast fp32 / bf16 / fp16, the
compiled step, patches made on the device) with the loader's and the draws' rates; test.py with the
official weights in fp32 and bf16 on Set5 + Set14 x2-x8; then `--experiment=edsr-baseline-liif-short`
on the 291 images (T91 + BSDS200) for the minutes left, continuing the longest-trained
results/pretrained_models/edsr-baseline-liif-291-*.pth, in the fastest way the training benchmark
measured (compiled or not, patches from the loader or made on the device), its training curves, and
test.py on the weights it made. Everything lands in results/gpu_check/<mode>/, with report.md summing
it up: the GPU, torch and CUDA versions, the tables, and each goal of the GPU work against what was
measured. The trained weights are saved as edsr-baseline-liif-291-<sha256[:8]>.pth (the name they are
published under in results/pretrained_models/, where the next check's training starts from the
longest-trained).

Data: --shared=DIR holds data/train (or data/train-webp) with T91/ and BSDS200/ and
weights/edsr-baseline-liif.pth, and may hold data/benchmark/<Set>/{HR,LR_bicubic} (else the copy of Set5
and Set14 in tests/data/benchmark serves). To take the check to a machine without them, bundle them first
(48 MB; .device/ is git-ignored and read by default when present):

    python scripts/gpu_check.py --bundle --shared=DIR  # DIR's training images and weights -> .device/

--pack=DIR copies the report and results into at most 8 files under DIR (the small files as one
results.tar.gz, the weights, the training checkpoint in 15 MiB parts: `cat last.pth.part-* > last.pth`).
--train_only, a second run on the same machine: training continued from the weights the first made,
and test.py. --dry_run: every stage on the CPU at tiny sizes (the compiled modes left out), to check
the script.
"""
import argparse
import csv
import hashlib
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import settings
from files import replacing
from imgproc import load_uint8, write_image

SHARED = ROOT.parent / 'shared'
BUNDLE = ROOT / '.device'  # data/train/{T91,BSDS200} (WebP), weights/
PRETRAINED = ROOT / 'results/pretrained_models'
CHECKS = ROOT / 'results/gpu_check'  # <mode>/ for the whole check, <mode>-more/ for a --train_only run after it
OFFICIAL = PRETRAINED / 'edsr-baseline-liif.pth'  # where test.py and the benchmark look by default
EXPERIMENT = 'edsr-baseline-liif-short'
TEST_RESERVE_S = 65  # test.py on the trained weights (Set5 + Set14, 5 scales) and the report, after training
TRAIN_MIN_S = 60  # the measuring stages stop early enough to leave the training this much
STARTUP_S = 30  # train.py before its first step: decoding the 291 images, workers, CUDA context
QUIET = {'TQDM_MININTERVAL': '10', 'PYTHONUNBUFFERED': '1'}  # progress bars every 10 s keep the log short
# The official code's scores with the official weights (README): test.py in fp32 must give them to all
# four printed decimals, bf16 within 0.01 dB
OFFICIAL_PSNR = {'Set5': {2: 37.9919, 3: 34.4039, 4: 32.2394, 6: 28.9551, 8: 26.9824},
                 'Set14': {2: 33.6699, 3: 30.3466, 4: 28.6238, 6: 26.4547, 8: 24.9383}}
PEAK_BF16_TFLOPS = 989  # NVIDIA H200 (and H100 SXM): dense bf16, the % peak columns' reference
TINY_SIDE = 48  # the dry run tests and validates on top-left crops of Set5 of this side

# per mode: the sizes each stage runs at and its time limit (the dry run only proves that every stage runs)
SIZES = {
    'gpu': dict(bench_infer=['--cases=256x4,512x4,256x30', '--repeats=1', '--warmup=1', '--psnr',
                             f'--peak_tflops={PEAK_BF16_TFLOPS}'],
                bench_train=['--train_steps=20', '--train_warmup=5', '--loader_batches=200',
                             f'--peak_tflops={PEAK_BF16_TFLOPS}'],
                train=[], test_sets='Set5,Set14', test_scales='2,3,4,6,8', amps=['fp32', 'bf16'],
                limits=dict(tests=100, bench_infer=120, bench_train=100, test=35),
                steps=0, continue_weights=True),  # steps: as many as the measured rate fits
    'dry_run': dict(bench_infer=['--cases=16x4,8x30', '--repeats=1', '--warmup=0', '--device=cpu', '--no_compile'],
                    bench_train=['--batch=2', '--sample_q=64', '--patch_size=16', '--train_steps=2',
                                 '--train_warmup=1', '--loader_batches=3', '--device=cpu', '--no_compile'],
                    train=['--patch_size=16', '--sample_q=64', '--batch_size=4', '--hidden_list=[32]',
                           '--amp=fp32', '--warmup_steps=2', '--repeat=1', '--device=cpu', '--num_workers=1'],
                    test_sets='Set5', test_scales='4', amps=['fp32'],  # on TINY_SIDE crops of Set5
                    limits=dict(tests=60, bench_infer=100, bench_train=150, test=60), steps=12,
                    continue_weights=False),  # the tiny model cannot start from real weights
}


def bundle(shared: Path) -> None:
    """Copy the training images and weights the check reads from `shared` into .device/ (git-ignored)."""
    train = shared / 'data' / ('train-webp' if (shared / 'data/train-webp').is_dir() else 'train')
    weights = shared / 'weights' / 'edsr-baseline-liif.model-only.pth'
    copies = [(train / name, BUNDLE / 'data/train' / name) for name in ('T91', 'BSDS200')]
    copies.append((weights if weights.is_file() else shared / 'weights/edsr-baseline-liif.pth',
                   BUNDLE / 'weights/edsr-baseline-liif.pth'))
    for src, dst in copies:
        if dst.exists():
            continue
        dst.parent.mkdir(parents=True, exist_ok=True)
        (shutil.copytree if src.is_dir() else shutil.copyfile)(src, dst)
    size = sum(p.stat().st_size for p in BUNDLE.rglob('*') if p.is_file())
    print(f"{BUNDLE}: {size / 1e6:.1f} MB")


class Stages:
    """Runs the stages as subprocesses, each within its time limit and the deadline, into one log."""

    def __init__(self, work: Path, deadline_s: float):
        self.work, self.start, self.deadline_s = work, time.monotonic(), deadline_s
        self.log = open(work / 'check.log', 'a')

    def left(self) -> float:
        return self.deadline_s - (time.monotonic() - self.start)

    def say(self, text: str) -> None:
        line = f"[{time.monotonic() - self.start:6.1f} s] {text}"
        print(line, flush=True)
        self.log.write(line + '\n')
        self.log.flush()

    def run(self, name: str, args: list[str], limit_s: float, output: Path | None = None, keep_s: float = 0) -> bool:
        """Run `python args` for at most limit_s, and never into the last keep_s before the deadline; stdout
        to the log and to `output`. Returns whether it finished with status 0."""
        limit_s = min(limit_s, self.left() - keep_s)
        if limit_s < 5:
            self.say(f"{name}: skipped, {self.left():.0f} s left")
            return False
        self.say(f"{name}: {' '.join(args)} (limit {limit_s:.0f} s)")
        started = time.monotonic()
        # its own process group, so that a stop at the limit also ends its DataLoader workers
        proc = subprocess.Popen([sys.executable, *args], cwd=ROOT, env={**os.environ, **QUIET},
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
        try:
            text, _ = proc.communicate(timeout=limit_s)
            ok, status = proc.returncode == 0, f"status {proc.returncode}"
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            text, _ = proc.communicate()
            ok, status = False, "stopped at its time limit"
        self.log.write(text)
        if output is not None:
            output.write_text(text)
        self.say(f"{name}: {status} after {time.monotonic() - started:.0f} s")
        return ok


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


def read_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def training_mode(bench_json: Path, amp: str) -> tuple[list[str], float, float, str]:
    """The train.py settings of the fastest way to train in `amp` that the training benchmark measured
    (compiled or not, patches from the loader or made on the device), its patches per second as fed (the
    step's rate, capped by the loader's patches or draws per second), its warm-up seconds (compiling),
    and its name; ([], 0, 0, '') if nothing was measured."""
    measured = read_json(bench_json)
    loader = measured.get('loader') or {}
    best = None
    for row in measured.get('train', []):
        if row['path'] == 'fast' and row['amp'] == amp:
            feed = loader.get('patches_per_s' if row['data'] == 'loader' else 'draws_per_s', math.inf)
            rate = min(row['patches_per_s'], feed)
            if best is None or rate > best[0]:
                best = (rate, row)
    if best is None:
        return [], 0.0, 0.0, ''
    rate, row = best
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
    infer = read_json(first / 'bench_infer.json')
    goals = (render_goals(infer) + compile_goals(infer) + train_goals(read_json(first / 'bench_train.json'))
             + fidelity_goals(first, work))
    return '\n'.join(["| goal | target | measured | met |", "|---|---|---|---|"]
                     + [f"| {' | '.join(goal)} |" for goal in goals]) + '\n'


def write_report(stages: Stages, first: Path, work: Path) -> None:
    """work/report.md: the machine and versions, the goals against what was measured, then each stage's
    output; the measurements are the whole check's (in `first`, which is `work` unless --train_only)."""
    def section(title: str, path: Path, lines: int | None = None) -> str:
        if not path.is_file():
            return f"## {title}\n\n(not run)\n"
        text = path.read_text().strip().splitlines()
        return f"## {title}\n\n" + '\n'.join(text[-lines:] if lines else text) + '\n'
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else 'CPU (dry run)'
    parts = [f"# GPU self-check on {device}, torch {torch.__version__}, CUDA {torch.version.cuda}, "
             f"{os.cpu_count()} CPU cores\n", "## Goals\n\n" + goals_table(first, work),
             section('CUDA tests', first / 'tests.log', 1), section('Rendering', first / 'bench_infer.md'),
             section('Training steps and the data', first / 'bench_train.md'),
             "## test.py with the official weights against the official scores\n\n" + official_table(first)]
    parts += [section(f'test.py, official weights, {amp}', first / f'test_official_{amp}/test_results.md')
              for amp in ('fp32', 'bf16')]
    parts += [section('test.py, the weights trained here', work / 'test_trained/test_results.md')]
    (work / 'report.md').write_text('\n'.join(parts))
    stages.say(f"report: {work / 'report.md'}")


def pack(stages: Stages, work: Path, out: Path, weights: Path | None) -> None:
    """At most 8 files into out: the log, the report, the small results as one tar.gz (without the
    TensorBoard events, whose image panels can be large), the weights, the training checkpoint in parts."""
    out.mkdir(parents=True, exist_ok=True)
    with tarfile.open(out / 'results.tar.gz', 'w:gz') as tar:
        for path in sorted(work.rglob('*')):
            if path.is_file() and path.suffix not in ('.pth', '.tmp') and 'tfevents' not in path.name:
                tar.add(path, arcname=str(path.relative_to(work)))
    if weights is not None:
        shutil.copyfile(weights, out / weights.name)
    last = work / 'train' / 'last.pth'
    if last.is_file():
        data, part = last.read_bytes(), 15 * 2 ** 20
        for i in range(0, len(data), part):
            (out / f'last.pth.part-{i // part:02d}').write_bytes(data[i:i + part])
    stages.say(f"packed into {out}: {', '.join(sorted(p.name for p in out.iterdir()))}")
    stages.log.flush()
    shutil.copyfile(work / 'report.md', out / 'report.md')
    shutil.copyfile(work / 'check.log', out / 'check.log')


def checks(stages: Stages, sizes: dict, work: Path, shared: Path, benchmark: Path) -> None:
    """The CUDA tests, the benchmarks, test.py with the official weights on `benchmark`: each within its
    limit, all stopping early enough to leave the training TRAIN_MIN_S."""
    limits, keep = sizes['limits'], TRAIN_MIN_S + TEST_RESERVE_S
    stages.run('CUDA tests', ['-m', 'pytest', '-q', '-rs', 'tests/test_cuda.py'], limits['tests'], work / 'tests.log',
               keep)
    stages.run('render benchmark', ['scripts/benchmark.py', *sizes['bench_infer'], f"--json={work / 'bench_infer.json'}"],
               limits['bench_infer'], work / 'bench_infer.md', keep)
    stages.run('training benchmark', ['scripts/benchmark.py', '--sizes=0', '--train', '--loader',
                                      f'--train_dir={training_folders(shared)}', *sizes['bench_train'],
                                      f"--json={work / 'bench_train.json'}"], limits['bench_train'],
               work / 'bench_train.md', keep)
    for amp in sizes['amps']:
        stages.run(f'test.py official {amp}', ['test.py', f'--test_root={benchmark}', f"--test_sets={sizes['test_sets']}",
                                               f"--test_scales={sizes['test_scales']}", f'--amp={amp}',
                                               f"--out_dir={work / f'test_official_{amp}'}"], limits['test'], keep_s=keep)


def train_and_test(stages: Stages, sizes: dict, work: Path, shared: Path, benchmark: Path, bench_json: Path,
                   steps: int) -> Path | None:
    """Training for the minutes left (continuing earlier weights, in the fastest measured way), its
    curves, then test.py on its weights (on `benchmark`); returns the weights file (None if nothing was
    trained)."""
    previous, steps_before = previous_weights() if sizes['continue_weights'] else (None, 0)
    train_s = stages.left() - TEST_RESERVE_S
    cfg = settings.parse([f'--experiment={EXPERIMENT}', *sizes['train']])
    mode, rate, warmup_s, name = training_mode(bench_json, cfg.amp)
    steps = steps or sizes['steps'] or planned_steps(rate, cfg.batch_size, train_s - STARTUP_S - warmup_s)
    stages.say(f"training: {train_s:.0f} s left for it, {steps} steps planned ({name or 'no rate measured'}, "
               f"{rate:.0f} patches/s)" + (f", continuing {previous.name} ({steps_before} steps)" if previous else ''))
    if steps <= 10:
        stages.say("training: skipped (no step rate measured, or no time left)")
        return None
    train_args = ['train.py', f'--experiment={EXPERIMENT}', f'--train_dir={training_folders(shared)}',
                  f"--valid_dir={benchmark / 'Set5'}", f"--out_dir={work / 'train'}", f'--max_steps={steps}',
                  '--epochs=100000', '--valid_every=5', '--save_every=100000', *mode, *sizes['train'],
                  *([f'--init_weights={previous}'] if previous else [])]
    stages.run('training', train_args, train_s)
    if not (work / 'train' / 'last.pth').is_file():
        return None
    weights = save_weights(work, work / 'train' / 'last.pth', steps_before)
    stages.run('curves', ['scripts/plot_curves.py', str(work / 'train'), str(work / 'training_curves.png')], 30)
    stages.run('test.py trained', ['test.py', f'--weights={weights}', f'--test_root={benchmark}',
                                   f"--test_sets={sizes['test_sets']}", f"--test_scales={sizes['test_scales']}",
                                   f"--out_dir={work / 'test_trained'}"], stages.left() - 10)
    return weights


def training_folders(shared: Path) -> str:
    train = shared / 'data' / ('train-webp' if (shared / 'data/train-webp').is_dir() else 'train')
    return f"{train / 'T91'},{train / 'BSDS200'}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--bundle', action='store_true', help="copy the data and weights of --shared into .device/ and stop")
    parser.add_argument('--shared', default='', help="folder with data/ and weights/ (default: .device/ if present, "
                        "else ../shared)")
    parser.add_argument('--dry_run', action='store_true', help="every stage on the CPU at tiny sizes")
    parser.add_argument('--train_only', action='store_true',
                        help="a second run on the same machine: only training (continued) and test.py")
    parser.add_argument('--deadline', type=float, default=515, help="seconds from start by which the check is done")
    parser.add_argument('--steps', type=int, default=0, help="training steps (0: as many as the measured rate fits)")
    parser.add_argument('--pack', default='', help="also copy the results into at most 8 files in this folder")
    args = parser.parse_args()
    if args.bundle:
        bundle(Path(args.shared) if args.shared else SHARED)
        return
    shared = Path(args.shared) if args.shared else BUNDLE if BUNDLE.is_dir() else SHARED
    if not all(Path(p).is_dir() for p in training_folders(shared).split(',')) \
            or not (shared / 'weights/edsr-baseline-liif.pth').is_file():
        print(f"error: {shared} lacks data/train(-webp)/T91 and BSDS200 or weights/edsr-baseline-liif.pth "
              f"(--shared=DIR, or --bundle)", file=sys.stderr)
        sys.exit(2)
    mode = 'dry_run' if args.dry_run else 'gpu'
    work = CHECKS / (mode + ('-more' if args.train_only else ''))
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    stages = Stages(work, args.deadline)
    stages.say(f"{mode}: torch {torch.__version__}, CUDA {torch.version.cuda} (available: {torch.cuda.is_available()}), "
               f"{os.cpu_count()} cores" + (f", {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ''))
    PRETRAINED.mkdir(parents=True, exist_ok=True)
    if not OFFICIAL.exists():
        shutil.copyfile(shared / 'weights/edsr-baseline-liif.pth', OFFICIAL)

    first = CHECKS / mode  # the whole check's measurements, also for a --train_only run after it
    benchmark = shared / 'data/benchmark' if (shared / 'data/benchmark').is_dir() else ROOT / 'tests/data/benchmark'
    benchmark = tiny_benchmark(benchmark, work) if args.dry_run else benchmark
    if not args.train_only:
        checks(stages, SIZES[mode], work, shared, benchmark)
    weights = train_and_test(stages, SIZES[mode], work, shared, benchmark, first / 'bench_train.json', args.steps)
    write_report(stages, first, work)
    if args.pack:
        pack(stages, work, Path(args.pack), weights)


if __name__ == '__main__':
    main()
