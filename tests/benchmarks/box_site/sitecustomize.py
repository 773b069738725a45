"""Dry runs of gpu_suite.sh only: refuse to import the packages the lent GPU box lacks and .whl/ does not ship.

gpu_suite.sh --dry-run puts this folder on PYTHONPATH and lists those top-level module names in
GPU_SUITE_ABSENT (comma-separated), so a CPU dry run fails here, not on the GPU, if a suite code path
starts importing one of them. Python imports `sitecustomize` at start-up when it is on sys.path.
"""

import importlib.abc
import os
import sys


class _Absent(importlib.abc.MetaPathFinder):
    """Wraps each start-up finder: blocked names are simply not found (find_spec None), as on the box,
    so optional imports (`importlib.util.find_spec("xformers")`, try/except ImportError) behave as there."""

    def __init__(self, inner, names: set[str]):
        self.inner, self.names = inner, names

    def find_spec(self, fullname, path=None, target=None):
        if fullname.split(".")[0] in self.names:
            return None
        find = getattr(self.inner, "find_spec", None)
        return find(fullname, path, target) if find is not None else None

    def find_distributions(self, *args, **kwargs):  # importlib.metadata asks the meta path finders too
        find = getattr(self.inner, "find_distributions", None)
        return find(*args, **kwargs) if find is not None else iter(())

    def invalidate_caches(self):
        if hasattr(self.inner, "invalidate_caches"):
            self.inner.invalidate_caches()


_names = {n.strip() for n in os.environ.get("GPU_SUITE_ABSENT", "").split(",") if n.strip()}
if _names:
    for _n in list(sys.modules):
        if _n.split(".")[0] in _names:
            del sys.modules[_n]
    sys.meta_path[:] = [_Absent(f, _names) for f in sys.meta_path]
