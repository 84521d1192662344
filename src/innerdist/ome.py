"""OME-NGFF (OME-Zarr) multiscale metadata: find the array a path names, and write it.

The metadata is parsed and validated by ``ome-zarr-models`` (pydantic models of the
specification, 0.4 on zarr v2 and 0.5 on zarr v3); this module only decides which level
a path names and converts its transformations to innerdist's integer world units::

    img.ome.zarr                   group with "multiscales"      -> level 0 (or --level L)
    img.ome.zarr/s1                an array listed as a level    -> that level
    img.ome.zarr/labels/cells      a label image (group)         -> its level 0
    img.ome.zarr/labels/cells/s0   one of its levels

    axes  t, c, z, y, x  (time, channel, space)   units micrometer
    scale 1, 1, 0.04, 0.008, 0.008                -> voxel size (40, 8, 8) nm, axes c^ z y x

A ``c`` axis becomes the volume's channel axis (``c^``); a ``t`` axis must be fixed to
one time point (``time``). Spatial units go through :mod:`innerdist.units`, so a voxel
size that is not a whole number of nm is one clear error naming size and unit; axes
without a unit are pixels (``px``).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from innerdist.units import ome_unit, to_world

__all__ = [
    "OmeLevel",
    "is_multiscale_group",
    "locate_level",
    "multiscale_attrs",
    "multiscales_metadata",
    "register_label",
    "write_multiscales",
]


@dataclass(frozen=True)
class OmeLevel:
    """One level of an OME-NGFF multiscale image, in innerdist's terms.

    ``voxel_size`` and ``offset`` are integer world units (``unit``: ``"nm"`` or
    ``"px"``), spatial axes only. ``axis_names`` are funlib's for the array after the
    time point is chosen: channel axes end in ``^``. ``time_axis`` is the index of the
    ``t`` axis in the stored array (``None`` when it has none).
    """

    array_path: Path
    group_path: Path
    level: int
    num_levels: int
    voxel_size: tuple[int, ...]
    offset: tuple[int, ...]
    unit: str
    axis_names: tuple[str, ...]
    time_axis: int | None
    time_points: int | None
    is_label: bool


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        raise ValueError(f"cannot read zarr metadata {str(path)!r}: {e}") from None
    return data if isinstance(data, dict) else None


def _node_kind(path: Path) -> str | None:
    """``"group"``, ``"array"`` or ``None`` for a zarr v2/v3 node."""
    v3 = _read_json(path / "zarr.json")
    if v3 is not None:
        kind = v3.get("node_type")
        return kind if kind in ("group", "array") else None
    if (path / ".zarray").exists():
        return "array"
    if (path / ".zgroup").exists() or (path / ".zattrs").exists():
        return "group"
    return None


def multiscale_attrs(group: Path) -> tuple[str, dict[str, Any]] | None:
    """``(version, attributes)`` of a group's OME metadata, or ``None`` when it has none.

    ``attributes`` holds ``multiscales`` (and ``image-label`` on label images): the
    ``ome`` attribute of 0.5 (zarr v3), or the group attributes of 0.4 (zarr v2).
    """
    v3 = _read_json(group / "zarr.json")
    if v3 is not None:
        if v3.get("node_type") != "group":
            return None
        attrs = v3.get("attributes") or {}
        ome = attrs.get("ome") if isinstance(attrs, dict) else None
        if isinstance(ome, dict) and "multiscales" in ome:
            return str(ome.get("version", "0.5")), ome
        if isinstance(attrs, dict) and "multiscales" in attrs:
            # 0.4-style attributes in a zarr v3 group (some converters write these).
            return _version_04(attrs), attrs
        return None
    attrs = _read_json(group / ".zattrs")
    if attrs is not None and "multiscales" in attrs:
        return _version_04(attrs), attrs
    return None


def _version_04(attrs: dict[str, Any]) -> str:
    ms = attrs.get("multiscales")
    if isinstance(ms, list) and ms and isinstance(ms[0], dict):
        return str(ms[0].get("version", "0.4"))
    return "0.4"


def is_multiscale_group(path: Path) -> bool:
    """Whether ``path`` is a zarr group with OME-NGFF ``multiscales`` metadata."""
    return multiscale_attrs(path) is not None


def _validated(version: str, attrs: dict[str, Any], where: Path) -> Any:
    """The first multiscale of ``attrs`` as an ome-zarr-models model."""
    from pydantic import ValidationError

    if version == "0.5":
        from ome_zarr_models.v05.multiscales import Multiscale
    elif version == "0.4":
        from ome_zarr_models.v04.multiscales import Multiscale  # type: ignore[assignment]
    else:
        raise ValueError(
            f"OME-NGFF image {str(where)!r} has version {version!r}; innerdist reads 0.4 "
            "(zarr v2) and 0.5 (zarr v3)"
        )
    multiscales = attrs.get("multiscales")
    if not isinstance(multiscales, list) or not multiscales:
        raise ValueError(
            f"OME-NGFF image {str(where)!r} has 'multiscales' {multiscales!r}; expected a "
            "non-empty list"
        )
    try:
        return Multiscale.model_validate(multiscales[0])
    except ValidationError as e:
        first = e.errors()[0]
        loc = ".".join(str(p) for p in first["loc"]) or "multiscales[0]"
        raise ValueError(
            f"invalid OME-NGFF {version} metadata in {str(where)!r}: {loc}: {first['msg']}"
        ) from None


def _vectors(transforms: Any, ndim: int, where: str) -> tuple[list[float], list[float]]:
    scale = [1.0] * ndim
    translation = [0.0] * ndim
    for t in transforms or ():
        kind = getattr(t, "type", None)
        if kind == "scale":
            if not hasattr(t, "scale"):
                raise ValueError(f"{where}: a scale given by path is not supported")
            scale = [float(v) for v in t.scale]
        elif kind == "translation":
            if not hasattr(t, "translation"):
                raise ValueError(f"{where}: a translation given by path is not supported")
            translation = [float(v) for v in t.translation]
    for what, values in (("scale", scale), ("translation", translation)):
        if len(values) != ndim:
            raise ValueError(f"{where}: {what} {values} has {len(values)} entries for {ndim} axes")
    return scale, translation


def locate_level(container: Path, dataset: str, level: int | None = None) -> OmeLevel | None:
    """The OME-NGFF level ``container/dataset`` names, or ``None`` if it is not one.

    ``dataset`` (``""`` for the container itself) names a multiscale group, taking
    ``level`` (default 0), or one of its level arrays (then ``level`` must be unset or
    agree). Raises ``ValueError`` for invalid metadata, a ``level`` out of range or given
    for a path that is not a multiscale image.
    """
    node = container / dataset if dataset else container
    where = str(node)
    if level is not None and (isinstance(level, bool) or not isinstance(level, int) or level < 0):
        raise ValueError(f"level must be a non-negative integer, got {level!r}")
    found = multiscale_attrs(node) if _node_kind(node) == "group" else None
    leaf: str | None = None
    group = node
    if found is None and dataset and _node_kind(node) == "array":
        parent_rel, _, leaf = dataset.rpartition("/")
        group = container / parent_rel if parent_rel else container
        found = multiscale_attrs(group)
    if found is None:
        if level is not None:
            raise ValueError(
                f"a level ({level}) was given but {where!r} is not an OME-NGFF multiscale "
                "image (a zarr group with 'multiscales' metadata)"
            )
        return None
    version, attrs = found
    ms = _validated(version, attrs, group)
    paths = [str(d.path) for d in ms.datasets]
    if leaf is not None:
        if leaf not in paths:
            if level is not None:
                raise ValueError(f"a level ({level}) was given but {where!r} is an array")
            return None  # an array next to, not part of, the multiscale image
        index = paths.index(leaf)
        if level is not None and level != index:
            raise ValueError(
                f"{where!r} is level {index} of {str(group)!r}, but level {level} was given"
            )
    else:
        index = 0 if level is None else level
        if index >= len(paths):
            raise ValueError(
                f"level {index} does not exist in OME-NGFF image {where!r}: it has "
                f"{len(paths)} level(s), {paths}"
            )
    array_path = group / paths[index]
    if _node_kind(array_path) != "array":
        raise ValueError(
            f"OME-NGFF image {str(group)!r} lists level {paths[index]!r}, but "
            f"{str(array_path)!r} is not a zarr array"
        )
    return _level(ms, index, group, array_path, len(paths), "image-label" in attrs, version)


def _level(
    ms: Any,
    index: int,
    group: Path,
    array_path: Path,
    num_levels: int,
    is_label: bool,
    version: str,
) -> OmeLevel:
    axes = list(ms.axes)
    ndim = len(axes)
    where = f"OME-NGFF {version} image {str(group)!r}"
    scale, translation = _vectors(ms.datasets[index].coordinateTransformations, ndim, where)
    top_scale, top_translation = _vectors(ms.coordinateTransformations, ndim, where)
    # The multiscale's own transformations apply after the level's.
    scale = [s * t for s, t in zip(scale, top_scale, strict=True)]
    translation = [
        o * t + u for o, t, u in zip(translation, top_scale, top_translation, strict=True)
    ]
    names: list[str] = []
    spatial: list[int] = []
    time_axis: int | None = None
    for i, ax in enumerate(axes):
        name = str(ax.name)
        kind = ax.type if ax.type is not None else {"t": "time", "c": "channel"}.get(name, "space")
        if kind == "space":
            spatial.append(i)
            names.append(name)
        elif kind == "channel":
            names.append(name + "^")
        elif kind == "time":
            time_axis = i
        else:
            raise ValueError(
                f"{where} has axis {name!r} of type {kind!r}; innerdist reads space, "
                "channel and time axes"
            )
    # ome-zarr-models has checked there are 2 or 3 space axes, after time and channel.
    units = {ax.unit for ax in (axes[i] for i in spatial)}
    voxels: list[int] = []
    offsets: list[int] = []
    worlds: set[str] = set()
    for i in spatial:
        unit = axes[i].unit
        (v, o), world = to_world(
            [scale[i], translation[i]], unit, f"{where}: axis {axes[i].name!r} scale/translation"
        )
        voxels.append(v)
        offsets.append(o)
        worlds.add(world)
    if len(worlds) > 1:
        raise ValueError(
            f"{where} mixes spatial axes with and without a length unit ({sorted(map(str, units))})"
        )
    if any(v <= 0 for v in voxels):
        raise ValueError(f"{where}: the spatial scale must be positive, got {voxels}")
    time_points = None
    if time_axis is not None:
        time_points = _array_shape(array_path)[time_axis]
    return OmeLevel(
        array_path=array_path,
        group_path=group,
        level=index,
        num_levels=num_levels,
        voxel_size=tuple(voxels),
        offset=tuple(offsets),
        unit=worlds.pop(),
        axis_names=tuple(names),
        time_axis=time_axis,
        time_points=time_points,
        is_label=is_label,
    )


def _set_dimension_names(array: Path, names: list[str]) -> None:
    """Record axis names in a zarr v3 array's metadata (zarr cannot change them later)."""
    meta_path = array / "zarr.json"
    meta = _read_json(meta_path)
    if meta is None or meta.get("node_type") != "array":
        raise ValueError(f"{str(array)!r} is not a zarr v3 array; OME-NGFF 0.5 levels are")
    if len(meta.get("shape", [])) != len(names):
        raise ValueError(
            f"zarr array {str(array)!r} has shape {meta.get('shape')}, not one axis per "
            f"name in {names}"
        )
    if meta.get("dimension_names") != names:
        meta["dimension_names"] = names
        meta_path.write_text(json.dumps(meta, indent=2))


