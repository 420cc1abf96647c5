"""Several processes under torchrun, on the CPU (gloo): inference.py, test.py and train.py give what one
process gives; the work is split by cost; a failing or killed process ends the run cleanly and a rerun
finishes it; the training images are decoded once per node into a shared, read-only, memory-mapped file."""
import csv
import itertools
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch.distributed as dist

import distributed
import inference
import train
from dataset import PairedDataset, TrainDataset, list_images
from helpers import ROOT, STEPS_PER_EPOCH, assert_same_tensors, load, load_test_script, same_items, tiny
from imgproc import load_uint8, write_image

test_script = load_test_script()

pytestmark = pytest.mark.usefixtures('one_thread')

# A launch of two processes starts three interpreters that each import torch: ~20 s in all on 2 cores at a
# load of 6 (`import torch` alone takes ~10 s there); a machine three times as busy still fits.
LAUNCH_TIMEOUT = 300
SCALE = 3  # x3 of ~40 px crops: about a second per image and process on one busy core
CROPS = [('baby', 200, 180, 40, 36), ('bird', 60, 90, 44, 40), ('butterfly', 100, 120, 41, 36),
         ('head', 60, 90, 36, 30), ('woman', 100, 80, 48, 32), ('baby', 20, 20, 30, 30)]


def torchrun(args: list[str], nproc: int = 2, launch: list[str] | None = None, **popen) -> list[str]:
    """The command line of a torchrun launch of `nproc` processes per node (one node by default)."""
    launch = ['--standalone'] if launch is None else launch
    return [sys.executable, '-m', 'torch.distributed.run', *launch, f'--nproc_per_node={nproc}', *args]


def run(cmd: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=ROOT, env={**os.environ, 'OMP_NUM_THREADS': '1'}, capture_output=True,
                          text=True, timeout=LAUNCH_TIMEOUT)


def error_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith('error:')]


@pytest.fixture(scope='module')
def frames(benchmark_root, tmp_path_factory) -> Path:
    """A folder of six small crops of Set5, of different sizes (so of different costs)."""
    folder = tmp_path_factory.mktemp('frames')
    for i, (name, y, x, h, w) in enumerate(CROPS):
        hr = cv2.imread(str(benchmark_root / 'Set5' / 'HR' / f'{name}.png'))
        cv2.imwrite(str(folder / f'{i}_{name}.png'), hr[y:y + h, x:x + w])
    return folder


def infer_args(source: Path, out: str, weights: Path, *extra: str) -> list[str]:
    return [f'--input={source}', f'--output={out}', f'--weights={weights}', f'--scale={SCALE}', '--device=cpu', *extra]


@pytest.fixture(scope='module')
def alone(frames, official_weights, tmp_path_factory) -> dict[str, bytes]:
    """{file name: bytes} of the outputs of one process (in this process, with one thread)."""
    out = tmp_path_factory.mktemp('alone')
    written = inference.main(infer_args(frames, f'{out}/', official_weights))
    assert len(written) == len(CROPS)
    return {path.name: path.read_bytes() for path in written}


def outputs(folder: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(folder.glob('*.png')) if not path.name.startswith('.')}


# ---- the split and the plain run

def brute_force_best(costs: list[float], world_size: int) -> float:
    """The smallest largest-share cost over every assignment of items to shares."""
    return min(max(sum(c for c, s in zip(costs, assign) if s == r) for r in range(world_size))
               for assign in itertools.product(range(world_size), repeat=len(costs)))


@pytest.mark.parametrize('costs, world_size', [([7, 5, 4, 3, 3, 2, 1], 2), ([9, 8, 2, 2, 2, 1, 1, 1], 3),
                                               ([5.5, 1, 1, 1, 1, 1], 2), ([3, 3], 4), ([], 2)])
def test_shares_cover_every_item_once_and_balance_the_cost(costs, world_size):
    split = distributed.shares(costs, world_size)
    assert len(split) == world_size and sorted(i for share in split for i in share) == list(range(len(costs)))
    assert all(share == sorted(share) for share in split)
    assert distributed.shares(list(costs), world_size) == split  # the same on every process
    if costs:  # longest-first greedy is within 4/3 of the best split (Graham, 1969)
        largest = max(sum(costs[i] for i in share) for share in split)
        assert largest <= 4 / 3 * brute_force_best(costs, world_size) + 1e-9
    assert sum(not share for share in split) >= world_size - len(costs)  # more processes than items


