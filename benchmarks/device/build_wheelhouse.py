"""Build the wheelhouse that the device machine needs for gptune: exactly what its image lacks.

    python benchmarks/device/build_wheelhouse.py        # writes benchmarks/device/wheels/ (git-ignored)
    python benchmarks/device/build_wheelhouse.py --digest   # prints the digest of gptune's sources (run.sh)
    python benchmarks/device/build_wheelhouse.py --plan --metadata TABLE.json   # the plan as JSON, offline

The device image (``image.txt`` beside this file: Python 3.12 and its packages, some at known versions) has
torch, transformers, accelerate, peft ... but no ``datasets`` and no ``evaluate``, and nothing can be fetched
there. This script

1. builds gptune's wheel from this checkout;
2. walks its requirements (and theirs, for what it carries), markers read for CPython 3.12 on x86-64 Linux,
   and decides for each package: **image** (the image has it at a version that fits, or at an unread one
   under no version range), **carry** (the image lacks it, or has a version outside the range), or
   **fallback** (the image has it at an unread version and something asks for a range: a pure-Python wheel
   travels, which ``pip`` installs only if the image's version fails the range; a compiled one travels only
   when ``--with NAME`` asks (pyarrow is 53 MiB), else the package is listed as **unverified**);
3. downloads what travels, ``--no-deps``, for CPython 3.12 manylinux x86-64, at the versions CI tests
   (``constraints.txt``), so the device runs what was tested here;
4. checks that the wheels plus the working tree that travels (tracked and untracked-not-ignored files) plus
   any other ``--carry`` paths fit the device's 64 MiB, and writes ``PLAN.txt`` (what stays and why),
   ``plan.json`` and ``SOURCE_DIGEST`` (so ``run.sh`` can tell a wheel older than the sources).

A carried package's requirements are followed; a fallback's are not (the image has the package, so it has
what the package needs, at the image's versions). Needs pip and network to PyPI here, nothing on the device.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from email.parser import Parser
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
WHEELS = HERE / "wheels"
LIMIT = 64 * 2**20  # what travels to the device machine in one call: working tree + carried paths
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64",
             "manylinux1_x86_64")
# the device's interpreter, for environment markers (python_version, sys_platform, ...)
DEVICE_ENV = {"python_version": "3.12", "python_full_version": "3.12.3", "implementation_name": "cpython",
              "implementation_version": "3.12.3", "platform_python_implementation": "CPython",
              "sys_platform": "linux", "platform_system": "Linux", "platform_machine": "x86_64", "os_name": "posix"}


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


# ----------------------------------------------------------------------------- the image and the plan (pure)


@dataclass(frozen=True)
class Image:
    """The device image: package name -> version (None: there, version not read)."""

    packages: dict[str, str | None]
    python: str = "3.12.3"

    @classmethod
    def read(cls, path: Path) -> Image:
        packages: dict[str, str | None] = {}
        python = "3.12.3"
        for line in path.read_text().splitlines():
            line = line.split("#", 1)[0].strip()
            if not line:
                continue
            name, _, version = line.partition("==")
            if canonical(name) == "python":
                python = version
            else:
                packages[canonical(name)] = version or None
        return cls(packages, python)


@dataclass(frozen=True)
class Dist:
    """One wheel's facts: what it is, what it needs, whether it runs on any platform."""

    name: str
    version: str
    requires: tuple[str, ...]
    pure: bool
    path: Path | None = None


@dataclass
class Entry:
    """One package gptune needs on the device, and what the plan does with it."""

    name: str
    kind: str  # "image" | "carry" | "fallback" | "unverified"
    why: str
    wanted: list[str] = field(default_factory=list)  # "datasets: dill<0.4.2,>=0.3.0", who asks for what
    dist: Dist | None = None
    range: str = ""  # the combined range asked of it ("" for any version)

    @property
    def travels(self) -> bool:
        return self.kind in ("carry", "fallback")


def needs(requires: tuple[str, ...] | list[str], extras: set[str] = frozenset()) -> list:
    """The requirements that apply on the device (markers for CPython 3.12 x86-64 Linux, with these extras)."""
    from packaging.requirements import Requirement

    out = []
    for text in requires:
        req = Requirement(text)
        if req.marker is None or any(req.marker.evaluate({**DEVICE_ENV, "extra": e}) for e in extras | {""}):
            out.append(req)
    return out


