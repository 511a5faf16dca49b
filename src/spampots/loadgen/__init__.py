"""``spampots loadgen``: a load generator of realistic open-proxy / open-relay abuse.

``mix`` (presets and TOML mixes) -> ``run`` (scheduler, sources, ground truth in
``truth``) -> ``clients`` (raw-bytes protocol clients). ``cli.register`` adds the
subcommand to ``spampots``.
"""
