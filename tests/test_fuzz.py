"""Property-based fuzzing (hypothesis) of what users and files give the project: the `--name=value` parser and
each script's settings checks; inference.py's --scale, --scale_hw, --size and --window end to end; the viewer's
query parameters and request paths through a real server; checkpoint loading; image reading. The property is
always a clear refusal (ValueError; one `error:` line and exit status 2; a 4xx JSON answer) or a correct
result, never a traceback. Example counts are fixed and the examples derandomized: every run tries the same."""
import contextlib
import copy
import http.client
import io
import json
import os
import pickle
import random
import socket
import struct
import uuid
import zipfile
import zlib
from pathlib import Path
from urllib.parse import quote

import cv2
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, example, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

import checkpoint
import imgproc
import inference
import settings
import train
from checkpoint import model_from_checkpoint, read_checkpoint
from cli import run_main
from helpers import load_test_script, small, tiny
from imgproc import ImageError, load_image, write_image
from model import build_model
from scripts.viewer import MAX_VIEW_PIXELS, MAX_ZOOM, Viewer, make_server, parse_view, serve_in_thread

pytestmark = pytest.mark.usefixtures('one_thread')


def fuzz(examples: int):
    """A fixed number of derandomized examples, no deadline (a busy machine), no example database on disk."""
    return hypothesis_settings(max_examples=examples, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.function_scoped_fixture])


def run_script(main, argv: list[str]) -> tuple[int, str, str]:
    """run_main(main, argv) in this process: (exit status, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = run_main(main, argv)
    return status, out.getvalue(), err.getvalue()


def assert_one_error_line(status: int, out: str, err: str) -> None:
    lines = [line for line in err.splitlines() if line.strip()]
    assert status == 2 and len(lines) == 1 and lines[0].startswith('error: ') and not out, (status, out, err)


# ---------------------------------------------------------------- settings

# what people type after --name=: numbers, lists and words, and what breaks parsers: deep nesting, huge
# numbers, unhashable literals, odd characters
SCALARS = st.one_of(st.integers(-10, 10 ** 6), st.integers(), st.floats(), st.booleans(), st.text(max_size=6))
VALUE_TEXT = st.one_of(
    st.text(max_size=30),
    SCALARS.map(repr), SCALARS.map(str),
    st.lists(SCALARS, max_size=5).map(repr),
    st.lists(st.integers(-3, 5000), max_size=5).map(lambda v: ','.join(map(str, v))),
    st.tuples(st.sampled_from('[({'), st.integers(1, 400)).map(lambda t: t[0] * t[1]),
    st.integers(1, 200_000).map(lambda n: '-' * n + '1'),
    st.integers(4000, 6000).map(lambda n: '7' * n),
    st.sampled_from(['{[]: 1}', '{1, [2]}', 'True', 'false', 'None', '1e999', '-0.0', 'nan', 'inf', '[]', '', '"x"',
                     '0x10', '1_000', '\x00', '[1,', 'print(1)', '__import__("os")', "b'x'", '1j']),
)


@fuzz(300)
@given(script=st.sampled_from(sorted(settings.SCRIPTS)), data=st.data())
@pytest.mark.slow
def test_any_value_parses_to_the_settings_type_or_is_refused(script, data):
    """settings.parse gives the default's type or a ValueError; settings.check then passes or gives a ValueError."""
    name = data.draw(st.sampled_from(settings.script_settings(script)), label='name')
    text = data.draw(VALUE_TEXT, label='text')
    try:
        cfg = settings.parse([f'--{name}={text}'], script)
    except ValueError:
        return
    assert type(getattr(cfg, name)) is type(settings.defaults()[name])
    with contextlib.suppress(ValueError):
        settings.check(cfg, script)


@pytest.fixture
def restored_rngs():
    """Python's, NumPy's and torch's generator states as they were (the settings' seed sets them)."""
    states = random.getstate(), np.random.get_state(), torch.get_rng_state()
    yield
    random.setstate(states[0])
    np.random.set_state(states[1])
    torch.set_rng_state(states[2])


NUMBERS = [name for name in settings.script_settings('train') if type(settings.defaults()[name]) in (int, float)]


