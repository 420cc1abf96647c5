"""test.py: the official checkpoint reproduces the official Set5 x4 PSNR; results tables are written."""
import csv
import json
import math
import re
import shutil
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image
from skimage.metrics import structural_similarity

from checkpoint import model_from_checkpoint
from helpers import load_test_script
from model import build_model

test_script = load_test_script()

OFFICIAL_SET5_X4 = 32.2394  # the official LIIF code's Set5 x4 PSNR for this checkpoint


def read_csv(path):
    with open(path, newline='') as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
def test_official_checkpoint_reproduces_set5_x4(benchmark_root, official_weights, tmp_path):
    summary = test_script.main([f'--test_root={benchmark_root}', f'--weights={official_weights}',
                                '--test_sets=Set5', '--test_scales=[4]', f'--out_dir={tmp_path}'])
    [row] = summary
    assert abs(row['psnr'] - OFFICIAL_SET5_X4) < 0.005, row
    assert row['images'] == 5 and 0.85 < row['ssim'] < 0.95
    per_image = read_csv(tmp_path / 'test_per_image.csv')
    assert sorted(r['name'] for r in per_image) == ['baby', 'bird', 'butterfly', 'head', 'woman']


def reference_psnr(sr: np.ndarray, hr: np.ndarray, shave: int) -> float:
    """The official benchmark PSNR, from its definition: Y-weighted difference, `shave` border removed."""
    diff = ((sr - hr) * np.array([65.738, 129.057, 25.064]) / 256).sum(-1)[shave:-shave, shave:-shave]
    return -10 * math.log10((diff ** 2).mean())


def reference_ssim(sr: np.ndarray, hr: np.ndarray, shave: int) -> float:
    """SSIM of Wang et al. (scikit-image, MATLAB settings) on Y of 8-bit images as MATLAB's rgb2ycbcr
    gives it for uint8 input (BT.601, 0-255 units, rounded to integers)."""
    def y(img):
        img = np.floor(img * 255 + 0.5)[shave:-shave, shave:-shave]
        return np.floor(16 + img @ np.array([65.481, 128.553, 24.966]) / 255 + 0.5)
    return structural_similarity(y(sr), y(hr), gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
                                 data_range=255)


@pytest.fixture(scope='module')
def small_set(benchmark_root, tmp_path_factory):
    """A benchmark folder of two small HR crops (no LR files: every scale is made on the fly)."""
    root = tmp_path_factory.mktemp('bench')
    (root / 'Tiny' / 'HR').mkdir(parents=True)
    for name, y, x, h, w in [('baby', 200, 180, 61, 57), ('head', 60, 90, 50, 64)]:
        hr = cv2.imread(str(benchmark_root / 'Set5' / 'HR' / f'{name}.png'))
        cv2.imwrite(str(root / 'Tiny' / 'HR' / f'{name}.png'), hr[y:y + h, x:x + w])
    return root


