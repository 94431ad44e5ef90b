"""The package layering: `attentive` never imports `predictors` (the data flow reads space -> supernet -> sampler
-> trainer -> predictor -> search; train.py and the other CLIs wire predictors into the library)."""
import ast
import json
import pkgutil
import subprocess
import sys
from pathlib import Path

import attentive

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = Path(attentive.__file__).resolve().parent


def _attentive_modules() -> list[str]:
    return sorted(m.name for m in pkgutil.walk_packages([str(PACKAGE)], prefix="attentive."))


def test_importing_every_attentive_module_loads_no_predictors_module():
    modules = _attentive_modules()
    assert "attentive.trainer" in modules and "attentive.train_state" in modules
    code = ("import importlib, json, sys\n"
            f"for name in {modules!r}:\n"
            "    importlib.import_module(name)\n"
            "print(json.dumps(sorted(k for k in sys.modules if k == 'predictors' or k.startswith('predictors.'))))\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == []


def test_no_attentive_source_imports_predictors():
    """Also imports inside functions, which an import-time check cannot see."""
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""] if node.level == 0 else []
            elif isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) in (
                    "import_module", "__import__"):  # importlib.import_module("predictors.x") and the like
                names = [a.value for a in node.args[:1] if isinstance(a, ast.Constant) and isinstance(a.value, str)]
            else:
                continue
            offenders += [f"{path.relative_to(ROOT)}:{node.lineno}: {n}" for n in names
                          if n == "predictors" or n.startswith("predictors.")]
    assert offenders == []
