"""LIIF's fast path: FastLIIF computes the function model.LIIF defines another way (tests/test_fast.py
holds it to the reference), and is what build_model gives by default.

- The first decoder layer's feature part is a 3x3 convolution of the feature map (a linear map of the
  3x3-unfolded feature), computed once per image at LR resolution (256 channels instead of 576); per
  query only the coordinate and cell terms are added before its ReLU.
- The four ensemble members of a query are decoded in one call, in blocks sized for the device
  (render.decoder_rows): a block's activations stay in a CPU's cache; a GPU decodes a whole chunk at once.
- Each linear layer runs on the fastest kernel at hand (precision.linear: fused bias + ReLU).
- `compile_decoder` compiles a block (CUDA graphs on CUDA); blocks then follow the render's chunk.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

from model import LIIF, denormalise, member_inputs, normalise, table
from precision import linear
from render import Lookup, batch_index, decoder_rows, in_blocks, pair

# A compiled decoder records one graph per block shape: blocks are the chunk's rows rounded up to a
# multiple of COMPILED_ROUNDING (less padding than that: 3.4 % of a default chunk's 120,000 rows), and at most
# COMPILED_MAX_ROWS (1 GiB of fp32 activations: enough to keep a large GPU busy).
COMPILED_ROUNDING = 1 << 12
COMPILED_MAX_ROWS = 1 << 20


def compiled_rows(rows: int) -> int:
    """The block a compiled decoder runs `rows` rows in: rounded up to COMPILED_ROUNDING, at most
    COMPILED_MAX_ROWS (more rows take several blocks)."""
    return min(COMPILED_MAX_ROWS, -(-rows // COMPILED_ROUNDING) * COMPILED_ROUNDING)


class FastLIIF(LIIF):
    """LIIF with the first layer folded into the encoding and the members decoded in blocks; the same
    parameters, settings and checkpoints as LIIF."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.compiled_block = None  # decode_block compiled by compile_decoder

    def encode(self, lr: torch.Tensor) -> torch.Tensor:
        """The first decoder layer's feature term (with its bias) at every LR pixel: a 3x3 (or 1x1
        without feat_unfold) convolution of the feature map with that layer's weights."""
        feat = self.encoder(normalise(lr))
        k = 3 if self.feat_unfold else 1
        first = self.imnet.layers[0]
        weight = first.weight[:, :self.feat_dim].reshape(-1, self.encoder.out_dim, k, k)
        return F.conv2d(feat, weight, first.bias, padding=k // 2)

    def decode(self, latent: torch.Tensor, rows: Lookup, cols: Lookup) -> torch.Tensor:
        """RGB (*Q, 3) in [0, 1] units (unclamped) from `encode`'s latent: LIIF.decode's function."""
        b, _, h, w = latent.shape
        offset = batch_index(b, rows.index) * (h * w)
        rel_cell = pair(rows.cell, cols.cell).unsqueeze(-2) if self.cell_decode else None
        index, inputs, weight = member_inputs(rows.index, cols.index, rows.rel, cols.rel, w, offset, rel_cell)
        codes, params, m = table(latent), self.decoder_params(latent.dtype), index.shape[-1]
        per_query = (index.flatten(0, -2), inputs.flatten(0, -3).to(latent.dtype), weight.flatten(0, -2))
        if self.compiled_block is None:
            step = (decoder_rows(latent.device) or index.numel()) // m
            rgb = in_blocks(lambda *block: decode_block(codes, *block, params), per_query, step)
        else:
            rgb = in_blocks(lambda *block: self.compiled_block(codes, *block, params), per_query,
                            COMPILED_MAX_ROWS // m, padded=lambda q: compiled_rows(q * m) // m)
        return rgb.view(*index.shape[:-1], 3)

    def decoder_params(self, dtype: torch.dtype):
        """The decoder after the folded feature term, in `dtype` (views of the parameters in fp32): the
        first layer's coordinate/cell weights transposed (K, C), then (weight, bias) of the later layers."""
        first = self.imnet.layers[0]
        linears = [layer for layer in self.imnet.layers[1:] if isinstance(layer, nn.Linear)]
        return (first.weight[:, self.feat_dim:].t().to(dtype),
                [(layer.weight.to(dtype), layer.bias.to(dtype)) for layer in linears])

    def bytes_per_query(self, device: torch.device) -> int:
        """Index, first-layer inputs, weights and area temporaries per member; the MLP's activations (3 of
        the widest layer alive at once) count only where a whole chunk is one decoder block."""
        members = 4 if self.local_ensemble else 1
        whole = decoder_rows(device) is None
        return members * ((8 + 16 + 4 + 16) * 2 + whole * 3 * max(self.options['hidden_list']) * 4) + 64

    def bytes_per_lr_pixel(self) -> int:
        return 4 * (self.encoder.peak_channels + self.imnet.layers[0].out_features)

    def compile_decoder(self, cuda_graphs: bool = True) -> None:
        """torch.compile decode_block (the compile_decoder setting): its blocks have compiled_rows' sizes
        and the feature table's length is dynamic after the first image, so other images and scales
        reuse the code; with cuda_graphs the 'reduce-overhead' mode replays CUDA graphs (one per block
        size). Out of memory in a compiled call goes to render.py like any other: the chunk is halved,
        and so are the blocks."""
        self.compiled_block = torch.compile(decode_block, mode='reduce-overhead' if cuda_graphs else None)


def decode_block(table, index, inputs, weight, params):
    """RGB (n, 3) of n queries: index (n, M) table rows, inputs (n, M, K), weight (n, M)."""
    n, m = index.shape
    coord_weight, layers = params
    x = table.index_select(0, index.flatten())
    x.addmm_(inputs.flatten(0, 1), coord_weight).relu_()  # first layer: folded feature + coord/cell terms
    for i, (layer_weight, bias) in enumerate(layers):
        x = linear(x, layer_weight, bias, relu=i < len(layers) - 1)
    rgb = x.view(n, m, 3).to(weight.dtype)  # fp32 under autocast, float64 in a float64 model
    return denormalise((rgb * weight.unsqueeze(-1)).sum(1))  # elementwise: autocast keeps it fp32
