"""Download, verify and lay out the paper's data: DIV2K and the benchmark sets, in data/README.md's layout.

    python scripts/download_data.py --sets=div2k,benchmark        # what train.py and test.py read by default
    python scripts/download_data.py --list                        # every set: size, images, source
    python scripts/download_data.py --sets=div2k-x2 --mirror=http://cache.example.org/sr/   # a local mirror

Safe to interrupt and to rerun. Archives are downloaded into <root>/downloads/ (an interrupted download
continues where it stopped; a server without Range support starts it again), checked (sha256 where
published, zip CRCs / complete tar members, the number of images, every image decodes), unpacked into a
temporary folder beside the target and only then renamed into place; the archive is deleted afterwards. A
set whose folders already hold the expected number of images is skipped. Every failure is one `error:`
line naming the set and what to do, exit status 2, and leaves no partial set.
"""
import argparse
import http.client
import os
import shutil
import sys
import tarfile
import time
import urllib.error
import urllib.request
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from cli import ArgumentParser, run_main
from dataset import IMAGE_SUFFIXES
from files import (
    NO_SPACE,
    check_writable,
    disk_full,
)
from imgproc import ImageError, load_image
from weights import sha256_of


@dataclass(frozen=True)
class Archive:
    """One file at a source: its size and sha256 (as published), and which folder inside it becomes which
    folder under --root, with the number of images each holds."""
    name: str
    source: str  # the folder URL the file is fetched from (`source + name`)
    size: int  # bytes
    sha256: str
    folders: tuple[tuple[str, str, int], ...]  # (folder in the archive, folder under --root, images)


DIV2K_SITE = 'http://data.vision.ee.ethz.ch/cvl/DIV2K/'  # as the official LIIF README links it
EDSR_SITE = 'https://cv.snu.ac.kr/research/EDSR/'  # benchmark.tar, which the official LIIF README links
BENCHMARK_SETS = {'Set5': 5, 'Set14': 14, 'B100': 100, 'Urban100': 100}


def div2k(split: str, kind: str, size: int, sha256: str) -> Archive:
    """A DIV2K archive: kind 'HR' or 'X2'/'X3'/'X4' (bicubic LR); split 'train' (800) or 'valid' (100)."""
    inner = f'DIV2K_{split}_HR' if kind == 'HR' else f'DIV2K_{split}_LR_bicubic/{kind}'
    name = f'DIV2K_{split}_HR.zip' if kind == 'HR' else f'DIV2K_{split}_LR_bicubic_{kind}.zip'
    return Archive(name, DIV2K_SITE, size, sha256, ((inner, f'DIV2K/{inner}', 800 if split == 'train' else 100),))


BENCHMARK = Archive(
    'benchmark.tar', EDSR_SITE, 250_112_000, '80c21c333bbf6ceb5308b7243761f8284478274413a97b96f1d63e9045fd93e8',
    tuple((f'benchmark/{s}/{sub}', f'benchmark/{s}/{sub}', n) for s, n in BENCHMARK_SETS.items()
          for sub in ('HR', 'LR_bicubic/X2', 'LR_bicubic/X3', 'LR_bicubic/X4')))

