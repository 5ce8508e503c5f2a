"""Paper analyses built on the suite's methods, outside the core: unlike :mod:`harness`, these
modules may import method packages (``baselines``, ``dijiang``) directly.

* :mod:`analyses.kernel_ablation` — how well random and quasi-random features estimate the softmax
  kernel (DiJiang Sec. 3, Eq. 5-12), on a teacher's real queries and keys.
"""
