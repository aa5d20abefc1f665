"""FLEXGEN-EHR: latent diffusion over static + temporal EHR that trains with a missing modality.

    from synthehr.models.latent_diffusion import FlexGenEHR, stay_table
    table, schema = stay_table(prepared, hours=48)          # one row per stay
    model = FlexGenEHR(vae_epochs=60, diffusion_epochs=200).fit(table, schema)
    deaths = model.condition({"in_hospital_mortality": 1}, n=500)

Registered as model_type "flexgen".
"""

from synthehr.models.latent_diffusion.alignment import (AffineMap, barycentric_projection, cosine_similarity,
                                                       fit_affine_map, gw_coupling, knn_impute, label_design,
                                                       label_signs, pmm_impute, residual_noise)
from synthehr.models.latent_diffusion.flexgen import FlexGenEHR
from synthehr.models.latent_diffusion.stay_table import (DEFAULT_STATIC, drop_modalities, modality_columns,
                                                        parse_temporal, stay_table, temporal_name)

__all__ = [
    "DEFAULT_STATIC",
    "AffineMap",
    "FlexGenEHR",
    "barycentric_projection",
    "cosine_similarity",
    "drop_modalities",
    "fit_affine_map",
    "gw_coupling",
    "knn_impute",
    "label_design",
    "label_signs",
    "modality_columns",
    "parse_temporal",
    "pmm_impute",
    "residual_noise",
    "stay_table",
    "temporal_name",
]
