"""The static site of scripts/export_web.py in headless Chromium: the engine module (liif.js) on
WebAssembly and on WebGPU against this project's ONNX Runtime render, cross-origin isolation (headers,
or the service worker), and the page: opening images (bad ones refused with one message), views,
Save with Cancel, alpha. A tiny random-weight LIIF keeps it quick; the photos are real."""
import base64
import functools
import http.server
import shutil
import subprocess
import sys
import threading
import time
from io import BytesIO
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from helpers import tiny_liif, without_reach
from imgproc import to_integer
from onnx_model import OnnxModel, export
from scripts import export_web, make_figure, serve_web
from scripts import viewer as viewer_script

ROOT = Path(__file__).resolve().parents[1]
WAIT = 300  # seconds: a generous bound on conditions, never a sleep (the machine may be busy)


def _missing() -> str:
    try:
        make_figure.find_chromium()
    except ValueError as e:
        return str(e)
    have_ort = all((export_web.ORT_DIST / name).is_file() for name in export_web.ORT_FILES)
    return '' if have_ort or shutil.which('npm') else "no npm to install onnxruntime-web (web/package-lock.json)"


pytestmark = pytest.mark.skipif(bool(_missing()), reason=f"browser tests: {_missing()}")


@pytest.fixture(scope='module')
def site(tmp_path_factory) -> Path:
    """The site with a tiny LIIF, built from the lockfile (npm ci when web/node_modules is missing)."""
    folder = tmp_path_factory.mktemp('web')
    export(tiny_liif(), folder / 'tiny.onnx')
    export_web.write_site(folder / 'site', folder / 'tiny.onnx')
    return folder / 'site'


def serve(server: http.server.HTTPServer):
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.fixture(scope='module')
def url(site):
    """The site under scripts/serve_web.py: COOP/COEP headers."""
    server = serve(serve_web.make_server(site, port=0))
    yield f'http://127.0.0.1:{server.server_address[1]}/'
    server.shutdown()
    server.server_close()


def wait_for(driver, condition: str, timeout: float = WAIT):
    """The value of the JavaScript expression `condition` once it is truthy (TimeoutError with the page's status)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = driver.execute_script(f'return {condition}')
        if value:
            return value
        time.sleep(0.05)
    status = driver.execute_script("return document.getElementById('status').textContent")
    raise TimeoutError(f"{condition} not true within {timeout} s; the page says {status!r}")


def open_page(url: str, downloads: Path | None = None, webgpu: bool = False, query: str = ''):
    driver = make_figure.headless_chromium(640, 480, downloads, webgpu=webgpu)
    driver.set_script_timeout(WAIT)
    driver.downloads = downloads
    driver.get(url + query)
    wait_for(driver, "window.viewer && (viewer.state.model || viewer.state.modelError)")
    return driver


@pytest.fixture(scope='module')
def page(url, tmp_path_factory):
    """The viewer page with WebAssembly (no GPU in this browser: WebGPU falls back)."""
    driver = open_page(url, tmp_path_factory.mktemp('downloads'))
    yield driver
    driver.quit()


def real_photo(benchmark_root: Path, name: str, rows: int, cols: int) -> np.ndarray:
    bgr = cv2.imread(str(benchmark_root / name))
    return np.ascontiguousarray(bgr[60:60 + rows, 50:50 + cols, ::-1])


def onnx_render(path: Path, rgb: np.ndarray, size, window) -> np.ndarray:
    """OnnxModel's window of the render, 8 bits as inference.py rounds it."""
    lr = (rgb.transpose(2, 0, 1)[None] / 255).astype(np.float32)
    return to_integer(OnnxModel(path).render(lr, size, window)[0].transpose(1, 2, 0))


