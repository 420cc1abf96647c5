"""degrade: each stage of the real-world degradation model against its formula, with every reference
written here from the equations (not from degrade.py's helpers):
  kernels   sum 1; the Gaussian's second moments against R diag(sx^2, sy^2) R^T; the generalized and
            plateau shapes against exp(-q^beta / 2) and 1 / (1 + q^beta) of the Mahalanobis form q; the
            sinc kernel against J1 from its integral, and its frequency response against the ideal
            circular low-pass (within the truncation's Gibbs ripple)
  blur      2-D correlation with mirrored (edge not repeated) borders, in numpy
  noise     Gaussian noise's mean and std, Poisson noise's variance scale^2 v / L, gray against colour
  resize    bilinear, bicubic (Keys, a = -0.75) and area against numpy weight matrices
  jpeg      OpenCV's own encode and decode at that quality, bit for bit
  drawing   the drawn parameters against the configured distributions (chi-square and Kolmogorov-Smirnov
            at significance 1e-3, fixed seeds), and draw_plan's structure
  named     named_plan's steps and refusals, degrade_named's seeding
  checks    check_degradation refusing out-of-range settings by name
"""
import math

import cv2
import numpy as np
import pytest
import scipy.stats
import torch

import degrade
import settings

pytestmark = pytest.mark.usefixtures('one_thread')

ALPHA = 1e-3  # significance of the goodness-of-fit tests; the seeds are fixed, so each run is the same
DRAWS = 20000
SHAPES = ('iso', 'aniso', 'generalized_iso', 'generalized_aniso', 'plateau_iso', 'plateau_aniso')


def grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Column (x) and row (y) offsets from the centre of a size x size kernel."""
    offsets = np.arange(size) - (size - 1) / 2
    return offsets[None, :].repeat(size, 0), offsets[:, None].repeat(size, 1)


def covariance(sx: float, sy: float, theta: float) -> np.ndarray:
    rot = np.array([[math.cos(theta), -math.sin(theta)], [math.sin(theta), math.cos(theta)]])
    return rot @ np.diag([sx * sx, sy * sy]) @ rot.T


def mahalanobis(size: int, sx: float, sy: float, theta: float) -> np.ndarray:
    """q = v^T Sigma^-1 v for v = (x, y) at every tap."""
    x, y = grid(size)
    v = np.stack([x, y], -1)
    return np.einsum('...i,ij,...j->...', v, np.linalg.inv(covariance(sx, sy, theta)), v)


def tensor(img: np.ndarray) -> torch.Tensor:
    """An H x W x 3 float image as the (1, 3, H, W) float32 tensor the operations take."""
    return torch.from_numpy(np.ascontiguousarray(img, np.float32)).permute(2, 0, 1)[None]


def image(x: torch.Tensor) -> np.ndarray:
    return x[0].permute(1, 2, 0).numpy().astype(np.float64)


# ---- kernels

@pytest.mark.parametrize('shape', SHAPES + ('sinc',))
def test_kernels_sum_to_one(shape):
    """Normalised in float64, then each tap rounded to float32 (relative error <= 2^-24), so the sum is 1
    within 6e-8 (sinc's negative taps add at most their own mass, < 0.2); 1e-6 leaves room."""
    p = {'shape': shape, 'size': 15, 'sigma': (2.0, 0.7), 'theta': 0.4, 'beta': 1.7, 'cutoff': 1.3}
    k = degrade.kernel(p)
    assert k.shape == (15, 15) and k.dtype == np.float32
    assert abs(k.astype(np.float64).sum() - 1) < 1e-6


def test_gaussian_covariance():
    """The second moments of a 61-tap kernel with sigma <= 3: the truncation at 10 sigma (e^-50) and the
    sampling (aliasing ~ e^(-2 pi^2 sy^2) ~ 1e-19) are negligible, so float32 rounding (~1e-7) bounds the
    error; 1e-5 relative leaves room."""
    sx, sy, theta = 3.0, 1.5, 0.7
    k = degrade.gaussian_family(61, 'gaussian', (sx, sy), theta).astype(np.float64)
    x, y = grid(61)
    moments = np.array([[(k * x * x).sum(), (k * x * y).sum()], [(k * x * y).sum(), (k * y * y).sum()]])
    np.testing.assert_allclose(moments, covariance(sx, sy, theta), rtol=1e-5, atol=1e-5 * sx * sx)
    assert abs((k * x).sum()) < 1e-6 and abs((k * y).sum()) < 1e-6  # centred


def test_isotropic_kernel_is_rotation_invariant():
    """Equal sigmas make the covariance sigma^2 I for every theta; float32 rounding is the only difference."""
    base = degrade.gaussian_family(21, 'gaussian', (1.8, 1.8), 0.0)
    for theta in (0.3, 1.2, -2.5):
        rotated = degrade.gaussian_family(21, 'gaussian', (1.8, 1.8), theta)
        np.testing.assert_allclose(rotated, base, rtol=1e-5, atol=1e-9)


@pytest.mark.parametrize('family,beta', [('generalized', 0.6), ('generalized', 3.2), ('plateau', 1), ('plateau', 1.8)])
def test_generalized_and_plateau_shapes(family, beta):
    """Direct formulas in float64; the kernel is float32, so 1e-6 relative (a few ulps) with a floor far
    below the smallest tap of interest."""
    q = mahalanobis(13, 2.2, 0.9, -1.1)
    k = np.exp(-0.5 * q ** beta) if family == 'generalized' else 1 / (1 + q ** beta)
    p = {'shape': f'{family}_aniso', 'size': 13, 'sigma': (2.2, 0.9), 'theta': -1.1, 'beta': beta}
    np.testing.assert_allclose(degrade.kernel(p), k / k.sum(), rtol=1e-6, atol=1e-10)


def test_generalized_with_beta_one_is_gaussian():
    q = mahalanobis(17, 1.3, 2.6, 2.0)
    gauss = np.exp(-0.5 * q)
    for shape in ('generalized_aniso', 'aniso'):
        p = {'shape': shape, 'size': 17, 'sigma': (1.3, 2.6), 'theta': 2.0, 'beta': 1.0}
        np.testing.assert_allclose(degrade.kernel(p), gauss / gauss.sum(), rtol=1e-6, atol=1e-12)


def bessel_j1(x: np.ndarray) -> np.ndarray:
    """J1(x) = (1/pi) int_0^pi cos(t - x sin t) dt by the trapezoid rule: the integrand is even and 2 pi
    periodic, so the rule converges geometrically once the points outnumber x (here x < 45, 4001 points)."""
    t = np.linspace(0, np.pi, 4001)
    f = np.cos(t[None, :] - np.ravel(x)[:, None] * np.sin(t[None, :]))
    return (np.trapezoid(f, t, axis=1) / np.pi).reshape(np.shape(x))


@pytest.mark.parametrize('cutoff', [np.pi / 5, np.pi / 3, 2.0, np.pi])
def test_sinc_kernel_values(cutoff):
    """cutoff J1(cutoff r) / (2 pi r), its limit cutoff^2 / (4 pi) at r = 0, normalised; float32 storage
    bounds the error to ~1e-7 of the largest tap."""
    x, y = grid(21)
    r = np.hypot(x, y)
    r[10, 10] = 1
    k = cutoff * bessel_j1(cutoff * r) / (2 * np.pi * r)
    k[10, 10] = cutoff ** 2 / (4 * np.pi)
    k /= k.sum()
    np.testing.assert_allclose(degrade.sinc_kernel(21, cutoff), k, rtol=0, atol=1e-6 * np.abs(k).max())


def gibbs(distance: float, taps: int = 21) -> float:
    """Bound on the 1-D truncation ripple of an ideal low-pass at `distance` (radians per pixel) from its
    edge: the ripple is the tail (1/pi) int_{taps distance / 2}^inf sin(t) / t dt, and |that tail| <= 1/x."""
    return 2 / (np.pi * taps * distance)


def lebesgue(taps: int = 21) -> float:
    """(1/2 pi) int |D| over a period, D(u) = sin(taps u / 2) / sin(u / 2) the window's transform: the most
    a convolution with D / 2 pi can amplify an error (~2.22 for 21 taps)."""
    u = np.linspace(-np.pi, np.pi, 100001)[1:]
    return float(np.abs(np.sin(taps * u / 2) / np.sin(u / 2)).mean())


@pytest.mark.parametrize('cutoff', [np.pi / 3, np.pi / 2])
def test_sinc_frequency_response(cutoff):
    """|FFT| of the 21-tap kernel, zero-padded to 512 x 512, against the ideal disc: ~1 below 0.6 cutoff,
    ~0 from 1.5 cutoff to pi. The square window is two 1-D windows: the first axis ripples by gibbs(distance
    to the edge), the second adds its own and spreads the first's by at most lebesgue(), so the error is
    within (1 + lebesgue) gibbs; the normalisation by the truncated sum adds that bound at DC (distance
    cutoff). The measured error is a third to two thirds of this bound."""
    n = 512
    freq = np.fft.fftfreq(n) * 2 * np.pi
    radius = np.hypot(freq[None, :], freq[:, None])
    response = np.abs(np.fft.fft2(degrade.sinc_kernel(21, cutoff).astype(np.float64), (n, n)))
    spread = 1 + lebesgue()
    at_dc = spread * gibbs(cutoff)
    passband, stopband = radius < 0.6 * cutoff, (radius > 1.5 * cutoff) & (radius < np.pi)
    assert np.abs(response[passband] - 1).max() < (spread * gibbs(0.4 * cutoff) + at_dc) / (1 - at_dc)
    assert response[stopband].max() < spread * gibbs(0.5 * cutoff) / (1 - at_dc)


def test_blur_is_mirrored_correlation():
    """blur against sum_ij k[i, j] img[r + i - c, s + j - c] on the image padded by mirroring without the
    edge pixel (numpy's 'reflect'); OpenCV filters float32 (by DFT for large kernels), ~1e-6 error."""
    img = np.random.default_rng(1).random((19, 23, 3))
    p = {'shape': 'aniso', 'size': 9, 'sigma': (2.5, 0.8), 'theta': 0.9}
    k = degrade.kernel(p).astype(np.float64)
    padded = np.pad(img, ((4, 4), (4, 4), (0, 0)), mode='reflect')
    want = sum(k[i, j] * padded[i:i + 19, j:j + 23] for i in range(9) for j in range(9))
    got = image(degrade.blur(tensor(img), p, None))
    np.testing.assert_allclose(got, want, atol=1e-5)


# ---- noise

def gray_image(levels: list[int], size: int = 256) -> np.ndarray:
    """A size x size gray image whose columns cycle through the given 8-bit levels."""
    cols = np.array(levels)[np.arange(size) % len(levels)] / 255
    return np.broadcast_to(cols[None, :, None], (size, size, 3)).astype(np.float32)


@pytest.mark.parametrize('sigma', [3.0, 10.0])
def test_gaussian_noise_statistics(sigma):
    """On constant 0.5 (no clipping: 0.5 is > 12 sigma from 0 and 1) the noise of 196608 values has mean
    0 and std sigma / 255 within 5 standard errors (sd / sqrt(n) for the mean, sd / sqrt(2 n) for the sd)."""
    x = tensor(gray_image([128]))
    noise = image(degrade.noise(x, {'kind': 'gaussian', 'sigma': sigma, 'gray': False},
                                np.random.default_rng(2))) - image(x)
    sd, n = sigma / 255, noise.size
    assert abs(noise.mean()) < 5 * sd / math.sqrt(n)
    assert abs(noise.std() - sd) < 5 * sd / math.sqrt(2 * n)


@pytest.mark.parametrize('kind', ['gaussian', 'poisson'])
def test_gray_noise_is_one_map(kind):
    """Gray noise adds the same map to all three channels (bit for bit, float32), colour noise does not."""
    x = tensor(gray_image([100, 140]))
    p = {'kind': kind, 'sigma': 8.0, 'scale': 0.5}
    gray = degrade.noise(x, {**p, 'gray': True}, np.random.default_rng(3))[0]
    colour = degrade.noise(x, {**p, 'gray': False}, np.random.default_rng(3))[0]
    assert torch.equal(gray[0], gray[1]) and torch.equal(gray[0], gray[2])
    assert (colour[0] != colour[1]).float().mean() > 0.3 and (colour[1] != colour[2]).float().mean() > 0.3


def poisson_bounds(lam: float, levels: float, scale: float, n: int) -> tuple[float, float, float]:
    """The noise (Poisson(lam) / levels - lam / levels) scale: its variance, and 5 standard errors of the
    sample mean (sd / sqrt n) and variance (sqrt((mu4 - var^2) / n), Poisson mu4 = lam + 3 lam^2)."""
    var = scale ** 2 * lam / levels ** 2
    mu4 = scale ** 4 * (lam + 3 * lam ** 2) / levels ** 4
    return var, 5 * math.sqrt(var / n), 5 * math.sqrt((mu4 - var ** 2) / n)


def test_poisson_noise_variance_follows_intensity():
    """An image of two 8-bit levels has L = 2^ceil(log2 2) = 2, so at intensity v the noise has variance
    scale^2 v / L and mean 0; checked at both levels (the variance triples from 64 to 192) and on a constant
    image (L = 1). Scale 0.02 keeps every value in (0, 1) but with probability < 1e-12."""
    scale = 0.02
    for levels, l_count in (([64, 192], 2), ([160], 1)):
        x = tensor(gray_image(levels))
        noise = image(degrade.noise(x, {'kind': 'poisson', 'scale': scale, 'gray': False},
                                    np.random.default_rng(4))) - image(x)
        for i, level in enumerate(levels):
            sample = noise[:, i::len(levels)]
            var, mean_tol, var_tol = poisson_bounds(level / 255 * l_count, l_count, scale, sample.size)
            assert abs(sample.mean()) < mean_tol
            assert abs(sample.var() - var) < var_tol, (level, sample.var(), var)


def test_gray_poisson_noise_uses_bt601_luma():
    """Gray Poisson noise follows the BT.601 luma of a constant colour image, rounded to 8 bits:
    0.299 * 220 + 0.587 * 40 + 0.114 * 120 = 102.9 -> 103 (BT.709's weights give 84, 20% less variance).
    One map of 65536 values, L = 1; measured on the green channel, which no value clips."""
    scale = 0.1
    x = tensor(np.broadcast_to(np.array([220, 40, 120]) / 255, (256, 256, 3)))
    out = image(degrade.noise(x, {'kind': 'poisson', 'scale': scale, 'gray': True}, np.random.default_rng(5)))
    noise = out[..., 1] - 40 / 255
    var, mean_tol, var_tol = poisson_bounds(103 / 255, 1, scale, noise.size)
    assert abs(noise.mean()) < mean_tol
    assert abs(noise.var() - var) < var_tol, (noise.var(), var)


def test_noise_is_clipped():
    """Strong noise on levels 30 and 225 (neither 0 nor 1): the result stays in [0, 1] and reaches both
    ends (unclipped, Gaussian sigma 50 and Poisson scale 3 would overshoot both)."""
    x = tensor(gray_image([30, 225], 64))
    for p in ({'kind': 'gaussian', 'sigma': 50.0}, {'kind': 'poisson', 'scale': 3.0}):
        out = degrade.noise(x, {**p, 'gray': False}, np.random.default_rng(6))
        assert out.min() == 0 and out.max() == 1
        assert p['kind'] == 'poisson' or ((out > 0) & (out < 1)).float().mean() > 0.5


# ---- resize

def keys(t: np.ndarray, a: float = -0.75) -> np.ndarray:
    """Keys' cubic convolution kernel."""
    t = np.abs(t)
    return np.where(t <= 1, (a + 2) * t ** 3 - (a + 3) * t ** 2 + 1,
                    np.where(t < 2, a * t ** 3 - 5 * a * t ** 2 + 8 * a * t - 4 * a, 0))


def weights(n_in: int, n_out: int, mode: str) -> np.ndarray:
    """The n_out x n_in matrix of a 1-D resize: half-pixel centres src = (dst + 0.5) n_in / n_out - 0.5;
    bilinear clamps src below at 0 and its upper tap at the edge, bicubic clamps its four taps' indices."""
    w = np.zeros((n_out, n_in))
    src = (np.arange(n_out) + 0.5) * n_in / n_out - 0.5
    if mode == 'bilinear':
        src = np.maximum(src, 0)
        i0 = np.floor(src).astype(int)
        for row, (i, frac) in enumerate(zip(i0, src - i0)):
            w[row, i] += 1 - frac
            w[row, min(i + 1, n_in - 1)] += frac
        return w
    i0 = np.floor(src).astype(int)
    for row, (i, frac) in enumerate(zip(i0, src - i0)):
        for tap in (-1, 0, 1, 2):
            w[row, np.clip(i + tap, 0, n_in - 1)] += keys(frac - tap)
    return w


@pytest.mark.parametrize('mode', ['bilinear', 'bicubic'])
@pytest.mark.parametrize('size_in,size_out', [((13, 9), (29, 22)), ((29, 22), (13, 9)), ((13, 22), (20, 9))])
def test_resize_against_weight_matrices(mode, size_in, size_out):
    """out = Wy img Wx^T per channel, in float64; torch computes in float32 (~1e-6 error on values in [0, 1],
    the bicubic weights summing to at most ~1.3 in absolute value)."""
    img = np.random.default_rng(7).random((*size_in, 3))
    want = np.einsum('ri,ijc,sj->rsc', weights(size_in[0], size_out[0], mode), img,
                     weights(size_in[1], size_out[1], mode))
    got = image(degrade.resize(tensor(img), {'mode': mode, 'size': size_out}, None))
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_area_resize_integer_factors():
    """'area' down by 3 is the mean of each 3 x 3 block, up by 2 repeats each pixel (float32 sums: 1e-6)."""
    img = np.random.default_rng(8).random((24, 18, 3))
    down = image(degrade.resize(tensor(img), {'mode': 'area', 'size': (8, 6)}, None))
    np.testing.assert_allclose(down, img.reshape(8, 3, 6, 3, 3).mean((1, 3)), atol=1e-6)
    up = image(degrade.resize(tensor(img), {'mode': 'area', 'size': (48, 36)}, None))
    np.testing.assert_allclose(up, img.repeat(2, 0).repeat(2, 1), atol=1e-6)


# ---- jpeg

def colourful(rows: int = 40, cols: int = 48) -> np.ndarray:
    """An 8-bit RGB image with strong, different structure in each channel (so chroma matters)."""
    y, x = np.mgrid[:rows, :cols]
    rgb = np.stack([x * 255 / cols, 128 + 100 * np.sin(y / 3.0), (x // 8 + y // 8) % 2 * 200 + 20], -1)
    return np.clip(rgb + np.random.default_rng(9).normal(0, 10, rgb.shape), 0, 255).round().astype(np.uint8)


@pytest.mark.parametrize('quality', [30, 75, 95])
def test_jpeg_is_opencv_at_that_quality(quality):
    """The jpeg stage equals OpenCV's encode and decode of the BGR-ordered image, bit for bit; another
    quality gives another image."""
    img = colourful()
    ok, data = cv2.imencode('.jpg', cv2.cvtColor(img, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
    want = cv2.cvtColor(cv2.imdecode(data, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    x = tensor(img / 255)
    got = (image(degrade.jpeg(x, {'quality': quality}, None)) * 255).round().astype(np.uint8)
    np.testing.assert_array_equal(got, want)
    other = (image(degrade.jpeg(x, {'quality': quality - 20}, None)) * 255).round().astype(np.uint8)
    assert (other != want).mean() > 0.1


# ---- drawing: the configured distributions (Real-ESRGAN's train_realesrgan_x4plus.yml values)

@pytest.fixture(scope='module')
def model() -> degrade.Degradation:
    return degrade.from_settings(settings.parse([], 'train'))


def fits_counts(observed: list[int], probs: list[float]) -> None:
    """Chi-square goodness of fit of category counts against probabilities, at ALPHA."""
    observed = np.asarray(observed, float)
    expected = np.asarray(probs, float) / sum(probs) * observed.sum()
    assert scipy.stats.chisquare(observed, expected).pvalue > ALPHA, (observed, expected)


def fits_frequency(hits: int, n: int, p: float) -> None:
    """Exact binomial test of a frequency, at ALPHA."""
    assert scipy.stats.binomtest(int(hits), n, p).pvalue > ALPHA, (hits, n, p)


def fits_uniform(values, low: float, high: float) -> None:
    """Kolmogorov-Smirnov test against uniform(low, high), at ALPHA."""
    values = np.asarray(values, float)
    assert values.min() >= low and values.max() <= high
    assert scipy.stats.kstest(values, 'uniform', args=(low, high - low)).pvalue > ALPHA, (low, high)


@pytest.mark.parametrize('order', ['first', 'second'])
def test_draw_blur_distributions(model, order):
    """20000 blur steps: sinc by sinc_prob, sides uniform over the odd 7..21, shapes by kernel_prob, sigma
    uniform over blur_sigma (both axes for anisotropic shapes, one for isotropic ones, unrotated), theta
    uniform over [-pi, pi]."""
    o = getattr(model, order)
    rng = np.random.default_rng(10)
    steps = [degrade.draw_blur(rng, o, model.kernel_range) for _ in range(DRAWS)]
    sinc = [p for p in steps if p['shape'] == 'sinc']
    fits_frequency(len(sinc), DRAWS, o.sinc_prob)
    sides = list(range(model.kernel_range[0], model.kernel_range[1] + 1, 2))
    fits_counts([sum(p['size'] == side for p in steps) for side in sides], [1] * len(sides))
    gauss = [p for p in steps if p['shape'] != 'sinc']
    fits_counts([sum(p['shape'] == shape for p in gauss) for shape in o.kernel_list], o.kernel_prob)
    aniso = [p for p in gauss if p['shape'].endswith('aniso')]
    iso = [p for p in gauss if not p['shape'].endswith('aniso')]
    fits_uniform([p['sigma'][0] for p in gauss] + [p['sigma'][1] for p in aniso], *o.blur_sigma)
    fits_uniform([p['theta'] for p in aniso], -np.pi, np.pi)
    assert all(p['sigma'][0] == p['sigma'][1] and p['theta'] == 0 for p in iso)
    check_sinc_and_beta(sinc, gauss, o)


def check_sinc_and_beta(sinc: list[dict], gauss: list[dict], o: degrade.Order) -> None:
    """Sinc cutoffs uniform over [pi/3, pi] below side 13, [pi/5, pi] from 13 on; beta below or above 1
    with even chances, uniform over [low, 1] or [1, high] of betag_range / betap_range."""
    fits_uniform([p['cutoff'] for p in sinc if p['size'] < 13], np.pi / 3, np.pi)
    fits_uniform([p['cutoff'] for p in sinc if p['size'] >= 13], np.pi / 5, np.pi)
    assert all('beta' not in p for p in gauss if p['shape'] in ('iso', 'aniso'))
    for family, (low, high) in (('generalized', o.betag_range), ('plateau', o.betap_range)):
        betas = np.array([p['beta'] for p in gauss if p['shape'].startswith(family)])
        for part, (a, b) in ((betas[betas < 1], (low, 1)), (betas[betas > 1], (1, high))):
            if a < b:
                fits_frequency(len(part), len(betas), 0.5)
                fits_uniform(part, a, b)


@pytest.mark.parametrize('order', ['first', 'second'])
def test_draw_noise_distributions(model, order):
    """Gaussian by gaussian_noise_prob with sigma uniform over noise_range, else Poisson with scale uniform
    over poisson_scale_range; gray by gray_noise_prob."""
    o = getattr(model, order)
    rng = np.random.default_rng(11)
    steps = [degrade.draw_noise(rng, o) for _ in range(DRAWS)]
    fits_frequency(sum(p['kind'] == 'gaussian' for p in steps), DRAWS, o.gaussian_noise_prob)
    fits_frequency(sum(p['gray'] for p in steps), DRAWS, o.gray_noise_prob)
    fits_uniform([p['sigma'] for p in steps if p['kind'] == 'gaussian'], *o.noise_range)
    fits_uniform([p['scale'] for p in steps if p['kind'] == 'poisson'], *o.poisson_scale_range)


@pytest.mark.parametrize('order', ['first', 'second'])
def test_draw_factor_and_jpeg_distributions(model, order):
    """Up, down and keep by resize_prob, up factors uniform over [1, high], down over [low, 1]; JPEG
    qualities uniform over the integers of jpeg_range."""
    o = getattr(model, order)
    rng = np.random.default_rng(12)
    factors = np.array([degrade.draw_factor(rng, o) for _ in range(DRAWS)])
    fits_counts([(factors > 1).sum(), (factors < 1).sum(), (factors == 1).sum()], o.resize_prob)
    fits_uniform(factors[factors > 1], 1, o.resize_range[1])
    fits_uniform(factors[factors < 1], o.resize_range[0], 1)
    qualities = [degrade.draw_jpeg(rng, o)['quality'] for _ in range(DRAWS)]
    assert all(isinstance(q, int) for q in qualities)
    low, high = o.jpeg_range
    fits_counts([qualities.count(q) for q in range(low, high + 1)], [1] * (high - low + 1))


def final_steps(plan: list, lr_size: tuple[int, int]) -> tuple[bool, bool]:
    """Checks the end of a plan, JPEG and [resize to lr_size, optional sinc] in either order; returns
    (JPEG last, sinc present)."""
    names = [name for name, _ in plan]
    last_resize = len(names) - 1 - names[::-1].index('resize')
    sinc = names[last_resize + 1:last_resize + 2] == ['blur']
    jpeg_last = last_resize + 1 + sinc == len(names) - 1
    if jpeg_last:
        assert names[-1] == 'jpeg'
    else:
        assert names[last_resize - 1] == 'jpeg' and last_resize + 1 + sinc == len(names)
    assert plan[last_resize][1]['size'] == lr_size
    assert not sinc or plan[last_resize + 1][1]['shape'] == 'sinc'
    return jpeg_last, sinc


def test_draw_plan_structure(model):
    """4000 plans from a 96 x 96 HR crop to 24 x 24: blur, resize (to 96 x the first factor), noise, JPEG;
    a second blur by second_blur_prob; resize, noise; then JPEG before or after (even chances) the resize
    to lr_size and its sinc (final_sinc_prob)."""
    rng = np.random.default_rng(13)
    n, counts = 4000, np.zeros(3, int)
    low, high = model.first.resize_range
    for _ in range(n):
        plan = degrade.draw_plan(rng, model, (96, 96), (24, 24))
        names = [name for name, _ in plan]
        assert names[:4] == ['blur', 'resize', 'noise', 'jpeg']
        assert all(math.floor(96 * low) <= side <= math.floor(96 * high) for side in plan[1][1]['size'])
        second = names[4] == 'blur'
        assert names[4 + second:6 + second] == ['resize', 'noise'] and len(plan) in range(8 + second, 10 + second)
        counts += (second, *final_steps(plan, (24, 24)))
    fits_frequency(counts[0], n, model.second.blur_prob)
    fits_frequency(counts[1], n, 0.5)
    fits_frequency(counts[2], n, model.final_sinc_prob)


def test_final_noise():
    """final_noise_prob (the real-photo experiment's 0.5): 4000 plans, of which that share end with noise
    drawn as the second order's (Gaussian sigma uniform on noise_range2 by gaussian_noise_prob, Poisson
    scale on poisson_scale_range2) after the usual final steps; Real-ESRGAN's default (0) never adds it."""
    exp = degrade.from_settings(settings.parse(['--experiment=edsr-baseline-liif-real', '--noise_range2=[2.0,9.0]'],
                                               'train'))  # unlike the first order's [1, 15]
    assert exp.final_noise_prob == 0.5 and settings.parse([], 'train').final_noise_prob == 0
    rng = np.random.default_rng(16)
    n, last = 4000, []
    for _ in range(n):
        plan = degrade.draw_plan(rng, exp, (96, 96), (24, 24))
        if plan[-1][0] == 'noise':  # the second order's noise is always followed by the final steps
            last.append(plan[-1][1])
            plan = plan[:-1]
        final_steps(plan, (24, 24))
    fits_frequency(len(last), n, exp.final_noise_prob)
    gaussian = [p['sigma'] for p in last if p['kind'] == 'gaussian']
    fits_frequency(len(gaussian), len(last), exp.second.gaussian_noise_prob)
    fits_uniform(gaussian, *exp.second.noise_range)
    fits_uniform([p['scale'] for p in last if p['kind'] == 'poisson'], *exp.second.poisson_scale_range)


def test_drawn_plans_apply(model):
    """40 drawn plans, 48 x 48 HR to 12 x 12, through apply: uint8 at lr_size whatever the steps (the
    second resize may reach 3 x 3 and the kernels 21 taps, wider than the image)."""
    rng = np.random.default_rng(14)
    img = colourful(48, 48)
    for _ in range(40):
        out = degrade.apply(img, degrade.draw_plan(rng, model, (48, 48), (12, 12)), rng)
        assert out.shape == (12, 12, 3) and out.dtype == np.uint8


# ---- named degradations

def test_named_plans():
    """Each name as its one step, '+' keeping the order; blur1.5's kernel is the isotropic Gaussian of
    sigma 1.5 on 2 ceil(4.5) + 1 = 11 taps (float32: 1e-6 relative)."""
    assert degrade.named_plan('jpeg40') == [('jpeg', {'quality': 40})]
    [(name, p)] = degrade.named_plan('noise10')
    assert name == 'noise' and p['kind'] == 'gaussian' and p['sigma'] == 10 and not p['gray']
    [(name, p)] = degrade.named_plan('blur1.5')
    x, y = grid(11)
    gauss = np.exp(-(x * x + y * y) / (2 * 1.5 ** 2))
    assert name == 'blur' and p['size'] == 11
    np.testing.assert_allclose(degrade.kernel(p), gauss / gauss.sum(), rtol=1e-6)
    assert [name for name, _ in degrade.named_plan('jpeg40+noise10')] == ['jpeg', 'noise']
    assert [name for name, _ in degrade.named_plan('noise10+jpeg40+blur1.5')] == ['noise', 'jpeg', 'blur']


@pytest.mark.parametrize('name', ['jpeg0', 'jpeg101', 'jpeg40.5', 'jpeg40.0', 'noise-1', 'blur0', 'sharpen2', '',
                                  'jpeg40+', 'jpeg40\n', 'jpeg\u0664\u0660'])
def test_bad_names_refused(name):
    """Names outside jpegQ (Q an integer 1-100 in ASCII digits), noiseS, blurS (S > 0) joined by '+',
    the whole name (nothing after it, not even a newline)."""
    with pytest.raises(ValueError, match='degrade'):
        degrade.named_plan(name)


def test_degrade_named_is_seeded_by_key():
    """The same key gives the same noise, another key other noise; the output is uint8 of the input's shape."""
    img = colourful()
    first = degrade.degrade_named(img, 'jpeg40+noise10', 'baby.png')
    assert first.dtype == np.uint8 and first.shape == img.shape
    np.testing.assert_array_equal(degrade.degrade_named(img, 'jpeg40+noise10', 'baby.png'), first)
    assert (degrade.degrade_named(img, 'jpeg40+noise10', 'bird.png') != first).mean() > 0.3


# ---- checks

@pytest.mark.parametrize('arg,setting', [
    ('--blur_sigma=[-1,2]', 'blur_sigma'), ('--blur_sigma2=[0,1]', 'blur_sigma2'),
    ('--jpeg_range=[0,95]', 'jpeg_range'), ('--jpeg_range2=[30,101]', 'jpeg_range2'),
    ('--kernel_list=[]', 'kernel_list'), ('--kernel_prob=[0.5,0.25,0.12,0.03,0.12,0.03]', 'kernel_prob'),
    ('--kernel_range=[7,20]', 'kernel_range'), ('--kernel_range=[8,21]', 'kernel_range'),
    ('--resize_prob2=[0.5,0.5,0.5]', 'resize_prob2'), ('--final_sinc_prob=1.5', 'final_sinc_prob'),
    ('--noise_range=[-1,30]', 'noise_range'), ('--betag_range=[1.5,4]', 'betag_range'),
    ('--final_noise_prob=-0.1', 'final_noise_prob'),
])
def test_check_degradation_names_the_setting(arg, setting):
    with pytest.raises(ValueError, match=rf'^{setting}\b'):
        degrade.check_degradation(degrade.from_settings(settings.parse([arg], 'train')))


def test_default_degradation_accepted(model):
    degrade.check_degradation(model)