def test_a_plain_run_never_initialises_torch_distributed(frames, official_weights, tmp_path, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError('init_process_group called in a plain run')
    monkeypatch.setattr(dist, 'init_process_group', refuse)
    for name in ('RANK', 'WORLD_SIZE', 'LOCAL_RANK', 'MASTER_ADDR', 'MASTER_PORT'):
        monkeypatch.delenv(name, raising=False)
    [written] = inference.main(infer_args(frames / '3_head.png', f'{tmp_path}/', official_weights))
    assert written.is_file() and not dist.is_initialized() and distributed.reports_error()


def test_before_the_processes_meet_one_process_per_node_reports(monkeypatch):
    """Settings refused before the process group exists are the same for every process: the first
    process of each node says so."""
    monkeypatch.setattr(distributed, '_team', None)
    for local_rank, reports in (('0', True), ('1', False), ('3', False)):
        monkeypatch.setenv('LOCAL_RANK', local_rank)
        assert distributed.reports_error() == reports


# ---- inference.py

def free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_nodes_meet_on_localhost_with_more_processes_than_images(frames, official_weights, alone, tmp_path):
    """Two torchrun launches (--nnodes=2, one process each) meet through the c10d rendezvous on 127.0.0.1,
    for one image (an image input: always written, over an old file): one process has nothing to do."""
    name = sorted(alone)[3]
    (tmp_path / 'out').mkdir()
    (tmp_path / 'out' / name).write_bytes(b'an old output')
    launch = ['--nnodes=2', '--rdzv_backend=c10d', f'--rdzv_endpoint=127.0.0.1:{free_port()}',
              f'--rdzv_id={uuid.uuid4().hex}']
    source = frames / name.replace(f'_x{SCALE}', '')
    cmd = torchrun(['inference.py', *infer_args(source, f'{tmp_path}/out/', official_weights)], 1, launch)
    logs = [(open(tmp_path / f'node{n}.out', 'w'), open(tmp_path / f'node{n}.err', 'w')) for n in range(2)]
    nodes = [subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, 'OMP_NUM_THREADS': '1'}, stdout=out, stderr=err)
             for out, err in logs]
    codes = [node.wait(timeout=LAUNCH_TIMEOUT) for node in nodes]
    for log in itertools.chain(*logs):
        log.close()
    assert codes == [0, 0], (tmp_path / 'node0.err').read_text()[-2000:] + (tmp_path / 'node1.err').read_text()[-2000:]
    assert outputs(tmp_path / 'out') == {name: alone[name]}
    said = (tmp_path / 'node0.out').read_text() + (tmp_path / 'node1.out').read_text()
    assert said.count('1 output(s) written into') == 1 and 'by 2 processes' in said


def children(pid: int) -> dict[int, str]:
    """{pid: RANK} of the worker processes of a torchrun process."""
    kids = Path(f'/proc/{pid}/task/{pid}/children').read_text().split()
    ranks = {}
    for kid in kids:
        env = dict(entry.split(b'=', 1) for entry in Path(f'/proc/{kid}/environ').read_bytes().split(b'\0') if b'=' in entry)
        ranks[int(kid)] = env.get(b'RANK', b'').decode()
    return ranks


@pytest.mark.slow
def test_a_killed_process_ends_the_run_and_the_rerun_finishes_it(frames, official_weights, alone, tmp_path):
    cmd = torchrun(['inference.py', *infer_args(frames, f'{tmp_path}/', official_weights)])
    with open(tmp_path / 'log.txt', 'w') as log:
        launch = subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, 'OMP_NUM_THREADS': '1'}, stdout=log, stderr=log)
        deadline = time.monotonic() + LAUNCH_TIMEOUT
        while not outputs(tmp_path) and launch.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        workers = children(launch.pid)
        [victim] = [pid for pid, rank in workers.items() if rank == '1']
        os.kill(victim, signal.SIGKILL)
        assert launch.wait(timeout=LAUNCH_TIMEOUT) != 0
    assert not any(Path(f'/proc/{pid}').exists() for pid in workers)  # the other process stopped too
    done_before = outputs(tmp_path)
    assert 0 < len(done_before) < len(alone)  # killed mid-run
    assert all(alone[name] == data for name, data in done_before.items())  # nothing half-written
    leftovers = [path.name for path in tmp_path.glob('.*')]
    assert all(f'.{victim}.' in name for name in leftovers)  # the survivor removed its temporary file

    rerun = run(cmd)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert f'skipping {len(done_before)} of {len(alone)} images' in rerun.stdout
    assert outputs(tmp_path) == alone  # two processes write the bytes one writes
    left = len(alone) - len(done_before)
    assert rerun.stdout.count(f'{left} output(s) written into') == 1  # rank 0's summary, once
    assert 'px/s' not in rerun.stderr  # no per-image bars: one bar of images, on rank 0
    assert re.search(rf'inference: 100%.*{left}/{left}', rerun.stderr)


