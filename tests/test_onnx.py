"""The exported ONNX file under ONNX Runtime against the PyTorch render: real images, one file for
many sizes and windows, batches, every model, the official Set5 x4 score, and refused inputs."""
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest
import torch

import config
import inference
import onnx_model
from checkpoint import model_from_checkpoint
from dataset import BenchmarkDataset
from helpers import small, without_reach
from image_quality_assessment import psnr
from onnx_model import CHECK_TOL, OnnxModel, export, self_check, split_window, window_queries
from render import GRAPH_BLOCKS, MAX_SIDE, lr_region, ratio, window_lookups
from scripts.export_onnx import export_checked

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope='module')
def exported(official_weights, tmp_path_factory) -> Path:
    """The official EDSR-baseline-LIIF as one file, written (and self-checked) by the export script."""
    path = tmp_path_factory.mktemp('onnx') / 'liif.onnx'
    assert export_checked(official_weights, path) <= CHECK_TOL
    return path


def real_crops(benchmark_root: Path, rows: int, cols: int) -> np.ndarray:
    """A batch of two RGB crops in [0, 1]: Set5 baby and Set14 baboon."""
    crops = []
    for name in ('Set5/HR/baby.png', 'Set14/HR/baboon.png'):
        bgr = cv2.imread(str(benchmark_root / name))[100:100 + rows, 80:80 + cols, ::-1]
        crops.append(np.ascontiguousarray(bgr.transpose(2, 0, 1)) / 255)
    return np.stack(crops).astype(np.float32)


@pytest.mark.slow
def test_one_file_renders_any_size_and_window_as_pytorch(exported, official_weights, benchmark_root):
    """Several (LR size, output size, window) triples through one session: the shapes are dynamic."""
    model = model_from_checkpoint(official_weights).eval()
    session = OnnxModel(exported)
    assert session.options == model.options
    assert exported.stat().st_size < 8 << 20  # the 1.57 M fp32 parameters, one file
    cases = [((27, 21), (70, 61), None),  # x2.6 by x2.9, the whole output
             ((27, 21), (70, 61), (69, 0, 1, 61)),  # the last row
             ((32, 40), (96, 160), (10, 150, 86, 10)),  # x3 by x4: a strip at the right border
             ((32, 40), (13, 11), (0, 0, 13, 11)),  # a down-scale
             ((19, 30), (57, 45), (20, 20, 1, 1))]  # one pixel
    for (rows, cols), size, window in cases:
        lr = real_crops(benchmark_root, rows, cols)
        expected = model.render(torch.from_numpy(lr), size, window=window).numpy()
        for queries in (onnx_model.WINDOW_QUERIES, 500):  # one graph run, and many smaller windows
            got = session.render(lr, size, window, queries=queries)
            assert got.shape == expected.shape and expected.std() > 0.05
            assert np.abs(got - expected).max() <= CHECK_TOL, (size, window, queries)


@pytest.mark.parametrize('kind', ['liif-reference', 'metasr', 'upsample-2', 'upsample-3'])
@pytest.mark.slow
def test_every_model_exports(kind, tmp_path):
    model = small(kind)
    export(model, tmp_path / 'm.onnx')
    assert OnnxModel(tmp_path / 'm.onnx').options == model.options
    assert self_check(tmp_path / 'm.onnx', model) <= CHECK_TOL


@pytest.mark.slow
def test_set5_x4_through_onnx_runtime_gives_the_official_score(exported, benchmark_root):
    session = OnnxModel(exported)
    dataset = BenchmarkDataset(benchmark_root / 'Set5', 4)
    scores = []
    for i in range(len(dataset)):
        item = dataset[i]
        sr = session.render(item['lr'][None].numpy(), tuple(item['hr'].shape[-2:]))
        scores.append(float(psnr(torch.from_numpy(sr).clamp_(0, 1), item['hr'][None], 4)))
    assert round(sum(scores) / len(scores), 4) == 32.2394  # the official code's score with these weights


