"""Build the optional C extension ``crdt_kv._speedups`` (everything else is in pyproject.toml).

``optional=True``: if it does not compile (no compiler, no Python headers), the install
still succeeds and ``crdt_kv.accel`` falls back to the pure-Python path, with a warning.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "crdt_kv._speedups",
            sources=["crdt_kv/_speedups.c"],
            optional=True,
        )
    ]
)
