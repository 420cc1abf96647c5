"""Helpers that several test files share: tiny train.py settings, checkpoint comparison, settings
checks, the dihedral transforms and scripts run on a full disk, each written once here (fixtures live
in conftest.py)."""
import importlib.util
import os
import resource
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import settings
from fast_liif import FastLIIF
from imgproc import make_coord
from model import EDSR, LIIF, LTE, RDN, MetaSR, Upsample, build_model

ROOT = Path(__file__).resolve().parents[1]
CROP = 80  # side of the T91 crops of the `data` fixture: >= patch_size 16 x scale_max 4
VALID_REPEAT = 10  # validation patches per image in tiny runs (the official recipe uses 160)
STEPS_PER_EPOCH = 4  # tiny runs: 8 training images, batch 2

# The 8 dihedral transforms as (row flip, column flip, transpose), written here independently.
TRANSFORMS = [(h, v, t) for h in (False, True) for v in (False, True) for t in (False, True)]


def load_test_script():
    """test.py as the module `test_script`, loaded by path once (`import test` could find the standard
    library's `test` package) and registered, so that cli.run_main finds it like any script."""
    if 'test_script' not in sys.modules:
        spec = importlib.util.spec_from_file_location('test_script', ROOT / 'test.py')
        sys.modules['test_script'] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(sys.modules['test_script'])
    return sys.modules['test_script']


def tiny(data: Path, out_dir: Path, *extra: str) -> list[str]:
    """train.py on the `data` fixture: 16-px LR patches, 64 queries, batch 2, a [32] decoder."""
    return [f'--train_dir={data / "train"}', f'--valid_dir={data / "valid"}', f'--out_dir={out_dir}',
            '--patch_size=16', '--sample_q=64', '--batch_size=2', '--repeat=1', '--hidden_list=[32]',
            '--num_workers=0', '--valid_first=1', f'--valid_repeat={VALID_REPEAT}', '--save_every=1', *extra]


def tiny_liif() -> FastLIIF:
    """A seeded LIIF small enough to compile quickly: a one-block 8-channel EDSR, a [16] decoder."""
    torch.manual_seed(0)
    return FastLIIF(EDSR(n_resblocks=1, n_feats=8), 'edsr-baseline', hidden_list=[16])


def on_path(model: LIIF, fast: bool) -> LIIF:
    """The same LIIF on the fast path (FastLIIF) or the reference one (LIIF): the modules are shared,
    so both compute with the same parameters."""
    cls = FastLIIF if fast else LIIF
    if type(model) is cls:
        return model
    twin = cls(model.encoder, model.options['encoder'], **{k: model.options[k] for k in LIIF.settings})
    twin.imnet = model.imnet
    return twin.train(model.training)


def load(path: Path) -> dict:
    return torch.load(path, map_location='cpu', weights_only=True)


def assert_same_tensors(a, b, atol=1e-6):
    """Equal nested dicts / lists of tensors and numbers."""
    if isinstance(a, dict):
        assert a.keys() == b.keys()
        for k in a:
            assert_same_tensors(a[k], b[k], atol)
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            assert_same_tensors(x, y, atol)
    elif torch.is_tensor(a):
        assert a.shape == b.shape and torch.allclose(a.double(), b.double(), rtol=0, atol=atol), (a - b).abs().max()
    else:
        assert a == b


def check_problems(argv: list[str], job: str) -> str:
    """The message with which settings.check refuses argv's settings for `job`."""
    cfg = settings.parse(argv)
    with pytest.raises(ValueError) as err:
        settings.check(cfg, job)
    return str(err.value)


def transform(img, hflip, vflip, transpose):
    if hflip:
        img = np.flip(img, 0)
    if vflip:
        img = np.flip(img, 1)
    if transpose:
        img = np.swapaxes(img, 0, 1)
    return np.ascontiguousarray(img)


def pixel_index(coord, n):
    """Pixel-centre coordinate -1 + (2i + 1) / n -> integer i, insisting it is a centre."""
    i = ((coord + 1) * n - 1) / 2
    assert np.allclose(i, np.round(i), atol=1e-3)
    return np.round(i).astype(int)


def same_items(a, b):
    return a.keys() == b.keys() and all(
        torch.equal(a[k], b[k]) if isinstance(a[k], torch.Tensor) else a[k] == b[k] for k in a)


def small(kind: str):
    """Small random models of every kind: LIIF (fast and reference), MetaSR, LTE, the baselines."""
    torch.manual_seed(3)
    if kind.startswith('liif'):
        return (FastLIIF if kind == 'liif-fast' else LIIF)(EDSR(n_resblocks=2, n_feats=16), 'edsr-baseline',
                                                            hidden_list=[32, 32]).eval()
    if kind == 'metasr':
        return MetaSR(RDN(g0=8, n_blocks=2, n_layers=2, growth=8), 'rdn').eval()
    if kind == 'lte':
        return LTE(EDSR(n_resblocks=2, n_feats=16), 'edsr-baseline', hidden_list=[32, 32], hidden_dim=16).eval()
    scale = int(kind[-1])
    return Upsample(EDSR(n_resblocks=2, n_feats=16, upsample_scale=scale), 'edsr-baseline', scale).eval()


def run_limited(args: list[str], limit: int, env: dict | None = None) -> subprocess.CompletedProcess:
    """`python ARGS` from the repository root with every file it writes limited to `limit` bytes
    (RLIMIT_FSIZE): a write past it fails with EFBIG (CPython ignores SIGXFSZ), as on a full disk."""
    def limit_files():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, preexec_fn=limit_files,
                          env={**(env or os.environ), 'PYTHONDONTWRITEBYTECODE': '1'})


def assert_disk_full(done: subprocess.CompletedProcess, path: Path) -> None:
    """Exit status 2 with one `error:` line on stderr that names `path` and says the disk is full, no
    traceback, and no temporary file left beside `path`."""
    errors = [line for line in done.stderr.splitlines() if line.startswith('error:')]
    assert done.returncode == 2 and len(errors) == 1 and 'Traceback' not in done.stderr, done.stderr[-3000:]
    assert 'the disk is full' in errors[0] and str(path) in errors[0], errors[0]
    assert not [p.name for p in path.parent.iterdir() if '.tmp' in p.name]


def liif_edsr(**options) -> LIIF:
    """EDSR-baseline-LIIF (options: hidden_list, feat_unfold, local_ensemble, cell_decode, fast)."""
    return build_model('liif', 'edsr-baseline', **options)


def liif_rdn(**options) -> LIIF:
    """RDN-LIIF (options as liif_edsr)."""
    return build_model('liif', 'rdn', **options)


def coord_cell(height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The (coord, cell) query pair, each (H*W, 2), that renders an image of height x width."""
    coord = make_coord((height, width))
    cell = torch.tensor([2 / height, 2 / width]).expand_as(coord).clone()
    return coord, cell


def without_reach(path: Path, out: Path) -> None:
    """The exported file at `path` written to `out` without its crop's reach, as exports before it had."""
    import onnx

    import onnx_model
    proto = onnx.load(str(path))
    kept = [p for p in proto.metadata_props if p.key != onnx_model.REACH_KEY]
    del proto.metadata_props[:]
    proto.metadata_props.extend(kept)
    onnx.save(proto, str(out))
