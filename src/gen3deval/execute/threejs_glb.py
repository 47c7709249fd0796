"""The GLB the Three.js scaffold writes -> :class:`~gen3deval.mesh.types.Mesh`, read as untrusted input.

The scaffold runs in the program's process, so its output is checked as if the program wrote it:
the whole glTF JSON is validated (types, indices, ranges) and the total vertex and triangle counts
are computed from it *before* any binary data is copied. Every accessor and every bufferView may be
used at most once, and each must lie inside the binary chunk, so the arrays built here are never
larger than the input (no "many primitives sharing one large accessor" expansion). Anything that
fails raises :class:`GLBError` (a ValueError) naming what is wrong.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass
from typing import Any

import numpy as np

from gen3deval.mesh.types import Material, Mesh

_GLB_MAGIC = 0x46546C67
_CHUNK_JSON = 0x4E4F534A
_CHUNK_BIN = 0x004E4942
_COMPONENT: dict[int, Any] = {5126: np.float32, 5125: np.uint32, 5123: np.uint16, 5121: np.uint8}
_INDEX_TYPES = (5125, 5123, 5121)
_WIDTH = {"SCALAR": 1, "VEC2": 2, "VEC3": 3, "VEC4": 4}
# The scaffold's JSON is ~300 bytes per colour group; a larger chunk is not its output.
MAX_JSON_BYTES = 32 * 1024 * 1024


class GLBError(ValueError):
    """A GLB that is malformed or breaks the reader's limits."""


def linear_to_srgb(c: float) -> float:
    """One linear-light channel in [0, 1] -> sRGB-encoded (the IEC 61966-2-1 curve three uses)."""
    c = min(max(float(c), 0.0), 1.0)
    return 12.92 * c if c <= 0.0031308 else 1.055 * c ** (1 / 2.4) - 0.055


def _int(x: Any, what: str, *, low: int = 0, high: int = 1 << 62) -> int:
    # bool is an int subclass in Python; JSON true is not an index.
    if type(x) is not int or not low <= x <= high:
        raise GLBError(f"{what} must be an integer in [{low}, {high}], got {_short(x)}")
    return x


def _dict(x: Any, what: str) -> dict[str, Any]:
    if not isinstance(x, dict):
        raise GLBError(f"{what} must be a JSON object, got {type(x).__name__}")
    return x


def _list(x: Any, what: str) -> list[Any]:
    if not isinstance(x, list):
        raise GLBError(f"{what} must be a JSON array, got {type(x).__name__}")
    return x


def _short(x: Any) -> str:
    try:
        text = repr(x)
    except RecursionError:
        text = f"<deeply nested {type(x).__name__}>"
    return text if len(text) <= 60 else text[:57] + "..."


@dataclass(frozen=True)
class _Span:
    """One validated accessor: where its elements lie in the binary chunk."""

    start: int  # byte offset in the BIN chunk
    count: int  # elements (vectors for VEC3)
    width: int
    dtype: Any  # little-endian numpy dtype


@dataclass(frozen=True)
class _Prim:
    positions: _Span
    indices: _Span | None
    material: Material


def _parse_json(data: bytes) -> tuple[dict[str, Any], bytes]:
    """The JSON document and the BIN chunk of a GLB 2.0 stream."""
    if len(data) < 20:
        raise GLBError("GLB shorter than its header")
    magic, version, total = struct.unpack_from("<III", data, 0)
    if magic != _GLB_MAGIC or version != 2 or total > len(data) or total < 20:
        raise GLBError("not a GLB 2.0 stream")
    jlen, jtype = struct.unpack_from("<II", data, 12)
    if jtype != _CHUNK_JSON:
        raise GLBError("GLB without a JSON chunk")
    if jlen > min(MAX_JSON_BYTES, total - 20):
        raise GLBError(f"the JSON chunk ({jlen} bytes) is larger than the stream or {MAX_JSON_BYTES} bytes")
    try:
        doc = json.loads(data[20 : 20 + jlen])
    except RecursionError:
        raise GLBError("the glTF JSON is nested too deeply") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise GLBError(f"the glTF JSON does not parse ({exc})") from None
    off = 20 + jlen
    bin_chunk = b""
    if off + 8 <= total:
        blen, btype = struct.unpack_from("<II", data, off)
        if btype == _CHUNK_BIN:
            if off + 8 + blen > total:
                raise GLBError("the BIN chunk runs past the end of the stream")
            bin_chunk = data[off + 8 : off + 8 + blen]
    return _dict(doc, "the glTF document"), bin_chunk


