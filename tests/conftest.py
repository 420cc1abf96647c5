"""Shared test fixtures: the real data and weights in ../shared (next to the repository)."""
import os
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SHARED = Path(os.environ.get('LIIF_SHARED', ROOT.parent / 'shared'))
DATA = SHARED / 'data'
BENCHMARK = DATA / 'benchmark'
WEIGHTS = SHARED / 'weights' / 'edsr-baseline-liif.pth'


def _need(path: Path) -> Path:
    if not path.exists():
        pytest.fail(f"{path} is missing: the tests need the shared data and weights "
                    f"(set LIIF_SHARED to the folder that holds data/ and weights/)")
    return path


@pytest.fixture(scope='session')
def benchmark_root() -> Path:
    return _need(BENCHMARK)


@pytest.fixture(scope='session')
def official_weights() -> Path:
    return _need(WEIGHTS)


@pytest.fixture(scope='session')
def train_root() -> Path:
    return _need(DATA / 'train')


@pytest.fixture(scope='module')
def one_thread():
    """Small ops run ~8x slower with two threads spinning on a busy 2-core machine (modules opt in
    with `pytestmark = pytest.mark.usefixtures('one_thread')`)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def butterfly_crop(benchmark_root: Path, folder: Path, name: str, rows: slice, cols: slice) -> Path:
    """A crop of Set5 butterfly written as a PNG with OpenCV, for tests that want a small real image."""
    import cv2
    path = folder / name
    cv2.imwrite(str(path), cv2.imread(str(benchmark_root / 'Set5' / 'HR' / 'butterfly.png'))[rows, cols])
    return path