def test_chunk_bounds_a_graph_runs_blocks():
    """`chunk` is queries per decoder call for an .onnx model too: a run of chunk x GRAPH_BLOCKS pixels, so
    config.py's default (30000) and 0 give full 512 x 512 runs, and a small chunk small ones."""
    assert window_queries(config.chunk) == window_queries(0) == onnx_model.WINDOW_QUERIES == 512 * 512
    assert window_queries(3) == 3 * GRAPH_BLOCKS and -(-window_queries(1000) // GRAPH_BLOCKS) <= 1000


def test_split_window_covers_the_window_once():
    for height, width, queries in [(70, 61, 500), (1, 300, 64), (300, 1, 64), (5, 5, 1), (9, 9, 1000)]:
        cover = np.zeros((height, width), int)
        for top, left, h, w in split_window(height, width, queries):
            assert 0 < h * w <= max(queries, 1)
            cover[top:top + h, left:left + w] += 1
        assert (cover == 1).all()


@pytest.mark.parametrize('kind', ['liif-reference', 'lte', 'metasr', 'upsample-3'])
def test_lr_crop_holds_what_the_window_reads(kind):
    """lr_crop with the file's reach holds the LR rectangle render.py encodes for a window (its own rule:
    the look-ups' indices, lr_region with the model's margin), over 400 random LR sizes, output sizes
    (down to x0.3, up to x40) and windows; and it is that rectangle plus a few pixels a side (and half an
    output pixel's span, which a down-scale's first centre is in from the window's edge)."""
    model, rng = small(kind), np.random.default_rng(17)
    k, margin, reach = model.latent_scale, model.tile_margin, onnx_model.reach(model)
    for _ in range(400):
        lr_size = tuple(int(n) for n in rng.integers(1, 300, 2))
        size = tuple(max(1, round(n * rng.choice([0.3, 1, 2.5, 4, 7.3, 40]) * rng.uniform(0.8, 1.25))) for n in lr_size)
        top, left = (int(rng.integers(0, n)) for n in size)
        window = (top, left, int(rng.integers(1, size[0] - top + 1)), int(rng.integers(1, size[1] - left + 1)))
        rows, cols = window_lookups(model, size, window, lr_size)
        (y0, y1), (x0, x1) = (lr_region(look.index, k, margin, n) for look, n in ((rows, lr_size[0]), (cols, lr_size[1])))
        crop = onnx_model.lr_crop(size, window, lr_size, reach)
        assert crop[0] <= y0 and crop[1] <= x0 and y1 <= crop[2] and x1 <= crop[3], (lr_size, size, window, crop)
        wide = [3 + n / out for n, out in zip(lr_size, size)]  # and an output pixel's half in LR pixels
        assert y0 - crop[0] <= wide[0] and crop[2] - y1 <= wide[0] and x0 - crop[1] <= wide[1] and crop[3] - x1 <= wide[1]


@pytest.mark.parametrize('kind', ['liif-reference', 'upsample-3'])
def test_a_graph_run_fed_a_crop_equals_pytorch(kind, benchmark_root, tmp_path):
    """Windows inside a 60 x 50 image through OnnxModel.run, which feeds the graph only the crop it reads
    (smaller than the image here: a small model's margin): PyTorch's pixels of the whole image's render."""
    model = small(kind)
    export(model, tmp_path / 'm.onnx')
    session, fed = OnnxModel(tmp_path / 'm.onnx'), []
    lr, size = real_crops(benchmark_root, 60, 50), (150, 131)
    feed = session.session.run
    session.session.run = lambda names, inputs: fed.append(inputs['lr'].shape) or feed(names, inputs)
    for window in [(60, 50, 30, 31), (0, 0, 20, 131), (149, 100, 1, 31), (10, 120, 140, 11)]:
        expected = model.render(torch.from_numpy(lr), size, window=window).numpy()
        assert np.abs(session.run(lr, size, window) - expected).max() <= CHECK_TOL, window
        assert fed[-1][2] * fed[-1][3] < 0.6 * 60 * 50


PEAK_GROWTH = """
import resource, sys
import numpy as np
from onnx_model import OnnxModel
session, lr = OnnxModel(sys.argv[1]), np.random.default_rng(0).random((1, 3, 160, 160), np.float32)
session.run(lr, (640, 640), (0, 0, 16, 16))  # the session's own allocations
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
session.run(lr, (640, 640), (64, 64, 512, 512))
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before)
"""


@pytest.mark.slow
def test_a_graph_run_decodes_its_window_in_blocks(exported):
    """A run of a 512 x 512 window (x4) grows the process by less than one 256-wide activation of the whole
    window would take (262144 pixels x 4 members x 256 channels x 4 bytes = 1 GiB): its decoder runs in
    render.GRAPH_BLOCKS blocks, one after another. Measured: ~0.12 GB; the same graph in one block ~2.2 GB."""
    out = subprocess.run([sys.executable, '-c', PEAK_GROWTH, str(exported)], cwd=ROOT, capture_output=True,
                         text=True, check=True)
    assert int(out.stdout) * 1024 < 512 * 512 * 4 * 256 * 4


def test_a_batch_counts_in_the_queries_of_a_graph_run(exported, benchmark_root):
    """`queries` bounds the output pixels of one graph run over the whole batch (what memory follows): a
    batch of 2 at 500 queries runs windows of at most 250 pixels, and the pieces make the whole render."""
    session, calls = OnnxModel(exported), []
    lr, size = real_crops(benchmark_root, 12, 10), (30, 27)
    whole = session.render(lr, size)

    def run(lr, size, window):
        calls.append(lr.shape[0] * window[2] * window[3])
        return OnnxModel.run(session, lr, size, window)
    session.run = run
    pieces = session.render(lr, size, queries=500)
    assert len(calls) > 1 and max(calls) <= 500
    assert np.abs(pieces - whole).max() <= CHECK_TOL  # the same pixels; ONNX Runtime's sums in another order


@pytest.mark.slow
def test_inference_runs_the_onnx_file(exported, official_weights, benchmark_root, tmp_path, monkeypatch):
    """inference.py through the .onnx file equals it through the checkpoint; --chunk=2 (queries per decoder
    call) makes graph runs of at most 2 x GRAPH_BLOCKS = 512 output pixels, so the window takes several."""
    cv2.imwrite(str(tmp_path / 'lr.png'), cv2.imread(str(benchmark_root / 'Set5' / 'HR' / 'head.png'))[60:95, 70:99])
    common = [f'--input={tmp_path / "lr.png"}', '--scale=2.3', '--window=[3,0,70,60]', '--chunk=2']
    runs, run = [], OnnxModel.run
    monkeypatch.setattr(OnnxModel, 'run', lambda self, lr, size, window: runs.append(window) or run(self, lr, size, window))
    [onnx_out] = inference.main([f'--weights={exported}', f'--output={tmp_path / "onnx.png"}', *common])
    assert len(runs) > 1 and max(h * w for *_, h, w in runs) <= 2 * GRAPH_BLOCKS
    [torch_out] = inference.main([f'--weights={official_weights}', f'--output={tmp_path / "torch.png"}', *common])
    a, b = (cv2.imread(str(p)).astype(int) for p in (onnx_out, torch_out))
    assert a.shape == (70, 60, 3)
    # 1e-6 apart before rounding to 8 bits: a value on a rounding boundary may land one level apart
    assert np.abs(a - b).max() <= 1 and (a != b).mean() < 1e-3


def foreign_onnx(path: Path) -> None:
    """A valid ONNX file of another model: y = x + 1."""
    x = onnx.helper.make_tensor_value_info('x', onnx.TensorProto.FLOAT, [1])
    y = onnx.helper.make_tensor_value_info('y', onnx.TensorProto.FLOAT, [1])
    one = onnx.helper.make_tensor('one', onnx.TensorProto.FLOAT, [1], [1.0])
    graph = onnx.helper.make_graph([onnx.helper.make_node('Add', ['x', 'one'], ['y'])], 'add', [x], [y], [one])
    onnx.save(onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid('', 17)]), str(path))