RENDER = """
const [b64, h, w, backend, options, inputLimit, done] = arguments;
(async () => {
  try {
    const {loadModel} = await import('./liif.js');
    globalThis.models ??= {};
    globalThis.models[backend] ??= await loadModel(undefined, {backend});
    const model = globalThis.models[backend], limit = model.maxInputBytes;
    const bytes = Uint8ClampedArray.from(atob(b64), c => c.charCodeAt(0));
    if (inputLimit) model.maxInputBytes = inputLimit;  // as a GPU that binds less at once
    const out = await model.render(new ImageData(bytes, w, h), options).finally(() => { model.maxInputBytes = limit; });
    let s = '';
    for (let i = 0; i < out.data.length; i += 8192) s += String.fromCharCode(...out.data.subarray(i, i + 8192));
    done({backend: model.backend, data: btoa(s), height: out.height, width: out.width});
  } catch (e) {
    done({error: String(e.stack || e)});
  }
})();"""


def engine_render(driver, rgba: np.ndarray, backend: str, options: dict, input_limit: int = 0,
                  error: str = '') -> tuple[str, np.ndarray]:
    """(backend that ran, the RGBA uint8 result) of liif.js's model.render in the page, its graph inputs
    limited to `input_limit` bytes when given; with `error`, the render must fail saying that."""
    got = driver.execute_async_script(RENDER, base64.b64encode(rgba.tobytes()).decode(), *rgba.shape[:2],
                                      backend, options, input_limit)
    if error:
        assert error in got.get('error', ''), got
        return got['error'], None
    assert 'error' not in got, got.get('error')
    pixels = np.frombuffer(base64.b64decode(got['data']), np.uint8).reshape(got['height'], got['width'], 4)
    return got['backend'], pixels


EXACT_CASES = [  # (photo, crop rows, cols, render options, the same as inference.py sizes it, graph input limit)
    ('Set5/HR/baby.png', 30, 26, {'scale': 2.5}, (75, 65), None, 0),
    ('Set14/HR/baboon.png', 24, 30, {'scale': 4, 'window': [10, 33, 70, 61]}, (96, 120), (10, 33, 70, 61), 0),
    ('Set14/HR/lenna.png', 27, 21, {'size': [71, 50], 'window': [0, 3, 71, 40]}, (71, 50), (0, 3, 71, 40), 0),
    # each graph run fed a crop, within a limit of half the whole image's input (a GPU that binds less)
    ('Set14/HR/baboon.png', 120, 100, {'scale': 3, 'window': [150, 120, 60, 70]}, (360, 300), (150, 120, 60, 70),
     12 * 120 * 100 // 2),
]


@pytest.mark.parametrize('backend', ['wasm', 'webgpu'])
def test_engine_equals_onnx_runtime(backend, url, site, benchmark_root):
    """model.render of real photos at x2.5, x4 (a window) and a non-integer size equals OnnxModel's render
    of the same graph to one level in 8 bits."""
    driver = make_figure.headless_chromium(640, 480, webgpu=backend == 'webgpu')
    driver.set_script_timeout(WAIT)
    try:
        driver.get(url)
        if backend == 'webgpu' and not driver.execute_async_script(
                "const done = arguments[0]; (navigator.gpu ? navigator.gpu.requestAdapter() : Promise.resolve(null))"
                ".then(a => done(!!a), () => done(false))"):
            pytest.skip("this Chromium has no WebGPU adapter (it needs Vulkan: SwiftShader where there is no GPU)")
        for name, rows, cols, options, size, window, limit in EXACT_CASES:
            rgb = real_photo(benchmark_root, name, rows, cols)
            rgba = np.dstack([rgb, np.full((rows, cols), 255, np.uint8)])
            ran, got = engine_render(driver, rgba, backend, options, limit)
            expected = onnx_render(site / 'liif.onnx', rgb, size, window)
            assert ran == backend and got.shape[:2] == expected.shape[:2] and expected.std() > 5
            assert np.abs(got[..., :3].astype(int) - expected).max() <= 1, (name, options)
            assert (got[..., 3] == 255).all()
        # a limit below even one output pixel's crop: one message, nothing rendered
        engine_render(driver, rgba, backend, options, 100, error='more than this GPU binds at once')
    finally:
        driver.quit()


def test_isolated_with_threads_and_webgpu_fallback_named(page):
    """serve_web.py's headers isolate the page: WebAssembly runs on every core; a browser without a
    WebGPU adapter falls back to WebAssembly and says so."""
    state = page.execute_script("return {isolated: crossOriginIsolated, cores: navigator.hardwareConcurrency,"
                                " model: viewer.state.model, engine: document.getElementById('engine').textContent}")
    assert state['isolated'] and state['model']['backend'] == 'wasm'
    assert state['model']['threads'] == state['cores'] > 1 or state['cores'] == 1
    assert 'WebAssembly' in state['engine'] and 'no WebGPU' in state['engine']


def test_service_worker_isolates_a_site_served_without_headers(site):
    """A static host that sends no COOP/COEP (plain http.server): sw.js adds them after one reload."""
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(site))
    handler.log_message = lambda *args: None
    server = serve(http.server.ThreadingHTTPServer(('127.0.0.1', 0), handler))
    driver = make_figure.headless_chromium(640, 480)
    try:
        driver.get(f'http://127.0.0.1:{server.server_address[1]}/')
        wait_for(driver, "window.viewer && viewer.state.model")
        assert driver.execute_script("return crossOriginIsolated && !!navigator.serviceWorker.controller")
        assert driver.execute_script("return viewer.state.model.threads") == \
            driver.execute_script("return navigator.hardwareConcurrency")
    finally:
        driver.quit()
        server.shutdown()
        server.server_close()


