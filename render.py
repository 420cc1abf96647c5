"""The rendering engine shared by every model: chunks, LR tiles, a memory budget, progress.

A model plugs in through a small interface (model.SRModel):
- `encode(lr) -> latent` (B, C, h * k, w * k), k = `latent_scale` (1 for LIIF and MetaSR, the
  up-sampler's factor for the fixed-scale baselines);
- `lookup(c, n, cell) -> Lookup` for one axis: the latent indices (S, ...) a coordinate reads, the
  relative coordinates (S, ...) and the cell term the decoder needs, for an LR axis of n pixels;
- `decode(latent, rows, cols) -> rgb (*Q, 3)` from the two axes' look-ups, broadcast to the query
  shape Q = (B, ...); indices are relative to `latent`, which may be a tile of the whole latent;
- `tile_margin`: LR pixels of context a latent code (and the decoder's neighbourhood of it) needs,
  so a tile encoded with that margin gives the untiled codes; `bytes_per_query` and
  `bytes_per_lr_pixel` (for `auto_chunk` / `auto_tile`).
Every look-up is separable (row and column look-ups only), so a render computes them once per
axis for the whole image, in the whole image's coordinates, and a tile only shifts indices: tiled
and untiled renders read the same latent codes and give the same values.
"""
import math
from typing import NamedTuple

import torch
from tqdm import tqdm

from imgproc import pixel_centres
from precision import autocast

# What render and predict aim to use beyond their input and output tensors, in bytes, when `chunk`
# and `tile` are not given: half for encoding (the whole image, or tiles of it), an eighth for the
# per-chunk query tensors. Measured peak RSS of a 2048x2048 x4 render is in the README.
MEMORY_BUDGET = 1 << 30


class Lookup(NamedTuple):
    """One axis's look-ups: `index` and `rel` (S, *shape), one row per shift S; `cell` (shape
    broadcastable) the decoder's cell input for this axis, or None where the model has none."""
    index: torch.Tensor
    rel: torch.Tensor | None
    cell: torch.Tensor | None


def nearest_index(c: torch.Tensor, n: int) -> torch.Tensor:
    """The pixel `grid_sample(mode='nearest', align_corners=False)` reads at coordinates c on an axis
    of n pixels (ties round half to even as it does), clamped to the axis (the official zero padding
    only acts at c = +-1 exactly)."""
    return torch.round(((c + 1) * n - 1) / 2).long().clamp_(0, n - 1)


def spans(n: int, step: int) -> list[tuple[int, int]]:
    return [(s, min(n, s + step)) for s in range(0, n, step)]


def query(model, latent: torch.Tensor, coord: torch.Tensor, cell: torch.Tensor, lr_size: tuple[int, int]):
    """RGB (B, Q, 3) at queries coord, cell (B, Q, 2) from the whole image's latent."""
    rows = model.lookup(coord[..., 0], lr_size[0], cell[..., 0])
    cols = model.lookup(coord[..., 1], lr_size[1], cell[..., 1])
    return model.decode(latent, rows, cols)


