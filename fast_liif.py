"""LIIF's fast path: the function model.LIIF defines, computed another way (tests/test_fast.py holds it
to the reference path).

- The first decoder layer's feature part is a 3x3 convolution of the feature map (a linear map of the
  3x3-unfolded feature), computed once per image at LR resolution (256 channels instead of 576); per
  query only the coordinate and cell terms are added before its ReLU.
- The four ensemble members of a query are decoded in one call, in blocks sized for the device: a
  block's activations stay in a CPU's cache; a GPU decodes a whole chunk at once.
- Each linear layer runs on the fastest kernel at hand (fused bias + ReLU), chosen here.
- `compile_decoder` compiles a block (CUDA graphs on CUDA); blocks then follow the render's chunk.
"""
import functools
import platform

import torch
import torch.nn as nn
import torch.nn.functional as F

import precision
from render import Lookup, spans

# Rows (queries x ensemble members) per decoder call on a CPU: a block's 256-wide fp32 activations
# (4 MiB) stay in the cache. A GPU decodes a whole chunk in one call.
CPU_BLOCK_ROWS = 4096
# A compiled decoder records one graph per block shape: blocks are the chunk's rows rounded up to a
# multiple of COMPILED_ROUNDING (less padding than that: 3.4 % of a default chunk's 120,000 rows), and at most
# COMPILED_MAX_ROWS (1 GiB of fp32 activations: enough to keep a large GPU busy).
COMPILED_ROUNDING = 1 << 12
COMPILED_MAX_ROWS = 1 << 20


def decoder_rows(device: torch.device) -> int | None:
    """Rows per call of the decoder on `device`: CPU_BLOCK_ROWS on a CPU; None on a GPU (the whole
    chunk at once: a few large kernels instead of thousands of small ones)."""
    return CPU_BLOCK_ROWS if device.type != 'cuda' else None


