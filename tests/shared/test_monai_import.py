"""`load_monai` imports MONAI without transformers, and leaves transformers importable afterwards."""

import importlib.util
import subprocess
import sys

import pytest

PROBE = """
import sys
from fedpoint.shared.monai_import import load_monai
load_monai()
print("transformers loaded by monai:", "transformers" in sys.modules)
from monai.networks.nets import DynUNet
from monai.losses import DiceFocalLoss
net = DynUNet(2, 1, 1, kernel_size=[3, 3, 3], strides=[1, 2, 2], upsample_kernel_size=[2, 2])
import transformers
print("transformers after:", transformers.__name__)
"""


@pytest.mark.skipif(importlib.util.find_spec("transformers") is None, reason="transformers is not installed")
def test_monai_loads_without_transformers_and_transformers_still_imports():
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "transformers loaded by monai: False" in out.stdout
    assert "transformers after: transformers" in out.stdout


def test_second_call_returns_the_loaded_module():
    from fedpoint.shared.monai_import import load_monai

    assert load_monai() is load_monai() is sys.modules["monai"]
