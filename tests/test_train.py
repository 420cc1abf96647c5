"""train.py on tiny settings: real T91 crops, 16-px LR patches, 64 queries, batch 2, a [32] decoder."""
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import config
import precision
import train
from checkpoint import model_from_checkpoint, read_checkpoint
from dataset import TrainDataset
from helpers import ROOT, STEPS_PER_EPOCH, VALID_REPEAT, assert_same_tensors, load, tiny, tiny_liif
from imgproc import load_uint8, write_image
from model import MODELS, build_model


def reference_valid_psnr(state: dict, data: Path) -> float:
    """The official validation PSNR, written out here: PSNR = -10 log10(MSE) over each batch of 16
    validation patches' clamped predictions, averaged over batches weighted by their size."""
    model = build_model(hidden_list=[32])
    model.load_state_dict(state)
    model.eval()
    patches = TrainDataset(data / 'valid', 16, 1.0, 4.0, 64, repeat=VALID_REPEAT, augment=False, seed=0, first_k=1)
    total = 0.0
    with torch.no_grad():
        for start in range(0, len(patches), 16):
            items = [patches[i] for i in range(start, min(start + 16, len(patches)))]
            lr, coord, cell, gt = (torch.stack([item[k] for item in items]) for k in ('lr', 'coord', 'cell', 'gt'))
            mse = (model(lr, coord, cell).clamp(0, 1).double() - gt.double()).pow(2).mean()
            total += -10 * math.log10(mse) * len(items)
    return total / len(patches)


@pytest.fixture(scope='module')
def run_a(data, tmp_path_factory) -> Path:
    """Two epochs straight."""
    out = tmp_path_factory.mktemp('run_a')
    result = train.main(tiny(data, out, '--epochs=2'))
    assert result['epoch'] == 2 and result['step'] == 2 * STEPS_PER_EPOCH
    return out


def test_run_writes_checkpoints_and_tensorboard(run_a, data):
    assert sorted(p.name for p in run_a.glob('*.pth')) == ['best.pth', 'epoch-1.pth', 'epoch-2.pth', 'last.pth']
    assert (run_a / 'train_config.json').is_file()
    assert not list(run_a.glob('*.tmp'))
    last = load(run_a / 'last.pth')
    assert (last['epoch'], last['step'], last['epoch_step']) == (2, 8, 0)
    assert last['options']['hidden_list'] == [32] and last['ema'] is None
    assert last['scheduler']['last_epoch'] == 2
    assert len(last['optimizer']['state']) == len(list(build_model(hidden_list=[32]).parameters()))
    # the project's readers take it like any checkpoint
    options, state = read_checkpoint(run_a / 'last.pth')
    assert options == last['options'] and state.keys() == last['model'].keys()
    model_from_checkpoint(run_a / 'best.pth')

    events = list((run_a / 'tensorboard').glob('events.out.tfevents.*'))
    assert len(events) == 1
    acc = EventAccumulator(str(events[0]), size_guidance={'images': 0, 'scalars': 0}).Reload()
    assert {'train/loss', 'train/lr', 'valid/psnr'} <= set(acc.Tags()['scalars'])
    losses = [e.value for e in acc.Scalars('train/loss')]
    assert len(losses) == 2 and all(math.isfinite(v) and v > 0 for v in losses)
    assert [e.value for e in acc.Scalars('train/lr')] == pytest.approx([1e-4, 1e-4])
    valid = acc.Scalars('valid/psnr')
    assert [e.step for e in valid] == [4, 8]
    # the logged PSNR is the official patch PSNR of the saved weights; best.pth holds the best one
    assert valid[-1].value == pytest.approx(reference_valid_psnr(last['model'], data), abs=1e-3)
    assert last['best_psnr'] == pytest.approx(max(e.value for e in valid), abs=1e-6)
    best = load(run_a / 'best.pth')
    assert best['step'] == valid[max(range(2), key=lambda i: valid[i].value)].step
    images = acc.Tags()['images']
    assert len(images) == 2  # one sample per validation image
    assert sorted(images) == [f'samples/{i} bicubic | EDSR-baseline-LIIF | GT' for i in range(2)]  # the model's name
    panel = acc.Images(images[0])[-1]
    assert (panel.height, panel.width) == (64, 3 * 64)  # bicubic | LIIF | ground truth at x4


