"""The paired and size-varied training data (official sr-implicit-paired / sr-implicit-uniform-varied),
checked on folders made here from real T91 / BSDS200 images, against index arithmetic, PIL and the formulas."""
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from numpy.lib.stride_tricks import sliding_window_view
from PIL import Image
from torch.utils.data import DataLoader

import settings
import train
from dataset import PairedDataset, VariedDataset, list_images
from helpers import ROOT, TRANSFORMS, check_problems, load, pixel_index, same_items, transform
from imgproc import imresize, load_uint8, write_image
from model import build_model


def as_uint8(t: torch.Tensor) -> np.ndarray:
    """A (3, H, W) or (N, 3) float tensor that holds 8-bit values, as exact uint8 (HWC for images)."""
    x = t.numpy() * 255
    assert np.allclose(x, np.round(x), atol=1e-3)
    x = np.round(x).astype(np.uint8)
    return x.transpose(1, 2, 0) if x.ndim == 3 else x


def centres(n: int) -> np.ndarray:
    """Pixel-centre coordinates -1 + (2i + 1) / n of n pixels, in float64."""
    return -1 + (2 * np.arange(n) + 1) / n


def box_down(img: np.ndarray, s: int) -> np.ndarray:
    """The mean of each s x s block, rounded: a downscale that commutes exactly with crops at multiples
    of s, flips and transposes."""
    h, w = img.shape[0] // s, img.shape[1] // s
    return np.round(img[:h * s, :w * s].reshape(h, s, w, s, 3).mean((1, 3))).astype(np.uint8)


def pil_short_side(img: np.ndarray, short: int) -> np.ndarray:
    """torchvision Resize(short) semantics, written from its documentation: the shorter side becomes
    `short`, the longer one int(short * long / short_old); PIL bicubic."""
    h, w = img.shape[:2]
    size = (short, int(short * w / h)) if h <= w else (int(short * h / w), short)
    return np.asarray(Image.fromarray(img).resize((size[1], size[0]), Image.BICUBIC))


@pytest.fixture(scope='module')
def x2_folders(tmp_path_factory, train_root) -> tuple:
    """lr/ and hr/: 4 crops of T91 images (two sizes) as HR, MATLAB-bicubic x1/2 as LR (like DIV2K's X2
    files); hr/ has one extra bottom row that the pairing must ignore."""
    root = tmp_path_factory.mktemp('x2')
    sizes = [(49, 64), (41, 56), (49, 64), (41, 56)]  # odd HR heights: one row beyond 2 x LR
    for path, (h, w) in zip(list_images(train_root / 'T91')[4:8], sizes):
        hr = load_uint8(path)[:h, :w]
        write_image(root / 'hr' / path.name, hr)
        write_image(root / 'lr' / path.name, imresize(hr[:h - 1], 0.5))
    return root / 'lr', root / 'hr'


def pair_arrays(lr_dir, hr_dir):
    return [(load_uint8(a), load_uint8(b)) for a, b in zip(list_images(lr_dir), list_images(hr_dir))]


def locate(patch: np.ndarray, image: np.ndarray) -> list[tuple]:
    """Every (transform, x0, y0) with transform(image[x0:x0+p, y0:y0+p]) == patch, by exhaustive search."""
    p = patch.shape[0]
    windows = sliding_window_view(image, (p, p, 3))[:, :, 0]  # (H-p+1, W-p+1, p, p, 3)
    found = []
    for flags in TRANSFORMS:
        undone = patch
        # undo the transform: transpose first, then the flips (each is its own inverse)
        if flags[2]:
            undone = undone.swapaxes(0, 1)
        undone = transform(undone, flags[0], flags[1], False)
        for x0, y0 in zip(*np.nonzero((windows == undone).all((2, 3, 4)))):
            found.append((flags, int(x0), int(y0)))
    return found


