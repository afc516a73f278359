"""runtime/'s scripts on machines unlike this one: apt sources in either layout (or none) for the
Debian mirror, and a failing step always said in one line."""
import os
import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
RUNTIME = ROOT / "runtime"
DEFAULT = "http://deb.debian.org/debian"

DEB822 = """Types: deb
# http://snapshot.debian.org/archive/debian/20250520T000000Z
URIs: http://mirror.example/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://security.example/debian-security
Suites: bookworm-security
Components: main
"""
CLASSIC = """# the classic one-line format
deb-src http://src.example/debian bookworm main
deb [arch=amd64 signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://classic.example/debian bookworm main
deb http://classic.example/debian-security bookworm-security main
"""

LAYOUTS = {
    "deb822 only (Debian 12's images)": ({"sources.list.d/debian.sources": DEB822}, "http://mirror.example/debian"),
    "classic sources.list only": ({"sources.list": CLASSIC}, "http://classic.example/debian"),
    "both: sources.list is read first": ({"sources.list": CLASSIC, "sources.list.d/debian.sources": DEB822},
                                         "http://classic.example/debian"),
    "neither: the documented default": ({}, DEFAULT),
    "an empty sources.list and deb822": ({"sources.list": "# nothing\n", "sources.list.d/debian.sources": DEB822},
                                         "http://mirror.example/debian"),
    "a .list in sources.list.d": ({"sources.list.d/local.list": CLASSIC}, "http://classic.example/debian"),
    "a disabled stanza, a mirror+file one, then several URIs": ({"sources.list.d/debian.sources": (
        "Types: deb\nURIs: http://off.example/debian\nSuites: bookworm\nEnabled: no\n\n"
        "Types: deb\nURIs: mirror+file:///etc/apt/mirrors/debian.list\nSuites: bookworm\n\n"
        "types: deb-src deb\nuris: cdrom:/x/\n  https://second.example/debian\nsuites: bookworm\n")},
        "https://second.example/debian"),
    "security and updates only: the default": ({"sources.list.d/debian.sources": DEB822.split("\n\n")[1]}, DEFAULT),
    "files in name order, deb822 after a .list": ({"sources.list.d/a.sources": DEB822.replace("mirror", "a"),
                                                   "sources.list.d/b.list": CLASSIC}, "http://a.example/debian"),
}


def mirror(apt_dir: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(RUNTIME / "debian-mirror.sh"), str(apt_dir)], capture_output=True, text=True,
                          timeout=30)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_the_mirror_lookup_reads_every_apt_layout(tmp_path, layout):
    files, expected = LAYOUTS[layout]
    (tmp_path / "sources.list.d").mkdir()
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    result = mirror(tmp_path)
    assert result.returncode == 0 and result.stdout == expected + "\n", (result.stdout, result.stderr)
    if expected == DEFAULT:  # a fallback is never silent
        assert len(result.stderr.splitlines()) == 1 and DEFAULT in result.stderr
    else:
        assert result.stderr == ""


def test_the_mirror_lookup_without_any_apt_folder_says_it_uses_the_default(tmp_path):
    result = mirror(tmp_path / "no-such-dir")
    assert result.returncode == 0 and result.stdout.strip() == DEFAULT
    assert "no enabled http(s) Debian release source" in result.stderr


def _stubs(folder: Path, **scripts: str) -> dict:
    """PATH with stand-ins for the named commands (each a shell body), then the system's."""
    folder.mkdir()
    for name, body in scripts.items():
        (folder / name).write_text(f"#!/bin/sh\n{body}\n")
        (folder / name).chmod(0o755)
    return {**os.environ, "PATH": f"{folder}:/usr/sbin:/usr/bin:/sbin:/bin"}


def test_docker_base_on_a_deb822_machine_uses_its_mirror(tmp_path):
    """The path that failed on a fresh Debian 12: docker-base.sh finds the mirror and reaches debootstrap
    (a stand-in here, which records its arguments), whatever /etc/apt holds on this machine."""
    env = _stubs(tmp_path / "bin", docker="exit 1", debootstrap=f'echo "$@" > {tmp_path}/args; exit 0')
    apt = tmp_path / "apt"
    (apt / "sources.list.d").mkdir(parents=True)
    (apt / "sources.list.d" / "debian.sources").write_text(DEB822)
    script = (RUNTIME / "docker-base.sh").read_text().replace('debian-mirror.sh")', f'debian-mirror.sh" {apt})')
    copy = tmp_path / "runtime"
    copy.mkdir()
    for name in ("debian-mirror.sh", "debian-mirror.awk", "fail-line.sh"):
        (copy / name).write_bytes((RUNTIME / name).read_bytes())
        (copy / name).chmod(0o755)
    (copy / "docker-base.sh").write_text(script)
    (copy / "docker-base.sh").chmod(0o755)
    result = subprocess.run([str(copy / "docker-base.sh")], capture_output=True, text=True, env=env, timeout=30)
    # debootstrap's stand-in succeeded; `docker import` (exit 1, silent) then fails, named in one line
    assert (tmp_path / "args").read_text().split()[-1] == "http://mirror.example/debian", result.stderr
    assert result.returncode != 0
    assert result.stderr.splitlines()[-1].startswith("docker-base.sh: failed at line "), result.stderr
    assert "docker import" in result.stderr.splitlines()[-1]


def test_a_silent_failing_command_is_named_in_one_line(tmp_path):
    """grep's exit 2 inside a command substitution under set -e: the failure that used to end
    docker-base.sh with no word."""
    script = tmp_path / "s.sh"
    script.write_text(f'#!/usr/bin/env bash\nset -Eeuo pipefail\n. {RUNTIME / "fail-line.sh"}\n'
                      'f() { false; }\nx=$(grep -h a /no/such/file 2>/dev/null | head -n 1)\necho "$x"\n')
    result = subprocess.run(["bash", str(script)], capture_output=True, text=True, timeout=30)
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert re.match(r"s\.sh: failed at line 5: `x=\$\(grep .*` exited 2$", result.stderr.strip()), result.stderr
    script.write_text(script.read_text().replace("x=$(", "f\nx=$("))
    result = subprocess.run(["bash", str(script)], capture_output=True, text=True, timeout=30)
    assert result.stderr.strip() == "s.sh: failed at line 4: `false` exited 1", result.stderr


def test_every_runtime_script_says_why_it_fails():
    """Each bash script sources fail-line.sh right after its set line; each sh one has an EXIT trap
    naming its step; none sets an EXIT trap that would replace fail-line's."""
    scripts = [p for p in RUNTIME.glob("*.sh") if p.name != "fail-line.sh"]
    assert len(scripts) >= 9
    for path in scripts:
        text = path.read_text()
        if text.startswith("#!/usr/bin/env bash"):
            assert 'set -Eeuo pipefail\n. "$(dirname "$0")/fail-line.sh"\n' in text or \
                'set -Eeuo pipefail\nhere=$(dirname "$0")\n. "$here/fail-line.sh"\n' in text, path.name
            assert not re.search(r"^\s*trap\s", text, re.M), f"{path.name}: use at_exit (a trap replaces fail-line's)"
        elif path.name != "entrypoint.sh":  # (entrypoint: one exec, whose error sh prints)
            assert text.startswith("#!/bin/sh") and "' EXIT" in text and "step=" in text, path.name
