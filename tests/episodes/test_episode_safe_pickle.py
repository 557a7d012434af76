"""Restricted unpickling: dataset files can never run code; Python 2 files load via latin1."""
import os
import pickle

import numpy as np
import pytest

import fixtures_formats as ff
from episodes.sources.safe_pickle import UnsafePickleError, load_pickle, loads_pickle


class _SystemCall:
    def __init__(self, cmd):
        self.cmd = cmd

    def __reduce__(self):
        return (os.system, (self.cmd,))


class _EvalCall:
    def __reduce__(self):
        return (eval, ("__import__('pathlib').Path('EVAL_MARKER').touch()",))


@pytest.mark.parametrize("protocol", [0, 2, 4])
def test_malicious_reduce_is_refused_and_nothing_runs(tmp_path, protocol):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pickle"
    payload = {"data": np.zeros((2, 4, 4, 3), np.uint8), "labels": [0, 1], "x": _SystemCall(f"touch {marker}")}
    path.write_bytes(pickle.dumps(payload, protocol=protocol))
    with pytest.raises(UnsafePickleError, match=r"posix\.system|os\.system"):
        load_pickle(path)
    assert not marker.exists()


def test_eval_global_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UnsafePickleError, match="builtins.eval"):
        loads_pickle(pickle.dumps([_EvalCall()]))
    assert not (tmp_path / "EVAL_MARKER").exists()


def test_standard_pickle_would_have_run_the_payload(tmp_path):
    """Guards the test above: the same kind of payload executes with pickle.load."""
    marker = tmp_path / "ran"
    data = pickle.dumps(_SystemCall(f"touch {marker}"))
    pickle.loads(data)
    assert marker.exists()


def test_python2_pickle_needs_latin1_and_loads(tmp_path):
    arr = np.random.default_rng(0).integers(0, 256, (5, 3, 3, 3), dtype=np.uint8)
    labels = np.arange(6, dtype=np.int64)
    path = ff.write_py2_pickle(str(tmp_path / "py2.pickle"),
                               {"data": arr, "labels": [1, 2, 300, 70000], "ints": labels, "name": "n0123"})
    with open(path, "rb") as f:                   # what Python 3's default decoding does with it
        with pytest.raises(UnicodeDecodeError):
            pickle.load(f)
    with open(path, "rb") as f:                   # independent reference: stdlib with latin1
        ref = pickle.load(f, encoding="latin1")
    got = load_pickle(path)
    assert sorted(got) == sorted(ref) == ["data", "ints", "labels", "name"]
    assert got["data"].dtype == np.uint8 and np.array_equal(got["data"], arr) and np.array_equal(ref["data"], arr)
    assert np.array_equal(got["ints"], labels) and got["ints"].dtype == np.int64
    assert got["labels"] == [1, 2, 300, 70000] and got["name"] == "n0123"
    assert b"numpy.core.multiarray\n_reconstruct" in open(path, "rb").read()


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_python3_numpy_pickles_load(tmp_path, protocol):
    obj = {"image_data": np.arange(24, dtype=np.uint8).reshape(2, 2, 2, 3),
           "class_dict": {"n1": [0], "n2": [1]}, "scalar": np.int64(7), "f": np.float32(1.5)}
    got = loads_pickle(pickle.dumps(obj, protocol=protocol))
    assert np.array_equal(got["image_data"], obj["image_data"]) and got["class_dict"] == obj["class_dict"]
    assert got["scalar"] == 7 and got["f"] == 1.5


def test_not_a_pickle_and_missing_file(tmp_path):
    bad = tmp_path / "bad.pickle"
    bad.write_bytes(b"this is not a pickle")
    with pytest.raises(ValueError, match="bad.pickle: not a readable dataset pickle"):
        load_pickle(bad)
    with pytest.raises(FileNotFoundError, match="nope.pickle"):
        load_pickle(tmp_path / "nope.pickle")


def test_declared_array_sizes_are_checked_before_allocating(tmp_path):
    """A 52-byte pickle calling numpy.ndarray((2**40,)) (or numpy's _reconstruct with that
    shape) used to allocate it: refused from the declared size; real arrays still load."""
    import pickle
    import numpy as np
    from numpy.core import multiarray
    from episodes.sources.safe_pickle import UnsafePickleError, load_pickle, loads_pickle

    class Direct:
        def __reduce__(self):
            return (np.ndarray, ((2 ** 40,),))

    class Reconstruct:
        def __reduce__(self):
            return (multiarray._reconstruct, (np.ndarray, (2 ** 40,), b"b"))

    for obj in (Direct(), Reconstruct()):
        data = pickle.dumps({"data": obj}, protocol=2)
        with pytest.raises(UnsafePickleError, match="refusing to allocate an array of 1.02e\\+03 GiB|8.19e\\+03 GiB"):
            loads_pickle(data, "evil.pkl")
        path = tmp_path / "evil.pickle"
        path.write_bytes(data)
        with pytest.raises(UnsafePickleError, match=f"declared by a file of {len(data)} bytes"):
            load_pickle(path)
    a = np.arange(3 * 84 * 84 * 3, dtype=np.uint8).reshape(3, 84, 84, 3)
    assert np.array_equal(loads_pickle(pickle.dumps({"data": a}, protocol=2))["data"], a)
