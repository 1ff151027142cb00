"""Named pipelines, templated prompts, what a stage does when its upstream failed, and checks.

* :mod:`~briefd.pipelines.registry`: the pipelines a daemon serves (the built-in
  ``briefing-pack`` and every ``NAME.toml`` of ``BRIEFD_PIPELINES``), reloaded on SIGHUP.
* :mod:`~briefd.pipelines.templates`: prompts that read earlier documents (Jinja2, sandboxed).
* :mod:`~briefd.pipelines.inputs`: a stage's prompt at its start, and ``on_upstream_failure``.
* :mod:`~briefd.pipelines.check`: ``briefd pipeline check FILE`` (the DAG, its critical
  path and the dependencies no template reads).
"""
