"""DiJiang (Chen et al., ICML 2024, arXiv 2403.19928): frequency-domain kernelised attention.

Three methods: ``dijiang`` (the paper's form, :mod:`dijiang.mixer`), ``dijiang-official`` (the official
code's computation, :mod:`dijiang.official`) and ``pff`` (positive fixed features, the paper's
ablation). The registry imports every module of this package on first use, so they register
themselves (no import here). See dijiang/README.md.
"""
