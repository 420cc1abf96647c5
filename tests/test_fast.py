"""The fast path (folded first layer, batched ensemble, tiled encoding) computes the reference path's
function: same outputs within 1e-5 in fp32 for random and official weights, every ablation switch,
odd, non-integer and anisotropic sizes, chunks that do not divide the query count, and tiles."""
import itertools

import numpy as np
import pytest
import torch

import fast_liif
import precision
import render
from checkpoint import model_from_checkpoint
from fast_liif import FastLIIF
from helpers import coord_cell, liif_edsr, on_path, tiny_liif
from imgproc import read_image
from model import EDSR, LIIF, RDN

TOL = 1e-5


def paths(model, fn):
    """fn(model) on the reference path, then on the fast path (the same parameters)."""
    return [fn(on_path(model, fast)) for fast in (False, True)]


def max_diff(a, b) -> float:
    return (a - b).abs().max().item()


def random_queries(b: int, q: int, h: int, w: int, seed: int = 0):
    """Random coordinates plus the awkward ones: the square's corners and edges and exact
    feature-pixel borders, where the look-up's rounding ties; random positive cells."""
    g = torch.Generator().manual_seed(seed)
    coord = torch.rand(b, q, 2, generator=g) * 2 - 1
    row_borders, col_borders = -1 + 2 * torch.arange(h + 1) / h, -1 + 2 * torch.arange(w + 1) / w
    special = torch.cat([torch.stack([row_borders, torch.full_like(row_borders, 0.3)], -1),
                         torch.stack([torch.full_like(col_borders, -0.2), col_borders], -1),
                         torch.tensor([[-1.0, -1.0], [1.0, 1.0], [-1.0, 1.0], [1.0, -1.0], [0.0, 0.0]])])
    coord[:, :len(special)] = special
    cell = (torch.rand(b, q, 2, generator=g) * 0.3 + 0.01) * torch.tensor([2 / h, 2 / w])
    return coord, cell


@pytest.fixture(scope='module')
def official(official_weights):
    return model_from_checkpoint(official_weights).eval()


@pytest.fixture(scope='module')
def butterfly_lr(benchmark_root):
    """A 27x33 crop (odd sizes) of a real Set5 x4 LR image, as (1, 3, h, w)."""
    img = read_image(benchmark_root / 'Set5' / 'LR_bicubic' / 'X4' / 'butterflyx4.png')[5:32, 7:40]
    return torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1)[None]


@pytest.mark.slow
def test_official_weights_render_non_integer_anisotropic(official, butterfly_lr):
    size = (45, 70)  # x1.67 by x2.12 from 27x33
    ref, fast = paths(official, lambda m: m.render(butterfly_lr, size, chunk=997))
    assert ref.shape == (1, 3, *size)
    assert ref.std() > 0.05  # a real image, not a constant
    assert max_diff(ref, fast) <= TOL


def test_official_weights_queries_and_predict(official, butterfly_lr):
    coord, cell = random_queries(1, 3001, *butterfly_lr.shape[-2:])
    with torch.no_grad():
        ref, fast = paths(official, lambda m: m(butterfly_lr, coord, cell))
    assert max_diff(ref, fast) <= TOL
    chunked = render.predict(official, butterfly_lr, coord, cell, chunk=613)
    assert max_diff(ref, chunked) <= TOL


