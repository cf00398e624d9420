"""Shared statistics: pure functions on numbers and numpy arrays, no HTTP.

- ``services.stats.abtest``: the A/B-test toolkit: running moments (Welford/Chan), Wilson and Newcombe
  intervals, the two-proportion z-test, Welch from sufficient statistics, Beta and Normal posteriors, CUPED,
  mSPRT always-valid p-values, the sample-ratio-mismatch test, power, and a fast exact bootstrap of the mean.
- ``services.stats.fidelity``: how close a synthetic data set is to the real one (KS distances, correlation
  error, total variation, distance to the closest record).
"""
