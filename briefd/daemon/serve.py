"""``briefd serve [--config FILE]``: the daemon's command line.

Parses the arguments, takes signals from the first instruction (a signal
during start-up waits for the loop), configures logging and runs
:class:`briefd.daemon.main.Daemon` until it stops.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from loguru import logger

from briefd.config import ConfigError, Settings
from briefd.daemon.main import Daemon
from briefd.daemon.service import install_signals
from briefd.ops.logs import setup_logging


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # one line, exit 2 (through the CLI)
        raise ConfigError(f"serve: {message}")


def main(argv: list[str] | None = None) -> int:
    """``briefd serve [--config FILE]``: run until SIGTERM/SIGINT; 2 with one line on bad set-up."""
    parser = _Parser(
        prog="briefd serve",
        description="Run the briefd daemon: an HTTP API on BRIEFD_LISTEN (127.0.0.1:8765) for "
        "many jobs at once under one token cap, journalled in BRIEFD_DATA_DIR. Runs until "
        "SIGTERM or SIGINT; SIGHUP reads --config and the BRIEFD_PIPELINES folder again (the "
        "token cap, retries and timeouts apply live). See docs/daemon.md.",
    )
    parser.add_argument("--config", type=Path, help="settings TOML file (else $BRIEFD_CONFIG)")
    args = parser.parse_args(argv)
    wakeup, _writer = install_signals()  # a signal during start-up waits for the loop
    env_config = os.environ.get("BRIEFD_CONFIG")
    config_file: Path | None = args.config or (Path(env_config) if env_config else None)
    settings = Settings.load(config_file)
    setup_logging(settings)
    daemon = Daemon(settings, config_file)
    try:
        daemon.start()
    except BaseException:
        daemon.abort()
        raise
    code = daemon.run(wakeup)
    if code != 0:  # threads may be stuck: do not wait for them
        logger.complete()
        os._exit(code)
    return code