@pytest.mark.parametrize('feat_unfold,local_ensemble,cell_decode', list(itertools.product([True, False], repeat=3)))
@pytest.mark.slow
def test_every_ablation_random_weights(feat_unfold, local_ensemble, cell_decode):
    torch.manual_seed(1)
    model = FastLIIF(EDSR(n_resblocks=2, n_feats=16), 'edsr-baseline', hidden_list=[32, 24],
                     feat_unfold=feat_unfold, local_ensemble=local_ensemble, cell_decode=cell_decode).eval()
    lr = torch.rand(2, 3, 9, 14)
    coord, cell = random_queries(2, 700, 9, 14, seed=2)
    with torch.no_grad():
        ref, fast = paths(model, lambda m: m(lr, coord, cell))
    assert ref.std() > 1e-3
    assert max_diff(ref, fast) <= TOL
    size = (23, 40)  # non-integer, anisotropic; 2 x 920 queries in chunks of 333
    ref, fast = paths(model, lambda m: m.render(lr, size, chunk=333))
    assert max_diff(ref, fast) <= TOL
    grid, grid_cell = coord_cell(*size)
    with torch.no_grad():
        direct = model(lr, grid.expand(2, -1, -1), grid_cell.expand(2, -1, -1))
    assert max_diff(direct.view(2, *size, 3).permute(0, 3, 1, 2), fast) <= TOL


def test_fast_gradients_match_reference():
    """Training may use the folded path: it must give the reference's gradients too."""
    torch.manual_seed(3)
    model = FastLIIF(EDSR(n_resblocks=1, n_feats=8), 'edsr-baseline', hidden_list=[16, 16])
    lr = torch.rand(2, 3, 7, 6)
    coord, cell = random_queries(2, 200, 7, 6, seed=4)

    def grads(m):
        m.zero_grad()
        m(lr, coord, cell).square().sum().backward()
        return torch.cat([p.grad.flatten() for p in m.parameters()])

    ref, fast = paths(model, grads)
    assert ref.abs().max() > 1e-3
    assert max_diff(ref, fast) <= 1e-4 * ref.abs().max().item()


@pytest.mark.parametrize('encoder', [EDSR(n_resblocks=2, n_feats=16), RDN(g0=8, n_blocks=2, n_layers=2, growth=8)],
                         ids=['edsr', 'rdn'])
@pytest.mark.slow
def test_tiled_equals_untiled(encoder):
    """Small encoders (radius 6 and 7) so that an image many tile margins wide stays cheap."""
    torch.manual_seed(5)
    model = FastLIIF(encoder, 'edsr-baseline' if isinstance(encoder, EDSR) else 'rdn', hidden_list=[32, 32]).eval()
    lr = torch.rand(2, 3, 40, 34)
    size = (93, 71)  # x2.33 by x2.09
    whole = model.render(lr, size, tile=0, chunk=2000)
    tiled = model.render(lr, size, tile=12, chunk=500)  # 4 x 3 tiles, the inner ones cropped on both sides
    assert max_diff(whole, tiled) <= TOL
    assert max_diff(on_path(model, False).render(lr, size, chunk=2000), tiled) <= TOL


@pytest.mark.slow
def test_too_small_tile_margin_is_detected(monkeypatch):
    """The tiled test can fail: with a margin far short of the receptive radius, tiles differ."""
    torch.manual_seed(6)
    model = FastLIIF(EDSR(n_resblocks=2, n_feats=16), 'edsr-baseline', hidden_list=[32, 32]).eval()
    lr = torch.rand(1, 3, 40, 40)
    whole = model.render(lr, (80, 80), tile=0)
    monkeypatch.setattr(LIIF, 'tile_margin', property(lambda self: 2))
    assert max_diff(whole, model.render(lr, (80, 80), tile=10)) > 1e-3


def test_official_weights_tiled(official, butterfly_lr):
    lr = torch.cat([butterfly_lr, butterfly_lr.flip(-1)], -1)[:, :, :, :60]  # 27 x 60
    whole = official.render(lr, (40, 90), tile=0)
    tiled = official.render(lr, (40, 90), tile=30)  # 1 x 2 tiles of the 37-pixel-margin encoder
    assert max_diff(whole, tiled) <= TOL


