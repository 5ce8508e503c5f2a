"""DiJiang (Chen et al., ICML 2024, arXiv 2403.19928): frequency-domain kernelised attention."""
