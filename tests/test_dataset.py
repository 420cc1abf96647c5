"""dataset.py against the LIIF data recipe, checked with position-encoding images, PIL and the real files."""
import math
import warnings

import cv2
import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

import settings
from dataset import (
    BenchmarkDataset,
    DegradedDataset,
    DegradedInputs,
    DevicePatches,
    Draws,
    TrainDataset,
    augment,
    list_images,
)
from degrade import apply, degrade_named, draw_plan, from_settings
from helpers import TRANSFORMS, pixel_index, same_items, transform


def save_png(path, img):
    """Write an HxWx3 RGB array (uint8 or uint16) with OpenCV."""
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), np.ascontiguousarray(img[:, :, ::-1]))


def position_image(height, width):
    """uint8 RGB whose R = row, G = column and B = a scrambled mix, so every pixel names its place
    and no flip or transpose of a region looks like another."""
    rows, cols = np.indices((height, width))
    return np.stack([rows, cols, (rows * 37 + cols * 101 + rows * cols) % 256], -1).astype(np.uint8)


def pil_bicubic(img, height, width):
    return np.asarray(Image.fromarray(img).resize((width, height), Image.BICUBIC))


@pytest.fixture
def position_folder(tmp_path):
    img = position_image(40, 52)
    save_png(tmp_path / 'pos' / 'a.png', img)
    return tmp_path / 'pos', img


def test_training_items_real_data(train_root):
    ds = TrainDataset([train_root / 'T91', train_root / 'BSDS200'], patch_size=12, sample_q=100,
                      first_k=12, repeat=6)
    assert len(ds) == 6 * 12 and not ds.skipped  # the 10 T91 + the first 2 BSDS200, all >= 48 px
    assert ds.files[-1].parent.name == 'BSDS200' and ds.files[0].name == 't1.webp'
    scales = []
    for index in range(len(ds)):
        item = ds[index]
        assert item['lr'].shape == (3, 12, 12) and item['lr'].dtype == torch.float32
        for key, width in (('coord', 2), ('cell', 2), ('gt', 3)):
            assert item[key].shape == (100, width) and item[key].dtype == torch.float32
        for key in ('lr', 'gt'):
            assert 0 <= item[key].min() and item[key].max() <= 1
        assert item['coord'].abs().max() < 1
        side = round(12 * item['scale'])
        assert torch.allclose(item['cell'], torch.full((100, 2), 2 / side))
        assert len(set(map(tuple, item['coord'].tolist()))) == 100  # drawn without replacement
        scales.append(item['scale'])
    # 72 draws of U(1, 4): each end of the range is missed with probability (1 - 0.2 / 3) ** 72 < 1%
    assert 1 <= min(scales) < 1.2 and 3.8 < max(scales) <= 4


def test_sampled_pixels_and_lr_follow_the_crop(position_folder):
    """Decode each gt back to its image position: one offset and one dihedral transform must explain
    every (coord, gt) pair, and the LR must be that transform of PIL bicubic of that crop."""
    folder, img = position_folder
    p, q = 8, 40
    ds = TrainDataset(folder, patch_size=p, scale_min=1.0, scale_max=4.0, sample_q=q, repeat=64)
    seen = set()
    for index in range(len(ds)):
        item = ds[index]
        side = round(2 / item['cell'][0, 0].item())
        assert side == round(p * item['scale']) and torch.allclose(item['cell'], torch.tensor(2 / side))
        crop_pos = np.stack([pixel_index(item['coord'][:, k].numpy(), side) for k in (0, 1)], 1)
        gt = np.round(item['gt'].numpy() * 255).astype(int)
        assert np.allclose(item['gt'].numpy() * 255, gt, atol=1e-4)
        matches = []
        for flags in TRANSFORMS:
            # where each augmented-crop pixel came from inside the un-augmented crop
            source = transform(np.stack(np.indices((side, side)), -1), *flags)[crop_pos[:, 0], crop_pos[:, 1]]
            offset = gt[:, :2] - source
            if (offset == offset[0]).all():
                matches.append((flags, offset[0]))
        assert len(matches) == 1, f"item {index}: {len(matches)} transforms fit the samples"
        flags, (x0, y0) = matches[0]
        assert 0 <= x0 <= 40 - side and 0 <= y0 <= 52 - side
        crop = img[x0:x0 + side, y0:y0 + side]
        aug_crop = transform(crop, *flags)
        assert (aug_crop[crop_pos[:, 0], crop_pos[:, 1]] == gt).all()  # all three channels
        lr = transform(pil_bicubic(crop, p, p), *flags)
        assert np.array_equal(np.round(item['lr'].numpy().transpose(1, 2, 0) * 255), lr)
        seen.add(flags)
    assert len(seen) == 8  # every flip/transpose combination occurs


