"""Framework-neutral parts of the web integrations (:mod:`ratekeeper.flask`
and :mod:`ratekeeper.asgi`): options, client addresses, declarations, the
per-app state and the over-limit responses. Nothing here imports a web
framework."""
