"""Settings and the pipeline declaration: what can be configured and how it is checked."""

from briefd.config.errors import ConfigError
from briefd.config.pipeline import PipelineSpec, StageSpec, load_pipeline
from briefd.config.settings import Settings

__all__ = ["ConfigError", "PipelineSpec", "Settings", "StageSpec", "load_pipeline"]
