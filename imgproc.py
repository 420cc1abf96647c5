"""Image processing: coordinates, image I/O (with what files carry beyond pixels: alpha, bit depth,
colour profile, orientation, EXIF), colour conversion and resizing."""
import io
import math
import struct
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image

from files import replacing
from render import pixel_centres


def make_coord(shape: tuple[int, ...], flatten: bool = True) -> torch.Tensor:
    """Pixel-centre coordinates (render.pixel_centres) per axis, row axis first: (H*W, 2) or (H, W, 2)."""
    axes = [pixel_centres(n) for n in shape]
    coord = torch.stack(torch.meshgrid(*axes, indexing='ij'), -1)
    return coord.view(-1, len(shape)) if flatten else coord


class ImageError(ValueError):
    """A file that is missing or cannot be read as an image."""


# The most pixels an image file may claim. read_image holds the file's samples and a float32 copy (up to
# 18 bytes a pixel: 1.8 GB here), and 100 Mpx is 35 times DIV2K's largest image; it is also below Pillow's
# own refusal (2 x Image.MAX_IMAGE_PIXELS = 179 Mpx), so every header within it is read whole.
MAX_IMAGE_PIXELS = 100_000_000


def header_size(path: str | Path, whole: bool = False) -> tuple[int, int] | None:
    """(height, width) of an image file from its header (Pillow reads only the header), or None for a
    format Pillow does not recognise. ImageError when the header claims more than MAX_IMAGE_PIXELS or
    cannot be parsed. With `whole`, a PNG's chunk checksums and a JPEG's compressed data are read to
    their end too (the JPEG decoded at 1/8 size), so that a truncated or damaged file is refused here
    instead of being decoded in part (OpenCV fills a cut JPEG with grey and only warns)."""
    try:
        with warnings.catch_warnings():  # Pillow warns from 89 Mpx on; MAX_IMAGE_PIXELS is the limit here
            warnings.simplefilter('ignore', Image.DecompressionBombWarning)
            with Image.open(path) as im:
                height, width = im.height, im.width
                if orientation_of(im) >= 5:  # shown turned a quarter: as it is shown (orient)
                    height, width = width, height
                if whole and height * width <= MAX_IMAGE_PIXELS:
                    _read_to_end(im)
    except Image.UnidentifiedImageError:
        return None
    except Image.DecompressionBombError:  # twice Pillow's limit: beyond MAX_IMAGE_PIXELS too
        height, width = None, None
    except Exception as e:  # Pillow parsing untrusted bytes: any failure means a damaged file
        reason = ' '.join(str(e).split())[:200]
        raise ImageError(f"{path} is truncated or damaged ({type(e).__name__}: {reason})") from None
    if height is None or height * width > MAX_IMAGE_PIXELS:
        claim = f"{height}x{width}" if height else f"more than {2 * Image.MAX_IMAGE_PIXELS:,}"
        raise ImageError(f"{path}: its header claims {claim} pixels, more than the {MAX_IMAGE_PIXELS:,} an image "
                         f"may have (imgproc.MAX_IMAGE_PIXELS); it is not decoded")
    return height, width


def image_size(path: Path) -> tuple[int, int]:
    """(height, width) of an image file from its header, without decoding the pixels (header_size:
    too large or damaged headers raise ImageError); a format Pillow does not recognise is decoded."""
    return header_size(path) or load_image(path).shape[:2]


def _read_to_end(im: Image.Image) -> None:
    """Read a PNG's chunks (checking their CRCs) or a JPEG's scans (decoding at 1/8 size) to the end."""
    if im.format == 'PNG':
        im.verify()
    elif im.format == 'JPEG':
        im.draft(im.mode, (1, 1))
        im.load()


def load_image(path: str | Path) -> np.ndarray:
    """An image file as shown (its EXIF orientation applied): HxWx3 RGB, uint8 or uint16. Grayscale is
    replicated to 3 channels (like the official PIL `convert('RGB')`) and an alpha channel is dropped.
    The file is checked first (header_size with `whole`): too large, truncated or damaged files are
    refused with ImageError."""
    img = decode(path)
    if img.shape[2] <= 2:  # gray (+ alpha)
        return np.repeat(img[:, :, :1], 3, axis=2)
    return np.ascontiguousarray(img[:, :, 2::-1])  # BGR(A) -> RGB


