"""``gen3deval render MESH --rig trellis8 --out DIR``: render a mesh file from a camera rig."""

from __future__ import annotations

import argparse
from pathlib import Path

# Below 16 px nothing is recognisable; above 4096 px a 8-view rig needs GBs and most GL drivers refuse.
MIN_SIZE, MAX_SIZE = 16, 4096

HELP = "render a mesh from a camera rig to PNGs (+ cameras.json; depth/normal/alpha passes on request)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("mesh", metavar="MESH", help="mesh file (GLB/glTF/OBJ/PLY/STL/OFF)")
    parser.add_argument(
        "--rig", default="trellis8", help="camera rig: trellis8, ref or turntable:N (default trellis8)"
    )
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder (created if missing)")
    parser.add_argument(
        "--size", type=int, default=512, help="image width and height in pixels, 16..4096 (default 512)"
    )
    parser.add_argument(
        "--material", choices=("asset", "grey"), default="asset", help="asset colours or one grey"
    )
    parser.add_argument(
        "--passes", action="store_true", help="also write depth_*.npy, normal_*.png, alpha_*.png"
    )
    parser.add_argument(
        "--backend", choices=("auto", "gl", "raycast"), default="auto", help="renderer (default auto)"
    )
    parser.add_argument(
        "--up", choices=("y", "z"), default="y", help="up axis of OBJ/PLY/STL/OFF files (default y)"
    )
    parser.add_argument(
        "--samples", type=int, default=0, help="MSAA samples for the GL backend (default 0: none)"
    )


def run(args: argparse.Namespace) -> int:
    from gen3deval.errors import ConfigError
    from gen3deval.mesh.io import load_mesh
    from gen3deval.render import Renderer, rig, write_views

    if not MIN_SIZE <= args.size <= MAX_SIZE:
        raise ConfigError(f"--size must be between {MIN_SIZE} and {MAX_SIZE} pixels, got {args.size}")
    if args.samples < 0:
        raise ConfigError(f"--samples must be >= 0, got {args.samples}")
    if Path(args.out).exists() and not Path(args.out).is_dir():
        raise ConfigError(f"--out {args.out}: not a folder")
    cameras = rig(args.rig, args.size)  # check the rig before loading the mesh
    mesh = load_mesh(Path(args.mesh), up=args.up)
    renderer = Renderer(size=args.size, backend=args.backend, samples=args.samples)
    views = renderer.render(mesh, cameras, material=args.material)
    paths = write_views(views, args.out, passes=args.passes)
    for p in paths:
        print(p)
    info = renderer.info
    print(
        f"rendered {len(views)} views of {args.mesh} ({mesh.n_faces} faces) with {info.get('renderer')}"
        f" {info.get('gl_renderer', '')}".rstrip()
        + f" -> {args.out}"
    )
    return 0