# The sets, each with its archives. Sizes and sha256 of the DIV2K archives as the DIV2K site serves them
# (tensorflow-datasets' checksum list); benchmark.tar's as recorded by its users. Layout: data/README.md.
SETS: dict[str, tuple[Archive, ...]] = {
    'div2k-train': (
        div2k('train', 'HR', 3_530_603_713, '9d0b9c463f6e35b6c62cc6a930ee2224f670b34c1df841a57670f9acf0f6c335'),),
    'div2k-valid': (
        div2k('valid', 'HR', 448_993_893, '20dd31fd84d777bc1cf5d6b7654a3f569c0aec74458ae094122ad1d0489900fc'),),
    'div2k-x2': (
        div2k('train', 'X2', 925_390_592, 'a53a424317575838dadce4bcd97cf7b744d6855f43740ed5f0245af3cf4bd850'),
        div2k('valid', 'X2', 117_763_600, '60eed9875c697df51204aa579e2a699e1d5215095788a097ff54dd17e2664d57')),
    'div2k-x3': (
        div2k('train', 'X3', 427_847_282, 'ad5c8e5507e2765823d3c2c5bd0934842efcd487c5370604c224090898b3163a'),
        div2k('valid', 'X3', 54_513_392, '04b9a2ed3b4a0715d3924d3ae8514830c3328fac8d30512ce716d6f419e052a3')),
    'div2k-x4': (
        div2k('train', 'X4', 246_914_039, 'f006b837f4eb52b82909aa01478e6d6d199eefce932179491d0c9dbb706dde3a'),
        div2k('valid', 'X4', 31_505_881, 'a50a5d1c4b88de4e8d300d8fb2b904c52fe93b2b298a4899697760d7cbb6d553')),
    'benchmark': (BENCHMARK,),
}
ALIASES = {'div2k': ('div2k-train', 'div2k-valid')}
CELEBAHQ = ("celebahq: celebA-HQ cannot be downloaded automatically (the official link is a Google Drive folder): "
            "get data1024x1024.zip from https://drive.google.com/drive/folders/11Vz0fqHS2rXDb5pprgTjpD7S2BAJhi1P "
            "and split.json from https://www.dropbox.com/s/2qeijojdjzvp3b9/split.json?dl=1, unzip the former, then run "
            "python scripts/prepare_celebahq.py --originals path/to/data1024x1024 --split path/to/split.json "
            "--out {root}/celebAHQ")

RETRIES = 4  # attempts after the first one, per archive
BACKOFF = 2.0  # seconds before the first retry, doubled after each
TIMEOUT = 60  # seconds to connect, and without a byte, before an attempt counts as failed
BLOCK = 1 << 20


class Fatal(ValueError):
    """A failure that retrying cannot fix (HTTP 404, a damaged archive, ...)."""


def table() -> str:
    """`--list`: one row per set."""
    rows = [('set', 'size', 'images', 'source')]
    for name, archives in SETS.items():
        images = sum(n for a in archives for *_, n in a.folders)
        rows.append((name, f'{sum(a.size for a in archives) / 1e9:.2f} GB', str(images),
                     ' '.join(a.source + a.name for a in archives)))
    rows.append(('celebahq', 'manual', '30000', 'Google Drive (see --sets=celebahq)'))
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    aliases = '; '.join(f"{alias} = {' + '.join(names)}" for alias, names in ALIASES.items())
    lines = ['  '.join(c.ljust(w) for c, w in zip(row, widths)) + '  ' + row[3] for row in rows]
    return '\n'.join(lines) + f'\n({aliases})'


def chosen_sets(text: str, root: Path) -> list[str]:
    """The set names of --sets, aliases expanded, in table order; unknown names and celebahq are refused."""
    names = [n.strip().lower() for n in text.split(',') if n.strip()]
    if 'celebahq' in names:
        raise ValueError(CELEBAHQ.format(root=root))
    unknown = [n for n in names if n not in SETS and n not in ALIASES]
    if unknown or not names:
        raise ValueError(f"--sets: unknown set(s) {', '.join(unknown) or '(none given)'}; choose from "
                         f"{', '.join([*SETS, *ALIASES, 'celebahq'])} (python scripts/download_data.py --list)")
    wanted = {m for n in names for m in ALIASES.get(n, (n,))}
    return [n for n in SETS if n in wanted]