@pytest.mark.slow
def test_a_failing_image_stops_every_process_with_one_error_line(frames, official_weights, tmp_path):
    folder = tmp_path / 'in'
    folder.mkdir()
    for path in sorted(frames.glob('*.png'))[:3]:
        (folder / path.name).write_bytes(path.read_bytes())
    good = (frames / '3_head.png').read_bytes()
    (folder / '3_broken.png').write_bytes(good[:len(good) // 2])  # its header reads, its pixels do not
    done = run(torchrun(['inference.py', *infer_args(folder, f'{tmp_path}/out/', official_weights)]))
    assert done.returncode != 0  # torchrun's own exit status for a failed worker (1)
    [line] = error_lines(done.stderr)
    assert '3_broken.png' in line and 'truncated or damaged' in line
    assert 'exitcode  : 2' in done.stderr  # the failing process's status, in torchrun's report
    assert not (tmp_path / 'out' / f'3_broken_x{SCALE}.png').exists()


# ---- test.py

@pytest.fixture(scope='module')
def tiny_set(benchmark_root, tmp_path_factory) -> Path:
    """A benchmark folder of three small HR crops (every scale made on the fly)."""
    root = tmp_path_factory.mktemp('bench')
    (root / 'Tiny' / 'HR').mkdir(parents=True)
    for name, y, x, h, w in CROPS[:3]:
        hr = cv2.imread(str(benchmark_root / 'Set5' / 'HR' / f'{name}.png'))
        cv2.imwrite(str(root / 'Tiny' / 'HR' / f'{name}.png'), hr[y:y + h, x:x + w])
    return root


@pytest.mark.slow
def test_two_processes_write_the_tables_one_writes(tiny_set, official_weights, tmp_path):
    args = [f'--test_root={tiny_set}', '--test_sets=Tiny', '--test_scales=[2,3.5]', f'--weights={official_weights}',
            '--device=cpu', '--save_images=True']
    test_script.main([*args, f'--out_dir={tmp_path / "one"}'])
    done = run(torchrun(['test.py', *args, f'--out_dir={tmp_path / "two"}']))
    assert done.returncode == 0, done.stderr[-3000:]
    for name in ('test_results.csv', 'test_results.md', 'test_per_image.csv'):
        assert (tmp_path / 'two' / name).read_bytes() == (tmp_path / 'one' / name).read_bytes(), name
    with open(tmp_path / 'two' / 'test_per_image.csv', newline='') as f:
        assert len(list(csv.DictReader(f))) == 6
    saved = sorted(p.relative_to(tmp_path / 'two') for p in (tmp_path / 'two' / 'images').rglob('*.png'))
    assert saved == sorted(p.relative_to(tmp_path / 'one') for p in (tmp_path / 'one' / 'images').rglob('*.png'))
    assert done.stdout.count('Tiny x3.5: PSNR') == 1  # rank 0 alone reports


# ---- train.py and the node's shared cache

@pytest.mark.slow
def test_a_ddp_step_equals_one_process_with_the_same_global_batch(data, tmp_path):
    single = tmp_path / 'single'
    train.main(tiny(data, single, '--epochs=1'))
    out, cache = tmp_path / 'ddp', tmp_path / 'cache'
    done = run(torchrun(['train.py', *tiny(data, out, '--epochs=1'), f'--cache_dir={cache}']))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert done.stdout.count('training on cpu x 2 process(es)') == 1  # only rank 0 reports
    assert len(list((out / 'tensorboard').glob('events.out.tfevents.*'))) == 1  # and writes
    ddp = load(out / 'last.pth')
    assert (ddp['epoch'], ddp['step']) == (1, STEPS_PER_EPOCH)
    # batch 2 as 1 + 1 on two processes, gradients averaged: equal up to float32 summation order (the
    # two halves' mean against the whole batch's), ~1e-7 relative per step over a few steps
    assert_same_tensors(ddp['model'], load(single / 'last.pth')['model'], atol=1e-5)
    [index] = cache.glob('*.json')  # decoded once, by the node's first process
    files = list_images(data / 'train')
    assert (cache / f'{index.stem}.u8').stat().st_size == sum(load_uint8(p).nbytes for p in files)


def test_cached_images_give_the_items_of_decoded_ones(train_root, tmp_path):
    folders = [train_root / 'T91', train_root / 'BSDS200']
    kept = TrainDataset(folders, patch_size=12, sample_q=50, first_k=8, seed=3)
    cached = TrainDataset(folders, patch_size=12, sample_q=50, first_k=8, seed=3, cache_dir=tmp_path)
    assert not cached.images[0].flags.writeable  # read-only pages, shared by whoever maps them
    for epoch in (1, 2):
        kept.set_epoch(epoch)
        cached.set_epoch(epoch)
        assert all(same_items(kept[i], cached[i]) for i in range(len(kept)))
    data = next(tmp_path.glob('*.u8'))
    before = data.stat().st_mtime_ns
    again = TrainDataset(folders, patch_size=12, sample_q=50, first_k=8, seed=3, cache_dir=tmp_path)
    again.set_epoch(2)
    assert data.stat().st_mtime_ns == before and same_items(again[5], cached[5])  # found, not written again


def test_paired_images_from_the_cache(tmp_path):
    rng = np.random.default_rng(0)
    for name in ('a', 'b'):
        write_image(tmp_path / 'hr' / f'{name}.png', rng.integers(0, 256, (40, 36, 3), dtype=np.uint8))
        write_image(tmp_path / 'lr' / f'{name}.png', rng.integers(0, 256, (20, 18, 3), dtype=np.uint8))
    kept = PairedDataset(tmp_path / 'lr', tmp_path / 'hr', patch_size=8, sample_q=30, repeat=3)
    cached = PairedDataset(tmp_path / 'lr', tmp_path / 'hr', patch_size=8, sample_q=30, repeat=3,
                           cache_dir=tmp_path / 'cache')
    assert all(same_items(kept[i], cached[i]) for i in range(len(kept)))
    assert len(list((tmp_path / 'cache').glob('*.u8'))) == 2  # the LR and the HR images


def test_a_changed_folder_is_decoded_again(tmp_path):
    img = np.full((30, 30, 3), 40, np.uint8)
    write_image(tmp_path / 'train' / 'a.png', img)
    first = distributed.shared_images(list_images(tmp_path / 'train'), tmp_path / 'cache')
    os.utime(tmp_path / 'train' / 'a.png', ns=(0, 10 ** 9))  # a new modification time alone
    second = distributed.shared_images(list_images(tmp_path / 'train'), tmp_path / 'cache')
    write_image(tmp_path / 'train' / 'a.png', img + 1)
    third = distributed.shared_images(list_images(tmp_path / 'train'), tmp_path / 'cache')
    assert len(list((tmp_path / 'cache').glob('*.json'))) == 3
    assert (first[0] == 40).all() and (second[0] == 40).all() and (third[0] == 41).all()


def test_a_cache_folder_without_room_is_refused_before_any_work(tmp_path, monkeypatch):
    write_image(tmp_path / 'train' / 'a.png', np.zeros((100, 50, 3), np.uint8))
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(distributed.shutil, 'disk_usage', lambda path: usage._replace(free=14_999))
    with pytest.raises(ValueError, match=re.escape(f"cache_dir {tmp_path / 'cache'}: the 1 decoded training images "
                                                   f"need 0.00 GB (15,000 bytes) but 0.00 GB are free")):
        distributed.shared_images(list_images(tmp_path / 'train'), tmp_path / 'cache')
    assert not any((tmp_path / 'cache').iterdir())
