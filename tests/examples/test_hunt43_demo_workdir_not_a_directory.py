"""``meshkit demo --workdir`` naming something that cannot be the work directory.

``--workdir`` naming an existing file (or a path under one) ended in a Python traceback,
``FileExistsError: [Errno 17] File exists`` from ``Path.mkdir``; and ``--workdir ""``
(``--workdir "$DIR"`` with the variable unset) ran the whole stack in the working
directory, as ``Path("")`` is ``.``: its CA key, databases, registry and logs strewn
there and kept (``" "`` made a directory named by a blank). They are now usage errors:
status 2, argparse's one line naming ``--workdir``, the value quoted and why, nothing
started or made and the file left as it was."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from examples.ecom import demo


@pytest.mark.parametrize("kind", ["file", "under-a-file", "empty", "blank"],
                         ids=["file", "under-a-file", "empty", "blank"])
def test_a_workdir_that_cannot_be_one_is_a_usage_error(
        kind: str, tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    async def no_stack(args: argparse.Namespace) -> int:
        raise AssertionError(f"the demo ran in {args.workdir!r}")

    monkeypatch.setattr(demo, "run_until_terminated", no_stack)  # never a real stack
    monkeypatch.chdir(tmp_path)  # what an empty --workdir would have used
    afile = tmp_path / "afile"
    afile.write_text("mine\n")
    value = {"file": str(afile), "under-a-file": str(afile / "wd"), "empty": "",
             "blank": " "}[kind]
    with pytest.raises(SystemExit) as info:
        demo.main(["--workdir", value])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "--workdir" in err and repr(value) in err, err
    assert "Traceback" not in err
    assert afile.read_text() == "mine\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"]
