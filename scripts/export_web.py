"""Write the static site that runs LIIF in the browser: the viewer page, the engine module liif.js,
onnxruntime-web's files and the exported model, in one folder that any static host serves.

    python scripts/export_web.py --out=site                       # the official EDSR-baseline-LIIF
    python scripts/export_web.py --out=site --weights=lte.pth     # any checkpoint export_onnx.py exports
    python scripts/export_web.py --out=site --weights=liif.onnx   # a file export_onnx.py wrote
    python scripts/serve_web.py site                              # http://127.0.0.1:8000/, cross-origin isolated

The page's sources are web/; onnxruntime-web comes from npm, pinned by web/package-lock.json (`npm ci`
runs here when web/node_modules is missing). The model is written by scripts/export_onnx.py's checked
export. The folder is built beside --out and put in place at the end: a failure leaves nothing new.
"""
import argparse
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import config
from cli import run_main
from files import check_writable
from onnx_model import OnnxModel
from scripts.export_onnx import export_checked
from weights import resolve_weights

WEB = ROOT / 'web'
ORT_DIST = WEB / 'node_modules' / 'onnxruntime-web' / 'dist'
# one onnxruntime-web build runs both backends: WebGPU (its own EP) and WebAssembly with threads
ORT_FILES = ('ort.webgpu.min.mjs', 'ort-wasm-simd-threaded.asyncify.mjs', 'ort-wasm-simd-threaded.asyncify.wasm')
PAGE_SUFFIXES = ('.html', '.js', '.css')
SITE_MARK = 'liif.js'  # an existing --out holding it is a site written here, which may be replaced


def install_ort() -> None:
    """onnxruntime-web as web/package-lock.json pins it, installed by `npm ci` when it is missing."""
    if all((ORT_DIST / name).is_file() for name in ORT_FILES):
        return
    npm = shutil.which('npm')
    if npm is None:
        raise ValueError("web/node_modules is missing and there is no npm to install it (install Node.js)")
    print("installing onnxruntime-web (npm ci in web/)", file=sys.stderr)
    done = subprocess.run([npm, 'ci', '--no-audit', '--no-fund', '--ignore-scripts'], cwd=WEB,
                          capture_output=True, text=True)
    if done.returncode or not all((ORT_DIST / name).is_file() for name in ORT_FILES):
        last = (done.stderr.strip().splitlines() or ['no output'])[-1]
        raise ValueError(f"npm ci in {WEB} failed: {last}")


def check_out(out: Path) -> None:
    """Refuse an --out that is a file, or a folder with other content than a site written here."""
    if out.is_file():
        raise ValueError(f"--out {out} is a file, not a folder")
    if out.is_dir() and any(out.iterdir()) and not (out / SITE_MARK).is_file():
        raise ValueError(f"--out {out} is a folder with other files in it (not a site written by this script)")
    check_writable(out.parent, 'output folder')


def place_model(weights: Path, path: Path) -> float:
    """The model at `path`: a checkpoint exported and checked (returns its difference to PyTorch), or an
    .onnx file of scripts/export_onnx.py copied as it is (returns 0: it was checked when written)."""
    if weights.suffix.lower() != '.onnx':
        return export_checked(weights, path)
    OnnxModel(weights)  # refuses a file of another model
    shutil.copyfile(weights, path)
    return 0.0


def write_site(out: Path, weights: Path) -> float:
    """The site in `out` (replacing one written before); returns the model's difference to PyTorch."""
    check_out(out)
    install_ort()
    staging = out.with_name(out.name + '.part')
    shutil.rmtree(staging, ignore_errors=True)
    try:
        (staging / 'ort').mkdir(parents=True)
        diff = place_model(weights, staging / 'liif.onnx')
        for page in sorted(WEB.iterdir()):
            if page.suffix in PAGE_SUFFIXES:
                shutil.copyfile(page, staging / page.name)
        for name in ORT_FILES:
            shutil.copyfile(ORT_DIST / name, staging / 'ort' / name)
        shutil.rmtree(out, ignore_errors=True)
        staging.rename(out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return diff


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--out', type=Path, required=True, help='the folder to write the site to')
    parser.add_argument('--weights', default=config.weights,
                        help=f'checkpoint to export, or an .onnx file (default {config.weights}, fetched when missing)')
    args = parser.parse_args(argv)
    check_out(args.out)
    diff = write_site(args.out, resolve_weights(args.weights))
    size = sum(f.stat().st_size for f in args.out.rglob('*')) / 2 ** 20
    print(f"wrote {args.out}/ ({size:.0f} MB); the model under ONNX Runtime vs PyTorch: max abs difference {diff:.1e}")


if __name__ == '__main__':
    sys.exit(run_main(main, sys.argv[1:]))
