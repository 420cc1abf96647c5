"""LIIF model tests against an independent reference written here from the paper's equations and the
official query rules, plus checkpoint loading, gradients and parameter counts.

The reference uses only the model's encoder output and the decoder's Linear weights; the look-ups,
unfolding, relative coordinates and ensemble weights are recomputed with explicit index arithmetic
in float64.
"""
import copy
import itertools
import math
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import torch.nn as nn

import render
from checkpoint import load_weights, model_from_checkpoint, read_checkpoint
from helpers import liif_edsr, liif_rdn, on_path
from model import LIIF

TOL = 1e-5
SWITCHES = list(itertools.product([True, False], repeat=3))  # (feat_unfold, local_ensemble, cell_decode)


pytestmark = pytest.mark.usefixtures('one_thread')


# ---------------------------------------------------------------- independent reference

def grid_coord(height: int, width: int) -> torch.Tensor:
    """(H*W, 2) pixel centres -1 + (2i + 1) / n, row axis first."""
    rows = -1 + (2 * torch.arange(height, dtype=torch.float64) + 1) / height
    cols = -1 + (2 * torch.arange(width, dtype=torch.float64) + 1) / width
    return torch.stack([rows[:, None].expand(height, width), cols[None, :].expand(height, width)], -1).reshape(-1, 2)


