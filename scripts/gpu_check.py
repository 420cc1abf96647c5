"""GPU self-check: everything this project does on a CUDA GPU, in one command, with a report.

    python scripts/gpu_check.py                        # on a CUDA machine; stops itself by --deadline
    python scripts/gpu_check.py --deadline=1800        # half an hour: a longer training stage

Stages, each within a time limit and together within --deadline seconds: the CUDA tests
(tests/test_cuda.py), the inference benchmark (reference fp32 vs fast fp32 / bf16 / fp16 / compiled),
the training benchmark with the DataLoader, test.py with the official weights in fp32 and bf16 on
Set5 + Set14 x2-x8, then `--experiment=edsr-baseline-liif-short` on the 291 images (T91 + BSDS200) for
the minutes left (steps from the measured rate, or --steps), its training curves, and test.py on the
weights it made. Everything lands in results/gpu_check/<mode>/, with report.md summing it up; the
trained weights are saved as edsr-baseline-liif-291-<sha256[:8]>.pth (the name they are published under
in results/pretrained_models/, where the next check's training starts from the longest-trained).

Data: --data=DIR holds benchmark/<Set>/{HR,LR_bicubic} and train/{T91,BSDS200}; the official weights
come from results/pretrained_models/edsr-baseline-liif.pth. To take the check to a machine without
those folders, bundle them first (57 MB; .device/ is git-ignored and read by default when present):

    python scripts/gpu_check.py --bundle               # ../shared (data/, weights/) -> .device/

--pack=DIR copies the report and results into at most 8 files under DIR (the small files as one
results.tar.gz, the weights, the training checkpoint in 15 MiB parts: `cat last.pth.part-* > last.pth`).
--train_only, a second run on the same machine: training continued from the weights the first made,
and test.py. --dry_run: every stage on the CPU at tiny sizes (about a minute), to check the script.
"""
import argparse
import hashlib
import json
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
import config  # noqa: E402
from imgproc import replacing  # noqa: E402

SHARED = ROOT.parent / 'shared'
BUNDLE = ROOT / '.device'  # data/benchmark, data/train/{T91,BSDS200} (WebP), weights/
PRETRAINED = ROOT / 'results/pretrained_models'
CHECKS = ROOT / 'results/gpu_check'  # <mode>/ for the whole check, <mode>-more/ for a --train_only run after it
OFFICIAL = PRETRAINED / 'edsr-baseline-liif.pth'  # where test.py and the benchmark look by default
EXPERIMENT = 'edsr-baseline-liif-short'
TEST_RESERVE_S = 75  # test.py on the trained weights (Set5 + Set14, 5 scales) and the report, after training
STARTUP_S = 30  # train.py before its first step: decoding the 291 images, workers, CUDA context
QUIET = {'TQDM_MININTERVAL': '10', 'PYTHONUNBUFFERED': '1'}  # progress bars every 10 s keep the log short

# per mode: the sizes each stage runs at (the dry run only proves that every stage runs through)
SIZES = {
    'gpu': dict(bench_infer=['--sizes=256,512', '--scales=4,30', '--repeats=1', '--warmup=1', '--psnr'],
                bench_train=['--train_steps=20', '--train_warmup=5', '--loader_batches=200'],
                train=[], test_sets='Set5,Set14', test_scales='2,3,4,6,8', amps=['fp32', 'bf16'],
                test_limit_s=40, bench_limit_s=150, max_steps_cap=10 ** 9, continue_weights=True),
    'dry_run': dict(bench_infer=['--sizes=16', '--scales=4,30', '--repeats=1', '--warmup=0', '--device=cpu'],
                    bench_train=['--batch=2', '--sample_q=64', '--patch_size=16', '--train_steps=2',
                                 '--train_warmup=1', '--loader_batches=3', '--device=cpu'],
                    train=['--patch_size=16', '--sample_q=64', '--batch_size=4', '--hidden_list=[32]',
                           '--amp=fp32', '--warmup_steps=2', '--repeat=1', '--device=cpu', '--num_workers=1'],
                    test_sets='Set5', test_scales='8', amps=['fp32'],
                    test_limit_s=150, bench_limit_s=100, max_steps_cap=12,
                    continue_weights=False),  # the tiny model cannot start from real weights
}


