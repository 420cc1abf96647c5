"""The whole GPU session in one call: CUDA tests, inference and training benchmarks, training for the
minutes left, test.py on the result, everything small packed into $OUT. It stops itself before its
deadline (each stage has a time limit; training's step count comes from the measured step rate, with
a hard stop and per-epoch checkpoints behind it).

Prepare here (copies the shared data into the git-ignored .device/, 57 MB; the tree travels too):

    python scripts/gpu_job.py --prepare

The device `run` call (one call, at most 9 minutes):

    command:   python3 scripts/gpu_job.py --deadline=515
    carry:     [".device"]
    timeout_s: 540

With minutes left on the same (still warm) machine, more training from the weights just made, and test.py:

    command:   python3 scripts/gpu_job.py --train_only --deadline=SECONDS
    carry:     [".device"]

Dry run of every stage on this CPU with tiny sizes (about 5 minutes on 2 busy cores):

    OMP_NUM_THREADS=1 python scripts/gpu_job.py --dry_run --out=/tmp/gpu_job

Stages and their files: tests.log (pytest tests/test_cuda.py), bench_infer.md (reference fp32 vs fast
fp32 / bf16 / fp16 / compiled, LR 256 and 512 at x4 and x30, Set5 x4 PSNR per precision), bench_train.md
and .json (steps/s, memory, DataLoader patches/s), test_official_{fp32,bf16}/ (test.py with the official
weights, Set5 + Set14 x2-x8, wall time in the log), train/ (train.py --experiment=edsr-baseline-liif-short
on the 291 images, TensorBoard events, config), training_curves.png (scripts/plot_curves.py), test_trained/
(test.py on the trained weights). In $OUT:
job.log (all output), results.tar.gz (the small files above), the trained model weights (fp32 state
only, sha256 in the name) and the training checkpoint with optimiser state split in 15 MiB parts
(`cat last.pth.part-* > last.pth`).

Continuing an earlier run: when results/pretrained_models/edsr-baseline-liif-291-*.pth (weights from a
previous job, committed) exists, training starts from the one trained longest (--init_weights) with a fresh
warm-up and cosine cycle, and the new file records the steps of both. (An exact --resume with the
optimiser state needs the 19 MB training checkpoint, which does not fit beside the data in the 64 MiB
that travels; at the end of a finished cosine cycle a warm restart loses nothing that matters.)
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

SHARED = ROOT.parent / 'shared'
DEVICE_DIR = ROOT / '.device'  # data/benchmark, data/train/{T91,BSDS200} (WebP), weights/ (LIIF_SHARED layout)
PRETRAINED = ROOT / 'results/pretrained_models'
JOBS = ROOT / 'results/gpu_job'  # <mode>/ for the whole job, <mode>-more/ for a --train_only call after it
OFFICIAL = PRETRAINED / 'edsr-baseline-liif.pth'  # where test.py and the benchmark look by default
EXPERIMENT = 'edsr-baseline-liif-short'
TEST_RESERVE_S = 75  # test.py on the trained weights (Set5 + Set14, 5 scales) and packing, after training
STARTUP_S = 30  # train.py before its first step: decoding the 291 images, workers, CUDA context
QUIET = {'TQDM_MININTERVAL': '10', 'PYTHONUNBUFFERED': '1'}  # progress bars every 10 s keep the log short

# per mode: the sizes each stage runs at (the dry run only proves that every stage runs through)
SIZES = {
    'gpu': dict(bench_infer=['--sizes=256,512', '--scales=4,30', '--repeats=1', '--warmup=1', '--psnr'],
                bench_train=['--train_steps=20', '--train_warmup=5', '--loader_batches=200'],
                train=[], test_sets='Set5,Set14', test_scales='2,3,4,6,8', amps=['fp32', 'bf16'],
                test_limit_s=40, max_steps_cap=10 ** 9),
    'dry_run': dict(bench_infer=['--sizes=16', '--scales=4,30', '--repeats=1', '--warmup=0', '--device=cpu'],
                    bench_train=['--batch=2', '--sample_q=64', '--patch_size=16', '--train_steps=2',
                                 '--train_warmup=1', '--loader_batches=3', '--device=cpu'],
                    train=['--patch_size=16', '--sample_q=64', '--batch_size=4', '--hidden_list=[32]',
                           '--amp=fp32', '--warmup_steps=2', '--repeat=1', '--device=cpu', '--num_workers=1'],
                    test_sets='Set5', test_scales='8', amps=['fp32'],
                    test_limit_s=150, max_steps_cap=12),
}


def prepare() -> None:
    """Copy the data the job reads into .device/ (git-ignored, carried to the device machine)."""
    copies = [(SHARED / 'data/benchmark', DEVICE_DIR / 'data/benchmark'),
              (SHARED / 'data/train-webp', DEVICE_DIR / 'data/train'),
              (SHARED / 'weights/edsr-baseline-liif.model-only.pth', DEVICE_DIR / 'weights/edsr-baseline-liif.pth')]
    for src, dst in copies:
        if dst.exists():
            continue
        dst.parent.mkdir(parents=True, exist_ok=True)
        (shutil.copytree if src.is_dir() else shutil.copyfile)(src, dst)
    size = sum(p.stat().st_size for p in DEVICE_DIR.rglob('*') if p.is_file())
    print(f"{DEVICE_DIR}: {size / 1e6:.1f} MB (the working tree and .device travel within 64 MiB)")


class Job:
    """Runs the stages as subprocesses, each within its time limit and the job's deadline, into one log."""

    def __init__(self, work: Path, deadline_s: float):
        self.work, self.start, self.deadline_s = work, time.monotonic(), deadline_s
        self.log = open(work / 'job.log', 'a')

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
    """The weights of an earlier job that trained longest (committed, or left by an earlier call on this
    machine), and their step count; (None, 0) if there are none."""
    paths = [*PRETRAINED.glob('edsr-baseline-liif-291-*.pth'), *JOBS.glob('*/edsr-baseline-liif-291-*.pth')]
    found = [(torch.load(path, map_location='cpu', weights_only=True)['step'], path) for path in paths]
    steps, path = max(found, default=(0, None))
    return path, steps


