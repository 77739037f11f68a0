"""The shared inference path: recipes, protocol (resize, windows, stitching), decision, the
`Segmenter` and its per-image state, results, and the registries every other package fills."""