def decide(name: str, wanted, image: Image) -> tuple[str, str]:
    """(kind, why) for one package given the combined range everything asks of it (a SpecifierSet)."""
    if name not in image.packages:
        return "carry", "not in the image"
    have = image.packages[name]
    if have is not None:
        if wanted.contains(have, prereleases=True):
            return "image", f"image has {have}"
        return "carry", f"image has {have}, outside {wanted}"
    if not str(wanted):
        return "image", "in the image (version not read; no range asked)"
    return "fallback", f"in the image at an unread version; {wanted} asked"


def plan(roots: list[str], image: Image, fetch: Callable[[str, object, set[str]], Dist],
         compiled: frozenset[str] = frozenset()) -> list[Entry]:
    """Every package reached from ``roots`` (requirement strings), decided against ``image``; a compiled
    fallback travels only when ``compiled`` names it (``--with``), else it is listed as unverified.

    ``fetch(name, specifier, extras)`` returns the Dist that would travel for ``name`` (downloading it, or from
    a table in tests). Carried packages' requirements are followed; fallbacks' and the image's are not, except
    the extras a carried package asks of them (``fsspec[http]`` adds fsspec's ``http`` requirements)."""
    from packaging.specifiers import SpecifierSet

    wanted: dict[str, SpecifierSet] = {}
    asked: dict[str, list[str]] = {}
    extras: dict[str, set[str]] = {}
    followed: dict[str, tuple[str, frozenset]] = {}  # name -> (version followed, extras followed)
    dists: dict[str, Dist] = {}
    queue = [(r, "gptune") for r in needs(list(roots))]
    while True:
        while queue:
            req, who = queue.pop(0)
            name = canonical(req.name)
            wanted[name] = wanted.get(name, SpecifierSet()) & req.specifier
            asked.setdefault(name, []).append(f"{who}: {req.name}{req.specifier}" + (f" [{','.join(sorted(req.extras))}]"
                                                                                     if req.extras else ""))
            extras.setdefault(name, set()).update(req.extras)
        # decide each package; follow what travels as "carry" (all of it) or was asked for extras (the extras)
        new = []
        for name in sorted(wanted):
            kind, _ = decide(name, wanted[name], image)
            if kind == "image" and not extras[name]:
                continue
            d = dists.get(name)
            if d is None or not wanted[name].contains(d.version, prereleases=True):
                d = dists[name] = fetch(name, wanted[name], extras[name])
            follow_all = kind == "carry"
            key = (d.version, frozenset(extras[name]) | ({"*"} if follow_all else set()))
            if followed.get(name) == key:
                continue
            followed[name] = key
            base = {str(r) for r in needs(d.requires)}  # what it needs without extras: the image has that
            for r in needs(d.requires, extras[name]):
                if follow_all or str(r) not in base:
                    new.append((r, d.name))
        if not new:
            break
        queue = new
    entries = []
    for name in sorted(wanted):
        kind, why = decide(name, wanted[name], image)
        d = dists.get(name)
        if kind == "fallback" and d is not None and not d.pure and name not in compiled:
            kind, why = "unverified", why + f"; {d.name} {d.version} is compiled: carried only with --with {name}"
        entries.append(Entry(name, kind, why, asked[name], d if kind in ("carry", "fallback") else None,
                             str(wanted[name])))
    return entries


def fits(sizes: dict[str, int], limit: int = LIMIT) -> tuple[int, bool]:
    """(total bytes, whether it is within the device's limit for what travels)."""
    total = sum(sizes.values())
    return total, total <= limit


