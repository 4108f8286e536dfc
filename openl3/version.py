"""The openl3 release whose API, defaults and numbers `embedkit.openl3` reproduces.

`embedkit.openl3.__version__` is this (scripts that check openl3's version keep working);
embedkit's own version is the installed package's (`importlib.metadata.version("embedkit")`).
"""

short_version = "0.4"
version = "0.4.2"
