"""The rendering engine shared by every model: chunks, LR tiles, a memory budget, progress.

Every model plugs in through the contract that model.SRModel states (encode, lookup, decode, its
margin and memory hooks). Every look-up is separable (row and column look-ups only), so a render computes them once per
axis for the whole image, in the whole image's coordinates, and a tile only shifts indices: tiled
and untiled renders read the same latent codes and give the same values. That is also why a render
that runs out of memory can go on in smaller pieces (half the chunk, then half the LR tile) and give
the same image.
"""
import math
import numbers
import warnings
from typing import NamedTuple

import torch
from tqdm import tqdm

from precision import autocast

# What render and predict aim to use beyond their input and output tensors, in bytes, when `chunk`
# and `tile` are not given (`device_budget`): half for encoding (the whole image, or tiles of it), an
# eighth for the per-chunk query tensors. On a CPU a fixed 1 GiB (measured peak RSS of a 2048x2048 x4
# render: docs/benchmarks.md). On a GPU half of its free memory: the other half stays for the output,
# the caching allocator's fragmentation, cuDNN workspaces and other processes on the same GPU.
CPU_MEMORY_BUDGET = 1 << 30
CUDA_FREE_SHARE = 0.5
# The fewest queries per decoder call, for auto_chunk and for out-of-memory retries: 256 queries take a few
# MB on a CPU (256 x bytes_per_query: 5.5 MB for the reference LIIF, 0.1 MB for the fast one), about what the
# encoder needs for a 64x64 LR tile (6 MB for EDSR-baseline), so smaller chunks free next to nothing. (A GPU
# decodes a chunk in one block, so there the fast LIIF's 256 queries take a few MB too.)
MIN_CHUNK = 256


class Lookup(NamedTuple):
    """One axis's look-ups: `index` and `rel` (S, *shape), one row per shift S; `cell` (shape
    broadcastable) the decoder's cell input for this axis, or None where the model has none."""
    index: torch.Tensor
    rel: torch.Tensor | None
    cell: torch.Tensor | None


def batch_index(batch: int, index: torch.Tensor) -> torch.Tensor:
    """Image indices (B, 1, ...) broadcasting over the query shape of look-up indices (S, B|1, ...)."""
    return torch.arange(batch, device=index.device).view(batch, *[1] * (index.dim() - 2))