def source_digest(root: Path = ROOT) -> str:
    """sha256 over what gptune's wheel is built from (pyproject.toml, gptune/ with its recipes and corpus); no
    git needed."""
    h = hashlib.sha256()
    files = [root / "pyproject.toml", *sorted(p for p in (root / "gptune").rglob("*")
                                              if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc")]
    for p in files:
        h.update(p.relative_to(root).as_posix().encode() + b"\0" + p.read_bytes() + b"\0")
    return h.hexdigest()


# ----------------------------------------------------------------------------- wheels (pip, network)


def wheel_dist(path: Path) -> Dist:
    with zipfile.ZipFile(path) as z:
        meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA") and n.count("/") == 1)
        msg = Parser().parsestr(z.read(meta).decode())
    tags = path.name[:-4].split("-")[-3:]  # python tag, abi tag, platform tag
    return Dist(msg["Name"], msg["Version"], tuple(msg.get_all("Requires-Dist") or ()),
                tags[1] == "none" and tags[2] == "any", path)


def pip(*args: str) -> None:
    cmd = [sys.executable, "-m", "pip", *args]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"build_wheelhouse: {' '.join(cmd[3:6])} ... failed:\n{out.stderr.strip()[-2000:]}")


def build_gptune(dest: Path) -> Dist:
    """gptune's wheel, built from a copy of its sources (setuptools leaves build/ where it builds)."""
    with tempfile.TemporaryDirectory() as tmp:
        for name in ("pyproject.toml", "README.md"):
            shutil.copy2(ROOT / name, tmp)
        shutil.copytree(ROOT / "gptune", Path(tmp) / "gptune", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        pip("wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(dest), tmp)
    return wheel_dist(next(dest.glob("gptune-*.whl")))


def downloader(dest: Path, pins: Path) -> Callable[[str, object, set[str]], Dist]:
    """fetch() for plan(): ``pip download --no-deps`` of one package for the device's Python and platform."""

    def fetch(name: str, wanted, extras: set[str]) -> Dist:
        with tempfile.TemporaryDirectory(dir=dest) as tmp:
            platforms = [a for p in PLATFORMS for a in ("--platform", p)]
            pip("download", "--no-deps", "--only-binary=:all:", "--python-version", "3.12", "--implementation", "cp",
                *platforms, "-q", "-c", str(pins), "-d", tmp, f"{name}{wanted}")
            got = next(Path(tmp).glob("*.whl"))
            target = dest / got.name
            shutil.move(got, target)
        return wheel_dist(target)

    return fetch


def table_fetcher(path: Path, read: list[str]) -> Callable[[str, object, set[str]], Dist]:
    """fetch() for plan() from a JSON table instead of downloads (``--plan --metadata``): name -> {"version",
    "pure", "requires"}, the facts each wheel would give; the names asked are appended to ``read``."""
    table = {canonical(k): v for k, v in json.loads(path.read_text()).items()}

    def fetch(name: str, wanted, extras: set[str]) -> Dist:
        read.append(name)
        if name not in table:
            sys.exit(f"build_wheelhouse: --metadata {path}: no entry for {name} ({wanted or 'any version'} asked)")
        e = table[name]
        if not wanted.contains(e["version"], prereleases=True):
            sys.exit(f"build_wheelhouse: --metadata {path}: {name} {e['version']} is outside {wanted}")
        return Dist(name, e["version"], tuple(e.get("requires", ())), bool(e.get("pure", True)))

    return fetch


# ----------------------------------------------------------------------------- sizes, report


def tree_bytes(root: Path = ROOT) -> int:
    """What git sends of the working tree: tracked and untracked-not-ignored files."""
    out = subprocess.run(["git", "-C", str(root), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                         capture_output=True, check=True).stdout
    return sum((root / f).stat().st_size for f in out.decode().split("\0") if f and (root / f).is_file())


def path_bytes(path: Path) -> int:
    return path.stat().st_size if path.is_file() else sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def report(entries: list[Entry], gptune: Dist, sizes: dict[str, int], total: int, ok: bool) -> str:
    mib = lambda b: f"{b / 2**20:.2f} MiB"  # noqa: E731
    lines = ["# wheelhouse for the device image (python benchmarks/device/build_wheelhouse.py)", "",
             "| wheel | size | kind | why |", "|---|---|---|---|",
             f"| {gptune.path.name} | {mib(gptune.path.stat().st_size)} | carry | gptune itself, built from the checkout |"]
    for e in entries:
        if e.travels:
            lines.append(f"| {e.dist.path.name} | {mib(e.dist.path.stat().st_size)} | {e.kind} | {e.why} ({'; '.join(e.wanted)}) |")
    lines += ["", "Left to the image:", ""]
    lines += [f"- {e.name}: {e.why} ({'; '.join(e.wanted)})" for e in entries if e.kind == "image"]
    unverified = [e for e in entries if e.kind == "unverified"]
    if unverified:
        lines += ["", "Unverified (the image's version is unread and no wheel travels; run.sh prints the image's "
                  "versions, and pip on the device says if one fails: then rebuild with --with NAME):", ""]
        lines += [f"- {e.name}: {e.why} ({'; '.join(e.wanted)})" for e in unverified]
    lines += ["", "What travels (64 MiB at most):", ""]
    lines += [f"- {k}: {mib(v)}" for k, v in sizes.items()]
    lines += [f"- total: {mib(total)} of {mib(LIMIT)}: {'fits' if ok else 'TOO BIG'}"]
    return "\n".join(lines) + "\n"


def plan_record(entries: list[Entry], sizes: dict[str, int], total: int, ok: bool) -> dict:
    """What plan.json holds (and ``--plan`` prints): each package's kind, range, reasons and wheel, the sizes."""
    return {"sizes": sizes, "total_bytes": total, "limit_bytes": LIMIT, "fits": ok,
            "packages": [{"name": e.name, "kind": e.kind, "range": e.range, "why": e.why, "wanted": e.wanted,
                          "version": e.dist.version if e.dist else None,
                          "wheel": e.dist.path.name if e.travels and e.dist.path else None} for e in entries]}


def gptune_requires() -> list[str]:
    """gptune's requirements as its wheel states them (pyproject.toml's dependencies), without building it."""
    import tomllib

    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]


def dry_run(a, image: Image) -> int:
    """``--plan``: the plan as JSON on stdout, nothing built or downloaded into the wheelhouse; the size check
    counts the working tree and the ``--carry`` paths (no wheel exists yet)."""
    read: list[str] = []
    tmp = None
    if a.metadata is not None:
        fetch = table_fetcher(a.metadata, read)
    else:
        tmp = Path(tempfile.mkdtemp(prefix="wheelhouse-plan-"))
        fetch = downloader(tmp, a.pins)
    try:
        entries = plan(a.requires or gptune_requires(), image, fetch, frozenset(map(canonical, a.with_)))
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    sizes = {"working tree": tree_bytes()} | {str(c): path_bytes(c) for c in a.carry}
    total, ok = fits(sizes)
    print(json.dumps({"image": {"python": image.python, "packages": image.packages}, "read": read,
                      **plan_record(entries, sizes, total, ok)}, indent=2))
    return _size_verdict(total, ok)


def _size_verdict(total: int, ok: bool) -> int:
    if not ok:
        print(f"build_wheelhouse: {total / 2**20:.1f} MiB would travel, over the device's {LIMIT / 2**20:.0f} MiB",
              file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--image", type=Path, default=HERE / "image.txt", help="The image's package list.")
    p.add_argument("--pins", type=Path, default=ROOT / "constraints.txt",
                   help="Versions to download (pip constraints; default: the ones CI tests).")
    p.add_argument("--out", type=Path, default=WHEELS, help="The wheelhouse folder (emptied first).")
    p.add_argument("--carry", action="append", default=[], type=Path,
                   help="Another path the run will carry, counted in the size check (repeatable).")
    p.add_argument("--with", dest="with_", action="append", default=[], metavar="NAME",
                   help="Carry this compiled fallback too (repeatable), e.g. pyarrow when the device's pip says the "
                        "image's is older than datasets asks.")
    p.add_argument("--digest", nargs="?", const=ROOT, type=Path, metavar="DIR",
                   help="Print the digest of gptune's sources (of this checkout, or of the tree at DIR) and stop.")
    p.add_argument("--plan", action="store_true", help="Print the plan as JSON and stop: no wheel is built, none "
                                                       "is kept (with --metadata, none is downloaded either).")
    p.add_argument("--metadata", type=Path, help="--plan: read each wheel's facts from this JSON table (name -> "
                                                 "{version, pure, requires}) instead of downloading it.")
    p.add_argument("--requires", action="append", metavar="REQ",
                   help="--plan: plan for these requirements (repeatable) instead of gptune's.")
    a = p.parse_args(argv)
    if a.digest:
        print(source_digest(a.digest))
        return 0
    image = Image.read(a.image)
    if a.plan:
        return dry_run(a, image)
    if a.out.exists():
        shutil.rmtree(a.out)  # one version of each package: two would stop the install
    a.out.mkdir(parents=True)
    gptune = build_gptune(a.out)
    entries = plan(list(gptune.requires), image, downloader(a.out, a.pins), frozenset(map(canonical, a.with_)))
    keep = {gptune.path} | {e.dist.path for e in entries if e.travels}
    for w in a.out.glob("*.whl"):
        if w not in keep:
            w.unlink()  # fetched only to read its extras (an image package's), or superseded
    sizes = {"working tree": tree_bytes(), f"{a.out.relative_to(ROOT) if a.out.is_relative_to(ROOT) else a.out}/":
             sum(w.stat().st_size for w in keep)}
    sizes |= {str(c): path_bytes(c) for c in a.carry}
    total, ok = fits(sizes)
    text = report(entries, gptune, sizes, total, ok)
    (a.out / "PLAN.txt").write_text(text)
    (a.out / "SOURCE_DIGEST").write_text(source_digest() + "\n")
    (a.out / "plan.json").write_text(json.dumps({"gptune": gptune.path.name, **plan_record(entries, sizes, total, ok)},
                                                indent=2) + "\n")
    print(text, end="")
    return _size_verdict(total, ok)


if __name__ == "__main__":
    sys.exit(main())
