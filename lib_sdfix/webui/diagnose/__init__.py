"""The Diagnose feature inside the host (the plans and analysis are lib_sdfix.diagnose's, host-free).

``runner`` (the VAE round trip, sweeps and step strips, rendered on the A/B runner; the JSON answer),
``nan_watch`` (the NaN/Inf watch on every sampling step and decode: a generation's with the option on,
and each diagnosis run's), ``last_output`` (the user's last image, for "Use last output") and ``tab``
(the Diagnose section of SDFix's tab).
"""
