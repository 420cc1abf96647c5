"""MetaSR and the fixed-scale EDSR-baseline / RDN baselines against independent references written
here from the rules (index arithmetic, float64, no model.py helpers), the official checkpoint layout,
parameter counts from the architecture arithmetic, the shared rendering engine, and the scripts.

The references use the model's trunk (EDSR / RDN without up-sampler, checked elsewhere against the
official checkpoint) and the raw weights of the new parts: the up-samplers' convolutions with a pixel
shuffle written as index arithmetic, MetaSR's MLP and filter product, and every look-up.
"""
import copy
import importlib.util
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F

import inference
import render
import train
from checkpoint import load_weights, model_from_checkpoint, read_checkpoint
from dataset import BenchmarkDataset
from helpers import tiny
from model import EDSR, RDN, MetaSR, Upsample, build_model

_spec = importlib.util.spec_from_file_location('test_script', Path(__file__).resolve().parents[1] / 'test.py')
test_script = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(test_script)

TOL = 1e-5
BASELINES = [('edsr-baseline', 2), ('edsr-baseline', 3), ('edsr-baseline', 4), ('edsr-baseline', 8),
             ('rdn', 2), ('rdn', 3), ('rdn', 4)]


pytestmark = pytest.mark.usefixtures('one_thread')


# ---------------------------------------------------------------- independent references (float64)

def trunk64(encoder, lr: torch.Tensor) -> torch.Tensor:
    """The encoder's feature before any up-sampler (the trunk LIIF uses, checked against the official
    checkpoint in test_model.py), in float64, from input normalised to [-1, 1]."""
    trunk = copy.deepcopy(encoder).double()
    for name in ('tail', 'UPNet'):
        if hasattr(trunk, name):
            delattr(trunk, name)
    with torch.no_grad():
        return trunk((lr.double() - 0.5) / 0.5)


