import pytest
import torch

import vimamba


def tiny_vim(**overrides):
    """A small Vim for CPU tests: 16x16 images, patch 4 -> 4x4 grid (17 tokens), 2 blocks."""
    cfg = dict(embed_dim=16, depth=2, d_state=4, img_size=16, patch_size=4, stride=4, num_classes=5,
               drop_path_rate=0.0)
    cfg.update(overrides)
    return vimamba.create_model("vim_tiny_patch16_224", **cfg)


@pytest.fixture
def seed():
    torch.manual_seed(0)
    return 0


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a whole test module: tiny models run fastest on one thread and do not fight other
    processes for the cores. A module asks for it with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
