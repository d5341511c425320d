"""Where the shared datasets and models live (FER-2013 npz files, YuNet): one rule for every command and test."""
from __future__ import annotations

import os
from pathlib import Path

SHARED_ENV = "FER_EDGE_SHARED"
# data/paths.py -> data/ -> the repository root; the shared folder sits next to the repository.
REPO_ROOT = Path(__file__).resolve().parents[1]


def shared_data_dir() -> Path:
    """$FER_EDGE_SHARED when set, else ../shared next to the repository.

    A non-editable install has no repository around it; then ../shared next to the working directory is used
    when it exists (a wheel run from inside a checkout). The folder may be absent: callers check the files.
    """
    configured = os.environ.get(SHARED_ENV)
    if configured:
        return Path(configured)
    beside_repo = REPO_ROOT.parent / "shared"
    beside_cwd = Path.cwd().parent / "shared"
    return beside_cwd if not beside_repo.is_dir() and beside_cwd.is_dir() else beside_repo


def fer2013_dir() -> Path:
    """The FER-2013 npz folder (fer2013_train_*.npz, fer2013_publictest.npz) inside the shared folder."""
    return shared_data_dir() / "data" / "fer2013"