def put(site: Path, name: str, data: bytes) -> str:
    (site / 'inputs').mkdir(exist_ok=True)
    (site / 'inputs' / name).write_bytes(data)
    return f'inputs/{name}'


def open_in_page(page, path: str, name: str) -> None:
    page.execute_async_script("const [path, name, done] = arguments;"
                              "fetch(path).then(r => r.blob()).then(b => viewer.openFile(b, name)).then(done)", path, name)


def png_bytes(pixels: np.ndarray) -> bytes:
    out = BytesIO()
    Image.fromarray(pixels).save(out, 'PNG')
    return out.getvalue()


def test_bad_files_get_one_message_and_the_page_goes_on(page, site, benchmark_root):
    header = bytes.fromhex('89504e470d0a1a0a0000000d49484452') + (100000).to_bytes(4, 'big') * 2 + bytes(5)
    cases = [('notes.png', b'not an image at all', 'is not a PNG, JPEG or WebP image'),
             ('empty.jpg', b'', 'is empty'),
             ('huge.png', header, '100000 x 100000 pixels'),
             ('broken.png', png_bytes(np.zeros((8, 8, 3), np.uint8))[:40], 'could not be decoded')]
    good = real_photo(benchmark_root, 'Set5/HR/butterfly.png', 40, 30)
    open_in_page(page, put(site, 'good.png', png_bytes(good)), 'good.png')
    wait_for(page, "document.body.dataset.status === 'ready'")
    for name, data, message in cases:
        open_in_page(page, put(site, name, data), name)
        assert page.execute_script("return document.body.dataset.status") == 'error'
        status = page.find_element('id', 'status').text
        assert message in status and name in status and '\n' not in status
        assert page.execute_script("return viewer.state.info.name") == 'good.png'  # the image before stays
    open_in_page(page, put(site, 'good2.png', png_bytes(good[:, ::-1].copy())), 'good2.png')
    page.execute_script("viewer.zoomAt(3, 0, 0)")
    wait_for(page, "document.body.dataset.status === 'ready'")


def test_a_dropped_file_opens(page, site, benchmark_root):
    """A file dropped on the page (a real drag event's DataTransfer) opens as the chosen one does; the page
    marks itself while something is dragged over it."""
    rgb = real_photo(benchmark_root, 'Set5/HR/head.png', 32, 28)
    marked = page.execute_async_script("""
const [path, done] = arguments;
fetch(path).then(r => r.blob()).then(blob => {
  const data = new DataTransfer();
  data.items.add(new File([blob], 'dropped.png', {type: 'image/png'}));
  document.dispatchEvent(new DragEvent('dragover', {dataTransfer: data, cancelable: true}));
  const marked = document.body.classList.contains('dropping');
  document.dispatchEvent(new DragEvent('drop', {dataTransfer: data, cancelable: true}));
  done(marked);
});""", put(site, 'dropped.png', png_bytes(rgb)))
    assert marked
    wait_for(page, "viewer.state.info && viewer.state.info.name === 'dropped.png'")
    assert not page.execute_script("return document.body.classList.contains('dropping')")
    assert page.execute_script("return [viewer.state.info.height, viewer.state.info.width]") == [32, 28]


