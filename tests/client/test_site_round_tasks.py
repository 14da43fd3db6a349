"""A site that labels two structures (a liver and its lesions) in the federation, with the real
tiny base, real files and real Flower Messages: it declares both tasks, trains and answers for the
task each instruction names in that task's store, refuses a task it does not declare, and runs a
whole federation through the real ServerApp and ClientApp in-process, one task a round in turn."""

from __future__ import annotations

import json

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, RecordDict

from fedpoint.client.client_app import build_client_app
from fedpoint.client.site_round import identify, load_site_base
from fedpoint.client.site_store import SiteStore
from fedpoint.shared import protocol as P
from fedpoint.shared.adapters import make_adapter
from fedpoint.shared.payload import to_numpy
from fedpoint.shared.run_config import parse_run_config


def write_organ_dataset(blob, folder, seed: int, count: int = 4):
    """`count` 40x40 CT-like cases, each with a liver (label 1, the blob) and a lesion (label 2, a bright square)."""
    import nibabel as nib

    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        image, liver = blob((40, 40), seed=seed + i)
        labels = liver.astype(np.uint8)
        labels[2:9, 2:9] = 2
        image = image[0].copy()
        image[2:9, 2:9] += 0.6
        nib.save(nib.Nifti1Image(image, np.eye(4)), str(folder / f"case{i:02d}.nii.gz"))
        nib.save(nib.Nifti1Image(labels, np.eye(4)), str(folder / f"case{i:02d}_label.nii.gz"))
    (folder / "fedpoint.json").write_text(json.dumps({"modality": "CT", "labels": {"1": "liver", "2": "lesion"}}))
    return folder


@pytest.fixture
def organ_config(blob, tmp_path, fast_run_config):
    """Run config of two CT sites: "organ" labels the liver and its lesions, "liver-b" the liver only."""
    data = tmp_path / "organ-data"
    organ = write_organ_dataset(blob, data / "organ", seed=0)
    other = write_organ_dataset(blob, data / "other", seed=20)
    sites = data / "sites.toml"
    sites.write_text(f'[[sites]]\nname = "organ"\ndataset = "{organ}"\norder = "sorted"\ntasks = ["Liver", "lesion"]\n\n'
                     f'[[sites]]\nname = "liver-b"\ndataset = "{other}"\norder = "sorted"\ntask = "liver"\n')
    return {**fast_run_config, "sites-config": str(sites)}


def context(node_config: dict) -> Context:
    return Context(run_id=1, node_id=11, node_config=node_config, state=RecordDict(), run_config={})


def instruction_message(fed, task: str | None, server_round: int = 1, message_type: str = "train") -> Message:
    base, _, fingerprint = load_site_base(fed.base)
    bank = to_numpy(make_adapter(base, fed.adapter_config(), fingerprint).state())
    instruction = P.RoundInstruction(server_round=server_round, bank="general", bank_version=1,
                                     base_fingerprint=fingerprint, task=task, **P.instruction_settings(fed))
    content = RecordDict({P.ARRAYS: ArrayRecord(array_dict={k: Array(v) for k, v in bank.items()}),
                          P.CONFIG: ConfigRecord(instruction.to_config())})
    return Message(content, dst_node_id=11, message_type=message_type)


