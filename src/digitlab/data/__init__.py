"""The dataset side of digitlab: sources, the download and preprocess stages, and the formats between them.

- :mod:`digitlab.data.sources`: one module per dataset source (its settings,
  how to fetch its raw files, how to read them), registered by name;
  ``DatasetSettings`` is the pydantic type of the ``dataset`` settings.
- :mod:`digitlab.data.download` and :mod:`digitlab.data.preprocess`: the two
  data stages (``data/raw/<dataset>`` and ``data/prepared``; an image folder is read in place).
- :mod:`digitlab.data.raw` and :mod:`digitlab.data.prepared`: what those
  directories hold, the contracts between the stages.
- :mod:`digitlab.data.images` (the one image decoder), :mod:`digitlab.data.split`
  (subsets and splits), :mod:`digitlab.data.fetch` (verified downloads) and
  :mod:`digitlab.data.files` (hashes and links).
"""
