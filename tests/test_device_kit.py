"""The device kit (benchmarks/device/): what the wheelhouse carries for the device image, the size check, the
digest run.sh compares, run.sh's install logic and report of the image, and gpu_check.py's time budget.
Nothing here downloads, installs or needs a GPU."""

from __future__ import annotations

import importlib.util
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib

ROOT = Path(__file__).resolve().parents[1]
DEVICE = ROOT / "benchmarks" / "device"


def _load(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod  # dataclasses look their module up
    spec.loader.exec_module(mod)
    return mod


bw = _load(DEVICE / "build_wheelhouse.py", "build_wheelhouse")

# Requires-Dist of the wheels pins.txt names (read off them with unzip -p ... METADATA), and the fallbacks'
# that matter here: what plan() would read from each wheel it downloads.
METADATA = {
    "datasets": ("5.2.0", True, ["filelock", "numpy>=1.17", "pyarrow>=24.0.0", "dill<0.4.2,>=0.3.0", "pandas",
                                 "tqdm>=4.66.3", "xxhash", "multiprocess<0.70.20", "fsspec<=2026.9.0,>=2023.1.0",
                                 "huggingface-hub<3.0,>=1.31.0", "packaging", "pyyaml>=5.1",
                                 'pytest; extra == "tests"']),
    "evaluate": ("0.4.6", True, ["datasets>=2.0.0", "numpy>=1.17", "dill", "pandas", "requests>=2.19.0",
                                 "tqdm>=4.62.1", "xxhash", "multiprocess", "fsspec[http]>=2021.05.0",
                                 "huggingface-hub>=0.7.0", "packaging", 'importlib-metadata; python_version < "3.8"']),
    "dill": ("0.4.1", True, []),
    "multiprocess": ("0.70.19", True, ["dill>=0.4.1"]),
    "fsspec": ("2026.9.0", True, ["aiohttp!=4.0.0a0,!=4.0.0a1; extra == 'http'",
                                  "aiohttp!=4.0.0a0,!=4.0.0a1; extra == 'full'"]),
    "peft": ("0.21.2", True, ["numpy>=1.17", "torch>=1.13.0", "transformers"]),
    "pyarrow": ("26.0.1", False, []),
    "numpy": ("2.4.6", False, []),
    "aiohttp": ("3.14.5", False, []),
    "pyyaml": ("6.0.3", False, []),
    "scikit-learn": ("1.9.1", False, []),
    "scipy": ("1.17.1", False, []),
    **{n: (v, True, []) for n, v in (("typer", "0.29.2"), ("rich", "15.0.0"), ("tqdm", "4.70.1"),
                                     ("requests", "2.34.2"))},
}


def table_fetch(fetched: list | None = None):
    def fetch(name, wanted, extras):
        if fetched is not None:
            fetched.append(name)
        version, pure, requires = METADATA[name]
        assert wanted.contains(version), f"{name} {version} is outside {wanted}"
        return bw.Dist(name, version, tuple(requires), pure)

    return fetch


def gptune_requires() -> list[str]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]


def by_kind(entries) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for e in entries:
        out.setdefault(e.kind, set()).add(e.name)
    return out