@pytest.mark.slow
def test_non_integer_scales_write_tables_and_images(small_set, official_weights, tmp_path):
    summary = test_script.main([f'--test_root={small_set}', f'--weights={official_weights}',
                                '--test_sets=Tiny', '--test_scales=[2.5,3]', f'--out_dir={tmp_path}',
                                '--save_images=True', '--chunk=7000', '--device=cpu'])
    assert [(r['dataset'], r['scale'], r['images']) for r in summary] == [('Tiny', 2.5, 2), ('Tiny', 3, 2)]

    table = read_csv(tmp_path / 'test_results.csv')
    assert [(r['dataset'], float(r['scale'])) for r in table] == [('Tiny', 2.5), ('Tiny', 3.0)]
    per_image = read_csv(tmp_path / 'test_per_image.csv')
    assert len(per_image) == 4
    for r in table:  # averages of the per-image rows
        rows = [p for p in per_image if p['scale'] == r['scale']]
        assert float(r['psnr']) == pytest.approx(sum(float(p['psnr']) for p in rows) / 2, abs=1e-9)
        assert float(r['ssim']) == pytest.approx(sum(float(p['ssim']) for p in rows) / 2, abs=1e-9)
    markdown = (tmp_path / 'test_results.md').read_text()
    assert '| Tiny |' in markdown and 'x2.5' in markdown and 'x3' in markdown
    assert f"{summary[0]['psnr']:.4f} / {summary[0]['ssim']:.4f}" in markdown
    assert (tmp_path / 'test_config.json').is_file()

    # x3 on the fly, scored independently: official LR protocol (floor, crop, PIL bicubic), the PSNR
    # equation and scikit-image's SSIM
    model = model_from_checkpoint(official_weights).eval()
    for p in per_image:
        if float(p['scale']) != 3:
            continue
        hr = cv2.imread(str(small_set / 'Tiny' / 'HR' / f"{p['name']}.png"))[:, :, ::-1]
        h, w = hr.shape[0] // 3, hr.shape[1] // 3
        hr = np.ascontiguousarray(hr[:h * 3, :w * 3])
        lr = np.asarray(Image.fromarray(hr).resize((w, h), Image.BICUBIC))
        lr = torch.from_numpy(lr.astype(np.float32) / 255).permute(2, 0, 1)[None]
        sr = model.render(lr, (h * 3, w * 3), chunk=7000).clamp(0, 1)[0].permute(1, 2, 0).double().numpy()
        assert float(p['psnr']) == pytest.approx(reference_psnr(sr, hr / 255.0, 3), abs=1e-4)
        assert float(p['ssim']) == pytest.approx(reference_ssim(sr, hr / 255.0, 3), abs=1e-5)
        saved = cv2.imread(str(tmp_path / 'images' / 'Tiny' / 'x3' / f"{p['name']}.png"))
        assert saved.shape == (h * 3, w * 3, 3)
    assert (tmp_path / 'images' / 'Tiny' / 'x2.5' / 'baby.png').is_file()


def test_degraded_inputs_are_scored_as_written(small_set, official_weights, tmp_path):
    """--degrade=jpeg40+noise10 at x3, scored independently: the official on-the-fly LR, OpenCV's JPEG at
    quality 40, then noise: the same noise as test.py's only through the seeding rule written in the
    docs (numpy's default_rng of [crc32 of the image name, LR height, LR width], standard normal, one
    plane per channel, 10/255, clipped, rounded); the clean score of the same run is higher."""
    argv = [f'--test_root={small_set}', f'--weights={official_weights}', '--test_sets=Tiny', '--test_scales=[3]',
            f'--out_dir={tmp_path}', '--device=cpu']
    [clean] = test_script.main(argv)
    [degraded] = test_script.main([*argv, '--degrade=jpeg40+noise10'])
    assert degraded['psnr'] < clean['psnr'] - 1
    model = model_from_checkpoint(official_weights).eval()
    per_image = read_csv(tmp_path / 'test_per_image.csv')
    for p in per_image:
        hr = cv2.imread(str(small_set / 'Tiny' / 'HR' / f"{p['name']}.png"))[:, :, ::-1]
        h, w = hr.shape[0] // 3, hr.shape[1] // 3
        hr = np.ascontiguousarray(hr[:h * 3, :w * 3])
        lr = np.asarray(Image.fromarray(hr).resize((w, h), Image.BICUBIC))
        lr = cv2.imdecode(cv2.imencode('.jpg', lr[:, :, ::-1].copy(), [cv2.IMWRITE_JPEG_QUALITY, 40])[1], 1)[:, :, ::-1]
        rng = np.random.default_rng([zlib.crc32(p['name'].encode()), h, w])
        noise = rng.standard_normal((3, h, w), dtype=np.float32).transpose(1, 2, 0) * np.float32(10 / 255)
        lr = np.round(np.clip(lr / np.float32(255) + noise, 0, 1) * 255).astype(np.float32) / 255
        lr = torch.from_numpy(lr).permute(2, 0, 1)[None]
        sr = model.render(lr, (h * 3, w * 3)).clamp(0, 1)[0].permute(1, 2, 0).double().numpy()
        assert float(p['psnr']) == pytest.approx(reference_psnr(sr, hr / 255.0, 3), abs=1e-4)


