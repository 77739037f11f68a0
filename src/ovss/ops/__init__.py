"""Pure tensor math on similarity matrices, with no knowledge of models or recipes: affinities,
graphs and propagation, anomaly scores, assignment, hierarchical clustering, spectra."""