def test_the_wheelhouse_carries_what_the_stated_image_lacks():
    image = bw.Image.read(DEVICE / "image.txt")
    assert image.python == "3.12.3"
    assert image.packages["torch"] == "2.11.0" and image.packages["transformers"] == "5.17.0"
    assert image.packages["peft"] is None and "datasets" not in image.packages
    kinds = by_kind(bw.plan(gptune_requires(), image, table_fetch()))
    # the image lacks these four: they travel, with what they need
    assert kinds["carry"] == {"datasets", "evaluate", "dill", "multiprocess"}
    # known versions inside gptune's (and datasets') ranges stay the image's
    assert {"torch", "transformers", "accelerate", "tokenizers", "safetensors", "numpy",
            "huggingface-hub"} <= kinds["image"]
    # unread versions under a range: pure-Python fallbacks travel; compiled ones are only listed
    assert kinds["fallback"] == {"peft", "fsspec", "typer", "rich", "tqdm", "requests"}
    assert kinds["unverified"] == {"pyarrow", "pyyaml", "scikit-learn", "scipy", "aiohttp"}
    # aiohttp is reached only through evaluate's fsspec[http]; importlib-metadata's marker is false on 3.12
    assert "importlib-metadata" not in set().union(*kinds.values())
    # nothing else: no extra's test requirements (pytest), nothing of the fallbacks' own needs
    assert set().union(*kinds.values()) == set(METADATA) | {
        "torch", "transformers", "accelerate", "tokenizers", "safetensors", "numpy", "huggingface-hub", "filelock",
        "pandas", "xxhash", "packaging"}


def test_the_table_holds_the_versions_ci_tests_which_the_builder_downloads():
    """build_wheelhouse downloads at constraints.txt's versions: the table above must be those wheels."""
    pins = dict(line.split("==") for line in (ROOT / "constraints.txt").read_text().splitlines()
                if "==" in line and not line.startswith("#"))
    assert {n: METADATA[n][0] for n in METADATA if n in pins} == {n: pins[n] for n in METADATA if n in pins}
    assert {"datasets", "evaluate", "dill", "multiprocess", "peft", "fsspec", "pyarrow"} <= set(pins)


def test_a_compiled_fallback_travels_only_when_asked_and_the_range_is_kept():
    image = bw.Image.read(DEVICE / "image.txt")
    entries = {e.name: e for e in bw.plan(gptune_requires(), image, table_fetch())}
    assert entries["pyarrow"].kind == "unverified" and entries["pyarrow"].dist is None
    assert "carried only with --with pyarrow" in entries["pyarrow"].why
    assert entries["pyarrow"].range == ">=24.0.0"
    assert entries["fsspec"].range == "<=2026.9.0,>=2021.05.0,>=2023.1.0"  # datasets' and evaluate's, combined
    assert entries["torch"].range == "<2.15,>=2.4" and entries["torch"].dist is None
    entries = {e.name: e for e in bw.plan(gptune_requires(), image, table_fetch(), frozenset({"pyarrow"}))}
    assert entries["pyarrow"].kind == "fallback" and entries["pyarrow"].travels
    assert entries["pyarrow"].dist.version == "26.0.1"
    assert entries["scipy"].kind == "unverified"


def test_a_known_image_version_outside_the_range_is_carried_and_an_absent_one_pulls_its_needs():
    image = bw.Image({"numpy": "1.16.0", "huggingface-hub": "1.33.0"})
    fetched: list[str] = []
    entries = {e.name: e for e in bw.plan(["multiprocess", "numpy>=1.17"], image, table_fetch(fetched))}
    assert entries["numpy"].kind == "carry" and "image has 1.16.0, outside >=1.17" in entries["numpy"].why
    assert entries["multiprocess"].kind == "carry" and entries["dill"].kind == "carry"  # multiprocess needs dill
    assert entries["dill"].wanted == ["multiprocess: dill>=0.4.1"]
    assert sorted(fetched) == ["dill", "multiprocess", "numpy"]  # an image package in range is never fetched


def test_decide_names_the_reason():
    from packaging.specifiers import SpecifierSet

    image = bw.Image({"torch": "2.11.0", "peft": None})
    assert bw.decide("torch", SpecifierSet("<2.15,>=2.4"), image) == ("image", "image has 2.11.0")
    assert bw.decide("torch", SpecifierSet(">=2.12"), image)[0] == "carry"
    assert bw.decide("peft", SpecifierSet(), image)[0] == "image"
    assert bw.decide("peft", SpecifierSet(">=0.17"), image)[0] == "fallback"
    assert bw.decide("datasets", SpecifierSet(), image) == ("carry", "not in the image")