@pytest.mark.parametrize('setup, args, message', [
    (None, ['--weights={official}', '--degrade=jpeg0'], "degrade: 'jpeg0' in 'jpeg0' is not jpegQ"),
    (None, ['--weights={official}', '--degrade=jpeg40+sharpen2'], "'sharpen2' in 'jpeg40+sharpen2'"),
    ('text', ['--weights={tmp}/bad.pth'], 'not a readable PyTorch checkpoint'),
    ('folder', ['--weights={tmp}/folder'], 'is a folder, not a checkpoint'),
    (None, ['--weights={official}', '--experiment=rdn-liif'], "encoder='rdn' but"),
    (None, ['--weights={official}', '--hidden_list=[256,256]'], 'hidden_list=[256, 256] but'),
    (None, ['--weights={official}', '--test_sets=Nowhere'], 'Nowhere'),
    ('empty_set', ['--weights={official}', '--test_sets=Empty'], 'no image files'),
    (None, ['--weights={official}', '--test_scales=[1000]'], 'too large'),
    (None, ['--weights={official}', '--device=tpu'], "device 'tpu'"),
    (None, ['--weights={official}', '--input=a.png'], 'unknown setting --input for test.py'),
    (None, ['--weights={official}', '--test_sets='], 'test_sets and test_scales must not be empty'),
    ('text', ['--weights={official}', '--out_dir={tmp}/bad.pth/out'], 'bad.pth is a file, not a folder'),
])
def test_a_refused_run_writes_nothing(small_set, official_weights, tmp_path, setup, args, message):
    if setup == 'text':
        (tmp_path / 'bad.pth').write_text('not a checkpoint')
    if setup == 'folder':
        (tmp_path / 'folder').mkdir()
    root = small_set
    if setup == 'empty_set':
        root = tmp_path / 'bench'
        (root / 'Empty' / 'HR').mkdir(parents=True)
    argv = [f'--test_root={root}', '--test_sets=Tiny', f'--out_dir={tmp_path}/out', '--device=cpu',
            *(a.format(tmp=tmp_path, official=official_weights) for a in args)]
    with pytest.raises(ValueError, match=re.escape(message)):
        test_script.main(argv)
    assert not (tmp_path / 'out').exists()


def test_model_settings_follow_the_checkpoint_and_threads_are_set(small_set, tmp_path):
    """No model settings given: the checkpoint's model (a [16] decoder; the defaults say [256] x 4) is
    evaluated and the saved settings say so. --threads sets torch's CPU threads."""
    torch.manual_seed(0)
    model = build_model(hidden_list=[16])
    torch.save({'model': model.state_dict(), 'options': model.options}, tmp_path / 'small.pth')
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        [row] = test_script.main([f'--test_root={small_set}', f'--weights={tmp_path / "small.pth"}',
                                  '--test_sets=Tiny', '--test_scales=[4]', f'--out_dir={tmp_path / "out"}',
                                  '--device=cpu', '--threads=3'])
        assert torch.get_num_threads() == 3
    finally:
        torch.set_num_threads(threads)
    saved = json.loads((tmp_path / 'out' / 'test_config.json').read_text())
    assert saved['hidden_list'] == [16] and saved['threads'] == 3 and row['images'] == 2


@pytest.mark.parametrize('tf32', [False, True])
def test_tf32_setting_reaches_the_cuda_backends(small_set, tmp_path, tf32):
    """fp32 is true fp32 on CUDA unless --tf32=True: PyTorch's own default lets cuDNN use TF32, which moves
    the official scores in their last digit. The flags are process-wide, so they are set back after."""
    torch.manual_seed(0)
    model = build_model(hidden_list=[16])
    torch.save({'model': model.state_dict(), 'options': model.options}, tmp_path / 'small.pth')
    before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = not tf32
    try:
        test_script.main([f'--test_root={small_set}', f'--weights={tmp_path / "small.pth"}', '--test_sets=Tiny',
                          '--test_scales=[4]', f'--out_dir={tmp_path / "out"}', '--device=cpu', f'--tf32={tf32}'])
        assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) == (tf32, tf32)
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before


