import pytest

from common.config import check_choice, check_number


@pytest.mark.parametrize(
    "value, kwargs",
    [
        ("abc", {}),
        (True, {}),
        (0, {}),
        (-1.5, {}),
        (2.5, {"integer": True}),
        (3, {"high": 3}),
        (None, {}),
        ([1], {}),
        (1.5, {"low": 0, "high": 1, "inclusive": True}),
    ],
)
def test_bad_values_and_types_name_the_field(value, kwargs):
    with pytest.raises(ValueError, match=r"trainer\.lr=.* is not valid"):
        check_number({"lr": value}, "lr", "trainer.", **kwargs)


@pytest.mark.parametrize(
    "value, kwargs",
    [
        (1, {"integer": True}),
        (0.1, {}),
        (0, {"low": 0, "inclusive": True}),
        (1.0, {"low": 0, "high": 1, "inclusive": True}),
        (-5, {"low": None}),
    ],
)
def test_good_values_pass(value, kwargs):
    check_number({"x": value}, "x", **kwargs)


def test_choice():
    check_choice({"algo": "a"}, "algo", "", ("a", "b"))
    with pytest.raises(ValueError, match=r"cfg\.algo='c' is not valid: one of \('a', 'b'\)"):
        check_choice({"algo": "c"}, "algo", "cfg.", ("a", "b"))
