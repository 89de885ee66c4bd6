"""Regenerate (or check) the Python modules of the example's ``.proto`` files.

Usage, from the repository root::

    python -m examples.ecom.proto.generate          # rewrite the generated modules
    python -m examples.ecom.proto.generate --check  # exit 1 if they are stale

protoc runs with the repository root as its include path, so the generated
modules import each other package-qualified (``from examples.ecom.proto import
...``) and are importable as ``examples.ecom.proto.user_pb2`` and so on. The
output depends on the grpcio-tools version, which the project pins.
"""

from __future__ import annotations

import argparse
import filecmp
import sys
import tempfile
from importlib import resources
from pathlib import Path

PROTO_DIR = Path(__file__).resolve().parent
REPO_ROOT = PROTO_DIR.parents[2]
GENERATED_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")


def proto_files(proto_dir: Path = PROTO_DIR) -> list[Path]:
    """Return the ``.proto`` files of ``proto_dir``, sorted by name."""
    return sorted(proto_dir.glob("*.proto"))


def generated_names(proto_dir: Path = PROTO_DIR) -> list[str]:
    """Return the names of the files protoc makes for the ``.proto`` files of ``proto_dir``."""
    return [p.stem + s for p in proto_files(proto_dir) for s in GENERATED_SUFFIXES]


def generate(out_root: Path, proto_dir: Path = PROTO_DIR, repo_root: Path = REPO_ROOT) -> Path:
    """Run protoc on ``proto_dir``'s ``.proto`` files, writing below ``out_root``.

    ``out_root`` stands for ``repo_root``: the modules land in
    ``out_root / proto_dir.relative_to(repo_root)``, which is returned.
    Raises ``RuntimeError`` if protoc fails.
    """
    from grpc_tools import protoc  # imported lazily: a dev-only dependency

    well_known = resources.files("grpc_tools") / "_proto"
    protos = proto_files(proto_dir)
    if not protos:
        raise RuntimeError(f"no .proto files in {proto_dir}")
    out_root.mkdir(parents=True, exist_ok=True)
    args = [
        "grpc_tools.protoc",
        f"--proto_path={repo_root}",
        f"--proto_path={well_known}",
        f"--python_out={out_root}",
        f"--pyi_out={out_root}",
        f"--grpc_python_out={out_root}",
        *(str(p) for p in protos),
    ]
    if protoc.main(args) != 0:
        raise RuntimeError(f"protoc failed on {', '.join(p.name for p in protos)}")
    return out_root / proto_dir.relative_to(repo_root)


def stale_files(proto_dir: Path = PROTO_DIR, repo_root: Path = REPO_ROOT) -> list[str]:
    """Regenerate into a temporary directory and compare with the files in ``proto_dir``.

    Returns the names of generated files that are missing, differ, or are left
    over without a ``.proto``; an empty list means everything is fresh.
    """
    with tempfile.TemporaryDirectory() as tmp:
        fresh_dir = generate(Path(tmp), proto_dir, repo_root)
        expected = set(generated_names(proto_dir))
        present = {p.name for p in proto_dir.iterdir() if p.name.endswith(GENERATED_SUFFIXES)}
        stale = sorted(present - expected)
        for name in sorted(expected):
            ours = proto_dir / name
            if not ours.exists() or not filecmp.cmp(ours, fresh_dir / name, shallow=False):
                stale.append(name)
        return stale


def write(proto_dir: Path = PROTO_DIR, repo_root: Path = REPO_ROOT) -> list[str]:
    """Regenerate the modules in ``proto_dir`` in place; return the names written."""
    with tempfile.TemporaryDirectory() as tmp:
        fresh_dir = generate(Path(tmp), proto_dir, repo_root)
        names = generated_names(proto_dir)
        for name in names:
            (proto_dir / name).write_bytes((fresh_dir / name).read_bytes())
        return names


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the exit status (1: stale, with ``--check``)."""
    parser = argparse.ArgumentParser(
        prog="python -m examples.ecom.proto.generate",
        description="Regenerate the example's protobuf/gRPC modules.",
    )
    parser.add_argument(
        "--check",
        action="store_true",
        help="write nothing; exit 1 if the committed modules differ from a fresh run",
    )
    opts = parser.parse_args(argv)
    if opts.check:
        stale = stale_files()
        if stale:
            print(
                f"stale generated protobuf modules in {PROTO_DIR.relative_to(REPO_ROOT)}: "
                + ", ".join(stale)
                + "\nregenerate with `make proto` (python -m examples.ecom.proto.generate)"
                " and commit them",
                file=sys.stderr,
            )
            return 1
        print("generated protobuf modules are up to date")
        return 0
    for name in write():
        print(f"wrote {PROTO_DIR.relative_to(REPO_ROOT) / name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
