"""Datasets of the local lm-eval tasks in this folder, read by datasets' json builder from files beside it."""

from pathlib import Path

HERE = Path(__file__).resolve().parent


def bonsai_qa(**_task_metadata):
    import datasets

    return datasets.load_dataset("json", data_files={"test": str(HERE / "bonsai_qa.jsonl")})
