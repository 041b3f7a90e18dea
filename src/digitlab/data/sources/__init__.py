"""Dataset sources: one module per source, each registering its settings class in :data:`SOURCES`.

``dataset.source`` names the source; :data:`DatasetSettings` is the pydantic
type of the whole ``dataset`` group (a union of every source's settings,
chosen by ``source``), which the root schema uses. Adding a dataset of an
existing source is a YAML file in ``conf/dataset/``; adding a source is one
module here (settings + ``fetch`` + ``read``, see :mod:`.base`) and a YAML.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import TypeAdapter, ValidationError

from digitlab.data.sources.base import SOURCES, DatasetBase, DownloadedDataset, SingleFileDataset
from digitlab.schema import describe_error

__all__ = ["SOURCES", "DatasetBase", "DatasetSettings", "DownloadedDataset", "SingleFileDataset", "parse_dataset"]

DatasetSettings = SOURCES.tagged_union("source")
_ADAPTER: TypeAdapter[DatasetBase] = TypeAdapter(DatasetSettings)


def parse_dataset(data: Mapping[str, Any]) -> DatasetBase:
    """One ``dataset`` group (a ``conf/dataset/*.yaml`` as a dict, or ``params.yaml``'s), validated and checked.

    A bad value raises one :class:`~digitlab.errors.ConfigError` naming the
    setting, the value and what is allowed. The root schema does the same for
    the whole configuration; this is for the dataset alone (tests, tools).
    """
    from omegaconf import DictConfig, OmegaConf

    if isinstance(data, DictConfig):
        data = OmegaConf.to_container(data, resolve=True)  # type: ignore[assignment]
    try:
        dataset = _ADAPTER.validate_python(data)
    except ValidationError as error:
        raise describe_error(error, data, "dataset") from None
    dataset.check()
    return dataset
