"""Serve a folder written by scripts/export_web.py on this machine, cross-origin isolated (COOP/COEP
headers), so that WebAssembly runs on all cores.

    python scripts/serve_web.py site                 # http://127.0.0.1:8000/
    python scripts/serve_web.py site --port=0        # a free port (the printed URL says which)

A host that cannot send these headers (GitHub Pages) needs nothing: the page's service worker adds them.
"""
import argparse
import functools
import sys
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from cli import run_main

ISOLATION = {'Cross-Origin-Opener-Policy': 'same-origin', 'Cross-Origin-Embedder-Policy': 'require-corp'}


class IsolatedHandler(SimpleHTTPRequestHandler):
    """Static files with the headers that make a page cross-origin isolated (SharedArrayBuffer, threads)."""
    extensions_map = {**SimpleHTTPRequestHandler.extensions_map, '.mjs': 'text/javascript',
                      '.js': 'text/javascript', '.wasm': 'application/wasm', '.onnx': 'application/octet-stream'}

    def end_headers(self) -> None:
        for name, value in ISOLATION.items():
            self.send_header(name, value)
        self.send_header('Cache-Control', 'no-cache')
        super().end_headers()

    def log_message(self, format: str, *args) -> None:  # noqa: A002 (http.server's signature)
        pass


def make_server(folder: Path, host: str = '127.0.0.1', port: int = 8000) -> ThreadingHTTPServer:
    """A bound threading server of `folder`'s files with ISOLATION headers (serve_forever to run it)."""
    if not (folder / 'index.html').is_file():
        raise ValueError(f"{folder} has no index.html: write a site with scripts/export_web.py --out={folder}")
    try:
        return ThreadingHTTPServer((host, port), functools.partial(IsolatedHandler, directory=str(folder)))
    except OSError as e:
        raise ValueError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('folder', type=Path, help='a site written by scripts/export_web.py')
    parser.add_argument('--host', default='127.0.0.1', help='address to listen on (default: this machine only)')
    parser.add_argument('--port', type=int, default=8000, help='port (default 8000; 0 picks a free one)')
    args = parser.parse_args(argv)
    server = make_server(args.folder, args.host, args.port)
    print(f"http://{args.host}:{server.server_address[1]}/  (Ctrl-C stops)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        print("stopped", file=sys.stderr)
    server.server_close()


if __name__ == '__main__':
    sys.exit(run_main(main, sys.argv[1:]))