def count_images(folder: Path) -> int:
    return sum(1 for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def missing_folders(name: str, root: Path) -> list[tuple[Archive, str, str, int]]:
    """The set's (archive, inner folder, folder under root, images) that are not in place yet. A folder that
    exists with another number of images is refused: it is not this script's to overwrite."""
    missing = []
    for archive in SETS[name]:
        for inner, dest, expected in archive.folders:
            folder = root / dest
            if not folder.exists():
                missing.append((archive, inner, dest, expected))
            elif not folder.is_dir() or count_images(folder) != expected:
                found = f"holds {count_images(folder)} images" if folder.is_dir() else "is a file"
                raise ValueError(f"{name}: {folder} {found}, expected {expected}; move it away (or delete it) and "
                                 f"rerun to download the set again")
    return missing


def human(size: float) -> str:
    return f'{size / 1e9:.2f} GB' if size >= 1e9 else f'{size / 1e6:.1f} MB'


def check_disk(todo: dict[str, list], root: Path) -> None:
    """Refuse to start without room for the downloads and the unpacked images (about the archives' size: the
    images are PNG, which zip does not shrink). Sets run one after another and each archive is deleted once
    its set is in place, so the peak is the sets done so far plus the current set's archives and images."""
    need, placed = 0, 0
    for name in todo:
        archives = SETS[name]
        present = sum(partial_bytes(root, a) for a in archives)
        need = max(need, placed + sum(2 * a.size for a in archives) - present)
        placed += sum(a.size for a in archives)
    base = next(p for p in [root, *root.parents] if p.exists())
    free = shutil.disk_usage(base).free
    if need > free:
        raise ValueError(f"{', '.join(todo)}: not enough free disk space under {root}: about {human(need)} needed "
                         f"for the downloads and the unpacked images, {human(free)} free; free some space or choose "
                         f"another --root")


def download_dir(root: Path) -> Path:
    return root / 'downloads'


def partial_bytes(root: Path, archive: Archive) -> int:
    """Bytes of the archive already on disk, finished or not."""
    path = download_dir(root) / archive.name
    part = path.with_name(path.name + '.part')
    return path.stat().st_size if path.exists() else part.stat().st_size if part.exists() else 0


def byte_bar(total: int | None, desc: str, initial: int = 0) -> tqdm:
    return tqdm(total=total, initial=initial, unit='B', unit_scale=True, desc=desc, dynamic_ncols=True)


def fetch(url: str, part: Path, desc: str) -> None:
    """One attempt: append the rest of `url` to `part` with a Range request (or write it anew when the server
    answers without Range support). Raises OSError / HTTPException when the transfer stops short."""
    start = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={'Range': f'bytes={start}-'} if start else {})
    try:
        response = urllib.request.urlopen(request, timeout=TIMEOUT)
    except urllib.error.HTTPError as e:
        if e.code == 416:  # the range starts at or past the end: the part is not this file, start over
            part.unlink()
        raise
    with response:
        resumed = start and response.status == 206 and \
            response.headers.get('Content-Range', '').startswith(f'bytes {start}-')
        start = start if resumed else 0
        length = response.headers.get('Content-Length')
        total = start + int(length) if length is not None else None
        with open(part, 'ab' if start else 'wb') as out, byte_bar(total, desc, start) as bar:
            while block := response.read(BLOCK):
                out.write(block)
                bar.update(len(block))
    got = part.stat().st_size
    if total is not None and got != total:
        raise ConnectionError(f"the connection closed after {got:,} of {total:,} bytes")


