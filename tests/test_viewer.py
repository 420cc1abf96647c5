"""The zoom viewer (scripts/viewer.py) and the figure script: the server's parameters, paths and
render queue, its bicubic against PIL itself, its views against the whole render, the command line,
and the real page in headless Chromium against the model's renders."""
import functools
import http.client
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from io import BytesIO
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from checkpoint import model_from_checkpoint, read_checkpoint
from cli import run_main
from conftest import butterfly_crop
from imgproc import bicubic_window, load_uint8, pil_resize, quantize
from onnx_model import OnnxModel
from scripts import make_figure
from scripts import viewer as viewer_script
from scripts.viewer import LatestOnly, Superseded, Viewer, make_server, parse_view, serve_in_thread

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures('one_thread')


@pytest.fixture(scope='module')
def crop(benchmark_root, tmp_path_factory) -> Path:
    """A 64 x 56 crop of Set5 butterfly (not square, so that height and width cannot be swapped unseen)."""
    return butterfly_crop(benchmark_root, tmp_path_factory.mktemp('viewer'), 'butterfly_crop.png',
                          slice(100, 164), slice(60, 116))


@pytest.fixture(scope='module')
def model(official_weights):
    return model_from_checkpoint(official_weights).eval()


@pytest.fixture(scope='module')
def viewer(crop, model) -> Viewer:
    return Viewer(crop, model)


@pytest.fixture(scope='module')
def server(viewer):
    server = make_server(viewer, '127.0.0.1', 0)
    serve_in_thread(server)
    yield server
    server.shutdown()
    server.server_close()


def get(server, path: str) -> tuple[int, str, bytes]:
    """(status, content type, body) of GET path, sent as is (no normalisation of '..' or %-escapes)."""
    conn = http.client.HTTPConnection('127.0.0.1', server.server_address[1], timeout=120)
    try:
        conn.request('GET', path)
        response = conn.getresponse()
        return response.status, response.getheader('Content-Type'), response.read()
    finally:
        conn.close()


def png(body: bytes) -> np.ndarray:
    return np.asarray(Image.open(BytesIO(body)).convert('RGB'))


@functools.cache
def whole_render(model, viewer, zoom: float) -> np.ndarray:
    size = (round(viewer.shape[0] * zoom), round(viewer.shape[1] * zoom))
    return quantize(model.render(viewer.lr, size), 8)


def reference(model, viewer, zoom: float, window) -> np.ndarray:
    """The window of the whole render at zoom, in 8 bits: what the page must show there."""
    top, left, height, width = window
    return whole_render(model, viewer, zoom)[top:top + height, left:left + width].copy()


def assert_within_one_level(got: np.ndarray, expected: np.ndarray) -> None:
    assert got.shape == expected.shape
    assert np.abs(got.astype(int) - expected.astype(int)).max() <= 1  # 1/255 after 8-bit rounding


# ---------------------------------------------------------------- bicubic and the render queue

@pytest.mark.parametrize('zoom', [0.3, 0.7, 1, 1.37, 2.5, 4, 7.3, 12, 30])
def test_bicubic_window_is_pils_own_resize(crop, zoom):
    img = load_uint8(crop)[:40, :53]
    size = (round(40 * zoom), round(53 * zoom))
    full = pil_resize(img, size)
    rng = np.random.default_rng(round(zoom * 100))
    windows = [(0, 0, *size), (size[0] - 1, size[1] - 1, 1, 1)]
    for _ in range(12):
        h, w = rng.integers(1, size[0] + 1), rng.integers(1, size[1] + 1)
        windows.append((int(rng.integers(0, size[0] - h + 1)), int(rng.integers(0, size[1] - w + 1)), int(h), int(w)))
    for top, left, h, w in windows:
        np.testing.assert_array_equal(bicubic_window(img, size, (top, left, h, w)), full[top:top + h, left:left + w])