def compiled_rows(rows: int) -> int:
    """The block a compiled decoder runs `rows` rows in: rounded up to COMPILED_ROUNDING, at most
    COMPILED_MAX_ROWS (more rows take several blocks)."""
    return min(COMPILED_MAX_ROWS, -(-rows // COMPILED_ROUNDING) * COMPILED_ROUNDING)


@functools.cache
def onednn_linear() -> bool:
    """Whether oneDNN's fused linear (matmul, bias and ReLU in one kernel) runs in fp32 here: an x86 CPU
    and a oneDNN build whose op works. It picks its kernels by instruction set (AVX2, AVX-512, AMX), where
    MKL, behind addmm, picks them by CPU vendor too."""
    if platform.machine().lower() not in ('x86_64', 'amd64') or not torch.backends.mkldnn.is_available():
        return False
    try:  # a 1x1 product: a build that cannot do it fails here, not mid-render
        x = torch.ones(1, 1)
        torch.ops.mkldnn._linear_pointwise(x, x, x[0], 'relu', [], '')
    except (RuntimeError, AttributeError):
        return False
    return True


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, relu: bool) -> torch.Tensor:
    """x @ weight.T + bias, then a ReLU when asked, by the fastest kernel at hand when autograd is off:
    cuBLASLt's fused bias + ReLU on CUDA; on x86 CPUs oneDNN's fused linear in fp32 (no bias copy and no
    ReLU pass: renders 1.08-1.46x faster than MKL's addmm + relu_ on an AVX2 EPYC) and in bf16 where it
    is native (AMX: half the time of addmm + relu_). addmm and an in-place ReLU otherwise."""
    if not torch.is_grad_enabled() and not torch.compiler.is_compiling():  # inductor fuses its own kernels
        if relu and x.is_cuda:
            return torch._addmm_activation(bias, x, weight.t())
        if x.device.type == 'cpu' and (x.dtype == torch.float32 and onednn_linear()
                                       or x.dtype == torch.bfloat16 and precision.native_cpu_bf16()):
            return torch.ops.mkldnn._linear_pointwise(x, weight, bias, 'relu' if relu else 'none', [], '')
    x = torch.addmm(bias, x, weight.t())
    return x.relu_() if relu else x


def encode(liif, feat: torch.Tensor) -> torch.Tensor:
    """The first decoder layer's feature term (with its bias) at every LR pixel: a 3x3 (or 1x1 without
    feat_unfold) convolution of the feature map with that layer's weights."""
    k = 3 if liif.feat_unfold else 1
    first = liif.imnet.layers[0]
    weight = first.weight[:, :liif.feat_dim].reshape(-1, liif.encoder.out_dim, k, k)
    return F.conv2d(feat, weight, first.bias, padding=k // 2)


def member_inputs(iy, ix, ry, rx, row_stride: int, offset, rel_cell):
    """The decoder's per-member inputs for queries of (broadcast) shape Q, members last.

    iy, ry: (Sy, *Q) and ix, rx: (Sx, *Q) from `model.axis_lookups` (broadcastable over Q); offset: the
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


def decode(liif, latent: torch.Tensor, rows: Lookup, cols: Lookup) -> torch.Tensor:
    """RGB (*Q, 3) in [0, 1] units (unclamped) from `encode`'s latent: model.LIIF.decode's function."""
    b, _, h, w = latent.shape
    offset = torch.arange(b, device=rows.index.device).view(b, *[1] * (rows.index.dim() - 2)) * (h * w)
    rel_cell = torch.stack(torch.broadcast_tensors(rows.cell, cols.cell), -1).unsqueeze(-2) if liif.cell_decode else None
    index, inputs, weight = member_inputs(rows.index, cols.index, rows.rel, cols.rel, w, offset, rel_cell)
    rgb = decode_blocks(liif, table(latent), index.flatten(0, -2), inputs.flatten(0, -3), weight.flatten(0, -2),
                        decoder_params(liif, latent.dtype))
    return rgb.view(*index.shape[:-1], 3)


def table(latent: torch.Tensor) -> torch.Tensor:
    """(B*h*w, C) rows of the folded feature map, one row per latent code, each row contiguous (free
    if channels_last; else one copy, without which every gathered row reads C cache lines)."""
    return latent.permute(0, 2, 3, 1).reshape(-1, latent.shape[1]).contiguous()


def decoder_params(liif, dtype: torch.dtype):
    """The decoder after the folded feature term, in `dtype` (views of the parameters in fp32): the
    first layer's coordinate/cell weights transposed (K, C), then (weight, bias) of the later layers."""
    first = liif.imnet.layers[0]
    linears = [layer for layer in liif.imnet.layers[1:] if isinstance(layer, nn.Linear)]
    return (first.weight[:, liif.feat_dim:].t().to(dtype),
            [(layer.weight.to(dtype), layer.bias.to(dtype)) for layer in linears])


def decode_block(table, index, inputs, weight, params):
    """RGB (n, 3) of n queries: index (n, M) table rows, inputs (n, M, K), weight (n, M)."""
    n, m = index.shape
    coord_weight, layers = params
    x = table.index_select(0, index.flatten())
    x.addmm_(inputs.flatten(0, 1), coord_weight).relu_()  # first layer: folded feature + coord/cell terms
    for i, (layer_weight, bias) in enumerate(layers):
        x = linear(x, layer_weight, bias, relu=i < len(layers) - 1)
    rgb = x.view(n, m, 3).to(weight.dtype)  # fp32 under autocast, float64 in a float64 model
    return (rgb * weight.unsqueeze(-1)).sum(1) * 0.5 + 0.5  # elementwise: autocast keeps it fp32


def compiled_block(cuda_graphs: bool):
    """decode_block compiled: its blocks have compiled_rows' sizes and the feature table's length is
    dynamic after the first image, so other images and scales reuse the code; with cuda_graphs the
    'reduce-overhead' mode replays CUDA graphs (one per block size)."""
    return torch.compile(decode_block, mode='reduce-overhead' if cuda_graphs else None)


def decode_blocks(liif, table, index, inputs, weight, params):
    """liif.decode_block over blocks: cache-sized on a CPU, the whole chunk on a GPU; compiled, each
    block padded to compiled_rows (one graph per size, a few per render). One block when building a
    graph for training. Out of memory in a compiled call goes to render.py like any other: the chunk
    is halved, and so are the blocks."""
    n, m = index.shape
    inputs = inputs.to(table.dtype)
    if torch.is_grad_enabled():
        return liif.decode_block(table, index, inputs, weight, params)
    compiled = liif.decode_block is not decode_block
    rows = COMPILED_MAX_ROWS if compiled else decoder_rows(table.device) or n * m
    out = weight.new_empty(n, 3)
    for s, e in spans(n, max(1, rows // m)):
        block = [t[s:e] for t in (index, inputs, weight)]
        pad = compiled_rows((e - s) * m) // m - (e - s) if compiled else 0
        if pad:
            block = [torch.cat([t, t[-1:].expand(pad, *t.shape[1:])]) for t in block]
        out[s:e] = liif.decode_block(table, *block, params)[:e - s]
    return out


def bytes_per_query(liif, device: torch.device) -> int:
    """Index, first-layer inputs, weights and area temporaries per member; the MLP's activations (3 of
    the widest layer alive at once) count only where a whole chunk is one decoder block."""
    members = 4 if liif.local_ensemble else 1
    whole = decoder_rows(device) is None
    return members * ((8 + 16 + 4 + 16) * 2 + whole * 3 * max(liif.options['hidden_list']) * 4) + 64
