"""A zoom viewer in the browser: look at one image through LIIF at any magnification.

    python scripts/viewer.py --input=photo.jpg                    # prints http://127.0.0.1:8000/
    python scripts/viewer.py --input=photo.jpg --port=8080 --amp=bf16
    python scripts/viewer.py --input=photo.jpg --host=0.0.0.0     # on purpose: reachable from other machines
    python scripts/viewer.py --input=photo.jpg --weights=liif.onnx   # through ONNX Runtime (fp32, CPU)
    python scripts/viewer.py --input=photo.jpg --engine=browser   # the page renders (liif.js: WebGPU or WebAssembly)

The page shows the image fit to the window. Mouse wheel, trackpad pinch or the + / - keys zoom
(anchored at the cursor) from fit up to x32; drag to pan; 0 fits again. Only the visible part is
rendered by the model, at screen resolution: the window of the render at zoom z, whose size is
(round(h * z), round(w * z)) as inference.py makes it. Until the model's pixels arrive the browser
shows its own scaling of the input. "Compare" splits the view with a draggable divider: the model on
the left, PIL bicubic at the same size on the right. "Save view" downloads what is shown as PNG.

The page is web/'s, the static site's (scripts/export_web.py). With --engine=browser the page renders
the views itself in a Web Worker with the exported model (liif.onnx, written at start from --weights),
and this server only serves files. The server is Python's standard threading HTTP server. It serves the page, its static files, the
input image and rendered views (GET /render?mode=liif|bicubic&zoom=Z&top=T&left=L&height=H&width=W),
and nothing else. Every parameter is checked (400 with a one-line JSON message), unknown paths get
404, the model renders one view at a time and a view request still waiting when a newer one comes
is answered 409 (superseded), so zooming builds no backlog. Malformed requests get http.server's
status (400, 414, 431, 505; 405 for a method other than GET), also as JSON. A failed render answers 500.

Ctrl-C stops in order: no new connections, open ones closed, their threads joined, then the model is
freed and the interpreter exits. A view still inside the model cannot be interrupted, so then the
process ends at once instead (see leave_now).
"""
import argparse
import errno
import ipaddress
import json
import math
import os
import re
import signal
import socket
import sys
import tempfile
import threading
import traceback
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace
from urllib.parse import parse_qs, urlsplit

import cv2
import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import config
from checkpoint import model_from_checkpoint
from cli import ArgumentParser, load_onnx, pick_device, run_main, set_threads, upscaled_alpha
from imgproc import bicubic_window, image_to_tensor, load_uint8, quantize, read_picture, to_integer
from onnx_model import OnnxModel
from precision import AMP_DTYPES, check_amp
from render import check_size, check_window, output_size
from scripts.export_web import ORT_DIST, ORT_FILES, install_ort, place_model
from scripts.serve_web import ISOLATION
from weights import resolve_weights

PAGE = ROOT / 'web'  # the page: index.html, viewer.js, viewer.css, ... (shared with scripts/export_web.py)
MAX_ZOOM = 32.0  # output pixels per input pixel, the most the page zooms to
MAX_VIEW_PIXELS = 4_000_000  # pixels per rendered view (one request)
PNG_FAST = [cv2.IMWRITE_PNG_COMPRESSION, 1]  # views are sent once: speed over size
VIEW_KEYS = ('mode', 'zoom', 'top', 'left', 'height', 'width')
MODES = ('liif', 'bicubic')
ENGINES = ('server', 'browser')
LOCAL_HOST = re.compile(r'(127\.0\.0\.1|localhost|\[::1\])(:\d+)?', re.IGNORECASE)  # Host headers of this machine


class Superseded(Exception):
    """A queued job dropped because a newer one came before it started."""