def test_latest_only_runs_one_job_and_drops_superseded_waiting_ones():
    queue, release, running = LatestOnly(), threading.Event(), []
    results = {}

    def job(name):
        def work():
            running.append(name)
            assert len(running) - len(results) <= 1  # never two at once
            if name == 'a':
                release.wait(10)
            return name
        return work

    def submit(name):
        try:
            results[name] = queue.run(job(name))
        except Superseded:
            results[name] = 'superseded'

    threads = {}
    for name in 'abc':
        threads[name] = threading.Thread(target=submit, args=(name,))
        threads[name].start()
        deadline = time.monotonic() + 10
        while queue.submitted < 'abc'.index(name) + 1 and time.monotonic() < deadline:
            time.sleep(0.001)
    threads['b'].join(10)  # dropped as soon as c came, while a still runs
    assert results == {'b': 'superseded'} and running == ['a']
    release.set()
    for t in threads.values():
        t.join(10)
    assert results == {'a': 'a', 'b': 'superseded', 'c': 'c'} and running == ['a', 'c']


# ---------------------------------------------------------------- the server

@pytest.mark.parametrize('zoom, window', [(2.5, (10, 7, 50, 60)), (0.75, (0, 0, 48, 42)), (4.3, (200, 150, 40, 30))])
@pytest.mark.slow
def test_a_view_is_the_window_of_the_whole_render(server, viewer, model, zoom, window):
    query = '&'.join(f'{k}={v}' for k, v in zip(('top', 'left', 'height', 'width'), window))
    status, kind, body = get(server, f'/render?mode=liif&zoom={zoom}&{query}')
    assert (status, kind) == (200, 'image/png')
    assert_within_one_level(png(body), reference(model, viewer, zoom, window))
    status, _, body = get(server, f'/render?mode=bicubic&zoom={zoom}&{query}')
    top, left, h, w = window
    full = pil_resize(viewer.image8, (round(64 * zoom), round(56 * zoom)))
    np.testing.assert_array_equal(png(body), full[top:top + h, left:left + w])


GOOD = 'mode=liif&zoom=2&top=0&left=0&height=8&width=8'


@pytest.mark.parametrize('query, message', [
    ('', 'missing'),
    ('mode=liif&zoom=2&top=0&left=0&height=8', 'missing: width'),
    (GOOD + '&x=1', 'unknown: x'),
    (GOOD + '&zoom=3', 'more than once'),
    (GOOD.replace('liif', 'nearest'), 'mode must be'),
    (GOOD.replace('zoom=2', 'zoom=abc'), 'zoom must be a number'),
    (GOOD.replace('zoom=2', 'zoom=nan'), 'finite'),
    (GOOD.replace('zoom=2', 'zoom=inf'), 'finite'),
    (GOOD.replace('zoom=2', 'zoom=0'), 'zoom must be in'),
    (GOOD.replace('zoom=2', 'zoom=-1'), 'zoom must be in'),
    (GOOD.replace('zoom=2', 'zoom=32.5'), 'zoom must be in'),
    (GOOD.replace('zoom=2', 'zoom=0.001'), 'at least one pixel'),
    (GOOD.replace('top=0', 'top=1.5'), 'top must be an integer'),
    (GOOD.replace('top=0', 'top=-1'), 'top and left must be >= 0'),
    (GOOD.replace('height=8', 'height=0'), 'height and width >= 1'),
    (GOOD.replace('top=0', 'top=121'), 'inside the 128x112 output'),
    (GOOD.replace('width=8', 'width=113'), 'it reaches row 8 and column 113'),
    (GOOD.replace('height=8', 'height=99999999999999999999'), 'it reaches row'),
])
def test_bad_parameters_get_400_with_one_line(server, query, message):
    status, kind, body = get(server, '/render?' + query)
    assert (status, kind) == (400, 'application/json')
    error = json.loads(body)['error']
    assert message in error and '\n' not in error


def test_pixels_per_view_are_capped():
    parse_view('mode=liif&zoom=32&top=0&left=0&height=2000&width=2000', (100, 100))
    with pytest.raises(ValueError, match='4,004,001 pixels, more than 4,000,000'):
        parse_view('mode=liif&zoom=32&top=0&left=0&height=2001&width=2001', (100, 100))


