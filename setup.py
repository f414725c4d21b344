"""Build the optional C extension ``crdt_kv._speedups`` (everything else is in pyproject.toml).

``optional=True``: if it does not compile (no compiler, no Python headers), the install
still succeeds and ``crdt_kv.accel`` falls back to the pure-Python path, with a warning.

The sources are one file per job in ``crdt_kv/_speedups_c/`` (``module.c`` lists them);
the headers are ``depends``, so that a change to one rebuilds the extension and the sdist
ships them. The folder is not ``crdt_kv/_speedups/``: a folder of the module's own name
would import as an empty namespace package where the extension is not built, and
``crdt_kv.accel`` would then fail instead of falling back to the pure path.
"""

from setuptools import Extension, setup

SRC = "crdt_kv/_speedups_c"
SOURCES = ("module", "blake2b", "buckets", "reads", "rows", "stage")
HEADERS = ("speedups", "blake2b", "u256")

setup(
    ext_modules=[
        Extension(
            "crdt_kv._speedups",
            sources=[f"{SRC}/{name}.c" for name in SOURCES],
            depends=[f"{SRC}/{name}.h" for name in HEADERS],
            optional=True,
        )
    ]
)
