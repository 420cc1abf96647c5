"""Real-world degradations: Real-ESRGAN's second-order model (Wang et al., ICCV-W 2021) for training
(train_data='degraded'), and the named, fixed degradations of test.py's --degrade protocol.

A degradation is a plan, a list of (operation, parameters) drawn before any pixel is touched, then
applied to an 8-bit image by `apply`. Operations, on float RGB in [0, 1]:
  blur     2-D correlation with a kernel (`kernel`), edges mirrored without repeating the edge pixel
  resize   torch's F.interpolate ('area', 'bilinear' or 'bicubic'; half-pixel centres, no antialias)
  noise    additive Gaussian noise (sigma in 8-bit levels) or Poisson noise, per channel or one gray
           map for all three; the result is clipped to [0, 1]
  jpeg     8-bit rounding, then a real JPEG encode and decode by OpenCV (libjpeg, 4:2:0) at a quality
The result is rounded to 8 bits.
"""
import math
import re
import zlib
from dataclasses import dataclass

import cv2
import numpy as np
import scipy.special
import torch
import torch.nn.functional as F

SHAPES = ('iso', 'aniso', 'generalized_iso', 'generalized_aniso', 'plateau_iso', 'plateau_aniso')
MODES = ('area', 'bilinear', 'bicubic')
GRAY = (0.299, 0.587, 0.114)  # ITU-R BT.601 luma, as Real-ESRGAN's gray noise


# ---- kernels

def kernel_grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """(x, y) offsets from the centre of an odd size x size kernel: x along columns, y along rows."""
    ax = np.arange(size, dtype=np.float64) - size // 2
    return np.meshgrid(ax, ax)


def gaussian_family(size: int, shape: str, sigma: tuple[float, float], theta: float, beta: float = 1.0) -> np.ndarray:
    """A Gaussian-type kernel with covariance R diag(sx^2, sy^2) R^T (R the rotation by theta from the x
    axis): 'gaussian' exp(-q / 2), 'generalized' exp(-q^beta / 2), 'plateau' 1 / (1 + q^beta), q the
    Mahalanobis form; normalised to sum 1."""
    c, s = math.cos(theta), math.sin(theta)
    rot = np.array([[c, -s], [s, c]])
    cov = rot @ np.diag([sigma[0] ** 2, sigma[1] ** 2]) @ rot.T
    inv = np.linalg.inv(cov)
    x, y = kernel_grid(size)
    q = inv[0, 0] * x * x + (inv[0, 1] + inv[1, 0]) * x * y + inv[1, 1] * y * y
    k = {'gaussian': lambda: np.exp(-0.5 * q), 'generalized': lambda: np.exp(-0.5 * q ** beta),
         'plateau': lambda: 1 / (q ** beta + 1)}[shape]()
    return (k / k.sum()).astype(np.float32)