def test_a_node_config_declares_several_tasks(fast_run_config, tmp_path):
    fed = parse_run_config(fast_run_config)
    node = {P.NODE_SITE_ID: "h1", P.NODE_MODALITY: "CT", P.NODE_SITE_STORE: str(tmp_path / "store")}
    site = identify(node | {P.NODE_TASKS: "Liver, lesion core"}, fed)
    assert site.declared == ("liver", "lesion-core") and site.task == "liver"
    assert site.answer() == {P.SITE_ID: "h1", P.MODALITY: "CT", P.TASK: "liver", P.TASKS: ["liver", "lesion-core"]}
    primary = identify(node | {P.NODE_TASKS: "liver,default", P.NODE_TASK: "default"}, fed)
    assert primary.declared == (None, "liver")
    assert primary.answer() == {P.SITE_ID: "h1", P.MODALITY: "CT", P.TASKS: ["default", "liver"]}
    old = identify(node | {P.NODE_TASK: "Liver"}, fed)  # one task, as before: the same answer as before
    assert old.declared == ("liver",) and old.answer() == {P.SITE_ID: "h1", P.MODALITY: "CT", P.TASK: "liver"}
    assert old.on_task(None) == old and site.on_task("Lesion core").task == "lesion-core"
    with pytest.raises(ValueError, match="does not declare"):
        site.on_task("kidney")
    with pytest.raises(ValueError, match="invalid task"):
        identify(node | {P.NODE_TASKS: "liver,../x"}, fed)


def test_declared_tasks_are_normalised_bounded_and_checked_in_a_sites_config(tmp_path):
    from fedpoint.data import load_site_specs
    from fedpoint.data.types import DataError
    from fedpoint.shared.tasks import MAX_TASKS, normalise_tasks

    assert normalise_tasks("liver, Lesion core,") == ["liver", "lesion-core"]
    assert normalise_tasks(["liver", "Liver", "default"]) == ["liver", "default"]
    for bad, why in (([f"t{i}" for i in range(MAX_TASKS + 1)], "at most"), ([], "no task"), ("", "no task"),
                     (["liver", "../x"], "invalid task")):
        with pytest.raises(ValueError, match=why):
            normalise_tasks(bad)
    sites = tmp_path / "sites.toml"
    sites.write_text('[[sites]]\nname = "a"\ndataset = "x"\ntasks = ["liver", "../x"]\n')
    with pytest.raises(DataError, match=r"sites\[0\]\.tasks"):
        load_site_specs(sites)


def test_a_two_task_site_trains_the_task_each_instruction_names(organ_config, task_identity):
    fed = parse_run_config(organ_config)
    app = build_client_app(organ_config)
    node = context({P.PARTITION_ID: 0, P.NUM_PARTITIONS: 2})
    who = app(Message(RecordDict({P.CONFIG: ConfigRecord({})}), dst_node_id=11, message_type="query"), node)
    assert dict(who.content[P.CONFIG]) == {P.SITE_ID: "organ", P.MODALITY: "CT", P.TASK: "liver",
                                           P.TASKS: ["liver", "lesion"]}
    root = SiteStore(fed.simulated_site_store("organ"))
    liver, lesion = root.for_task("liver"), root.for_task("lesion")

    def train(task, server_round):
        out = app(instruction_message(fed, task, server_round), node)
        assert not out.has_error(), out.error
        records = json.loads((fed.output_path / "records" / "organ" / f"round-{server_round:04d}.json").read_text())
        return out, records["records"]

    out, records = train("liver", 1)
    assert out.content[P.CONFIG][P.TASK] == "liver"
    # each record's index is the image's place in the site's whole stream (liver, lesion, liver, ...):
    # the local arms annotate that stream, so each federated image pairs with theirs
    assert [(r["object"], r["task"], r["index"]) for r in records] == [("liver", "liver", 0), ("liver", "liver", 2)]
    assert len(liver.case_ids()) == 2 and not lesion.case_ids() and not root.case_ids()
    liver_versions = sorted(p.name for p in (liver.root / "adapters").iterdir())

    out, records = train("lesion", 2)
    assert out.content[P.CONFIG][P.TASK] == "lesion"
    assert [(r["object"], r["task"], r["index"]) for r in records] == [("lesion", "lesion", 1), ("lesion", "lesion", 3)]
    assert len(lesion.case_ids()) == 2 and len(liver.case_ids()) == 2  # the liver's store untouched
    assert sorted(p.name for p in (liver.root / "adapters").iterdir()) == liver_versions
    assert lesion.latest_bank() == lesion.root / "banks" / "general" / "v0001"

    _, records = train(None, 3)  # no task named: the primary one, where its stream stopped
    assert [(r["object"], r["index"]) for r in records] == [("liver", 4), ("liver", 6)]

    refused = app(instruction_message(fed, "kidney", 4), node)
    assert refused.has_error() and refused.error.code == P.SITE_ERRORS["instruction-refused"]
    assert not (root.root / "tasks" / "kidney").exists()