def pair(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Two broadcastable per-query values as one (..., 2) tensor."""
    return torch.stack(torch.broadcast_tensors(a, b), -1)


def ratio(v: int, n, plus: float = 0.0):
    """v / n + plus for an axis length n, the number the coordinate formulas round to float32: with a
    Python int n, computed in float64 as the official code computes it; with a 0-d int64 tensor n (an
    exported graph: ONNX Runtime in browsers has no float64), the same float32 number from float32
    operations alone (a correctly rounded division, then error-free products and sums; tests check it
    for every n up to MAX_SIDE)."""
    if not isinstance(n, torch.Tensor):
        return v / n + plus
    n = n.float()
    hi = torch.full_like(n, v) / n  # a division, not reciprocal then product
    if plus == 0:  # a division rounded once: float64 then float32 rounds the same for n <= 2**24
        return hi
    p, p_err = _two_product(hi, n)
    lo = ((v - p) - p_err) / n  # hi + lo = v / n to ~2**-48 relative (v - p is exact)
    plus_hi = torch.tensor(plus, dtype=torch.float32)
    plus_lo = torch.tensor(plus - plus_hi.item(), dtype=torch.float32)
    s, t = _two_sum(hi, plus_hi)
    x, y = _two_sum(s, lo)
    return x + (y + (t + plus_lo))


def _two_sum(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """a + b as s + t exactly, s = fl(a + b) (Knuth)."""
    s = a + b
    bb = s - a
    return s, (a - (s - bb)) + (b - bb)


def _two_product(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """a * b as p + e exactly, p = fl(a * b), in float32 without fused multiply-add (Dekker, Veltkamp's
    split at 2**12 + 1)."""
    def split(x):
        c = 4097 * x
        high = c - (c - x)
        return high, x - high
    p = a * b
    (ah, al), (bh, bl) = split(a), split(b)
    return p, ((ah * bh - p) + ah * bl + al * bh) + al * bl


def pixel_centres(n: int | torch.Tensor, device=None, start=0, stop=None) -> torch.Tensor:
    """Centres of pixels [start, stop) (all n by default) of n pixels on [-1, 1]: -1 + (2i + 1) / n,
    computed as the official make_coord does (the same values for a part as for the whole)."""
    return ratio(1, n, -1) + ratio(2, n) * torch.arange(start, n if stop is None else stop, device=device).float()


def nearest_index(c: torch.Tensor, n: int | torch.Tensor) -> torch.Tensor:
    """The pixel `grid_sample(mode='nearest', align_corners=False)` reads at coordinates c on an axis
    of n pixels (ties round half to even as it does), clamped to the axis (the official zero padding
    only acts at c = +-1 exactly)."""
    return torch.round(((c + 1) * n - 1) / 2).long().clamp_(0, n - 1)


def spans(n: int, step: int, start: int = 0) -> list[tuple[int, int]]:
    return [(s, min(n, s + step)) for s in range(start, n, step)]


# Rows (queries x ensemble members) per decoder call on a CPU: a block's 256-wide fp32 activations
# (4 MiB) stay in the cache. A GPU decodes a whole chunk in one call.
CPU_BLOCK_ROWS = 4096
# An exported graph (onnx_model) decodes each run in this many blocks: ONNX Runtime, too, runs a block's
# layers while its activations are in cache (at onnx_model's 512 x 512 windows: CPU_BLOCK_ROWS rows).
GRAPH_BLOCKS = 256


def decoder_rows(device: torch.device) -> int | None:
    """Rows per call of a blocked decoder on `device`: CPU_BLOCK_ROWS on a CPU; None on a GPU (the whole
    chunk at once: a few large kernels instead of thousands of small ones)."""
    return CPU_BLOCK_ROWS if device.type != 'cuda' else None


def in_blocks(decode_block, per_query: tuple[torch.Tensor, ...], step: int, padded=None) -> torch.Tensor:
    """decode_block(*block) -> (q, 3) over blocks of `step` queries of the tensors `per_query` (first
    dimension: the queries), concatenated; one block while autograd records (training), GRAPH_BLOCKS in a
    traced graph (an export). padded(q): the queries a block of q is padded to, repeating its last query
    (a compiled block has few shapes)."""
    n = per_query[0].shape[0]
    if torch.jit.is_tracing():
        return _fixed_blocks(decode_block, per_query, n)
    if torch.is_grad_enabled():
        return decode_block(*per_query)
    out = []
    for s, e in spans(n, max(1, step)):
        block = [t[s:e] for t in per_query]
        pad = padded(e - s) - (e - s) if padded else 0
        if pad:
            block = [torch.cat([t, t[-1:].expand(pad, *t.shape[1:])]) for t in block]
        out.append(decode_block(*block)[:e - s])
    return out[0] if len(out) == 1 else torch.cat(out)  # a GPU's whole chunk is one block: no copy


def _fixed_blocks(decode_block, per_query: tuple[torch.Tensor, ...], n) -> torch.Tensor:
    """in_blocks in a traced graph: a graph's steps are fixed, so the n queries (a traced size) go in
    GRAPH_BLOCKS blocks of ceil(n / GRAPH_BLOCKS), the last padded by repeating query n - 1."""
    step = (n + GRAPH_BLOCKS - 1) // GRAPH_BLOCKS
    pick = torch.minimum(torch.arange(GRAPH_BLOCKS * step), torch.as_tensor(n - 1))
    blocks = [t.index_select(0, pick).view(GRAPH_BLOCKS, step, *t.shape[1:]) for t in per_query]
    return torch.cat([decode_block(*[t[i] for t in blocks]) for i in range(GRAPH_BLOCKS)])[:n]


# The longest output side: pixel centres are computed in float32, which tells neighbouring pixels apart
# only up to 2**24 pixels a side.
MAX_SIDE = 1 << 24


def check_size(size: tuple[int, int]) -> tuple[int, int]:
    """`size` = (H, W) as two ints, after checking that both are in 1..MAX_SIDE."""
    height, width = (int(n) for n in size)
    if not (0 < height <= MAX_SIDE and 0 < width <= MAX_SIDE):
        raise ValueError(f"output size must be positive and at most {MAX_SIDE} pixels a side, got {height}x{width}")
    return height, width


def output_size(height: int, width: int, scale: float | list[float] = 4.0,
                size: list[int] | tuple[int, int] | None = None) -> tuple[int, int]:
    """The (H, W) render of an h x w image: `size` when given, else round(side * factor) with one
    factor or [height factor, width factor] (Python's round: halves go to the even integer)."""
    if size:
        return int(size[0]), int(size[1])
    scale_h, scale_w = scale if isinstance(scale, (list, tuple)) else (scale, scale)
    if not math.isfinite(height * scale_h) or not math.isfinite(width * scale_w):  # 1e308 x 9: no size at all
        raise ValueError(f"a {height}x{width} image at x{scale_h:g} by x{scale_w:g} has no representable size")
    return round(height * scale_h), round(width * scale_w)


def check_window(window, size: tuple[int, int]) -> tuple[int, int, int, int]:
    """`window` = (top, left, height, width) of an output of `size` = (H, W) as four ints, after
    checking that it is a non-empty rectangle inside the output; None is the whole output."""
    height, width = size
    if window is None:
        return 0, 0, height, width
    given = tuple(window) if isinstance(window, (tuple, list)) else None
    if given is None or len(given) != 4 or not all(isinstance(v, numbers.Integral) and not isinstance(v, bool)
                                                   for v in given):
        problem = "it is not four integers"
    else:
        top, left, rows, cols = (int(v) for v in given)
        if top < 0 or left < 0 or rows < 1 or cols < 1:
            problem = "top and left must be >= 0, height and width >= 1"
        elif top + rows > height or left + cols > width:
            problem = f"it reaches row {top + rows} and column {left + cols}"
        else:
            return top, left, rows, cols
    raise ValueError(f"window must be [top, left, height, width] inside the {height}x{width} output, "
                     f"got {window!r}: {problem}")


def window_lookups(model, size, window, lr_size, device=None) -> tuple[Lookup, Lookup]:
    """The row and column look-ups of the output pixels in `window` = (top, left, height, width) of a
    `size` = (H, W) render from an LR image of `lr_size` = (h, w). The numbers are ints, or 0-d int64
    tensors in an exported graph; the centres are those of the whole output, computed for the window only."""
    (height, width), (top, left, rows, cols) = size, window
    # the cell (2/H, 2/W) in float32, as the training items make it
    cell = [torch.as_tensor(ratio(2, n), device=device).float() for n in (height, width)]
    return (model.lookup(pixel_centres(height, device, top, top + rows), lr_size[0], cell[0]),
            model.lookup(pixel_centres(width, device, left, left + cols), lr_size[1], cell[1]))


def lr_region(index: torch.Tensor, k: int, margin: int, n) -> tuple[torch.Tensor, torch.Tensor]:
    """The LR rows [start, stop) (0-d tensors) to encode so that the latent indices `index` (k latent
    pixels per LR pixel) and `margin` LR pixels of context around them are inside it; n: the LR rows."""
    return (index.min() // k - margin).clamp(min=0), ((index.max() + k) // k + margin).clamp(max=n)


def query(model, latent: torch.Tensor, coord: torch.Tensor, cell: torch.Tensor, lr_size: tuple[int, int]):
    """RGB (B, Q, 3) at queries coord, cell (B, Q, 2) from the whole image's latent."""
    rows = model.lookup(coord[..., 0], lr_size[0], cell[..., 0])
    cols = model.lookup(coord[..., 1], lr_size[1], cell[..., 1])
    return model.decode(latent, rows, cols)


def device_budget(device: torch.device) -> int:
    """The memory a render on `device` aims to use (see CPU_MEMORY_BUDGET): a share of the GPU's free
    memory now, counting what PyTorch holds cached but unused as free (else the size would depend on
    what ran before), or the CPU's fixed budget."""
    if device.type == 'cuda':
        cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        return int(CUDA_FREE_SHARE * (torch.cuda.mem_get_info(device)[0] + cached))
    return CPU_MEMORY_BUDGET


def auto_chunk(model, memory_budget: int, device: torch.device) -> int:
    """Queries per chunk (over the batch) that keep the per-chunk tensors on `device` within budget / 8."""
    return max(MIN_CHUNK, memory_budget // 8 // model.bytes_per_query(device))


def auto_tile(model, lr_shape: tuple[int, ...], memory_budget: int) -> int:
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
        per_image = max(1, (chunk or auto_chunk(model, device_budget(lr.device), lr.device)) // lr.shape[0])
        out = coord.new_empty(*coord.shape[:2], 3)
        for s, e in spans(coord.shape[1], per_image):
            out[:, s:e] = query(model, latent, coord[:, s:e], cell[:, s:e], lr.shape[-2:])
    return out


def encode_region(model, lr: torch.Tensor, rows: Lookup, cols: Lookup, lr_size,
                  offset=(0, 0)) -> tuple[torch.Tensor, Lookup, Lookup]:
    """The latent of the LR rectangle that the look-ups `rows` and `cols` read, plus the model's
    margin, and the look-ups with indices into it. lr_size = (h, w) of the whole LR image: ints, or 0-d
    tensors in a graph; `lr` holds that image from row and column `offset` on (a crop holding the rectangle)."""
    k, margin = model.latent_scale, model.tile_margin
    (y0, y1), (x0, x1) = lr_region(rows.index, k, margin, lr_size[0]), lr_region(cols.index, k, margin, lr_size[1])
    latent = model.encode(lr[:, :, y0 - offset[0]:y1 - offset[0], x0 - offset[1]:x1 - offset[1]])
    return latent, rows._replace(index=rows.index - k * y0), cols._replace(index=cols.index - k * x0)


def decode_grid(model, latent: torch.Tensor, rows: Lookup, cols: Lookup) -> torch.Tensor:
    """The (B, 3, rows, cols) output rectangle of every row look-up with every column look-up."""
    return model.decode(latent, _along(rows, 0), _along(cols, 1)).permute(0, 3, 1, 2)


@torch.no_grad()
def render(model, lr: torch.Tensor, size: tuple[int, int], chunk: int | None = None, amp: str = 'fp32',
           tile: int | None = None, memory_budget: int | None = None, progress: bool = False,
           window: tuple[int, int, int, int] | None = None) -> torch.Tensor:
    """The (B, 3, H, W) image of `size` = (H, W) in [0, 1] units (unclamped) from lr (B, 3, h, w);
    with `window` = (top, left, height, width), only that part of it: (B, 3, height, width).

    chunk: queries per decoder call over the batch (None: from the memory budget). amp: 'fp32', 'bf16'
    or 'fp16' (CUDA) autocast. tile: LR tile side for the encoder (None: tiles only when the
    encoding would exceed half of the budget; 0: never). memory_budget: bytes (None: device_budget,
    which follows the device). Output pixels are rendered per LR tile holding their centres; each
    tile encodes the LR rectangle its look-ups read plus the model's margin, so the work follows the
    window, not the whole output. Only the output is allocated at full size. progress: a tqdm bar of
    pixels. Out of memory (CUDA's, or the CPU's), a render goes on in smaller pieces with one warning
    and gives the same image (see Pieces).
    """
    if lr.dim() != 4 or lr.shape[1] != 3:
        raise ValueError(f"lr must be (B, 3, h, w), got {tuple(lr.shape)}")
    height, width = check_size(size)
    top, left, out_h, out_w = check_window(window, (height, width))
    b, _, h, w = lr.shape
    device = lr.device
    memory_budget = memory_budget or device_budget(device)
    chunk = chunk or auto_chunk(model, memory_budget, device)
    rows, cols = window_lookups(model, (height, width), (top, left, out_h, out_w), (h, w), device)
    if tile is None:
        k, margin = model.latent_scale, model.tile_margin
        (y0, y1), (x0, x1) = lr_region(rows.index, k, margin, h), lr_region(cols.index, k, margin, w)
        tile = auto_tile(model, (b, 3, int(y1 - y0), int(x1 - x0)), memory_budget)
    out = lr.new_empty(b, 3, out_h, out_w, dtype=torch.float32)
    pieces = Pieces(model, chunk, tile or max(h, w), (height, width), device)  # one tile of max(h, w): untiled
    bar = tqdm(total=b * out_h * out_w, unit='px', unit_scale=True, disable=not progress, leave=False,
               mininterval=1)
    with autocast(device, amp), bar:
        _render_tiles(model, lr, rows, cols, (top, left), out, bar, pieces)
    return out


def out_of_memory(error: BaseException) -> bool:
    """An allocation that failed: CUDA's OutOfMemoryError, MemoryError, or torch's CPU allocator (whose
    failure is a plain RuntimeError)."""
    return isinstance(error, (torch.OutOfMemoryError, MemoryError)) or (
        isinstance(error, RuntimeError) and "can't allocate memory" in str(error))


class RenderOutOfMemory(MemoryError):
    """Out of memory even at MIN_CHUNK queries per chunk and the smallest LR tile."""


class Pieces:
    """The chunk and the LR tile of one render. After an out-of-memory error the piece that failed is
    rendered again with half the chunk or, at MIN_CHUNK, with half the tile; the rest of the render keeps
    the smaller size. The tile stops at the model's margin (a smaller tile is mostly margin: halving it
    again barely shrinks the LR rectangle encoded), where RenderOutOfMemory ends the render. The first
    retry warns (one line); cached CUDA memory is freed before each retry."""

    def __init__(self, model, chunk: int, tile: int, size: tuple[int, int], device: torch.device):
        self.chunk, self.tile, self.size, self.device = chunk, tile, size, device
        self.min_tile = max(1, model.tile_margin)
        self.warned = self.retrying = False

    def halve_chunk(self, error: BaseException) -> bool:
        """Halve the chunk after `error`; False when it is at MIN_CHUNK already (the tile is next)."""
        if self.chunk <= MIN_CHUNK:
            return False
        self._retry(error)
        self.chunk = max(MIN_CHUNK, self.chunk // 2)
        return True

    def halve_tile(self, error: BaseException) -> None:
        """Halve the LR tile after `error`; RenderOutOfMemory when it is at the model's margin already."""
        if self.tile <= self.min_tile:
            raise RenderOutOfMemory(
                f"out of memory rendering a {self.size[0]}x{self.size[1]} image even with {self.chunk} queries per "
                f"chunk and LR tiles of {self.tile} pixels ({_first_line(error)}): render a smaller size or "
                f"window, or free memory") from None
        self._retry(error)
        self.tile = max(self.min_tile, self.tile // 2)

    def _retry(self, error: BaseException) -> None:
        if not self.warned:
            warnings.warn(f"out of memory while rendering a {self.size[0]}x{self.size[1]} image "
                          f"({_first_line(error)}): going on in smaller pieces (half the chunk, then half the LR "
                          f"tile, as needed); the image is the same", stacklevel=2)
            self.warned = True
        self.retrying = True

    def before_attempt(self) -> None:
        """Free cached CUDA memory after a failed attempt, once the failed call's tensors are gone."""
        if self.retrying and self.device.type == 'cuda':
            torch.cuda.empty_cache()
        self.retrying = False


def _first_line(error: BaseException) -> str:
    """'OutOfMemoryError: CUDA out of memory. Tried to allocate ...' (its first line), or the type alone."""
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0][:200]}" if lines else type(error).__name__


def _render_tiles(model, lr, rows: Lookup, cols: Lookup, corner: tuple[int, int], out: torch.Tensor, bar,
                  pieces: Pieces) -> None:
    """Render `out` (B, 3, n, m): the part of the whole render whose top-left pixel is `corner` = (row,
    column) and whose pixels have the look-ups `rows` (n) and `cols` (m), LR tile by LR tile of pieces.tile
    pixels. A tile that runs out of memory, and every later one once the tile has shrunk, is rendered
    from tiles of the smaller size."""
    (top, left), (height, width), (h, w), tile = corner, pieces.size, lr.shape[-2:], pieces.tile
    for i0, i1 in _owned(top, out.shape[2], height, h, tile):
        for j0, j1 in _owned(left, out.shape[3], width, w, tile):
            part_rows, part_cols, part = _slice(rows, i0, i1), _slice(cols, j0, j1), out[:, :, i0:i1, j0:j1]
            if pieces.tile == tile and _render_tile(model, lr, part_rows, part_cols, part, bar, pieces):
                continue
            _render_tiles(model, lr, part_rows, part_cols, (top + i0, left + j0), part, bar, pieces)


def _render_tile(model, lr, rows: Lookup, cols: Lookup, out: torch.Tensor, bar, pieces: Pieces) -> bool:
    """Encode the LR rectangle that `rows` and `cols` read (plus the margin) and decode `out` from it; False,
    with the tile halved, when that runs out of memory."""
    counted = bar.n
    pieces.before_attempt()
    try:
        latent, tile_rows, tile_cols = encode_region(model, lr, rows, cols, lr.shape[-2:])
        _render_rectangle(model, latent, tile_rows, tile_cols, out, bar, pieces)
        return True
    except Exception as e:
        if not out_of_memory(e):
            raise
        pieces.halve_tile(e)
    bar.update(counted - bar.n)  # the part it had counted is rendered again
    return False


def _owned(start: int, count: int, n_out: int, n_lr: int, tile: int) -> list[tuple[int, int]]:
    """Per LR tile of `tile` pixels, the output pixels [i0, i1) of the window [start, start + count) on
    an output axis of n_out pixels whose centres it holds (relative to the window; empty ones left out).
    Output pixel i's centre is in LR pixel floor((2i + 1) n_lr / 2 n_out)."""
    owner = (2 * torch.arange(start, start + count) + 1) * n_lr // (2 * n_out)
    first, last = int(owner[0]), int(owner[-1]) + 1
    edges = [first] + [e for _, e in spans(last, tile, first)]
    cuts = torch.searchsorted(owner, torch.tensor(edges)).tolist()
    return [(i0, i1) for i0, i1 in zip(cuts, cuts[1:]) if i0 < i1]


def _slice(look: Lookup, start: int, stop: int) -> Lookup:
    """Queries [start, stop) of a render's per-axis look-up (the cell term is one value per axis)."""
    return Lookup(look.index[:, start:stop], None if look.rel is None else look.rel[:, start:stop], look.cell)


def _along(look: Lookup, axis: int) -> Lookup:
    """A (S, n) axis look-up shaped (S, 1, n, 1) for rows (axis 0) or (S, 1, 1, n) for columns, so
    that the decoder broadcasts it over the (B, rows, cols) query grid."""
    def shape(t):
        return t[:, None, :, None] if axis == 0 else t[:, None, None, :]
    return Lookup(shape(look.index), None if look.rel is None else shape(look.rel), look.cell)


def _render_rectangle(model, latent, rows: Lookup, cols: Lookup, out: torch.Tensor, bar, pieces: Pieces) -> None:
    """Decode the output rectangle `out` (B, 3, n_rows, n_cols) in chunks of whole rows (or of parts of
    one row) of at most pieces.chunk queries. A band of rows that runs out of memory is decoded again in
    chunks half as big; at MIN_CHUNK the error goes on to the tile (_render_tile)."""
    b, n_rows, n_cols = out.shape[0], *out.shape[-2:]
    r0 = 0
    while r0 < n_rows:
        pieces.before_attempt()
        chunk = pieces.chunk
        if b * n_cols <= chunk:
            rows_per_chunk, cols_per_chunk = chunk // (b * n_cols), n_cols
        else:
            rows_per_chunk, cols_per_chunk = 1, max(1, chunk // b)
        r1 = min(n_rows, r0 + rows_per_chunk)
        try:
            for c0, c1 in spans(n_cols, cols_per_chunk):
                out[:, :, r0:r1, c0:c1] = decode_grid(model, latent, _slice(rows, r0, r1), _slice(cols, c0, c1))
        except Exception as e:
            if not (out_of_memory(e) and pieces.halve_chunk(e)):
                raise
            continue  # the band again, once the failed call's tensors are freed
        bar.update(b * (r1 - r0) * n_cols)
        r0 = r1
