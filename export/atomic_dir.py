"""Write a folder all at once: fill a hidden temp folder, then swap it into place, so a reader (a Triton server
polling its model repository) sees the old folder or the new one, never half of one. Replacing a folder is one
atomic exchange on Linux (renameat2 RENAME_EXCHANGE); elsewhere it is two renames, with a moment between them
when the folder is absent."""
from __future__ import annotations

import ctypes
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Callable

from fer_edge.models.artifact_writer import current_umask, writer_alive

STALE_AFTER_S = 3600.0


def _staging_parent(final: Path) -> Path:
    """Beside the folder that holds `final` when that is on the same filesystem (rename stays atomic and the
    repository never shows a temp folder); else inside it, e.g. when the repository is a mount point."""
    holder = final.parent
    outside = holder.parent
    if holder != outside and outside.exists() and os.access(outside, os.W_OK) \
            and outside.stat().st_dev == holder.stat().st_dev:
        return outside
    return holder


def _remove_stale(parent: Path, prefix: str) -> None:
    """Temp folders of a writer that was killed: its PID is gone, or the folder is older than STALE_AFTER_S."""
    for tmp in parent.glob(f"{prefix}*.tmp"):
        pid = tmp.name[len(prefix):].split("-", 1)[0]
        try:
            alive = pid.isdigit() and writer_alive(int(pid))
            if tmp.is_dir() and (not alive or time.time() - tmp.stat().st_mtime > STALE_AFTER_S):
                shutil.rmtree(tmp, ignore_errors=True)
        except OSError:
            pass


def write_folder_atomically(final: Path, fill: Callable[[Path], None]) -> Path:
    """Call fill(temp_folder) to write every file, then put the folder at `final`, replacing an older one."""
    final = Path(os.path.abspath(final))        # "." has no name to build the temp folder's name from
    final.parent.mkdir(parents=True, exist_ok=True)
    parent = _staging_parent(final)
    prefix = f".{final.parent.name}.{final.name}."
    _remove_stale(parent, prefix)
    staging = Path(tempfile.mkdtemp(prefix=f"{prefix}{os.getpid()}-", suffix=".tmp", dir=parent))
    old = staging.with_name(staging.name[:-4] + ".old.tmp")
    try:
        os.chmod(staging, 0o777 & ~current_umask())     # mkdtemp makes 0700; a server in a container must read it
        fill(staging)
        if final.exists() and exchange(staging, final):
            pass                                # the old folder now sits at `staging`, removed below
        else:
            if final.exists():
                os.rename(final, old)
            try:
                os.rename(staging, final)
            except OSError:
                if old.exists():
                    os.rename(old, final)       # put the previous folder back
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)
    return final


# renameat2(2): AT_FDCWD resolves relative paths from the working directory; RENAME_EXCHANGE swaps the two paths.
AT_FDCWD, RENAME_EXCHANGE = -100, 2


def exchange(a: Path, b: Path) -> bool:
    """Swap two existing paths in one atomic step (Linux renameat2); False where the OS or filesystem cannot."""
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):   # not Linux/glibc >= 2.28
        return False
    return renameat2(AT_FDCWD, os.fsencode(str(a)), AT_FDCWD, os.fsencode(str(b)), RENAME_EXCHANGE) == 0


