"""PSNR / SSIM against published bicubic baselines, scikit-image's SSIM and the formulas."""
import math

import numpy as np
import pytest
import torch
from skimage.metrics import structural_similarity

from image_quality_assessment import psnr, ssim
from imgproc import image_to_tensor, imresize, load_image

SCALES = (2, 3, 4)
# published MATLAB bicubic baselines (Y channel, border shaved by the scale)
PUBLISHED = {'Set5': {2: (33.66, 0.9299), 3: (30.39, 0.8682), 4: (28.42, 0.8104)},
             'Set14': {2: (30.24, 0.8688), 3: (27.55, 0.7742), 4: (26.00, 0.7027)}}


def y_255(img: np.ndarray) -> np.ndarray:
    """MATLAB rgb2ycbcr luma of a uint8 RGB image, as MATLAB returns it: rounded, 0-255 units."""
    rgb = img.astype(np.float64)
    return np.floor(16 + (65.481 * rgb[..., 0] + 128.553 * rgb[..., 1] + 24.966 * rgb[..., 2]) / 255 + 0.5)


def skimage_ssim(y1: np.ndarray, y2: np.ndarray) -> float:
    """Wang et al.'s SSIM: scikit-image filters the whole image then averages the map with a
    (win_size - 1) / 2 = 5 pixel border cropped, which is exactly the 'valid' 11x11 region."""
    return structural_similarity(y1, y2, gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
                                 data_range=255)


def bicubic_figures(root, set_name: str, s: int) -> tuple[float, float]:
    """Mean PSNR / SSIM of imresize bicubic upsampling of the LR files, 8-bit output. The grayscale
    Set14 'bridge' is scored on its gray levels directly, as the published MATLAB tables do (our
    scorers see the gray image replicated to RGB, whose Y is 16 + 219/255 * gray)."""
    psnrs, ssims = [], []
    for hr_file in sorted((root / set_name / 'HR').glob('*.png')):
        lr = load_image(root / set_name / 'LR_bicubic' / f'X{s}' / f'{hr_file.stem}x{s}.png')
        hr = load_image(hr_file)[:lr.shape[0] * s, :lr.shape[1] * s]
        sr = imresize(lr, s)
        assert sr.dtype == np.uint8 and sr.shape == hr.shape
        if hr_file.stem == 'bridge':
            psnrs.append(psnr(sr, hr, s, protocol='rgb'))  # three equal channels: PSNR of the gray
            gray = [x[s:-s, s:-s, 0].astype(np.float64) for x in (sr, hr)]
            ssims.append(skimage_ssim(*gray))
        else:
            psnrs.append(psnr(sr.astype(np.float32) / 255, hr.astype(np.float32) / 255, s))
            ssims.append(ssim(sr, hr, s))
    return float(np.mean(psnrs)), float(np.mean(ssims))


@pytest.mark.parametrize('set_name', ['Set5', 'Set14'])
@pytest.mark.slow
def test_bicubic_baseline_matches_published(benchmark_root, set_name):
    for s in SCALES:
        measured_psnr, measured_ssim = bicubic_figures(benchmark_root, set_name, s)
        print(f"{set_name} x{s} bicubic: PSNR {measured_psnr:.3f} dB, SSIM {measured_ssim:.4f}")
        published_psnr, published_ssim = PUBLISHED[set_name][s]
        assert abs(measured_psnr - published_psnr) < 0.02, (set_name, s, measured_psnr)
        assert abs(measured_ssim - published_ssim) < 0.001, (set_name, s, measured_ssim)


def image_pairs(root):
    """Real (bicubic SR, HR) uint8 pairs cropped to keep the test fast, and random pairs."""
    for name, s in (('butterfly', 4), ('woman', 3), ('bird', 2)):
        lr = load_image(root / 'Set5' / 'LR_bicubic' / f'X{s}' / f'{name}x{s}.png')[:40, :36]
        hr = load_image(root / 'Set5' / 'HR' / f'{name}.png')[:40 * s, :36 * s]
        yield imresize(lr, s), hr, s
    rng = np.random.default_rng(0)
    for s in (1, 4):
        hr = rng.integers(0, 256, (53, 61, 3), dtype=np.uint8)
        noisy = np.clip(hr.astype(int) + rng.integers(-40, 41, hr.shape), 0, 255).astype(np.uint8)
        yield noisy, hr, s


def test_ssim_equals_skimage(benchmark_root):
    for sr, hr, s in image_pairs(benchmark_root):
        expect = skimage_ssim(*(y_255(x)[s:-s, s:-s] for x in (sr, hr)))
        assert abs(ssim(sr, hr, s) - expect) < 1e-6
        assert abs(ssim(sr / 255.0, hr.astype(np.float32) / 255, s) - expect) < 1e-6  # float [0, 1] input