def shuffle(x: torch.Tensor, f: int) -> torch.Tensor:
    """Sub-pixel rearrangement: out[c, y f + i, x f + j] = in[c f^2 + i f + j, y, x]."""
    b, c, h, w = x.shape
    out = x.new_empty(b, c // (f * f), h * f, w * f)
    for i in range(f):
        for j in range(f):
            out[:, :, i::f, j::f] = x[:, i * f + j::f * f]
    return out


def conv64(x: torch.Tensor, conv) -> torch.Tensor:
    return F.conv2d(x, conv.weight.double(), conv.bias.double(), padding=1)


@torch.no_grad()
def upsampled64(model: Upsample, lr: torch.Tensor) -> torch.Tensor:
    """The baseline's whole SR image in [0, 1] units: trunk, then per the official up-samplers a conv +
    shuffle by 2 per octave (one by 3 for x3), then a conv to RGB."""
    x = trunk64(model.encoder, lr)
    scale = model.options['upsample_scale']
    factors = [3] if scale == 3 else [2] * {2: 1, 4: 2, 8: 3}[scale]
    tail = model.encoder.tail if hasattr(model.encoder, 'tail') else None
    convs = list(tail[0])[0::2] + [tail[1]] if tail is not None else list(model.encoder.UPNet)[0::2]
    assert len(convs) == len(factors) + 1
    for conv, f in zip(convs, factors):
        x = shuffle(conv64(x, conv), f)
    return conv64(x, convs[-1]) * 0.5 + 0.5


def nearest64(c: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The pixel of n holding coordinate c (float64), as two candidates (lower, upper): the same pixel,
    except within float32 noise of a border between pixels k - 1 and k, where the model's float32
    arithmetic (and, on the border itself, grid_sample's tie rule) may pick either."""
    pos = (c + 1) / 2 * n
    k = pos.round()
    near = (pos - k).abs() < 2e-7 * n
    lower = torch.where(near, k - 1, pos.floor()).long().clamp(0, n - 1)
    upper = torch.where(near, k, pos.floor()).long().clamp(0, n - 1)
    return lower, upper


def reference_upsample(model: Upsample, lr, coord, cell=None) -> torch.Tensor:
    """(4, B, Q, 3): the SR image's pixel at each query, for the 4 candidate (row, column) pixels."""
    sr = upsampled64(model, lr).permute(0, 2, 3, 1)
    b, big_h, big_w = sr.shape[:3]
    rows, cols = nearest64(coord[..., 0].double(), big_h), nearest64(coord[..., 1].double(), big_w)
    return torch.stack([sr[torch.arange(b)[:, None], iy, ix] for iy in rows for ix in cols])


@torch.no_grad()
def reference_metasr(model: MetaSR, lr, coord, cell) -> torch.Tensor:
    """MetaSR from its rules, (4, B, Q, 3) for the candidate pixels: the 3x3 neighbourhood (zero
    padded) of the LR pixel holding the corner coord - cell / 2 (+1e-6, clamped), a filter
    W = MLP([rel_y, rel_x, cell_y h / 2]) of shape (C*9, 3) with rel = corner - pixel's top-left
    corner in LR pixels, and rgb = code . W."""
    feat = trunk64(model.encoder, lr)
    b, c, h, w = feat.shape
    padded = F.pad(feat, (1, 1, 1, 1))
    coord, cell = coord.double(), cell.double()
    corner = coord - cell / 2
    q = (corner + 1e-6).clamp(-1 + 1e-6, 1 - 1e-6)
    first, last = model.imnet.layers[0], model.imnet.layers[2]
    out = []
    for iy in nearest64(q[..., 0], h):
        for ix in nearest64(q[..., 1], w):
            rel_y = (corner[..., 0] - (-1 + 2 * iy / h)) * h / 2
            rel_x = (corner[..., 1] - (-1 + 2 * ix / w)) * w / 2
            code = torch.stack([padded[torch.arange(b)[:, None], :, iy + ky, ix + kx]
                                for ky in range(3) for kx in range(3)], -1).reshape(b, -1, c * 9)  # c * 9 + ky * 3 + kx
            x = torch.stack([rel_y, rel_x, cell[..., 0] * h / 2], -1)
            x = (x @ first.weight.double().T + first.bias.double()).clamp_min(0)
            filters = (x @ last.weight.double().T + last.bias.double()).reshape(b, -1, c * 9, 3)
            out.append(torch.einsum('bqj,bqjk->bqk', code, filters) * 0.5 + 0.5)
    return torch.stack(out)


def grid(batch: int, height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    rows = -1 + (2 * torch.arange(height, dtype=torch.float64) + 1) / height
    cols = -1 + (2 * torch.arange(width, dtype=torch.float64) + 1) / width
    coord = torch.stack(torch.meshgrid(rows, cols, indexing='ij'), -1).reshape(1, -1, 2).float()
    cell = torch.tensor([2 / height, 2 / width]).expand_as(coord)
    return coord.expand(batch, -1, -1).clone(), cell.expand(batch, -1, -1).clone()


def query_sets(h: int, w: int, own_scale: int, gen: torch.Generator):
    """Pixel-centre grids at an integer scale (the model's own for a baseline), a non-integer and an
    anisotropic one, and random off-grid queries with random cells."""
    for name, size in [(f'x{own_scale}', (own_scale * h, own_scale * w)), ('x2.3', (round(2.3 * h), round(2.3 * w))),
                       ('x1.6-by-x3.4', (round(1.6 * h), round(3.4 * w)))]:
        yield name, grid(2, *size)
    coord = torch.rand(2, 600, 2, generator=gen) * 2 - 1
    cell = 2 / (torch.rand(2, 600, 2, generator=gen) * 50 + 4)  # up to 1.75 LR pixels wide
    yield 'random', (coord, cell)


def max_diff(got: torch.Tensor, candidates: torch.Tensor) -> float:
    """Max over queries of the distance to the nearest candidate reference value (one candidate
    except at pixel borders, see nearest64)."""
    assert got.shape == candidates.shape[1:]
    return (got.double() - candidates).abs().amax(-1).amin(0).max().item()


# ---------------------------------------------------------------- forward vs reference

def all_queries(h: int, w: int, own_scale: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Every query set of `query_sets` in one (B, Q, 2) pair: one encoding checks them all."""
    coords, cells = zip(*(queries for _, queries in query_sets(h, w, own_scale, gen)))
    return torch.cat(coords, 1), torch.cat(cells, 1)


@pytest.mark.parametrize('encoder', ['edsr-baseline', 'rdn'])
@pytest.mark.slow
def test_metasr_matches_reference(encoder):
    torch.manual_seed(0)
    model = build_model('metasr', encoder).eval()
    gen = torch.Generator().manual_seed(1)
    for h, w in [(7, 10), (9, 5)]:
        lr = torch.rand(2, 3, h, w, generator=gen)
        coord, cell = all_queries(h, w, 3, gen)
        with torch.no_grad():
            got = model(lr, coord, cell)
        ref = reference_metasr(model, lr, coord, cell)
        assert ref.std() > 0.05
        diff = max_diff(got, ref)
        assert diff <= TOL, f"{encoder} {h}x{w}: {diff}"


@pytest.mark.parametrize('encoder,scale', BASELINES)
@pytest.mark.slow
def test_baseline_matches_reference(encoder, scale):
    torch.manual_seed(scale)
    model = build_model('upsample', encoder, upsample_scale=scale).eval()
    gen = torch.Generator().manual_seed(2)
    for h, w in [(7, 10), (5, 3)]:
        lr = torch.rand(2, 3, h, w, generator=gen)
        coord, cell = all_queries(h, w, scale, gen)
        with torch.no_grad():
            got = model(lr, coord, cell)
        ref = reference_upsample(model, lr, coord)
        assert ref.std() > 0.01
        diff = max_diff(got, ref)
        assert diff <= TOL, f"{encoder} x{scale} {h}x{w}: {diff}"
        # at its own scale the render is the network's SR image itself
        sr = model.render(lr, (scale * h, scale * w), chunk=500)
        assert (sr.double() - upsampled64(model, lr)).abs().max() <= TOL


def test_baseline_look_up_ties_break_as_grid_sample():
    """Queries exactly on the SR image's pixel borders (inside the square): the pixel grid_sample's
    nearest mode picks (round half to even on its unnormalised index)."""
    torch.manual_seed(3)
    model = build_model('upsample', 'edsr-baseline', upsample_scale=2).eval()
    lr = torch.rand(1, 3, 5, 4)
    borders_y, borders_x = -1 + 2 * torch.arange(1, 10) / 10, -1 + 2 * torch.arange(1, 8) / 8
    coord = torch.stack(torch.meshgrid(borders_y, borders_x, indexing='ij'), -1).reshape(1, -1, 2)
    with torch.no_grad():
        got = model(lr, coord, torch.zeros_like(coord))
        sr = model.encoder((lr - 0.5) / 0.5)
        expected = F.grid_sample(sr, coord.flip(-1)[:, None], mode='nearest', align_corners=False)[:, :, 0]
    torch.testing.assert_close(got, expected.permute(0, 2, 1) * 0.5 + 0.5, rtol=0, atol=0)


# ---------------------------------------------------------------- parameters and the official layout

def conv(cin: int, cout: int, k: int = 3) -> int:
    return cin * cout * k * k + cout


def linear(cin: int, cout: int) -> int:
    return cin * cout + cout


EDSR_TRUNK = conv(3, 64) + 16 * 2 * conv(64, 64) + conv(64, 64)  # head, 16 residual blocks, body's last conv
RDN_TRUNK = (conv(3, 64) + conv(64, 64) + 16 * (sum(conv(64 + 64 * c, 64) for c in range(8)) + conv(64 + 8 * 64, 64, 1))
             + conv(16 * 64, 64, 1) + conv(64, 64))
UPSAMPLERS = {2: conv(64, 256) + conv(64, 3), 3: conv(64, 576) + conv(64, 3),
              4: 2 * conv(64, 256) + conv(64, 3), 8: 3 * conv(64, 256) + conv(64, 3)}
METASR_MLP = linear(3, 256) + linear(256, 64 * 9 * 3)
PARAMETERS = {('metasr', 'edsr-baseline', 0): EDSR_TRUNK + METASR_MLP, ('metasr', 'rdn', 0): RDN_TRUNK + METASR_MLP}
PARAMETERS.update({('upsample', e, s): (EDSR_TRUNK if e == 'edsr-baseline' else RDN_TRUNK) + UPSAMPLERS[s]
                   for e, s in BASELINES})


def test_parameter_counts_equal_the_official_architectures():
    # EDSR's two frozen 1x1 mean shifts (24 numbers) are not counted: they are unused and not trained
    assert EDSR_TRUNK == 1_220_416 and RDN_TRUNK == 21_973_952
    for (kind, encoder, scale), count in PARAMETERS.items():
        model = build_model(kind, encoder, upsample_scale=scale or 2)
        assert sum(p.numel() for p in model.parameters()) == count, (kind, encoder, scale)
    assert PARAMETERS[('metasr', 'edsr-baseline', 0)] == 1_665_536
    assert PARAMETERS[('upsample', 'edsr-baseline', 2)] == 1_369_859
    assert PARAMETERS[('upsample', 'rdn', 4)] == 22_271_107


def official_keys(kind: str, encoder: str, scale: int) -> set[str]:
    """The new parts' parameter names in the official release: EDSR's Upsampler at tail.0 (a conv
    every other module, the PixelShuffles between) and its last conv tail.1; RDN's UPNet (convs at
    even positions); MetaSR's MLP imnet.layers.0 and .2."""
    if kind == 'metasr':
        names = ['imnet.layers.0', 'imnet.layers.2']
    elif encoder == 'edsr-baseline':
        names = [f'encoder.tail.0.{2 * i}' for i in range(1 if scale == 3 else {2: 1, 4: 2, 8: 3}[scale])]
        names.append('encoder.tail.1')
    else:
        names = [f'encoder.UPNet.{2 * i}' for i in range({2: 2, 3: 2, 4: 3}[scale])]
    return {f'{n}.{p}' for n in names for p in ('weight', 'bias')}


def save_official(model, path: Path) -> dict:
    """The model's random weights in the official layout: {'model': {'name', 'args', 'sd'}}, with
    EDSR's unused mean-shift convolutions as the official state dict has them."""
    kind, encoder = model.options['model'], model.options['encoder']
    sd = dict(model.state_dict())
    if encoder == 'edsr-baseline':
        mean = torch.tensor([0.4488, 0.4371, 0.4040])
        for name, sign in (('sub_mean', -1), ('add_mean', 1)):
            sd[f'encoder.{name}.weight'] = torch.eye(3).view(3, 3, 1, 1)
            sd[f'encoder.{name}.bias'] = sign * mean
    if kind == 'metasr':
        spec = {'name': 'metasr', 'args': {'encoder_spec': {'name': encoder, 'args': {'no_upsampling': True}}}}
    else:
        encoder_args = {'scale': model.options['upsample_scale']}
        spec = {'name': 'liif', 'args': {'encoder_spec': {'name': encoder, 'args': encoder_args}}}
    torch.save({'model': {**spec, 'sd': sd}, 'epoch': 1}, path)
    return sd


@pytest.mark.parametrize('kind,encoder,scale', [('metasr', 'edsr-baseline', 0), ('metasr', 'rdn', 0),
                                                ('upsample', 'edsr-baseline', 3), ('upsample', 'edsr-baseline', 8),
                                                ('upsample', 'rdn', 4)])
@pytest.mark.slow
def test_official_checkpoints_load_and_give_the_same_outputs(kind, encoder, scale, tmp_path):
    torch.manual_seed(4)
    model = build_model(kind, encoder, upsample_scale=scale or 2).eval()
    path = tmp_path / 'official.pth'
    sd = save_official(model, path)
    new_parts = official_keys(kind, encoder, scale)
    assert new_parts <= sd.keys()
    assert {k for k in sd if k.startswith(('imnet.', 'encoder.tail.', 'encoder.UPNet.'))} == new_parts
    loaded = model_from_checkpoint(path).eval()
    assert loaded.options == model.options and type(loaded) is type(model)
    lr = torch.rand(2, 3, 6, 5)
    coord, cell = grid(2, 13, 11)
    with torch.no_grad():
        assert torch.equal(loaded(lr, coord, cell), model(lr, coord, cell))
    # this project's format round-trips too
    ours = tmp_path / 'ours.pth'
    torch.save({'model': model.state_dict(), 'options': model.options}, ours)
    assert read_checkpoint(ours)[0] == model.options
    with torch.no_grad():
        assert torch.equal(model_from_checkpoint(ours)(lr, coord, cell), model(lr, coord, cell))


def test_mismatched_checkpoints_are_refused_with_one_message(tmp_path):
    torch.manual_seed(5)
    metasr = tmp_path / 'metasr.pth'
    save_official(build_model('metasr', 'edsr-baseline'), metasr)
    x4 = tmp_path / 'x4.pth'
    save_official(build_model('upsample', 'edsr-baseline', upsample_scale=4), x4)
    cases = [(build_model('liif'), metasr, ["model: file 'metasr', model 'liif'"]),
             (build_model('metasr', 'rdn'), metasr, ["encoder: file 'edsr-baseline', model 'rdn'"]),
             (build_model('upsample', upsample_scale=2), x4, ['upsample_scale: file 4, model 2']),
             (build_model('metasr'), x4, ["model: file 'upsample', model 'metasr'"])]
    for model, path, expect in cases:
        before = {k: v.clone() for k, v in model.state_dict().items()}
        with pytest.raises(ValueError) as info:
            load_weights(model, path)
        message = str(info.value)
        assert message.count(str(path)) == 1 and all(e in message for e in expect), message
        assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    # a spec whose scale does not match its tensors, and a MetaSR over an up-sampling encoder
    ckpt = torch.load(x4, weights_only=True)
    ckpt['model']['args']['encoder_spec']['args']['scale'] = 2
    torch.save(ckpt, tmp_path / 'lying.pth')
    with pytest.raises(ValueError, match='does not fit.*encoder.tail.0.2.weight'):
        model_from_checkpoint(tmp_path / 'lying.pth')
    ckpt = torch.load(metasr, weights_only=True)
    ckpt['model']['args']['encoder_spec']['args'] = {}
    torch.save(ckpt, tmp_path / 'up_metasr.pth')
    with pytest.raises(ValueError, match='up-sampling encoder'):
        model_from_checkpoint(tmp_path / 'up_metasr.pth')


# ---------------------------------------------------------------- the shared rendering engine

def small(kind: str, encoder: str, scale: int):
    """Small encoders (receptive radius 6-10) so that an image many tile margins wide stays cheap."""
    if encoder == 'edsr-baseline':
        enc = EDSR(n_resblocks=2, n_feats=16, upsample_scale=scale if kind == 'upsample' else 0)
    else:
        enc = RDN(g0=8, n_blocks=2, n_layers=2, growth=8, upsample_scale=scale if kind == 'upsample' else 0)
    return (MetaSR(enc, encoder) if kind == 'metasr' else Upsample(enc, encoder, scale)).eval()


@pytest.mark.parametrize('kind,encoder,scale', [('metasr', 'edsr-baseline', 0), ('metasr', 'rdn', 0),
                                                ('upsample', 'edsr-baseline', 3), ('upsample', 'edsr-baseline', 8),
                                                ('upsample', 'rdn', 2)])
@pytest.mark.slow
def test_tiled_render_equals_untiled_and_direct_queries(kind, encoder, scale):
    torch.manual_seed(6)
    model = small(kind, encoder, scale)
    lr = torch.rand(2, 3, 40, 34)
    for size in [(93, 71), (23, 20)]:  # x2.33 by x2.09, and a down-scale (cells wider than a pixel)
        whole = model.render(lr, size, tile=0, chunk=2000)
        tiled = model.render(lr, size, tile=11, chunk=333)  # 4 x 4 tiles, inner ones cropped on all sides
        assert whole.std() > 0.01
        assert (whole - tiled).abs().max() <= TOL, size
        coord, cell = grid(2, *size)
        with torch.no_grad():
            direct = model(lr, coord, cell).view(2, *size, 3).permute(0, 3, 1, 2)
        assert (whole - direct).abs().max() <= TOL
        predicted = render.predict(model, lr, coord, cell, chunk=301).view(2, *size, 3).permute(0, 3, 1, 2)
        assert (predicted - whole).abs().max() <= TOL


def test_too_small_tile_margin_is_detected(monkeypatch):
    """The tiled test can fail: a baseline whose margin ignores the receptive radius tiles wrongly."""
    torch.manual_seed(8)
    model = small('upsample', 'edsr-baseline', 2)
    lr = torch.rand(1, 3, 40, 40)
    whole = model.render(lr, (80, 80), tile=0)
    monkeypatch.setattr(Upsample, 'tile_margin', property(lambda self: 0))
    assert (whole - model.render(lr, (80, 80), tile=10)).abs().max() > 1e-3


def test_auto_chunk_and_tile_for_every_model():
    for model in (build_model('metasr'), build_model('upsample', 'edsr-baseline', upsample_scale=8)):
        budget = render.device_budget(model.device)
        assert render.auto_tile(model, (1, 3, 32, 32), budget) == 0
        assert 64 <= render.auto_tile(model, (1, 3, 4096, 4096), budget) < 2048
        assert render.auto_chunk(model, 8 << 20, model.device) >= 256


# ---------------------------------------------------------------- training and the scripts

@pytest.mark.slow
def test_metasr_experiment_trains_and_resumes(data, tmp_path):  # noqa: F811
    """edsr-baseline-metasr, tiny: 1 epoch + a resume to 2 equals 2 epochs straight."""
    args = ['--experiment=edsr-baseline-metasr']
    straight = train.main(tiny(data, tmp_path / 'straight', '--epochs=2', *args))
    assert straight['step'] == 8 and np.isfinite(straight['last_psnr'])
    train.main(tiny(data, tmp_path / 'resumed', '--epochs=1', *args))
    resumed = train.main(tiny(data, tmp_path / 'resumed', '--epochs=2', '--resume=auto', *args))
    assert (resumed['epoch'], resumed['step']) == (2, 8)
    a = torch.load(tmp_path / 'straight' / 'last.pth', weights_only=True)
    b = torch.load(tmp_path / 'resumed' / 'last.pth', weights_only=True)
    assert a['options'] == {'model': 'metasr', 'encoder': 'edsr-baseline'}
    for k, v in a['model'].items():
        torch.testing.assert_close(b['model'][k], v, rtol=0, atol=1e-6)
    train.seed_everything(0)  # the runs' seed: the weights they started from
    first = build_model('metasr').state_dict()
    assert any(not torch.equal(first[k], v) for k, v in a['model'].items())  # it learned something
    assert isinstance(model_from_checkpoint(tmp_path / 'straight' / 'best.pth'), MetaSR)


@pytest.mark.slow
def test_rdn_metasr_and_baseline_train_a_few_steps(data, tmp_path):  # noqa: F811
    result = train.main(tiny(data, tmp_path / 'rdn', '--experiment=rdn-metasr', '--max_steps=1'))
    assert result['step'] == 1 and np.isfinite(result['last_psnr'])
    assert read_checkpoint(tmp_path / 'rdn' / 'last.pth')[0] == {'model': 'metasr', 'encoder': 'rdn'}
    result = train.main(tiny(data, tmp_path / 'x4', '--model=upsample', '--upsample_scale=4', '--max_steps=2'))
    assert result['step'] == 2 and np.isfinite(result['last_psnr'])
    assert read_checkpoint(tmp_path / 'x4' / 'last.pth')[0] == {'model': 'upsample', 'encoder': 'edsr-baseline',
                                                                'upsample_scale': 4}


def test_config_refuses_scales_the_up_samplers_lack(data, tmp_path):  # noqa: F811
    with pytest.raises(ValueError, match=r'upsample_scale must be one of \[2, 3, 4\]'):
        train.main(tiny(data, tmp_path, '--model=upsample', '--encoder=rdn', '--upsample_scale=8'))
    with pytest.raises(ValueError, match='model must be one of'):
        train.main(tiny(data, tmp_path, '--model=srcnn'))


@pytest.fixture(scope='module')
def checkpoints(tmp_path_factory) -> dict:
    folder = tmp_path_factory.mktemp('ckpt')
    torch.manual_seed(7)
    models = {'metasr': build_model('metasr').eval(), 'x4': build_model('upsample', upsample_scale=4).eval()}
    for name, model in models.items():
        save_official(model, folder / f'{name}.pth')
    return {name: (folder / f'{name}.pth', model) for name, model in models.items()}


def read_rgb(path: Path) -> np.ndarray:
    return cv2.imread(str(path), cv2.IMREAD_UNCHANGED)[:, :, ::-1]


def test_inference_runs_metasr_and_baseline(checkpoints, benchmark_root, tmp_path):
    crop = tmp_path / 'crop.png'
    cv2.imwrite(str(crop), cv2.imread(str(benchmark_root / 'Set5' / 'HR' / 'bird.png'))[40:59, 60:75])  # 19 x 15
    lr = torch.from_numpy(read_rgb(crop).astype(np.float32) / 255).permute(2, 0, 1)[None]
    for name, scale, size in [('metasr', '2.5', (48, 38)), ('x4', '4', (76, 60))]:
        path, model = checkpoints[name]
        [out] = inference.main([f'--input={crop}', f'--output={tmp_path / f"{name}.png"}', f'--weights={path}',
                                f'--scale={scale}', '--device=cpu', '--chunk=3000'])
        got = read_rgb(out)
        assert got.shape == (*size, 3)
        if name == 'x4':  # at its own scale: the network's SR image, independently computed
            sr = upsampled64(model, lr)
        else:
            coord, cell = grid(1, *size)
            sr = reference_metasr(model, lr, coord, cell)[0].view(1, *size, 3).permute(0, 3, 1, 2)
        expected = np.floor(sr.clamp(0, 1)[0].permute(1, 2, 0).numpy() * 255 + 0.5)
        assert np.abs(got.astype(np.float64) - expected).max() <= 1  # float32 vs float64 at a rounding edge


def test_test_script_scores_metasr_and_baseline(checkpoints, benchmark_root, tmp_path):
    root = tmp_path / 'bench'
    (root / 'Tiny' / 'HR').mkdir(parents=True)
    baby = cv2.imread(str(benchmark_root / 'Set5' / 'HR' / 'baby.png'))
    cv2.imwrite(str(root / 'Tiny' / 'HR' / 'baby.png'), baby[200:244, 180:220])
    for name, scale in [('metasr', 3), ('x4', 4)]:
        path, model = checkpoints[name]
        [row] = test_script.main([f'--test_root={root}', f'--weights={path}', '--test_sets=Tiny',
                                  f'--test_scales=[{scale}]', f'--out_dir={tmp_path / name}', '--device=cpu'])
        item = BenchmarkDataset(root / 'Tiny', scale)[0]
        hr = item['hr'].permute(1, 2, 0).double().numpy()
        size = hr.shape[:2]
        if name == 'x4':
            sr = upsampled64(model, item['lr'][None])
        else:
            coord, cell = grid(1, *size)
            sr = reference_metasr(model, item['lr'][None], coord, cell)[0].view(1, *size, 3).permute(0, 3, 1, 2)
        sr = sr.clamp(0, 1)[0].permute(1, 2, 0).numpy()
        diff = ((sr - hr) * np.array([65.738, 129.057, 25.064]) / 256).sum(-1)[scale:-scale, scale:-scale]
        assert row['psnr'] == pytest.approx(-10 * np.log10((diff ** 2).mean()), abs=1e-3)
