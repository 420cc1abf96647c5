"""The tests' own data: every file in tests/data is listed in its MANIFEST.tsv with the size and md5
it had at its origin (the standard Set5 / Set14 files, T91 and BSDS200 images), and nothing else is there."""
import csv
import hashlib

from conftest import DATA


def manifest() -> dict[str, tuple[int, str, str]]:
    with open(DATA / 'MANIFEST.tsv', newline='') as f:
        rows = [row for row in csv.reader(f, delimiter='\t') if row and not row[0].startswith('#')]
    return {path: (int(size), md5, origin) for path, size, md5, origin in rows}


def test_every_file_has_its_listed_size_and_md5():
    listed = manifest()
    found = {p.relative_to(DATA).as_posix() for p in DATA.rglob('*') if p.is_file()} - {'MANIFEST.tsv'}
    assert found == set(listed)
    for path, (size, md5, origin) in listed.items():
        data = (DATA / path).read_bytes()
        assert (len(data), hashlib.md5(data).hexdigest()) == (size, md5), path
        assert origin, path


def test_the_sets_are_whole():
    """Set5 and Set14 with their LR files at x2, x3 and x4; 10 T91 and 6 BSDS200 training images."""
    listed = manifest()
    for name, count in (('Set5', 5), ('Set14', 14)):
        for folder in ('HR', 'LR_bicubic/X2', 'LR_bicubic/X3', 'LR_bicubic/X4'):
            assert sum(p.startswith(f'benchmark/{name}/{folder}/') for p in listed) == count, (name, folder)
    assert sum(p.startswith('train/T91/') for p in listed) == 10
    assert sum(p.startswith('train/BSDS200/') for p in listed) == 6
