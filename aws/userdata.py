"""Reads aws/userdata.sh and aws/idle_stop.sh; writes the GPU host's cloud-init user data with one stack's settings."""

from __future__ import annotations

import shlex
from dataclasses import asdict, dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
USER_DATA_TEMPLATE = HERE / "userdata.sh"
IDLE_STOP_SCRIPT = HERE / "idle_stop.sh"
# EC2 refuses user data above 16 KiB before base64 encoding.
USER_DATA_LIMIT_BYTES = 16 * 1024
_SETTINGS_MARKER = "# @@SETTINGS@@"
_IDLE_STOP_MARKER = "# @@IDLE_STOP_SCRIPT@@"
_HEREDOC_END = "MEDIMG_IDLE_STOP"


@dataclass(frozen=True)
class HostSettings:
    """What the bootstrap script needs to know about its stack; every field becomes one shell variable."""

    stack_id: str
    region: str
    bucket: str
    artifacts_destination: str
    git_url: str
    git_ref: str
    instance_type: str
    hourly_price_usd: float | None = None
    idle_minutes: int = 30
    db_secret_id: str = ""
    mlflow_port: int = 5000

    def shell_assignments(self) -> str:
        lines = []
        for name, value in asdict(self).items():
            text = "" if value is None else str(value)
            if "\n" in text or "\0" in text:
                raise ValueError(f"Host setting {name} must be one line, got {text!r}.")
            lines.append(f"{name.upper()}={shlex.quote(text)}")
        return "\n".join(lines)


def render_user_data(settings: HostSettings) -> str:
    """The bootstrap script with `settings` filled in, checked against EC2's 16 KiB user data limit."""
    for name in ("idle_minutes", "mlflow_port"):
        value = getattr(settings, name)
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise ValueError(f"{name} must be a whole number >= 0, got {value!r}.")
    template = USER_DATA_TEMPLATE.read_text()
    idle_stop = IDLE_STOP_SCRIPT.read_text().rstrip("\n")
    if any(line.strip() == _HEREDOC_END for line in idle_stop.splitlines()):
        raise ValueError(f"{IDLE_STOP_SCRIPT} must not contain a line reading {_HEREDOC_END}.")
    for marker in (_SETTINGS_MARKER, _IDLE_STOP_MARKER):
        if template.count(marker) != 1:
            raise ValueError(f"{USER_DATA_TEMPLATE} must contain the line {marker!r} exactly once.")
    rendered = template.replace(_SETTINGS_MARKER, settings.shell_assignments()).replace(_IDLE_STOP_MARKER, idle_stop)
    size = len(rendered.encode("utf-8"))
    if size > USER_DATA_LIMIT_BYTES:
        raise ValueError(
            f"User data is {size} bytes, over EC2's {USER_DATA_LIMIT_BYTES}-byte limit: shorten {USER_DATA_TEMPLATE}."
        )
    return rendered
