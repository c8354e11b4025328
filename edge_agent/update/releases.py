"""Releases side by side on the gateway: unpack, install, switch ``current``, keep at most N.

Standard library only (the supervisor switches back with it, without the network)::

    ROOT/releases/0.1.0/venv/       a virtualenv with that release and its dependencies
    ROOT/releases/0.1.0/agent.log   the release's output under the supervisor (bounded)
    ROOT/releases/0.2.0/...
    ROOT/current -> releases/0.2.0  switched atomically: a new link under a temporary name,
                                    then rename over ``current`` (one atomic syscall)
    ROOT/downloads/<sha256>.part    an artefact being downloaded (resumed after a cut)

Disk budget (docs/updates.md): a release's virtualenv is about 3x its wheelhouse (~35 MB for
a ~11 MB wheelhouse); at most ``KEEP`` releases are kept (the current one, the previous one to
fall back to, and one more), plus one wheelhouse download while staging: about
KEEP x 35 MB + 11 MB.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tarfile
from pathlib import Path

KEEP = 3
CURRENT = "current"
INSTALL_TIMEOUT_S = 600.0


class InstallError(Exception):
    """An unpack or install step failed (raised to the staging code, which reports it)."""


def releases_dir(root: Path) -> Path:
    """Where releases live."""
    return root / "releases"


def release_dir(root: Path, version: str) -> Path:
    """The directory of release ``version``."""
    return releases_dir(root) / version


def venv_python(root: Path, version: str) -> Path:
    """The interpreter of a release's virtualenv."""
    return release_dir(root, version) / "venv" / "bin" / "python"


def installed(root: Path, version: str) -> bool:
    """True if the release was installed to the end (its marker written last)."""
    return (release_dir(root, version) / ".installed").exists()


def current_version(root: Path) -> str | None:
    """The release ``current`` points at (None if no link)."""
    try:
        target = os.readlink(root / CURRENT)
    except FileNotFoundError:
        return None
    return Path(target).name


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def switch_current(root: Path, version: str) -> None:
    """Point ``current`` at ``version`` atomically (symlink to a temp name, rename over)."""
    if not installed(root, version):
        raise InstallError(f"release {version} is not installed; not switching to it")
    tmp = root / f".{CURRENT}.new"
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    os.symlink(Path("releases") / version, tmp)
    os.replace(tmp, root / CURRENT)
    _fsync_dir(root)


def unpack(tar_path: Path, dest: Path) -> list[Path]:
    """Extract a wheelhouse tar into ``dest``: plain ``*.whl`` files only, nothing outside."""
    dest.mkdir(parents=True, exist_ok=True)
    out = []
    with tarfile.open(tar_path, "r:") as tar:
        for member in tar.getmembers():
            name = member.name
            if (not member.isfile() or "/" in name or not name.endswith(".whl")
                    or name.startswith(".")):
                raise InstallError(f"wheelhouse holds {name!r}: only plain *.whl files")
            src = tar.extractfile(member)
            assert src is not None  # a regular file, checked above
            with src, (dest / name).open("wb") as fh:
                shutil.copyfileobj(src, fh)
            out.append(dest / name)
    return out


def install(root: Path, version: str, wheels: Path, *, base_python: str) -> None:
    """Create ``releases/<version>/venv`` and install the release from ``wheels``, offline.

    pip itself comes from the wheelhouse (run from its wheel), so the gateway needs neither a
    package index nor a pip of its own. A half-done install is removed first and redone.
    """
    rdir = release_dir(root, version)
    if installed(root, version):
        return
    shutil.rmtree(rdir / "venv", ignore_errors=True)
    rdir.mkdir(parents=True, exist_ok=True)
    pips = sorted(wheels.glob("pip-*.whl"))
    if not pips:
        raise InstallError("the wheelhouse holds no pip wheel to install with")
    _run([base_python, "-m", "venv", "--without-pip", str(rdir / "venv")], "creating the venv")
    py = str(rdir / "venv" / "bin" / "python")
    # -I: isolated (no cwd, no PYTHONPATH, no user site), so only the new venv is seen
    # --no-compile: bytecode is written on first import instead (5 s less on a small CPU)
    _run([py, "-I", str(pips[-1] / "pip"), "install", "-q", "--no-index", "--no-cache-dir",
          "--no-compile",
          "--disable-pip-version-check", "--find-links", str(wheels),
          f"edge-agent=={version}"], f"installing edge-agent {version}")
    _run([py, "-I", "-c", "import edge_agent.fastpath._codec, edge_agent.cli"],
         "importing the installed release")
    marker = rdir / ".installed"
    marker.write_bytes(version.encode())
    _fsync_dir(rdir)


def _run(cmd: list[str], what: str) -> None:
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, check=False,
                              timeout=INSTALL_TIMEOUT_S)
    except subprocess.TimeoutExpired as exc:
        raise InstallError(f"{what}: no result within {INSTALL_TIMEOUT_S:.0f} s") from exc
    if done.returncode != 0:
        tail = " | ".join((done.stderr or done.stdout).strip().splitlines()[-5:])
        raise InstallError(f"{what} failed (exit {done.returncode}): {tail}")


def prune(root: Path, keep_versions: set[str], keep: int = KEEP) -> list[str]:
    """Remove the oldest releases beyond ``keep``, never one in ``keep_versions``."""
    cur = current_version(root)
    protected = {v for v in (*keep_versions, cur) if v}
    entries = [p for p in releases_dir(root).iterdir() if p.is_dir()] \
        if releases_dir(root).is_dir() else []

    def order(p: Path) -> tuple[int, ...]:
        try:
            return tuple(int(x) for x in p.name.split("."))
        except ValueError:
            return (-1,)

    entries.sort(key=order)
    removed = []
    while len(entries) > keep:
        victim = next((p for p in entries if p.name not in protected), None)
        if victim is None:
            break
        entries.remove(victim)
        shutil.rmtree(victim, ignore_errors=True)
        removed.append(victim.name)
    return removed
