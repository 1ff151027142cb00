"""briefd: multi-stage LLM document pipelines as a pykka actor system.

Python API::

    import briefd
    result = briefd.run("job.json")                # one job, blocking (a path, dict or JobSpec)
    with briefd.Pipeline(settings) as p:           # many jobs, one token cap
        future = p.submit(job)
        result = future.get(timeout=120)
    briefd.run("job.json", on_event=print)         # each event (briefd.events), as it happens

As a library briefd is quiet: its loguru messages are disabled at import (loguru's
convention for libraries), so an application that imports it prints only what
it chooses to. :func:`briefd.ops.logs.setup_logging` (what the CLI and the
daemon call) or ``loguru.logger.enable("briefd")`` turns them on.
"""

from importlib.metadata import PackageNotFoundError, version

from loguru import logger

logger.disable("briefd")  # before any briefd module can log; setup_logging enables it

from briefd import events  # noqa: E402
from briefd.api import Pipeline, run  # noqa: E402
from briefd.config import ConfigError, PipelineSpec, Settings, load_pipeline  # noqa: E402
from briefd.daemon.client import Client  # noqa: E402
from briefd.messages import JobResult, JobSpec, JobStatus, PipelineError  # noqa: E402

try:
    __version__ = version("briefd")
except PackageNotFoundError:  # run from a checkout that was never installed
    __version__ = "0.0.0+unknown"

__all__ = [
    "Client",
    "ConfigError",
    "JobResult",
    "JobSpec",
    "JobStatus",
    "Pipeline",
    "PipelineError",
    "PipelineSpec",
    "Settings",
    "__version__",
    "events",
    "load_pipeline",
    "run",
]
