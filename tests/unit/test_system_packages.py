"""scripts/system-packages.sh, run for real on a PATH built for each case: silent when nothing is missing, and when
something is and no package manager can install it, one line naming what and how (never a half-done install)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "system-packages.sh"
BASICS = ("bash", "id", "env")


def _path(tmp_path: Path, present: tuple[str, ...]) -> Path:
    """A folder for PATH: the shell's basics, and a stub for each program in ``present``."""
    folder = tmp_path / "bin"
    folder.mkdir()
    for name in BASICS:
        found = shutil.which(name)
        assert found is not None, name
        (folder / name).symlink_to(found)
    for name in present:
        stub = folder / name
        stub.write_text("#!/bin/sh\nexit 0\n")
        stub.chmod(0o755)
    return folder


def _run(folder: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(folder / "bash"), str(SCRIPT), *args], env={"PATH": str(folder)},
                          capture_output=True, text=True, timeout=60, check=False)  # fmt: skip


def test_nothing_missing_is_silent(tmp_path: Path) -> None:
    result = _run(_path(tmp_path, ("redis-server", "java", "mvn")))
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")


def test_the_browser_is_asked_for_only_with_browser(tmp_path: Path) -> None:
    folder = _path(tmp_path, ("redis-server", "java", "mvn"))
    assert _run(folder).returncode == 0
    result = _run(folder, "--browser")
    assert result.returncode == 1
    assert "missing chromium fonts-liberation" in result.stderr


def test_without_a_package_manager_it_names_what_is_missing(tmp_path: Path) -> None:
    result = _run(_path(tmp_path, ("java",)))
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "missing redis-server maven (Debian package names): install them with your system's package manager"
    ]
