"""Pre-training: the object generator's draws, and resuming a run after an interruption."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from fedpoint.shared.config import ModelConfig
from fedpoint.simulations.objects import ObjectSampler, SamplerConfig
from fedpoint.simulations.pretrain import PretrainConfig, checkpoint_path, pretrain

TINY = ModelConfig(arch="dynunet", channels=(4, 8, 16), strides=(2, 2), num_res_units=0, input_size=32)


def _volume(seed=0):
    """A small labelled 3D volume: two boxes of different brightness in noise."""
    rng = np.random.default_rng(seed)
    image = rng.normal(0, 0.1, (40, 44, 36)).astype(np.float32)
    labels = np.zeros(image.shape, np.int32)
    labels[5:20, 6:24, 4:30] = 1
    labels[24:36, 20:40, 10:20] = 2
    image[labels == 1] += 1.0
    image[labels == 2] += 0.5
    return SimpleNamespace(name=f"vol{seed}", source="test", modality="MR", image=image, labels=labels,
                           kind="anatomy", split="train")


def test_draws_are_deterministic_and_click_inside_the_object():
    images = [_volume()]
    a = ObjectSampler(images, SamplerConfig(size=32, synthetic=0.3), seed=3).batch(12)
    b = ObjectSampler(images, SamplerConfig(size=32, synthetic=0.3), seed=3).batch(12)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x.image, y.image)
        np.testing.assert_array_equal(x.mask, y.mask)
    for d in a:
        assert d.image.shape == (1, 32, 32) and d.mask.shape == (32, 32)
        assert d.mask[d.click], "the first click must lie inside the object"
        assert 0.0 <= d.image.min() and d.image.max() <= 1.0
    assert {d.regime for d in a} == {"context", "zoom"}
    assert "synthetic" in {d.source for d in a}


def test_hu_images_get_a_ct_window():
    vol = _volume()
    vol.image = (vol.image * 1000 - 500).astype(np.float32)  # HU-like
    vol.modality = "CT"
    draws = ObjectSampler([vol], SamplerConfig(size=32, synthetic=0.0), seed=0).batch(6)
    assert all(np.isfinite(d.image).all() and d.image.max() <= 1.0 for d in draws)


def _run(tmp_path, name, steps, on_step=None, resume=False):
    cfg = PretrainConfig(steps=steps, batch=2, max_clicks=4, val_objects=2, val_clicks=3, threads=1, checkpoint_steps=2,
                         synthetic=0.2, seed=7)
    images = [_volume(0), _volume(1)]
    return pretrain(cfg, tmp_path / name, TINY, on_step=on_step, resume=resume, images=images, dev_images=images[:1])


@pytest.mark.slow
def test_resume_after_interruption_gives_the_same_weights(tmp_path):
    from safetensors.torch import load_file

    _run(tmp_path, "straight", 4)

    def stop(step, loss):
        if step == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _run(tmp_path, "stopped", 4, on_step=stop)
    assert checkpoint_path(tmp_path / "stopped").exists()
    assert torch.load(checkpoint_path(tmp_path / "stopped"), weights_only=False)["step"] == 2
    card = _run(tmp_path, "stopped", 4, resume=True)
    a = load_file(str(tmp_path / "straight.safetensors"))
    b = load_file(str(tmp_path / "stopped.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)
    assert card["validation"]["dev_split_crops"]["objects"] == 2
    # and a run that did not resume differs (the test can fail)
    fresh = _run(tmp_path, "fresh", 2)
    assert fresh["training"]["steps"] == 2
