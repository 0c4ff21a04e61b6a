"""The package and, as its package data, the top-level ``properties/`` folder (the one place people
edit the property files): a wheel installs it as ``recbole_reveal/properties/``, where
``recbole_reveal.infra.locations.properties_dir()`` finds it. Everything else is in setup.cfg."""

import os

from setuptools import find_packages, setup

PROPERTIES = "properties"
# every folder of properties/ becomes a data-only package under recbole_reveal.properties
property_packages = {
    "recbole_reveal." + os.path.relpath(folder, ".").replace(os.sep, "."): folder
    for folder, _, _ in os.walk(PROPERTIES)
}

setup(
    packages=find_packages(include=["recbole_reveal", "recbole_reveal.*"]) + sorted(property_packages),
    package_dir=property_packages,
    package_data={name: ["*.yaml", "*.hyper", "*.md"] for name in property_packages},
)
