"""The processes of one command: a process alone, or those of a torchrun launch (one node or several),
and the one decoded copy of the training images that the processes of a node share (the node cache).

Team splits the work (rank 0 decides, the others receive its choice), counts finished items for one
progress bar, and carries a failure flag so that the first process to fail reports and the others stop
quietly. Collectives that only exchange Python objects use gloo and wait as long as the slowest process.
"""
import hashlib
import itertools
import json
import math
import os
import shutil
import signal
import socket
import sys
import threading
import time
import uuid
from contextlib import contextmanager
from datetime import timedelta
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from tqdm import tqdm

from files import replacing
from imgproc import image_size, load_uint8

TEAM_TIMEOUT = timedelta(hours=24)  # inference.py / test.py: how long a collective waits for the slowest process
POLL = 0.2  # seconds between looks at the store while waiting for another process


def under_torchrun() -> bool:
    """torchrun started this process: RANK and WORLD_SIZE are in its environment."""
    return 'RANK' in os.environ and 'WORLD_SIZE' in os.environ


def shares(costs: list[float], world_size: int) -> list[list[int]]:
    """The indices of items with these costs split into world_size shares of about equal total cost:
    the costliest first, each to the share with the least so far (ties: the lower rank); each share in
    item order. The same on every process; with more processes than items some shares are empty."""
    loads, split = [0.0] * world_size, [[] for _ in range(world_size)]
    for i in sorted(range(len(costs)), key=lambda i: (-costs[i], i)):
        rank = min(range(world_size), key=lambda r: (loads[r], r))
        loads[rank] += costs[i]
        split[rank].append(i)
    return [sorted(share) for share in split]


def cut(costs: list[int], frames: list[int], world_size: int) -> list[list[tuple[int, int, int]]]:
    """Each process's share of items of frames[i] frames costing costs[i] each, as (item, first, end)
    triples, in item order: items of one frame (images) whole, by `shares`; the frames of the others
    (videos) then fill each share up to an equal load, in item order, so that each share holds contiguous
    runs of frames (a frame goes to the share its middle falls in). The same on every process."""
    whole = [i for i in range(len(costs)) if frames[i] == 1]
    split = [[(whole[j], 0, 1) for j in share] for share in shares([costs[i] for i in whole], world_size)]
    loads = [sum(costs[i] for i, _, _ in share) for share in split]
    cuttable = [i for i in range(len(costs)) if frames[i] > 1]
    fill = sum(costs[i] * frames[i] for i in cuttable)
    room = [max(Fraction(sum(loads) + fill, world_size) - load, Fraction(0)) for load in loads]
    # share r takes the part [bounds[r], bounds[r + 1]) of the videos laid end to end
    bounds = list(itertools.accumulate((r * fill / sum(room) for r in room), initial=Fraction(0))) if fill else []
    at = 0
    for i in cuttable:
        # the first frame of each share: the first whose middle at + costs[i] * (f + 1/2) reaches its bound
        starts = [min(max(math.ceil((b - at) / costs[i] - Fraction(1, 2)), 0), frames[i]) for b in bounds[:-1]]
        for rank, (first, end) in enumerate(zip(starts, [*starts[1:], frames[i]])):
            if first < end:
                split[rank].append((i, first, end))
        at += costs[i] * frames[i]
    return [sorted(share) for share in split]


class Stopped(ValueError):
    """Another process of the run failed and reports it; this one stops without a word."""


def open_store() -> dist.TCPStore:
    """A client of the launch's key-value store: torchrun's rendezvous store, served by its agent (or,
    where the agent keeps it to itself, by rank 0 once the process group exists) at MASTER_ADDR:MASTER_PORT."""
    return dist.TCPStore(os.environ['MASTER_ADDR'], int(os.environ['MASTER_PORT']), is_master=False,
                         timeout=timedelta(minutes=5))