class LatestOnly:
    """Runs one job at a time; a job still waiting when a newer one is submitted is dropped
    (Superseded), so only the newest waiting job runs next."""

    def __init__(self):
        self._cond = threading.Condition()
        self._busy = False
        self.submitted = 0  # jobs seen so far; the newest one's number

    @property
    def busy(self) -> bool:
        """Whether a job is running now."""
        return self._busy

    def run(self, job):
        """job()'s result once it is this job's turn; Superseded if a newer job came first."""
        with self._cond:
            self.submitted += 1
            ticket = self.submitted
            self._cond.notify_all()  # waiting jobs wake up and see they are superseded
            while self._busy and ticket == self.submitted:
                self._cond.wait()
            if ticket != self.submitted:
                raise Superseded
            self._busy = True
        try:
            return job()
        finally:
            with self._cond:
                self._busy = False
                self._cond.notify_all()


@dataclass(frozen=True)
class View:
    """The window (top, left, height, width) of the image rendered at `zoom`."""
    mode: str
    zoom: float
    top: int
    left: int
    height: int
    width: int

    @property
    def window(self) -> tuple[int, int, int, int]:
        return self.top, self.left, self.height, self.width


def _number(params: dict, key: str, kind):
    text = params[key]
    try:
        value = kind(text)
    except ValueError:
        raise ValueError(f"{key} must be {'an integer' if kind is int else 'a number'}, got {text!r}") from None
    if not math.isfinite(value):
        raise ValueError(f"{key} must be finite, got {text!r}")
    return value


def parse_view(query: str, image_hw: tuple[int, int]) -> View:
    """The view a /render query string asks for, checked against an image of image_hw (ValueError)."""
    fields = parse_qs(query, keep_blank_values=True, strict_parsing=False, max_num_fields=len(VIEW_KEYS) + 1)
    unknown = sorted(set(fields) - set(VIEW_KEYS))
    missing = [k for k in VIEW_KEYS if k not in fields]
    if unknown or missing:
        raise ValueError(f"expected the parameters {', '.join(VIEW_KEYS)}; "
                         + '; '.join(filter(None, [unknown and f"unknown: {', '.join(unknown)}",
                                                   missing and f"missing: {', '.join(missing)}"])))
    repeated = [k for k, v in fields.items() if len(v) > 1]
    if repeated:
        raise ValueError(f"parameter given more than once: {', '.join(repeated)}")
    params = {k: v[0] for k, v in fields.items()}
    if params['mode'] not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, got {params['mode']!r}")
    zoom = _number(params, 'zoom', float)
    full = output_size(*image_hw, zoom) if 0 < zoom <= MAX_ZOOM else (0, 0)
    if min(full) < 1:
        raise ValueError(f"zoom must be in (0, {MAX_ZOOM:g}] and give at least one pixel, got {zoom!r}")
    view = View(params['mode'], zoom, *(_number(params, k, int) for k in ('top', 'left', 'height', 'width')))
    check_window(view.window, check_size(full))
    if view.height * view.width > MAX_VIEW_PIXELS:
        raise ValueError(f"the window has {view.height * view.width:,} pixels, more than {MAX_VIEW_PIXELS:,}")
    return view


