"""All-rank metrics against hand-computed values."""

import math

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from diffmm.data import RecDataset
from diffmm.evaluate import evaluate, export_topk, topk_frame


def make(train, valid, test, n_items):
    shape = (len(train), n_items)

    def mat(rows):
        r = [u for u, items in enumerate(rows) for _ in items]
        c = [i for items in rows for i in items]
        return sp.csr_matrix((np.ones(len(r)), (r, c)), shape=shape)

    return RecDataset(mat(train), mat(valid), mat(test))


def fixed_scores(table):
    table = torch.as_tensor(table, dtype=torch.float32)
    return lambda users: table[users]


def test_perfect_and_worst_ranking():
    # user 0: train {0}, test {1, 2}; 6 items
    data = make([[0]], [[]], [[1, 2]], 6)
    perfect = evaluate(fixed_scores([[9, 8, 7, 1, 1, 1]]), data, "test", ks=(2, 5))
    assert perfect["recall@2"] == 1.0 and perfect["ndcg@2"] == pytest.approx(1.0)
    assert perfect["precision@2"] == 1.0 and perfect["precision@5"] == pytest.approx(2 / 5)
    worst = evaluate(fixed_scores([[9, 0, 0, 5, 4, 3]]), data, "test", ks=(2, 3, 5))
    assert worst["recall@2"] == 0.0 and worst["ndcg@3"] == 0.0 and worst["hit@3"] == 0.0
    # at K=5 the two test items are at ranks 4 and 5 (item 0 is masked)
    dcg = 1 / math.log2(5) + 1 / math.log2(6)
    idcg = 1 + 1 / math.log2(3)
    assert worst["recall@5"] == 1.0
    assert worst["ndcg@5"] == pytest.approx(dcg / idcg)


def test_fewer_test_items_than_k_uses_min_in_idcg():
    # one test item ranked 3rd (after items 6, 2): NDCG@10 = (1/log2 4) / 1, Recall@10 = 1, P@10 = 0.1
    data = make([[5]], [[]], [[3]], 8)
    r = evaluate(fixed_scores([[0, 0, 9, 5, 0, 0, 10, 0]]), data, "test", ks=(10,))
    assert r["recall@10"] == 1.0
    assert r["ndcg@10"] == pytest.approx(1 / math.log2(4))
    assert r["precision@10"] == pytest.approx(0.1)


def test_masked_training_and_validation_items_never_recommended():
    rng = np.random.default_rng(0)
    n_users, n_items = 30, 40
    train = [list(rng.choice(n_items, 5, replace=False)) for _ in range(n_users)]
    valid = [[i for i in rng.choice(n_items, 2, replace=False) if i not in t] for t in train]
    test = [[i for i in rng.choice(n_items, 3, replace=False) if i not in t and i not in v]
            for t, v in zip(train, valid)]
    data = make(train, valid, test, n_items)
    # scores that favour exactly the seen items
    seen = (data.train + data.valid).toarray()
    r = evaluate(fixed_scores(seen * 100 + rng.random((n_users, n_items))), data, "test", ks=(10,),
                 return_topk=True)
    users, items, _ = r.topk
    for u, top in zip(users, items):
        assert not set(top) & set(np.flatnonzero(seen[u]))
    # on validation, only train items are masked
    rv = evaluate(fixed_scores(data.train.toarray() * 100.0), data, "valid", ks=(10,), return_topk=True)
    for u, top in zip(*rv.topk[:2]):
        assert not set(top) & set(train[u])


def test_the_authors_test_mask_leaves_validation_items_as_candidates():
    # user 0: item 0 trained, item 1 held for validation and scored highest, item 2 the test item
    data = make([[0]], [[1]], [[2]], 4)
    scores = fixed_scores([[9, 8, 7, 1]])
    assert evaluate(scores, data, "test", ks=(1,))["recall@1"] == 1.0  # validation item masked: 2 comes first
    authors = evaluate(scores, data, "test", ks=(1, 2), mask_valid=False)  # it takes the first place
    assert authors["recall@1"] == 0.0 and authors["recall@2"] == 1.0