def planned_steps(bench_json: Path, batch: int, seconds: float) -> int:
    """Optimiser steps of `batch` that fit in `seconds`, from the benchmark's fast bf16 (else fp32)
    rate at its batch, assuming time per step grows with the batch (the GPU is the bottleneck)."""
    rows = json.loads(bench_json.read_text())['train'] if bench_json.is_file() else []
    rates = {(r['amp'], r['compile']): r['patches_per_s'] for r in rows if r['path'] == 'fast'}
    patches_per_s = rates.get(('bf16', False)) or rates.get(('fp32', False))
    if not patches_per_s:
        return 0
    return int(0.85 * seconds * patches_per_s / batch)  # 15 %: validation, checkpoints, epoch starts


def save_weights(work: Path, checkpoint: Path, steps_before: int) -> Path:
    """The trained model state (fp32) and its total step count as work/edsr-baseline-liif-291-<sha256[:8]>.pth,
    the name it is committed under in results/pretrained_models/."""
    ckpt = torch.load(checkpoint, map_location='cpu', weights_only=True)
    state = {'model': ckpt['model'], 'options': ckpt['options'], 'step': steps_before + ckpt['step']}
    tmp = work / 'weights.tmp'
    torch.save(state, tmp)
    digest = hashlib.sha256(tmp.read_bytes()).hexdigest()
    path = work / f'edsr-baseline-liif-291-{digest[:8]}.pth'
    os.replace(tmp, path)
    return path


def pack(job: Job, work: Path, out: Path, weights: Path | None) -> None:
    """At most 8 files into out: the log, the small results as one tar.gz, the weights, the training
    checkpoint in parts under 16 MiB."""
    out.mkdir(parents=True, exist_ok=True)
    with tarfile.open(out / 'results.tar.gz', 'w:gz') as tar:
        for path in sorted(work.rglob('*')):
            if path.is_file() and path.suffix not in ('.pth', '.tmp') and path.name != 'job.log':
                tar.add(path, arcname=str(path.relative_to(work)))
    if weights is not None:
        shutil.copyfile(weights, out / weights.name)
    last = work / 'train' / 'last.pth'
    if last.is_file():
        data, part = last.read_bytes(), 15 * 2 ** 20
        for i in range(0, len(data), part):
            (out / f'last.pth.part-{i // part:02d}').write_bytes(data[i:i + part])
    job.say(f"packed into {out}: {', '.join(sorted(p.name for p in out.iterdir()))}")
    job.log.close()
    shutil.copyfile(work / 'job.log', out / 'job.log')


def checks(job: Job, sizes: dict, work: Path, mode: str, benchmark: Path, train_dirs: str, bench_json: Path) -> None:
    """Stages 1-3: the CUDA tests, the benchmarks, test.py with the official weights."""
    # ---- 1. CUDA tests (skipped without CUDA, which the dry run shows)
    job.run('CUDA tests', ['-m', 'pytest', '-q', '-rs', 'tests/test_cuda.py'], 120, work / 'tests.log',
            env={'LIIF_SHARED': str(DEVICE_DIR)})
    # ---- 2. benchmarks: inference, then training and the DataLoader
    job.run('inference benchmark', ['scripts/benchmark.py', *sizes['bench_infer'],
                                    '--peak_tflops=989' if mode == 'gpu' else '--peak_tflops=0'],
            100, work / 'bench_infer.md')
    job.run('training benchmark', ['scripts/benchmark.py', '--sizes=0', '--train', '--loader',
                                   f'--train_dir={train_dirs}', *sizes['bench_train'], f'--json={bench_json}'],
            80, work / 'bench_train.md')
    # ---- 3. test.py with the official weights, fp32 and bf16
    for amp in sizes['amps']:
        job.run(f'test.py official {amp}', ['test.py', f'--test_root={benchmark}', f"--test_sets={sizes['test_sets']}",
                                            f"--test_scales={sizes['test_scales']}", f'--amp={amp}',
                                            f"--out_dir={work / f'test_official_{amp}'}"], sizes['test_limit_s'])