def test_resume_continues_as_if_never_stopped(run_a, data, tmp_path, capsys):
    out = tmp_path / 'run_b'
    assert train.main(tiny(data, out, '--epochs=1'))['epoch'] == 1
    capsys.readouterr()
    result = train.main(tiny(data, out, '--epochs=2', '--resume=auto'))
    assert 'resuming' in capsys.readouterr().out
    assert (result['epoch'], result['step']) == (2, 8)
    a, b = load(run_a / 'last.pth'), load(out / 'last.pth')
    assert_same_tensors(b['model'], a['model'])
    assert_same_tensors(b['optimizer'], a['optimizer'])
    assert b['scheduler'] == a['scheduler']
    assert_same_tensors(b['rng'], a['rng'], atol=0)
    assert (b['epoch'], b['step'], b['best_psnr']) == (a['epoch'], a['step'], pytest.approx(a['best_psnr'], abs=1e-6))


def test_a_resumed_run_keeps_the_best_score_it_had(data, tmp_path):
    """The best validation PSNR is part of where a run stands: after resuming, an epoch that scores below
    it (here a score of 99 dB written into last.pth stands for an earlier, better epoch) does not replace
    best.pth."""
    out = tmp_path / 'run'
    train.main(tiny(data, out, '--epochs=1'))
    last = load(out / 'last.pth')
    last['best_psnr'] = 99.0
    torch.save(last, out / 'last.pth')
    best = (out / 'best.pth').read_bytes()
    result = train.main(tiny(data, out, '--epochs=2', '--resume=auto'))
    assert result['epoch'] == 2 and result['best_psnr'] == 99.0 and load(out / 'last.pth')['best_psnr'] == 99.0
    assert (out / 'best.pth').read_bytes() == best


# Every leg of the kill-and-resume test runs as its own train.py process with one thread: oneDNN's AVX2
# kernels sum in another order under another thread count, and only identical conditions give identical bits.
LEG_ENV = {**os.environ, 'OMP_NUM_THREADS': '1'}


def train_leg(argv: list[str], log: Path) -> None:
    with open(log, 'w') as out:
        done = subprocess.run([sys.executable, 'train.py', *argv], cwd=ROOT, env=LEG_ENV, stdout=out,
                              stderr=subprocess.STDOUT, timeout=300)
    assert done.returncode == 0, log.read_text()[-3000:]