@pytest.mark.parametrize('path', [
    '/static/../viewer.py', '/static/..%2fviewer.py', '/static/%2e%2e/viewer.py', '/static/%2E%2E%2F%2E%2E%2FREADME.md',
    '/../README.md', '/%2e%2e/README.md', '/static/', '/static/viewer_page/index.html', '/scripts/viewer.py',
    '/README.md', '/static/viewer.js/..', '/render/../README.md', '//etc/passwd', '/static//etc/passwd',
])
def test_only_its_own_files_are_served(server, path):
    status, kind, body = get(server, path)
    assert (status, kind) == (404, 'application/json') and 'error' in json.loads(body)


def test_other_host_names_are_refused(server):
    """A page elsewhere whose name resolves to 127.0.0.1 (DNS rebinding) cannot read the image."""
    conn = http.client.HTTPConnection('127.0.0.1', server.server_address[1], timeout=30)
    try:
        for host, status in (('evil.example', 403), ('evil.example:8000', 403), ('localhost', 200),
                             (f'127.0.0.1:{server.server_address[1]}', 200)):
            conn.request('GET', '/image.png', headers={'Host': host})
            response = conn.getresponse()
            response.read()
            assert response.status == status, host
    finally:
        conn.close()


def test_a_page_that_goes_away_leaves_no_traceback(server, capsys):
    for path, wait in (('/image.png', 0.3), ('/render?' + GOOD, 0)):
        client = socket.create_connection(('127.0.0.1', server.server_address[1]))
        client.sendall(f'GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n'.encode())
        time.sleep(wait)  # the answer arrived (0.3 s) or not yet: closing with it unread resets the connection
        client.close()
    time.sleep(0.5)
    assert get(server, '/info')[0] == 200
    assert capsys.readouterr().err == ''


def test_page_files_info_and_image(server, viewer):
    assert get(server, '/')[:2] == (200, 'text/html; charset=utf-8')
    assert get(server, '/viewer.js')[:2] == (200, 'text/javascript; charset=utf-8')
    assert get(server, '/viewer.css')[:2] == (200, 'text/css; charset=utf-8')
    info = json.loads(get(server, '/info')[2])
    assert (info['name'], info['height'], info['width'], info['max_zoom']) == ('butterfly_crop.png', 64, 56, 32)
    np.testing.assert_array_equal(png(get(server, '/image.png')[2]), viewer.image8)
    assert not re.search(r'(src|href)="(https?:)?//', get(server, '/')[2].decode())  # nothing from elsewhere


def test_a_failed_render_answers_500_and_the_server_goes_on(server, viewer, monkeypatch, capsys):
    def fail(*args, **kwargs):
        raise RuntimeError("out of memory (made up)")
    monkeypatch.setattr(viewer.model, 'render', fail)
    status, _, body = get(server, '/render?' + GOOD)
    assert status == 500 and json.loads(body)['error'] == "render failed: RuntimeError: out of memory (made up)"
    assert 'out of memory (made up)' in capsys.readouterr().err
    monkeypatch.undo()
    assert get(server, '/render?' + GOOD)[0] == 200


def test_a_newer_view_supersedes_a_waiting_one(server, viewer, monkeypatch):
    release, first = threading.Event(), threading.Event()
    real = viewer.model.render

    def slow(*args, **kwargs):
        if not first.is_set():
            first.set()
            release.wait(20)
        return real(*args, **kwargs)
    monkeypatch.setattr(viewer.model, 'render', slow)
    answers = {}

    def ask(name, top):
        answers[name] = get(server, f'/render?mode=liif&zoom=2&top={top}&left=0&height=8&width=8')[:3:2]

    start = viewer.queue.submitted
    threads = [threading.Thread(target=ask, args=(name, top)) for name, top in (('a', 0), ('b', 8), ('c', 16))]
    for i, t in enumerate(threads):
        t.start()
        deadline = time.monotonic() + 10
        while viewer.queue.submitted < start + i + 1 and time.monotonic() < deadline:
            time.sleep(0.001)
        first.wait(10)
    threads[1].join(10)  # b answered while a still renders: no backlog
    assert set(answers) == {'b'} and answers['b'][0] == 409
    assert json.loads(answers['b'][1])['error'] == 'superseded by a newer view'
    release.set()
    for t in threads:
        t.join(20)
    assert answers['a'][0] == answers['c'][0] == 200


# ---------------------------------------------------------------- the command line