def download(name: str, archive: Archive, url: str, root: Path, retries: int) -> Path:
    """The complete archive in <root>/downloads/: fetched with retries and backoff, then renamed from .part."""
    path = download_dir(root) / archive.name
    if path.exists():
        return path
    part = path.with_name(path.name + '.part')
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        for attempt in range(retries + 1):
            try:
                fetch(url, part, f'{name}: {archive.name}')
                break
            except urllib.error.HTTPError as e:
                if e.code < 500 and e.code not in (408, 416, 429):
                    raise Fatal(f"{name}: {url} answered HTTP {e.code} {e.reason}; check the address (with "
                                f"--mirror it must serve {archive.name} by its file name)") from None
                problem = f"HTTP {e.code} {e.reason}"
            except (OSError, http.client.HTTPException) as e:  # refused, timed out, dropped mid-file
                if getattr(e, 'errno', None) in NO_SPACE:  # a full disk is not the network's: no retry
                    raise disk_full(part, e, f"; the {human(part.stat().st_size)} fetched so far are kept in it and "
                                             f"a rerun continues from them") from None
                problem = f"{type(e).__name__}: {e}"
            if attempt < retries:
                time.sleep(BACKOFF * 2 ** attempt)
        else:
            kept = f"it continues from the {human(part.stat().st_size)} kept in {part}" if part.exists() else ""
            raise ValueError(f"{name}: downloading {url} failed {retries + 1} time(s), last: {problem}; check the "
                             f"network (or use --mirror) and rerun{'; ' + kept if kept else ''}")
        os.replace(part, path)
    finally:
        remove_empty(path.parent)  # nothing fetched: leave no empty folder behind
    return path


def members(path: Path):
    """(name, open-for-reading) for every regular file of a zip or tar archive. Reading a member to its end
    checks it: zip raises on a bad CRC-32, tar on a member cut short."""
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            for info in archive.infolist():
                if not info.is_dir():
                    yield info.filename, lambda info=info: archive.open(info)
    else:
        with tarfile.open(path) as archive:
            for info in archive:
                if info.isfile():
                    yield info.name, lambda info=info: archive.extractfile(info)


def unpack(name: str, archive: Path, wanted: dict[str, int], tmp: Path) -> None:
    """Copy the images of the `wanted` folders ({inner folder: expected count}) of the archive to tmp/<inner>/,
    checking the archive as it is read, the counts and that every image decodes."""
    found = dict.fromkeys(wanted, 0)
    try:
        for member, open_member in tqdm(members(archive), desc=f'{name}: unpacking {archive.name}', unit=' files',
                                        dynamic_ncols=True):
            inner = PurePosixPath(member.removeprefix('./'))
            folder = str(inner.parent)
            if folder not in wanted or inner.suffix.lower() not in IMAGE_SUFFIXES:
                continue
            target = tmp / folder / inner.name  # only the base name: nothing is written outside tmp
            target.parent.mkdir(parents=True, exist_ok=True)
            with open_member() as src, open(target, 'wb') as out:
                shutil.copyfileobj(src, out, BLOCK)
            found[folder] += 1
    except (zipfile.BadZipFile, tarfile.TarError, zlib.error, EOFError, ValueError, OSError) as e:
        if isinstance(e, OSError) and e.errno in NO_SPACE:
            raise disk_full(tmp, e) from None
        if isinstance(e, OSError) and e.errno is not None:  # a permission problem is not the archive's either
            raise
        raise Fatal(f"{name}: {archive.name} is damaged ({type(e).__name__}: {e})") from None
    wrong = [f"{folder} {found[folder]} (expected {n})" for folder, n in wanted.items() if found[folder] != n]
    if wrong:
        raise Fatal(f"{name}: {archive.name} holds other numbers of images than this set has: {', '.join(wrong)}")
    for image in tqdm(sorted(p for folder in wanted for p in (tmp / folder).iterdir()),
                      desc=f'{name}: decoding', unit='img', dynamic_ncols=True):
        try:
            load_image(image)
        except ImageError:
            raise Fatal(f"{name}: {image.relative_to(tmp)} in {archive.name} does not decode as an image") from None