def decode(path: str | Path) -> np.ndarray:
    """The samples of an image file as OpenCV decodes them (HxWxC: gray, gray + alpha, BGR or BGRA;
    uint8 or uint16), turned as the file is shown (orient), after load_image's checks."""
    path = Path(path)
    if not path.exists():
        raise ImageError(f"image {path} does not exist")
    if not path.is_file():
        raise ImageError(f"image {path} is not a file")
    header_size(path, whole=True)
    try:
        img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    except cv2.error:
        img = None
    if img is None:
        raise ImageError(f"{path} is not a readable image (PNG, JPEG, BMP, TIFF or WebP expected)")
    if img.dtype not in (np.uint8, np.uint16):
        raise ImageError(f"{path} has unsupported sample type {img.dtype} (8- or 16-bit expected)")
    if img.ndim == 2:
        img = img[:, :, None]
    try:
        with Image.open(path) as im:
            return orient(img, orientation_of(im))
    except Image.UnidentifiedImageError:  # a format only OpenCV reads: no orientation to apply
        return img


ORIENTATION = 0x0112  # the EXIF / TIFF tag saying how the stored pixels are turned for display
# EXIF orientation -> (transpose, reverse the rows, reverse the columns) that shows the stored pixels as
# meant, in that order (EXIF 2.3, tag 274; the same turns as PIL.ImageOps.exif_transpose)
ORIENTATIONS = {1: (False, False, False), 2: (False, False, True), 3: (False, True, True),
                4: (False, True, False), 5: (True, False, False), 6: (True, False, True),
                7: (True, True, True), 8: (True, True, False)}


def orient(img: np.ndarray, orientation: int) -> np.ndarray:
    """Stored HxW[xC] pixels as shown, for an EXIF orientation (anything but 2-8 leaves them as they are)."""
    transpose, rows, cols = ORIENTATIONS.get(orientation, ORIENTATIONS[1])
    img = img.swapaxes(0, 1) if transpose else img
    return np.ascontiguousarray(img[::-1 if rows else 1, ::-1 if cols else 1])


def exif_of(im: Image.Image) -> Image.Exif:
    """An open image's EXIF without decoding its pixels (a PNG's eXIf chunk when it comes before the
    pixel data, where nearly every writer puts it; Pillow would decode the whole file to look further)."""
    if im.format != 'PNG':
        return im.getexif()
    exif = Image.Exif()
    if 'exif' in im.info:
        exif.load(im.info['exif'])
    return exif


def orientation_of(im: Image.Image) -> int:
    """An open image's EXIF orientation (1 = as stored)."""
    try:
        return int(exif_of(im).get(ORIENTATION, 1))
    except (TypeError, ValueError, SyntaxError, struct.error):  # a damaged EXIF block: shown as stored
        return 1


def to_float(img: np.ndarray) -> np.ndarray:
    """uint8 / uint16 image -> float32 in [0, 1]."""
    return img.astype(np.float32) / (65535 if img.dtype == np.uint16 else 255)


