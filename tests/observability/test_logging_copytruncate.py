"""configure_logging() appends to a stderr that is a regular file, so logrotate's
copytruncate leaves no hole of NUL bytes.

With stderr a file opened without O_APPEND (``prog 2> app.log``, systemd's
``StandardError=file:``), a line written after logrotate's ``copytruncate`` emptied the
file went at the descriptor's old offset: the file began with as many NUL bytes as had
been cut (measured: 198 NULs before the next line), garbage to every log reader.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

_SCRIPT = textwrap.dedent("""
    import os, sys
    from meshkit._log import get_logger
    from meshkit.observability import configure_logging
    configure_logging("INFO", json=True)
    log = get_logger("meshkit.t")
    log.info("before the rotation", pad="x" * 100)
    os.truncate(sys.argv[1], 0)  # logrotate's copytruncate
    log.info("after the rotation")
""")


def test_lines_after_a_copytruncate_start_the_emptied_file(tmp_path: Path) -> None:
    """The file holds the line logged after the truncation, from its first byte."""
    path = tmp_path / "app.log"
    with path.open("w") as stderr:  # O_WRONLY | O_TRUNC, as a shell's 2> opens it
        subprocess.run([sys.executable, "-c", _SCRIPT, str(path)], stderr=stderr,
                       timeout=30, check=True)
    data = path.read_bytes()
    assert b"\0" not in data and data.startswith(b'{"event":"after the rotation"'), data[:80]
