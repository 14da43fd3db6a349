"""Candidate base networks side by side: parameters, forward and `norm`-adapter step time.

    python bench/networks.py --size 96 --threads 2

What chose the packaged base's network: a click costs a forward (the prediction), a guarded mid
update costs a forward+backward and one more forward, so the per-click budget (100 ms p95 on a
2-core CPU for a 512 x 512 slice through the focus crop) bounds the forward at the working size.
Ratios are to today's packaged network, measured in the same run.
"""

from __future__ import annotations

import argparse
import time

import torch

from fedpoint.shared.adapters import make_adapter
from fedpoint.shared.config import ModelConfig
from fedpoint.shared.model import build_model
from fedpoint.simulations.pretrain_config import BASE_MODEL_FIELDS

CANDIDATES = {
    "packaged (DynUNet 8-256, 6 levels)": ModelConfig(**BASE_MODEL_FIELDS),
    "old base2d (UNet 16-128, strided stem)": ModelConfig(channels=(16, 32, 64, 128), strides=(2, 2, 2), num_res_units=1),
    "DynUNet 16-256, 5 levels": ModelConfig(arch="dynunet", channels=(16, 32, 64, 128, 256), strides=(2, 2, 2, 2), num_res_units=0),
    "DynUNet 12-192, 5 levels": ModelConfig(arch="dynunet", channels=(12, 24, 48, 96, 192), strides=(2, 2, 2, 2), num_res_units=0),
    "DynUNet 16-256, 6 levels": ModelConfig(arch="dynunet", channels=(16, 32, 64, 128, 256, 256), strides=(2, 2, 2, 2, 2), num_res_units=0),
}


def _time(fn, repeat: int) -> float:
    fn()
    t0 = time.perf_counter()
    for _ in range(repeat):
        fn()
    return (time.perf_counter() - t0) / repeat * 1e3


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=96)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeat", type=int, default=10)
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    rows = []
    for name, cfg in CANDIDATES.items():
        torch.manual_seed(0)
        net = build_model(cfg).eval()
        x = torch.randn(1, cfg.in_channels, a.size, a.size)
        adapter = make_adapter(net, "norm")
        opt = torch.optim.Adam(adapter.trainable_parameters(), 1e-3)

        def forward():
            with torch.no_grad():
                net(x)

        def step():
            opt.zero_grad()
            adapter.net(x).mean().backward()
            opt.step()

        rows.append((name, sum(q.numel() for q in net.parameters()), _time(forward, a.repeat), _time(step, a.repeat)))
    ref = rows[0]
    print(f"{'network':40s} {'params':>9s} {'fwd ms':>8s} {'norm step ms':>13s} {'click est ms':>13s} {'vs packaged':>11s}")
    for name, n, fwd, step in rows:
        click = 2 * fwd + step  # predict + guarded mid update (step + check forward)
        print(f"{name:40s} {n / 1e6:8.2f}M {fwd:8.1f} {step:13.1f} {click:13.1f} {click / (2 * ref[2] + ref[3]):10.2f}x")


if __name__ == "__main__":
    main()
