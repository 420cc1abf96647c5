"""imgproc: MATLAB imresize against the real benchmark LR files and a direct per-pixel reference,
the torch resize against the numpy one, colour conversion, image I/O and make_lr.py."""
import math
import subprocess
import sys

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from conftest import ROOT
from helpers import coord_cell
from image_quality_assessment import _round_y, _y_255
from imgproc import (
    ImageError,
    image_to_tensor,
    imresize,
    load_image,
    make_coord,
    read_image,
    tensor_to_image,
    write_image,
)

SCALES = (2, 3, 4)


def benchmark_pairs(root, sets=('Set5', 'Set14')):
    """(set, name, scale, HR cropped top-left to the LR size times s, LR) for every LR file."""
    for set_name in sets:
        for hr_file in sorted((root / set_name / 'HR').glob('*.png')):
            hr = load_image(hr_file)
            for s in SCALES:
                lr = load_image(root / set_name / 'LR_bicubic' / f'X{s}' / f'{hr_file.stem}x{s}.png')
                h, w = lr.shape[:2]
                yield set_name, hr_file.stem, s, hr[:h * s, :w * s], lr


def test_imresize_reproduces_every_benchmark_lr_file(benchmark_root):
    mismatched, count = [], 0
    for set_name, name, s, hr, lr in benchmark_pairs(benchmark_root):
        count += 1
        out = imresize(hr, 1 / s)
        assert out.dtype == np.uint8 and out.shape == lr.shape, (set_name, name, s, out.shape)
        if not np.array_equal(out, lr):
            mismatched.append(f"{set_name}/{name} x{s}: {np.count_nonzero(out != lr)} values")
    assert count == 57
    assert not mismatched, mismatched


def reference_resize_axis(x: np.ndarray, out_len: int, scale: float) -> np.ndarray:
    """MATLAB's 1-D bicubic resize along axis 0, one output pixel at a time, from the equations:
    output pixel i (1-based) sits at u = i/scale + (1 - 1/scale)/2; every input pixel j within
    the kernel's reach gets weight k(u - j), k = Keys cubic (a = -0.5), stretched to
    scale*k(scale*t) when shrinking; weights normalised; j clamped into [1, n]."""
    def keys(t):
        t = abs(t)
        if t <= 1:
            return 1.5 * t ** 3 - 2.5 * t ** 2 + 1
        if t <= 2:
            return -0.5 * t ** 3 + 2.5 * t ** 2 - 4 * t + 2
        return 0.0

    n = x.shape[0]
    out = np.zeros((out_len,) + x.shape[1:])
    for i in range(1, out_len + 1):
        u = i / scale + (1 - 1 / scale) / 2
        reach = 2 / scale if scale < 1 else 2
        taps = [(j, scale * keys(scale * (u - j)) if scale < 1 else keys(u - j))
                for j in range(math.floor(u - reach) - 1, math.ceil(u + reach) + 2)]
        total = sum(w for _, w in taps)
        for j, w in taps:
            out[i - 1] += w / total * x[min(max(j, 1), n) - 1]
    return out


def reference_imresize(img: np.ndarray, out_hw: tuple[int, int]) -> np.ndarray:
    x = img.astype(np.float64)
    scales = [out_hw[0] / img.shape[0], out_hw[1] / img.shape[1]]
    for axis in sorted((0, 1), key=lambda a: scales[a]):  # smaller scale first, rows on a tie
        x = np.moveaxis(reference_resize_axis(np.moveaxis(x, axis, 0), out_hw[axis], scales[axis]), 0, axis)
    return x


@pytest.mark.parametrize('out_hw', [(24, 30), (5, 6), (4, 13), (31, 4), (12, 15), (9, 40)])
def test_imresize_float_matches_per_pixel_reference(out_hw):
    img = np.random.default_rng(0).random((12, 15, 3))
    out = imresize(img, size=out_hw)
    assert out.dtype == np.float64 and out.shape == out_hw + (3,)
    np.testing.assert_allclose(out, reference_imresize(img, out_hw), atol=1e-12)


def test_imresize_uint8_rounds_after_each_pass():
    img = np.random.default_rng(1).integers(0, 256, (10, 14, 3), dtype=np.uint8)
    expect = img.astype(np.float64)
    for axis, out_len in ((0, 30), (1, 42)):  # x3 both ways: rows first
        x = reference_resize_axis(np.moveaxis(expect, axis, 0), out_len, 3.0)
        expect = np.moveaxis(np.clip(np.floor(x + 0.5), 0, 255), 0, axis)
    out = imresize(img, 3)
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, expect)