def sinc_kernel(size: int, cutoff: float) -> np.ndarray:
    """The ideal circular low-pass filter of angular cutoff frequency `cutoff` (radians per pixel),
    cutoff J1(cutoff r) / (2 pi r), truncated to size x size and normalised to sum 1."""
    x, y = kernel_grid(size)
    r = np.hypot(x, y)
    with np.errstate(invalid='ignore', divide='ignore'):
        k = cutoff * scipy.special.j1(cutoff * r) / (2 * np.pi * r)
    k[size // 2, size // 2] = cutoff ** 2 / (4 * np.pi)  # the limit at r = 0
    return (k / k.sum()).astype(np.float32)


def kernel(p: dict) -> np.ndarray:
    """The kernel a blur step's parameters describe."""
    if p['shape'] == 'sinc':
        return sinc_kernel(p['size'], p['cutoff'])
    family = p['shape'].rsplit('_', 1)[0] if '_' in p['shape'] else 'gaussian'
    return gaussian_family(p['size'], family, p['sigma'], p['theta'], p.get('beta', 1.0))


# ---- operations on a (1, 3, H, W) float32 tensor; noise draws from the plan's generator

def blur(x: torch.Tensor, p: dict, rng: np.random.Generator) -> torch.Tensor:
    img = cv2.filter2D(x[0].permute(1, 2, 0).numpy(), -1, kernel(p), borderType=cv2.BORDER_REFLECT_101)
    return torch.from_numpy(img.reshape(*x.shape[2:], 3)).permute(2, 0, 1)[None]


def resize(x: torch.Tensor, p: dict, rng: np.random.Generator) -> torch.Tensor:
    corners = {} if p['mode'] == 'area' else {'align_corners': False}
    return F.interpolate(x, size=tuple(p['size']), mode=p['mode'], **corners)


def noise(x: torch.Tensor, p: dict, rng: np.random.Generator) -> torch.Tensor:
    img = x.numpy()[0]
    if p['gray']:
        img = np.tensordot(np.array(GRAY, np.float32), img, axes=1)[None]
    if p['kind'] == 'gaussian':
        n = rng.standard_normal(img.shape, dtype=np.float32) * np.float32(p['sigma'] / 255)
    else:  # Poisson counts at 2^ceil(log2(distinct 8-bit levels)) levels, scaled (Real-ESRGAN's rule)
        img = np.clip(np.round(img * 255), 0, 255) / 255
        levels = 2.0 ** math.ceil(math.log2(len(np.unique(img))))
        n = ((rng.poisson(img * levels) / levels - img) * p['scale']).astype(np.float32)
    return (x + torch.from_numpy(n)[None]).clamp_(0, 1)


def jpeg(x: torch.Tensor, p: dict, rng: np.random.Generator) -> torch.Tensor:
    return (as_tensor(jpeg_uint8(as_uint8(x), p['quality'])))


OPERATIONS = {'blur': blur, 'resize': resize, 'noise': noise, 'jpeg': jpeg}


def jpeg_uint8(img: np.ndarray, quality: int) -> np.ndarray:
    """An RGB uint8 image through OpenCV's JPEG encoder at `quality` and back."""
    ok, data = cv2.imencode('.jpg', img[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    return cv2.imdecode(data, cv2.IMREAD_COLOR)[..., ::-1]


def as_uint8(x: torch.Tensor) -> np.ndarray:
    return np.ascontiguousarray(x[0].clamp(0, 1).mul(255).round().to(torch.uint8).permute(1, 2, 0).numpy())


def as_tensor(img: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1)[None].float() / 255


def apply(img: np.ndarray, plan: list[tuple[str, dict]], rng: np.random.Generator) -> np.ndarray:
    """An H x W x 3 uint8 image through the plan's steps in order; uint8 again (rounded)."""
    x = as_tensor(img)
    for name, p in plan:
        x = OPERATIONS[name](x, p, rng)
    return as_uint8(x)


# ---- Real-ESRGAN's second-order model, drawn per training patch

@dataclass
class Order:
    """One order of the model: blur (probability blur_prob), random resize, noise, JPEG."""
    kernel_list: list
    kernel_prob: list
    sinc_prob: float
    blur_sigma: list
    betag_range: list
    betap_range: list
    blur_prob: float
    resize_prob: list
    resize_range: list
    gaussian_noise_prob: float
    noise_range: list
    poisson_scale_range: list
    gray_noise_prob: float
    jpeg_range: list


@dataclass
class Degradation:
    first: Order
    second: Order
    final_sinc_prob: float
    final_noise_prob: float
    kernel_range: list


ORDER_SETTINGS = [name for name in Order.__dataclass_fields__ if name != 'blur_prob']


def from_settings(cfg) -> Degradation:
    """The degradation config.py's degradation section describes (checked: check_degradation)."""
    def order(suffix: str, blur_prob: float) -> Order:
        return Order(blur_prob=blur_prob, **{name: getattr(cfg, name + suffix) for name in ORDER_SETTINGS})
    return Degradation(order('', 1.0), order('2', cfg.second_blur_prob), cfg.final_sinc_prob, cfg.final_noise_prob,
                       cfg.kernel_range)


def draw_blur(rng: np.random.Generator, o: Order, kernel_range: list) -> dict:
    """A blur step's parameters: an odd side drawn from kernel_range; a sinc with probability sinc_prob
    (cutoff in [pi/3, pi], or [pi/5, pi] from side 13 on), else a shape of kernel_list by kernel_prob, sigma
    drawn from blur_sigma (the same on both axes for the isotropic shapes, which are not rotated), theta
    from [-pi, pi], beta from [low, 1] or [1, high] with even chances."""
    size = 2 * int(rng.integers(kernel_range[0] // 2, kernel_range[1] // 2 + 1)) + 1
    if rng.random() < o.sinc_prob:
        return {'shape': 'sinc', 'size': size, 'cutoff': rng.uniform(np.pi / 3 if size < 13 else np.pi / 5, np.pi)}
    shape = o.kernel_list[rng.choice(len(o.kernel_list), p=np.array(o.kernel_prob) / sum(o.kernel_prob))]
    sx = rng.uniform(*o.blur_sigma)
    isotropic = not shape.endswith('aniso')
    p = {'shape': shape, 'size': size, 'sigma': (sx, sx if isotropic else rng.uniform(*o.blur_sigma)),
         'theta': 0.0 if isotropic else rng.uniform(-np.pi, np.pi)}
    if shape.startswith(('generalized', 'plateau')):
        low, high = o.betag_range if shape.startswith('generalized') else o.betap_range
        p['beta'] = rng.uniform(low, 1) if rng.random() < 0.5 else rng.uniform(1, high)
    return p


def draw_noise(rng: np.random.Generator, o: Order) -> dict:
    gray = bool(rng.random() < o.gray_noise_prob)
    if rng.random() < o.gaussian_noise_prob:
        return {'kind': 'gaussian', 'sigma': rng.uniform(*o.noise_range), 'gray': gray}
    return {'kind': 'poisson', 'scale': rng.uniform(*o.poisson_scale_range), 'gray': gray}


def draw_factor(rng: np.random.Generator, o: Order) -> float:
    """Up (from [1, high]), down (from [low, 1]) or kept, by resize_prob."""
    way = rng.choice(3, p=np.array(o.resize_prob) / sum(o.resize_prob))
    return (rng.uniform(1, o.resize_range[1]), rng.uniform(o.resize_range[0], 1), 1.0)[way]


def draw_jpeg(rng: np.random.Generator, o: Order) -> dict:
    return {'quality': int(rng.integers(o.jpeg_range[0], o.jpeg_range[1] + 1))}


def resize_step(rng: np.random.Generator, size: tuple[int, int]) -> tuple[str, dict]:
    return 'resize', {'mode': MODES[rng.integers(3)], 'size': (max(1, size[0]), max(1, size[1]))}


def draw_plan(rng: np.random.Generator, d: Degradation, hr_size: tuple[int, int],
              lr_size: tuple[int, int]) -> list[tuple[str, dict]]:
    """The second-order model from an HR crop of hr_size to lr_size: blur, resize by a drawn factor,
    noise, JPEG; blur (blur_prob), resize to lr_size x a drawn factor, noise; then in either order (even
    chances) JPEG and [resize to lr_size, sinc blur (final_sinc_prob)]; then noise drawn as the second
    order's (final_noise_prob; not in Real-ESRGAN, which always ends on the JPEG or the sinc)."""
    first, second = d.first, d.second
    f1 = draw_factor(rng, first)
    plan = [('blur', draw_blur(rng, first, d.kernel_range)),
            resize_step(rng, (math.floor(hr_size[0] * f1), math.floor(hr_size[1] * f1))),
            ('noise', draw_noise(rng, first)), ('jpeg', draw_jpeg(rng, first))]
    if rng.random() < second.blur_prob:
        plan.append(('blur', draw_blur(rng, second, d.kernel_range)))
    f2 = draw_factor(rng, second)
    plan += [resize_step(rng, (int(lr_size[0] * f2), int(lr_size[1] * f2))), ('noise', draw_noise(rng, second))]
    final = [resize_step(rng, lr_size)]
    if rng.random() < d.final_sinc_prob:
        size = 2 * int(rng.integers(d.kernel_range[0] // 2, d.kernel_range[1] // 2 + 1)) + 1
        final.append(('blur', {'shape': 'sinc', 'size': size, 'cutoff': rng.uniform(np.pi / 3, np.pi)}))
    jpeg_step = ('jpeg', draw_jpeg(rng, second))
    plan += (final + [jpeg_step]) if rng.random() < 0.5 else ([jpeg_step] + final)
    if d.final_noise_prob and rng.random() < d.final_noise_prob:  # no draw at 0: Real-ESRGAN's plans unchanged
        plan.append(('noise', draw_noise(rng, second)))
    return plan


def check_degradation(d: Degradation) -> None:
    """Refuse settings the model cannot draw from, naming the setting (config.py's names)."""
    lo, hi = d.kernel_range if len(d.kernel_range) == 2 else (0, 0)
    if not (isinstance(lo, int) and isinstance(hi, int) and 1 <= lo <= hi and lo % 2 and hi % 2):
        raise ValueError(f"kernel_range must be [low, high] of odd kernel sides, 1 <= low <= high, got {d.kernel_range}")
    for name, value in (('final_sinc_prob', d.final_sinc_prob), ('final_noise_prob', d.final_noise_prob),
                        ('second_blur_prob', d.second.blur_prob)):
        _probability(name, value)
    for suffix, o in (('', d.first), ('2', d.second)):
        _check_order(o, suffix)


def _check_order(o: Order, suffix: str) -> None:
    if not o.kernel_list:
        raise ValueError(f"kernel_list{suffix} is empty: name at least one of {', '.join(SHAPES)}")
    unknown = [s for s in o.kernel_list if s not in SHAPES]
    if unknown:
        raise ValueError(f"kernel_list{suffix}: unknown kernel {unknown[0]!r}; the shapes are {', '.join(SHAPES)}")
    _distribution(f'kernel_prob{suffix}', o.kernel_prob, len(o.kernel_list))
    _distribution(f'resize_prob{suffix}', o.resize_prob, 3)
    for name in ('sinc_prob', 'gaussian_noise_prob', 'gray_noise_prob'):
        _probability(name + suffix, getattr(o, name))
    _range(f'blur_sigma{suffix}', o.blur_sigma, low=0, open_low=True)
    _range(f'betag_range{suffix}', o.betag_range, low=0, open_low=True, around=1)
    _range(f'betap_range{suffix}', o.betap_range, low=0, open_low=True, around=1)
    _range(f'resize_range{suffix}', o.resize_range, low=0, open_low=True, around=1)
    _range(f'noise_range{suffix}', o.noise_range, low=0)
    _range(f'poisson_scale_range{suffix}', o.poisson_scale_range, low=0)
    _range(f'jpeg_range{suffix}', o.jpeg_range, low=1, high=100, integers=True)


def _probability(name: str, p) -> None:
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 <= p <= 1:
        raise ValueError(f"{name} must be a probability in [0, 1], got {p!r}")


def _distribution(name: str, probs, n: int) -> None:
    if len(probs) != n or any(isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 <= p <= 1 for p in probs):
        raise ValueError(f"{name} must hold {n} probabilities in [0, 1], got {probs!r}")
    if abs(sum(probs) - 1) > 1e-6:
        raise ValueError(f"{name} must add up to 1, got {probs!r} (sum {sum(probs):g})")


def _range(name: str, r, low: float, high: float = math.inf, open_low: bool = False, around: float | None = None,
           integers: bool = False) -> None:
    """[a, b] with low <= a <= b <= high (low < a when open_low), a <= around <= b when given."""
    kind = int if integers else (int, float)
    ok = (isinstance(r, list) and len(r) == 2 and all(isinstance(v, kind) and not isinstance(v, bool) for v in r)
          and all(math.isfinite(v) for v in r) and (low < r[0] if open_low else low <= r[0]) and r[0] <= r[1] <= high
          and (around is None or r[0] <= around <= r[1]))
    if not ok:
        bounds = f"{'above' if open_low else 'from'} {low:g}" + (f" to {high:g}" if high < math.inf else '')
        inside = f", around {around:g}" if around is not None else ''
        raise ValueError(f"{name} must be [low, high]{' of integers' if integers else ''} {bounds}{inside}, got {r!r}")


# ---- the named degradations of test.py's --degrade protocol

NAMED = re.compile(r'(jpeg)([0-9]+)|(noise|blur)([0-9]+(?:\.[0-9]+)?)')


def named_plan(name: str) -> list[tuple[str, dict]]:
    """'jpeg40+noise10+blur1.5' as a plan, left to right: jpegQ encodes at quality Q (1-100), noiseS adds
    Gaussian noise of sigma S 8-bit levels to each channel, blurS an isotropic Gaussian of sigma S pixels
    (side 2 ceil(3 S) + 1)."""
    plan = []
    for part in name.split('+'):
        m = NAMED.fullmatch(part)
        kind, text = (m.group(1) or m.group(3), m.group(2) or m.group(4)) if m else ('', '0')
        value = float(text)
        if not m or value <= 0 or (kind == 'jpeg' and value > 100):
            raise ValueError(f"degrade: {part!r} in {name!r} is not jpegQ (Q an integer 1-100), noiseS or blurS "
                             f"(S > 0), joined by '+', e.g. jpeg40+noise10")
        plan.append({'jpeg': ('jpeg', {'quality': int(value)}),
                     'noise': ('noise', {'kind': 'gaussian', 'sigma': value, 'gray': False}),
                     'blur': ('blur', {'shape': 'iso', 'size': 2 * math.ceil(3 * value) + 1, 'sigma': (value, value),
                                       'theta': 0.0})}[kind])
    return plan


def degrade_named(img: np.ndarray, name: str, key: str) -> np.ndarray:
    """An 8-bit LR image through the named degradation; its noise is seeded by `key` (the image's name)
    and the image's size, so every run and every machine gets the same input."""
    rng = np.random.default_rng([zlib.crc32(key.encode()), *img.shape[:2]])
    return apply(img, named_plan(name), rng)