class Viewer:
    """One image and the model that renders its views: a PyTorch or ONNX Runtime model here, or an
    exported .onnx file that the page renders with (the browser engine)."""

    def __init__(self, path: str | Path, model: torch.nn.Module | OnnxModel | Path, amp: str = 'fp32'):
        self.picture = read_picture(path)  # an alpha is rendered (cli.upscaled_alpha) and shown
        self.image8 = load_uint8(path)  # bicubic and the page's preview: 8 bits, RGB or RGBA
        if self.picture.alpha is not None:
            self.image8 = np.dstack([self.image8, to_integer(self.picture.alpha)])
        self.device = next(model.parameters()).device if isinstance(model, torch.nn.Module) else 'cpu'
        self.lr = image_to_tensor(self.picture.rgb)[None].to(self.device)
        self.model, self.amp, self.name = model, amp, Path(path).name
        self.queue = LatestOnly()
        self.image_png = encode_png(self.image8)

    @property
    def engine(self) -> str:
        """'browser' when the page renders the views with the model file, 'server' when this process does."""
        return 'browser' if isinstance(self.model, Path) else 'server'

    @property
    def shape(self) -> tuple[int, int]:
        return self.image8.shape[0], self.image8.shape[1]

    def info(self) -> dict:
        return {'engine': self.engine, 'name': self.name, 'height': self.shape[0], 'width': self.shape[1],
                'max_zoom': MAX_ZOOM, 'max_view_pixels': MAX_VIEW_PIXELS}

    def render(self, view: View) -> np.ndarray:
        """The view's HxWx3 (HxWx4 with an alpha) uint8 pixels; the model's views one at a time
        (Superseded when dropped)."""
        size = output_size(*self.shape, view.zoom)
        if view.mode == 'bicubic':
            return bicubic_window(self.image8, size, view.window)
        return self.queue.run(lambda: self.render_pixels(size, view.window))

    def render_pixels(self, size: tuple[int, int], window: tuple[int, int, int, int]) -> np.ndarray:
        """The model's window as 8-bit RGB, or RGBA with the alpha rendered as inference.py renders it."""
        colour = quantize(self.render_model(size, window), 8)
        if self.picture.alpha is None:
            return colour
        cfg = SimpleNamespace(alpha='model', chunk=0, amp=self.amp)
        return np.dstack([colour, quantize(upscaled_alpha(self.model, self.device, self.picture, size, window, cfg))])

    def render_model(self, size: tuple[int, int], window: tuple[int, int, int, int]) -> torch.Tensor:
        """The model's (1, 3, height, width) window of the whole render of `size` (through ONNX Runtime
        for .onnx weights)."""
        if isinstance(self.model, OnnxModel):
            return torch.from_numpy(self.model.render(self.lr.numpy(), size, window))
        return self.model.render(self.lr, size, amp=self.amp, window=window)


def encode_png(rgb: np.ndarray) -> bytes:
    """An HxWx3 RGB or HxWx4 RGBA uint8 image as a PNG file's bytes."""
    bgr = np.concatenate([rgb[:, :, 2::-1], rgb[:, :, 3:]], axis=2)
    ok, data = cv2.imencode('.png', np.ascontiguousarray(bgr), PNG_FAST)
    if not ok:
        raise ValueError("could not encode a PNG")
    return data.tobytes()


class Handler(BaseHTTPRequestHandler):
    """GET only: the page, its static files, /image.png, /info and /render; 404 for anything else."""
    server_version = 'liif-viewer'
    protocol_version = 'HTTP/1.1'

    def handle(self) -> None:
        try:
            super().handle()
        except (BrokenPipeError, ConnectionResetError):  # the page went away or aborted a request
            pass

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        viewer: Viewer = self.server.viewer
        try:
            url = urlsplit(self.path)
        except ValueError as e:  # e.g. 'http://[x': urlsplit takes it for a malformed IPv6 host
            return self.send_error_json(HTTPStatus.BAD_REQUEST, f"malformed request path: {e}")
        host = self.headers.get('Host', '')
        if self.server.local_only and not LOCAL_HOST.fullmatch(host):
            # a page elsewhere whose name resolves to this machine (DNS rebinding) must not read the image
            return self.send_error_json(HTTPStatus.FORBIDDEN, f"Host {host!r} is not this machine: "
                                                              f"open http://127.0.0.1:{self.server.server_port}/")
        if url.path == '/render':
            return self.send_view(viewer, url.query)
        if url.path == '/info':
            return self.send(HTTPStatus.OK, 'application/json', json.dumps(viewer.info()).encode())
        if url.path == '/image.png':
            return self.send(HTTPStatus.OK, 'image/png', viewer.image_png)
        static = self.server.static.get(url.path)
        if static is None:
            return self.send_error_json(HTTPStatus.NOT_FOUND, f"no such page: {url.path}")
        return self.send(HTTPStatus.OK, *static)

    def send_view(self, viewer: Viewer, query: str) -> None:
        if viewer.engine == 'browser':
            return self.send_error_json(HTTPStatus.NOT_FOUND, "the page renders the views (--engine=browser)")
        try:
            view = parse_view(query, viewer.shape)
        except ValueError as e:
            return self.send_error_json(HTTPStatus.BAD_REQUEST, str(e))
        try:
            pixels = viewer.render(view)
        except Superseded:
            return self.send_error_json(HTTPStatus.CONFLICT, "superseded by a newer view")
        except Exception as e:  # a failed render must not stop the server: answer and go on
            print(f"error: render of {view} failed: {type(e).__name__}: {e}", file=sys.stderr)
            traceback.print_exc(limit=-3)
            return self.send_error_json(HTTPStatus.INTERNAL_SERVER_ERROR, f"render failed: {type(e).__name__}: {e}")
        self.send(HTTPStatus.OK, 'image/png', encode_png(pixels))

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """http.server's own refusals (a malformed request line or header, a method other than GET) as
        JSON like the others; a method it has no handler for is 405 (only GET is served), not 501."""
        self.close_connection = True
        if code == HTTPStatus.NOT_IMPLEMENTED:
            code, message = HTTPStatus.METHOD_NOT_ALLOWED, f"only GET is served, not {self.command!r}"
        self.send_error_json(HTTPStatus(code), message or HTTPStatus(code).phrase)

    def send_error_json(self, status: HTTPStatus, message: str) -> None:
        self.send(status, 'application/json', json.dumps({'error': ' '.join(message.split())}).encode())

    def send(self, status: HTTPStatus, content_type: str, body: bytes) -> None:
        self.send_response(status)
        self.send_header('Content-Type', content_type)
        self.send_header('Content-Length', str(len(body)))
        self.send_header('Cache-Control', 'no-store')
        self.send_header('X-Content-Type-Options', 'nosniff')
        for name, value in ISOLATION.items():  # the browser engine's WebAssembly threads
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args) -> None:  # noqa: A002 (http.server's signature)
        pass  # one line per tile request would drown the console


