"""Out of memory while rendering, on the CPU: the model's decoder (or encoder) raises CUDA's out-of-memory
error, MemoryError or the CPU allocator's error above a chosen number of queries (or LR pixels). The render
retries with half the chunk, then half the LR tile, warns once, and gives the image of the untouched render;
below the smallest chunk and tile it stops with one clear error."""
import pytest
import torch

import inference
import render
from cli import run_main
from fast_liif import FastLIIF
from helpers import small
from imgproc import read_image, write_image
from model import build_model

pytestmark = pytest.mark.usefixtures('one_thread')

# Chunks and tiles change only how many pixels one call computes, not the operations that compute each
# pixel: here the values are identical, and 1e-6 (16 float32 ulps at 1) leaves room for a BLAS kernel that
# sums in another order for another matrix height.
TOL = 1e-6
ERRORS = {
    'cuda': lambda: torch.OutOfMemoryError('CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 139.8 GiB total)'),
    'python': MemoryError,
    'cpu': lambda: RuntimeError("[enforce fail at alloc_cpu.cpp:127] . DefaultCPUAllocator: can't allocate memory: "
                                "you tried to allocate 3221225472 bytes. Error code 12 (Cannot allocate memory)"),
}
SIZE = (97, 80)  # a 40x33 input at x2.43 by x2.42


def queries(latent: torch.Tensor, rows, cols) -> int:
    """The queries of one decoder call: the batch times the broadcast (rows, cols) grid of the look-ups."""
    return latent.shape[0] * torch.broadcast_shapes(rows.index.shape[1:], cols.index.shape[1:]).numel()


def tight(model, error, decode_above: float = float('inf'), encode_above: float = float('inf')) -> dict:
    """Make model.decode fail above `decode_above` queries and model.encode above `encode_above` LR pixels
    with `error`; returns the sizes of the calls that went through."""
    decode, encode, done = model.decode, model.encode, {'decode': [], 'encode': []}

    def tight_decode(latent, rows, cols):
        if queries(latent, rows, cols) > decode_above:
            raise ERRORS[error]()
        done['decode'].append(queries(latent, rows, cols))
        return decode(latent, rows, cols)

    def tight_encode(lr):
        if lr.shape[-2] * lr.shape[-1] > encode_above:
            raise ERRORS[error]()
        done['encode'].append(lr.shape[-2] * lr.shape[-1])
        return encode(lr)
    model.decode, model.encode = tight_decode, tight_encode
    return done


@pytest.mark.parametrize('kind', ['liif-fast', 'liif-reference', 'metasr', 'lte'])
@pytest.mark.parametrize('error', sorted(ERRORS))
def test_the_decoder_running_out_halves_the_chunk_and_gives_the_same_image(kind, error):
    model, lr = small(kind), torch.rand(2, 3, 40, 33)
    expected = model.render(lr, SIZE, chunk=30000, tile=0)
    done = tight(model, error, decode_above=1000)
    with pytest.warns(UserWarning, match=r'out of memory while rendering a 97x80 image .*the image is the same') as caught:
        image = model.render(lr, SIZE, chunk=30000, tile=0)
    assert len(caught) == 1
    assert (image - expected).abs().max() <= TOL
    assert 500 < max(done['decode']) <= 1000  # 30000 halved five times: 937 queries, not the floor


@pytest.mark.parametrize('kind', ['liif-fast', 'upsample-3'])
def test_the_encoder_running_out_halves_the_tile_and_gives_the_same_image(kind):
    model, lr = small(kind), torch.rand(1, 3, 40, 33)
    expected = model.render(lr, SIZE, tile=0)
    done = tight(model, 'cuda', encode_above=900)  # 40x33 = 1320 LR pixels do not fit
    with pytest.warns(UserWarning, match='out of memory') as caught:
        image = model.render(lr, SIZE, tile=0)
    assert len(caught) == 1 and len(done['encode']) > 1 and max(done['encode']) <= 900
    assert (image - expected).abs().max() <= TOL


