"""Everything between a recipe's `train_data` and a batch of token ids, one job per module:

    sources.py        the source spec (dataset, split, columns, filter, ...) shared by training and evaluation
    loading.py        named sets / local files / hub ids -> role-mapped, validated, tokenized `datasets`
    train_data.py     a recipe's `train_data` sources joined into the training set (prompts, BEIR pairs)
    sampling.py       rank-aware batch samplers: no duplicates, length-grouped
    multi_dataset.py  one source per batch over several sources; the recipe -> sampler factory
    shards.py         a streamed source: shard readers (parquet / jsonl / csv / hub) -> role-mapped rows
    streaming.py      streamed sources -> duplicate-free global batches from a look-ahead buffer; exact resume
    batch.py          the batch contract: roles, collator, typed `Batch` -> loss keyword arguments

Nothing here imports the trainer, the recipe config or the CLI.
"""