@pytest.mark.parametrize('setup, args, message', [
    ('bytes', [], 'not a readable ONNX file'),
    ('foreign', [], 'ONNX file of another model'),
    ('older', [], 'this version of scripts/export_onnx.py'),
    ('liif', ['--window=[0,0,100,5]'], 'window must be'),
    ('liif', ['--model=metasr'], "--model asks for model='metasr' but .* holds model='liif'"),
    ('liif', ['--hidden_list=[256,256]'], 'hidden_list'),
    ('liif', ['--amp=bf16'], 'runs in fp32'),
])
def test_bad_onnx_inputs_are_refused(exported, benchmark_root, tmp_path, setup, args, message):
    cv2.imwrite(str(tmp_path / 'lr.png'), cv2.imread(str(benchmark_root / 'Set5' / 'HR' / 'bird.png'))[:20, :20])
    weights = {'bytes': tmp_path / 'random.onnx', 'foreign': tmp_path / 'add.onnx', 'liif': exported,
               'older': tmp_path / 'older.onnx'}[setup]
    if setup == 'older':
        without_reach(exported, weights)
    if setup == 'bytes':
        weights.write_bytes(np.random.default_rng(0).bytes(5000))
    if setup == 'foreign':
        foreign_onnx(weights)
    before = sorted(tmp_path.rglob('*'))
    with pytest.raises(ValueError, match=message):
        inference.main([f'--input={tmp_path / "lr.png"}', f'--weights={weights}', '--scale=2',
                        f'--output={tmp_path / "out.png"}', *args])
    assert sorted(tmp_path.rglob('*')) == before