def test_a_window_and_a_batch_also_go_on_in_smaller_pieces():
    model, lr = small('liif-fast'), torch.rand(3, 3, 31, 23)
    window = (10, 7, 50, 41)
    expected = model.render(lr, (71, 50), window=window, tile=0)
    done = tight(model, 'python', decode_above=300, encode_above=600)
    with pytest.warns(UserWarning, match='out of memory'):
        image = model.render(lr, (71, 50), window=window, tile=0, chunk=4096)
    assert (image - expected).abs().max() <= TOL
    assert max(done['decode']) <= 300 and max(done['encode']) <= 600


def test_below_the_smallest_chunk_and_tile_it_stops_with_a_clear_error():
    model = small('liif-fast')
    done = tight(model, 'cuda', decode_above=0)
    with pytest.warns(UserWarning, match='out of memory'), \
            pytest.raises(render.RenderOutOfMemory, match=r'out of memory rendering a 97x80 image even with 256 '
                                                          r'queries per chunk and LR tiles of 7 pixels') as info:
        model.render(torch.rand(1, 3, 40, 33), SIZE, chunk=30000, tile=0)
    assert isinstance(info.value, MemoryError) and done['decode'] == []
    assert model.tile_margin == 7  # the smallest tile: the margin


def test_other_errors_are_not_retried():
    model = small('liif-fast')

    def broken(latent, rows, cols):
        raise RuntimeError('CUDA error: an illegal memory access was encountered')
    model.decode = broken
    with pytest.raises(RuntimeError, match='illegal memory access'):
        model.render(torch.rand(1, 3, 8, 8), (16, 16))


def test_cached_cuda_memory_is_freed_before_a_retry(monkeypatch):
    freed = []
    monkeypatch.setattr(torch.cuda, 'empty_cache', lambda: freed.append(True))
    pieces = render.Pieces(small('liif-fast'), 4096, 64, SIZE, torch.device('cuda'))
    pieces.before_attempt()
    assert freed == []
    with pytest.warns(UserWarning):
        assert pieces.halve_chunk(torch.OutOfMemoryError('CUDA out of memory'))
    pieces.before_attempt()
    assert freed == [True] and pieces.chunk == 2048


def test_inference_warns_once_and_writes_the_same_image(benchmark_root, tmp_path, monkeypatch, capsys):
    """End to end: one `warning:` line, exit status 0 and the same PNG; one `error:` line, exit status 2
    and no PNG when even the smallest pieces do not fit."""
    crop = tmp_path / 'crop.png'
    write_image(crop, read_image(benchmark_root / 'Set5' / 'HR' / 'bird.png')[:30, :26])
    torch.manual_seed(0)
    model = build_model(hidden_list=[16])
    torch.save({'model': model.state_dict(), 'options': model.options}, tmp_path / 'small.pth')
    argv = [f'--input={crop}', f'--weights={tmp_path / "small.pth"}', '--scale=3', '--device=cpu']
    assert run_main(inference.main, [*argv, f'--output={tmp_path / "plain.png"}']) == 0
    decode, limit = FastLIIF.decode, [500]

    def tight_decode(self, latent, rows, cols):
        if queries(latent, rows, cols) > limit[0]:
            raise MemoryError
        return decode(self, latent, rows, cols)
    monkeypatch.setattr(FastLIIF, 'decode', tight_decode)
    capsys.readouterr()
    assert run_main(inference.main, [*argv, f'--output={tmp_path / "tight.png"}']) == 0
    assert [line for line in capsys.readouterr().err.splitlines() if line.startswith('warning:')] == [
        "warning: out of memory while rendering a 90x78 image (MemoryError): going on in smaller pieces (half the "
        "chunk, then half the LR tile, as needed); the image is the same"]
    assert (tmp_path / 'tight.png').read_bytes() == (tmp_path / 'plain.png').read_bytes()
    limit[0] = 0
    assert run_main(inference.main, [*argv, f'--output={tmp_path / "none.png"}']) == 2
    [error] = [line for line in capsys.readouterr().err.splitlines() if line.startswith('error:')]
    assert error.startswith('error: out of memory rendering a 90x78 image even with 256 queries per chunk')
    assert not (tmp_path / 'none.png').exists()
