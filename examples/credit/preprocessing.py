"""The credit pipeline's preprocessing_fn: z-scores, a vocabulary and quantile buckets, computed
over the training split once and applied by the serving graph."""

from tfprod.pipeline import transform as tft

NUMERIC = ["mean_radius", "mean_texture", "mean_area", "mean_concavity", "worst_radius", "worst_concavity",
           "worst_area"]


def preprocessing_fn(inputs):
    out = {f"{name}_z": tft.scale_to_z_score(inputs[name]) for name in NUMERIC}
    out["region_id"] = tft.compute_and_apply_vocabulary(inputs["region"])
    out["area_bucket"] = tft.bucketize(inputs["mean_area"], 4)
    return out