@pytest.mark.slow
def test_auto_chunk_and_tile(official, butterfly_lr):
    """chunk=None picks a chunk from the memory budget; large inputs tile, small ones do not."""
    size = (81, 99)
    ref = official.render(butterfly_lr, size, chunk=4096, tile=0)
    assert max_diff(ref, official.render(butterfly_lr, size)) <= TOL
    cpu = torch.device('cpu')
    assert render.auto_chunk(official, render.device_budget(cpu), cpu) > 4096
    assert render.auto_chunk(official, 8 << 20, cpu) < 4096
    assert max_diff(ref, official.render(butterfly_lr, size, memory_budget=8 << 20)) <= TOL
    assert render.auto_tile(official, (1, 3, 27, 33), render.device_budget(cpu)) == 0
    assert 64 <= render.auto_tile(official, (1, 3, 2048, 2048), render.device_budget(cpu)) < 1024


@pytest.mark.slow
def test_sizes_follow_the_device_and_leave_renders_unchanged(official, butterfly_lr, monkeypatch):
    """A GPU's budget is half its free memory (torch.cuda.mem_get_info, mocked: a CUDA device object
    needs no GPU), its decoder decodes a whole chunk per call and its chunk counts the MLP's
    activations; a CPU keeps 1 GiB and cache-sized blocks. Renders at every such size are the same."""
    gpu, cpu = torch.device('cuda', 0), torch.device('cpu')
    free = {}
    monkeypatch.setattr(torch.cuda, 'mem_get_info', lambda device=None: (free['bytes'], 141 << 30))
    budgets, chunks, tiles = [], [], []
    for mib in (4, 512, 64 << 10):
        free['bytes'] = mib << 20
        budgets.append(render.device_budget(gpu))
        chunks.append(render.auto_chunk(official, budgets[-1], gpu))
        tiles.append(render.auto_tile(official, (1, 3, 8192, 8192), budgets[-1]))
    assert budgets == [mib << 19 for mib in (4, 512, 64 << 10)]
    assert chunks[0] == 256 < chunks[1] < chunks[2] and 64 == tiles[0] < tiles[1] < tiles[2]
    assert render.device_budget(cpu) == render.CPU_MEMORY_BUDGET == 1 << 30
    assert render.decoder_rows(gpu) is None and render.decoder_rows(cpu) == render.CPU_BLOCK_ROWS
    # 4 members x 3 activations of 256 fp32 values: 12 KiB a query more where a chunk is one block
    assert official.bytes_per_query(gpu) - official.bytes_per_query(cpu) == 4 * 3 * 256 * 4

    size = (81, 99)  # 8019 queries
    ref = official.render(butterfly_lr, size)  # one chunk in blocks of 4096 rows (1024 queries)
    monkeypatch.setattr(fast_liif, 'decoder_rows', lambda device: None)  # the GPU's blocks, here
    for mib, tile in ((4, 20), (1024, None)):  # 256-query chunks on 2 x 2 LR tiles; 2 chunks, no tiles
        free['bytes'] = mib << 20
        chunk = render.auto_chunk(official, render.device_budget(gpu), gpu)
        assert max_diff(ref, official.render(butterfly_lr, size, chunk=chunk, tile=tile)) <= TOL, chunk


@pytest.mark.slow
def test_fp32_kernels_agree(official, butterfly_lr, monkeypatch):
    """oneDNN's fused fp32 linear (x86 CPUs) renders what addmm + relu_ renders, within float32 rounding."""
    if not precision.onednn_linear(torch.float32):
        pytest.skip("oneDNN's fused linear does not run here")
    fused = official.render(butterfly_lr, (54, 66))
    monkeypatch.setattr(precision, 'onednn_linear', lambda dtype: False)
    assert max_diff(fused, official.render(butterfly_lr, (54, 66))) <= TOL