def train_and_test(job: Job, sizes: dict, work: Path, out: str, benchmark: Path, train_dirs: str,
                   bench_json: Path) -> None:
    """Stage 4: training for the minutes left (continuing earlier weights), then test.py on its weights."""
    previous, steps_before = previous_weights()
    train_s = job.left() - TEST_RESERVE_S
    batch = config.parse([f'--experiment={EXPERIMENT}', *sizes['train']]).batch_size
    steps = min(planned_steps(bench_json, batch, train_s - STARTUP_S), sizes['max_steps_cap'])
    job.say(f"training: {train_s:.0f} s left for it, {steps} steps planned"
            + (f", continuing {previous.name} ({steps_before} steps)" if previous else ''))
    weights = None
    if steps > 10:
        train_args = ['train.py', f'--experiment={EXPERIMENT}', f'--train_dir={train_dirs}',
                      f"--valid_dir={benchmark / 'Set5'}", f"--out_dir={work / 'train'}", f'--max_steps={steps}',
                      '--epochs=100000', '--valid_every=5', '--save_every=100000', *sizes['train'],
                      *([f'--init_weights={previous}'] if previous else [])]
        job.run('training', train_args, train_s)
        if (work / 'train' / 'last.pth').is_file():
            weights = save_weights(work, work / 'train' / 'last.pth', steps_before)
            job.run('curves', ['scripts/plot_curves.py', str(work / 'train'), str(work / 'training_curves.png')], 30)
            job.run('test.py trained', ['test.py', f'--weights={weights}', f'--test_root={benchmark}',
                                        f"--test_sets={sizes['test_sets']}", f"--test_scales={sizes['test_scales']}",
                                        f"--out_dir={work / 'test_trained'}"], job.left() - 10)
    else:
        job.say("training: skipped (no step rate measured, or no time left)")
    pack(job, work, Path(out), weights)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--prepare', action='store_true', help="copy the data into .device/ and stop")
    parser.add_argument('--dry_run', action='store_true', help="every stage on the CPU at tiny sizes")
    parser.add_argument('--train_only', action='store_true',
                        help="a later call on the same machine: only training (continued) and test.py")
    parser.add_argument('--deadline', type=float, default=515, help="seconds from start by which the job is done")
    parser.add_argument('--out', default=os.environ.get('OUT', 'results/gpu_job/out'), help="folder for the files")
    args = parser.parse_args()
    if args.prepare:
        prepare()
        return
    mode = 'dry_run' if args.dry_run else 'gpu'
    sizes = SIZES[mode]
    work = JOBS / (mode + ('-more' if args.train_only else ''))
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    job = Job(work, args.deadline)
    if not DEVICE_DIR.is_dir():
        job.say(f"error: {DEVICE_DIR} is missing (python scripts/gpu_job.py --prepare, and carry '.device')")
        sys.exit(2)
    job.say(f"{mode}: torch {torch.__version__}, CUDA {torch.cuda.is_available()}, {os.cpu_count()} cores")
    if torch.cuda.is_available():
        job.say(f"device: {torch.cuda.get_device_name()}")
    PRETRAINED.mkdir(parents=True, exist_ok=True)
    if not OFFICIAL.exists():
        shutil.copyfile(DEVICE_DIR / 'weights/edsr-baseline-liif.pth', OFFICIAL)
    data = DEVICE_DIR / 'data'
    benchmark = data / 'benchmark'
    train_dirs = f"{data / 'train/T91'},{data / 'train/BSDS200'}"
    (ROOT / 'data').mkdir(exist_ok=True)
    if not (ROOT / 'data/benchmark').exists():
        (ROOT / 'data/benchmark').symlink_to(benchmark)  # where benchmark.py looks for Set14 inputs

    bench_json = JOBS / mode / 'bench_train.json'  # the whole job's, also for a --train_only call after it
    if not args.train_only:
        checks(job, sizes, work, mode, benchmark, train_dirs, bench_json)
    train_and_test(job, sizes, work, args.out, benchmark, train_dirs, bench_json)


if __name__ == '__main__':
    main()
