"""bf16 on any CPU: the native-bf16 check, the public-op branch against fp32, one warning per process,
and the scripts' bf16 paths with oneDNN limited to AVX2 (so the no-native branch runs on AMX machines too)."""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import inference
import precision
from checkpoint import model_from_checkpoint
from cli import run_main
from imgproc import image_to_tensor, load_uint8, read_image, write_image
from model import build_model

ROOT = Path(__file__).resolve().parents[1]


CPUINFO = """processor\t: 0
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC 9B14
flags\t\t: fpu sse2 avx2 avx512f avx512_bf16
bogomips\t: 5200.00

processor\t: 1
flags\t\t: fpu sse2
"""


def test_cpu_flags_are_the_first_flags_line(tmp_path):
    (tmp_path / 'cpuinfo').write_text(CPUINFO)
    assert precision.cpu_flags(str(tmp_path / 'cpuinfo')) == {'fpu', 'sse2', 'avx2', 'avx512f', 'avx512_bf16'}
    (tmp_path / 'arm').write_text("processor\t: 0\nFeatures\t: fp asimd\n")
    assert precision.cpu_flags(str(tmp_path / 'arm')) == set()
    assert precision.cpu_flags(str(tmp_path / 'missing')) == set()


def fake_linear(calls: list, fails: bool):
    """A stand-in for oneDNN's fused linear: records each call, raises like an ISA without bf16 when `fails`."""
    def op(*args):
        calls.append(args)
        if fails:
            raise RuntimeError("could not create a primitive descriptor")
        return args[0]
    return op


@pytest.mark.parametrize('flags, isa, op_fails, native', [
    (set(), None, False, False),  # e.g. AVX2-only AMD EPYC: the op is never tried
    ({'avx512f', 'avx512_bf16'}, 'AVX2', False, False),  # oneDNN held below its bf16 instructions
    ({'amx_bf16'}, 'avx512_core', False, False),
    ({'amx_bf16', 'avx512_bf16'}, None, False, True),  # flags, no limit and a working op
    ({'avx512_bf16'}, 'AVX512_CORE_AMX', False, True),
    ({'avx512_bf16'}, 'avx512_core_bf16', True, False),  # the flags say yes, but the op fails here
])
def test_native_bf16_needs_the_flag_the_isa_and_a_working_op(flags, isa, op_fails, native, monkeypatch):
    monkeypatch.setattr(precision, 'cpu_flags', lambda: flags)
    monkeypatch.setattr(precision.platform, 'machine', lambda: 'x86_64')
    calls = []
    monkeypatch.setattr(torch.ops.mkldnn, '_linear_pointwise', fake_linear(calls, op_fails))
    for name in ('ONEDNN_MAX_CPU_ISA', 'DNNL_MAX_CPU_ISA'):
        monkeypatch.delenv(name, raising=False)
    if isa:
        monkeypatch.setenv('ONEDNN_MAX_CPU_ISA', isa)
    precision.native_cpu_bf16.cache_clear()
    precision.onednn_linear.cache_clear()
    try:
        assert precision.native_cpu_bf16() is native
        assert len(calls) == (1 if native or op_fails else 0)  # the op is tried only once flags and ISA allow it
    finally:
        precision.native_cpu_bf16.cache_clear()
        precision.onednn_linear.cache_clear()


def test_native_bf16_on_this_cpu_follows_its_flags(monkeypatch):
    """The real check on this machine: native exactly when /proc/cpuinfo lists AVX-512-bf16 or AMX-bf16
    and oneDNN is not limited below them (this oneDNN build runs its fused op on both); never once
    ONEDNN_MAX_CPU_ISA says AVX2."""
    flags = precision.cpu_flags()
    if not flags or precision.platform.machine().lower() not in ('x86_64', 'amd64'):
        pytest.skip("no x86 /proc/cpuinfo here")
    limit = os.environ.get('ONEDNN_MAX_CPU_ISA', os.environ.get('DNNL_MAX_CPU_ISA', 'ALL')).upper()
    precision.native_cpu_bf16.cache_clear()
    try:  # oneDNN read its ISA limit when the process started: a limit below bf16 makes the real op fail
        assert precision.native_cpu_bf16() is (bool({'avx512_bf16', 'amx_bf16'} & flags) and limit in precision.BF16_ISAS)
        monkeypatch.setenv('ONEDNN_MAX_CPU_ISA', 'AVX2')
        precision.native_cpu_bf16.cache_clear()
        assert precision.native_cpu_bf16() is False
    finally:
        precision.native_cpu_bf16.cache_clear()