def test_export_that_disagrees_is_removed(official_weights, tmp_path, monkeypatch):
    import scripts.export_onnx as script
    monkeypatch.setattr(script, 'self_check', lambda path, model: 2e-5)  # as if ONNX Runtime were off
    with pytest.raises(ValueError, match='differs from PyTorch by 2.00e-05'):
        export_checked(official_weights, tmp_path / 'bad.onnx')
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_export_script_errors_are_one_line(tmp_path):
    (tmp_path / 'text.pth').write_text('not a checkpoint')
    for args in ([f'--weights={tmp_path / "text.pth"}', f'--output={tmp_path / "m.onnx"}'],
                 [f'--weights={tmp_path / "text.pth"}', f'--output={tmp_path / "m.txt"}']):
        done = subprocess.run([sys.executable, 'scripts/export_onnx.py', *args], cwd=ROOT, capture_output=True,
                              text=True, timeout=120)
        assert done.returncode == 2 and done.stderr.startswith('error: ') and done.stderr.count('\n') == 1
    assert list(tmp_path.iterdir()) == [tmp_path / 'text.pth']


@pytest.mark.parametrize('v, plus', [(1, -1.0), (2, 0.0), (1, 0.0), (-1, 1e-6), (1, 1e-6)])
def test_graph_coordinate_scalars_equal_float64_ones_for_every_side(v, plus):
    """The graph's float32-only v / n + plus (render.ratio with a tensor n, as ONNX Runtime in browsers
    has no float64) is the float32 rounding of the float64 value the PyTorch path computes, for every
    axis length n up to MAX_SIDE: the pixel centres, cells and ensemble shifts are the same numbers."""
    step = 1 << 22
    for start in range(1, MAX_SIDE + 1, step):
        n = torch.arange(start, min(start + step, MAX_SIDE + 1))
        assert torch.equal(ratio(v, n, plus), (v / n.double() + plus).float()), (v, plus, start)


def test_exported_graph_has_no_float64(tmp_path):
    export(small('liif-reference'), tmp_path / 'm.onnx')
    graph = onnx.shape_inference.infer_shapes(onnx.load(str(tmp_path / 'm.onnx'))).graph
    types = {v.name: v.type.tensor_type.elem_type for v in [*graph.value_info, *graph.input, *graph.output]}
    casts = [a.i for node in graph.node for a in node.attribute if node.op_type == 'Cast' and a.name == 'to']
    assert onnx.TensorProto.DOUBLE not in [*types.values(), *casts]