# ---- the celebA-HQ protocol on paired folders: every pair, the LR image whole, every HR pixel, RGB PSNR

PAIRS = {'a.png': ((6, 5), (24, 20)), 'b.png': ((5, 7), (22, 29)), 'c.png': ((6, 6), (24, 24))}  # x4; b's HR is cropped


@pytest.fixture(scope='module')
def paired_folder(tmp_path_factory) -> Path:
    """lr/ and hr/ with three random 8-bit pairs of scale 4 (b's HR 2 rows and 1 column larger than 4 x LR)."""
    root = tmp_path_factory.mktemp('pairs')
    rng = np.random.default_rng(0)
    for name, (lr_size, hr_size) in PAIRS.items():
        for kind, size in (('lr', lr_size), ('hr', hr_size)):
            (root / kind).mkdir(exist_ok=True)
            assert cv2.imwrite(str(root / kind / name), rng.integers(0, 256, (*size, 3), dtype=np.uint8))
    return root


def rgb_psnr_every_pixel(model, lr: np.ndarray, hr: np.ndarray, shave: int = 0) -> float:
    """The official celebA-HQ test, written out: queries at the centres of every pixel of the HR image
    cropped to 4 x the LR size, decoded by the model's reference path, clamped; PSNR over all RGB values
    (the DIV2K test: with `shave` pixels left out on each side)."""
    hr = hr[:4 * lr.shape[0], :4 * lr.shape[1]] / 255
    height, width = hr.shape[:2]
    rows, cols = (-1 + (2 * np.arange(n) + 1) / n for n in (height, width))
    coord = np.stack(np.meshgrid(rows, cols, indexing='ij'), -1).reshape(1, -1, 2)
    cell = np.broadcast_to([2 / height, 2 / width], coord.shape)
    with torch.no_grad():
        pred = model(torch.from_numpy(lr.transpose(2, 0, 1) / np.float32(255))[None].float(),
                     torch.from_numpy(coord).float(), torch.from_numpy(np.ascontiguousarray(cell)).float())
    pred = np.clip(pred[0].double().numpy().reshape(height, width, 3), 0, 1)
    inside = (slice(shave, height - shave), slice(shave, width - shave))
    return -10 * math.log10(((pred[inside] - hr[inside]) ** 2).mean())


def test_celebahq_protocol_on_paired_folders(paired_folder, tmp_path):
    torch.manual_seed(0)
    model = build_model(hidden_list=[16])
    torch.save({'model': model.state_dict(), 'options': model.options}, tmp_path / 'small.pth')
    [row] = test_script.main([f'--test_lr_dir={paired_folder / "lr"}', f'--test_dir={paired_folder / "hr"}',
                              '--test_protocol=rgb', f'--weights={tmp_path / "small.pth"}', '--device=cpu',
                              f'--out_dir={tmp_path / "out"}', '--test_root=nowhere', '--save_images=True'])
    reference = model_from_checkpoint(tmp_path / 'small.pth', fast=False).eval()
    read = {name: [cv2.imread(str(paired_folder / kind / name))[:, :, ::-1] for kind in ('lr', 'hr')] for name in PAIRS}
    expected = {Path(name).stem: rgb_psnr_every_pixel(reference, lr, hr) for name, (lr, hr) in read.items()}
    per_image = read_csv(tmp_path / 'out' / 'test_per_image.csv')
    assert {r['name']: float(r['psnr']) for r in per_image} == pytest.approx(expected, abs=1e-4)
    assert 'ssim' not in per_image[0] and 'ssim' not in row
    assert (row['dataset'], row['scale'], row['images']) == ('pairs0/hr', 4.0, 3)
    assert row['psnr'] == pytest.approx(sum(expected.values()) / 3, abs=1e-4)  # the mean over images
    assert (tmp_path / 'out' / 'test_results.md').read_text().startswith('| PSNR (dB) | x4 |')
    assert cv2.imread(str(tmp_path / 'out' / 'images' / 'pairs0' / 'hr' / 'x4' / 'b.png')).shape == (20, 28, 3)


