import pytest

from labs.templatetags.labs_extras import measured


@pytest.mark.parametrize(
    "value, shown",
    [
        (None, "—"),
        (0.0, "0"),
        (17906.0, "17,906"),
        (1.3340621085125157, "1.334"),
        (1e-5, "1e-05"),
        ("NaN", "NaN"),
        ("-Infinity", "-Infinity"),
        ("0.000000000000000000000000000000000001", "1e-36"),
        ("[0, 3]", "[0, 3]"),
        (True, "yes"),
    ],
)
def test_measured_values_read_well(value, shown):
    assert measured(value) == shown
