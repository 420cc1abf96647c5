"""scripts/gpu_check.py: its rehearsal of a bare GPU machine (a copy of the repository as git carries it,
a bundle, no network) runs the CUDA tests' CPU parts with the official weights found as there; a SIGTERM
mid-stage still leaves the report in the pack; the training plan counts compile time, and a second run
with nothing measured refuses instead of planning no steps."""
import importlib.util
import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import ROOT


def load_gpu_check():
    spec = importlib.util.spec_from_file_location('gpu_check', ROOT / 'scripts' / 'gpu_check.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


gpu_check = load_gpu_check()


@pytest.fixture
def shared(tmp_path, train_root, official_weights) -> Path:
    """A small --shared folder: the tests' 16 training images and the official weights."""
    folder = tmp_path / 'shared'
    for name in ('T91', 'BSDS200'):
        shutil.copytree(train_root / name, folder / 'data' / 'train' / name)
    (folder / 'weights').mkdir()
    (folder / 'weights' / 'edsr-baseline-liif.pth').symlink_to(official_weights)
    return folder


def rehearsal(shared: Path, pack: Path, *extra: str) -> list[str]:
    return [sys.executable, str(ROOT / 'scripts' / 'gpu_check.py'), '--dry_run', f'--shared={shared}', f'--pack={pack}',
            '--only=cuda_tests', *extra]


@pytest.mark.slow
def test_the_rehearsal_runs_the_cuda_tests_on_a_bare_machine(shared, tmp_path):
    """The CUDA tests' stage finds the official weights where a bare machine has them (copied from the
    bundle, no download) and runs tests; the pack holds the report and the stage's log."""
    pack = tmp_path / 'pack'
    proc = subprocess.run(rehearsal(shared, pack, '--tests=fast_equals_reference or fp16'), cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = (pack / 'report.md').read_text()
    assert '| CUDA tests | done |' in report
    assert re.search(r'^1 passed, 2 skipped', report, re.M), report  # fast = reference; fp16 skips on a CPU
    assert '| eager renders | skipped: not in --only |' in report
    assert not (tmp_path / 'results').exists()  # it ran in its own copy


@pytest.mark.slow
def test_a_sigterm_mid_stage_leaves_the_report_in_the_pack(shared, tmp_path):
    pack = tmp_path / 'pack'
    proc = subprocess.Popen(rehearsal(shared, pack), cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    try:
        for line in proc.stdout:
            if 'CUDA tests: -m pytest' in line:  # the stage has started
                proc.send_signal(signal.SIGTERM)
                break
        output = proc.communicate(timeout=120)[0]
    finally:
        proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM, output
    report = (pack / 'report.md').read_text()
    assert '**The check was cut:** CUDA tests: cut by SIGTERM' in report
    assert '| CUDA tests | cut by SIGTERM |' in report and '| training | not reached | - |' in report


def test_the_rehearsal_refuses_downloads(tmp_path):
    """In the rehearsal's environment the weights' downloader fails (pip finds no index) instead of
    fetching what a bare machine could not."""
    code = "import sys; from weights import download_weights; download_weights(sys.argv[1])"
    proc = subprocess.run([sys.executable, '-c', code, str(tmp_path / 'w.pth')], cwd=ROOT, capture_output=True,
                          text=True, env=gpu_check.offline_env(tmp_path), timeout=120)
    assert proc.returncode != 0 and 'could not fetch the official weights' in proc.stderr
    assert not (tmp_path / 'w.pth').exists()


def test_the_bare_machine_has_no_liif_settings(tmp_path, monkeypatch):
    """LIIF_WEIGHTS exported here (as the README allows) would let the rehearsal's tests use this machine's
    weights instead of the bundled copy a bare machine has: no LIIF_* variable reaches it."""
    monkeypatch.setenv('LIIF_WEIGHTS', str(tmp_path / 'host.pth'))
    monkeypatch.setenv('LIIF_TEST_DEVICE', 'cuda')
    env = gpu_check.offline_env(tmp_path)
    assert not [key for key in env if key.startswith('LIIF_')]
    assert env['PATH'] == os.environ['PATH']  # the rest of the environment is kept


def test_a_model_only_copy_of_the_weights_is_refused(shared, tmp_path):
    """The tests, test.py and the benchmark check the official file's sha256: a copy with other bytes
    (the model state alone) is refused before anything runs."""
    weights = shared / 'weights' / 'edsr-baseline-liif.pth'
    weights.unlink()
    weights.write_bytes(b'model state only')
    with pytest.raises(ValueError, match='not the official edsr-baseline-liif.pth'):
        gpu_check.bundle(shared, tmp_path / 'bundle')
    assert not (tmp_path / 'bundle').exists()


def row(patches_per_s: float, warmup_s: float, compiled: bool) -> dict:
    return {'path': 'fast', 'amp': 'bf16', 'compile': compiled, 'data': 'loader', 'patches_per_s': patches_per_s,
            'warmup_s': warmup_s}


def test_the_training_mode_counts_its_compile_time():
    """Eager 1000 patches/s after 1 s against compiled 1500 after 60 s: in 60 s eager trains 59,000
    patches and compiled none; in 600 s compiled trains 810,000 and eager 599,000."""
    rows = {'train': [row(1000, 1, False), row(1500, 60, True)], 'loader': {'patches_per_s': 1e6}}
    assert gpu_check.training_mode(rows, 'bf16', 60)[1:] == (1000, 1, 'eager step, patches from the loader')
    assert gpu_check.training_mode(rows, 'bf16', 600)[1:] == (1500, 60, 'compiled step, patches from the loader')


def test_the_training_mode_is_fed_no_faster_than_the_data():
    """A loader of 800 patches/s caps both steps at 800: then eager, at 800 after 1 s, beats compiled, at 800
    after 60 s, at any length. Patches made on the device are capped by the draws' rate instead: compiled
    on the device (1500, capped at 1200, after 60 s) trains 648,000 in 600 s against eager's 479,200."""
    rows = {'train': [row(1000, 1, False), row(1500, 60, True)], 'loader': {'patches_per_s': 800}}
    assert gpu_check.training_mode(rows, 'bf16', 600)[1:] == (800, 1, 'eager step, patches from the loader')
    rows['train'].append({**row(1500, 60, True), 'data': 'device'})
    rows['loader']['draws_per_s'] = 1200
    mode = gpu_check.training_mode(rows, 'bf16', 600)
    assert mode == (['--compile=True', '--device_data=True'], 1200, 60, 'compiled step, patches from the device')


def test_train_only_without_a_measured_rate_is_refused(tmp_path):
    """--train_only plans its steps from the first check's training modes: with none measured and no
    --steps it refuses; with either it goes ahead."""
    args = gpu_check.parse_args(['--train_only'])
    with pytest.raises(ValueError, match='give --steps=N'):
        gpu_check.refuse_unplanned_training(args, tmp_path, gpu_check.SIZES['gpu'])
    gpu_check.refuse_unplanned_training(gpu_check.parse_args(['--train_only', '--steps=500']), tmp_path,
                                        gpu_check.SIZES['gpu'])
    (tmp_path / 'bench_train.json').write_text(json.dumps({'train': [row(1000, 1, False)]}))
    gpu_check.refuse_unplanned_training(args, tmp_path, gpu_check.SIZES['gpu'])
