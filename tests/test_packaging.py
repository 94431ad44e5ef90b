"""The wheel ships what the package needs at run time: the named search spaces load from an installed copy."""
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SPACE_FILES = ("attentive/spaces/tiny.yaml", "attentive/spaces/attentivenas.yaml")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """A wheel built from a copy of the sources (setuptools writes build/ and *.egg-info/ beside setup.py; the
    checkout stays clean)."""
    src = tmp_path_factory.mktemp("src")
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in ("attentive", "predictors"):
        shutil.copytree(ROOT / name, src / name, ignore=ignore)
    for name in ("setup.py", "train.py", "search.py"):
        shutil.copy2(ROOT / name, src / name)
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out),
                    str(src)], check=True, capture_output=True, text=True)
    (path,) = out.glob("attentive-*.whl")
    return path


def test_wheel_holds_the_space_files(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    for name in SPACE_FILES:
        assert name in names
        assert (ROOT / name).is_file()  # the checkout keeps them in the same place


def test_spaces_load_from_an_unpacked_wheel(wheel, tmp_path):
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    code = ("import attentive, sys; "
            "print(attentive.__file__); print(attentive.available_spaces()); "
            "print(attentive.load_space('tiny').hash, attentive.load_space('attentivenas').hash)")
    env = {**os.environ, "PYTHONPATH": str(site)}
    out = subprocess.run([sys.executable, "-c", code], cwd=elsewhere, env=env, check=True, capture_output=True,
                         text=True).stdout.splitlines()
    assert Path(out[0]).resolve().is_relative_to(site.resolve())  # the unpacked copy, not the checkout
    assert out[1] == "['attentivenas', 'tiny']"
    import attentive

    assert out[2] == f"{attentive.load_space('tiny').hash} {attentive.load_space('attentivenas').hash}"


def test_every_requirement_is_pinned_in_the_constraints_within_its_range():
    """`make venv` installs configs/pip-constraints.txt's versions: a requirement added to setup.py without a pin
    there, or a pin outside setup.py's range, would make fresh clones differ from the tested environment."""
    import importlib.metadata

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    pins = {}
    for line in (ROOT / "configs" / "pip-constraints.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, version = line.partition("==")
            assert version, f"configs/pip-constraints.txt: {line!r} is not an exact pin (name==version)"
            pins[canonicalize_name(name)] = version.strip()
    makefile = (ROOT / "Makefile").read_text()
    for text in importlib.metadata.requires("attentive"):
        req = Requirement(text)
        name = canonicalize_name(req.name)
        if name in ("torch", "torchvision"):  # pinned in the Makefile (local wheels)
            assert f"{req.name}==" in makefile
            continue
        assert name in pins, f"{req.name} is required but not pinned in configs/pip-constraints.txt"
        assert req.specifier.contains(pins[name]), f"{req.name}=={pins[name]} is outside setup.py's {req.specifier}"
