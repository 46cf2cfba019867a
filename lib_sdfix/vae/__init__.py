"""The VAE in fp32 for one call, sliced or tiled when that does not fit.  Both fronts go through
:func:`lib_sdfix.vae.call.guarded_call`; the modules depend one way, top to bottom:

* ``call``: the one guarded VAE call -- precision guard, fp32 inputs, the VAE's decoder and encoder
  planned per call (untiled, one image at a time or tiled), out of memory retried tiled.
* ``plan``: the untiled/sliced/tiled decision from the estimate, and the audits' memory report.
* ``strips``: the tiled executor -- the network one row strip at a time, exact halos, whole-image
  GroupNorm statistics.
* ``exact``: the fp32 weights of a half-precision VAE read from the file it was loaded from.
* ``fp32``: a VAE's weights (by identity) and dtype attributes in fp32 for a call, everything back after.
* ``estimate``: the peak memory of one network call, untiled and tiled, and the memory a call may use.
* ``net``: the real decoder/encoder read as a list of operations over its own modules.
"""