@pytest.mark.slow
def test_public_op_branch_matches_fp32_and_warns_once(official_weights, benchmark_root, monkeypatch, capsys):
    """Without native bf16: the bf16 decoder uses addmm (the fused op never sees bf16), and one stderr line
    per process says that fp32 is faster here, however many renders follow."""
    monkeypatch.setattr(precision, 'native_cpu_bf16', lambda: False)
    fused = torch.ops.mkldnn._linear_pointwise

    def refuse(x, *args):
        assert x.dtype != torch.bfloat16, "the private oneDNN op was called in bf16 without native bf16"
        return fused(x, *args)
    monkeypatch.setattr(torch.ops.mkldnn, '_linear_pointwise', refuse)
    precision.warn_slow_bf16.cache_clear()
    model = model_from_checkpoint(official_weights).eval()
    lr = image_to_tensor(read_image(benchmark_root / 'Set5' / 'LR_bicubic' / 'X4' / 'birdx4.png')[:20, :24])[None]
    fp32 = model.render(lr, (50, 60))
    capsys.readouterr()
    for _ in range(2):
        bf16 = model.render(lr, (50, 60), amp='bf16', chunk=1000)
        assert (bf16 - fp32).abs().max() < 0.05 and (bf16 - fp32).abs().mean() < 0.005  # as in test_fast
    err = capsys.readouterr().err
    assert err.count('warning: this CPU has no native bf16') == 1 and 'fp32' in err
    precision.warn_slow_bf16.cache_clear()


@pytest.mark.slow
def test_scripts_bf16_with_onednn_limited_to_avx2(official_weights, train_root, benchmark_root, tmp_path):
    """inference.py (a render) and train.py (two steps and a validation) with --amp=bf16 in processes
    whose oneDNN may not use more than AVX2: they finish, warn once, and the image matches fp32."""
    env = {**os.environ, 'ONEDNN_MAX_CPU_ISA': 'AVX2', 'OMP_NUM_THREADS': '1'}
    lr = load_uint8(benchmark_root / 'Set5' / 'LR_bicubic' / 'X4' / 'headx4.png')[:24, :20]
    write_image(tmp_path / 'lr.png', lr)
    done = subprocess.run([sys.executable, 'inference.py', f'--input={tmp_path / "lr.png"}', '--amp=bf16',
                           f'--output={tmp_path / "sr.png"}', f'--weights={official_weights}', '--scale=2.5'],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stderr.count('warning: this CPU has no native bf16') == 1
    fp32 = model_from_checkpoint(official_weights).eval().render(image_to_tensor(lr / np.float32(255))[None], (60, 50))
    sr = load_uint8(tmp_path / 'sr.png').astype(np.float32) / 255
    diff = np.abs(sr - fp32.clamp(0, 1)[0].permute(1, 2, 0).numpy())
    assert diff.max() < 0.05 and diff.mean() < 0.005

    folder = tmp_path / 'data'
    images = sorted((train_root / 'T91').iterdir())[:6]
    for i, path in enumerate(images):
        write_image(folder / ('train' if i < 4 else 'valid') / f'{path.stem}.png', load_uint8(path)[:64, :64])
    done = subprocess.run([sys.executable, 'train.py', f'--train_dir={folder / "train"}', f'--valid_dir={folder / "valid"}',
                           f'--out_dir={tmp_path / "run"}', '--patch_size=16', '--sample_q=64', '--batch_size=2',
                           '--repeat=1', '--hidden_list=[32]', '--num_workers=0', '--valid_repeat=2', '--max_steps=2',
                           '--amp=bf16'], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stderr.count('warning: this CPU has no native bf16') == 1
    ckpt = torch.load(tmp_path / 'run' / 'last.pth', map_location='cpu', weights_only=True)
    assert ckpt['step'] == 2 and all(v.isfinite().all() for v in ckpt['model'].values())


@pytest.mark.parametrize('native', [True, False])
def test_a_long_fp32_job_points_to_bf16_once_where_it_is_native(native, tmp_path, monkeypatch, capsys):
    """A folder in fp32 on a CPU with native bf16: one `note:` line naming --amp=bf16, however many
    images; none without native bf16, none for one image, none when bf16 is asked for already."""
    real = precision.native_cpu_bf16  # the bf16 run renders in bf16: it needs this CPU's own answer
    precision.point_to_bf16.cache_clear()
    torch.manual_seed(0)
    model = build_model(hidden_list=[8])
    torch.save({'model': model.state_dict(), 'options': model.options}, tmp_path / 'small.pth')
    (tmp_path / 'in').mkdir()
    for i in range(3):
        write_image(tmp_path / 'in' / f'{i}.png', np.full((6, 5, 3), 40 * i, np.uint8))
    common = [f'--weights={tmp_path / "small.pth"}', '--scale=2', '--device=cpu', '--overwrite=True']
    runs = {'folder': [f'--input={tmp_path / "in"}', f'--output={tmp_path / "out"}/'],
            'one image': [f'--input={tmp_path / "in" / "0.png"}', f'--output={tmp_path / "one.png"}'],
            'folder in bf16': [f'--input={tmp_path / "in"}', f'--output={tmp_path / "bf16"}/', '--amp=bf16']}
    notes = {}
    for name, argv in runs.items():
        monkeypatch.setattr(precision, 'native_cpu_bf16', real if '--amp=bf16' in argv else lambda: native)
        precision.point_to_bf16.cache_clear()
        assert run_main(inference.main, [*argv, *common]) == 0
        notes[name] = capsys.readouterr().err.count('note: this CPU has native bf16')
    assert notes == {'folder': int(native), 'one image': 0, 'folder in bf16': 0}
    precision.point_to_bf16.cache_clear()
