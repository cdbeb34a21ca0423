"""lib.validation: the shared input checks."""

import numpy as np
import pytest

from lib.validation import check_generator, check_positive_int, check_positive_real


@pytest.mark.parametrize("value", [1, 7, np.int64(3), np.uint8(2)])
def test_positive_ints_pass_as_python_ints(value):
    checked = check_positive_int(value, "n")
    assert checked == int(value) and type(checked) is int


@pytest.mark.parametrize(("value", "error", "message"), [
    (0, ValueError, "n must be >= 1, got 0"), (-3, ValueError, ">= 1"), (2.0, TypeError, "n must be an int, got float"),
    (True, TypeError, "got bool"), ("3", TypeError, "got str"),
])
def test_non_positive_or_non_integer_values_are_rejected(value, error, message):
    with pytest.raises(error, match=message):
        check_positive_int(value, "n")


def test_generators_pass_and_seeds_are_rejected():
    rng = np.random.default_rng(0)
    assert check_generator(rng) is rng
    with pytest.raises(TypeError, match="seed_rng must be a numpy.random.Generator, got int"):
        check_generator(0, "seed_rng")
    with pytest.raises(TypeError, match="got RandomState"):
        check_generator(np.random.RandomState(0))


def test_a_larger_minimum_is_enforced():
    assert check_positive_int(4, "n_shares", minimum=4) == 4
    with pytest.raises(ValueError, match="n_shares must be >= 4, got 3"):
        check_positive_int(3, "n_shares", minimum=4)


def test_check_positive_real():
    assert check_positive_real(2, "x") == 2.0 and isinstance(check_positive_real(np.float32(0.5), "x"), float)
    for bad, error in [(0, ValueError), (-1.5, ValueError), (float("inf"), ValueError), (float("nan"), ValueError),
                       (True, TypeError), ("1", TypeError)]:
        with pytest.raises(error, match="x must be"):
            check_positive_real(bad, "x")
