"""The small types every section of the rig shares (rig.py and work_config.py)."""
from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

NAME_PATTERN = r"^[a-z0-9][a-z0-9-]{0,39}$"
Port = Annotated[int, Field(ge=1, le=65535)]
EnvName = Annotated[str, Field(pattern=r"^[A-Z_][A-Z0-9_]*$")]  # an environment variable's name


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