class ClientAppGrid:
    """Flower's Grid for the real ServerApp, in-process: each message goes to the real ClientApp of
    its node (node n is partition n - 1), and its answer comes back."""

    def __init__(self, client_app, num_sites: int):
        self.app, self.nodes = client_app, list(range(1, num_sites + 1))

    def get_node_ids(self):
        return list(self.nodes)

    def send_and_receive(self, messages, *, timeout=None):
        out = []
        for msg in messages:
            node = msg.metadata.dst_node_id
            config = {P.PARTITION_ID: node - 1, P.NUM_PARTITIONS: len(self.nodes)}
            out.append(self.app(msg, Context(run_id=1, node_id=node, node_config=config, state=RecordDict(), run_config={})))
        return out


def test_a_federation_with_a_two_task_site_takes_its_tasks_in_turn(organ_config, task_identity):
    """The real ServerApp and ClientApp in one process: "organ" works on the liver, the lesion and
    the liver again; the lesion bank is made by its reply alone and no liver round touches it."""
    from fedpoint.server.banks import BankStore
    from fedpoint.server.server_app import build_server_app

    config = {**organ_config, "num-server-rounds": 3}
    build_server_app(config)(ClientAppGrid(build_client_app(config), 2),
                             Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config={}))
    fed = parse_run_config(config)
    rounds = json.loads((fed.output_path / "federation.json").read_text())["rounds"]
    organ = [r["sites"]["organ"] for r in rounds]
    assert [(s["task"], s["status"]) for s in organ] == [("liver", "accepted"), ("lesion", "accepted"), ("liver", "accepted")]
    assert [s["bank"] for s in organ] == ["general", "modality-ct", "task-liver"]
    assert organ[1]["route"].startswith("task 'lesion' in turn (2 of 2: liver, lesion): modality bank of 'CT'")
    assert [r["sites"]["liver-b"]["task"] for r in rounds] == ["liver"] * 3
    assert [r["versions"].get("task-lesion") for r in rounds] == [None, 1, None]  # only the organ's lesion round
    assert [r["versions"].get("task-liver") for r in rounds] == [1, 2, 3]
    store = BankStore(fed.bank_store_path)
    assert len(store.latest("task-lesion").manifest["sites"]) == 1
    # each round's evaluation: the organ scored the new version of the bank of the task it trained
    assert [r["evaluation"]["sites"]["organ"]["bank"] for r in rounds] == ["task-liver", "task-lesion", "task-liver"]
    site = SiteStore(fed.simulated_site_store("organ"))
    assert len(site.for_task("liver").case_ids()) == 4 and len(site.for_task("lesion").case_ids()) == 2


@pytest.mark.slow
@pytest.mark.flower
@pytest.mark.timeout(900)
def test_a_two_task_site_on_flowers_simulation_engine(organ_config):
    """The same federation on Flower's simulation engine (Ray): the identity's list of tasks and the
    instruction's task cross Flower's serialisation, and the turn holds over rounds."""
    from fedpoint.simulations.flower_sim import run_federation

    summary = run_federation({**organ_config, "num-server-rounds": 2}, num_sites=2, timeout=840)
    assert [s["organ"] for s in summary["status"]] == ["accepted", "accepted"]
    rounds = json.loads((parse_run_config(organ_config).output_path / "federation.json").read_text())["rounds"]
    assert [(r["sites"]["organ"]["task"], r["sites"]["organ"]["tasks"]) for r in rounds] == [
        ("liver", ["liver", "lesion"]), ("lesion", ["liver", "lesion"])]
    assert summary["banks"]["task-lesion"] == [1] and summary["banks"]["task-liver"] == [1, 2]