def test_paired_crops_are_aligned_and_augmented_together(x2_folders):
    """Find each LR patch in its LR image (position and transform, by search); the HR patch (all pixels
    as queries, raster order) must be the same transform of HR[x0*2 : (x0+p)*2, y0*2 : (y0+p)*2]."""
    p, s = 8, 2
    pairs = pair_arrays(*x2_folders)
    ds = PairedDataset(*x2_folders, patch_size=p, sample_q=0, repeat=40)
    seen, corners = set(), {0: [], 1: []}
    for index in range(len(ds)):
        item = ds[index]
        lr_image, hr_image = pairs[index % 4]
        lr = as_uint8(item['lr'])
        # queries: every HR pixel in raster order, coordinates at pixel centres, cell = one HR pixel
        n = p * s
        grid = np.stack(np.meshgrid(centres(n), centres(n), indexing='ij'), -1).reshape(-1, 2)
        assert item['coord'].shape == (n * n, 2)
        assert np.allclose(item['coord'].numpy(), grid, atol=1e-6)
        assert np.allclose(item['cell'].numpy(), 2 / n, atol=1e-7)
        assert item['scale'] == 2.0
        gt = as_uint8(item['gt'])
        found = locate(lr, lr_image)
        aligned = [(flags, x0, y0) for flags, x0, y0 in found if np.array_equal(
            gt, transform(hr_image[x0 * s:(x0 + p) * s, y0 * s:(y0 + p) * s], *flags).reshape(-1, 3))]
        assert aligned, f"item {index}: the HR patch is not the aligned crop of any place of the LR patch"
        if len(found) == 1:  # a unique place (flat patches may fit several)
            flags, x0, y0 = found[0]
            seen.add(flags)
            if index % 4 in (0, 1):
                corners[index % 4].append((x0, y0))
    assert len(seen) == 8  # every flip / transpose combination occurs
    for i in (0, 1):  # crops start anywhere in [0, h - p] x [0, w - p]
        h, w = pairs[i][0].shape[:2]
        assert np.min(corners[i], 0).tolist() == [0, 0] and np.max(corners[i], 0).tolist() == [h - p, w - p]


def test_paired_lr_is_the_downscale_of_the_hr_after_augmentation(tmp_path, train_root):
    """With LR = s x s block means of HR, every augmented item's LR equals the block means of its HR
    patch: the flips and the transpose were the same on both (a real image is not symmetric)."""
    for s in (3, 4):
        for path in list_images(train_root / 'T91')[8:10]:
            hr = load_uint8(path)[:60, :72]
            write_image(tmp_path / f'hr{s}' / path.name, hr)
            write_image(tmp_path / f'lr{s}' / path.name, box_down(hr, s))
        ds = PairedDataset(tmp_path / f'lr{s}', tmp_path / f'hr{s}', patch_size=6, sample_q=0, repeat=16)
        assert ds.scales == [s, s]
        for index in range(len(ds)):
            item = ds[index]
            hr_patch = as_uint8(item['gt']).reshape(6 * s, 6 * s, 3)
            assert np.array_equal(as_uint8(item['lr']), box_down(hr_patch, s))
    # both scales at once: sampled queries batch, all queries (patches of two sizes) do not
    both = PairedDataset([tmp_path / 'lr3', tmp_path / 'lr4'], [tmp_path / 'hr3', tmp_path / 'hr4'], patch_size=6,
                         sample_q=100)
    assert both.scales == [3, 3, 4, 4] and [both[i]['scale'] for i in range(4)] == [3.0, 3.0, 4.0, 4.0]
    with pytest.raises(ValueError, match='HR patch sizes .* differ.*sample_q > 0'):
        PairedDataset([tmp_path / 'lr3', tmp_path / 'lr4'], [tmp_path / 'hr3', tmp_path / 'hr4'], patch_size=6,
                      sample_q=0)


