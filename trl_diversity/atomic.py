"""Write files and folders that others read so that a killed process leaves the old version or the new one.

What is written gets the permissions a plain write would give under the umask (e.g. `rwxr-xr-x` folders and
`rw-r--r--` files under umask 022): the temporary names come from `tempfile`, which makes private (0700/0600) folders
and files, and safetensors writes its files 0600 too. A merged model or a converted default model is meant to be
shared like any other file.
"""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
from contextlib import contextmanager
from pathlib import Path


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write `text` to a temporary file beside `path`, then rename it over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, staging = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(handle, "w") as f:
            f.write(text)
        os.chmod(staging, 0o666 & ~_umask())  # mkstemp makes 0600 files; give the usual permissions
        os.replace(staging, path)
    except BaseException:
        Path(staging).unlink(missing_ok=True)
        raise
    return path


@contextmanager
def atomic_folder(target: str | os.PathLike):
    """Yield a staging folder beside `target`; on success it replaces `target` (an old one is swapped out first)."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        yield staging
        grant_umask_permissions(staging)
        if target.exists():
            # Two renames: the old folder stays whole until the new one is complete.
            retired = Path(tempfile.mkdtemp(prefix=f".{target.name}.old.", dir=target.parent))
            os.replace(target, retired / target.name)
            os.replace(staging, target)
            shutil.rmtree(retired, ignore_errors=True)
        else:
            os.replace(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def grant_umask_permissions(root: str | os.PathLike, *, newer_than: float | None = None, folders: bool = True) -> None:
    """Give `root` and everything under it the permissions a new file or folder gets under the umask: folders
    `0o777 & ~umask`, files `0o666 & ~umask` (`0o777` for a file its owner may execute). Symbolic links are left
    alone. `newer_than` (a time stamp): only the files modified since then, i.e. those a run wrote; `folders=False`:
    files only."""
    mask = _umask()
    root = Path(root)
    for path in [root, *root.rglob("*")]:
        if path.is_symlink() or (path.is_dir() and not folders):
            continue
        info = path.stat()
        if newer_than is not None and info.st_mtime < newer_than:
            continue
        executable = path.is_dir() or info.st_mode & stat.S_IXUSR
        mode = (0o777 if executable else 0o666) & ~mask
        if stat.S_IMODE(info.st_mode) != mode:
            os.chmod(path, mode)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