def test_div2k_protocol_shaves_scale_plus_six(tmp_path):
    """test_protocol='div2k' (the official DIV2K validation): RGB PSNR with 4 + 6 pixels shaved at x4, no SSIM."""
    rng = np.random.default_rng(1)
    for name, (h, w) in {'0801.png': (12, 11), '0802.png': (10, 13)}.items():
        for kind, scale in (('lr', 1), ('hr', 4)):
            (tmp_path / kind).mkdir(exist_ok=True)
            assert cv2.imwrite(str(tmp_path / kind / name), rng.integers(0, 256, (h * scale, w * scale, 3), dtype=np.uint8))
    torch.manual_seed(0)
    model = build_model(hidden_list=[16])
    torch.save({'model': model.state_dict(), 'options': model.options}, tmp_path / 'small.pth')
    [row] = test_script.main([f'--test_lr_dir={tmp_path / "lr"}', f'--test_dir={tmp_path / "hr"}', '--test_protocol=div2k',
                              f'--weights={tmp_path / "small.pth"}', '--device=cpu', f'--out_dir={tmp_path / "out"}'])
    reference = model_from_checkpoint(tmp_path / 'small.pth', fast=False).eval()
    expected = [rgb_psnr_every_pixel(reference, *(cv2.imread(str(tmp_path / kind / name))[:, :, ::-1]
                                                  for kind in ('lr', 'hr')), shave=10) for name in ('0801.png', '0802.png')]
    assert 'ssim' not in row and row['psnr'] == pytest.approx(sum(expected) / 2, abs=1e-4)


def test_celebahq_experiments_test_on_the_validation_pairs(paired_folder, tmp_path):
    cfg = test_script.settings.parse(['--experiment=celebAHQ-64-128-upsample'])
    assert (cfg.test_lr_dir, cfg.test_dir, cfg.test_protocol) == ('data/celebAHQ/val/64', 'data/celebAHQ/val/128', 'rgb')
    (tmp_path / 'lr').mkdir()
    cv2.imwrite(str(tmp_path / 'lr' / 'a.png'), np.zeros((6, 5, 3), np.uint8))
    cv2.imwrite(str(tmp_path / 'lr' / 'b.png'), np.zeros((11, 10, 3), np.uint8))  # x2 beside x4
    cv2.imwrite(str(tmp_path / 'lr' / 'c.png'), np.zeros((6, 6, 3), np.uint8))
    with pytest.raises(ValueError, match=re.escape('HR / LR ratios [2, 4]')):
        test_script.PairedTestSet(tmp_path / 'lr', paired_folder / 'hr')


@pytest.mark.slow
def test_the_published_real_photo_weights(benchmark_root, official_weights, tmp_path):
    """results/pretrained_models/edsr-baseline-liif-real.pth does what the README says: on Set5 head at x2
    with JPEG-40 plus noise it scores above the official weights (by 2.94 dB when published; 1 dB asked
    here), and on the clean input below them (the fine-tune's cost: 3.56 dB on this image as published)."""
    real = Path(__file__).resolve().parents[1] / 'results' / 'pretrained_models' / 'edsr-baseline-liif-real.pth'
    head = tmp_path / 'bench' / 'Head'  # Set5 head alone, with its released LR file
    for part in ('HR/head.png', 'LR_bicubic/X2/headx2.png'):
        (head / part).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(benchmark_root / 'Set5' / part, head / part)
    scores = {}
    for name, weights in (('official', official_weights), ('real', real)):
        for degrade in ('jpeg40+noise10', ''):
            [row] = test_script.main([f'--test_root={tmp_path / "bench"}', f'--weights={weights}', '--test_sets=Head',
                                      '--test_scales=[2]', f'--degrade={degrade}', f'--out_dir={tmp_path / "out"}'])
            scores[name, degrade] = row['psnr']
    assert scores['real', 'jpeg40+noise10'] > scores['official', 'jpeg40+noise10'] + 1
    assert scores['real', ''] < scores['official', ''] - 1
