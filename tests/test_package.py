"""The package's shape: sub-packages, layering, no import circles, old paths."""

import ast
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.join(ROOT, "pss_keras")
RIGS = ("pss_keras.testing", "pss_keras.benchmarking")


def _modules() -> list[str]:
    """Every module of the package, dotted (packages as their name)."""
    out = []
    for folder, _, files in os.walk(PACKAGE):
        for file in sorted(files):
            if not file.endswith(".py"):
                continue
            rel = os.path.relpath(os.path.join(folder, file), ROOT)[: -len(".py")]
            name = rel.replace(os.sep, ".")
            out.append(name.removesuffix(".__init__"))
    return sorted(out)


MODULES = _modules()
PUBLIC = [m for m in MODULES if not m.startswith(RIGS)]


def _path(module: str) -> str:
    base = os.path.join(ROOT, *module.split("."))
    return os.path.join(base, "__init__.py") if os.path.isdir(base) else base + ".py"


def _imports(module: str, top_level_only: bool) -> set[str]:
    """The pss_keras modules ``module`` imports: at import time only, or
    also inside its functions (what they load when called)."""
    with open(_path(module)) as f:
        tree = ast.parse(f.read())
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    found = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            # `from pss_keras.training import sampling` imports a module.
            found |= {f"{node.module}.{a.name}" for a in node.names}
    return {m for m in found if m in MODULES and m != module}


def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"), timeout=600,
    )  # fmt: skip


def test_the_folder_shows_the_pipeline():
    packages = sorted(
        n for n in os.listdir(PACKAGE) if os.path.isfile(os.path.join(PACKAGE, n, "__init__.py"))
    )
    assert packages == [
        "benchmarking", "cost", "data", "export", "jobs", "serving", "supernet", "testing",
        "tflite", "training", "utils",
    ]  # fmt: skip
    flat = [n for n in os.listdir(PACKAGE) if n.endswith(".py") and not n.startswith("_")]
    assert flat == [], "modules belong in a sub-package"


def test_no_import_circle_at_import_time():
    graph = {m: _imports(m, top_level_only=True) for m in MODULES}
    assert graph["pss_keras.training.driver"], "the parser sees imports"

    def cycle_from(start):
        stack, seen = [(start, [start])], set()
        while stack:
            node, path = stack.pop()
            for nxt in graph[node]:
                if nxt == start:
                    return path + [nxt]
                if nxt not in seen:
                    seen.add(nxt)
                    stack.append((nxt, path + [nxt]))
        return None

    cycles = [c for c in map(cycle_from, MODULES) if c]
    assert not cycles, f"import circle: {' -> '.join(cycles[0])}"


def test_every_module_imports_alone_in_a_fresh_interpreter():
    """Each module imported first (the others purged from sys.modules
    before it): an order-dependent circle would fail here."""
    code = (
        "import importlib, json, sys, traceback\n"
        f"modules = {MODULES!r}\n"
        "failed = {}\n"
        "for m in modules:\n"
        "    for loaded in [k for k in sys.modules if k.startswith('pss_keras')]:\n"
        "        del sys.modules[loaded]\n"
        "    try:\n"
        "        importlib.import_module(m)\n"
        "    except Exception:\n"
        "        failed[m] = traceback.format_exc(limit=3)\n"
        "print(json.dumps(failed))\n"
    )
    result = _run(code)
    assert result.returncode == 0, result.stderr[-2000:]
    failed = json.loads(result.stdout.strip().splitlines()[-1])
    assert failed == {}, "\n".join(f"{m}:\n{tb}" for m, tb in failed.items())


def test_importing_the_library_loads_no_rig():
    """``import pss_keras``, every public sub-package and module: no test or
    benchmark rig comes with them, and the TensorFlow-free names stay so."""
    code = (
        "import importlib, json, sys\n"
        "import pss_keras\n"
        "light = 'tensorflow' in sys.modules\n"
        f"for m in {PUBLIC!r}:\n"
        "    importlib.import_module(m)\n"
        f"rigs = sorted(m for m in sys.modules if m.startswith({RIGS!r}))\n"
        "print(json.dumps({'tf_on_import': light, 'rigs': rigs}))\n"
    )
    result = _run(code)
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report == {"tf_on_import": False, "rigs": []}


SERVING = [m for m in MODULES if m.startswith("pss_keras.serving")] + ["pss_keras.tflite.chooser"]
# Deployment (export, TFLite, serving, the rigs that serve) never imports
# training code, not even inside a function.
TRAINING = {m for m in MODULES if m.startswith("pss_keras.training.")} | {
    "pss_keras.testing.synthetic_job"
}
# What serves a model needs no model building either (export and TFLite do).
SERVING_ONLY = TRAINING | {
    "pss_keras.supernet.model", "pss_keras.jobs.config", "pss_keras.cost.flops",
    "pss_keras.supernet.extraction", "pss_keras.export.tier_graph",
    "pss_keras.export.saved_model",
}  # fmt: skip