def test_no_augment_keeps_orientation_and_full_crop_order(position_folder):
    folder, img = position_folder
    ds = TrainDataset(folder, patch_size=10, scale_min=2.0, scale_max=2.0, sample_q=400, augment=False,
                      repeat=200)
    corners = []
    for index in range(len(ds)):
        item = ds[index]
        assert item['scale'] == 2.0 and item['lr'].shape == (3, 10, 10)
        rows = pixel_index(item['coord'][:, 0].numpy(), 20)
        cols = pixel_index(item['coord'][:, 1].numpy(), 20)
        gt = np.round(item['gt'].numpy() * 255).astype(int)
        x0, y0 = gt[0, 0] - rows[0], gt[0, 1] - cols[0]
        corners.append((x0, y0))
        assert (gt[:, 0] == rows + x0).all() and (gt[:, 1] == cols + y0).all()
        lr = pil_bicubic(img[x0:x0 + 20, y0:y0 + 20], 10, 10)
        assert np.array_equal(np.round(item['lr'].numpy().transpose(1, 2, 0) * 255), lr)
    # crops start anywhere in [0, H - 20] x [0, W - 20], ends included
    assert np.array_equal(np.min(corners, 0), [0, 0]) and np.array_equal(np.max(corners, 0), [40 - 20, 52 - 20])


def test_sampled_coords_are_the_official_grid_bit_for_bit(position_folder):
    """Each coord is exactly the official make_coord value (-1 + 1/n + (2/n) i in float32, full grid
    built and indexed here) of the pixel its gt came from, although the dataset computes only the
    sampled ones."""
    folder, img = position_folder
    ds = TrainDataset(folder, patch_size=8, scale_min=1.0, scale_max=4.0, sample_q=40, augment=False, repeat=16)
    for index in range(len(ds)):
        item = ds[index]
        side = round(8 * item['scale'])
        gt = np.round(item['gt'].numpy() * 255).astype(int)
        axis = -1 + 1 / side + (2 / side) * torch.arange(side).float()
        grid = torch.stack(torch.meshgrid(axis, axis, indexing='ij'), -1).view(-1, 2)
        rows = pixel_index(item['coord'][:, 0].numpy(), side)
        cols = pixel_index(item['coord'][:, 1].numpy(), side)
        assert torch.equal(item['coord'], grid[torch.from_numpy(rows * side + cols)])
        assert (gt[:, 0] - rows == gt[0, 0] - rows[0]).all() and (gt[:, 1] - cols == gt[0, 1] - cols[0]).all()


def test_reproducible_by_seed_epoch_index(train_root):
    kwargs = dict(root=train_root / 'BSDS200', patch_size=16, sample_q=64, first_k=4, repeat=2)
    a, b = TrainDataset(**kwargs), TrainDataset(**kwargs, in_memory=False)
    for index in (0, 5, 7):
        assert same_items(a[index], b[index])
    other_seed = TrainDataset(**kwargs, seed=1)
    assert not same_items(a[0], other_seed[0])
    epoch0 = [a[i] for i in range(len(a))]
    a.set_epoch(3)
    assert a.epoch == 3
    assert not any(same_items(x, a[i]) for i, x in enumerate(epoch0))
    b.set_epoch(3)
    assert same_items(a[2], b[2])
    a.set_epoch(0)
    assert same_items(a[1], epoch0[1])
    with pytest.raises(ValueError, match='epoch'):
        a.set_epoch(-1)


def test_dataloader_workers_give_the_same_batches(train_root):
    ds = TrainDataset(train_root / 'BSDS200', patch_size=16, sample_q=64, first_k=3, repeat=4)
    ds.set_epoch(2)
    serial = list(DataLoader(ds, batch_size=4, shuffle=False, num_workers=0))
    parallel = list(DataLoader(ds, batch_size=4, shuffle=False, num_workers=2))
    assert len(serial) == len(parallel) == 3
    for x, y in zip(serial, parallel):
        assert same_items(x, y)
    # persistent workers keep their copy of the dataset; set_epoch must still reach them
    loader = DataLoader(ds, batch_size=4, num_workers=2, persistent_workers=True)
    ds.set_epoch(5)
    first = list(loader)
    ds.set_epoch(6)
    second = list(loader)
    ds.set_epoch(5)
    assert same_items(first[0], next(iter(DataLoader(ds, batch_size=4))))
    assert not same_items(first[0], second[0])


