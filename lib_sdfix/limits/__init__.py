"""Bounds on what one API request may ask the WebUI to do through SDFix, one module per what they bound:
``values`` (the UI's numbers, JSON values, text, and :class:`~lib_sdfix.limits.values.Rule`),
``txt2img`` (every txt2img field, and a whole payload), ``overrides`` (``override_settings``) and
``images`` (base64 images).

Why: SDFix's A/B and Diagnose routes run generations while holding the WebUI's queue lock, so a
single request with a huge size or step count, an option override that writes files elsewhere, or a
value that only fails deep inside the WebUI (HTTP 500) could take the WebUI down for everyone.  The
numbers are the WebUI v1.10.1 UI's own ranges (``modules/ui.py`` and friends), so everything a user
can do in the txt2img tab passes; where the WebUI has no bound, the one chosen here says why.  Every
refusal is a :class:`~lib_sdfix.settings.SettingsError` naming the field path, e.g.
``payload.width``, which the routes answer with HTTP 422.
"""