def move_into_place(tmp: Path, folders: list[tuple[str, str]], root: Path) -> None:
    """Rename each checked tmp/<inner> to root/<dest>; if one rename fails, the ones done are undone."""
    done = []
    try:
        for inner, dest in folders:
            (root / dest).parent.mkdir(parents=True, exist_ok=True)
            os.rename(tmp / inner, root / dest)
            done.append((inner, dest))
    except BaseException:  # an error or Ctrl-C between two renames
        for inner, dest in reversed(done):
            os.rename(root / dest, tmp / inner)
        for _, dest in folders:  # and the parent folders made for them
            for parent in (root / dest).parents:
                if parent == root or not parent.is_dir() or any(parent.iterdir()):
                    break
                parent.rmdir()
        raise


def remove_empty(folder: Path) -> None:
    if folder.is_dir() and not any(folder.iterdir()):
        folder.rmdir()


def delete(paths: list[Path], root: Path) -> None:
    """Delete downloaded archives, and the downloads folder once it is empty."""
    for path in paths:
        path.unlink()
    remove_empty(download_dir(root))


def fetch_set(name: str, missing: list, root: Path, mirror: str, retries: int) -> None:
    """Download, check and lay out the missing folders of one set; afterwards its archives are deleted. A damaged
    archive is deleted too, so that a rerun downloads it again."""
    archives = list(dict.fromkeys(a for a, *_ in missing))
    paths = [download(name, a, (mirror.rstrip('/') + '/' if mirror else a.source) + a.name, root, retries)
             for a in archives]
    tmp = root / f'.unpacking-{name}'  # beside the targets: same file system, so the final renames are atomic
    shutil.rmtree(tmp, ignore_errors=True)  # left by a run that was killed
    try:
        for archive, path in zip(archives, paths):
            if archive.sha256 and sha256_of(path, f'{name}: sha256') != archive.sha256:
                raise Fatal(f"{name}: {archive.name} is not the published archive (sha256 differs from "
                            f"{archive.sha256})")
            unpack(name, path, {inner: n for a, inner, _, n in missing if a is archive}, tmp)
        move_into_place(tmp, [(inner, dest) for _, inner, dest, _ in missing], root)
    except Fatal as e:
        delete(paths, root)
        raise Fatal(f"{e}; deleted the download, nothing was laid out: rerun to download it again, and if this "
                    f"repeats, check the source") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    delete(paths, root)
    print(f"{name}: {sum(n for *_, n in missing)} images laid out under {root}")


def main(argv: list[str]) -> None:
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--sets', default='div2k,benchmark', help='comma-separated sets (default div2k,benchmark)')
    parser.add_argument('--root', type=Path, default=Path('data'), help='the data folder (default data)')
    parser.add_argument('--mirror', default='', help='fetch every archive by its file name from this URL instead')
    parser.add_argument('--retries', type=int, default=RETRIES, help=f'retries per archive (default {RETRIES})')
    parser.add_argument('--list', action='store_true', help='print the sets (size, images, source) and exit')
    args = parser.parse_args(argv)
    if args.list:
        print(table())
        return
    names = chosen_sets(args.sets, args.root)
    if args.retries < 0:
        raise ValueError(f"--retries must be >= 0, got {args.retries}")
    try:
        check_writable(args.root, '--root')
    except ValueError as e:
        raise ValueError(f"{', '.join(names)}: {e}; choose a writable folder with --root") from None
    todo = {name: missing for name in names if (missing := missing_folders(name, args.root))}
    for name in names:
        if name not in todo:
            print(f"{name}: already complete, skipped")
    check_disk(todo, args.root)
    for name, missing in todo.items():
        try:
            fetch_set(name, missing, args.root, args.mirror, args.retries)
        except OSError as e:  # a full disk, a permission problem: the archive is not to blame, so it is kept
            raise ValueError(f"{name}: {e}; make room or fix the permissions under {args.root}, then rerun "
                             f"(finished downloads are kept)") from None


if __name__ == '__main__':
    try:
        sys.exit(run_main(main, sys.argv[1:]))
    except KeyboardInterrupt:
        print("interrupted: rerun the same command to continue the download", file=sys.stderr)
        sys.exit(130)