@pytest.mark.slow
def test_killed_run_resumes_from_its_last_checkpoint(data, tmp_path):
    """SIGKILL at any moment, resume from last.pth: the weights and the optimiser state equal those of an
    uninterrupted run of as many epochs, bit for bit."""
    out = tmp_path / 'killed'
    log = open(tmp_path / 'log.txt', 'w')
    proc = subprocess.Popen([sys.executable, 'train.py',
                             *tiny(data, out, '--epochs=1000', '--valid_every=1000', '--save_every=1000')],
                            cwd=ROOT, env=LEG_ENV, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 300
        while not (out / 'last.pth').exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert proc.poll() is None and (out / 'last.pth').exists(), (tmp_path / 'log.txt').read_text()
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
        log.close()
    done = load(out / 'last.pth')['epoch']  # complete, whatever the moment of the kill
    assert done >= 1
    train_leg(tiny(data, out, f'--epochs={done + 1}', '--resume=auto'), tmp_path / 'resumed.txt')
    assert 'resuming' in (tmp_path / 'resumed.txt').read_text()
    train_leg(tiny(data, tmp_path / 'straight', f'--epochs={done + 1}'), tmp_path / 'straight.txt')
    a, b = load(tmp_path / 'straight' / 'last.pth'), load(out / 'last.pth')
    assert (b['epoch'], b['step']) == (a['epoch'], a['step']) == (done + 1, (done + 1) * STEPS_PER_EPOCH)
    assert_same_tensors(b['model'], a['model'], atol=0)
    assert_same_tensors(b['optimizer'], a['optimizer'], atol=0)


def test_fine_tuning_starts_from_the_official_weights(data, tmp_path, official_weights):
    official = torch.load(official_weights, map_location='cpu', weights_only=True)['model']['sd']
    official = {k: v for k, v in official.items() if 'sub_mean' not in k and 'add_mean' not in k}
    full = '--hidden_list=[256,256,256,256]'
    cfg = train.settings.parse(tiny(data, tmp_path, f'--init_weights={official_weights}', full))
    assert_same_tensors(train.make_model(cfg).state_dict(), official, atol=0)
    # end to end: one Adam step of lr 1e-30 moves no float32 weight of this size; with nothing to
    # resume yet, --resume=auto starts from init_weights too
    train.main(tiny(data, tmp_path, f'--init_weights={official_weights}', full, '--max_steps=1', '--lr=1e-30',
                    '--resume=auto'))
    assert_same_tensors(load(tmp_path / 'last.pth')['model'], official, atol=1e-20)
    with pytest.raises(ValueError, match='not a train.py checkpoint'):
        train.main(tiny(data, tmp_path, f'--resume={official_weights}', full))
    with pytest.raises(ValueError, match='does not fit'):
        train.make_model(train.settings.parse(tiny(data, tmp_path, f'--init_weights={official_weights}')))


def test_missing_default_weights_are_fetched_to_fine_tune(data, tmp_path, official_weights, monkeypatch):
    """init_weights naming the default weights' path (as edsr-baseline-liif-real does) on a clone without
    them: the settings accept it and train.py fetches them (resolve_weights), once, before training."""
    monkeypatch.chdir(tmp_path)  # no results/pretrained_models/ here
    asked = []
    monkeypatch.setattr(train, 'resolve_weights', lambda path: asked.append(path) or official_weights)
    train.main(tiny(data, tmp_path / 'run', f"--init_weights={config.weights}", '--hidden_list=[256,256,256,256]',
                    '--max_steps=1'))
    assert asked == [config.weights]
    with pytest.raises(ValueError, match='init_weights: checkpoint .*other.pth.* does not exist'):
        train.main(tiny(data, tmp_path / 'run2', '--init_weights=results/pretrained_models/other.pth', '--max_steps=1'))


@pytest.mark.slow
def test_ema_follows_its_formula_and_is_validated(data, tmp_path):
    d = 0.9
    out = tmp_path / 'ema'
    cfg = train.settings.parse(tiny(data, out, f'--ema_decay={d}'))
    ema = train.make_model(cfg).state_dict()  # the EMA starts at the initial weights
    results = []
    for steps in (1, 2):  # one step at a time, resuming mid-epoch
        results.append(train.main(tiny(data, out, f'--ema_decay={d}', f'--max_steps={steps}', '--resume=auto')))
        ckpt = load(out / 'last.pth')
        assert (ckpt['step'], ckpt['epoch'], ckpt['epoch_step']) == (steps, 0, steps)
        expected = {k: d * ema[k] + (1 - d) * w for k, w in ckpt['model'].items()}
        assert_same_tensors(ckpt['ema'], expected, atol=1e-6)
        ema = ckpt['ema']
    assert any(not torch.equal(ckpt['ema'][k], ckpt['model'][k]) for k in ckpt['model'])
    # validation scores the EMA weights
    assert results[-1]['last_psnr'] == pytest.approx(reference_valid_psnr(ckpt['ema'], data), abs=1e-3)
    # and test.py / inference.py / --init_weights read the EMA weights that were validated
    assert_same_tensors(read_checkpoint(out / 'last.pth')[1], ckpt['ema'])
    # two steps straight reach the same state as the two resumed runs
    train.main(tiny(data, tmp_path / 'straight', f'--ema_decay={d}', '--max_steps=2'))
    straight = load(tmp_path / 'straight' / 'last.pth')
    assert_same_tensors(ckpt['model'], straight['model'])
    assert_same_tensors(ckpt['ema'], straight['ema'])


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(run_a, data, tmp_path, monkeypatch):
    getitem = TrainDataset.__getitem__

    def poisoned(self, index):  # NaN input from epoch 2 on
        item = getitem(self, index)
        if self.epoch >= 2:
            item['lr'][0, 0, 0] = math.nan
        return item
    monkeypatch.setattr(TrainDataset, '__getitem__', poisoned)
    out = tmp_path / 'nan'
    with pytest.raises(train.Diverged, match='loss became nan'):
        train.main(tiny(data, out, '--epochs=3'))
    kept = load(out / 'last.pth')
    assert kept['epoch'] == 1 and all(v.isfinite().all() for v in kept['model'].values())
    assert_same_tensors(kept['model'], load(run_a / 'epoch-1.pth')['model'])  # epoch 1, as it was saved
    model_from_checkpoint(out / 'last.pth')


def test_exploding_lr_stops_with_a_message(data, tmp_path, capsys):
    assert train.run_main(train.main, tiny(data, tmp_path, '--epochs=2', '--lr=1e30')) == 2
    assert 'became' in capsys.readouterr().err
    for path in tmp_path.glob('*.pth'):
        assert all(v.isfinite().all() for v in load(path)['model'].values())


@pytest.mark.slow
def test_bf16_autocast_trains_on_cpu_and_bad_settings_are_refused(data, tmp_path):
    result = train.main(tiny(data, tmp_path, '--amp=bf16', '--max_steps=2'))
    assert result['step'] == 2 and math.isfinite(result['last_psnr'])
    with pytest.raises(ValueError, match='fp16'):
        train.main(tiny(data, tmp_path, '--amp=fp16', '--device=cpu'))
    with pytest.raises(ValueError, match='does not exist'):
        train.main(tiny(data, tmp_path, f'--train_dir={tmp_path / "nowhere"}'))


@pytest.mark.slow
def test_a_checkpoint_of_the_unfused_adam_resumes_fused(data, tmp_path):
    """Checkpoints from before Adam was fused (param groups with fused=None) resume, and go on fused."""
    out = tmp_path / 'old'
    train.main(tiny(data, out, '--max_steps=1'))
    ckpt = load(out / 'last.pth')
    for group in ckpt['optimizer']['param_groups']:
        group['fused'] = None
    torch.save(ckpt, out / 'last.pth')
    assert train.main(tiny(data, out, '--max_steps=2', '--resume=auto'))['step'] == 2
    assert all(group['fused'] is True for group in load(out / 'last.pth')['optimizer']['param_groups'])


def test_device_data_trains_as_the_loader_does(data, tmp_path):
    """Patches made on the device from the loader's draws are the loader's patches: the same run."""
    for name, extra in (('loader', []), ('device', ['--device_data=True'])):
        train.main(tiny(data, tmp_path / name, '--max_steps=3', *extra))
    a, b = load(tmp_path / 'loader' / 'last.pth'), load(tmp_path / 'device' / 'last.pth')
    assert_same_tensors(b['model'], a['model'], atol=0)
    assert_same_tensors(b['optimizer'], a['optimizer'], atol=0)


def test_degraded_training_resumes_exactly_and_runs_on_the_device(data, tmp_path):
    """train_data='degraded': an epoch, then a resumed second one, equal two epochs straight (every
    degradation is drawn per (seed, epoch, index)); device_data trains on the same patches; the same run
    on bicubic patches ends elsewhere (the degraded LR reaches the model)."""
    degraded = ('--train_data=degraded',)
    train.main(tiny(data, tmp_path / 'straight', '--epochs=2', *degraded))
    train.main(tiny(data, tmp_path / 'resumed', '--epochs=1', *degraded))
    train.main(tiny(data, tmp_path / 'resumed', '--epochs=2', '--resume=auto', *degraded))
    train.main(tiny(data, tmp_path / 'device', '--epochs=2', '--device_data=True', *degraded))
    straight = load(tmp_path / 'straight' / 'last.pth')
    for name in ('resumed', 'device'):
        other = load(tmp_path / name / 'last.pth')
        assert_same_tensors(other['model'], straight['model'], atol=0)
        assert_same_tensors(other['optimizer'], straight['optimizer'], atol=0)
    train.main(tiny(data, tmp_path / 'bicubic', '--epochs=2'))  # the same draws, bicubic LR: other weights
    bicubic = load(tmp_path / 'bicubic' / 'last.pth')['model']
    assert not any(torch.equal(bicubic[k], straight['model'][k]) for k in bicubic)


@pytest.mark.parametrize('model', list(MODELS))
def test_every_registered_model_trains_on_degraded_patches(data, tmp_path, model):
    """The degraded items are the bicubic items' kind (lr, coord, cell, gt): any model takes them."""
    done = train.main(tiny(data, tmp_path, f'--model={model}', '--train_data=degraded', '--max_steps=2'))
    assert done['step'] == 2 and math.isfinite(done['best_psnr'])


@pytest.mark.slow
def test_compiled_step_equals_the_eager_step(data, train_root, monkeypatch):
    """compile=True (torch.compile of the objective: forward, loss and backward) takes the eager steps
    in fp32: a tiny LIIF (few kernels to compile) through build_run and wrap, 3 Adam steps at lr 1e-3.
    Inductor fuses and reorders float32 sums (the loss mean, the ensemble sum, bias gradients), so the
    values agree to rounding, not to the bit: the losses within rtol 1e-5 (~170 float32 ulps). Adam
    divides each gradient by its own RMS, so a gradient a few ulps off moves its update by about that
    fraction of lr: the weights stay within 1e-3 lr per step of each other, where one wrong gradient
    (a sign, a term) would move them by up to 2 lr."""
    steps, lr_ = 3, 1e-3
    cfg = train.settings.parse(tiny(data, data, f'--lr={lr_}', '--hidden_list=[16]', '--device=cpu'))
    monkeypatch.setattr(train, 'make_model', lambda cfg: tiny_liif())
    patches = TrainDataset(train_root / 'BSDS200', patch_size=12, sample_q=64, first_k=4, warn=False)
    batch = [torch.utils.data.default_collate([patches[i] for i in range(4)])[k] for k in ('lr', 'coord', 'cell', 'gt')]
    results = []
    for compiled in (False, True):
        cfg.compile = compiled
        run = train.build_run(cfg, torch.device('cpu'), 1, 1)
        train.wrap(run)
        autocast = precision.autocast(torch.device('cpu'), 'fp32')
        losses = [train.train_step(run.net, run.optimizer, run.scaler, autocast, *batch).item() for _ in range(steps)]
        results.append((losses, run.model.state_dict()))
    (eager, eager_weights), (compiled, compiled_weights) = results
    assert compiled == pytest.approx(eager, rel=1e-5) and eager[-1] < eager[0]
    assert_same_tensors(compiled_weights, eager_weights, atol=1e-3 * lr_ * steps)


@pytest.mark.parametrize('setup, args, message', [
    ('corrupt', ['--resume={tmp}/corrupt.pth'], 'not a readable PyTorch checkpoint'),
    ('corrupt', ['--init_weights={tmp}/corrupt.pth'], 'not a readable PyTorch checkpoint'),
    ('folder', ['--resume={tmp}/folder'], 'is a folder, not a checkpoint'),
    ('folder', ['--init_weights={tmp}/folder'], 'is a folder, not a checkpoint'),
    (None, ['--init_weights={official}'], 'does not fit the model'),
    (None, ['--resume={official}', '--hidden_list=[256,256,256,256]'], 'not a train.py checkpoint'),
    ('folder', ['--train_dir={tmp}/folder'], 'holds no image files'),
    ('folder', ['--valid_dir={tmp}/folder'], 'holds no image files'),
    (None, ['--valid_dir='], 'valid_dir is empty'),
    (None, ['--train_dir=[]'], 'train_dir is empty'),
    (None, ['--patch_size=64'], 'none is left'),
    (None, ['--device=tpu'], "device 'tpu' is not a device name"),
    (None, ['--amp=fp16', '--device=cpu'], "amp='fp16' needs a CUDA device"),
    (None, ['--threads=-2'], 'threads must be a non-negative int'),
    (None, ['--scale=2'], 'unknown setting --scale for train.py'),
    (None, ['--max_steps=-1'], 'max_steps must be a non-negative int'),
    (None, ['--valid_first=0'], 'valid_first must be a positive number'),
    (None, ['--gamma=-0.5'], 'gamma must be a positive number'),
    (None, ['--milestones=[-5]'], 'milestones must be positive epoch numbers'),
    (None, ['--num_workers=-1'], 'num_workers must be a non-negative int'),
    (None, ['--device_data=True', '--in_memory=False'], 'device_data makes patches'),
    ('corrupt', ['--out_dir={tmp}/corrupt.pth/run'], 'corrupt.pth is a file, not a folder'),
    (None, ['--train_data=degraded', '--blur_sigma=[-1.0,2.0]'], 'blur_sigma must be [low, high]'),
    (None, ['--train_data=degraded', '--jpeg_range2=[30,101]'], 'jpeg_range2 must be [low, high] of integers'),
    (None, ['--train_data=degraded', '--kernel_list=[]'], 'kernel_list is empty'),
    (None, ['--train_data=degraded', '--kernel_prob=[0.5,0.5,0.1,0,0,0]'], 'kernel_prob must add up to 1'),
    (None, ['--train_data=degraded', '--resize_prob2=[0.5,0.5]'], 'resize_prob2 must hold 3 probabilities'),
    (None, ['--train_data=degraded', '--gray_noise_prob=1.5'], 'gray_noise_prob must be a probability'),
    (None, ['--train_data=degraded', '--kernel_range=[7,20]'], 'kernel_range must be [low, high] of odd'),
    (None, ['--train_data=bicubic'], "train_data must be 'downsampled', 'degraded'"),
])
def test_a_refused_run_writes_nothing(data, tmp_path, official_weights, setup, args, message):
    if setup == 'corrupt':
        (tmp_path / 'corrupt.pth').write_bytes(b'PK\x03\x04 not really a zip')
    if setup == 'folder':
        (tmp_path / 'folder').mkdir()
    argv = tiny(data, tmp_path / 'out', '--max_steps=1',
                *(a.format(tmp=tmp_path, official=official_weights) for a in args))
    with pytest.raises(ValueError, match=re.escape(message)):
        train.main(argv)
    assert not (tmp_path / 'out').exists()


@pytest.mark.slow
def test_corrupt_resume_is_one_error_line_and_exit_2(data, tmp_path):
    (tmp_path / 'corrupt.pth').write_bytes(b'garbage')
    done = subprocess.run([sys.executable, 'train.py', *tiny(data, tmp_path / 'out', f'--resume={tmp_path}/corrupt.pth')],
                          cwd=ROOT, capture_output=True, text=True, timeout=120, env={**os.environ, 'OMP_NUM_THREADS': '1'})
    assert done.returncode == 2 and 'Traceback' not in done.stderr
    assert done.stderr.startswith('error: ') and done.stderr.count('\n') == 1 and 'corrupt.pth' in done.stderr
    assert not (tmp_path / 'out').exists()


def test_small_images_are_reported_in_one_line_and_listed_in_the_run(data, tmp_path, capsys):
    """4 training images below the 64x64 crop (patch 16 x scale 4): one short warning naming 3 of them;
    all 4 in skipped_images.txt. A small validation image is called a validation image."""
    train_dir, valid_dir = tmp_path / 'train', tmp_path / 'valid'
    shutil.copytree(data / 'train', train_dir)
    shutil.copytree(data / 'valid', valid_dir)
    image = load_uint8(next((data / 'train').iterdir()))
    small = {f's{i}.png': (40 + i, 63) for i in range(4)}
    for name, (h, w) in small.items():
        write_image(train_dir / name, image[:h, :w])
    write_image(valid_dir / 'a_small.png', image[:30, :30])
    out = tmp_path / 'out'
    with pytest.warns(UserWarning, match=r'^1 of 2 validation images are smaller than the 64x64 HR crop'):
        train.main(tiny(data, out, '--max_steps=1', f'--train_dir={train_dir}', f'--valid_dir={valid_dir}',
                        '--valid_first=2'))
    lines = [line for line in capsys.readouterr().err.splitlines() if 'smaller' in line]
    assert len(lines) == 1 and 's3.png' not in lines[0]  # a few names, not all
    assert lines[0].startswith('warning: 4 of 12 training images are smaller than the 64x64 HR crop')
    assert 'train/s0.png (40x63), train/s1.png (41x63), train/s2.png (42x63) and 1 more' in lines[0]
    assert str(out / 'skipped_images.txt') in lines[0]
    listed = [line.split('\t') for line in (out / 'skipped_images.txt').read_text().splitlines()]
    assert listed == [[str(train_dir / name), f'{h}x{w}'] for name, (h, w) in small.items()]


def test_epoch_numbers_agree_between_bar_log_and_summary(data, tmp_path, capsys):
    """Stopped by max_steps 2 steps into epoch 2 of 4-step epochs: the validation after step 4 belongs
    to epoch 1, everything after to epoch 2, 2 of its 4 steps done."""
    result = train.main(tiny(data, tmp_path, '--epochs=3', '--max_steps=6'))
    assert (result['epoch'], result['step']) == (1, 6)
    captured = capsys.readouterr()
    logs = [line for line in captured.out.splitlines() if line.startswith('epoch ')]
    assert [line.split(':')[0] for line in logs] == ['epoch 1/3, step 4', 'epoch 2/3 (2/4 steps), step 6']
    assert re.search(r'^done: epoch 2/3 \(2/4 steps\), 6 steps', captured.out, re.M)
    bar = re.findall(r'epoch (\d)/3: +\d+%\|[^|]*\| (\d)/6', captured.err)
    # after s steps the bar names the epoch step s was in, or (s at an epoch's end) the next one
    assert bar and all(math.ceil(int(s) / STEPS_PER_EPOCH) <= int(e) <= int(s) // STEPS_PER_EPOCH + 1 for e, s in bar)
    assert bar[-1] == ('2', '6')


def test_training_on_webp_equals_training_on_png(tmp_path, train_root):
    """A real image as lossless WebP trains exactly as its original PNG does."""
    png = train_root.parent / 'train-png' / 'T91'
    webp = tmp_path / 'webp'
    webp.mkdir()
    for path in png.iterdir():
        shutil.copyfile(train_root / 'T91' / f'{path.stem}.webp', webp / f'{path.stem}.webp')
    valid = png
    runs = {}
    for kind, folder in (('png', png), ('webp', webp)):
        out = tmp_path / kind
        args = ['--patch_size=16', '--sample_q=64', '--batch_size=2', '--repeat=4', '--hidden_list=[32]',
                '--num_workers=0', '--valid_first=1', '--valid_repeat=2', '--max_steps=2', '--epochs=1']
        result = train.main([f'--train_dir={folder}', f'--valid_dir={valid}', f'--out_dir={out}', *args])
        runs[kind] = (result, load(out / 'last.pth')['model'])
    assert runs['webp'][0] == runs['png'][0]
    assert_same_tensors(runs['webp'][1], runs['png'][1], atol=0)


@pytest.mark.parametrize('options, name', [
    ({'model': 'liif', 'encoder': 'edsr-baseline'}, 'EDSR-baseline-LIIF'),
    ({'model': 'metasr', 'encoder': 'rdn'}, 'RDN-MetaSR'),
    ({'model': 'upsample', 'encoder': 'edsr-baseline', 'upsample_scale': 4}, 'EDSR-baseline x4'),
])
def test_sample_panels_are_labelled_with_the_models_name(options, name):
    assert train.model_name(options) == name