@pytest.mark.parametrize(
    "module, forbidden",
    [
        *[(m, SERVING_ONLY) for m in MODULES if m.startswith("pss_keras.serving.")],
        ("pss_keras.jobs.tiers", SERVING_ONLY),
        ("pss_keras.testing.model_server", SERVING_ONLY),
        ("pss_keras.testing.served_model", SERVING_ONLY),
        *[(m, SERVING_ONLY) for m in MODULES if m.startswith("pss_keras.benchmarking.")],
        ("pss_keras.tflite.chooser", SERVING_ONLY),
        ("pss_keras.export.saved_model", TRAINING),
        ("pss_keras.export.tier_graph", TRAINING),
        ("pss_keras.tflite.converter", TRAINING),
        ("pss_keras.tflite.qat", TRAINING),
        ("pss_keras.tflite.verification", TRAINING),
    ],
)
def test_deployment_functions_import_no_training_code(module, forbidden):
    """Also the imports inside functions, which importing the module alone
    does not run (a soak helper once built a training job that way)."""
    assert not _imports(module, top_level_only=False) & forbidden
    assert {"pss_keras.jobs.directory", "pss_keras.supernet.model"} <= _imports(
        "pss_keras.export.saved_model", top_level_only=False
    )  # the parser sees imports


def test_deployment_imports_no_training_code():
    """Export, TFLite, the stand-in model server and the client load no
    training module; the client and the on-device tier chooser no TF."""
    code = (
        f"training = {sorted(TRAINING)!r}\n"
        "import importlib, sys\n"
        f"for m in {SERVING!r}:\n"
        "    importlib.import_module(m)\n"
        "assert 'tensorflow' not in sys.modules, 'serving or the chooser imported TensorFlow'\n"
        "import pss_keras.export.saved_model, pss_keras.tflite.converter\n"
        "import pss_keras.testing.model_server, pss_keras.benchmarking.soak\n"
        "loaded = [m for m in training if m in sys.modules]\n"
        "assert not loaded, loaded\n"
    )
    result = _run(code)
    assert result.returncode == 0, result.stderr[-2000:]


# -- old import paths ---------------------------------------------------------
def test_an_old_module_path_names_the_new_one():
    from pss_keras import _moved

    with pytest.raises(ImportError, match=r"pss_keras.flops moved to pss_keras.cost.flops"):
        from pss_keras import flops  # noqa: F401
    with pytest.raises(ImportError, match=r"moved to pss_keras.tflite.chooser"):
        import pss_keras.tflite_chooser  # noqa: F401
    for old, new in _moved.MOVED.items():
        assert new in MODULES, f"{old} points at {new}, which does not exist"
        assert not os.path.exists(os.path.join(PACKAGE, old + ".py"))


def test_public_names_and_package_exports_resolve():
    """``pss_keras.X`` for every name in ``__all__``, and every name each
    sub-package exports (the old flat modules' names among them, e.g.
    ``pss_keras.export.export``, ``pss_keras.serving.PSSClient``)."""
    import importlib

    import pss_keras

    for name in pss_keras.__all__:
        assert getattr(pss_keras, name) is not None, name
    checked = 0
    for module in MODULES:
        package = importlib.import_module(module)
        for name, sub in getattr(package, "_EXPORTS", {}).items():
            value = getattr(package, name)
            assert value is getattr(importlib.import_module(f"{module}.{sub}"), name)
            checked += 1
    assert checked > 50
    assert pss_keras.export.export.__module__ == "pss_keras.export.saved_model"
    assert pss_keras.serving.PSSClient.__module__ == "pss_keras.serving.client"
    assert pss_keras.Supernet.__module__ == "pss_keras.supernet.model"
    with pytest.raises(AttributeError, match="has no attribute 'nothing'"):
        pss_keras.serving.nothing  # noqa: B018


# -- size: one concept a module, functions a reader can hold ---------------------
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 60  # the body, without the docstring
# Modules allowed over the limit, and why.
LONG_MODULES = {
    # One class, Pipelines (train / minival / validation / calibration views of
    # one source), is 311 lines; its parts share the source's state.
    "pss_keras.data.pipelines": 420,
    # The stand-in server's gRPC and REST handlers: TF Serving's behaviours,
    # one row each, read best together.
    "pss_keras.testing.model_server": 420,
}


def _body_lines(node) -> int:
    body = node.body
    if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
        body = body[1:]
    return node.end_lineno - body[0].lineno + 1 if body else 0


def test_modules_and_functions_stay_small():
    long_modules, long_functions = {}, {}
    for module in MODULES:
        with open(_path(module)) as f:
            source = f.read()
        lines = len(source.splitlines())
        if lines > LONG_MODULES.get(module, MAX_MODULE_LINES):
            long_modules[module] = lines
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                if _body_lines(node) > MAX_FUNCTION_LINES:
                    long_functions[f"{module}.{node.name}"] = _body_lines(node)
    assert long_modules == {}, "split these modules (or list them, with why)"
    assert long_functions == {}, "split these functions"
    assert _body_lines(ast.parse("def f():\n    '''doc'''\n    a = 1\n    return a\n").body[0]) == 2
