"""Settings: `--name=value` overrides typed like the defaults, experiments, start-up checks, saving."""
import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

import config
import settings
from helpers import check_problems

ROOT = Path(__file__).resolve().parents[1]


def test_defaults_are_the_official_recipe():
    cfg = settings.parse([])
    assert cfg.experiment == 'edsr-baseline-liif' and cfg.encoder == 'edsr-baseline'
    assert cfg.hidden_list == [256, 256, 256, 256]
    assert cfg.feat_unfold and cfg.local_ensemble and cfg.cell_decode
    assert (cfg.batch_size, cfg.lr, cfg.epochs, cfg.gamma) == (16, 1e-4, 1000, 0.5)
    assert cfg.milestones == [200, 400, 600, 800]
    assert (cfg.patch_size, cfg.sample_q, cfg.scale_min, cfg.scale_max, cfg.repeat) == (48, 2304, 1.0, 4.0, 20)
    assert cfg.test_sets == ['Set5', 'Set14'] and cfg.test_scales == [2, 3, 4, 6, 8]
    assert cfg.out_dir == 'results/edsr-baseline-liif'


@pytest.mark.parametrize('arg, name, value', [
    ('--chunk=1000', 'chunk', 1000),
    ('--scale=3', 'scale', 3.0),  # an int where a float is expected is taken as that float
    ('--scale=2.5', 'scale', 2.5),
    ('--save_images=True', 'save_images', True),
    ('--save_images=false', 'save_images', False),
    ('--weights=some/file.pth', 'weights', 'some/file.pth'),
    ('--test_sets=Set5', 'test_sets', ['Set5']),
    ('--test_sets=Set5,Urban100', 'test_sets', ['Set5', 'Urban100']),
    ('--test_scales=[2.5,4]', 'test_scales', [2.5, 4]),
    ('--test_scales=2,3,4', 'test_scales', [2, 3, 4]),
    ('--test_scales=12', 'test_scales', [12]),
    ('--scale_hw=[2,3.5]', 'scale_hw', [2, 3.5]),
    ('--size=1080,1920', 'size', [1080, 1920]),
    ('--hidden_list=[128,128]', 'hidden_list', [128, 128]),
    ('--train_dir=a/T91,b/BSDS200', 'train_dir', ['a/T91', 'b/BSDS200']),
    ('--out_dir=runs/x', 'out_dir', 'runs/x'),
])
def test_override_is_typed_like_the_default(arg, name, value):
    cfg = settings.parse([arg])
    assert getattr(cfg, name) == value
    assert type(getattr(cfg, name)) is type(value)


def test_every_setting_can_be_overridden():
    for name, default in settings.defaults().items():
        if isinstance(default, str):
            continue  # strings are taken verbatim; covered above
        assert getattr(settings.parse([f'--{name}={default!r}']), name) == default, name


def config_comments() -> dict[str, tuple[str, str]]:
    """{setting: (section, comment)} read from config.py line by line: `# ---- name` starts a section,
    `name = value  # comment` is a setting (a second reading of the file, independent of config's)."""
    section, found = None, {}
    for line in (ROOT / 'config.py').read_text().splitlines():
        if line.startswith('# ----'):
            section = line[len('# ----'):].strip()
        match = re.match(r"^([a-z_][a-z0-9_]*) = .*?  # (.*)$", line)
        if match and section and match[1] in settings.defaults():
            found[match[1]] = (section, match[2])
    return found


# per script: the sections of config.py it reads, single settings it reads from other sections, and
# settings of its sections that it ignores
SCRIPT_SETTINGS = {
    'train': ({'experiment', 'model', 'data', 'degradation', 'training'}, {'chunk'}, {'compile_decoder'}),
    'test': ({'experiment', 'model', 'testing'}, {'amp'}, {'seed'}),
    'inference': ({'experiment', 'model', 'inference'}, {'weights', 'chunk', 'amp'}, {'out_dir', 'seed'}),
}


def expected_settings(script: str) -> set[str]:
    sections, plus, minus = SCRIPT_SETTINGS[script]
    return {name for name, (section, _) in config_comments().items()
            if (section in sections or name in plus) and name not in minus}


def test_every_setting_has_a_comment():
    assert sorted(config_comments()) == sorted(settings.defaults())
    assert expected_settings('train') >= {'lr', 'patch_size', 'train_dir', 'chunk', 'threads', 'encoder'}
    assert expected_settings('inference') >= {'scale', 'input', 'weights', 'amp', 'threads', 'encoder'}