def test_sampled_queries_are_pixels_of_the_hr_patch(x2_folders):
    p, q = 6, 50
    ds = PairedDataset(*x2_folders, patch_size=p, sample_q=q, repeat=6)
    full = PairedDataset(*x2_folders, patch_size=p, sample_q=0, repeat=6)
    for index in range(len(ds)):
        item, whole = ds[index], full[index]
        assert torch.equal(item['lr'], whole['lr'])  # the same crop and flips: queries are drawn last
        n = 2 * p
        rows = pixel_index(item['coord'][:, 0].numpy(), n)
        cols = pixel_index(item['coord'][:, 1].numpy(), n)
        assert len(set(zip(rows, cols))) == q  # without replacement
        hr_patch = as_uint8(whole['gt']).reshape(n, n, 3)
        assert np.array_equal(as_uint8(item['gt']), hr_patch[rows, cols])
        assert item['cell'].shape == (q, 2) and np.allclose(item['cell'].numpy(), 2 / n)


def test_whole_images_crop_hr_to_s_times_lr(x2_folders):
    lr_dir, hr_dir = x2_folders
    first = [list_images(d)[0] for d in (lr_dir, hr_dir)]
    pairs = pair_arrays(lr_dir, hr_dir)
    ds = PairedDataset(lr_dir, hr_dir, patch_size=0, sample_q=100, augment=False, first_k=1)
    assert len(ds) == 1 and ds.files == [first[1]]
    item = ds[0]
    lr, hr = pairs[0]
    assert np.array_equal(as_uint8(item['lr']), lr)
    h, w = 2 * lr.shape[0], 2 * lr.shape[1]
    assert (h, w) == (48, 64) and hr.shape[:2] == (49, 64)
    rows = pixel_index(item['coord'][:, 0].numpy(), h)
    cols = pixel_index(item['coord'][:, 1].numpy(), w)
    assert np.array_equal(as_uint8(item['gt']), hr[rows, cols])
    assert np.allclose(item['cell'].numpy(), [2 / h, 2 / w])
    sample = ds.centre_item(0)
    assert np.array_equal(as_uint8(sample['hr']), hr[:h, :w]) and sample['name'] == first[1].stem


def test_centre_item_is_the_aligned_centre_crop(x2_folders):
    ds = PairedDataset(*x2_folders, patch_size=8, sample_q=0, augment=False)
    lr, hr = pair_arrays(*x2_folders)[1]  # 20x28 LR
    sample = ds.centre_item(1)
    x0, y0 = (20 - 8) // 2, (28 - 8) // 2
    assert np.array_equal(as_uint8(sample['lr']), lr[x0:x0 + 8, y0:y0 + 8])
    assert np.array_equal(as_uint8(sample['hr']), hr[2 * x0:2 * x0 + 16, 2 * y0:2 * y0 + 16])
    assert sample['scale'] == 2.0


def test_paired_items_depend_on_seed_epoch_index_only(x2_folders):
    a = PairedDataset(*x2_folders, patch_size=8, sample_q=30, repeat=3)
    b = PairedDataset(*x2_folders, patch_size=8, sample_q=30, repeat=3, in_memory=False)
    assert all(same_items(a[i], b[i]) for i in range(len(a)))
    epoch0 = [a[i] for i in range(len(a))]
    a.set_epoch(2)
    assert not any(same_items(x, a[i]) for i, x in enumerate(epoch0))
    assert not same_items(epoch0[0], PairedDataset(*x2_folders, patch_size=8, sample_q=30, seed=1)[0])
    serial = list(DataLoader(a, batch_size=4, num_workers=0))
    parallel = list(DataLoader(a, batch_size=4, num_workers=2))
    assert len(serial) == 3 and all(same_items(x, y) for x, y in zip(serial, parallel))


