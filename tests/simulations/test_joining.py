"""True joining in simulation: a late joiner is a node from the start, but the coordinator samples
it only from round join_round + 1, and then sends it the bank current at that round."""

from __future__ import annotations

from flwr.app import ConfigRecord, Message, RecordDict

from fedpoint.server.banks import BankStore
from fedpoint.server.server_app import base_adapter, open_banks, site_join_rounds
from fedpoint.server.policy import CoordinatorPolicy
from fedpoint.server.strategy import BankStrategy
from fedpoint.shared import protocol as P
from fedpoint.shared.run_config import parse_run_config

SITES = {11: ("ct-a", "CT"), 12: ("ct-b", "CT"), 13: ("ct-late", "CT"), 14: ("nuclei-late", "microscopy")}


class FakeGrid:
    """Four connected nodes that answer the identity query; records what was asked."""

    def __init__(self):
        self.queried: list[int] = []

    def get_node_ids(self):
        return list(SITES)

    def send_and_receive(self, messages, timeout=None):
        replies = []
        for msg in messages:
            node = msg.metadata.dst_node_id
            self.queried.append(node)
            site, modality = SITES[node]
            replies.append(Message(RecordDict({P.CONFIG: ConfigRecord({P.SITE_ID: site, P.MODALITY: modality})}),
                                   reply_to=msg))
        return replies


def strategy_for(base, tmp_path, join_rounds, **kw) -> BankStrategy:
    fed = parse_run_config({"base": str(base), "output-dir": str(tmp_path / "fed")})
    adapter = base_adapter(fed)
    store = BankStore(fed.bank_store_path)
    open_banks(store, adapter)
    policy = CoordinatorPolicy(settings=P.instruction_settings(fed), min_train_nodes=2, **kw)
    return BankStrategy(store, policy, fingerprint=adapter.base_fingerprint, schema=adapter.schema(),
                        join_rounds=join_rounds)


def sampled(strategy: BankStrategy, grid: FakeGrid, server_round: int) -> dict[str, str]:
    messages = strategy.configure_train(server_round, None, ConfigRecord(), grid)
    return {SITES[m.metadata.dst_node_id][0]: m.content[P.CONFIG]["bank"] for m in messages}


def test_a_joiner_is_not_sampled_before_its_round_and_is_sampled_after(tiny_base_2d, tmp_path, task_identity):
    strategy = strategy_for(tiny_base_2d, tmp_path, {"ct-late": 1, "nuclei-late": 2})
    grid = FakeGrid()
    assert set(sampled(strategy, grid, 1)) == {"ct-a", "ct-b"}
    assert sorted(grid.queried) == sorted(SITES)  # every node was asked who it is (nothing else)
    assert set(sampled(strategy, grid, 2)) == {"ct-a", "ct-b", "ct-late"}
    assert set(sampled(strategy, grid, 3)) == set(n for n, _ in SITES.values())
    assert sorted(grid.queried) == sorted(SITES), "identities are asked once"


def test_a_joiner_receives_the_bank_current_at_its_round(tiny_base_2d, tmp_path, task_identity):
    strategy = strategy_for(tiny_base_2d, tmp_path, {"ct-late": 1})
    grid = FakeGrid()
    sampled(strategy, grid, 1)
    state = strategy.store.latest("general").state  # round 1 aggregated: a new version
    version = strategy.store.write("general", {k: v + 0.01 for k, v in state.items()}, {"round": 1})
    messages = strategy.configure_train(2, None, ConfigRecord(), grid)
    late = [m for m in messages if SITES[m.metadata.dst_node_id][0] == "ct-late"]
    assert len(late) == 1
    config = late[0].content[P.CONFIG]
    assert (config[P.BANK], config[P.BANK_VERSION], config[P.SERVER_ROUND]) == ("general", version, 2)


def test_without_join_rounds_every_node_is_sampled(tiny_base_2d, tmp_path, task_identity):
    strategy = strategy_for(tiny_base_2d, tmp_path, None)
    assert set(sampled(strategy, FakeGrid(), 1)) == set(n for n, _ in SITES.values())


def test_the_server_app_reads_join_rounds_from_the_sites_config(tmp_path):
    sites = tmp_path / "sites.toml"
    sites.write_text('[[sites]]\nname = "a"\ndataset = "x"\n[[sites]]\nname = "late"\ndataset = "x"\njoin_round = 2\n')
    fed = parse_run_config({"sites-config": str(sites)})
    assert site_join_rounds(fed) == {"late": 2}
    registry = tmp_path / "registry.json"
    deployed = parse_run_config({"sites-config": str(sites), "site-registry": str(registry)})
    assert site_join_rounds(deployed) == {}  # a deployed site joins by starting its SuperNode