def listening_addresses(port: int) -> set[str]:
    """Local addresses with a TCP socket listening on `port`, from /proc/net/tcp (IPv4)."""
    found = set()
    for line in Path('/proc/net/tcp').read_text().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        address, hex_port = local.split(':')
        if int(hex_port, 16) == port and state == '0A':  # 0A: LISTEN
            found.add(socket.inet_ntoa(bytes.fromhex(address)[::-1]))
    return found


def start_viewer(crop: Path, weights: Path) -> tuple[subprocess.Popen, int]:
    """The viewer command serving crop on a free port, and the port, once it listens."""
    command = [sys.executable, str(ROOT / 'scripts' / 'viewer.py'), f'--input={crop}', f'--weights={weights}',
               '--port=0', '--device=cpu', '--threads=1']
    # SIGINT as a terminal leaves it: a suite started in the background (`pytest ... &` in a script)
    # ignores SIGINT, and an ignored SIGINT is inherited, so Python would install no Ctrl-C handler
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    line = process.stdout.readline()
    match = re.match(r'http://127\.0\.0\.1:(\d+)/', line)
    if not match:
        process.kill()
        pytest.fail(line + process.communicate()[1])
    return process, int(match.group(1))


def ctrl_c(process: subprocess.Popen) -> str:
    """SIGINT, then the process's stderr once it has ended (the wait allows for a busy machine)."""
    process.send_signal(signal.SIGINT)
    return process.communicate(timeout=120)[1]


def thread_cpu_seconds(pid: int) -> float:
    """The most CPU time any thread of process pid but its main one has used, from /proc."""
    most = 0.0
    for task in Path(f'/proc/{pid}/task').iterdir():
        try:
            fields = (task / 'stat').read_text().rsplit(')', 1)[1].split()  # the fields after the name
        except OSError:  # the thread has ended
            continue
        if task.name != str(pid):
            most = max(most, (int(fields[11]) + int(fields[12])) / os.sysconf('SC_CLK_TCK'))  # utime + stime
    return most


@pytest.mark.slow
def test_command_binds_127_0_0_1_by_default_and_stops_cleanly_on_ctrl_c(crop, official_weights):
    process, port = start_viewer(crop, official_weights)
    idle = http.client.HTTPConnection('127.0.0.1', port, timeout=60)
    try:
        assert listening_addresses(port) == {'127.0.0.1'}
        conn = http.client.HTTPConnection('127.0.0.1', port, timeout=60)
        conn.request('GET', '/info')
        assert conn.getresponse().status == 200
        conn.close()
        idle.request('GET', '/info')  # kept open, as a browser does: its thread waits for the next request
        assert idle.getresponse().read()
        err = ctrl_c(process)
    finally:
        process.kill()
        idle.close()
    assert process.returncode == 0 and err == 'stopped\n'


def test_ctrl_c_while_a_view_renders_stops_cleanly(crop, official_weights):
    process, port = start_viewer(crop, official_weights)
    conn = http.client.HTTPConnection('127.0.0.1', port, timeout=60)
    try:
        conn.request('GET', '/render?mode=liif&zoom=8&top=0&left=0&height=400&width=400')  # seconds of CPU
        deadline = time.monotonic() + 120
        while thread_cpu_seconds(process.pid) < 0.3 and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert thread_cpu_seconds(process.pid) >= 0.3, "the view did not start rendering"
        err = ctrl_c(process)
    finally:
        process.kill()
        conn.close()
    assert process.returncode == 0 and err == 'stopped\n'


def test_server_close_ends_idle_connections_and_leaves_a_render_running(viewer, monkeypatch):
    server = make_server(viewer, '127.0.0.1', 0)
    serving = serve_in_thread(server)
    port = server.server_address[1]
    idle, rendering = (http.client.HTTPConnection('127.0.0.1', port, timeout=60) for _ in range(2))
    release, entered = threading.Event(), threading.Event()
    real = viewer.model.render

    def held(*args, **kwargs):
        entered.set()
        release.wait(60)
        return real(*args, **kwargs)
    monkeypatch.setattr(viewer.model, 'render', held)
    try:
        idle.request('GET', '/info')
        assert idle.getresponse().read()
        rendering.request('GET', '/render?' + GOOD)
        assert entered.wait(60)
        server.shutdown()
        serving.join(60)
        server.server_close()  # returns while the model renders: that cannot be interrupted
        assert server.busy()
    finally:
        release.set()
    for thread in server.connections:
        thread.join(60)
    assert not server.busy()  # the idle connection's thread ended too: server_close closed its socket
    idle.close()
    rendering.close()


