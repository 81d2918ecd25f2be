"""Pictures of what vidmask computes (masks, clusters, saliency)."""