def test_a_model_that_does_not_load_gets_one_message(url, site, benchmark_root):
    driver = open_page(url, query='?model=missing.onnx')
    try:
        assert 'could not load the model' in driver.find_element('id', 'status').text
        open_in_page(driver, put(site, 'ok.png', png_bytes(real_photo(benchmark_root, 'Set5/HR/bird.png', 30, 30))),
                     'ok.png')
        driver.execute_script("viewer.zoomAt(24, 0, 0)")  # the preview pans and zooms without a model
        assert driver.execute_script("return viewer.state.zoom") == 24
        assert 'could not load the model' in driver.find_element('id', 'status').text
    finally:
        driver.quit()
    without_reach(site / 'liif.onnx', site / 'older.onnx')
    driver = open_page(url, query='?model=older.onnx')
    try:
        assert 'export it again' in driver.find_element('id', 'status').text
    finally:
        driver.quit()


def view_window(page) -> tuple[int, int, int, int]:
    return tuple(page.execute_script("const w = viewer.visibleWindow(); return [w.top, w.left, w.height, w.width]"))


def test_a_12_megapixel_photo_opens_and_a_view_renders(page, site, benchmark_root):
    photo = cv2.imread(str(benchmark_root / 'Set14/HR/baboon.png'))
    big = cv2.resize(photo, (4000, 3000), interpolation=cv2.INTER_CUBIC)
    ok, jpeg = cv2.imencode('.jpg', big, [cv2.IMWRITE_JPEG_QUALITY, 90])
    open_in_page(page, put(site, 'big.jpg', jpeg.tobytes()), 'big.jpg')
    assert page.execute_script("return [viewer.state.info.height, viewer.state.info.width]") == [3000, 4000]
    page.execute_script("viewer.zoomAt(1.5, 320, 200)")
    wait_for(page, "document.body.dataset.status === 'ready'")
    assert page.execute_script("return viewer.state.tiles.liif.length") >= 1


def wait_download(folder: Path, name: str) -> Path:
    path, end = folder / name, time.monotonic() + WAIT
    while not path.exists() and time.monotonic() < end:
        time.sleep(0.05)
    assert path.exists(), sorted(p.name for p in folder.iterdir())
    size = -1
    while path.stat().st_size != size:  # the last bytes
        size = path.stat().st_size
        time.sleep(0.2)
    return path


def test_cancel_in_the_middle_of_a_save_leaves_the_page_usable(page, site, benchmark_root):
    rgb = real_photo(benchmark_root, 'Set14/HR/comic.png', 36, 40)
    open_in_page(page, put(site, 'comic.png', png_bytes(rgb)), 'comic.png')
    page.find_element('id', 'save-as').clear()
    page.find_element('id', 'save-as').send_keys('4000x4000')
    page.find_element('id', 'save-image').click()
    wait_for(page, "document.getElementById('progress').value > 0")
    page.find_element('id', 'cancel').click()
    wait_for(page, "document.getElementById('progress').hidden && !viewer.state.saving")
    assert page.execute_script("return document.body.dataset.status") != 'error'
    page.find_element('id', 'save-as').clear()
    page.find_element('id', 'save-as').send_keys('x2')
    page.find_element('id', 'save-image').click()
    saved = np.asarray(Image.open(wait_download(page.downloads, 'comic_72x80.png')))
    assert not (page.downloads / 'comic_4000x4000.png').exists()
    assert np.abs(saved.astype(int) - onnx_render(site / 'liif.onnx', rgb, (72, 80), None)).max() <= 1