@fuzz(100)
@given(name=st.sampled_from(NUMBERS), value=st.one_of(st.integers(), st.floats(), st.integers(-2, 2 ** 33)))
def test_the_numbers_the_checks_pass_work_for_the_libraries(data, tmp_path_factory, restored_rngs, name, value):
    """Whatever thread count and seed settings.check passes (on settings that are otherwise fine), torch
    and NumPy take: a seed of 2**32 or 2**31 threads did not get that far."""
    try:
        cfg = settings.parse(tiny(data, tmp_path_factory.getbasetemp() / 'unused', f'--{name}={value!r}'), 'train')
        settings.check(cfg, 'train')
    except ValueError:
        return
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(cfg.threads or threads)
    finally:
        torch.set_num_threads(threads)
    train.seed_everything(cfg.seed)


MAINS = {'train': train.main, 'test': load_test_script().main, 'inference': inference.main}


@pytest.fixture(scope='module')
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp('cwd')


@fuzz(80)
@given(script=st.sampled_from(['train', 'test', 'inference']), data=st.data())
@pytest.mark.slow
def test_refused_settings_are_one_error_line_and_write_nothing(workdir, script, data):
    """A command line that settings.parse or settings.check refuses ends run_main with exit status 2, one
    `error:` line and nothing written (the scripts run in an empty folder, relative outputs land there)."""
    names = data.draw(st.lists(st.sampled_from(settings.script_settings(script) + ['bogus', 'sacle']), max_size=3))
    argv = [f'--{name}={data.draw(VALUE_TEXT)}' for name in names] + data.draw(st.lists(st.text(max_size=8), max_size=1))
    with contextlib.chdir(workdir):  # relative paths (the defaults) are looked for here, and would be written here
        try:
            settings.check(settings.parse(argv, script), script)
        except ValueError:
            assert_one_error_line(*run_script(MAINS[script], argv))
    assert not list(workdir.iterdir())


# ---------------------------------------------------------------- inference sizes and windows

H, W, MAX_PIXELS = 9, 7, 3000  # the input, and --max_pixels: every output accepted stays small


@pytest.fixture(scope='module')
def small_job(benchmark_root, tmp_path_factory):
    """A 9x7 crop of Set5 bird and a small EDSR-baseline-LIIF checkpoint ([16] decoder), in a folder."""
    folder = tmp_path_factory.mktemp('job')
    write_image(folder / 'in.png', cv2.imread(str(benchmark_root / 'Set5' / 'HR' / 'bird.png'))[100:100 + H, 50:50 + W])
    torch.manual_seed(0)
    model = build_model(hidden_list=[16])
    torch.save({'model': model.state_dict(), 'options': model.options}, folder / 'small.pth')
    return folder


def expected_window(kind: str, value, window) -> tuple[int, int] | None:
    """The (height, width) inference.py must write for the 9x7 input, from the README's definitions: a
    factor s gives round(9 s) x round(7 s), [sh, sw] round(9 sh) x round(7 sw), [H, W] exactly that ([]:
    the factor, 4); a
    window [top, left, height, width] inside it, that part. None where it must refuse: a factor that is not
    a finite number > 0, a size that is not two ints > 0, an empty output, a window that is not four ints
    inside the output, a side beyond 2**24 pixels, or more than --max_pixels pixels."""
    def number(v):
        return type(v) in (int, float) and 0 < v < float('inf')
    if kind != 'scale' and value == []:  # [] is the default, not set: the factor (4) counts
        kind, value = 'scale', 4.0
    factors = [value, value] if kind == 'scale' else value
    if kind in ('scale', 'scale_hw'):
        if len(factors) != 2 or not all(map(number, factors)) or not all(np.isfinite([H * factors[0], W * factors[1]])):
            return None
        size = round(H * factors[0]), round(W * factors[1])
    else:
        if len(value) != 2 or not all(type(v) is int and v > 0 for v in value):
            return None
        size = tuple(value)
    if min(size) < 1 or max(size) > 2 ** 24:  # render.MAX_SIDE: float32 centres tell pixels apart up to there
        return None
    if window:  # None, and [] (the default), are the whole output
        if len(window) != 4 or not all(type(v) is int for v in window):
            return None
        top, left, height, width = window
        if top < 0 or left < 0 or height < 1 or width < 1 or top + height > size[0] or left + width > size[1]:
            return None
        size = height, width
    return size if size[0] * size[1] <= MAX_PIXELS else None


FACTORS = st.one_of(st.floats(-2, 12), st.integers(-2, 12), st.floats(allow_nan=True, allow_infinity=True),
                    st.sampled_from([1e308, 5e-324, 0.05, 0.0556, 2.5]))
SIDES = st.one_of(st.integers(-2, 80), st.integers(), st.booleans(), st.floats(0, 50))


