"""LIIF: an EDSR-baseline or RDN encoder and the local implicit image function decoder.

Chen, Liu, Wang, "Learning Continuous Image Representation with Local Implicit Image Function",
CVPR 2021. Parameter names follow the official release so its checkpoints load unchanged.

Conventions: `lr` is (B, 3, h, w) RGB in [0, 1]; `coord` and `cell` are (B, Q, 2), row axis first,
in the [-1, 1] square whose pixel centres are -1 + (2i + 1) / n. Outputs are RGB in [0, 1] units.

Two paths compute the same function (`model.fast`, config setting `fast`):
- reference (fast=False): the official algorithm; the 3x3-unfolded feature (576 channels), four
  separate look-ups and four full decoder passes per query.
- fast (default): the first decoder layer's feature part is a 3x3 convolution of the feature map,
  computed once per image at LR resolution (256 channels); per query only the coordinate and cell
  terms are added before the ReLU. The four ensemble members are decoded in one call, in
  cache-sized blocks. `render` generates the query grid per chunk, writes into a preallocated
  output, and for large inputs encodes overlapping LR tiles, so memory stays bounded at any size.
"""
import functools
import math
import os
import platform
import sys
from contextlib import nullcontext
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

# What render and predict aim to use beyond their input and output tensors, in bytes, when `chunk`
# and `tile` are not given: half for encoding (the whole image, or tiles of it), an eighth for the
# per-chunk query tensors. Measured peak RSS of a 2048x2048 x4 render is in the README.
MEMORY_BUDGET = 1 << 30
BLOCK_ROWS = 4096  # decoder rows (queries x ensemble members) per fast MLP call: cache-sized
AMP_DTYPES = {'fp32': None, 'bf16': torch.bfloat16, 'fp16': torch.float16}
# oneDNN ISA levels (ONEDNN_MAX_CPU_ISA) that include native bf16 instructions (AVX-512-bf16, AMX)
BF16_ISAS = {'AVX512_CORE_BF16', 'AVX512_CORE_FP16', 'AVX512_CORE_AMX', 'AVX512_CORE_AMX_FP16',
             'AVX10_1_512', 'AVX10_1_512_AMX', 'AVX10_1_512_AMX_FP16', 'ALL', 'DEFAULT'}


def cpu_flags() -> set[str]:
    """The x86 feature flags of this CPU from /proc/cpuinfo (an empty set elsewhere)."""
    try:
        with open('/proc/cpuinfo') as f:
            return next((set(line.split(':', 1)[1].split()) for line in f if line.startswith('flags')), set())
    except OSError:
        return set()


@functools.cache
def native_cpu_bf16() -> bool:
    """Whether bf16 matrix products run natively here: the CPU has AVX-512-bf16 or AMX-bf16, oneDNN
    is not limited below them (ONEDNN_MAX_CPU_ISA), and oneDNN's fused bf16 linear actually works."""
    if platform.machine().lower() not in ('x86_64', 'amd64') or not {'avx512_bf16', 'amx_bf16'} & cpu_flags():
        return False
    limit = os.environ.get('ONEDNN_MAX_CPU_ISA', os.environ.get('DNNL_MAX_CPU_ISA', 'ALL')).upper()
    if limit not in BF16_ISAS:
        return False
    try:  # a 1x1 product: a oneDNN build or ISA that cannot do it fails here, not mid-render
        x = torch.ones(1, 1, dtype=torch.bfloat16)
        torch.ops.mkldnn._linear_pointwise(x, x, x[0], 'relu', [], '')
    except (RuntimeError, AttributeError):
        return False
    return True


@functools.cache
def warn_slow_bf16() -> None:
    """Once per process: bf16 on a CPU without native bf16 is emulated, slower than fp32."""
    print("warning: this CPU has no native bf16 (AVX-512-bf16 or AMX), so amp='bf16' runs emulated "
          "and slower than fp32; use --amp=fp32 here", file=sys.stderr)