TYPES = {'.html': 'text/html; charset=utf-8', '.js': 'text/javascript; charset=utf-8', '.css': 'text/css; charset=utf-8',
         '.mjs': 'text/javascript; charset=utf-8', '.wasm': 'application/wasm'}


def static_files(viewer: Viewer) -> dict[str, tuple[str, bytes]]:
    """URL path -> (content type, bytes) for the page's files (with the browser engine also the model and
    onnxruntime-web's files), read once: nothing else on disk is served."""
    files = {f'/{p.name}': (TYPES[p.suffix], p.read_bytes()) for p in PAGE.iterdir() if p.suffix in TYPES}
    files['/'] = files['/index.html']
    if viewer.engine == 'browser':
        files.update({f'/ort/{name}': (TYPES[Path(name).suffix], (ORT_DIST / name).read_bytes()) for name in ORT_FILES})
        files['/liif.onnx'] = ('application/octet-stream', viewer.model.read_bytes())
    return files


class Server(ThreadingHTTPServer):
    """Python's threading HTTP server, one thread per connection, that keeps its connections so that
    server_close() can end them and wait for their threads.

    The threads are daemons, as in ThreadingHTTPServer: a view still inside the model when the server
    closes must not hold the process (see leave_now)."""

    def __init__(self, address: tuple[str, int], viewer: Viewer):
        self.viewer, self.static = viewer, static_files(viewer)
        self.connections: dict[threading.Thread, socket.socket] = {}  # changed by the serving thread only
        super().__init__(address, Handler)  # calls server_close() when it cannot listen
        self.local_only = ipaddress.ip_address(self.server_address[0]).is_loopback  # the address bound

    def process_request(self, request: socket.socket, client_address) -> None:
        self.connections = {t: s for t, s in self.connections.items() if t.is_alive()}
        thread = threading.Thread(target=self.process_request_thread, args=(request, client_address), daemon=True)
        self.connections[thread] = request
        thread.start()

    def server_close(self) -> None:
        """After shutdown(): close the listening socket and every connection, and wait for their threads,
        except while a view is inside the model, which cannot be interrupted (see busy())."""
        super().server_close()
        connections = dict(self.connections)
        for request in connections.values():
            try:
                request.shutdown(socket.SHUT_RDWR)  # an idle keep-alive read ends, a write fails: the thread ends
            except OSError:  # closed already
                pass
        for thread in connections:
            while thread.is_alive() and not self.viewer.queue.busy:
                thread.join(0.05)

    def busy(self) -> bool:
        """Whether a connection's thread still runs (after server_close(): one inside the model)."""
        return any(t.is_alive() for t in self.connections)