@fuzz(40)
@given(kind=st.sampled_from(['scale', 'scale_hw', 'size']), data=st.data())
def test_inference_writes_exactly_the_size_and_window_asked_or_refuses(small_job, kind, data):
    value = data.draw(FACTORS if kind == 'scale' else st.lists(FACTORS if kind == 'scale_hw' else SIDES, max_size=3))
    window = data.draw(st.none() | st.lists(st.one_of(st.integers(-2, 60), st.integers(), st.floats(0, 9)), max_size=5))
    out = small_job / 'out.png'
    argv = [f'--input={small_job / "in.png"}', f'--output={out}', f'--weights={small_job / "small.pth"}',
            f'--max_pixels={MAX_PIXELS}', f'--{kind}={value!r}'] + ([f'--window={window!r}'] if window is not None else [])
    expected = expected_window(kind, value, window)
    try:
        status, stdout, stderr = run_script(inference.main, argv)
        if expected is None:
            assert_one_error_line(status, stdout, stderr)
            assert not out.exists()
        else:
            assert status == 0, stderr
            assert cv2.imread(str(out)).shape == (*expected, 3)
    finally:
        out.unlink(missing_ok=True)


# ---------------------------------------------------------------- the viewer

QUERY_VALUES = st.one_of(st.text(max_size=8), st.integers().map(str), st.floats().map(repr),
                         st.integers(0, 300).map(str), st.floats(0, 40).map(repr), st.sampled_from(['liif', 'bicubic']))
QUERY = st.lists(st.tuples(st.sampled_from(['mode', 'zoom', 'top', 'left', 'height', 'width', 'x', '']), QUERY_VALUES),
                 max_size=9)


def query_text(pairs) -> str:
    return '&'.join(f'{quote(k)}={quote(v)}' for k, v in pairs)


@fuzz(300)
@given(pairs=QUERY, raw=st.text(max_size=40), shape=st.tuples(st.integers(1, 40), st.integers(1, 40)))
def test_parse_view_gives_a_view_inside_the_render_or_refuses(pairs, raw, shape):
    for query in (query_text(pairs), raw):
        try:
            view = parse_view(query, shape)
        except ValueError:
            continue
        size = round(shape[0] * view.zoom), round(shape[1] * view.zoom)
        assert view.mode in ('liif', 'bicubic') and 0 < view.zoom <= MAX_ZOOM
        assert view.top >= 0 and view.left >= 0 and view.height >= 1 and view.width >= 1
        assert view.top + view.height <= size[0] and view.left + view.width <= size[1]
        assert view.height * view.width <= MAX_VIEW_PIXELS


@pytest.fixture(scope='module')
def server(small_job):
    """The viewer on the 9x7 crop with a small random LIIF: every view it accepts is at most 288x224."""
    viewer = Viewer(small_job / 'in.png', small('liif-fast'))
    server = make_server(viewer, '127.0.0.1', 0)
    serve_in_thread(server)
    yield server
    server.shutdown()
    server.server_close()


def assert_answer(status: int, content_type: str, body: bytes) -> None:
    """200 with content, or a 4xx with a one-line JSON {'error': ...}; never a 5xx."""
    assert status < 500, (status, body[:300])
    if status != 200:
        assert 400 <= status and content_type == 'application/json', (status, content_type, body[:300])
        message = json.loads(body)['error']
        assert message and '\n' not in message
    else:
        assert body


PATHS = st.one_of(st.sampled_from(['/render', '/info', '/', '/image.png', '/static/viewer.js', '/static/', '/render/']),
                  st.text(max_size=20).map(lambda t: '/' + quote(t, safe='/%?&=.')))


@fuzz(50)
@given(path=PATHS, pairs=QUERY)
def test_the_server_answers_every_query_with_a_view_or_a_4xx_json(server, path, pairs):
    conn = http.client.HTTPConnection('127.0.0.1', server.server_port, timeout=300)
    try:
        conn.request('GET', f'{path}?{query_text(pairs)}')
        response = conn.getresponse()
        assert_answer(response.status, response.getheader('Content-Type'), response.read())
    finally:
        conn.close()


