"""A full disk while a script writes: train.py's checkpoints, inference.py's outputs, test.py's tables and
make_figure.py's figures. Each script runs with a file-size limit that the write in question exceeds (EFBIG,
as on a full disk) and must end with one `error:` line and exit status 2, with no partial or temporary
file and the previous file byte for byte; a training run then resumes from its intact checkpoint exactly.
(download_data.py's case is in test_download_data.py, beside its test server.)"""
import shutil

import cv2
import pytest

import train
from helpers import STEPS_PER_EPOCH, assert_disk_full, assert_same_tensors, load, load_test_script, run_limited, tiny
from imgproc import write_image

# in-process legs of the training test run with one thread: identical conditions give identical bits
pytestmark = pytest.mark.usefixtures('one_thread')

test_script = load_test_script()


@pytest.mark.slow
def test_train_keeps_its_last_checkpoint_and_resumes_exactly(data, tmp_path):
    straight = tmp_path / 'straight'
    train.main(tiny(data, straight, '--epochs=2'))  # epoch-1.pth: last.pth as it was after epoch 1
    out = tmp_path / 'full'
    out.mkdir()
    shutil.copyfile(straight / 'epoch-1.pth', out / 'last.pth')
    before = (out / 'last.pth').read_bytes()
    # epoch 2 trains, then its checkpoint (the size of the first) does not fit; settings and logs do
    done = run_limited(['train.py', *tiny(data, out, '--epochs=2', '--resume=auto', '--threads=1')], len(before) // 2)
    assert_disk_full(done, out / 'last.pth')
    assert 'resuming' in done.stdout
    assert (out / 'last.pth').read_bytes() == before
    assert sorted(p.name for p in out.glob('*.pth')) == ['last.pth']

    train.main(tiny(data, out, '--epochs=2', '--resume=auto'))  # room again: it continues from epoch 1
    a, b = load(straight / 'last.pth'), load(out / 'last.pth')
    assert (b['epoch'], b['step']) == (a['epoch'], a['step']) == (2, 2 * STEPS_PER_EPOCH)
    assert_same_tensors(b['model'], a['model'], atol=0)
    assert_same_tensors(b['optimizer'], a['optimizer'], atol=0)
    assert_same_tensors(b['rng'], a['rng'], atol=0)


@pytest.mark.slow
def test_inference_leaves_the_earlier_output(benchmark_root, official_weights, tmp_path):
    crop = tmp_path / 'crop.png'
    write_image(crop, cv2.imread(str(benchmark_root / 'Set5' / 'HR' / 'bird.png'))[:40, :36])
    out = tmp_path / 'out' / 'sr.png'
    out.parent.mkdir()
    shutil.copyfile(crop, out)  # an earlier output, 2.6 kB
    before = out.read_bytes()
    done = run_limited(['inference.py', f'--input={crop}', f'--output={out}', f'--weights={official_weights}',
                        '--scale=4', '--threads=1'], 2 * len(before))  # the 160x144 output: tens of kB
    assert_disk_full(done, out)
    assert out.read_bytes() == before and sorted(p.name for p in out.parent.iterdir()) == ['sr.png']


@pytest.fixture(scope='module')
def many_small(benchmark_root, tmp_path_factory):
    """A benchmark set of 96 real 24x24 crops of Set14: its per-image table outgrows test_config.json."""
    root = tmp_path_factory.mktemp('many')
    (root / 'Many' / 'HR').mkdir(parents=True)
    images = [cv2.imread(str(p)) for p in sorted((benchmark_root / 'Set14' / 'HR').glob('*.png'))]
    for i in range(96):
        y = x = 30 + 24 * (i // len(images))
        cv2.imwrite(str(root / 'Many' / 'HR' / f'set14_crop_{i:02d}.png'), images[i % len(images)][y:y + 24, x:x + 24])
    return root


@pytest.mark.slow
def test_test_script_keeps_the_previous_tables_together(many_small, official_weights, tmp_path):
    args = [f'--test_root={many_small}', '--test_sets=Many', f'--weights={official_weights}', f'--out_dir={tmp_path}']
    test_script.main([*args, '--test_scales=[2]'])
    tables = {name: (tmp_path / name).read_bytes() for name in ('test_results.csv', 'test_per_image.csv',
                                                                  'test_results.md')}
    config_size = (tmp_path / 'test_config.json').stat().st_size
    limit = config_size + 200  # the settings fit, the per-image table of 96 rows does not
    assert len(tables['test_per_image.csv']) > limit + 200
    done = run_limited(['test.py', *args, '--test_scales=[3]', '--threads=1'], limit)
    assert_disk_full(done, tmp_path / 'test_per_image.csv')
    # none of the three tables is replaced: they stay those of the earlier run, which agree with each other
    assert {name: (tmp_path / name).read_bytes() for name in tables} == tables


@pytest.mark.slow
def test_make_figure_leaves_the_earlier_figure(benchmark_root, official_weights, tmp_path):
    image = tmp_path / 'lr.png'
    write_image(image, cv2.imread(str(benchmark_root / 'Set5' / 'LR_bicubic' / 'X4' / 'birdx4.png')))
    out = tmp_path / 'figure.png'
    out.write_bytes(b'an earlier figure')
    done = run_limited(['scripts/make_figure.py', f'--input={image}', '--box=10,10,8', '--scales=2,3',
                        f'--out={out}', f'--weights={official_weights}'], 4096)
    assert_disk_full(done, out)
    assert out.read_bytes() == b'an earlier figure'
