"""World units: the one table of length units, and the axis names innerdist writes.

Inside innerdist every voxel size and offset is an integer in one world unit per volume:
nanometres (``"nm"``) for data with a physical calibration, or pixels (``"px"``) for
data without one (light microscopy often has none). Readers of OME-NGFF, N5 and TIFF
metadata all convert through :func:`to_world`::

    0.008 micrometer -> 8 nm          4.5 nanometer -> ValueError (not a whole nm)
    40 angstrom      -> 4 nm          1 (no unit)   -> 1 px

Conversions are exact: a stored value is taken as the decimal it prints as (``0.008``,
not the binary float next to it), so ``0.008 * 1000`` is exactly ``8``.

Unit names are those of the OME-NGFF specification (``micrometer``, ``angstrom``, ...),
plus the spellings ImageJ, OME-XML, BigDataViewer and N5 writers use (``um``, ``µm``,
``micron``, ``Å``, ...). ``px`` (``pixel``) marks an uncalibrated axis.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from fractions import Fraction

__all__ = [
    "NM",
    "OME_LENGTH_UNITS",
    "PX",
    "canonical_unit",
    "ome_unit",
    "spatial_axis_names",
    "to_world",
    "world_unit",
]

#: World unit of calibrated volumes.
NM = "nm"
#: World unit of volumes without a physical calibration.
PX = "px"

#: Length of one unit in nm, for every spatial unit of the OME-NGFF specification.
OME_LENGTH_UNITS: dict[str, Fraction] = {
    "yoctometer": Fraction(1, 10**15),
    "zeptometer": Fraction(1, 10**12),
    "attometer": Fraction(1, 10**9),
    "femtometer": Fraction(1, 10**6),
    "picometer": Fraction(1, 10**3),
    "angstrom": Fraction(1, 10),
    "nanometer": Fraction(1),
    "micrometer": Fraction(10**3),
    "millimeter": Fraction(10**6),
    "centimeter": Fraction(10**7),
    "decimeter": Fraction(10**8),
    "meter": Fraction(10**9),
    "hectometer": Fraction(10**11),
    "kilometer": Fraction(10**12),
    "megameter": Fraction(10**15),
    "gigameter": Fraction(10**18),
    "terameter": Fraction(10**21),
    "petameter": Fraction(10**24),
    "exameter": Fraction(10**27),
    "zettameter": Fraction(10**30),
    "yottameter": Fraction(10**33),
    "inch": Fraction(25_400_000),
    "foot": Fraction(304_800_000),
    "yard": Fraction(914_400_000),
    "mile": Fraction(1_609_344_000_000),
    "parsec": Fraction(30_856_775_814_913_673) * 10**9,
}

# Other spellings of the same units (ImageJ, OME-XML symbols, N5/BigDataViewer, plurals).
_ALIASES: dict[str, str] = {
    "nm": "nanometer",
    "nanometers": "nanometer",
    "nanometre": "nanometer",
    "nanometres": "nanometer",
    "um": "micrometer",
    "µm": "micrometer",  # micro sign
    "μm": "micrometer",  # Greek mu
    "\\u00b5m": "micrometer",  # ImageJ's escaped micro sign
    "micron": "micrometer",
    "microns": "micrometer",
    "micrometers": "micrometer",
    "micrometre": "micrometer",
    "micrometres": "micrometer",
    "mm": "millimeter",
    "millimeters": "millimeter",
    "millimetre": "millimeter",
    "cm": "centimeter",
    "m": "meter",
    "pm": "picometer",
    "å": "angstrom",
    "Å": "angstrom",
    "angstroms": "angstrom",
}
_PIXEL_NAMES = frozenset({"px", "pixel", "pixels"})


def canonical_unit(unit: str | None) -> str:
    """The OME-NGFF name of a length unit, or ``"px"`` for an uncalibrated axis.

    ``None`` (an axis without a unit) is ``"px"``.

    >>> canonical_unit("µm"), canonical_unit("nm"), canonical_unit(None)
    ('micrometer', 'nanometer', 'px')
    """
    if unit is None:
        return PX
    if not isinstance(unit, str):
        raise TypeError(f"a unit must be a string, got {unit!r}")
    key = unit.strip()
    if key.lower() in _PIXEL_NAMES:
        return PX
    if key in OME_LENGTH_UNITS or key in _ALIASES:
        return _ALIASES.get(key, key)
    if key.lower() in OME_LENGTH_UNITS or key.lower() in _ALIASES:
        return _ALIASES.get(key.lower(), key.lower())
    raise ValueError(
        f"unit {unit!r} is not a length unit innerdist knows; expected an OME-NGFF unit "
        f"({', '.join(OME_LENGTH_UNITS)}), an abbreviation such as nm or um, or px"
    )


def _exact(value: float | int | str) -> Fraction:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise TypeError(f"expected a number, got {value!r}")
    try:
        # repr of a float is the shortest decimal that reads back as it: 0.008 -> "0.008".
        exact = Fraction(value if isinstance(value, int | str) else repr(float(value)))
    except (ValueError, ZeroDivisionError):
        raise ValueError(f"expected a finite number, got {value!r}") from None
    return exact


def to_world(
    values: Iterable[float | int], unit: str | None, what: str = "value"
) -> tuple[tuple[int, ...], str]:
    """``values`` in ``unit`` as whole world units: ``(ints, "nm")`` or ``(ints, "px")``.

    ``what`` names the values in the error raised when one is not a whole number of nm
    (or of pixels for ``px``).

    >>> to_world([0.04, 0.008, 0.008], "micrometer", "voxel size")
    ((40, 8, 8), 'nm')
    >>> to_world([1, 1], None)
    ((1, 1), 'px')
    """
    name = canonical_unit(unit)
    values = list(values)
    try:
        exact = [_exact(v) for v in values]
    except ValueError:
        raise ValueError(f"{what} {values} must be finite numbers") from None
    if name == PX:
        world, factor = PX, Fraction(1)
    else:
        world, factor = NM, OME_LENGTH_UNITS[name]
    converted = [v * factor for v in exact]
    if any(c.denominator != 1 for c in converted):
        shown = ", ".join(str(float(c)) for c in converted)
        raise ValueError(
            f"{what} {values} {unit if unit is not None else '(no unit)'} is not a whole "
            f"number of {world} ({shown} {world}); innerdist needs integer {world}"
            + ("" if world == PX else " (resample the data or correct its calibration)")
        )
    return tuple(int(c) for c in converted), world


def world_unit(units: Sequence[str] | None) -> str:
    """The world unit (``"nm"`` or ``"px"``) of a volume from its per-axis units.

    ``"px"`` when every axis is in pixels; otherwise nm, the unit innerdist works in
    (volumes without units, written before units were recorded, count as nm).

    >>> world_unit(["nm", "nm"]), world_unit(["px", "px"]), world_unit(None)
    ('nm', 'px', 'nm')
    """
    if not units:
        return NM
    pixels = [str(u).strip().lower() in _PIXEL_NAMES for u in units]
    if all(pixels):
        return PX
    if any(pixels):
        raise ValueError(
            f"axes mix pixels and physical units ({list(units)}); give every spatial axis "
            "a length unit or none"
        )
    return NM


def ome_unit(world: str) -> str | None:
    """The OME-NGFF axis unit for a world unit: ``"nanometer"``, or ``None`` for px."""
    if world == NM:
        return "nanometer"
    if world == PX:
        return None
    raise ValueError(f"world unit must be {NM!r} or {PX!r}, got {world!r}")


def spatial_axis_names(dims: int) -> list[str]:
    """Axis names innerdist writes: ``["y", "x"]`` or ``["z", "y", "x"]``."""
    if dims not in (2, 3):
        raise ValueError(f"expected 2 or 3 spatial dimensions, got {dims}")
    return ["z", "y", "x"][3 - dims :]
