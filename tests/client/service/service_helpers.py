"""Helpers for the service tests: a site folder, the real service on a socket, payload decoding."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import httpx
import numpy as np

TOKEN = "test-token-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def write_images(folder: Path, blob) -> dict[str, np.ndarray]:
    """Three 2D blob images (.npy) and one 3D volume (.nii.gz); returns their ground-truth masks."""
    import nibabel as nib

    folder.mkdir(parents=True, exist_ok=True)
    masks = {}
    for i in range(3):
        image, mask = blob((48, 48), seed=i)
        np.save(folder / f"img{i}.npy", image[0])
        masks[f"img{i}"] = mask
    volume, mask = blob((40, 40, 8), seed=7)
    nib.save(nib.Nifti1Image(volume[0] * 1000.0, np.diag([0.8, 0.8, 2.5, 1.0])), str(folder / "vol.nii.gz"))
    masks["vol"] = mask
    return masks


def desk_config(tmp_path: Path, structures=("object",), **overrides):
    """A site config for a desk without a model: one structure (`label`) or several (`labels`)."""
    from fedpoint.client.service import make_service_config

    many = {"labels": list(structures)} if len(structures) > 1 else {"label": structures[0]}
    return make_service_config({"site": "t", "store": str(tmp_path / "store"), "images": str(tmp_path / "images"),
                                "token": TOKEN, **many, **overrides})


def engine_without_model(store, dims: int = 2):
    """What the desk reads of an engine, without a model: the root store and each task's slot (its store)."""
    from types import SimpleNamespace

    from fedpoint.shared.tasks import normalise_task

    slots = {}

    def slot(task):
        name = normalise_task(task)
        return slots.setdefault(name, SimpleNamespace(task=name, store=store.for_task(name)))

    return SimpleNamespace(root_store=store, slot=slot, model=SimpleNamespace(model_cfg=SimpleNamespace(spatial_dims=dims)))


class LiveServer:
    """The real service (uvicorn) on 127.0.0.1 at a port the OS picks, in a thread of this process."""

    def __init__(self, config):
        import uvicorn

        from fedpoint.client.service import create_app

        self.app = create_app(config)
        self.state = self.app.state.service
        self.tls = config.tls_cert
        tls = {"ssl_certfile": str(config.tls_cert), "ssl_keyfile": str(config.tls_key)} if self.tls else {}
        self.server = uvicorn.Server(uvicorn.Config(self.app, host="127.0.0.1", port=0, log_level="warning",
                                                   lifespan="on", ws="none", **tls))
        self.thread = threading.Thread(target=self.server.run, name="test-uvicorn", daemon=True)

    def __enter__(self) -> "LiveServer":
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the service did not start within 30 s")
            time.sleep(0.02)
        port = self.server.servers[0].sockets[0].getsockname()[1]
        self.url = f"{'https' if self.tls else 'http'}://127.0.0.1:{port}"
        verify = _trusting(self.tls) if self.tls else True
        self.client = httpx.Client(base_url=self.url, headers=AUTH, timeout=120, verify=verify)
        self.anonymous = httpx.Client(base_url=self.url, timeout=60, verify=verify)
        return self

    def __exit__(self, *exc) -> None:
        self.client.close()
        self.anonymous.close()
        self.server.should_exit = True
        self.thread.join(timeout=150)


def _trusting(cert):
    """An SSL context that trusts exactly this (self-signed) certificate."""
    import ssl

    return ssl.create_default_context(cafile=str(cert))


def self_signed(folder: Path, name: str = "site") -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and its key (PEM files), made with `cryptography`."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = folder / f"{name}.crt", folder / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


def unpack(payload: dict) -> np.ndarray:
    """The page's mask encoding back to a (x, y) bool array."""
    import base64

    bits = np.unpackbits(np.frombuffer(base64.b64decode(payload["bits"]), dtype=np.uint8))
    rows = bits[: payload["width"] * payload["height"]].reshape(payload["height"], payload["width"])
    return rows.T.astype(bool)


def multipart_parts(response: httpx.Response) -> dict[str, tuple[str | None, bytes]]:
    """name -> (filename, bytes) of a multipart/form-data response, parsed by the standard library."""
    from email.parser import BytesParser
    from email.policy import HTTP

    raw = f"Content-Type: {response.headers['content-type']}\r\n\r\n".encode() + response.content
    message = BytesParser(policy=HTTP).parsebytes(raw)
    parts = {}
    for part in message.iter_parts():
        parts[part.get_param("name", header="content-disposition")] = (part.get_filename(), part.get_payload(decode=True))
    return parts


def train_blob_base(path: Path, blob, steps: int = 80, box: bool = False) -> Path:
    """Train a small UNet on one-click blob segmentation (random click inside; with `box`, every
    other step a tight box instead) and save it as a base."""
    import torch

    from fedpoint.shared.clicker import Clicker
    from fedpoint.shared.config import BOX_INPUTS, CLICK_INPUTS, ModelConfig
    from fedpoint.shared.inputs import build_inputs
    from fedpoint.shared.losses import dice_ce
    from fedpoint.shared.model import build_model, save_base
    from fedpoint.shared.simulated_user import tight_box

    torch.manual_seed(0)
    cfg = ModelConfig(channels=(8, 16, 32), strides=(2, 2), num_res_units=1, inputs=BOX_INPUTS if box else CLICK_INPUTS)
    net = build_model(cfg)
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-2)
    rng = np.random.default_rng(0)
    for step in range(steps):
        image, mask = blob((48, 48), seed=int(rng.integers(1_000_000)), contrast=float(rng.uniform(0.5, 1.5)))
        with_box = box and step % 2 == 1
        clicks = [] if with_box else [Clicker(mask, mode="random", seed=step).next_click(None)]
        x = build_inputs(torch.from_numpy(image)[None], [clicks], None, cfg, [tight_box(mask) if with_box else None])
        loss = dice_ce(net(x), torch.from_numpy(mask[None, None]).float())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return save_base(net.eval(), cfg, path, {"provenance": {"note": f"tiny UNet, {steps} steps on synthetic blobs, for tests"}})
