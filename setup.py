"""The one thing pyproject.toml cannot yet say without a warning: the matcher's C loops.

``schoolgate/monitoring/speedups.c`` is built when a C compiler is at hand. It is optional:
without one the package installs anyway and the matcher runs the same loops in Python, more
slowly (the gateway warns when it loads the library). Everything else is in pyproject.toml.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "schoolgate.monitoring.speedups",
            sources=["schoolgate/monitoring/speedups.c"],
            optional=True,
        )
    ]
)