def raw_request(port: int, request_line: bytes) -> tuple[int, str, bytes]:
    """Send one request line (and a Host header) over a socket: (status, content type, body) of the answer."""
    with socket.create_connection(('127.0.0.1', port), timeout=300) as sock:
        sock.sendall(request_line + f'\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n'.encode())
        answer = b''
        while chunk := sock.recv(65536):
            answer += chunk
    head, _, body = answer.partition(b'\r\n\r\n')
    lines = head.decode('latin-1').split('\r\n')
    headers = dict(line.split(': ', 1) for line in lines[1:])
    return int(lines[0].split()[1]), headers.get('Content-Type', ''), body


@fuzz(50)
@given(path=st.text(min_size=1, max_size=60).filter(lambda t: t.strip() and '\r' not in t and '\n' not in t),
       method=st.sampled_from(['GET', 'GET', 'GET', 'POST', 'HEAD', 'DELETE', 'BREW']))
@example(path='http://[x/info', method='GET').via('urlsplit took it for an IPv6 host: a traceback, no answer')
@example(path='/render?zoom=%ff&top=%zz', method='GET').via('undecodable escapes')
@example(path='/info', method='POST').via('http.server answered 501')
def test_raw_request_paths_get_an_answer_never_a_5xx(server, path, method):
    """Paths as bytes on the wire (no URL quoting: 'http://[x', '%zz', control characters, non-ASCII), any method."""
    status, content_type, body = raw_request(server.server_port, f'{method} {path} HTTP/1.1'.encode('utf-8', 'replace'))
    if method == 'HEAD' and status != 200:
        body = b'{"error": "-"}'  # a HEAD answer has no body to check
    assert_answer(status, content_type, body)


# ---------------------------------------------------------------- checkpoints

@pytest.fixture(scope='module')
def checkpoints(small_job, data, tmp_path_factory):
    """A project checkpoint (small_job's), an official-format one of the same model, and a train.py
    checkpoint with optimiser state, with the train.py run that can resume it."""
    folder = tmp_path_factory.mktemp('checkpoints')
    ours = torch.load(small_job / 'small.pth', weights_only=True)
    official = {'model': {'name': 'liif', 'sd': ours['model'], 'args': {
        'encoder_spec': {'name': 'edsr-baseline', 'args': {'no_upsampling': True}},
        'imnet_spec': {'name': 'mlp', 'args': {'out_dim': 3, 'hidden_list': [16]}}}}}
    cfg = settings.parse(tiny(data, folder / 'run', '--epochs=3'), 'train')
    run = train.build_run(cfg, torch.device('cpu'), 1, 4)
    for p in run.model.parameters():
        p.grad = torch.rand_like(p)
    run.optimizer.step()
    run.epoch, run.step = 1, 4
    kinds = {'ours': ours, 'official': official, 'train': run.checkpoint()}
    return {**kinds, 'bytes': {k: saved(v, folder).read_bytes() for k, v in kinds.items()}, 'run': run, 'folder': folder}


def saved(obj, folder: Path) -> Path:
    path = folder / f'{uuid.uuid4().hex}.pth'
    torch.save(obj, path)
    return path


def loads_or_refuses(path: Path, run=None) -> None:
    """The project's readers take the file (a model; a resumed run) or refuse it with a ValueError."""
    with contextlib.suppress(ValueError):
        options, state = read_checkpoint(path)
        model_from_checkpoint(path)
    if run is not None:
        with contextlib.suppress(ValueError):
            checkpoint.resume(run, path, master=False)
    path.unlink()


@fuzz(30)
@given(data=st.binary(max_size=4096))
def test_random_bytes_are_refused(checkpoints, restored_rngs, data):
    path = checkpoints['folder'] / 'noise.pth'
    path.write_bytes(data)
    for read in (read_checkpoint, lambda p: checkpoint.resume(checkpoints['run'], p, master=False)):
        with pytest.raises(ValueError, match=str(path)):
            read(path)


@fuzz(30)
@given(which=st.sampled_from(['ours', 'official', 'train']), cut=st.floats(0, 1, exclude_max=True))
def test_truncated_checkpoints_are_refused(checkpoints, restored_rngs, which, cut):
    whole = checkpoints['bytes'][which]
    path = checkpoints['folder'] / 'cut.pth'
    path.write_bytes(whole[:int(len(whole) * cut)])
    with pytest.raises(ValueError, match='not a readable PyTorch checkpoint'):
        read_checkpoint(path)
    with pytest.raises(ValueError, match='not a readable PyTorch checkpoint'):
        checkpoint.resume(checkpoints['run'], path, master=False)


@fuzz(20)
@given(which=st.sampled_from(['ours', 'official', 'train']), flips=st.lists(st.tuples(st.floats(0, 1, exclude_max=True),
                                                                                    st.integers(1, 255)), min_size=1, max_size=8))
