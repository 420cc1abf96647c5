"""scripts/download_data.py offline: a local HTTP server on 127.0.0.1 serves small archives with the real
archives' names and inner layouts (real T91 crops and the real Set5 `bird` files), the script's expected sizes,
hashes and counts replaced by theirs. Then train.py and test.py run on the laid-out default folders."""
import csv
import errno
import hashlib
import io
import json
import os
import re
import subprocess
import sys
import tarfile
import threading
import zipfile
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import cv2
import numpy as np
import pytest

import config
import scripts.download_data as download_data
from cli import run_main
from dataset import list_images
from helpers import assert_disk_full, run_limited
from imgproc import imresize, load_uint8

ROOT = Path(__file__).resolve().parents[1]

# The sources as the official LIIF README (github.com/yinboc/liif, "Data") links them.
OFFICIAL_URLS = {
    'div2k-train': ['http://data.vision.ee.ethz.ch/cvl/DIV2K/DIV2K_train_HR.zip'],
    'div2k-valid': ['http://data.vision.ee.ethz.ch/cvl/DIV2K/DIV2K_valid_HR.zip'],
    'benchmark': ['https://cv.snu.ac.kr/research/EDSR/benchmark.tar'],
}
SERVER_LIFETIME = 300  # seconds: the test server shuts itself down after this even if a test hangs


def png(img: np.ndarray) -> bytes:
    return cv2.imencode('.png', np.ascontiguousarray(img[:, :, ::-1]))[1].tobytes()


