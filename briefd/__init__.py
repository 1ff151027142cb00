"""briefd: multi-stage LLM document pipelines as a pykka actor system.

Python API::

    import briefd
    result = briefd.run(job)                       # one job, blocking
    with briefd.Pipeline(settings) as p:           # many jobs, one token cap
        future = p.submit(job)
        result = future.get(timeout=120)
"""

from briefd.api import Pipeline, run
from briefd.config import ConfigError, PipelineSpec, Settings, load_pipeline
from briefd.daemon.client import Client
from briefd.messages import JobResult, JobSpec, JobStatus, PipelineError

__version__ = "0.1.0"

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
    "load_pipeline",
    "run",
]
