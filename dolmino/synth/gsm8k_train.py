"""The GSM8K train split as Dolma documents: the "GSM8K train split, as is" math subset.

    python -m dolmino.synth --generator gsm8k_train --gsm8k-jsonl gsm8k_train.jsonl --out build/synth/gsm8k_train

Item i is row i of `--gsm8k-jsonl` (HF hub layout: `question`, `answer` with its
`<<calculator>>` annotations and `#### answer` line), written unchanged as
"Question: ...\\nAnswer: ..." so the subset is GSM8K train as is (OLMo released its "main" and
"socratic" configurations: pass both files in one run, as a glob such as `--gsm8k-jsonl 'gsm8k/*.jsonl'`
or one concatenated file; two runs of one seed give their documents the same ids). There is no
default input; `--demo-gsm8k-test` reads the packaged *test* split instead, for demos only,
with a warning. Rows without string `question` and `answer` are quarantined, and so are rows
whose question is a GSM8K *test* question (`gsm8k_test_item`: a test file among the inputs).
"""

from __future__ import annotations

from typing import Iterator

from dolmino.synth.base import DEFAULT_ADDED, make_doc, partition_range, quarantine
from dolmino.synth.gsm8k_numbers import (GSM8K_FIELDS, GSM8K_TEST_ITEM, NO_GSM8K_TRAIN, has_gsm8k_fields, load_items,
                                          gsm8k_test_item_problem, warn_test_split)
from dolmino.synth.inputs import InputFiles


class Gsm8kTrainGenerator:
    name = "gsm8k_train"

    def __init__(self, data_path: str | None = None, num_docs: int | None = None, demo_test_split: bool = False,
                 added: str = DEFAULT_ADDED):
        if data_path is None and not demo_test_split:
            raise ValueError(NO_GSM8K_TRAIN)
        if data_path is not None and demo_test_split:
            raise ValueError("give either a GSM8K file (--gsm8k-jsonl) or --demo-gsm8k-test, not both")
        if num_docs is not None and (not isinstance(num_docs, int) or num_docs < 0):
            raise ValueError(f"num_docs must be a non-negative integer, got {num_docs!r}")
        self.data_path, self.requested, self.demo_test_split, self.added = data_path, num_docs, demo_test_split, added
        self.inputs = InputFiles(data_path) if data_path is not None else None
        self._test_items: list[dict] | None = None

    def __getstate__(self):
        return {**self.__dict__, "_test_items": None}

    @property
    def test_items(self) -> list[dict]:
        if self._test_items is None:
            self._test_items = load_items(demo_test_split=True)
        return self._test_items

    @property
    def num_docs(self) -> int:
        total = self.inputs.total_rows if self.inputs is not None else len(self.test_items)
        return total if self.requested is None else min(self.requested, total)

    def input_paths(self) -> list[str]:
        return self.inputs.paths if self.inputs is not None else []

    def config(self) -> dict:
        source = self.inputs.fingerprint() if self.inputs is not None else "packaged-gsm8k-test"
        # "test_items": parts written before test questions were quarantined may hold them, and
        # are not taken for this configuration's (a rerun skips finished partitions by this hash).
        return {"input": source, "num_docs": self.num_docs, "demo_test_split": self.demo_test_split,
                "added": self.added, "test_items": GSM8K_TEST_ITEM}

    def _rows(self, start: int, stop: int) -> Iterator[tuple[int, dict | None, dict]]:
        """(index, row or None, where) for items start .. stop-1."""
        if self.inputs is None:
            warn_test_split()
            for index in range(start, stop):
                item = self.test_items[index]
                yield index, {"question": item["question"], "answer": item["answer"], "id": item["id"]}, {}
            return
        for row in self.inputs.rows(start, stop):
            where = {"path": row.path, "line": row.line, "reason": row.reason, "detail": row.detail, "raw": row.raw}
            yield row.index, row.obj, where

    def generate(self, partition: int, num_partitions: int, seed: int) -> Iterator[dict]:
        span = partition_range(partition, num_partitions, self.num_docs)
        split = "test" if self.inputs is None else "train"
        for index, row, where in self._rows(span.start, span.stop):
            if row is None:
                yield quarantine(self.name, seed, index, where["reason"], where["path"], where["line"],
                                 where["detail"], where["raw"])
                continue
            if not has_gsm8k_fields(row):
                yield quarantine(self.name, seed, index, "missing_fields", where.get("path", ""), where.get("line", 0),
                                 GSM8K_FIELDS)
                continue
            question, answer = row["question"], row["answer"]
            if split == "train" and (leak := gsm8k_test_item_problem(question)) is not None:
                yield quarantine(self.name, seed, index, GSM8K_TEST_ITEM, where["path"], where["line"], leak,
                                 where["raw"])
                continue
            meta = {"gsm8k_id": str(row.get("id", index)), "gsm8k_split": split}
            yield make_doc(self.name, seed, index, f"Question: {question.strip()}\nAnswer: {answer.strip()}",
                           "gsm8k_train" if split == "train" else "gsm8k_test_demo", meta, self.added)