@pytest.mark.parametrize('args, message', [
    (['--input=MISSING.png'], 'does not exist'),
    (['--input=NOT_AN_IMAGE'], 'not a readable image'),
    (['--input=CROP', '--weights=JUNK'], 'JUNK'),
    (['--input=CROP', '--port=70000'], '--port must be in 0..65535'),
    (['--input=CROP', '--port=BUSY'], 'the port is in use'),
    (['--input=CROP', '--amp=fp8'], 'invalid choice'),
    (['--input=CROP', '--zoom=3'], 'unrecognized arguments: --zoom=3'),
    ([], 'required: --input'),
])
def test_command_errors_are_one_line_and_status_2(crop, official_weights, tmp_path, capsys, args, message):
    (tmp_path / 'notes.png').write_text('not an image')
    (tmp_path / 'junk.pth').write_bytes(b'not a checkpoint')
    busy = socket.socket()
    busy.bind(('127.0.0.1', 0))
    busy.listen()
    names = {'MISSING': str(tmp_path / 'missing'), 'NOT_AN_IMAGE': str(tmp_path / 'notes.png'), 'CROP': str(crop),
             'JUNK': str(tmp_path / 'junk.pth'), 'BUSY': str(busy.getsockname()[1])}
    args = [re.sub('|'.join(names), lambda m: names[m.group(0)], a) for a in args]
    if not any(a.startswith('--weights') for a in args):
        args.append(f'--weights={official_weights}')
    try:
        assert run_main(viewer_script.main, [*args, '--device=cpu']) == 2
    finally:
        busy.close()
    out, err = capsys.readouterr()
    assert out == '' and err.count('\n') == 1 and err.startswith('error: ') and message.replace(
        'JUNK', names['JUNK']) in err


@pytest.fixture(scope='module')
def onnx_file(official_weights, tmp_path_factory) -> Path:
    from scripts.export_onnx import export_checked
    path = tmp_path_factory.mktemp('onnx') / 'liif.onnx'
    export_checked(official_weights, path)
    return path


@pytest.mark.slow
def test_onnx_weights_show_the_same_views(crop, onnx_file, model, viewer, capsys):
    onnx_viewer = Viewer(crop, OnnxModel(onnx_file, threads=1))
    view = parse_view('mode=liif&zoom=3.3&top=20&left=10&height=60&width=70', onnx_viewer.shape)
    assert_within_one_level(onnx_viewer.render(view), reference(model, viewer, 3.3, view.window))
    assert run_main(viewer_script.main, [f'--input={crop}', f'--weights={onnx_file}', '--amp=bf16']) == 2
    assert capsys.readouterr().err == "error: amp='bf16': an .onnx model runs in fp32 under ONNX Runtime\n"


# ---------------------------------------------------------------- the figure script

def test_figure_panels_are_windows_of_the_whole_renders(crop, model, viewer):
    box, scale = (20, 11, 9), 3
    bicubic, liif = make_figure.region_renders([model], viewer.image8, viewer.lr, box, scale)
    window = (60, 33, 27, 27)
    np.testing.assert_array_equal(bicubic, pil_resize(viewer.image8, (192, 168))[60:87, 33:60])
    assert_within_one_level(liif, reference(model, viewer, scale, window))


