"""Model families, one file each: every model maps (N, C, H, W) images to (N, classes) logits."""
