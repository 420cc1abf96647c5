"""The model contract: a model registered here, in this file alone, runs through train.py, test.py,
inference.py, the viewer's render and the ONNX export, and loads from the checkpoints they write. The
registry is what the settings' checks, --help, build_model and the checkpoint loader read."""
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import inference
import settings
import test as test_script
import train
from checkpoint import model_from_checkpoint
from helpers import tiny
from imgproc import image_to_tensor, load_uint8, read_image
from model import LIIF, MODELS, OPTION_RULES, SRModel, build_model, denormalise, model_name, normalise, register
from onnx_model import OnnxModel, export
from render import Lookup, nearest_index
from scripts.viewer import Viewer, parse_view

ROOT = Path(__file__).resolve().parents[1]


class ConvEncoder(nn.Conv2d):
    """A 3x3 conv of 4 channels with what the sizing defaults read of an encoder."""
    out_dim, receptive_radius, peak_channels = 4, 1, 8

    def __init__(self):
        super().__init__(3, 4, 3, padding=1)


class NearestCode(SRModel):
    """A test model, its maths alone (the contract's defaults do the rest): a 3x3 conv, read at the
    nearest LR pixel, mapped to RGB by a linear layer. Its output is constant over each LR pixel's area,
    which the test checks independently."""
    name = 'nearest-code'

    def __init__(self, encoder: nn.Module, encoder_name: str):
        super().__init__(encoder, encoder_name)
        self.to_rgb = nn.Linear(encoder.out_dim, 3)

    @classmethod
    def build(cls, encoder: str) -> 'NearestCode':
        return cls(ConvEncoder(), encoder)  # a small encoder whatever the setting, for a quick test

    def encode(self, lr: torch.Tensor) -> torch.Tensor:
        return self.encoder(normalise(lr))

    def lookup(self, c: torch.Tensor, n: int, cell: torch.Tensor) -> Lookup:
        return Lookup(nearest_index(c, n)[None], None, None)

    def decode(self, latent: torch.Tensor, rows: Lookup, cols: Lookup) -> torch.Tensor:
        batch = torch.arange(latent.shape[0]).view(-1, *[1] * (rows.index.dim() - 2))
        code = latent.permute(0, 2, 3, 1)[batch, rows.index[0], cols.index[0]]
        return denormalise(self.to_rgb(code))


@pytest.fixture(scope='module')
def registered():
    register(NearestCode)
    yield NearestCode
    del MODELS[NearestCode.name]


def expected_render(model: NearestCode, lr: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Written from the model's definition: the conv's code read by grid_sample (nearest, at the output
    pixel centres -1 + (2i + 1) / n), then the linear layer, as plain torch ops."""
    with torch.no_grad():
        code = model.encoder((lr - 0.5) / 0.5)
        centres = [-1 + (2 * torch.arange(n, dtype=torch.float32) + 1) / n for n in size]
        grid = torch.stack(torch.meshgrid(centres[1], centres[0], indexing='xy'), -1)[None]  # (x, y) pairs
        picked = F.grid_sample(code, grid, mode='nearest', align_corners=False)[0].permute(1, 2, 0)
        return (picked @ model.to_rgb.weight.T + model.to_rgb.bias).permute(2, 0, 1)[None] * 0.5 + 0.5


def test_the_registry_is_what_the_settings_read(registered):
    cfg = settings.parse(['--model=nearest-code'], 'inference')
    assert settings.model_options(cfg)['model'] == 'nearest-code'
    assert 'nearest-code' in settings.help_text('train')
    assert isinstance(build_model('nearest-code'), NearestCode)
    assert model_name({'model': 'nearest-code', 'encoder': 'rdn'}) == 'RDN-NearestCode'
    with pytest.raises(ValueError, match="model must be one of .*'nearest-code'"):
        build_model('nearest')
    with pytest.raises(ValueError, match='registered already'):
        register(NearestCode)


def test_a_name_or_a_setting_is_never_taken_silently():
    """Another class under a registered name is refused (not only the same class twice), and so is a model
    with a setting no rule checks; the registry is left as it was."""
    before, rules = dict(MODELS), dict(OPTION_RULES)

    class Impostor(NearestCode):
        name = 'liif'

    class Unruled(NearestCode):
        name = 'unruled'
        settings = ('unruled_width',)

    try:
        with pytest.raises(ValueError, match="'liif' is registered already"):
            register(Impostor)
        with pytest.raises(ValueError, match=r"no rule for \['unruled_width'\]"):
            register(Unruled)
        assert MODELS == before and MODELS['liif'] is LIIF and OPTION_RULES == rules
    finally:  # a registry that took either stays wrong for every later test otherwise
        MODELS.clear(), MODELS.update(before), OPTION_RULES.clear(), OPTION_RULES.update(rules)


@pytest.mark.slow
def test_a_registered_model_runs_everywhere(registered, data, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run = tmp_path / 'run'
    done = train.main(tiny(data, run, '--model=nearest-code', '--epochs=2', '--batch_size=4'))
    assert done['epoch'] == 2 and np.isfinite(done['best_psnr'])
    weights = run / 'best.pth'
    model = model_from_checkpoint(weights).eval()
    assert isinstance(model, NearestCode)

    rows = test_script.main([f'--weights={weights}', f'--test_root={ROOT / "tests/data/benchmark"}',
                             '--test_sets=Set5', '--test_scales=3', f'--out_dir={tmp_path / "test"}'])
    assert rows[0]['images'] == 5 and np.isfinite(rows[0]['psnr'])

    image = ROOT / 'figure' / 'example_lr.png'
    out = inference.main([f'--weights={weights}', f'--input={image}', '--scale=1.5', f'--output={tmp_path}/sr.png'])
    lr = image_to_tensor(read_image(image))[None]
    expect = expected_render(model, lr, (192, 192))
    written = image_to_tensor(load_uint8(out[0]))[None]
    assert (written - expect.clamp(0, 1)).abs().max() <= 0.5 / 255 + 1e-6  # 8-bit rounding only

    viewer = Viewer(image, model)
    view = viewer.render(parse_view('mode=liif&zoom=2.5&top=40&left=60&height=50&width=70', viewer.shape))
    window = expected_render(model, lr, (320, 320))[:, :, 40:90, 60:130].clamp(0, 1)
    assert np.abs(view / 255.0 - window[0].permute(1, 2, 0).numpy()).max() <= 0.5 / 255 + 1e-6

    export(model, tmp_path / 'm.onnx')
    onnx = OnnxModel(tmp_path / 'm.onnx')
    assert onnx.options == model.options
    sr = onnx.render(lr[:, :, :30, :40].numpy(), (70, 90), (0, 0, 70, 90), 1000)
    assert np.abs(sr - expected_render(model, lr[:, :, :30, :40], (70, 90)).numpy()).max() <= 1e-5


def test_the_docs_list_every_model():
    """docs/models.md's zoo table has a row for each registered model's setting."""
    table = (ROOT / 'docs' / 'models.md').read_text()
    for name in MODELS:
        if name != NearestCode.name:
            assert f"`model='{name}'`" in table, name
    assert set(OPTION_RULES) >= {'hidden_list', 'upsample_scale'}