def test_figure_command(crop, official_weights, tmp_path, capsys):
    out = tmp_path / 'fig.png'
    assert run_main(make_figure.main, [f'--input={crop}', '--box=4,5,6', '--scales=2,5', f'--out={out}',
                                       f'--weights={official_weights}', '--device=cpu']) == 0
    fig = Image.open(out)
    panel, label, gap = 30, make_figure.LABEL, make_figure.GAP  # 6 px at x5; columns: input and crop, x2, x5
    assert fig.size == (3 * (panel + gap) - gap, 2 * (panel + label) + gap)
    options, state = read_checkpoint(official_weights)  # a second checkpoint: the decoder's output 40 levels up
    state = {**state, 'imnet.layers.8.bias': state['imnet.layers.8.bias'] + 40 / 255 / 0.5}  # model units: 0.5
    brighter = tmp_path / 'brighter.pth'
    torch.save({'model': state, 'options': options}, brighter)
    assert run_main(make_figure.main, [f'--input={crop}', '--box=4,5,6', '--scales=2', f'--out={out}',
                                       f'--weights={official_weights}', f'--compare={brighter}']) == 0
    fig = np.asarray(Image.open(out)).astype(int)  # a third row: the second checkpoint's
    assert fig.shape[:2] == (3 * (12 + label) + 2 * gap, 2 * (12 + gap) - gap)
    rows = [fig[k * (12 + label + gap) + label:][:12, 12 + gap:] for k in range(3)]
    unclipped = rows[1] < 200  # 40 levels up stays below 255 there
    assert unclipped.mean() > 0.5 and np.abs(rows[2] - rows[1] - 40)[unclipped].max() <= 1
    assert run_main(make_figure.main, [f'--input={crop}', '--box=60,5,6', f'--out={tmp_path / "no.png"}']) == 2
    assert 'not inside the 64x56 image' in capsys.readouterr().err and not (tmp_path / 'no.png').exists()


# ---------------------------------------------------------------- the page in headless Chromium

def _no_browser() -> str:
    try:
        make_figure.find_chromium()
    except ValueError as e:
        return str(e)
    return ''


browser = pytest.mark.skipif(bool(_no_browser()), reason=f"browser tests: {_no_browser()}")


@pytest.fixture(scope='module')
def page(server, tmp_path_factory):
    downloads = tmp_path_factory.mktemp('downloads')
    driver = make_figure.headless_chromium(320, 240, downloads)
    driver.downloads = downloads
    driver.get(f'http://127.0.0.1:{server.server_address[1]}/')
    make_figure.wait_ready(driver)
    yield driver
    driver.quit()


def page_state(page) -> dict:
    return page.execute_script("const s = viewer.state, c = document.getElementById('view');"
                               "return {zoom: s.zoom, ox: s.ox, oy: s.oy, cw: c.width, ch: c.height,"
                               "        compare: s.compare, split: s.split}")


def js_round(x: float) -> int:
    return int(np.floor(x + 0.5))  # Math.round


def shown_window(s: dict, shape=(64, 56)) -> tuple[int, int, int, int]:
    """The part of the render the canvas shows, from the page's zoom and offsets."""
    full = (round(shape[0] * s['zoom']), round(shape[1] * s['zoom']))
    top, left = max(0, -s['oy']), max(0, -s['ox'])
    return top, left, min(full[0], s['ch'] - s['oy']) - top, min(full[1], s['cw'] - s['ox']) - left


def check_pixels(page, model, viewer) -> None:
    """The canvas shows the model's window of the view (and bicubic right of the divider when comparing)."""
    s = page_state(page)
    top, left, h, w = window = shown_window(s)
    shown = make_figure.canvas_pixels(page)[s['oy'] + top:s['oy'] + top + h, s['ox'] + left:s['ox'] + left + w]
    expected = reference(model, viewer, s['zoom'], window)
    if s['compare']:
        size = (round(64 * s['zoom']), round(56 * s['zoom']))
        split = max(0, min(w, js_round(s['split'] * s['cw']) - s['ox'] - left))
        expected[:, split:] = pil_resize(viewer.image8, size)[top:top + h, left + split:left + w]
    assert_within_one_level(shown, expected)