@pytest.mark.parametrize('seed, epoch, patch_size, scales, sample_q, augment', [
    (0, 1, 16, (1.0, 4.0), 64, True),
    (5, 3, 24, (1.0, 2.5), 500, True),
    (2, 7, 20, (1.0, 1.05), 400, True),  # crops of 20 or 21 pixels: Pillow's same-size and 21 -> 20 passes
    (0, 2, 12, (2.0, 3.3), 100, False),
])
@pytest.mark.slow
def test_device_patches_equal_the_loaders_items(train_root, seed, epoch, patch_size, scales, sample_q, augment):
    """The items made by DevicePatches (here on CPU tensors) from the dataset's draws equal the
    DataLoader's bit for bit: integer Pillow arithmetic, the same flips, queries and coordinates."""
    dataset = TrainDataset([train_root / 'T91', train_root / 'BSDS200'], patch_size, *scales, sample_q, repeat=4,
                           augment=augment, seed=seed, warn=False)
    dataset.set_epoch(epoch)
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed)).tolist()
    loader = DataLoader(dataset, batch_size=8, sampler=order)
    draws = DataLoader(Draws(dataset), batch_size=8, sampler=order)
    patches, flips = DevicePatches(dataset, 'cpu'), set()
    for batch, drawn in zip(loader, draws, strict=True):
        assert same_items(batch, patches(drawn))
        flips |= {tuple(f) for f in drawn['flips'].tolist()}
    assert len(flips) == (8 if augment else 1)  # every row flip, column flip and transpose was made


def test_sixteen_bit_is_rounded_to_eight(tmp_path):
    rng = np.random.default_rng(0)
    img16 = rng.integers(0, 65536, (6, 6, 3), dtype=np.uint16)
    img16[0, 0] = [128, 129, 65535]  # around a rounding edge
    save_png(tmp_path / 'deep' / 'x.png', img16)
    ds = TrainDataset(tmp_path / 'deep', patch_size=6, scale_min=1, scale_max=1, sample_q=36, augment=False)
    item = ds[0]
    rows = pixel_index(item['coord'][:, 0].numpy(), 6)
    cols = pixel_index(item['coord'][:, 1].numpy(), 6)
    expected = np.floor(img16.astype(np.float64) / 257 + 0.5)[rows, cols]
    assert np.array_equal(np.round(item['gt'].numpy() * 255), expected)
    assert expected[(rows == 0) & (cols == 0)].tolist() == [[0, 1, 255]]


def test_training_input_errors(tmp_path, position_folder):
    folder, img = position_folder
    (tmp_path / 'empty').mkdir()
    with pytest.raises(ValueError, match='empty.*no image files'):
        TrainDataset(tmp_path / 'empty')
    with pytest.raises(FileNotFoundError, match='nowhere'):
        TrainDataset(tmp_path / 'nowhere')
    (folder / 'notes.txt').write_text('not an image')
    (folder / '.a.123.tmp.png').write_bytes(b'half an image')  # what a killed files.replacing leaves
    with pytest.warns(UserWarning, match='notes.txt') as warned:
        assert [p.name for p in list_images(folder)] == ['a.png']
    assert len(warned) == 1 and '.a.123' not in str(warned[0].message)
    (folder / 'notes.txt').unlink()
    (folder / '.a.123.tmp.png').unlink()
    with pytest.raises(ValueError, match=r'1 of 1 training images .* 192x192 .*: pos/a\.png \(40x52\); none is left'):
        TrainDataset(folder, patch_size=48, sample_q=100)
    save_png(folder / 'big.png', position_image(200, 210))
    with pytest.warns(UserWarning, match=r'1 of 2 validation images .*: pos/a\.png \(40x52\); they are skipped'):
        ds = TrainDataset(folder, patch_size=48, sample_q=100, in_memory=False, role='validation')
    assert ds.skipped == {folder / 'a.png': (40, 52)}
    assert [p.name for p in ds.files] == ['big.png'] and ds[0]['lr'].shape == (3, 48, 48)
    (folder / 'broken.png').write_bytes(b'not a png')
    for in_memory in (True, False):
        with pytest.raises(ValueError, match='broken.png'):
            TrainDataset(folder, patch_size=8, sample_q=4, in_memory=in_memory)
    (folder / 'broken.png').unlink()
    with pytest.raises(ValueError, match='sample_q'):
        TrainDataset(folder, patch_size=8, sample_q=65)
    with pytest.raises(ValueError, match='scale_min'):
        TrainDataset(folder, patch_size=8, sample_q=4, scale_min=3, scale_max=2)
    with pytest.raises(ValueError, match='scale_min'):
        TrainDataset(folder, patch_size=8, sample_q=4, scale_min=0)


