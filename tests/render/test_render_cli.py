"""``gen3deval render``: files written, exit codes, one-line errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import trimesh
from PIL import Image

from gen3deval.cli import main


@pytest.fixture(scope="module")
def mesh_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    p = tmp_path_factory.mktemp("mesh") / "torus.glb"
    trimesh.creation.torus(major_radius=1.0, minor_radius=0.3).export(p)
    return p


def test_render_writes_eight_views_and_cameras(
    mesh_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:  # type: ignore[type-arg]
    out = tmp_path / "out"
    assert main(["render", str(mesh_file), "--rig", "trellis8", "--out", str(out), "--size", "64"]) == 0
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted([f"view_{i:03d}.png" for i in range(8)] + ["cameras.json"])
    img = np.asarray(Image.open(out / "view_000.png"))
    assert img.shape == (64, 64, 3) and (img == 255).any() and (img < 200).any()
    cams = json.loads((out / "cameras.json").read_text())
    assert [c["yaw"] for c in cams] == [0, 45, 90, 135, 180, 225, 270, 315]
    assert all(np.allclose(np.array(c["c2w"])[3], [0, 0, 0, 1]) for c in cams)
    printed = capsys.readouterr().out
    assert str(out / "view_007.png") in printed and "cameras.json" in printed


def test_render_passes(mesh_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "p"
    args = ["render", str(mesh_file), "--rig", "turntable:3", "--out", str(out), "--size", "48", "--passes"]
    assert main([*args, "--material", "grey", "--backend", "gl"]) == 0
    for i in range(3):
        depth = np.load(out / f"depth_{i:03d}.npy")
        alpha = np.asarray(Image.open(out / f"alpha_{i:03d}.png"))
        normal = np.asarray(Image.open(out / f"normal_{i:03d}.png"))
        rgb = np.asarray(Image.open(out / f"view_{i:03d}.png"))
        assert depth.shape == alpha.shape == (48, 48) and depth.dtype == np.float32
        assert normal.shape == rgb.shape == (48, 48, 3)
        fg = alpha == 255
        assert fg.any() and np.isfinite(depth[fg]).all() and np.isinf(depth[alpha == 0]).all()
        assert (normal[alpha == 0] == 0).all()
        n = normal[fg].astype(float) / 127.5 - 1.0  # decodes to unit vectors
        assert np.allclose(np.linalg.norm(n, axis=1), 1.0, atol=0.03)
        g = rgb[fg].astype(int)  # grey material
        assert (g[:, 0] == g[:, 1]).all() and (g[:, 1] == g[:, 2]).all()


def test_render_raycast_backend_and_up_z(mesh_file: Path, tmp_path: Path) -> None:
    obj = tmp_path / "tall.obj"
    trimesh.creation.box(extents=(0.2, 0.2, 1.0)).export(obj)  # tall along Z in the file
    out_y, out_z = tmp_path / "y", tmp_path / "z"
    for up, out in (("y", out_y), ("z", out_z)):
        assert main(["render", str(obj), "--rig", "turntable:1", "--out", str(out), "--size", "64",
                     "--backend", "raycast", "--up", up]) == 0  # fmt: skip

    # --up z stands the box up: its silhouette is tall; as stored (+Y up) it lies along the view axis.
    def extent(p: Path) -> tuple[int, int]:
        rows, cols = np.nonzero(np.asarray(Image.open(p)).min(axis=2) < 250)
        return int(np.ptp(rows)), int(np.ptp(cols))

    h_y, _w_y = extent(out_y / "view_000.png")
    h_z, w_z = extent(out_z / "view_000.png")
    assert h_z > 2 * w_z and h_z > h_y


def test_missing_file_exits_2_with_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:  # type: ignore[type-arg]
    missing = tmp_path / "nope.glb"
    assert main(["render", str(missing), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(missing) in err
    assert not (tmp_path / "o").exists()
    assert main(["render", str(missing), "--rig", "nine", "--out", str(tmp_path / "o")]) == 2
    assert "trellis8" in capsys.readouterr().err


@pytest.mark.parametrize("size", ["0", "8", "15", "4097", "100000"])
def test_size_outside_16_to_4096_is_refused_before_rendering(
    mesh_file: Path, tmp_path: Path, size: str, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "o"
    assert main(["render", str(mesh_file), "--out", str(out), "--size", size]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"gen3deval render: error: --size must be between 16 and 4096 pixels, got {size}"
    assert not out.exists()


def test_smallest_size_renders(mesh_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "o"
    assert main(["render", str(mesh_file), "--rig", "turntable:1", "--out", str(out), "--size", "16"]) == 0
    assert Image.open(out / "view_000.png").size == (16, 16)


def test_console_entry_point(mesh_file: Path, tmp_path: Path) -> None:
    """The installed ``gen3deval`` script, as a user runs it (one subprocess)."""
    exe = Path(sys.executable).with_name("gen3deval")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "gen3deval"]
    res = subprocess.run(
        [*cmd, "render", str(tmp_path / "missing.obj"), "--out", str(tmp_path)],
        capture_output=True, text=True, env={**os.environ}, timeout=120,
    )  # fmt: skip
    assert res.returncode == 2
    assert "missing.obj" in res.stderr and "Traceback" not in res.stderr