def _array_shape(array_path: Path) -> tuple[int, ...]:
    v3 = _read_json(array_path / "zarr.json")
    meta = v3 if v3 is not None else _read_json(array_path / ".zarray") or {}
    shape = meta.get("shape")
    if not isinstance(shape, list):
        raise ValueError(f"zarr array {str(array_path)!r} has no shape in its metadata")
    return tuple(int(s) for s in shape)


def multiscales_metadata(
    paths: Sequence[str],
    voxel_sizes: Sequence[Sequence[int]],
    offsets: Sequence[Sequence[float]],
    *,
    unit: str,
    num_channels: int | None,
    name: str,
) -> dict[str, Any]:
    """OME-NGFF 0.5 ``multiscales`` entry for levels in world units (``unit`` nm or px).

    Axes are ``[c,] [z,] y, x``; a channel axis gets scale 1 and translation 0.
    """
    if not paths or not (len(paths) == len(voxel_sizes) == len(offsets)):
        raise ValueError(
            f"need one voxel size and offset per level, got {len(paths)} paths, "
            f"{len(voxel_sizes)} voxel sizes, {len(offsets)} offsets"
        )
    from innerdist.units import spatial_axis_names

    dims = len(voxel_sizes[0])
    length = ome_unit(unit)
    axes: list[dict[str, Any]] = []
    if num_channels is not None:
        axes.append({"name": "c", "type": "channel"})
    for axis in spatial_axis_names(dims):
        entry: dict[str, Any] = {"name": axis, "type": "space"}
        if length is not None:
            entry["unit"] = length
        axes.append(entry)
    lead = [1] if num_channels is not None else []
    zero = [0] if num_channels is not None else []
    datasets = [
        {
            "path": p,
            "coordinateTransformations": [
                {"type": "scale", "scale": lead + [_number(v) for v in voxel]},
                {"type": "translation", "translation": zero + [_number(o) for o in offset]},
            ],
        }
        for p, voxel, offset in zip(paths, voxel_sizes, offsets, strict=True)
    ]
    return {"name": name, "axes": axes, "datasets": datasets}


