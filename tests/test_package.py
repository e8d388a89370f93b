"""featx as an installable package: wheel, plain ``pip install DIR``, editable, ``python -m featx``.

Each test builds from a copy of the source tree holding only what a clean clone has, installs
without dependencies (they are already in this environment) into a throwaway folder, and runs the
installed copy from another directory, so the checkout itself is never what gets imported.
"""

from __future__ import annotations

import email
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

import featx

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(
    subprocess.run([sys.executable, "-m", "pip", "--version"], capture_output=True).returncode,
    reason="pip is not available",
)


def _clean_clone(dest: Path) -> Path:
    """The files a clone has that matter to a build (no build/, *.egg-info, caches)."""
    dest.mkdir(parents=True)
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy2(REPO / name, dest / name)
    shutil.copytree(
        REPO / "featx", dest / "featx", ignore=shutil.ignore_patterns("__pycache__", "*.pyc")
    )
    return dest


def _pip(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PIP_NO_INPUT"] = "1"
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    res = subprocess.run(
        [sys.executable, "-m", "pip", *args, "--no-deps", "--no-build-isolation"],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
    )
    assert res.returncode == 0, res.stdout + res.stderr
    return res


def _run_installed(target: Path, code: str, cwd: Path) -> str:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = str(target)
    res = subprocess.run(
        [sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True
    )
    assert res.returncode == 0, res.stderr
    return res.stdout.strip()


def _modules(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*.py") if "__pycache__" not in p.parts}


def _check_installed(target: Path, elsewhere: Path) -> None:
    where = _run_installed(target, "import featx; print(featx.__file__)", elsewhere)
    assert Path(where).parent == target / "featx"
    assert _modules(target / "featx") == _modules(REPO / "featx")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = str(target)
    res = subprocess.run(
        [sys.executable, "-m", "featx", "--version"],
        cwd=elsewhere,
        env=env,
        capture_output=True,
        text=True,
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == f"featx, version {featx.__version__}"


def test_wheel_builds_without_warnings_and_installs(tmp_path):
    clone = _clean_clone(tmp_path / "clone")
    res = _pip("wheel", ".", "-w", str(tmp_path / "dist"), cwd=clone)
    assert "deprecat" not in (res.stdout + res.stderr).lower()
    (wheel,) = (tmp_path / "dist").glob("featx-*.whl")
    assert wheel.name.startswith(f"featx-{featx.__version__}-")
    with zipfile.ZipFile(wheel) as z:
        meta_name = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        meta = email.message_from_bytes(z.read(meta_name))
        assert any(n.endswith(".dist-info/licenses/LICENSE") for n in z.namelist())
        entry_points = z.read(meta_name.replace("METADATA", "entry_points.txt")).decode()
    assert meta["Version"] == featx.__version__
    assert meta["License-Expression"] == "MIT"
    assert meta.get("License") is None  # the deprecated free-text field is gone
    assert "featx = featx.cli:main" in entry_points

    target = tmp_path / "site"
    _pip("install", "--target", str(target), str(wheel), cwd=tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    _check_installed(target, elsewhere)
    assert (target / "bin" / "featx").is_file()
    _check_package_data(target, elsewhere)


def _check_package_data(target: Path, elsewhere: Path) -> None:
    """What a pip user needs besides the code came along: the backbone listings (so `featx
    backbones` imports no torch) and the demo pipelines with their data (`featx demo`)."""
    from featx.backbones import catalog
    from featx.examples import FILES

    for name in ("catalog.json", "timm_catalog.json"):
        if (REPO / "featx" / "backbones" / name).is_file():
            assert (target / "featx" / "backbones" / name).is_file(), name
    for name in FILES:
        assert (target / "featx" / "examples" / name).is_file(), name
    code = (
        "import runpy, sys\n"
        "sys.argv = ['featx', 'backbones', 'resnet*']\n"
        "try:\n"
        "    runpy.run_module('featx', run_name='__main__')\n"
        "except SystemExit as e:\n"
        "    assert not e.code, e.code\n"
        "print('TORCH', 'torch' in sys.modules, 'timm' in sys.modules)\n"
    )
    out = _run_installed(target, code, elsewhere)
    assert "resnet50" in out
    if catalog._load() is not None:  # the snapshot matches the installed torchvision
        assert out.rsplit("TORCH", 1)[1].split() == ["False", "False"], out
    # the installed demo files: a pipeline that parses, and --files copies them out
    code = (
        "from featx.examples import demo_path\n"
        "from featx.pipeline import load_pipeline\n"
        "pl = load_pipeline(demo_path('text'))\n"
        "print(pl.sources[0]['spec'])\n"
    )
    spec = _run_installed(target, code, elsewhere)
    assert Path(spec).is_file() and Path(spec).parent == target / "featx" / "examples"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = str(target)
    res = subprocess.run(
        [sys.executable, "-m", "featx", "demo", "--files", "mine"],
        cwd=elsewhere,
        env=env,
        capture_output=True,
        text=True,
    )
    assert res.returncode == 0, res.stderr
    assert sorted(p.name for p in (elsewhere / "mine").iterdir()) == sorted(FILES)


def test_pip_install_from_a_clone_is_not_editable(tmp_path):
    clone = _clean_clone(tmp_path / "clone")
    target = tmp_path / "site"
    _pip("install", "--target", str(target), str(clone), cwd=tmp_path)
    shutil.rmtree(clone)  # a real install works without the clone
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    _check_installed(target, elsewhere)


def test_script_beside_a_folder_named_featx_imports_the_installed_package(tmp_path):
    """A script next to a clone called ``featx/`` once got an empty namespace package."""
    work = tmp_path / "work"
    clone = _clean_clone(work / "featx")  # the clone folder itself is named featx
    prefix = tmp_path / "prefix"
    # --ignore-installed: with --prefix, pip would otherwise uninstall the featx of the
    # environment running the tests (its console script and editable path: `make demo` broke)
    _pip("install", "--ignore-installed", "--prefix", str(prefix), "-e", str(clone), cwd=tmp_path)
    purelib = sysconfig.get_path("purelib", vars={"base": str(prefix), "platbase": str(prefix)})
    (work / "script.py").write_text(
        "import featx\nprint(featx.__file__)\nprint(featx.__version__)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    # -S: none of this environment's own installs; the editable install's site folder stands in
    # for site-packages (importing featx needs nothing beyond the standard library)
    code = f"import runpy, site; site.addsitedir({purelib!r}); runpy.run_path('script.py')"
    res = subprocess.run(
        [sys.executable, "-S", "-c", code], cwd=work, env=env, capture_output=True, text=True
    )
    assert res.returncode == 0, res.stderr
    file, version = res.stdout.split()
    assert Path(file) == clone / "featx" / "__init__.py"
    assert version == featx.__version__


def test_installing_elsewhere_leaves_this_environments_featx_alone(tmp_path):
    """The tests above install featx into temporary folders; the featx of the environment
    that runs them (its console script, its editable path) must survive."""
    import importlib.metadata as md

    try:
        before = md.distribution("featx").files or []
    except md.PackageNotFoundError:
        pytest.skip("featx is not installed in this environment")
    test_script_beside_a_folder_named_featx_imports_the_installed_package(tmp_path)
    after = md.distribution("featx").files or []
    assert sorted(map(str, after)) == sorted(map(str, before))
    assert all(f.locate().exists() for f in before if f.suffix in (".pth", ""))
