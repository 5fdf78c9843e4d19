"""What a gated tracking server is told: its policy, whether basic-auth is on, environments and recorder accounts.

Read once per worker from the YAML file named by ``SAFETY_LAB_GATE_CONFIG`` (every key optional)::

    policy: path/to/policy.yaml     # default: the packaged policy (its `approvers` may force refused moves)
    basic_auth: true                # wrap MLflow's basic-auth app (configured as for --app-name basic-auth)
    environments:                   # registered-model name patterns -> the gate rule a copy into them follows
      "prod-*": Production
    recorders: [eval-bot]           # with basic_auth: the accounts that may write safety.* tags
"""

from __future__ import annotations

import fnmatch
import os
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from safety_lab.errors import SafetyLabError
from safety_lab.names import STAGES, folded_stage

CONFIG_ENV = "SAFETY_LAB_GATE_CONFIG"
DEFAULT_ENVIRONMENTS = {"prod-*": "Production", "*-prod": "Production", "staging-*": "Staging"}


class GateConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    policy: str | None = Field(default=None, description="policy YAML; default: the packaged policy")
    basic_auth: bool = Field(default=False, description="wrap MLflow's basic-auth app")
    environments: dict[str, str] = Field(
        default_factory=lambda: dict(DEFAULT_ENVIRONMENTS),
        description="registered-model glob -> stage whose gate rule a copy into a matching model follows",
    )
    recorders: tuple[str, ...] = Field(default=(), description="with basic_auth: accounts that may record")

    @field_validator("environments")
    @classmethod
    def _stages(cls, value: dict[str, str]) -> dict[str, str]:
        bad = [v for v in value.values() if folded_stage(v) is None]
        if bad:
            raise ValueError(f"{bad[0]!r} is not a stage ({', '.join(STAGES)})")
        return {k: folded_stage(v) for k, v in value.items()}

    def environment_of(self, model_name: str) -> str | None:
        """The stage whose rule a copy into `model_name` follows (the first pattern that matches), else None."""
        for pattern, stage in self.environments.items():
            if fnmatch.fnmatchcase(model_name, pattern):
                return stage
        return None


def load_config(path: str | os.PathLike | None = None) -> GateConfig:
    """The configuration at `path` (default: $SAFETY_LAB_GATE_CONFIG), or the defaults when none is named."""
    path = path or os.environ.get(CONFIG_ENV)
    if not path:
        return GateConfig()
    p = Path(path)
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise SafetyLabError(CONFIG_ENV, f"cannot read {p}: {' '.join(str(exc).split())[:200]}") from None
    if not isinstance(data, dict):
        raise SafetyLabError(CONFIG_ENV, f"{p}: expected a mapping, got {type(data).__name__}")
    try:
        return GateConfig.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(x) for x in err["loc"])
        msg = "unknown key" if err["type"] == "extra_forbidden" else err["msg"].removeprefix("Value error, ")
        raise SafetyLabError(CONFIG_ENV, f"{p}: {where}: {msg}") from None