def test_paired_errors(tmp_path, x2_folders):
    lr_dir, hr_dir = x2_folders
    with pytest.raises(ValueError, match='holds 3 images but HR folder .* holds 4'):
        (tmp_path / 'three').mkdir()
        for path in list_images(lr_dir)[:3]:
            (tmp_path / 'three' / path.name).write_bytes(path.read_bytes())
        PairedDataset(tmp_path / 'three', hr_dir)
    with pytest.raises(ValueError, match='1 LR folder.* for 2 HR'):
        PairedDataset(lr_dir, [hr_dir, hr_dir])
    hr = load_uint8(list_images(hr_dir)[0])
    write_image(tmp_path / 'odd_lr' / 'a.png', hr[:20, :25])  # 49 // 20 = 2, but 64 // 2 = 32 != 25
    write_image(tmp_path / 'odd_hr' / 'a.png', hr)
    with pytest.raises(ValueError, match=r'a\.png \(20x25\).*a\.png \(49x64\).*not an integer multiple'):
        PairedDataset(tmp_path / 'odd_lr', tmp_path / 'odd_hr')
    with pytest.warns(UserWarning, match=r'1 of 2 training LR images are smaller .*22x22.*skipped'):
        ds = PairedDataset([lr_dir], [hr_dir], patch_size=22, first_k=2)  # LR 24x32 and 20x28
    assert len(ds.files) == 1 and ds.lr_sizes == [(24, 32)] and ds.scales == [2]
    with pytest.raises(ValueError, match='none is left'):
        PairedDataset(lr_dir, hr_dir, patch_size=40)
    with pytest.raises(ValueError, match='sample_q'):
        PairedDataset(lr_dir, hr_dir, patch_size=4, sample_q=65)
    with pytest.raises(ValueError, match='LR patch sizes differ.*patch_size > 0'):
        PairedDataset(lr_dir, hr_dir, patch_size=0, sample_q=10)
    with pytest.raises(ValueError, match='patch_size must be a non-negative'):
        PairedDataset(lr_dir, hr_dir, patch_size=-1)


@pytest.fixture(scope='module')
def celeb_root(tmp_path_factory, train_root) -> Path:
    """celebA-HQ-like folders laid out as data/README.md says, <split>/<size>: 256 = PIL bicubic of square
    crops of BSDS200 images (standing in for the 1024 originals), 128 / 64 / 32 = PIL bicubic of the 256
    ones (as the official resize script); 4 training and 2 validation images."""
    root = tmp_path_factory.mktemp('celeb')
    for i, path in enumerate(list_images(train_root / 'BSDS200')[:6]):
        img = load_uint8(path)
        side = min(img.shape[:2])
        hr = np.asarray(Image.fromarray(img[:side, :side]).resize((256, 256), Image.BICUBIC))
        split = 'train' if i < 4 else 'val'
        write_image(root / split / '256' / path.name, hr)
        for size in (128, 64, 32):
            write_image(root / split / str(size) / path.name,
                        np.asarray(Image.fromarray(hr).resize((size, size), Image.BICUBIC)))
    return root


@pytest.fixture(scope='module')
def celeb_folders(celeb_root) -> tuple:
    return celeb_root / 'train' / '32', celeb_root / 'train' / '256'