def test_save_view_keeps_the_alpha(page, site, benchmark_root):
    """An RGBA photo (an alpha ramp): the saved view is RGBA and its alpha is the model's render of the
    alpha as a gray image (inference.py's --alpha=model), to one level."""
    rgb = real_photo(benchmark_root, 'Set5/HR/head.png', 32, 28)
    alpha = np.clip(np.arange(28) * 12 - 60, 0, 255).astype(np.uint8)[None].repeat(32, axis=0)
    open_in_page(page, put(site, 'rgba.png', png_bytes(np.dstack([rgb, alpha]))), 'rgba.png')
    page.execute_script("viewer.fit(); viewer.zoomAt(20, 0, 0)")
    wait_for(page, "document.body.dataset.status === 'ready'")
    window = view_window(page)
    page.find_element('id', 'save').click()
    saved = np.asarray(Image.open(wait_download(page.downloads, 'rgba_x20.00.png')))
    expected = onnx_render(site / 'liif.onnx', np.repeat(alpha[:, :, None], 3, axis=2), (640, 560), window)
    assert saved.shape == (*window[2:], 4)
    assert np.abs(saved[..., 3].astype(int) - expected.mean(axis=2)).max() <= 1


def test_bench_web_runs_every_backend():
    """scripts/bench_web.py on an 8 x 8 LR at x2: the five rows, each browser backend the one asked for,
    and every graph output within ONNX Runtime's tolerance of Python's."""
    # three fresh browsers, each building a session of the graph (about 3 min with a test suite beside it):
    # the timeout guards against a hang, it bounds no speed
    done = subprocess.run([sys.executable, 'scripts/bench_web.py', '--size=8', '--scale=2', '--repeats=1',
                           '--warmup=0'], cwd=ROOT, capture_output=True, text=True, timeout=4 * WAIT)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = [line.split(' | ') for line in done.stdout.splitlines() if line.startswith(('| PyTorch', '| ONNX', '| Web'))]
    assert [row[0] for row in rows][:2] == ['| PyTorch fast path, fp32', '| ONNX Runtime (Python)'] and len(rows) == 5
    assert not any('fell back' in row[0] for row in rows)
    assert all(float(row[-1].rstrip(' |')) <= 1e-5 for row in rows[2:])


def test_export_and_serve_commands_refuse_bad_settings_with_one_line(tmp_path):
    (tmp_path / 'file').write_text('x')
    (tmp_path / 'other').mkdir()
    (tmp_path / 'other' / 'keep.txt').write_text('x')
    for args, message in ([f'--out={tmp_path / "file"}'], 'is a file, not a folder'), \
                         ([f'--out={tmp_path / "other"}'], 'with other files in it'), \
                         ([f'--out={tmp_path / "new"}', f'--weights={tmp_path / "none.pth"}'], 'do not exist'):
        done = subprocess.run([sys.executable, 'scripts/export_web.py', *args], cwd=ROOT, capture_output=True,
                              text=True)
        assert done.returncode == 2 and done.stderr.startswith('error: ') and message in done.stderr, done.stderr
        assert done.stderr.count('\n') == 1 and not (tmp_path / 'new').exists()
    assert sorted(p.name for p in (tmp_path / 'other').iterdir()) == ['keep.txt']
    done = subprocess.run([sys.executable, 'scripts/serve_web.py', str(tmp_path / 'other'), '--port=0'], cwd=ROOT,
                          capture_output=True, text=True)
    assert done.returncode == 2 and done.stderr.startswith('error: ') and 'has no index.html' in done.stderr