def test_the_size_check_counts_everything_that_travels():
    limit = 64 * 2**20
    assert bw.LIMIT == limit
    assert bw.fits({"working tree": limit - 10, "wheels/": 10}) == (limit, True)
    assert bw.fits({"working tree": limit - 10, "wheels/": 10, ".gl": 1}) == (limit + 1, False)


def test_the_source_digest_follows_what_the_wheel_is_built_from(tmp_path):
    for name in ("pyproject.toml", "gptune/__init__.py", "gptune/recipes/finetune.yaml", "docs/x.md"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("a")
    first = bw.source_digest(tmp_path)
    (tmp_path / "docs/x.md").write_text("b")  # not in the wheel
    (tmp_path / "gptune/__pycache__").mkdir()
    (tmp_path / "gptune/__pycache__/x.pyc").write_text("b")
    assert bw.source_digest(tmp_path) == first
    (tmp_path / "gptune/recipes/finetune.yaml").write_text("b")  # a shipped recipe
    assert bw.source_digest(tmp_path) != first


# ----------------------------------------------------------------------------- run.sh, with a stand-in python


def fake_python(tmp_path: Path) -> tuple[Path, Path]:
    """A PYTHON for run.sh that logs pip and gpu_check.py calls instead of running them (the digest is real)."""
    log = tmp_path / "calls.log"
    shim = tmp_path / "python"
    shim.write_text(f"""#!/usr/bin/env bash
if [ "$1 $2" = "-m pip" ] || [ "$1" = benchmarks/gpu_check.py ]; then
  echo "$*" >> {log}
  [ "$3" = install ] && [ -n "${{FAKE_PIP_FAILS:-}}" ] && exit 1
  exit 0
fi
exec {sys.executable} "$@"
""")
    shim.chmod(shim.stat().st_mode | stat.S_IEXEC)
    return shim, log


def run_sh(tmp_path: Path, wheels: Path, *args: str, **env_extra: str) -> tuple[subprocess.CompletedProcess, list[str]]:
    shim, log = fake_python(tmp_path)
    env = dict(os.environ, PYTHON=str(shim), OUT=str(tmp_path / "out"), GPTUNE_WHEELS=str(wheels),
               GPU_CHECK_BUDGET="300", PATH=os.environ["PATH"], **env_extra)
    out = subprocess.run(["bash", str(DEVICE / "run.sh"), *args], capture_output=True, text=True, env=env, timeout=60)
    return out, log.read_text().splitlines() if log.exists() else []


def test_run_sh_installs_the_wheel_offline_then_runs_the_installed_check(tmp_path):
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    (wheels / "SOURCE_DIGEST").write_text(bw.source_digest() + "\n")
    out, calls = run_sh(tmp_path, wheels, "--only", "trainer")
    assert out.returncode == 0, out.stdout + out.stderr
    assert calls[0] == "-m pip uninstall -q -y gptune"  # a warm machine's earlier install is not kept
    assert calls[1] == f"-m pip install -q --no-index --find-links {wheels} --no-cache-dir --no-build-isolation gptune"
    assert calls[2] == "-m pip check"
    assert calls[3] == (f"benchmarks/gpu_check.py --installed --budget 300 --out {tmp_path / 'out'} "
                        "--only trainer")
    assert "WARNING" not in out.stdout
    assert (tmp_path / "out" / "run.log").read_text() == out.stdout  # the transcript comes back with $OUT


def test_run_sh_installs_from_the_checkout_when_the_wheel_is_older(tmp_path):
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    (wheels / "SOURCE_DIGEST").write_text("0" * 64 + "\n")
    out, calls = run_sh(tmp_path, wheels)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "the gptune wheel is older than the sources here" in out.stdout
    assert calls[1].endswith("--no-build-isolation .")


def test_run_sh_without_a_wheelhouse_stops_before_the_check(tmp_path):
    out, calls = run_sh(tmp_path, tmp_path / "nowhere")
    assert out.returncode == 3
    assert "no wheelhouse at" in out.stdout and "build_wheelhouse.py" in out.stdout
    assert calls == []


def test_run_sh_reports_the_images_versions_before_installing_and_names_the_fix_when_pip_fails(tmp_path):
    import json

    import packaging

    wheels = tmp_path / "wheels"
    wheels.mkdir()
    (wheels / "SOURCE_DIGEST").write_text(bw.source_digest() + "\n")
    (wheels / "plan.json").write_text(json.dumps({"packages": [
        {"name": "packaging", "kind": "image", "range": ">=1"},
        {"name": "pytest", "kind": "unverified", "range": "<1"},
        {"name": "no-such-package-here", "kind": "carry", "range": ""}]}))
    out, calls = run_sh(tmp_path, wheels, FAKE_PIP_FAILS="1")
    assert out.returncode == 3, out.stdout + out.stderr
    lines = out.stdout.splitlines()
    image = lines[lines.index(next(x for x in lines if x.startswith("== image"))) + 1:][:3]
    assert image[0].split() == ["packaging", packaging.__version__, ">=1", "fits", "image"]
    assert image[1].split()[2:] == ["<1", "OUTSIDE", "unverified"]
    assert image[2].split() == ["no-such-package-here", "-", "(any)", "absent", "carry"]
    assert "rebuild here with python benchmarks/device/build_wheelhouse.py --with NAME" in out.stdout
    assert len(calls) == 2 and calls[1].startswith("-m pip install")  # no check ran after the failed install


# ----------------------------------------------------------------------------- gpu_check.py's budget


@pytest.fixture(scope="module")
def gc():
    # gpu_check imports its neighbours (common, pretrain) as a script run from benchmarks/ would
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        return _load(ROOT / "benchmarks" / "gpu_check.py", "gpu_check")
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))