@browser
@pytest.mark.slow
def test_page_fits_the_image_and_zooms_at_a_point_to_the_model_window(page, model, viewer):
    page.execute_script('viewer.fit()')
    make_figure.wait_ready(page)
    s = page_state(page)
    fit = min(s['cw'] / 56, s['ch'] / 64)
    assert s['zoom'] == fit
    assert (s['ox'], s['oy']) == ((s['cw'] - round(56 * fit)) // 2, (s['ch'] - round(64 * fit)) // 2)
    assert fit < 3.5  # the zooms below are all above fit
    check_pixels(page, model, viewer)
    x, y, zoom = 130, 95, 4.6
    page.execute_script('viewer.zoomAt(arguments[0], arguments[1], arguments[2])', zoom, x, y)
    make_figure.wait_ready(page)
    t = page_state(page)
    assert t['zoom'] == zoom
    assert t['ox'] == js_round(x - (x - s['ox']) * round(56 * zoom) / round(56 * fit))
    assert t['oy'] == js_round(y - (y - s['oy']) * round(64 * zoom) / round(64 * fit))
    check_pixels(page, model, viewer)
    assert page.find_element('id', 'zoom').text == 'x4.60'
    assert page.find_element('id', 'size').text == 'output 294 x 258 px (h x w)'


@browser
@pytest.mark.slow
def test_keys_wheel_and_limits(page):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.actions.wheel_input import ScrollOrigin
    page.execute_script('viewer.fit(); viewer.zoomAt(8, 0, 0)')
    page.find_element('id', 'view').send_keys('+')
    assert page_state(page)['zoom'] == 10
    page.find_element('id', 'view').send_keys('-')
    assert page_state(page)['zoom'] == 8
    s = page_state(page)
    x, y = 200, 150  # the input point under the cursor stays there
    ActionChains(page).scroll_from_origin(ScrollOrigin.from_viewport(x, y), 0, -100).perform()
    t = page_state(page)
    assert t['zoom'] == pytest.approx(8 * np.exp(0.2))
    assert abs((x - t['ox']) / t['zoom'] - (x - s['ox']) / s['zoom']) < 1 / t['zoom'] + 0.05
    assert abs((y - t['oy']) / t['zoom'] - (y - s['oy']) / s['zoom']) < 1 / t['zoom'] + 0.05
    page.execute_script('viewer.zoomAt(1000, 0, 0)')
    assert page_state(page)['zoom'] == 32
    page.execute_script('viewer.zoomAt(0.01, 0, 0)')
    s = page_state(page)
    assert s['zoom'] == min(s['cw'] / 56, s['ch'] / 64)
    page.find_element('id', 'view').send_keys('0')
    make_figure.wait_ready(page)


@browser
@pytest.mark.slow
def test_trackpad_and_touch_pinch_zoom(page):
    page.execute_script('viewer.fit(); viewer.zoomAt(4, 0, 0)')
    # a trackpad pinch reaches the page as a wheel event with ctrlKey, in small steps
    page.execute_script("document.getElementById('view').dispatchEvent(new WheelEvent('wheel', "
                        "{deltaY: -10, ctrlKey: true, clientX: 100, clientY: 80, cancelable: true}))")
    assert page_state(page)['zoom'] == pytest.approx(4 * np.exp(0.1))
    page.execute_script('viewer.zoomAt(4, 0, 0)')
    page.execute_cdp_cmd('Emulation.setTouchEmulationEnabled', {'enabled': True, 'maxTouchPoints': 2})
    touch = [{'x': 100, 'y': 100, 'id': 0}, {'x': 140, 'y': 100, 'id': 1}]
    page.execute_cdp_cmd('Input.dispatchTouchEvent', {'type': 'touchStart', 'touchPoints': touch})
    touch[1]['x'] = 180  # the fingers twice as far apart: twice the zoom
    page.execute_cdp_cmd('Input.dispatchTouchEvent', {'type': 'touchMove', 'touchPoints': touch})
    page.execute_cdp_cmd('Input.dispatchTouchEvent', {'type': 'touchEnd', 'touchPoints': []})
    page.execute_cdp_cmd('Emulation.setTouchEmulationEnabled', {'enabled': False})
    assert page_state(page)['zoom'] == pytest.approx(8)
    page.execute_script('viewer.fit()')
    make_figure.wait_ready(page)


@browser
@pytest.mark.slow
def test_drag_pans_and_the_new_window_is_rendered(page, model, viewer):
    from selenium.webdriver.common.action_chains import ActionChains
    page.execute_script('viewer.fit(); viewer.zoomAt(4.5, 160, 100)')
    make_figure.wait_ready(page)
    s = page_state(page)
    ActionChains(page).move_to_element(page.find_element('id', 'view')).click_and_hold() \
        .move_by_offset(-37, -23).move_by_offset(-40, 5).release().perform()
    make_figure.wait_ready(page)
    t = page_state(page)
    assert (t['ox'], t['oy']) == (s['ox'] - 77, s['oy'] - 18)
    check_pixels(page, model, viewer)


@browser
@pytest.mark.slow
def test_compare_mode_and_its_divider(page, model, viewer):
    from selenium.webdriver.common.action_chains import ActionChains
    page.execute_script('viewer.fit(); viewer.zoomAt(3.9, 100, 100)')
    page.find_element('id', 'compare').click()
    make_figure.wait_ready(page)
    assert page_state(page)['compare'] and page.find_element('id', 'divider').is_displayed()
    check_pixels(page, model, viewer)
    ActionChains(page).drag_and_drop_by_offset(page.find_element('id', 'divider'), -90, 0).perform()
    s = page_state(page)
    assert s['split'] == pytest.approx((js_round(0.5 * s['cw']) - 90) / s['cw'], abs=1.5 / s['cw'])
    check_pixels(page, model, viewer)
    page.find_element('id', 'compare').click()
    assert not page_state(page)['compare'] and not page.find_element('id', 'divider').is_displayed()


@browser
@pytest.mark.slow
def test_save_view_downloads_the_shown_window(page, model, viewer):
    page.execute_script('viewer.fit(); viewer.zoomAt(3.5, 0, 0)')
    make_figure.wait_ready(page)
    page.find_element('id', 'save').click()
    path = page.downloads / 'butterfly_crop_x3.50.png'
    deadline = time.monotonic() + 20
    while not path.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.2)  # the download's last bytes
    assert_within_one_level(png(path.read_bytes()), reference(model, viewer, 3.5, shown_window(page_state(page))))