def test_viewer_command_with_the_browser_engine(site, benchmark_root, tmp_path):
    """scripts/viewer.py --engine=browser: the same page renders the views with the model file it serves."""
    rgb = real_photo(benchmark_root, 'Set14/HR/pepper.png', 30, 34)
    Image.fromarray(rgb).save(tmp_path / 'pepper.png')
    server = serve(viewer_script.make_server(viewer_script.Viewer(tmp_path / 'pepper.png', site / 'liif.onnx'),
                                             '127.0.0.1', 0))
    driver = open_page(f'http://127.0.0.1:{server.server_address[1]}/', tmp_path)
    try:
        assert driver.execute_script("return crossOriginIsolated && viewer.state.info.name") == 'pepper.png'
        driver.execute_script("viewer.zoomAt(20, 0, 0)")
        wait_for(driver, "document.body.dataset.status === 'ready'")
        window = view_window(driver)
        driver.find_element('id', 'save').click()
        saved = np.asarray(Image.open(wait_download(tmp_path, 'pepper_x20.00.png')))
        assert np.abs(saved.astype(int) - onnx_render(site / 'liif.onnx', rgb, (600, 680), window)).max() <= 1
    finally:
        driver.quit()
        server.shutdown()
        server.server_close()


def test_exif_orientation_is_applied(page, site, benchmark_root):
    """A JPEG stored landscape with EXIF orientation 6 (shown turned a quarter clockwise) opens as shown:
    its sides swapped, and its x2 save is the render of the clockwise-turned picture. JPEG decoders may
    differ by a level or so, so the save is held to the render of the picture as PIL shows it to within 3
    levels on average, and must be at least 4 times closer to it than to the picture turned the other way."""
    rgb = real_photo(benchmark_root, 'Set5/HR/bird.png', 24, 36)
    image, out = Image.fromarray(rgb), BytesIO()
    exif = image.getexif()
    exif[0x0112] = 6
    image.save(out, 'JPEG', quality=95, exif=exif.tobytes())
    open_in_page(page, put(site, 'turned.jpg', out.getvalue()), 'turned.jpg')
    assert page.execute_script("return [viewer.state.info.height, viewer.state.info.width]") == [36, 24]
    page.find_element('id', 'save-as').clear()
    page.find_element('id', 'save-as').send_keys('x2')
    page.find_element('id', 'save-image').click()
    saved = np.asarray(Image.open(wait_download(page.downloads, 'turned_72x48.png')))[..., :3].astype(int)
    stored = np.asarray(Image.open(BytesIO(out.getvalue())).convert('RGB'))
    shown, other_way = np.rot90(stored, -1), np.rot90(stored, 1)  # orientation 6: turned clockwise
    right = np.abs(saved - onnx_render(site / 'liif.onnx', np.ascontiguousarray(shown), (72, 48), None)).mean()
    wrong = np.abs(saved - onnx_render(site / 'liif.onnx', np.ascontiguousarray(other_way), (72, 48), None)).mean()
    assert right < 3 and 4 * right < wrong, (right, wrong)


def test_tiles_of_a_view_left_are_cancelled(page, site, benchmark_root):
    """A new view while the last one's tiles are still pending sends the worker a cancel for each of them
    (the view's request made in the same turn of the page's event loop, so no tile can finish in
    between), and the new view renders."""
    rgb = real_photo(benchmark_root, 'Set14/HR/lenna.png', 64, 64)
    open_in_page(page, put(site, 'left.png', png_bytes(rgb)), 'left.png')
    wait_for(page, "document.body.dataset.status === 'ready'")
    left = page.execute_async_script("""
        const done = arguments[0], state = viewer.state, worker = state.worker, post = worker.postMessage.bind(worker);
        const cancels = [];
        worker.postMessage = m => { if (m.type === 'cancel') cancels.push(m.id); post(m); };
        viewer.fit();
        viewer.zoomAt(12, 0, 0);
        const poll = () => {
          if (!state.pending.size) return setTimeout(poll, 5);
          const pending = [...state.pending.values()];
          viewer.zoomAt(20, 300, 200);  // elsewhere: none of the zoom-12 tiles is wanted any more
          clearTimeout(state.timer);  // the request the pause would make, now: in this same turn
          viewer.requestView();
          done({pending, cancels: [...cancels]});
        };
        poll();""")
    assert left['pending'] and sorted(left['cancels']) == sorted(left['pending'])
    wait_for(page, "document.body.dataset.status === 'ready'")
    assert page.execute_script("return viewer.state.zoom") == 20 and not page.execute_script(
        "return [...viewer.state.pending.keys()].length")
