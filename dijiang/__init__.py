"""DiJiang (Chen et al., ICML 2024, arXiv 2403.19928): frequency-domain kernelised attention.

Importing the package registers three methods: ``dijiang`` (the paper's form, :mod:`dijiang.mixer`),
``dijiang-official`` (the official code's computation, :mod:`dijiang.official`) and ``pff`` (positive
fixed features, the paper's ablation). See dijiang/README.md.
"""

from dijiang import decay, features, mixer, official  # noqa: F401  (mixer and official register the methods)
