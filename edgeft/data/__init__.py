"""Dataset tooling: read, check, deduplicate, decontaminate, sample, split and mask conversation JSONL.

Entry points: `io.read_conversations`, `check.check_dataset`, `masking.build_example`, `templates.template_for`,
`sample.write_sample`, `split.split_dataset`. Nothing here imports torch; transformers only when a tokenizer is read.
"""
