"""Multi-stage models: named stages, each its own runner, with output caching and tier-aware start-up.

A robot policy is the motivating case: a vision-language prefix encoder runs once per observation and a
small action expert runs ~10 denoising steps per action chunk, every step launch-bound. Each stage is
captured on its own (stage.py), so a stage that cannot capture runs eager while the others keep their
graphs (startup.py); a stage's output can be cached by key (cache.py); metrics carry the stage and model
(metrics.py). pipeline.py composes them; policy/ holds the built-in example policy.
"""
