"""The one unit table: exact conversion to whole nm, pixels, errors that name the unit."""

from __future__ import annotations

from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st

from innerdist.units import (
    OME_LENGTH_UNITS,
    canonical_unit,
    ome_unit,
    spatial_axis_names,
    to_world,
    world_unit,
)

# Every spatial unit of OME-NGFF 0.5 (the specification's list, typed out here).
SPEC_UNITS = (
    "angstrom attometer centimeter decimeter exameter femtometer foot gigameter hectometer "
    "inch kilometer megameter meter micrometer mile millimeter nanometer parsec petameter "
    "picometer terameter yard yoctometer yottameter zeptometer zettameter"
).split()


def test_table_has_exactly_the_spec_units() -> None:
    assert sorted(OME_LENGTH_UNITS) == sorted(SPEC_UNITS)


@pytest.mark.parametrize(
    ("values", "unit", "expected"),
    [
        ([0.04, 0.008, 0.008], "micrometer", (40, 8, 8)),
        ([40, 80], "angstrom", (4, 8)),
        ([0.000004], "millimeter", (4,)),
        ([1e-6], "millimeter", (1,)),
        ([0.001], "micrometer", (1,)),
        ([3, 5], "nm", (3, 5)),
        ([0.25], "µm", (250,)),
        ([1], "inch", (25_400_000,)),
        ([2], "pm", None),
    ],
)
def test_to_world_exact(values: list[float], unit: str, expected: tuple[int, ...] | None) -> None:
    if expected is None:
        with pytest.raises(ValueError, match="not a whole number of nm"):
            to_world(values, unit)
    else:
        assert to_world(values, unit) == (expected, "nm")


def test_no_unit_is_pixels() -> None:
    assert to_world([1, 2], None) == ((1, 2), "px")
    assert to_world([3], "pixel") == ((3,), "px")
    with pytest.raises(
        ValueError, match=r"voxel size \[1.5\] \(no unit\) is not a whole number of px"
    ):
        to_world([1.5], None, "voxel size")


def test_errors_name_value_and_unit() -> None:
    with pytest.raises(ValueError, match=r"voxel size \[0.0045\] micrometer .* \(4.5 nm\)"):
        to_world([0.0045], "micrometer", "voxel size")
    with pytest.raises(ValueError, match="'furlong' is not a length unit"):
        canonical_unit("furlong")
    with pytest.raises(TypeError, match="a unit must be a string"):
        canonical_unit(3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="must be finite"):
        to_world([float("nan")], "nm")
    with pytest.raises(TypeError, match="expected a number"):
        to_world([True], "nm")


def test_aliases() -> None:
    for alias in ("um", "µm", "μm", "micron", "microns", "Micrometer", "\\u00b5m"):
        assert canonical_unit(alias) == "micrometer", alias
    assert canonical_unit("Å") == canonical_unit("å") == "angstrom"
    assert canonical_unit(" nm ") == "nanometer"


def test_world_unit() -> None:
    assert world_unit(["nm", "nm", "nm"]) == "nm"
    assert world_unit(["px", "px"]) == "px"
    assert world_unit([]) == "nm"
    with pytest.raises(ValueError, match="mix pixels and physical units"):
        world_unit(["px", "nm"])
    assert world_unit(["", ""]) == "nm"  # funlib's empty units: written before units counted


def test_ome_unit_and_axis_names() -> None:
    assert ome_unit("nm") == "nanometer" and ome_unit("px") is None
    with pytest.raises(ValueError, match="world unit must be"):
        ome_unit("um")
    assert spatial_axis_names(2) == ["y", "x"]
    with pytest.raises(ValueError, match="2 or 3 spatial dimensions"):
        spatial_axis_names(4)


@given(
    nm=st.integers(min_value=1, max_value=10**9),
    unit=st.sampled_from(["angstrom", "nanometer", "micrometer", "millimeter"]),
)
def test_round_trip_of_whole_nm(nm: int, unit: str) -> None:
    # A whole number of nm written in another unit as its shortest decimal comes back.
    value = Fraction(nm) / OME_LENGTH_UNITS[unit]
    text = float(value)
    if Fraction(repr(text)) == value:  # the float prints as the exact decimal
        assert to_world([text], unit) == ((nm,), "nm")