@pytest.mark.slow
def test_prepare_celebahq_script(tmp_path, train_root):
    """scripts/prepare_celebahq.py: <out>/<split>/<size>/<name>.png, 256 = PIL bicubic of the original,
    the smaller sizes PIL bicubic of the 256 image (the official resize script's chain)."""
    originals = {}
    for path, name in zip(list_images(train_root / 'BSDS200')[:3], ('00002.jpg', '00000.png', '00001.jpg')):
        img = load_uint8(path)[:300, :300]
        Image.fromarray(img).save(tmp_path / name)  # JPEG files decode the same way here and in the script
        originals[Path(name).stem] = np.asarray(Image.open(tmp_path / name).convert('RGB'))
    split = tmp_path / 'split.json'
    split.write_text(json.dumps({'train': ['00002.png', '00000.png'], 'val': ['00001.png']}))
    script = [sys.executable, str(ROOT / 'scripts' / 'prepare_celebahq.py'), '--originals', str(tmp_path),
              '--split', str(split), '--out', str(tmp_path / 'out')]
    run = subprocess.run(script, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert "note: the 'train' list is not in sorted name order" in run.stdout and 'wrote 12 images' in run.stdout
    for split_name, stems in (('train', ['00000', '00002']), ('val', ['00001'])):
        for stem in stems:
            hr = Image.fromarray(originals[stem]).resize((256, 256), Image.BICUBIC)
            for size in (256, 128, 64, 32):
                expected = np.asarray(hr.resize((size, size), Image.BICUBIC))
                assert np.array_equal(load_uint8(tmp_path / 'out' / split_name / str(size) / f'{stem}.png'), expected)
        assert len(list((tmp_path / 'out' / split_name / '32').iterdir())) == len(stems)
    split.write_text(json.dumps({'train': ['00000.png', '09999.png'], 'val': []}))
    bad = subprocess.run(script, capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and bad.stderr.startswith('error: 1 image(s)') and '09999' in bad.stderr


def test_varied_sizes_follow_the_schedule(celeb_folders):
    """Item i of n gets a ground truth of side round(32 + 224 * i / (n - 1)) (the official formula),
    resized from its HR image by PIL bicubic; LR is the whole paired image."""
    pairs = pair_arrays(*celeb_folders)
    ds = VariedDataset(*celeb_folders, size_min=32, size_max=256, sample_q=300, repeat=3, augment=False)
    n = len(ds)
    assert n == 12
    sides = []
    for index in range(n):
        item = ds[index]
        lr, hr = pairs[index % 4]
        side = round(2 / item['cell'][0, 0].item())
        assert side == round(2 / item['cell'][0, 1].item())
        assert side == round(32 + (256 - 32) * index / (n - 1))
        assert np.array_equal(as_uint8(item['lr']), lr)
        assert item['scale'] == side / 32
        expected = pil_short_side(hr, side)
        rows = pixel_index(item['coord'][:, 0].numpy(), side)
        cols = pixel_index(item['coord'][:, 1].numpy(), side)
        assert np.array_equal(as_uint8(item['gt']), expected[rows, cols])
        sides.append(side)
    assert sides[0] == 32 and sides[-1] == 256 and sides == sorted(sides)
    steps = np.diff(sides)
    assert steps.max() - steps.min() <= 1  # evenly spread: steps of 224 / 11 rounded


def test_varied_gt_resize_and_flip(celeb_folders):
    """With gt_resize the ground truth is resized twice (to the item's size, flipped or not, then to
    gt_resize); augmentation is the official left-right flip of LR and ground truth together."""
    pairs = pair_arrays(*celeb_folders)
    ds = VariedDataset(*celeb_folders, size_min=32, size_max=256, gt_resize=64, sample_q=0, repeat=4)
    flips = []
    for index in range(len(ds)):
        item = ds[index]
        lr, hr = pairs[index % 4]
        side = round(32 + 224 * index / (len(ds) - 1))
        got_lr = as_uint8(item['lr'])
        flipped = not np.array_equal(got_lr, lr)
        if flipped:
            assert np.array_equal(got_lr, lr[:, ::-1])
        resized = pil_short_side(hr, side)
        expected = pil_short_side(np.ascontiguousarray(resized[:, ::-1]) if flipped else resized, 64)
        assert item['coord'].shape == (64 * 64, 2) and item['scale'] == 2.0
        assert np.array_equal(as_uint8(item['gt']).reshape(64, 64, 3), expected)
        flips.append(flipped)
    assert 0 < sum(flips) < len(flips)


def test_varied_keeps_the_aspect_ratio_and_is_worker_independent(tmp_path, train_root):
    """Non-square HR: the shorter side follows the schedule, the longer one is int(short * long / short_old)."""
    for path in list_images(train_root / 'BSDS200')[:3]:
        hr = load_uint8(path)[:40, :52]
        for name, img in (('', hr), ('tall_', hr.swapaxes(0, 1))):
            write_image(tmp_path / f'{name}hr' / path.name, img)
            write_image(tmp_path / f'{name}lr' / path.name, box_down(img, 4))
    tall = VariedDataset(tmp_path / 'tall_lr', tmp_path / 'tall_hr', size_min=10, size_max=40, sample_q=50, repeat=2)
    ds = VariedDataset(tmp_path / 'lr', tmp_path / 'hr', size_min=10, size_max=40, sample_q=50, repeat=2)
    for index in range(len(ds)):
        short = round(10 + 30 * index / 5)
        long = int(short * 52 / 40)
        assert torch.allclose(ds[index]['cell'], torch.tensor([2 / short, 2 / long]))
        assert torch.allclose(tall[index]['cell'], torch.tensor([2 / long, 2 / short]))
    single = VariedDataset(tmp_path / 'lr', tmp_path / 'hr', size_min=10, size_max=40, sample_q=50, first_k=1)
    assert torch.allclose(single[0]['cell'], torch.tensor([2 / 40, 2 / 52]))  # one item: size_max
    ds.set_epoch(3)
    serial = list(DataLoader(ds, batch_size=2, num_workers=0))
    parallel = list(DataLoader(ds, batch_size=2, num_workers=2))
    assert all(same_items(x, y) for x, y in zip(serial, parallel))
    with pytest.raises(ValueError, match='size_min'):
        VariedDataset(tmp_path / 'lr', tmp_path / 'hr', size_min=50, size_max=40)
    with pytest.raises(ValueError, match='sample_q.*101.*size_min'):
        VariedDataset(tmp_path / 'lr', tmp_path / 'hr', size_min=10, size_max=40, sample_q=101)
    with pytest.raises(ValueError, match='gt_resize > 0 and square'):
        VariedDataset(tmp_path / 'lr', tmp_path / 'hr', size_min=10, size_max=40, sample_q=0, gt_resize=20)


def test_data_settings_are_checked(x2_folders, tmp_path, capsys):
    lr_dir, hr_dir = (str(d) for d in x2_folders)
    folders = [f'--train_dir={hr_dir}', f'--valid_dir={hr_dir}', f'--valid_lr_dir={lr_dir}']
    message = check_problems([*folders, '--train_data=pairs'], 'train')
    assert "train_data must be 'downsampled', 'degraded', 'paired' or 'varied'" in message
    message = check_problems([*folders, '--train_data=paired', f'--train_lr_dir={lr_dir},{lr_dir}',
                              f'--valid_lr_dir={tmp_path / "none"}'], 'train')
    assert 'train_lr_dir has 2 folder(s) for the 1 of train_dir' in message
    assert 'valid_lr_dir' in message and 'does not exist' in message
    message = check_problems([*folders, '--train_data=varied', f'--train_lr_dir={tmp_path / "none"}',
                              '--sample_q=0', '--size_min=9', '--size_max=8'], 'train')
    assert 'train_lr_dir' in message and 'size_min (9) is larger than size_max (8)' in message
    assert 'needs gt_resize > 0' in message
    message = check_problems([f'--train_dir={hr_dir}', f'--valid_dir={hr_dir}', '--patch_size=0'], 'train')
    assert 'patch_size and sample_q must be > 0' in message
    # folders that do not pair: one `error:` line from train.py, exit status 2
    capsys.readouterr()
    argv = [*folders, '--train_data=paired', f'--train_lr_dir={hr_dir}', f'--train_dir={lr_dir}', '--patch_size=8',
            f'--out_dir={tmp_path / "run"}']  # LR and HR swapped
    assert train.run_main(train.main, argv) == 2
    err = capsys.readouterr().err
    assert err.startswith('error: LR ') and 'not an integer multiple' in err and err.count('\n') == 1
    # what is fine: paired data with whole images and all queries, validated on paired folders
    settings.check(settings.parse([*folders, '--train_data=paired', f'--train_lr_dir={lr_dir}', '--patch_size=0',
                               '--sample_q=0']), 'train')


def test_experiments_are_the_official_recipes():
    x2 = settings.parse(['--experiment=edsr-baseline-x2'])
    assert (x2.train_data, x2.patch_size, x2.sample_q, x2.repeat, x2.batch_size) == ('paired', 48, 0, 20, 16)
    assert x2.train_lr_dir == ['data/DIV2K/DIV2K_train_LR_bicubic/X2'] and x2.train_dir == ['data/DIV2K/DIV2K_train_HR']
    assert (x2.valid_lr_dir, x2.valid_dir) == ('data/DIV2K/DIV2K_valid_LR_bicubic/X2', 'data/DIV2K/DIV2K_valid_HR')
    assert (x2.valid_first, x2.valid_repeat, x2.epochs, x2.milestones, x2.gamma) == (10, 160, 1000, [200, 400, 600, 800], 0.5)
    assert (x2.model, x2.upsample_scale, x2.encoder) == ('upsample', 2, 'edsr-baseline')
    assert settings.parse(['--experiment=rdn-x2']).encoder == 'rdn'
    for lr_size, hr_size, scale in ((32, 256, 8), (64, 128, 2)):
        liif = settings.parse([f'--experiment=celebAHQ-{lr_size}-{hr_size}-liif'])
        up = settings.parse([f'--experiment=celebAHQ-{lr_size}-{hr_size}-upsample'])
        for cfg in (liif, up):
            assert (cfg.train_data, cfg.size_min, cfg.size_max, cfg.sample_q) == ('varied', lr_size, hr_size, 1024)
            assert (cfg.epochs, cfg.milestones, cfg.gamma, cfg.batch_size, cfg.repeat) == (200, [100], 0.1, 16, 1)
            assert cfg.train_lr_dir == [f'data/celebAHQ/train/{lr_size}'] and cfg.train_dir == [f'data/celebAHQ/train/{hr_size}']
            assert (cfg.valid_lr_dir, cfg.valid_dir) == (f'data/celebAHQ/val/{lr_size}', f'data/celebAHQ/val/{hr_size}')
            assert (cfg.valid_first, cfg.valid_repeat, cfg.patch_size) == (100, 1, 0)  # whole validation images
        assert liif.gt_resize == 0 and getattr(liif, 'model', 'liif') == 'liif'
        assert (up.gt_resize, up.model, up.upsample_scale) == (hr_size, 'upsample', scale)


# ---- training runs of the new experiments (tiny: folders made above, batch 2, a few steps)

EXPERIMENTS = ['edsr-baseline-x2', 'rdn-x2', 'celebAHQ-32-256-liif', 'celebAHQ-32-256-upsample',
               'celebAHQ-64-128-liif', 'celebAHQ-64-128-upsample']


def tiny(name: str, x2_folders, celeb_root, out_dir, *extra: str) -> list[str]:
    """The experiment with our folders: x2 ones on 8-px LR patches; celebA-HQ ones at their own sizes."""
    common = ['--batch_size=2', '--num_workers=0', '--valid_first=1', '--save_every=1', f'--out_dir={out_dir}']
    if name.startswith('celebAHQ'):
        lr_size, hr_size = name.split('-')[1:3]
        folders = [f'--train_lr_dir={celeb_root / "train" / lr_size}', f'--train_dir={celeb_root / "train" / hr_size}',
                   f'--valid_lr_dir={celeb_root / "val" / lr_size}', f'--valid_dir={celeb_root / "val" / hr_size}',
                   '--hidden_list=[32]']
    else:
        lr_dir, hr_dir = x2_folders
        folders = [f'--train_lr_dir={lr_dir}', f'--train_dir={hr_dir}', f'--valid_lr_dir={lr_dir}',
                   f'--valid_dir={hr_dir}', '--patch_size=8', '--repeat=1', '--valid_repeat=2']
    return [f'--experiment={name}', *folders, *common, *extra]


@pytest.mark.parametrize('name', EXPERIMENTS)
@pytest.mark.slow
def test_experiment_trains(name, x2_folders, celeb_root, tmp_path):
    argv = tiny(name, x2_folders, celeb_root, tmp_path, '--max_steps=2')
    # the data the recipe asks for
    data = train.training_set(settings.parse(argv))
    if name.startswith('celebAHQ'):
        lr_size, hr_size = (int(x) for x in name.split('-')[1:3])
        assert isinstance(data, VariedDataset) and (data.size_min, data.size_max) == (lr_size, hr_size)
        assert data.gt_resize == (hr_size if name.endswith('upsample') else 0) and data.sample_q == 1024
        assert [p.parent.name for p in data.lr_files + data.files] == [str(lr_size)] * 4 + [str(hr_size)] * 4
    else:
        assert isinstance(data, PairedDataset) and (data.patch_size, data.sample_q, data.augment) == (8, 0, True)
        assert data.lr_files == list_images(x2_folders[0]) and data.files == list_images(x2_folders[1])
    result = train.main(argv)
    assert result['step'] == 2 and math.isfinite(result['last_psnr'])
    ckpt = load(tmp_path / 'last.pth')
    assert ckpt['settings']['experiment'] == name and ckpt['step'] == 2
    assert all(v.isfinite().all() for v in ckpt['model'].values())
    assert ckpt['settings']['model'] == ckpt['options']['model'] == ('liif' if name.endswith('liif') else 'upsample')


def reference_paired_psnr(state: dict, x2_folders) -> float:
    """The official validation on paired folders, written out here: the first pair's 2 LR patches of
    8 px and all their HR pixels, PSNR = -10 log10(MSE) of the clamped predictions over the batch."""
    model = build_model(hidden_list=[32])
    model.load_state_dict(state)
    model.eval()
    lr_image, hr_image = pair_arrays(*x2_folders)[0]
    patches = PairedDataset(*x2_folders, patch_size=8, sample_q=0, repeat=2, augment=False, first_k=1)
    items = [patches[0], patches[1]]
    for item in items:  # the validation patches are aligned crops of the first pair
        assert any(np.array_equal(as_uint8(item['lr']), lr_image[x:x + 8, y:y + 8]) for x in range(17) for y in range(25))
    lr, coord, cell, gt = (torch.stack([item[k] for item in items]) for k in ('lr', 'coord', 'cell', 'gt'))
    with torch.no_grad():
        mse = (model(lr, coord, cell).clamp(0, 1).double() - gt.double()).pow(2).mean()
    return -10 * math.log10(mse)


def tiny_paired_liif(x2_folders, out_dir, *extra: str) -> list[str]:
    """LIIF (the default experiment) trained on paired data: the x2 folders, 8-px LR patches, all queries."""
    lr_dir, hr_dir = x2_folders
    return ['--train_data=paired', f'--train_lr_dir={lr_dir}', f'--train_dir={hr_dir}', f'--valid_lr_dir={lr_dir}',
            f'--valid_dir={hr_dir}', '--patch_size=8', '--sample_q=0', '--repeat=1', '--valid_repeat=2',
            '--hidden_list=[32]', '--batch_size=2', '--num_workers=0', '--valid_first=1', f'--out_dir={out_dir}', *extra]


@pytest.mark.parametrize('name', ['paired-liif', 'celebAHQ-32-256-liif'])
@pytest.mark.slow
def test_resume_continues_as_if_never_stopped(name, x2_folders, celeb_root, tmp_path, capsys):
    """Paired data with LIIF and varied data: two epochs straight equal one epoch, then a resumed second one."""
    def args(out, *extra):
        if name == 'paired-liif':
            return tiny_paired_liif(x2_folders, out, *extra)
        return tiny(name, x2_folders, celeb_root, out, *extra)
    straight = train.main(args(tmp_path / 'a', '--epochs=2'))
    assert (straight['epoch'], straight['step']) == (2, 4)  # 4 pairs, batch 2
    train.main(args(tmp_path / 'b', '--epochs=1'))
    capsys.readouterr()
    resumed = train.main(args(tmp_path / 'b', '--epochs=2', '--resume=auto'))
    assert 'resuming' in capsys.readouterr().out and (resumed['epoch'], resumed['step']) == (2, 4)
    a, b = load(tmp_path / 'a' / 'last.pth'), load(tmp_path / 'b' / 'last.pth')
    for key in a['model']:
        assert torch.allclose(a['model'][key], b['model'][key], rtol=0, atol=1e-6), key
    assert resumed['last_psnr'] == pytest.approx(straight['last_psnr'], abs=1e-4)
    if name == 'paired-liif':  # the logged validation is the official paired one
        assert straight['last_psnr'] == pytest.approx(reference_paired_psnr(a['model'], x2_folders), abs=1e-3)
