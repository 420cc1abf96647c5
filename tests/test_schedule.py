"""The learning-rate schedules of train.py: cosine with warm-up against its formula, an exact resume in
the middle of the warm-up, and a short run of the short-GPU-run experiment whose loss falls."""
import math
from types import SimpleNamespace

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import settings
import train
from helpers import assert_same_tensors, load, tiny


def cosine_lr(peak: float, warmup: int, total: int, t: int) -> float:
    """The lr of optimiser step t (0-based): a linear ramp reaching `peak` at step warmup - 1, then
    peak * cos^2(pi/2 * progress), progress = (t - warmup) / (total - warmup) (= 0.5 (1 + cos(pi p)))."""
    if t < warmup:
        return peak * (t + 1) / warmup
    return peak * math.cos(math.pi / 2 * (t - warmup) / (total - warmup)) ** 2


def lrs_of(cfg: SimpleNamespace, steps_per_epoch: int, steps: int) -> list[float]:
    """The lr each of `steps` optimiser steps runs with, stepping the scheduler as train.py does."""
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.Adam([param], lr=cfg.lr)
    scheduler = train.make_scheduler(optimizer, cfg, steps_per_epoch)
    seen = []
    for _ in range(steps):
        seen.append(optimizer.param_groups[0]['lr'])
        optimizer.step()
        scheduler.step()
    return seen


@pytest.mark.parametrize('warmup, max_steps, epochs', [(10, 100, 1000), (0, 37, 1000), (5, 0, 3)])
def test_cosine_follows_its_formula(warmup, max_steps, epochs):
    cfg = SimpleNamespace(schedule='cosine', lr=3e-4, warmup_steps=warmup, max_steps=max_steps, epochs=epochs)
    total = max_steps or epochs * 20  # the horizon is max_steps, else every epoch's steps
    seen = lrs_of(cfg, 20, total)
    assert seen == pytest.approx([cosine_lr(3e-4, warmup, total, t) for t in range(total)], rel=1e-12, abs=1e-20)
    assert max(seen) == pytest.approx(3e-4) and seen.index(max(seen)) == max(0, warmup - 1)
    assert 0 < seen[-1] < 3e-4 * 1e-2  # the last step runs just above 0, none at exactly 0


def test_multistep_is_the_official_per_epoch_halving():
    cfg = SimpleNamespace(schedule='multistep', lr=1e-4, milestones=[2, 4], gamma=0.5)
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.Adam([param], lr=cfg.lr)
    scheduler = train.make_scheduler(optimizer, cfg, 20)
    per_epoch = []
    for _ in range(6):
        per_epoch.append(optimizer.param_groups[0]['lr'])
        optimizer.step()
        scheduler.step()
    assert per_epoch == pytest.approx([1e-4, 1e-4, 5e-5, 5e-5, 2.5e-5, 2.5e-5])


def test_bad_schedules_are_refused(data, tmp_path):
    with pytest.raises(ValueError, match='schedule must be'):
        train.main(tiny(data, tmp_path, '--schedule=linear'))
    with pytest.raises(ValueError, match='warmup_steps'):
        train.main(tiny(data, tmp_path, '--schedule=cosine', '--warmup_steps=8', '--max_steps=8'))
    train.main(tiny(data, tmp_path, '--max_steps=1'))  # a multistep run cannot go on as a cosine one
    with pytest.raises(ValueError, match="schedule='multistep'"):
        train.main(tiny(data, tmp_path, '--schedule=cosine', '--max_steps=2', '--resume=auto'))


def test_resume_mid_warmup_equals_a_straight_run(data, tmp_path):
    cosine = ('--schedule=cosine', '--warmup_steps=6', '--max_steps=8', '--lr=1e-3')
    out = tmp_path / 'resumed'
    assert train.main(tiny(data, out, *cosine, '--epochs=1'))['step'] == 4  # stops after epoch 1, mid-warm-up
    first = load(out / 'last.pth')
    assert first['optimizer']['param_groups'][0]['lr'] == pytest.approx(cosine_lr(1e-3, 6, 8, 4), rel=1e-12)
    assert train.main(tiny(data, out, *cosine, '--epochs=2', '--resume=auto'))['step'] == 8
    train.main(tiny(data, tmp_path / 'straight', *cosine, '--epochs=2'))
    a, b = load(tmp_path / 'straight' / 'last.pth'), load(out / 'last.pth')
    assert_same_tensors(b['model'], a['model'])
    assert_same_tensors(b['optimizer'], a['optimizer'])
    assert b['scheduler'] == a['scheduler'] and b['scheduler']['last_epoch'] == 8


@pytest.mark.slow
def test_short_experiment_trains_on_cpu(data, tmp_path):
    """The short-GPU-run experiment (cosine, warm-up) at tiny sizes in fp32: 60 steps of batch 8 on the
    8 crops; the mean loss of steps 41-60 is below that of steps 1-20 and validation improves."""
    out = tmp_path / 'short'
    args = tiny(data, out, '--experiment=edsr-baseline-liif-short', '--amp=fp32', '--batch_size=8',
                '--warmup_steps=5', '--lr=5e-4', '--repeat=20', '--max_steps=60', '--epochs=1000')
    cfg = settings.parse(args)
    assert (cfg.schedule, cfg.amp, cfg.batch_size) == ('cosine', 'fp32', 8)
    result = train.main(args)
    assert result['step'] == 60
    events = next((out / 'tensorboard').glob('events.out.tfevents.*'))
    acc = EventAccumulator(str(events), size_guidance={'scalars': 0}).Reload()
    losses = {e.step: e.value for e in acc.Scalars('train/loss')}
    psnrs = [e.value for e in acc.Scalars('valid/psnr')]
    assert sorted(losses) == [20, 40, 60] and all(math.isfinite(v) for v in losses.values())
    assert losses[60] < 0.9 * losses[20], losses
    assert psnrs[-1] > psnrs[0], psnrs
