"""What pyproject.toml cannot say: the top-level ``kernels/`` folder installs as ``elmo_fast.kernels``."""
from setuptools import find_packages, setup

packages = find_packages(include=["elmo_fast", "elmo_fast.*"]) + ["elmo_fast.kernels"]
setup(packages=packages, package_dir={"elmo_fast.kernels": "kernels"})
