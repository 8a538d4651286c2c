"""The model description: everything inference needs besides the weights, as one typed, versioned object.

It is saved in plain types beside the weights (so ``weights_only=True`` loads it on any machine) and under
``medseg`` in an exported bundle's metadata. ``FORMAT`` names its version; a description of an older version is
brought up to this one when read (``from_saved``), so models written by earlier releases still load.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from pipeline.errors import ModelError

FORMAT = "medseg-model/2"
VERSION_1 = "medseg-model/1"


class NetworkSpec(BaseModel):
    """The network's class (``name``) and the arguments of its constructor, which differ between networks."""

    model_config = ConfigDict(extra="allow")
    name: str
    spatial_dims: int
    in_channels: int = 1
    out_channels: int

    def arguments(self) -> dict[str, Any]:
        return self.model_dump(exclude={"name"})


class SlidingWindow(BaseModel):
    model_config = ConfigDict(extra="forbid")
    overlap: float = Field(0.5, ge=0, lt=1)
    sw_batch_size: int = Field(4, ge=1)


class Postprocess(BaseModel):
    model_config = ConfigDict(extra="forbid")
    largest_component_classes: list[int] = Field(
        default_factory=list, description="classes of which only the largest connected component is kept"
    )


class ModelDescription(BaseModel):
    model_config = ConfigDict(extra="forbid")
    format: str = Field(FORMAT, description="the version of this description")
    network: NetworkSpec = Field(description="the network's name and constructor arguments")
    labels: dict[str, str] = Field(description="class index (0..K-1, as text) -> name; 0 is the background")
    label_values: list[int] = Field(description="the value each class index had in the data, written back")
    modality: str = Field(description="'CT', 'MRI', ...: what the intensity normalisation assumes")
    preprocess: dict[str, Any] = Field(description="the preprocessing plan: orientation, spacing, crop, intensity")
    patch_size: list[int] = Field(description="the sliding window (the input tile, for the U-Net of the paper)")
    slice_axis: int | None = Field(None, description="the volume axis a 2D network runs along, if it runs on volumes")
    configuration: dict[str, Any] | None = Field(None, description="the planned network, patch and batch")
    inference: SlidingWindow = Field(
        default_factory=SlidingWindow,
        description="overlap and window batch of the sliding window (TTA is chosen when segmenting)",
    )
    postprocess: Postprocess | None = Field(None, description="what training decided on its validation cases")
    step_plan: dict[str, Any] | None = Field(None, description="precision, compilation and epochs the probe chose")
    provenance: dict[str, Any] | None = Field(None, description="run, commit, epochs and params that trained it")

    @property
    def largest_component_classes(self) -> list[int]:
        return self.postprocess.largest_component_classes if self.postprocess else []

    def to_saved(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    @classmethod
    def from_saved(cls, content: Any, where: Path | str) -> ModelDescription:
        """A saved description of this version or an older one; otherwise a ModelError naming ``where``."""
        found = content.get("format") if isinstance(content, dict) else None
        if found not in (FORMAT, VERSION_1):
            raise ModelError(f"{where}: not a medseg model (expected format '{FORMAT}', found {found!r})")
        content = {k: v for k, v in content.items() if k != "state_dict"}
        try:
            return cls.model_validate(_from_version_1(content) if found == VERSION_1 else content)
        except ValidationError as err:
            problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in err.errors())
            raise ModelError(f"{where}: a damaged model description ({problems})") from None


def _from_version_1(content: dict[str, Any]) -> dict[str, Any]:
    """Version 1 copied params' inference section, training's ``largest_component`` switch included; an empty
    post-processing was written as ``{}``; files from before planning carry no ``configuration``."""
    inference = {k: v for k, v in (content.get("inference") or {}).items() if k in SlidingWindow.model_fields}
    return {**content, "format": FORMAT, "inference": inference, "postprocess": content.get("postprocess") or None}