class Team:
    """The processes that run one command: a process alone (rank 0 of 1), or those of a torchrun launch.

    Under torchrun they split the work (rank 0 `decide`s, the others receive its choice) and keep in
    touch through the launch's own store: a count of finished items, which rank 0 shows as one progress
    bar, and a failure flag, raised by the first process that fails, which stops the others between
    items and keeps them from reporting the same error again. Keys start with a prefix rank 0 draws, so
    runs never share keys. Alone, each method does what one process needs."""

    def __init__(self, device: torch.device, rank: int = 0, world_size: int = 1, prefix: str = ''):
        self.device, self.rank, self.world_size, self.prefix = device, rank, world_size, prefix
        self.store = open_store() if world_size > 1 else None

    def add(self, name: str, value: int) -> int:
        """Add `value` to the run's counter `name` in the store; returns the sum."""
        try:
            return self.store.add(self.prefix + name, value)
        except RuntimeError:  # DistNetworkError: the agent that served the store has ended with its node
            raise ValueError("torchrun's store is gone (the node that served it has ended); run the command "
                             "again to finish the work") from None

    def failed(self) -> bool:
        return self.store is not None and self.add('failed', 0) > 0

    def claim_failure(self) -> bool:
        """Raise the failure flag; True for the first process that raises it (the one that reports)."""
        return self.add('failed', 1) == 1

    def check(self) -> None:
        """Stop, quietly, when another process has failed."""
        if self.failed():
            raise Stopped('another process of this run failed')

    def finished_one(self, count: int = 1) -> None:
        """Count one finished item, or `count` (frames of a video; rank 0's progress bar)."""
        if self.store is not None:
            self.add('done', count)

    def decide(self, choose):
        """choose() run by rank 0 alone and its value handed to every process (a plan, a split)."""
        if self.world_size == 1:
            return choose()
        value = [choose() if self.rank == 0 else None]
        self._collective(dist.broadcast_object_list, value, 0)
        return value[0]

    def gather(self, value) -> list | None:
        """Every process's value in rank order, at rank 0 (None at the others)."""
        if self.world_size == 1:
            return [value]
        values = [None] * self.world_size if self.rank == 0 else None
        self._collective(dist.gather_object, value, values, 0)
        return values

    def wait(self) -> None:
        """Return once every process has come here."""
        if self.world_size > 1:
            self._collective(dist.barrier)

    def _collective(self, op, *args) -> None:
        try:
            op(*args)
        except RuntimeError:  # DistBackendError: a process of the run has ended
            self.check()
            raise ValueError("a process of this run ended before finishing its share (killed?); run the "
                             "command again to finish the work") from None

    def first_on_node(self, make):
        """make() in the node's first process (LOCAL_RANK 0), then in the node's others once it returned
        there: the first prepares what the node shares (a file), the others find it ready."""
        if self.world_size == 1:
            return make()
        key = f"ready/{os.environ.get('GROUP_RANK', socket.gethostname())}"
        if int(os.environ.get('LOCAL_RANK', 0)) == 0:
            value = make()
            self.add(key, 1)
            return value
        while not self.add(key, 0):
            self.check()
            time.sleep(POLL)
        return make()

    @contextmanager
    def progress(self, total: int, desc: str, unit: str = 'img'):
        """Rank 0 of several: one bar of the items all processes have finished, read from the store by a
        thread (with a connection of its own) while the work goes on."""
        if self.world_size == 1 or self.rank != 0:
            yield
            return
        stop, store = threading.Event(), open_store()

        def show() -> None:
            with tqdm(total=total, desc=desc, unit=unit, dynamic_ncols=True) as bar:
                while True:
                    try:
                        bar.update(store.add(self.prefix + 'done', 0) - bar.n)
                    except RuntimeError:  # the store is gone: the main thread learns it too
                        return
                    if bar.n >= total or stop.is_set():
                        return
                    stop.wait(0.5)
        thread = threading.Thread(target=show, daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()


_team: Team | None = None  # this process's Team under torchrun: run_main asks it who reports an error


def join(device: torch.device, objects_only: bool = False) -> Team:
    """This process's Team. Alone (no torchrun): on `device`; torch.distributed is never touched. Under torchrun: joins the process group, one GPU per process (LOCAL_RANK) on CUDA;
    nccl there for training's tensors, gloo on the CPU and where the processes exchange only Python
    objects (`objects_only`: inference.py, test.py), whose collectives then wait as long as the slowest
    process works (TEAM_TIMEOUT) yet fail at once when a process dies. SIGTERM, by which torchrun stops
    the others when a process fails, becomes SystemExit, so that temporary files are removed."""
    global _team
    if not under_torchrun():
        return Team(device)
    if device.type == 'cuda':
        per_node = int(os.environ.get('LOCAL_WORLD_SIZE', 1))
        if per_node > torch.cuda.device_count():  # every process of the node says so: its first reports
            raise ValueError(f"torchrun started {per_node} processes on this node, which has "
                             f"{torch.cuda.device_count()} GPU(s): one process per GPU (or --device=cpu)")
        device = torch.device('cuda', int(os.environ.get('LOCAL_RANK', 0)))
        torch.cuda.set_device(device)
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    if objects_only or device.type == 'cpu':
        dist.init_process_group('gloo', timeout=TEAM_TIMEOUT if objects_only else None)
    else:
        dist.init_process_group('nccl')
    prefix = [f'liif/{uuid.uuid4().hex}/']
    dist.broadcast_object_list(prefix, 0)
    _team = Team(device, dist.get_rank(), dist.get_world_size(), prefix[0])
    return _team


def reports_error() -> bool:
    """Whether this process prints its error: alone, always; under torchrun, the first process of the
    run to fail (it raises the failure flag: the others' failures follow from its own), or, before the
    processes have met (the settings, the same for all), the first process of each node."""
    if _team is None or _team.store is None:
        return os.environ.get('LOCAL_RANK', '0') == '0'
    try:
        return _team.claim_failure()
    except ValueError:  # the store is gone: report anyway
        return True


def leave() -> None:
    """Leave the process group, if this process joined one."""
    global _team
    _team = None
    if dist.is_initialized():
        dist.destroy_process_group()


# ---- the node cache: one decoded copy of the training images per node, memory-mapped by every process

CACHE_FORMAT = 'liif-uint8-v2'  # what a cache file holds (load_uint8's pixels as shown, one image after the other)


def cache_key(files: list[Path]) -> str:
    """The name of the decoded images of `files` in this order: a hash of their absolute paths, sizes and
    modification times, so that a changed, added or removed file gives another name."""
    digest = hashlib.sha256(CACHE_FORMAT.encode())
    for path in files:
        stat = path.stat()
        digest.update(f'{path.resolve()}\0{stat.st_size}\0{stat.st_mtime_ns}\n'.encode())
    return digest.hexdigest()[:20]


def write_cache(files: list[Path], data: Path, index: Path) -> None:
    """Decode `files` one by one into `data` and list their shapes in `index` (written last: a cache is
    whole once its index exists); both atomically. Refused, before any work, without room for it."""
    needed = sum(3 * h * w for h, w in (image_size(path) for path in files))
    free = shutil.disk_usage(data.parent).free
    if needed > free:
        raise ValueError(f"cache_dir {data.parent}: the {len(files)} decoded training images need "
                         f"{needed / 1e9:.2f} GB ({needed:,} bytes) but {free / 1e9:.2f} GB are free there; set "
                         f"--cache_dir to a folder with room (or --node_cache=False: a copy in each process)")
    shapes = []
    with replacing(data) as tmp, open(tmp, 'wb') as out:
        for path in tqdm(files, desc=f'decoding the training images into {data}', unit='img', dynamic_ncols=True):
            img = load_uint8(path)
            out.write(img.tobytes())
            shapes.append(img.shape)
    with replacing(index) as tmp:
        tmp.write_text(json.dumps({'format': CACHE_FORMAT, 'files': [str(path) for path in files], 'shapes': shapes}))


def open_cache(data: Path, index: Path) -> list[np.ndarray]:
    """A cache's images as read-only views of its memory-mapped file."""
    pixels = np.memmap(data, dtype=np.uint8, mode='r')
    images, offset = [], 0
    for shape in json.loads(index.read_text())['shapes']:
        images.append(pixels[offset:offset + math.prod(shape)].reshape(shape))
        offset += math.prod(shape)
    return images


def shared_images(files: list[Path], folder: str | Path) -> list[np.ndarray]:
    """The decoded uint8 images of `files` as read-only views of one memory-mapped file in `folder`, named
    by cache_key: decoded and written by the first process that asks for them, mapped by every one after
    it. The processes that map it (and their DataLoader workers) read the same pages: one copy in memory."""
    folder = Path(folder)
    key = cache_key(files)
    data, index = folder / f'{key}.u8', folder / f'{key}.json'
    if not (index.is_file() and data.is_file()):
        folder.mkdir(parents=True, exist_ok=True)
        write_cache(files, data, index)
    return open_cache(data, index)
