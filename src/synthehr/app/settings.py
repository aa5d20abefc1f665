"""Server settings: what the clinician web app may read and where it keeps feedback.

Nothing here comes from a request: models and data are fixed when the server starts, requests only
name a model by its id (the folder name), never by a path.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from synthehr.errors import SynthEHRError

DATA_DIR_ENV = "SYNTHEHR_DATA_DIR"
TOKEN_ENV = "SYNTHEHR_APP_TOKEN"
DB_URL_ENV = "SYNTHEHR_DB_URL"
DB_FILE = "feedback.sqlite3"
USER_RULES_FILE = "audit_rules_user.csv"


def user_data_dir() -> Path:
    """The user's synthehr data folder: $SYNTHEHR_DATA_DIR, else $XDG_DATA_HOME/synthehr, else
    ~/.local/share/synthehr (Linux), ~/Library/Application Support/synthehr (macOS),
    %APPDATA%/synthehr (Windows)."""
    if os.environ.get(DATA_DIR_ENV):
        return Path(os.environ[DATA_DIR_ENV]).expanduser()
    if os.environ.get("XDG_DATA_HOME"):
        return Path(os.environ["XDG_DATA_HOME"]).expanduser() / "synthehr"
    home = Path.home()
    if os.name == "nt" and os.environ.get("APPDATA"):
        return Path(os.environ["APPDATA"]) / "synthehr"
    if (home / "Library" / "Application Support").is_dir():
        return home / "Library" / "Application Support" / "synthehr"
    return home / ".local" / "share" / "synthehr"


def find_model_dirs(paths: list[str | Path]) -> list[Path]:
    """Each path is a model folder (holds config.json) or a folder of model folders."""
    out: list[Path] = []
    for p in map(Path, paths):
        if (p / "config.json").is_file():
            out.append(p)
        elif p.is_dir():
            found = sorted(d for d in p.iterdir() if (d / "config.json").is_file())
            if not found:
                raise SynthEHRError(f"--model {p}: neither a model folder (config.json) nor a folder of models")
            out += found
        else:
            raise SynthEHRError(f"--model {p}: no such folder")
    return out


@dataclass
class Settings:
    """How one server runs. `data` (a prepared folder) is optional: without it no real row is ever shown."""

    models: list[Path] = field(default_factory=list)
    data: Path | None = None
    db_url: str | None = None
    token: str | None = None
    data_dir: Path | None = None
    host: str = "127.0.0.1"
    port: int = 8000
    max_samples: int = 200       # reconstruct: samples per request
    max_scenario_n: int = 5000   # scenario: synthetic rows per run
    max_review_batch: int = 500  # review: records queued per request
    default_samples: int = 20
    allowed_hosts: list[str] | None = None  # Host headers accepted (default: loopback names + --host)

    def __post_init__(self) -> None:
        self.models = find_model_dirs(self.models)
        if not self.models:
            raise SynthEHRError("the app needs at least one trained model (--model MODEL_DIR)")
        self.data = Path(self.data) if self.data else None
        self.data_dir = Path(self.data_dir) if self.data_dir else user_data_dir()
        self.db_url = self.db_url or os.environ.get(DB_URL_ENV) or f"sqlite:///{self.data_dir / DB_FILE}"
        self.token = self.token or os.environ.get(TOKEN_ENV) or None

    @property
    def user_rules_path(self) -> Path:
        return Path(self.data_dir) / USER_RULES_FILE
