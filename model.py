"""The models: LIIF, MetaSR and the fixed-scale EDSR-baseline / RDN baselines, their encoders, and
checkpoint loading (official and this project's formats).

LIIF: Chen, Liu, Wang, "Learning Continuous Image Representation with Local Implicit Image Function",
CVPR 2021. MetaSR: Hu et al., "Meta-SR", CVPR 2019, as the LIIF paper's baseline. Parameter names
follow the official LIIF release so its checkpoints load unchanged.

Conventions: `lr` is (B, 3, h, w) RGB in [0, 1]; `coord` and `cell` are (B, Q, 2), row axis first,
in the [-1, 1] square whose pixel centres are -1 + (2i + 1) / n. Every model maps `model(lr, coord,
cell)` to RGB (B, Q, 3) in [0, 1] units; inside, as in the official recipe, the encoder sees
(lr - 0.5) / 0.5 and the output is scaled back by * 0.5 + 0.5. Each model is an SRModel: encode,
per-axis look-up and decode (render.py's interface), so one engine renders all of them.

LIIF has two paths computing the same function (`model.fast`, config setting `fast`):
- reference (fast=False): the official algorithm; the 3x3-unfolded feature (576 channels), four
  separate look-ups and four full decoder passes per query.
- fast (default): the first decoder layer's feature part is a 3x3 convolution of the feature map,
  computed once per image at LR resolution (256 channels); per query only the coordinate and cell
  terms are added before the ReLU. The four ensemble members are decoded in one call, in
  cache-sized blocks.
"""
import reprlib
import warnings
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

import precision
import render as engine
from render import Lookup, nearest_index, pixel_centres, real, spans

UPSAMPLE_FACTORS = {2: [2], 3: [3], 4: [2, 2], 8: [2, 2, 2]}  # pixel-shuffle stages per up-sampler scale
UPSAMPLE_SCALES = {'edsr-baseline': [2, 3, 4, 8], 'rdn': [2, 3, 4]}  # the official up-samplers' scales
def conv3x3(cin: int, cout: int) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, padding=1)


def shuffle_stages(cin: int, feats: int, scale: int) -> list[nn.Module]:
    """The sub-pixel up-sampler of EDSR and RDN: per stage a conv to feats * f^2 channels and a
    PixelShuffle(f); f = 2 per octave for 2, 4, 8, one stage of 3 for 3."""
    layers = []
    for f in UPSAMPLE_FACTORS[scale]:
        layers += [conv3x3(cin, feats * f * f), nn.PixelShuffle(f)]
        cin = feats
    return layers


class ResBlock(nn.Module):
    def __init__(self, ch: int):
        super().__init__()
        self.body = nn.Sequential(conv3x3(ch, ch), nn.ReLU(inplace=True), conv3x3(ch, ch))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class EDSR(nn.Module):
    """EDSR-baseline: head conv, residual blocks, a last conv, global skip; with upsample_scale, the
    up-sampler `tail` (pixel-shuffle stages, then a conv to RGB) gives the x2/x3/x4/x8 network."""

    def __init__(self, n_resblocks: int = 16, n_feats: int = 64, upsample_scale: int = 0):
        super().__init__()
        self.head = nn.Sequential(conv3x3(3, n_feats))
        self.body = nn.Sequential(*[ResBlock(n_feats) for _ in range(n_resblocks)], conv3x3(n_feats, n_feats))
        self.out_dim = n_feats
        self.receptive_radius = 2 * n_resblocks + 2  # 3x3 convs on the longest path, in LR pixels
        self.peak_channels = 6 * n_feats  # float maps alive at once per LR pixel during forward (for tile sizing)
        if upsample_scale:
            self.tail = nn.Sequential(nn.Sequential(*shuffle_stages(n_feats, n_feats, upsample_scale)),
                                      conv3x3(n_feats, 3))
            self.out_dim = 3
            self.receptive_radius += len(UPSAMPLE_FACTORS[upsample_scale]) + 1  # each conv reaches <= 1 LR pixel
            self.peak_channels += 2 * n_feats * upsample_scale ** 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.head(x)
        x = x + self.body(x)
        return self.tail(x) if hasattr(self, 'tail') else x


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
    """RDN configuration B (16 blocks of 8 layers, growth 64), G0 = 64; with upsample_scale, the
    up-sampler `UPNet` (pixel-shuffle stages of `growth` channels, then a conv to RGB), x2/x3/x4."""

    def __init__(self, g0: int = 64, n_blocks: int = 16, n_layers: int = 8, growth: int = 64,
                 upsample_scale: int = 0):
        super().__init__()
        self.SFENet1 = conv3x3(3, g0)
        self.SFENet2 = conv3x3(g0, g0)
        self.RDBs = nn.ModuleList([RDB(g0, growth, n_layers) for _ in range(n_blocks)])
        self.GFF = nn.Sequential(nn.Conv2d(n_blocks * g0, g0, 1), conv3x3(g0, g0))
        self.out_dim = g0
        self.receptive_radius = 2 + n_blocks * n_layers + 1
        # the block outputs kept for GFF, their concatenation, and a block's growing dense stack
        self.peak_channels = 2 * n_blocks * g0 + 2 * (g0 + n_layers * growth)
        if upsample_scale:
            self.UPNet = nn.Sequential(*shuffle_stages(g0, growth, upsample_scale), conv3x3(growth, 3))
            self.out_dim = 3
            self.receptive_radius += len(UPSAMPLE_FACTORS[upsample_scale]) + 1
            self.peak_channels += 2 * growth * upsample_scale ** 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f1 = self.SFENet1(x)
        x = self.SFENet2(f1)
        outs = []
        for block in self.RDBs:
            x = block(x)
            outs.append(x)
        x = f1 + self.GFF(torch.cat(outs, 1))
        return self.UPNet(x) if hasattr(self, 'UPNet') else x


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