def grid_queries(batch: int, height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    coord = grid_coord(height, width).float()
    cell = torch.tensor([2 / height, 2 / width]).expand_as(coord)
    return coord.expand(batch, -1, -1).clone(), cell.expand(batch, -1, -1).clone()


def random_queries(batch: int, n: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    coord = torch.rand(batch, n, 2, generator=gen) * 2 - 1
    cell = 2 / torch.randint(5, 60, (batch, n, 2), generator=gen).float()
    return coord, cell


def unfold3x3(feat: torch.Tensor) -> torch.Tensor:
    """Zero-padded 3x3 neighbourhoods, channel index c * 9 + ky * 3 + kx."""
    b, c, h, w = feat.shape
    padded = feat.new_zeros(b, c, h + 2, w + 2)
    padded[:, :, 1:h + 1, 1:w + 1] = feat
    taps = [padded[:, :, ky:ky + h, kx:kx + w] for ky in range(3) for kx in range(3)]
    return torch.stack(taps, 2).reshape(b, c * 9, h, w)


def decoder_mlp(model, x: torch.Tensor) -> torch.Tensor:
    linears = [m for m in model.imnet.modules() if isinstance(m, nn.Linear)]
    for i, layer in enumerate(linears):
        x = x @ layer.weight.double().T + layer.bias.double()
        if i < len(linears) - 1:
            x = x.clamp_min(0)
    return x


class Reference:
    """The reference output `rgb` (B, Q, 3) in [0, 1] units, the member predictions `members`
    (M, B, Q, 3) in the same units, and `degenerate` (B, Q): queries whose ensemble weights are
    decided by rounding. That happens where every member's sub-rectangle has (near) zero area, e.g.
    a query on the centre of the last feature row or column, where both shifts pick the same pixel
    (the positive one is clamped back); the official algorithm then blends the members by float
    noise, so there the model can only be held to a convex combination of the member predictions."""

    def __init__(self, rgb, members, degenerate):
        self.rgb, self.members, self.degenerate = rgb, members, degenerate


def reference_liif(model, lr: torch.Tensor, coord: torch.Tensor, cell: torch.Tensor,
                   feat_unfold: bool, local_ensemble: bool, cell_decode: bool) -> Reference:
    with torch.no_grad():
        feat = model.encoder((lr - 0.5) / 0.5).double()
        b, c, h, w = feat.shape
        if feat_unfold:
            feat = unfold3x3(feat)
        table = feat.permute(0, 2, 3, 1)  # (B, h, w, C')
        coord, cell = coord.double(), cell.double()
        batch_index = torch.arange(b)[:, None]
        shifts = [(-1, -1), (-1, 1), (1, -1), (1, 1)] if local_ensemble else [(0, 0)]
        eps = 1e-6 if local_ensemble else 0.0
        preds, areas = [], []
        for vy, vx in shifts:
            y = (coord[..., 0] + vy / h + eps).clamp(-1 + 1e-6, 1 - 1e-6)
            x = (coord[..., 1] + vx / w + eps).clamp(-1 + 1e-6, 1 - 1e-6)
            iy = torch.floor((y + 1) / 2 * h).long().clamp(0, h - 1)
            ix = torch.floor((x + 1) / 2 * w).long().clamp(0, w - 1)
            centre_y, centre_x = -1 + (2 * iy + 1) / h, -1 + (2 * ix + 1) / w
            rel = torch.stack([(coord[..., 0] - centre_y) * h, (coord[..., 1] - centre_x) * w], -1)
            inputs = [table[batch_index, iy, ix], rel]
            if cell_decode:
                inputs.append(torch.stack([cell[..., 0] * h, cell[..., 1] * w], -1))
            preds.append(decoder_mlp(model, torch.cat(inputs, -1)))
            areas.append((rel[..., 0] * rel[..., 1]).abs() + 1e-9)
        if local_ensemble:
            total = sum(areas)
            weights = [areas[shifts.index((-vy, -vx))] / total for vy, vx in shifts]
            degenerate = total < 1e-3  # interior queries have total 4 (the 2x2 square the members tile)
        else:
            weights = [torch.ones_like(areas[0])]
            degenerate = torch.zeros_like(areas[0], dtype=torch.bool)
        rgb = sum(p * wt[..., None] for p, wt in zip(preds, weights))
        return Reference(rgb * 0.5 + 0.5, torch.stack(preds) * 0.5 + 0.5, degenerate)


def compare(got: torch.Tensor, ref: Reference) -> float:
    """Max abs difference on well-conditioned queries; degenerate ones must be convex combinations."""
    got = got.double()
    assert got.shape == ref.rgb.shape
    low, high = ref.members.amin(0), ref.members.amax(0)
    outside = torch.maximum(low - got, got - high).amax(-1)
    assert outside[ref.degenerate].le(TOL).all(), "a degenerate query is not a blend of the member predictions"
    return (got - ref.rgb).abs().amax(-1)[~ref.degenerate].max().item()


def query_sets(lr_size: tuple[int, int], batch: int, gen: torch.Generator, n: int = 0):
    """Pixel-centre grids at an integer, a non-integer and an anisotropic scale, and random off-grid
    queries; n > 0 keeps n grid queries drawn at random (the check is per query) to save time."""
    h, w = lr_size
    grids = {'x3': (3 * h, 3 * w), 'x2.3': (round(2.3 * h), round(2.3 * w)), 'x2-by-x4': (2 * h, 4 * w)}
    for name, size in grids.items():
        coord, cell = grid_queries(batch, *size)
        if n:
            keep = torch.randperm(coord.shape[1], generator=gen)[:n]
            coord, cell = coord[:, keep], cell[:, keep]
        yield name, (coord, cell)
    yield 'random', random_queries(batch, n or 500, gen)


def max_diff_both_paths(model, lr, coord, cell, switches) -> dict[str, float]:
    ref = reference_liif(model, lr, coord, cell, *switches)
    assert ref.degenerate.float().mean() < 0.1
    diffs = {}
    for fast in (True, False):
        with torch.no_grad():
            diffs['fast' if fast else 'reference'] = compare(on_path(model, fast)(lr, coord, cell), ref)
    return diffs


# ---------------------------------------------------------------- forward pass vs reference

@pytest.mark.parametrize('hidden_list', [[256, 256, 256, 256], [256, 256]], ids=['hidden4', 'hidden2'])
@pytest.mark.parametrize('switches', SWITCHES, ids=lambda s: 'unfold%d-ens%d-cell%d' % s)
@pytest.mark.slow
def test_forward_matches_reference_random_weights(switches, hidden_list):
    feat_unfold, local_ensemble, cell_decode = switches
    torch.manual_seed(sum(b << i for i, b in enumerate(switches)) + len(hidden_list))
    model = liif_edsr(hidden_list=hidden_list, feat_unfold=feat_unfold, local_ensemble=local_ensemble,
                      cell_decode=cell_decode).eval()
    linears = [m for m in model.imnet.modules() if isinstance(m, nn.Linear)]
    assert [lin.out_features for lin in linears] == hidden_list + [3]
    assert linears[0].in_features == 64 * (9 if feat_unfold else 1) + 2 + (2 if cell_decode else 0)
    gen = torch.Generator().manual_seed(1)
    for lr_size in [(7, 11), (13, 9)]:
        lr = torch.rand(2, 3, *lr_size, generator=gen)
        for name, (coord, cell) in query_sets(lr_size, 2, gen, n=150):
            diffs = max_diff_both_paths(model, lr, coord, cell, switches)
            assert max(diffs.values()) <= TOL, f"{lr_size} {name}: {diffs}"


def read_rgb(path) -> np.ndarray:
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    assert img is not None, path
    return img[:, :, ::-1].astype(np.float32) / 255


def to_tensor(img: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1)[None]


@pytest.fixture(scope='module')
def official_model(official_weights):
    return load_weights(liif_edsr(), official_weights).eval()


@pytest.fixture(scope='module')
def set5_lr_crops(benchmark_root):
    """Batch of 2: 13x9 crops of two Set5 x4 LR images."""
    crops = [read_rgb(benchmark_root / 'Set5' / 'LR_bicubic' / 'X4' / f'{name}x4.png')[20:33, 30:39]
             for name in ('butterfly', 'bird')]
    return torch.cat([to_tensor(c) for c in crops])


@pytest.mark.slow
def test_forward_matches_reference_official_weights(official_model, set5_lr_crops):
    gen = torch.Generator().manual_seed(2)
    lr = set5_lr_crops
    for name, (coord, cell) in query_sets(lr.shape[-2:], 2, gen):
        diffs = max_diff_both_paths(official_model, lr, coord, cell, (True, True, True))
        assert max(diffs.values()) <= TOL, f"{name}: {diffs}"


@pytest.mark.parametrize('fast', [True, False])
def test_render_and_chunked_predict_match_reference(official_model, set5_lr_crops, fast):
    official_model = on_path(official_model, fast)
    lr = set5_lr_crops
    height, width = 30, 25  # non-integer, anisotropic scales of the 13x9 input
    coord, cell = grid_queries(2, height, width)
    ref = reference_liif(official_model, lr, coord, cell, True, True, True)
    image = official_model.render(lr, (height, width), chunk=97)
    assert image.shape == (2, 3, height, width)
    assert compare(image.permute(0, 2, 3, 1).reshape(2, height * width, 3), ref) <= TOL
    out = render.predict(official_model, lr, coord, cell, chunk=101)  # 750 queries: a partial last chunk
    assert compare(out, ref) <= TOL


@pytest.mark.parametrize('fast', [True, False])
def test_tiled_render_matches_reference(official_model, benchmark_root, fast):
    """A tall real crop rendered from LR tiles, on both paths."""
    official_model = on_path(official_model, fast)
    lr = to_tensor(read_rgb(benchmark_root / 'Set5' / 'LR_bicubic' / 'X2' / 'butterflyx2.png')[0:90, 40:47])
    height, width = 180, 16
    image = official_model.render(lr, (height, width), chunk=1000, tile=30)
    coord, cell = grid_queries(1, height, width)
    ref = reference_liif(official_model, lr, coord, cell, True, True, True)
    assert compare(image.permute(0, 2, 3, 1).reshape(1, height * width, 3), ref) <= TOL


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    return 10 * math.log10(1 / np.mean((a.astype(np.float64) - b) ** 2))


def test_official_x4_beats_bicubic_on_set5(official_model, benchmark_root):
    """A 4x render of a real Set5 crop beats bicubic by far (measured: 28.3 vs 21.6 dB RGB PSNR)."""
    lr = read_rgb(benchmark_root / 'Set5' / 'LR_bicubic' / 'X4' / 'butterflyx4.png')[16:40, 16:40]
    hr = read_rgb(benchmark_root / 'Set5' / 'HR' / 'butterfly.png')[64:160, 64:160]
    sr = official_model.render(to_tensor(lr), (96, 96))[0].permute(1, 2, 0).clamp(0, 1).numpy()
    bicubic = cv2.resize(lr, (96, 96), interpolation=cv2.INTER_CUBIC).clip(0, 1)
    inner = np.s_[4:-4, 4:-4]
    gain = psnr(sr[inner], hr[inner]) - psnr(bicubic[inner], hr[inner])
    assert gain > 4.0, f"LIIF x4 only {gain:.2f} dB over bicubic"


# ---------------------------------------------------------------- gradients, sizes

# fp32 gradient vs its float64 value, in norm per tensor. fp32 rounding (u = 2^-24 = 6e-8) over the
# ~1e3-term reductions here gives relative errors of a few sqrt(n) u ~ 1e-6. Beyond that, a decoder
# pre-activation within fp32 rounding of zero can land on the other side of its ReLU; that adds or
# drops one of the B x Q x 4 = 800 decoder rows' terms, up to ~1/800 of the tensor's norm.
GRAD_TOL = 2e-3
GRAD_TOL_64 = 1e-12  # the two paths in float64: rounding u = 1e-16 only


def loss_gradients(model, lr, coord, cell, target) -> dict[str, torch.Tensor]:
    model.zero_grad()
    (model(lr, coord, cell) - target).abs().mean().backward()
    return {name: p.grad.clone() for name, p in model.named_parameters()}


@pytest.mark.parametrize('fast', [True, False])
def test_gradients_reach_every_parameter_and_agree_between_paths(fast):
    """Each path's fp32 gradients equal the float64 gradients of the same function to fp32 rounding,
    tensor by tensor in norm (an element-wise test fails on near-zero entries, where fp32 noise is all
    there is); in float64 the two paths agree to float64 rounding."""
    torch.manual_seed(3)
    model = liif_edsr(fast=fast)
    gen = torch.Generator().manual_seed(4)
    lr = torch.rand(2, 3, 7, 11, generator=gen)
    coord, cell = random_queries(2, 100, gen)
    target = torch.rand(2, 100, 3, generator=gen)
    g32 = loss_gradients(model, lr, coord, cell, target)
    inputs64 = [t.double() for t in (lr, coord, cell, target)]
    g64 = loss_gradients(copy.deepcopy(model).double(), *inputs64)
    other = on_path(copy.deepcopy(model).double(), not fast)
    g64_other = loss_gradients(other, *inputs64)
    for name, exact in g64.items():
        assert exact.norm() > 0, f"no gradient reaches {name}"
        error = (g32[name].double() - exact).norm() / exact.norm()
        assert error <= GRAD_TOL, f"{name}: fp32 gradient off its float64 value by {error:.2e} of its norm"
        assert (g64_other[name] - exact).norm() <= GRAD_TOL_64 * exact.norm(), f"{name}: the paths differ"


def count_trainable(model) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def test_parameter_counts_match_official_models():
    assert count_trainable(liif_edsr()) == 1_567_299
    assert count_trainable(liif_rdn()) == 22_320_835


# ---------------------------------------------------------------- checkpoints

def test_official_checkpoint_loads_every_tensor(official_weights, official_model):
    raw = torch.load(official_weights, map_location='cpu', weights_only=True)
    assert raw['model']['args']['encoder_spec']['name'] == 'edsr-baseline'
    raw_sd = {k: v for k, v in raw['model']['sd'].items() if '_mean' not in k}  # EDSR's unused mean shifts
    own = official_model.state_dict()
    assert own.keys() == raw_sd.keys()
    for key, value in raw_sd.items():
        assert torch.equal(own[key], value), key
    built = model_from_checkpoint(official_weights, fast=False)
    assert built.options == dict(model='liif', encoder='edsr-baseline', hidden_list=[256] * 4, feat_unfold=True,
                                 local_ensemble=True, cell_decode=True)
    assert type(built) is LIIF  # the reference, not fast_liif.FastLIIF
    for key, value in raw_sd.items():
        assert torch.equal(built.state_dict()[key], value), key


def test_own_format_round_trip(tmp_path):
    torch.manual_seed(5)
    model = liif_edsr(hidden_list=[256, 256], local_ensemble=False)
    path = tmp_path / 'ours.pth'
    torch.save({'model': model.state_dict(), 'options': model.options, 'epoch': 3}, path)
    options, _ = read_checkpoint(path)
    assert options == model.options
    loaded = model_from_checkpoint(path)
    assert loaded.options == model.options
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    fresh = load_weights(liif_edsr(hidden_list=[256, 256], local_ensemble=False), path)
    assert all(torch.equal(fresh.state_dict()[k], v) for k, v in model.state_dict().items())


def official_variant(official_weights, tmp_path, name: str, edit) -> Path:
    ckpt = torch.load(official_weights, map_location='cpu', weights_only=True)
    edit(ckpt['model'])
    path = tmp_path / name
    torch.save(ckpt, path)
    return path


def set_arg(key, value):
    def edit(spec):
        spec['args'][key] = value
    return edit


def rename_encoder(spec):
    spec['args']['encoder_spec']['name'] = 'rdn'


def set_hidden(spec):
    spec['args']['imnet_spec']['args']['hidden_list'] = [256, 256]


def drop_imnet_spec(spec):
    del spec['args']['imnet_spec']


def own_format(tmp_path, name: str, model) -> Path:
    path = tmp_path / name
    torch.save({'model': model.state_dict(), 'options': model.options}, path)
    return path


def snapshot(model) -> dict:
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize('case', ['missing', 'random bytes', 'truncated', 'rdn in our format',
                                  'official labelled rdn', 'official cell_decode off',
                                  'official hidden 256x2', 'ours cell_decode off', 'ours hidden 256x2',
                                  'options that lie', 'official spec incomplete'])
def test_wrong_checkpoint_is_refused_with_a_clear_message(case, official_weights, tmp_path):
    """Each bad file fails once, naming the file and what differs, and leaves the model untouched."""
    torch.manual_seed(6)
    if case == 'missing':
        path, expect = tmp_path / 'nowhere.pth', ['does not exist']
    elif case == 'random bytes':
        path, expect = tmp_path / 'noise.pth', ['not a readable']
        path.write_bytes(np.random.default_rng(0).bytes(4096))
    elif case == 'truncated':
        path, expect = tmp_path / 'half.pth', ['not a readable']
        data = official_weights.read_bytes()
        path.write_bytes(data[:len(data) // 2])
    elif case == 'rdn in our format':
        path, expect = own_format(tmp_path, 'rdn.pth', liif_rdn()), ['encoder', "'rdn'"]
    elif case == 'official labelled rdn':
        path, expect = official_variant(official_weights, tmp_path, 'rdn_label.pth', rename_encoder), ['encoder', "'rdn'"]
    elif case == 'official cell_decode off':
        path, expect = official_variant(official_weights, tmp_path, 'c.pth', set_arg('cell_decode', False)), ['cell_decode']
    elif case == 'official hidden 256x2':
        path, expect = official_variant(official_weights, tmp_path, 'd.pth', set_hidden), ['hidden_list']
    elif case == 'ours cell_decode off':
        path, expect = own_format(tmp_path, 'c.pth', liif_edsr(cell_decode=False)), ['cell_decode']
    elif case == 'ours hidden 256x2':
        path, expect = own_format(tmp_path, 'd.pth', liif_edsr(hidden_list=[256, 256])), ['hidden_list']
    elif case == 'official spec incomplete':
        path = official_variant(official_weights, tmp_path, 'nospec.pth', drop_imnet_spec)
        expect = ['incomplete model spec', 'imnet_spec']
    else:  # options of the default model over the state dict of a 2-hidden-layer one
        path = tmp_path / 'lie.pth'
        torch.save({'model': liif_edsr(hidden_list=[256, 256]).state_dict(), 'options': liif_edsr().options}, path)
        expect = ['imnet.layers.6.weight']
    model = liif_edsr()
    before = snapshot(model)
    with pytest.raises((ValueError, FileNotFoundError)) as info:
        load_weights(model, path)
    message = str(info.value)
    assert str(path) in message and all(e in message for e in expect), message
    assert message.count(str(path)) == 1, message
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items()), "partial load"


def test_model_from_checkpoint_refuses_mislabelled_official_file(official_weights, tmp_path):
    """EDSR weights whose spec claims RDN: the RDN built from the spec does not fit the tensors."""
    path = official_variant(official_weights, tmp_path, 'rdn_label.pth', rename_encoder)
    with pytest.raises(ValueError, match='does not fit') as info:
        model_from_checkpoint(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize('n', [5, 6])
def test_nearest_index_reads_grid_samples_pixel_and_stays_on_the_axis(n):
    """nearest_index is the pixel grid_sample(mode='nearest', align_corners=False) reads, ties included
    (coordinates on a 1/120 grid hit pixel edges); at c = +-1 exactly, where grid_sample's zero padding
    starts, it is the edge pixel, never one past it."""
    c = torch.linspace(-1, 1, 241)
    image = torch.arange(n, dtype=torch.float32).view(1, 1, 1, n)  # each pixel holds its index
    grid = torch.stack([c, torch.zeros_like(c)], -1).view(1, 1, -1, 2)  # (x, y) pairs along the row
    read = torch.nn.functional.grid_sample(image, grid, mode='nearest', align_corners=False).view(-1).long()
    index = render.nearest_index(c, n)
    assert torch.equal(index[1:-1], read[1:-1])
    assert index[0] == 0 and index[-1] == n - 1