def _material(doc: dict[str, Any], i: int | None) -> Material:
    if i is None:
        return Material()
    mats = _list(doc.get("materials", []), "materials")
    mat = _dict(mats[_int(i, "primitive.material", high=len(mats) - 1)], f"materials[{i}]")
    name = mat.get("name", "")
    if not isinstance(name, str):
        raise GLBError(f"materials[{i}].name must be a string")
    pbr = _dict(mat.get("pbrMetallicRoughness", {}), f"materials[{i}].pbrMetallicRoughness")
    factor = pbr.get("baseColorFactor")
    if factor is None:
        return Material(name=name)
    values = _list(factor, f"materials[{i}].baseColorFactor")
    if len(values) != 4 or not all(type(x) in (int, float) and math.isfinite(x) for x in values):
        raise GLBError(f"materials[{i}].baseColorFactor must be 4 finite numbers")
    r, g, b, a = (float(x) for x in values)
    return Material(
        base_color=(linear_to_srgb(r), linear_to_srgb(g), linear_to_srgb(b), min(max(a, 0.0), 1.0)),
        name=name,
    )


def _plan(doc: dict[str, Any], bin_len: int, max_triangles: int, max_vertices: int) -> list[_Prim]:
    """Validate the document and return what to copy; no binary data is touched."""
    accessors = _list(doc.get("accessors", []), "accessors")
    views = _list(doc.get("bufferViews", []), "bufferViews")
    used_acc: set[int] = set()
    used_view: set[int] = set()

    def span(i: Any, what: str, *, types: tuple[int, ...], kind: str) -> _Span:
        k = _int(i, what, high=len(accessors) - 1)
        if k in used_acc:
            raise GLBError(f"accessor {k} is used more than once (shared accessors are not accepted)")
        used_acc.add(k)
        acc = _dict(accessors[k], f"accessors[{k}]")
        ctype = _int(acc.get("componentType"), f"accessors[{k}].componentType", high=1 << 16)
        if ctype not in types or acc.get("type") != kind:
            raise GLBError(f"accessors[{k}] must be {kind} of component type {types}")
        if "sparse" in acc:
            raise GLBError(f"accessors[{k}] is sparse")
        v = _int(acc.get("bufferView"), f"accessors[{k}].bufferView", high=len(views) - 1)
        if v in used_view:
            raise GLBError(f"bufferView {v} is used by more than one accessor")
        used_view.add(v)
        view = _dict(views[v], f"bufferViews[{v}]")
        if view.get("buffer", 0) != 0 or "byteStride" in view:
            raise GLBError(f"bufferViews[{v}] must be a tightly packed view of buffer 0")
        v_off = _int(view.get("byteOffset", 0), f"bufferViews[{v}].byteOffset")
        v_len = _int(view.get("byteLength"), f"bufferViews[{v}].byteLength")
        if v_off + v_len > bin_len:
            raise GLBError(f"bufferViews[{v}] runs past the binary chunk")
        dtype = np.dtype(_COMPONENT[ctype]).newbyteorder("<")
        width = _WIDTH[kind]
        a_off = _int(acc.get("byteOffset", 0), f"accessors[{k}].byteOffset")
        count = _int(acc.get("count"), f"accessors[{k}].count")
        if a_off + count * width * dtype.itemsize > v_len or a_off % dtype.itemsize:
            raise GLBError(f"accessors[{k}] runs past its bufferView")
        return _Span(v_off + a_off, count, width, dtype)

    prims: list[_Prim] = []
    n_vertices = 0
    n_triangles = 0
    for m, mesh in enumerate(_list(doc.get("meshes", []), "meshes")):
        for p, prim in enumerate(
            _list(_dict(mesh, f"meshes[{m}]").get("primitives", []), f"meshes[{m}].primitives")
        ):
            where = f"meshes[{m}].primitives[{p}]"
            prim = _dict(prim, where)
            attrs = _dict(prim.get("attributes"), f"{where}.attributes")
            mode = _int(prim.get("mode", 4), f"{where}.mode", high=6)
            pos = span(attrs.get("POSITION"), f"{where}.attributes.POSITION", types=(5126,), kind="VEC3")
            idx = (
                span(prim["indices"], f"{where}.indices", types=_INDEX_TYPES, kind="SCALAR")
                if "indices" in prim
                else None
            )
            mat_index = prim.get("material")
            material = _material(doc, mat_index)
            if mode != 4:
                continue  # points and lines carry no surface
            n_vertices += pos.count
            n_triangles += (idx.count if idx is not None else pos.count) // 3
            if n_triangles > max_triangles:
                raise GLBError(f"more than {max_triangles} triangles (the limit)")
            if n_vertices > max_vertices:
                raise GLBError(f"more than {max_vertices} vertices (the limit)")
            prims.append(_Prim(pos, idx, material))
    return prims