def check_amp(device: torch.device, amp: str) -> None:
    """Refuse an unknown amp or fp16 off CUDA; warn (once) when bf16 will be slow on this CPU."""
    if amp not in AMP_DTYPES:
        raise ValueError(f"amp must be one of {list(AMP_DTYPES)}, got {amp!r}")
    if amp == 'fp16' and device.type != 'cuda':
        raise ValueError("amp='fp16' needs a CUDA device; use 'bf16' (on CPUs with native bf16) or 'fp32'")
    if amp == 'bf16' and device.type == 'cpu' and not native_cpu_bf16():
        warn_slow_bf16()


def conv3x3(cin: int, cout: int) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, padding=1)


class ResBlock(nn.Module):
    def __init__(self, ch: int):
        super().__init__()
        self.body = nn.Sequential(conv3x3(ch, ch), nn.ReLU(inplace=True), conv3x3(ch, ch))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class EDSR(nn.Module):
    """EDSR-baseline without the upsampler: head conv, residual blocks, a last conv, global skip."""

    def __init__(self, n_resblocks: int = 16, n_feats: int = 64):
        super().__init__()
        self.head = nn.Sequential(conv3x3(3, n_feats))
        self.body = nn.Sequential(*[ResBlock(n_feats) for _ in range(n_resblocks)], conv3x3(n_feats, n_feats))
        self.out_dim = n_feats
        self.receptive_radius = 2 * n_resblocks + 2  # 3x3 convs on the longest path
        self.peak_channels = 6 * n_feats  # float maps alive at once during forward (for tile sizing)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.head(x)
        return x + self.body(x)


class RDBConv(nn.Module):
    def __init__(self, cin: int, growth: int):
        super().__init__()
        self.conv = nn.Sequential(conv3x3(cin, growth), nn.ReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, self.conv(x)], 1)