def test_benchmark_file_pairs(benchmark_root):
    ds = BenchmarkDataset(benchmark_root / 'Set5', 4)
    assert ds.lr_files is not None and len(ds) == 5
    for item in ds:
        name = item['name']
        lr = np.asarray(Image.open(benchmark_root / 'Set5' / 'LR_bicubic' / 'X4' / f'{name}x4.png').convert('RGB'))
        hr = np.asarray(Image.open(benchmark_root / 'Set5' / 'HR' / f'{name}.png').convert('RGB'))
        hr = hr[:lr.shape[0] * 4, :lr.shape[1] * 4]
        assert item['scale'] == 4.0 and item['lr'].dtype == item['hr'].dtype == torch.float32
        assert np.array_equal(np.round(item['lr'].numpy().transpose(1, 2, 0) * 255), lr)
        assert np.array_equal(np.round(item['hr'].numpy().transpose(1, 2, 0) * 255), hr)
    assert [item['name'] for item in ds] == ['baby', 'bird', 'butterfly', 'head', 'woman']


@pytest.mark.parametrize('scale', [6, 2.5])
def test_benchmark_on_the_fly(benchmark_root, scale):
    ds = BenchmarkDataset(benchmark_root / 'Set5', scale)
    assert ds.lr_files is None
    for item in ds:
        full = Image.open(benchmark_root / 'Set5' / 'HR' / f"{item['name']}.png").convert('RGB')
        h_lr, w_lr = math.floor(full.height / scale + 1e-9), math.floor(full.width / scale + 1e-9)
        hr = full.crop((0, 0, round(w_lr * scale), round(h_lr * scale)))
        lr = np.asarray(hr.resize((w_lr, h_lr), Image.BICUBIC))
        assert item['lr'].shape == (3, h_lr, w_lr) and item['scale'] == scale
        assert item['hr'].shape == (3, round(h_lr * scale), round(w_lr * scale))
        assert np.array_equal(np.round(item['lr'].numpy().transpose(1, 2, 0) * 255), lr)
        assert np.array_equal(np.round(item['hr'].numpy().transpose(1, 2, 0) * 255), np.asarray(hr))


def test_benchmark_grayscale_has_three_equal_channels(benchmark_root):
    ds = BenchmarkDataset(benchmark_root / 'Set14', 3)
    item = ds[[p.stem for p in ds.hr_files].index('bridge')]
    for key in ('lr', 'hr'):
        assert torch.equal(item[key][0], item[key][1]) and torch.equal(item[key][0], item[key][2])
    gray = np.asarray(Image.open(benchmark_root / 'Set14' / 'HR' / 'bridge.png'))
    assert gray.ndim == 2
    assert np.array_equal(np.round(item['hr'][0].numpy() * 255), gray[:item['hr'].shape[1], :item['hr'].shape[2]])


def test_benchmark_errors(benchmark_root, tmp_path):
    for bad in (0, -2, float('nan')):
        with pytest.raises(ValueError, match='scale'):
            BenchmarkDataset(benchmark_root / 'Set5', bad)
    with pytest.raises(ValueError, match='too large.*baby'):
        BenchmarkDataset(benchmark_root / 'Set5', 1000)
    root = tmp_path / 'Tiny'
    save_png(root / 'HR' / 'a.png', position_image(20, 24))
    save_png(root / 'HR' / 'b.png', position_image(20, 24))
    save_png(root / 'LR_bicubic' / 'X2' / 'ax2.png', position_image(10, 12))
    with pytest.raises(FileNotFoundError, match='bx2.png'):
        BenchmarkDataset(root, 2)
    save_png(root / 'LR_bicubic' / 'X2' / 'bx2.png', position_image(11, 12))
    with pytest.raises(ValueError, match=r'bx2\.png \(11x12\).*larger'):
        BenchmarkDataset(root, 2)
    assert BenchmarkDataset(root, 3)[1]['lr'].shape == (3, 6, 8)  # no X3 folder: on the fly
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        assert len(BenchmarkDataset(root, 2.0 + 1e-12)) == 2  # a non-integer scale goes on the fly


def degraded_pair(train_root, **options):
    """The same patches with bicubic and with degraded LR (config.py's degradation model)."""
    kwargs = dict(root=[train_root / 'T91', train_root / 'BSDS200'], patch_size=16, sample_q=64, first_k=6,
                  repeat=2, warn=False, **options)
    degradation = from_settings(settings.parse([], 'train'))
    return TrainDataset(**kwargs), DegradedDataset(degradation=degradation, **kwargs)


