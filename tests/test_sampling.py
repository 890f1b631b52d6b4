import numpy as np
import pytest
import scipy.sparse as sp

from diffmm.data.sampling import NegativeSampler
from diffmm.data.synthetic import make_synthetic


def test_sampler_never_returns_a_training_positive():
    data = make_synthetic(n_users=300, n_items=60, mean_activity=25, seed=3)  # dense rows: many collisions
    sampler = NegativeSampler(data.train)
    rng = np.random.default_rng(0)
    dense = data.train.toarray()
    for users, positives, negatives in sampler.epoch(128, rng):
        assert dense[users, positives].all()
        assert not dense[users, negatives].any()


def test_epoch_covers_every_training_pair_once():
    data = make_synthetic(n_users=200, n_items=100, seed=1)
    sampler = NegativeSampler(data.train)
    pairs = np.concatenate([np.stack([u, p], 1) for u, p, _ in sampler.epoch(64, np.random.default_rng(1))])
    assert len(pairs) == data.train.nnz
    assert len({tuple(p) for p in pairs}) == data.train.nnz


def test_a_user_with_every_item_is_left_out_and_only_all_such_users_are_an_error():
    train = sp.csr_matrix(np.array([[1, 1, 1], [1, 0, 0]], dtype=np.float32))
    with pytest.warns(UserWarning, match="every item"):
        sampler = NegativeSampler(train)
    assert list(sampler.users) == [1] and list(sampler.items) == [0]
    with pytest.raises(ValueError, match="every user interacted with every item"), pytest.warns(UserWarning):
        NegativeSampler(sp.csr_matrix(np.ones((2, 3), dtype=np.float32)))


def test_negatives_are_uniform_over_each_users_non_positives():
    """Each negative is uniform over the user's non-training items: observed counts per item against
    the exact expectation sum_(u, p) 1[i not in pos(u)] / (n_items - |pos(u)|), chi-square."""
    from scipy.stats import chisquare

    data = make_synthetic(n_users=100, n_items=30, mean_activity=8, seed=2)
    sampler = NegativeSampler(data.train)
    rng = np.random.default_rng(0)
    dense = data.train.toarray().astype(bool)
    observed = np.zeros(data.n_items)
    epochs = 40
    for _ in range(epochs):
        for users, _, negatives in sampler.epoch(256, rng):
            np.add.at(observed, negatives, 1)
    per_pair = (~dense) / (~dense).sum(1, keepdims=True)  # (users, items): a user's negative distribution
    expected = epochs * (dense.sum(1)[:, None] * per_pair).sum(0)
    assert observed.sum() == expected.sum() == epochs * data.train.nnz
    assert chisquare(observed, expected).pvalue > 1e-3