def test_ssim_rounds_float_input_to_8_bits():
    rng = np.random.default_rng(1)
    hr = rng.random((40, 44, 3))
    sr = np.clip(hr + rng.normal(0, 0.05, hr.shape), -0.1, 1.1)  # out-of-range values are clamped
    rounded = [np.floor(np.clip(x, 0, 1) * 255 + 0.5).astype(np.uint8) for x in (sr, hr)]
    expect = skimage_ssim(*(y_255(x)[2:-2, 2:-2] for x in rounded))
    assert abs(ssim(sr, hr, 2) - expect) < 1e-6
    assert ssim(hr, hr, 2) == pytest.approx(1.0, abs=1e-12)


def test_ssim_torch_matches_numpy(benchmark_root):
    rng = np.random.default_rng(2)
    for sr, hr, s in image_pairs(benchmark_root):
        sr_float = np.clip(sr / 255 + rng.normal(0, 0.01, sr.shape), 0, 1).astype(np.float32)
        batch_sr = torch.stack([image_to_tensor(sr_float), image_to_tensor(hr)])
        batch_hr = torch.stack([image_to_tensor(hr), image_to_tensor(hr)])
        values = ssim(batch_sr, batch_hr, s)
        assert values.shape == (2,)
        assert abs(float(values[0]) - ssim(sr_float, hr, s)) < 1e-6
        assert abs(float(values[1]) - 1) < 1e-12
        assert abs(float(ssim(batch_sr[0], batch_hr[0], s)) - float(values[0])) < 1e-12
    with pytest.raises(ValueError, match='window'):
        ssim(torch.rand(1, 3, 18, 30), torch.rand(1, 3, 18, 30), 4)  # 10 rows left


def reference_psnr(sr: np.ndarray, hr: np.ndarray, shave: int, luma: bool) -> float:
    """PSNR from the definition, pixel values in [0, 1]: the 'benchmark' error is the BT.601 luma
    (65.738 R + 129.057 G + 25.064 B) / 256 of the difference sr - hr."""
    sr = np.clip(sr.astype(np.float64), 0, 1)
    hr = hr.astype(np.float64)
    diff = sr - hr
    if luma:
        diff = (65.738 * diff[..., 0] + 129.057 * diff[..., 1] + 25.064 * diff[..., 2]) / 256
    h, w = diff.shape[:2]
    region = diff[shave:h - shave, shave:w - shave]
    mse = np.sum(region ** 2) / region.size
    return 10 * math.log10(1 / mse)


def test_psnr_protocols_match_the_formula(benchmark_root):
    rng = np.random.default_rng(3)
    for sr, hr, s in image_pairs(benchmark_root):
        sr_float = sr / 255 + rng.normal(0, 0.02, sr.shape)  # some values leave [0, 1]: clamped
        hr_float = hr / 255
        assert psnr(sr_float, hr_float, s) == pytest.approx(reference_psnr(sr_float, hr_float, s, True), abs=1e-9)
        assert psnr(sr_float, hr_float, s, 'benchmark') == psnr(sr_float, hr_float, s)
        assert psnr(sr_float, hr_float, s, 'div2k') == pytest.approx(
            reference_psnr(sr_float, hr_float, s + 6, False), abs=1e-9)
        assert psnr(sr_float, hr_float, s, 'rgb') == pytest.approx(
            reference_psnr(sr_float, hr_float, s, False), abs=1e-9)
        assert psnr(sr, hr, s) == pytest.approx(reference_psnr(sr / 255, hr / 255, s, True), abs=1e-9)
    sr_float, hr_float = rng.random((30, 33, 3)), rng.random((30, 33, 3))
    assert psnr(sr_float, hr_float, 0, 'rgb') == pytest.approx(reference_psnr(sr_float, hr_float, 0, False))
    assert psnr(sr_float, hr_float, 2.5) == pytest.approx(reference_psnr(sr_float, hr_float, 3, True))


def test_psnr_tensor_batch_is_per_image():
    rng = np.random.default_rng(4)
    hr = rng.random((3, 25, 27, 3))
    sr = hr + rng.normal(0, 1, (3, 1, 1, 1)) * 0.03 * rng.random(hr.shape)  # a different error per image

    def to_batch(images: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(images.transpose(0, 3, 1, 2)).float()

    values = psnr(to_batch(sr), to_batch(hr), 4)
    assert values.shape == (3,)
    for i in range(3):
        assert float(values[i]) == pytest.approx(reference_psnr(sr[i], hr[i], 4, True), abs=1e-4)
    assert len(set(values.tolist())) == 3
    assert float(psnr(to_batch(sr)[1], to_batch(hr)[1], 4)) == pytest.approx(float(values[1]))
    with pytest.raises(ValueError, match='protocol'):
        psnr(sr[0], hr[0], 4, protocol='y')
    with pytest.raises(ValueError, match='shape'):
        psnr(sr[0], hr[0, :-1], 4)
    with pytest.raises(ValueError, match='uint16'):
        psnr(sr[0].astype(np.uint16), hr[0].astype(np.uint16), 4)
