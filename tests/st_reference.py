"""Reference embeddings from sentence-transformers on PyTorch, run as a subprocess by the tests.

    python tests/st_reference.py MODEL_FOLDER < texts.json > embeddings.json

Kept out of the test process so that torch's import and warnings stay out of pytest's.
"""

from __future__ import annotations

import json
import os
import sys


def main() -> None:
    os.environ["HF_HUB_OFFLINE"] = "1"  # the folder is local; nothing may come from a hub
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    from sentence_transformers import SentenceTransformer

    texts = json.load(sys.stdin)
    model = SentenceTransformer(sys.argv[1], device="cpu")
    vectors = model.encode(texts, normalize_embeddings=True, convert_to_numpy=True)
    json.dump({"embeddings": vectors.tolist(), "max_seq_length": model.max_seq_length}, sys.stdout)


if __name__ == "__main__":
    main()