def test_imresize_uint8_resizes_the_smaller_scale_first():
    """MATLAB's imresize runs the axis with the smaller scale first (here the columns, x1.5, before the rows,
    x3), rounding to uint8 after each pass: the other order rounds other values."""
    img = np.random.default_rng(1).integers(0, 256, (10, 14, 3), dtype=np.uint8)

    def passes(order):
        x = img.astype(np.float64)
        for axis, out_len, scale in order:
            x = np.moveaxis(reference_resize_axis(np.moveaxis(x, axis, 0), out_len, scale), 0, axis)
            x = np.clip(np.floor(x + 0.5), 0, 255)
        return x
    expect, other = passes([(1, 21, 1.5), (0, 30, 3.0)]), passes([(0, 30, 3.0), (1, 21, 1.5)])
    assert (expect != other).any()  # the order shows in the result
    np.testing.assert_array_equal(imresize(img, size=(30, 21)), expect)


def test_imresize_sizes_and_invariants():
    img = np.random.default_rng(2).random((20, 30, 3)).astype(np.float32)
    assert imresize(img, 0.5).shape == (10, 15, 3)
    assert imresize(img, 1 / 3).shape == (7, 10, 3)  # ceil(20/3), ceil(30/3)
    assert imresize(img, 0.42).shape == (9, 13, 3)  # ceil(8.4), ceil(12.6): MATLAB rounds up, never to nearest
    assert imresize(img, (2, 0.5)).shape == (40, 15, 3)
    assert imresize(img[:, :, 0], 2).shape == (40, 60)
    assert imresize(img, 2).dtype == np.float32
    np.testing.assert_allclose(imresize(np.full((9, 7, 3), 0.3), 2.5), 0.3, atol=1e-12)
    ramp = np.tile(np.arange(40, dtype=np.float64)[:, None, None], (1, 8, 1))
    up = imresize(ramp, size=(80, 8))  # cubic convolution reproduces a linear ramp inside
    np.testing.assert_allclose(up[8:-8, :, 0], (np.arange(80)[8:-8, None] - 0.5) / 2 * np.ones(8), atol=1e-9)
    for bad in (dict(), dict(scale=2, size=(4, 4)), dict(scale=0), dict(scale=-1), dict(scale=float('nan')),
                dict(size=(0, 5)), dict(scale=1e6)):
        with pytest.raises(ValueError):
            imresize(img, **bad)
    with pytest.raises(ValueError):
        imresize(img.astype(np.int32), 2)


def test_luma_matches_matlab():
    """The Y that SSIM compares is MATLAB rgb2ycbcr's: its values for uint8 white, black, red, green and
    blue, and the BT.601 studio-swing formula on random colours."""
    rgb = np.array([[[255, 255, 255], [0, 0, 0], [255, 0, 0], [0, 255, 0], [0, 0, 255]]], np.float64)
    np.testing.assert_array_equal(_round_y(_y_255(rgb, -1)), [[235, 16, 81, 145, 41]])
    img = np.random.default_rng(4).random((5, 6, 3)) * 255
    r, g, b = img[..., 0], img[..., 1], img[..., 2]
    np.testing.assert_allclose(_y_255(img, -1), 16 + (65.481 * r + 128.553 * g + 24.966 * b) / 255, atol=1e-10)
    as_tensor = _y_255(torch.from_numpy(img).permute(2, 0, 1), 0).numpy()
    np.testing.assert_allclose(as_tensor, _y_255(img, -1), atol=1e-12)


