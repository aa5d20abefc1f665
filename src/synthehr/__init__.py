"""synthehr: turn real EHR data into synthetic patients that clinicians can shape, audit and trust."""

__version__ = "0.1.0"