def test_the_budget_keeps_time_for_the_checks_still_to_come(gc):
    now = [0.0]
    b = gc.Budget(420, per_command=300, clock=lambda: now[0])
    assert b.timeout(still_to_come=7) == 420 - 7 * gc.RESERVE  # 210 s
    assert b.timeout(still_to_come=0) == 300  # never more than --timeout
    now[0] = 401.0
    assert b.timeout(still_to_come=0) is None  # 19 s left is too little to start one: skipped
    now[0] = 380.0
    assert b.timeout(still_to_come=0) == 40


def test_only_runs_the_named_checks_and_the_pretraining_they_start_from(gc):
    assert gc.selected(None) == list(gc.CHECKS)
    assert gc.selected("ppl,trainer") == ["trainer", "pretrain", "ppl"]
    assert gc.selected("compile") == ["compile"]
    with pytest.raises(ValueError, match="unknown check lorra"):
        gc.selected("lorra")


def test_default_budget_and_shape_fit_the_device_call(gc):
    assert gc.BUDGET + 30 + 60 <= 8 * 60  # run.sh's hard stop 30 s after the budget, a minute to install
    assert "$((${BUDGET%.*} + 30))" in (DEVICE / "run.sh").read_text()
    assert "GPU_CHECK_BUDGET:-390}" in (DEVICE / "run.sh").read_text()
    s = gc.GPU
    assert s.corpus_words >= s.steps * s.micro * s.seq  # one epoch covers the run: no partial batch
    assert s.steps // s.log_every - 1 >= 3  # at least three measured windows after the first
    assert len(gc.OUT_FILES) + 1 <= 8  # with run.log: the device tool returns at most 8 files


def test_trainer_windows_skip_the_first_window(gc):
    times = [float(i) for i in range(1, 31)]  # step i ends at i s: 1 s per step
    assert gc.trainer_windows(times, tokens_per_step=100, w=10) == [100.0, 100.0]
