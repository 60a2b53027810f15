"""What strategy auto chose and why, as a record: auto.json in the run folder (and `auto` in metrics.json)."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medtl.core.errors import MedtlError
from medtl.core.io import write_json


ORDER = ("budget_seconds", "train_images", "similarity", "few_below", "rule", "candidates", "chosen", "reason",
         "replans", "resumed", "threads", "elapsed_seconds")


@dataclass(frozen=True)
class AutoRecord:
    """Strategy auto's choice on validation, with everything it was made from.

    Attributes:
        budget_seconds: The run's budget (`train.budget`), shared by the candidates.
        train_images: Training images (the rule's "few" or "many").
        similarity: The linear probe's validation AUC and the AUC from which data count as close to ImageNet.
        few_below: Training images below which data count as few.
        rule: The rule's order of the fine-tuning candidates, and why.
        candidates: Each candidate tried: strategy, image size, epochs planned and run, best epoch, validation
            AUC and loss, seconds, note.
        chosen: The strategy chosen.
        reason: Why, in one sentence (validation only; test was not looked at).
        replans: Every re-plan of the candidates still to run, from measured epochs.
        resumed: Each resume after a kill or Ctrl-C, and where it continued.
        threads: The threads timed and chosen on a busy machine ({}: not timed).
        elapsed_seconds: Seconds of the budget used.
    """

    chosen: str
    candidates: list[dict[str, Any]]
    reason: str = ""
    budget_seconds: float | None = None
    train_images: int = 0
    similarity: dict[str, Any] = field(default_factory=dict)
    few_below: int = 0
    rule: str = ""
    replans: list[Any] = field(default_factory=list)
    resumed: list[dict[str, Any]] = field(default_factory=list)
    threads: dict[str, Any] = field(default_factory=dict)
    elapsed_seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """The JSON object auto.json holds (its keys in the order they were always written)."""
        data = dataclasses.asdict(self)
        return {k: data[k] for k in ORDER}

    def write(self, path: Path) -> None:
        """Write auto.json atomically.

        Args:
            path: The file.
        """
        write_json(path, self.to_dict())

    @classmethod
    def read(cls, path: Path) -> "AutoRecord | None":
        """The one reader of auto.json.

        Args:
            path: The file.

        Returns:
            Its record; None when there is none (a run of a fixed strategy). Keys this version does not know
            are left out; keys an older medtl did not write take their defaults.

        Raises:
            MedtlError: The file is unreadable or not auto's record.
        """
        if not path.is_file():
            return None
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            known = {f.name for f in dataclasses.fields(cls)}
            return cls(**{k: v for k, v in data.items() if k in known})
        except (OSError, UnicodeDecodeError, ValueError, TypeError, AttributeError) as exc:
            raise MedtlError(f"{path} is not strategy auto's record ({type(exc).__name__}); train the run again "
                             "(its auto.json is damaged)") from exc

    def __getitem__(self, key: str) -> Any:
        """`record["chosen"]`: a key of auto.json, as the record was read before it was one."""
        return self.to_dict()[key]
