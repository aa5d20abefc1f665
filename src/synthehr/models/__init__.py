"""Generators: the shared interface, the reference baselines and the contract every model passes."""

from synthehr.models.base import Generator, load_model, register, registered_models
from synthehr.models.schema import ColumnSpec, TableSchema
from synthehr.models.reference import IndependentMarginals, MultivariateGaussian
from synthehr.models.contract import CHECKS, check_generator

__all__ = [
    "CHECKS",
    "ColumnSpec",
    "Generator",
    "IndependentMarginals",
    "MultivariateGaussian",
    "TableSchema",
    "check_generator",
    "load_model",
    "register",
    "registered_models",
]

import synthehr.models.conditional  # noqa: F401
import synthehr.models.latent_diffusion  # noqa: F401
