"""The VAE in fp32 for one call, tiled when it does not fit.

``fp32`` (weights and dtype attributes fp32 for a call, exact weights from the file, the guarded
call), ``call`` (the planned call: untiled, one image at a time or tiled), ``estimate`` (peak memory
and the plan), ``net`` (the real network read as operations), ``strips`` (the strip executor).
"""
