"""State handed to forked workers is per call: concurrent callers in one process each get their own data
(the loader's and im2rec's use of it under two threads: tests/test_loader.py, tests/test_im2rec.py)."""

import multiprocessing
from concurrent.futures import ProcessPoolExecutor

import pytest

from openic.forking import inherited, lookup


def _child_sees(token: int) -> object:
    return lookup(token)


def test_each_token_finds_its_own_value_in_a_forked_child_and_is_gone_after():
    with inherited(["a"]) as ta, inherited(["b"]) as tb:
        with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("fork")) as pool:
            assert pool.submit(_child_sees, ta).result() == ["a"]
            assert pool.submit(_child_sees, tb).result() == ["b"]
    assert ta != tb
    with pytest.raises(KeyError):
        lookup(ta)