def auto_chunk(model, memory_budget: int = MEMORY_BUDGET) -> int:
    """Queries per chunk (over the batch) that keep the per-chunk tensors within budget / 8."""
    return max(256, memory_budget // 8 // model.bytes_per_query())


def auto_tile(model, lr_shape: tuple[int, ...], memory_budget: int = MEMORY_BUDGET) -> int:
    """The LR tile side (core, without margin) whose encoding fits in half the budget; 0 = no tiling."""
    b, _, h, w = lr_shape
    pixels = memory_budget // 2 // (b * model.bytes_per_lr_pixel())
    if h * w <= pixels:
        return 0
    return max(64, math.isqrt(pixels) - 2 * model.tile_margin)


@torch.no_grad()
def predict(model, lr: torch.Tensor, coord: torch.Tensor, cell: torch.Tensor, chunk: int | None = None,
            amp: str = 'fp32') -> torch.Tensor:
    """RGB (B, Q, 3) at arbitrary queries: encode once (untiled), decode `chunk` queries at a time."""
    with autocast(lr.device, amp):
        latent = model.encode(lr)
        per_image = max(1, (chunk or auto_chunk(model)) // lr.shape[0])
        out = coord.new_empty(*coord.shape[:2], 3)
        for s, e in spans(coord.shape[1], per_image):
            out[:, s:e] = query(model, latent, coord[:, s:e], cell[:, s:e], lr.shape[-2:])
    return out


def _needed(index: torch.Tensor, k: int, margin: int, n: int) -> tuple[int, int]:
    """The LR rows [start, stop) a tile must encode so that the latent indices `index` (k latent
    pixels per LR pixel) and `margin` LR pixels of context around them are inside it."""
    return max(0, int(index.min()) // k - margin), min(n, -(-(int(index.max()) + 1) // k) + margin)


@torch.no_grad()
def render(model, lr: torch.Tensor, size: tuple[int, int], chunk: int | None = None, amp: str = 'fp32',
           tile: int | None = None, memory_budget: int = MEMORY_BUDGET, progress: bool = False) -> torch.Tensor:
    """The (B, 3, H, W) image of `size` = (H, W) in [0, 1] units (unclamped) from lr (B, 3, h, w).

    chunk: queries per decoder call over the batch (None: from memory_budget). amp: 'fp32', 'bf16'
    or 'fp16' (CUDA) autocast. tile: LR tile side for the encoder (None: tiles only when the
    encoding would exceed half of memory_budget; 0: never). Output pixels are rendered per LR tile
    holding their centres; each tile encodes the LR rectangle its look-ups read plus the model's
    margin. Only the (B, 3, H, W) output is allocated at full size. progress: a tqdm bar of pixels.
    """
    height, width = (int(n) for n in size)
    if lr.dim() != 4 or lr.shape[1] != 3:
        raise ValueError(f"lr must be (B, 3, h, w), got {tuple(lr.shape)}")
    if height <= 0 or width <= 0:
        raise ValueError(f"output size must be positive, got {size}")
    b, _, h, w = lr.shape
    device = lr.device
    chunk = chunk or auto_chunk(model, memory_budget)
    if tile is None:
        tile = auto_tile(model, lr.shape, memory_budget)
    out = lr.new_empty(b, 3, height, width, dtype=torch.float32)
    # the cell (2/H, 2/W) in float32, as coord_cell makes it
    cell = torch.tensor([2 / height, 2 / width], device=device)
    rows = model.lookup(pixel_centres(height, device), h, cell[0])
    cols = model.lookup(pixel_centres(width, device), w, cell[1])
    # output row i belongs to the LR tile holding its centre: LR row floor((2i + 1) h / 2H)
    owner_y = (2 * torch.arange(height, device=device) + 1) * h // (2 * height)
    owner_x = (2 * torch.arange(width, device=device) + 1) * w // (2 * width)
    k, margin = model.latent_scale, model.tile_margin
    bar = tqdm(total=b * height * width, unit='px', unit_scale=True, disable=not progress, leave=False,
               mininterval=1)
    with autocast(device, amp), bar:
        for a0, a1 in spans(h, tile or h):
            for c0, c1 in spans(w, tile or w):
                i0, i1 = (int(v) for v in torch.searchsorted(owner_y, torch.tensor([a0, a1], device=device)))
                j0, j1 = (int(v) for v in torch.searchsorted(owner_x, torch.tensor([c0, c1], device=device)))
                if i0 == i1 or j0 == j1:
                    continue
                tile_rows, tile_cols = _slice(rows, i0, i1), _slice(cols, j0, j1)
                y0, y1 = _needed(tile_rows.index, k, margin, h) if tile else (0, h)
                x0, x1 = _needed(tile_cols.index, k, margin, w) if tile else (0, w)
                latent = model.encode(lr[:, :, y0:y1, x0:x1])
                tile_rows = tile_rows._replace(index=tile_rows.index - k * y0)
                tile_cols = tile_cols._replace(index=tile_cols.index - k * x0)
                _render_rectangle(model, latent, tile_rows, tile_cols, chunk, out[:, :, i0:i1, j0:j1], bar)
    return out


def _slice(look: Lookup, start: int, stop: int) -> Lookup:
    """Queries [start, stop) of a render's per-axis look-up (the cell term is one value per axis)."""
    return Lookup(look.index[:, start:stop], None if look.rel is None else look.rel[:, start:stop], look.cell)


def _along(look: Lookup, axis: int) -> Lookup:
    """A (S, n) axis look-up shaped (S, 1, n, 1) for rows (axis 0) or (S, 1, 1, n) for columns, so
    that the decoder broadcasts it over the (B, rows, cols) query grid."""
    def shape(t):
        return t[:, None, :, None] if axis == 0 else t[:, None, None, :]
    return Lookup(shape(look.index), None if look.rel is None else shape(look.rel), look.cell)


def _render_rectangle(model, latent, rows: Lookup, cols: Lookup, chunk: int, out: torch.Tensor, bar) -> None:
    """Decode the output rectangle `out` (B, 3, n_rows, n_cols) in chunks of whole rows (or of parts
    of one row)."""
    b = out.shape[0]
    n_rows, n_cols = out.shape[-2:]
    if b * n_cols <= chunk:
        rows_per_chunk, cols_per_chunk = chunk // (b * n_cols), n_cols
    else:
        rows_per_chunk, cols_per_chunk = 1, max(1, chunk // b)
    for r0, r1 in spans(n_rows, rows_per_chunk):
        for c0, c1 in spans(n_cols, cols_per_chunk):
            rgb = model.decode(latent, _along(_slice(rows, r0, r1), 0), _along(_slice(cols, c0, c1), 1))
            out[:, :, r0:r1, c0:c1] = rgb.permute(0, 3, 1, 2)
            bar.update(b * (r1 - r0) * (c1 - c0))