def load_uint8(path: str | Path) -> np.ndarray:
    """An image file as HxWx3 RGB uint8; 16-bit samples are rounded to 8 bits."""
    img = load_image(path)
    if img.dtype == np.uint16:
        img = ((img.astype(np.uint32) + 128) // 257).astype(np.uint8)  # round(v / 257), no ties
    return img


def read_image(path: str | Path) -> np.ndarray:
    """An image file as HxWx3 RGB float32 in [0, 1] (16-bit files scaled by 65535)."""
    return to_float(load_image(path))


def pil_resize(img: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """PIL bicubic resize of an 8-bit HxWx3 image to size = (height, width), as the official
    training and on-the-fly test inputs are made."""
    if img.dtype != np.uint8:
        raise TypeError(f"pil_resize takes 8-bit images, got {img.dtype}")
    return np.asarray(Image.fromarray(img).resize((size[1], size[0]), Image.BICUBIC))


def pil_resize_float(plane: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """PIL bicubic resize (pil_resize's) of an HxW float plane to size = (height, width), in Pillow's float
    mode: no 8-bit rounding, float32 out (not clamped)."""
    return np.array(Image.fromarray(plane.astype(np.float32)).resize((size[1], size[0]), Image.BICUBIC))


def bicubic_taps(in_size: int, out_size: int, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
    """Pillow's bicubic resampling taps (Resample.c, 8-bit path) for output pixels [start, stop) of
    an axis resized from in_size to out_size: the first input pixel (n,) and the fixed-point weights
    (n, k) of each, computed in the same order as Pillow so that the results are bit for bit its own."""
    scale = in_size / out_size
    filterscale = max(scale, 1.0)
    support = 2.0 * filterscale  # the bicubic kernel spans [-2, 2] input pixels when magnifying
    centre = (np.arange(start, stop) + 0.5) * scale
    first = np.maximum(np.trunc(centre - support + 0.5), 0).astype(np.int64)
    end = np.minimum(np.trunc(centre + support + 0.5), in_size).astype(np.int64)
    taps = first[:, None] + np.arange(int(math.ceil(support)) * 2 + 1)
    x = np.abs((taps - centre[:, None] + 0.5) * (1.0 / filterscale))
    a = -0.5
    weights = np.where(x < 1, ((a + 2) * x - (a + 3)) * x * x + 1,
                       np.where(x < 2, (((x - 5) * x + 8) * x - 4) * a, 0.0))
    weights[taps >= end[:, None]] = 0
    total = np.zeros(len(centre))
    for k in range(weights.shape[1]):  # summed tap by tap, as Pillow does
        total += weights[:, k]
    weights /= total[:, None]
    fixed = np.trunc(weights * (1 << 22) + np.where(weights < 0, -0.5, 0.5)).astype(np.int64)
    return first, fixed


def pil_resample(img: np.ndarray, first: np.ndarray, fixed: np.ndarray) -> np.ndarray:
    """One Pillow pass along axis 0 of an 8-bit image with bicubic_taps' taps:
    out[i] = clip8((2^21 + sum_k img[first[i] + k] * fixed[i, k]) >> 22)."""
    acc = np.full((len(first), *img.shape[1:]), 1 << 21, np.int64)
    last = img.shape[0] - 1
    for k in range(fixed.shape[1]):  # taps past the end have weight 0: any row will do for them
        acc += img[np.minimum(first + k, last)].astype(np.int64) * fixed[:, k, None, None]
    return np.clip(acc >> 22, 0, 255).astype(np.uint8)


def bicubic_window(img: np.ndarray, size: tuple[int, int], window: tuple[int, int, int, int]) -> np.ndarray:
    """The window (top, left, height, width) of pil_resize(img, size) (PIL bicubic of an 8-bit
    HxWx3 image; each channel alike, an alpha too), computed from the input rows and columns it needs
    only: the same pixels."""
    top, left, height, width = window
    rows_first, rows_fixed = bicubic_taps(img.shape[0], size[0], top, top + height)
    cols_first, cols_fixed = bicubic_taps(img.shape[1], size[1], left, left + width)
    r0 = int(rows_first.min())
    r1 = min(img.shape[0], int(rows_first.max()) + rows_fixed.shape[1])
    # Pillow resizes along the width first, then the height, rounding to 8 bits in between (an axis
    # that keeps its size gets weights 1, 0, ...: the same as Pillow skipping that pass)
    wide = pil_resample(img[r0:r1].swapaxes(0, 1), cols_first, cols_fixed).swapaxes(0, 1)
    return pil_resample(wide, rows_first - r0, rows_fixed)


def pil_resample_torch(img: torch.Tensor, first: torch.Tensor, fixed: torch.Tensor,
                       length: torch.Tensor) -> torch.Tensor:
    """pil_resample along dim 1 of a batch of 8-bit images (B, L, ...) on any device, each image b with
    its own taps: first[b] (n,), fixed[b] (n, K) and its length[b] <= L (the rows past it are padding;
    taps there have weight 0). Integer arithmetic, so the result is Pillow's to the bit: (B, n, ...) uint8."""
    taps = torch.minimum(first.unsqueeze(-1) + torch.arange(fixed.shape[-1], device=img.device),
                         (length - 1).view(-1, 1, 1))
    rows = img[torch.arange(len(img), device=img.device).view(-1, 1, 1), taps]  # (B, n, K, ...)
    acc = (rows.long() * fixed.view(*fixed.shape, *[1] * (img.dim() - 2))).sum(2) + (1 << 21)
    return (acc >> 22).clamp_(0, 255).to(torch.uint8)


SAMPLE_TYPES = {8: np.uint8, 16: np.uint16}  # integer sample type of each bit depth


def to_integer(img: np.ndarray, bits: int = 8) -> np.ndarray:
    """Float samples in [0, 1] -> uint8 (uint16 with bits=16): clipped to [0, 1], then ROUNDED half up
    (never truncated), in float64."""
    dtype = SAMPLE_TYPES[bits]
    return np.floor(np.clip(img.astype(np.float64), 0, 1) * np.iinfo(dtype).max + 0.5).astype(dtype)


def quantize(img: torch.Tensor, bits: int = 8, rows: int = 256) -> np.ndarray:
    """A (1, 3, H, W) float tensor in [0, 1] -> HxWx3 uint8 (uint16 with bits=16) by to_integer, `rows`
    at a time, so that a huge output never has a whole float64 copy."""
    hwc = img[0].permute(1, 2, 0)
    out = np.empty(tuple(hwc.shape), SAMPLE_TYPES[bits])
    for r in range(0, hwc.shape[0], rows):
        out[r:r + rows] = to_integer(hwc[r:r + rows].to('cpu', torch.float64).numpy(), bits)
    return out


def write_image(path: str | Path, img: np.ndarray, bits: int = 8) -> Path:
    """Write an HxWx3 RGB (or HxW gray, HxWx4 RGBA) image; the format follows the extension
    (PNG, JPEG, BMP, TIFF, ... whatever OpenCV writes). Float input is taken as [0, 1], clipped and
    ROUNDED (never truncated) to 8 bits, or to 16 bits with bits=16 (PNG/TIFF only); uint8 and
    uint16 input is written as is. Parent folders are created; the file appears whole or not at all
    (`replacing`). Returns the path."""
    path = Path(path)
    if bits not in (8, 16):
        raise ValueError(f"write_image: bits must be 8 or 16, got {bits} (writing {path})")
    if not cv2.haveImageWriter(str(path)):
        raise ValueError(f"cannot write {path}: unsupported image extension '{path.suffix}'")
    img = np.asarray(img)
    if img.ndim not in (2, 3) or (img.ndim == 3 and img.shape[2] not in (1, 3, 4)) or img.size == 0:
        raise ValueError(f"cannot write {path}: expected HxW, HxWx3 or HxWx4, got shape {img.shape}")
    if img.dtype.kind == 'f':
        if not np.isfinite(img).all():
            raise ValueError(f"cannot write {path}: the image has NaN or infinite values")
        img = to_integer(img, bits)
    elif img.dtype not in (np.uint8, np.uint16):
        raise ValueError(f"cannot write {path}: unsupported sample type {img.dtype}")
    if img.dtype == np.uint16 and path.suffix.lower() not in ('.png', '.tif', '.tiff'):
        raise ValueError(f"cannot write {path}: 16-bit images need a .png or .tif file")
    if img.ndim == 3 and img.shape[2] >= 3:  # RGB(A) -> BGR(A)
        img = np.concatenate([img[:, :, 2::-1], img[:, :, 3:]], axis=2)
    try:  # encoded in memory, written by Python: a full disk is an OSError with its reason (errno)
        encoded, data = cv2.imencode(path.suffix, np.ascontiguousarray(img))
    except cv2.error as e:
        raise ValueError(f"could not write image {path}: {' '.join(str(e).split())}") from None
    if not encoded:
        raise ValueError(f"could not encode image {path}")
    path.parent.mkdir(parents=True, exist_ok=True)
    with replacing(path) as tmp, open(tmp, 'wb') as f:
        f.write(data)
    return path


# Pillow modes read_picture takes, by what they hold; anything else (CMYK with alpha, 32-bit integer or
# float samples, ...) is refused. CMYK becomes RGB (OpenCV's libjpeg conversion, Adobe's inverted CMYK too).
GRAY_MODES = ('1', 'L', 'LA', 'La', 'I', 'I;16', 'I;16B', 'I;16L', 'I;16N')  # 'I': 32-bit samples are refused by decode
COLOUR_MODES = ('P', 'PA', 'RGB', 'RGBA', 'RGBa', 'RGBX', 'CMYK', 'YCbCr')
EXIF_FORMATS = ('JPEG', 'MPO', 'WEBP', 'PNG')  # inputs whose EXIF is carried (a TIFF's tags describe its own layout)


@dataclass
class Picture:
    """An image file as inference reads it: the colour the model sees, and what its output carries again."""
    rgb: np.ndarray  # HxWx3 float32 in [0, 1] as shown (EXIF orientation applied); gray replicated to RGB
    alpha: np.ndarray | None  # HxW float32 in [0, 1]; None when the file has no transparency
    gray: bool  # the file holds one colour channel
    bits: int  # 8 or 16: the file's sample depth
    icc: bytes | None  # the embedded ICC colour profile
    exif: bytes | None  # the EXIF block without its orientation (applied to the pixels already)


def read_picture(path: str | Path) -> Picture:
    """An image file with its alpha, gray-ness, bit depth, ICC profile and EXIF (the same samples and
    checks as load_image). ImageError for what cannot be read: float samples, unknown modes."""
    img = decode(path)
    try:
        im = Image.open(path)
    except Image.UnidentifiedImageError:  # OpenCV decodes layouts Pillow refuses (e.g. an alpha-only TIFF)
        im = None
    if im is None or im.mode not in GRAY_MODES + COLOUR_MODES:
        raise ImageError(f"{path} has an unsupported layout ({im.mode if im else 'unknown to Pillow'}): gray, RGB, "
                         f"CMYK or palette, with or without alpha, 8 or 16 bits expected")
    with im:
        gray, icc, exif = im.mode in GRAY_MODES, im.info.get('icc_profile'), exif_of(im)
        if im.mode == 'CMYK':  # its profile describes CMYK, not the RGB read here
            icc = None
        carry_exif = im.format in EXIF_FORMATS
    exif.pop(ORIENTATION, None)
    colour = img[:, :, :1] if gray or img.shape[2] <= 2 else img[:, :, 2::-1]  # OpenCV gives LA as BGRA
    return Picture(rgb=np.repeat(to_float(colour), 3 // colour.shape[2], axis=2),
                   alpha=to_float(img[:, :, -1]) if img.shape[2] in (2, 4) else None,
                   gray=gray, bits=8 if img.dtype == np.uint8 else 16, icc=icc or None,
                   exif=exif.tobytes() if carry_exif and len(exif) else None)


# The formats write_picture writes, by extension, and what each holds beyond 8-bit colour. Pillow writes
# no 16-bit colour: those PNGs and TIFFs are OpenCV's, and such a TIFF keeps no profile or EXIF.
FORMATS = {'.png': 'PNG', '.jpg': 'JPEG', '.jpeg': 'JPEG', '.webp': 'WEBP', '.tif': 'TIFF', '.tiff': 'TIFF',
           '.bmp': 'BMP'}
HOLDS_ALPHA = ('PNG', 'WEBP', 'TIFF')
HOLDS_16_BITS = ('PNG', 'TIFF')


def format_holds(suffix: str, channels: int, bits: int) -> set[str]:
    """What a file of `suffix` holds of an image of `channels` (1 gray, 2 gray + alpha, 3 RGB, 4 RGBA)
    samples of `bits` beyond 8-bit colour: 'alpha', '16-bit', 'ICC' (profile), 'EXIF'."""
    kind = FORMATS[suffix.lower()]
    tags = kind != 'BMP' and not (kind == 'TIFF' and bits == 16 and channels > 1)
    return ({'alpha'} if kind in HOLDS_ALPHA else set()) | ({'16-bit'} if kind in HOLDS_16_BITS else set()) \
        | ({'ICC', 'EXIF'} if tags else set())


def three_to_one(t: torch.Tensor) -> torch.Tensor:
    """A render (B, 3, H, W) of a one-channel image replicated to RGB (gray, or alpha) back to one
    channel (B, 1, H, W): the mean of the three."""
    return t.mean(1, keepdim=True)


def write_picture(path: str | Path, pixels: np.ndarray, icc: bytes | None = None, exif: bytes | None = None,
                  quality: int = 95) -> Path:
    """Write HxWxC uint8 / uint16 samples (C: 1 gray, 2 gray + alpha, 3 RGB, 4 RGBA) in the format of
    the extension, with the ICC profile and EXIF where it holds them (`format_holds` says what it does:
    the caller gives only what fits); `quality` for JPEG and WebP. Whole or not at all (`replacing`)."""
    path = Path(path)
    kind = FORMATS.get(path.suffix.lower())
    if kind is None:
        raise ValueError(f"cannot write {path}: unsupported image extension '{path.suffix}' "
                         f"({', '.join(FORMATS)} expected)")
    if pixels.shape[2] == 2 and (kind == 'TIFF' or pixels.dtype == np.uint16):  # gray + alpha as RGBA:
        # nothing here writes 16-bit gray + alpha, and OpenCV reads a gray + alpha TIFF without its alpha
        pixels = np.concatenate([np.repeat(pixels[:, :, :1], 3, axis=2), pixels[:, :, 1:]], axis=2)
    if pixels.dtype == np.uint16 and pixels.shape[2] > 1:  # 16-bit colour: OpenCV
        bgra = np.concatenate([pixels[:, :, 2::-1], pixels[:, :, 3:]], axis=2)
        data = cv2.imencode(path.suffix, np.ascontiguousarray(bgra))[1].tobytes()
        if kind == 'PNG':
            data = png_with_chunks(data, icc, exif)
    else:
        options = {'icc_profile': icc, 'exif': exif, 'quality': quality if kind in ('JPEG', 'WEBP') else None}
        buffer = io.BytesIO()
        Image.fromarray(pixels[:, :, 0] if pixels.shape[2] == 1 else pixels).save(
            buffer, kind, **{k: v for k, v in options.items() if v is not None})
        data = buffer.getvalue()
    path.parent.mkdir(parents=True, exist_ok=True)
    with replacing(path) as tmp, open(tmp, 'wb') as f:
        f.write(data)
    return path


def png_with_chunks(png: bytes, icc: bytes | None, exif: bytes | None) -> bytes:
    """A PNG file with an iCCP (ICC profile) and an eXIf chunk put right after its IHDR (PNG 1.2, 3rd ed.)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack('>I', len(data)) + kind + data + struct.pack('>I', zlib.crc32(kind + data))
    extra = chunk(b'iCCP', b'ICC profile\0\0' + zlib.compress(icc)) if icc else b''
    if exif:
        extra += chunk(b'eXIf', exif.removeprefix(b'Exif\0\0'))
    return png[:33] + extra + png[33:]  # the 8-byte signature and the 25-byte IHDR chunk come first


def image_to_tensor(img: np.ndarray) -> torch.Tensor:
    """HxWx3 (or HxW gray) uint8, uint16 or float [0, 1] image -> (3, H, W) float32 tensor in [0, 1]."""
    if img.ndim == 2:
        img = np.repeat(img[:, :, None], 3, axis=2)
    if img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"image_to_tensor expects an HxWx3 image, got shape {img.shape}")
    if img.dtype.kind != 'f':
        img = to_float(img)
    return torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1), dtype=np.float32))


def tensor_to_image(t: torch.Tensor) -> np.ndarray:
    """(3, H, W) or (1, 3, H, W) tensor -> HxWx3 float32 numpy image (values kept, not clamped)."""
    if t.dim() == 4 and t.shape[0] == 1:
        t = t[0]
    if t.dim() != 3 or t.shape[0] != 3:
        raise ValueError(f"tensor_to_image expects (3, H, W) or (1, 3, H, W), got {tuple(t.shape)}")
    return t.detach().to('cpu', torch.float32).permute(1, 2, 0).contiguous().numpy()


# MATLAB rgb2ycbcr (ITU-R BT.601, studio swing) for R, G, B in [0, 1], YCbCr in 0-255 units.
YCBCR_MATRIX = np.array([[65.481, 128.553, 24.966],
                         [-37.797, -74.203, 112.0],
                         [112.0, -93.786, -18.214]])
YCBCR_OFFSET = np.array([16.0, 128.0, 128.0])


# ---------------------------------------------------------------- MATLAB-compatible bicubic resize

def cubic(x: np.ndarray) -> np.ndarray:
    """Keys' cubic convolution kernel with a = -0.5 (MATLAB's 'bicubic'), support [-2, 2]."""
    ax = np.abs(x)
    ax2, ax3 = ax * ax, ax * ax * ax
    return ((1.5 * ax3 - 2.5 * ax2 + 1) * (ax <= 1)
            + (-0.5 * ax3 + 2.5 * ax2 - 4 * ax + 2) * ((ax > 1) & (ax <= 2)))


def resize_weights(in_len: int, out_len: int, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """Per-axis taps of MATLAB imresize: weights (out_len, P) float64, each row summing to 1, and
    0-based source indices (out_len, P). When shrinking (scale < 1) the kernel is stretched by
    1/scale (antialiasing, support 4/scale). Out-of-range taps are clamped to the edge pixel."""
    width = 4.0 / scale if scale < 1 else 4.0
    out_pos = np.arange(1, out_len + 1, dtype=np.float64)
    centre = out_pos / scale + 0.5 * (1 - 1 / scale)  # 1-based source position of each output pixel
    left = np.floor(centre - width / 2)
    taps = int(math.ceil(width)) + 2
    index = left[:, None] + np.arange(taps)[None, :]
    dist = centre[:, None] - index
    weights = scale * cubic(scale * dist) if scale < 1 else cubic(dist)
    weights /= weights.sum(axis=1, keepdims=True)
    index = np.clip(index.astype(np.int64) - 1, 0, in_len - 1)
    return weights, index


def _resize_plan(in_hw: tuple[int, int], scale, size) -> list[tuple[int, int, float]]:
    """[(axis, out_len, axis scale), ...] in MATLAB's order: the axis with the smaller scale first,
    the row axis (height) first on a tie."""
    if (scale is None) == (size is None):
        raise ValueError("imresize: give exactly one of scale and size")
    if size is not None:
        out_hw = tuple(int(n) for n in size)
        if len(out_hw) != 2 or min(out_hw) < 1:
            raise ValueError(f"imresize: size must be (out_h, out_w) of positive ints, got {size}")
        scales = tuple(o / i for o, i in zip(out_hw, in_hw))
    else:
        scales = tuple(float(s) for s in (scale if isinstance(scale, (tuple, list)) else (scale, scale)))
        if len(scales) != 2 or not all(math.isfinite(s) and s > 0 for s in scales):
            raise ValueError(f"imresize: scale must be a positive number or (sh, sw), got {scale}")
        # MATLAB: ceil(in * scale); the tolerance keeps float fuzz (30 * 0.1) from adding a pixel
        out_hw = tuple(max(1, math.ceil(i * s - 1e-9)) for i, s in zip(in_hw, scales))
    if out_hw[0] * out_hw[1] > 2 ** 31:
        raise ValueError(f"imresize: output size {out_hw} is absurdly large")
    order = sorted(range(2), key=lambda axis: scales[axis])  # stable: height first on a tie
    return [(axis, out_hw[axis], scales[axis]) for axis in order]


def _round_to(x: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """MATLAB's float -> integer conversion: round half away from zero, saturate."""
    info = np.iinfo(dtype)
    return np.clip(np.sign(x) * np.floor(np.abs(x) + 0.5), info.min, info.max)


def imresize(image: np.ndarray, scale=None, size: tuple[int, int] | None = None) -> np.ndarray:
    """MATLAB-compatible bicubic imresize of an HxW or HxWxC numpy image (bit-exact with MATLAB's
    imresize(image, scale, 'bicubic') on uint8 images).

    scale: factor (> 1 enlarges) as a number or (sh, sw); the output is ceil(in * scale).
    size: (out_h, out_w) instead of scale. The two 1-D passes run in MATLAB's order (smaller
    scale first, height first on a tie). Integer input (uint8/uint16) gives the same type, rounded
    half away from zero after EACH pass as MATLAB does; float input gives float of the same type.
    """
    image = np.asarray(image)
    if image.ndim not in (2, 3) or min(image.shape[:2]) < 1:
        raise ValueError(f"imresize expects an HxW or HxWxC image, got shape {image.shape}")
    if image.dtype not in (np.uint8, np.uint16) and image.dtype.kind != 'f':
        raise ValueError(f"imresize takes uint8, uint16 or float images, got {image.dtype}")
    out = image.astype(np.float64)
    for axis, out_len, axis_scale in _resize_plan(image.shape[:2], scale, size):
        weights, index = resize_weights(out.shape[axis], out_len, axis_scale)
        src = np.moveaxis(out, axis, 0)
        acc = np.zeros((out_len,) + src.shape[1:])
        bcast = (-1,) + (1,) * (src.ndim - 1)
        for tap in range(weights.shape[1]):  # tap by tap: memory stays the size of the output
            acc += weights[:, tap].reshape(bcast) * src[index[:, tap]]
        if image.dtype.kind != 'f':
            acc = _round_to(acc, image.dtype)
        out = np.moveaxis(acc, 0, axis)
    return out.astype(image.dtype)
