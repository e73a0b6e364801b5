"""Package discovery for the design card's top-level folders.

The source folders (`export/`, `backends/`, `client/`, `analysis/`, ...) are installed as `echodeploy.<folder>`,
every sub-package found on disk included, so a new module can never be left out of the wheel.
"""

from setuptools import find_packages, setup

FOLDERS = ("export", "backends", "client", "analysis", "preprocessing", "benchmarks")

packages = ["echodeploy"] + [f"echodeploy.{sub}" for sub in find_packages("echodeploy")]
for folder in FOLDERS:
    packages += [f"echodeploy.{folder}"] + [f"echodeploy.{folder}.{sub}" for sub in find_packages(folder)]

setup(packages=packages, package_dir={"echodeploy": "echodeploy", **{f"echodeploy.{f}": f for f in FOLDERS}})
