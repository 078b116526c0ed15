"""The architecture decides what a checkpoint compiles to: task heads are kept with their outputs.

`BertForSequenceClassification` used to compile to the bare encoder (last_hidden_state) and
"verify" against that. Here each head's package runs on ONNX Runtime and is compared with the
Hugging Face model itself (not with our own reference wrapper).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from trtcompile import runtime
from trtcompile.compile import compile_package

DATA = Path(__file__).parent.parent / "data"
VOCAB = 128


@pytest.mark.parametrize("head, task, outputs", [
    ("BertForSequenceClassification", "sequence-classification", ["logits"]),
    ("BertForTokenClassification", "token-classification", ["logits"]),
    ("BertForQuestionAnswering", "question-answering", ["start_logits", "end_logits"]),
    ("BertForMaskedLM", "masked-lm", ["logits"]),
])
def test_task_head_outputs_match_pytorch(tmp_path, head, task, outputs):
    import transformers

    config = transformers.BertConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                     intermediate_size=64, max_position_embeddings=128,
                                     num_labels=2 if task == "question-answering" else 3)
    torch.manual_seed(0)
    model = getattr(transformers, head)(config).eval()
    model.save_pretrained(tmp_path / "ck")
    manifest = compile_package(str(tmp_path / "ck"), tmp_path / "pkg", profile_path=DATA / "tiny-encoder.yaml")
    assert manifest.data["model"]["task"] == task
    assert [o.name for o in manifest.outputs] == outputs

    rng = np.random.default_rng(1)
    mask = np.ones((2, 12), np.int64)
    mask[1, 9:] = 0
    feeds = {"input_ids": rng.integers(0, VOCAB, (2, 12)), "attention_mask": mask,
             "token_type_ids": np.zeros((2, 12), np.int64)}
    with torch.inference_mode():
        expected = model(**{k: torch.from_numpy(v) for k, v in feeds.items()})
    with runtime.load(tmp_path / "pkg", backend="onnxruntime") as package:
        got = package.run(feeds)
    for name in outputs:
        want = getattr(expected, name).numpy()
        assert got[name].shape == want.shape
        np.testing.assert_allclose(got[name], want, atol=1e-4, rtol=1e-4)
