"""A window of a render equals the same crop of the whole render, for every model, and costs only
the LR region its look-ups read (plus the model's margin)."""
import random
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

import inference
from checkpoint import model_from_checkpoint
from helpers import small
from render import check_window

pytestmark = pytest.mark.usefixtures('one_thread')
ROOT = Path(__file__).resolve().parents[1]
TOL = 1e-6  # the bound; with the same look-ups and codes the values are normally identical


def windows(size: tuple[int, int], rng: random.Random) -> list[tuple[int, int, int, int]]:
    """The whole output, one pixel, a 1-pixel-wide column, a 1-row strip, the four corners' blocks
    (their LR regions touch each border) and random rectangles."""
    height, width = size
    h2, w2 = max(1, height // 3), max(1, width // 3)
    fixed = [(0, 0, height, width), (height // 2, width // 2, 1, 1), (0, width - 1, height, 1),
             (height - 1, 0, 1, width), (0, 0, h2, w2), (0, width - w2, h2, w2),
             (height - h2, 0, h2, w2), (height - h2, width - w2, h2, w2)]
    randoms = []
    for _ in range(4):
        top, left = rng.randrange(height), rng.randrange(width)
        randoms.append((top, left, rng.randint(1, height - top), rng.randint(1, width - left)))
    return fixed + randoms


def assert_windows_are_crops(model, lr, size, tile, seed):
    whole = model.render(lr, size, tile=0, chunk=1000)
    assert whole.std() > 1e-3
    for top, left, height, width in windows(size, random.Random(seed)):
        part = model.render(lr, size, tile=tile, chunk=517, window=(top, left, height, width))
        assert part.shape == (lr.shape[0], 3, height, width)
        crop = whole[:, :, top:top + height, left:left + width]
        assert (part - crop).abs().max() <= TOL, (size, (top, left, height, width), tile)


@pytest.mark.parametrize('kind', ['liif-fast', 'liif-reference', 'metasr', 'lte', 'upsample-2', 'upsample-3'])
@pytest.mark.slow
def test_window_equals_crop_of_whole_render(kind):
    model = small(kind)
    lr = torch.rand(2, 3, 31, 23)  # odd, not square
    for size in [(71, 50), (40, 92), (12, 9)]:  # x2.29 by x2.17; anisotropic x1.29 by x4; a down-scale
        for tile in (0, 7):  # untiled; LR tiles of 7 pixels (many, cut inside the window's region)
            assert_windows_are_crops(model, lr, size, tile, seed=hash((kind, size, tile)) % 1000)


@pytest.mark.parametrize('fast', [True, False])
def test_official_liif_windows_on_a_real_crop(official_weights, benchmark_root, fast):
    hr = cv2.imread(str(benchmark_root / 'Set14' / 'HR' / 'baboon.png'))
    lr = torch.from_numpy(np.ascontiguousarray(hr[40:67, 60:81, ::-1]) / 255).float().permute(2, 0, 1)[None]
    model = model_from_checkpoint(official_weights, fast=fast).eval()
    assert_windows_are_crops(model, lr, (97, 52), tile=None, seed=1)  # x3.59 by x2.48


def test_window_encodes_only_the_lr_region_it_reads():
    """A small window of a large output encodes its LR region plus the margin, not the whole input."""
    model = small('liif-fast')
    seen = []
    encode = model.encode
    model.encode = lambda lr: seen.append(tuple(lr.shape[-2:])) or encode(lr)
    lr = torch.rand(1, 3, 200, 160)
    model.render(lr, (1600, 1280), window=(800, 640, 16, 24), tile=0)  # x8: 2 x 3 LR pixels plus the look-ups
    margin = model.tile_margin
    [(rows, cols)] = seen
    assert rows <= 2 + 2 + 2 * margin and cols <= 3 + 2 + 2 * margin


@pytest.mark.parametrize('window, message', [
    ((0, 0, 0, 5), 'height and width >= 1'),
    ((-1, 0, 2, 2), 'top and left must be >= 0'),
    ((0, 3, 2, -2), 'height and width >= 1'),
    ((10, 0, 1, 1), 'reaches row 11'),
    ((0, 5, 1, 16), 'column 21'),
    ((0, 0, 2), 'not four integers'),
    ((0, 0, 2.0, 2), 'not four integers'),
    ((0, 0, True, 2), 'not four integers'),
    ('0,0,2,2', 'not four integers'),
])
def test_bad_windows_are_refused(window, message):
    with pytest.raises(ValueError, match=message):
        check_window(window, (10, 20))
    with pytest.raises(ValueError, match=r'window must be \[top, left, height, width\] inside the 10x20 output'):
        small('upsample-2').render(torch.rand(1, 3, 5, 10), (10, 20), window=window)


def test_inference_writes_only_the_window(official_weights, benchmark_root, tmp_path):
    hr = cv2.imread(str(benchmark_root / 'Set5' / 'HR' / 'bird.png'))
    cv2.imwrite(str(tmp_path / 'lr.png'), hr[50:83, 40:70])
    whole, part = (inference.main([f'--input={tmp_path / "lr.png"}', f'--output={tmp_path / name}',
                                   f'--weights={official_weights}', '--scale=2.7', '--device=cpu', *extra])[0]
                   for name, extra in [('whole.png', []), ('part.png', ['--window=[30,5,41,1]'])])
    np.testing.assert_array_equal(cv2.imread(str(part)), cv2.imread(str(whole))[30:71, 5:6])
    with pytest.raises(ValueError, match='lr.png: window must be .* inside the 89x81 output'):
        inference.main([f'--input={tmp_path / "lr.png"}', f'--output={tmp_path / "bad.png"}',
                        f'--weights={official_weights}', '--scale=2.7', '--window=[0,0,90,10]'])
    assert not (tmp_path / 'bad.png').exists()


def test_bad_window_on_the_command_line_is_one_error_line(tmp_path):
    cv2.imwrite(str(tmp_path / 'lr.png'), np.zeros((10, 12, 3), np.uint8))
    done = subprocess.run([sys.executable, 'inference.py', f'--input={tmp_path / "lr.png"}', '--scale=2',
                           '--window=[0,0,5]', f'--output={tmp_path / "out.png"}'], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 2 and done.stderr.count('\n') == 1
    assert done.stderr.startswith('error: ') and 'inside the 20x24 output, got [0, 0, 5]: it is not four' in done.stderr
    assert not (tmp_path / 'out.png').exists()