@browser
@pytest.mark.slow
def test_alpha_is_shown_over_a_checkerboard_and_save_view_keeps_it(crop, model, tmp_path):
    """An RGBA crop (its left third fully clear, a ramp after it): the canvas shows the checkerboard's two
    greys where it is clear, and the saved view is RGBA with the server's alpha."""
    rgb = load_uint8(crop)
    alpha = np.clip(np.arange(56) * 12 - 200, 0, 255).astype(np.uint8)[None].repeat(64, axis=0)
    Image.fromarray(np.dstack([rgb, alpha])).save(tmp_path / 'rgba.png')
    shown = Viewer(tmp_path / 'rgba.png', model)
    server = make_server(shown, '127.0.0.1', 0)
    serve_in_thread(server)
    driver = make_figure.headless_chromium(320, 240, tmp_path)
    try:
        driver.get(f'http://127.0.0.1:{server.server_address[1]}/')
        make_figure.wait_ready(driver)
        driver.execute_script('viewer.fit(); viewer.zoomAt(3, 0, 0)')
        make_figure.wait_ready(driver)
        s = page_state(driver)
        top, left, h, w = window = shown_window(s)
        canvas = make_figure.canvas_pixels(driver)[s['oy'] + top:s['oy'] + top + h, s['ox'] + left:s['ox'] + left + w]
        expected = shown.render(viewer_script.View('liif', 3, *window))
        assert left == 0 and (expected[:, :40, 3] == 0).all()  # output columns 0-39: input columns below 14
        assert set(np.unique(canvas[:, :40])) == {0x66, 0x99}
        driver.find_element('id', 'save').click()
        path = tmp_path / 'rgba_x3.00.png'
        deadline = time.monotonic() + 60
        while not path.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.2)  # the download's last bytes
        assert path.exists(), sorted(p.name for p in tmp_path.iterdir())
        saved = np.asarray(Image.open(path))
        assert saved.shape == expected.shape == (h, w, 4)
        assert np.abs(saved[:, :, 3].astype(int) - expected[:, :, 3]).max() <= 1
        opaque = expected[:, :, 3] == 255  # a canvas keeps colour exactly only where it is opaque
        assert np.abs(saved[opaque][:, :3].astype(int) - expected[opaque][:, :3]).max() <= 1
    finally:
        driver.quit()
        server.shutdown()
        server.server_close()
