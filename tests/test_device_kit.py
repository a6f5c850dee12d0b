"""The device kit (benchmarks/device/): what the wheelhouse carries for the device image, the size check, the
digest run.sh compares, run.sh's install logic and report of the image, and gpu_check.py's time budget.
Every script runs through its command line (build_wheelhouse.py --plan --metadata, gpu_check.py --plan):
nothing here downloads, installs or needs a GPU."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[1]
DEVICE = ROOT / "benchmarks" / "device"
LIMIT = 64 * 2**20  # what travels to the device machine in one call

# Requires-Dist of the wheels pins.txt names (read off them with unzip -p ... METADATA), and the fallbacks'
# that matter here: what the builder would read from each wheel it downloads.
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


def script(path: Path, *args, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(path), *map(str, args)], cwd=cwd, capture_output=True, text=True,
                          timeout=120)


def wheelhouse_plan(tmp_path: Path, *args, table: dict = METADATA, image: str | None = None,
                    code: int = 0) -> dict:
    """``build_wheelhouse.py --plan`` with ``table`` as the wheels' facts (``--metadata``), on the stated image or
    on ``image`` (image.txt lines); its JSON."""
    meta = tmp_path / "metadata.json"
    meta.write_text(json.dumps({n: {"version": v, "pure": pure, "requires": r} for n, (v, pure, r) in table.items()}))
    image_args = []
    if image is not None:
        (tmp_path / "image.txt").write_text(image)
        image_args = ["--image", tmp_path / "image.txt"]
    out = script(DEVICE / "build_wheelhouse.py", "--plan", "--metadata", meta, *image_args, *args)
    assert out.returncode == code, out.stdout + out.stderr
    return json.loads(out.stdout)


def packages(plan: dict) -> dict[str, dict]:
    return {e["name"]: e for e in plan["packages"]}


def digest(root: Path | None = None) -> str:
    out = script(DEVICE / "build_wheelhouse.py", "--digest", *([root] if root else []))
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def gptune_requires() -> list[str]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]


def by_kind(plan: dict) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for e in plan["packages"]:
        out.setdefault(e["kind"], set()).add(e["name"])
    return out


def test_the_wheelhouse_carries_what_the_stated_image_lacks(tmp_path):
    plan = wheelhouse_plan(tmp_path)  # gptune's requirements, as its wheel states them
    image = plan["image"]
    assert image["python"] == "3.12.3"
    assert image["packages"]["torch"] == "2.11.0" and image["packages"]["transformers"] == "5.17.0"
    assert image["packages"]["peft"] is None and "datasets" not in image["packages"]
    kinds = by_kind(plan)
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


def test_a_compiled_fallback_travels_only_when_asked_and_the_range_is_kept(tmp_path):
    entries = packages(wheelhouse_plan(tmp_path))
    assert entries["pyarrow"]["kind"] == "unverified" and entries["pyarrow"]["version"] is None
    assert "carried only with --with pyarrow" in entries["pyarrow"]["why"]
    assert entries["pyarrow"]["range"] == ">=24.0.0"
    assert entries["fsspec"]["range"] == "<=2026.9.0,>=2021.05.0,>=2023.1.0"  # datasets' and evaluate's, combined
    assert entries["torch"]["range"] == "<2.15,>=2.4" and entries["torch"]["version"] is None
    entries = packages(wheelhouse_plan(tmp_path, "--with", "pyarrow"))
    assert entries["pyarrow"]["kind"] == "fallback"  # travels
    assert entries["pyarrow"]["version"] == "26.0.1"
    assert entries["scipy"]["kind"] == "unverified"


def test_a_known_image_version_outside_the_range_is_carried_and_an_absent_one_pulls_its_needs(tmp_path):
    plan = wheelhouse_plan(tmp_path, "--requires", "multiprocess", "--requires", "numpy>=1.17",
                           image="numpy==1.16.0\nhuggingface-hub==1.33.0\n")
    entries = packages(plan)
    assert entries["numpy"]["kind"] == "carry" and "image has 1.16.0, outside >=1.17" in entries["numpy"]["why"]
    assert entries["multiprocess"]["kind"] == "carry" and entries["dill"]["kind"] == "carry"  # it needs dill
    assert entries["dill"]["wanted"] == ["multiprocess: dill>=0.4.1"]
    assert sorted(plan["read"]) == ["dill", "multiprocess", "numpy"]  # an image package in range is never fetched


SMALL = {"torch": ("2.13.0", False, []), "peft": ("0.21.2", True, []), "datasets": ("5.2.0", True, [])}


def test_decide_names_the_reason(tmp_path):
    image = "torch==2.11.0\npeft\n"
    got = packages(wheelhouse_plan(tmp_path, "--requires", "torch<2.15,>=2.4", "--requires", "peft",
                                   "--requires", "datasets", table=SMALL, image=image))
    assert (got["torch"]["kind"], got["torch"]["why"]) == ("image", "image has 2.11.0")
    assert got["peft"]["kind"] == "image"
    assert (got["datasets"]["kind"], got["datasets"]["why"]) == ("carry", "not in the image")
    got = packages(wheelhouse_plan(tmp_path, "--requires", "torch>=2.12", "--requires", "peft>=0.17", table=SMALL,
                                   image=image))
    assert got["torch"]["kind"] == "carry" and got["peft"]["kind"] == "fallback"


def test_a_table_version_outside_the_range_asked_is_refused(tmp_path):
    meta = tmp_path / "metadata.json"
    meta.write_text(json.dumps({"torch": {"version": "2.13.0"}}))
    out = script(DEVICE / "build_wheelhouse.py", "--plan", "--metadata", meta, "--requires", "torch>=2.14")
    assert out.returncode == 1 and "torch 2.13.0 is outside >=2.14" in out.stderr


def test_the_size_check_counts_everything_that_travels(tmp_path):
    small, big = tmp_path / "small.bin", tmp_path / "big.bin"
    small.write_bytes(b"x" * 10)
    with open(big, "wb") as fh:
        fh.truncate(LIMIT)  # sparse: 64 MiB counted, nothing written
    plan = wheelhouse_plan(tmp_path, "--requires", "datasets", "--carry", small, table=SMALL)
    tree = plan["sizes"]["working tree"]
    assert tree > 0 and plan["sizes"] == {"working tree": tree, str(small): 10}
    assert (plan["total_bytes"], plan["limit_bytes"], plan["fits"]) == (tree + 10, LIMIT, True)
    meta = tmp_path / "metadata.json"
    out = script(DEVICE / "build_wheelhouse.py", "--plan", "--metadata", meta, "--requires", "datasets",
                 "--carry", small, "--carry", big)
    plan = json.loads(out.stdout)
    assert out.returncode == 1 and "over the device's 64 MiB" in out.stderr
    assert (plan["total_bytes"], plan["fits"]) == (tree + 10 + LIMIT, False)


def test_the_source_digest_follows_what_the_wheel_is_built_from(tmp_path):
    for name in ("pyproject.toml", "gptune/__init__.py", "gptune/recipes/finetune.yaml", "docs/x.md"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("a")
    first = digest(tmp_path)
    assert len(first) == 64 and first != digest()  # this checkout's differs
    (tmp_path / "docs/x.md").write_text("b")  # not in the wheel
    (tmp_path / "gptune/__pycache__").mkdir()
    (tmp_path / "gptune/__pycache__/x.pyc").write_text("b")
    assert digest(tmp_path) == first
    (tmp_path / "gptune/recipes/finetune.yaml").write_text("b")  # a shipped recipe
    assert digest(tmp_path) != first


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
    (wheels / "SOURCE_DIGEST").write_text(digest() + "\n")
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
    (wheels / "SOURCE_DIGEST").write_text(digest() + "\n")
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


def gpu_plan(*args) -> dict:
    """``gpu_check.py --plan ...``: what it would run, as JSON (nothing runs, no GPU needed)."""
    out = script(ROOT / "benchmarks" / "gpu_check.py", *args)
    assert out.returncode == 0, out.stdout + out.stderr
    return json.loads(out.stdout)


def test_the_budget_keeps_time_for_the_checks_still_to_come():
    plan = gpu_plan("--budget", "420", "--timeout", "300", "--plan")
    assert len(plan["checks"]) == 8 and plan["reserve"] == 30
    assert plan["timeouts"]["trainer"] == 420 - 7 * 30  # 210 s: 30 s kept for each of the 7 to come
    assert plan["timeouts"]["fsdp"] == 300  # never more than --timeout
    assert gpu_plan("--budget", "420", "--timeout", "300", "--plan", "401")["timeouts"]["fsdp"] is None  # 19 s left
    assert gpu_plan("--budget", "420", "--timeout", "300", "--plan", "380")["timeouts"]["fsdp"] == 40


def test_only_runs_the_named_checks_and_the_pretraining_they_start_from():
    assert gpu_plan("--plan")["checks"] == ["trainer", "pretrain", "lora", "full", "ppl", "compile", "ddp", "fsdp"]
    assert gpu_plan("--only", "ppl,trainer", "--plan")["checks"] == ["trainer", "pretrain", "ppl"]
    assert gpu_plan("--only", "compile", "--plan")["checks"] == ["compile"]
    out = script(ROOT / "benchmarks" / "gpu_check.py", "--only", "lorra", "--plan")
    assert out.returncode == 2 and "unknown check lorra" in out.stderr


def test_default_budget_and_shape_fit_the_device_call():
    plan = gpu_plan("--plan")
    assert plan["budget"] + 30 + 60 <= 8 * 60  # run.sh's hard stop 30 s after the budget, a minute to install
    assert "$((${BUDGET%.*} + 30))" in (DEVICE / "run.sh").read_text()
    assert "GPU_CHECK_BUDGET:-390}" in (DEVICE / "run.sh").read_text()
    s = plan["shape"]
    assert s["corpus_words"] >= s["steps"] * s["micro"] * s["seq"]  # one epoch covers the run: no partial batch
    assert len(plan["measured_windows"]) >= 3  # at least three measured windows after the first
    assert len(plan["out_files"]) + 1 <= 8  # with run.log: the device tool returns at most 8 files


def test_trainer_windows_skip_the_first_window():
    plan = gpu_plan("--plan")
    w = plan["shape"]["log_every"]
    # 0-based end-of-step indices: the first window (steps 1..10, start-up) is left out
    assert plan["measured_windows"] == [[w - 1 + k * w, 2 * w - 1 + k * w] for k in range(len(plan["measured_windows"]))]
    assert plan["measured_windows"][0] == [9, 19]
