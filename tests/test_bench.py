"""The benchmarks run and measure what they say: each mode's render is the reference's function, the
training rows step a real optimiser, bad options are one error line."""
import json

import pytest

from cli import run_main
from fast_liif import FastLIIF
from scripts import bench_node, bench_render, bench_train, bench_web


def test_render_rows_compare_every_mode_with_the_reference(tmp_path):
    out = tmp_path / 'render.json'
    assert run_main(bench_render.main, ['--cases=12x2.5', '--repeats=1', '--warmup=0', '--threads=1',
                                        f'--json={out}', f'--out_dir={tmp_path}', '--onnx']) == 0
    rows = json.loads(out.read_text())['render']
    assert [r['path'] for r in rows][:2] == ['reference', 'fast'] and rows[-1]['path'] == 'onnx'
    assert rows[0]['max_abs_diff'] == 0 and rows[0]['x_reference'] == 1
    # fp32 modes compute the reference's function: float32 rounding apart (tests/test_fast.py's 1e-5)
    assert all(r['max_abs_diff'] <= 1e-5 for r in rows if r['amp'] == 'fp32')
    assert all(r['mp_per_s'] > 0 for r in rows)


def test_the_diff_column_is_each_modes_distance_from_the_reference(tmp_path, monkeypatch):
    """A fast path made off by 0.25 everywhere shows 0.25 in every fast row, 0 in the reference's."""
    decode = FastLIIF.decode
    monkeypatch.setattr(FastLIIF, 'decode', lambda self, *args: decode(self, *args) + 0.25)
    out = tmp_path / 'render.json'
    assert run_main(bench_render.main, ['--cases=8x2', '--repeats=1', '--warmup=0', '--threads=1',
                                        f'--json={out}', f'--out_dir={tmp_path}']) == 0
    rows = json.loads(out.read_text())['render']
    assert rows[0]['path'] == 'reference' and rows[0]['max_abs_diff'] == 0
    # fp32 rows: 0.25 up to float32 rounding; bf16 rows (native CPUs) further off, within 0.05 (test_fast)
    assert all(abs(r['max_abs_diff'] - 0.25) <= (1e-5 if r['amp'] == 'fp32' else 0.05) for r in rows[1:])


def test_onnx_profile_times_every_level_and_shares_the_kernel_time(capsys):
    """bench_web.py --profile: a row for each of ONNX Runtime's four optimisation levels, and operator
    shares that add up to 100 % with the decoder's matrix products (Gemm, fused or not) among them."""
    assert run_main(bench_web.main, ['--profile', '--size=8', '--scale=2', '--repeats=1', '--warmup=0',
                                     '--threads=1']) == 0
    rows = [line.split(' | ') for line in capsys.readouterr().out.splitlines() if line.startswith('| ORT_')
            or line.endswith(' % |')]
    levels = [r[0].strip('| ') for r in rows if r[0].startswith('| ORT_')]
    assert levels == ['ORT_DISABLE_ALL', 'ORT_ENABLE_BASIC', 'ORT_ENABLE_EXTENDED', 'ORT_ENABLE_ALL']
    shares = {r[0].strip('| '): float(r[1].split()[0]) for r in rows if r[1].endswith(' % |')}
    assert abs(sum(shares.values()) - 100) < 0.5 and any('Gemm' in op for op in shares)


@pytest.mark.slow
def test_training_rows_step_and_the_loader_is_timed(tmp_path):
    out = tmp_path / 'train.json'
    assert run_main(bench_train.main, ['--batch=2', '--sample_q=32', '--patch_size=8', '--train_steps=3',
                                       '--train_warmup=1', '--loader', '--loader_batches=2', '--no_compile',
                                       '--workers=0', '--threads=1', f'--json={out}']) == 0
    results = json.loads(out.read_text())
    fast, reference = results['train'][:2]
    assert (fast['path'], reference['path']) == ('fast', 'reference')
    # the same seeded model, batch and optimiser: both paths start from the same loss (float32 apart)
    assert abs(fast['loss_first'] - reference['loss_first']) <= 1e-5
    assert all(r['loss_last'] != r['loss_first'] for r in results['train'])  # the optimiser stepped
    assert results['loader']['patches_per_s'] > 0 and results['loader']['workers'] == 0


@pytest.mark.parametrize('main, argv, message', [
    (bench_render.main, ['--cases=12'], 'SIDExSCALE'),
    (bench_render.main, ['--views=4'], '--input=PATH'),
    (bench_train.main, ['--batch=0'], 'must be >= 1'),
    (bench_node.main, [], '--memory, --speed'),
])
def test_bad_options_are_one_error_line(main, argv, message, capsys):
    assert run_main(main, argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith('error:') and message in err[0]
