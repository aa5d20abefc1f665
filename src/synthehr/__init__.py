"""synthehr: turn real EHR data into synthetic patients that clinicians can shape, audit and trust.

The public API is importable from here; heavy modules load on first use so `import synthehr` is fast.
"""

__version__ = "0.1.0"

_LAZY = {
    "prepare": ("synthehr.data", "prepare"),
    "load_prepared": ("synthehr.data", "load_prepared"),
    "load_model": ("synthehr.models.base", "load_model"),
    "train_model": ("synthehr.models.training", "train_model"),
    "audit_meds": ("synthehr.audit", "audit_meds"),
}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'synthehr' has no attribute {name!r}")


__all__ = ["__version__", *_LAZY]
