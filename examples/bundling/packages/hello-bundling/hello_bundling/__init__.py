"""The package the Bundling example builds into a wheel and runs."""

import sys
from importlib.metadata import version


def main() -> None:
    if "--version" in sys.argv[1:]:
        print(version("hello-bundling"))
        return
    print(f"hello from hello-bundling {version('hello-bundling')} on Python {sys.version.split()[0]}")