class RDB(nn.Module):
    def __init__(self, g0: int, growth: int, n_layers: int):
        super().__init__()
        self.convs = nn.Sequential(*[RDBConv(g0 + i * growth, growth) for i in range(n_layers)])
        self.LFF = nn.Conv2d(g0 + n_layers * growth, g0, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.LFF(self.convs(x))


class RDN(nn.Module):
    """RDN without the upsampler, configuration B (16 blocks of 8 layers, growth 64), G0 = 64."""

    def __init__(self, g0: int = 64, n_blocks: int = 16, n_layers: int = 8, growth: int = 64):
        super().__init__()
        self.SFENet1 = conv3x3(3, g0)
        self.SFENet2 = conv3x3(g0, g0)
        self.RDBs = nn.ModuleList([RDB(g0, growth, n_layers) for _ in range(n_blocks)])
        self.GFF = nn.Sequential(nn.Conv2d(n_blocks * g0, g0, 1), conv3x3(g0, g0))
        self.out_dim = g0
        self.receptive_radius = 2 + n_blocks * n_layers + 1
        # the block outputs kept for GFF, their concatenation, and a block's growing dense stack
        self.peak_channels = 2 * n_blocks * g0 + 2 * (g0 + n_layers * growth)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f1 = self.SFENet1(x)
        x = self.SFENet2(f1)
        outs = []
        for block in self.RDBs:
            x = block(x)
            outs.append(x)
        return f1 + self.GFF(torch.cat(outs, 1))


class MLP(nn.Module):
    def __init__(self, in_dim: int, out_dim: int, hidden_list: list[int]):
        super().__init__()
        layers = []
        for hidden in hidden_list:
            layers += [nn.Linear(in_dim, hidden), nn.ReLU()]
            in_dim = hidden
        layers.append(nn.Linear(in_dim, out_dim))
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


def pixel_centres(n: int, device=None) -> torch.Tensor:
    """Centres of n pixels on [-1, 1]: -1 + (2i + 1) / n, computed as the official make_coord does."""
    r = 1 / n
    return -1 + r + 2 * r * torch.arange(n, device=device).float()


def axis_lookups(c: torch.Tensor, n: int, local_ensemble: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Latent-code look-ups along one axis of length n for coordinates `c` (any shape).

    Returns indices (S, *c.shape) and relative coordinates (S, *c.shape) in feature-pixel units, one
    row per shift: S = 2 (shifts -1, +1 pixel) with local ensemble, else 1 (no shift). The index is
    the one `grid_sample(mode='nearest', align_corners=False)` picks, so ties break exactly as in the
    official code. A query's ensemble member (a, b) uses row shift a and column shift b.
    """
    shifts = (-1, 1) if local_ensemble else (0,)
    eps = 1e-6 if local_ensemble else 0
    centres = pixel_centres(n, c.device)
    index, rel = [], []
    for v in shifts:
        shifted = (c + (v / n + eps)).clamp_(-1 + 1e-6, 1 - 1e-6)
        i = torch.round(((shifted + 1) * n - 1) / 2).long().clamp_(0, n - 1)
        index.append(i)
        rel.append((c - centres[i]) * n)
    return torch.stack(index), torch.stack(rel)


def ensemble_lookups(coord: torch.Tensor, h: int, w: int, local_ensemble: bool):
    """Per ensemble member (4 with local ensemble, else 1), in the official order (row shift major):
    row and column indices (B, Q) and the relative coordinate (B, Q, 2) in feature-pixel units."""
    iy, ry = axis_lookups(coord[..., 0], h, local_ensemble)
    ix, rx = axis_lookups(coord[..., 1], w, local_ensemble)
    return [(iy[a], ix[b], torch.stack([ry[a], rx[b]], -1)) for a in range(len(iy)) for b in range(len(ix))]


def ensemble_weights(rels: list[torch.Tensor]) -> list[torch.Tensor]:
    """Each prediction is weighted by the area of the sub-rectangle diagonally opposite it."""
    areas = [torch.abs(rel[..., 0] * rel[..., 1]) + 1e-9 for rel in rels]
    total = torch.stack(areas).sum(0)
    return [a / total for a in reversed(areas)]


def member_inputs(iy, ix, ry, rx, row_stride: int, offset, rel_cell):
    """The fast decoder's per-member inputs for queries of (broadcast) shape Q, members last.

    iy, ry: (Sy, *Q) and ix, rx: (Sx, *Q) from `axis_lookups` (broadcastable over Q); offset: the
    table row of each image's first pixel (broadcastable to Q); rel_cell: None or broadcastable to
    (*Q, 1, 2). Returns table rows (*Q, M), first-layer inputs [rel_y, rel_x(, cell_y, cell_x)]
    (*Q, M, K) and ensemble weights (*Q, M), M = Sy * Sx in the official member order.
    """
    index = iy.unsqueeze(1) * row_stride + ix.unsqueeze(0) + offset  # (Sy, Sx, *Q)
    rel_y, rel_x = ry.unsqueeze(1).expand(index.shape), rx.unsqueeze(0).expand(index.shape)
    area = (rel_y * rel_x).abs_() + 1e-9
    weight = area.flip((0, 1)) / area.sum((0, 1))  # the area diagonally opposite each member

    def members_last(t):
        return t.flatten(0, 1).movedim(0, -1)

    index = members_last(index)
    inputs = index.new_empty(*index.shape, 2 if rel_cell is None else 4, dtype=ry.dtype)
    inputs[..., 0] = members_last(rel_y)
    inputs[..., 1] = members_last(rel_x)
    if rel_cell is not None:
        inputs[..., 2:] = rel_cell
    return index, inputs, members_last(weight)


def _spans(n: int, step: int) -> list[tuple[int, int]]:
    return [(s, min(n, s + step)) for s in range(0, n, step)]


class LIIF(nn.Module):
    def __init__(self, encoder: nn.Module, encoder_name: str, hidden_list: list[int] = (256, 256, 256, 256),
                 feat_unfold: bool = True, local_ensemble: bool = True, cell_decode: bool = True,
                 fast: bool = True):
        super().__init__()
        self.encoder = encoder
        self.feat_unfold, self.local_ensemble, self.cell_decode = feat_unfold, local_ensemble, cell_decode
        self.fast = fast  # folded first layer + batched ensemble; False runs the official algorithm
        self.options = dict(encoder=encoder_name, hidden_list=list(hidden_list), feat_unfold=feat_unfold,
                            local_ensemble=local_ensemble, cell_decode=cell_decode)
        self.feat_dim = encoder.out_dim * (9 if feat_unfold else 1)
        self.imnet = MLP(self.feat_dim + 2 + (2 if cell_decode else 0), 3, list(hidden_list))
        self.decode_block = self._decode_block  # replaced by a compiled version in compile_decoder

    # ---- the model as a function: encoder, query

    def gen_feat(self, lr: torch.Tensor) -> torch.Tensor:
        """Encode once per image. The fast path also applies the feature part of the first decoder
        layer here: a linear map of the 3x3-unfolded feature is a 3x3 convolution of the feature."""
        if lr.is_cuda:
            lr = lr.contiguous(memory_format=torch.channels_last)  # faster cuDNN convolutions
        feat = self.encoder((lr - 0.5) / 0.5)
        if not self.fast:
            return feat
        first = self.imnet.layers[0]
        k = 3 if self.feat_unfold else 1
        weight = first.weight[:, :self.feat_dim].reshape(-1, self.encoder.out_dim, k, k)
        return F.conv2d(feat, weight, first.bias, padding=k // 2)

    def query_rgb(self, feat: torch.Tensor, coord: torch.Tensor, cell: torch.Tensor) -> torch.Tensor:
        """RGB (B, Q, 3) in [0, 1] units (unclamped) at `coord` from a `gen_feat` output."""
        h, w = feat.shape[-2:]
        rel_cell = cell * cell.new_tensor([h, w])
        if self.fast:
            iy, ry = axis_lookups(coord[..., 0], h, self.local_ensemble)
            ix, rx = axis_lookups(coord[..., 1], w, self.local_ensemble)
            offset = (torch.arange(feat.shape[0], device=feat.device) * (h * w)).unsqueeze(1)
            index, inputs, weight = member_inputs(iy, ix, ry, rx, w, offset,
                                                  rel_cell.unsqueeze(-2) if self.cell_decode else None)
            rgb = self._decode(self._table(feat), index.flatten(0, 1), inputs.flatten(0, 1),
                               weight.flatten(0, 1), self._decoder_params(feat.dtype))
            return rgb.view(*coord.shape[:2], 3)
        lookups = ensemble_lookups(coord, h, w, self.local_ensemble)
        preds = self._query_reference(feat, lookups, rel_cell)
        weights = ensemble_weights([rel for _, _, rel in lookups])
        out = sum(pred * wt.unsqueeze(-1) for pred, wt in zip(preds, weights))
        return out * 0.5 + 0.5

    def _query_reference(self, feat, lookups, rel_cell):
        """The official algorithm: unfold, then one full-MLP pass per ensemble member."""
        b, c, h, w = feat.shape
        if self.feat_unfold:
            feat = F.unfold(feat, 3, padding=1).view(b, c * 9, h, w)
        flat = feat.flatten(2)
        preds = []
        for iy, ix, rel in lookups:
            idx = (iy * w + ix).unsqueeze(1).expand(-1, flat.shape[1], -1)
            q_feat = flat.gather(2, idx).transpose(1, 2)
            inp = torch.cat([q_feat, rel] + ([rel_cell] if self.cell_decode else []), -1)
            preds.append(self.imnet(inp))
        return preds

    def forward(self, lr: torch.Tensor, coord: torch.Tensor, cell: torch.Tensor) -> torch.Tensor:
        return self.query_rgb(self.gen_feat(lr), coord, cell)

    # ---- the fast decoder

    @staticmethod
    def _table(latent: torch.Tensor) -> torch.Tensor:
        """(B*h*w, C) rows of the folded feature map: one row per latent code (free if channels_last)."""
        return latent.permute(0, 2, 3, 1).reshape(-1, latent.shape[1])

    def _decoder_params(self, dtype: torch.dtype):
        """The decoder after the folded feature term, in `dtype` (views of the parameters in fp32): the
        first layer's coordinate/cell weights transposed (K, C), then (weight, bias) of the later layers."""
        first = self.imnet.layers[0]
        linears = [layer for layer in self.imnet.layers[1:] if isinstance(layer, nn.Linear)]
        return (first.weight[:, self.feat_dim:].t().to(dtype),
                [(layer.weight.to(dtype), layer.bias.to(dtype)) for layer in linears])

    @staticmethod
    def _decode_block(table, index, inputs, weight, params):
        """RGB (n, 3) of n queries: index (n, M) table rows, inputs (n, M, K), weight (n, M)."""
        n, m = index.shape
        coord_weight, layers = params
        x = table.index_select(0, index.flatten())
        x.addmm_(inputs.flatten(0, 1), coord_weight).relu_()  # first layer: folded feature + coord/cell terms
        for i, (layer_weight, bias) in enumerate(layers):
            relu = i < len(layers) - 1
            if (x.dtype == torch.bfloat16 and x.device.type == 'cpu' and not torch.is_grad_enabled()
                    and native_cpu_bf16()):
                # oneDNN (AMX) matmul with bias and ReLU fused: half the time of addmm + relu_ in bf16
                x = torch.ops.mkldnn._linear_pointwise(x, layer_weight, bias, 'relu' if relu else 'none', [], '')
            else:
                x = torch.addmm(bias, x, layer_weight.t())
                x = x.relu_() if relu else x
        rgb = x.view(n, m, 3).to(weight.dtype)  # fp32 under autocast, float64 in a float64 model
        return (rgb * weight.unsqueeze(-1)).sum(1) * 0.5 + 0.5  # elementwise: autocast keeps it fp32

    def _decode(self, table, index, inputs, weight, params):
        """`decode_block` over blocks of BLOCK_ROWS rows (one block when building a graph for training)."""
        n, m = index.shape
        inputs = inputs.to(table.dtype)
        if torch.is_grad_enabled():
            return self.decode_block(table, index, inputs, weight, params)
        out = weight.new_empty(n, 3)
        step = max(1, BLOCK_ROWS // m)
        for s, e in _spans(n, step):
            block = [t[s:e] for t in (index, inputs, weight)]
            if e - s < step and self.decode_block is not self._decode_block:  # compiled: fixed shapes
                block = [torch.cat([t, t[-1:].expand(step - (e - s), *t.shape[1:])]) for t in block]
            out[s:e] = self.decode_block(table, *block, params)[:e - s]
        return out

    def compile_decoder(self, cuda_graphs: bool = True) -> None:
        """torch.compile the fast decoder block (optional, meant for CUDA); with cuda_graphs the
        'reduce-overhead' mode replays CUDA graphs, which needs the fixed block shape `_decode` pads to."""
        self.decode_block = torch.compile(self._decode_block, mode='reduce-overhead' if cuda_graphs else None,
                                          dynamic=False)

    # ---- inference: bounded memory at any size

    @staticmethod
    def _autocast(device: torch.device, amp: str):
        check_amp(device, amp)
        return torch.autocast(device.type, dtype=AMP_DTYPES[amp]) if AMP_DTYPES[amp] else nullcontext()

    def auto_chunk(self, memory_budget: int = MEMORY_BUDGET) -> int:
        """Queries per chunk (over the batch) that keep the per-chunk tensors within budget / 8."""
        members = 4 if self.local_ensemble else 1
        if self.fast:  # index, first-layer inputs, weights, area temporaries; the MLP runs in blocks
            per_query = members * (8 + 16 + 4 + 16) * 2 + 64
        else:  # four (feat_dim + 4)-wide inputs and the hidden activations of the full MLP
            per_query = members * (self.feat_dim + 4 + 3 * max(self.options['hidden_list'])) * 4
        return max(256, memory_budget // 8 // per_query)

    def auto_tile(self, lr_shape: tuple[int, ...], memory_budget: int = MEMORY_BUDGET) -> int:
        """The LR tile side (core, without overlap) whose encoding fits in half the budget; 0 = no tiling."""
        b, _, h, w = lr_shape
        per_pixel = 4 * b * (self.encoder.peak_channels + self.imnet.layers[0].out_features)
        pixels = memory_budget // 2 // per_pixel
        if h * w <= pixels:
            return 0
        return max(64, math.isqrt(pixels) - 2 * self.tile_margin)

    @property
    def tile_margin(self) -> int:
        """LR pixels a tile extends beyond its core so its latent codes equal the untiled ones: the
        encoder's receptive radius, the folded 3x3 layer, and the look-up reach (1 pixel, +1 for
        rounding at cell borders)."""
        return self.encoder.receptive_radius + 1 + 2

    @torch.no_grad()
    def predict(self, lr: torch.Tensor, coord: torch.Tensor, cell: torch.Tensor, chunk: int | None = None,
                amp: str = 'fp32') -> torch.Tensor:
        """RGB (B, Q, 3) at arbitrary queries: encode once (untiled), decode `chunk` queries at a time."""
        with self._autocast(lr.device, amp):
            feat = self.gen_feat(lr)
            per_image = max(1, (chunk or self.auto_chunk()) // lr.shape[0])
            out = coord.new_empty(*coord.shape[:2], 3)
            for s, e in _spans(coord.shape[1], per_image):
                out[:, s:e] = self.query_rgb(feat, coord[:, s:e], cell[:, s:e])
        return out

    @torch.no_grad()
    def render(self, lr: torch.Tensor, size: tuple[int, int], chunk: int | None = None, amp: str = 'fp32',
               tile: int | None = None, memory_budget: int = MEMORY_BUDGET, progress: bool = False) -> torch.Tensor:
        """The (B, 3, H, W) image of `size` = (H, W) in [0, 1] units (unclamped) from lr (B, 3, h, w).

        chunk: queries per decoder call over the batch (None: from memory_budget). amp: 'fp32',
        'bf16' or 'fp16' (CUDA) autocast. tile: LR tile side for the encoder (fast path; None: tiles
        only when the encoding would exceed half of memory_budget; 0: never). Query coordinates are
        made per chunk; only the (B, 3, H, W) output is allocated at full size. progress: a tqdm bar
        of output pixels, for long renders.
        """
        height, width = (int(n) for n in size)
        if lr.dim() != 4 or lr.shape[1] != 3:
            raise ValueError(f"lr must be (B, 3, h, w), got {tuple(lr.shape)}")
        if height <= 0 or width <= 0:
            raise ValueError(f"output size must be positive, got {size}")
        b, _, h, w = lr.shape
        chunk = chunk or self.auto_chunk(memory_budget)
        out = lr.new_empty(b, 3, height, width, dtype=torch.float32)
        rows, cols = pixel_centres(height, lr.device), pixel_centres(width, lr.device)
        bar = tqdm(total=b * height * width, unit='px', unit_scale=True, disable=not progress, leave=False,
                   mininterval=1)
        with self._autocast(lr.device, amp), bar:
            if not self.fast:
                self._render_reference(lr, rows, cols, chunk, out, bar)
                return out
            if tile is None:
                tile = self.auto_tile(lr.shape, memory_budget)
            params = None
            iy, ry = axis_lookups(rows, h, self.local_ensemble)
            ix, rx = axis_lookups(cols, w, self.local_ensemble)
            # output row i is owned by the LR tile holding its centre: LR row floor((2i + 1) h / 2H)
            owner_y = (2 * torch.arange(height, device=lr.device) + 1) * h // (2 * height)
            owner_x = (2 * torch.arange(width, device=lr.device) + 1) * w // (2 * width)
            margin = self.tile_margin
            # the cell (2/H, 2/W) in float32, as coord_cell makes it, in LR-pixel units
            rel_cell = (torch.tensor([2 / height, 2 / width]) * torch.tensor([h, w])).to(lr.device)
            rel_cell = rel_cell if self.cell_decode else None
            for a0, a1 in _spans(h, tile or h):
                for c0, c1 in _spans(w, tile or w):
                    y0, y1, x0, x1 = max(0, a0 - margin), min(h, a1 + margin), max(0, c0 - margin), min(w, c1 + margin)
                    i0, i1 = (int(v) for v in torch.searchsorted(owner_y, torch.tensor([a0, a1], device=lr.device)))
                    j0, j1 = (int(v) for v in torch.searchsorted(owner_x, torch.tensor([c0, c1], device=lr.device)))
                    if i0 == i1 or j0 == j1:
                        continue
                    for index, lo, hi in ((iy[:, i0:i1], a0, a1), (ix[:, j0:j1], c0, c1)):
                        if index.min() < lo - 2 or index.max() > hi + 1:
                            raise RuntimeError("tile look-ups reach beyond the tile margin")  # cannot happen
                    latent = self.gen_feat(lr[:, :, y0:y1, x0:x1])
                    params = params or self._decoder_params(latent.dtype)
                    lookups = (iy[:, i0:i1] - y0, ry[:, i0:i1], ix[:, j0:j1] - x0, rx[:, j0:j1])
                    self._render_tile(latent, lookups, rel_cell, chunk, params, out[:, :, i0:i1, j0:j1], bar)
        return out

    def _render_tile(self, latent, lookups, rel_cell, chunk, params, out, bar):
        """Decode the output rectangle `out` (B, 3, n_rows, n_cols) whose per-axis look-ups (indices
        relative to the latent tile) are given, in chunks of whole rows (or parts of one row)."""
        b, _, th, tw = latent.shape
        iy, ry, ix, rx = lookups
        n_rows, n_cols = out.shape[-2:]
        table = self._table(latent)
        offset = (torch.arange(b, device=latent.device) * (th * tw)).view(b, 1, 1)
        if b * n_cols <= chunk:
            rows_per_chunk, cols_per_chunk = chunk // (b * n_cols), n_cols
        else:
            rows_per_chunk, cols_per_chunk = 1, max(1, chunk // b)
        for r0, r1 in _spans(n_rows, rows_per_chunk):
            for c0, c1 in _spans(n_cols, cols_per_chunk):
                index, inputs, weight = member_inputs(iy[:, None, r0:r1, None], ix[:, None, None, c0:c1],
                                                      ry[:, None, r0:r1, None], rx[:, None, None, c0:c1],
                                                      tw, offset, rel_cell)
                rgb = self._decode(table, index.flatten(0, 2), inputs.flatten(0, 2), weight.flatten(0, 2), params)
                out[:, :, r0:r1, c0:c1] = rgb.view(b, r1 - r0, c1 - c0, 3).permute(0, 3, 1, 2)
                bar.update(rgb.shape[0])

    def _render_reference(self, lr, rows, cols, chunk, out, bar):
        """The reference path: untiled, queries made per chunk of whole output rows."""
        b, _, height, width = out.shape
        feat = self.gen_feat(lr)
        cell = torch.tensor([2 / height, 2 / width], device=lr.device)
        for r0, r1 in _spans(height, max(1, chunk // (b * width))):
            coord = torch.stack(torch.meshgrid(rows[r0:r1], cols, indexing='ij'), -1).view(1, -1, 2).expand(b, -1, -1)
            rgb = self.query_rgb(feat, coord, cell.expand_as(coord))
            out[:, :, r0:r1] = rgb.view(b, r1 - r0, width, 3).permute(0, 3, 1, 2)
            bar.update(rgb.shape[0] * rgb.shape[1])


ENCODERS = {'edsr-baseline': EDSR, 'rdn': RDN}


def build_model(encoder: str = 'edsr-baseline', **options) -> LIIF:
    if encoder not in ENCODERS:
        raise ValueError(f"unknown encoder {encoder!r}; choose one of {sorted(ENCODERS)}")
    return LIIF(ENCODERS[encoder](), encoder, **options)


def liif_edsr(**options) -> LIIF:
    """EDSR-baseline-LIIF. Options: hidden_list, feat_unfold, local_ensemble, cell_decode, fast."""
    return build_model('edsr-baseline', **options)


def liif_rdn(**options) -> LIIF:
    """RDN-LIIF. Options as liif_edsr."""
    return build_model('rdn', **options)


def official_options(model_spec: dict) -> dict:
    """The model options an official checkpoint's {'name', 'args'} spec describes."""
    args = model_spec.get('args', {})
    return dict(encoder=args['encoder_spec']['name'],
                hidden_list=list(args['imnet_spec']['args']['hidden_list']),
                feat_unfold=args.get('feat_unfold', True), local_ensemble=args.get('local_ensemble', True),
                cell_decode=args.get('cell_decode', True))


def load_file(path: str | Path):
    """torch.load a checkpoint file (tensors and plain data only) onto the CPU, with clear errors."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"checkpoint {path} is a folder, not a file")
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        return torch.load(path, map_location='cpu', weights_only=True)
    except Exception as e:  # keep torch's reason, not its advice to load untrusted pickles
        reason = str(e).split('WeightsUnpickler error:')[-1].split('Check the documentation')[0].strip()
        raise ValueError(f"{path} is not a readable PyTorch checkpoint (truncated, corrupted or another format): "
                         f"{type(e).__name__}: {' '.join(reason.split())[:200]}") from None


def read_checkpoint(path: str | Path) -> tuple[dict, dict]:
    """(options, state dict) from an official LIIF checkpoint or one of ours, with clear errors."""
    ckpt = load_file(path)
    if isinstance(ckpt, dict) and isinstance(ckpt.get('model'), dict) and 'sd' in ckpt['model']:
        if ckpt['model'].get('name') != 'liif':
            raise ValueError(f"{path} holds a {ckpt['model'].get('name')!r} model, not LIIF")
        try:
            options = official_options(ckpt['model'])
        except (KeyError, TypeError, AttributeError) as e:
            raise ValueError(f"{path} is an official LIIF checkpoint with an incomplete model spec (no {e})") from None
        state = {k: v for k, v in ckpt['model']['sd'].items() if not k.startswith(('encoder.sub_mean', 'encoder.add_mean'))}
        return options, state
    if isinstance(ckpt, dict) and isinstance(ckpt.get('options'), dict) and isinstance(ckpt.get('model'), dict):
        # a run with an EMA validated (and chose best.pth by) the averaged weights: use those
        return ckpt['options'], ckpt['ema'] if isinstance(ckpt.get('ema'), dict) else ckpt['model']
    raise ValueError(f"{path} is not a LIIF checkpoint (neither the official format nor this project's)")


def load_weights(model: LIIF, path: str | Path) -> LIIF:
    """Load an official or project checkpoint into `model`; refuse anything that does not fit exactly."""
    options, state = read_checkpoint(path)
    differ = [f"{k}: file {options.get(k)!r}, model {v!r}" for k, v in model.options.items() if options.get(k) != v]
    if differ:
        raise ValueError(f"{path} does not fit the model: " + "; ".join(differ))
    own = model.state_dict()
    missing, unexpected = sorted(own.keys() - state.keys()), sorted(state.keys() - own.keys())
    shapes = [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in own.keys() & state.keys()
              if state[k].shape != own[k].shape]
    if missing or unexpected or shapes:
        raise ValueError(f"{path} does not fit the model: missing {missing[:5]}, unexpected {unexpected[:5]}, "
                         f"shape mismatches {shapes[:5]}")
    model.load_state_dict(state)
    return model


def model_from_checkpoint(path: str | Path, **overrides) -> LIIF:
    """Build the model a checkpoint describes and load it (overrides: e.g. fast=False)."""
    options, _ = read_checkpoint(path)
    return load_weights(build_model(**options, **overrides), path)
