"""LTE against an independent reference written here from the paper's equations and the official query
rules (grid_sample look-ups, float64), with the same random weights; its renders in pieces against the
whole render; ONNX export; the official checkpoint layout; parameter counts; the named experiments."""
import copy
import itertools
import math
import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import settings
import test as test_script
import train
from checkpoint import model_from_checkpoint, read_checkpoint
from dataset import BenchmarkDataset
from helpers import load, tiny
from image_quality_assessment import psnr
from imgproc import image_to_tensor, quantize, read_image
from model import EDSR, LTE, RDN, build_model
from onnx_model import CHECK_TOL, OnnxModel, export, self_check
from scripts.viewer import Viewer, parse_view

pytestmark = pytest.mark.usefixtures('one_thread')

# fp32 model vs float64 reference: the encoder, the phases (|pi * phase| up to ~30 here) and the 4-layer
# MLP each round at ~1e-7 relative; 1e-5 is the bound the official-equality claim is held to.
TOL = 1e-5
# Pieces of a render (windows, chunks, LR tiles) compute each pixel with the same operations on the same
# codes; the convolutions of a tile may sum in another order for another input size: a few fp32 ulps.
PIECES_TOL = 1e-6


def tiny_lte(encoder: str = 'edsr-baseline', seed: int = 0) -> LTE:
    torch.manual_seed(seed)
    net = EDSR(n_resblocks=2, n_feats=16) if encoder == 'edsr-baseline' else RDN(g0=8, n_blocks=2, n_layers=2,
                                                                                  growth=8)
    model = LTE(net, encoder, hidden_list=[32, 32], hidden_dim=24).eval()
    with torch.no_grad():  # larger than the default initialisation: phases of several periods, a strong decoder
        for weight, factor in [(model.coef.weight, 3), (model.freq.weight, 4), (model.phase.weight, 4),
                               (model.imnet.layers[-1].weight, 3)]:
            weight.mul_(factor)
    return model


def encoder_copy(model: LTE) -> torch.nn.Module:
    """A second encoder of the same architecture loaded with the model's encoder.* weights."""
    other = tiny_lte(model.options['encoder'], seed=1).encoder
    other.load_state_dict({k[len('encoder.'):]: v for k, v in model.state_dict().items() if k.startswith('encoder.')})
    return other


# ---------------------------------------------------------------- independent reference

def sample(image: torch.Tensor, coord: torch.Tensor, mode: str) -> torch.Tensor:
    """(B, Q, C) values of image (B, C, h, w) at coord (B, Q, 2) (row first) by grid_sample, as the
    official code calls it: zero padding for the (clamped) nearest look-ups, border for the bilinear skip."""
    grid, padding = coord.flip(-1).unsqueeze(1), 'border' if mode == 'bilinear' else 'zeros'
    return F.grid_sample(image, grid, mode=mode, padding_mode=padding, align_corners=False)[:, :, 0].permute(0, 2, 1)


