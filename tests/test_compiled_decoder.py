"""compile_decoder on the CPU (torch.compile without CUDA graphs): at two LR sizes and output sizes in
one model (the second size makes new code or reuses the dynamic one), and with a chunk of several
blocks, its renders equal the eager decoder's and the reference path's (the official equations written
without the fast path's folding and blocking)."""
import pytest
import torch

import fast_liif
from helpers import on_path, tiny_liif

pytestmark = pytest.mark.slow  # compiling takes ~15-40 s on a 2-core CPU
# fp32 sums in another order (folded first layer, fused kernels): a few ulps of values ~1 after a
# handful of layers; 1e-5 is ~80 ulps at 1.0, as for every fp32 fast-path comparison
FP32_ATOL = 1e-5


def test_compiled_decoder_equals_the_reference_at_two_sizes(monkeypatch):
    model = tiny_liif().eval()
    gen = torch.Generator().manual_seed(0)
    cases = [(torch.rand(1, 3, 12, 10, generator=gen), (37, 29)),  # odd sizes: the last block is partial
             (torch.rand(1, 3, 17, 21, generator=gen), (70, 83))]
    renders = {}
    for fast in (False, True):
        renders[fast] = [on_path(model, fast).render(lr, size) for lr, size in cases]
    model.compile_decoder(cuda_graphs=False)
    for _ in range(2):  # each size again after the other: no stale code or buffers reused for the wrong size
        for (lr, size), reference, eager in zip(cases, renders[False], renders[True]):
            compiled = model.render(lr, size)
            assert compiled.shape == reference.shape == (1, 3, *size)
            assert (compiled - eager).abs().max().item() <= FP32_ATOL
            assert (compiled - reference).abs().max().item() <= FP32_ATOL
    assert model.compiled_block is not None  # the compiled block did the decoding
    # a chunk over COMPILED_MAX_ROWS (2^20: a GPU's large chunks) takes several blocks; lowered to 2^13 here,
    # the 70 x 83 render (23240 rows) is 3 blocks in one chunk
    monkeypatch.setattr(fast_liif, 'COMPILED_MAX_ROWS', 1 << 13)
    compiled = model.render(cases[1][0], cases[1][1])
    assert (compiled - renders[True][1]).abs().max().item() <= FP32_ATOL