def make_server(viewer: Viewer, host: str = '127.0.0.1', port: int = 8000) -> Server:
    """A bound (not yet serving) threading HTTP server for viewer; ValueError when it cannot listen."""
    try:
        return Server((host, port), viewer)
    except OSError as e:
        in_use = e.errno == errno.EADDRINUSE
        reason = "the port is in use (choose another with --port)" if in_use else e.strerror or str(e)
        raise ValueError(f"cannot listen on {host}:{port}: {reason}") from None


def serve_in_thread(server: ThreadingHTTPServer) -> threading.Thread:
    """Serve in a daemon thread; server.shutdown() stops it, then server.server_close() closes it."""
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    return thread


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--input', required=True, help="the image to look at")
    parser.add_argument('--weights', default=config.weights,
                        help=f"checkpoint, or an .onnx file from scripts/export_onnx.py (default {config.weights})")
    parser.add_argument('--device', default=config.device, help="'auto', 'cpu', 'cuda' or 'cuda:N'")
    parser.add_argument('--amp', default=config.amp, choices=list(AMP_DTYPES), help="autocast (default fp32)")
    parser.add_argument('--threads', type=int, default=config.threads, help="torch CPU threads (0: one per core)")
    parser.add_argument('--engine', default='server', choices=ENGINES,
                        help="who renders the views: this process (default) or the browser (liif.js)")
    parser.add_argument('--host', default='127.0.0.1',
                        help="address to listen on (default 127.0.0.1: this machine only)")
    parser.add_argument('--port', type=int, default=8000, help="port (default 8000; 0 picks a free one)")
    args = parser.parse_args(argv)
    if not 0 <= args.port <= 65535:
        raise ValueError(f"--port must be in 0..65535, got {args.port}")
    if args.threads < 0:
        raise ValueError(f"--threads must be >= 0, got {args.threads}")
    return args


def load_model(weights: Path, args: argparse.Namespace, folder: Path) -> torch.nn.Module | OnnxModel | Path:
    """The model of the engine: PyTorch's or ONNX Runtime's here, or for the browser an .onnx file (the
    given one, or the checkpoint exported into `folder`)."""
    if args.engine == 'browser':
        install_ort()
        place_model(weights, folder / 'liif.onnx')
        return folder / 'liif.onnx'
    if weights.suffix.lower() == '.onnx':
        return load_onnx(SimpleNamespace(amp=args.amp, threads=args.threads), [], weights)
    device = pick_device(args.device)
    check_amp(device, args.amp)
    return model_from_checkpoint(weights).to(device).eval()


def main(argv: list[str]) -> None:
    args = parse_args(argv)
    set_threads(args.threads)
    read_picture(args.input)  # a bad image fails here, before the model loads
    weights = resolve_weights(args.weights)
    with tempfile.TemporaryDirectory() as folder:
        viewer = Viewer(args.input, load_model(weights, args, Path(folder)), args.amp)
        server = make_server(viewer, args.host, args.port)  # its files are read: the folder may go
    host, port = server.server_address[:2]
    serving = serve_in_thread(server)  # Ctrl-C then interrupts this thread's wait, never the server's loop
    try:
        print(f"http://{'[' + host + ']' if ':' in host else host}:{port}/  (Ctrl-C stops)", flush=True)
        serving.join()
    except KeyboardInterrupt:
        signal.signal(signal.SIGINT, signal.SIG_DFL)  # a second Ctrl-C ends the process at once
        print("stopped", file=sys.stderr)
    server.shutdown()
    serving.join()
    server.server_close()
    if server.busy():
        leave_now(0)
    # no other thread holds the server now: the model is freed in this one, before the interpreter finalises


def leave_now(status: int) -> None:
    """End the process now: no interpreter finalisation, no C++ static destructors.

    A thread inside the model (torch or ONNX Runtime) cannot be interrupted. Finalising under it, Python
    ends it with pthread_exit when it next takes the GIL, and that unwinding through C++ frames calls
    std::terminate (SIGABRT); exit() would also destroy the libraries' static state under it. _exit ends
    all threads at once; the sockets are closed by then."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


if __name__ == '__main__':
    sys.exit(run_main(main, sys.argv[1:]))
