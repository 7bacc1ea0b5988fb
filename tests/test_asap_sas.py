"""Tests of the ASAP-SAS loader. The data is read in place and never copied; tests skip where it is absent."""

from __future__ import annotations

import json

import numpy as np
import pytest

from scoreplex.data import MISSING, asap_sas, load_asap_sas
from scoreplex.errors import ConfigError, DataError, UnknownTaskError


@pytest.fixture(scope="module")
def root():
    if not asap_sas.available():
        pytest.skip(f"ASAP-SAS data not found (looked in {asap_sas.candidate_roots()}); set {asap_sas.ENV_VAR}")
    return asap_sas.default_root()


@pytest.fixture(scope="module")
def stats(root):
    return json.loads((root / "stats.json").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def train(root):
    return load_asap_sas(root)


def test_missing_folder_names_where_it_looked(tmp_path, monkeypatch):
    monkeypatch.setenv(asap_sas.ENV_VAR, str(tmp_path / "nowhere"))
    assert not asap_sas.available()
    with pytest.raises(DataError) as exc:
        load_asap_sas()
    msg = str(exc.value)
    assert str(tmp_path / "nowhere") in msg and asap_sas.ENV_VAR in msg
    with pytest.raises(DataError, match="no ASAP-SAS data"):
        load_asap_sas(tmp_path)


@pytest.mark.realdata
def test_train_counts_and_ranges(train, stats):
    assert list(train) == [f"asap-{i}" for i in range(1, 11)]
    assert sum(len(d) for d in train.values()) == 17026
    for key, item in stats.items():
        data = train[f"asap-{key}"]
        assert len(data) == item["train"]
        top = max(item["scores"])
        assert data.spec.class_counts == [top + 1]
        assert sorted(np.unique(data.labels).tolist()) == item["scores"]
        assert data.second is not None and data.second.min() >= 0 and data.second.max() <= top
        assert data.spec.rubric and data.spec.prompt.startswith("Data Set")


@pytest.mark.realdata
def test_test_split(root, stats):
    test = load_asap_sas(root, split="test")
    assert sum(len(d) for d in test.values()) == 5224
    for key, item in stats.items():
        data = test[f"asap-{key}"]
        assert len(data) == item["test"] and data.second is None
        assert 0 <= data.labels.min() and data.labels.max() <= max(item["scores"])


@pytest.mark.realdata
def test_ids_prefixed_and_unique(train):
    ids = [i for d in train.values() for i in d.ids]
    assert len(ids) == len(set(ids)) and all(i.startswith("asap-") for i in ids)
    assert train["asap-1"].ids[0] == "asap-1"
    assert not any(MISSING in d.labels for d in train.values())


@pytest.mark.realdata
def test_items_selection(root):
    picked = load_asap_sas(root, items=[3, "asap-1"])
    assert list(picked) == ["asap-3", "asap-1"]
    with pytest.raises(UnknownTaskError, match="1..10"):
        load_asap_sas(root, items=[11])
    with pytest.raises(ConfigError, match="split"):
        load_asap_sas(root, split="dev")
