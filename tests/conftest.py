"""Shared test fixtures: the real images in tests/data (Set5, Set14 and a subset of the T91 + BSDS200
training images, listed with their md5 and origin in tests/data/MANIFEST.tsv) and the official weights,
fetched once by the project's own downloader."""
import os
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from dataset import list_images
from helpers import CROP
from imgproc import load_uint8, write_image
from weights import OFFICIAL_WEIGHTS, SHA256, download_weights, sha256_of

DATA = ROOT / 'tests' / 'data'


@pytest.fixture(scope='session')
def benchmark_root() -> Path:
    """Set5 and Set14 as test.py reads them: <set>/HR and <set>/LR_bicubic/X2, X3, X4."""
    return DATA / 'benchmark'


@pytest.fixture(scope='session')
def train_root() -> Path:
    """T91/ (10 images) and BSDS200/ (6 images) of the training set, as lossless WebP."""
    return DATA / 'train'


@pytest.fixture(scope='session')
def official_weights() -> Path:
    """The official EDSR-baseline-LIIF checkpoint: the file LIIF_WEIGHTS names, else the one at
    results/pretrained_models/, downloaded there on first use (sha256 checked either way)."""
    given = os.environ.get('LIIF_WEIGHTS')
    if given:
        if not Path(given).is_file() or sha256_of(given) != SHA256:
            pytest.exit(f"error: LIIF_WEIGHTS={given} is not the official edsr-baseline-liif.pth "
                        f"(sha256 {SHA256[:8]}...)", returncode=2)
        return Path(given)
    try:
        return download_weights(OFFICIAL_WEIGHTS)
    except ValueError as e:
        pytest.exit(f"error: {e}, or set LIIF_WEIGHTS=PATH to a copy", returncode=2)


@pytest.fixture(scope='session')
def data(tmp_path_factory, train_root) -> Path:
    """train/ with 8 and valid/ with 2 top-left CROP x CROP crops of real T91 images, as PNG (see helpers.tiny)."""
    folder = tmp_path_factory.mktemp('data')
    big = [path for path in list_images(train_root / 'T91') if min(load_uint8(path).shape[:2]) >= CROP]
    for i, path in enumerate(big[:10]):
        write_image(folder / ('train' if i < 8 else 'valid') / f'{path.stem}.png', load_uint8(path)[:CROP, :CROP])
    return folder


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