@pytest.mark.parametrize('script', sorted(SCRIPT_SETTINGS))
@pytest.mark.slow
def test_help_lists_the_scripts_settings_with_default_and_comment(script):
    done = subprocess.run([sys.executable, f'{script}.py', '--help'], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0 and done.stderr == ''
    text = done.stdout
    expected = expected_settings(script)
    for name, (_section, comment) in config_comments().items():
        line = next((line for line in text.splitlines() if line.strip().startswith(f'--{name}=')), None)
        if name not in expected:
            assert line is None, f"{script}.py --help shows --{name}, which it does not read"
            continue
        assert line is not None, f"{script}.py --help misses --{name}"
        default = settings.defaults()[name]
        shown = line.strip()[len(f'--{name}='):].split('  ')[0]
        assert shown == default or getattr(settings.parse([f'--{name}={shown}']), name) == default, name
        assert comment in text, f"{script}.py --help misses the comment of --{name}"
    for section in SCRIPT_SETTINGS[script][0]:
        assert f'\n  {section}\n' in text
    for name in config.EXPERIMENTS:
        assert re.search(rf"^\s+{re.escape(name)}\s", text, re.M), name
    assert "encoder=rdn" in text and "cell_decode=False" in text
    short = subprocess.run([sys.executable, f'{script}.py', '-h'], cwd=ROOT, capture_output=True, text=True,
                           timeout=120)
    assert short.returncode == 0 and short.stdout == text


@pytest.mark.parametrize('script', sorted(SCRIPT_SETTINGS))
@pytest.mark.slow
def test_a_closed_pipe_ends_quietly(script):
    """`python inference.py --help | head -3` where head has already gone: no traceback, status 1."""
    proc = subprocess.Popen([sys.executable, f'{script}.py', '--help'], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    proc.stdout.close()  # long before the script, still importing torch, prints anything
    err = proc.stderr.read()
    assert proc.wait(timeout=120) == 1 and err == ''


@pytest.mark.parametrize('script', ['make_lr', 'prepare_celebahq'])
@pytest.mark.slow
def test_helper_scripts_keep_their_own_help(script):
    """Scripts with their own argparse options (not config.py's) answer --help with those."""
    done = subprocess.run([sys.executable, f'scripts/{script}.py', '--help'], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0 and done.stderr == '' and done.stdout.startswith('usage:')
    assert '--experiment' not in done.stdout


@pytest.mark.parametrize('script', sorted(SCRIPT_SETTINGS))
def test_unknown_setting_lists_the_scripts_settings_only(script):
    other = sorted(set(settings.defaults()) - expected_settings(script))[0]
    with pytest.raises(ValueError) as err:
        settings.parse([f'--{other}=1'], script)
    message = str(err.value)
    assert message.startswith(f"unknown setting --{other} for {script}.py")
    listed = message.split('Its settings: ')[1].split(' (')[0].split(', ')
    assert set(listed) == expected_settings(script)
    for name in expected_settings(script):  # and all of them are accepted
        settings.parse([f'--{name}={settings.defaults()[name]!r}' if not isinstance(settings.defaults()[name], str)
                      else f'--{name}={settings.defaults()[name]}'], script)


@pytest.mark.parametrize('script, typo, meant', [('inference', 'scael', 'scale'), ('train', 'batchsize', 'batch_size'),
                                                 ('test', 'test_set', 'test_sets'), ('train', 'epoch', 'epochs')])
def test_unknown_setting_suggests_the_closest_name(script, typo, meant):
    with pytest.raises(ValueError, match=f"did you mean --{meant}\\?"):
        settings.parse([f'--{typo}=2'], script)


def test_a_new_setting_joins_its_sections_scripts(tmp_path, monkeypatch):
    """Settings are picked per section: a setting added to the data section is read by train.py only."""
    source = (ROOT / 'config.py').read_text().replace(
        "num_workers = 8", "crop_jitter = 0  # a new data setting\nnum_workers = 8")
    (tmp_path / 'config.py').write_text(source)
    spec = importlib.util.spec_from_file_location('config_copy', tmp_path / 'config.py')
    copy = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(copy)
    monkeypatch.setattr(settings, 'config', copy)
    settings.documentation.cache_clear()
    try:
        assert 'crop_jitter' in settings.script_settings('train')
        assert settings.documentation()['crop_jitter'] == ('data', 'a new data setting')
        assert 'crop_jitter' not in settings.script_settings('test') + settings.script_settings('inference')
        assert settings.parse(['--crop_jitter=3'], 'train').crop_jitter == 3
    finally:
        settings.documentation.cache_clear()


@pytest.mark.parametrize('arg', [
    '--chunk=abc', '--chunk=1.5', '--chunk=[1]', '--scale=[2]', '--scale=two', '--save_images=1',
    '--save_images=yes', '--test_scales=True', '--hidden_list={256}', '--scale=True',
])
def test_wrong_type_is_refused(arg):
    with pytest.raises(ValueError, match=arg.split('=')[0]):
        settings.parse([arg])


@pytest.mark.parametrize('arg', ['chunk=10', '--chunk', '-chunk=10'])
def test_malformed_argument_is_refused(arg):
    with pytest.raises(ValueError, match='--name=value'):
        settings.parse([arg])


@pytest.mark.parametrize('experiment, expected', [
    ('rdn-liif', {'encoder': 'rdn'}),
    ('edsr-baseline-liif-c', {'cell_decode': False, 'feat_unfold': True, 'local_ensemble': True}),
    ('edsr-baseline-liif-u', {'feat_unfold': False, 'cell_decode': True}),
    ('edsr-baseline-liif-e', {'local_ensemble': False, 'cell_decode': True}),
    ('edsr-baseline-liif-d', {'hidden_list': [256, 256]}),
    ('edsr-baseline-liif-x2', {'scale_min': 2.0, 'scale_max': 2.0}),
    ('edsr-baseline-liif-x3', {'scale_min': 3.0, 'scale_max': 3.0}),
    ('edsr-baseline-liif-x4', {'scale_min': 4.0, 'scale_max': 4.0}),
])
def test_experiment_sets_its_ablation(experiment, expected):
    cfg = settings.parse([f'--experiment={experiment}'])
    assert {k: getattr(cfg, k) for k in expected} == expected
    assert cfg.out_dir == f'results/{experiment}'
    assert settings.model_options(cfg)['encoder'] == expected.get('encoder', 'edsr-baseline')


def test_explicit_overrides_win_over_the_experiment_in_any_order():
    for argv in (['--experiment=edsr-baseline-liif-c', '--cell_decode=True'],
                 ['--cell_decode=True', '--experiment=edsr-baseline-liif-c']):
        cfg = settings.parse(argv)
        assert cfg.experiment == 'edsr-baseline-liif-c' and cfg.cell_decode is True


def test_unknown_experiment_lists_the_choices():
    with pytest.raises(ValueError, match='rdn-liif'):
        settings.parse(['--experiment=edsr-liif'])


def test_test_settings_are_checked(tmp_path, benchmark_root, official_weights):
    good = [f'--test_root={benchmark_root}', f'--weights={official_weights}']
    settings.check(settings.parse(good), 'test')
    assert 'test_root' in check_problems([f'--test_root={tmp_path / "nowhere"}', good[1]], 'test')
    assert 'weights' in check_problems([good[0], f'--weights={tmp_path / "none.pth"}'], 'test')
    assert 'Set6' in check_problems(good + ['--test_sets=Set5,Set6'], 'test')
    for scales in ('[0]', '[-2]', '[4,1e999]', '[]'):
        assert 'test_scales' in check_problems(good + [f'--test_scales={scales}'], 'test')
    settings.check(settings.parse(good + ['--chunk=0']), 'test')  # 0 = automatic chunk size
    assert 'chunk' in check_problems(good + ['--chunk=-1'], 'test')
    both = check_problems([f'--test_root={tmp_path / "nowhere"}', good[1], '--test_scales=[-1]'], 'test')
    assert 'test_root' in both and 'test_scales' in both  # every problem at once


def test_inference_settings_are_checked(tmp_path):
    image = tmp_path / 'a.png'
    image.write_bytes(b'')  # check() only needs the path to exist
    good = [f'--input={image}']
    settings.check(settings.parse(good), 'inference')
    settings.check(settings.parse(good + ['--size=[7,9]', '--scale=0']), 'inference')  # size overrides scale
    assert 'input' in check_problems([f'--input={tmp_path / "missing.png"}'], 'inference')
    for arg, name in [('--scale=0', 'scale'), ('--scale=-2', 'scale'), ('--scale=1e999', 'scale'),
                      ('--size=[0,10]', 'size'), ('--size=[10]', 'size'), ('--size=[10,2.5]', 'size'),
                      ('--scale_hw=[2,0]', 'scale_hw'), ('--scale_hw=[2]', 'scale_hw'),
                      ('--max_pixels=0', 'max_pixels'), ('--bits=12', 'bits')]:
        assert name in check_problems(good + [arg], 'inference'), arg


def test_settings_are_saved_and_read_back(tmp_path):
    cfg = settings.parse(['--test_scales=[2.5]', '--experiment=rdn-liif'])
    settings.save(cfg, tmp_path / 'run' / 'config.json')
    assert json.loads((tmp_path / 'run' / 'config.json').read_text()) == vars(cfg)


@pytest.mark.slow
def test_script_reports_a_bad_setting_without_traceback():
    done = subprocess.run([sys.executable, 'inference.py', '--scael=2'], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 2 and done.stderr.count('\n') == 1
    assert done.stderr.startswith("error: unknown setting --scael for inference.py; did you mean --scale?")
    assert 'Traceback' not in done.stderr
    done = subprocess.run([sys.executable, 'inference.py', '--scale=0'], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 2 and 'scale must be a positive number' in done.stderr
    assert 'Traceback' not in done.stderr
