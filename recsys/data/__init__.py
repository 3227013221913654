"""Data: from raw files to TorchRec batches, one module per step.

- ``convert/``: raw TSV/CSV -> our npy layout (chunks, parsers, vocabularies, writer, driver);
- ``schema``: ``meta.json`` (field names, table sizes, splits), the contract with the models;
- ``criteo_layout``: the Criteo column counts and names, and TorchRec's ``day_{i}_*`` files;
- ``source``: the memmap reader ``NpySplit``; ``torchrec_layout``: TorchRec's day files as a source;
- ``ranges``: rows per rank, batch plans, the block shuffle; ``prefetch``: reading ahead;
- ``loader``: ``make_loader`` / ``CTRLoader`` (and the old import path of all of the above);
- ``batch``: arrays -> ``Batch(dense, KJT, labels)``; ``synth``: synthetic datasets.

Nothing is imported here on purpose: ``import recsys.data.schema`` (config loading, model
builders) must not pull in torch's data stack.

Example::

    from recsys.data.loader import make_loader
    loader = make_loader("data/criteo", "train", 4096, shuffle=True)
"""