def test_users_without_test_items_are_skipped_and_counted_and_batches_agree():
    data = make([[0], [1], [2]], [[], [], []], [[1], [], [0]], 5)
    scores = fixed_scores([[0, 5, 1, 0, 0], [1, 0, 0, 0, 0], [2, 0, 0, 3, 0]])
    r = evaluate(scores, data, "test", ks=(1, 2))
    assert r.n_skipped == 1
    assert list(r.per_user["user"]) == [0, 2]
    assert r["recall@1"] == 0.5  # user 0 hit, user 2 miss at 1 (item 3 ranks first)
    small = evaluate(scores, data, "test", ks=(1, 2), batch_size=1)
    assert small.metrics == r.metrics


def test_per_user_table_and_topk_export(tmp_path):
    data = make([[0], [1, 2]], [[], []], [[1], [0]], 4)
    r = evaluate(fixed_scores([[0, 3, 2, 1], [4, 0, 0, 1]]), data, "test", ks=(2,), return_topk=True)
    assert set(r.per_user.columns) >= {"user", "n_train", "n_test", "recall@2", "ndcg@2", "precision@2", "hit@2"}
    assert list(r.per_user["n_train"]) == [1, 2]
    frame = topk_frame(r, item_names=["a", "b", "c", "d"])
    assert list(frame.columns) == ["user", "rank", "item", "score", "item_name"]
    assert frame[frame.user == 0].item.tolist() == [1, 2]
    path = export_topk(r, tmp_path / "top.csv")
    assert path.read_text().splitlines()[0] == "user,rank,item,score"


def test_matches_a_naive_per_user_implementation():
    from diffmm.data.synthetic import make_synthetic

    data = make_synthetic(n_users=120, n_items=80, seed=4)
    table = torch.randn(data.n_users, data.n_items)
    r = evaluate(fixed_scores(table), data, "test", ks=(5, 20), batch_size=7)
    seen = (data.train + data.valid).toarray() > 0
    test = data.test.toarray() > 0
    expected = {"recall@20": [], "ndcg@5": [], "precision@5": [], "hit@20": []}
    for u in range(data.n_users):
        truth = set(np.flatnonzero(test[u]))
        if not truth:
            continue
        scores = table[u].numpy().copy()
        scores[seen[u]] = -np.inf
        ranked = list(np.argsort(-scores, kind="stable"))
        top20, top5 = ranked[:20], ranked[:5]
        expected["recall@20"].append(len(truth & set(top20)) / len(truth))
        expected["hit@20"].append(float(bool(truth & set(top20))))
        expected["precision@5"].append(len(truth & set(top5)) / 5)
        dcg = sum(1 / math.log2(i + 2) for i, item in enumerate(top5) if item in truth)
        expected["ndcg@5"].append(dcg / sum(1 / math.log2(i + 2) for i in range(min(len(truth), 5))))
    for name, values in expected.items():
        assert r[name] == pytest.approx(np.mean(values)), name


@pytest.mark.parametrize("ks", [(0, 5), (-1,), (5, 5), ()])
def test_cut_offs_must_be_distinct_and_positive(ks):
    data = make([[0]], [[]], [[1]], 4)
    with pytest.raises(ValueError, match="ks must be distinct positive cut-offs"):
        evaluate(fixed_scores([[0, 1, 0, 0]]), data, "test", ks=ks)


def test_a_masked_item_picked_for_lack_of_others_is_no_hit():
    # user 0 has 2 unseen items (2, 3); at K = 4 the top-K must also take the masked items 0 and 1, and the
    # test item 1, also trained on, must not count as a hit
    with pytest.warns(UserWarning, match="both train and test"):
        data = make([[0, 1]], [[]], [[1, 2]], 4)
    result = evaluate(fixed_scores([[9, 8, 7, 6]]), data, "test", ks=(4,))
    assert result["recall@4"] == pytest.approx(0.5) and result["precision@4"] == pytest.approx(0.25)
