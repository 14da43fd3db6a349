"""The central-DP variant's accountant: epsilon from dp-accounting's RDP accountant, one Gaussian
event per noised round, and the budget that stops a federation before it is passed."""

from __future__ import annotations

import math

import pytest

from fedpoint.server.privacy_accountant import (ORDERS, BudgetExceeded, PrivacyAccountant, epsilon_of,
                                                round_noise_multiplier)


def independent_epsilon(events, delta):
    """dp-accounting used directly, one compose per round, as its documentation shows."""
    import dp_accounting
    from dp_accounting.rdp import rdp_privacy_accountant

    accountant = rdp_privacy_accountant.RdpAccountant(list(ORDERS))
    for q, z in events:
        accountant.compose(dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(z)))
    return accountant.get_epsilon(delta)


def test_epsilon_grows_with_rounds_and_with_less_noise():
    by_rounds = [epsilon_of([(1.0, 1.0)] * n, 1e-5) for n in (1, 2, 5, 10)]
    assert by_rounds == sorted(by_rounds) and by_rounds[0] < by_rounds[-1]
    by_noise = [epsilon_of([(1.0, z)] * 5, 1e-5) for z in (4.0, 2.0, 1.0, 0.5)]
    assert by_noise == sorted(by_noise) and by_noise[0] < by_noise[-1]
    sampled = epsilon_of([(0.5, 1.0)] * 5, 1e-5)
    assert sampled < by_rounds[2]  # sampling half the sites each round protects more


def test_epsilon_matches_dp_accounting_computed_independently():
    events = [(1.0, 1.2), (2 / 3, 1.2), (2 / 3, 0.9), (1.0, 1.2)]
    accountant = PrivacyAccountant(1e-5)
    for q, z in events:
        accountant.record(q, z)
    assert accountant.epsilon() == pytest.approx(independent_epsilon(events, 1e-5), rel=1e-9)
    resumed = PrivacyAccountant.from_rounds(1e-5, 0.0, [{"dp": {"sampling_rate": q, "effective_noise_multiplier": z}}
                                                        for q, z in events] + [{"dp": None}, {}])
    assert resumed.epsilon() == pytest.approx(accountant.epsilon(), rel=1e-12)  # a restart counts the same rounds


def test_the_budget_refuses_the_round_that_would_pass_it():
    two = epsilon_of([(1.0, 2.0)] * 2, 1e-5)
    accountant = PrivacyAccountant(1e-5, budget=two * 1.001)
    accountant.check_next(1.0, 2.0, 1)
    accountant.record(1.0, 2.0)
    accountant.check_next(1.0, 2.0, 2)
    accountant.record(1.0, 2.0)
    with pytest.raises(BudgetExceeded, match="round 3 would bring epsilon to .* over the budget"):
        accountant.check_next(1.0, 2.0, 3)
    PrivacyAccountant(1e-5).check_next(1.0, 0.1, 99)  # no budget: never stops


def test_unequal_weights_and_two_banks_lower_the_effective_noise():
    stdv, clip = 0.5 * 1.0 / 2, 1.0  # z = 0.5 over two sampled sites
    equal = round_noise_multiplier(stdv, clip, {"a": [0.5], "b": [0.5]})
    assert equal == pytest.approx(0.5)  # one bank, equal weights: the configured multiplier
    assert round_noise_multiplier(stdv, clip, {"a": [0.8], "b": [0.2]}) == pytest.approx(stdv / 0.8)
    two_banks = round_noise_multiplier(stdv, clip, {"a": [0.5, 1.0], "b": [0.5, 1.0]})
    assert two_banks == pytest.approx(1 / math.sqrt((0.5 / stdv) ** 2 + (1.0 / stdv) ** 2))


def test_bad_delta_or_budget_is_refused():
    with pytest.raises(ValueError, match="dp-delta"):
        PrivacyAccountant(0.0)
    with pytest.raises(ValueError, match="dp-epsilon-budget"):
        PrivacyAccountant(1e-5, budget=-1)


def test_the_strategy_accounts_each_noised_round_and_stops_before_passing_the_budget(tiny_base_2d, tmp_path,
                                                                                 task_identity):
    """Flower's DP wrapper around the bank strategy, with real Messages: each noised round adds one
    event; epsilon lands in the manifest and federation.json; the round that would pass the budget
    is refused before anything is written."""
    from test_strategy import delta_like, make_coordinator, received, reply, send

    from fedpoint.server.ledger import read_rounds
    from fedpoint.server.strategy import NoisedBankStrategy, PrivateBankStrategy

    c = make_coordinator(tiny_base_2d, tmp_path / "fed", variant=NoisedBankStrategy)
    z, clip = 1.0, 0.1  # stdv = z * clip / 2 sites = 0.05
    # Two MR sites of equal weight: each is half of the general bank's and half of modality-mr's
    # update, so each release has multiplier 0.05 / (0.1 * 0.5) = 1, and the two compose to 1/sqrt(2).
    z_round = 1 / math.sqrt(2)
    budget = epsilon_of([(1.0, z_round)] * 2, 1e-5) * 1.001
    private = PrivateBankStrategy(c.strategy, z, clip, 2, PrivacyAccountant(1e-5, budget))
    for server_round in (1, 2):
        msgs = send(c.strategy, {1: "MR", 2: "MR"}, server_round)
        bank = received(msgs[1])
        private.aggregate_train(server_round, [reply(msgs[n], delta_like(bank, n + 10 * server_round)) for n in (1, 2)])
    dp = c.store.latest("general").manifest["dp"]
    assert dp["effective_noise_multiplier"] == pytest.approx(z_round) and dp["sampling_rate"] == 1.0
    assert dp["epsilon"] == pytest.approx(independent_epsilon([(1.0, z_round)] * 2, 1e-5), rel=1e-9)
    history = [r["dp"]["epsilon"] for r in read_rounds(tmp_path / "fed")]
    assert len(history) == 2 and history[0] < history[1] == pytest.approx(dp["epsilon"])

    before = {bank: c.store.versions(bank) for bank in c.store.banks()}
    msgs = send(c.strategy, {1: "MR", 2: "MR"}, 3)
    bank = received(msgs[1])
    with pytest.raises(BudgetExceeded, match="round 3 would bring epsilon"):
        private.aggregate_train(3, [reply(msgs[n], delta_like(bank, n + 30)) for n in (1, 2)])
    assert {bank: c.store.versions(bank) for bank in c.store.banks()} == before  # nothing written
    assert [j["round"] for j in c.store.journal()] == [1, 2]
