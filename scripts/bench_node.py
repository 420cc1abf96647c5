"""Memory and distributed runs on one node: train.py's memory with 1, 2, 4 processes, and inference.py's
speed with 2 processes against 1 on the same cores.

    python scripts/bench_node.py --memory --train_dir=T91,BSDS200   # node memory of 1, 2, 4 processes
    python scripts/bench_node.py --memory --stand_in=200            # the same on 200 DIV2K-sized images
    python scripts/bench_node.py --speed                            # inference.py: 2 processes vs 1

--memory runs train.py under torchrun (gloo, CPU; --memory_steps steps) with 1, 2 and 4 processes
(--procs), with and without the node's shared cache (node_cache), and samples the node's memory every
0.2 s: the sum of PSS (/proc/<pid>/smaps_rollup) over every process of the run (torchrun's agent, the
training processes, their DataLoader workers), largest sample. PSS splits a shared page among the
processes that map it, so the sum counts each page once; pages of the cache file that no process has
touched yet sit in the page cache and are not in any PSS, hence the second column, PSS + the cache file
(an upper bound on the node's memory). --stand_in=N writes N smooth synthetic PNGs of DIV2K's size
(2040x1356) into out_dir once and trains on them. --speed times inference.py on a folder of 8 real
128x128 crops at x4, alone (2 threads) and under torchrun (2 processes of 1 thread), alternately,
--repeats times; medians of whole commands (start-up included).
"""
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

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import config
from cli import run_main
from dataset import list_images
from imgproc import image_size
from precision import machine_name
from scripts.bench_train import train_dirs
from scripts.benchlib import ROOT, WEIGHTS, benchmark_root, load_model, parser, setup


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


def run_memory(args) -> None:
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


def run_speed(args) -> None:
    """inference.py on 8 real 128x128 crops at x4: one process of 2 threads vs torchrun's 2 processes of
    1 thread each, alternately, `repeats` times; medians of whole commands (start-up included)."""
    folder = Path(args.out_dir) / 'dist_speed'
    shutil.rmtree(folder, ignore_errors=True)
    (folder / 'in').mkdir(parents=True)
    for i, path in enumerate(list_images(benchmark_root() / 'Set14' / 'HR')[:8]):
        cv2.imwrite(str(folder / 'in' / f'{i}.png'), cv2.imread(str(path))[:128, :128])
    weights = WEIGHTS if WEIGHTS.is_file() else folder / 'random.pth'
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


def parse_args(argv: list[str]):
    p = parser(__doc__)
    p.add_argument('--memory', action='store_true', help="node memory (PSS) of 1, 2, 4 training processes")
    p.add_argument('--speed', action='store_true', help="inference.py: 2 processes vs 1 on the same cores")
    p.add_argument('--procs', default='1,2,4', help="--memory: process counts, comma-separated")
    p.add_argument('--memory_steps', type=int, default=10, help="--memory: training steps per run")
    p.add_argument('--stand_in', type=int, default=0, help="--memory on N DIV2K-sized synthetic images")
    p.add_argument('--train_dir', default='', help="training folders, comma-separated (default: DIV2K or the 291)")
    p.add_argument('--batch', type=int, default=config.batch_size, help="--memory: patches per training step")
    p.add_argument('--sample_q', type=int, default=config.sample_q, help="--memory: queries per patch")
    p.add_argument('--workers', type=int, default=config.num_workers, help="--memory: DataLoader workers asked for")
    args = p.parse_args(argv)
    try:
        args.procs = [int(n) for n in args.procs.split(',')]
    except ValueError:
        raise ValueError(f"--procs takes comma-separated process counts, got {args.procs!r}") from None
    if not (args.memory or args.speed):
        raise ValueError("say what to measure: --memory, --speed or both")
    return args


def main(argv: list[str]) -> None:
    args = parse_args(argv)
    setup(args)
    if args.memory:
        run_memory(args)
    if args.speed:
        run_speed(args)


if __name__ == '__main__':
    sys.exit(run_main(main, sys.argv[1:]))
