"""Model inversion: losses, DeepInversion, ABD generator, PMI per-layer and full-model inversion."""