def test_damaged_bytes_load_or_are_refused(checkpoints, restored_rngs, which, flips):
    data = bytearray(checkpoints['bytes'][which])
    for where, mask in flips:
        data[int(len(data) * where)] ^= mask
    path = checkpoints['folder'] / 'damaged.pth'
    path.write_bytes(bytes(data))
    loads_or_refuses(path, checkpoints['run'])


JUNK = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=5),
              st.sampled_from([torch.zeros(3), torch.ones(2, 2, dtype=torch.int64), torch.zeros(0), torch.tensor(1.5),
                               torch.zeros(16, 3, 3, 3, dtype=torch.float16)])),
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=8), inner, max_size=3),
                            st.tuples(inner, inner)),
    max_leaves=8)


def key_paths(obj, prefix=()) -> list[tuple]:
    """Every key path into nested dicts and lists, down to depth 4."""
    paths = [prefix]
    if len(prefix) < 4 and isinstance(obj, dict):
        for k, v in obj.items():
            paths += key_paths(v, prefix + (k,))
    elif len(prefix) < 4 and isinstance(obj, list):
        for i, v in enumerate(obj[:3]):
            paths += key_paths(v, prefix + (i,))
    return paths


@fuzz(40)
@given(which=st.sampled_from(['ours', 'official', 'train']), data=st.data())
@pytest.mark.slow
def test_wrong_dictionaries_load_or_are_refused(checkpoints, restored_rngs, which, data):
    """A real checkpoint with any part (at any depth) replaced by junk or removed: taken or refused."""
    ckpt = copy.deepcopy(checkpoints[which])
    where = data.draw(st.sampled_from(key_paths(ckpt)[1:]), label='where')
    parent = ckpt
    for key in where[:-1]:
        parent = parent[key]
    if data.draw(st.booleans(), label='remove') and isinstance(parent, dict):
        del parent[where[-1]]
    else:
        parent[where[-1]] = data.draw(JUNK, label='junk')
    loads_or_refuses(saved(ckpt, checkpoints['folder']), checkpoints['run'])


@fuzz(30)
@given(obj=JUNK)
def test_junk_of_any_shape_is_refused(checkpoints, restored_rngs, obj):
    path = saved(obj, checkpoints['folder'])
    with pytest.raises(ValueError):
        read_checkpoint(path)
    with pytest.raises(ValueError):
        checkpoint.resume(checkpoints['run'], path, master=False)


@fuzz(20)
@given(members=st.dictionaries(st.text(min_size=1, max_size=12), st.binary(max_size=64), max_size=4))
def test_zip_files_that_are_not_checkpoints_are_refused(checkpoints, members):
    path = checkpoints['folder'] / 'archive.pth'
    with zipfile.ZipFile(path, 'w') as archive:
        for name, content in members.items():
            archive.writestr(name, content)
    with pytest.raises(ValueError, match='not a readable PyTorch checkpoint'):
        read_checkpoint(path)


class RunsACommand:
    """Unpickling this would run a shell command (pickle calls os.system with it)."""

    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


@pytest.mark.parametrize('writer', ['torch.save', 'pickle'])
def test_a_pickle_that_would_run_code_is_refused_and_runs_nothing(checkpoints, tmp_path, writer):
    marker = tmp_path / f'pwned-{uuid.uuid4().hex}'
    payload = {'model': RunsACommand(f'touch {marker}'), 'options': {'model': 'liif'}}
    path = tmp_path / 'evil.pth'
    if writer == 'torch.save':
        torch.save(payload, path)
    else:
        path.write_bytes(pickle.dumps(payload))
    pickle.loads(pickle.dumps(RunsACommand('true')))  # the payload does run commands when unpickled blindly
    for read in (read_checkpoint, model_from_checkpoint, lambda p: checkpoint.resume(checkpoints['run'], p, master=False)):
        with pytest.raises(ValueError, match='not a readable PyTorch checkpoint'):
            read(path)
    status, out, err = run_script(inference.main, [f'--weights={path}', f'--output={tmp_path / "o.png"}'])
    assert_one_error_line(status, out, err)
    assert not marker.exists()


# ---------------------------------------------------------------- images