@pytest.fixture(scope='module')
def contents(train_root, benchmark_root) -> dict[str, dict[str, bytes]]:
    """{archive file name: {member name: bytes}} in the real archives' inner layouts: DIV2K's zips hold
    DIV2K_<split>_HR/<id>.png and DIV2K_<split>_LR_bicubic/X2/<id>x2.png; benchmark.tar holds
    benchmark/<Set>/HR/<name>.png and benchmark/<Set>/LR_bicubic/X<s>/<name>x<s>.png."""
    images = (load_uint8(path) for path in list_images(train_root / 'T91'))
    crops = [img[:80, :80] for img in images if min(img.shape[:2]) >= 80]
    div2k = {}
    for split, ids in (('train', range(1, 9)), ('valid', range(801, 803))):
        hr = {f'{i:04d}': crops[k] for k, i in enumerate(ids, start=0 if split == 'train' else 8)}
        div2k[f'DIV2K_{split}_HR.zip'] = {f'DIV2K_{split}_HR/{n}.png': png(img) for n, img in hr.items()}
        div2k[f'DIV2K_{split}_LR_bicubic_X2.zip'] = {
            f'DIV2K_{split}_LR_bicubic/X2/{n}x2.png': png(imresize(img, size=(40, 40))) for n, img in hr.items()}
    bench = {'benchmark/readme.txt': b'not an image: ignored'}
    for path in [benchmark_root / 'Set5' / 'HR' / 'bird.png',
                 *(benchmark_root / 'Set5' / 'LR_bicubic' / f'X{s}' / f'birdx{s}.png' for s in (2, 3, 4))]:
        bench[f'benchmark/{path.relative_to(benchmark_root).as_posix()}'] = path.read_bytes()
    rng = np.random.default_rng(0)
    for name, stem in (('Set14', 'zebra'), ('B100', '3096'), ('Urban100', 'img_001')):
        hr = rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)
        bench[f'benchmark/{name}/HR/{stem}.png'] = png(hr)
        for s in (2, 3, 4):
            bench[f'benchmark/{name}/LR_bicubic/X{s}/{stem}x{s}.png'] = png(imresize(hr, size=(24 // s, 24 // s)))
    return {**div2k, 'benchmark.tar': bench}


def pack(name: str, members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    if name.endswith('.zip'):
        with zipfile.ZipFile(buffer, 'w', zipfile.ZIP_DEFLATED) as archive:
            for member, data in members.items():
                archive.writestr(member, data)
    else:
        with tarfile.open(fileobj=buffer, mode='w') as archive:
            for member, data in members.items():
                info = tarfile.TarInfo(member)
                info.size = len(data)
                archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


@pytest.fixture(scope='module')
def archives(contents) -> dict[str, bytes]:
    return {name: pack(name, members) for name, members in contents.items()}


class Server:
    """A file server on 127.0.0.1: Range requests (or not), a connection dropped after `drop[name]` bytes
    (`drops` times), a log of (file, Range header, status)."""

    def __init__(self, files: dict[str, bytes], ranges: bool = True):
        self.files, self.ranges, self.drop, self.drops, self.log = dict(files), ranges, {}, 1, []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                server.serve(self)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(('127.0.0.1', 0), Handler)
        self.url = f'http://127.0.0.1:{self.httpd.server_port}/mirror/'
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={'poll_interval': 0.05}, daemon=True)
        self.timer = threading.Timer(SERVER_LIFETIME, self.httpd.shutdown)

    def serve(self, handler: BaseHTTPRequestHandler) -> None:
        name = handler.path.removeprefix('/mirror/')
        asked = handler.headers.get('Range')
        data = self.files.get(name)
        if data is None:
            self.log.append((name, asked, 404))
            handler.send_error(404)
            return
        match = re.fullmatch(r'bytes=(\d+)-', asked or '') if self.ranges else None
        start = int(match.group(1)) if match else 0
        status = 206 if match else 200
        self.log.append((name, asked, status))
        handler.send_response(status)
        handler.send_header('Content-Length', str(len(data) - start))
        if match:
            handler.send_header('Content-Range', f'bytes {start}-{len(data) - 1}/{len(data)}')
        handler.end_headers()
        if name in self.drop and self.drops > 0:  # send a part of the file, then close the connection
            self.drops -= 1
            handler.wfile.write(data[start:self.drop[name]])
            handler.close_connection = True
            return
        handler.wfile.write(data[start:])

    def __enter__(self):
        self.thread.start()
        self.timer.start()
        return self

    def __exit__(self, *exc):
        self.timer.cancel()
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=10)


@pytest.fixture
def sets(monkeypatch, contents, archives) -> dict:
    """The script's table with sizes, sha256 and counts of the test archives (sources and folders as they are);
    retries without waiting."""
    def counts(archive):
        names = [Path(m) for m in contents[archive.name] if m.endswith('.png')]
        return tuple((inner, dest, sum(str(p.parent) == inner for p in names)) for inner, dest, _ in archive.folders)
    table = {name: tuple(replace(a, size=len(archives[a.name]), sha256=hashlib.sha256(archives[a.name]).hexdigest(),
                                 folders=counts(a)) if a.name in archives else a for a in group)
             for name, group in download_data.SETS.items()}
    monkeypatch.setattr(download_data, 'SETS', table)
    monkeypatch.setattr(download_data, 'BACKOFF', 0.0)
    return table


def run(argv: list[str], capsys) -> tuple[int, str, str]:
    status = run_main(download_data.main, argv)
    out, err = capsys.readouterr()
    return status, out, err


def error_line(err: str) -> str:
    [line] = [line for line in err.splitlines() if line.startswith('error:')]
    return line


def assert_laid_out(root: Path, contents: dict, archive_names) -> None:
    """Every image of the archives is at its place under root, byte for byte; nothing else is left."""
    expected = {}
    for name in archive_names:
        for member, data in contents[name].items():
            if member.endswith('.png'):
                dest = member.replace('DIV2K_', 'DIV2K/DIV2K_', 1) if name.endswith('.zip') else member
                expected[dest] = data
    found = {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob('*') if p.is_file()}
    assert found.keys() == expected.keys()
    assert all(found[k] == expected[k] for k in expected)


def test_the_table_holds_the_official_sources_and_the_layout_config_reads():
    table = download_data.SETS
    for name, urls in OFFICIAL_URLS.items():
        assert [a.source + a.name for a in table[name]] == urls
    counts = {name: sum(n for a in group for *_, n in a.folders) for name, group in table.items()}
    assert counts == {'div2k-train': 800, 'div2k-valid': 100, 'div2k-x2': 900, 'div2k-x3': 900, 'div2k-x4': 900,
                      'benchmark': 4 * (5 + 14 + 100 + 100)}
    # the folders are config.py's defaults under the default --root, data/
    dests = {name: ['data/' + dest for a in group for _, dest, _ in a.folders] for name, group in table.items()}
    assert dests['div2k-train'] == config.train_dir and dests['div2k-valid'] == [config.valid_dir]
    assert [f'{config.test_root}/{s}/HR' for s in config.test_sets] == \
        [d for d in dests['benchmark'] if d.endswith('/HR') and d.split('/')[-2] in config.test_sets]
    paired = config.EXPERIMENTS['edsr-baseline-x2']
    assert dests['div2k-x2'] == [*paired['train_lr_dir'], paired['valid_lr_dir']]
    assert download_data.chosen_sets('div2k,benchmark', Path('data')) == ['div2k-train', 'div2k-valid', 'benchmark']


@pytest.mark.slow
def test_list_and_celebahq_at_the_command_line(tmp_path):
    script = [sys.executable, str(ROOT / 'scripts' / 'download_data.py')]
    listed = subprocess.run([*script, '--list'], capture_output=True, text=True, timeout=120)
    assert listed.returncode == 0, listed.stderr
    rows = {line.split()[0]: line.split() for line in listed.stdout.splitlines()[1:] if line and line[0] != '('}
    assert rows['div2k-train'][1:4] == ['3.53', 'GB', '800']
    assert rows['benchmark'][-1] == OFFICIAL_URLS['benchmark'][0]
    assert 'celebahq' in rows
    celeba = subprocess.run([*script, '--sets=celebahq', f'--root={tmp_path / "d"}'], capture_output=True,
                            text=True, timeout=120)
    assert celeba.returncode == 2 and celeba.stdout == ''
    line = error_line(celeba.stderr)
    assert 'drive.google.com' in line and 'split.json' in line
    assert f'scripts/prepare_celebahq.py --originals path/to/data1024x1024 --split path/to/split.json ' \
           f'--out {tmp_path / "d"}/celebAHQ' in line
    assert not (tmp_path / 'd').exists()


@pytest.mark.parametrize('argv, message', [
    (['--sets=div2k,celebahq'], 'cannot be downloaded automatically'),
    (['--sets=div2k,set5'], 'unknown set(s) set5'),
    (['--sets='], 'unknown set(s) (none given)'),
    (['--retries=-1'], '--retries must be >= 0'),
    (['--nonsense'], 'unrecognized arguments: --nonsense'),
])
def test_bad_input_is_one_error_line(argv, message, tmp_path, capsys):
    status, out, err = run([*argv, f'--root={tmp_path / "data"}'], capsys)
    assert status == 2 and message in error_line(err)
    assert not (tmp_path / 'data').exists()


@pytest.mark.slow
def test_default_root_and_source_then_train_and_test_on_the_default_layout(sets, archives, contents, tmp_path,
                                                                           monkeypatch, capsys, official_weights):
    """No --root and no --mirror: the table's own sources (pointed at the test server), into ./data; then
    train.py and test.py with their default folders, from that working directory."""
    with Server(archives) as server:
        for name in ('div2k-train', 'div2k-valid', 'div2k-x2', 'benchmark'):
            monkeypatch.setitem(sets, name, tuple(replace(a, source=server.url) for a in sets[name]))
        monkeypatch.chdir(tmp_path)
        status, out, err = run(['--sets=div2k,div2k-x2,benchmark'], capsys)
        assert status == 0, err
        assert sorted(server.log) == sorted((name, None, 200) for name in archives)  # each once, whole
    assert_laid_out(tmp_path / 'data', contents, archives)
    assert "benchmark: 16 images laid out under data\n" in out

    env = {**os.environ, 'OMP_NUM_THREADS': '1'}
    tiny = ['--patch_size=16', '--sample_q=64', '--batch_size=2', '--hidden_list=[32]', '--num_workers=0',
            '--repeat=1', '--valid_first=1', '--valid_repeat=2', '--max_steps=2']
    train = subprocess.run([sys.executable, str(ROOT / 'train.py'), *tiny], cwd=tmp_path, env=env,
                           capture_output=True, text=True, timeout=300)
    assert train.returncode == 0, train.stdout[-2000:] + train.stderr[-2000:]
    assert (tmp_path / 'results' / 'edsr-baseline-liif' / 'last.pth').is_file()
    paired = subprocess.run([sys.executable, str(ROOT / 'train.py'), '--experiment=edsr-baseline-x2',
                             '--patch_size=16', '--batch_size=2', '--num_workers=0', '--repeat=1', '--valid_first=1',
                             '--valid_repeat=1', '--max_steps=1'], cwd=tmp_path, env=env, capture_output=True,
                            text=True, timeout=300)
    assert paired.returncode == 0, paired.stdout[-2000:] + paired.stderr[-2000:]
    test = subprocess.run([sys.executable, str(ROOT / 'test.py'), f'--weights={official_weights}',
                           '--test_sets=Set5', '--test_scales=4'], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=300)
    assert test.returncode == 0, test.stdout[-2000:] + test.stderr[-2000:]
    [row] = list(csv.DictReader(open(tmp_path / 'results' / 'edsr-baseline-liif' / 'test_per_image.csv')))
    assert row['name'] == 'bird' and float(row['scale']) == 4
    # MATLAB bicubic up-sampling of the same LR file scores 30.18 dB (Y, border 4); the official model gets
    # 35.12 dB here: well above bicubic means the LR file and its HR image were paired as released
    assert float(row['psnr']) > 32


def test_mirror_root_and_a_second_run_that_downloads_nothing(sets, archives, contents, tmp_path, capsys):
    root = tmp_path / 'elsewhere' / 'data'
    with Server(archives) as server:
        status, out, err = run([f'--mirror={server.url}', f'--root={root}', '--sets=benchmark'], capsys)
        assert status == 0, err
        assert server.log == [('benchmark.tar', None, 200)]
        status, out, err = run([f'--mirror={server.url}', f'--root={root}', '--sets=benchmark'], capsys)
        assert status == 0 and 'benchmark: already complete, skipped' in out
        assert len(server.log) == 1
    assert_laid_out(root, contents, ['benchmark.tar'])


def test_a_dropped_connection_resumes_with_a_range_request(sets, archives, contents, tmp_path, capsys):
    cut = len(archives['benchmark.tar']) // 3
    with Server(archives) as server:
        server.drop = {'benchmark.tar': cut}
        status, out, err = run([f'--mirror={server.url}', f'--root={tmp_path}', '--sets=benchmark'], capsys)
    assert status == 0, err
    assert server.log == [('benchmark.tar', None, 200), ('benchmark.tar', f'bytes={cut}-', 206)]
    assert_laid_out(tmp_path, contents, ['benchmark.tar'])


def test_an_interrupted_run_keeps_its_bytes_and_the_rerun_continues(sets, archives, contents, tmp_path, capsys):
    data, cut = archives['DIV2K_train_HR.zip'], len(archives['DIV2K_train_HR.zip']) // 2
    with Server(archives) as server:
        server.drop, server.drops = {'DIV2K_train_HR.zip': cut}, 2
        status, out, err = run([f'--mirror={server.url}', f'--root={tmp_path}', '--sets=div2k-train',
                                '--retries=1'], capsys)
        assert status == 2
        assert 'div2k-train: downloading' in error_line(err) and 'failed 2 time(s)' in error_line(err)
        part = tmp_path / 'downloads' / 'DIV2K_train_HR.zip.part'
        assert part.read_bytes() == data[:cut]  # what came is kept; no set is laid out
        assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob('*')) == \
            ['downloads', 'downloads/' + part.name]
        status, out, err = run([f'--mirror={server.url}', f'--root={tmp_path}', '--sets=div2k-train'], capsys)
    assert status == 0, err
    assert server.log[-1] == ('DIV2K_train_HR.zip', f'bytes={cut}-', 206)
    assert_laid_out(tmp_path, contents, ['DIV2K_train_HR.zip'])


def test_a_server_without_range_support_starts_over(sets, archives, contents, tmp_path, capsys):
    part = tmp_path / 'downloads' / 'benchmark.tar.part'
    part.parent.mkdir()
    part.write_bytes(b'\xff' * 5000)  # not the file's first bytes: kept, they would spoil it
    with Server(archives, ranges=False) as server:
        status, out, err = run([f'--mirror={server.url}', f'--root={tmp_path}', '--sets=benchmark'], capsys)
    assert status == 0, err
    assert server.log == [('benchmark.tar', 'bytes=5000-', 200)]
    assert_laid_out(tmp_path, contents, ['benchmark.tar'])


def flip_byte(data: bytes, offset: int) -> bytes:
    return data[:offset] + bytes([data[offset] ^ 0xFF]) + data[offset + 1:]


def member_data_offset(data: bytes, name: str) -> int:
    """Where member `name`'s data starts in a tar, or in a zip (after its 30-byte local header and name)."""
    if data[:2] == b'PK':
        info = zipfile.ZipFile(io.BytesIO(data)).getinfo(name)
        return info.header_offset + 30 + len(info.filename.encode())
    return tarfile.open(fileobj=io.BytesIO(data)).getmember(name).offset_data


@pytest.mark.parametrize('case', ['crc', 'truncated tar', 'sha256', 'count', 'undecodable', '404'])
def test_failures_leave_nothing_under_the_root(case, sets, archives, contents, tmp_path, capsys, monkeypatch):
    served, name, archive_name = dict(archives), 'div2k-valid', 'DIV2K_valid_HR.zip'
    if case == 'crc':  # one byte of a compressed image changed: zlib or the CRC-32 check must notice
        data = archives[archive_name]
        served[archive_name] = flip_byte(data, member_data_offset(data, 'DIV2K_valid_HR/0802.png') + 200)
    elif case == 'truncated tar':  # cut inside an image
        name, archive_name = 'benchmark', 'benchmark.tar'
        data = archives[archive_name]
        served[archive_name] = data[:member_data_offset(data, 'benchmark/Set5/HR/bird.png') + 1000]
    elif case == 'undecodable':
        junk = {'DIV2K_valid_HR/0802.png': b'\x89PNG junk'}
        served[archive_name] = pack(archive_name, {**contents[archive_name], **junk})
    elif case == '404':
        del served[archive_name]
    if case in ('crc', 'truncated tar', 'undecodable'):  # the table knows the served file: only the content is wrong
        monkeypatch.setitem(sets, name, (replace(sets[name][0], size=len(served[archive_name]),
                                                 sha256=hashlib.sha256(served[archive_name]).hexdigest()),))
    elif case == 'sha256':
        monkeypatch.setitem(sets, name, (replace(sets[name][0], sha256='0' * 64),))
    elif case == 'count':
        folder = sets[name][0].folders[0]
        monkeypatch.setitem(sets, name, (replace(sets[name][0], folders=((*folder[:2], folder[2] + 1),)),))
    with Server(served) as server:
        status, out, err = run([f'--mirror={server.url}', f'--root={tmp_path}', f'--sets={name}'], capsys)
    line = error_line(err)
    assert status == 2 and line.startswith(f'error: {name}: ')
    expected = {'crc': f'{archive_name} is damaged (', 'truncated tar': 'benchmark.tar is damaged (ReadError',
                'sha256': 'is not the published archive', 'count': 'holds other numbers of images',
                'undecodable': 'DIV2K_valid_HR/0802.png in DIV2K_valid_HR.zip does not decode',
                '404': 'answered HTTP 404'}[case]
    assert expected in line and (case == '404' or 'rerun to download it again' in line)
    assert list(tmp_path.iterdir()) == []


def test_no_network_no_disk_space_and_unusable_roots(sets, archives, tmp_path, capsys, monkeypatch):
    with Server(archives) as server:
        closed = server.url
    status, out, err = run([f'--mirror={closed}', f'--root={tmp_path}', '--sets=div2k-valid', '--retries=1'], capsys)
    assert status == 2 and 'div2k-valid: downloading' in error_line(err) and 'check the network' in error_line(err)
    assert list(tmp_path.iterdir()) == []

    monkeypatch.setitem(sets, 'benchmark', (replace(sets['benchmark'][0], size=10 ** 15),))  # 1 PB
    status, out, err = run([f'--mirror={closed}', f'--root={tmp_path}', '--sets=benchmark'], capsys)
    assert status == 2 and 'benchmark: not enough free disk space' in error_line(err)
    assert list(tmp_path.iterdir()) == []

    (tmp_path / 'file').write_text('x')
    status, out, err = run([f'--root={tmp_path / "file" / "data"}', '--sets=div2k-valid'], capsys)
    assert status == 2 and 'is a file, not a folder' in error_line(err) and '--root' in error_line(err)

    wrong = tmp_path / 'data' / 'benchmark' / 'Set5' / 'HR'
    wrong.mkdir(parents=True)
    for stem in ('baby', 'bird'):  # the test table expects 1 image there
        (wrong / f'{stem}.png').write_bytes(b'mine')
    status, out, err = run([f'--mirror={closed}', f'--root={tmp_path / "data"}', '--sets=benchmark'], capsys)
    assert status == 2 and f'benchmark: {wrong} holds 2 images, expected 1; move it away' in error_line(err)
    assert (wrong / 'baby.png').read_bytes() == b'mine'


def test_interrupted_while_moving_into_place_leaves_no_partial_set(sets, archives, contents, tmp_path, capsys,
                                                                    monkeypatch):
    """Ctrl-C between the renames of benchmark's 16 folders: the ones moved go back, the archive stays, and the
    rerun lays the set out without downloading again."""
    rename, calls = download_data.os.rename, []

    def interrupted(src, dst):
        calls.append(dst)
        if len(calls) == 5:
            raise KeyboardInterrupt
        rename(src, dst)
    with Server(archives) as server:
        monkeypatch.setattr(download_data.os, 'rename', interrupted)
        with pytest.raises(KeyboardInterrupt):
            run_main(download_data.main, [f'--mirror={server.url}', f'--root={tmp_path}', '--sets=benchmark'])
        monkeypatch.setattr(download_data.os, 'rename', rename)
        assert [p.name for p in tmp_path.iterdir()] == ['downloads']
        assert (tmp_path / 'downloads' / 'benchmark.tar').read_bytes() == archives['benchmark.tar']
        status, out, err = run([f'--mirror={server.url}', f'--root={tmp_path}', '--sets=benchmark'], capsys)
        assert status == 0, err
        assert len(server.log) == 1
    assert_laid_out(tmp_path, contents, ['benchmark.tar'])


def test_a_full_disk_while_unpacking_keeps_the_download(sets, archives, tmp_path, capsys, monkeypatch):
    def full(*args):
        raise OSError(errno.ENOSPC, 'No space left on device')
    monkeypatch.setattr(download_data.shutil, 'copyfileobj', full)
    with Server(archives) as server:
        status, out, err = run([f'--mirror={server.url}', f'--root={tmp_path}', '--sets=div2k-valid'], capsys)
    line = error_line(err)
    assert status == 2 and line.startswith(f'error: div2k-valid: could not write {tmp_path / ".unpacking-div2k-valid"}: '
                                           f'the disk is full or a size limit is reached (No space left on device)')
    assert 'make room' in line
    assert [p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob('*')] == \
        ['downloads', 'downloads/DIV2K_valid_HR.zip']


# download_data.py with the test table, as its own process (for the file-size limit of a full disk)
RUNNER = '''
import json, sys
from dataclasses import replace
import scripts.download_data as download_data
from cli import run_main
table = json.loads(sys.argv[1])
download_data.SETS = {name: tuple(replace(a, size=table[a.name]['size'], sha256=table[a.name]['sha256'],
                                          folders=tuple(map(tuple, table[a.name]['folders'])))
                                  if a.name in table else a for a in group)
                      for name, group in download_data.SETS.items()}
download_data.BACKOFF = 0.0
sys.exit(run_main(download_data.main, sys.argv[2:]))
'''


@pytest.mark.slow
def test_a_full_disk_while_downloading_keeps_the_part_and_a_rerun_continues(sets, archives, contents, tmp_path,
                                                                              capsys):
    """The archive's file reaches the file-size limit half way: one `error:` line naming the .part file, no
    retry (the network is not to blame), the bytes that fit kept; the rerun fetches only the rest."""
    [archive] = sets['div2k-valid']
    table = {archive.name: {'size': archive.size, 'sha256': archive.sha256, 'folders': archive.folders}}
    limit = archive.size // 2
    part = tmp_path / 'downloads' / f'{archive.name}.part'
    with Server(archives) as server:
        argv = [f'--mirror={server.url}', f'--root={tmp_path}', '--sets=div2k-valid']
        done = run_limited(['-c', RUNNER, json.dumps(table), *argv], limit)
        assert_disk_full(done, part)
        assert 'a rerun continues from them' in done.stderr
        assert part.read_bytes() == archives[archive.name][:limit] and len(server.log) == 1
        status, out, err = run(argv, capsys)
        assert status == 0, err
        assert server.log[1] == (archive.name, f'bytes={limit}-', 206)
    assert_laid_out(tmp_path, contents, [archive.name])
