"""The content stage: a day's digest (written by hand or generated) → the issue (its edition, render,
thumbnails, checks) → what is published (web version, archive, feed) and previewed.

It owns the digest's format, the templates' context and the public folder. It is handed the
settings' `site` section (`generate` the `generation` one), never the whole settings. It may import
config (the bundled templates' folder), sections, errors, files and db (the summary cache), and the providers' neutral personal tags; never the
readers, the send or a provider.
"""
