"""The layout ARCHITECTURE.md describes: imports go down its list only, so each package can be read alone."""

import ast
from pathlib import Path

import mivae

SRC = Path(mivae.__file__).parent
# Lower numbers first: a module may import only from a lower layer or from its own package. The modules
# at the top of src/mivae are the floor, in their own order; images and tables share a layer and so never
# import each other; nothing imports the command.
LAYERS = {
    "errors": 0,
    "hardware": 1,
    "artifacts": 2,
    "readback": 3,
    "config": 4,
    "models": 5,
    "training": 6,
    "stats": 7,
    "health": 8,
    "images": 9,
    "tables": 9,
    "study": 10,
    "cli": 11,
}
FACADES = {"mivae", "__main__", "estimators"}  # the public names, re-exported from the layers below


def _unit(module):
    """The layer a dotted module name below mivae belongs to: its first part ("study" for mivae.study.report)."""
    return module.split(".")[1] if module.count(".") else module


def _imports(path):
    """The mivae modules a source file imports, as dotted names ("mivae.images.runs"), and the root's names."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("mivae.")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "mivae":
            if node.module == "mivae":  # from mivae import config: the module; from mivae import __version__: the root
                found |= {f"mivae.{a.name}" for a in node.names if a.name != "__version__"}
            else:
                found.add(node.module)
                # from mivae.study import beyond names a module of the package
                found |= {
                    f"{node.module}.{a.name}"
                    for a in node.names
                    if (SRC / Path(*node.module.split(".")[1:]) / f"{a.name}.py").exists()
                }
    return found


def _edges():
    """(importer, imported) pairs of module names below mivae, over every source file."""
    edges = set()
    for path in SRC.rglob("*.py"):
        parts = path.relative_to(SRC).with_suffix("").parts
        importer = ".".join(("mivae", *parts[: -1 if parts[-1] == "__init__" else None]))  # a package by its name
        edges |= {(importer, imported) for imported in _imports(path)}
    return edges


def test_the_edges_found_include_known_imports():
    # the collector itself: each import form is seen (plain, from a package, from the root)
    edges = _edges()
    assert ("mivae.study.report", "mivae.images.figures") in edges
    assert ("mivae.study.reproduce", "mivae.study.beyond") in edges
    assert ("mivae.cli.images", "mivae.config") in edges  # from mivae import config as cfg
    assert ("mivae.images.runs", "mivae.artifacts") in edges


def test_every_import_goes_down_the_layers():
    wrong = []
    for importer, imported in sorted(_edges()):
        source, target = _unit(importer), _unit(imported)
        if source in FACADES or source == target:
            continue
        assert target in LAYERS, f"{imported} is in no layer of LAYERS: add it to the test and ARCHITECTURE.md"
        if source not in LAYERS:
            raise AssertionError(f"{importer} is in no layer of LAYERS: add it to the test and ARCHITECTURE.md")
        if LAYERS[target] >= LAYERS[source]:
            wrong.append(f"{importer} imports {imported}")
    assert not wrong, "imports that climb: " + "; ".join(wrong)


def test_the_public_estimators_are_importable_from_the_package_and_the_earlier_module():
    import mivae
    from mivae import estimators
    from mivae.tables import estimators as home

    public = ("MIWAEImputer", "MultipleImputationClassifier", "NotMIWAEImputer", "VAEImputer", "load_imputer")
    assert set(mivae.__all__) == {*public, "__version__"} and set(estimators.__all__) == set(public)
    for name in public:
        assert getattr(mivae, name) is getattr(home, name) is getattr(estimators, name), name