def reference_lte(encoder: torch.nn.Module, sd: dict, lr: torch.Tensor, coord: torch.Tensor,
                  cell: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """LTE in float64 from the paper's equations: (RGB (B, Q, 3) in [0, 1] units, degenerate (B, Q)).
    Degenerate queries have near-zero total area (a coordinate on the centre of a last row or column,
    where both shifts read the same pixel): their blend is set by float noise, officially as here."""
    sd = {k: v.double() for k, v in sd.items()}
    with torch.no_grad():
        inp = (lr.double() - 0.5) / 0.5
        feat = copy.deepcopy(encoder).double()(inp)
        amplitude = F.conv2d(feat, sd['coef.weight'], sd['coef.bias'], padding=1)
        frequency = F.conv2d(feat, sd['freq.weight'], sd['freq.bias'], padding=1)
        b, _, h, w = feat.shape
        coord, cell = coord.double(), cell.double()
        scale = torch.tensor([h, w], dtype=torch.float64)
        rows = -1 + (2 * torch.arange(h, dtype=torch.float64) + 1) / h
        cols = -1 + (2 * torch.arange(w, dtype=torch.float64) + 1) / w
        centres = torch.stack(torch.meshgrid(rows, cols, indexing='ij'))[None].expand(b, 2, h, w)
        n_layers = len([k for k in sd if k.startswith('imnet.') and k.endswith('.weight')])
        preds, areas = [], []
        for vy in (-1, 1):
            for vx in (-1, 1):
                shifted = (coord + torch.tensor([vy / h, vx / w]) + 1e-6).clamp(-1 + 1e-6, 1 - 1e-6)
                a, f = sample(amplitude, shifted, 'nearest'), sample(frequency, shifted, 'nearest')
                delta = (coord - sample(centres, shifted, 'nearest')) * scale
                phase = f[..., 0::2] * delta[..., :1] + f[..., 1::2] * delta[..., 1:]  # F[2k] d_y + F[2k+1] d_x
                phase = phase + (cell * scale) @ sd['phase.weight'].T
                x = a * torch.cat([torch.cos(math.pi * phase), torch.sin(math.pi * phase)], -1)
                for i in range(n_layers):
                    x = x @ sd[f'imnet.layers.{2 * i}.weight'].T + sd[f'imnet.layers.{2 * i}.bias']
                    x = x.clamp_min(0) if i < n_layers - 1 else x
                preds.append(x)
                areas.append((delta[..., 0] * delta[..., 1]).abs() + 1e-9)
        total = sum(areas)
        blend = sum(p * (area / total)[..., None] for p, area in zip(preds, reversed(areas)))  # opposite areas
        return (blend + sample(inp, coord, 'bilinear')) * 0.5 + 0.5, total < 1e-3


def queries(batch: int, n: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Random coordinates and cells, plus the four corners and points on the borders (the clamps)."""
    coord = torch.rand(batch, n, 2, generator=gen) * 2 - 1
    edges = torch.tensor([[-1, -1], [-1, 1], [1, -1], [1, 1], [-1, 0.3], [1, -0.2], [0.1, -1], [-0.7, 1]]).float()
    coord = torch.cat([coord, edges.expand(batch, -1, -1)], 1)
    cell = 2 / torch.randint(5, 80, coord.shape, generator=gen).float()
    return coord, cell


@pytest.mark.parametrize('encoder', ['edsr-baseline', 'rdn'])
def test_forward_matches_reference_random_weights(encoder):
    model = tiny_lte(encoder)
    reference_encoder = encoder_copy(model)
    gen = torch.Generator().manual_seed(2)
    for lr_size in [(12, 15), (17, 12)]:
        lr = torch.rand(2, 3, *lr_size, generator=gen)
        coord, cell = queries(2, 400, gen)
        expected, degenerate = reference_lte(reference_encoder, model.state_dict(), lr, coord, cell)
        skip = (sample((lr.double() - 0.5) / 0.5, coord.double(), 'bilinear')) * 0.5 + 0.5
        assert (expected - skip).std() > 0.05  # the decoder's part is tested, not only the skip
        assert not degenerate.any()
        with torch.no_grad():
            got = model(lr, coord, cell)
        assert (got.double() - expected).abs().max() <= TOL, lr_size


def test_render_equals_reference_on_the_output_grid():
    """A whole render is the function at the output's pixel centres with the output's cell."""
    model, lr, (height, width) = tiny_lte(), torch.rand(1, 3, 13, 11), (29, 40)
    rows = -1 + (2 * torch.arange(height, dtype=torch.float64) + 1) / height
    cols = -1 + (2 * torch.arange(width, dtype=torch.float64) + 1) / width
    coord = torch.stack(torch.meshgrid(rows, cols, indexing='ij'), -1).view(1, -1, 2).float()
    cell = torch.tensor([2 / height, 2 / width]).expand_as(coord)
    expected, degenerate = reference_lte(encoder_copy(model), model.state_dict(), lr, coord, cell)
    got = model.render(lr, (height, width)).permute(0, 2, 3, 1).reshape(1, -1, 3).double()
    assert degenerate.float().mean() < 0.05
    assert (got - expected).abs().amax(-1)[~degenerate].max() <= TOL


# ---------------------------------------------------------------- renders in pieces

def test_windows_chunks_and_tiles_equal_the_whole_render():
    model, gen = tiny_lte(), torch.Generator().manual_seed(3)
    lr = torch.rand(2, 3, 23, 19, generator=gen)
    for size in [(57, 50), (30, 76), (11, 9)]:  # x2.48 by x2.63; x1.3 by x4; a down-scale
        whole = model.render(lr, size, tile=0, chunk=100000)
        height, width = size
        for window in [(0, 0, height, width), (height - 1, 0, 1, width), (3, width - 5, height - 3, 5),
                       (height // 3, width // 4, height // 2, width // 2)]:
            for tile, chunk in [(0, 333), (5, 100000), (4, 77)]:  # chunks; LR tiles of 5 and 4 pixels
                top, left, h, w = window
                part = model.render(lr, size, chunk=chunk, tile=tile, window=window)
                assert (part - whole[:, :, top:top + h, left:left + w]).abs().max() <= PIECES_TOL, (size, window, tile)


def test_out_of_memory_in_the_decoder_retries_in_smaller_pieces():
    model, lr = tiny_lte(), torch.rand(1, 3, 20, 17)
    expected = model.render(lr, (50, 41), chunk=100000, tile=0)
    decode = model.decode

    def tight_decode(latent, rows, cols):
        if latent.shape[0] * torch.broadcast_shapes(rows.index.shape[1:], cols.index.shape[1:]).numel() > 600:
            raise MemoryError
        return decode(latent, rows, cols)
    model.decode = tight_decode
    with pytest.warns(UserWarning, match='out of memory'):
        got = model.render(lr, (50, 41), chunk=100000, tile=0)
    assert (got - expected).abs().max() <= PIECES_TOL


def test_onnx_runtime_equals_pytorch(tmp_path):
    model = tiny_lte()
    export(model, tmp_path / 'lte.onnx')
    session = OnnxModel(tmp_path / 'lte.onnx')
    assert session.options == model.options
    assert self_check(tmp_path / 'lte.onnx', model) <= CHECK_TOL  # a real image crop, whole and windows
    lr = torch.rand(2, 3, 14, 21)
    for size, window in [((40, 52), None), ((40, 52), (39, 10, 1, 40)), ((9, 30), (0, 0, 9, 30))]:
        expected = model.render(lr, size, window=window).numpy()
        got = session.render(lr.numpy(), size, window, queries=300)
        assert np.abs(got - expected).max() <= CHECK_TOL, (size, window)


# ---------------------------------------------------------------- checkpoints

LTE_ARGS = {'encoder_spec': {'name': 'edsr-baseline', 'args': {'no_upsampling': True}},
            'imnet_spec': {'name': 'mlp', 'args': {'out_dim': 3, 'hidden_list': [256, 256, 256]}},
            'hidden_dim': 256}


def official_file(path, sd: dict, name: str = 'lte', args: dict = LTE_ARGS):
    """A checkpoint as the official train.py writes it, with EDSR's unused mean shifts in the state dict."""
    sd = {**sd, 'encoder.sub_mean.weight': torch.eye(3).view(3, 3, 1, 1), 'encoder.sub_mean.bias': torch.zeros(3),
          'encoder.add_mean.weight': torch.eye(3).view(3, 3, 1, 1), 'encoder.add_mean.bias': torch.zeros(3)}
    torch.save({'model': {'name': name, 'args': args, 'sd': sd}, 'optimizer': {}, 'epoch': 1}, path)
    return path


def test_official_checkpoint_loads_and_computes_the_reference(tmp_path):
    torch.manual_seed(4)
    reference_encoder = EDSR()  # the official EDSR-baseline: 16 blocks of 64 channels
    sd = {f'encoder.{k}': v for k, v in reference_encoder.state_dict().items()}
    sd.update({'coef.weight': torch.randn(256, 64, 3, 3) * 0.05, 'coef.bias': torch.randn(256) * 0.1,
               'freq.weight': torch.randn(256, 64, 3, 3) * 0.05, 'freq.bias': torch.randn(256) * 0.1,
               'phase.weight': torch.randn(128, 2)})
    for i, (cin, cout) in enumerate([(256, 256), (256, 256), (256, 256), (256, 3)]):
        sd[f'imnet.layers.{2 * i}.weight'] = torch.randn(cout, cin) / math.sqrt(cin)
        sd[f'imnet.layers.{2 * i}.bias'] = torch.randn(cout) * 0.1
    model = model_from_checkpoint(official_file(tmp_path / 'epoch-best.pth', sd)).eval()
    assert model.options == {'model': 'lte', 'encoder': 'edsr-baseline', 'hidden_list': [256, 256, 256],
                             'hidden_dim': 256}
    lr, gen = torch.rand(1, 3, 12, 12), torch.Generator().manual_seed(5)
    coord, cell = queries(1, 300, gen)
    expected, _ = reference_lte(reference_encoder, sd, lr, coord, cell)
    with torch.no_grad():
        assert (model(lr, coord, cell).double() - expected).abs().max() <= TOL
    # and this project's own format (train.py's checkpoints) gives the same model back
    torch.save({'model': model.state_dict(), 'options': model.options}, tmp_path / 'own.pth')
    again = model_from_checkpoint(tmp_path / 'own.pth').eval()
    with torch.no_grad():
        assert torch.equal(again(lr, coord, cell), model(lr, coord, cell))


def with_arg(path: tuple[str, ...], value) -> dict:
    """LTE_ARGS with the entry at `path` replaced by `value` (deleted for None)."""
    args = {k: (dict(v, args=dict(v['args'])) if isinstance(v, dict) else v) for k, v in LTE_ARGS.items()}
    parent = args
    for key in path[:-1]:
        parent = parent[key]
    if value is None:
        del parent[path[-1]]
    else:
        parent[path[-1]] = value
    return args


@pytest.mark.parametrize('name, args, message', [
    ('lte', with_arg(('encoder_spec', 'args', 'no_upsampling'), None), 'up-sampling encoder'),
    ('lte', with_arg(('imnet_spec', 'args', 'out_dim'), 4), 'not an MLP to RGB'),
    ('lte', with_arg(('imnet_spec',), None), "incomplete (no 'imnet_spec')"),
    ('lte', with_arg(('hidden_dim',), 255), 'hidden_dim must be a positive even int'),
    ('lte', with_arg(('encoder_spec', 'name'), 'swinir'), "encoder must be 'edsr-baseline' or 'rdn'"),
    ('ltep', LTE_ARGS, "holds a 'ltep' model"),
])
def test_wrong_official_checkpoint_is_refused_with_one_message(name, args, message, tmp_path):
    path = official_file(tmp_path / 'bad.pth', {'coef.weight': torch.zeros(1)}, name, args)
    with pytest.raises(ValueError, match=f"{re.escape(str(path))}.*{re.escape(message)}") as error:
        read_checkpoint(path)
    assert '\n' not in str(error.value)


def test_checkpoint_of_another_shape_is_refused(tmp_path):
    sd = {k: v for k, v in build_model('lte', hidden_list=[256, 256, 256]).state_dict().items() if k != 'phase.weight'}
    path = official_file(tmp_path / 'short.pth', sd)
    with pytest.raises(ValueError, match=r"does not fit the model: missing \['phase.weight'\]"):
        model_from_checkpoint(path)


# ---------------------------------------------------------------- training, sizes, settings

def test_gradients_reach_every_parameter():
    model = tiny_lte().train()
    coord, cell = queries(2, 64, torch.Generator().manual_seed(6))
    model(torch.rand(2, 3, 12, 12), coord, cell).sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


def lte_parameters(encoder: int, channels: int, hidden_dim: int, hidden_list: list[int]) -> int:
    """The head's parameters: two 3x3 convolutions, the bias-free phase Linear, the MLP; plus the encoder's."""
    convs = 2 * (channels * hidden_dim * 9 + hidden_dim)
    widths = [hidden_dim, *hidden_list, 3]
    return encoder + convs + 2 * hidden_dim // 2 + sum(a * b + b for a, b in itertools.pairwise(widths))


def test_parameter_counts():
    edsr = 3 * 64 * 9 + 64 + 16 * 2 * (64 * 64 * 9 + 64) + 64 * 64 * 9 + 64  # head, 16 blocks, body's last conv
    rdb = sum((64 + i * 64) * 64 * 9 + 64 for i in range(8)) + (64 + 8 * 64) * 64 + 64  # 8 dense convs, LFF
    rdn = 3 * 64 * 9 + 64 + 64 * 64 * 9 + 64 + 16 * rdb + 16 * 64 * 64 + 64 + 64 * 64 * 9 + 64  # SFENets, RDBs, GFF
    with torch.device('meta'):
        counts = {enc: sum(p.numel() for p in build_model('lte', enc, hidden_list=[256, 256, 256]).parameters())
                  for enc in ('edsr-baseline', 'rdn')}
    assert counts['edsr-baseline'] == lte_parameters(edsr, 64, 256, [256, 256, 256]) == 1_714_243
    assert counts['rdn'] == lte_parameters(rdn, 64, 256, [256, 256, 256]) == 22_467_779


@pytest.mark.parametrize('name, encoder', [('edsr-baseline-lte', 'edsr-baseline'), ('rdn-lte', 'rdn')])
def test_named_experiments_build_the_official_lte(name, encoder):
    cfg = settings.parse([f'--experiment={name}'], 'train')
    assert settings.model_options(cfg)['model'] == 'lte' and cfg.encoder == encoder
    with torch.device('meta'):
        model = build_model(**settings.model_options(cfg), fast=cfg.fast)
    assert model.options == {'model': 'lte', 'encoder': encoder, 'hidden_list': [256, 256, 256], 'hidden_dim': 256}
    # the official recipe (train_*-lte.yaml): Adam 1e-4 halved at epochs 200/400/600/800 of 1000, batch 16,
    # 48-px LR patches at scales U(1, 4), 2304 queries per patch, 20 repeats, validation on 10 x 160 patches
    recipe = dict(lr=1e-4, schedule='multistep', milestones=[200, 400, 600, 800], gamma=0.5, epochs=1000,
                  batch_size=16, patch_size=48, scale_min=1.0, scale_max=4.0, sample_q=2304, repeat=20,
                  valid_first=10, valid_repeat=160)
    assert {k: getattr(cfg, k) for k in recipe} == recipe


@pytest.mark.slow
def test_training_resumes_exactly(data, tmp_path, capsys):
    """train.py with --model=lte: two epochs straight equal one epoch and a resumed second one."""
    def args(out, *extra):
        return tiny(data, out, '--model=lte', '--hidden_dim=8', '--hidden_list=[16]', *extra)
    straight = train.main(args(tmp_path / 'a', '--epochs=2'))
    train.main(args(tmp_path / 'b', '--epochs=1'))
    capsys.readouterr()
    resumed = train.main(args(tmp_path / 'b', '--epochs=2', '--resume=auto'))
    assert 'resuming' in capsys.readouterr().out and resumed['step'] == straight['step'] > 0
    a, b = load(tmp_path / 'a' / 'last.pth'), load(tmp_path / 'b' / 'last.pth')
    assert a['options'] == {'model': 'lte', 'encoder': 'edsr-baseline', 'hidden_list': [16], 'hidden_dim': 8}
    for key in a['model']:
        assert torch.equal(a['model'][key], b['model'][key]), key


@pytest.mark.slow
def test_test_script_and_the_viewer_run_it(benchmark_root, tmp_path):
    """test.py scores an LTE checkpoint as the benchmark protocol says, and the viewer shows its window
    render; both equal the model's own render of the same input."""
    torch.manual_seed(0)
    model = build_model('lte', hidden_list=[16], hidden_dim=8).eval()
    torch.save({'model': model.state_dict(), 'options': model.options}, tmp_path / 'lte.pth')
    [row] = test_script.main([f'--weights={tmp_path / "lte.pth"}', f'--test_root={benchmark_root}', '--test_sets=Set5',
                              '--test_scales=4', f'--out_dir={tmp_path / "out"}', '--device=cpu'])
    items = BenchmarkDataset(benchmark_root / 'Set5', 4)
    with torch.no_grad():
        scores = [float(psnr(model.render(item['lr'][None], item['hr'].shape[-2:]).clamp(0, 1), item['hr'][None], 4))
                  for item in items]
    assert row['psnr'] == pytest.approx(sum(scores) / len(scores), abs=1e-4)
    image = benchmark_root / 'Set5' / 'LR_bicubic' / 'X4' / 'birdx4.png'
    viewer = Viewer(image, model)
    view = viewer.render(parse_view('mode=liif&zoom=3.5&top=10&left=20&height=30&width=40', viewer.shape))
    lr = image_to_tensor(read_image(image))[None]
    whole = model.render(lr, (round(lr.shape[2] * 3.5), round(lr.shape[3] * 3.5)))[0, :, 10:40, 20:60]
    assert np.abs(view.astype(float) - quantize(whole[None], 8).astype(float)).max() <= 1