@pytest.mark.parametrize('native', [True, False])
@pytest.mark.slow
def test_bf16_close_to_fp32(official, butterfly_lr, native, monkeypatch):
    """bf16 autocast on both decoder branches: oneDNN's fused op where the CPU has native bf16, public
    addmm elsewhere (forced here). bf16 keeps 8 significant bits (relative rounding 2^-9); through the
    encoder and a 4-layer decoder the [0, 1] output moves by a few 2^-8 on average, < 0.05 anywhere."""
    if native and not precision.native_cpu_bf16():
        pytest.skip("this CPU (or ONEDNN_MAX_CPU_ISA) has no native bf16")
    monkeypatch.setattr(precision, 'native_cpu_bf16', lambda: native)
    fp32 = official.render(butterfly_lr, (54, 66))
    bf16 = official.render(butterfly_lr, (54, 66), amp='bf16')
    assert bf16.dtype == torch.float32
    assert max_diff(fp32, bf16) < 0.05 and (fp32 - bf16).abs().mean() < 0.005


def test_bad_amp_and_sizes():
    model = liif_edsr().eval()
    lr = torch.rand(1, 3, 8, 8)
    with pytest.raises(ValueError, match='amp'):
        model.render(lr, (16, 16), amp='int8')
    with pytest.raises(ValueError, match='CUDA'):
        model.render(lr, (16, 16), amp='fp16')
    with pytest.raises(ValueError, match='positive'):
        model.render(lr, (0, 16))
    with pytest.raises(ValueError, match=r'\(B, 3, h, w\)'):
        model.render(lr[0], (16, 16))


def record_compiled_blocks(model, calls: list, out_of_memory_at: int = 0) -> None:
    """Give `model` a stand-in for the compiled decoder block: the eager block, each call's query count
    appended to `calls`; call number `out_of_memory_at` runs out of memory instead."""
    def recorded(table, index, inputs, weight, params):
        calls.append(len(index))
        if len(calls) == out_of_memory_at:
            raise torch.OutOfMemoryError('test: out of memory')
        return fast_liif.decode_block(table, index, inputs, weight, params)
    model.compiled_block = recorded


def test_compiled_blocks_follow_the_chunk(monkeypatch):
    """A compiled decoder (here a stand-in that records its calls) runs each chunk as one block padded to
    a multiple of COMPILED_ROUNDING rows (less than that much padding), halves with the chunk after an
    out-of-memory error, and gives the eager decoder's values."""
    model = tiny_liif().eval()
    lr = torch.rand(1, 3, 20, 23)
    eager = model.render(lr, (61, 70), chunk=1500)
    calls = []
    record_compiled_blocks(model, calls, out_of_memory_at=2)  # the second call fails: the chunk is halved
    with pytest.warns(UserWarning, match='out of memory'):
        compiled = model.render(lr, (61, 70), chunk=1500)
    rows = [4 * n for n in calls]  # 4 ensemble members a query
    assert all(r % fast_liif.COMPILED_ROUNDING == 0 for r in rows)
    assert max(rows) == fast_liif.compiled_rows(4 * 1470)  # 21 rows of 70 queries: 5880 rows -> 8192
    assert min(rows) == fast_liif.compiled_rows(4 * 700)  # after the error: 750 -> 10 rows of 70
    assert torch.equal(compiled, eager)


def test_a_chunk_over_the_compiled_limit_takes_several_full_blocks(monkeypatch):
    """A chunk of more rows than COMPILED_MAX_ROWS (2^20 on a GPU; lowered here to 2^13 so that a small
    render needs it) runs in blocks of COMPILED_MAX_ROWS rows, the last padded to a multiple of
    COMPILED_ROUNDING, and gives the eager decoder's values."""
    monkeypatch.setattr(fast_liif, 'COMPILED_MAX_ROWS', 1 << 13)
    model = tiny_liif().eval()
    lr = torch.rand(1, 3, 20, 23)
    eager = model.render(lr, (61, 70), chunk=30000)
    calls = []
    record_compiled_blocks(model, calls)
    compiled = model.render(lr, (61, 70), chunk=30000)
    # 61 x 70 queries x 4 members = 17080 rows in one chunk: 8192 + 8192 + 696 (padded to 4096)
    assert [4 * n for n in calls] == [8192, 8192, 4096]
    assert torch.equal(compiled, eager)
