"""ABMIL slide classifier: known-answer signal, chance on random labels, determinism, saved data and its checks."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

torch = pytest.importorskip("torch")

from napari_lnm import mil  # noqa: E402
from napari_lnm.errors import CohortError, ModelError, UserError  # noqa: E402
from napari_lnm.model import roc_auc  # noqa: E402
from napari_lnm.progress import Cancelled  # noqa: E402

SMALL = mil.MILParams(hidden=16, attention=8, lr=5e-3, epochs=15, max_tiles=24)
COLUMNS = [f"deep.{j:03d}" for j in range(8)]


def make_bags(n: int, seed: int, shift: float = 2.0) -> tuple[list[np.ndarray], np.ndarray, list[np.ndarray]]:
    """Bags of 15-40 tiles x 8 columns; metastatic slides hold ~10 % positive tiles shifted in 2 columns."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 2
    bags, positive = [], []
    for label in y:
        t = int(rng.integers(15, 41))
        b = rng.normal(size=(t, len(COLUMNS)))
        m = np.zeros(t, dtype=bool)
        if label:
            m[rng.choice(t, max(2, t // 10), replace=False)] = True
            b[m, :2] += shift
        bags.append(b.astype(np.float32))
        positive.append(m)
    return bags, y, positive


@pytest.fixture(scope="module")
def signal():
    bags, y, _ = make_bags(48, seed=0)
    return mil.fit_mil(bags, y, COLUMNS, SMALL, seed=0), bags, y


def test_known_signal_is_found_and_attended(signal):
    model, _, _ = signal
    bags, y, positive = make_bags(40, seed=1)
    assert roc_auc(y, model.predict_proba(bags)) > 0.9
    ratios = []
    for bag, m in zip(bags, positive):
        a = model.attention(bag)
        assert a.shape == (len(bag),) and np.all(a > 0) and a.sum() == pytest.approx(1.0)
        if m.any():
            ratios.append(a[m].mean() / a[~m].mean())
    assert np.median(ratios) > 2.0 and np.mean(np.array(ratios) > 1.0) > 0.8


def test_random_labels_stay_near_chance():
    aucs = []
    for seed in range(3):
        bags, _, _ = make_bags(36, seed=10 + seed)
        y = np.random.default_rng(seed).permutation(np.arange(36) % 2)
        p = mil.MILParams(hidden=16, attention=8, epochs=8)
        scores, oof = mil.inner_cv_scores(bags, y, grid=(p,), folds=3, seed=seed)
        assert set(scores) == {p.name()} and oof[p.name()].shape == (36,)
        assert np.all((oof[p.name()] > 0) & (oof[p.name()] < 1))
        aucs.append(scores[p.name()])
    assert abs(np.mean(aucs) - 0.5) < 0.2


def test_fit_is_deterministic_and_restores_torch_settings(signal):
    model, bags, y = signal
    threads = torch.get_num_threads()
    again = mil.fit_mil(bags, y, COLUMNS, SMALL, seed=0)
    assert torch.get_num_threads() == threads and not torch.are_deterministic_algorithms_enabled()
    for k, v in model.arrays().items():
        assert np.array_equal(v, again.arrays()[k]), k
    assert np.array_equal(model.predict_logit(bags), again.predict_logit(bags))
    other = mil.fit_mil(bags, y, COLUMNS, SMALL, seed=1)
    assert not np.array_equal(model.net["embed_w"], other.net["embed_w"])


def test_numpy_prediction_equals_the_torch_forward_pass(signal):
    model, bags, _ = signal
    w = {k: torch.from_numpy(v) for k, v in model.net.items()}
    for bag in bags[:5]:
        z = torch.from_numpy(np.nan_to_num((bag.astype(np.float64) - model.mean) / model.scale))
        h = torch.relu(z @ w["embed_w"] + w["embed_b"])
        v, u = (h @ w["gate_w"] + w["gate_b"]).split(model.params.attention, dim=1)
        a = torch.softmax((torch.tanh(v) * torch.sigmoid(u)) @ w["attn_w"], dim=0)
        logit = float((a @ h) @ w["head_w"] + w["head_b"])
        assert model.predict_logit([bag])[0] == pytest.approx(logit, abs=1e-6)
        assert np.allclose(model.attention(bag), a.numpy(), atol=1e-9)


def test_save_load_round_trip(signal, tmp_path):
    model, bags, _ = signal
    meta = json.loads(json.dumps(model.save(tmp_path)))
    assert meta["kind"] == "abmil" and meta["file"] == "mil.npz" and meta["columns"] == COLUMNS
    assert meta["arrays"]["embed_w"] == [8, 16]
    back = mil.MILModel.load(tmp_path, meta)
    assert back.params == model.params and back.columns == COLUMNS
    assert np.array_equal(back.predict_proba(bags), model.predict_proba(bags))
    assert np.array_equal(back.attention(bags[1]), model.attention(bags[1]))


def _damage(path, how: str) -> None:
    with np.load(path, allow_pickle=False) as f:
        a = {k: f[k] for k in f.files}
    if how == "missing":
        del a["gate_w"]
    elif how == "shape":
        a["gate_w"] = a["gate_w"][:, :-1]
    elif how == "nan":
        a["head_w"][0] = np.nan
    elif how == "int":
        a["scale"] = np.ones(8, dtype=np.int64)
    elif how == "zero scale":
        a["scale"][3] = 0.0
    np.savez(path, **a)


@pytest.mark.parametrize("how, word", [("missing", "gate_w"), ("shape", "gate_w"), ("nan", "head_w"),
                                       ("int", "scale"), ("zero scale", "scale")])
def test_damaged_npz_is_one_line_error(signal, tmp_path, how, word):
    model, _, _ = signal
    meta = model.save(tmp_path)
    _damage(tmp_path / "mil.npz", how)
    with pytest.raises(ModelError) as exc:
        mil.MILModel.load(tmp_path, meta)
    msg = str(exc.value)
    assert "\n" not in msg and "mil.npz" in msg and word in msg


def test_pickled_or_foreign_npz_refused(signal, tmp_path):
    model, _, _ = signal
    meta = model.save(tmp_path)
    arrays = model.arrays()
    arrays["mean"] = np.array([object()] * 8, dtype=object)
    np.savez(tmp_path / "mil.npz", **arrays)  # an object array is stored with pickle
    with pytest.raises(ModelError, match="not a readable .npz") as exc:
        mil.MILModel.load(tmp_path, meta)
    assert "\n" not in str(exc.value)
    (tmp_path / "mil.npz").write_bytes(b"not a zip file")
    with pytest.raises(ModelError, match="not a readable .npz"):
        mil.MILModel.load(tmp_path, meta)
    (tmp_path / "mil.npz").unlink()
    with pytest.raises(ModelError, match="mil.npz missing"):
        mil.MILModel.load(tmp_path, meta)


@pytest.mark.parametrize("edit, field", [
    (lambda m: m["params"].update(hidden=0), "classifier.params.hidden"),
    (lambda m: m["params"].update(colour="red"), "classifier.params key"),
    (lambda m: m.update(columns=["a", "a"]), "classifier.columns"),
    (lambda m: m["arrays"].update(embed_w=[8, 17]), "classifier.arrays.embed_w"),
    (lambda m: m.update(file="../mil.npz"), "classifier.file"),
    (lambda m: m.update(kind="mlp"), "classifier.kind"),
])
def test_bad_metadata_names_the_field(signal, tmp_path, edit, field):
    model, _, _ = signal
    meta = json.loads(json.dumps(model.save(tmp_path)))
    edit(meta)
    with pytest.raises(ModelError, match=field.replace(".", r"\.")) as exc:
        mil.MILModel.load(tmp_path, meta)
    assert type(exc.value).__name__ == "FieldError" and "\n" not in str(exc.value)


def test_nan_tile_values_mean_the_training_mean(signal):
    model, bags, y = signal
    bag = bags[1].copy()
    bag[0, :3] = np.nan
    bag[2, 5] = np.inf
    filled = bag.copy()
    filled[0, :3] = model.mean[:3]
    filled[2, 5] = model.mean[5]
    assert np.isfinite(model.predict_logit([bag])).all()
    assert model.predict_logit([bag])[0] == pytest.approx(model.predict_logit([filled])[0], abs=1e-9)
    holey = [b.copy() for b in bags]
    holey[0][:, 4] = np.nan  # a whole column undefined on one slide, partly elsewhere
    holey[3][::2, 0] = np.nan
    m = mil.fit_mil(holey, y, COLUMNS, mil.MILParams(hidden=8, attention=4, epochs=2))
    assert all(np.isfinite(v).all() for v in m.arrays().values())


def test_empty_bag_is_refused(signal):
    model, bags, y = signal
    empty = np.zeros((0, len(COLUMNS)), dtype=np.float32)
    with pytest.raises(UserError, match="S7 has no tiles"):
        model.predict_proba([bags[0], empty], slide_ids=["S1", "S7"])
    with pytest.raises(UserError, match="slide 2 of 2 has no tiles"):
        model.predict_logit([bags[0], empty])
    with pytest.raises(CohortError, match="slide 1 of 48 has no tiles"):
        mil.fit_mil([empty] + bags[1:], y, COLUMNS, SMALL)
    with pytest.raises(CohortError, match="expected"):
        model.predict_proba([bags[0][:, :5]])
    with pytest.raises(CohortError, match="both classes"):
        mil.fit_mil(bags[:4], [1, 1, 1, 1], COLUMNS, SMALL)


def test_train_mil_chooses_by_grouped_inner_cv():
    bags, y, _ = make_bags(36, seed=3)
    groups = [f"P{i // 2}" for i in range(36)]  # two slides per patient, one of each class
    grid = (mil.MILParams(hidden=8, attention=4, epochs=6), mil.MILParams(hidden=16, attention=8, epochs=6))
    done = []
    model, info = mil.train_mil(bags, y, COLUMNS, groups=groups, grid=grid, seed=2,
                                progress=lambda d, t, msg: done.append((d, t)))
    assert set(info["scores"]) == {g.name() for g in grid} and info["grouped"] is True
    assert info["chosen"] == max(info["scores"], key=info["scores"].get)
    assert model.params.name() == info["chosen"] and info["oof"].shape == (36,)
    assert done[-1] == (6, 6)
    single, info1 = mil.train_mil(bags, y, COLUMNS, grid=grid[:1])
    assert info1["scores"] == {} and info1["oof"] is None and single.params == grid[0]


def test_should_stop_cancels():
    bags, y, _ = make_bags(8, seed=4)
    with pytest.raises(Cancelled):
        mil.fit_mil(bags, y, COLUMNS, SMALL, should_stop=lambda: True)
    assert not torch.are_deterministic_algorithms_enabled()


def test_bags_from_tables():
    t = pd.DataFrame({"slide_id": "S1", "x": [0, 1, 2], "deep.000": [1.0, np.inf, 3.0], "deep.001": [4, 5, 6]})
    (bag,) = mil.bags_from_tables([t], ["deep.000", "deep.001"])
    assert bag.dtype == np.float32 and bag.shape == (3, 2) and np.isnan(bag[1, 0]) and bag[2, 1] == 6
    with pytest.raises(CohortError, match="lacks 1 column"):
        mil.bags_from_tables([t], ["deep.000", "deep.002"])


def test_params_names_and_dicts():
    assert mil.MILParams().name() == "h64-wd0.01-e40"
    assert mil.MILParams(dropout=0.5, max_tiles=128).name() == "h64-wd0.01-e40-d0.5-t128"
    names = [p.name() for p in mil.DEFAULT_GRID]
    assert 3 <= len(names) <= 4 and len(set(names)) == len(names)
    p = mil.MILParams(hidden=32, lr=5e-4)
    assert mil.MILParams.from_dict(json.loads(json.dumps(p.to_dict()))) == p
    with pytest.raises(ModelError, match="params.dropout"):
        mil.MILParams.from_dict({"dropout": "a lot"})
    with pytest.raises(ModelError, match="'params' is not a usable setting"):
        mil.MILParams.from_dict({"dropout": 1.0})
    with pytest.raises(ValueError):
        mil.MILParams(epochs=0)