def test_write_image_rounds_and_round_trips(tmp_path):
    # halves go up (2.5 -> 3: not banker's rounding), nothing is truncated (0.7 -> 1)
    levels = np.array([0.5, 0.7, 1.49, 1.5, 2.5, 127.5, 254.4, 254.6]) / 255
    img = np.repeat(levels[None, :, None], 3, axis=2)
    for dtype in (np.float64, np.float32):
        path = write_image(tmp_path / 'deep' / 'er' / f'r{np.dtype(dtype).name}.png', img.astype(dtype))
        np.testing.assert_array_equal(load_image(path)[0, :, 0], [1, 1, 1, 2, 3, 128, 254, 255])
    half = write_image(tmp_path / 'half.png', np.full((1, 1, 3), 254.5 / 255))  # exact in float64
    assert load_image(half)[0, 0, 0] == 255
    clipped = write_image(tmp_path / 'c.png', np.array([[[-0.2, 1.7, 0.5]]]))
    np.testing.assert_array_equal(load_image(clipped), [[[0, 255, 128]]])

    rng = np.random.default_rng(5)
    img8 = rng.integers(0, 256, (7, 9, 3), dtype=np.uint8)
    for suffix in ('.png', '.bmp', '.tif'):
        np.testing.assert_array_equal(load_image(write_image(tmp_path / f'a{suffix}', img8)), img8)
    np.testing.assert_array_equal(load_image(write_image(tmp_path / 'f.png', img8 / 255.0)), img8)
    img16 = rng.integers(0, 65536, (7, 9, 3), dtype=np.uint16)
    path16 = write_image(tmp_path / 'b16.png', img16)
    assert load_image(path16).dtype == np.uint16
    np.testing.assert_array_equal(load_image(path16), img16)
    np.testing.assert_allclose(read_image(path16), img16 / 65535, atol=1e-7)
    float16 = write_image(tmp_path / 'f16.png', img16 / 65535.0, bits=16)
    np.testing.assert_array_equal(load_image(float16), img16)

    with pytest.raises(ValueError, match='x.xyz'):
        write_image(tmp_path / 'x.xyz', img8)
    with pytest.raises(ValueError, match='j.jpg'):
        write_image(tmp_path / 'j.jpg', img16)
    with pytest.raises(ValueError, match='bits'):
        write_image(tmp_path / 'k.png', img8 / 255, bits=12)
    with pytest.raises(ValueError, match='NaN'):
        write_image(tmp_path / 'n.png', np.full((2, 2, 3), np.nan))


def test_read_image_modes(tmp_path):
    gray = np.arange(12, dtype=np.uint8).reshape(3, 4) * 20
    Image.fromarray(gray).save(tmp_path / 'g.png')
    Image.fromarray(np.dstack([gray, 255 - gray]), 'LA').save(tmp_path / 'ga.png')
    rgba = np.random.default_rng(6).integers(0, 256, (3, 4, 4), dtype=np.uint8)
    Image.fromarray(rgba, 'RGBA').save(tmp_path / 'rgba.png')
    gray16 = (np.arange(12).reshape(3, 4) * 5000).astype(np.uint16)
    Image.fromarray(gray16).save(tmp_path / 'g16.png')
    Image.fromarray(rgba[..., :3]).save(tmp_path / 'rgb.bmp')
    Image.fromarray(rgba[..., :3]).save(tmp_path / 'rgb.tif')
    solid = np.full((8, 8, 3), (200, 30, 90), np.uint8)  # JPEG keeps a flat colour within a few levels
    Image.fromarray(solid).save(tmp_path / 'rgb.jpg', quality=95)

    for name in ('g.png', 'ga.png'):
        img = read_image(tmp_path / name)
        assert img.shape == (3, 4, 3) and img.dtype == np.float32
        np.testing.assert_allclose(img, np.repeat(gray[:, :, None], 3, axis=2) / 255, atol=1e-7)
    np.testing.assert_array_equal(load_image(tmp_path / 'rgba.png'), rgba[..., :3])
    for name in ('rgb.bmp', 'rgb.tif'):
        np.testing.assert_array_equal(load_image(tmp_path / name), rgba[..., :3])
    assert np.abs(load_image(tmp_path / 'rgb.jpg').astype(int) - solid).max() <= 3
    img16 = read_image(tmp_path / 'g16.png')
    np.testing.assert_allclose(img16, np.repeat(gray16[:, :, None], 3, axis=2) / 65535, atol=1e-7)


def test_read_errors_name_the_file(tmp_path):
    with pytest.raises(ImageError, match='missing.png.*does not exist'):
        read_image(tmp_path / 'missing.png')
    (tmp_path / 'x.png').write_text('this is not an image')
    with pytest.raises(ImageError, match='x.png.*not a readable image'):
        read_image(tmp_path / 'x.png')
    with pytest.raises(ImageError, match='not a file'):
        read_image(tmp_path)
    Image.fromarray(np.zeros((4, 4), np.float32)).save(tmp_path / 'f.tif')
    with pytest.raises(ImageError, match='f.tif'):
        read_image(tmp_path / 'f.tif')