def normalise(lr: torch.Tensor) -> torch.Tensor:
    """The encoder's input, (lr - 0.5) / 0.5 as the official data_norm; channels_last on CUDA (faster cuDNN)."""
    if lr.is_cuda:
        lr = lr.contiguous(memory_format=torch.channels_last)
    return (lr - 0.5) / 0.5


def batch_index(batch: int, index: torch.Tensor) -> torch.Tensor:
    """Image indices (B, 1, ...) broadcasting over the query shape of look-up indices (S, B|1, ...)."""
    return torch.arange(batch, device=index.device).view(batch, *[1] * (index.dim() - 2))


def pair(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Two broadcastable per-query values as one (..., 2) tensor."""
    return torch.stack(torch.broadcast_tensors(a, b), -1)


class SRModel(nn.Module):
    """What every model gives render.py: encode(lr), lookup(c, n, cell) per axis, decode(latent, rows,
    cols), latent_scale, tile_margin, bytes_per_query(device), bytes_per_lr_pixel(). The forward pass
    and the rendering methods are the engine's, the same for every model."""
    latent_scale = 1  # latent pixels per LR pixel along each axis

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def forward(self, lr: torch.Tensor, coord: torch.Tensor, cell: torch.Tensor) -> torch.Tensor:
        return engine.query(self, self.encode(lr), coord, cell, lr.shape[-2:])

    def predict(self, lr: torch.Tensor, coord: torch.Tensor, cell: torch.Tensor, chunk: int | None = None,
                amp: str = 'fp32') -> torch.Tensor:
        return engine.predict(self, lr, coord, cell, chunk, amp)

    def render(self, lr: torch.Tensor, size: tuple[int, int], chunk: int | None = None, amp: str = 'fp32',
               tile: int | None = None, memory_budget: int | None = None, progress: bool = False,
               window: tuple[int, int, int, int] | None = None) -> torch.Tensor:
        """The (B, 3, H, W) image of `size` (unclamped), or its `window` = (top, left, height, width)
        (B, 3, height, width); see render.render."""
        return engine.render(self, lr, size, chunk, amp, tile, memory_budget, progress, window)

    def auto_chunk(self, memory_budget: int | None = None) -> int:
        return engine.auto_chunk(self, memory_budget or engine.device_budget(self.device), self.device)

    def auto_tile(self, lr_shape: tuple[int, ...], memory_budget: int | None = None) -> int:
        return engine.auto_tile(self, lr_shape, memory_budget or engine.device_budget(self.device))


# ---------------------------------------------------------------- LIIF

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
        i = nearest_index((c + (v / real(n) + eps)).clamp_(-1 + 1e-6, 1 - 1e-6), n)
        index.append(i)
        rel.append((c - centres[i]) * n)
    return torch.stack(index), torch.stack(rel)


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
    parts = [members_last(rel_y), members_last(rel_x)]
    if rel_cell is not None:  # stacked, not assigned into slices: an exported graph keeps dynamic shapes
        parts += [c.to(ry.dtype).expand_as(parts[0]) for c in rel_cell.unbind(-1)]
    return index, torch.stack(parts, -1), members_last(weight)


class LIIF(SRModel):
    def __init__(self, encoder: nn.Module, encoder_name: str, hidden_list: list[int] = (256, 256, 256, 256),
                 feat_unfold: bool = True, local_ensemble: bool = True, cell_decode: bool = True,
                 fast: bool = True):
        super().__init__()
        self.encoder = encoder
        self.feat_unfold, self.local_ensemble, self.cell_decode = feat_unfold, local_ensemble, cell_decode
        self.fast = fast  # folded first layer + batched ensemble; False runs the official algorithm
        self.options = dict(model='liif', encoder=encoder_name, hidden_list=list(hidden_list),
                            feat_unfold=feat_unfold, local_ensemble=local_ensemble, cell_decode=cell_decode)
        self.feat_dim = encoder.out_dim * (9 if feat_unfold else 1)
        self.imnet = MLP(self.feat_dim + 2 + (2 if cell_decode else 0), 3, list(hidden_list))
        self.decode_block = self._decode_block  # replaced by a compiled version in compile_decoder

    # ---- the model as a function: encode, look up, decode

    def encode(self, lr: torch.Tensor) -> torch.Tensor:
        """The feature map; unfolded to 3x3 neighbourhoods on the reference path. The fast path
        applies the feature part of the first decoder layer here instead: a linear map of the
        3x3-unfolded feature is a 3x3 convolution of the feature."""
        feat = self.encoder(normalise(lr))
        k = 3 if self.feat_unfold else 1
        if not self.fast:
            return F.unfold(feat, k, padding=k // 2).view(feat.shape[0], -1, *feat.shape[-2:])
        first = self.imnet.layers[0]
        weight = first.weight[:, :self.feat_dim].reshape(-1, self.encoder.out_dim, k, k)
        return F.conv2d(feat, weight, first.bias, padding=k // 2)

    def lookup(self, c: torch.Tensor, n: int, cell: torch.Tensor) -> Lookup:
        index, rel = axis_lookups(c, n, self.local_ensemble)
        return Lookup(index, rel, cell * n if self.cell_decode else None)

    def decode(self, latent: torch.Tensor, rows: Lookup, cols: Lookup) -> torch.Tensor:
        """RGB (*Q, 3) in [0, 1] units (unclamped) from an `encode` output."""
        if not self.fast:
            return self._decode_reference(latent, rows, cols)
        b, _, h, w = latent.shape
        offset = batch_index(b, rows.index) * (h * w)
        rel_cell = pair(rows.cell, cols.cell).unsqueeze(-2) if self.cell_decode else None
        index, inputs, weight = member_inputs(rows.index, cols.index, rows.rel, cols.rel, w, offset, rel_cell)
        rgb = self._decode(self._table(latent), index.flatten(0, -2), inputs.flatten(0, -3),
                           weight.flatten(0, -2), self._decoder_params(latent.dtype))
        return rgb.view(*index.shape[:-1], 3)

    def _decode_reference(self, latent, rows: Lookup, cols: Lookup) -> torch.Tensor:
        """The official algorithm: per ensemble member (row shift major) a look-up of the unfolded
        feature and a full MLP pass; each prediction weighted by the area diagonally opposite it."""
        table = latent.permute(0, 2, 3, 1)  # (B, h, w, C)
        batch = batch_index(latent.shape[0], rows.index)
        preds, areas = [], []
        for iy, ry in zip(rows.index, rows.rel):
            for ix, rx in zip(cols.index, cols.rel):
                q_feat = table[batch, iy, ix]
                rel = pair(ry, rx).expand(*q_feat.shape[:-1], 2)
                parts = [q_feat, rel] + ([pair(rows.cell, cols.cell).expand_as(rel)] if self.cell_decode else [])
                preds.append(self.imnet(torch.cat(parts, -1)))
                areas.append((rel[..., 0] * rel[..., 1]).abs() + 1e-9)
        total = torch.stack(areas).sum(0)
        out = sum(pred * (area / total).unsqueeze(-1) for pred, area in zip(preds, reversed(areas)))
        return out * 0.5 + 0.5

    @property
    def tile_margin(self) -> int:
        """The encoder's receptive radius and the 3x3 neighbourhood (folded layer or unfolding)."""
        return self.encoder.receptive_radius + 1

    def bytes_per_query(self, device: torch.device) -> int:
        members = 4 if self.local_ensemble else 1
        if self.fast:  # index, first-layer inputs, weights, area temporaries; the MLP's activations (3
            # of the widest layer alive at once) count only where a whole chunk is one decoder block
            whole = engine.decoder_rows(device) is None
            return members * ((8 + 16 + 4 + 16) * 2 + whole * 3 * max(self.options['hidden_list']) * 4) + 64
        # four (feat_dim + 4)-wide inputs and the hidden activations of the full MLP
        return members * (self.feat_dim + 4 + 3 * max(self.options['hidden_list'])) * 4

    def bytes_per_lr_pixel(self) -> int:
        latent = self.imnet.layers[0].out_features if self.fast else self.feat_dim
        return 4 * (self.encoder.peak_channels + latent)

    # ---- the fast decoder

    @staticmethod
    def _table(latent: torch.Tensor) -> torch.Tensor:
        """(B*h*w, C) rows of the folded feature map, one row per latent code, each row contiguous (free
        if channels_last; else one copy, without which every gathered row reads C cache lines)."""
        return latent.permute(0, 2, 3, 1).reshape(-1, latent.shape[1]).contiguous()

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
            x = linear(x, layer_weight, bias, relu=i < len(layers) - 1)
        rgb = x.view(n, m, 3).to(weight.dtype)  # fp32 under autocast, float64 in a float64 model
        return (rgb * weight.unsqueeze(-1)).sum(1) * 0.5 + 0.5  # elementwise: autocast keeps it fp32

    def _decode(self, table, index, inputs, weight, params):
        """`decode_block` over blocks of engine.decoder_rows rows: cache-sized on a CPU, the whole chunk on
        a GPU, fixed (the last block padded) when compiled; one block when building a graph for training."""
        n, m = index.shape
        inputs = inputs.to(table.dtype)
        if torch.is_grad_enabled():
            return self.decode_block(table, index, inputs, weight, params)
        compiled = self.decode_block is not self._decode_block
        out = weight.new_empty(n, 3)
        step = max(1, (engine.decoder_rows(table.device, fixed=compiled) or n * m) // m)
        for s, e in spans(n, step):
            block = [t[s:e] for t in (index, inputs, weight)]
            if e - s < step and compiled:
                block = [torch.cat([t, t[-1:].expand(step - (e - s), *t.shape[1:])]) for t in block]
            out[s:e] = self.decode_block(table, *block, params)[:e - s]
        return out

    def compile_decoder(self, cuda_graphs: bool = True) -> None:
        """torch.compile the fast decoder block (the compile_decoder setting; meant for CUDA). Its blocks
        have one fixed size and the feature table's length is dynamic after the first image, so other
        images and scales reuse the code; with cuda_graphs the 'reduce-overhead' mode replays CUDA graphs."""
        self.decode_block = torch.compile(self._decode_block, mode='reduce-overhead' if cuda_graphs else None)


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, relu: bool) -> torch.Tensor:
    """x @ weight.T + bias, then a ReLU when asked, by the fastest kernel at hand when autograd is off:
    cuBLASLt's fused bias + ReLU on CUDA; on x86 CPUs oneDNN's fused linear in fp32 (no bias copy and no
    ReLU pass: renders 1.08-1.46x faster than MKL's addmm + relu_ on an AVX2 EPYC) and in bf16 where it
    is native (AMX: half the time of addmm + relu_). addmm and an in-place ReLU otherwise."""
    if not torch.is_grad_enabled():
        if relu and x.is_cuda:
            return torch._addmm_activation(bias, x, weight.t())
        if x.device.type == 'cpu' and (x.dtype == torch.float32 and precision.onednn_linear()
                                       or x.dtype == torch.bfloat16 and precision.native_cpu_bf16()):
            return torch.ops.mkldnn._linear_pointwise(x, weight, bias, 'relu' if relu else 'none', [], '')
    x = torch.addmm(bias, x, weight.t())
    return x.relu_() if relu else x

# ---------------------------------------------------------------- MetaSR

class MetaSR(SRModel):
    """MetaSR as the official LIIF release defines it: per query, an MLP 3 -> 256 -> C*9*3 turns
    [rel_y, rel_x, cell_y * h / 2] into a (C*9, 3) filter applied to the 3x3-unfolded latent code
    of the LR pixel holding the top-left corner of the query's cell (+1e-6, clamped into the square).
    rel is that corner minus the pixel's top-left corner, times (h/2, w/2): in LR pixels. The cell
    input is the cell's height times h/2 only, as in the official code. No local ensemble."""

    def __init__(self, encoder: nn.Module, encoder_name: str):
        super().__init__()
        self.encoder = encoder
        self.options = dict(model='metasr', encoder=encoder_name)
        self.imnet = MLP(3, encoder.out_dim * 9 * 3, [256])

    def encode(self, lr: torch.Tensor) -> torch.Tensor:
        return self.encoder(normalise(lr))

    def lookup(self, c: torch.Tensor, n: int, cell: torch.Tensor) -> Lookup:
        corner = c - cell / 2  # the top-left corner of the query's cell
        index = nearest_index((corner + 1e-6).clamp(-1 + 1e-6, 1 - 1e-6), n)
        pixel_corner = pixel_centres(n, c.device)[index] - (2 / real(n)) / 2
        # * n / 2 (halving is exact) equals * (n / 2): the same float32 values, and a 0-d cell stays float32
        return Lookup(index[None], ((corner - pixel_corner) * n / 2)[None], cell * n / 2)

    def decode(self, latent: torch.Tensor, rows: Lookup, cols: Lookup) -> torch.Tensor:
        b, c = latent.shape[:2]
        padded = F.pad(latent, (1, 1, 1, 1)).permute(0, 2, 3, 1)  # the unfolding's zero padding
        batch, iy, ix = batch_index(b, rows.index), rows.index[0], cols.index[0]
        taps = [padded[batch, iy + dy, ix + dx] for dy in range(3) for dx in range(3)]
        q_feat = torch.stack(taps, -1).flatten(-2)  # (*Q, C*9), channel c * 9 + tap as F.unfold orders it
        rel_y, rel_x = torch.broadcast_tensors(rows.rel[0], cols.rel[0])
        filters = self.imnet(torch.stack([rel_y, rel_x, rows.cell.expand_as(rel_y)], -1)).unflatten(-1, (c * 9, 3))
        rgb = (q_feat.unsqueeze(-2) @ filters).squeeze(-2)
        return rgb * 0.5 + 0.5

    @property
    def tile_margin(self) -> int:
        return self.encoder.receptive_radius + 1  # and the 3x3 neighbourhood

    def bytes_per_query(self, device: torch.device) -> int:
        # the 9 taps, the unfolded code, the filter and the hidden layer
        return 4 * (self.encoder.out_dim * 9 * 2 + self.encoder.out_dim * 9 * 3 + 256 + 8)

    def bytes_per_lr_pixel(self) -> int:
        return 4 * (self.encoder.peak_channels + 2 * self.encoder.out_dim)


# ---------------------------------------------------------------- fixed-scale baselines

class Upsample(SRModel):
    """A fixed-scale network (EDSR-baseline or RDN with its own up-sampler), used as the official
    LIIF without a decoder: the value at a query is the up-sampled image's pixel found by nearest
    look-up at the query's coordinate. At its own scale this is plain EDSR / RDN super-resolution."""

    def __init__(self, encoder: nn.Module, encoder_name: str, scale: int):
        super().__init__()
        self.encoder = encoder
        self.latent_scale = scale
        self.options = dict(model='upsample', encoder=encoder_name, upsample_scale=scale)

    def encode(self, lr: torch.Tensor) -> torch.Tensor:
        return self.encoder(normalise(lr))

    def lookup(self, c: torch.Tensor, n: int, cell: torch.Tensor) -> Lookup:
        return Lookup(nearest_index(c, n * self.latent_scale)[None], None, None)

    def decode(self, latent: torch.Tensor, rows: Lookup, cols: Lookup) -> torch.Tensor:
        sr = latent.permute(0, 2, 3, 1)
        return sr[batch_index(latent.shape[0], rows.index), rows.index[0], cols.index[0]] * 0.5 + 0.5

    @property
    def tile_margin(self) -> int:
        return self.encoder.receptive_radius

    def bytes_per_query(self, device: torch.device) -> int:
        return 64

    def bytes_per_lr_pixel(self) -> int:
        return 4 * self.encoder.peak_channels


# ---------------------------------------------------------------- building and loading

ENCODERS = {'edsr-baseline': EDSR, 'rdn': RDN}
MODELS = ('liif', 'metasr', 'upsample')
LIIF_SWITCHES = ('feat_unfold', 'local_ensemble', 'cell_decode')


def option_problems(options: dict) -> list[str]:
    """What keeps build_model from building `options` (the model settings, or a checkpoint's options),
    one phrase per problem; [] when they are fine. Values are checked by type before `in` compares them
    (a tensor cannot be compared), and shown shortened (reprlib)."""
    model = options.get('model') if isinstance(options.get('model'), str) else None
    encoder = options.get('encoder') if isinstance(options.get('encoder'), str) else None
    hidden, scale = options.get('hidden_list', [256]), options.get('upsample_scale')
    problems = [f"unknown model option {reprlib.repr(key)}" for key in options
                if key not in ('model', 'encoder', 'upsample_scale', 'hidden_list', *LIIF_SWITCHES)]
    if model not in MODELS:
        problems.append(f"model must be one of {', '.join(map(repr, MODELS))}, got {reprlib.repr(options.get('model'))}")
    if encoder not in ENCODERS:
        problems.append(f"encoder must be 'edsr-baseline' or 'rdn', got {reprlib.repr(options.get('encoder'))}")
    elif model == 'upsample' and (type(scale) is not int or scale not in UPSAMPLE_SCALES[encoder]):
        problems.append(f"upsample_scale must be one of {UPSAMPLE_SCALES[encoder]} for the {encoder} up-sampler, "
                        f"got {reprlib.repr(scale)}")
    if not isinstance(hidden, (list, tuple)) or not hidden or any(type(n) is not int or n <= 0 for n in hidden):
        problems.append(f"hidden_list must be a non-empty list of positive ints, got {reprlib.repr(hidden)}")
    problems += [f"{key} must be True or False, got {reprlib.repr(options[key])}" for key in LIIF_SWITCHES
                 if key in options and not isinstance(options[key], bool)]
    return problems


def build_model(model: str = 'liif', encoder: str = 'edsr-baseline', upsample_scale: int = 2, fast: bool = True,
                **liif_options) -> SRModel:
    """Any model: 'liif' (liif_options: hidden_list, feat_unfold, local_ensemble, cell_decode; fast),
    'metasr', or 'upsample' (the encoder's own up-sampler at upsample_scale). Options that do not
    concern the chosen model are ignored; those option_problems finds fault with are refused."""
    problems = option_problems(dict(model=model, encoder=encoder, upsample_scale=upsample_scale, **liif_options))
    if problems:
        raise ValueError("cannot build the model: " + "; ".join(problems))
    if model == 'liif':
        return LIIF(ENCODERS[encoder](), encoder, fast=fast, **liif_options)
    if model == 'metasr':
        return MetaSR(ENCODERS[encoder](), encoder)
    return Upsample(ENCODERS[encoder](upsample_scale=upsample_scale), encoder, upsample_scale)


def liif_edsr(**options) -> LIIF:
    """EDSR-baseline-LIIF. Options: hidden_list, feat_unfold, local_ensemble, cell_decode, fast."""
    return build_model('liif', 'edsr-baseline', **options)


def liif_rdn(**options) -> LIIF:
    """RDN-LIIF. Options as liif_edsr."""
    return build_model('liif', 'rdn', **options)


def official_options(model_spec: dict) -> dict:
    """The model options an official checkpoint's {'name', 'args'} spec describes: 'metasr'; 'liif'
    with an `imnet_spec`; 'liif' without one over an up-sampling encoder (the fixed-scale baselines)."""
    args = model_spec.get('args', {})
    encoder = args['encoder_spec']['name']
    upsamples = not args['encoder_spec'].get('args', {}).get('no_upsampling', False)
    if model_spec['name'] == 'metasr':
        if upsamples:
            raise ValueError("its MetaSR has an up-sampling encoder (no_upsampling is not set)")
        return dict(model='metasr', encoder=encoder)
    if 'imnet_spec' not in args:
        if not upsamples:
            raise KeyError('imnet_spec')
        return dict(model='upsample', encoder=encoder, upsample_scale=args['encoder_spec']['args'].get('scale', 2))
    return dict(model='liif', encoder=encoder, hidden_list=list(args['imnet_spec']['args']['hidden_list']),
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
        with warnings.catch_warnings():  # e.g. "Detected pickle protocol 4": a file it then refuses, or torch's own
            warnings.simplefilter('ignore')
            return torch.load(path, map_location='cpu', weights_only=True)
    except Exception as e:  # keep torch's reason, not its advice to load untrusted pickles
        reason = str(e).split('WeightsUnpickler error:')[-1].split('Check the documentation')[0].strip()
        raise ValueError(f"{path} is not a readable PyTorch checkpoint (truncated, corrupted or another format): "
                         f"{type(e).__name__}: {' '.join(reason.split())[:200]}") from None


def checkpoint_options(ckpt: dict) -> dict:
    """The model options of one of this project's checkpoints; files from before MetaSR and the
    fixed-scale baselines hold no 'model' and are LIIF."""
    return {'model': 'liif', **(ckpt.get('options') or {})}


def model_name(options: dict) -> str:
    """A model as the paper names it: 'EDSR-baseline-LIIF', 'RDN-MetaSR', 'EDSR-baseline x4'."""
    encoder = {'edsr-baseline': 'EDSR-baseline', 'rdn': 'RDN'}[options['encoder']]
    if options['model'] == 'upsample':
        return f"{encoder} x{options['upsample_scale']}"
    return f"{encoder}-{'MetaSR' if options['model'] == 'metasr' else 'LIIF'}"


def read_checkpoint(path: str | Path) -> tuple[dict, dict]:
    """(options, state dict) from an official LIIF / MetaSR / baseline checkpoint or one of ours; ValueError
    for anything else, and for options build_model refuses or a state dict that is not names -> tensors."""
    ckpt = load_file(path)
    if isinstance(ckpt, dict) and isinstance(ckpt.get('model'), dict) and 'sd' in ckpt['model']:
        name = ckpt['model'].get('name')
        if not isinstance(name, str) or name not in ('liif', 'metasr'):
            raise ValueError(f"{path} holds a {name!r} model, not LIIF, MetaSR or a LIIF-wrapped baseline")
        try:
            options = official_options(ckpt['model'])
        except (KeyError, TypeError, AttributeError) as e:
            raise ValueError(f"{path} is an official {name} checkpoint with an incomplete model spec "
                             f"(no {e})") from None
        except ValueError as e:
            raise ValueError(f"{path} is not a model this project builds: {e}") from None
        state = ckpt['model']['sd']
        if isinstance(state, dict):  # EDSR's mean shifts are in the official state dict but unused
            state = {k: v for k, v in state.items() if not str(k).startswith(('encoder.sub_mean', 'encoder.add_mean'))}
    elif isinstance(ckpt, dict) and isinstance(ckpt.get('options'), dict) and isinstance(ckpt.get('model'), dict):
        # a run with an EMA validated (and chose best.pth by) the averaged weights: use those
        options, state = checkpoint_options(ckpt), ckpt['ema'] if isinstance(ckpt.get('ema'), dict) else ckpt['model']
    else:
        raise ValueError(f"{path} is not a model checkpoint (neither the official format nor this project's)")
    problems = option_problems(options)
    if problems:
        raise ValueError(f"{path} describes a model this project cannot build: {'; '.join(problems)}")
    if not isinstance(state, dict) or not all(isinstance(k, str) and torch.is_tensor(v) and v.layout == torch.strided
                                              and v.device.type == 'cpu' and v.is_floating_point()
                                              for k, v in state.items()):
        raise ValueError(f"{path} holds a state dict that is not parameter names -> floating-point tensors")
    return options, state


def check_fit(model: SRModel, options: dict, state: dict, path: str | Path) -> None:
    """Refuse a checkpoint's `options` and `state` that do not fit `model` exactly (options, names, shapes)."""
    if options['model'] != model.options['model']:
        differ = [f"model: file {options['model']!r}, model {model.options['model']!r}"]
    else:
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


def load_weights(model: SRModel, path: str | Path) -> SRModel:
    """Load an official or project checkpoint into `model`; refuse anything that does not fit exactly."""
    options, state = read_checkpoint(path)
    check_fit(model, options, state, path)
    model.load_state_dict(state)
    return model


def model_from_checkpoint(path: str | Path, **overrides) -> SRModel:
    """Build the model a checkpoint describes and load it (overrides: e.g. fast=False). The fit is checked
    first on a twin on the meta device (shapes, no memory): a file that does not fit allocates nothing."""
    options, state = read_checkpoint(path)
    with torch.device('meta'):
        check_fit(build_model(**options, **overrides), options, state, path)
    model = build_model(**options, **overrides)
    model.load_state_dict(state)
    return model
