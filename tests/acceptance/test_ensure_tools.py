"""scripts/ensure-tools.sh, which `make test` runs first: silent when the tools are there,
installs what is missing with apt-get, and says in one line what to do when it cannot.

The script runs for real, on a PATH of its own: stand-ins for promtool, apt-get and id decide
what is "installed", what the package manager does and who is running it, so nothing on this
machine is installed or removed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "ensure-tools.sh"
TOOLS = ("promtool", "prometheus", "chromium", "wrk")


def stub(directory: Path, name: str, body: str) -> None:
    path = directory / name
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(0o755)


@pytest.fixture
def bin_dir(tmp_path: Path) -> Path:
    """A PATH with the shell utilities the script uses, and none of the tools."""
    directory = tmp_path / "bin"
    directory.mkdir()
    for name in ("bash", "env", "mktemp", "rm", "tail", "cat", "chmod", "id"):
        found = shutil.which(name)
        assert found is not None, name
        (directory / name).symlink_to(found)
    return directory


def run(bin_dir: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(SCRIPT)],
        env={"PATH": str(bin_dir), "HOME": os.environ.get("HOME", "/root")},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def as_user(bin_dir: Path, uid: int) -> None:
    (bin_dir / "id").unlink()
    stub(bin_dir, "id", f'[ "$1" = "-u" ] && echo {uid}')


def test_silent_and_successful_when_every_tool_is_there(bin_dir: Path) -> None:
    for tool in TOOLS:
        stub(bin_dir, tool, "exit 0")
    stub(bin_dir, "apt-get", "echo apt-get must not run >&2; exit 1")
    result = run(bin_dir)
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")


def test_installs_the_missing_package_once_non_interactively(bin_dir: Path) -> None:
    calls = bin_dir.parent / "apt-get.calls"
    # apt-get "installs" the package by putting its two commands on PATH.
    creates = "; ".join(
        f"printf '#!/bin/sh\\n' > {bin_dir}/{tool}; chmod +x {bin_dir}/{tool}" for tool in TOOLS
    )
    stub(
        bin_dir,
        "apt-get",
        f'echo "$DEBIAN_FRONTEND $*" >> {calls}\n[ "$1" = install ] && {{ {creates}; }}\nexit 0',
    )
    as_user(bin_dir, 0)

    first = run(bin_dir)
    assert first.returncode == 0, first.stderr
    assert calls.read_text().splitlines() == [
        "noninteractive update -qq",
        "noninteractive install -y -qq --no-install-recommends prometheus chromium wrk",
    ]
    assert first.stderr.splitlines() == [
        "ensure-tools: installing prometheus chromium wrk for promtool prometheus chromium wrk",
        "ensure-tools: installed prometheus chromium wrk",
    ]

    again = run(bin_dir)
    assert (again.returncode, again.stderr) == (0, "")
    assert len(calls.read_text().splitlines()) == 2  # nothing installed the second time


def test_says_what_to_install_when_not_root(bin_dir: Path) -> None:
    stub(bin_dir, "apt-get", "echo apt-get must not run >&2; exit 1")
    as_user(bin_dir, 1000)  # and no sudo on PATH
    result = run(bin_dir)
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        "ensure-tools: missing promtool prometheus chromium wrk (Debian: apt-get install "
        "--no-install-recommends prometheus chromium wrk): not root and no password-less sudo; "
        "install them as root, then run make test again"
    ]


def test_says_so_when_the_install_fails(bin_dir: Path) -> None:
    stub(
        bin_dir,
        "apt-get",
        'echo "W: Failed to fetch http://deb.debian.org/  Temporary failure resolving" >&2\n'
        '[ "$1" = install ] && { echo "E: Unable to locate package prometheus" >&2; exit 100; }\n'
        "exit 0",
    )
    as_user(bin_dir, 0)
    result = run(bin_dir)
    assert result.returncode == 1
    lines = result.stderr.splitlines()
    assert lines[0] == (
        "ensure-tools: installing prometheus chromium wrk for promtool prometheus chromium wrk"
    )
    assert lines[1] == (
        "ensure-tools: could not install prometheus chromium wrk (no network or no package "
        "mirror?); "
        "last lines of apt-get:"
    )
    assert "E: Unable to locate package prometheus" in lines[2:]