def glb_to_mesh(
    data: bytes,
    *,
    source: str = "threejs",
    max_triangles: int = 5_000_000,
    max_vertices: int | None = None,
) -> Mesh:
    """Parse a GLB made by the scaffold (triangle primitives with a float32 POSITION and optional
    indices, each accessor used once) into a Mesh; glTF's linear ``baseColorFactor`` becomes the
    sRGB ``Material.base_color``. ``max_vertices`` defaults to 3 x ``max_triangles``. Raises
    GLBError (a ValueError) on anything malformed or over a limit, before copying binary data."""
    doc, bin_chunk = _parse_json(data)
    limit_v = 3 * max_triangles if max_vertices is None else max_vertices
    prims = _plan(doc, len(bin_chunk), max_triangles, limit_v)
    verts: list[np.ndarray[Any, Any]] = []
    faces: list[np.ndarray[Any, Any]] = []
    face_mat: list[np.ndarray[Any, Any]] = []
    materials: list[Material] = []
    offset = 0
    for prim in prims:
        s = prim.positions
        v = np.frombuffer(bin_chunk, dtype=s.dtype, count=s.count * 3, offset=s.start)
        v = v.reshape(-1, 3).astype(np.float64)
        if prim.indices is not None:
            i = prim.indices
            idx = np.frombuffer(bin_chunk, dtype=i.dtype, count=i.count, offset=i.start).astype(np.int64)
        else:
            idx = np.arange(len(v), dtype=np.int64)
        f = idx[: len(idx) - len(idx) % 3].reshape(-1, 3)
        if f.size and (f.min() < 0 or f.max() >= len(v)):
            raise GLBError("face index out of range")
        verts.append(v)
        faces.append(f + offset)
        face_mat.append(np.full(len(f), len(materials), dtype=np.int32))
        materials.append(prim.material)
        offset += len(v)
    if not verts:
        return Mesh(np.zeros((0, 3)), np.zeros((0, 3), np.int64), np.zeros(0, np.int32), source=source)
    return Mesh(
        vertices=np.concatenate(verts),
        faces=np.concatenate(faces),
        face_material=np.concatenate(face_mat),
        materials=tuple(materials),
        source=source,
    )


__all__ = ["MAX_JSON_BYTES", "GLBError", "glb_to_mesh", "linear_to_srgb"]