def _number(value: float) -> int | float:
    """Whole numbers as ``int`` (JSON ``40``, not ``40.0``), others as they are."""
    return int(value) if float(value).is_integer() else float(value)


def write_multiscales(
    group: Path,
    paths: Sequence[str],
    voxel_sizes: Sequence[Sequence[int]],
    offsets: Sequence[Sequence[float]],
    *,
    unit: str,
    num_channels: int | None,
    label: bool = False,
) -> None:
    """Write OME-NGFF 0.5 metadata on the zarr v3 group ``group`` (levels ``paths``).

    ``label=True`` adds ``image-label`` (a segmentation). Other attributes of the group
    are kept. The metadata is validated with ome-zarr-models before it is written, and
    each level array gets the ``dimension_names`` 0.5 asks for (``c, z, y, x``).
    """
    import zarr
    from ome_zarr_models.v05.multiscales import Multiscale

    entry = multiscales_metadata(
        paths, voxel_sizes, offsets, unit=unit, num_channels=num_channels, name=group.name
    )
    Multiscale.model_validate(entry)
    names = [axis["name"] for axis in entry["axes"]]
    for p in paths:
        _set_dimension_names(group / p, names)
    ome: dict[str, Any] = {"version": "0.5", "multiscales": [entry]}
    if label:
        ome["image-label"] = {"version": "0.5"}
    node = zarr.open_group(group, mode="a", zarr_format=3)
    node.attrs["ome"] = ome


def register_label(image: Path, name: str) -> None:
    """List ``name`` in the ``labels`` group of the 0.5 image ``image`` (created if needed).

    Only ``image/labels`` is written; the image's own metadata and arrays stay untouched.
    """
    import zarr
    from ome_zarr_models.v05.labels import LabelsAttrs

    labels = zarr.open_group(image / "labels", mode="a", zarr_format=3)
    stored = labels.attrs.get("ome")
    ome: dict[str, Any] = dict(stored) if isinstance(stored, dict) else {}
    listed = ome.get("labels")
    names = [str(n) for n in listed] if isinstance(listed, list) else []
    if name not in names:
        names.append(name)
    ome.update({"version": "0.5", "labels": names})
    LabelsAttrs.model_validate(ome)
    labels.attrs["ome"] = ome
