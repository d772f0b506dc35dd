"""Energy model: hardware catalog, calibrated analytical model, profile interpolation, calibration."""
