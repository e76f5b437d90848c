import shutil

import pytest

from bonsai_export.synthetic import make_checkpoint


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory):
    """The tiny synthetic checkpoint in Bonsai's format (read-only: copy it before modifying)."""
    return make_checkpoint("tiny", tmp_path_factory.mktemp("ckpt") / "tiny", seed=0, progress=False)


@pytest.fixture
def tiny_copy(tiny_ckpt, tmp_path):
    """A private, modifiable copy of the tiny checkpoint."""
    dst = tmp_path / "copy"
    shutil.copytree(tiny_ckpt, dst)
    return dst