@pytest.fixture(scope='module')
def image_files(benchmark_root, train_root, tmp_path_factory) -> dict[str, bytes]:
    """Real small files: a PNG and a JPEG of a 40x32 Set5 crop (OpenCV's encoders), a lossless WebP of T91."""
    crop = cv2.imread(str(benchmark_root / 'Set5' / 'HR' / 'head.png'))[100:140, 90:122]
    return {'png': cv2.imencode('.png', crop)[1].tobytes(), 'jpg': cv2.imencode('.jpg', crop)[1].tobytes(),
            'webp': (train_root / 'T91' / 't1.webp').read_bytes()}


def decodes_or_refuses(path: Path) -> None:
    """load_image refuses the file with an ImageError naming it, or gives an HxWx3 image of its header's size."""
    try:
        img = load_image(path)
    except ImageError as e:
        assert str(path) in str(e)
        return
    assert img.ndim == 3 and img.shape[2] == 3 and img.dtype in (np.uint8, np.uint16)
    assert img.shape[:2] == imgproc.header_size(path)


@fuzz(50)
@given(kind=st.sampled_from(['png', 'jpg', 'webp']), cut=st.floats(0, 1, exclude_max=True))
def test_truncated_images_are_refused(image_files, tmp_path_factory, kind, cut):
    path = tmp_path_factory.getbasetemp() / f'cut.{kind}'
    path.write_bytes(image_files[kind][:int(len(image_files[kind]) * cut)])
    with pytest.raises(ImageError, match=str(path)):
        load_image(path)


@fuzz(100)
@given(kind=st.sampled_from(['png', 'jpg', 'webp']),
       edits=st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.binary(min_size=1, max_size=4)), min_size=1,
                      max_size=6))
def test_damaged_images_decode_or_are_refused(image_files, tmp_path_factory, kind, edits):
    data = bytearray(image_files[kind])
    for where, new in edits:
        at = int(len(data) * where)
        data[at:at + len(new)] = new
    path = tmp_path_factory.getbasetemp() / f'damaged.{kind}'
    path.write_bytes(bytes(data))
    decodes_or_refuses(path)


def png_claiming(height: int, width: int) -> bytes:
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack('>I', len(body)) + kind + body + struct.pack('>I', zlib.crc32(kind + body))
    return (b'\x89PNG\r\n\x1a\n' + chunk(b'IHDR', struct.pack('>IIBBBBB', width, height, 8, 2, 0, 0, 0))
            + chunk(b'IDAT', zlib.compress(b'\0' * 1000)) + chunk(b'IEND', b''))


def jpeg_claiming(jpeg: bytes, height: int, width: int) -> bytes:
    at = jpeg.index(b'\xff\xc0') + 5  # the baseline frame header: precision, then height and width
    return jpeg[:at] + struct.pack('>HH', height, width) + jpeg[at + 4:]


def webp_claiming(webp: bytes, height: int, width: int) -> bytes:
    """A lossless WebP (one VP8L chunk at byte 12) whose bitstream header says width x height: 14-bit
    fields of size - 1 after the 0x2f signature byte."""
    bits = int.from_bytes(webp[21:25], 'little') & ~((1 << 28) - 1) | (width - 1) | (height - 1) << 14
    return webp[:21] + bits.to_bytes(4, 'little') + webp[25:]


@pytest.mark.parametrize('kind, size', [('png', (100_000, 100_000)), ('png', (10_001, 10_000)),
                                        ('jpg', (65_535, 65_535)), ('webp', (16_384, 16_384))])
def test_a_header_claiming_too_many_pixels_is_refused_before_decoding(image_files, tmp_path, monkeypatch, kind, size):
    data = png_claiming(*size) if kind == 'png' else {'jpg': jpeg_claiming, 'webp': webp_claiming}[kind](
        image_files[kind], *size)
    path = tmp_path / f'huge.{kind}'
    path.write_bytes(data)

    def decode(*args):
        raise AssertionError('the pixels were decoded')
    monkeypatch.setattr(imgproc.cv2, 'imread', decode)
    with pytest.raises(ImageError, match='its header claims .* more than the 100,000,000'):
        load_image(path)


def test_a_damaged_image_is_one_error_line_for_the_scripts(image_files, small_job, tmp_path):
    path = tmp_path / 'cut.jpg'
    path.write_bytes(image_files['jpg'][:len(image_files['jpg']) // 2])
    status, out, err = run_script(inference.main, [f'--input={path}', f'--weights={small_job / "small.pth"}',
                                                   f'--output={tmp_path / "out.png"}'])
    assert_one_error_line(status, out, err)
    assert 'truncated or damaged' in err and not (tmp_path / 'out.png').exists()
