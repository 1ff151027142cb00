"""briefd: multi-stage LLM document pipelines as a pykka actor system.

Python API::

    import briefd
    result = briefd.run(job)                       # one job, blocking
    with briefd.Pipeline(settings) as p:           # many jobs, one token cap
        future = p.submit(job)
        result = future.get(timeout=120)
"""

from pathlib import Path as _Path

# In a source checkout the card's folders (actors/, messages/, config/) sit beside
# this one and pyproject's package-dir maps them to briefd.actors and friends. So
# that ``python -m briefd`` run from the checkout (where this folder shadows the
# installed package) finds them too, the checkout's root joins this package's path.
_root = _Path(__file__).resolve().parent.parent
if (_root / "pyproject.toml").is_file() and (_root / "actors" / "__init__.py").is_file():
    __path__.append(str(_root))

from briefd.api import Pipeline, run  # noqa: E402
from briefd.client import Client  # noqa: E402
from briefd.config import ConfigError, PipelineSpec, Settings, load_pipeline  # noqa: E402
from briefd.messages import JobResult, JobSpec, JobStatus, PipelineError  # noqa: E402

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