def test_tensor_conversions():
    rng = np.random.default_rng(7)
    img8 = rng.integers(0, 256, (5, 6, 3), dtype=np.uint8)
    t = image_to_tensor(img8)
    assert t.shape == (3, 5, 6) and t.dtype == torch.float32
    np.testing.assert_allclose(t.numpy(), img8.transpose(2, 0, 1) / 255, atol=1e-7)
    img16 = rng.integers(0, 65536, (5, 6, 3), dtype=np.uint16)
    np.testing.assert_allclose(image_to_tensor(img16)[1].numpy(), img16[:, :, 1] / 65535, atol=1e-7)
    imgf = rng.random((5, 6, 3))
    back = tensor_to_image(image_to_tensor(imgf))
    assert back.dtype == np.float32 and back.shape == (5, 6, 3)
    np.testing.assert_allclose(back, imgf, atol=1e-7)
    np.testing.assert_allclose(tensor_to_image(image_to_tensor(imgf)[None]), imgf, atol=1e-7)
    assert image_to_tensor(img8[:, :, 0]).shape == (3, 5, 6)
    with pytest.raises(ValueError):
        tensor_to_image(torch.zeros(2, 3, 4, 4))
    with pytest.raises(ValueError):
        image_to_tensor(np.zeros((4, 4, 2)))


def test_coordinates_are_pixel_centres():
    coord, cell = coord_cell(2, 4)
    np.testing.assert_allclose(coord[:4].numpy(), [[-0.5, -0.75], [-0.5, -0.25], [-0.5, 0.25], [-0.5, 0.75]])
    np.testing.assert_allclose(cell.numpy(), np.tile([1.0, 0.5], (8, 1)))
    assert make_coord((2, 4), flatten=False).shape == (2, 4, 2)


@pytest.mark.slow
def test_make_lr_script_reproduces_benchmark_files(benchmark_root, tmp_path):
    hr_dir = tmp_path / 'HR'
    hr_dir.mkdir()
    for name in ('bird', 'woman'):
        (hr_dir / f'{name}.png').write_bytes((benchmark_root / 'Set5' / 'HR' / f'{name}.png').read_bytes())
    out = tmp_path / 'LR_bicubic'
    run = subprocess.run([sys.executable, str(ROOT / 'scripts' / 'make_lr.py'), '--hr', str(hr_dir),
                          '--out', str(out), '--scales', '2,3,4'], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    for name in ('bird', 'woman'):
        for s in SCALES:
            expect = load_image(benchmark_root / 'Set5' / 'LR_bicubic' / f'X{s}' / f'{name}x{s}.png')
            np.testing.assert_array_equal(load_image(out / f'X{s}' / f'{name}x{s}.png'), expect)
    bad = subprocess.run([sys.executable, str(ROOT / 'scripts' / 'make_lr.py'), '--hr', str(tmp_path / 'nope'),
                          '--out', str(out)], capture_output=True, text=True)
    assert bad.returncode == 2 and 'nope' in bad.stderr and 'Traceback' not in bad.stderr
    cv2.imwrite(str(hr_dir / 'tiny.png'), np.zeros((3, 3, 3), np.uint8))
    tiny = subprocess.run([sys.executable, str(ROOT / 'scripts' / 'make_lr.py'), '--hr', str(hr_dir),
                           '--out', str(out), '--scales', '4'], capture_output=True, text=True)
    assert tiny.returncode == 2 and 'tiny.png' in tiny.stderr


@pytest.mark.parametrize('name', ['T91/t12', 'BSDS200/100080'])
def test_webp_reads_like_png(train_root, name):
    """The lossless WebP copies of the training images decode to the original PNGs' pixels exactly (PIL
    reads both here, as an independent decoder)."""
    png, webp = train_root.parent / 'train-png' / f'{name}.png', train_root / f'{name}.webp'
    expected = np.asarray(Image.open(png).convert('RGB'))
    assert np.array_equal(np.asarray(Image.open(webp).convert('RGB')), expected)
    img = load_image(webp)
    assert img.dtype == np.uint8 and np.array_equal(img, expected)
    assert np.array_equal(read_image(webp), read_image(png))