def bundle() -> None:
    """Copy the data and weights the check reads from ../shared into .device/ (git-ignored)."""
    copies = [(SHARED / 'data/benchmark', BUNDLE / 'data/benchmark'),
              (SHARED / 'data/train-webp', BUNDLE / 'data/train'),
              (SHARED / 'weights/edsr-baseline-liif.model-only.pth', BUNDLE / 'weights/edsr-baseline-liif.pth')]
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

    def run(self, name: str, args: list[str], limit_s: float, output: Path | None = None, env: dict | None = None) -> bool:
        """Run `python args` for at most limit_s (and never past the deadline); stdout to the log and
        to `output`. Returns whether it finished with status 0."""
        limit_s = min(limit_s, self.left())
        if limit_s < 5:
            self.say(f"{name}: skipped, {self.left():.0f} s left")
            return False
        self.say(f"{name}: {' '.join(args)} (limit {limit_s:.0f} s)")
        started = time.monotonic()
        # its own process group, so that a stop at the limit also ends its DataLoader workers
        proc = subprocess.Popen([sys.executable, *args], cwd=ROOT, env={**os.environ, **QUIET, **(env or {})},
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


def previous_weights() -> tuple[Path | None, int]:
    """The weights of an earlier check that trained longest (published, or left by an earlier run on
    this machine), and their step count; (None, 0) if there are none."""
    paths = [*PRETRAINED.glob('edsr-baseline-liif-291-*.pth'), *CHECKS.glob('*/edsr-baseline-liif-291-*.pth')]
    found = [(torch.load(path, map_location='cpu', weights_only=True)['step'], path) for path in paths]
    steps, path = max(found, default=(0, None))
    return path, steps


def planned_steps(bench_json: Path, batch: int, seconds: float) -> int:
    """Optimiser steps of `batch` that fit in `seconds`, from the training benchmark's fastest uncompiled
    fast-path rate, assuming time per step grows with the batch. On a large GPU a step of twice the batch
    takes about as long, so this errs on the short side (--steps sets the count)."""
    rows = json.loads(bench_json.read_text())['train'] if bench_json.is_file() else []
    rates = [r['patches_per_s'] for r in rows if r['path'] == 'fast' and not r['compile']]
    if not rates:
        return 0
    return int(0.85 * seconds * max(rates) / batch)  # 15 %: validation, checkpoints, epoch starts


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


def write_report(stages: Stages, work: Path) -> None:
    """report.md: the machine, then each stage's summary (test counts, benchmark tables, PSNR tables)."""
    def section(title: str, path: Path, lines: int | None = None) -> str:
        if not path.is_file():
            return f"## {title}\n\n(not run)\n"
        text = path.read_text().strip().splitlines()
        return f"## {title}\n\n" + '\n'.join(text[-lines:] if lines else text) + '\n'
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else 'CPU (dry run)'
    parts = [f"# GPU self-check on {device}, torch {torch.__version__}\n",
             section('CUDA tests', work / 'tests.log', 1), section('Inference', work / 'bench_infer.md'),
             section('Training steps and the data loader', work / 'bench_train.md')]
    parts += [section(f'test.py, official weights, {amp}', work / f'test_official_{amp}/test_results.md')
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


def checks(stages: Stages, sizes: dict, work: Path, mode: str, shared: Path, bench_json: Path) -> None:
    """The CUDA tests, the benchmarks, test.py with the official weights."""
    benchmark, train_dirs = shared / 'data/benchmark', training_folders(shared)
    stages.run('CUDA tests', ['-m', 'pytest', '-q', '-rs', 'tests/test_cuda.py'], 120, work / 'tests.log')
    stages.run('inference benchmark', ['scripts/benchmark.py', *sizes['bench_infer'],
                                       '--peak_tflops=989' if mode == 'gpu' else '--peak_tflops=0'],
               sizes['bench_limit_s'], work / 'bench_infer.md')
    stages.run('training benchmark', ['scripts/benchmark.py', '--sizes=0', '--train', '--loader',
                                      f'--train_dir={train_dirs}', *sizes['bench_train'], f'--json={bench_json}'],
               80, work / 'bench_train.md')
    for amp in sizes['amps']:
        stages.run(f'test.py official {amp}', ['test.py', f'--test_root={benchmark}', f"--test_sets={sizes['test_sets']}",
                                               f"--test_scales={sizes['test_scales']}", f'--amp={amp}',
                                               f"--out_dir={work / f'test_official_{amp}'}"], sizes['test_limit_s'])


def train_and_test(stages: Stages, sizes: dict, work: Path, shared: Path, bench_json: Path, steps: int) -> Path | None:
    """Training for the minutes left (continuing earlier weights), its curves, then test.py on its
    weights; returns the weights file (None if nothing was trained)."""
    benchmark = shared / 'data/benchmark'
    previous, steps_before = previous_weights() if sizes['continue_weights'] else (None, 0)
    train_s = stages.left() - TEST_RESERVE_S
    batch = config.parse([f'--experiment={EXPERIMENT}', *sizes['train']]).batch_size
    steps = steps or min(planned_steps(bench_json, batch, train_s - STARTUP_S), sizes['max_steps_cap'])
    stages.say(f"training: {train_s:.0f} s left for it, {steps} steps planned"
               + (f", continuing {previous.name} ({steps_before} steps)" if previous else ''))
    if steps <= 10:
        stages.say("training: skipped (no step rate measured, or no time left)")
        return None
    train_args = ['train.py', f'--experiment={EXPERIMENT}', f'--train_dir={training_folders(shared)}',
                  f"--valid_dir={benchmark / 'Set5'}", f"--out_dir={work / 'train'}", f'--max_steps={steps}',
                  '--epochs=100000', '--valid_every=5', '--save_every=100000', *sizes['train'],
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
    parser.add_argument('--bundle', action='store_true', help="copy ../shared's data and weights into .device/ and stop")
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
        bundle()
        return
    shared = Path(args.shared) if args.shared else BUNDLE if BUNDLE.is_dir() else SHARED
    if not (shared / 'data/benchmark').is_dir() or not (shared / 'weights/edsr-baseline-liif.pth').is_file():
        print(f"error: {shared} lacks data/benchmark or weights/edsr-baseline-liif.pth (--shared=DIR, or --bundle)",
              file=sys.stderr)
        sys.exit(2)
    mode = 'dry_run' if args.dry_run else 'gpu'
    work = CHECKS / (mode + ('-more' if args.train_only else ''))
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    stages = Stages(work, args.deadline)
    stages.say(f"{mode}: torch {torch.__version__}, CUDA {torch.cuda.is_available()}, {os.cpu_count()} cores"
               + (f", {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ''))
    PRETRAINED.mkdir(parents=True, exist_ok=True)
    if not OFFICIAL.exists():
        shutil.copyfile(shared / 'weights/edsr-baseline-liif.pth', OFFICIAL)
    if not (ROOT / 'data/benchmark').exists():  # where benchmark.py looks for its Set14 inputs
        (ROOT / 'data').mkdir(exist_ok=True)
        (ROOT / 'data/benchmark').symlink_to((shared / 'data/benchmark').resolve())

    bench_json = CHECKS / mode / 'bench_train.json'  # the whole check's, also for a --train_only run after it
    if not args.train_only:
        checks(stages, SIZES[mode], work, mode, shared, bench_json)
    weights = train_and_test(stages, SIZES[mode], work, shared, bench_json, args.steps)
    write_report(stages, work)
    if args.pack:
        pack(stages, work, Path(args.pack), weights)


if __name__ == '__main__':
    main()