def test_degraded_patches_keep_the_draws_and_degrade_only_the_lr(train_root):
    """The crop, scale, flips and queries are the bicubic dataset's for the same seed; the LR is the
    crop through a plan drawn from the second generator (seed, epoch, index, 1), then flipped."""
    clean, degraded = degraded_pair(train_root)
    for ds in (clean, degraded):
        ds.set_epoch(3)
    for index in (0, 5, 11):
        a, b = clean[index], degraded[index]
        assert same_items({k: a[k] for k in ('coord', 'cell', 'gt', 'scale')},
                          {k: b[k] for k in ('coord', 'cell', 'gt', 'scale')})
        assert b['lr'].shape == a['lr'].shape and not torch.equal(a['lr'], b['lr'])
        d = clean.draw(index)
        rng = np.random.default_rng([0, 3, index, 1])
        plan = draw_plan(rng, degraded.degradation, (d['side'], d['side']), (16, 16))
        lr = np.ascontiguousarray(augment(apply(clean.crop(d), plan, rng), *d['flips']))
        assert torch.equal(b['lr'], torch.from_numpy(lr).permute(2, 0, 1).float() / 255)


def test_degraded_patches_are_reproducible_in_workers_and_from_files(train_root):
    """Items depend on (seed, epoch, index) only: decoded in memory or per item, in the process or in
    two workers; another epoch draws other degradations."""
    _, a = degraded_pair(train_root)
    _, b = degraded_pair(train_root, in_memory=False)
    a.set_epoch(2)
    b.set_epoch(2)
    serial = list(DataLoader(a, batch_size=4, num_workers=0))
    parallel = list(DataLoader(b, batch_size=4, num_workers=2))
    for x, y in zip(serial, parallel, strict=True):
        assert same_items(x, y)
    a.set_epoch(4)
    assert not torch.equal(a[0]['lr'], serial[0]['lr'][0])


def test_device_patches_take_the_workers_degraded_lr(train_root):
    """device_data with degraded patches: the workers make the LR (a real JPEG encoder), the device
    the flips and queries; the batches equal the loader's bit for bit."""
    _, dataset = degraded_pair(train_root)
    dataset.set_epoch(1)
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(0)).tolist()
    loader = DataLoader(dataset, batch_size=4, sampler=order)
    draws = DataLoader(Draws(dataset), batch_size=4, sampler=order)
    patches = DevicePatches(dataset, 'cpu')
    for batch, drawn in zip(loader, draws, strict=True):
        assert same_items(batch, patches(drawn))


def test_degraded_test_inputs(benchmark_root):
    """test.py's --degrade: jpeg40 is OpenCV's own JPEG of the 8-bit LR at quality 40; noise10 adds noise
    of standard deviation 10 levels (what clipping at 0 and 255 leaves aside), the same every time for an
    image; the ground truth is untouched."""
    clean = BenchmarkDataset(benchmark_root / 'Set5', 4)
    item = clean[0]  # baby: 128 x 128 at x4
    lr = (item['lr'].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    ok, data = cv2.imencode('.jpg', lr[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, 40])
    expected = cv2.imdecode(data, cv2.IMREAD_COLOR)[..., ::-1]
    jpeg = DegradedInputs(clean, 'jpeg40')[0]
    assert torch.equal(jpeg['hr'], item['hr']) and jpeg['name'] == item['name']
    assert np.array_equal((jpeg['lr'].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8), expected)
    noisy = DegradedInputs(clean, 'noise10')
    first, again = noisy[0]['lr'], noisy[0]['lr']
    other_key = torch.from_numpy(degrade_named(lr, 'noise10', 'another name')).permute(2, 0, 1) / 255
    assert torch.equal(first, again) and not torch.equal(first, other_key)
    inside = (item['lr'] > 0.15) & (item['lr'] < 0.85)  # 3 sigma from the clipping ends
    residual = (first - item['lr'])[inside].double() * 255
    # noise of variance 100 plus the rounding's 1/12; 4 standard errors: sigma / sqrt(n) for the mean,
    # 1 / sqrt(2 n) relative for the standard deviation (a normal's)
    n, sigma = residual.numel(), math.sqrt(100 + 1 / 12)
    assert n > 10000 and abs(residual.mean()) < 4 * sigma / math.sqrt(n)
    assert abs(residual.std() / sigma - 1) < 4 / math.sqrt(2 * n)
