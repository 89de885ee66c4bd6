"""The committed generated protobuf modules match the .proto files."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from examples.ecom.proto import generate

pytestmark = pytest.mark.timeout(60)


def test_generated_modules_are_fresh() -> None:
    """Regenerating from the .proto files reproduces the committed modules byte for byte."""
    stale = generate.stale_files()
    assert not stale, (
        f"stale generated modules {stale}: run `make proto` "
        "(python -m examples.ecom.proto.generate) and commit the result"
    )


def test_check_detects_stale_copy(tmp_path: Path) -> None:
    """The freshness check reports an edited, a missing and a left-over generated file."""
    proto_dir = tmp_path / "examples" / "ecom" / "proto"
    shutil.copytree(generate.PROTO_DIR, proto_dir, ignore=shutil.ignore_patterns("__pycache__"))
    assert generate.stale_files(proto_dir, tmp_path) == []
    with (proto_dir / "user_pb2.py").open("a") as f:
        f.write("# edited\n")
    (proto_dir / "order_pb2.pyi").unlink()
    (proto_dir / "gone_pb2.py").write_text("")
    assert generate.stale_files(proto_dir, tmp_path) == [
        "gone_pb2.py",
        "order_pb2.pyi",
        "user_pb2.py",
    ]


def test_check_command_exit_status(capsys: pytest.CaptureFixture[str]) -> None:
    """`python -m examples.ecom.proto.generate --check` exits 0 on the committed tree."""
    assert generate.main(["--check"]) == 0
    assert "up to date" in capsys.readouterr().out
