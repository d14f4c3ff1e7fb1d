"""What training, transfer and inference need to know of a data set, as one frozen value."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DataSpec:
    """The classes a model predicts and the images it takes (``channels`` x ``image_size`` x
    ``image_size``, normalised with ``mean`` and ``std`` per channel).

    A data module knows its normalisation statistics (and an image folder its class names) only
    once it is set up: until then they are empty here, and the LightningModule takes them from
    the data module's spec when fitting starts, into buffers that its checkpoints carry.
    """

    num_classes: int
    channels: int
    image_size: int
    class_names: tuple[str, ...] = ()
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()

    @classmethod
    def of(cls, datamodule) -> DataSpec:
        """The spec of a data module (cnnlab.data.base.ImageDataModule), as far as it is known."""
        return cls(
            num_classes=int(datamodule.num_classes),
            channels=int(datamodule.channels),
            image_size=int(datamodule.image_size),
            class_names=tuple(datamodule.class_names),
            mean=tuple(float(m) for m in datamodule.mean),
            std=tuple(float(s) for s in datamodule.std),
        )
