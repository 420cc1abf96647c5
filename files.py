"""Files written whole or not at all, and the checks on paths every script makes before any work.

`replacing` is the one owner of atomic writes: checkpoints, images, tables, settings and downloads all
go through a temporary file that is renamed into place, so a killed run or a full disk never leaves a
half-written file and the previous one stays intact.
"""
import errno
import os
from contextlib import contextmanager
from pathlib import Path

NO_SPACE = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)  # a full disk, a full quota, the file-size limit


class DiskFull(OSError):
    """A write that found no room: the disk is full, or a quota or the file-size limit is reached."""


def disk_full(path: str | Path, error: OSError, note: str = '') -> DiskFull:
    """The error to raise for `error` (one of NO_SPACE) while writing `path`: it names the file."""
    full = DiskFull(f"could not write {path}: the disk is full or a size limit is reached "
                    f"({error.strerror or error}){note}")
    full.errno = error.errno
    return full


@contextmanager
def replacing(path: str | Path):
    """Yields a temporary path beside `path` (same suffix, so writers that go by it still work) that
    replaces `path` in one rename when the block ends without an error, and is removed otherwise: a
    reader never sees a half-written file, and a failed write leaves the old file as it was. A full
    disk (an OSError of NO_SPACE, also one that a writer such as torch.save wraps in a RuntimeError)
    becomes a DiskFull error that names `path`."""
    path = Path(path)
    tmp = path.with_name(f'.{path.stem}.{os.getpid()}.tmp{path.suffix}')
    try:
        yield tmp
        os.replace(tmp, path)
    except (OSError, RuntimeError) as e:
        cause = e if isinstance(e, OSError) else e.__context__
        if isinstance(cause, OSError) and cause.errno in NO_SPACE and not isinstance(cause, DiskFull):
            raise disk_full(path, cause, f"; nothing was written, {path.name} is left as it was") from None
        raise
    finally:
        tmp.unlink(missing_ok=True)



def check_writable(folder: str | Path, what: str) -> None:
    """Refuse, before any work, a folder that cannot be made or written to: one of its parents is a
    file, or the nearest existing one is not writable."""
    folder = Path(folder)
    for parent in [folder, *folder.parents]:
        if parent.exists():
            if not parent.is_dir():
                raise ValueError(f"{what} {folder}: {parent} is a file, not a folder")
            if not os.access(parent, os.W_OK):
                raise ValueError(f"{what} {folder}: no permission to write into {parent}")
            return


def found(path: str | Path, test=Path.exists) -> bool:
    """test(Path(path)) (exists, is_dir or is_file); False for a name the system cannot look up (too long,
    a NUL character), which then counts as missing."""
    try:
        return test(Path(path))
    except (OSError, ValueError):
        return False
